//! Evaluation of parameter expressions: exact integers (checked arithmetic),
//! decimals, sizes, names looked up through a scope chain of merged bodies, then
//! derived values. Every failure is a spanned [`Diag`], never a panic.

use ecarc_grammar::ast::{BinOp, Expr, ExprKind, Num};
use ecarc_grammar::merged::{MBody, MValue};
use ecarc_grammar::{Diag, Span};
use std::cell::RefCell;
use std::collections::BTreeMap;

/// Fields may refer to fields at most this deep (evaluation recurses).
pub(crate) const MAX_REFERENCE_DEPTH: usize = 64;

/// A field being evaluated: (body pointer, key, the reference that asked for it, the field).
type Active = (usize, String, Span, Span);

/// Where names are looked up: bodies innermost first, then derived values.
#[derive(Clone)]
pub(crate) struct EvalScope<'a> {
    pub bodies: Vec<&'a MBody>,
    pub derived: &'a BTreeMap<String, Num>,
    /// Loop variables of `params ... for i in ..` (bound for keys, not shapes).
    pub locals: Vec<(String, Num)>,
    /// Fields being evaluated, for cycle detection: (body pointer, key, the
    /// reference that asked for it, the field).
    active: std::rc::Rc<RefCell<Vec<Active>>>,
}

impl<'a> EvalScope<'a> {
    pub fn new(bodies: Vec<&'a MBody>, derived: &'a BTreeMap<String, Num>) -> Self {
        EvalScope { bodies, derived, locals: vec![], active: Default::default() }
    }
    /// The same derived values with a different chain of bodies.
    pub(crate) fn with_bodies(&self, bodies: Vec<&'a MBody>) -> Self {
        EvalScope { bodies, derived: self.derived, locals: self.locals.clone(), active: self.active.clone() }
    }

    /// Evaluate a numeric expression.
    pub fn num(&self, e: &Expr) -> Result<Num, Diag> {
        match &e.kind {
            ExprKind::Number { value, .. } => Ok(*value),
            ExprKind::Paren(inner) => self.num(inner),
            ExprKind::Index { name, index } => self.element(name, index, e.span),
            ExprKind::Neg(inner) => match self.num(inner)? {
                Num::Int(i) => i.checked_neg().map(Num::Int).ok_or_else(|| overflow(e.span)),
                Num::Float(f) => Ok(Num::Float(-f)),
            },
            ExprKind::Binary { op, lhs, rhs } => {
                let (a, b) = (self.num(lhs)?, self.num(rhs)?);
                binary(*op, a, b, e.span, rhs.span)
            }
            ExprKind::Name(n) => self.name(n, e.span),
            ExprKind::Call { name, args } => {
                let vals: Vec<f64> =
                    args.iter().map(|a| self.num(&a.value).map(Num::as_f64)).collect::<Result<_, _>>()?;
                let need = |k: usize| -> Result<(), Diag> {
                    if vals.len() == k {
                        Ok(())
                    } else {
                        Err(Diag::error(
                            "E0310",
                            format!("`{}` takes {k} argument{}", name.name, if k == 1 { "" } else { "s" }),
                        )
                        .label(e.span, format!("given {}", vals.len()))
                        .help(format!(
                            "call it with {k} argument{}, e.g. `{}({})`",
                            if k == 1 { "" } else { "s" },
                            name.name,
                            vec!["x"; k].join(", ")
                        )))
                    }
                };
                let r = match name.name.as_str() {
                    "ln" => {
                        need(1)?;
                        if vals[0] <= 0.0 {
                            return Err(Diag::error("E0311", "`ln` of a number <= 0")
                                .label(e.span, format!("ln({}) is undefined", fmt_f64(vals[0])))
                                .help("ln needs an argument > 0"));
                        }
                        vals[0].ln()
                    }
                    "exp" => {
                        need(1)?;
                        vals[0].exp()
                    }
                    "sqrt" => {
                        need(1)?;
                        if vals[0] < 0.0 {
                            return Err(Diag::error("E0311", "`sqrt` of a negative number")
                                .label(e.span, format!("sqrt({}) is undefined", fmt_f64(vals[0])))
                                .help("sqrt needs an argument >= 0"));
                        }
                        vals[0].sqrt()
                    }
                    "min" | "max" => {
                        if vals.is_empty() {
                            need(2)?;
                        }
                        let f = if name.name == "min" { f64::min } else { f64::max };
                        let nums: Vec<Num> = args.iter().map(|a| self.num(&a.value)).collect::<Result<_, _>>()?;
                        if nums.iter().all(|n| matches!(n, Num::Int(_))) {
                            let ints = nums.iter().map(|n| if let Num::Int(i) = n { *i } else { 0 });
                            let v = if name.name == "min" { ints.min() } else { ints.max() };
                            return Ok(Num::Int(v.unwrap_or(0)));
                        }
                        vals.iter().copied().fold(vals[0], f)
                    }
                    other => {
                        return Err(Diag::error("E0312", format!("unknown function `{other}`"))
                            .label(name.span, "not a function")
                            .help(match ecarc_grammar::diag::did_you_mean(other, FUNCTIONS.iter().copied()) {
                                _ if matches!(other, "pow" | "power") => format!(
                                    "write powers as numbers (`1e4`, `10000`) or products; functions: {}",
                                    FUNCTIONS.join(", ")
                                ),
                                Some(s) => format!("did you mean `{s}`? functions: {}", FUNCTIONS.join(", ")),
                                None => format!("functions: {}", FUNCTIONS.join(", ")),
                            }))
                    }
                };
                finite(r, e.span)
            }
            ExprKind::Size { .. } => Err(type_error(e.span, "a number", "a size")),
            ExprKind::Str(_) => Err(type_error(e.span, "a number", "a string")),
            ExprKind::List(_) => Err(type_error(e.span, "a number", "a list")),
        }
    }

    /// The fields `active[p..]` refer to each other in a cycle, closed by the
    /// reference at `closing`. Reported from the field written first, so that
    /// evaluating any member of the cycle gives the same diagnostic.
    fn cycle(&self, p: usize, closing: Span) -> Diag {
        let active = self.active.borrow();
        let members: Vec<(&str, Span, Span)> = active[p..]
            .iter()
            .enumerate()
            .map(|(i, a)| (a.1.as_str(), if i == 0 { closing } else { a.2 }, a.3))
            .collect();
        let k = members.len();
        let start = (0..k).min_by_key(|&i| (members[i].2.file, members[i].2.start)).unwrap_or(0);
        let names: Vec<&str> = (0..k).map(|j| members[(start + j) % k].0).collect();
        let message = match names.split_last() {
            Some((only, [])) => format!("`{only}` is defined in terms of itself"),
            Some((last, rest)) => format!("`{}` and `{last}` are defined in terms of each other", rest.join("`, `")),
            None => "a field is defined in terms of itself".to_string(),
        };
        let mut d = Diag::error("E0313", message);
        for j in 0..k {
            let (name, reference, _) = members[(start + j) % k];
            let user = members[(start + j + k - 1) % k].0;
            d = d.label(
                reference,
                if k == 1 { format!("`{name}` uses itself") } else { format!("`{user}` uses `{name}`") },
            );
        }
        let cycle: Vec<&str> = names.iter().copied().chain(names.first().copied()).collect();
        d.help(format!(
            "{}: give one of them a value that does not depend on the others (e.g. a number)",
            if k == 1 {
                format!("`{}` needs its own value to compute it", names[0])
            } else {
                format!("the cycle is {}", cycle.join(" -> "))
            }
        ))
    }

    /// `name[index]`: an element of a list-valued field in scope.
    fn element(&self, name: &ecarc_grammar::ast::Ident, index: &Expr, span: Span) -> Result<Num, Diag> {
        let i = match self.num(index)? {
            Num::Int(i) => i,
            Num::Float(x) => {
                return Err(Diag::error("E0319", "a list index must be an integer")
                    .label(index.span, format!("this is {}", fmt_f64(x)))
                    .help("index lists with whole numbers, e.g. `ch_mult[l]`"))
            }
        };
        for (depth, body) in self.bodies.iter().enumerate() {
            let Some(f) = body.field(&name.name) else { continue };
            let items = match &f.value {
                MValue::Expr(Expr { kind: ExprKind::List(items), .. }) => items,
                _ => {
                    return Err(Diag::error("E0319", format!("`{}` is not a list", name.name))
                        .label(name.span, "indexed here")
                        .label(f.value.span(), "defined here")
                        .help("only list-valued fields such as `ch_mult [1, 2, 4]` can be indexed"))
                }
            };
            let Some(item) = usize::try_from(i).ok().and_then(|i| items.get(i)) else {
                return Err(Diag::error("E0319", format!("index {i} is out of range for `{}`", name.name))
                    .label(
                        span,
                        format!("`{}` has {} elements (0..{})", name.name, items.len(), items.len().saturating_sub(1)),
                    )
                    .help("check the loop bounds against the list's length"));
            };
            return self.with_bodies(self.bodies[depth..].to_vec()).num(item);
        }
        Err(Diag::error("E0315", format!("unknown name `{}`", name.name))
            .label(name.span, "not a field in scope")
            .help("index a list-valued field of this block or an enclosing one"))
    }

    fn name(&self, n: &str, span: Span) -> Result<Num, Diag> {
        if let Some((_, v)) = self.locals.iter().rev().find(|(k, _)| k == n) {
            return Ok(*v);
        }
        for (depth, body) in self.bodies.iter().enumerate() {
            if let Some(f) = body.field(n) {
                let id = (*body as *const MBody as usize, n.to_string());
                let found = self.active.borrow().iter().position(|a| (a.0, &a.1) == (id.0, &id.1));
                if let Some(p) = found {
                    return Err(self.cycle(p, span));
                }
                let MValue::Expr(e) = &f.value else {
                    let what = match &f.value {
                        MValue::Component(_) => "a component",
                        MValue::Segment { .. } => "a flow segment",
                        _ => "a set of alternatives",
                    };
                    let hint = match n {
                        "backbone" => " (the backbone's width is the derived value `cond_dim`)",
                        "tokenizer" => " (a token's channels are `token_channels`)",
                        _ => "",
                    };
                    return Err(Diag::error("E0314", format!("`{n}` is not a number"))
                        .label(span, "used as a number here")
                        .label(f.value.span(), format!("`{n}` is {what}"))
                        .help(format!(
                            "name a numeric field or a derived value here{hint}; see docs/language.md, \"Derived values\""
                        )));
                };
                if self.active.borrow().len() >= MAX_REFERENCE_DEPTH {
                    return Err(Diag::error(
                        "E0320",
                        format!("field references nest more than {MAX_REFERENCE_DEPTH} deep"),
                    )
                    .label(span, "this reference is too deep")
                    .help("refer to fewer fields in a chain; write the value directly"));
                }
                self.active.borrow_mut().push((id.0, id.1, span, f.span));
                let inner = self.with_bodies(self.bodies[depth..].to_vec());
                let r = inner.num(e);
                self.active.borrow_mut().pop();
                return r.map_err(|d| {
                    if d.code == "E0315" || d.code == "E0313" || d.code == "E0320" {
                        d
                    } else {
                        d.label(span, format!("while evaluating `{n}` here"))
                    }
                });
            }
        }
        if let Some(v) = self.derived.get(n) {
            return Ok(*v);
        }
        let mut candidates: Vec<&str> = self.derived.keys().map(String::as_str).collect();
        candidates.extend(self.locals.iter().map(|(k, _)| k.as_str()));
        for b in &self.bodies {
            candidates.extend(b.fields().map(|f| f.key.name.as_str()));
        }
        let d =
            Diag::error("E0315", format!("unknown name `{n}`")).label(span, "not a field or derived value in scope");
        Err(match ecarc_grammar::diag::did_you_mean(n, candidates.iter().copied()) {
            Some(s) => d.help(format!("did you mean `{s}`?")),
            None => d.help(
                "names refer to fields of this block or an enclosing one, or to derived values (see docs/language.md)",
            ),
        })
    }
}

pub(crate) const FUNCTIONS: &[&str] = &["ln", "exp", "sqrt", "min", "max"];

fn finite(v: f64, span: Span) -> Result<Num, Diag> {
    if v.is_finite() {
        Ok(Num::Float(v))
    } else {
        Err(Diag::error("E0316", "result is not a finite number")
            .label(span, "this evaluates to infinity or NaN")
            .help("use smaller values: results must fit in a 64-bit float (about 1.8e308)"))
    }
}

fn overflow(span: Span) -> Diag {
    Diag::error("E0317", "integer overflow")
        .label(span, "this value does not fit in 64 bits")
        .help("use smaller values; sizes and counts must fit in a signed 64-bit integer")
}

pub(crate) fn type_error(span: Span, expected: &str, found: &str) -> Diag {
    let numeric = expected.contains("number") || expected.contains("integer");
    let help = match found {
        "a string" if numeric => "write the number without quotes".to_string(),
        "a flow segment" => {
            format!("`FROM -> TO` segments belong on `stage` rows; write {expected} here")
        }
        "a component" => {
            format!("`{{ ... }}` blocks are for component keys (tokenizer, backbone, ...); write {expected} here")
        }
        "a list" if numeric => format!("write {expected} here, not a list"),
        _ => format!("write {expected} here"),
    };
    Diag::error("E0301", format!("expected {expected}, found {found}"))
        .label(span, format!("this is {found}"))
        .help(help)
}

/// A decimal as people write it: at most 6 decimals, no trailing zeros.
pub(crate) fn fmt_f64(x: f64) -> String {
    if x.is_finite() && x.fract() != 0.0 {
        let s = format!("{x:.6}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{x}")
    }
}

fn binary(op: BinOp, a: Num, b: Num, span: Span, rhs_span: Span) -> Result<Num, Diag> {
    match (a, b) {
        (Num::Int(x), Num::Int(y)) => match op {
            BinOp::Add => x.checked_add(y).map(Num::Int).ok_or_else(|| overflow(span)),
            BinOp::Sub => x.checked_sub(y).map(Num::Int).ok_or_else(|| overflow(span)),
            BinOp::Mul => x.checked_mul(y).map(Num::Int).ok_or_else(|| overflow(span)),
            BinOp::Div => {
                if y == 0 {
                    Err(Diag::error("E0318", "division by zero")
                        .label(rhs_span, "this is zero")
                        .help("the divisor must not be zero; check the fields it is computed from"))
                } else if x.checked_rem(y) == Some(0) {
                    x.checked_div(y).map(Num::Int).ok_or_else(|| overflow(span))
                } else {
                    Ok(Num::Float(x as f64 / y as f64))
                }
            }
        },
        _ => {
            let (x, y) = (a.as_f64(), b.as_f64());
            if op == BinOp::Div && y == 0.0 {
                return Err(Diag::error("E0318", "division by zero")
                    .label(rhs_span, "this is zero")
                    .help("the divisor must not be zero; check the fields it is computed from"));
            }
            let r = match op {
                BinOp::Add => x + y,
                BinOp::Sub => x - y,
                BinOp::Mul => x * y,
                BinOp::Div => x / y,
            };
            finite(r, span)
        }
    }
}
