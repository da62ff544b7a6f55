//! The one liveness analysis of a program: which nodes the outputs need, an
//! evaluation order, how many uses keep each value alive, and which values
//! share memory because a node writes in place (a declared state update).
//! Dead-code elimination (`pass::dce`), the reference backend's freeing of
//! intermediates and the cost model's peak-memory figure all read it, so the
//! three cannot disagree.

use super::graph::Graph;
use super::op::Op;
use super::Bindings;
use petgraph::stable_graph::NodeIndex;
use petgraph::visit::NodeIndexable;
use std::collections::BTreeMap;

/// The last-use position of a value read after the run (an output).
pub const END: usize = usize::MAX;

#[derive(Clone, Debug)]
pub struct Liveness {
    /// Every node, in a topological order.
    pub order: Vec<NodeIndex>,
    /// Operands of each node in operand order, by `NodeIndex::index()`.
    pub operands: Vec<Vec<NodeIndex>>,
    /// Whether the outputs depend on a node, by index.
    pub needed: Vec<bool>,
    /// Uses among needed nodes (one per operand slot) plus output mentions,
    /// by index: a value can be freed when this many uses have happened.
    pub uses: Vec<usize>,
    /// The node whose memory a node writes into (a declared state update:
    /// the state it updates), by index.
    pub writes_into: Vec<Option<NodeIndex>>,
}

impl Liveness {
    /// The analysis of `g`; `None` when it has a cycle.
    pub fn of(g: &Graph) -> Option<Liveness> {
        let order = g.topo()?;
        let bound = g.g.node_bound();
        let mut operands = vec![Vec::new(); bound];
        for &n in &order {
            operands[n.index()] = g.operands(n);
        }
        let mut needed = vec![false; bound];
        let mut stack: Vec<NodeIndex> = g.outputs.iter().map(|(_, n)| *n).collect();
        while let Some(n) = stack.pop() {
            if !needed[n.index()] {
                needed[n.index()] = true;
                stack.extend(operands[n.index()].iter().copied());
            }
        }
        let mut uses = vec![0usize; bound];
        for &n in order.iter().filter(|n| needed[n.index()]) {
            for o in &operands[n.index()] {
                uses[o.index()] += 1;
            }
        }
        for (_, n) in &g.outputs {
            uses[n.index()] += 1;
        }
        let mut writes_into = vec![None; bound];
        for name in &g.updates {
            if let Some(&(_, n)) = g.outputs.iter().find(|(o, _)| o == name) {
                writes_into[n.index()] = operands[n.index()].first().copied();
            }
        }
        Some(Liveness { order, operands, needed, uses, writes_into })
    }

    /// Nodes the outputs do not need.
    pub fn dead(&self) -> impl Iterator<Item = NodeIndex> + '_ {
        self.order.iter().copied().filter(|n| !self.needed[n.index()])
    }

    /// The position of each node in [`Liveness::order`], by index
    /// (`usize::MAX` for an index that is no node).
    pub fn positions(&self) -> Vec<usize> {
        let bound = self.needed.len();
        let mut p = vec![usize::MAX; bound];
        for (i, n) in self.order.iter().enumerate() {
            p[n.index()] = i;
        }
        p
    }

    /// The position after which each needed node's value is no longer read,
    /// by index: its last needed reader's position, its own when nothing
    /// reads it, and [`END`] for an output (read after the run).
    pub fn last_uses(&self, g: &Graph) -> Vec<usize> {
        let pos = self.positions();
        let mut last: Vec<usize> = pos.clone();
        for &n in self.order.iter().filter(|n| self.needed[n.index()]) {
            for o in &self.operands[n.index()] {
                last[o.index()] = last[o.index()].max(pos[n.index()]);
            }
        }
        for (_, n) in &g.outputs {
            last[n.index()] = END;
        }
        last
    }

    /// The node whose memory `n`'s value lives in: the root of its chain of
    /// in-place writers (`n` itself unless it is a declared state update).
    pub fn root(&self, mut n: NodeIndex) -> NodeIndex {
        while let Some(s) = self.writes_into[n.index()] {
            n = s;
        }
        n
    }

    /// Bytes of a node's value under `b`.
    pub fn bytes(g: &Graph, n: NodeIndex, b: &Bindings) -> u64 {
        g.g[n].ty.numel().eval(b).saturating_mul(g.g[n].ty.dtype.bytes())
    }

    /// Peak bytes of live activations when the needed nodes run in this order
    /// and each value is freed after its last use. Parameters are not
    /// activations; carried state is. A node that writes in place adds nothing
    /// (it reuses its state's memory, which lives until both are dead).
    pub fn peak_bytes(&self, g: &Graph, b: &Bindings) -> u64 {
        let pos = self.positions();
        let last_use = self.last_uses(g);
        // Memory belongs to the root of a chain of in-place writers and is
        // freed after the last use of any node in the chain.
        let mut free_at: Vec<usize> = vec![0; g.g.node_bound()];
        for &n in self.order.iter().filter(|n| self.needed[n.index()]) {
            let r = self.root(n);
            free_at[r.index()] = free_at[r.index()].max(last_use[n.index()]).max(pos[n.index()]);
        }
        let (mut live, mut peak) = (0u64, 0u64);
        let mut frees: BTreeMap<usize, u64> = BTreeMap::new();
        for (i, &n) in self.order.iter().enumerate() {
            if !self.needed[n.index()] || matches!(g.g[n].op, Op::Param { .. }) {
                continue;
            }
            if self.writes_into[n.index()].is_none() {
                let size = Self::bytes(g, n, b);
                live += size;
                *frees.entry(free_at[n.index()]).or_default() += size;
            }
            peak = peak.max(live);
            if let Some(f) = frees.remove(&i) {
                live -= f;
            }
        }
        peak
    }
}
