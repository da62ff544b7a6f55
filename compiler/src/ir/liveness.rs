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

    /// Peak bytes of live activations when the needed nodes run in this order
    /// and each value is freed after its last use. Parameters are not
    /// activations; carried state is. A node that writes in place adds nothing
    /// (it reuses its state's memory, which lives until both are dead).
    pub fn peak_bytes(&self, g: &Graph, b: &Bindings) -> u64 {
        let pos: Vec<usize> = {
            let mut p = vec![usize::MAX; g.g.node_bound()];
            for (i, n) in self.order.iter().enumerate() {
                p[n.index()] = i;
            }
            p
        };
        let outputs: Vec<NodeIndex> = g.outputs.iter().map(|(_, n)| *n).collect();
        // The position after which a node's value is no longer read.
        let last_use = |n: NodeIndex| -> usize {
            if outputs.contains(&n) {
                return usize::MAX;
            }
            g.g.neighbors_directed(n, petgraph::Direction::Outgoing)
                .filter(|m| self.needed[m.index()])
                .map(|m| pos[m.index()])
                .max()
                .unwrap_or(pos[n.index()])
        };
        // Memory belongs to the root of a chain of in-place writers and is
        // freed after the last use of any node in the chain.
        let root = |mut n: NodeIndex| {
            while let Some(s) = self.writes_into[n.index()] {
                n = s;
            }
            n
        };
        let mut free_at: Vec<usize> = vec![0; g.g.node_bound()];
        for &n in self.order.iter().filter(|n| self.needed[n.index()]) {
            let r = root(n);
            free_at[r.index()] = free_at[r.index()].max(last_use(n)).max(pos[n.index()]);
        }
        let size = |n: NodeIndex| g.g[n].ty.numel().eval(b) * g.g[n].ty.dtype.bytes();
        let (mut live, mut peak) = (0u64, 0u64);
        let mut frees: BTreeMap<usize, u64> = BTreeMap::new();
        for (i, &n) in self.order.iter().enumerate() {
            if !self.needed[n.index()] || matches!(g.g[n].op, Op::Param { .. }) {
                continue;
            }
            if self.writes_into[n.index()].is_none() {
                live += size(n);
                *frees.entry(free_at[n.index()]).or_default() += size(n);
            }
            peak = peak.max(live);
            if let Some(f) = frees.remove(&i) {
                live -= f;
            }
        }
        peak
    }
}
