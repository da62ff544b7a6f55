//! Epilogue fusion: a fused kernel's epilogue (`kernel::split`'s part that
//! reads the anchor's result) as a WGSL function the anchor's hand-written
//! kernel calls at its store, so `linear -> bias/GELU/gate/residual` is one
//! dispatch instead of the GEMM and a separate element-wise pass.
//!
//! # The store hook
//! An anchor shader (`runtime/src/webgpu/shaders/gemm_*.wgsl`,
//! `attention.wgsl`) declares `info` (binding 0) and its operands (bindings
//! `1..first`) and no output: every value of its result goes through
//!
//! ```wgsl
//! fn store_out(id: u32, acc: f32)
//! ```
//!
//! where `id` is the value's row-major position in the anchor's (dense)
//! result shape. The runtime appends one hook module to the anchor's text:
//! [`plain`] (`y[id] = acc`, the anchor's result as it is) or an epilogue
//! from [`emit`]. A hook module declares its own bindings from `first`: the
//! epilogue's inputs in [`Hook::reads`] order, then the written `y`; its meta
//! words ([`Hook::meta`], evaluated as a stage's, `Threads` being the
//! result's element count) are appended to the anchor's info block and read
//! at `info[em + k]`, `em = arrayLength(&info) - meta.len()`, so the anchor's
//! own layout is untouched. Helpers keep the stage printer's names
//! (`gelu`, `is_nan`, ...) and buffers are `x{i}` and `y`: none is a name
//! an anchor shader uses. Equal epilogues print equal text, so a pipeline
//! per distinct epilogue is compiled once.
//!
//! # What qualifies ([`qualifies`])
//! The epilogue reads the anchor's value only at the element it writes: the
//! result's flat index is the anchor's (element-wise ops, reshapes and
//! maps that keep the element count pass the index through; other maps,
//! concats and reductions do not), and the epilogue has no reduction (its
//! own stage would need a pass of its own). Other inputs are read through
//! any maps.

use super::build::epilogue_stage;
use super::tree::{Buf, Shader};
use super::wgsl;
use super::MetaWord;
use crate::ir::dim::product;
use crate::kernel::{Expr, Kernel, Layout};
use std::fmt::Write as _;

/// An epilogue as a store hook.
#[derive(Clone, Debug, PartialEq)]
pub struct Hook {
    /// The hook module (bindings from `first`, helpers, `store_out`).
    pub wgsl: String,
    /// The part's inputs it reads, in binding order (never the anchor's).
    pub reads: Vec<u32>,
    /// Its meta words, appended to the anchor's info block.
    pub meta: Vec<MetaWord>,
    /// The tree of `store_out`'s body.
    pub shader: Shader,
}

/// The hook that stores the anchor's result as it is: `y[id] = acc`, `y`
/// at binding `first`.
pub fn plain(first: u32) -> String {
    format!(
        "// The store hook (ecarc_compiler::codegen::epilogue): the anchor's result as it is.\n\
         @group(0) @binding({first}) var<storage, read_write> y: array<f32>;\n\
         fn store_out(id: u32, acc: f32) {{\n    y[id] = acc;\n}}\n"
    )
}

/// Why the epilogue `k` (input `anchor` the anchor's value) cannot run at
/// the anchor's store, or `Ok` when it can.
pub fn qualifies(k: &Kernel, anchor: u32) -> Result<(), String> {
    let n = k.nodes.len();
    if n == 0 {
        return Err("an empty epilogue".into());
    }
    // Per node: read at the thread's flat index, read elsewhere.
    let (mut ident, mut other) = (vec![false; n], vec![false; n]);
    ident[n - 1] = true;
    for i in (0..n).rev() {
        if !ident[i] && !other[i] {
            continue;
        }
        let node = &k.nodes[i];
        let pass = |x: u32, keep: bool, ident: &mut [bool], other: &mut [bool]| {
            let x = x as usize;
            if keep {
                ident[x] |= ident[i];
                other[x] |= other[i];
            } else {
                other[x] = true;
            }
        };
        match &node.expr {
            Expr::Load(j) if *j == anchor && other[i] => {
                return Err("the anchor's value is read at another element than the one written".into())
            }
            Expr::Load(_) | Expr::Const(_) => {}
            Expr::Map { x, map } => {
                let from = &k.nodes[*x as usize].ty.shape;
                let to = &node.ty.shape;
                let keep = match map {
                    Layout::Reshape => true,
                    Layout::Broadcast => product(from) == product(to),
                    Layout::Permute(p) => p.iter().enumerate().all(|(j, &q)| j == q as usize),
                    Layout::Slice { start, .. } => start.as_const() == Some(0) && from == to,
                };
                pass(*x, keep, &mut ident, &mut other);
            }
            Expr::Unary(_, x) | Expr::Affine { x, .. } | Expr::ClampMax { x, .. } | Expr::AtLeast { x, .. } => {
                pass(*x, true, &mut ident, &mut other)
            }
            Expr::Binary(_, a, b) => {
                pass(*a, true, &mut ident, &mut other);
                pass(*b, true, &mut ident, &mut other);
            }
            Expr::Concat { parts, .. } => {
                for &p in parts {
                    pass(p, false, &mut ident, &mut other);
                }
            }
            Expr::Reduce { .. } => return Err("a reduction in the epilogue".into()),
            Expr::WriteSlice { .. } | Expr::Anchor { .. } => return Err("not an anchor-free part".into()),
        }
    }
    let a = k.inputs.get(anchor as usize).ok_or("no anchor input")?;
    if product(&a.shape) != product(&k.output().shape) {
        return Err("the result's element count is not the anchor's".into());
    }
    Ok(())
}

/// The store hook that runs the epilogue `k` (input `anchor` the anchor's
/// value) on each value the anchor stores; bindings from `first`.
pub fn emit(k: &Kernel, anchor: u32, first: u32) -> Result<Hook, String> {
    qualifies(k, anchor)?;
    let (st, acc) = epilogue_stage(k, anchor)?;
    let shader = st.shader;
    let reads = shader
        .reads
        .iter()
        .map(|(b, _)| match b {
            Buf::Input(i) => Ok(*i),
            Buf::Scratch(_) => Err("an epilogue with scratch".to_string()),
        })
        .collect::<Result<Vec<u32>, String>>()?;
    let (body, used) = wgsl::print_body(&shader, 1, true);
    let mut w = String::from("// The store hook: a fused kernel's epilogue, generated from the kernel IR (ecarc_compiler::codegen::epilogue).\n");
    wgsl::bindings(&mut w, &shader, first);
    wgsl::helpers(&mut w, &used);
    let _ = write!(
        w,
        "\nfn store_out(id: u32, v{acc}: f32) {{\n    let em = arrayLength(&info) - {}u;\n{body}}}\n",
        st.meta.len()
    );
    Ok(Hook { wgsl: w, reads, meta: st.meta, shader })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::dim::Dim;
    use crate::ir::graph::TensorType;
    use crate::ir::op::{Binary, Unary};
    use crate::kernel::{KNode, Reduce};

    fn f32t(shape: &[u64]) -> TensorType {
        TensorType::f32(shape.iter().map(|&d| Dim::c(d)).collect())
    }
    fn node(shape: &[u64], expr: Expr) -> KNode {
        KNode { ty: f32t(shape), expr }
    }

    /// `gelu(acc + b) + r`, `acc` input 1.
    fn gelu_residual() -> Kernel {
        Kernel {
            inputs: vec![f32t(&[3, 4]), f32t(&[3, 4]), f32t(&[4])],
            nodes: vec![
                node(&[3, 4], Expr::Load(0)),
                node(&[3, 4], Expr::Load(1)),
                node(&[4], Expr::Load(2)),
                node(&[3, 4], Expr::Map { x: 2, map: Layout::Broadcast }),
                node(&[3, 4], Expr::Binary(Binary::Add, 1, 3)),
                node(&[3, 4], Expr::Unary(Unary::Gelu, 4)),
                node(&[3, 4], Expr::Binary(Binary::Add, 5, 0)),
                node(&[12], Expr::Map { x: 6, map: Layout::Reshape }),
            ],
        }
    }

    #[test]
    fn an_elementwise_epilogue_becomes_a_store_hook() {
        let h = emit(&gelu_residual(), 1, 4).unwrap();
        assert_eq!(h.reads, vec![2, 0]);
        assert!(h.wgsl.contains("@group(0) @binding(4) var<storage, read> x2"), "{}", h.wgsl);
        assert!(h.wgsl.contains("@group(0) @binding(5) var<storage, read> x0"), "{}", h.wgsl);
        assert!(h.wgsl.contains("@group(0) @binding(6) var<storage, read_write> y"), "{}", h.wgsl);
        assert!(h.wgsl.contains("fn store_out(id: u32, v0: f32)"), "{}", h.wgsl);
        assert!(h.wgsl.contains("fn gelu("), "{}", h.wgsl);
        assert!(!h.wgsl.contains("x1"), "the anchor is no buffer: {}", h.wgsl);
        assert_eq!(h.meta[0], MetaWord::Threads);
    }

    #[test]
    fn reads_of_the_anchor_elsewhere_and_reductions_do_not_qualify() {
        // acc^T + r: the anchor transposed does not qualify, the residual
        // transposed does (only the anchor's reads are constrained).
        let k = Kernel {
            inputs: vec![f32t(&[4, 3]), f32t(&[4, 3])],
            nodes: vec![
                node(&[4, 3], Expr::Load(0)),
                node(&[3, 4], Expr::Map { x: 0, map: Layout::Permute(vec![1, 0]) }),
                node(&[4, 3], Expr::Load(1)),
                node(&[3, 4], Expr::Map { x: 2, map: Layout::Permute(vec![1, 0]) }),
                node(&[3, 4], Expr::Binary(Binary::Add, 1, 3)),
            ],
        };
        k.verify(&k.inputs.iter().collect::<Vec<_>>()).unwrap();
        assert!(qualifies(&k, 0).is_err());
        assert!(qualifies(&k, 1).is_err());
        let mut k2 = k.clone();
        k2.nodes[1] = node(&[3, 4], Expr::Map { x: 0, map: Layout::Reshape });
        assert!(qualifies(&k2, 0).is_ok());
        assert!(qualifies(&k2, 1).is_err());
        let r = Kernel {
            inputs: vec![f32t(&[3, 4])],
            nodes: vec![node(&[3, 4], Expr::Load(0)), node(&[3, 1], Expr::Reduce { x: 0, op: Reduce::Sum })],
        };
        assert!(qualifies(&r, 0).is_err());
    }
}
