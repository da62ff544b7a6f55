//! The kernel IR: what one dispatch computes, independent of any backend.
//! The `fuse` pass (`pass/fuse.rs`) turns a group of graph ops into one
//! [`Kernel`], which replaces them in the graph as one `fused` node; the CPU,
//! WGSL and CUDA emitters read kernels, and [`interpret`] runs one on the host
//! so every fused group is checked against the ops it replaced.
//!
//! A kernel is a typed expression DAG over its inputs (the `fused` node's
//! operands, in order). Every node has a tensor type with symbolic dimensions
//! and denotes a value at each index of its shape; the last node is the
//! result. Layout ops become index maps ([`Layout`]: a node reading another
//! at a remapped index, never a copy); element-wise nodes read their operands
//! at their own index (broadcasting is an explicit map); a [`Expr::Reduce`]
//! folds the last axis of a row; at most one [`Expr::Anchor`] is a library
//! call (GEMM, attention, convolution) whose operands are the prologue and
//! whose readers are the epilogue. Norms and softmax are spelled out in these
//! primitives, in the order of the reference kernels, so a fused group
//! computes the same bits as the ops it replaced.

pub mod dense;
pub mod interpret;
pub mod split;
mod text;
pub mod traffic;

use crate::ir::dim::Dim;
use crate::ir::graph::TensorType;
use crate::ir::infer::infer;
use crate::ir::op::{Binary, DType, Op, Unary, F};
use crate::ir::text::type_str;
use serde::{Deserialize, Serialize};

/// A node of a kernel, by its position in [`Kernel::nodes`].
pub type KId = u32;

/// How a node reads its one operand: the value at index `i` is the operand's
/// value at `map(i)`. Shapes are the two nodes' types.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Layout {
    /// The same elements in row-major order under another shape.
    Reshape,
    /// Axis `j` of the result is axis `perm[j]` of the operand.
    Permute(Vec<u8>),
    /// Rows `start..` of `axis`.
    Slice { axis: u8, start: Dim },
    /// Numpy broadcasting: leading axes added, axes of extent 1 repeated.
    Broadcast,
}

/// The fold of a [`Expr::Reduce`], in index order, in f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Reduce {
    Sum,
    /// The largest value; NaN wins (as the reference softmax).
    Max,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Expr {
    /// Input `i` of the kernel.
    Load(u32),
    /// An f32 scalar.
    Const(F),
    /// Another node read through an index map.
    Map {
        x: KId,
        map: Layout,
    },
    Unary(Unary, KId),
    /// Both operands have this node's shape.
    Binary(Binary, KId, KId),
    Affine {
        x: KId,
        scale: F,
        shift: F,
    },
    ClampMax {
        x: KId,
        max: F,
    },
    /// `x` where `x > min`, else `min` (NaN gives `min`, as the reference
    /// `l2_normalize`'s denominator).
    AtLeast {
        x: KId,
        min: F,
    },
    /// The fold of the last axis; the result keeps it with extent 1.
    Reduce {
        x: KId,
        op: Reduce,
    },
    /// The parts side by side along `axis`.
    Concat {
        axis: u8,
        parts: Vec<KId>,
    },
    /// `dst` with its rows `start..` along `axis` replaced by `src`: only as a
    /// kernel's result, `dst` its input 0, a state the kernel updates in
    /// place (a backend writes `src` into the state's slice, nothing else).
    WriteSlice {
        dst: KId,
        src: KId,
        axis: u8,
        start: Dim,
    },
    /// A library op (`linear`, `matmul`, `attention`, `conv2d`) on operands.
    Anchor {
        op: Op,
        operands: Vec<KId>,
    },
}

impl Expr {
    pub fn operands(&self) -> Vec<KId> {
        match self {
            Expr::Load(_) | Expr::Const(_) => vec![],
            Expr::Map { x, .. }
            | Expr::Unary(_, x)
            | Expr::Affine { x, .. }
            | Expr::ClampMax { x, .. }
            | Expr::AtLeast { x, .. }
            | Expr::Reduce { x, .. } => vec![*x],
            Expr::Binary(_, a, b) => vec![*a, *b],
            Expr::WriteSlice { dst, src, .. } => vec![*dst, *src],
            Expr::Concat { parts, .. } => parts.clone(),
            Expr::Anchor { operands, .. } => operands.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KNode {
    pub ty: TensorType,
    pub expr: Expr,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Kernel {
    /// Types of the inputs (the `fused` node's operands, in order).
    pub inputs: Vec<TensorType>,
    /// In topological order; the last is the result.
    pub nodes: Vec<KNode>,
}

/// Whether an op is a library anchor (at most one per kernel).
pub fn is_anchor(op: &Op) -> bool {
    matches!(op, Op::Linear | Op::MatMul | Op::Attention { .. } | Op::Conv2d { .. })
}

impl Kernel {
    pub fn output(&self) -> &TensorType {
        &self.nodes.last().expect("a kernel has a result").ty
    }

    /// The anchor, if any.
    pub fn anchor(&self) -> Option<(&Op, &[KId])> {
        self.nodes.iter().find_map(|n| match &n.expr {
            Expr::Anchor { op, operands } => Some((op, operands.as_slice())),
            _ => None,
        })
    }

    /// The type of node `id`'s value.
    /// When the kernel writes a slice of its input 0 in place: the node
    /// written there, the axis and the first row.
    pub fn store(&self) -> Option<(KId, u8, &Dim)> {
        match &self.nodes.last()?.expr {
            Expr::WriteSlice { src, axis, start, .. } => Some((*src, *axis, start)),
            _ => None,
        }
    }

    pub fn ty(&self, id: KId) -> &TensorType {
        &self.nodes[id as usize].ty
    }

    /// Check the kernel's typing rules: operands defined before use, types
    /// as each expression gives them, at most one anchor, the inputs used as
    /// declared, the result f32.
    pub fn verify(&self, operands: &[&TensorType]) -> Result<(), String> {
        if operands.len() != self.inputs.len() || operands.iter().zip(&self.inputs).any(|(a, b)| *a != b) {
            return Err(format!(
                "the kernel takes {}, given {}",
                types_text(self.inputs.iter()),
                types_text(operands.iter().copied())
            ));
        }
        if self.nodes.is_empty() {
            return Err("a kernel without nodes".into());
        }
        let anchors = self.nodes.iter().filter(|n| matches!(n.expr, Expr::Anchor { .. })).count();
        if anchors > 1 {
            return Err(format!("{anchors} anchors in one kernel (at most one)"));
        }
        for (i, n) in self.nodes.iter().enumerate() {
            let ty = self.infer(i, &n.expr).map_err(|e| format!("kernel node {i}: {e}"))?;
            if ty != n.ty {
                return Err(format!("kernel node {i} is declared {} but computes {}", type_str(&n.ty), type_str(&ty)));
            }
            if n.ty.dtype != DType::F32 && !matches!(n.expr, Expr::Load(_)) {
                return Err(format!("kernel node {i}: only inputs may be {}", n.ty.dtype.name()));
            }
        }
        if self.store().is_some() {
            let readers = self
                .nodes
                .iter()
                .filter(|n| n.expr.operands().iter().any(|&o| self.nodes[o as usize].expr == Expr::Load(0)));
            if readers.count() != 1 {
                return Err("a kernel that writes into its input 0 reads it only there".into());
            }
        }
        if self.output().dtype != DType::F32 {
            return Err("a kernel's result is f32".into());
        }
        Ok(())
    }

    /// The type node `i` computes from its operands.
    fn infer(&self, i: usize, e: &Expr) -> Result<TensorType, String> {
        let ops = e.operands();
        if let Some(&o) = ops.iter().find(|&&o| o as usize >= i) {
            return Err(format!("reads node {o}, not defined before it"));
        }
        let ty = |o: KId| &self.nodes[o as usize].ty;
        let same = |a: KId, b: KId| -> Result<(), String> {
            if ty(a).shape == ty(b).shape {
                Ok(())
            } else {
                Err(format!("operands {} and {} differ (broadcasting is a map)", type_str(ty(a)), type_str(ty(b))))
            }
        };
        match e {
            Expr::Load(k) => self.inputs.get(*k as usize).cloned().ok_or_else(|| format!("no input {k}")),
            Expr::Const(_) => Ok(TensorType::f32(vec![])),
            // A map's result type is its own declaration; check the map fits.
            Expr::Map { x, map } => {
                let me = &self.nodes[i].ty;
                map.check(&ty(*x).shape, &me.shape)?;
                Ok(TensorType { dtype: ty(*x).dtype, shape: me.shape.clone() })
            }
            Expr::Unary(_, x) | Expr::Affine { x, .. } | Expr::ClampMax { x, .. } | Expr::AtLeast { x, .. } => {
                Ok(ty(*x).clone())
            }
            Expr::Binary(_, a, b) => {
                same(*a, *b)?;
                Ok(ty(*a).clone())
            }
            Expr::Reduce { x, .. } => {
                let mut s = ty(*x).shape.clone();
                *s.last_mut().ok_or("the reduction of a scalar")? = Dim::c(1);
                Ok(TensorType::f32(s))
            }
            Expr::WriteSlice { dst, src, axis, start } => {
                if i + 1 != self.nodes.len() || self.nodes[*dst as usize].expr != Expr::Load(0) {
                    return Err("a write_slice is the kernel's result, into its input 0".into());
                }
                infer(&Op::WriteSlice { axis: *axis, start: start.clone() }, &[ty(*dst), ty(*src)])
            }
            Expr::Concat { axis, parts } => {
                infer(&Op::Concat { axis: *axis }, &parts.iter().map(|&p| ty(p)).collect::<Vec<_>>())
            }
            Expr::Anchor { op, operands } => {
                if !is_anchor(op) {
                    return Err(format!("`{}` is not an anchor", op.name()));
                }
                infer(op, &operands.iter().map(|&p| ty(p)).collect::<Vec<_>>())
            }
        }
    }

    /// MACs of the anchor (the only node that counts), as the unfused op's.
    pub fn macs(&self) -> Dim {
        match self.anchor() {
            Some((op, operands)) => {
                let tys: Vec<&TensorType> = operands.iter().map(|&o| self.ty(o)).collect();
                let out = self
                    .nodes
                    .iter()
                    .find(|n| matches!(n.expr, Expr::Anchor { .. }))
                    .map(|n| &n.ty)
                    .expect("an anchor");
                crate::cost::op_macs(op, &tys, out)
            }
            None => Dim::c(0),
        }
    }
}

impl Layout {
    /// Whether reading a value of shape `from` through this map gives `to`.
    pub fn check(&self, from: &[Dim], to: &[Dim]) -> Result<(), String> {
        let ok = match self {
            Layout::Reshape => crate::ir::dim::product(from) == crate::ir::dim::product(to),
            Layout::Permute(perm) => {
                perm.len() == from.len()
                    && perm.len() == to.len()
                    && perm.iter().enumerate().all(|(j, &p)| (p as usize) < from.len() && from[p as usize] == to[j])
            }
            Layout::Slice { axis, .. } => {
                let a = *axis as usize;
                from.len() == to.len() && a < from.len() && (0..from.len()).all(|k| k == a || from[k] == to[k])
            }
            Layout::Broadcast => crate::ir::infer::broadcast(from, to).is_ok_and(|s| s == to),
        };
        if ok {
            Ok(())
        } else {
            Err(format!("{self:?} does not map {} to {}", dims_text(from), dims_text(to)))
        }
    }
}

fn dims_text(d: &[Dim]) -> String {
    format!("[{}]", d.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", "))
}

fn types_text<'a>(t: impl Iterator<Item = &'a TensorType>) -> String {
    format!("({})", t.map(type_str).collect::<Vec<_>>().join(", "))
}
