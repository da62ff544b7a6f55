//! Common-subexpression elimination: in a topological order, each node is
//! keyed by its op (plain data: attributes included, floats by bit pattern),
//! its operand list (already merged, in slot order) and its type; a node whose
//! key an earlier node has is merged into that node: its readers and the
//! outputs naming it read the earlier node, and it is removed. Sources merge
//! too: the same input name, parameter key, state name or constant value is
//! one node. The key is exact, so the merged node computes the same bits.
//!
//! Operands are not reordered (`add(a, b)` and `add(b, a)` stay apart): IEEE
//! addition commutes, but which NaN payload comes out may depend on the
//! order, and `min`/`max` of `-0.0` and `0.0` may not commute at all.
//!
//! Declared in-place updates stay valid: an update is a `write_slice` of its
//! state and that state's only reader, so merging the state with another node
//! of the same name would give it a second reader. States with a declared
//! update and the updates themselves are never merged (no other node can have
//! the key of an update: it reads a state nothing else reads).

use super::rewrite::replace_uses;
use super::Pass;
use crate::ir::{Graph, Op, TensorType};
use petgraph::stable_graph::NodeIndex;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

pub struct Cse;

impl Pass for Cse {
    fn name(&self) -> &'static str {
        "cse"
    }
    fn run(&self, g: &mut Graph) -> bool {
        // A cyclic graph is left for the verifier to report.
        let Some(order) = g.topo() else { return false };
        let mut keep: HashSet<NodeIndex> = HashSet::new();
        for name in &g.updates {
            keep.extend(g.outputs.iter().filter(|(o, _)| o == name).map(|(_, n)| *n));
            keep.extend(g.g.node_indices().filter(|&n| matches!(&g.g[n].op, Op::State { name: s } if s == name)));
        }
        let mut seen: HashMap<(Op, Vec<NodeIndex>, TensorType), NodeIndex> = HashMap::new();
        let mut changed = false;
        for n in order {
            if keep.contains(&n) {
                continue;
            }
            let key = (g.g[n].op.clone(), g.operands(n), g.g[n].ty.clone());
            match seen.entry(key) {
                Entry::Occupied(first) => {
                    replace_uses(g, n, *first.get());
                    g.g.remove_node(n);
                    changed = true;
                }
                Entry::Vacant(slot) => {
                    slot.insert(n);
                }
            }
        }
        if changed {
            g.memory = None;
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::op::{Binary, Unary, F};
    use crate::ir::text::{parse, print};
    use crate::ir::verify::verify;
    use crate::ir::Dim;

    fn cse(text: &str) -> (String, bool) {
        let mut g = parse(text).unwrap();
        let changed = Cse.run(&mut g);
        assert_eq!(verify(&g), Ok(()));
        (print(&g, None), changed)
    }

    #[test]
    fn merges_equal_nodes_and_sources() {
        let mut g = Graph::new("g");
        let t = TensorType::f32(vec![Dim::c(4)]);
        let x1 = g.source(Op::Input { name: "x".into() }, t.clone(), None);
        let x2 = g.source(Op::Input { name: "x".into() }, t, None);
        let c1 = g.add(Op::Const { value: F::new(2.0) }, &[], None);
        let c2 = g.add(Op::Const { value: F::new(2.0) }, &[], None);
        let a = g.add(Op::Binary(Binary::Mul), &[x1, c1], None);
        let b = g.add(Op::Binary(Binary::Mul), &[x2, c2], None);
        let e1 = g.add(Op::Unary(Unary::Exp), &[a], None);
        let e2 = g.add(Op::Unary(Unary::Exp), &[b], None);
        let s = g.add(Op::Binary(Binary::Add), &[e1, e2], None);
        g.output("s", s);
        g.output("e", e2);
        assert!(Cse.run(&mut g));
        assert_eq!(verify(&g), Ok(()));
        assert_eq!(g.node_count(), 5); // x, 2, mul, exp, add
                                       // One exp is left, read twice by the add and named by the output.
        let e = g.operands(s)[0];
        assert!(e == e1 || e == e2);
        assert_eq!(g.operands(s), vec![e, e]);
        assert_eq!(g.outputs[1].1, e);
        assert!(!Cse.run(&mut g), "a second run finds nothing");
    }

    #[test]
    fn keeps_apart_what_differs() {
        let text = r#"graph "g" {
  %0 = input "x" : f32[4]
  %1 = input "y" : f32[4]
  %2 = const {value = 1.0} : f32[]
  %3 = const {value = 2.0} : f32[]
  %4 = add(%0, %1) : f32[4]
  %5 = add(%1, %0) : f32[4]
  %6 = affine(%0) {scale = 1.0, shift = 2.0} : f32[4]
  %7 = affine(%0) {scale = 2.0, shift = 1.0} : f32[4]
  %8 = reshape(%0) {shape = [2, 2]} : f32[2, 2]
  %9 = reshape(%0) {shape = [4, 1]} : f32[4, 1]
  out "a" = %4
  out "b" = %5
  out "c" = %6
  out "d" = %7
  out "e" = %8
  out "f" = %9
  out "g" = %2
  out "h" = %3
}
"#;
        let (after, changed) = cse(text);
        assert!(!changed);
        assert_eq!(after, print(&parse(text).unwrap(), None));
    }

    #[test]
    fn never_merges_an_updated_state() {
        // Two nodes of the state `s`: merging them would give the updated
        // state a second reader (the verifier's in-place rule).
        let mut g = Graph::new("g");
        let t = TensorType::f32(vec![Dim::c(4), Dim::c(2)]);
        let s1 = g.source(Op::State { name: "s".into() }, t.clone(), None);
        let s2 = g.source(Op::State { name: "s".into() }, t, None);
        let row = g.source(Op::Input { name: "row".into() }, TensorType::f32(vec![Dim::c(1), Dim::c(2)]), None);
        let w = g.add(Op::WriteSlice { axis: 0, start: Dim::c(0) }, &[s1, row], None);
        let r = g.add(Op::Unary(Unary::Neg), &[s2], None);
        g.update("s", w);
        g.output("r", r);
        assert_eq!(verify(&g), Ok(()));
        assert!(!Cse.run(&mut g));
        assert_eq!(verify(&g), Ok(()));
        // A state without an update merges like any source.
        g.updates.clear();
        assert!(Cse.run(&mut g));
        assert_eq!(verify(&g), Ok(()));
        assert_eq!(g.node_count(), 4);
    }

    #[test]
    fn drops_a_stale_memory_plan() {
        let mut g = parse(
            r#"graph "g" {
  %0 = input "x" : f32[4]
  %1 = exp(%0) : f32[4]
  %2 = exp(%0) : f32[4]
  out "a" = %1
  out "b" = %2
}
"#,
        )
        .unwrap();
        crate::pass::mem::Mem.run(&mut g);
        assert!(g.memory.is_some());
        assert!(Cse.run(&mut g));
        assert!(g.memory.is_none());
    }
}
