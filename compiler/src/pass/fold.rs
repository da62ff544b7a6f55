//! Constant folding and algebraic simplification, limited to rewrites that
//! give the same bits as the reference backend (`runtime/src/reference`)
//! computes for the original program. Every rewrite keeps the type of the
//! node it replaces (so outputs keep theirs); what a rewrite leaves unread is
//! removed. The rules, each with why it is exact:
//!
//! - **constants**: an op whose operands are all scalar `const`s becomes a
//!   `const` when the reference's computation is one correctly rounded IEEE
//!   f32 operation (or two, for `affine`), so this pass computes the very same
//!   f32 operations: `neg`, `sqrt`, `add`, `sub`, `mul`, `div`, `min`, `max`,
//!   `affine` (`x * scale + shift`, two roundings, no FMA: Rust never
//!   contracts), `clamp_max`. A `const` holds an f64 that the reference rounds
//!   to f32, so operands are read as `value as f32`. Not folded: a result of
//!   NaN (the reference's NaN bits depend on the hardware, a `const` has one
//!   NaN) or `-0.0` (a `const` cannot hold it: `F::new` keeps one zero), an
//!   operand of `-0.0` (`f32::min`/`max` of the two zeros may return either),
//!   and `exp`, `tanh`, `silu`, `gelu`, `gelu_tanh` (libm functions, not
//!   correctly rounded: the value could differ between the machine that
//!   compiles and the one that runs).
//! - **layout identities**: `reshape` to its operand's shape, `permute` by the
//!   identity, and a `slice` of a whole axis (start 0, length the axis) are
//!   their operand: the same elements in the same order.
//! - **layout chains**: `reshape(reshape(x))` is one `reshape` of `x` (both
//!   keep the row-major order of the elements); `permute(permute(x, p), q)` is
//!   `permute(x, r)` with `r[i] = p[q[i]]`; `slice(slice(x))` along one axis
//!   is one slice with the starts added. Pure data movement: no arithmetic.
//! - **`neg(neg(x))`** is `x`: negation flips the sign bit, twice.
//! - **`mul(x, 1)`, `mul(1, x)`, `div(x, 1)`** are `x` (a `const` is a
//!   scalar, so the result has `x`'s type; checked all the same): IEEE
//!   multiplication and division by 1 are exact for every `x`, `-0.0`,
//!   subnormals and infinities included (a quiet NaN stays that NaN).
//! - **`sub(x, 0)`** is `x`: `x - (+0.0)` is `x` for every `x`, `-0.0`
//!   included (`-0 - +0 = -0`).
//! - **`add(x, c)`, `affine(x, 1, c)` with `c` of `-0.0` in f32** are `x`;
//!   `x + (-0.0)` is exact for every `x`.
//!
//! Left out as not bit-exact: `add(x, 0)` and `affine(x, 1, 0)` with the
//! `+0.0` a `const` or attribute always holds (`-0.0 + 0.0 = +0.0`: the sign
//! of a zero changes, which `div` or `sqrt` downstream can see), and
//! `affine(affine(x))` composed into one (four roundings become two).

use super::rewrite::{remove_unread, replace_uses, set_operand};
use super::Pass;
use crate::ir::op::{Binary, Unary, F};
use crate::ir::{Graph, Op, TensorType};
use petgraph::stable_graph::NodeIndex;
use std::collections::HashMap;

pub struct Fold;

/// What to do with one node.
enum Rewrite {
    /// Its readers read this node instead.
    Replace(NodeIndex),
    /// It is this scalar constant.
    Const(f32),
    /// It becomes this op of this single operand (same type).
    Rewire(Op, NodeIndex),
}

impl Pass for Fold {
    fn name(&self) -> &'static str {
        "fold"
    }
    fn run(&self, g: &mut Graph) -> bool {
        let mut changed = false;
        // Each sweep visits operands before readers, so chains fold in one;
        // a second catches what a new constant enables further on.
        for _ in 0..4 {
            if !sweep(g) {
                break;
            }
            changed = true;
        }
        if changed {
            g.memory = None;
        }
        changed
    }
}

fn sweep(g: &mut Graph) -> bool {
    // A cyclic graph is left for the verifier to report.
    let Some(order) = g.topo() else { return false };
    let mut consts: HashMap<F, NodeIndex> = HashMap::new();
    for &n in &order {
        if let Op::Const { value } = g.g[n].op {
            consts.entry(value).or_insert(n);
        }
    }
    let mut touched = vec![];
    for n in order {
        if !g.g.contains_node(n) || g.g[n].op.is_source() {
            continue;
        }
        let Some(rw) = rule(g, n) else { continue };
        let operands = g.operands(n);
        match rw {
            Rewrite::Replace(x) => {
                debug_assert_eq!(g.g[x].ty, g.g[n].ty);
                replace_uses(g, n, x);
                touched.push(n);
            }
            Rewrite::Const(v) => {
                let value = F::new(v as f64);
                let span = g.g[n].span;
                let c = *consts.entry(value).or_insert_with(|| g.add(Op::Const { value }, &[], span));
                replace_uses(g, n, c);
                touched.push(n);
            }
            Rewrite::Rewire(op, x) => {
                set_operand(g, n, 0, x);
                g.g[n].op = op;
                debug_assert_eq!(
                    crate::ir::infer::infer(&g.g[n].op, &[&g.g[x].ty]).as_ref(),
                    Ok(&g.g[n].ty),
                    "a rewired node keeps its type"
                );
            }
        }
        touched.extend(operands);
    }
    let changed = !touched.is_empty();
    remove_unread(g, touched);
    changed
}

/// The f32 value the reference gives a scalar `const`.
fn scalar(g: &Graph, n: NodeIndex) -> Option<f32> {
    match g.g[n].op {
        Op::Const { value } if g.g[n].ty.shape.is_empty() => Some(value.get() as f32),
        _ => None,
    }
}

fn is_bits(v: Option<f32>, want: f32) -> bool {
    v.is_some_and(|v| v.to_bits() == want.to_bits())
}

/// The rule that applies to `n`, if any.
fn rule(g: &Graph, n: NodeIndex) -> Option<Rewrite> {
    let ops = g.operands(n);
    let node = &g.g[n];
    if let Some(v) = fold_consts(g, &node.op, &ops, &node.ty) {
        return Some(Rewrite::Const(v));
    }
    let x = *ops.first()?;
    let xty = &g.g[x].ty;
    let same = |y: NodeIndex| (g.g[y].ty == node.ty).then_some(Rewrite::Replace(y));
    match (&node.op, &g.g[x].op) {
        (Op::Reshape { shape }, _) if *shape == xty.shape => same(x),
        (Op::Reshape { shape }, Op::Reshape { .. }) => {
            let y = g.operands(x)[0];
            if *shape == g.g[y].ty.shape {
                same(y)
            } else {
                Some(Rewrite::Rewire(Op::Reshape { shape: shape.clone() }, y))
            }
        }
        (Op::Permute { perm }, _) if perm.iter().enumerate().all(|(i, &p)| i == p as usize) => same(x),
        (Op::Permute { perm: q }, Op::Permute { perm: p }) => {
            let r: Vec<u8> = q.iter().map(|&i| p[i as usize]).collect();
            let y = g.operands(x)[0];
            if r.iter().enumerate().all(|(i, &p)| i == p as usize) {
                same(y)
            } else {
                Some(Rewrite::Rewire(Op::Permute { perm: r }, y))
            }
        }
        (Op::Slice { axis, start, len }, _)
            if start.as_const() == Some(0) && xty.shape.get(*axis as usize) == Some(len) =>
        {
            same(x)
        }
        (Op::Slice { axis, start, len }, Op::Slice { axis: a0, start: s0, .. }) if axis == a0 => {
            Some(Rewrite::Rewire(Op::Slice { axis: *axis, start: s0.add(start), len: len.clone() }, g.operands(x)[0]))
        }
        (Op::Unary(Unary::Neg), Op::Unary(Unary::Neg)) => same(g.operands(x)[0]),
        (Op::Binary(b), _) if ops.len() == 2 => {
            let (a, c) = (ops[0], ops[1]);
            let (ka, kc) = (scalar(g, a), scalar(g, c));
            match b {
                Binary::Mul if is_bits(kc, 1.0) => same(a),
                Binary::Mul if is_bits(ka, 1.0) => same(c),
                Binary::Div if is_bits(kc, 1.0) => same(a),
                Binary::Sub if is_bits(kc, 0.0) => same(a),
                Binary::Add if is_bits(kc, -0.0) => same(a),
                Binary::Add if is_bits(ka, -0.0) => same(c),
                _ => None,
            }
        }
        (Op::Affine { scale, shift }, _)
            if is_bits(Some(scale.get() as f32), 1.0) && is_bits(Some(shift.get() as f32), -0.0) =>
        {
            same(x)
        }
        _ => None,
    }
}

/// The value of `op` on scalar constant operands, computed as the reference
/// computes it, when that is exact to fold (see the module docs).
fn fold_consts(g: &Graph, op: &Op, ops: &[NodeIndex], ty: &TensorType) -> Option<f32> {
    if ops.is_empty() || !ty.shape.is_empty() {
        return None;
    }
    let vals: Vec<f32> = ops.iter().map(|&o| scalar(g, o)).collect::<Option<_>>()?;
    if vals.iter().any(|v| v.to_bits() == (-0.0f32).to_bits()) {
        return None;
    }
    let r = match (op, vals.as_slice()) {
        (Op::Unary(Unary::Neg), [x]) => -x,
        (Op::Unary(Unary::Sqrt), [x]) => x.sqrt(),
        (Op::Binary(b), [a, c]) => match b {
            Binary::Add => a + c,
            Binary::Sub => a - c,
            Binary::Mul => a * c,
            Binary::Div => a / c,
            Binary::Min => a.min(*c),
            Binary::Max => a.max(*c),
        },
        (Op::Affine { scale, shift }, [x]) => x * (scale.get() as f32) + shift.get() as f32,
        (Op::ClampMax { max }, [x]) => {
            let m = max.get() as f32;
            if *x > m {
                m
            } else {
                *x
            }
        }
        _ => return None,
    };
    (!r.is_nan() && r.to_bits() != (-0.0f32).to_bits()).then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::text::{parse, print};
    use crate::ir::verify::verify;

    fn fold(text: &str) -> String {
        let mut g = parse(text).unwrap();
        Fold.run(&mut g);
        assert_eq!(verify(&g), Ok(()));
        print(&g, None)
    }

    #[test]
    fn zeros_and_nans_are_not_folded() {
        // -0.0 results, NaN results, and the add of +0.0 stay.
        let text = r#"graph "g" {
  %0 = input "x" : f32[4]
  %1 = const {value = 0.0} : f32[]
  %2 = neg(%1) : f32[]
  %3 = div(%1, %1) : f32[]
  %4 = add(%0, %1) : f32[4]
  %5 = affine(%0) {scale = 1.0, shift = 0.0} : f32[4]
  %6 = exp(%1) : f32[]
  out "a" = %2
  out "b" = %3
  out "c" = %4
  out "d" = %5
  out "e" = %6
}
"#;
        assert_eq!(fold(text), print(&parse(text).unwrap(), None));
    }

    #[test]
    fn why_add_zero_is_left_out() {
        // The reason `add(x, 0)` and `affine(x, 1, 0)` stay: the sign of zero.
        let z = -0.0f32;
        assert_eq!((z + 0.0).to_bits(), 0.0f32.to_bits());
        assert_ne!((z + 0.0).to_bits(), z.to_bits());
        assert_eq!((z * 1.0 + 0.0).to_bits(), 0.0f32.to_bits());
        // ... and why the kept ones are exact at the edges.
        for x in [z, 0.0, 1e-45, -3.5, f32::INFINITY, f32::MAX, f32::MIN_POSITIVE / 3.0] {
            assert_eq!((x * 1.0).to_bits(), x.to_bits());
            assert_eq!((x / 1.0).to_bits(), x.to_bits());
            assert_eq!((x - 0.0).to_bits(), x.to_bits());
            assert_eq!((x + z).to_bits(), x.to_bits());
            assert_eq!((x * 1.0 + z).to_bits(), x.to_bits());
            assert_eq!((-(-x)).to_bits(), x.to_bits());
        }
    }

    #[test]
    fn multiplying_by_one() {
        // A const is a scalar, so `mul(x, 1)` always has x's type; `mul(1, 1)`
        // is the const 1 already there.
        let text = r#"graph "g" {
  %0 = input "x" : f32[1]
  %1 = input "one" : f32[4]
  %2 = const {value = 1.0} : f32[]
  %3 = mul(%0, %2) : f32[1]
  %4 = add(%1, %3) : f32[4]
  %5 = mul(%2, %2) : f32[]
  out "y" = %4
  out "one" = %5
}
"#;
        let after = fold(text);
        assert!(after.contains("%3 = add(%1, %0) : f32[4]"), "{after}");
        assert!(after.contains("out \"one\" = %2"), "{after}");
    }

    #[test]
    fn composed_permutation() {
        // permute q after p: axis i of the result is axis p[q[i]] of x.
        let text = r#"graph "g" {
  %0 = input "x" : f32[2, 3, 4]
  %1 = permute(%0) {perm = [1, 2, 0]} : f32[3, 4, 2]
  %2 = permute(%1) {perm = [0, 2, 1]} : f32[3, 2, 4]
  out "y" = %2
}
"#;
        let after = fold(text);
        assert!(after.contains("permute(%0) {perm = [1, 0, 2]} : f32[3, 2, 4]"), "{after}");
    }

    #[test]
    fn stale_plan_is_dropped_and_clean_graph_is_unchanged() {
        let mut g = parse(
            r#"graph "g" {
  %0 = input "x" : f32[4]
  %1 = neg(%0) : f32[4]
  %2 = neg(%1) : f32[4]
  out "y" = %2
}
"#,
        )
        .unwrap();
        crate::pass::mem::Mem.run(&mut g);
        assert!(Fold.run(&mut g));
        assert!(g.memory.is_none());
        assert_eq!(g.node_count(), 1);
        assert!(!Fold.run(&mut g));
    }
}
