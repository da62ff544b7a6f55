//! Fusion: groups of ops become one kernel (`crate::kernel`), one `fused`
//! node each. Which values are materialised decides everything; a kernel is
//! a materialised value with everything it reads that is not materialised.
//!
//! Legality, in one sweep from the outputs back (readers decide before what
//! they read):
//! - sources, i64 values and the ops the kernel IR cannot express (sampling,
//!   embeddings, group norm, rope, resize, write_slice, ...) are materialised;
//!   layout ops (reshape, permute, slice) never are: they become index maps
//!   in every kernel that reads them (a view where an unfused op reads them);
//! - an element-wise op, norm, softmax or concat is inlined into its reader
//!   when it has one reader (several reads of one reader are fine), is not an
//!   output, and the reader takes it: another such op, or a `linear`/`conv2d`
//!   as its activation (the prologue: norm + adaLN modulate before a GEMM);
//! - an anchor (linear, matmul, attention, conv2d) joins its reader's kernel
//!   (the epilogue: bias, activation, gate, residual) when it has one direct
//!   reader, that reader is element-wise of the anchor's shape and so is
//!   every op from it to the kernel's result, and the kernel has no other
//!   anchor;
//! - inside an anchor's kernel, norms and concats appear only in the prologue
//!   (a GEMM epilogue sees one tile, not whole rows).

use super::Pass;
use crate::ir::dim::Dim;
use crate::ir::graph::TensorType;
use crate::ir::op::{Binary, DType, Op, Unary, F};
use crate::ir::Graph;
use crate::kernel::{is_anchor, Expr, KId, KNode, Kernel, Layout, Reduce};
use petgraph::stable_graph::NodeIndex;
use petgraph::visit::{EdgeRef, NodeIndexable};
use petgraph::Direction;
use std::collections::HashMap;

pub struct Fuse;

impl Pass for Fuse {
    fn name(&self) -> &'static str {
        "fuse"
    }
    fn run(&self, g: &mut Graph) -> bool {
        let merged = super::merge::merge_shared_linears(g);
        let Some(order) = g.topo() else { return merged };
        let plan = decide(g, &order);
        // Build every kernel on the unchanged graph, then replace the roots in
        // order, so a kernel's inputs that were roots themselves are renamed.
        let kernels: Vec<(NodeIndex, Kernel, Vec<NodeIndex>)> = order
            .iter()
            .filter(|&&r| plan.root[r.index()] == Some(r) && wraps(&kind(g, r)))
            .map(|&r| {
                let (k, inputs) = build(g, r, &plan);
                (r, k, inputs)
            })
            .collect();
        let changed = merged || !kernels.is_empty();
        let mut renamed: HashMap<NodeIndex, NodeIndex> = HashMap::new();
        for (r, k, inputs) in kernels {
            let inputs: Vec<NodeIndex> = inputs.iter().map(|n| *renamed.get(n).unwrap_or(n)).collect();
            renamed.insert(r, replace(g, r, k, &inputs));
        }
        if changed {
            // A memory plan is for the graph it was made for.
            g.memory = None;
            super::dce::Dce.run(g);
        }
        changed
    }
}

/// What fusion can do with a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Source,
    Const,
    /// Reshape, permute, slice of f32: an index map.
    Layout,
    /// Unary, binary, affine, clamp, rope (pairs of the last axis).
    ElementWise,
    /// LayerNorm, RmsNorm, L2Normalize, Softmax: row reductions.
    Norm,
    Concat,
    Anchor,
    /// A `write_slice` of f32: a root whose written value (operand 1) may be
    /// computed in the same kernel, straight into the state.
    Store,
    /// Everything else: its own kernel, unchanged.
    Opaque,
}

pub(crate) fn kind(g: &Graph, n: NodeIndex) -> Kind {
    let node = &g.g[n];
    match &node.op {
        Op::Const { .. } => Kind::Const,
        op if op.is_source() => Kind::Source,
        _ if node.ty.dtype != DType::F32 => Kind::Opaque,
        Op::Reshape { .. } | Op::Permute { .. } | Op::Slice { .. } => Kind::Layout,
        Op::Unary(_) | Op::Binary(_) | Op::Affine { .. } | Op::ClampMax { .. } => Kind::ElementWise,
        Op::LayerNorm { .. } | Op::RmsNorm { .. } | Op::L2Normalize { .. } | Op::Softmax => Kind::Norm,
        Op::Rope => Kind::ElementWise,
        Op::WriteSlice { .. } => Kind::Store,
        Op::Concat { .. } if g.operands(n).iter().all(|&o| g.g[o].ty.dtype == DType::F32) => Kind::Concat,
        op if is_anchor(op) => Kind::Anchor,
        _ => Kind::Opaque,
    }
}

/// Element-wise at each index alone (rope reads the pair partner): what an
/// anchor's epilogue may hold.
fn pointwise(g: &Graph, n: NodeIndex) -> bool {
    kind(g, n) == Kind::ElementWise && !matches!(g.g[n].op, Op::Rope)
}

/// Roots wrapped into a `fused` node (an anchor alone stays a library call).
fn wraps(k: &Kind) -> bool {
    matches!(k, Kind::ElementWise | Kind::Norm | Kind::Concat | Kind::Anchor | Kind::Store)
}

/// Who reads a value, looking through layout ops.
struct Readers {
    /// (reader, operand position, whether through a layout op).
    list: Vec<(NodeIndex, u8, bool)>,
    /// An output names it or a layout view of it.
    escapes: bool,
}

fn readers(g: &Graph, n: NodeIndex, outputs: &[NodeIndex]) -> Readers {
    let mut r = Readers { list: vec![], escapes: outputs.contains(&n) };
    let mut stack = vec![(n, false)];
    while let Some((m, through)) = stack.pop() {
        for e in g.g.edges_directed(m, Direction::Outgoing) {
            let c = e.target();
            if kind(g, c) == Kind::Layout {
                r.escapes |= outputs.contains(&c);
                stack.push((c, true));
            } else {
                r.list.push((c, *e.weight(), through));
            }
        }
    }
    r
}

/// The anchor whose result `o` is, directly or through slices of its last
/// axis (how a merged GEMM's parts are read: `merge.rs`).
fn anchor_behind(g: &Graph, o: NodeIndex) -> Option<NodeIndex> {
    match (&g.g[o].op, kind(g, o)) {
        (_, Kind::Anchor) => Some(o),
        (Op::Slice { axis, .. }, _) if *axis as usize + 1 == g.g[o].ty.rank() => anchor_behind(g, g.operands(o)[0]),
        _ => None,
    }
}

/// Whether the layout ops between `a` and its readers are all slices of the
/// last axis (so a reader indexes `a`'s rows as its own).
fn read_by_rows(g: &Graph, a: NodeIndex) -> bool {
    g.g.edges_directed(a, Direction::Outgoing).all(|e| {
        let c = e.target();
        match (&g.g[c].op, kind(g, c)) {
            (Op::Slice { axis, .. }, Kind::Layout) => *axis as usize + 1 == g.g[c].ty.rank() && read_by_rows(g, c),
            (_, Kind::Layout) => false,
            _ => true,
        }
    })
}

/// Whether `a` and `n` have the same rows (every axis but the last).
fn same_rows(g: &Graph, a: NodeIndex, n: NodeIndex) -> bool {
    let (x, y) = (&g.g[a].ty.shape, &g.g[n].ty.shape);
    x.len() == y.len() && x[..x.len().saturating_sub(1)] == y[..y.len().saturating_sub(1)]
}

/// Whether an operand of element-wise `n` is an anchor of `n`'s rows that
/// could take `n` as its epilogue: read only by `n`, or by pointwise ops
/// whose one reader is `n` (SwiGLU's `silu(a) * b` on a merged GEMM), by
/// rows.
fn feeds_epilogue(g: &Graph, n: NodeIndex, outputs: &[NodeIndex]) -> bool {
    g.operands(n).into_iter().filter_map(|o| anchor_behind(g, o)).any(|a| {
        let r = readers(g, a, outputs);
        let feeds_n = |c: NodeIndex| {
            c == n || {
                let rc = readers(g, c, outputs);
                pointwise(g, c) && !rc.escapes && rc.list.iter().all(|x| x.0 == n && !x.2)
            }
        };
        same_rows(g, a, n) && read_by_rows(g, a) && !r.escapes && r.list.iter().all(|x| feeds_n(x.0))
    })
}

/// The decision: each non-layout node's kernel root (itself when materialised).
struct Plan {
    root: Vec<Option<NodeIndex>>,
}

fn decide(g: &Graph, order: &[NodeIndex]) -> Plan {
    let bound = g.g.node_bound();
    let outputs: Vec<NodeIndex> = g.outputs.iter().map(|(_, n)| *n).collect();
    let mut root: Vec<Option<NodeIndex>> = vec![None; bound];
    // Per root: whether its kernel has an anchor / a norm or concat outside a prologue.
    let mut has_anchor = vec![false; bound];
    let mut has_rows = vec![false; bound];
    // Whether a node is in an anchor's prologue; whether an anchor may feed it
    // (element-wise, and so every op from it to the root, of the same shape).
    let mut in_prologue = vec![false; bound];
    let mut epilogue_ok = vec![false; bound];
    for &n in order.iter().rev() {
        let k = kind(g, n);
        if matches!(k, Kind::Layout | Kind::Source | Kind::Const) {
            continue;
        }
        let rd = readers(g, n, &outputs);
        let mut distinct: Vec<NodeIndex> = rd.list.iter().map(|x| x.0).collect();
        distinct.sort();
        distinct.dedup();
        let single = if rd.escapes || distinct.len() != 1 { None } else { Some(distinct[0]) };
        let joined = single.and_then(|c| {
            let ck = kind(g, c);
            let c_root = root[c.index()]?;
            let reads: Vec<&(NodeIndex, u8, bool)> = rd.list.iter().collect();
            match k {
                Kind::ElementWise | Kind::Norm | Kind::Concat => {
                    let takes = match ck {
                        Kind::ElementWise | Kind::Norm | Kind::Concat => true,
                        // The value a state update writes.
                        Kind::Store => reads.iter().all(|x| x.1 == 1),
                        // The activation of a GEMM or convolution, the queries of attention.
                        Kind::Anchor => {
                            matches!(g.g[c].op, Op::Linear | Op::Conv2d { .. } | Op::Attention { .. })
                                && reads.iter().all(|x| x.1 == 0)
                        }
                        _ => false,
                    };
                    // An element-wise op on an anchor's result is that anchor's
                    // epilogue (computed once per element), not the next
                    // anchor's prologue (recomputed for every tile that reads it).
                    let prologue_of_next = in_prologue[c.index()] || ck == Kind::Anchor;
                    if k == Kind::ElementWise && prologue_of_next && feeds_epilogue(g, n, &outputs) {
                        return None;
                    }
                    let prologue = in_prologue[c.index()] || ck == Kind::Anchor;
                    let rows = k != Kind::ElementWise;
                    if !takes || (rows && !prologue && has_anchor[c_root.index()]) {
                        return None;
                    }
                    in_prologue[n.index()] = prologue;
                    if rows && !prologue {
                        has_rows[c_root.index()] = true;
                    }
                    Some(c_root)
                }
                _ => None,
            }
        });
        // An anchor joins the kernel every one of its readers is in (its
        // epilogue): pointwise readers of its shape, read directly, or of
        // its rows through slices of the last axis (a merged GEMM's parts).
        let joined = if k != Kind::Anchor || rd.escapes || distinct.is_empty() {
            joined
        } else {
            root[distinct[0].index()].filter(|&c_root| {
                let ok = read_by_rows(g, n)
                    && distinct.iter().all(|&c| {
                        root[c.index()] == Some(c_root)
                            && pointwise(g, c)
                            && epilogue_ok[c.index()]
                            && same_rows(g, n, c)
                            && (g.g[c].ty.shape == g.g[n].ty.shape || rd.list.iter().all(|x| x.0 != c || x.2))
                    })
                    && !has_anchor[c_root.index()]
                    && !has_rows[c_root.index()];
                if ok {
                    has_anchor[c_root.index()] = true;
                }
                ok
            })
        };
        root[n.index()] = Some(joined.unwrap_or(n));
        if pointwise(g, n) && !in_prologue[n.index()] {
            epilogue_ok[n.index()] = match joined {
                None => true,
                Some(_) => {
                    let c = single.expect("joined a single reader");
                    pointwise(g, c)
                        && epilogue_ok[c.index()]
                        && g.g[c].ty.shape == g.g[n].ty.shape
                        && rd.list.iter().all(|x| !x.2)
                }
            };
        }
        if joined.is_none() {
            has_anchor[n.index()] |= k == Kind::Anchor;
            has_rows[n.index()] |= matches!(k, Kind::Norm | Kind::Concat);
        }
    }
    Plan { root }
}

/// The kernel of root `r` and the graph values it reads, in input order.
fn build(g: &Graph, r: NodeIndex, plan: &Plan) -> (Kernel, Vec<NodeIndex>) {
    let mut b = Builder { g, r, plan, nodes: vec![], inputs: vec![], loads: HashMap::new(), memo: HashMap::new() };
    b.value(r);
    let inputs_ty = b.inputs.iter().map(|&n| g.g[n].ty.clone()).collect();
    (Kernel { inputs: inputs_ty, nodes: b.nodes }, b.inputs)
}

struct Builder<'a> {
    g: &'a Graph,
    r: NodeIndex,
    plan: &'a Plan,
    nodes: Vec<KNode>,
    inputs: Vec<NodeIndex>,
    loads: HashMap<NodeIndex, KId>,
    memo: HashMap<NodeIndex, KId>,
}

impl Builder<'_> {
    fn push(&mut self, ty: TensorType, expr: Expr) -> KId {
        self.nodes.push(KNode { ty, expr });
        (self.nodes.len() - 1) as KId
    }

    fn f32(&mut self, shape: &[Dim], expr: Expr) -> KId {
        self.push(TensorType::f32(shape.to_vec()), expr)
    }

    fn constant(&mut self, v: f64) -> KId {
        self.push(TensorType::f32(vec![]), Expr::Const(F::new(v)))
    }

    /// `x` read at the shape `to` (numpy broadcasting) when it differs.
    fn broadcast(&mut self, x: KId, to: &[Dim]) -> KId {
        if self.nodes[x as usize].ty.shape == to {
            x
        } else {
            self.f32(to, Expr::Map { x, map: Layout::Broadcast })
        }
    }

    fn binary(&mut self, op: Binary, a: KId, c: KId, shape: &[Dim]) -> KId {
        let (a, c) = (self.broadcast(a, shape), self.broadcast(c, shape));
        self.f32(shape, Expr::Binary(op, a, c))
    }

    /// Whether `n` is read as a kernel input rather than inlined.
    fn boundary(&self, n: NodeIndex) -> bool {
        match kind(self.g, n) {
            Kind::Layout | Kind::Const => false,
            Kind::Source | Kind::Opaque => true,
            _ => n != self.r && self.plan.root[n.index()] == Some(n),
        }
    }

    fn value(&mut self, n: NodeIndex) -> KId {
        if let Some(&id) = self.memo.get(&n) {
            return id;
        }
        let id = if self.boundary(n) { self.load(n) } else { self.inline(n) };
        self.memo.insert(n, id);
        id
    }

    fn load(&mut self, n: NodeIndex) -> KId {
        if let Some(&id) = self.loads.get(&n) {
            return id;
        }
        self.inputs.push(n);
        let id = self.push(self.g.g[n].ty.clone(), Expr::Load((self.inputs.len() - 1) as u32));
        self.loads.insert(n, id);
        id
    }

    fn inline(&mut self, n: NodeIndex) -> KId {
        let g = self.g;
        let node = &g.g[n];
        let shape = node.ty.shape.clone();
        let ops: Vec<NodeIndex> = g.operands(n);
        let x: Vec<KId> = ops.iter().map(|&o| self.value(o)).collect();
        let last = shape.last().cloned().unwrap_or(Dim::c(1));
        match &node.op {
            Op::Const { value } => self.constant(value.get()),
            Op::Reshape { .. } => self.f32(&shape, Expr::Map { x: x[0], map: Layout::Reshape }),
            Op::Permute { perm } => self.f32(&shape, Expr::Map { x: x[0], map: Layout::Permute(perm.clone()) }),
            Op::Slice { axis, start, .. } => {
                self.f32(&shape, Expr::Map { x: x[0], map: Layout::Slice { axis: *axis, start: start.clone() } })
            }
            Op::Unary(u) => self.f32(&shape, Expr::Unary(*u, x[0])),
            Op::Binary(b) => self.binary(*b, x[0], x[1], &shape),
            Op::Affine { scale, shift } => self.f32(&shape, Expr::Affine { x: x[0], scale: *scale, shift: *shift }),
            Op::ClampMax { max } => self.f32(&shape, Expr::ClampMax { x: x[0], max: *max }),
            Op::Concat { axis } => self.f32(&shape, Expr::Concat { axis: *axis, parts: x }),
            Op::Softmax => {
                // exp(x - max) / sum, as the reference softmax.
                let m = self.reduce(x[0], Reduce::Max);
                let d = self.binary(Binary::Sub, x[0], m, &shape);
                let e = self.f32(&shape, Expr::Unary(Unary::Exp, d));
                let s = self.reduce(e, Reduce::Sum);
                self.binary(Binary::Div, e, s, &shape)
            }
            Op::LayerNorm { eps } => {
                // (x - mean) * (1 / sqrt(var + eps)) * w + b; mean and the
                // biased variance by sums divided by the row length.
                let n_len = self.row_len(&last);
                let s = self.reduce(x[0], Reduce::Sum);
                let mean = self.binary(Binary::Div, s, n_len, &self.nodes[s as usize].ty.shape.clone());
                let d = self.binary(Binary::Sub, x[0], mean, &shape);
                let sq = self.f32(&shape, Expr::Binary(Binary::Mul, d, d));
                let ss = self.reduce(sq, Reduce::Sum);
                let var = self.binary(Binary::Div, ss, n_len, &self.nodes[ss as usize].ty.shape.clone());
                let inv = self.inverse_sqrt(var, *eps);
                let mut y = self.binary(Binary::Mul, d, inv, &shape);
                if let Some(&w) = x.get(1) {
                    y = self.binary(Binary::Mul, y, w, &shape);
                }
                if let Some(&b) = x.get(2) {
                    y = self.binary(Binary::Add, y, b, &shape);
                }
                y
            }
            Op::RmsNorm { eps } => {
                // x * (1 / sqrt(sum(x^2) / n + eps)) * w.
                let n_len = self.row_len(&last);
                let sq = self.f32(&shape, Expr::Binary(Binary::Mul, x[0], x[0]));
                let ss = self.reduce(sq, Reduce::Sum);
                let ms = self.binary(Binary::Div, ss, n_len, &self.nodes[ss as usize].ty.shape.clone());
                let inv = self.inverse_sqrt(ms, *eps);
                let y = self.binary(Binary::Mul, x[0], inv, &shape);
                self.binary(Binary::Mul, y, x[1], &shape)
            }
            Op::Rope => {
                // Pairs (x0, x1) of the last axis: (x0 c - x1 s, x1 c + x0 s),
                // as index maps of x and the reference's arithmetic.
                let r = shape.len();
                let half = Dim::c(last.as_const().expect("rope pairs a constant axis") / 2);
                let mut pairs = shape[..r - 1].to_vec();
                pairs.extend([half.clone(), Dim::c(1)]);
                let mut two = pairs.clone();
                two[r] = Dim::c(2);
                let mut halves = shape[..r - 1].to_vec();
                halves.push(half);
                let xr = self.f32(&two, Expr::Map { x: x[0], map: Layout::Reshape });
                let part = |b: &mut Self, start: u64| {
                    let s =
                        b.f32(&pairs, Expr::Map { x: xr, map: Layout::Slice { axis: r as u8, start: Dim::c(start) } });
                    b.f32(&halves, Expr::Map { x: s, map: Layout::Reshape })
                };
                let (x0, x1) = (part(self, 0), part(self, 1));
                let (c, s) = (self.broadcast(x[1], &halves), self.broadcast(x[2], &halves));
                let x0c = self.f32(&halves, Expr::Binary(Binary::Mul, x0, c));
                let x1s = self.f32(&halves, Expr::Binary(Binary::Mul, x1, s));
                let even = self.f32(&halves, Expr::Binary(Binary::Sub, x0c, x1s));
                let x1c = self.f32(&halves, Expr::Binary(Binary::Mul, x1, c));
                let x0s = self.f32(&halves, Expr::Binary(Binary::Mul, x0, s));
                let odd = self.f32(&halves, Expr::Binary(Binary::Add, x1c, x0s));
                let even = self.f32(&pairs, Expr::Map { x: even, map: Layout::Reshape });
                let odd = self.f32(&pairs, Expr::Map { x: odd, map: Layout::Reshape });
                let both = self.f32(&two, Expr::Concat { axis: r as u8, parts: vec![even, odd] });
                self.f32(&shape, Expr::Map { x: both, map: Layout::Reshape })
            }
            Op::L2Normalize { eps } => {
                // x / max(sqrt(sum(x^2)), eps), the denominator as the reference picks it.
                let sq = self.f32(&shape, Expr::Binary(Binary::Mul, x[0], x[0]));
                let ss = self.reduce(sq, Reduce::Sum);
                let rs = self.nodes[ss as usize].ty.shape.clone();
                let norm = self.f32(&rs, Expr::Unary(Unary::Sqrt, ss));
                let denom = self.f32(&rs, Expr::AtLeast { x: norm, min: F::new(eps.get() as f32 as f64) });
                self.binary(Binary::Div, x[0], denom, &shape)
            }
            op if is_anchor(op) => self.push(node.ty.clone(), Expr::Anchor { op: op.clone(), operands: x }),
            Op::WriteSlice { axis, start } => {
                self.push(node.ty.clone(), Expr::WriteSlice { dst: x[0], src: x[1], axis: *axis, start: start.clone() })
            }
            op => unreachable!("`{}` is never inlined", op.name()),
        }
    }

    fn reduce(&mut self, x: KId, op: Reduce) -> KId {
        let mut s = self.nodes[x as usize].ty.shape.clone();
        *s.last_mut().expect("a row") = Dim::c(1);
        self.f32(&s, Expr::Reduce { x, op })
    }

    /// The row length as an f32 constant (norm rows have constant length).
    fn row_len(&mut self, d: &Dim) -> KId {
        self.constant(d.as_const().expect("norm rows have a constant length") as f32 as f64)
    }

    /// `1 / sqrt(v + eps)`.
    fn inverse_sqrt(&mut self, v: KId, eps: F) -> KId {
        let shape = self.nodes[v as usize].ty.shape.clone();
        let e = self.constant(eps.get() as f32 as f64);
        let ve = self.binary(Binary::Add, v, e, &shape);
        let r = self.f32(&shape, Expr::Unary(Unary::Sqrt, ve));
        let one = self.constant(1.0);
        self.binary(Binary::Div, one, r, &shape)
    }
}

/// Replace root `r` by a `fused` node reading `inputs`.
fn replace(g: &mut Graph, r: NodeIndex, kernel: Kernel, inputs: &[NodeIndex]) -> NodeIndex {
    let span = g.g[r].span;
    // The kernel computes the root's value: its type, no inference.
    let ty = g.g[r].ty.clone();
    let f = g.add_typed(Op::Fused(Box::new(kernel)), inputs, ty, span);
    let out: Vec<(NodeIndex, u8)> =
        g.g.edges_directed(r, Direction::Outgoing).map(|e| (e.target(), *e.weight())).collect();
    for (c, w) in out {
        g.g.add_edge(f, c, w);
    }
    for (_, n) in g.outputs.iter_mut() {
        if *n == r {
            *n = f;
        }
    }
    g.g.remove_node(r);
    f
}
