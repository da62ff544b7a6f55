//! The text form of a kernel, printed under its `fused` node by
//! `ir::text::print` (and so by `ecarc graph --after fuse`):
//!
//! ```text
//! k0 = load 0 : f32[B, T, 64]
//! k1 = reduce.sum(k0) : f32[B, T, 1]
//! k2 = map.broadcast(k1) : f32[B, T, 64]
//! ```

use super::{Expr, Kernel, Layout, Reduce};
use crate::ir::text::{attrs, type_str};

impl Kernel {
    /// One line per node.
    pub fn lines(&self) -> Vec<String> {
        let refs = |ids: &[u32]| ids.iter().map(|i| format!("k{i}")).collect::<Vec<_>>().join(", ");
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let body = match &n.expr {
                    Expr::Load(k) => format!("load {k}"),
                    Expr::Const(v) => format!("const {v}"),
                    Expr::Map { x, map } => match map {
                        Layout::Reshape => format!("map.reshape(k{x})"),
                        Layout::Broadcast => format!("map.broadcast(k{x})"),
                        Layout::Permute(p) => format!(
                            "map.permute(k{x}) {{perm = [{}]}}",
                            p.iter().map(u8::to_string).collect::<Vec<_>>().join(", ")
                        ),
                        Layout::Slice { axis, start } => format!("map.slice(k{x}) {{axis = {axis}, start = {start}}}"),
                    },
                    Expr::Unary(u, x) => format!("{}(k{x})", crate::ir::Op::Unary(*u).name()),
                    Expr::Binary(b, x, y) => format!("{}(k{x}, k{y})", crate::ir::Op::Binary(*b).name()),
                    Expr::Affine { x, scale, shift } => format!("affine(k{x}) {{scale = {scale}, shift = {shift}}}"),
                    Expr::ClampMax { x, max } => format!("clamp_max(k{x}) {{max = {max}}}"),
                    Expr::AtLeast { x, min } => format!("at_least(k{x}) {{min = {min}}}"),
                    Expr::Reduce { x, op } => {
                        format!("reduce.{}(k{x})", if *op == Reduce::Sum { "sum" } else { "max" })
                    }
                    Expr::WriteSlice { dst, src, axis, start } => {
                        format!("write_slice(k{dst}, k{src}) {{axis = {axis}, start = {start}}}")
                    }
                    Expr::Concat { axis, parts } => format!("concat({}) {{axis = {axis}}}", refs(parts)),
                    Expr::Anchor { op, operands } => {
                        let a = attrs(op);
                        let a = if a.is_empty() {
                            String::new()
                        } else {
                            format!(
                                " {{{}}}",
                                a.iter().map(|(k, v)| format!("{k} = {v}")).collect::<Vec<_>>().join(", ")
                            )
                        };
                        format!("anchor.{}({}){a}", op.name(), refs(operands))
                    }
                };
                format!("k{i} = {body} : {}", type_str(&n.ty))
            })
            .collect()
    }
}
