//! Merging linears that share an input, the first step of `fuse`: SwiGLU's
//! `w1` and `w3`, separately declared q/k/v projections, the adaLN
//! projections of several blocks reading one condition. `linear(x, W1)`,
//! `linear(x, W2)` become one `linear(x, [W1; W2])` whose result the old
//! readers read through slices of its last axis (views, or index maps in a
//! kernel). One GEMM reads `x` once, and a norm the two shared becomes the
//! merged GEMM's prologue.
//!
//! The stacked weight is a parameter of its own, named by a packed key
//! ([`packed_key`]) that lists the checkpoint tensors stacked along axis 0;
//! the driver builds it once, before a backend prepares the program
//! (`runtime/src/driver`), so no kernel copies weights at run time.
//!
//! Legality: every linear of a group reads the same `x` as its activation,
//! and its weight (and bias, all or none) are parameters of constant shape.
//! Each output element of the merged GEMM is the same dot product over the
//! same `x` row and weight row, so results are bit for bit those of the
//! separate linears.

use crate::ir::dim::Dim;
use crate::ir::graph::TensorType;
use crate::ir::op::Op;
use crate::ir::Graph;
use petgraph::stable_graph::NodeIndex;
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use std::collections::BTreeMap;

const PACKED: &str = "packed:";

/// The key of checkpoint tensors `parts` stacked along axis 0.
pub fn packed_key(parts: &[&str]) -> String {
    format!("{PACKED}{}", serde_json::to_string(parts).expect("strings serialise"))
}

/// The checkpoint tensors a packed key stacks, in order; `None` for a plain key.
pub fn packed_parts(key: &str) -> Option<Vec<String>> {
    serde_json::from_str(key.strip_prefix(PACKED)?).ok()
}

/// A linear that may join a merge: (node, weight key, bias key).
struct Candidate {
    linear: NodeIndex,
    weight: (String, u64),
    bias: Option<String>,
}

fn param_key(g: &Graph, n: NodeIndex) -> Option<&str> {
    match &g.g[n].op {
        Op::Param { key } if g.g[n].ty.shape.iter().all(|d| d.as_const().is_some()) => Some(key),
        _ => None,
    }
}

fn candidate(g: &Graph, l: NodeIndex) -> Option<(NodeIndex, Candidate)> {
    if g.g[l].op != Op::Linear {
        return None;
    }
    let ops = g.operands(l);
    let w = param_key(g, ops[1])?;
    let rows = g.g[ops[1]].ty.shape[0].as_const()?;
    let bias = match ops.get(2) {
        Some(&b) => Some(param_key(g, b)?.to_string()),
        None => None,
    };
    Some((ops[0], Candidate { linear: l, weight: (w.to_string(), rows), bias }))
}

/// Merge every group of two or more linears sharing an activation; whether
/// anything changed.
pub fn merge_shared_linears(g: &mut Graph) -> bool {
    let Some(order) = g.topo() else { return false };
    // By (activation, has bias, in-features), in program order.
    let mut groups: BTreeMap<(usize, bool, String), Vec<Candidate>> = BTreeMap::new();
    for &l in &order {
        if let Some((x, c)) = candidate(g, l) {
            let k = g.g[g.operands(l)[1]].ty.shape[1].to_string();
            groups.entry((x.index(), c.bias.is_some(), k)).or_default().push(c);
        }
    }
    let mut changed = false;
    for ((x, _, _), mut group) in groups {
        if group.len() < 2 {
            continue;
        }
        // Stacked in the order the program declares them.
        group.sort_by_key(|c| c.linear.index());
        merge(g, NodeIndex::new(x), &group);
        changed = true;
    }
    changed
}

fn merge(g: &mut Graph, x: NodeIndex, group: &[Candidate]) {
    let span = g.g[group[0].linear].span;
    let rows: u64 = group.iter().map(|c| c.weight.1).sum();
    let first_w = g.operands(group[0].linear)[1];
    let in_features = g.g[first_w].ty.shape[1].clone();
    let weights: Vec<&str> = group.iter().map(|c| c.weight.0.as_str()).collect();
    let w = g.source(Op::Param { key: packed_key(&weights) }, TensorType::f32(vec![Dim::c(rows), in_features]), span);
    let mut operands = vec![x, w];
    if group[0].bias.is_some() {
        let biases: Vec<&str> = group.iter().filter_map(|c| c.bias.as_deref()).collect();
        operands.push(g.source(Op::Param { key: packed_key(&biases) }, TensorType::f32(vec![Dim::c(rows)]), span));
    }
    let merged = g.add(Op::Linear, &operands, span);
    let axis = (g.g[merged].ty.rank() - 1) as u8;
    let mut start = 0;
    for c in group {
        let len = c.weight.1;
        let s = g.add(Op::Slice { axis, start: Dim::c(start), len: Dim::c(len) }, &[merged], g.g[c.linear].span);
        start += len;
        super::rewrite::replace_uses(g, c.linear, s);
        let old: Vec<NodeIndex> = g.g.edges_directed(c.linear, Direction::Incoming).map(|e| e.source()).collect();
        g.g.remove_node(c.linear);
        super::rewrite::remove_unread(g, old.into_iter().filter(|&o| o != x));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_keys_round_trip_and_plain_keys_are_not_packed() {
        let k = packed_key(&["a.w1.weight", "odd \"key\", [x]"]);
        assert_eq!(packed_parts(&k), Some(vec!["a.w1.weight".to_string(), "odd \"key\", [x]".to_string()]));
        assert_eq!(packed_parts("layers.0.w1.weight"), None);
    }
}
