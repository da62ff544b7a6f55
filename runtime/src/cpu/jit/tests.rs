//! The JIT against the kernel-IR interpreter, bit for bit: hand-written
//! kernels for every expression and op, generated kernels (proptest), and
//! every anchor-free fused kernel of the tiny models.

use super::{JitArg, JitKernel, Order};
use crate::test_models::model_kernels;
use ecarc_compiler::ir::graph::TensorType;
use ecarc_compiler::ir::op::{Binary, Op, Unary, F};
use ecarc_compiler::ir::{Bindings, DType, Dim, Sym};
use ecarc_compiler::kernel::interpret::{self, Anchors, Data, Value};
use ecarc_compiler::kernel::{Expr, KId, KNode, Kernel, Layout, Reduce};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

struct NoAnchors;
impl Anchors for NoAnchors {
    fn run(&self, _: &Op, _: &[&Value], _: &Bindings) -> Result<Value, String> {
        Err("no anchors here".into())
    }
}

const UNARY: [Unary; 7] = [Unary::Silu, Unary::Gelu, Unary::GeluTanh, Unary::Exp, Unary::Neg, Unary::Sqrt, Unary::Tanh];
const BINARY: [Binary; 6] = [Binary::Add, Binary::Sub, Binary::Mul, Binary::Div, Binary::Min, Binary::Max];

/// A kernel under construction.
struct Kb {
    k: Kernel,
}

impl Default for Kb {
    fn default() -> Kb {
        Kb { k: Kernel { inputs: vec![], nodes: vec![] } }
    }
}

fn dims(s: &[u64]) -> Vec<Dim> {
    s.iter().map(|&d| Dim::c(d)).collect()
}

impl Kb {
    fn push(&mut self, shape: Vec<Dim>, dtype: DType, expr: Expr) -> KId {
        self.k.nodes.push(KNode { ty: TensorType { dtype, shape }, expr });
        (self.k.nodes.len() - 1) as KId
    }
    fn input_of(&mut self, shape: Vec<Dim>, dtype: DType) -> KId {
        self.k.inputs.push(TensorType { dtype, shape: shape.clone() });
        let i = self.k.inputs.len() as u32 - 1;
        self.push(shape, dtype, Expr::Load(i))
    }
    fn input(&mut self, s: &[u64]) -> KId {
        self.input_of(dims(s), DType::F32)
    }
    fn shape(&self, n: KId) -> Vec<Dim> {
        self.k.nodes[n as usize].ty.shape.clone()
    }
    fn f(&mut self, shape: Vec<Dim>, e: Expr) -> KId {
        self.push(shape, DType::F32, e)
    }
    /// An expression of the operand's shape.
    fn same(&mut self, x: KId, e: Expr) -> KId {
        let s = self.shape(x);
        self.f(s, e)
    }
    fn map(&mut self, x: KId, to: &[u64], map: Layout) -> KId {
        self.f(dims(to), Expr::Map { x, map })
    }
    fn reduce(&mut self, x: KId, op: Reduce) -> KId {
        let mut s = self.shape(x);
        *s.last_mut().unwrap() = Dim::c(1);
        self.f(s, Expr::Reduce { x, op })
    }
    fn bin(&mut self, op: Binary, a: KId, b: KId) -> KId {
        self.same(a, Expr::Binary(op, a, b))
    }
    fn konst(&mut self, v: f64) -> KId {
        self.f(vec![], Expr::Const(F::new(v)))
    }
    fn done(self) -> Kernel {
        self.k.verify(&self.k.inputs.iter().collect::<Vec<_>>()).unwrap_or_else(|e| panic!("test kernel: {e}"));
        self.k
    }
}

/// A random value, now and then a special one.
fn value(rng: &mut ChaCha8Rng, specials: bool) -> f32 {
    if specials && rng.random_bool(0.08) {
        [0.0, -0.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1.0, -1.0, 1e-30][rng.random_range(0..8)]
    } else {
        rng.random_range(-3.0f32..3.0)
    }
}

/// How an input is laid out in memory: dense, or strided.
#[derive(Clone, Copy, Debug)]
enum Lay {
    Dense,
    /// Row-major storage of a padded shape (each extent + 1, offset 1).
    Padded,
    /// Stored with its axes reversed (a transposed view).
    Reversed,
}

/// Storage and strides of a view of `shape`, and its first element's offset.
fn layout(shape: &[usize], lay: Lay) -> (usize, Vec<usize>, usize) {
    let rm = |s: &[usize]| super::row_major(s);
    match lay {
        Lay::Dense => (shape.iter().product(), rm(shape), 0),
        Lay::Padded => {
            let padded: Vec<usize> = shape.iter().map(|d| d + 1).collect();
            (padded.iter().product::<usize>() + 1, rm(&padded), 1)
        }
        Lay::Reversed => {
            let rev: Vec<usize> = shape.iter().rev().copied().collect();
            let rs = rm(&rev);
            (shape.iter().product(), rs.into_iter().rev().collect(), 0)
        }
    }
}

fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for (i, &d) in shape.iter().enumerate().rev() {
        if d > 0 {
            idx[i] = flat % d;
            flat /= d;
        }
    }
    idx
}

fn same_bits(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// Compile `k`, run it and the interpreter on the same random inputs (laid
/// out as `lays`, cycled), and demand the same bits.
fn check_with(k: &Kernel, b: &Bindings, seed: u64, lays: &[Lay], specials: bool) -> Result<(), String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let shapes: Vec<Vec<usize>> =
        k.inputs.iter().map(|t| t.shape.iter().map(|d| d.eval(b) as usize).collect()).collect();
    let store = k.store();
    let mut dense = vec![];
    let mut stored = vec![];
    let mut strides = vec![];
    let mut offsets = vec![];
    for (i, (t, s)) in k.inputs.iter().zip(&shapes).enumerate() {
        let lay = if store.is_some() && i == 0 { Lay::Dense } else { lays[i % lays.len()] };
        let (len, st, off) = layout(s, lay);
        let n: usize = s.iter().product();
        let vals: Vec<f32> = (0..n).map(|_| value(&mut rng, specials)).collect();
        let ints: Vec<i64> = (0..n).map(|_| rng.random_range(-100i64..100)).collect();
        let at = |flat: usize| -> usize { off + unravel(flat, s).iter().zip(&st).map(|(a, b)| a * b).sum::<usize>() };
        match t.dtype {
            DType::F32 => {
                let mut buf = vec![f32::NAN; len.max(1)];
                for (f, &v) in vals.iter().enumerate() {
                    buf[at(f)] = v;
                }
                stored.push((Data::F32(buf), off));
                dense.push(Value { shape: s.clone(), data: Data::F32(vals) });
            }
            DType::I64 => {
                let mut buf = vec![i64::MIN; len.max(1)];
                for (f, &v) in ints.iter().enumerate() {
                    buf[at(f)] = v;
                }
                stored.push((Data::I64(buf), off));
                dense.push(Value { shape: s.clone(), data: Data::I64(ints) });
            }
        }
        strides.push(st);
        offsets.push(off);
    }
    let jit = JitKernel::compile(k, b, &strides)?;
    let args: Vec<JitArg> = stored
        .iter()
        .map(|(d, off)| match d {
            Data::F32(v) => JitArg::F32(&v[*off..]),
            Data::I64(v) => JitArg::I64(&v[*off..]),
        })
        .collect();
    let inputs: Vec<&Value> = dense.iter().collect();
    match store {
        None => {
            let want = interpret::run(k, &inputs, b, &NoAnchors)?;
            let Data::F32(want) = want.data else { return Err("an i64 result".into()) };
            // Also one row at a time, forwards and backwards: a kernel run
            // by blocks of rows reads no other row's scratch.
            for order in [Order::Auto, Order::RowByRow { reverse: false }, Order::RowByRow { reverse: true }] {
                let mut got = vec![f32::from_bits(0x7fa0_0001); want.len()];
                jit.run_checked_in(&args, &mut got, order)?;
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    if !same_bits(*g, *w) {
                        return Err(format!(
                            "element {i} ({order:?}): jit {g:e} ({:#x}), interpreter {w:e} ({:#x})",
                            g.to_bits(),
                            w.to_bits()
                        ));
                    }
                }
            }
        }
        Some(_) => {
            let (part, axis, start) = interpret::run_store(k, &inputs[1..], b, &NoAnchors)?;
            let Data::F32(part_v) = &part.data else { return Err("an i64 slice".into()) };
            let dst_shape = &shapes[0];
            let st = &strides[0];
            let mut dst = vec![-7.5f32; dst_shape.iter().product()];
            let off = start * st[axis as usize];
            jit.run_checked(&args, &mut dst[off..])?;
            let mut expect = vec![-7.5f32; dst.len()];
            for (f, v) in part_v.iter().enumerate() {
                let mut idx = unravel(f, &part.shape);
                idx[axis as usize] += start;
                expect[idx.iter().zip(st).map(|(a, b)| a * b).sum::<usize>()] = *v;
            }
            for (i, (g, w)) in dst.iter().zip(&expect).enumerate() {
                if !same_bits(*g, *w) {
                    return Err(format!("destination element {i}: jit {g:e}, expected {w:e}"));
                }
            }
        }
    }
    Ok(())
}

fn check(k: &Kernel) {
    let b = Bindings::default();
    for (seed, lays) in
        [(1, &[Lay::Dense][..]), (2, &[Lay::Padded, Lay::Reversed][..]), (3, &[Lay::Reversed, Lay::Dense])]
    {
        check_with(k, &b, seed, lays, true).unwrap_or_else(|e| panic!("{e}\nkernel: {k:#?}"));
    }
}

#[test]
fn every_unary_op() {
    for u in UNARY {
        let mut kb = Kb::default();
        let x = kb.input(&[3, 17]);
        kb.same(x, Expr::Unary(u, x));
        check(&kb.done());
    }
}

#[test]
fn every_binary_op() {
    for op in BINARY {
        let mut kb = Kb::default();
        let x = kb.input(&[4, 9]);
        let y = kb.input(&[4, 9]);
        kb.bin(op, x, y);
        check(&kb.done());
        // Signed zeros and equal values: `min`/`max` pick as `Binary::apply`.
        let mut kb = Kb::default();
        let x = kb.input(&[2]);
        let y = kb.input(&[2]);
        kb.bin(op, x, y);
        let k = kb.done();
        let jit = JitKernel::compile(&k, &Bindings::default(), &[vec![1], vec![1]]).unwrap();
        let (a, c) = ([0.0f32, -0.0], [-0.0f32, 0.0]);
        let mut out = [0f32; 2];
        jit.run_checked(&[JitArg::F32(&a), JitArg::F32(&c)], &mut out).unwrap();
        for i in 0..2 {
            assert_eq!(out[i].to_bits(), op.apply(a[i], c[i]).to_bits(), "{op:?}({}, {})", a[i], c[i]);
        }
    }
}

#[test]
fn affine_clamp_at_least_const() {
    let mut kb = Kb::default();
    let x = kb.input(&[5, 6]);
    let a = kb.same(x, Expr::Affine { x, scale: F::new(0.3), shift: F::new(-1.25) });
    let c = kb.same(a, Expr::ClampMax { x: a, max: F::new(0.5) });
    let d = kb.same(c, Expr::AtLeast { x: c, min: F::new(-0.75) });
    let k0 = kb.konst(1e-5);
    let kc = kb.map(k0, &[5, 6], Layout::Broadcast);
    kb.bin(Binary::Add, d, kc);
    check(&kb.done());
    // A scalar result.
    let mut kb = Kb::default();
    kb.konst(2.5);
    check(&kb.done());
}

#[test]
fn maps_permute_reshape_slice_broadcast() {
    // Permute.
    let mut kb = Kb::default();
    let x = kb.input(&[2, 3, 5]);
    kb.map(x, &[5, 2, 3], Layout::Permute(vec![2, 0, 1]));
    check(&kb.done());
    // Reshapes: merge, split, both, with ones.
    for to in [&[6, 5][..], &[2, 15], &[30], &[3, 2, 5], &[5, 6], &[1, 2, 1, 3, 5, 1], &[10, 3]] {
        let mut kb = Kb::default();
        let x = kb.input(&[2, 3, 5]);
        kb.map(x, to, Layout::Reshape);
        check(&kb.done());
    }
    // Splits of the result's last axis: lanes in one row of the innermost
    // axis (vectorised), and not (a slice moves them off alignment).
    for (from, to) in [(&[2, 3, 2, 4][..], &[2, 3, 8][..]), (&[2, 16], &[32]), (&[3, 8], &[24]), (&[2, 3, 6], &[2, 18])]
    {
        let mut kb = Kb::default();
        let x = kb.input(from);
        let r = kb.map(x, to, Layout::Reshape);
        kb.same(r, Expr::Unary(Unary::Neg, r));
        check(&kb.done());
    }
    let mut kb = Kb::default();
    let x = kb.input(&[2, 3, 4]);
    let r = kb.map(x, &[2, 12], Layout::Reshape);
    kb.map(r, &[2, 9], Layout::Slice { axis: 1, start: Dim::c(2) });
    check(&kb.done());
    // Slice, with a symbolic start.
    let mut kb = Kb::default();
    let x = kb.input(&[4, 9]);
    let s = kb.map(x, &[4, 5], Layout::Slice { axis: 1, start: Dim::c(3) });
    let t = kb.map(x, &[2, 9], Layout::Slice { axis: 0, start: Dim::sym(Sym::T) });
    let s2 = kb.map(t, &[2, 5], Layout::Slice { axis: 1, start: Dim::c(0) });
    let s1 = kb.map(s, &[2, 5], Layout::Slice { axis: 0, start: Dim::c(1) });
    kb.bin(Binary::Sub, s1, s2);
    let k = kb.done();
    check_with(&k, &Bindings::new(1, 2, 0), 5, &[Lay::Padded], true).unwrap();
    // Broadcast: leading axes and extents of 1.
    let mut kb = Kb::default();
    let x = kb.input(&[3, 1]);
    let y = kb.input(&[2, 1, 7]);
    let bx = kb.map(x, &[2, 3, 7], Layout::Broadcast);
    let by = kb.map(y, &[2, 3, 7], Layout::Broadcast);
    kb.bin(Binary::Mul, bx, by);
    check(&kb.done());
}

#[test]
fn reductions_softmax_layernorm() {
    for op in [Reduce::Sum, Reduce::Max] {
        let mut kb = Kb::default();
        let x = kb.input(&[3, 4, 13]);
        kb.reduce(x, op);
        check(&kb.done());
    }
    // A row statistic read at another row of the same shape (a permute of
    // the rows): the stages must not run block by block.
    let mut kb = Kb::default();
    let x = kb.input(&[3, 3, 4]);
    let m = kb.reduce(x, Reduce::Sum);
    let pm = kb.map(m, &[3, 3, 1], Layout::Permute(vec![1, 0, 2]));
    let pb = kb.map(pm, &[3, 3, 4], Layout::Broadcast);
    kb.bin(Binary::Sub, x, pb);
    check(&kb.done());
    check(&softmax(&[6, 37]));
    check(&layernorm(&[5, 33]));
}

/// `softmax` of the last axis, as the fuse pass spells it.
fn softmax(s: &[u64]) -> Kernel {
    let mut kb = Kb::default();
    let x = kb.input(s);
    let m = kb.reduce(x, Reduce::Max);
    let mb = kb.map(m, s, Layout::Broadcast);
    let d = kb.bin(Binary::Sub, x, mb);
    let e = kb.same(d, Expr::Unary(Unary::Exp, d));
    let z = kb.reduce(e, Reduce::Sum);
    let zb = kb.map(z, s, Layout::Broadcast);
    kb.bin(Binary::Div, e, zb);
    kb.done()
}

/// A layer norm of the last axis with weight and bias.
fn layernorm(s: &[u64]) -> Kernel {
    let n = *s.last().unwrap();
    let mut kb = Kb::default();
    let x = kb.input(s);
    let w = kb.input(&[n]);
    let bias = kb.input(&[n]);
    let sum = kb.reduce(x, Reduce::Sum);
    let mean = kb.same(sum, Expr::Affine { x: sum, scale: F::new(1.0 / n as f64), shift: F::new(0.0) });
    let mb = kb.map(mean, s, Layout::Broadcast);
    let d = kb.bin(Binary::Sub, x, mb);
    let sq = kb.bin(Binary::Mul, d, d);
    let v = kb.reduce(sq, Reduce::Sum);
    let var = kb.same(v, Expr::Affine { x: v, scale: F::new(1.0 / n as f64), shift: F::new(1e-5) });
    let sd = kb.same(var, Expr::Unary(Unary::Sqrt, var));
    let sdb = kb.map(sd, s, Layout::Broadcast);
    let y = kb.bin(Binary::Div, d, sdb);
    let wb = kb.map(w, s, Layout::Broadcast);
    let bb = kb.map(bias, s, Layout::Broadcast);
    let yw = kb.bin(Binary::Mul, y, wb);
    kb.bin(Binary::Add, yw, bb);
    kb.done()
}

#[test]
fn concat_along_each_axis() {
    for axis in 0..3u8 {
        let mut kb = Kb::default();
        let mut parts = vec![];
        let mut total = 0;
        for (k, len) in [2u64, 1, 3].into_iter().enumerate() {
            let mut s = [2u64, 3, 4];
            s[axis as usize] = len;
            total += len;
            let x = kb.input(&s);
            let v = if k == 1 { kb.same(x, Expr::Unary(Unary::Exp, x)) } else { x };
            parts.push(v);
        }
        let mut s = [2u64, 3, 4];
        s[axis as usize] = total;
        kb.f(dims(&s), Expr::Concat { axis, parts });
        check(&kb.done());
    }
}

#[test]
fn store_writes_only_the_slice() {
    let mut kb = Kb::default();
    let dst = kb.input(&[2, 8, 3]);
    let x = kb.input(&[2, 3, 3]);
    let e = kb.same(x, Expr::Unary(Unary::Neg, x));
    kb.f(dims(&[2, 8, 3]), Expr::WriteSlice { dst, src: e, axis: 1, start: Dim::sym(Sym::P) });
    let k = kb.done();
    check_with(&k, &Bindings::new(1, 0, 4), 9, &[Lay::Reversed], true).unwrap();
    check_with(&k, &Bindings::new(1, 0, 5), 9, &[Lay::Dense], true).unwrap();
    // The code does not depend on where the slice goes: one compile serves
    // every decode step.
    assert_eq!(
        JitKernel::specialisation(&k, &Bindings::new(1, 0, 4)),
        JitKernel::specialisation(&k, &Bindings::new(1, 0, 5))
    );
    let mut kb = Kb::default();
    let x = kb.input(&[4, 9]);
    kb.map(x, &[2, 9], Layout::Slice { axis: 0, start: Dim::sym(Sym::P) });
    let k = kb.done();
    assert_ne!(
        JitKernel::specialisation(&k, &Bindings::new(1, 0, 1)),
        JitKernel::specialisation(&k, &Bindings::new(1, 0, 2))
    );
}

#[test]
fn a_compiled_kernel_is_shared_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<JitKernel>();
}

#[test]
fn unsupported_kernels_are_refused() {
    // (An i64 input is read only by an anchor: `Kernel::verify`.)
    // An anchor: refused, not a panic.
    let mut kb = Kb::default();
    let x = kb.input(&[2, 3]);
    let w = kb.input(&[4, 3]);
    kb.f(dims(&[2, 4]), Expr::Anchor { op: Op::Linear, operands: vec![x, w] });
    let k = kb.done();
    let err = JitKernel::compile(&k, &Bindings::default(), &[vec![3, 1], vec![3, 1]]).err().unwrap();
    assert!(err.contains("anchor"), "{err}");
    // Too large to index: refused.
    let k = softmax(&[1 << 30, 1 << 30]);
    assert!(JitKernel::compile(&k, &Bindings::default(), &[vec![1 << 30, 1]]).is_err());
    // Wrong strides: refused.
    let k = softmax(&[2, 3]);
    assert!(JitKernel::compile(&k, &Bindings::default(), &[vec![1]]).is_err());
    // Too short a buffer: refused by the checked run.
    let jit = JitKernel::compile(&k, &Bindings::default(), &[vec![3, 1]]).unwrap();
    assert!(jit.run_checked(&[JitArg::F32(&[0.0; 5])], &mut [0.0; 6]).is_err());
    assert!(jit.run_checked(&[JitArg::F32(&[0.0; 6])], &mut [0.0; 5]).is_err());
}

#[test]
fn large_kernels_run_in_parallel_and_agree() {
    check_with(&softmax(&[300, 257]), &Bindings::default(), 4, &[Lay::Dense], false).unwrap();
    check_with(&layernorm(&[200, 301]), &Bindings::default(), 4, &[Lay::Padded], false).unwrap();
}

// ---- generated kernels ----------------------------------------------------

/// Random anchor-free kernels: a DAG built top-down from the result's shape.
struct Gen {
    kb: Kb,
    rng: ChaCha8Rng,
    /// Nodes by shape, to share.
    pool: Vec<(Vec<u64>, KId)>,
}

impl Gen {
    fn shape(&mut self, rank: usize) -> Vec<u64> {
        (0..rank)
            .map(|_| {
                if self.rng.random_bool(0.1) {
                    [8, 12, 16][self.rng.random_range(0..3)]
                } else {
                    self.rng.random_range(1..=6)
                }
            })
            .collect()
    }
    fn node(&mut self, s: &[u64], depth: u32) -> KId {
        if let Some(&(_, id)) = self.pool.iter().find(|(ps, _)| ps == s) {
            if self.rng.random_bool(0.25) {
                return id;
            }
        }
        let leaf = depth == 0 || self.rng.random_bool(0.15);
        let id = if leaf { self.leaf(s) } else { self.inner(s, depth - 1) };
        self.pool.push((s.to_vec(), id));
        id
    }
    fn leaf(&mut self, s: &[u64]) -> KId {
        match self.rng.random_range(0..10) {
            0 => {
                let c = self.kb.konst(self.rng.random_range(-2.0..2.0));
                if s.is_empty() {
                    c
                } else {
                    self.kb.map(c, s, Layout::Broadcast)
                }
            }
            1 if !s.is_empty() => {
                // A broadcast input: leading axes dropped, some extents 1.
                let drop = self.rng.random_range(0..=s.len());
                let from: Vec<u64> = s[drop..].iter().map(|&d| if self.rng.random_bool(0.4) { 1 } else { d }).collect();
                let x = self.kb.input(&from);
                self.kb.map(x, s, Layout::Broadcast)
            }
            _ => self.kb.input(s),
        }
    }
    fn inner(&mut self, s: &[u64], d: u32) -> KId {
        let r = s.len();
        loop {
            match self.rng.random_range(0..13) {
                0 => {
                    let x = self.node(s, d);
                    let u = UNARY[self.rng.random_range(0..UNARY.len())];
                    return self.kb.f(dims(s), Expr::Unary(u, x));
                }
                1 | 2 => {
                    let a = self.node(s, d);
                    let b = self.node(s, d);
                    let op = BINARY[self.rng.random_range(0..BINARY.len())];
                    return self.kb.f(dims(s), Expr::Binary(op, a, b));
                }
                3 => {
                    let x = self.node(s, d);
                    let e = match self.rng.random_range(0..3) {
                        0 => Expr::Affine { x, scale: F::new(self.rng.random_range(-2.0..2.0)), shift: F::new(0.5) },
                        1 => Expr::ClampMax { x, max: F::new(self.rng.random_range(-1.0..1.0)) },
                        _ => Expr::AtLeast { x, min: F::new(self.rng.random_range(-1.0..1.0)) },
                    };
                    return self.kb.f(dims(s), e);
                }
                4 if r >= 2 => {
                    let mut perm: Vec<u8> = (0..r as u8).collect();
                    for i in (1..r).rev() {
                        perm.swap(i, self.rng.random_range(0..=i));
                    }
                    let mut from = vec![0; r];
                    for (j, &p) in perm.iter().enumerate() {
                        from[p as usize] = s[j];
                    }
                    let x = self.node(&from, d);
                    return self.kb.map(x, s, Layout::Permute(perm));
                }
                5 => {
                    // Reshape from a random factorisation of the same size.
                    let mut n: u64 = s.iter().product();
                    let mut from = vec![];
                    for f in [2u64, 3, 5, 2, 3, 2, 7] {
                        while n.is_multiple_of(f) && self.rng.random_bool(0.6) {
                            n /= f;
                            from.push(f);
                        }
                    }
                    from.push(n);
                    if self.rng.random_bool(0.3) {
                        from.insert(self.rng.random_range(0..=from.len()), 1);
                    }
                    // Merge neighbours now and then.
                    let mut merged = vec![];
                    for f in from {
                        match merged.last_mut() {
                            Some(l) if self.rng.random_bool(0.5) => *l *= f,
                            _ => merged.push(f),
                        }
                    }
                    let x = self.node(&merged, d);
                    return self.kb.map(x, s, Layout::Reshape);
                }
                6 if r >= 1 => {
                    let a = self.rng.random_range(0..r);
                    let extra = self.rng.random_range(0..4);
                    let mut from = s.to_vec();
                    from[a] += extra;
                    let start = self.rng.random_range(0..=extra);
                    let x = self.node(&from, d);
                    return self.kb.map(x, s, Layout::Slice { axis: a as u8, start: Dim::c(start) });
                }
                7 if r >= 1 => {
                    let a = self.rng.random_range(0..r);
                    let mut parts = vec![];
                    let mut left = s[a];
                    while left > 0 {
                        let len = self.rng.random_range(1..=left);
                        let mut ps = s.to_vec();
                        ps[a] = len;
                        parts.push(self.node(&ps, d));
                        left -= len;
                    }
                    return self.kb.f(dims(s), Expr::Concat { axis: a as u8, parts });
                }
                8 | 9 if r >= 1 && s[r - 1] == 1 => {
                    // A reduction straight into this shape.
                    let mut from = s.to_vec();
                    from[r - 1] = self.rng.random_range(1..=9);
                    let x = self.node(&from, d);
                    let op = if self.rng.random_bool(0.5) { Reduce::Sum } else { Reduce::Max };
                    return self.kb.reduce(x, op);
                }
                10 | 11 if r >= 1 => {
                    // x - broadcast(reduce(x)): a row statistic read back.
                    let x = self.node(s, d);
                    let op = if self.rng.random_bool(0.5) { Reduce::Sum } else { Reduce::Max };
                    let m = self.kb.reduce(x, op);
                    let mb = self.kb.map(m, s, Layout::Broadcast);
                    return self.kb.f(dims(s), Expr::Binary(Binary::Sub, x, mb));
                }
                12 => {
                    // A broadcast of a smaller node.
                    let from: Vec<u64> = s.iter().map(|&e| if self.rng.random_bool(0.5) { 1 } else { e }).collect();
                    if from == s {
                        continue;
                    }
                    let x = self.node(&from, d);
                    return self.kb.map(x, s, Layout::Broadcast);
                }
                _ => {}
            }
        }
    }
}

/// A random kernel from `seed` (a store kernel now and then).
fn generated(seed: u64) -> Kernel {
    let mut g = Gen { kb: Kb::default(), rng: ChaCha8Rng::seed_from_u64(seed), pool: vec![] };
    let rank = g.rng.random_range(0..=3);
    let s = g.shape(rank);
    let store = rank >= 1 && g.rng.random_bool(0.15);
    if store {
        let a = g.rng.random_range(0..rank);
        let mut ds = s.clone();
        let extra = g.rng.random_range(0..4);
        ds[a] += extra;
        let dst = g.kb.input(&ds);
        let src = g.node(&s, 5);
        g.kb.f(dims(&ds), Expr::WriteSlice { dst, src, axis: a as u8, start: Dim::c(g.rng.random_range(0..=extra)) });
    } else {
        let id = g.node(&s, 5);
        if g.kb.k.nodes[id as usize].ty.dtype != DType::F32 || matches!(g.kb.k.nodes[id as usize].expr, Expr::Load(_)) {
            g.kb.f(dims(&s), Expr::Unary(Unary::Neg, id));
        }
    }
    g.kb.done()
}

/// Generated kernels: this test's own budget of cases, whatever
/// `PROPTEST_CASES` says (the `proptest!` macro lets the variable override
/// an explicit count; the runner built here does not).
const GENERATED_CASES: u32 = 1000;

#[test]
fn generated_kernels_equal_the_interpreter() {
    let config = ProptestConfig { cases: GENERATED_CASES, failure_persistence: None, ..ProptestConfig::default() };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    runner
        .run(&(any::<u64>(), 0..3usize), |(seed, lay)| {
            let k = generated(seed);
            let lays = [[Lay::Dense, Lay::Padded], [Lay::Reversed, Lay::Dense], [Lay::Padded, Lay::Reversed]][lay];
            let r = check_with(&k, &Bindings::default(), seed ^ 0x5eed, &lays, true);
            prop_assert!(r.is_ok(), "{}\nseed {seed}, kernel: {k:#?}", r.unwrap_err());
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}

// ---- the models' kernels ------------------------------------------------------

/// The anchor-free parts of an anchored kernel: each non-load operand of
/// the anchor as a kernel of its own (prologues), and the kernel with the
/// anchor read as a new input (the epilogue).
fn split_at_anchor(k: &Kernel) -> Vec<Kernel> {
    let Some(a) = k.nodes.iter().position(|n| matches!(n.expr, Expr::Anchor { .. })) else { return vec![k.clone()] };
    let mut out = vec![];
    for &o in &k.anchor().unwrap().1.to_vec() {
        if !matches!(k.nodes[o as usize].expr, Expr::Load(_)) {
            out.push(Kernel { inputs: k.inputs.clone(), nodes: k.nodes[..=o as usize].to_vec() });
        }
    }
    if a + 1 < k.nodes.len() {
        let mut e = k.clone();
        e.inputs.push(e.nodes[a].ty.clone());
        e.nodes[a].expr = Expr::Load(e.inputs.len() as u32 - 1);
        out.push(e);
    }
    out
}

fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn every_tiny_model_kernel_compiles_and_agrees() {
    let mut fails = vec![];
    let (mut whole, mut parts) = (0, 0);
    for name in ["var", "llamagen", "ecar", "dit", "var_dd", "llamagen_dd"] {
        let path = repo().join(format!("examples/tiny/{name}.ecar"));
        for (i, (k, b)) in model_kernels(&path, 2).iter().enumerate() {
            let anchored = k.anchor().is_some();
            for (j, part) in split_at_anchor(k).iter().enumerate() {
                if anchored {
                    parts += 1;
                } else {
                    whole += 1;
                }
                let lays = [[Lay::Dense, Lay::Padded], [Lay::Reversed, Lay::Dense]][(i + j) % 2];
                if let Err(e) = check_with(part, b, i as u64 * 31 + j as u64, &lays, false) {
                    fails.push(format!("{name} kernel {i} part {j} under {b:?}: {e}\n{}", part_text(part)));
                }
            }
        }
    }
    eprintln!("{whole} anchor-free kernels and {parts} prologues/epilogues checked");
    assert!(whole > 10 && parts > 10, "{whole} kernels, {parts} parts");
    assert!(fails.is_empty(), "{} failed:\n{}", fails.len(), fails.join("\n"));
}

fn part_text(k: &Kernel) -> String {
    k.nodes.iter().enumerate().map(|(i, n)| format!("  %{i} = {:?}\n", n.expr)).collect()
}

/// Compile time of every anchor-free kernel (and anchored kernel's parts)
/// of `models/ecar_l.ecar`, and JIT vs interpreter speed of a softmax and a
/// layer norm: `cargo test --profile ci -p ecarc-runtime jit_figures --
/// --ignored --nocapture`.
#[test]
#[ignore]
fn jit_figures() {
    let all = model_kernels(&repo().join("models/ecar_l.ecar"), 1);
    let mut seen: Vec<(&Kernel, &Bindings)> = vec![];
    for (k, b) in &all {
        if !seen.iter().any(|(k2, b2)| *k2 == k && *b2 == b) {
            seen.push((k, b));
        }
    }
    let free: Vec<(Kernel, Bindings)> =
        seen.iter().filter(|(k, _)| k.anchor().is_none()).map(|(k, b)| ((*k).clone(), **b)).collect();
    let parts: Vec<(Kernel, Bindings)> = seen
        .iter()
        .filter(|(k, _)| k.anchor().is_some())
        .flat_map(|(k, b)| split_at_anchor(k).into_iter().map(move |p| (p, **b)))
        .collect();
    for (label, set) in [("anchor-free kernels", &free), ("prologues/epilogues", &parts)] {
        let t = std::time::Instant::now();
        let mut ok = 0;
        for (k, b) in set.iter() {
            let strides: Vec<Vec<usize>> = k
                .inputs
                .iter()
                .map(|t| super::row_major(&t.shape.iter().map(|d| d.eval(b) as usize).collect::<Vec<_>>()))
                .collect();
            match JitKernel::compile(k, b, &strides) {
                Ok(_) => ok += 1,
                Err(e) => eprintln!("  refused: {e}"),
            }
        }
        eprintln!(
            "ecar_l: {ok}/{} {label} (kernel x bindings) compiled in {:.3} s",
            set.len(),
            t.elapsed().as_secs_f64()
        );
    }
    // Every model: every kernel (or anchored kernel's part) compiles.
    let mut files: Vec<_> = std::fs::read_dir(repo().join("models"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "ecar"))
        .collect();
    files.sort();
    for f in files {
        let t = std::time::Instant::now();
        let (mut n, mut bad) = (0, vec![]);
        for (k, b) in model_kernels(&f, 1) {
            for part in split_at_anchor(&k) {
                n += 1;
                let strides: Vec<Vec<usize>> = part
                    .inputs
                    .iter()
                    .map(|t| super::row_major(&t.shape.iter().map(|d| d.eval(&b) as usize).collect::<Vec<_>>()))
                    .collect();
                if let Err(e) = JitKernel::compile(&part, &b, &strides) {
                    bad.push(e);
                }
            }
        }
        eprintln!("{}: {n} kernels and parts, {} refused, {:.3} s", f.display(), bad.len(), t.elapsed().as_secs_f64());
        for e in bad.iter().take(3) {
            eprintln!("  refused: {e}");
        }
    }
    for (name, k) in
        [("softmax [512, 1024]", softmax(&[512, 1024])), ("layer_norm [512, 1024]", layernorm(&[512, 1024]))]
    {
        let b = Bindings::default();
        let shapes: Vec<Vec<usize>> =
            k.inputs.iter().map(|t| t.shape.iter().map(|d| d.eval(&b) as usize).collect()).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let vals: Vec<Vec<f32>> =
            shapes.iter().map(|s| (0..s.iter().product()).map(|_| value(&mut rng, false)).collect()).collect();
        let strides: Vec<Vec<usize>> = shapes.iter().map(|s| super::row_major(s)).collect();
        let t = std::time::Instant::now();
        let jit = JitKernel::compile(&k, &b, &strides).unwrap();
        let compile = t.elapsed().as_secs_f64();
        let args: Vec<JitArg> = vals.iter().map(|v| JitArg::F32(v)).collect();
        let n = 512 * 1024;
        let mut out = vec![0f32; n];
        let reps = 20;
        jit.run_checked(&args, &mut out).unwrap();
        let t = std::time::Instant::now();
        for _ in 0..reps {
            jit.run_checked(&args, &mut out).unwrap();
        }
        let jit_s = t.elapsed().as_secs_f64() / reps as f64;
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let one_s = pool.install(|| {
            let t = std::time::Instant::now();
            for _ in 0..reps {
                jit.run_checked(&args, &mut out).unwrap();
            }
            t.elapsed().as_secs_f64() / reps as f64
        });
        let values: Vec<Value> =
            vals.iter().zip(&shapes).map(|(v, s)| Value { shape: s.clone(), data: Data::F32(v.clone()) }).collect();
        let t = std::time::Instant::now();
        let want = interpret::run(&k, &values.iter().collect::<Vec<_>>(), &b, &NoAnchors).unwrap();
        let interp_s = t.elapsed().as_secs_f64();
        let Data::F32(want) = want.data else { unreachable!() };
        assert!(out.iter().zip(&want).all(|(a, b)| same_bits(*a, *b)));
        eprintln!(
            "{name}: compile {:.2} ms; jit {:.1} Melem/s ({} threads), {:.1} Melem/s (1 thread); interpreter {:.2} Melem/s",
            compile * 1e3,
            n as f64 / jit_s / 1e6,
            rayon::current_num_threads(),
            n as f64 / one_s / 1e6,
            n as f64 / interp_s / 1e6
        );
    }
}
