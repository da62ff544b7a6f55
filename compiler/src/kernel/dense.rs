//! The kernel IR's interpreter, node by node: every node the result needs is
//! evaluated over its whole shape, in the kernel's (topological) order, into
//! a dense row-major array; maps are strided gathers. Each element is
//! computed by the same arithmetic as [`interpret::run`] (the ops' own
//! `apply`, reductions folded in index order from the same start), so the
//! results are the same bits; it is much faster because nothing is
//! recomputed per element or allocated per index.

use super::interpret::{Anchors, Data, Value};
use super::{Expr, KId, Kernel, Layout, Reduce};
use crate::ir::Bindings;

/// The kernel's result on `inputs` under `b`, as [`super::interpret::run`].
pub fn run(k: &Kernel, inputs: &[&Value], b: &Bindings, anchors: &dyn Anchors) -> Result<Value, String> {
    let shapes = super::interpret::check_inputs(k, inputs, b)?;
    // Whole arrays are indexed directly: every input must hold its elements.
    for (i, v) in inputs.iter().enumerate() {
        let len = match &v.data {
            Data::F32(x) => x.len(),
            Data::I64(x) => x.len(),
        };
        if len != v.shape.iter().product::<usize>() {
            return Err(format!("kernel input {i} has {len} elements for a shape {:?}", v.shape));
        }
    }
    let last = k.nodes.len().checked_sub(1).ok_or("a kernel without nodes")?;
    // The nodes the result needs.
    let mut needed = vec![false; k.nodes.len()];
    needed[last] = true;
    for i in (0..=last).rev() {
        if needed[i] {
            for o in k.nodes[i].expr.operands() {
                *needed.get_mut(o as usize).ok_or("an operand out of range")? = true;
            }
        }
    }
    let mut vals: Vec<Option<Vec<f32>>> = vec![None; k.nodes.len()];
    for i in 0..=last {
        if !needed[i] {
            continue;
        }
        let get = |vals: &[Option<Vec<f32>>], o: KId| -> Result<Vec<f32>, String> {
            vals.get(o as usize).and_then(|v| v.clone()).ok_or_else(|| format!("node {o} read before it is computed"))
        };
        let v: Vec<f32> = match &k.nodes[i].expr {
            Expr::Load(j) => match &inputs.get(*j as usize).ok_or_else(|| format!("no input {j}"))?.data {
                Data::F32(x) => x.clone(),
                Data::I64(x) => x.iter().map(|&v| v as f32).collect(),
            },
            Expr::Const(c) => vec![c.get() as f32],
            Expr::Map { x, map } => {
                let src = vals[*x as usize].as_deref().ok_or("a map of an uncomputed node")?;
                gather(src, &shapes[*x as usize], &shapes[i], map, b)?
            }
            Expr::Unary(u, x) => get(&vals, *x)?.into_iter().map(|v| u.apply(v)).collect(),
            Expr::Binary(op, a, c) => {
                let (a, c) = (
                    vals[*a as usize].as_deref().ok_or("an uncomputed operand")?,
                    vals[*c as usize].as_deref().ok_or("an uncomputed operand")?,
                );
                if a.len() != c.len() {
                    return Err("binary operands of different sizes".into());
                }
                a.iter().zip(c).map(|(&a, &c)| op.apply(a, c)).collect()
            }
            Expr::Affine { x, scale, shift } => {
                let (s, t) = (scale.get() as f32, shift.get() as f32);
                get(&vals, *x)?.into_iter().map(|v| v * s + t).collect()
            }
            Expr::ClampMax { x, max } => {
                let m = max.get() as f32;
                get(&vals, *x)?.into_iter().map(|v| if v > m { m } else { v }).collect()
            }
            Expr::AtLeast { x, min } => {
                let m = min.get() as f32;
                get(&vals, *x)?.into_iter().map(|v| if v > m { v } else { m }).collect()
            }
            Expr::Reduce { x, op } => {
                let src = vals[*x as usize].as_deref().ok_or("a reduction of an uncomputed node")?;
                let len = *shapes[*x as usize].last().ok_or("the reduction of a scalar")?;
                let rows = shapes[i].iter().product::<usize>();
                (0..rows)
                    .map(|r| {
                        let mut acc = if *op == Reduce::Sum { 0f32 } else { f32::NEG_INFINITY };
                        for &v in &src[r * len..r * len + len] {
                            acc = match op {
                                Reduce::Sum => acc + v,
                                Reduce::Max if v > acc || v.is_nan() => v,
                                Reduce::Max => acc,
                            };
                        }
                        acc
                    })
                    .collect()
            }
            Expr::WriteSlice { dst, src, axis, start } => {
                let mut out = get(&vals, *dst)?;
                let s = vals[*src as usize].as_deref().ok_or("an uncomputed slice")?;
                let (a, start) = (*axis as usize, start.eval(b) as usize);
                let (shape, sshape) = (&shapes[i], &shapes[*src as usize]);
                let inner: usize = shape[a + 1..].iter().product();
                let outer: usize = shape[..a].iter().product();
                let (n, m) = (shape[a], sshape[a]);
                if out.len() != outer * n * inner || start + m > n {
                    return Err("a write_slice out of its destination".into());
                }
                for o in 0..outer {
                    let d = (o * n + start) * inner;
                    out[d..d + m * inner].copy_from_slice(&s[o * m * inner..(o + 1) * m * inner]);
                }
                out
            }
            Expr::Concat { axis, parts } => {
                let a = *axis as usize;
                let shape = &shapes[i];
                let inner: usize = shape[a + 1..].iter().product();
                let outer: usize = shape[..a].iter().product();
                let mut out = Vec::with_capacity(shape.iter().product());
                for o in 0..outer {
                    for &p in parts {
                        let pv = vals[p as usize].as_deref().ok_or("an uncomputed part")?;
                        let w = shapes[p as usize][a] * inner;
                        out.extend_from_slice(&pv[o * w..(o + 1) * w]);
                    }
                }
                out
            }
            Expr::Anchor { op, operands } => {
                let mut values = Vec::with_capacity(operands.len());
                for &o in operands {
                    values.push(match &k.nodes[o as usize].expr {
                        Expr::Load(j) => inputs[*j as usize].clone(),
                        _ => Value { shape: shapes[o as usize].clone(), data: Data::F32(get(&vals, o)?) },
                    });
                }
                let v = anchors.run(op, &values.iter().collect::<Vec<_>>(), b)?;
                if v.shape != shapes[i] {
                    return Err(format!("the anchor computed {:?}, declared {:?}", v.shape, shapes[i]));
                }
                match v.data {
                    Data::F32(x) => x,
                    Data::I64(x) => x.iter().map(|&v| v as f32).collect(),
                }
            }
        };
        if v.len() != shapes[i].iter().product::<usize>() {
            return Err(format!("kernel node {i} computed {} elements for {:?}", v.len(), shapes[i]));
        }
        vals[i] = Some(v);
    }
    let out = vals[last].take().ok_or("the result was not computed")?;
    Ok(Value { shape: shapes[last].clone(), data: Data::F32(out) })
}

fn row_major(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// `to`-shaped values read from `src` (of shape `from`) through `map`.
fn gather(src: &[f32], from: &[usize], to: &[usize], map: &Layout, b: &Bindings) -> Result<Vec<f32>, String> {
    let total: usize = to.iter().product();
    let fs = row_major(from);
    // Each output axis' stride in the source, and the source offset.
    let (strides, offset): (Vec<usize>, usize) = match map {
        Layout::Reshape => {
            if total != src.len() {
                return Err(format!("reshape of {from:?} to {to:?}"));
            }
            return Ok(src.to_vec());
        }
        Layout::Permute(perm) => {
            let mut st = vec![0; to.len()];
            for (j, &p) in perm.iter().enumerate() {
                *st.get_mut(j).ok_or("a permutation of another rank")? =
                    *fs.get(p as usize).ok_or("a permutation out of range")?;
            }
            (st, 0)
        }
        Layout::Slice { axis, start } => {
            let a = *axis as usize;
            (fs.clone(), start.eval(b) as usize * fs.get(a).ok_or("a slice axis out of range")?)
        }
        Layout::Broadcast => {
            let lead = to.len().checked_sub(from.len()).ok_or("a broadcast to a lower rank")?;
            ((0..to.len()).map(|k| if k < lead || from[k - lead] == 1 { 0 } else { fs[k - lead] }).collect(), 0)
        }
    };
    let mut out = Vec::with_capacity(total);
    if total == 0 {
        return Ok(out);
    }
    let r = to.len();
    if r == 0 {
        out.push(*src.get(offset).ok_or("a map out of its source")?);
        return Ok(out);
    }
    // Odometer over all but the last axis; the last axis as a strided run.
    let (last, ls) = (to[r - 1], strides[r - 1]);
    let mut idx = vec![0usize; r - 1];
    let mut at = offset;
    let max = src.len();
    for _ in 0..total / last {
        if last > 0 && at + (last - 1) * ls >= max {
            return Err("a map out of its source".into());
        }
        if ls == 1 {
            out.extend_from_slice(&src[at..at + last]);
        } else {
            out.extend((0..last).map(|j| src[at + j * ls]));
        }
        for a in (0..r - 1).rev() {
            idx[a] += 1;
            at += strides[a];
            if idx[a] < to[a] {
                break;
            }
            at -= strides[a] * to[a];
            idx[a] = 0;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::interpret;
    use super::super::{KNode, Kernel};
    use super::*;
    use crate::ir::dim::Dim;
    use crate::ir::graph::TensorType;
    use crate::ir::op::{Binary, Op, Unary, F};

    fn t(shape: &[u64]) -> TensorType {
        TensorType::f32(shape.iter().map(|&d| Dim::c(d)).collect())
    }
    fn n(shape: &[u64], expr: Expr) -> KNode {
        KNode { ty: t(shape), expr }
    }
    struct Mm;
    impl Anchors for Mm {
        fn run(&self, _: &Op, x: &[&Value], _: &Bindings) -> Result<Value, String> {
            let (Data::F32(a), Data::F32(w)) = (&x[0].data, &x[1].data) else { unreachable!() };
            let (r, i, o) = (x[0].shape[0], x[0].shape[1], x[1].shape[1]);
            let y = (0..r * o).map(|ro| (0..i).map(|j| a[ro / o * i + j] * w[j * o + ro % o]).sum()).collect();
            Ok(Value { shape: vec![r, o], data: Data::F32(y) })
        }
    }

    /// Softmax over rows of a permuted, sliced, broadcast input, a concat,
    /// a matmul anchor, an affine epilogue.
    fn kernel() -> Kernel {
        Kernel {
            inputs: vec![t(&[4, 3]), t(&[3]), t(&[2, 3])],
            nodes: vec![
                n(&[4, 3], Expr::Load(0)),                                                         // 0
                n(&[3, 4], Expr::Map { x: 0, map: Layout::Permute(vec![1, 0]) }),                  // 1
                n(&[3, 2], Expr::Map { x: 1, map: Layout::Slice { axis: 1, start: Dim::c(1) } }),  // 2
                n(&[3, 1], Expr::Reduce { x: 2, op: Reduce::Max }),                                // 3
                n(&[3, 2], Expr::Map { x: 3, map: Layout::Broadcast }),                            // 4
                n(&[3, 2], Expr::Binary(Binary::Sub, 2, 4)),                                       // 5
                n(&[3, 2], Expr::Unary(Unary::Exp, 5)),                                            // 6
                n(&[3, 1], Expr::Reduce { x: 6, op: Reduce::Sum }),                                // 7
                n(&[3, 2], Expr::Map { x: 7, map: Layout::Broadcast }),                            // 8
                n(&[3, 2], Expr::Binary(Binary::Div, 6, 8)),                                       // 9
                n(&[3], Expr::Load(1)),                                                            // 10
                n(&[3, 3], Expr::Map { x: 10, map: Layout::Broadcast }),                           // 11
                n(&[3, 5], Expr::Concat { axis: 1, parts: vec![9, 11] }),                          // 12
                n(&[3, 1], Expr::Map { x: 10, map: Layout::Reshape }),                             // 13 unused
                n(&[2, 3], Expr::Load(2)),                                                         // 14
                n(&[3, 3], Expr::Map { x: 12, map: Layout::Slice { axis: 1, start: Dim::c(2) } }), // 15
                n(&[2, 3], Expr::Anchor { op: Op::MatMul, operands: vec![14, 15] }),               // 16
                n(&[2, 3], Expr::Affine { x: 16, scale: F::new(0.5), shift: F::new(-1.0) }),       // 17
                n(&[2, 3], Expr::ClampMax { x: 17, max: F::new(0.25) }),                           // 18
                n(&[2, 3], Expr::AtLeast { x: 18, min: F::new(-0.75) }),                           // 19
            ],
        }
    }

    #[test]
    fn node_by_node_is_the_per_element_interpreter_bit_for_bit() {
        let k = kernel();
        k.verify(&k.inputs.iter().collect::<Vec<_>>()).unwrap();
        let v = |shape: Vec<usize>, s: f32| {
            let len = shape.iter().product::<usize>();
            Value { shape, data: Data::F32((0..len).map(|i| (i as f32 * 1.37 + s).sin() * 3.0).collect()) }
        };
        let ins = [v(vec![4, 3], 0.1), v(vec![3], 0.5), v(vec![2, 3], 0.9)];
        let refs: Vec<&Value> = ins.iter().collect();
        let b = Bindings::default();
        let want = interpret::run(&k, &refs, &b, &Mm).unwrap();
        let got = run(&k, &refs, &b, &Mm).unwrap();
        assert_eq!(got, want);
        // Every prefix of the kernel (each node as a result) agrees too.
        for last in 0..k.nodes.len() {
            let part = Kernel { inputs: k.inputs.clone(), nodes: k.nodes[..=last].to_vec() };
            let (a, e) = (run(&part, &refs, &b, &Mm), interpret::run(&part, &refs, &b, &Mm));
            assert_eq!(a.map(|v| format!("{v:?}")), e.map(|v| format!("{v:?}")), "node {last}");
        }
        assert!(run(&k, &refs[..2], &b, &Mm).is_err());
    }
}
