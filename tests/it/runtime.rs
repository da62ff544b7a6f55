//! The reference runtime end to end: every tiny model samples to an image,
//! deterministically; KV-cached steps equal the teacher-forced pass; layer
//! details follow the reference implementations (checked through properties
//! that only the right formula has).

use crate::common::{root, spec_of};
use ecarc_compiler::plan::Keep;
use ecarc_compiler::ModelSpec;
use ecarc_runtime::backend::Backend;
use ecarc_runtime::driver::{Generator, Quiet, SampleOptions, SampleOutput};
use ecarc_runtime::reference::Reference;
use ecarc_runtime::tensor::HostTensor;
use ecarc_runtime::weights::{declared_tensors, Weights};
use std::collections::BTreeMap;

const FAMILIES: [&str; 6] = ["var", "llamagen", "ecar", "dit", "var_dd", "llamagen_dd"];

fn tiny(name: &str, sets: &[&str]) -> ModelSpec {
    spec_of(&root().join(format!("examples/tiny/{name}.ecar")), sets)
}

fn run(spec: ModelSpec, weights: &Weights, opts: SampleOptions) -> SampleOutput {
    let backend = Reference::new();
    let g = Generator::from_spec(spec, &backend, weights).expect("generator");
    g.sample(&opts, &Quiet).expect("sample")
}

fn sample(name: &str, sets: &[&str], labels: Vec<i64>, seed: u64, record: bool) -> SampleOutput {
    let spec = tiny(name, sets);
    let w = Weights::random(&spec, 0);
    run(spec, &w, SampleOptions { labels, seed, keep: if record { Keep::Debug } else { Keep::Stages } })
}

/// |a - e| <= atol + rtol |e| everywhere.
fn assert_close(a: &[f32], e: &[f32], atol: f32, rtol: f32, what: &str) {
    assert_eq!(a.len(), e.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(e).enumerate() {
        assert!((x - y).abs() <= atol + rtol * y.abs(), "{what}: element {i}: {x} vs {y}");
    }
}

fn stage<'a>(out: &'a SampleOutput, name: &str) -> Option<&'a HostTensor> {
    out.stages.iter().find(|(n, _)| n == name).map(|(_, t)| t)
}

#[test]
fn every_tiny_model_samples_an_image_deterministically() {
    for name in FAMILIES {
        let a = sample(name, &[], vec![1, 3], 5, false);
        assert_eq!(a.image.shape, vec![2, 3, 32, 32], "{name}");
        let img = a.image.as_f32().unwrap();
        assert!(img.iter().all(|v| (0.0..=1.0).contains(v)), "{name}: image outside [0, 1]");
        // Not a constant image: random weights still give structure.
        let (lo, hi) = img.iter().fold((f32::MAX, f32::MIN), |(l, h), v| (l.min(*v), h.max(*v)));
        assert!(hi - lo > 1e-3, "{name}: flat image");
        let b = sample(name, &[], vec![1, 3], 5, false);
        assert_eq!(a.image, b.image, "{name}: same seed, different image");
        assert_eq!(a.stages, b.stages, "{name}: same seed, different stages");
    }
}

#[test]
fn the_seed_and_the_class_matter() {
    for name in FAMILIES {
        let a = sample(name, &[], vec![1], 5, false);
        let b = sample(name, &[], vec![2], 5, false);
        assert_ne!(a.image, b.image, "{name}: class ignored");
        let c = sample(name, &[], vec![1], 6, false);
        assert_ne!(a.image, c.image, "{name}: seed ignored");
    }
}

/// Concatenate `[B, t_k, ...]` tensors along axis 1.
pub(crate) fn cat1(parts: &[&HostTensor]) -> HostTensor {
    let b = parts[0].shape[0];
    let inner: usize = parts[0].shape[2..].iter().product();
    let mut shape = parts[0].shape.clone();
    shape[1] = parts.iter().map(|p| p.shape[1]).sum();
    // Image i's rows of every part, in order.
    fn rows<T: Copy>(parts: &[(&[T], usize)], b: usize) -> Vec<T> {
        (0..b).flat_map(|i| parts.iter().flat_map(move |(v, n)| v[i * n..(i + 1) * n].iter().copied())).collect()
    }
    let per = |p: &HostTensor| p.shape[1] * inner;
    match parts[0].as_f32() {
        Some(_) => {
            let v: Vec<(&[f32], usize)> = parts.iter().map(|p| (p.as_f32().unwrap(), per(p))).collect();
            HostTensor::f32(shape, rows(&v, b))
        }
        None => {
            let v: Vec<(&[i64], usize)> = parts.iter().map(|p| (p.as_i64().unwrap(), per(p))).collect();
            HostTensor::i64(shape, rows(&v, b))
        }
    }
}

#[test]
fn kv_cached_steps_equal_the_teacher_forced_pass() {
    assert_kv_cached_steps_equal_the_teacher_forced_pass(&Reference::new(), 1e-5);
}

/// On `backend`: each stage's output from the KV-cached steps of a sample
/// equals the teacher-forced forward over the same inputs, within
/// `tol + tol |e|` (var, llamagen, ecar).
pub(crate) fn assert_kv_cached_steps_equal_the_teacher_forced_pass(backend: &dyn Backend, tol: f32) {
    // Guidance off, so the steps' logits are the conditional ones the forward computes.
    let sets = ["sample.cfg=1.0", "sample.cfg_schedule=constant"];
    for (name, input, result, fwd_in, fwd_out) in [
        ("var", "x", "logits", "x_BLCv_wo_first_l", "logits_BLV"),
        ("llamagen", "tokens", "logits", "idx", "logits"),
        ("ecar", "x", "z", "x", "z"),
    ] {
        let spec = tiny(name, &sets);
        let w = Weights::random(&spec, 0);
        let labels = vec![4, 7];
        let g = Generator::from_spec(spec.clone(), backend, &w).unwrap();
        let out =
            g.sample(&SampleOptions { labels: labels.clone(), seed: 3, keep: Keep::Debug }, &Quiet).expect("sample");
        let stages = spec.schedule.stages().len();
        let inputs: Vec<&HostTensor> =
            (1..stages).map(|k| stage(&out, &format!("stage.{k}.input.{input}")).expect("recorded input")).collect();
        let results: Vec<&HostTensor> =
            (0..stages).map(|k| stage(&out, &format!("stage.{k}.{result}")).expect("recorded result")).collect();
        let label_name = g.forward_signature(2, false).unwrap()[0].0.clone();
        let mut fin = BTreeMap::new();
        fin.insert(label_name, HostTensor::i64(vec![2], labels));
        // A raster model's last token is never fed back: the forward takes all but it.
        fin.insert(fwd_in.to_string(), cat1(&inputs));
        let got = g.forward(&fin, None).expect("forward");
        let full = &got.iter().find(|(n, _)| n == fwd_out).expect("forward output").1;
        let cached = cat1(&results);
        assert_eq!(full.shape, cached.shape, "{name} on {}", backend.name());
        assert_close(
            full.as_f32().unwrap(),
            cached.as_f32().unwrap(),
            tol,
            tol,
            &format!("{name} on {}", backend.name()),
        );
    }
}

#[test]
fn greedy_decoding_does_not_depend_on_the_seed() {
    for name in ["var", "llamagen"] {
        let a = sample(name, &["sample.top_k=1"], vec![2, 5], 1, true);
        let b = sample(name, &["sample.top_k=1"], vec![2, 5], 99, true);
        // Every decision is clear of a tie by at least 1e-3 (else the test proves nothing).
        for (n, t) in a.stages.iter().filter(|(n, _)| n.ends_with(".logits")) {
            let v = t.as_f32().unwrap();
            let vocab = *t.shape.last().unwrap();
            for row in v.chunks(vocab) {
                let mut s = row.to_vec();
                s.sort_by(|x, y| y.total_cmp(x));
                assert!(s[0] - s[1] >= 1e-3, "{name} {n}: near-tie {} {}", s[0], s[1]);
            }
        }
        let tokens = |o: &SampleOutput| -> Vec<HostTensor> {
            o.stages.iter().filter(|(n, _)| n.ends_with(".tokens")).map(|(_, t)| t.clone()).collect()
        };
        assert_eq!(tokens(&a), tokens(&b), "{name}");
        assert_eq!(a.image, b.image, "{name}");
    }
}

// ---- layer details, through properties only the right formula has -----------

fn key_of(spec: &ModelSpec, role: &str, nth: usize) -> String {
    declared_tensors(spec).into_iter().filter(|d| d.role == role).nth(nth).unwrap_or_else(|| panic!("role {role}")).key
}

fn forward(spec: &ModelSpec, w: &Weights, seed: u64) -> Vec<f32> {
    let backend = Reference::new();
    let g = Generator::from_spec(spec.clone(), &backend, w).unwrap();
    let sig = g.forward_signature(2, false).unwrap();
    let mut rng = ecarc_runtime::rng::SeededRng::new(seed);
    let mut fin = BTreeMap::new();
    for (name, dtype, shape) in sig {
        let n: usize = shape.iter().product();
        let t = match (name.as_str(), dtype) {
            (_, ecarc_compiler::ir::DType::I64) if name == "idx" => HostTensor::i64(shape, vec![3; n]),
            (_, ecarc_compiler::ir::DType::I64) => HostTensor::i64(shape, (0..n as i64).map(|i| i % 10).collect()),
            ("t", _) => HostTensor::f32(shape, vec![500.0; n]),
            _ => HostTensor::f32(shape, rng.normal(n)),
        };
        fin.insert(name, t);
    }
    let out = g.forward(&fin, None).unwrap();
    out[0].1.as_f32().unwrap().to_vec()
}

fn scaled(w: &Weights, key: &str, f: impl Fn(usize, f32) -> f32) -> Weights {
    let mut w = w.clone();
    let t = w.get(key).unwrap().clone();
    let v: Vec<f32> = t.as_f32().unwrap().iter().enumerate().map(|(i, x)| f(i, *x)).collect();
    w.insert(key, HostTensor::f32(t.shape.clone(), v));
    w
}

/// Zero the adaLN chunks at `slots` (of 6) in every block: gates there make
/// each block the identity, so the attention and FFN weights stop mattering.
fn zero_gates(spec: &ModelSpec, w: &Weights, slots: &[usize]) -> Weights {
    let mut w = w.clone();
    for layer in 0..spec.backbone.depth as usize {
        for role in ["ada", "ada_bias"] {
            let key = key_of(spec, role, layer);
            let t = w.get(&key).unwrap();
            let chunk = t.shape[0] / 6;
            let per_row = t.numel() / t.shape[0];
            w = scaled(&w, &key, |i, x| if slots.contains(&((i / per_row) / chunk)) { 0.0 } else { x });
        }
    }
    w
}

fn perturb_blocks(spec: &ModelSpec, w: &Weights) -> Weights {
    let mut w = w.clone();
    for layer in 0..spec.backbone.depth as usize {
        for role in ["qkv", "ffn_up"] {
            w = scaled(&w, &key_of(spec, role, layer), |i, x| x * 1.5 + 0.01 * (i % 7) as f32);
        }
    }
    w
}

#[test]
fn adaln_chunk_orders_follow_var_and_dit() {
    // VAR: gamma1, gamma2, scale1, scale2, shift1, shift2. DiT: shift, scale, gate (msa), then mlp.
    for (name, gates, wrong) in [("var", [0usize, 1], [2usize, 3]), ("dit", [2, 5], [0, 3])] {
        let spec = tiny(name, &[]);
        let w = Weights::random(&spec, 1);
        let right = zero_gates(&spec, &w, &gates);
        assert_eq!(forward(&spec, &right, 2), forward(&spec, &perturb_blocks(&spec, &right), 2), "{name}");
        let other = zero_gates(&spec, &w, &wrong);
        assert_ne!(forward(&spec, &other, 2), forward(&spec, &perturb_blocks(&spec, &other), 2), "{name}");
    }
}

#[test]
fn var_attention_normalises_q_and_k_and_clamps_the_scale() {
    let spec = tiny("var", &[]);
    let w = Weights::random(&spec, 4);
    let base = forward(&spec, &w, 5);
    let c = spec.backbone.width as usize;
    // Scaling q and k (rows of mat_qkv and q_bias) changes nothing after the L2 norm.
    let mut s = w.clone();
    for layer in 0..spec.backbone.depth as usize {
        s = scaled(&s, &key_of(&spec, "qkv", layer), |i, x| if i / c < 2 * c { x * 3.0 } else { x });
        s = scaled(&s, &key_of(&spec, "q_bias", layer), |_, x| x * 3.0);
    }
    assert_close(&forward(&spec, &s, 5), &base, 1e-4, 1e-4, "q/k scale invariance");
    // exp(min(scale, ln 100)): every value above ln 100 acts as ln 100.
    let set = |v: f32| {
        let mut s = w.clone();
        for layer in 0..spec.backbone.depth as usize {
            s = scaled(&s, &key_of(&spec, "qk_scale", layer), |_, _| v);
        }
        forward(&spec, &s, 5)
    };
    assert_eq!(set(7.0), set(9.0));
    assert_close(&set(7.0), &set(100f32.ln()), 1e-5, 1e-5, "clamp at ln 100");
    assert_ne!(set(1.0), set(2.0));
}

#[test]
fn var_transitions_use_the_hard_coded_phi_map() {
    let spec = spec_of(&root().join("models/var_d16.ecar"), &[]);
    let program = ecarc_compiler::lower::lower(&spec, &Default::default()).unwrap();
    let want = [0, 0, 1, 1, 1, 2, 2, 3, 3, 3];
    for (k, phi) in want.iter().enumerate() {
        let g = program.graph(&format!("transition.{k}")).unwrap();
        let keys: Vec<String> =
            g.g.node_weights()
                .filter_map(|n| match &n.op {
                    ecarc_compiler::ir::Op::Param { key } if key.contains("qresi_ls") => Some(key.clone()),
                    _ => None,
                })
                .collect();
        assert!(keys.iter().all(|key| key.contains(&format!("qresi_ls.{phi}."))), "scale {k}: {keys:?}");
        assert!(!keys.is_empty());
    }
}

#[test]
fn dit_position_table_is_the_mae_sin_cos_table() {
    let spec = tiny("dit", &[]);
    let w = Weights::random(&spec, 0);
    let t = w.get(&key_of(&spec, "pos_table", 0)).unwrap();
    let width = spec.backbone.width as usize;
    let g = spec.schedule.final_grid();
    let v = t.as_f32().unwrap();
    let q = width / 4;
    for (r, c) in [(0usize, 0usize), (1, 2), (3, 1)] {
        let row = &v[(r * g[1] as usize + c) * width..][..width];
        for k in 0..q {
            let om = 1.0 / 10000f64.powf(k as f64 / q as f64);
            // First half: the column; second half: the row; each [sin, cos].
            let e = [(c as f64 * om).sin(), (c as f64 * om).cos(), (r as f64 * om).sin(), (r as f64 * om).cos()];
            let a = [row[k], row[q + k], row[2 * q + k], row[3 * q + k]];
            for (x, y) in a.iter().zip(e) {
                assert!((*x as f64 - y).abs() <= 1e-6, "({r}, {c}) k {k}: {x} vs {y}");
            }
        }
    }
}

#[test]
fn every_solver_runs_and_heun_differs_from_euler() {
    for (name, solvers) in [("dit", &["ddpm", "ddim", "euler", "heun"][..]), ("ecar", &["euler", "heun"][..])] {
        let mut images = Vec::new();
        for solver in solvers {
            let set = format!("sample.solver={solver}");
            let out = sample(name, &[&set], vec![2], 9, false);
            assert!(out.image.as_f32().unwrap().iter().all(|v| v.is_finite()), "{name} {solver}");
            images.push(out.image);
        }
        for i in 0..images.len() {
            for j in i + 1..images.len() {
                assert_ne!(images[i], images[j], "{name}: {} and {} agree", solvers[i], solvers[j]);
            }
        }
    }
}

/// `ecarc decode` starts from any tensor set a decode plan reads: a VAR
/// model's per-scale token maps (what `--save-tensors` writes), all tokens in
/// one tensor, or f_hat; each gives the sampled image, and the f_hat it
/// accumulates is the one the sample handed to the decoder.
#[test]
fn var_decodes_from_scale_tokens_as_from_f_hat() {
    let spec = tiny("var", &[]);
    let w = Weights::random(&spec, 0);
    let out = run(spec.clone(), &w, SampleOptions { labels: vec![3, 8], seed: 2, keep: Keep::Stages });
    let backend = Reference::new();
    let g = Generator::from_spec(spec, &backend, &w).unwrap();
    let (latent_name, f_hat) = out.latent.clone().expect("the decoder's input is kept");
    assert_eq!(latent_name, "f_hat");
    let scales: BTreeMap<String, HostTensor> =
        out.stages.iter().filter(|(n, _)| n.ends_with(".tokens")).cloned().collect();
    assert_eq!(scales.len(), 3, "one token map per scale: {:?}", scales.keys());
    let parts: Vec<&HostTensor> = scales.values().collect();
    let joined = BTreeMap::from([("tokens".to_string(), cat1(&parts))]);
    let from_f_hat = BTreeMap::from([("f_hat".to_string(), f_hat.clone())]);
    for (what, given) in [("scale tokens", &scales), ("all tokens", &joined), ("f_hat", &from_f_hat)] {
        let (image, latent) = g.decode(given).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(image, out.image, "decode from {what}");
        assert_eq!(latent, Some(("f_hat".to_string(), f_hat.clone())), "decode from {what}");
    }
    // A scale short of tokens is refused with the forms the decoder takes.
    let mut short = joined["tokens"].clone();
    short.shape[1] -= 1;
    let n: usize = short.shape.iter().product();
    short.data = match &short.data {
        ecarc_runtime::tensor::Data::I64(v) => ecarc_runtime::tensor::Data::I64(v[..n].to_vec()),
        ecarc_runtime::tensor::Data::F32(v) => ecarc_runtime::tensor::Data::F32(v[..n].to_vec()),
    };
    let err = g.decode(&BTreeMap::from([("tokens".to_string(), short)])).unwrap_err().to_string();
    assert!(err.contains("takes i64[2, 21]"), "{err}");
}

/// A DD student's final sequence decodes (through the nearest codes) to the sampled image.
#[test]
fn dd_students_decode_from_their_final_sequence() {
    for name in ["var_dd", "llamagen_dd"] {
        let spec = tiny(name, &[]);
        let w = Weights::random(&spec, 0);
        let out = run(spec.clone(), &w, SampleOptions { labels: vec![3, 8], seed: 2, keep: Keep::Stages });
        let backend = Reference::new();
        let g = Generator::from_spec(spec, &backend, &w).unwrap();
        let last = out.stages.iter().rev().find(|(n, _)| n.starts_with("step.")).expect("a DD step").1.clone();
        let (image, _) = g.decode(&BTreeMap::from([("codes".to_string(), last)])).unwrap();
        assert_eq!(image, out.image, "{name}");
    }
}
