//! Memory planning: assigns every materialised value of a program (each
//! needed node except parameters) to a slot, stored as `Graph::memory`
//! (`ir/memory.rs` has the plan, its checker and its per-bindings layout).
//! It changes no node, so it runs last: a pass that rewrites the graph
//! afterwards must drop the plan (`g.memory = None`; `cse`, `dce` and `fold`
//! do when they change anything).
//!
//! From the liveness analysis (order and last uses), in evaluation order:
//!
//! 1. **groups** of values sharing memory: a declared state update writes into
//!    its state (`Liveness::writes_into`); a `reshape` is the same bytes as
//!    its operand, so it aliases it (a backend copies nothing, or copies onto
//!    itself); an element-wise op (`Unary`, `Binary`, `Affine`, `ClampMax`) or
//!    a `write_slice` writes in place into an operand of its own type whose
//!    memory no later node reads and no other operand of it shares
//!    (`memory::in_place_op` says why that is legal). A group lives from its
//!    first value to the last read of any of them (outputs: to the end).
//! 2. **slots** by linear scan over the groups in order of their start: a
//!    group takes a free slot of its exact symbolic size (the one freed last),
//!    or a new one. A slot is free once the last group in it is dead, so two
//!    groups share a slot only if their live ranges do not overlap.

use super::Pass;
use crate::ir::liveness::{Liveness, END};
use crate::ir::memory::{in_place_op, MemoryPlan, Placed, Reuse};
use crate::ir::{Dim, Graph, Op};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

pub struct Mem;

impl Pass for Mem {
    fn name(&self) -> &'static str {
        "mem"
    }
    fn run(&self, g: &mut Graph) -> bool {
        // A cyclic graph is left for the verifier to report.
        let plan = Liveness::of(g).map(|l| plan(g, &l));
        let changed = plan != g.memory;
        g.memory = plan;
        changed
    }
}

/// The memory plan of `g`.
pub fn plan(g: &Graph, l: &Liveness) -> MemoryPlan {
    let nodes: Vec<_> =
        l.order.iter().copied().filter(|n| l.needed[n.index()] && !matches!(g.g[*n].op, Op::Param { .. })).collect();
    let mut at: HashMap<usize, usize> = HashMap::with_capacity(nodes.len());
    let pos = l.positions();
    let mut at_pos: HashMap<usize, usize> = HashMap::with_capacity(nodes.len());
    for (i, n) in nodes.iter().enumerate() {
        at.insert(n.index(), i);
        at_pos.insert(pos[n.index()], i);
    }
    let last_uses = l.last_uses(g);
    let last: Vec<u32> = nodes
        .iter()
        .map(|n| match last_uses[n.index()] {
            END => u32::MAX,
            p => at_pos[&p] as u32,
        })
        .collect();

    // 1. Groups: the root of each value's memory, and how long it lives.
    let mut reuse = vec![Reuse::Own; nodes.len()];
    let mut root: Vec<usize> = (0..nodes.len()).collect();
    let mut end: Vec<u32> = vec![0; nodes.len()];
    for (i, &n) in nodes.iter().enumerate() {
        let operands = &l.operands[n.index()];
        let group = |x: &petgraph::stable_graph::NodeIndex, root: &[usize]| at.get(&x.index()).map(|&j| root[j]);
        let r = if let Some(s) = l.writes_into[n.index()].filter(|s| at.contains_key(&s.index())) {
            Reuse::Update { of: s.index() as u32 }
        } else if let (Op::Reshape { .. }, Some(x)) =
            (&g.g[n].op, operands.first().filter(|x| at.contains_key(&x.index())))
        {
            Reuse::Alias { of: x.index() as u32 }
        } else {
            operands
                .iter()
                .find(|&&o| {
                    let Some(r) = group(&o, &root) else { return false };
                    in_place_op(&g.g[n].op, operands, o)
                        && g.g[o].ty == g.g[n].ty
                        && end[r] == i as u32
                        && operands.iter().all(|x| *x == o || group(x, &root) != Some(r))
                })
                .map_or(Reuse::Own, |o| Reuse::InPlace { of: o.index() as u32 })
        };
        if let Some(of) = r.of() {
            root[i] = root[at[&(of as usize)]];
        }
        reuse[i] = r;
        let gr = root[i];
        end[gr] = end[gr].max(last[i]).max(i as u32);
    }

    // 2. Slots: linear scan over the groups by start.
    let bytes = |i: usize| g.g[nodes[i]].ty.numel().mul_c(g.g[nodes[i]].ty.dtype.bytes());
    let mut slot_of_group: Vec<u32> = vec![u32::MAX; nodes.len()];
    let mut free: HashMap<Dim, Vec<u32>> = HashMap::new();
    let mut alive: BinaryHeap<Reverse<(u32, u32)>> = BinaryHeap::new(); // (end, slot)
    let mut slot_bytes: Vec<Dim> = vec![];
    for i in (0..nodes.len()).filter(|&i| root[i] == i) {
        while let Some(&Reverse((e, s))) = alive.peek() {
            if e >= i as u32 {
                break;
            }
            alive.pop();
            free.entry(slot_bytes[s as usize].clone()).or_default().push(s);
        }
        let size = bytes(i);
        let s = match free.get_mut(&size).and_then(Vec::pop) {
            Some(s) => s,
            None => {
                slot_bytes.push(size);
                slot_bytes.len() as u32 - 1
            }
        };
        slot_of_group[i] = s;
        alive.push(Reverse((end[i], s)));
    }
    let values = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| Placed { node: n.index() as u32, slot: slot_of_group[root[i]], last: last[i], reuse: reuse[i] })
        .collect();
    MemoryPlan { values, slots: slot_bytes.len() as u32 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::memory::{ArenaLayout, ALIGN};
    use crate::ir::op::{Binary, Unary, F};
    use crate::ir::text::parse;
    use crate::ir::{Bindings, Sym, TensorType};
    use petgraph::stable_graph::NodeIndex;
    use proptest::prelude::*;

    fn planned(text: &str) -> Graph {
        let mut g = parse(text).unwrap();
        assert!(Mem.run(&mut g));
        assert_eq!(g.memory.as_ref().unwrap().check(&g), Ok(()));
        assert!(!Mem.run(&mut g), "planning again changes nothing");
        g
    }

    fn peak(g: &Graph, b: &Bindings) -> u64 {
        Liveness::of(g).unwrap().peak_bytes(g, b)
    }

    fn largest_value(g: &Graph, b: &Bindings) -> u64 {
        g.memory
            .as_ref()
            .unwrap()
            .values
            .iter()
            .map(|v| Liveness::bytes(g, NodeIndex::new(v.node as usize), b))
            .max()
            .unwrap_or(0)
    }

    /// No two values alive at once (and not sharing memory on purpose)
    /// overlap in the arena; the arena holds the largest value and is no
    /// larger than the unplanned peak plus alignment.
    fn check_layout(g: &Graph, b: &Bindings) -> ArenaLayout {
        let plan = g.memory.as_ref().unwrap();
        let lay = plan.layout(g, b);
        let groups = plan.groups();
        let range = |i: usize| {
            let v = &plan.values[i];
            let at = lay.offsets[v.slot as usize];
            (at, at + Liveness::bytes(g, NodeIndex::new(v.node as usize), b))
        };
        for i in 0..plan.values.len() {
            for j in i + 1..plan.values.len() {
                let alive_together = plan.values[i].last >= j as u32;
                let (a, b) = (range(i), range(j));
                let overlap = a.0 < b.1 && b.0 < a.1;
                assert!(
                    !(alive_together && overlap && groups[i] != groups[j]),
                    "values {i} and {j} are alive at once and overlap: {a:?} {b:?}\n{}",
                    crate::ir::memory::render(g, &Bindings::new(1, 1, 1))
                );
            }
        }
        for (s, &o) in lay.offsets.iter().enumerate() {
            assert_eq!(o % ALIGN, 0);
            assert!(o + lay.sizes[s] <= lay.total);
        }
        assert!(lay.total >= largest_value(g, b));
        assert!(lay.total <= peak(g, b) + ALIGN * plan.slots as u64, "arena {} > peak {}", lay.total, peak(g, b));
        lay
    }

    #[test]
    fn element_wise_chain_runs_in_place() {
        let g = planned(
            r#"graph "chain" {
  %0 = input "x" : f32[B, 16]
  %1 = exp(%0) : f32[B, 16]
  %2 = neg(%1) : f32[B, 16]
  %3 = affine(%2) {scale = 2.0, shift = 1.0} : f32[B, 16]
  %4 = clamp_max(%3) {max = 3.0} : f32[B, 16]
  %5 = tanh(%4) : f32[B, 16]
  out "y" = %5
}
"#,
        );
        let plan = g.memory.as_ref().unwrap();
        assert_eq!(plan.slots, 1);
        assert!(plan.values[1..].iter().all(|v| matches!(v.reuse, Reuse::InPlace { .. })), "{plan:?}");
        let b = Bindings::new(2, 1, 1);
        let lay = check_layout(&g, &b);
        assert_eq!(lay.total, 128); // one [2, 16] f32 value
        assert_eq!(peak(&g, &b), 256); // unplanned: operand and result at once
    }

    #[test]
    fn no_in_place_into_a_value_read_later() {
        // exp reads x, and so does the add after it: exp needs its own memory;
        // the add may overwrite either operand (both die there).
        let g = planned(
            r#"graph "g" {
  %0 = input "x" : f32[8]
  %1 = exp(%0) : f32[8]
  %2 = add(%1, %0) : f32[8]
  %3 = input "s" : f32[]
  %4 = mul(%3, %2) : f32[8]
  out "y" = %4
}
"#,
        );
        let plan = g.memory.as_ref().unwrap();
        let reuse: Vec<Reuse> = plan.values.iter().map(|v| v.reuse).collect();
        let of = |i: usize| plan.values[i].node;
        assert_eq!(plan.values.len(), 5);
        let exp =
            plan.values.iter().position(|v| g.g[NodeIndex::new(v.node as usize)].op == Op::Unary(Unary::Exp)).unwrap();
        assert_eq!(reuse[exp], Reuse::Own);
        let add = exp + 1;
        assert_eq!(reuse[add], Reuse::InPlace { of: of(exp) });
        // mul broadcasts the scalar: in place into the [8] operand only.
        assert_eq!(reuse[add + 1], Reuse::InPlace { of: of(add) });
        check_layout(&g, &Bindings::new(1, 1, 1));
    }

    #[test]
    fn updates_reshapes_and_write_slices_share_memory() {
        let g = planned(
            r#"graph "g" {
  %0 = state "cache" : f32[B, 8, 4]
  %1 = input "k" : f32[B, T, 4]
  %2 = write_slice(%0, %1) {axis = 1, start = P} : f32[B, 8, 4]
  %3 = input "z" : f32[B, 8, 4]
  %4 = reshape(%3) {shape = [B, 32]} : f32[B, 32]
  %5 = input "row" : f32[B, 1, 4]
  %6 = write_slice(%3, %5) {axis = 1, start = 0} : f32[B, 8, 4]
  %7 = permute(%1) {perm = [1, 0, 2]} : f32[T, B, 4]
  update "cache" = %2
  out "flat" = %4
  out "w" = %6
  out "p" = %7
}
"#,
        );
        let plan = g.memory.as_ref().unwrap();
        let kinds: Vec<&str> = plan
            .values
            .iter()
            .map(|v| match v.reuse {
                Reuse::Own => "own",
                Reuse::Update { .. } => "update",
                Reuse::InPlace { .. } => "in place",
                Reuse::Alias { .. } => "alias",
            })
            .collect();
        assert_eq!(kinds.iter().filter(|k| **k == "update").count(), 1, "{kinds:?}");
        assert_eq!(kinds.iter().filter(|k| **k == "alias").count(), 1, "{kinds:?}");
        // z is read by the reshape (an output, alive to the end): the
        // write_slice into z cannot be in place.
        assert_eq!(kinds.iter().filter(|k| **k == "in place").count(), 0, "{kinds:?}");
        for b in [Bindings::new(1, 1, 0), Bindings::new(2, 3, 4)] {
            check_layout(&g, &b);
        }
    }

    #[test]
    fn slots_are_reused_and_laid_out_apart_when_alive_together() {
        // Three same-size values in sequence, each dying at the next
        // non-element-wise op: the softmaxes cannot run in place, so two
        // slots alternate.
        let g = planned(
            r#"graph "g" {
  %0 = input "x" : f32[B, 8]
  %1 = softmax(%0) : f32[B, 8]
  %2 = softmax(%1) : f32[B, 8]
  %3 = softmax(%2) : f32[B, 8]
  %4 = softmax(%3) : f32[B, 8]
  out "y" = %4
}
"#,
        );
        let plan = g.memory.as_ref().unwrap();
        assert_eq!(plan.slots, 2);
        let lay = check_layout(&g, &Bindings::new(3, 1, 1));
        assert_eq!(lay.offsets, vec![0, 128]);
        assert_eq!(lay.total, 256);
    }

    #[test]
    fn a_stale_plan_is_caught() {
        let mut g = planned(
            r#"graph "g" {
  %0 = input "x" : f32[8]
  %1 = softmax(%0) : f32[8]
  %2 = softmax(%1) : f32[8]
  out "y" = %2
}
"#,
        );
        let plan = g.memory.as_mut().unwrap();
        // Both softmaxes in one slot although %1 is read by %2.
        plan.values[2].slot = plan.values[1].slot;
        let errs = plan.clone().check(&g).unwrap_err();
        assert!(errs.iter().any(|e| e.contains("alive at once")), "{errs:?}");
        let plan = g.memory.as_mut().unwrap();
        plan.values[2].reuse = Reuse::InPlace { of: plan.values[0].node };
        let errs = plan.clone().check(&g).unwrap_err();
        assert!(errs.iter().any(|e| e.contains("cannot write in place")), "{errs:?}");
    }

    /// A random small program: element-wise and layout ops over a few
    /// sources, built through `Graph::try_add` (ill-typed picks are skipped),
    /// sometimes with a declared state update.
    fn random_graph(steps: &[(u8, usize, usize)], outs: &[usize], update: bool) -> Graph {
        let mut g = Graph::new("random");
        let b = Dim::sym(Sym::B);
        let t = Dim::sym(Sym::T);
        let mut vals = vec![
            g.source(Op::Input { name: "x".into() }, TensorType::f32(vec![b.clone(), Dim::c(4)]), None),
            g.source(Op::Input { name: "v".into() }, TensorType::f32(vec![Dim::c(4)]), None),
            g.source(Op::Input { name: "m".into() }, TensorType::f32(vec![b.clone(), t.clone(), Dim::c(2)]), None),
            g.source(Op::Param { key: "w".into() }, TensorType::f32(vec![b.clone(), Dim::c(4)]), None),
        ];
        vals.push(g.add(Op::Const { value: F::new(0.5) }, &[], None));
        for &(k, i, j) in steps {
            let (x, y) = (vals[i % vals.len()], vals[j % vals.len()]);
            let shape = g.ty(x).shape.clone();
            let (op, operands): (Op, Vec<NodeIndex>) = match k % 12 {
                0 => (Op::Unary(Unary::Exp), vec![x]),
                1 => (Op::Unary(Unary::Neg), vec![x]),
                2 => (Op::Binary(Binary::Add), vec![x, y]),
                3 => (Op::Binary(Binary::Mul), vec![x, y]),
                4 => (Op::Affine { scale: F::new(0.5), shift: F::new(1.0) }, vec![x]),
                5 => (Op::ClampMax { max: F::new(1.0) }, vec![x]),
                6 => (Op::Reshape { shape: vec![crate::ir::dim::product(&shape)] }, vec![x]),
                7 => (Op::Permute { perm: (0..shape.len() as u8).rev().collect() }, vec![x]),
                8 if !shape.is_empty() => (Op::Slice { axis: 0, start: Dim::c(0), len: Dim::c(1) }, vec![x]),
                9 => (Op::Softmax, vec![x]),
                10 => (Op::Concat { axis: 0 }, vec![x, y]),
                11 => (Op::Binary(Binary::Sub), vec![y, x]),
                _ => continue,
            };
            if let Ok(n) = g.try_add(op, &operands, None) {
                vals.push(n);
            }
        }
        if update {
            let s = g.source(Op::State { name: "s".into() }, TensorType::f32(vec![Dim::c(3), Dim::c(4)]), None);
            let row = g.add(Op::Slice { axis: 0, start: Dim::c(0), len: Dim::c(1) }, &[vals[0]], None);
            let w = g.add(Op::WriteSlice { axis: 0, start: Dim::c(1) }, &[s, row], None);
            g.update("s", w);
        }
        let last = *vals.last().unwrap();
        g.output("last", last);
        for (k, &o) in outs.iter().enumerate() {
            g.output(format!("o{k}"), vals[o % vals.len()]);
        }
        g
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn random_programs_plan_soundly(
            steps in prop::collection::vec((0u8..12, 0usize..64, 0usize..64), 1..24),
            outs in prop::collection::vec(0usize..64, 0..3),
            update: bool,
        ) {
            let mut g = random_graph(&steps, &outs, update);
            prop_assert_eq!(crate::ir::verify::verify(&g), Ok(()));
            Mem.run(&mut g);
            let plan = g.memory.clone().unwrap();
            prop_assert_eq!(plan.check(&g), Ok(()));
            for b in [Bindings::new(1, 1, 0), Bindings::new(2, 3, 1), Bindings::new(5, 2, 7)] {
                check_layout(&g, &b);
            }
        }
    }
}
