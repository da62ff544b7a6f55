//! Symbolic evaluation of field expressions: a field's expression becomes a
//! polynomial in the model's literal fields (the leaves).

use super::Poly;
use crate::eval::EvalScope;
use ecarc_grammar::ast::{BinOp, Expr, ExprKind, Num};
use ecarc_grammar::merged::{MBody, MValue};
use std::cell::RefCell;
use std::collections::BTreeMap;

/// A body and its component path (`""` for the model, `backbone.block`, ...).
pub(super) type Link<'a> = (&'a MBody, &'static str);

pub(super) struct SymbolicEvaluator {
    /// Derived names when no field of the chain has them.
    pub(super) derived: BTreeMap<String, Poly>,
    /// The checker's numeric derived values, for non-polynomial leaves.
    pub(super) derived_num: BTreeMap<String, Num>,
    /// Value of every leaf created so far.
    pub(super) values: RefCell<BTreeMap<String, i128>>,
    /// Loop variables bound while a group is expanded copy by copy.
    pub(super) locals: RefCell<Vec<(String, i128)>>,
}

const MAX_DEPTH: u32 = 200;

fn literal(e: &Expr) -> Option<&Num> {
    match &e.kind {
        ExprKind::Number { value, .. } => Some(value),
        ExprKind::Paren(inner) => literal(inner),
        _ => None,
    }
}

fn num_to_i128(n: &Num) -> Option<i128> {
    match *n {
        Num::Int(i) => Some(i as i128),
        Num::Float(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e30 => Some(f as i128),
        Num::Float(_) => None,
    }
}

impl SymbolicEvaluator {
    pub(super) fn leaf(&self, name: &str, value: i128) -> Result<Poly, String> {
        let mut v = self.values.borrow_mut();
        match v.get(name) {
            Some(&old) if old != value => Err(format!("symbol `{name}` would have two values ({old} and {value})")),
            _ => {
                v.insert(name.to_string(), value);
                Ok(Poly::var(name))
            }
        }
    }

    pub(super) fn expr(&self, e: &Expr, chain: &[Link], depth: u32) -> Result<Poly, String> {
        if depth > MAX_DEPTH {
            return Err("fields refer to each other too deeply".into());
        }
        match &e.kind {
            ExprKind::Number { value, .. } => match num_to_i128(value) {
                Some(i) => Ok(Poly::constant(i)),
                None => self.opaque(e, chain),
            },
            ExprKind::Paren(inner) => self.expr(inner, chain, depth),
            ExprKind::Neg(inner) => Ok(self.expr(inner, chain, depth)?.scale(-1)),
            ExprKind::Binary { op, lhs, rhs } => {
                let (a, b) = (self.expr(lhs, chain, depth)?, self.expr(rhs, chain, depth)?);
                match op {
                    BinOp::Add => Ok(a.add(&b)),
                    BinOp::Sub => Ok(a.sub(&b)),
                    BinOp::Mul => Ok(a.mul(&b)),
                    BinOp::Div => match a.div_exact(&b) {
                        Some(q) => Ok(q),
                        None => self.opaque(e, chain),
                    },
                }
            }
            ExprKind::Name(n) => self.name(n, chain, depth),
            ExprKind::Index { name, index } => self.element(&name.name, index, e, chain, depth),
            ExprKind::Call { .. } => self.opaque(e, chain),
            _ => Err(format!("`{}` is not a number", ecarc_grammar::fmt::expr(e))),
        }
    }

    /// A non-polynomial sub-expression: a leaf named by its source text (and
    /// the component it is evaluated in), valued by the checker's evaluator.
    fn opaque(&self, e: &Expr, chain: &[Link]) -> Result<Poly, String> {
        let text = self.text(e);
        match self.numeric(e, chain) {
            Ok(Num::Int(v)) => {
                let name = match chain.first().map(|l| l.1) {
                    Some(p) if !p.is_empty() => format!("{p}:({text})"),
                    _ => format!("({text})"),
                };
                self.leaf(&name, v as i128)
            }
            Ok(Num::Float(x)) => Err(format!("`{text}` is {x}, not an integer")),
            Err(d) => Err(format!("`{text}`: {}", d.message)),
        }
    }

    /// The checker's numeric value of `e` (loop variables bound).
    pub(super) fn numeric(&self, e: &Expr, chain: &[Link]) -> Result<Num, ecarc_grammar::Diag> {
        let mut scope = EvalScope::new(chain.iter().map(|l| l.0).collect(), &self.derived_num);
        scope.locals = self.locals.borrow().iter().map(|(k, v)| (k.clone(), Num::Int(*v as i64))).collect();
        scope.num(e)
    }

    /// Source text with bound loop variables replaced by their values.
    fn text(&self, e: &Expr) -> String {
        let t = |x: &Expr| self.text(x);
        match &e.kind {
            ExprKind::Name(n) => match self.locals.borrow().iter().rev().find(|(k, _)| k == n) {
                Some((_, v)) => v.to_string(),
                None => n.clone(),
            },
            ExprKind::Index { name, index } => format!("{}[{}]", name.name, t(index)),
            ExprKind::Call { name, args } => {
                let a: Vec<String> = args
                    .iter()
                    .map(|a| match &a.name {
                        Some(n) => format!("{} = {}", n.name, t(&a.value)),
                        None => t(&a.value),
                    })
                    .collect();
                format!("{}({})", name.name, a.join(", "))
            }
            ExprKind::List(items) => format!("[{}]", items.iter().map(t).collect::<Vec<_>>().join(", ")),
            ExprKind::Neg(inner) => format!("-{}", t(inner)),
            ExprKind::Binary { op, lhs, rhs } => format!("{} {} {}", t(lhs), op.as_str(), t(rhs)),
            ExprKind::Paren(inner) => format!("({})", t(inner)),
            _ => ecarc_grammar::fmt::expr(e),
        }
    }

    /// `name[index]`: the element of a list-valued field. A number literal is a
    /// leaf named `component.name[i]`; an expression is substituted.
    fn element(&self, name: &str, index: &Expr, e: &Expr, chain: &[Link], depth: u32) -> Result<Poly, String> {
        let Some(i) = self.expr(index, chain, depth)?.as_const() else { return self.opaque(e, chain) };
        for (k, (body, path)) in chain.iter().enumerate() {
            let Some(f) = body.field(name) else { continue };
            let MValue::Expr(Expr { kind: ExprKind::List(items), .. }) = &f.value else {
                return Err(format!("`{name}` is not a list"));
            };
            let item =
                usize::try_from(i).ok().and_then(|i| items.get(i)).ok_or(format!("`{name}[{i}]` is out of range"))?;
            return match literal(item) {
                Some(num) => {
                    let value = num_to_i128(num).ok_or_else(|| format!("`{name}[{i}]` is not an integer"))?;
                    let leaf = if path.is_empty() { format!("{name}[{i}]") } else { format!("{path}.{name}[{i}]") };
                    self.leaf(&leaf, value)
                }
                None => self.expr(item, &chain[k..], depth + 1),
            };
        }
        Err(format!("unknown name `{name}`"))
    }

    /// A name as `eval.rs` resolves it: loop variables, fields of the chain,
    /// innermost first, then derived values.
    pub(super) fn name(&self, n: &str, chain: &[Link], depth: u32) -> Result<Poly, String> {
        if let Some((_, v)) = self.locals.borrow().iter().rev().find(|(k, _)| k == n) {
            return Ok(Poly::constant(*v));
        }
        for (i, (body, path)) in chain.iter().enumerate() {
            if let Some(f) = body.field(n) {
                return self.field_value(n, &f.value, path, &chain[i..], depth);
            }
        }
        self.derived.get(n).cloned().ok_or_else(|| format!("unknown name `{n}`"))
    }

    /// The value of field `key` (of the body `chain[0]`, at `path`).
    pub(super) fn field_value(
        &self,
        key: &str,
        v: &MValue,
        path: &str,
        chain: &[Link],
        depth: u32,
    ) -> Result<Poly, String> {
        let MValue::Expr(e) = v else { return Err(format!("`{key}` is not a number")) };
        match literal(e) {
            Some(num) => {
                let value = num_to_i128(num).ok_or_else(|| format!("`{key}` is not an integer"))?;
                let name = match (path, key) {
                    ("", _) => key.to_string(),
                    // The tokenizer's fields that define derived values share their symbol.
                    ("tokenizer", "code_dim" | "latent_channels" | "vocab") => key.to_string(),
                    _ => format!("{path}.{key}"),
                };
                self.leaf(&name, value)
            }
            None => self.expr(e, chain, depth + 1),
        }
    }

    /// The field `key` of `chain[0]` as a polynomial, or `default`.
    pub(super) fn own_field(&self, key: &str, chain: &[Link], default: Option<i128>) -> Result<Poly, String> {
        let (body, path) = chain[0];
        match body.field(key) {
            Some(f) => self.field_value(key, &f.value, path, chain, 0),
            None => default.map(Poly::constant).ok_or_else(|| format!("`{path}` has no `{key}`")),
        }
    }

    pub(super) fn value(&self, p: &Poly) -> Result<i128, String> {
        p.eval_map(&self.values.borrow())
    }
}
