//! Edits the rewriting passes share: moving a node's uses to another node,
//! changing one operand, removing what a rewrite left unread.

use crate::ir::Graph;
use petgraph::stable_graph::NodeIndex;
use petgraph::visit::EdgeRef;
use petgraph::Direction;

/// Make every reader of `from` (each operand slot, and every output naming
/// it) read `to` instead. `from` is left without readers.
pub fn replace_uses(g: &mut Graph, from: NodeIndex, to: NodeIndex) {
    let uses: Vec<_> =
        g.g.edges_directed(from, Direction::Outgoing).map(|e| (e.id(), e.target(), *e.weight())).collect();
    for (e, target, slot) in uses {
        g.g.remove_edge(e);
        g.g.add_edge(to, target, slot);
    }
    for (_, n) in g.outputs.iter_mut() {
        if *n == from {
            *n = to;
        }
    }
}

/// Make operand `slot` of `n` be `to`.
pub fn set_operand(g: &mut Graph, n: NodeIndex, slot: u8, to: NodeIndex) {
    let old: Vec<_> =
        g.g.edges_directed(n, Direction::Incoming).filter(|e| *e.weight() == slot).map(|e| e.id()).collect();
    for e in old {
        g.g.remove_edge(e);
    }
    g.g.add_edge(to, n, slot);
}

/// Remove each of `nodes` that nothing reads and no output names, then the
/// operands that leaves unread, and so on: what a rewrite made dead, and
/// nothing else.
pub fn remove_unread(g: &mut Graph, nodes: impl IntoIterator<Item = NodeIndex>) {
    let mut stack: Vec<NodeIndex> = nodes.into_iter().collect();
    while let Some(n) = stack.pop() {
        if !g.g.contains_node(n)
            || g.g.edges_directed(n, Direction::Outgoing).next().is_some()
            || g.outputs.iter().any(|(_, o)| *o == n)
        {
            continue;
        }
        stack.extend(g.g.neighbors_directed(n, Direction::Incoming));
        g.g.remove_node(n);
    }
}
