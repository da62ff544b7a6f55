//! Evaluating `params`/`buffers` groups: loops, guards, conditions and key
//! placeholders, into [`ParamGroupSpec`]s.

use super::{Checker, MAX_TENSORS};
use crate::eval::EvalScope;
use crate::spec::*;
use ecarc_grammar::ast::Num;
use ecarc_grammar::ast::{Expr, ExprKind, Ident, ParamGroup, ParamKind};
use ecarc_grammar::diag::did_you_mean;
use ecarc_grammar::merged::{MBody, MValue};
use ecarc_grammar::{Diag, Span};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

/// Whether `e` names `var` anywhere.
pub(crate) fn mentions(e: &Expr, var: &str) -> bool {
    match &e.kind {
        ExprKind::Name(n) => n == var,
        ExprKind::Paren(x) | ExprKind::Neg(x) => mentions(x, var),
        ExprKind::Binary { lhs, rhs, .. } => mentions(lhs, var) || mentions(rhs, var),
        ExprKind::Call { args, .. } => args.iter().any(|a| mentions(&a.value, var)),
        ExprKind::List(items) => items.iter().any(|i| mentions(i, var)),
        ExprKind::Index { name, index } => name.name == var || mentions(index, var),
        _ => false,
    }
}

/// Whether a group must be evaluated copy by copy (see `group_expanded`).
pub(crate) fn needs_expansion(g: &ParamGroup) -> bool {
    if g.inner.is_some() || g.guard.is_some() {
        return true;
    }
    let Some(r) = &g.repeat else { return false };
    let var = r.var.name.as_str();
    g.decls.iter().any(|d| d.shape.iter().any(|e| mentions(e, var)) || has_computed_placeholder(&d.key.value, &[var]))
        || g.prefix.as_ref().is_some_and(|p| has_computed_placeholder(&p.value, &[var]))
}

/// The conditions a group's `when` may name besides the boolean fields in scope.
pub(crate) fn group_flags(distilled: bool) -> BTreeMap<&'static str, bool> {
    BTreeMap::from([("distilled", distilled)])
}

/// Replace each `{expr}` in a key template by its value (loop variables in scope).
fn fill_placeholders(template: &str, sc: &EvalScope, span: Span, err: &dyn Fn(Diag)) -> Option<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else {
            err(Diag::error("E0436", "unclosed `{` in a checkpoint key")
                .label(span, "here")
                .help("placeholders look like `{i}` or `{4 - l}`"));
            return None;
        };
        let inner = &rest[open + 1..open + close];
        let value = match ecarc_grammar::parser::parse_set_value(ecarc_grammar::FileId(u32::MAX), inner) {
            Ok(ecarc_grammar::ast::FieldValue::Value(ecarc_grammar::ast::Value::Expr(e))) => sc.num(&e).ok(),
            _ => None,
        };
        match value {
            Some(Num::Int(v)) if v >= 0 => out.push_str(&v.to_string()),
            _ => {
                err(Diag::error("E0436", format!("the key placeholder `{{{inner}}}` is not a non-negative integer"))
                    .label(span, "in this key")
                    .help("placeholders are loop variables or integer expressions of them, e.g. `{l}` or `{4 - l}`"));
                return None;
            }
        }
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// Whether a key template has a placeholder other than a bare loop variable
/// (`{4 - l}`), which needs evaluating copy by copy.
fn has_computed_placeholder(template: &str, vars: &[&str]) -> bool {
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else { return false };
        let inner = rest[open + 1..open + close].trim();
        if !vars.contains(&inner) {
            return true;
        }
        rest = &rest[open + close + 1..];
    }
    false
}

/// E0435 unless `role` is one of [`crate::roles::ROLES`]; `examples` name a
/// few roles in the help line.
fn known_role(role: &Ident, examples: &str) -> Result<(), Diag> {
    if crate::roles::is_role(&role.name) {
        return Ok(());
    }
    let names = crate::roles::ROLES.iter().map(|(r, _)| *r);
    let e = Diag::error("E0435", format!("unknown tensor role `{}`", role.name)).label(role.span, "not a role");
    Err(match did_you_mean(&role.name, names) {
        Some(r) => e.help(format!("did you mean `{r}`? roles are listed in docs/language.md")),
        None => e.help(format!("a role says what the tensor is for ({examples}); see docs/language.md")),
    })
}

/// Record that `key` is declared at `at`; E0430 if an earlier group of the
/// model declared it already.
fn declare_key(seen: &mut HashMap<String, Span>, key: String, at: Span) -> Result<(), Diag> {
    if let Some(first) = seen.get(&key) {
        return Err(Diag::error("E0430", format!("checkpoint key `{key}` is declared twice"))
            .label(at, "declared again here")
            .label(*first, "first declared here")
            .help("each tensor of a checkpoint has one key; rename one or guard it with `when`"));
    }
    seen.insert(key, at);
    Ok(())
}

/// Evaluates `params`/`buffers` groups with the derived values in scope.
pub(super) struct ParamCtx<'c, 'a> {
    pub(super) checker: &'c Checker<'a>,
    pub(super) derived: &'c BTreeMap<String, Num>,
    pub(super) flags: &'c BTreeMap<&'static str, bool>,
    /// Full key -> where it was declared, to report duplicates.
    pub(super) seen: RefCell<HashMap<String, Span>>,
    pub(super) count: RefCell<u64>,
}

impl<'c, 'a> ParamCtx<'c, 'a> {
    pub(super) fn groups(
        &self,
        body: &'c MBody,
        chain: Vec<&'c MBody>,
        owner: &str,
        params: &mut Vec<ParamGroupSpec>,
        buffers: &mut Vec<ParamGroupSpec>,
    ) {
        let scope = EvalScope::new(chain, self.derived);
        for g in body.param_groups() {
            let specs = if needs_expansion(g) {
                self.group_expanded(g, &scope, owner)
            } else {
                self.group(g, &scope, owner).into_iter().collect()
            };
            for spec in specs {
                match g.kind {
                    ParamKind::Params => params.push(spec),
                    ParamKind::Buffers => buffers.push(spec),
                }
            }
        }
    }

    /// A group evaluated copy by copy: nested loops, a `when a OP b` guard,
    /// shapes or keys that depend on the loop variables. Each copy that passes
    /// the guard becomes its own [`ParamGroupSpec`] with `index` = the loop values.
    fn group_expanded(&self, g: &ParamGroup, scope: &EvalScope<'c>, owner: &str) -> Vec<ParamGroupSpec> {
        if let Some(c) = &g.condition {
            match self.flag(&c.flag, scope) {
                Some(v) if v != c.negated => {}
                _ => return vec![],
            }
        }
        let err = |d: Diag| self.checker.error(d);
        let mut loops: Vec<(String, i64, i64)> = Vec::new();
        for r in g.repeat.iter().chain(g.inner.iter()) {
            let (lo, hi) = match (scope.num(&r.lo), scope.num(&r.hi)) {
                (Ok(Num::Int(lo)), Ok(Num::Int(hi))) if 0 <= lo && lo <= hi => (lo, hi),
                (Err(e), _) | (_, Err(e)) => {
                    err(e);
                    return vec![];
                }
                (Ok(lo), Ok(hi)) => {
                    err(Diag::error("E0304", "loop bounds must be integers with 0 <= lo <= hi")
                        .label(r.span, format!("{lo}..{hi}"))
                        .help("loops count up from the lower bound: write e.g. `for l in 0..levels`"));
                    return vec![];
                }
            };
            loops.push((r.var.name.clone(), lo, hi));
        }
        // No loops (a guard alone): one copy. An empty loop (`j in 0..0`): none.
        let copies: u64 = loops.iter().map(|(_, lo, hi)| (hi - lo) as u64).product();
        let n = copies.saturating_mul(g.decls.len() as u64);
        if self.count.borrow().saturating_add(n) > MAX_TENSORS {
            err(Diag::error("E0434", "too many tensors declared")
                .label(
                    g.repeat.as_ref().map_or(g.span, |r| r.span),
                    format!("{copies} copies x {} tensors", g.decls.len()),
                )
                .help(format!(
                    "a model declares at most {MAX_TENSORS} tensors after expanding loops; check the loop bounds"
                )));
            return vec![];
        }
        let mut out = Vec::new();
        let mut assignment: Vec<i64> = loops.iter().map(|l| l.1).collect();
        'copies: for _ in 0..copies {
            let mut sc = scope.clone();
            sc.locals = loops.iter().zip(&assignment).map(|((v, _, _), &x)| (v.clone(), Num::Int(x))).collect();
            // advance the odometer for the next round (last loop fastest)
            let current = assignment.clone();
            for k in (0..loops.len()).rev() {
                assignment[k] += 1;
                if assignment[k] < loops[k].2 {
                    break;
                }
                assignment[k] = loops[k].1;
            }
            if let Some(gd) = &g.guard {
                let (a, b) = match (sc.num(&gd.lhs), sc.num(&gd.rhs)) {
                    (Ok(a), Ok(b)) => (a.as_f64(), b.as_f64()),
                    (Err(e), _) | (_, Err(e)) => {
                        err(e);
                        return vec![];
                    }
                };
                if !gd.op.holds(a, b) {
                    continue 'copies;
                }
            }
            let mut tensors = Vec::new();
            for d in &g.decls {
                let mut shape = Vec::new();
                for dim in &d.shape {
                    match sc.num(dim) {
                        Ok(Num::Int(v)) if v >= 1 => shape.push(v as u64),
                        Ok(v) => {
                            err(Diag::error("E0433", "a tensor dimension must be a positive integer")
                                .label(dim.span, format!("this is {v}"))
                                .help("dimensions are whole numbers >= 1; check the expression against the checkpoint's shape"));
                            return vec![];
                        }
                        Err(e) => {
                            err(e);
                            return vec![];
                        }
                    }
                }
                if let Err(e) = known_role(&d.role, "qkv, ffn_up, dec_conv1, ...") {
                    err(e);
                    return vec![];
                }
                let Some(key) = fill_placeholders(&d.key.value, &sc, d.key.span, &err) else { return vec![] };
                tensors.push(TensorSpec { role: d.role.name.clone(), key, shape });
            }
            let prefix = match &g.prefix {
                Some(p) => match fill_placeholders(&p.value, &sc, p.span, &err) {
                    Some(v) => v,
                    None => return vec![],
                },
                None => String::new(),
            };
            out.push(ParamGroupSpec {
                owner: owner.into(),
                prefix,
                index: current.iter().map(|&v| v as u64).collect(),
                repeat: None,
                tensors,
            });
        }
        *self.count.borrow_mut() += out.iter().map(|s| s.tensors.len() as u64).sum::<u64>();
        let mut seen = self.seen.borrow_mut();
        for spec in &out {
            for (i, (key, _)) in spec.expand().into_iter().enumerate() {
                let decl_span = g.decls.get(i).map(|d| d.key.span).unwrap_or(g.span);
                if let Err(e) = declare_key(&mut seen, key, decl_span) {
                    err(e);
                    return vec![];
                }
            }
        }
        out
    }

    fn flag(&self, name: &Ident, scope: &EvalScope) -> Option<bool> {
        if let Some(&v) = self.flags.get(name.name.as_str()) {
            return Some(v);
        }
        for b in &scope.bodies {
            if let Some(f) = b.field(&name.name) {
                if let MValue::Expr(e) = &f.value {
                    match e.as_name() {
                        Some("true") => return Some(true),
                        Some("false") => return Some(false),
                        _ => {}
                    }
                }
                self.checker.error(
                    Diag::error("E0431", format!("`{}` is not a boolean", name.name))
                        .label(name.span, "used as a condition")
                        .label(f.value.span(), "defined here")
                        .help("conditions name `distilled` or a field set to true/false"),
                );
                return None;
            }
        }
        let mut cands: Vec<&str> = self.flags.keys().copied().collect();
        for b in &scope.bodies {
            cands.extend(b.fields().map(|f| f.key.name.as_str()));
        }
        let d = Diag::error("E0431", format!("unknown condition `{}`", name.name)).label(name.span, "not a flag");
        self.checker.error(match did_you_mean(&name.name, cands.iter().copied()) {
            Some(s) => d.help(format!("did you mean `{s}`?")),
            None => d.help("conditions name `distilled` or a boolean field in scope"),
        });
        None
    }

    fn group(&self, g: &ParamGroup, scope: &EvalScope<'c>, owner: &str) -> Option<ParamGroupSpec> {
        if let Some(c) = &g.condition {
            let v = self.flag(&c.flag, scope)?;
            if v == c.negated {
                return None;
            }
        }
        let err = |d: Diag| {
            self.checker.error(d);
        };
        let repeat = match &g.repeat {
            None => None,
            Some(r) => {
                let lo = scope.num(&r.lo).map_err(err).ok()?;
                let hi = scope.num(&r.hi).map_err(err).ok()?;
                match (lo, hi) {
                    (Num::Int(lo), Num::Int(hi)) if 0 <= lo && lo <= hi => {
                        let prefix_has =
                            g.prefix.as_ref().is_some_and(|p| p.value.contains(&format!("{{{}}}", r.var.name)));
                        let decls_have = g.decls.iter().all(|d| d.key.value.contains(&format!("{{{}}}", r.var.name)));
                        if !prefix_has && !decls_have && hi - lo > 1 {
                            err(Diag::error(
                                "E0432",
                                format!("keys do not use the loop variable `{{{}}}`", r.var.name),
                            )
                            .label(r.span, "every copy would get the same keys")
                            .help(format!(
                                "put `{{{}}}` in the prefix, e.g. \"blocks.{{{}}}.\"",
                                r.var.name, r.var.name
                            )));
                            return None;
                        }
                        Some(RepeatSpec { var: r.var.name.clone(), start: lo as u64, count: (hi - lo) as u64 })
                    }
                    _ => {
                        let why = match (lo, hi) {
                            (Num::Int(l), Num::Int(h)) if l > h => format!("{lo}..{hi} runs backwards"),
                            (Num::Int(l), _) if l < 0 => format!("{lo}..{hi} starts below 0"),
                            _ => format!("{lo}..{hi} is not a range of integers"),
                        };
                        err(Diag::error("E0304", "loop bounds must be integers with 0 <= lo <= hi")
                            .label(r.span, why)
                            .help("loops count up from the lower bound: write e.g. `for i in 0..depth`"));
                        return None;
                    }
                }
            }
        };
        let mut tensors = Vec::new();
        for d in &g.decls {
            let mut shape = Vec::new();
            for dim in &d.shape {
                match scope.num(dim) {
                    Ok(Num::Int(v)) if v >= 1 => shape.push(v as u64),
                    Ok(v) => {
                        let shown = match v {
                            Num::Float(x) => crate::eval::fmt_f64(x),
                            Num::Int(i) => i.to_string(),
                        };
                        err(Diag::error("E0433", "a tensor dimension must be a positive integer")
                            .label(dim.span, format!("this is {shown}"))
                            .help("dimensions are whole numbers >= 1; check the expression against the checkpoint's shape"));
                        return None;
                    }
                    Err(mut e) => {
                        if let Some(r) = &g.repeat {
                            if e.code == "E0315" && mentions(dim, &r.var.name) {
                                e = Diag::error("E0315", format!("the loop variable `{}` is used in a shape", r.var.name))
                                    .label(e.primary_span().unwrap_or(dim.span), format!("`{}` only numbers the keys", r.var.name))
                                    .label(r.var.span, "the loop variable")
                                    .help(format!(
                                        "shapes are the same in every copy: use fields and derived values, and put `{{{}}}` in the keys",
                                        r.var.name
                                    ));
                            }
                        }
                        err(e);
                        return None;
                    }
                }
            }
            if let Err(e) = known_role(&d.role, "qkv, ffn_up, class_table, ...") {
                err(e);
                return None;
            }
            tensors.push(TensorSpec { role: d.role.name.clone(), key: d.key.value.clone(), shape });
        }
        let spec = ParamGroupSpec {
            owner: owner.into(),
            prefix: g.prefix.as_ref().map(|p| p.value.clone()).unwrap_or_default(),
            index: vec![],
            repeat,
            tensors,
        };
        let copies = spec.repeat.as_ref().map_or(1, |r| r.count);
        let n = copies.saturating_mul(spec.tensors.len() as u64);
        let total = self.count.borrow().saturating_add(n);
        if total > MAX_TENSORS {
            // Not counted, so that later groups are not blamed for this one.
            let (span, what) = match (&g.repeat, &spec.repeat) {
                (Some(r), Some(rs)) => (r.span, format!("{} copies x {} tensors = {n}", rs.count, spec.tensors.len())),
                _ => (g.span, format!("{n} tensors")),
            };
            err(Diag::error("E0434", "too many tensors declared")
                .label(span, what)
                .help(format!(
                    "a model declares at most {MAX_TENSORS} tensors after expanding loops; check the loop bounds (e.g. `for i in 0..depth`)"
                )));
            return None;
        }
        *self.count.borrow_mut() = total;
        // Duplicate full keys across every group of the model.
        let mut seen = self.seen.borrow_mut();
        for (i, (key, _)) in spec.expand().into_iter().enumerate() {
            let decl_span = g.decls.get(i % g.decls.len().max(1)).map(|d| d.key.span).unwrap_or(g.span);
            if let Err(e) = declare_key(&mut seen, key, decl_span) {
                err(e);
                return None;
            }
        }
        Some(spec)
    }
}
