//! Whole programs through the `Backend` trait: sources by kind, symbolic
//! bindings, every error a caller can provoke (as errors, never panics), and
//! the freeing of intermediate values.

use super::testutil::*;
use super::*;
use ecarc_compiler::ir::op::{Binary, Unary};
use ecarc_compiler::ir::{Sym, F};
use std::collections::HashMap;

fn d(v: u64) -> Dim {
    Dim::c(v)
}

/// y = softmax(0.5 * linear(x, w, b) + s); e = table[idx]
fn toy() -> Graph {
    let mut g = Graph::new("toy");
    let b = Dim::sym(Sym::B);
    let x = g.source(Op::Input { name: "x".into() }, TensorType::f32(vec![b.clone(), d(3)]), None);
    let w = g.source(Op::Param { key: "w".into() }, TensorType::f32(vec![d(4), d(3)]), None);
    let bias = g.source(Op::Param { key: "b".into() }, TensorType::f32(vec![d(4)]), None);
    let s = g.source(Op::State { name: "s".into() }, TensorType::f32(vec![b.clone(), d(4)]), None);
    let half = g.add(Op::Const { value: F::new(0.5) }, &[], None);
    let lin = g.add(Op::Linear, &[x, w, bias], None);
    let m = g.add(Op::Binary(Binary::Mul), &[lin, half], None);
    let a = g.add(Op::Binary(Binary::Add), &[m, s], None);
    let y = g.add(Op::Softmax, &[a], None);
    let idx = g.source(Op::Input { name: "idx".into() }, TensorType::i64(vec![b.clone()]), None);
    let table = g.source(Op::Param { key: "table".into() }, TensorType::f32(vec![d(5), d(2)]), None);
    let e = g.add(Op::Embedding, &[table, idx], None);
    g.output("y", y);
    g.output("e", e);
    g
}

struct ToyData {
    x: Vec<f32>,
    w: Vec<f32>,
    b: Vec<f32>,
    s: Vec<f32>,
    table: Vec<f32>,
}

fn toy_data() -> ToyData {
    ToyData { x: seq(6, 1), w: seq(12, 2), b: seq(4, 3), s: seq(8, 4), table: seq(10, 5) }
}

fn up(r: &Reference, t: HostTensor) -> Buffer {
    r.upload(&t).unwrap()
}

#[test]
fn toy_program_through_the_backend_trait() {
    let r = Reference::new();
    assert_eq!(r.name(), "reference");
    assert!(r.capabilities().all_ops);
    let v = toy_data();
    let params: HashMap<String, Buffer> = [
        ("w".to_string(), up(&r, t(&[4, 3], &v.w))),
        ("b".to_string(), up(&r, t(&[4], &v.b))),
        ("table".to_string(), up(&r, t(&[5, 2], &v.table))),
    ]
    .into_iter()
    .collect();
    let exe = r.prepare(&toy(), &params).unwrap();
    assert_eq!(exe.name, "toy");
    let x = up(&r, t(&[2, 3], &v.x));
    let s = up(&r, t(&[2, 4], &v.s));
    let idx = up(&r, ti(&[2], &[4, 0]));
    let args =
        Args { inputs: [("x", &x), ("idx", &idx)].into_iter().collect(), states: [("s", s)].into_iter().collect() };
    let outs = r.run(&exe, &Bindings::new(2, 0, 0), args).unwrap();
    let names: Vec<&str> = outs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["y", "e"]);
    r.synchronize().unwrap();
    // Expected values straight from the definitions, in f64.
    let mut expected_y = vec![];
    for row in 0..2 {
        let a: Vec<f64> = (0..4)
            .map(|o| {
                let dot: f64 = (0..3).map(|i| v.x[row * 3 + i] as f64 * v.w[o * 3 + i] as f64).sum();
                0.5 * (dot + v.b[o] as f64) + v.s[row * 4 + o] as f64
            })
            .collect();
        let z: f64 = a.iter().map(|v| v.exp()).sum();
        expected_y.extend(a.iter().map(|v| (v.exp() / z) as f32));
    }
    let y = r.download(&outs[0].1).unwrap();
    assert_eq!(y.shape, vec![2, 4]);
    assert_close(f(&y), &expected_y, 1e-6, 1e-5);
    let e = r.download(&outs[1].1).unwrap();
    assert_eq!(e.shape, vec![2, 2]);
    assert_eq!(f(&e), &[v.table[8], v.table[9], v.table[0], v.table[1]]);
    // The same executable with another batch size.
    let x1 = up(&r, t(&[1, 3], &v.x[..3]));
    let s1 = up(&r, t(&[1, 4], &v.s[..4]));
    let idx1 = up(&r, ti(&[1], &[2]));
    let args =
        Args { inputs: [("x", &x1), ("idx", &idx1)].into_iter().collect(), states: [("s", s1)].into_iter().collect() };
    let outs = r.run(&exe, &Bindings::new(1, 0, 0), args).unwrap();
    assert_close(f(&r.download(&outs[0].1).unwrap()), &expected_y[..4], 1e-6, 1e-5);
}

/// Runs the toy program with one change to its otherwise valid arguments.
fn toy_run_with(change: impl FnOnce(&mut HashMap<&'static str, HostTensor>)) -> Result<Vec<(String, Buffer)>> {
    let r = Reference::new();
    let v = toy_data();
    let mut ts: HashMap<&'static str, HostTensor> = [
        ("x", t(&[2, 3], &v.x)),
        ("idx", ti(&[2], &[1, 1])),
        ("s", t(&[2, 4], &v.s)),
        ("w", t(&[4, 3], &v.w)),
        ("b", t(&[4], &v.b)),
        ("table", t(&[5, 2], &v.table)),
    ]
    .into_iter()
    .collect();
    change(&mut ts);
    let bufs: HashMap<&str, Buffer> = ts.iter().map(|(k, t)| (*k, r.upload(t).unwrap())).collect();
    let params: HashMap<String, Buffer> =
        ["w", "b", "table"].iter().filter_map(|k| bufs.get(k).map(|b| (k.to_string(), b.clone()))).collect();
    let exe = r.prepare(&toy(), &params)?;
    let args = Args {
        inputs: ["x", "idx"].iter().filter_map(|k| bufs.get(k).map(|b| (*k, b))).collect(),
        states: ["s"].iter().filter_map(|k| bufs.get(k).map(|b| (*k, b.clone()))).collect(),
    };
    r.run(&exe, &Bindings::new(2, 0, 0), args)
}

#[test]
fn toy_run_with_valid_arguments_succeeds() {
    assert!(toy_run_with(|_| {}).is_ok());
}

#[test]
fn missing_sources_are_reported_by_kind_and_name() {
    for (key, kind) in [("x", "input"), ("idx", "input"), ("s", "state"), ("w", "param"), ("table", "param")] {
        match toy_run_with(|ts| {
            ts.remove(key);
        }) {
            Err(RuntimeError::MissingSource { program, what, name }) => {
                assert_eq!((program.as_str(), what, name.as_str()), ("toy", kind, key));
            }
            other => panic!("{key}: expected MissingSource, got {:?}", other.map(|_| ())),
        }
    }
    // No params at all.
    let r = Reference::new();
    let exe = r.prepare(&toy(), &HashMap::new()).unwrap();
    let x = up(&r, t(&[2, 3], &[0.; 6]));
    let idx = up(&r, ti(&[2], &[0, 0]));
    let s = up(&r, t(&[2, 4], &[0.; 8]));
    let args =
        Args { inputs: [("x", &x), ("idx", &idx)].into_iter().collect(), states: [("s", s)].into_iter().collect() };
    let e = r.run(&exe, &Bindings::new(2, 0, 0), args).expect_err("an error");
    assert!(matches!(e, RuntimeError::MissingSource { what: "param", .. }), "{e}");
}

#[test]
fn wrong_shapes_and_dtypes_are_mismatches() {
    let cases: Vec<(&str, HostTensor, &str)> = vec![
        ("x", t(&[3, 3], &[0.; 9]), "f32[3, 3]"),       // batch is 2
        ("x", t(&[2, 4], &[0.; 8]), "f32[2, 4]"),       // features
        ("x", ti(&[2, 3], &[0; 6]), "i64[2, 3]"),       // dtype
        ("idx", t(&[2], &[0., 1.]), "f32[2]"),          // indices must be i64
        ("s", t(&[2, 4, 1], &[0.; 8]), "f32[2, 4, 1]"), // rank
        ("w", t(&[3, 4], &[0.; 12]), "f32[3, 4]"),      // transposed weight
    ];
    for (key, bad, actual_text) in cases {
        match toy_run_with(|ts| {
            ts.insert(key, bad);
        }) {
            Err(RuntimeError::Mismatch { program, name, actual, expected, .. }) => {
                assert_eq!(program, "toy");
                assert_eq!(name, key);
                assert_eq!(actual, actual_text);
                assert!(!expected.is_empty());
            }
            other => panic!("{key}: expected Mismatch, got {:?}", other.map(|_| ())),
        }
    }
    // The expected type is evaluated under the bindings and names the declaration.
    let e = toy_run_with(|ts| {
        ts.insert("x", t(&[3, 3], &[0.; 9]));
    })
    .err()
    .unwrap();
    let text = e.to_string();
    assert!(text.contains("expected f32[2, 3] (declared f32[B, 3]"), "{text}");
}

#[test]
fn out_of_range_embedding_index_is_an_execution_error() {
    for bad in [5, -1, i64::MAX] {
        let e = toy_run_with(|ts| {
            ts.insert("idx", ti(&[2], &[0, bad]));
        })
        .expect_err("an error");
        match &e {
            RuntimeError::Execution { backend, program, why } => {
                assert_eq!((backend.as_str(), program.as_str()), ("reference", "toy"));
                assert!(why.contains("embedding") && why.contains("out of range"), "{why}");
            }
            other => panic!("expected Execution, got {other}"),
        }
    }
}

#[test]
fn cyclic_and_ill_typed_graphs_are_rejected_by_prepare() {
    let mut g = Graph::new("cyclic");
    let x = g.source(Op::Input { name: "x".into() }, TensorType::f32(vec![d(2)]), None);
    let a = g.add(Op::Unary(Unary::Neg), &[x], None);
    let b = g.add(Op::Unary(Unary::Exp), &[a], None);
    g.g.add_edge(b, a, 1);
    g.output("b", b);
    let e = Reference::new().prepare(&g, &HashMap::new()).map(|_| ()).expect_err("a cycle");
    assert!(e.to_string().contains("cycle"), "{e}");

    let mut g = Graph::new("ill_typed");
    let x = g.source(Op::Input { name: "x".into() }, TensorType::f32(vec![d(2)]), None);
    let a = g.add(Op::Unary(Unary::Neg), &[x], None);
    g.g[a].ty = TensorType::f32(vec![d(3)]);
    g.output("a", a);
    let e = Reference::new().prepare(&g, &HashMap::new()).map(|_| ()).expect_err("a type error");
    assert!(e.to_string().contains("does not verify"), "{e}");
}

#[test]
fn symbolic_bindings_cache_concat_and_slices() {
    // k_all = concat(cache [B, P, 2], k [B, T, 2]) along 1; last = slice(k_all, 1, P, T)
    let (b, tt, p) = (Dim::sym(Sym::B), Dim::sym(Sym::T), Dim::sym(Sym::P));
    let mut g = Graph::new("cache");
    let cache = g.source(Op::State { name: "cache".into() }, TensorType::f32(vec![b.clone(), p.clone(), d(2)]), None);
    let k = g.source(Op::Input { name: "k".into() }, TensorType::f32(vec![b.clone(), tt.clone(), d(2)]), None);
    let all = g.add(Op::Concat { axis: 1 }, &[cache, k], None);
    let last = g.add(Op::Slice { axis: 1, start: p.clone(), len: tt.clone() }, &[all], None);
    let flat = g.add(Op::Reshape { shape: vec![b.clone(), tt.mul_c(2)] }, &[last], None);
    g.output("cache", all);
    g.output("flat", flat);
    let r = Reference::new();
    let exe = r.prepare(&g, &HashMap::new()).unwrap();
    let mut state = up(&r, t(&[1, 0, 2], &[]));
    let mut history = vec![];
    for (step, n) in [1usize, 2, 3].into_iter().enumerate() {
        let kv: Vec<f32> = (0..2 * n).map(|i| (step * 10 + i) as f32).collect();
        history.extend_from_slice(&kv);
        let kb = up(&r, t(&[1, n, 2], &kv));
        let past = history.len() / 2 - n;
        let args =
            Args { inputs: [("k", &kb)].into_iter().collect(), states: [("cache", state)].into_iter().collect() };
        let outs = r.run(&exe, &Bindings::new(1, n as u64, past as u64), args).unwrap();
        let c = r.download(&outs[0].1).unwrap();
        assert_eq!(c.shape, vec![1, past + n, 2]);
        assert_eq!(f(&c), &history[..]);
        let fl = r.download(&outs[1].1).unwrap();
        assert_eq!(fl.shape, vec![1, 2 * n]);
        assert_eq!(f(&fl), &kv[..]);
        state = outs[0].1.clone();
    }
    // Bindings that disagree with the supplied state are a mismatch.
    let kb = up(&r, t(&[1, 1, 2], &[0., 0.]));
    let args = Args { inputs: [("k", &kb)].into_iter().collect(), states: [("cache", state)].into_iter().collect() };
    let e = r.run(&exe, &Bindings::new(1, 1, 2), args).expect_err("a mismatch");
    assert!(matches!(e, RuntimeError::Mismatch { what: "state", .. }), "{e}");
}

#[test]
fn every_declared_source_is_required_even_if_unused() {
    let mut g = Graph::new("unused");
    let x = g.source(Op::Input { name: "x".into() }, TensorType::f32(vec![d(2)]), None);
    let _u = g.source(Op::Input { name: "unused".into() }, TensorType::f32(vec![d(1)]), None);
    let y = g.add(Op::Unary(Unary::Neg), &[x], None);
    g.output("y", y);
    let r = Reference::new();
    let exe = r.prepare(&g, &HashMap::new()).unwrap();
    let xb = up(&r, t(&[2], &[1., 2.]));
    let args = Args { inputs: [("x", &xb)].into_iter().collect(), ..Default::default() };
    let e = r.run(&exe, &Bindings::default(), args).expect_err("missing");
    assert!(matches!(&e, RuntimeError::MissingSource { name, .. } if name == "unused"), "{e}");
    let ub = up(&r, t(&[1], &[0.]));
    let args = Args { inputs: [("x", &xb), ("unused", &ub)].into_iter().collect(), ..Default::default() };
    let outs = r.run(&exe, &Bindings::default(), args).unwrap();
    assert_eq!(f(&r.download(&outs[0].1).unwrap()), &[-1., -2.]);
}

#[test]
fn a_kernel_error_names_the_node() {
    // A slice whose symbolic bounds exceed the axis at run time.
    let mut g = Graph::new("slice");
    let x = g.source(Op::Input { name: "x".into() }, TensorType::f32(vec![d(4)]), None);
    let s = g.add(Op::Slice { axis: 0, start: Dim::sym(Sym::P), len: Dim::sym(Sym::T) }, &[x], None);
    g.output("s", s);
    let r = Reference::new();
    let exe = r.prepare(&g, &HashMap::new()).unwrap();
    let xb = up(&r, t(&[4], &[1., 2., 3., 4.]));
    let args = || Args { inputs: [("x", &xb)].into_iter().collect(), ..Default::default() };
    let outs = r.run(&exe, &Bindings::new(1, 2, 1), args()).unwrap();
    assert_eq!(f(&r.download(&outs[0].1).unwrap()), &[2., 3.]);
    let e = r.run(&exe, &Bindings::new(1, 2, 3), args()).expect_err("out of bounds");
    match e {
        RuntimeError::Execution { why, .. } => assert!(why.contains("node 1 (slice)"), "{why}"),
        other => panic!("{other}"),
    }
}

#[test]
fn foreign_buffers_and_programs_are_errors() {
    struct Other;
    impl Storage for Other {
        fn as_any(&self) -> &dyn Any {
            self
        }
        fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
            self
        }
    }
    let r = Reference::new();
    let foreign = Buffer::dense(DType::F32, vec![1], Arc::new(Other));
    assert!(matches!(r.download(&foreign), Err(RuntimeError::Invalid(_))));
    let exe = Executable { name: "x".into(), inner: Arc::new(5u32) };
    assert!(matches!(r.run(&exe, &Bindings::default(), Args::default()), Err(RuntimeError::Invalid(_))));
    // A buffer whose metadata lies about its storage.
    let mut g = Graph::new("lie");
    let x = g.source(Op::Input { name: "x".into() }, TensorType::f32(vec![d(2)]), None);
    g.output("x", x);
    let exe = r.prepare(&g, &HashMap::new()).unwrap();
    let mut b = up(&r, t(&[3], &[1., 2., 3.]));
    b.shape = vec![4];
    b.strides = vec![1];
    let args = Args { inputs: [("x", &b)].into_iter().collect(), ..Default::default() };
    assert!(matches!(r.run(&exe, &Bindings::default(), args), Err(RuntimeError::Invalid(_))));
    // An inconsistent host tensor cannot be uploaded.
    let bad = HostTensor { shape: vec![2], data: Data::F32(vec![1.0]) };
    assert!(r.upload(&bad).is_err());
}

#[test]
fn upload_download_round_trip() {
    let r = Reference::new();
    for t0 in [t(&[2, 2], &[1., 2., 3., 4.]), ti(&[3], &[7, -1, 0]), HostTensor::scalar(2.5), t(&[0, 3], &[])] {
        let b = r.upload(&t0).unwrap();
        assert_eq!((b.dtype, &b.shape), (t0.dtype(), &t0.shape));
        assert_eq!(r.download(&b).unwrap(), t0);
    }
}

#[test]
fn intermediates_are_freed_after_their_last_use() {
    // A chain of 30 layers: x -> tanh(linear(x)) -> ...; at most a few values live at once.
    let mut g = Graph::new("chain");
    let mut h = g.source(Op::Input { name: "x".into() }, TensorType::f32(vec![d(1), d(4)]), None);
    for l in 0..30 {
        let w = g.source(Op::Param { key: format!("w{l}") }, TensorType::f32(vec![d(4), d(4)]), None);
        let lin = g.add(Op::Linear, &[h, w], None);
        h = g.add(Op::Unary(Unary::Tanh), &[lin], None);
    }
    g.output("h", h);
    let r = Reference::new();
    let params: HashMap<String, Buffer> =
        (0..30).map(|l| (format!("w{l}"), up(&r, t(&[4, 4], &seq(16, l as u64))))).collect();
    let exe = r.prepare(&g, &params).unwrap();
    let x = up(&r, t(&[1, 4], &[0.5, -0.5, 0.25, 1.0]));
    let args = Args { inputs: [("x", &x)].into_iter().collect(), ..Default::default() };
    let p = exe.inner.downcast_ref::<Prepared>().unwrap();
    let (outs, peak) = p.run_counting(&Bindings::default(), args, &r.counters).unwrap();
    // A layer's linear output lives until its tanh is computed: two at most.
    assert_eq!(peak, 2, "peak {peak} live computed values");
    // The result equals a direct evaluation.
    let mut v = vec![0.5f64, -0.5, 0.25, 1.0];
    for l in 0..30 {
        let w = seq(16, l as u64);
        v = (0..4).map(|o| (0..4).map(|i| v[i] * w[o * 4 + i] as f64).sum::<f64>().tanh()).collect();
    }
    let got = r.download(&outs[0].1).unwrap();
    assert_close(f(&got), &v.iter().map(|&a| a as f32).collect::<Vec<_>>(), 1e-5, 1e-4);
}

// ---- real programs -----------------------------------------------------------

/// A seed from a name (FNV-1a), so each tensor gets its own values.
fn seed_of(name: &str) -> u64 {
    name.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

/// Seeded values for every source of `g` under `b`: f32 values in [-1, 1)
/// (params scaled by 0.2 to keep activations moderate), `uniform` in [0, 1),
/// indices in the range of the embedding table they index (0 otherwise), and
/// the sampling settings off (temperature 1, top-k 0, top-p 1).
fn random_sources(g: &Graph, b: &Bindings) -> HashMap<(&'static str, String), HostTensor> {
    let mut out = HashMap::new();
    for n in g.g.node_indices() {
        let node = &g.g[n];
        let (kind, name) = match &node.op {
            Op::Input { name } => ("input", name.clone()),
            Op::State { name } => ("state", name.clone()),
            Op::Param { key } => ("param", key.clone()),
            _ => continue,
        };
        let shape = eval_dims(&node.ty.shape, b).unwrap();
        let len = numel(&shape);
        let seed = seed_of(&format!("{kind}:{name}"));
        let t = match node.ty.dtype {
            DType::F32 => {
                let mut v = seq(len, seed);
                if name == "temperature" || name == "top_p" {
                    v.iter_mut().for_each(|x| *x = 1.0);
                } else if name == "uniform" {
                    v.iter_mut().for_each(|x| *x = (*x + 1.0) / 2.0);
                } else if kind == "param" {
                    v.iter_mut().for_each(|x| *x *= 0.2);
                }
                HostTensor::f32(shape, v)
            }
            DType::I64 => {
                // The row count of an embedding table this index feeds, if any.
                let rows =
                    g.g.neighbors_directed(n, petgraph::Direction::Outgoing)
                        .filter(|&c| matches!(g.g[c].op, Op::Embedding))
                        .map(|c| g.operands(c)[0])
                        .map(|table| g.g[table].ty.shape[0].eval(b))
                        .min()
                        .unwrap_or(1)
                        .max(1);
                let v = if name == "top_k" {
                    vec![0; len]
                } else {
                    seq(len, seed).iter().map(|x| ((x + 1.0) / 2.0 * rows as f32) as i64 % rows as i64).collect()
                };
                HostTensor::i64(shape, v)
            }
        };
        out.insert((kind, name), t);
    }
    out
}

fn run_with_sources(
    r: &Reference,
    g: &Graph,
    b: &Bindings,
    sources: &HashMap<(&'static str, String), HostTensor>,
) -> Result<Vec<(String, HostTensor)>> {
    let bufs: HashMap<(&str, &str), Buffer> =
        sources.iter().map(|((k, n), t)| ((*k, n.as_str()), r.upload(t).unwrap())).collect();
    let params: HashMap<String, Buffer> =
        bufs.iter().filter(|((k, _), _)| *k == "param").map(|((_, n), b)| (n.to_string(), b.clone())).collect();
    let exe = r.prepare(g, &params)?;
    let args = Args {
        inputs: bufs.iter().filter(|((k, _), _)| *k == "input").map(|((_, n), b)| (*n, b)).collect(),
        states: bufs.iter().filter(|((k, _), _)| *k == "state").map(|((_, n), b)| (*n, b.clone())).collect(),
    };
    let outs = r.run(&exe, b, args)?;
    Ok(outs.into_iter().map(|(n, buf)| (n, r.download(&buf).unwrap())).collect())
}

/// Every program of every model in `examples/tiny/` (written by the examples'
/// author; skipped while the folder does not exist), lowered and run on
/// seeded random weights and inputs at every binding its plan uses: each must
/// run, give finite outputs of its declared shapes, and give bit-identical
/// results when run again.
#[test]
fn every_program_of_the_tiny_models_runs() {
    use ecarc_compiler::lower::{lower, SpecSpans};
    use ecarc_compiler::session::{check_paths, Outcome};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/tiny");
    if !dir.is_dir() {
        eprintln!("skipped: {} does not exist", dir.display());
        return;
    }
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "ecar"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no models in {}", dir.display());
    let session = check_paths(&files, &[]);
    assert!(!session.has_errors(), "{}", session.render_diags());
    let r = Reference::new();
    let mut ran = 0;
    for m in &session.models {
        let Outcome::Model(spec) = &m.outcome else { panic!("{} is not a single model", m.name) };
        let spans = SpecSpans::from_body(m.body.as_ref().expect("checked body"));
        let program = lower(spec, &spans).unwrap_or_else(|d| panic!("{}: {d:?}", m.name));
        for g in &program.graphs {
            // Every distinct binding the plans run this program with.
            let mut bindings: Vec<Bindings> = Vec::new();
            for plan in &program.plans {
                for (e, i) in plan.runs().filter(|(e, _)| e.program == g.name) {
                    let b = e.bindings(1, i);
                    if !bindings.contains(&b) {
                        bindings.push(b);
                    }
                }
            }
            assert!(!bindings.is_empty(), "{}: no plan runs `{}`", m.name, g.name);
            for b in &bindings {
                let sources = random_sources(g, b);
                let outs = run_with_sources(&r, g, b, &sources)
                    .unwrap_or_else(|e| panic!("{} {} at {b:?}: {e}", m.name, g.name));
                assert_eq!(outs.len(), g.outputs.len());
                for ((name, t), (_, n)) in outs.iter().zip(&g.outputs) {
                    assert_eq!(t.shape, eval_dims(&g.g[*n].ty.shape, b).unwrap(), "{} {} {name}", m.name, g.name);
                    if let Some(v) = t.as_f32() {
                        assert!(v.iter().all(|x| x.is_finite()), "{} {} {name}: non-finite values", m.name, g.name);
                    }
                }
                let again = run_with_sources(&r, g, b, &sources).unwrap();
                assert!(outs == again, "{} {}: a second run differs", m.name, g.name);
                ran += 1;
            }
        }
    }
    assert!(ran > 0);
    eprintln!("ran {ran} program runs from {} tiny models", session.models.len());
}
