//! The kernel IR's plain host interpreter: the meaning of a kernel, with no
//! backend. Each element of the result is evaluated through the expression
//! DAG at its index (maps remap the index, reductions fold the row, once per
//! row), the anchor once on its materialised operands by the caller's
//! library ([`Anchors`]: the reference backend passes its own kernels). The
//! arithmetic is the ops' own ([`Unary::apply`](crate::ir::op::Unary::apply),
//! ...), so a kernel computes the same bits as the ops it replaced.

use super::{Expr, KId, Kernel, Layout, Reduce};
use crate::ir::{Bindings, Op};
use std::collections::HashMap;

/// A dense row-major host value.
#[derive(Clone, Debug, PartialEq)]
pub struct Value {
    pub shape: Vec<usize>,
    pub data: Data,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// The library that runs a kernel's anchor.
pub trait Anchors {
    fn run(&self, op: &Op, operands: &[&Value], b: &Bindings) -> Result<Value, String>;
}

/// Check `inputs` against the kernel's declared inputs under `b` (count,
/// shapes); every node's concrete shape. Both evaluators
/// (`interpret::run`, `dense::run`) start here.
pub(crate) fn check_inputs(k: &Kernel, inputs: &[&Value], b: &Bindings) -> Result<Vec<Vec<usize>>, String> {
    if inputs.len() != k.inputs.len() {
        return Err(format!("the kernel takes {} inputs, given {}", k.inputs.len(), inputs.len()));
    }
    let concrete = |d: &[crate::ir::Dim]| d.iter().map(|d| d.eval(b) as usize).collect::<Vec<usize>>();
    for (i, (v, t)) in inputs.iter().zip(&k.inputs).enumerate() {
        if v.shape != concrete(&t.shape) {
            return Err(format!("kernel input {i} is {:?}, declared {:?} under {b:?}", v.shape, concrete(&t.shape)));
        }
    }
    Ok(k.nodes.iter().map(|n| concrete(&n.ty.shape)).collect())
}

/// The kernel's result on `inputs` under `b` (for a kernel that writes a
/// slice of its input 0, the whole updated input: see [`run_store`]).
pub fn run(k: &Kernel, inputs: &[&Value], b: &Bindings, anchors: &dyn Anchors) -> Result<Value, String> {
    let shapes = check_inputs(k, inputs, b)?;
    let mut ev = Eval { k, inputs, shapes, b, reduced: HashMap::new(), anchor: None };
    if let Some(a) = k.nodes.iter().position(|n| matches!(n.expr, Expr::Anchor { .. })) {
        let Expr::Anchor { op, operands } = &k.nodes[a].expr else { unreachable!("found above") };
        let mut values = Vec::with_capacity(operands.len());
        for &o in operands {
            values.push(match &k.nodes[o as usize].expr {
                Expr::Load(i) => inputs[*i as usize].clone(),
                _ => ev.materialise(o)?,
            });
        }
        let v = anchors.run(op, &values.iter().collect::<Vec<_>>(), b)?;
        if v.shape != ev.shapes[a] {
            return Err(format!("the anchor computed {:?}, declared {:?}", v.shape, ev.shapes[a]));
        }
        ev.anchor = Some((a as KId, v));
    }
    ev.materialise((k.nodes.len() - 1) as KId)
}

/// For a kernel that writes a slice of its input 0 ([`Kernel::store`]): only
/// the slice's values (what a backend writes in place), and where they go.
/// `rest` are the inputs after input 0 (the state, which the slice's values
/// never read: [`Kernel::verify`]).
pub fn run_store(
    k: &Kernel,
    rest: &[&Value],
    b: &Bindings,
    anchors: &dyn Anchors,
) -> Result<(Value, u8, usize), String> {
    let (src, axis, start) = k.store().ok_or("the kernel writes no slice")?;
    let part = Kernel { inputs: k.inputs.clone(), nodes: k.nodes[..=src as usize].to_vec() };
    let shape = k.inputs[0].shape.iter().map(|d| d.eval(b) as usize).collect();
    let unread = Value { shape, data: Data::F32(vec![]) };
    let inputs: Vec<&Value> = std::iter::once(&unread).chain(rest.iter().copied()).collect();
    Ok((run(&part, &inputs, b, anchors)?, axis, start.eval(b) as usize))
}

struct Eval<'a> {
    k: &'a Kernel,
    inputs: &'a [&'a Value],
    shapes: Vec<Vec<usize>>,
    b: &'a Bindings,
    /// Reductions done, by (node, row).
    reduced: HashMap<(KId, usize), f32>,
    anchor: Option<(KId, Value)>,
}

fn ravel(idx: &[usize], shape: &[usize]) -> usize {
    idx.iter().zip(shape).fold(0, |acc, (&i, &d)| acc * d + i)
}

fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for (i, &d) in shape.iter().enumerate().rev() {
        if d > 0 {
            idx[i] = flat % d;
            flat /= d;
        }
    }
    idx
}

fn f32_at(v: &Value, flat: usize) -> f32 {
    match &v.data {
        Data::F32(x) => x[flat],
        Data::I64(x) => x[flat] as f32,
    }
}

impl Eval<'_> {
    /// Every element of node `n`.
    fn materialise(&mut self, n: KId) -> Result<Value, String> {
        let shape = self.shapes[n as usize].clone();
        let total: usize = shape.iter().product();
        let mut out = Vec::with_capacity(total);
        for flat in 0..total {
            out.push(self.at(n, &unravel(flat, &shape))?);
        }
        Ok(Value { shape, data: Data::F32(out) })
    }

    fn at(&mut self, n: KId, idx: &[usize]) -> Result<f32, String> {
        let node = &self.k.nodes[n as usize];
        Ok(match &node.expr {
            Expr::Load(i) => {
                let v = self.inputs[*i as usize];
                f32_at(v, ravel(idx, &v.shape))
            }
            Expr::Const(v) => v.get() as f32,
            Expr::Map { x, map } => {
                let src = self.map_index(*x, n, map, idx);
                self.at(*x, &src)?
            }
            Expr::Unary(u, x) => u.apply(self.at(*x, idx)?),
            Expr::Binary(op, a, c) => {
                let a = self.at(*a, idx)?;
                op.apply(a, self.at(*c, idx)?)
            }
            // Two roundings, as the reference's `affine`.
            Expr::Affine { x, scale, shift } => self.at(*x, idx)? * scale.get() as f32 + shift.get() as f32,
            Expr::ClampMax { x, max } => {
                let (v, m) = (self.at(*x, idx)?, max.get() as f32);
                if v > m {
                    m
                } else {
                    v
                }
            }
            Expr::AtLeast { x, min } => {
                let (v, m) = (self.at(*x, idx)?, min.get() as f32);
                if v > m {
                    v
                } else {
                    m
                }
            }
            Expr::Reduce { x, op } => {
                let r = idx.len() - 1;
                let row = ravel(&idx[..r], &self.shapes[n as usize][..r]);
                if let Some(&v) = self.reduced.get(&(n, row)) {
                    return Ok(v);
                }
                let len = *self.shapes[*x as usize].last().expect("rank >= 1");
                let mut at = idx.to_vec();
                let mut acc = if *op == Reduce::Sum { 0f32 } else { f32::NEG_INFINITY };
                for j in 0..len {
                    at[r] = j;
                    let v = self.at(*x, &at)?;
                    acc = match op {
                        Reduce::Sum => acc + v,
                        Reduce::Max if v > acc || v.is_nan() => v,
                        Reduce::Max => acc,
                    };
                }
                self.reduced.insert((n, row), acc);
                acc
            }
            Expr::WriteSlice { dst, src, axis, start } => {
                let (a, start) = (*axis as usize, start.eval(self.b) as usize);
                let len = self.shapes[*src as usize][a];
                if (start..start + len).contains(&idx[a]) {
                    let mut at = idx.to_vec();
                    at[a] -= start;
                    return self.at(*src, &at);
                }
                return self.at(*dst, idx);
            }
            Expr::Concat { axis, parts } => {
                let a = *axis as usize;
                let mut at = idx.to_vec();
                for &p in parts {
                    let len = self.shapes[p as usize][a];
                    if at[a] < len {
                        return self.at(p, &at);
                    }
                    at[a] -= len;
                }
                return Err(format!("index {idx:?} beyond the concatenation"));
            }
            Expr::Anchor { .. } => {
                let (_, v) = self.anchor.as_ref().ok_or("the anchor has not run")?;
                f32_at(v, ravel(idx, &v.shape))
            }
        })
    }

    /// The index of `x` that node `n` reads at `idx` through `map`.
    fn map_index(&self, x: KId, n: KId, map: &Layout, idx: &[usize]) -> Vec<usize> {
        let (from, to) = (&self.shapes[x as usize], &self.shapes[n as usize]);
        match map {
            Layout::Reshape => unravel(ravel(idx, to), from),
            Layout::Permute(perm) => {
                let mut src = vec![0; from.len()];
                for (j, &p) in perm.iter().enumerate() {
                    src[p as usize] = idx[j];
                }
                src
            }
            Layout::Slice { axis, start } => {
                let mut src = idx.to_vec();
                src[*axis as usize] += start.eval(self.b) as usize;
                src
            }
            Layout::Broadcast => {
                let lead = to.len() - from.len();
                from.iter().enumerate().map(|(k, &d)| if d == 1 { 0 } else { idx[k + lead] }).collect()
            }
        }
    }
}
