//! A program's memory plan (made by the `mem` pass, `pass/mem.rs`) and its
//! layout in one arena.
//!
//! Sizes are polynomials in `B`, `T`, `P`, so the plan is in two parts:
//!
//! - [`MemoryPlan`] (symbolic, stored on the graph): every materialised value
//!   (each needed node except parameters) in evaluation order, the **slot**
//!   its memory is in, its last reader, and whether it reuses an earlier
//!   value's memory (a declared state update, an element-wise op writing in
//!   place into an operand that dies at it, a reshape of the same bytes).
//!   Values that share memory that way form a **group**; two groups share a
//!   slot only if their live ranges do not overlap (and they have the same
//!   symbolic size, so a slot needs no resizing between them).
//! - [`MemoryPlan::layout`] (per bindings): each slot's bytes (the largest
//!   value it holds) and its offset in one arena, 64-byte aligned, so that two
//!   slots alive at the same time never overlap. A backend lays the arena out
//!   once at the largest bindings a program runs with: sizes only grow with
//!   the symbols (non-negative polynomials), so that layout holds every
//!   smaller run too.
//!
//! A backend that follows a plan evaluates the nodes in the order of
//! [`MemoryPlan::values`] (the liveness analysis' order, which is also what
//! `Liveness::peak_bytes` counts in). Sources are values like the others: an
//! input, state or constant occupies its slot from its place in that order
//! (the backend copies it in there), and a declared update leaves the new
//! state in the state's slot for the backend to hand back.

use super::graph::Graph;
use super::liveness::{Liveness, END};
use super::op::Op;
use super::Bindings;
use petgraph::stable_graph::NodeIndex;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt::Write;

/// The alignment of every slot's offset, in bytes.
pub const ALIGN: u64 = 64;

/// How a value's memory relates to an earlier value's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reuse {
    /// Memory of its own.
    #[default]
    Own,
    /// A declared state update (`Graph::updates`): written into the state.
    Update { of: u32 },
    /// Written in place into operand `of`, whose memory nothing reads later
    /// (an element-wise op with the operand's type, or a `write_slice` into
    /// its destination).
    InPlace { of: u32 },
    /// A `reshape` of `of`: the same bytes, so the same memory.
    Alias { of: u32 },
}

impl Reuse {
    /// The value whose memory this one reuses.
    pub fn of(self) -> Option<u32> {
        match self {
            Reuse::Own => None,
            Reuse::Update { of } | Reuse::InPlace { of } | Reuse::Alias { of } => Some(of),
        }
    }
    fn is_own(&self) -> bool {
        *self == Reuse::Own
    }
}

/// One materialised value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placed {
    /// The node (`NodeIndex::index`).
    pub node: u32,
    pub slot: u32,
    /// The index in [`MemoryPlan::values`] of the last value that reads this
    /// one (its own index when nothing does), or `u32::MAX` for an output.
    pub last: u32,
    #[serde(default, skip_serializing_if = "Reuse::is_own")]
    pub reuse: Reuse,
}

/// Which slot holds each value of a program (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryPlan {
    /// Every materialised value, in evaluation order.
    pub values: Vec<Placed>,
    /// How many slots.
    pub slots: u32,
}

/// The arena of one program under some bindings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArenaLayout {
    /// Byte offset of each slot, a multiple of [`ALIGN`].
    pub offsets: Vec<u64>,
    /// Bytes of each slot: the largest value it holds.
    pub sizes: Vec<u64>,
    /// Bytes of the whole arena, a multiple of [`ALIGN`].
    pub total: u64,
}

fn align(v: u64) -> u64 {
    v.div_ceil(ALIGN).saturating_mul(ALIGN)
}

/// Whether two sorted lists of disjoint closed intervals intersect.
fn intersect(a: &[(u32, u32)], b: &[(u32, u32)]) -> bool {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i].0 <= b[j].1 && b[j].0 <= a[i].1 {
            return true;
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    false
}

/// Offsets of slots placed in `order`, each at the lowest aligned offset
/// clear of the slots placed before it that are alive with it; and the total.
fn pack(order: &[usize], sizes: &[u64], life: &[Vec<(u32, u32)>]) -> (Vec<u64>, u64) {
    let mut offsets = vec![0u64; sizes.len()];
    let mut placed: Vec<usize> = Vec::with_capacity(sizes.len());
    let mut total = 0u64;
    for &s in order {
        let size = align(sizes[s]);
        if size == 0 {
            continue;
        }
        let mut taken: Vec<(u64, u64)> = placed
            .iter()
            .filter(|&&p| intersect(&life[s], &life[p]))
            .map(|&p| (offsets[p], offsets[p] + align(sizes[p])))
            .collect();
        taken.sort_unstable();
        let mut at = 0u64;
        for (lo, hi) in taken {
            if lo >= at.saturating_add(size) {
                break;
            }
            at = at.max(hi);
        }
        offsets[s] = at;
        total = total.max(at.saturating_add(size));
        placed.push(s);
    }
    (offsets, total)
}

impl MemoryPlan {
    /// For each value, the index in `values` of the value that owns the
    /// memory it is in (the root of its group).
    pub fn groups(&self) -> Vec<usize> {
        let at: HashMap<u32, usize> = self.values.iter().enumerate().map(|(i, v)| (v.node, i)).collect();
        let mut root: Vec<usize> = (0..self.values.len()).collect();
        for (i, v) in self.values.iter().enumerate() {
            if let Some(&j) = v.reuse.of().and_then(|of| at.get(&of)).filter(|&&j| j < i) {
                root[i] = root[j];
            }
        }
        root
    }

    /// The live range of every slot: the sorted, disjoint closed intervals of
    /// positions (indices into `values`) at which memory in it is in use.
    pub fn lifetimes(&self) -> Vec<Vec<(u32, u32)>> {
        let mut per: Vec<Vec<(u32, u32)>> = vec![vec![]; self.slots as usize];
        for (i, v) in self.values.iter().enumerate() {
            per[v.slot as usize].push((i as u32, v.last.max(i as u32)));
        }
        for l in &mut per {
            l.sort_unstable();
            let mut merged: Vec<(u32, u32)> = Vec::with_capacity(l.len());
            for &(s, e) in l.iter() {
                match merged.last_mut() {
                    Some(m) if s <= m.1 => m.1 = m.1.max(e),
                    _ => merged.push((s, e)),
                }
            }
            *l = merged;
        }
        per
    }

    /// Slot sizes and offsets under `b`. Two greedy packings, the smaller
    /// kept: slots by decreasing size (then first use), and slots by first
    /// use (then decreasing size); each slot goes at the lowest aligned offset
    /// where it overlaps no slot already placed whose lifetime meets its own.
    pub fn layout(&self, g: &Graph, b: &Bindings) -> ArenaLayout {
        let n = self.slots as usize;
        let mut sizes = vec![0u64; n];
        for v in &self.values {
            let s = &mut sizes[v.slot as usize];
            *s = (*s).max(Liveness::bytes(g, NodeIndex::new(v.node as usize), b));
        }
        let life = self.lifetimes();
        let first = |s: usize| life[s].first().map_or(0, |l| l.0);
        let mut by_size: Vec<usize> = (0..n).collect();
        by_size.sort_by_key(|&s| (std::cmp::Reverse(sizes[s]), first(s), s));
        let mut by_start: Vec<usize> = (0..n).collect();
        by_start.sort_by_key(|&s| (first(s), std::cmp::Reverse(sizes[s]), s));
        let (a, b) = (pack(&by_size, &sizes, &life), pack(&by_start, &sizes, &life));
        let (offsets, total) = if b.1 < a.1 { b } else { a };
        ArenaLayout { offsets, sizes, total }
    }

    /// The most bytes (each slot's rounded up to [`ALIGN`]) of the slots in
    /// use at any one position under `b`: no layout of this plan's slots is
    /// smaller, and [`MemoryPlan::layout`]'s total is this when its packing
    /// leaves no gap.
    pub fn live_bound(&self, g: &Graph, b: &Bindings) -> u64 {
        let mut sizes = vec![0u64; self.slots as usize];
        for v in &self.values {
            let s = &mut sizes[v.slot as usize];
            *s = (*s).max(Liveness::bytes(g, NodeIndex::new(v.node as usize), b));
        }
        let mut delta: Vec<i128> = vec![0; self.values.len() + 1];
        for (s, life) in self.lifetimes().iter().enumerate() {
            for &(from, to) in life {
                let to = (to as usize).min(self.values.len() - 1);
                delta[from as usize] += align(sizes[s]) as i128;
                delta[to + 1] -= align(sizes[s]) as i128;
            }
        }
        let (mut live, mut most) = (0i128, 0i128);
        for d in delta {
            live += d;
            most = most.max(live);
        }
        most as u64
    }

    /// Whether the plan fits `g`: every needed non-parameter node placed once,
    /// in an order that evaluates operands first; each value's last reader as
    /// the liveness analysis says; every reuse legal (the `mem` pass' rules);
    /// and two values in one slot alive at once only when they share memory
    /// on purpose (one group). Every problem, one a line.
    pub fn check(&self, g: &Graph) -> Result<(), Vec<String>> {
        let mut errs = vec![];
        let Some(l) = Liveness::of(g) else { return Err(vec!["the graph has a cycle".into()]) };
        let mut at: HashMap<u32, usize> = HashMap::new();
        for (i, v) in self.values.iter().enumerate() {
            let n = NodeIndex::new(v.node as usize);
            if !g.g.contains_node(n) {
                errs.push(format!("value {i}: node {} does not exist", v.node));
                continue;
            }
            if at.insert(v.node, i).is_some() {
                errs.push(format!("node {} is placed twice", v.node));
            }
            if v.slot >= self.slots {
                errs.push(format!("node {}: slot {} of {}", v.node, v.slot, self.slots));
            }
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        for &n in &l.order {
            let want = l.needed[n.index()] && !matches!(g.g[n].op, Op::Param { .. });
            if want != at.contains_key(&(n.index() as u32)) {
                errs.push(format!("node {}: needed {want}, but placed {}", n.index(), !want));
            }
        }
        let last = l.last_uses(g);
        let pos = l.positions();
        let by_pos: HashMap<usize, usize> =
            self.values.iter().enumerate().map(|(i, v)| (pos[v.node as usize], i)).collect();
        // Group roots and the end of each group's memory so far, in order.
        let mut root = vec![0usize; self.values.len()];
        let mut group_end: Vec<u32> = vec![0; self.values.len()];
        for (i, v) in self.values.iter().enumerate() {
            let n = NodeIndex::new(v.node as usize);
            let operands = &l.operands[n.index()];
            for o in operands {
                if let Some(&j) = at.get(&(o.index() as u32)) {
                    if j >= i {
                        errs.push(format!("node {}: operand {} is evaluated after it", v.node, o.index()));
                    }
                }
            }
            let want_last = match last[n.index()] {
                END => u32::MAX,
                p => by_pos.get(&p).map_or(u32::MAX - 1, |&j| j as u32),
            };
            if v.last != want_last {
                errs.push(format!("node {}: last read at {}, not {}", v.node, want_last, v.last));
            }
            root[i] = i;
            if let Some(of) = v.reuse.of() {
                let Some(&j) = at.get(&of).filter(|&&j| j < i) else {
                    errs.push(format!("node {}: reuses node {of}, which is not an earlier value", v.node));
                    continue;
                };
                let o = NodeIndex::new(of as usize);
                if let Err(e) = reuse_ok(g, &l, n, o, v.reuse, operands, &root, &group_end, &at, i) {
                    errs.push(format!("node {}: {e}", v.node));
                }
                if self.values[j].slot != v.slot {
                    errs.push(format!("node {}: reuses node {of}'s memory but not its slot", v.node));
                }
                root[i] = root[j];
            }
            let r = root[i];
            group_end[r] = group_end[r].max(v.last.max(i as u32));
        }
        // Groups in one slot must not be alive at once.
        let mut per_slot: Vec<Vec<(u32, u32, usize)>> = vec![vec![]; self.slots as usize];
        for (i, v) in self.values.iter().enumerate() {
            if root[i] == i {
                per_slot[v.slot as usize].push((i as u32, group_end[i], i));
            }
        }
        for groups in &mut per_slot {
            groups.sort_unstable();
            for w in groups.windows(2) {
                if w[1].0 <= w[0].1 {
                    errs.push(format!(
                        "slot {}: nodes {} and {} are alive at once",
                        self.values[w[0].2].slot, self.values[w[0].2].node, self.values[w[1].2].node
                    ));
                }
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }
}

/// Whether node `n` may reuse the memory of `o` as `reuse` says, `i` being
/// its index in the plan, `root` and `group_end` the groups of the values
/// before it.
#[allow(clippy::too_many_arguments)]
fn reuse_ok(
    g: &Graph,
    l: &Liveness,
    n: NodeIndex,
    o: NodeIndex,
    reuse: Reuse,
    operands: &[NodeIndex],
    root: &[usize],
    group_end: &[u32],
    at: &HashMap<u32, usize>,
    i: usize,
) -> Result<(), String> {
    let op = &g.g[n].op;
    match reuse {
        Reuse::Own => Ok(()),
        Reuse::Update { .. } => match l.writes_into[n.index()] {
            Some(s) if s == o => Ok(()),
            _ => Err(format!("not a declared update of node {}", o.index())),
        },
        Reuse::Alias { .. } => match op {
            Op::Reshape { .. } if operands.first() == Some(&o) => Ok(()),
            _ => Err(format!("an alias of node {}, but not a reshape of it", o.index())),
        },
        Reuse::InPlace { .. } => {
            let group = |x: &NodeIndex| at.get(&(x.index() as u32)).map(|&j| root[j]);
            let r = group(&o).expect("checked by the caller");
            if !in_place_op(op, operands, o) || g.g[n].ty != g.g[o].ty {
                Err(format!("{} cannot write in place into node {}", op.name(), o.index()))
            } else if group_end[r] != i as u32 {
                Err(format!("writes in place into node {}, whose memory is read later", o.index()))
            } else if operands.iter().any(|x| *x != o && group(x) == Some(r)) {
                Err(format!("writes in place into node {}, whose memory another operand reads", o.index()))
            } else {
                Ok(())
            }
        }
    }
}

/// Whether `op` may write its result into operand `o`'s memory, given that
/// nothing reads that memory afterwards and the result has `o`'s type: each
/// result element is computed from the elements of `o` at the same index
/// (element-wise ops; a broadcast operand is another buffer), or the result
/// is `o` with rows replaced (`write_slice` into its destination).
pub fn in_place_op(op: &Op, operands: &[NodeIndex], o: NodeIndex) -> bool {
    match op {
        Op::Unary(_) | Op::Binary(_) | Op::Affine { .. } | Op::ClampMax { .. } => operands.contains(&o),
        Op::WriteSlice { .. } => operands.first() == Some(&o) && operands.get(1) != Some(&o),
        _ => false,
    }
}

/// The plan as text for filetests, values numbered as the text form numbers
/// them, with the layout under `b`:
///
/// ```text
/// memory: 2 slots, arena 128 bytes at B=1 T=1 P=1
///   %0 slot 0 @0, last read by %2
///   %2 slot 0 @0, in place of %0, last read by out
/// ```
pub fn render(g: &Graph, b: &Bindings) -> String {
    let Some(plan) = &g.memory else { return "memory: no plan\n".into() };
    let num: HashMap<usize, usize> = super::text::order(g).iter().enumerate().map(|(i, n)| (n.index(), i)).collect();
    let name = |node: u32| num.get(&(node as usize)).map_or_else(|| format!("<node {node}>"), |i| format!("%{i}"));
    let lay = plan.layout(g, b);
    let mut out = format!("memory: {} slots, arena {} bytes at B={} T={} P={}\n", plan.slots, lay.total, b.b, b.t, b.p);
    for v in &plan.values {
        write!(out, "  {} slot {} @{}", name(v.node), v.slot, lay.offsets[v.slot as usize]).unwrap();
        match v.reuse {
            Reuse::Own => {}
            Reuse::Update { of } => write!(out, ", update of {}", name(of)).unwrap(),
            Reuse::InPlace { of } => write!(out, ", in place of {}", name(of)).unwrap(),
            Reuse::Alias { of } => write!(out, ", alias of {}", name(of)).unwrap(),
        }
        let last = match plan.values.get(v.last as usize) {
            None => "out".to_string(),
            Some(r) if r.node == v.node => "nothing".to_string(),
            Some(r) => name(r.node),
        };
        writeln!(out, ", last read by {last}").unwrap();
    }
    out
}
