//! Graphviz export, for pictures of a graph. Nodes are numbered as in the text
//! form (`%N`), so a picture and a snapshot can be read side by side.

use super::graph::Graph;
use super::op::Op;
use super::text::{attrs, order, source_name, type_str};
use petgraph::stable_graph::NodeIndex;
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use std::collections::HashMap;
use std::fmt::Write;

/// A `digraph`: one node per op (name, attributes, type), one edge per
/// operand (labelled with its slot when the op has several), and one
/// double-octagon per named output.
pub fn to_dot(g: &Graph) -> String {
    let order = order(g);
    let num: HashMap<NodeIndex, usize> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let mut s = format!("digraph {} {{\n", quoted(&g.name));
    s.push_str("  node [shape=box, fontname=\"monospace\"];\n");
    for (i, &n) in order.iter().enumerate() {
        let node = &g.g[n];
        let mut label = format!("%{i} {}", node.op.name());
        if let Some(name) = source_name(&node.op) {
            write!(label, " {name}").unwrap();
        }
        let kv: Vec<String> = attrs(&node.op).into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        if !kv.is_empty() {
            write!(label, "\n{}", kv.join(", ")).unwrap();
        }
        write!(label, "\n{}", type_str(&node.ty)).unwrap();
        // What a program is fed (inputs, state) and what it loads (params) stand out.
        let style = match node.op {
            Op::Input { .. } => ", shape=ellipse, style=filled, fillcolor=\"#cfe2ff\"",
            Op::State { .. } => ", shape=ellipse, style=filled, fillcolor=\"#fff3cd\"",
            Op::Param { .. } => ", shape=note, style=filled, fillcolor=\"#e9ecef\"",
            Op::Const { .. } => ", shape=plaintext",
            _ => "",
        };
        writeln!(s, "  n{i} [label={}{style}];", quoted(&label)).unwrap();
    }
    for &n in &order {
        let mut ins: Vec<(u8, NodeIndex)> =
            g.g.edges_directed(n, Direction::Incoming).map(|e| (*e.weight(), e.source())).collect();
        ins.sort();
        for &(slot, src) in &ins {
            let label = if ins.len() > 1 { format!(" [label=\"{slot}\"]") } else { String::new() };
            writeln!(s, "  n{} -> n{}{label};", num[&src], num[&n]).unwrap();
        }
    }
    for (k, (name, n)) in g.outputs.iter().enumerate() {
        writeln!(s, "  out{k} [label={}, shape=doubleoctagon];", quoted(name)).unwrap();
        if let Some(i) = num.get(n) {
            writeln!(s, "  n{i} -> out{k};").unwrap();
        }
    }
    s.push_str("}\n");
    s
}

/// A DOT string literal; newlines become DOT's centred line breaks.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::text::tests::every_op_graph;
    use petgraph::visit::IntoEdgeReferences;

    #[test]
    fn dot_has_every_node_and_edge() {
        let g = every_op_graph();
        let dot = to_dot(&g);
        assert!(dot.starts_with("digraph \"every.op \\\"quoted\\\"\" {\n"));
        assert!(dot.ends_with("}\n"));
        let num: HashMap<NodeIndex, usize> = order(&g).into_iter().enumerate().map(|(i, n)| (n, i)).collect();
        for (&n, &i) in &num {
            let line = dot.lines().find(|l| l.starts_with(&format!("  n{i} [label=\"%{i} "))).expect("node line");
            assert!(line.contains(g.g[n].op.name()), "{line}");
            assert!(line.contains(&type_str(&g.g[n].ty)), "{line}");
        }
        for e in g.g.edge_references() {
            let (src, dst) = (num[&e.source()], num[&e.target()]);
            let many = g.operands(e.target()).len() > 1;
            let want = if many {
                format!("  n{src} -> n{dst} [label=\"{}\"];", e.weight())
            } else {
                format!("  n{src} -> n{dst};")
            };
            assert!(dot.lines().any(|l| l == want), "missing {want}");
        }
        for (k, (_, n)) in g.outputs.iter().enumerate() {
            assert!(dot.contains(&format!("  n{} -> out{k};", num[n])));
        }
        let edges = dot.lines().filter(|l| l.contains(" -> ")).count();
        assert_eq!(edges, g.g.edge_count() + g.outputs.len());
        let nodes = dot.lines().filter(|l| l.starts_with("  n") && l.contains("[label=\"%")).count();
        assert_eq!(nodes, g.node_count());
    }

    #[test]
    fn dot_styles_and_escapes() {
        let g = every_op_graph();
        let dot = to_dot(&g);
        assert!(dot.contains("%0 input x\\nf32[B, T, 32]\", shape=ellipse"));
        assert!(dot.contains("param lin.weight\\nf32[64, 32]\", shape=note"));
        assert!(dot.contains("state kv\\nf32[B, P, 32]\", shape=ellipse"));
        // The awkward name keeps its quote and backslash, escaped for DOT.
        assert!(dot.contains("input we\\\"ird\\\\ // name\\n\u{e9}\\n"));
        assert!(dot.contains("slice\\naxis=1, start=P, len=T\\nf32[B, T, 32]\"];"));
    }
}
