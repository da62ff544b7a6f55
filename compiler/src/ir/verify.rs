//! The verifier: re-checks what the builders guarantee, so that a pass that
//! edits the graph by hand is caught in tests. It checks that the graph is
//! acyclic, that operand slots are numbered 0..n once each, that sources have
//! no operands, that every node's recorded type is what inference gives
//! (shapes and dtypes), and that outputs name existing nodes, once each.

use super::graph::{Graph, Operand};
use super::infer::infer;
use super::op::Op;
use super::text::{source_name, type_str};
use petgraph::stable_graph::NodeIndex;
use petgraph::Direction;
use std::collections::HashMap;

/// All problems found, each naming the node (index, op) and what is wrong.
pub fn verify(g: &Graph) -> Result<(), Vec<String>> {
    let mut errs = vec![];
    cycles(g, &mut errs);
    let mut declared: HashMap<(&str, &str), NodeIndex> = HashMap::new();
    for n in g.g.node_indices() {
        let node = &g.g[n];
        let mut slots: Vec<Operand> = g.g.edges_directed(n, Direction::Incoming).map(|e| *e.weight()).collect();
        slots.sort();
        if node.op.is_source() && !slots.is_empty() {
            errs.push(format!("{}: a source, but has {} operand(s)", who(g, n), slots.len()));
            continue;
        }
        if !slots_ok(g, n, &slots, &mut errs) {
            continue; // types would only repeat the slot problem
        }
        match &node.op {
            // Explicitly typed; the same name must not be declared with two types.
            Op::Input { .. } | Op::Param { .. } | Op::State { .. } => {
                let name = source_name(&node.op).expect("a named source");
                let first = *declared.entry((node.op.name(), name)).or_insert(n);
                if g.g[first].ty != node.ty {
                    errs.push(format!(
                        "{}: declared {}, but {} declares it {}",
                        who(g, n),
                        type_str(&node.ty),
                        who(g, first),
                        type_str(&g.g[first].ty)
                    ));
                }
            }
            op => {
                let operands = g.operands(n);
                let tys: Vec<_> = operands.iter().map(|&o| &g.g[o].ty).collect();
                match infer(op, &tys) {
                    Err(e) => errs.push(format!("{}: {e}", who(g, n))),
                    Ok(ty) if ty != node.ty => errs.push(format!(
                        "{}: recorded type {}, but its operands give {}",
                        who(g, n),
                        type_str(&node.ty),
                        type_str(&ty)
                    )),
                    Ok(_) => {}
                }
            }
        }
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, (name, n)) in g.outputs.iter().enumerate() {
        if !g.g.contains_node(*n) {
            errs.push(format!("output {name:?} names node {}, which does not exist", n.index()));
        }
        if let Some(first) = names.insert(name, i) {
            errs.push(format!("output {name:?} is named twice (outputs {first} and {i})"));
        }
    }
    updates(g, &mut errs);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}

/// An in-place update `name` is an output `name` that is a `write_slice` of the
/// state `name` (or a fused kernel ending in one, into its input 0), and the state has no other use: writing into the state's
/// memory then changes nothing any other node reads.
fn updates(g: &Graph, errs: &mut Vec<String>) {
    for (i, name) in g.updates.iter().enumerate() {
        if g.updates[..i].contains(name) {
            errs.push(format!("update {name:?} is declared twice"));
            continue;
        }
        let Some(&(_, out)) = g.outputs.iter().find(|(o, _)| o == name) else {
            errs.push(format!("update {name:?} is not an output"));
            continue;
        };
        if !g.g.contains_node(out) {
            continue; // reported with the outputs
        }
        let ops = g.operands(out);
        let state = ops.first().filter(|&&s| matches!(&g.g[s].op, Op::State { name: s } if s == name));
        let writes = match &g.g[out].op {
            Op::WriteSlice { .. } => true,
            Op::Fused(k) => k.store().is_some(),
            _ => false,
        };
        let Some(&state) = state.filter(|_| writes) else {
            errs.push(format!("update {name:?}: {} is not a write_slice of the state {name:?}", who(g, out)));
            continue;
        };
        let users = g.g.neighbors_directed(state, Direction::Outgoing).count();
        let edges = g.g.edges_directed(state, Direction::Outgoing).count();
        if users != 1 || edges != 1 {
            errs.push(format!(
                "update {name:?}: the state is read by {edges} operand(s), not only by its write_slice, so it cannot be written in place"
            ));
        }
    }
}

/// `node 3 (linear)`, or `node 0 (input "x")` for sources.
fn who(g: &Graph, n: NodeIndex) -> String {
    let op = &g.g[n].op;
    match source_name(op) {
        Some(s) => format!("node {} ({} {s:?})", n.index(), op.name()),
        None => format!("node {} ({})", n.index(), op.name()),
    }
}

/// Each strongly connected component with more than one node, or a node
/// feeding itself, is a cycle; naming all its nodes makes it easy to find.
fn cycles(g: &Graph, errs: &mut Vec<String>) {
    for mut scc in petgraph::algo::tarjan_scc(&g.g) {
        if scc.len() > 1 || g.g.contains_edge(scc[0], scc[0]) {
            scc.sort();
            let names: Vec<String> = scc.iter().map(|&n| who(g, n)).collect();
            errs.push(format!("cycle through {}", names.join(", ")));
        }
    }
}

/// Operand slots (sorted) must be exactly 0..n.
fn slots_ok(g: &Graph, n: NodeIndex, slots: &[Operand], errs: &mut Vec<String>) -> bool {
    let before = errs.len();
    let max = slots.last().map_or(0, |&m| m as usize + 1);
    for k in 0..max {
        match slots.iter().filter(|&&s| s as usize == k).count() {
            0 => errs.push(format!("{}: operand slot {k} is missing", who(g, n))),
            1 => {}
            c => errs.push(format!("{}: operand slot {k} is defined {c} times", who(g, n))),
        }
    }
    errs.len() == before
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::graph::TensorType;
    use crate::ir::op::{Binary, Unary, F};
    use crate::ir::text::tests::every_op_graph;
    use crate::ir::text::{parse, print};
    use crate::ir::Dim;

    /// x -> exp -> add(exp, w) -> out
    fn small() -> (Graph, [NodeIndex; 4]) {
        let mut g = Graph::new("small");
        let t = TensorType::f32(vec![Dim::parse("B").unwrap(), Dim::c(8)]);
        let x = g.source(Op::Input { name: "x".into() }, t, None);
        let w = g.source(Op::Param { key: "w".into() }, TensorType::f32(vec![Dim::c(8)]), None);
        let e = g.add(Op::Unary(Unary::Exp), &[x], None);
        let a = g.add(Op::Binary(Binary::Add), &[e, w], None);
        g.output("y", a);
        (g, [x, w, e, a])
    }

    fn errors(g: &Graph) -> Vec<String> {
        verify(g).expect_err("the corruption should be reported")
    }

    #[test]
    fn good_graphs_verify() {
        assert_eq!(verify(&small().0), Ok(()));
        let g = every_op_graph();
        assert_eq!(verify(&g), Ok(()));
        assert_eq!(verify(&parse(&print(&g, None)).unwrap()), Ok(()));
    }

    #[test]
    fn wrong_recorded_type_is_reported() {
        let (mut g, [.., e, _]) = small();
        g.g[e].ty = TensorType::f32(vec![Dim::c(8)]);
        let errs = errors(&g);
        assert!(errs.contains(&"node 2 (exp): recorded type f32[8], but its operands give f32[B, 8]".to_string()));

        // A dtype change is a type change too.
        let (mut g, [.., a]) = small();
        g.g[a].ty.dtype = crate::ir::DType::I64;
        assert_eq!(errors(&g), ["node 3 (add): recorded type i64[B, 8], but its operands give f32[B, 8]"]);
    }

    #[test]
    fn ill_typed_operands_are_reported() {
        let (mut g, [x, ..]) = small();
        g.g[x].ty = TensorType::i64(vec![Dim::c(8)]);
        assert_eq!(errors(&g), ["node 2 (exp): operands must be f32"]);
    }

    #[test]
    fn cycle_is_reported() {
        let (mut g, [x, _, e, a]) = small();
        let edge = g.g.find_edge(x, e).unwrap();
        g.g.remove_edge(edge);
        g.g.add_edge(a, e, 0);
        assert_eq!(errors(&g), ["cycle through node 2 (exp), node 3 (add)"]);

        let (mut g, [_, _, e, _]) = small();
        g.g.add_edge(e, e, 1);
        let errs = errors(&g);
        assert!(errs.contains(&"cycle through node 2 (exp)".to_string()), "{errs:?}");
    }

    #[test]
    fn duplicate_operand_slot_is_reported() {
        let (mut g, [x, _, _, a]) = small();
        g.g.add_edge(x, a, 0);
        assert_eq!(errors(&g), ["node 3 (add): operand slot 0 is defined 2 times"]);
    }

    #[test]
    fn missing_operand_slot_is_reported() {
        let (mut g, [_, w, _, a]) = small();
        let edge = g.g.find_edge(w, a).unwrap();
        g.g[edge] = 2;
        assert_eq!(errors(&g), ["node 3 (add): operand slot 1 is missing"]);
    }

    #[test]
    fn source_with_operand_is_reported() {
        let (mut g, [x, w, ..]) = small();
        g.g.add_edge(x, w, 0);
        assert_eq!(errors(&g), ["node 1 (param \"w\"): a source, but has 1 operand(s)"]);
    }

    #[test]
    fn conflicting_source_declarations_are_reported() {
        let (mut g, _) = small();
        g.source(Op::Param { key: "w".into() }, TensorType::f32(vec![Dim::c(9)]), None);
        // The same name as an input is a different thing.
        g.source(Op::Input { name: "w".into() }, TensorType::f32(vec![Dim::c(9)]), None);
        assert_eq!(errors(&g), ["node 4 (param \"w\"): declared f32[9], but node 1 (param \"w\") declares it f32[8]"]);
    }

    #[test]
    fn const_type_is_checked() {
        let (mut g, _) = small();
        let c = g.add(Op::Const { value: F::new(1.0) }, &[], None);
        g.g[c].ty = TensorType::f32(vec![Dim::c(1)]);
        assert_eq!(errors(&g), ["node 4 (const): recorded type f32[1], but its operands give f32[]"]);
    }

    #[test]
    fn bad_outputs_are_reported() {
        let (mut g, [x, ..]) = small();
        g.output("dangling", NodeIndex::new(99));
        g.output("y", x);
        assert_eq!(
            errors(&g),
            [
                "output \"dangling\" names node 99, which does not exist",
                "output \"y\" is named twice (outputs 0 and 2)"
            ]
        );

        let (mut g, [.., a]) = small();
        g.g.remove_node(a);
        assert_eq!(errors(&g), ["output \"y\" names node 3, which does not exist"]);
    }
}
