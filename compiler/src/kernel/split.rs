//! A kernel split at its anchor, for backends that run the anchor as a
//! library call (GEMM, attention, convolution) and the rest as element-wise
//! kernels: one prologue part per anchor operand that is not a plain input,
//! the anchor, and the epilogue part that reads the anchor's result as an
//! extra input. Each part is a kernel of its own (anchor-free, typed, in
//! topological order) with the list of what its inputs are, so the CPU, WGSL
//! and CUDA backends share one split.

use super::{Expr, KId, KNode, Kernel};
use crate::ir::dim::Dim;
use crate::ir::graph::TensorType;
use crate::ir::op::Op;

/// What one input of a part is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// Input `i` of the whole kernel.
    Input(u32),
    /// The anchor's result.
    Anchor,
}

/// An anchor-free kernel and where its inputs come from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Part {
    pub kernel: Kernel,
    /// One per input of `kernel`.
    pub sources: Vec<Source>,
}

/// An operand of the anchor.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Operand {
    /// Input `i` of the whole kernel, read as it is.
    Input(u32),
    /// A value computed by a prologue part.
    Computed(Part),
}

/// A kernel with an anchor, split.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Split {
    pub anchor: Op,
    /// The anchor's result type.
    pub anchor_ty: TensorType,
    /// One per operand of the anchor, in order.
    pub operands: Vec<Operand>,
    /// What the kernel computes from the anchor's result; `None` when the
    /// anchor's result is the kernel's.
    pub epilogue: Option<Part>,
}

/// Split `k` at its anchor; `None` when it has none (the whole kernel is one
/// element-wise part: [`whole`]). A kernel that writes a slice of its input 0
/// is split after [`stored`] took the part that computes the slice.
pub fn split_at_anchor(k: &Kernel) -> Option<Split> {
    let a = k.nodes.iter().position(|n| matches!(n.expr, Expr::Anchor { .. }))? as KId;
    let Expr::Anchor { op, operands } = &k.nodes[a as usize].expr else { unreachable!("found above") };
    let operands = operands
        .iter()
        .map(|&o| match k.nodes[o as usize].expr {
            Expr::Load(i) => Operand::Input(i),
            _ => Operand::Computed(extract(k, o, None)),
        })
        .collect();
    let last = (k.nodes.len() - 1) as KId;
    let epilogue = if last == a { None } else { Some(extract(k, last, Some(a))) };
    Some(Split { anchor: op.clone(), anchor_ty: k.nodes[a as usize].ty.clone(), operands, epilogue })
}

/// A kernel as one part: the nodes its result depends on, its inputs only
/// those it reads (so a store kernel's part does not take the state).
pub fn whole(k: &Kernel) -> Part {
    extract(k, (k.nodes.len() - 1) as KId, None)
}

/// For a kernel that writes a slice of its input 0 ([`Kernel::store`]): the
/// kernel that computes the slice's values (the same inputs, input 0 unread),
/// the axis and the first row.
pub fn stored(k: &Kernel) -> Option<(Kernel, u8, Dim)> {
    let (src, axis, start) = k.store()?;
    let part = Kernel { inputs: k.inputs.clone(), nodes: k.nodes[..=src as usize].to_vec() };
    Some((part, axis, start.clone()))
}

/// The nodes `root` depends on, as a kernel of their own; the anchor (when
/// given) and the loads become the part's inputs, each input once.
fn extract(k: &Kernel, root: KId, anchor: Option<KId>) -> Part {
    let mut needed = vec![false; k.nodes.len()];
    let mut stack = vec![root];
    while let Some(n) = stack.pop() {
        if std::mem::replace(&mut needed[n as usize], true) {
            continue;
        }
        if Some(n) != anchor {
            stack.extend(k.nodes[n as usize].expr.operands());
        }
    }
    let mut sources: Vec<Source> = Vec::new();
    let mut inputs: Vec<TensorType> = Vec::new();
    let mut input_of = |s: Source, ty: &TensorType| -> u32 {
        match sources.iter().position(|&x| x == s) {
            Some(i) => i as u32,
            None => {
                sources.push(s);
                inputs.push(ty.clone());
                (sources.len() - 1) as u32
            }
        }
    };
    let mut id = vec![KId::MAX; k.nodes.len()];
    let mut nodes = Vec::new();
    for (i, n) in k.nodes.iter().enumerate() {
        if !needed[i] {
            continue;
        }
        let remap = |o: &KId| id[*o as usize];
        let expr = if Some(i as KId) == anchor {
            Expr::Load(input_of(Source::Anchor, &n.ty))
        } else {
            match &n.expr {
                Expr::Load(j) => Expr::Load(input_of(Source::Input(*j), &n.ty)),
                Expr::Const(c) => Expr::Const(*c),
                Expr::Map { x, map } => Expr::Map { x: remap(x), map: map.clone() },
                Expr::Unary(u, x) => Expr::Unary(*u, remap(x)),
                Expr::Binary(op, a, b) => Expr::Binary(*op, remap(a), remap(b)),
                Expr::Affine { x, scale, shift } => Expr::Affine { x: remap(x), scale: *scale, shift: *shift },
                Expr::ClampMax { x, max } => Expr::ClampMax { x: remap(x), max: *max },
                Expr::AtLeast { x, min } => Expr::AtLeast { x: remap(x), min: *min },
                Expr::Reduce { x, op } => Expr::Reduce { x: remap(x), op: *op },
                Expr::Concat { axis, parts } => Expr::Concat { axis: *axis, parts: parts.iter().map(remap).collect() },
                Expr::WriteSlice { dst, src, axis, start } => {
                    Expr::WriteSlice { dst: remap(dst), src: remap(src), axis: *axis, start: start.clone() }
                }
                Expr::Anchor { op, operands } => {
                    Expr::Anchor { op: op.clone(), operands: operands.iter().map(remap).collect() }
                }
            }
        };
        id[i] = nodes.len() as KId;
        nodes.push(KNode { ty: n.ty.clone(), expr });
    }
    Part { kernel: Kernel { inputs, nodes }, sources }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::op::{Binary, Unary, F};
    use crate::kernel::{Layout, Reduce};

    fn f32t(shape: &[u64]) -> TensorType {
        TensorType::f32(shape.iter().map(|&d| Dim::c(d)).collect())
    }

    fn node(shape: &[u64], expr: Expr) -> KNode {
        KNode { ty: f32t(shape), expr }
    }

    /// `gelu(rmsnorm-ish(x) @ w^T + b) + x`: a prologue on x, the weight
    /// plain, an epilogue reading the anchor, x and b.
    fn linear_kernel() -> Kernel {
        let (r, i, o): (u64, u64, u64) = (3, 4, 4);
        Kernel {
            inputs: vec![f32t(&[r, i]), f32t(&[o, i]), f32t(&[o])],
            nodes: vec![
                node(&[r, i], Expr::Load(0)),                                         // 0 x
                node(&[r, i], Expr::Binary(Binary::Mul, 0, 0)),                       // 1 x*x
                node(&[r, 1], Expr::Reduce { x: 1, op: Reduce::Sum }),                // 2
                node(&[r, i], Expr::Map { x: 2, map: Layout::Broadcast }),            // 3
                node(&[r, i], Expr::Binary(Binary::Div, 0, 3)),                       // 4 prologue
                node(&[o, i], Expr::Load(1)),                                         // 5 w
                node(&[r, o], Expr::Anchor { op: Op::Linear, operands: vec![4, 5] }), // 6
                node(&[o], Expr::Load(2)),                                            // 7 b
                node(&[r, o], Expr::Map { x: 7, map: Layout::Broadcast }),            // 8
                node(&[r, o], Expr::Binary(Binary::Add, 6, 8)),                       // 9
                node(&[r, o], Expr::Unary(Unary::Gelu, 9)),                           // 10
                node(&[r, o], Expr::Binary(Binary::Add, 10, 0)),                      // 11 (+x, o == i)
            ],
        }
    }

    #[test]
    fn a_linear_kernel_splits_into_prologue_anchor_epilogue() {
        let k = linear_kernel();
        k.verify(&k.inputs.iter().collect::<Vec<_>>()).unwrap();
        let s = split_at_anchor(&k).unwrap();
        assert_eq!(s.anchor, Op::Linear);
        assert_eq!(s.anchor_ty, f32t(&[3, 4]));
        assert_eq!(s.operands.len(), 2);
        let Operand::Computed(pro) = &s.operands[0] else { panic!("x is computed") };
        assert_eq!(pro.sources, vec![Source::Input(0)]);
        assert_eq!(pro.kernel.nodes.len(), 5);
        assert!(pro.kernel.anchor().is_none());
        assert_eq!(s.operands[1], Operand::Input(1));
        let epi = s.epilogue.as_ref().unwrap();
        assert_eq!(epi.sources, vec![Source::Input(0), Source::Anchor, Source::Input(2)]);
        assert!(epi.kernel.anchor().is_none());
        for p in [pro, epi] {
            p.kernel.verify(&p.kernel.inputs.iter().collect::<Vec<_>>()).unwrap();
            assert_eq!(p.kernel.output(), &k.nodes[if p == epi { 11 } else { 4 }].ty);
        }
    }

    #[test]
    fn parts_compute_what_the_kernel_does() {
        use crate::ir::Bindings;
        use crate::kernel::interpret::{run, Anchors, Data, Value};
        struct Lin;
        impl Anchors for Lin {
            fn run(&self, _: &Op, x: &[&Value], _: &Bindings) -> Result<Value, String> {
                let (Data::F32(a), Data::F32(w)) = (&x[0].data, &x[1].data) else { unreachable!() };
                let (r, i, o) = (x[0].shape[0], x[0].shape[1], x[1].shape[0]);
                let y = (0..r * o).map(|ro| (0..i).map(|j| a[ro / o * i + j] * w[ro % o * i + j]).sum()).collect();
                Ok(Value { shape: vec![r, o], data: Data::F32(y) })
            }
        }
        let k = linear_kernel();
        let v = |shape: Vec<usize>, seed: f32| {
            let n = shape.iter().product::<usize>();
            Value { shape, data: Data::F32((0..n).map(|j| (j as f32 * 0.37 + seed).sin()).collect()) }
        };
        let ins = [v(vec![3, 4], 0.1), v(vec![4, 4], 0.2), v(vec![4], 0.3)];
        let b = Bindings::default();
        let want = run(&k, &ins.iter().collect::<Vec<_>>(), &b, &Lin).unwrap();
        let s = split_at_anchor(&k).unwrap();
        let Operand::Computed(pro) = &s.operands[0] else { unreachable!() };
        let pick = |p: &Part, anchor: Option<&Value>| -> Vec<Value> {
            p.sources
                .iter()
                .map(|s| match s {
                    Source::Input(i) => ins[*i as usize].clone(),
                    Source::Anchor => anchor.unwrap().clone(),
                })
                .collect()
        };
        let xin = run(&pro.kernel, &pick(pro, None).iter().collect::<Vec<_>>(), &b, &Lin).unwrap();
        let y = Lin.run(&Op::Linear, &[&xin, &ins[1]], &b).unwrap();
        let epi = s.epilogue.as_ref().unwrap();
        let got = run(&epi.kernel, &pick(epi, Some(&y)).iter().collect::<Vec<_>>(), &b, &Lin).unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn a_bare_anchor_has_no_epilogue_and_anchor_free_kernels_do_not_split() {
        let k = Kernel {
            inputs: vec![f32t(&[2, 3]), f32t(&[3, 5])],
            nodes: vec![
                node(&[2, 3], Expr::Load(0)),
                node(&[3, 5], Expr::Load(1)),
                node(&[2, 5], Expr::Anchor { op: Op::MatMul, operands: vec![0, 1] }),
            ],
        };
        let s = split_at_anchor(&k).unwrap();
        assert_eq!(s.operands, vec![Operand::Input(0), Operand::Input(1)]);
        assert!(s.epilogue.is_none());
        let e = Kernel {
            inputs: vec![f32t(&[2])],
            nodes: vec![
                node(&[2], Expr::Load(0)),
                node(&[2], Expr::Affine { x: 0, scale: F::new(2.0), shift: F::new(1.0) }),
            ],
        };
        assert!(split_at_anchor(&e).is_none());
        assert_eq!(whole(&e).sources, vec![Source::Input(0)]);
    }

    #[test]
    fn a_store_kernel_gives_the_slice_part() {
        let k = Kernel {
            inputs: vec![f32t(&[1, 8, 2]), f32t(&[1, 2, 2])],
            nodes: vec![
                node(&[1, 8, 2], Expr::Load(0)),
                node(&[1, 2, 2], Expr::Load(1)),
                node(&[1, 2, 2], Expr::Unary(Unary::Neg, 1)),
                node(&[1, 8, 2], Expr::WriteSlice { dst: 0, src: 2, axis: 1, start: Dim::c(3) }),
            ],
        };
        k.verify(&k.inputs.iter().collect::<Vec<_>>()).unwrap();
        let (part, axis, start) = stored(&k).unwrap();
        assert_eq!((axis, start), (1, Dim::c(3)));
        assert_eq!(part.nodes.len(), 3);
        assert_eq!(part.output(), &f32t(&[1, 2, 2]));
        assert!(stored(&linear_kernel()).is_none());
    }
}
