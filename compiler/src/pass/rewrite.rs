//! Edits the rewriting passes share.

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
