//! The WGSL of every anchor-free fused kernel, and of every prologue and
//! epilogue part, of every tiny model, run on the adapter against the kernel
//! IR's dense evaluator on the host, with random inputs (every other input a
//! strided view into padded storage). Without an adapter the tests print
//! "skipped", unless `ECARC_REQUIRE_WGPU` is set: then they fail.

use super::*;
use crate::tensor::HostTensor;
use crate::test_models::model_kernels;
use crate::webgpu::device::Gpu;
use crate::webgpu::record::{Pipelines, Recorder, Stats};
use ecarc_compiler::kernel::dense;
use ecarc_compiler::kernel::interpret::{Anchors, Data, Value};
use ecarc_compiler::kernel::KNode;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The adapter, or `None` (and "skipped") when there is none and none is required.
fn gpu(test: &str) -> Option<Gpu> {
    match Gpu::open(None) {
        Ok(g) => Some(g),
        Err(e) if std::env::var_os("ECARC_REQUIRE_WGPU").is_some() => {
            panic!("{test}: ECARC_REQUIRE_WGPU is set but no wgpu adapter opened: {e}")
        }
        Err(e) => {
            eprintln!("{test}: skipped (no wgpu adapter: {e})");
            None
        }
    }
}

struct NoAnchors;
impl Anchors for NoAnchors {
    fn run(&self, op: &Op, _: &[&Value], _: &Bindings) -> std::result::Result<Value, String> {
        Err(format!("an anchor `{}` in an element-wise part", op.name()))
    }
}

fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The anchor-free parts the backend emits for `k` (as `PreparedFused::new`
/// splits it), and whether `k` has an anchor.
fn parts(k: &Kernel) -> (Vec<Part>, bool) {
    let k = split::stored(k).map_or_else(|| k.clone(), |(p, _, _)| p);
    match split::split_at_anchor(&k) {
        None => (vec![split::whole(&k)], false),
        Some(s) => {
            let mut v: Vec<Part> = s
                .operands
                .into_iter()
                .filter_map(|o| match o {
                    Operand::Computed(p) => Some(p),
                    Operand::Input(_) => None,
                })
                .collect();
            v.extend(s.epilogue);
            (v, true)
        }
    }
}

/// A random input of `t` under `b`: its dense host value and a device view,
/// strided (rows of padded storage, starting one element in) when `padded`.
fn input(gpu: &Gpu, t: &TensorType, b: &Bindings, padded: bool, rng: &mut ChaCha8Rng) -> (Value, Buffer) {
    let shape = eval_dims(&t.shape, b).unwrap();
    let n: usize = shape.iter().product();
    let (store, off): (Vec<usize>, usize) =
        if padded { (shape.iter().map(|d| d + 1).collect(), 1) } else { (shape.clone(), 0) };
    let strides = crate::backend::row_major(&store);
    let len = store.iter().product::<usize>() + off;
    let at = |mut flat: usize| -> usize {
        let mut p = off;
        for a in (0..shape.len()).rev() {
            p += flat % shape[a] * strides[a];
            flat /= shape[a];
        }
        p
    };
    let (value, host) = match t.dtype {
        DType::F32 => {
            let v: Vec<f32> = (0..n).map(|_| rng.random_range(-3.0f32..3.0)).collect();
            let mut s = vec![f32::NAN; len.max(1)];
            for (f, &x) in v.iter().enumerate() {
                s[at(f)] = x;
            }
            (Data::F32(v), HostTensor::f32(vec![s.len()], s))
        }
        DType::I64 => {
            let v: Vec<i64> = (0..n).map(|_| rng.random_range(0i64..100)).collect();
            let mut s = vec![-1i64; len.max(1)];
            for (f, &x) in v.iter().enumerate() {
                s[at(f)] = x;
            }
            (Data::I64(v), HostTensor::i64(vec![s.len()], s))
        }
    };
    let dev = gpu.upload(&host).unwrap();
    let view = kernels::view(&dev, off, shape.clone(), strides);
    (Value { shape, data: value }, view)
}

fn close(a: f32, e: f32) -> bool {
    (a.is_nan() && e.is_nan()) || (a - e).abs() <= 1e-4 + 1e-4 * e.abs()
}

/// Run one part on the adapter and on the host; the first disagreement.
fn check_part(
    gpu: &Gpu,
    p: &Part,
    b: &Bindings,
    seed: u64,
    pipelines: &Pipelines,
    stats: &Stats,
) -> Result<(), String> {
    let gp = emit(p.clone())?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut host, mut views) = (vec![], vec![]);
    for (i, t) in p.kernel.inputs.iter().enumerate() {
        let (v, d) = input(gpu, t, b, (i as u64 + seed) % 2 == 1, &mut rng);
        host.push(v);
        views.push(d);
    }
    let want = dense::run(&p.kernel, &host.iter().collect::<Vec<_>>(), b, &NoAnchors)?;
    let Data::F32(want) = want.data else { return Err("an i64 result".into()) };
    let mut rec = Recorder::new(gpu, stats);
    let y =
        run_part(&mut Ctx { gpu, pipelines, stats, rec: &mut rec }, &gp, &views, b, None).map_err(|e| e.to_string())?;
    rec.submit("fused test").map_err(|e| e.to_string())?;
    let got = gpu.download(&y, stats).map_err(|e| e.to_string())?;
    let got = got.as_f32().ok_or("not f32")?;
    if got.len() != want.len() {
        return Err(format!("{} elements, want {}", got.len(), want.len()));
    }
    for (i, (a, e)) in got.iter().zip(&want).enumerate() {
        if !close(*a, *e) {
            return Err(format!("element {i}: wgpu {a:e}, dense {e:e}"));
        }
    }
    Ok(())
}

fn part_text(k: &Kernel) -> String {
    k.nodes.iter().enumerate().map(|(i, n)| format!("  %{i} = {:?}\n", n.expr)).collect()
}

#[test]
fn every_tiny_model_fused_part_runs_on_wgpu_as_the_dense_evaluator() {
    let Some(gpu) = gpu("every_tiny_model_fused_part_runs_on_wgpu_as_the_dense_evaluator") else { return };
    let (pipelines, stats) = (Pipelines::default(), Stats::default());
    let (mut whole, mut pro_epi, mut fails) = (0, 0, vec![]);
    let mut seen: Vec<(Part, Bindings)> = vec![];
    for name in ["var", "llamagen", "ecar", "dit", "var_dd", "llamagen_dd"] {
        let path = repo().join(format!("examples/tiny/{name}.ecar"));
        for (i, (k, b)) in model_kernels(&path, 2).iter().enumerate() {
            let (ps, anchored) = parts(k);
            for (j, p) in ps.into_iter().enumerate() {
                if seen.iter().any(|(q, c)| *q == p && c == b) {
                    continue;
                }
                if anchored {
                    pro_epi += 1;
                } else {
                    whole += 1;
                }
                if let Err(e) = check_part(&gpu, &p, b, i as u64 * 31 + j as u64, &pipelines, &stats) {
                    fails.push(format!("{name} kernel {i} part {j} under {b:?}: {e}\n{}", part_text(&p.kernel)));
                }
                seen.push((p, *b));
            }
        }
    }
    let c = stats.counts();
    eprintln!(
        "{whole} anchor-free kernels and {pro_epi} prologues/epilogues (x bindings) checked on {}: \
         {} dispatches, {} pipelines",
        gpu.adapter, c.dispatches, c.pipelines
    );
    assert!(fails.is_empty(), "{} failed:\n{}", fails.len(), fails.join("\n"));
    assert!(whole > 10 && pro_epi > 10, "{whole} kernels, {pro_epi} parts");
}

fn f32t(shape: &[u64]) -> TensorType {
    TensorType::f32(shape.iter().map(|&d| Dim::c(d)).collect())
}

/// A store kernel writes its slice into the state's view and nothing else;
/// an anchor without a wgpu kernel is a clear error.
#[test]
fn a_store_kernel_writes_only_its_slice_and_a_missing_anchor_is_an_error() {
    use ecarc_compiler::ir::op::Unary;
    use ecarc_compiler::kernel::Expr;
    let Some(gpu) = gpu("a_store_kernel_writes_only_its_slice_and_a_missing_anchor_is_an_error") else { return };
    let (pipelines, stats) = (Pipelines::default(), Stats::default());
    let k = Kernel {
        inputs: vec![f32t(&[1, 8, 2]), f32t(&[1, 2, 2])],
        nodes: vec![
            KNode { ty: f32t(&[1, 8, 2]), expr: Expr::Load(0) },
            KNode { ty: f32t(&[1, 2, 2]), expr: Expr::Load(1) },
            KNode { ty: f32t(&[1, 2, 2]), expr: Expr::Unary(Unary::Neg, 1) },
            KNode { ty: f32t(&[1, 8, 2]), expr: Expr::WriteSlice { dst: 0, src: 2, axis: 1, start: Dim::c(3) } },
        ],
    };
    let p = PreparedFused::new(&k).unwrap();
    assert_eq!(p.store, Some((1, Dim::c(3))));
    let b = Bindings::default();
    let state = gpu.upload(&HostTensor::f32(vec![1, 8, 2], vec![7.0; 16])).unwrap();
    let src = gpu.upload(&HostTensor::f32(vec![1, 2, 2], vec![1.0, 2.0, 3.0, 4.0])).unwrap();
    let shape = p.slice_shape(&state.shape, 1, &b).unwrap();
    assert_eq!(shape, vec![1, 2, 2]);
    let slice = kernels::view(&state, 3 * 2, shape, state.strides.clone());
    let mut rec = Recorder::new(&gpu, &stats);
    p.run(
        &mut Ctx { gpu: &gpu, pipelines: &pipelines, stats: &stats, rec: &mut rec },
        &[slice.clone(), src],
        &b,
        Some(&slice),
    )
    .unwrap();
    rec.submit("store").unwrap();
    let got = gpu.download(&state, &stats).unwrap();
    let mut want = [7.0; 16];
    want[6..10].copy_from_slice(&[-1.0, -2.0, -3.0, -4.0]);
    assert_eq!(got.as_f32().unwrap(), &want[..]);

    // linear(x, w): no wgpu anchor kernel is an error naming it, never a panic.
    let k = Kernel {
        inputs: vec![f32t(&[2, 3]), f32t(&[4, 3])],
        nodes: vec![
            KNode { ty: f32t(&[2, 3]), expr: Expr::Load(0) },
            KNode { ty: f32t(&[2, 3]), expr: Expr::Unary(Unary::Neg, 0) },
            KNode { ty: f32t(&[4, 3]), expr: Expr::Load(1) },
            KNode { ty: f32t(&[2, 4]), expr: Expr::Anchor { op: Op::Linear, operands: vec![1, 2] } },
        ],
    };
    let p = PreparedFused::new(&k).unwrap();
    let x = gpu.upload(&HostTensor::f32(vec![2, 3], vec![1.0; 6])).unwrap();
    let w = gpu.upload(&HostTensor::f32(vec![4, 3], vec![1.0; 12])).unwrap();
    let mut rec = Recorder::new(&gpu, &stats);
    match p.run(&mut Ctx { gpu: &gpu, pipelines: &pipelines, stats: &stats, rec: &mut rec }, &[x, w], &b, None) {
        Err(e) => assert!(e.to_string().contains("linear"), "{e}"),
        // Another engineer's linear kernel landed: then it must compute -x @ w^T = -3.
        Ok(y) => {
            rec.submit("anchor").unwrap();
            let got = gpu.download(&y, &stats).unwrap();
            assert!(got.as_f32().unwrap().iter().all(|&v| (v + 3.0).abs() < 1e-5), "{got:?}");
        }
    }
}

/// Every unary function over a wide range (GELU's tails, tanh saturating,
/// exp large), min/max, clamps, a softmax, a transposed and a broadcast
/// input, a slice, a -inf constant, all side by side in one concat.
#[test]
fn every_expression_runs_on_wgpu_as_the_dense_evaluator() {
    use ecarc_compiler::ir::op::{Binary, Unary, F};
    use ecarc_compiler::kernel::{Expr, Layout, Reduce};
    let Some(gpu) = gpu("every_expression_runs_on_wgpu_as_the_dense_evaluator") else { return };
    let (r, c) = (5u64, 7u64);
    let mut k = Kernel { inputs: vec![f32t(&[r, c]), f32t(&[c, r]), f32t(&[c])], nodes: vec![] };
    let mut push = |shape: &[u64], expr: Expr| {
        k.nodes.push(KNode { ty: f32t(shape), expr });
        k.nodes.len() as u32 - 1
    };
    let rc = [r, c];
    let x = push(&rc, Expr::Load(0));
    let y = push(&[c, r], Expr::Load(1));
    let yt = push(&rc, Expr::Map { x: y, map: Layout::Permute(vec![1, 0]) });
    let wide = push(&rc, Expr::Affine { x, scale: F::new(4.0), shift: F::new(0.0) });
    let mut parts = vec![];
    for u in [Unary::Silu, Unary::Gelu, Unary::GeluTanh, Unary::Exp, Unary::Neg, Unary::Tanh] {
        parts.push(push(&rc, Expr::Unary(u, wide)));
    }
    let sq = push(&rc, Expr::Binary(Binary::Mul, x, x));
    parts.push(push(&rc, Expr::Unary(Unary::Sqrt, sq)));
    parts.push(push(&rc, Expr::Binary(Binary::Min, x, yt)));
    parts.push(push(&rc, Expr::Binary(Binary::Max, x, yt)));
    parts.push(push(&rc, Expr::ClampMax { x, max: F::new(0.5) }));
    parts.push(push(&rc, Expr::AtLeast { x, min: F::new(-0.5) }));
    // softmax(x) over rows, as the fuse pass spells it.
    let m = push(&[r, 1], Expr::Reduce { x, op: Reduce::Max });
    let mb = push(&rc, Expr::Map { x: m, map: Layout::Broadcast });
    let d = push(&rc, Expr::Binary(Binary::Sub, x, mb));
    let e = push(&rc, Expr::Unary(Unary::Exp, d));
    let s = push(&[r, 1], Expr::Reduce { x: e, op: Reduce::Sum });
    let sb = push(&rc, Expr::Map { x: s, map: Layout::Broadcast });
    parts.push(push(&rc, Expr::Binary(Binary::Div, e, sb)));
    let z = push(&[c], Expr::Load(2));
    let zb = push(&rc, Expr::Map { x: z, map: Layout::Broadcast });
    parts.push(push(&rc, Expr::Binary(Binary::Add, x, zb)));
    let ninf = push(&[], Expr::Const(F::new(f64::NEG_INFINITY)));
    let nb = push(&rc, Expr::Map { x: ninf, map: Layout::Broadcast });
    parts.push(push(&rc, Expr::Binary(Binary::Max, nb, x)));
    parts.push(push(&[r, c - 2], Expr::Map { x, map: Layout::Slice { axis: 1, start: Dim::c(2) } }));
    let width = c * (parts.len() as u64 - 1) + c - 2;
    let cat = push(&[r, width], Expr::Concat { axis: 1, parts });
    push(&[r * width], Expr::Map { x: cat, map: Layout::Reshape });
    k.verify(&k.inputs.iter().collect::<Vec<_>>()).unwrap();
    let (pipelines, stats) = (Pipelines::default(), Stats::default());
    for seed in 0..4 {
        let part = split::whole(&k);
        if let Err(e) = check_part(&gpu, &part, &Bindings::default(), seed, &pipelines, &stats) {
            panic!("seed {seed}: {e}\n{}", part_text(&k));
        }
    }
}

/// A `[512, 1024]` softmax and layer norm as generated WGSL on the adapter,
/// against the dense evaluator on the host: `cargo test --profile ci -p
/// ecarc-runtime fused_figures -- --ignored --nocapture`.
#[test]
#[ignore]
fn fused_figures() {
    use ecarc_compiler::ir::op::{Binary, Unary, F};
    use ecarc_compiler::kernel::{Expr, Layout, Reduce};
    let Some(gpu) = gpu("fused_figures") else { return };
    let (r, c) = (512u64, 1024u64);
    let rc = [r, c];
    let kernel = |norm: bool| {
        let mut k = Kernel { inputs: vec![f32t(&rc)], nodes: vec![] };
        let mut push = |shape: &[u64], expr: Expr| {
            k.nodes.push(KNode { ty: f32t(shape), expr });
            k.nodes.len() as u32 - 1
        };
        let x = push(&rc, Expr::Load(0));
        let bc = |push: &mut dyn FnMut(&[u64], Expr) -> u32, v| push(&rc, Expr::Map { x: v, map: Layout::Broadcast });
        if norm {
            let s = push(&[r, 1], Expr::Reduce { x, op: Reduce::Sum });
            let mean = push(&[r, 1], Expr::Affine { x: s, scale: F::new(1.0 / c as f64), shift: F::new(0.0) });
            let mb = bc(&mut push, mean);
            let d = push(&rc, Expr::Binary(Binary::Sub, x, mb));
            let sq = push(&rc, Expr::Binary(Binary::Mul, d, d));
            let ss = push(&[r, 1], Expr::Reduce { x: sq, op: Reduce::Sum });
            let var = push(&[r, 1], Expr::Affine { x: ss, scale: F::new(1.0 / c as f64), shift: F::new(1e-6) });
            let sd = push(&[r, 1], Expr::Unary(Unary::Sqrt, var));
            let sdb = bc(&mut push, sd);
            push(&rc, Expr::Binary(Binary::Div, d, sdb));
        } else {
            let m = push(&[r, 1], Expr::Reduce { x, op: Reduce::Max });
            let mb = bc(&mut push, m);
            let d = push(&rc, Expr::Binary(Binary::Sub, x, mb));
            let e = push(&rc, Expr::Unary(Unary::Exp, d));
            let s = push(&[r, 1], Expr::Reduce { x: e, op: Reduce::Sum });
            let sb = bc(&mut push, s);
            push(&rc, Expr::Binary(Binary::Div, e, sb));
        }
        k
    };
    let (pipelines, stats) = (Pipelines::default(), Stats::default());
    let b = Bindings::default();
    for (name, k, rows) in [
        ("softmax [512, 1024]", kernel(false), true),
        ("layer norm [512, 1024]", kernel(true), true),
        ("softmax [512, 1024] without a row stage", kernel(false), false),
        ("layer norm [512, 1024] without a row stage", kernel(true), false),
    ] {
        let part = split::whole(&k);
        check_part(&gpu, &part, &b, 1, &pipelines, &stats).unwrap();
        let mut gp = emit(part.clone()).unwrap();
        if !rows {
            gp.program = codegen::emit_without_row_stage(&part.kernel).unwrap();
        }
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let (host, view) = input(&gpu, &k.inputs[0], &b, false, &mut rng);
        let reps = 10;
        let t = std::time::Instant::now();
        for _ in 0..reps {
            let mut rec = Recorder::new(&gpu, &stats);
            run_part(
                &mut Ctx { gpu: &gpu, pipelines: &pipelines, stats: &stats, rec: &mut rec },
                &gp,
                std::slice::from_ref(&view),
                &b,
                None,
            )
            .unwrap();
            rec.submit(name).unwrap();
            gpu.wait().unwrap();
        }
        let wgpu_s = t.elapsed().as_secs_f64() / reps as f64;
        let t = std::time::Instant::now();
        dense::run(&part.kernel, &[&host], &b, &NoAnchors).unwrap();
        let dense_s = t.elapsed().as_secs_f64();
        let n = (r * c) as f64;
        eprintln!(
            "{name}: {} stages; wgpu ({}) {:.1} Melem/s ({:.2} ms per submission); dense evaluator {:.1} Melem/s",
            gp.program.stages.len(),
            gpu.adapter,
            n / wgpu_s / 1e6,
            wgpu_s * 1e3,
            n / dense_s / 1e6
        );
    }
}

/// A fold reading an earlier fold at another row (its own stage, not a
/// register) computes what the dense evaluator does.
#[test]
fn a_reduction_read_across_rows_runs_as_the_dense_evaluator() {
    use ecarc_compiler::ir::op::Binary;
    use ecarc_compiler::kernel::{Expr, Layout, Reduce};
    let Some(gpu) = gpu("a_reduction_read_across_rows_runs_as_the_dense_evaluator") else { return };
    let node = |shape: &[u64], expr| KNode { ty: f32t(shape), expr };
    let k = Kernel {
        inputs: vec![f32t(&[5, 5])],
        nodes: vec![
            node(&[5, 5], Expr::Load(0)),
            node(&[5, 1], Expr::Reduce { x: 0, op: Reduce::Max }),
            node(&[5], Expr::Map { x: 1, map: Layout::Reshape }),
            // Element (i, j) reads the max of row j.
            node(&[5, 5], Expr::Map { x: 2, map: Layout::Broadcast }),
            node(&[5, 5], Expr::Binary(Binary::Sub, 0, 3)),
            node(&[5, 1], Expr::Reduce { x: 4, op: Reduce::Sum }),
        ],
    };
    k.verify(&k.inputs.iter().collect::<Vec<_>>()).unwrap();
    let (pipelines, stats) = (Pipelines::default(), Stats::default());
    check_part(&gpu, &split::whole(&k), &Bindings::default(), 3, &pipelines, &stats).unwrap();
    assert_eq!(stats.counts().dispatches, 3);
}

/// A softmax, a layer norm (of `x * 0.25 + shift`: rows whose mean is
/// `shift`, spread about 0.4) or an RMS norm over the last axis of `shape`,
/// spelled in primitives as the fuse pass spells them.
fn row_kernel(shape: &[u64], kind: &str, shift: f64) -> Kernel {
    use ecarc_compiler::ir::op::{Binary, Unary, F};
    use ecarc_compiler::kernel::{Expr, Layout, Reduce};
    let (&c, lead) = shape.split_last().unwrap();
    let rows: Vec<u64> = lead.iter().copied().chain([1]).collect();
    let mut k = Kernel { inputs: vec![f32t(shape)], nodes: vec![] };
    let mut push = |s: &[u64], expr: Expr| {
        k.nodes.push(KNode { ty: f32t(s), expr });
        k.nodes.len() as u32 - 1
    };
    let x0 = push(shape, Expr::Load(0));
    let x = push(shape, Expr::Affine { x: x0, scale: F::new(0.25), shift: F::new(shift) });
    let bc = |push: &mut dyn FnMut(&[u64], Expr) -> u32, v| push(shape, Expr::Map { x: v, map: Layout::Broadcast });
    match kind {
        "layer norm" => {
            let s = push(&rows, Expr::Reduce { x, op: Reduce::Sum });
            let mean = push(&rows, Expr::Affine { x: s, scale: F::new(1.0 / c as f64), shift: F::new(0.0) });
            let mb = bc(&mut push, mean);
            let d = push(shape, Expr::Binary(Binary::Sub, x, mb));
            let sq = push(shape, Expr::Binary(Binary::Mul, d, d));
            let ss = push(&rows, Expr::Reduce { x: sq, op: Reduce::Sum });
            let var = push(&rows, Expr::Affine { x: ss, scale: F::new(1.0 / c as f64), shift: F::new(1e-6) });
            let sd = push(&rows, Expr::Unary(Unary::Sqrt, var));
            let sdb = bc(&mut push, sd);
            push(shape, Expr::Binary(Binary::Div, d, sdb));
        }
        "rms norm" => {
            let sq = push(shape, Expr::Binary(Binary::Mul, x, x));
            let ss = push(&rows, Expr::Reduce { x: sq, op: Reduce::Sum });
            let ms = push(&rows, Expr::Affine { x: ss, scale: F::new(1.0 / c as f64), shift: F::new(1e-6) });
            let r = push(&rows, Expr::Unary(Unary::Sqrt, ms));
            let rb = bc(&mut push, r);
            push(shape, Expr::Binary(Binary::Div, x, rb));
        }
        _ => {
            let m = push(&rows, Expr::Reduce { x, op: Reduce::Max });
            let mb = bc(&mut push, m);
            let d = push(shape, Expr::Binary(Binary::Sub, x, mb));
            let e = push(shape, Expr::Unary(Unary::Exp, d));
            let s = push(&rows, Expr::Reduce { x: e, op: Reduce::Sum });
            let sb = bc(&mut push, s);
            push(shape, Expr::Binary(Binary::Div, e, sb));
        }
    }
    k.verify(&k.inputs.iter().collect::<Vec<_>>()).unwrap();
    k
}

/// Norms and softmaxes are one row stage (one dispatch), and compute what the
/// dense evaluator does: rows longer than the workgroup (strided partials),
/// shorter ones (idle threads), rows of an extent-1 axis, a large mean
/// against the spread, strided input views, and more rows than a workgroup
/// dimension holds (65535 on most adapters: the grid spreads over y).
#[test]
fn row_stages_run_as_the_dense_evaluator_in_one_dispatch() {
    let Some(gpu) = gpu("row_stages_run_as_the_dense_evaluator_in_one_dispatch") else { return };
    let (pipelines, stats) = (Pipelines::default(), Stats::default());
    let cases: &[(&[u64], f64)] = &[
        (&[3, 300], 0.0),
        (&[4, 257], 30.0),
        (&[2, 5, 7], 0.0),
        (&[1, 3, 1000], 20.0),
        (&[6, 1], 0.0),
        (&[65539, 16], 0.0),
    ];
    let mut fails = vec![];
    for (i, (shape, shift)) in cases.iter().enumerate() {
        for kind in ["softmax", "layer norm", "rms norm"] {
            let part = split::whole(&row_kernel(shape, kind, *shift));
            let gp = emit(part.clone()).unwrap();
            assert_eq!(gp.program.stages.len(), 1, "{kind} {shape:?}");
            assert!(gp.program.stages[0].row_threads.is_some(), "{kind} {shape:?}");
            let before = stats.counts().dispatches;
            for seed in 0..2 {
                if let Err(e) = check_part(&gpu, &part, &Bindings::default(), i as u64 * 7 + seed, &pipelines, &stats) {
                    fails.push(format!("{kind} {shape:?} shift {shift} seed {seed}: {e}"));
                }
            }
            assert_eq!(stats.counts().dispatches - before, 2, "{kind} {shape:?}: one dispatch a run");
        }
    }
    assert!(fails.is_empty(), "{} failed:\n{}", fails.len(), fails.join("\n"));
}

/// A random host tensor and device view of each input of `k` (every other
/// one strided into padded storage).
fn inputs_of(gpu: &Gpu, k: &Kernel, b: &Bindings, seed: u64) -> (Vec<HostTensor>, Vec<Buffer>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut host, mut views) = (vec![], vec![]);
    for (i, t) in k.inputs.iter().enumerate() {
        let (v, d) = input(gpu, t, b, (i as u64 + seed) % 2 == 1, &mut rng);
        host.push(match v.data {
            Data::F32(x) => HostTensor::f32(v.shape, x),
            Data::I64(x) => HostTensor::i64(v.shape, x),
        });
        views.push(d);
    }
    (host, views)
}

/// Run a whole fused kernel (anchor included) on the adapter and against the
/// reference; whether its epilogue ran in the anchor's kernel, and the
/// dispatches it took.
fn check_kernel(
    gpu: &Gpu,
    k: &Kernel,
    b: &Bindings,
    seed: u64,
    pipelines: &Pipelines,
    stats: &Stats,
) -> Result<(bool, u64), String> {
    let p = PreparedFused::new(k)?;
    let (host, views) = inputs_of(gpu, k, b, seed);
    let (kk, store) = match split::stored(k) {
        Some((part, axis, start)) => (part, Some((axis as usize, start.eval(b) as usize))),
        None => (k.clone(), None),
    };
    let want = crate::reference::fused::run(&kk, host, b)?;
    let want = want.as_f32().ok_or("an i64 result")?.to_vec();
    let out = match store {
        Some((axis, start)) => {
            let s = &views[0];
            let shape = p.slice_shape(&s.shape, axis, b)?;
            Some(kernels::view(s, s.offset + start * s.strides[axis], shape, s.strides.clone()))
        }
        None => None,
    };
    let before = stats.counts().dispatches;
    let mut rec = Recorder::new(gpu, stats);
    let y =
        p.run(&mut Ctx { gpu, pipelines, stats, rec: &mut rec }, &views, b, out.as_ref()).map_err(|e| e.to_string())?;
    rec.submit("fused kernel test").map_err(|e| e.to_string())?;
    let dispatches = stats.counts().dispatches - before;
    let got = gpu.download(&y, stats).map_err(|e| e.to_string())?;
    let got = got.as_f32().ok_or("not f32")?;
    if got.len() != want.len() {
        return Err(format!("{} elements, want {}", got.len(), want.len()));
    }
    for (i, (a, e)) in got.iter().zip(&want).enumerate() {
        if !close(*a, *e) {
            return Err(format!("element {i}: wgpu {a:e}, reference {e:e}"));
        }
    }
    Ok((p.fuses_epilogue(), dispatches))
}

#[test]
fn every_tiny_model_anchored_kernel_runs_on_wgpu_as_the_reference_with_fused_epilogues() {
    let Some(gpu) = gpu("every_tiny_model_anchored_kernel_runs_on_wgpu_as_the_reference_with_fused_epilogues") else {
        return;
    };
    let (pipelines, stats) = (Pipelines::default(), Stats::default());
    let (mut anchored, mut fused, mut fails) = (0, 0, vec![]);
    let mut seen: Vec<(Kernel, Bindings)> = vec![];
    for name in ["var", "llamagen", "ecar", "dit", "var_dd", "llamagen_dd"] {
        let path = repo().join(format!("examples/tiny/{name}.ecar"));
        for (i, (k, b)) in model_kernels(&path, 2).iter().enumerate() {
            if k.anchor().is_none() || seen.iter().any(|(q, c)| q == k && c == b) {
                continue;
            }
            seen.push((k.clone(), *b));
            anchored += 1;
            match check_kernel(&gpu, k, b, i as u64 * 7 + 1, &pipelines, &stats) {
                Ok((f, _)) => fused += usize::from(f),
                Err(e) => fails.push(format!("{name} kernel {i} under {b:?}: {e}\n{}", part_text(k))),
            }
        }
    }
    eprintln!(
        "{anchored} anchored kernels (x bindings) checked on {}: {fused} ran their epilogue in the anchor's kernel",
        gpu.adapter
    );
    assert!(fails.is_empty(), "{} failed:\n{}", fails.len(), fails.join("\n"));
    assert!(anchored > 10 && fused > 5, "{anchored} kernels, {fused} fused");
}

/// Every anchor shader composed with every store hook the models' kernels
/// give validates (naga, no adapter); the counts of epilogues that qualify.
#[test]
fn every_fused_epilogue_shader_of_every_model_validates() {
    use super::kernels::{anchors, attention, gemm};
    let validate = |name: &str, src: &str| {
        let module = wgpu::naga::front::wgsl::parse_str(src).unwrap_or_else(|e| panic!("{name}: {e}\n{src}"));
        wgpu::naga::valid::Validator::new(
            wgpu::naga::valid::ValidationFlags::all(),
            wgpu::naga::valid::Capabilities::empty(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name}: {e:?}\n{src}"));
    };
    let mut dirs = vec![];
    for dir in ["examples/tiny", "models"] {
        let mut paths: Vec<_> = std::fs::read_dir(repo().join(dir))
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "ecar"))
            .collect();
        paths.sort();
        dirs.push((dir, paths));
    }
    let mut texts: std::collections::BTreeSet<String> = Default::default();
    for (dir, paths) in dirs {
        let (mut anchored, mut fused, mut stores) = (0, 0, 0);
        let mut seen: Vec<Kernel> = vec![];
        let mut why_not: std::collections::BTreeMap<String, usize> = Default::default();
        for path in paths {
            for (k, _) in model_kernels(&path, 1) {
                if k.anchor().is_none() || seen.contains(&k) {
                    continue;
                }
                seen.push(k.clone());
                anchored += 1;
                let p = PreparedFused::new(&k).unwrap();
                let Body::Anchored { anchor, hook, .. } = &p.body else { unreachable!() };
                let Some(h) = hook else {
                    let s = split::split_at_anchor(&split::stored(&k).map_or_else(|| k.clone(), |(p, _, _)| p));
                    let why = match s.as_ref().and_then(|s| s.epilogue.as_ref()) {
                        None => "a bare anchor".to_string(),
                        Some(e) => {
                            let a = e.sources.iter().position(|s| *s == Source::Anchor).unwrap() as u32;
                            epilogue::qualifies(&e.kernel, a).err().unwrap_or_else(|| "qualifies".into())
                        }
                    };
                    *why_not.entry(why).or_insert(0usize) += 1;
                    continue;
                };
                fused += 1;
                stores += usize::from(p.store.is_some());
                let first = anchors::hook_binding(anchor).unwrap();
                if first == attention::HOOK_BINDING {
                    texts.insert(attention::shader(&h.hook.wgsl));
                } else {
                    for pre in [gemm::Prelude::Strided, gemm::Prelude::Conv] {
                        for (_, body) in gemm::BODIES {
                            texts.insert(gemm::shader(pre, body, &h.hook.wgsl));
                        }
                    }
                }
            }
        }
        eprintln!("{dir}: {anchored} distinct anchored kernels, {fused} run their epilogue (or store) in the anchor's kernel ({stores} store kernels)");
        eprintln!("{dir}: not fused: {why_not:?}");
        assert!(fused > 0);
    }
    for (i, t) in texts.iter().enumerate() {
        validate(&format!("composed shader {i}"), t);
    }
    eprintln!("{} composed anchor shaders validate", texts.len());
}

/// Each anchor kind (GEMV for one and two rows, the tiled GEMM, a batched
/// matmul, conv2d, attention) with a GELU/SiLU, gate and residual epilogue,
/// inputs strided (every other one in padded storage): one dispatch, the
/// reference's values.
#[test]
fn each_anchor_runs_a_gelu_gate_residual_epilogue_in_one_dispatch() {
    use ecarc_compiler::ir::op::{Binary, Mask, Unary, F};
    use ecarc_compiler::kernel::{Expr, Layout};
    let Some(gpu) = gpu("each_anchor_runs_a_gelu_gate_residual_epilogue_in_one_dispatch") else { return };
    let (pipelines, stats) = (Pipelines::default(), Stats::default());
    // anchor(operands) then gelu/silu(acc [+ bias]) * gate + residual.
    let kernel = |op: Op, operands: Vec<Vec<u64>>, out: Vec<u64>, bias: Option<Vec<u64>>, unary: Unary| {
        let mut k = Kernel { inputs: vec![], nodes: vec![] };
        let load = |k: &mut Kernel, shape: &[u64]| {
            k.inputs.push(f32t(shape));
            k.nodes.push(KNode { ty: f32t(shape), expr: Expr::Load(k.inputs.len() as u32 - 1) });
            k.nodes.len() as u32 - 1
        };
        let ops: Vec<u32> = operands.iter().map(|s| load(&mut k, s)).collect();
        let push = |k: &mut Kernel, expr: Expr| {
            k.nodes.push(KNode { ty: f32t(&out), expr });
            k.nodes.len() as u32 - 1
        };
        let mut acc = push(&mut k, Expr::Anchor { op, operands: ops });
        if let Some(bs) = bias {
            let b = load(&mut k, &bs);
            let bb = push(&mut k, Expr::Map { x: b, map: Layout::Broadcast });
            acc = push(&mut k, Expr::Binary(Binary::Add, acc, bb));
        }
        let act = push(&mut k, Expr::Unary(unary, acc));
        let g = load(&mut k, &out);
        let gated = push(&mut k, Expr::Binary(Binary::Mul, act, g));
        let r = load(&mut k, &out);
        push(&mut k, Expr::Binary(Binary::Add, gated, r));
        k.verify(&k.inputs.iter().collect::<Vec<_>>()).unwrap();
        k
    };
    let mut cases = vec![];
    for rows in [1, 2, 70] {
        cases.push((
            format!("linear, {rows} rows"),
            kernel(Op::Linear, vec![vec![rows, 37], vec![66, 37]], vec![rows, 66], Some(vec![66]), Unary::Gelu),
        ));
    }
    cases.push((
        "batched matmul".into(),
        kernel(Op::MatMul, vec![vec![2, 70, 9], vec![2, 9, 67]], vec![2, 70, 67], None, Unary::Silu),
    ));
    cases.push((
        "conv2d".into(),
        kernel(
            Op::Conv2d { stride: 1, pad: 1 },
            vec![vec![2, 3, 9, 9], vec![4, 3, 3, 3]],
            vec![2, 4, 9, 9],
            None,
            Unary::GeluTanh,
        ),
    ));
    cases.push((
        "attention".into(),
        kernel(
            Op::Attention { mask: Mask::Causal, scale: F::new(0.3), keys: Dim::c(7) },
            vec![vec![1, 2, 7, 8], vec![1, 2, 7, 8], vec![1, 2, 7, 8]],
            vec![1, 2, 7, 8],
            None,
            Unary::Gelu,
        ),
    ));
    // Store kernels: linear(x, w) (and gelu of it) written into rows 3..5 of a state.
    for act in [false, true] {
        let mut k = Kernel {
            inputs: vec![f32t(&[1, 8, 6]), f32t(&[1, 2, 5]), f32t(&[6, 5])],
            nodes: vec![
                KNode { ty: f32t(&[1, 8, 6]), expr: Expr::Load(0) },
                KNode { ty: f32t(&[1, 2, 5]), expr: Expr::Load(1) },
                KNode { ty: f32t(&[6, 5]), expr: Expr::Load(2) },
                KNode { ty: f32t(&[1, 2, 6]), expr: Expr::Anchor { op: Op::Linear, operands: vec![1, 2] } },
            ],
        };
        if act {
            k.nodes.push(KNode { ty: f32t(&[1, 2, 6]), expr: Expr::Unary(Unary::Gelu, 3) });
        }
        let src = k.nodes.len() as u32 - 1;
        k.nodes.push(KNode { ty: f32t(&[1, 8, 6]), expr: Expr::WriteSlice { dst: 0, src, axis: 1, start: Dim::c(3) } });
        k.verify(&k.inputs.iter().collect::<Vec<_>>()).unwrap();
        cases.push((format!("a store kernel (gelu: {act})"), k));
    }
    for (what, k) in cases {
        for seed in 0..2 {
            let (fused, dispatches) = check_kernel(&gpu, &k, &Bindings::default(), seed, &pipelines, &stats)
                .unwrap_or_else(|e| panic!("{what}, seed {seed}: {e}"));
            assert!(fused, "{what}: the epilogue qualifies");
            assert_eq!(dispatches, 1, "{what}: one dispatch");
        }
    }
}

/// The baseline GEMM (one thread per output, never the backend's choice)
/// with a GELU residual epilogue through the same hook.
#[test]
fn the_naive_gemm_runs_an_epilogue_through_the_hook() {
    use super::kernels::gemm::{self, Gemm};
    use ecarc_compiler::ir::op::{Binary, Unary};
    use ecarc_compiler::kernel::Expr;
    let Some(gpu) = gpu("the_naive_gemm_runs_an_epilogue_through_the_hook") else { return };
    let (pipelines, stats) = (Pipelines::default(), Stats::default());
    let node = |shape: &[u64], expr| KNode { ty: f32t(shape), expr };
    let k = Kernel {
        inputs: vec![f32t(&[5, 7]), f32t(&[9, 7]), f32t(&[5, 9])],
        nodes: vec![
            node(&[5, 7], Expr::Load(0)),
            node(&[9, 7], Expr::Load(1)),
            node(&[5, 9], Expr::Anchor { op: Op::Linear, operands: vec![0, 1] }),
            node(&[5, 9], Expr::Unary(Unary::Gelu, 2)),
            node(&[5, 9], Expr::Load(2)),
            node(&[5, 9], Expr::Binary(Binary::Add, 3, 4)),
        ],
    };
    let b = Bindings::default();
    let p = PreparedFused::new(&k).unwrap();
    let Body::Anchored { hook: Some(h), .. } = &p.body else { panic!("the epilogue qualifies") };
    let (host, views) = inputs_of(&gpu, &k, &b, 1);
    let want = crate::reference::fused::run(&k, host, &b).unwrap();
    let y = gpu.alloc(DType::F32, &[5, 9]).unwrap();
    let ins: Vec<Buffer> = h
        .sources
        .iter()
        .map(|s| match s {
            Source::Anchor => y.clone(),
            Source::Input(i) => views[*i as usize].clone(),
        })
        .collect();
    let meta = h.hook.meta.iter().map(|m| meta_word(m, 45, &ins, &y, &b).unwrap()).collect();
    let reads = h.hook.reads.iter().map(|&i| ins[i as usize].clone()).collect();
    let store = kernels::Store { wgsl: &h.hook.wgsl, reads, out: y.clone(), meta };
    let mut rec = Recorder::new(&gpu, &stats);
    let mut cx = Ctx { gpu: &gpu, pipelines: &pipelines, stats: &stats, rec: &mut rec };
    gemm::run_into(&mut cx, &gemm::linear(&views[0], &views[1], None).unwrap(), Gemm::Naive, Some(&store)).unwrap();
    rec.submit("naive").unwrap();
    let got = gpu.download(&y, &stats).unwrap();
    for (a, e) in got.as_f32().unwrap().iter().zip(want.as_f32().unwrap()) {
        assert!(close(*a, *e), "wgpu {a}, reference {e}");
    }
    assert_eq!(stats.counts().dispatches, 1);
}
