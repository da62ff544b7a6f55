//! Kernels dispatched and activation bytes moved, before and after fusion,
//! per program run and per plan. Definitions (the optimiser issue's):
//! unfused, every non-source op of the lowered graph is one kernel (as an
//! eager framework runs it) and moves its operands and its result; fused, one
//! kernel is one dispatch (a `fused` node, a library call or an op left
//! alone), moving what crosses its boundary, and a layout op left in the
//! graph is a view (no kernel, nothing moved). Weights are never counted.
//! Both sides count what the ops touch, not whole buffers: attention reads
//! the `keys` filled rows of a KV cache, and a state update written in place
//! (`write_slice`) reads and writes its slice, not the whole state.

use super::{Expr, KId};
use crate::ir::{Bindings, Dim, Graph, Op, TensorType};
use crate::plan::Plan;
use petgraph::stable_graph::NodeIndex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dispatches {
    pub kernels: u64,
    /// Activation bytes read and written.
    pub bytes: u64,
}

impl std::ops::AddAssign for Dispatches {
    fn add_assign(&mut self, o: Dispatches) {
        self.kernels += o.kernels;
        self.bytes += o.bytes;
    }
}

/// Whether a node is dispatched when layout ops are views.
fn is_view(op: &Op) -> bool {
    matches!(op, Op::Reshape { .. } | Op::Permute { .. } | Op::Slice { .. })
}

fn count(g: &Graph, b: &Bindings, views: bool) -> Dispatches {
    let Some(live) = crate::ir::liveness::Liveness::of(g) else { return Dispatches::default() };
    let bytes = |n: NodeIndex| g.g[n].ty.numel().eval(b) * g.g[n].ty.dtype.bytes();
    let mut d = Dispatches::default();
    for &n in live.order.iter().filter(|n| live.needed[n.index()]) {
        let op = &g.g[n].op;
        if op.is_source() || (views && is_view(op)) {
            continue;
        }
        d.kernels += 1;
        let operands = &live.operands[n.index()];
        if let Op::WriteSlice { .. } = op {
            d.bytes += 2 * bytes(operands[1]);
            continue;
        }
        // A kernel that writes a state's slice in place moves the slice, not the state.
        let store = match op {
            Op::Fused(k) => k.store().map(|(src, _, _)| k.ty(src).numel().eval(b) * 4),
            _ => None,
        };
        d.bytes += store.unwrap_or_else(|| bytes(n));
        for (i, &o) in operands.iter().enumerate().skip(usize::from(store.is_some())) {
            if !matches!(g.g[o].op, Op::Param { .. }) {
                d.bytes += read_bytes(op, i, &g.g[o].ty, b);
            }
        }
    }
    d
}

/// The keys an attention reads of operand `i` when it is a key or value
/// cache (of a plain op, or of a kernel whose anchor loads input `i` there).
fn attention_keys(op: &Op, i: usize) -> Option<&Dim> {
    match op {
        Op::Attention { keys, .. } if i == 1 || i == 2 => Some(keys),
        Op::Fused(k) => k.nodes.iter().find_map(|n| match &n.expr {
            Expr::Anchor { op: Op::Attention { keys, .. }, operands } => {
                let loads_i = |o: &KId| matches!(k.nodes[*o as usize].expr, Expr::Load(l) if l as usize == i);
                (loads_i(&operands[1]) || loads_i(&operands[2])).then_some(keys)
            }
            _ => None,
        }),
        _ => None,
    }
}

/// Bytes of operand `i` (of type `ty`) that `op` reads.
fn read_bytes(op: &Op, i: usize, ty: &TensorType, b: &Bindings) -> u64 {
    let all = ty.numel().eval(b) * ty.dtype.bytes();
    match (attention_keys(op, i), ty.rank().checked_sub(2)) {
        (Some(keys), Some(axis)) => {
            let rows = ty.shape[axis].eval(b).max(1);
            all / rows * keys.eval(b).min(rows)
        }
        _ => all,
    }
}

/// One run of `g`, every op a kernel (`g` as lowered, unfused).
pub fn unfused(g: &Graph, b: &Bindings) -> Dispatches {
    count(g, b, false)
}

/// One run of `g` as dispatched (`g` after the `fuse` pass).
pub fn dispatched(g: &Graph, b: &Bindings) -> Dispatches {
    count(g, b, true)
}

/// Every run of a plan for `images` images, each program counted by `each`
/// under the run's bindings; programs not in `graphs` count nothing.
pub fn of_plan(
    plan: &Plan,
    graphs: &HashMap<&str, &Graph>,
    images: u64,
    each: impl Fn(&Graph, &Bindings) -> Dispatches,
) -> Dispatches {
    let mut d = Dispatches::default();
    for (e, i) in plan.runs() {
        if let Some(g) = graphs.get(e.program.as_str()) {
            d += each(g, &e.bindings(images, i));
        }
    }
    d
}
