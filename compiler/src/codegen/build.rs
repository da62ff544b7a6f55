//! Kernel IR -> shader trees: one stage per group of reductions over rows of
//! one shape (one thread per row), then the result's stage (one thread per
//! element). A node's value at an
//! index is built on demand from its operands' values at remapped indices;
//! each (node, index) is bound once per scope, so a value read twice (the
//! centred `x` of a norm) is computed once.

use super::tree::{Buf, Func, Op2, Shader, Ty, E, S};
use super::{MetaWord, Write};
use crate::ir::dim::{product, Dim};
use crate::ir::op::{Binary, DType, Unary};
use crate::kernel::{Expr, KId, Kernel, Layout, Reduce};
use std::collections::HashMap;

pub(super) struct BuiltStage {
    pub shader: Shader,
    pub write: Write,
    pub meta: Vec<MetaWord>,
    pub threads: Dim,
}

pub(super) struct Built {
    pub stages: Vec<BuiltStage>,
    pub scratch: Vec<Dim>,
}

pub(super) fn build(k: &Kernel, row_stage: bool) -> Result<Built, String> {
    k.verify(&k.inputs.iter().collect::<Vec<_>>())?;
    if let Some(n) = k.nodes.iter().find(|n| matches!(n.expr, Expr::Anchor { .. } | Expr::WriteSlice { .. })) {
        return Err(match &n.expr {
            Expr::Anchor { op, .. } => {
                format!("an anchor (`{}`) is not element-wise: split the kernel at it first", op.name())
            }
            _ => "a write_slice result: emit the stored part (`kernel::split::stored`)".into(),
        });
    }
    for n in &k.nodes {
        if let Some(c) = product(&n.ty.shape).as_const().filter(|&c| c > u32::MAX as u64) {
            return Err(format!("{c} elements do not fit 32-bit indices"));
        }
    }
    let last = k.nodes.len() - 1;
    let mut needed = vec![false; k.nodes.len()];
    needed[last] = true;
    for i in (0..=last).rev() {
        if needed[i] {
            for o in k.nodes[i].expr.operands() {
                needed[o as usize] = true;
            }
        }
    }
    // Reductions folding the result's rows: one stage, a workgroup per row.
    if let Some(st) = super::rows::row_stage(k, &needed)?.filter(|_| row_stage) {
        return Ok(Built { stages: vec![st], scratch: vec![] });
    }
    // Needed reductions in node order, grouped while they fold rows of one
    // shape: a group is one stage (one thread per row folds them in turn,
    // a later fold reading an earlier one of its own row from a register)
    // writing one scratch buffer, a slot of `rows` elements per reduction.
    let mut groups: Vec<(Vec<Dim>, Vec<KId>)> = vec![];
    for (i, n) in k.nodes.iter().enumerate() {
        if let (true, Expr::Reduce { x, .. }) = (needed[i], &n.expr) {
            let shape = &k.nodes[*x as usize].ty.shape;
            let rows = shape[..shape.len().saturating_sub(1)].to_vec();
            match groups.last_mut() {
                Some((r, g)) if *r == rows => g.push(i as KId),
                _ => groups.push((rows, vec![i as KId])),
            }
        }
    }
    let mut scratch_of = vec![None; k.nodes.len()];
    let (mut scratch, mut stages) = (vec![], vec![]);
    for (rows, group) in groups {
        let buf = scratch.len() as u32;
        for (slot, &n) in group.iter().enumerate() {
            scratch_of[n as usize] = Some((buf, slot as u32));
        }
        match reduce_stage(k, &scratch_of, &rows, &group, buf) {
            Ok(st) => {
                scratch.push(product(&rows).mul_c(group.len() as u64));
                stages.push(st);
            }
            // A fold reads another row of an earlier one: a stage each.
            Err(e) if e == CROSS_ROW => {
                for &n in &group {
                    let buf = scratch.len() as u32;
                    scratch_of[n as usize] = Some((buf, 0));
                    stages.push(reduce_stage(k, &scratch_of, &rows, &[n], buf)?);
                    scratch.push(product(&rows));
                }
            }
            Err(e) => return Err(e),
        }
    }
    stages.push(result_stage(k, &scratch_of)?);
    Ok(Built { stages, scratch })
}

/// Why a group of reductions cannot share a stage.
pub(super) const CROSS_ROW: &str = "a reduction read at another row in the stage that computes it";

/// One thread per row: the folds of `group` (reductions over rows of shape
/// `rows`), each into its slot of scratch `buf`.
fn reduce_stage(
    k: &Kernel,
    scratch_of: &[Option<(u32, u32)>],
    rows: &[Dim],
    group: &[KId],
    buf: u32,
) -> Result<BuiltStage, String> {
    let mut b = Builder::new(k, scratch_of);
    let mut out = vec![];
    let row = b.unravel(&mut out, E::Id, rows)?;
    let count = if group.len() > 1 { b.dim(&product(rows))? } else { E::U32(0) };
    b.row = row.clone();
    for (slot, &n) in group.iter().enumerate() {
        let Expr::Reduce { x, op } = k.nodes[n as usize].expr else { return Err("not a reduction".into()) };
        let shape = &k.nodes[x as usize].ty.shape;
        let len = shape.last().ok_or("the reduction of a scalar")?;
        let acc = b.fresh();
        let init = match op {
            Reduce::Sum => 0.0,
            Reduce::Max => f32::NEG_INFINITY,
        };
        out.push(S::Var { var: acc, ty: Ty::F32, init: E::F32(init) });
        let j = b.fresh();
        let mut idx = row.clone();
        idx.push(E::Var(j));
        let len = b.dim(len)?;
        let saved = b.cache.clone();
        let mut body = vec![];
        let v = b.value(&mut body, x, &idx)?;
        b.cache = saved;
        let next = match op {
            Reduce::Sum => E::bin(Op2::Add, E::Var(acc), v),
            // NaN wins and stays (a later `v > NaN` is false).
            Reduce::Max => E::Select {
                cond: Box::new(E::bin(
                    Op2::Or,
                    E::bin(Op2::Gt, v.clone(), E::Var(acc)),
                    E::Call(Func::IsNan, vec![v.clone()]),
                )),
                t: Box::new(v),
                f: Box::new(E::Var(acc)),
            },
        };
        body.push(S::Assign { var: acc, value: next });
        out.push(S::Loop { var: j, count: len, body });
        let base = if slot == 0 { E::U32(0) } else { E::imul(E::U32(slot as u32), count.clone()) };
        out.push(S::Store { at: E::iadd(base, E::Id), value: E::Var(acc) });
        b.local.push((n, acc));
    }
    Ok(b.finish(out, Write::Scratch(buf), product(rows)))
}

/// One thread per element of the result, written through the output view.
fn result_stage(k: &Kernel, scratch_of: &[Option<(u32, u32)>]) -> Result<BuiltStage, String> {
    Ok(store_stage(k, scratch_of, None)?.0)
}

/// The epilogue hook's body (`codegen/epilogue.rs`): the result stage of a
/// reduction-free kernel whose input `anchor` is not a buffer but the value
/// of the variable returned (the accumulator the anchor kernel passes in,
/// `E::Id` its flat index). The caller has checked that the input is read
/// only at that index.
pub(super) fn epilogue_stage(k: &Kernel, anchor: u32) -> Result<(BuiltStage, u32), String> {
    k.verify(&k.inputs.iter().collect::<Vec<_>>())?;
    let none = vec![None; k.nodes.len()];
    let (st, acc) = store_stage(k, &none, Some(anchor))?;
    Ok((st, acc.ok_or("no accumulator")?))
}

fn store_stage(
    k: &Kernel,
    scratch_of: &[Option<(u32, u32)>],
    anchor: Option<u32>,
) -> Result<(BuiltStage, Option<u32>), String> {
    let last = (k.nodes.len() - 1) as KId;
    let shape = &k.nodes[last as usize].ty.shape;
    let mut b = Builder::new(k, scratch_of);
    let acc = anchor.map(|a| (a, b.fresh()));
    b.acc = acc;
    let mut out = vec![];
    let idx = b.unravel(&mut out, E::Id, shape)?;
    let v = b.value(&mut out, last, &idx)?;
    let mut at = b.meta(MetaWord::OutputOffset);
    for (a, i) in idx.iter().enumerate() {
        let stride = b.meta(MetaWord::OutputStride(a as u8));
        at = E::iadd(at, E::imul(i.clone(), stride));
    }
    out.push(S::Store { at, value: v });
    Ok((b.finish(out, Write::Output, product(shape)), acc.map(|(_, v)| v)))
}

pub(super) struct Builder<'k> {
    k: &'k Kernel,
    scratch_of: &'k [Option<(u32, u32)>],
    /// In a reduction stage: the thread's row, and the reductions already
    /// folded in this thread (node, accumulator).
    pub row: Vec<E>,
    pub local: Vec<(KId, u32)>,
    meta: Vec<MetaWord>,
    reads: Vec<(Buf, bool)>,
    vars: u32,
    /// The bound value of (node, index) in the current scope.
    pub cache: HashMap<(KId, String), E>,
    /// In an epilogue hook: the input that is the anchor's value, and the
    /// variable holding it.
    acc: Option<(u32, u32)>,
}

impl<'k> Builder<'k> {
    pub(super) fn new(k: &'k Kernel, scratch_of: &'k [Option<(u32, u32)>]) -> Builder<'k> {
        Builder {
            k,
            scratch_of,
            row: vec![],
            local: vec![],
            meta: vec![MetaWord::Threads],
            reads: vec![],
            vars: 0,
            cache: HashMap::new(),
            acc: None,
        }
    }

    pub(super) fn finish(self, body: Vec<S>, write: Write, threads: Dim) -> BuiltStage {
        BuiltStage { shader: Shader { reads: self.reads, body, row_threads: None }, write, meta: self.meta, threads }
    }

    pub(super) fn fresh(&mut self) -> u32 {
        self.vars += 1;
        self.vars - 1
    }

    pub(super) fn meta(&mut self, w: MetaWord) -> E {
        let at = match self.meta.iter().position(|m| *m == w) {
            Some(i) => i,
            None => {
                self.meta.push(w);
                self.meta.len() - 1
            }
        };
        E::Meta(at as u32)
    }

    /// A dimension: a literal when constant, else a meta word.
    pub(super) fn dim(&mut self, d: &Dim) -> Result<E, String> {
        match d.as_const() {
            Some(c) => u32::try_from(c).map(E::U32).map_err(|_| format!("dimension {c} does not fit 32-bit indices")),
            None => Ok(self.meta(MetaWord::Dim(d.clone()))),
        }
    }

    fn read(&mut self, b: Buf, int: bool) {
        if !self.reads.iter().any(|(r, _)| *r == b) {
            self.reads.push((b, int));
        }
    }

    /// `e` bound to a new name unless it is a leaf.
    pub(super) fn bind(&mut self, out: &mut Vec<S>, ty: Ty, e: E) -> E {
        if e.is_leaf() {
            return e;
        }
        let var = self.fresh();
        out.push(S::Let { var, ty, value: e });
        E::Var(var)
    }

    /// The row-major position of `idx` in `shape`.
    fn flat(&mut self, idx: &[E], shape: &[Dim]) -> Result<E, String> {
        let mut at = E::U32(0);
        for (a, (i, d)) in idx.iter().zip(shape).enumerate() {
            // The first extent never multiplies anything.
            at = if a == 0 { i.clone() } else { E::iadd(E::imul(at, self.dim(d)?), i.clone()) };
        }
        Ok(at)
    }

    /// The index in `shape` of row-major position `flat`.
    pub(super) fn unravel(&mut self, out: &mut Vec<S>, flat: E, shape: &[Dim]) -> Result<Vec<E>, String> {
        let mut idx = vec![E::U32(0); shape.len()];
        let mut rest = self.bind(out, Ty::U32, flat);
        for a in (0..shape.len()).rev() {
            if a == 0 {
                idx[0] = rest;
                break;
            }
            let d = self.dim(&shape[a])?;
            idx[a] = self.bind(out, Ty::U32, E::irem(rest.clone(), d.clone()));
            rest = self.bind(out, Ty::U32, E::idiv(rest, d));
        }
        Ok(idx)
    }

    /// Node `n`'s value at `idx` (an index in its shape), as an f32.
    pub(super) fn value(&mut self, out: &mut Vec<S>, n: KId, idx: &[E]) -> Result<E, String> {
        let key = (n, format!("{idx:?}"));
        if let Some(e) = self.cache.get(&key) {
            return Ok(e.clone());
        }
        let k = self.k;
        let node = k.nodes.get(n as usize).ok_or_else(|| format!("no node {n}"))?;
        let e = match &node.expr {
            Expr::Load(i) if self.acc.is_some_and(|(a, _)| a == *i) => E::Var(self.acc.map_or(0, |(_, v)| v)),
            Expr::Load(i) => {
                let ty = k.inputs.get(*i as usize).ok_or_else(|| format!("no input {i}"))?;
                let mut at = self.meta(MetaWord::InputOffset(*i));
                for (a, ix) in idx.iter().enumerate() {
                    let stride = self.meta(MetaWord::InputStride(*i, a as u8));
                    at = E::iadd(at, E::imul(ix.clone(), stride));
                }
                self.read(Buf::Input(*i), ty.dtype == DType::I64);
                E::Read(Buf::Input(*i), Box::new(at))
            }
            Expr::Const(c) => E::F32(c.get() as f32),
            Expr::Map { x, map } => {
                let from = &k.nodes[*x as usize].ty.shape;
                let src = self.remap(out, map, idx, from, &node.ty.shape)?;
                let e = self.value(out, *x, &src)?;
                self.cache.insert(key, e.clone());
                return Ok(e);
            }
            Expr::Unary(u, x) => {
                let v = self.value(out, *x, idx)?;
                match u {
                    Unary::Neg => E::Neg(Box::new(v)),
                    Unary::Exp => E::Call(Func::Exp, vec![v]),
                    Unary::Sqrt => E::Call(Func::Sqrt, vec![v]),
                    Unary::Tanh => E::Call(Func::Tanh, vec![v]),
                    Unary::Silu => E::Call(Func::Silu, vec![v]),
                    Unary::Gelu => E::Call(Func::Gelu, vec![v]),
                    Unary::GeluTanh => E::Call(Func::GeluTanh, vec![v]),
                }
            }
            Expr::Binary(op, a, c) => {
                let (a, c) = (self.value(out, *a, idx)?, self.value(out, *c, idx)?);
                match op {
                    Binary::Add => E::bin(Op2::Add, a, c),
                    Binary::Sub => E::bin(Op2::Sub, a, c),
                    Binary::Mul => E::bin(Op2::Mul, a, c),
                    Binary::Div => E::bin(Op2::Div, a, c),
                    Binary::Min => E::Call(Func::MinNan, vec![a, c]),
                    Binary::Max => E::Call(Func::MaxNan, vec![a, c]),
                }
            }
            Expr::Affine { x, scale, shift } => {
                let v = self.value(out, *x, idx)?;
                E::bin(Op2::Add, E::bin(Op2::Mul, v, E::F32(scale.get() as f32)), E::F32(shift.get() as f32))
            }
            Expr::ClampMax { x, max } => {
                let (v, m) = (self.value(out, *x, idx)?, E::F32(max.get() as f32));
                E::Select { cond: Box::new(E::bin(Op2::Gt, v.clone(), m.clone())), t: Box::new(m), f: Box::new(v) }
            }
            Expr::AtLeast { x, min } => {
                let (v, m) = (self.value(out, *x, idx)?, E::F32(min.get() as f32));
                E::Select { cond: Box::new(E::bin(Op2::Gt, v.clone(), m.clone())), t: Box::new(v), f: Box::new(m) }
            }
            Expr::Reduce { .. } => {
                let own = idx.len() == self.row.len() + 1 && idx[..self.row.len()] == self.row[..];
                if let Some(&(_, acc)) = self.local.iter().find(|(m, _)| *m == n) {
                    if !own {
                        return Err(CROSS_ROW.into());
                    }
                    E::Var(acc)
                } else {
                    let (buf, slot) = self.scratch_of[n as usize].ok_or("a reduction without scratch")?;
                    let (_, rows) = node.ty.shape.split_last().ok_or("a reduction to a scalar")?;
                    let base = if slot == 0 { E::U32(0) } else { E::imul(E::U32(slot), self.dim(&product(rows))?) };
                    let at = E::iadd(base, self.flat(idx, &node.ty.shape)?);
                    self.read(Buf::Scratch(buf), false);
                    E::Read(Buf::Scratch(buf), Box::new(at))
                }
            }
            Expr::Concat { axis, parts } => self.concat(out, *axis as usize, parts, idx)?,
            Expr::WriteSlice { .. } | Expr::Anchor { .. } => return Err("not element-wise".into()),
        };
        let e = self.bind(out, Ty::F32, e);
        self.cache.insert(key, e.clone());
        Ok(e)
    }

    /// The operand's index that a map reads for `idx`.
    fn remap(&mut self, out: &mut Vec<S>, map: &Layout, idx: &[E], from: &[Dim], to: &[Dim]) -> Result<Vec<E>, String> {
        Ok(match map {
            Layout::Reshape => {
                // Axes equal at both ends map one to one; only the middle
                // (e.g. `[H, D]` -> `[H*D]`, or an added axis of 1) is
                // flattened and unravelled.
                let (f, t) = (from.len(), to.len());
                let mut p = 0;
                while p < f && p < t && from[p] == to[p] {
                    p += 1;
                }
                let mut s = 0;
                while s < f - p && s < t - p && from[f - 1 - s] == to[t - 1 - s] {
                    s += 1;
                }
                let flat = self.flat(&idx[p..t - s], &to[p..t - s])?;
                let mid = self.unravel(out, flat, &from[p..f - s])?;
                idx[..p].iter().cloned().chain(mid).chain(idx[t - s..].iter().cloned()).collect()
            }
            Layout::Permute(perm) => {
                let mut src = vec![E::U32(0); from.len()];
                for (j, &p) in perm.iter().enumerate() {
                    let (s, i) = (src.get_mut(p as usize), idx.get(j));
                    *s.ok_or("a permutation out of range")? = i.ok_or("a permutation of another rank")?.clone();
                }
                src
            }
            Layout::Slice { axis, start } => {
                let mut src = idx.to_vec();
                let start = self.dim(start)?;
                let a = src.get_mut(*axis as usize).ok_or("a slice axis out of range")?;
                *a = E::iadd(a.clone(), start);
                src
            }
            Layout::Broadcast => {
                let lead = to.len().checked_sub(from.len()).ok_or("a broadcast to a lower rank")?;
                from.iter()
                    .enumerate()
                    .map(|(a, d)| if *d == Dim::c(1) { E::U32(0) } else { idx[a + lead].clone() })
                    .collect()
            }
        })
    }

    /// A concat: branches on the index along `axis`, each reading its part
    /// (only the taken branch reads, so no part is read out of its range).
    fn concat(&mut self, out: &mut Vec<S>, axis: usize, parts: &[KId], idx: &[E]) -> Result<E, String> {
        let var = self.fresh();
        out.push(S::Var { var, ty: Ty::F32, init: E::F32(0.0) });
        let at = idx.get(axis).ok_or("a concat axis out of range")?.clone();
        let mut start = Dim::c(0);
        // Built innermost (last part) first, each wrapped by the test before it.
        let mut starts = vec![];
        for &p in parts {
            starts.push(start.clone());
            start = start.add(&self.k.nodes[p as usize].ty.shape[axis]);
        }
        let mut tail: Vec<S> = vec![];
        for (j, &p) in parts.iter().enumerate().rev() {
            let saved = self.cache.clone();
            let mut body = vec![];
            let mut sub = idx.to_vec();
            let s = self.dim(&starts[j])?;
            sub[axis] = E::isub(at.clone(), s);
            let v = self.value(&mut body, p, &sub)?;
            body.push(S::Assign { var, value: v });
            self.cache = saved;
            if j + 1 == parts.len() {
                tail = body;
            } else {
                let end = self.dim(&starts[j + 1])?;
                tail = vec![S::If { cond: E::bin(Op2::Lt, at.clone(), end), then: body, otherwise: tail }];
            }
        }
        out.extend(tail);
        Ok(E::Var(var))
    }
}
