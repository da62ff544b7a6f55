//! The backend contract: the KV cache is written in place (one position per
//! layer and step, nothing growing with the position), attention is one op,
//! sampling settings and guidance are inputs of programs prepared once,
//! layout ops are views, and weights are bound at prepare (a backend may
//! re-lay them out there).

use crate::common::{root, spec_of, Tracing};
use ecarc_compiler::ir::{Bindings, Graph, Op, Sym, TensorType};
use ecarc_compiler::lower::{lower, SpecSpans};
use ecarc_compiler::plan::Keep;
use ecarc_compiler::ModelSpec;
use ecarc_runtime::backend::{Args, Backend, Buffer, Capabilities, Executable, Params};
use ecarc_runtime::driver::{Generator, Quiet, SampleOptions, SampleOutput, Settings};
use ecarc_runtime::error::Result;
use ecarc_runtime::reference::{Reference, Traffic};
use ecarc_runtime::tensor::HostTensor;
use ecarc_runtime::weights::Weights;
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use std::collections::HashMap;

fn tiny(name: &str, sets: &[&str]) -> ModelSpec {
    spec_of(&root().join(format!("examples/tiny/{name}.ecar")), sets)
}

fn step_next(spec: &ModelSpec) -> Graph {
    let p = lower(spec, &SpecSpans::default()).expect("lowers");
    p.graph("step.next").expect("a step.next program").clone()
}

/// Whether a type's size changes with the cached positions `P`.
fn grows_with_p(ty: &TensorType) -> bool {
    let at = |p| ty.numel().eval(&Bindings::new(1, 1, p));
    at(0) != at(300)
}

#[test]
fn llamagen_b_decode_step_writes_its_cache_in_place_and_attends_in_one_op() {
    let spec = spec_of(&root().join("models/llamagen_b.ecar"), &[]);
    let g = step_next(&spec);
    let depth = spec.backbone.depth as usize;
    let count = |name: &str| g.g.node_weights().filter(|n| n.op.name() == name).count();
    assert_eq!(count("attention"), depth, "one attention op per layer");
    assert_eq!(count("softmax"), 0, "no softmax outside the attention op");
    assert_eq!(count("write_slice"), 2 * depth, "one key and one value write per layer");
    // No value of the step grows with the position: the cache is a state of
    // fixed capacity (257 positions) written at `P`, and no dense mask comes in.
    for n in g.g.node_weights() {
        assert!(!grows_with_p(&n.ty), "{} {:?} grows with P", n.op.name(), n.ty);
        if let Op::Input { name } = &n.op {
            assert_ne!(name, "attn_bias");
        }
    }
    // Every state is updated in place: its only reader is its write_slice,
    // which writes `T` positions (one per decode step) at `P`.
    let states: Vec<_> = g.g.node_indices().filter(|&n| matches!(g.g[n].op, Op::State { .. })).collect();
    assert_eq!(states.len(), 2 * depth);
    for s in states {
        let Op::State { name } = &g.g[s].op else { unreachable!() };
        assert_eq!(g.g[s].ty.shape[2].as_const(), Some(257), "{name}: capacity of the whole sequence");
        let readers: Vec<_> = g.g.edges_directed(s, Direction::Outgoing).map(|e| e.target()).collect();
        assert_eq!(readers.len(), 1, "{name}");
        let w = readers[0];
        match &g.g[w].op {
            Op::WriteSlice { axis: 2, start } => assert_eq!(start, &ecarc_compiler::ir::Dim::sym(Sym::P)),
            other => panic!("{name} is read by {}", other.name()),
        }
        let new_rows = g.operands(w)[1];
        assert_eq!(g.g[new_rows].ty.shape[2], ecarc_compiler::ir::Dim::sym(Sym::T), "{name}: T new positions");
        assert!(g.is_update(name), "{name} is declared an in-place update");
        assert!(g.outputs.iter().any(|(o, n)| o == name && *n == w));
    }
    // The one concat left is classifier-free guidance doubling the step's
    // token ids (i64[2B, T]); nothing concatenates the cache.
    for n in g.g.node_indices().filter(|&n| matches!(g.g[n].op, Op::Concat { .. })) {
        assert_eq!(g.g[n].ty.dtype, ecarc_compiler::ir::DType::I64, "only token ids are concatenated");
        assert!(g.operands(n).iter().all(|&o| matches!(&g.g[o].op, Op::Input { name } if name == "tokens")));
    }
    // The CLI shows the same program.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ecarc"))
        .args(["graph", "--program", "step.next"])
        .arg(root().join("models/llamagen_b.ecar"))
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    assert_eq!(text.matches("= attention(").count(), depth);
    assert!(!text.contains("attn_bias") && !text.contains("labels"), "{text}");
}

fn opts(labels: Vec<i64>) -> SampleOptions {
    SampleOptions { labels, seed: 11, keep: Keep::Debug }
}

#[test]
fn a_256_step_raster_sample_writes_one_position_per_layer_in_place() {
    // Tiny LlamaGen on a 16x16 grid: 256 decode steps (257 positions).
    let spec = tiny("llamagen", &["image=128", "schedule={ raster 16x16 }"]);
    let (depth, width) = (spec.backbone.depth, spec.backbone.width);
    let w = Weights::random(&spec, 0);
    let backend = Tracing::new();
    let g = Generator::from_spec(spec, &backend, &w).unwrap();
    let images = 2;
    g.sample(&opts(vec![1, 2]), &Quiet).unwrap();
    let runs = backend.runs.borrow();
    let steps: Vec<&(String, Bindings, Traffic)> = runs.iter().filter(|(p, ..)| p == "step.next").collect();
    assert_eq!(steps.len(), 255);
    let rows = 2 * images; // guided: a conditional and an unconditional row per image
    let per_step = 2 * depth * rows * width * 4; // k and v, every head, one position, f32
    for (_, b, t) in &steps {
        assert_eq!(b.t, 1);
        assert_eq!(t.updates_in_place, 2 * depth, "at P = {}", b.p);
        assert_eq!(t.updates_copied, 0, "at P = {}", b.p);
        assert_eq!(t.state_bytes_written, per_step, "at P = {}", b.p);
    }
    // What a step copies does not depend on how many positions are cached.
    let first = steps[0].2.copied_bytes;
    assert!(steps.iter().all(|(.., t)| t.copied_bytes == first), "copies grow with P");
}

/// The settings of one variant of the tiny LlamaGen's own.
fn with(base: &Settings, f: impl Fn(&mut Settings)) -> Settings {
    let mut s = base.clone();
    f(&mut s);
    s
}

fn fresh(spec: &ModelSpec, w: &Weights, s: &Settings) -> SampleOutput {
    let mut spec = spec.clone();
    let sm = &mut spec.sampler;
    (sm.cfg, sm.temperature, sm.top_k, sm.top_p) = (s.cfg, s.temperature, s.top_k, s.top_p);
    let backend = Reference::new();
    Generator::from_spec(spec, &backend, w).unwrap().sample(&opts(vec![3, 7]), &Quiet).unwrap()
}

#[test]
fn settings_and_guidance_change_without_preparing_again() {
    let spec = tiny("llamagen", &[]);
    let w = Weights::random(&spec, 0);
    let backend = Tracing::new();
    let mut g = Generator::from_spec(spec.clone(), &backend, &w).unwrap();
    let prepared = backend.prepares.get();
    let base = g.settings().clone();
    assert!(base.guided(), "the tiny LlamaGen guides by default");
    let variants = [
        with(&base, |s| s.temperature = 0.5),
        with(&base, |s| s.temperature = 2.0),
        with(&base, |s| s.top_k = 3),
        with(&base, |s| s.top_k = 40),
        with(&base, |s| s.top_p = 0.3),
        with(&base, |s| s.top_p = 0.9),
        with(&base, |s| s.cfg = base.cfg + 1.0),
        with(&base, |s| s.cfg = 6.0),
        with(&base, |s| s.cfg = 1.0), // guidance off: the batch is not doubled
        base.clone(),                 // and on again
    ];
    let mut records = vec![];
    for s in &variants {
        g.set_settings(s.clone());
        let out = g.sample(&opts(vec![3, 7]), &Quiet).unwrap();
        assert_eq!(backend.prepares.get(), prepared, "{s:?} prepared again");
        let want = fresh(&spec, &w, s);
        assert_eq!(out.image, want.image, "{s:?}");
        assert_eq!(out.stages, want.stages, "{s:?}");
        records.push(out.stages);
    }
    // The settings reach the programs: each variant's tokens or guided
    // logits differ from the model's own settings' (the last run).
    let own = &records[records.len() - 1];
    for (s, r) in variants.iter().zip(&records).take(records.len() - 1) {
        assert!(r != own, "{s:?} ran as the model's own settings do");
    }
}

#[test]
fn a_head_split_and_a_slice_are_views_not_copies() {
    use ecarc_compiler::ir::{Dim, Graph};
    // qkv [B, T, 3 * 16] -> q, k, v as [B, 4, T, 4] heads -> attention.
    let d = |v| Dim::c(v);
    let (b, t) = (Dim::sym(Sym::B), Dim::sym(Sym::T));
    let mut g = Graph::new("heads");
    let qkv = g.source(Op::Input { name: "qkv".into() }, TensorType::f32(vec![b.clone(), t.clone(), d(48)]), None);
    let mut parts = vec![];
    for i in 0..3 {
        let s = g.add(Op::Slice { axis: 2, start: d(16 * i), len: d(16) }, &[qkv], None);
        let r = g.add(Op::Reshape { shape: vec![b.clone(), t.clone(), d(4), d(4)] }, &[s], None);
        parts.push(g.add(Op::Permute { perm: vec![0, 2, 1, 3] }, &[r], None));
    }
    let attn =
        Op::Attention { mask: ecarc_compiler::ir::op::Mask::Causal, scale: ecarc_compiler::ir::F::new(0.5), keys: t };
    let o = g.add(attn, &parts, None);
    g.output("o", o);
    g.output("k", parts[1]);
    let r = Reference::new();
    let exe = r.prepare(&g, &HashMap::new()).unwrap();
    let x: Vec<f32> = (0..2 * 5 * 48).map(|i| ((i * 7919) % 97) as f32 / 97.0 - 0.5).collect();
    let xb = r.upload(&HostTensor::f32(vec![2, 5, 48], x.clone())).unwrap();
    let before = r.traffic();
    let outs =
        r.run(&exe, &Bindings::new(2, 5, 0), Args { inputs: [("qkv", &xb)].into(), ..Default::default() }).unwrap();
    assert_eq!(r.traffic() - before, Traffic::default(), "slicing and splitting heads copied");
    // The `k` output is a view of the input's storage, and reads back right.
    let k = &outs[1].1;
    assert_eq!((k.shape.as_slice(), k.offset, k.strides.as_slice()), (&[2, 4, 5, 4][..], 16, &[240, 4, 48, 1][..]));
    let kt = r.download(k).unwrap();
    let kv = kt.as_f32().unwrap();
    assert_eq!(kv[0..4], x[16..20]);
    assert_eq!(kv[4..8], x[64..68], "the next position of the same head");
}

/// The reference backend, but every linear layer's weight is stored
/// transposed at prepare (the re-layout a GEMM backend does) and the layer
/// runs as a matmul on it.
struct Transposing {
    inner: Reference,
}

impl Transposing {
    /// `g` with each `linear(x, w[, b])` on a parameter `w` as
    /// `matmul(x, w^T) [+ b]`, reading `w^T` as `KEY^T`.
    fn rewrite(g: &Graph) -> Graph {
        let mut g = g.clone();
        let linears: Vec<_> = g.g.node_indices().filter(|&n| matches!(g.g[n].op, Op::Linear)).collect();
        for n in linears {
            let ops = g.operands(n);
            let Op::Param { key } = g.g[ops[1]].op.clone() else { continue };
            if g.g[ops[0]].ty.rank() < 2 {
                continue;
            }
            let ws = g.g[ops[1]].ty.shape.clone();
            let wt = g.source(
                Op::Param { key: format!("{key}^T") },
                TensorType::f32(vec![ws[1].clone(), ws[0].clone()]),
                None,
            );
            let mut y = g.add(Op::MatMul, &[ops[0], wt], None);
            if let Some(&bias) = ops.get(2) {
                y = g.add(Op::Binary(ecarc_compiler::ir::op::Binary::Add), &[y, bias], None);
            }
            let uses: Vec<_> = g.g.edges_directed(n, Direction::Outgoing).map(|e| (e.target(), *e.weight())).collect();
            for (to, slot) in uses {
                g.g.add_edge(y, to, slot);
            }
            for (_, out) in g.outputs.iter_mut() {
                if *out == n {
                    *out = y;
                }
            }
            g.g.remove_node(n);
        }
        ecarc_compiler::pass::Pipeline::standard().checked().run(&mut g).expect("the rewrite verifies");
        g
    }
}

impl Backend for Transposing {
    fn name(&self) -> &'static str {
        "transposing"
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn upload(&self, t: &HostTensor) -> Result<Buffer> {
        self.inner.upload(t)
    }
    fn download(&self, b: &Buffer) -> Result<HostTensor> {
        self.inner.download(b)
    }
    fn prepare(&self, g: &Graph, params: &Params) -> Result<Executable> {
        let g = Transposing::rewrite(g);
        let mut laid_out = HashMap::new();
        for n in g.g.node_weights() {
            let Op::Param { key } = &n.op else { continue };
            let Some(orig) = key.strip_suffix("^T") else {
                if let Some(b) = params.get(key) {
                    laid_out.insert(key.clone(), b.clone());
                }
                continue;
            };
            let Some(b) = params.get(orig) else { continue };
            let w = self.inner.download(b)?;
            let (o, i) = (w.shape[0], w.shape[1]);
            let v = w.as_f32().unwrap();
            let t: Vec<f32> = (0..i * o).map(|k| v[(k % o) * i + k / o]).collect();
            laid_out.insert(key.clone(), self.inner.upload(&HostTensor::f32(vec![i, o], t))?);
        }
        self.inner.prepare(&g, &laid_out)
    }
    fn run(&self, exe: &Executable, b: &Bindings, args: Args) -> Result<Vec<(String, Buffer)>> {
        self.inner.run(exe, b, args)
    }
    fn synchronize(&self) -> Result<()> {
        self.inner.synchronize()
    }
}

#[test]
fn weights_re_laid_out_at_prepare_give_the_same_samples() {
    for name in ["var", "llamagen", "ecar", "dit", "var_dd", "llamagen_dd"] {
        let spec = tiny(name, &[]);
        let w = Weights::random(&spec, 0);
        let plain = Reference::new();
        let want = Generator::from_spec(spec.clone(), &plain, &w).unwrap().sample(&opts(vec![1, 4]), &Quiet).unwrap();
        let backend = Transposing { inner: Reference::new() };
        let got = Generator::from_spec(spec, &backend, &w).unwrap().sample(&opts(vec![1, 4]), &Quiet).unwrap();
        // Linear and matmul sum in the same order: the results are identical.
        assert_eq!(got.image, want.image, "{name}");
        assert_eq!(got.stages, want.stages, "{name}");
    }
}

#[test]
fn dead_code_elimination_drops_what_a_step_does_not_use() {
    // LlamaGen's later steps embed tokens only: the class embedding its
    // backbone builds for every step is dead there, and its labels input too.
    let spec = spec_of(&root().join("models/llamagen_b.ecar"), &[]);
    let g = step_next(&spec);
    assert!(g.g.node_weights().all(|n| !matches!(&n.op, Op::Input { name } if name == "labels")));
    assert!(g.g.node_weights().all(|n| !matches!(&n.op, Op::Param { key } if key.contains("cls_embedding"))));
    let first = lower(&spec, &SpecSpans::default()).unwrap().graph("step.first").unwrap().clone();
    assert!(first.g.node_weights().any(|n| matches!(&n.op, Op::Param { key } if key.contains("cls_embedding"))));
}
