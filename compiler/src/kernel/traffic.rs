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
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dispatches {
    pub kernels: u64,
    /// Activation bytes read and written.
    pub bytes: u64,
    /// Of `bytes`, the KV-cache rows attention reads: the same fused or not.
    pub cache_bytes: u64,
}

impl std::ops::AddAssign for Dispatches {
    fn add_assign(&mut self, o: Dispatches) {
        self.kernels += o.kernels;
        self.bytes += o.bytes;
        self.cache_bytes += o.cache_bytes;
    }
}

/// Whether a node is dispatched when layout ops are views.
fn is_view(op: &Op) -> bool {
    matches!(op, Op::Reshape { .. } | Op::Permute { .. } | Op::Slice { .. })
}

/// What one run of a program dispatches, with sizes still symbolic: built
/// once per program (one liveness walk), evaluated per run's bindings (and
/// remembered per bindings: a sample runs a program under few of them).
pub struct Counter {
    kernels: Vec<Dispatch>,
    seen: std::cell::RefCell<HashMap<Bindings, Dispatches>>,
}

struct Dispatch {
    written: Bytes,
    /// Operands read (weights excluded): all of `bytes`, or of a KV cache
    /// with `rows` rows only the attention's `keys` rows.
    reads: Vec<Read>,
}

/// Bytes of tensors: the sum over `parts` of element size times the
/// product of the shape, evaluated per run (no polynomial products).
#[derive(Clone)]
struct Bytes {
    parts: Vec<(Vec<Dim>, u64)>,
}

impl Bytes {
    fn of(ty: &TensorType) -> Bytes {
        Bytes { parts: vec![(ty.shape.clone(), ty.dtype.bytes())] }
    }
    fn eval(&self, b: &Bindings) -> u64 {
        self.parts.iter().map(|(shape, size)| shape.iter().map(|d| d.eval(b)).product::<u64>() * size).sum()
    }
}

struct Read {
    bytes: Bytes,
    cache: Option<(Dim, Dim)>,
}

impl Counter {
    /// Every non-source op a kernel; with `views`, layout ops are views.
    fn of(g: &Graph, views: bool) -> Counter {
        let mut kernels = Vec::new();
        let Some(live) = crate::ir::liveness::Liveness::of(g) else {
            return Counter { kernels, seen: Default::default() };
        };
        let bytes = Bytes::of;
        for &n in live.order.iter().filter(|n| live.needed[n.index()]) {
            let op = &g.g[n].op;
            if op.is_source() || (views && is_view(op)) {
                continue;
            }
            let operands = &live.operands[n.index()];
            if let Op::WriteSlice { .. } = op {
                let slice = bytes(&g.g[operands[1]].ty);
                kernels.push(Dispatch { written: slice.clone(), reads: vec![Read { bytes: slice, cache: None }] });
                continue;
            }
            // A kernel that writes a state's slice in place moves the slice, not the state.
            let store = match op {
                Op::Fused(k) => k.store().map(|(src, _, _)| bytes(k.ty(src))),
                _ => None,
            };
            let skip = usize::from(store.is_some());
            let written = store.unwrap_or_else(|| bytes(&g.g[n].ty));
            let reads = operands
                .iter()
                .enumerate()
                .skip(skip)
                .filter(|(_, &o)| !matches!(g.g[o].op, Op::Param { .. }))
                .map(|(i, &o)| {
                    let ty = &g.g[o].ty;
                    let cache = match (attention_keys(op, i), ty.rank().checked_sub(2)) {
                        (Some(keys), Some(axis)) => Some((ty.shape[axis].clone(), keys.clone())),
                        _ => None,
                    };
                    let read = match op {
                        Op::Fused(k) => sliced_read(k, i),
                        _ => None,
                    };
                    Read { bytes: read.unwrap_or_else(|| bytes(ty)), cache }
                })
                .collect();
            kernels.push(Dispatch { written, reads });
        }
        Counter { kernels, seen: Default::default() }
    }

    /// One run under `b`.
    pub fn eval(&self, b: &Bindings) -> Dispatches {
        if let Some(d) = self.seen.borrow().get(b) {
            return *d;
        }
        let mut d = Dispatches { kernels: self.kernels.len() as u64, ..Dispatches::default() };
        for k in &self.kernels {
            d.bytes += k.written.eval(b);
            for r in &k.reads {
                let all = r.bytes.eval(b);
                d.bytes += match &r.cache {
                    Some((rows, keys)) => {
                        let rows = rows.eval(b).max(1);
                        let read = all / rows * keys.eval(b).min(rows);
                        d.cache_bytes += read;
                        read
                    }
                    None => all,
                };
            }
        }
        self.seen.borrow_mut().insert(*b, d);
        d
    }

    /// `g` as lowered, unfused: every op a kernel.
    pub fn unfused(g: &Graph) -> Counter {
        Counter::of(g, false)
    }

    /// `g` after the `fuse` pass, as dispatched.
    pub fn dispatched(g: &Graph) -> Counter {
        Counter::of(g, true)
    }
}

/// Bytes of kernel input `i` read when the kernel reads it only through
/// slices (the parts of a merged GEMM's result, q/k/v of one projection):
/// the slices' elements, not the whole input.
fn sliced_read(k: &super::Kernel, i: usize) -> Option<Bytes> {
    let loads: Vec<KId> = (0..k.nodes.len() as KId)
        .filter(|&id| matches!(k.nodes[id as usize].expr, Expr::Load(l) if l as usize == i))
        .collect();
    let mut slices: Vec<KId> = Vec::new();
    for (id, n) in k.nodes.iter().enumerate() {
        let reads_load = n.expr.operands().iter().any(|o| loads.contains(o));
        match &n.expr {
            Expr::Map { x, map: super::Layout::Slice { .. } } if loads.contains(x) => slices.push(id as KId),
            _ if reads_load => return None,
            _ => {}
        }
    }
    if slices.is_empty() {
        return None;
    }
    let size = k.inputs[i].dtype.bytes();
    Some(Bytes { parts: slices.iter().map(|&id| (k.ty(id).shape.clone(), size)).collect() })
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

/// Every run of a plan for `images` images, each program counted by `each`
/// (`Counter::unfused` or `Counter::dispatched`) under the run's bindings;
/// programs not in `graphs` count nothing.
pub fn of_plan(
    plan: &Plan,
    graphs: &HashMap<&str, &Graph>,
    images: u64,
    each: impl Fn(&Graph) -> Counter,
) -> Dispatches {
    let counters: HashMap<&str, Counter> = graphs.iter().map(|(&name, g)| (name, each(g))).collect();
    let mut d = Dispatches::default();
    for (e, i) in plan.runs() {
        if let Some(c) = counters.get(e.program.as_str()) {
            d += c.eval(&e.bindings(images, i));
        }
    }
    d
}
