//! The anchors on wgpu against the reference interpreter: every GEMM kernel
//! on odd sizes, strided and broadcast operands, bias or none; convolutions
//! with stride and padding; attention with every mask, levels and a KV cache
//! read in place. Tests needing an adapter print "skipped" without one, and
//! fail instead when `ECARC_REQUIRE_WGPU` is set (CI).

use super::gemm::{self, Gemm, Problem};
use super::{anchors, attention, view, Ctx};
use crate::backend::{row_major, Buffer};
use crate::reference::testutil::seq;
use crate::reference::view::View;
use crate::tensor::HostTensor;
use crate::webgpu::record::Recorder;
use crate::webgpu::Wgpu;
use ecarc_compiler::ir::op::Mask;
use ecarc_compiler::ir::{Bindings, Dim, Op, F};
use std::sync::{Arc, OnceLock};

/// The shared device, or `None` (after printing "skipped") without an adapter.
fn gpu() -> Option<&'static Wgpu> {
    static GPU: OnceLock<Option<Wgpu>> = OnceLock::new();
    let g = GPU.get_or_init(|| match Wgpu::new(None) {
        Ok(g) => Some(g),
        Err(e) if std::env::var_os("ECARC_REQUIRE_WGPU").is_some() => {
            panic!("ECARC_REQUIRE_WGPU is set but no wgpu adapter opened: {e}")
        }
        Err(e) => {
            eprintln!("no wgpu adapter ({e})");
            None
        }
    });
    if g.is_none() {
        println!("skipped: no wgpu adapter");
    }
    g.as_ref()
}

fn t(shape: &[usize], seed: u64) -> HostTensor {
    HostTensor::f32(shape.to_vec(), seq(shape.iter().product(), seed))
}

fn up(g: &Wgpu, x: &HostTensor) -> Buffer {
    g.gpu.upload(x).unwrap()
}

fn down(g: &Wgpu, b: &Buffer) -> HostTensor {
    g.gpu.download(b, &g.stats).unwrap()
}

/// A view of `b` with its axes permuted (no copy).
fn permuted(b: &Buffer, perm: &[usize]) -> Buffer {
    let shape = perm.iter().map(|&p| b.shape[p]).collect();
    let strides = perm.iter().map(|&p| b.strides[p]).collect();
    view(b, b.offset, shape, strides)
}

/// Rows `start..start + len` of `axis` of `b` (no copy).
fn sliced(b: &Buffer, axis: usize, start: usize, len: usize) -> Buffer {
    let mut shape = b.shape.clone();
    shape[axis] = len;
    view(b, b.offset + start * b.strides[axis], shape, b.strides.clone())
}

/// Record with `f` and submit once.
fn record<T>(g: &Wgpu, f: impl FnOnce(&mut Ctx) -> crate::Result<T>) -> crate::Result<T> {
    let mut rec = Recorder::new(&g.gpu, &g.stats);
    let out = f(&mut Ctx { gpu: &g.gpu, pipelines: &g.pipelines, stats: &g.stats, rec: &mut rec })?;
    rec.submit("test")?;
    Ok(out)
}

#[track_caller]
fn close(a: &HostTensor, e: &HostTensor, what: &str) {
    assert_eq!(a.shape, e.shape, "{what}");
    for (i, (x, y)) in a.as_f32().unwrap().iter().zip(e.as_f32().unwrap()).enumerate() {
        assert!((x - y).abs() <= 1e-4 + 1e-4 * y.abs(), "{what}: element {i}: {x} vs {y}");
    }
}

/// The reference's result of `op` on the (dense) contents of the views.
fn want(g: &Wgpu, op: &Op, x: &[&Buffer]) -> HostTensor {
    let host: Vec<HostTensor> = x.iter().map(|b| down(g, b)).collect();
    let refs: Vec<&HostTensor> = host.iter().collect();
    crate::reference::eval(op, &refs, &Bindings::default()).unwrap()
}

const KINDS: [Gemm; 3] = [Gemm::Best, Gemm::Tiled, Gemm::Naive];

fn gemm_all(g: &Wgpu, p: &Problem, op: &Op, x: &[&Buffer], what: &str) {
    let e = want(g, op, x);
    for kind in KINDS {
        let out = record(g, |cx| gemm::run(cx, p, kind)).unwrap();
        close(&down(g, &out), &e, &format!("{what} {kind:?}"));
    }
}

#[test]
fn every_shader_validates() {
    let mut all = gemm::all_shaders();
    all.push((
        "attention".into(),
        attention::shader(&ecarc_compiler::codegen::epilogue::plain(attention::HOOK_BINDING)),
    ));
    for (name, src) in all {
        let module = wgpu::naga::front::wgsl::parse_str(&src).unwrap_or_else(|e| panic!("{name}: {e}"));
        wgpu::naga::valid::Validator::new(
            wgpu::naga::valid::ValidationFlags::all(),
            wgpu::naga::valid::Capabilities::empty(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name}: {e:?}"));
    }
}

#[test]
fn linear_matches_the_reference_for_every_kernel_odd_sizes_and_one_two_many_rows() {
    let Some(g) = gpu() else { return };
    for rows in [1, 2, 3, 17, 70] {
        for (n_in, n_out) in [(1, 1), (5, 3), (33, 31), (67, 129), (1024, 67)] {
            let (x, w, b) = (up(g, &t(&[rows, n_in], 1)), up(g, &t(&[n_out, n_in], 2)), up(g, &t(&[n_out], 3)));
            for bias in [Some(&b), None] {
                let mut ops = vec![&x, &w];
                ops.extend(bias);
                let p = gemm::linear(&x, &w, bias).unwrap();
                gemm_all(g, &p, &Op::Linear, &ops, &format!("{rows}x{n_in}->{n_out} bias {}", bias.is_some()));
            }
        }
    }
}

#[test]
fn linear_reads_strided_inputs_weights_and_biases_in_place() {
    let Some(g) = gpu() else { return };
    // x as a permuted view (its rows not one stride), w a transposed [in, out]
    // tensor, the bias every other element of a longer one.
    let xb = up(g, &t(&[6, 2, 9], 4));
    let x = permuted(&xb, &[1, 0, 2]);
    let w = permuted(&up(g, &t(&[9, 70], 5)), &[1, 0]);
    let bb = up(g, &t(&[70, 2], 6));
    let b = view(&bb, 1, vec![70], vec![2]);
    let p = gemm::linear(&x, &w, Some(&b)).unwrap();
    assert!(p.batches > 1, "the permuted rows are batches");
    gemm_all(g, &p, &Op::Linear, &[&x, &w, &b], "strided");
    // One row of a slice, the weight row-major: the GEMV with offsets.
    let x1 = sliced(&sliced(&xb, 0, 3, 1), 1, 1, 1);
    let wd = up(g, &down(g, &w));
    gemm_all(g, &gemm::linear(&x1, &wd, Some(&b)).unwrap(), &Op::Linear, &[&x1, &wd, &b], "sliced row");
    // Two rows with leading axes, through the op (the backend's path).
    let x2 = up(g, &t(&[2, 1, 9], 7));
    let out = record(g, |cx| anchors::anchor(cx, &Op::Linear, &[x2.clone(), wd.clone()], &Bindings::default(), &[]))
        .unwrap()
        .unwrap();
    close(&down(g, &out), &want(g, &Op::Linear, &[&x2, &wd]), "op");
}

#[test]
fn matmul_matches_the_reference_with_broadcast_batches_and_strides() {
    let Some(g) = gpu() else { return };
    for (sa, sb) in [
        (vec![3, 5], vec![5, 4]),
        (vec![2, 3, 7, 5], vec![5, 9]),
        (vec![2, 1, 4, 3], vec![3, 3, 2]),
        (vec![1, 1], vec![1, 1]),
        (vec![4, 65, 33], vec![4, 33, 70]),
        (vec![2, 1, 130], vec![2, 130, 67]),
        (vec![3, 0], vec![0, 2]),
    ] {
        let (a, b) = (up(g, &t(&sa, 6)), up(g, &t(&sb, 7)));
        gemm_all(g, &gemm::matmul(&a, &b).unwrap(), &Op::MatMul, &[&a, &b], &format!("{sa:?}@{sb:?}"));
    }
    // q @ k^T with heads split out of [B, T, H*D] rows: both operands permuted views.
    let (bn, tq, h, d) = (2, 5, 3, 4);
    let heads = |seed| {
        let x = up(g, &t(&[bn, tq, h * d], seed));
        permuted(&view(&x, 0, vec![bn, tq, h, d], row_major(&[bn, tq, h, d])), &[0, 2, 1, 3])
    };
    let (q, k) = (heads(8), heads(9));
    let kt = permuted(&k, &[0, 1, 3, 2]);
    gemm_all(g, &gemm::matmul(&q, &kt).unwrap(), &Op::MatMul, &[&q, &kt], "q k^T");
    let out = record(g, |cx| anchors::anchor(cx, &Op::MatMul, &[q.clone(), kt.clone()], &Bindings::default(), &[]))
        .unwrap()
        .unwrap();
    close(&down(g, &out), &want(g, &Op::MatMul, &[&q, &kt]), "op");
}

#[test]
fn conv2d_matches_the_reference_with_stride_padding_and_strided_input() {
    let Some(g) = gpu() else { return };
    for (n, c, h, wd, o, k, s, p) in [
        (1, 3, 5, 5, 4, 3, 1, 1),
        (2, 2, 7, 6, 3, 3, 2, 1),
        (1, 4, 4, 4, 5, 1, 1, 0),
        (2, 3, 6, 5, 2, 2, 2, 0),
        (1, 5, 9, 11, 70, 3, 1, 2),
        (1, 1, 3, 3, 1, 3, 2, 1),
    ] {
        let (x, w, b) = (up(g, &t(&[n, c, h, wd], 10)), up(g, &t(&[o, c, k, k], 11)), up(g, &t(&[o], 12)));
        let op = Op::Conv2d { stride: s, pad: p };
        for bias in [Some(&b), None] {
            let mut ops = vec![&x, &w];
            ops.extend(bias);
            let pr = gemm::conv2d(&x, &w, bias, s as usize, p as usize).unwrap();
            gemm_all(g, &pr, &op, &ops, &format!("conv {n} {c} {h} {wd} {o} {k} {s} {p}"));
        }
    }
    // An NHWC tensor seen as NCHW.
    let x = permuted(&up(g, &t(&[2, 6, 5, 3], 13)), &[0, 3, 1, 2]);
    let w = up(g, &t(&[4, 3, 3, 3], 14));
    let op = Op::Conv2d { stride: 2, pad: 1 };
    gemm_all(g, &gemm::conv2d(&x, &w, None, 2, 1).unwrap(), &op, &[&x, &w], "nhwc view");
    // A bias read every third element from 2 on.
    let b = view(&up(g, &t(&[12], 15)), 2, vec![4], vec![3]);
    gemm_all(g, &gemm::conv2d(&x, &w, Some(&b), 2, 1).unwrap(), &op, &[&x, &w, &b], "strided bias");
    let out =
        record(g, |cx| anchors::anchor(cx, &op, &[x.clone(), w.clone()], &Bindings::default(), &[])).unwrap().unwrap();
    close(&down(g, &out), &want(g, &op, &[&x, &w]), "op");
}

#[test]
fn gemm_operand_errors_are_errors() {
    let Some(g) = gpu() else { return };
    let (a, b) = (up(g, &t(&[2, 3], 1)), up(g, &t(&[4], 2)));
    assert!(gemm::linear(&a, &permuted(&a, &[1, 0]), None).is_err());
    assert!(gemm::linear(&a, &a, Some(&b)).is_err());
    assert!(gemm::linear(&a, &b, None).is_err());
    assert!(gemm::matmul(&a, &a).is_err());
    assert!(gemm::matmul(&b, &a).is_err());
    assert!(gemm::conv2d(&a, &a, None, 1, 0).is_err());
    let i = g.gpu.upload(&HostTensor::i64(vec![2, 3], vec![0; 6])).unwrap();
    assert!(gemm::linear(&i, &a, None).is_err());
    let r = record(g, |cx| anchors::anchor(cx, &Op::Linear, std::slice::from_ref(&a), &Bindings::default(), &[]));
    assert!(r.is_err());
}

const MASKS: [Mask; 4] = [Mask::Full, Mask::Causal, Mask::BlockCausal, Mask::EarlierPlusSelf];

/// Levels 0, 1, 1, 2, 2, 2, ... (next-scale), or unsorted.
fn levels(n: usize, sorted: bool) -> HostTensor {
    let l: Vec<i64> = (0..n as i64).map(|i| if sorted { (i as f64).sqrt() as i64 } else { (i * 7) % 5 }).collect();
    HostTensor::i64(vec![n], l)
}

fn attention_op(mask: Mask, scale: f64, keys: usize) -> Op {
    Op::Attention { mask, scale: F::new(scale), keys: Dim::c(keys as u64) }
}

/// The reference attention on the views' contents, with the cache's rows past `keys` kept.
fn want_attention(g: &Wgpu, x: &[&Buffer], mask: Mask, scale: f32, keys: usize) -> HostTensor {
    let v: Vec<View> = x[..3].iter().map(|b| View::whole(Arc::new(down(g, b)))).collect();
    let lv = x.get(3).map(|b| down(g, b));
    crate::reference::attention::attention(&v[0], &v[1], &v[2], lv.as_ref(), mask, scale, keys).unwrap()
}

#[test]
fn attention_matches_the_reference_for_every_mask_odd_sizes_and_many_tiles() {
    let Some(g) = gpu() else { return };
    for (b, tq, s, d, e) in [
        (1, 1, 1, 1, 1),
        (2, 5, 5, 4, 3),
        (3, 7, 150, 9, 5),
        (1, 130, 130, 16, 8),
        (2, 1, 200, 8, 70),
        (1, 3, 64, 256, 256),
    ] {
        let (q, k, v) = (up(g, &t(&[b, tq, d], 1)), up(g, &t(&[b, s, d], 2)), up(g, &t(&[b, s, e], 3)));
        for sorted in [true, false] {
            let lv = up(g, &levels(s, sorted));
            for mask in MASKS {
                let x = [q.clone(), k.clone(), v.clone(), lv.clone()];
                let n = if mask.needs_levels() { 4 } else { 3 };
                let op = attention_op(mask, 0.7, s);
                let out = record(g, |cx| anchors::anchor(cx, &op, &x[..n], &Bindings::default(), &[])).unwrap();
                let refs: Vec<&Buffer> = x[..n].iter().collect();
                let expected = want_attention(g, &refs, mask, 0.7, s);
                close(&down(g, &out.unwrap()), &expected, &format!("{} {b} {tq} {s} {d} {e} {sorted}", mask.name()));
            }
        }
    }
}

#[test]
fn attention_reads_a_kv_cache_in_place_up_to_its_keys() {
    let Some(g) = gpu() else { return };
    // Head-split [B, H, S, D] views of [B, S, H*D] caches of 100 rows, 70
    // filled (NaN past them, never read), the queries' heads permuted too,
    // and the same caches sliced to their first 70 rows; strided levels.
    let (b, h, d, cap, keys, tq) = (2, 3, 4, 100, 70, 2);
    let mut kd = t(&[b, cap, h * d], 5);
    let mut vd = t(&[b, cap, h * d], 6);
    for x in [&mut kd, &mut vd] {
        if let crate::tensor::Data::F32(x) = &mut x.data {
            for bi in 0..b {
                x[(bi * cap + keys) * h * d..(bi + 1) * cap * h * d].fill(f32::NAN);
            }
        }
    }
    let heads =
        |x: &Buffer, rows| permuted(&view(x, 0, vec![b, rows, h, d], row_major(&[b, rows, h, d])), &[0, 2, 1, 3]);
    let (q, k, v) = (heads(&up(g, &t(&[b, tq, h * d], 7)), tq), heads(&up(g, &kd), cap), heads(&up(g, &vd), cap));
    // The levels every other element of a longer tensor, from 1 on.
    let lv = view(&up(g, &levels(2 * keys + 1, false)), 1, vec![keys], vec![2]);
    for mask in MASKS {
        for (kk, vv) in [(k.clone(), v.clone()), (sliced(&k, 2, 0, keys), sliced(&v, 2, 0, keys))] {
            let mut x = vec![q.clone(), kk, vv];
            if mask.needs_levels() {
                x.push(lv.clone());
            }
            let op = attention_op(mask, 0.5, keys);
            let out = record(g, |cx| anchors::anchor(cx, &op, &x, &Bindings::default(), &[])).unwrap().unwrap();
            let got = down(g, &out);
            assert!(got.non_finite().is_none(), "{}", mask.name());
            // The reference on the filled rows only.
            let filled: Vec<Buffer> =
                x.iter().take(3).map(|y| if y.shape[2] > tq { sliced(y, 2, 0, keys) } else { y.clone() }).collect();
            let mut refs: Vec<&Buffer> = filled.iter().collect();
            refs.extend(x.get(3));
            close(&got, &want_attention(g, &refs, mask, 0.5, keys), mask.name());
        }
    }
}

#[test]
fn attention_operand_errors_are_errors_and_wide_heads_fall_back() {
    let Some(g) = gpu() else { return };
    let (q, k) = (up(g, &t(&[1, 2, 4], 1)), up(g, &t(&[1, 3, 4], 2)));
    let b = Bindings::default();
    let run = |op: Op, x: &[Buffer]| record(g, |cx| anchors::anchor(cx, &op, x, &b, &[]));
    assert!(run(attention_op(Mask::BlockCausal, 1.0, 3), &[q.clone(), k.clone(), k.clone()]).is_err());
    assert!(run(attention_op(Mask::Full, 1.0, 4), &[q.clone(), k.clone(), k.clone()]).is_err());
    assert!(run(attention_op(Mask::Full, 1.0, 2), &[k.clone(), q.clone(), q.clone()]).is_err());
    let bad_levels = up(g, &t(&[3], 3));
    assert!(run(attention_op(Mask::BlockCausal, 1.0, 3), &[q.clone(), k.clone(), k.clone(), bad_levels]).is_err());
    let wide = up(g, &t(&[1, 2, attention::MAX_HEAD + 1], 4));
    assert!(run(attention_op(Mask::Full, 1.0, 2), &[wide.clone(), wide.clone(), wide]).unwrap().is_none());
}

/// Milliseconds per run of `f` (after one warm-up), each run submitted and waited for.
fn time_ms(g: &Wgpu, runs: usize, mut f: impl FnMut() -> Buffer) -> f64 {
    use crate::backend::Backend;
    f();
    g.synchronize().unwrap();
    let t0 = std::time::Instant::now();
    for _ in 0..runs {
        f();
        g.synchronize().unwrap();
    }
    t0.elapsed().as_secs_f64() * 1e3 / runs as f64
}

/// Milliseconds per run of a one-Linear program on the CPU backend, for scale.
fn cpu_linear_ms(x: &HostTensor, w: &HostTensor, runs: usize) -> f64 {
    use crate::backend::{Args, Backend};
    use ecarc_compiler::ir::{Graph, TensorType};
    let d = |v: usize| Dim::c(v as u64);
    let mut gr = Graph::new("linear");
    let xs = gr.source(Op::Input { name: "x".into() }, TensorType::f32(x.shape.iter().map(|&v| d(v)).collect()), None);
    let ws = gr.source(Op::Param { key: "w".into() }, TensorType::f32(w.shape.iter().map(|&v| d(v)).collect()), None);
    let y = gr.add(Op::Linear, &[xs, ws], None);
    gr.output("y", y);
    let cpu = crate::cpu::Cpu::new();
    let (xb, wb) = (cpu.upload(x).unwrap(), cpu.upload(w).unwrap());
    let exe = cpu.prepare(&gr, &[("w".to_string(), wb)].into_iter().collect()).unwrap();
    let once = || {
        let args = Args { inputs: [("x", &xb)].into_iter().collect(), states: Default::default() };
        cpu.run(&exe, &Bindings::default(), args).unwrap();
        cpu.synchronize().unwrap();
    };
    once();
    let t0 = std::time::Instant::now();
    for _ in 0..runs {
        once();
    }
    t0.elapsed().as_secs_f64() * 1e3 / runs as f64
}

/// Figures, not a test: `cargo test --profile ci -p ecarc-runtime gemm_figures -- --ignored --nocapture`.
#[test]
#[ignore]
fn gemm_figures() {
    let Some(g) = gpu() else { return };
    println!("adapter: {}", g.adapter());
    let report = |what: &str, m: usize, n: usize, k: usize, ms: f64| {
        println!("{what:<34} {m}x{k} . {k}x{n}: {ms:9.2} ms {:8.2} GFLOP/s", 2.0 * (m * n * k) as f64 / ms / 1e6);
    };
    let (m, k, n) = (256, 1024, 1024);
    let (xh, wh) = (t(&[m, k], 1), t(&[n, k], 2));
    let (x, w) = (up(g, &xh), up(g, &wh));
    for kind in [Gemm::Tiled, Gemm::Naive] {
        let ms = time_ms(g, 3, || g.linear_with(&x, &w, None, kind).unwrap());
        report(&format!("linear {kind:?}"), m, n, k, ms);
    }
    report("linear, CPU backend", m, n, k, cpu_linear_ms(&xh, &wh, 3));
    let (m, k, n) = (2, 1024, 4096);
    let (xh, wh) = (t(&[m, k], 3), t(&[n, k], 4));
    let (x, w) = (up(g, &xh), up(g, &wh));
    for (what, kind) in
        [("decode GEMV (Best)", Gemm::Best), ("decode Tiled", Gemm::Tiled), ("decode Naive", Gemm::Naive)]
    {
        let ms = time_ms(g, 10, || g.linear_with(&x, &w, None, kind).unwrap());
        report(what, m, n, k, ms);
    }
    report("decode, CPU backend", m, n, k, cpu_linear_ms(&xh, &wh, 10));
    // What one submission and wait cost by themselves.
    let (x, w) = (up(g, &t(&[1, 1], 5)), up(g, &t(&[1, 1], 6)));
    report("floor: a 1x1 GEMV", 1, 1, 1, time_ms(g, 10, || g.linear_with(&x, &w, None, Gemm::Best).unwrap()));
}

#[test]
fn a_program_runs_its_anchors_on_the_device_in_one_submission() {
    use crate::backend::{Args, Backend};
    use ecarc_compiler::ir::{Graph, TensorType};
    if gpu().is_none() {
        return;
    }
    // q = heads(linear(x)); attention over the first 7 rows of a cache of 8;
    // then a matmul by a weight: every anchor, none on the host.
    let d = Dim::c;
    let (b, tq, h, hd, cap, keys) = (2, 5, 3, 4, 8, 7);
    let mut gr = Graph::new("anchors");
    let x = gr.source(Op::Input { name: "x".into() }, TensorType::f32(vec![d(b), d(tq), d(h * hd)]), None);
    let w = gr.source(Op::Param { key: "w".into() }, TensorType::f32(vec![d(h * hd), d(h * hd)]), None);
    let cache = TensorType::f32(vec![d(b), d(h), d(cap), d(hd)]);
    let kc = gr.source(Op::State { name: "k".into() }, cache.clone(), None);
    let vc = gr.source(Op::State { name: "v".into() }, cache, None);
    let m = gr.source(Op::Param { key: "m".into() }, TensorType::f32(vec![d(hd), d(6)]), None);
    let lin = gr.add(Op::Linear, &[x, w], None);
    let split = gr.add(Op::Reshape { shape: vec![d(b), d(tq), d(h), d(hd)] }, &[lin], None);
    let q = gr.add(Op::Permute { perm: vec![0, 2, 1, 3] }, &[split], None);
    let slice = |gr: &mut Graph, c| gr.add(Op::Slice { axis: 2, start: d(0), len: d(keys) }, &[c], None);
    let (k, v) = (slice(&mut gr, kc), slice(&mut gr, vc));
    let att = gr.add(attention_op(Mask::Causal, 0.5, keys as usize), &[q, k, v], None);
    let y = gr.add(Op::MatMul, &[att, m], None);
    gr.output("y", y);
    let host = [
        ("x", t(&[2, 5, 12], 1)),
        ("w", t(&[12, 12], 2)),
        ("k", t(&[2, 3, 8, 4], 3)),
        ("v", t(&[2, 3, 8, 4], 4)),
        ("m", t(&[4, 6], 5)),
    ];
    let run = |be: &dyn Backend| {
        let bufs: Vec<(&str, Buffer)> = host.iter().map(|(n, x)| (*n, be.upload(x).unwrap())).collect();
        let get = |n: &str| bufs.iter().find(|(k, _)| *k == n).unwrap().1.clone();
        let params = [("w".to_string(), get("w")), ("m".to_string(), get("m"))].into_iter().collect();
        let exe = be.prepare(&gr, &params).unwrap();
        let x = get("x");
        let args = Args {
            inputs: [("x", &x)].into_iter().collect(),
            states: [("k", get("k")), ("v", get("v"))].into_iter().collect(),
        };
        let outs = be.run(&exe, &Bindings::default(), args).unwrap();
        be.download(&outs[0].1).unwrap()
    };
    // A device of its own: the other tests count on the shared one meanwhile.
    let own = Wgpu::new(None).unwrap();
    let got = run(&own);
    let c = own.stats().counts();
    assert!(c.host_ops.is_empty(), "ran on the host: {:?}", c.host_ops);
    assert_eq!((c.submissions, c.dispatches), (1, 3));
    close(&got, &run(&crate::reference::Reference::new()), "program");
}
