//! The generator's `params`/`buffers` groups evaluated with symbolic shapes,
//! as the checker evaluates them (`check/params.rs`) with numbers.

use super::decls::Decl;
use super::symbolic::{Link, SymbolicEvaluator};
use ecarc_grammar::ast::Num;
use ecarc_grammar::ast::{Expr, ParamGroup, ParamKind};
use ecarc_grammar::merged::MValue;
use std::collections::BTreeMap;

pub(super) struct SymbolicGroups<'s> {
    pub(super) sym: &'s SymbolicEvaluator,
    /// The checker's conditions (`distilled`).
    pub(super) flags: BTreeMap<&'static str, bool>,
}

impl SymbolicGroups<'_> {
    fn flag(&self, name: &str, chain: &[Link]) -> Result<bool, String> {
        if let Some(&v) = self.flags.get(name) {
            return Ok(v);
        }
        for (b, _) in chain {
            if let Some(f) = b.field(name) {
                return match &f.value {
                    MValue::Expr(e) if e.as_name() == Some("true") => Ok(true),
                    MValue::Expr(e) if e.as_name() == Some("false") => Ok(false),
                    _ => Err(format!("`{name}` is not a boolean")),
                };
            }
        }
        Err(format!("unknown condition `{name}`"))
    }

    /// Declarations of `chain[0]`'s groups: (params, buffers). With `tolerant`
    /// (the tokenizer's groups, which only the transitions read), a group that
    /// cannot be evaluated symbolically is left out instead of failing.
    pub(super) fn of(
        &self,
        chain: &[Link],
        owner: &'static str,
        tolerant: bool,
    ) -> Result<(Vec<Decl>, Vec<Decl>), String> {
        let (mut params, mut buffers) = (Vec::new(), Vec::new());
        for g in chain[0].0.param_groups() {
            let decls = match self.group(g, chain, owner) {
                Ok(d) => d,
                Err(_) if tolerant => continue,
                Err(e) => return Err(e),
            };
            if g.kind == ParamKind::Buffers {
                buffers.extend(decls);
            } else {
                params.extend(decls);
            }
        }
        Ok((params, buffers))
    }

    fn group(&self, g: &ParamGroup, chain: &[Link], owner: &'static str) -> Result<Vec<Decl>, String> {
        if let Some(c) = &g.condition {
            if self.flag(&c.flag.name, chain)? == c.negated {
                return Ok(vec![]);
            }
        }
        if crate::check::needs_expansion(g) {
            return self.expanded(g, chain, owner);
        }
        let repeat = match &g.repeat {
            None => None,
            Some(r) => {
                let lo = self.sym.expr(&r.lo, chain, 0)?;
                let hi = self.sym.expr(&r.hi, chain, 0)?;
                let (l, h) = (self.sym.value(&lo)?, self.sym.value(&hi)?);
                if l < 0 || h < l {
                    return Err(format!("loop bounds {l}..{h}"));
                }
                Some((l as u64, (h - l) as u64, hi.sub(&lo)))
            }
        };
        g.decls
            .iter()
            .map(|d| {
                let shape = d.shape.iter().map(|e| self.sym.expr(e, chain, 0)).collect::<Result<Vec<_>, _>>()?;
                Ok(Decl { owner, role: d.role.name.clone(), index: vec![], repeat: repeat.clone(), shape })
            })
            .collect()
    }

    /// A group the checker evaluates copy by copy (nested loops, a `when a OP
    /// b` guard, shapes using the loop variable): one declaration per copy,
    /// shapes symbolic in the fields with the loop variables bound.
    fn expanded(&self, g: &ParamGroup, chain: &[Link], owner: &'static str) -> Result<Vec<Decl>, String> {
        let mut loops: Vec<(String, i128, i128)> = Vec::new();
        for r in g.repeat.iter().chain(g.inner.iter()) {
            let lo = self.sym.value(&self.sym.expr(&r.lo, chain, 0)?)?;
            let hi = self.sym.value(&self.sym.expr(&r.hi, chain, 0)?)?;
            if lo < 0 || hi < lo {
                return Err(format!("loop bounds {lo}..{hi}"));
            }
            loops.push((r.var.name.clone(), lo, hi));
        }
        let copies: i128 = loops.iter().map(|(_, lo, hi)| hi - lo).product();
        let mut out = Vec::new();
        let mut at: Vec<i128> = loops.iter().map(|l| l.1).collect();
        for _ in 0..copies {
            let current = at.clone();
            for k in (0..loops.len()).rev() {
                at[k] += 1;
                if at[k] < loops[k].2 {
                    break;
                }
                at[k] = loops[k].1;
            }
            *self.sym.locals.borrow_mut() = loops.iter().zip(&current).map(|(l, &v)| (l.0.clone(), v)).collect();
            let r = self.copy(g, chain, owner, &current);
            self.sym.locals.borrow_mut().clear();
            out.extend(r?);
        }
        Ok(out)
    }

    fn copy(&self, g: &ParamGroup, chain: &[Link], owner: &'static str, at: &[i128]) -> Result<Vec<Decl>, String> {
        if let Some(gd) = &g.guard {
            let num = |e: &Expr| self.sym.numeric(e, chain).map(Num::as_f64).map_err(|d| d.message);
            let (a, b) = (num(&gd.lhs)?, num(&gd.rhs)?);
            if !gd.op.holds(a, b) {
                return Ok(vec![]);
            }
        }
        let index: Vec<u64> = at.iter().map(|&v| v as u64).collect();
        g.decls
            .iter()
            .map(|d| {
                let shape = d.shape.iter().map(|e| self.sym.expr(e, chain, 0)).collect::<Result<Vec<_>, _>>()?;
                Ok(Decl { owner, role: d.role.name.clone(), index: index.clone(), repeat: None, shape })
            })
            .collect()
    }
}
