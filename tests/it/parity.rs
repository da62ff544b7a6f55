//! Parity with the official implementations. Each fixture in `tests/parity/` is a
//! tiny model exported from the reference code (FoundationVision/VAR,
//! FoundationVision/LlamaGen, facebookresearch/DiT, microsoft/distilled_decoding)
//! with every parameter re-randomised (including those the official init zeroes:
//! adaLN, final layers, gates, q/v biases, `scale_mul_1H11` on both sides of the
//! ln 100 clamp), so that every path of the forward matters:
//!
//! - `NAME.ecar`: our model file matching the official tiny configuration;
//! - `NAME.weights.safetensors`: the official `state_dict()` with its keys (f32;
//!   buffers included, which our loader must tolerate);
//! - `NAME.inputs.safetensors`: the forward's inputs by reference name;
//! - `NAME.outputs.safetensors`: the official outputs by reference name.
//!
//! Every output element must satisfy |a - e| <= 1e-4 + 1e-5 |e|.
//!
//! Generation and sampling fixtures (`NAME_gen`, `NAME_sample`) hold the official run's
//! inputs (labels, fixed noise or initial latent) and outputs (tokens, every DD step's
//! sequence, f_hat or the final latent, the float image in [0, 1]); the tiny official
//! tokenizers they decode through are `NAME.tokenizer.safetensors` (decoder, quantizer and
//! convs only, f16). Greedy decisions clear a tie by more than 1e-3, asserted both in the
//! export and here. The same runs go through `ecarc sample --save-tensors` and `ecarc decode`.

use crate::common::{root, spec_of};
use ecarc_compiler::plan::Keep;
use ecarc_compiler::ModelSpec;
use ecarc_runtime::backend::Backend;
use ecarc_runtime::cpu::Cpu;
use ecarc_runtime::driver::Generator;
use ecarc_runtime::reference::Reference;
use ecarc_runtime::tensor::HostTensor;
use ecarc_runtime::weights::{declared_tensors, read_tensors, write_tensors, TensorKind, Weights};
use std::collections::BTreeMap;
use std::path::PathBuf;

const ATOL: f32 = 1e-4;
const RTOL: f32 = 1e-5;

fn fixture(name: &str, kind: &str) -> PathBuf {
    root().join(format!("tests/parity/{name}.{kind}.safetensors"))
}

/// The fixture's model and its official weights. The file holds the
/// generator only, which is all a forward reads: it goes through the real
/// loader (declared keys, shapes, tolerated buffers) with the tokenizer's
/// tensors absent.
fn load(name: &str) -> (ModelSpec, Weights) {
    let spec = spec_of(&root().join(format!("tests/parity/{name}.ecar")), &[]);
    let program = ecarc_compiler::lower::lower(&spec, &Default::default()).expect("the fixture's model lowers");
    let needed = Generator::params_read(&program, Some(&["forward", "forward.guided"]));
    let official = fixture(name, "weights");
    let w = Weights::load_files_for(&[official.as_path()], &spec, Some(&needed))
        .unwrap_or_else(|e| panic!("{name}: the official state dict does not load: {e}"));
    assert!(
        w.absent_unused()
            .iter()
            .any(|k| declared_tensors(&spec).iter().any(|d| &d.key == k && d.kind == TensorKind::TokenizerParam)),
        "{name}: the generator-only file should leave the tokenizer's tensors absent"
    );
    (spec, w)
}

/// The largest |a - e| and the number of elements over the tolerance.
fn compare(a: &[f32], e: &[f32]) -> (f32, usize, Option<usize>) {
    let mut max = 0f32;
    let mut bad = 0;
    let mut first = None;
    for (i, (x, y)) in a.iter().zip(e).enumerate() {
        let d = (x - y).abs();
        if d.is_nan() || d > max {
            max = if d.is_nan() { f32::INFINITY } else { d };
        }
        // NaN is never within tolerance.
        let within = d <= ATOL + RTOL * y.abs();
        if !within {
            bad += 1;
            first.get_or_insert(i);
        }
    }
    (max, bad, first)
}

/// Every backend the fixtures run on: the reference, cpu, and wgpu (when an
/// adapter exists; `ECARC_REQUIRE_WGPU` makes its absence a failure).
fn backends() -> Vec<Box<dyn Backend>> {
    let mut all: Vec<Box<dyn Backend>> = vec![Box::new(Reference::new()), Box::new(Cpu::new())];
    if let Some(gpu) = crate::wgpu::device() {
        all.push(Box::new(gpu));
    }
    all
}

/// Run the forward on the fixture's inputs on every backend and compare
/// every output. `cfg`: DiT's guided forward.
fn check(name: &str, cfg: Option<f64>) {
    for backend in backends() {
        check_on(backend.as_ref(), name, cfg);
    }
}

/// [`check`] on one backend; returns the max error per output.
fn check_on(backend: &dyn Backend, name: &str, cfg: Option<f64>) -> Vec<(String, f32)> {
    let (spec, w) = load(name);
    let inputs: BTreeMap<String, HostTensor> = read_tensors(&fixture(name, "inputs")).expect("inputs");
    let expected = read_tensors(&fixture(name, "outputs")).expect("outputs");
    let g = Generator::from_spec(spec, backend, &w).expect("generator");
    let name = &format!("{name} on {}", backend.name());
    let got = g.forward(&inputs, cfg).unwrap_or_else(|e| panic!("{name}: forward: {e}"));
    let mut report = Vec::new();
    let mut failures = Vec::new();
    let wanted: Vec<&String> = expected.keys().filter(|k| (cfg.is_some()) == k.starts_with("cfg_")).collect();
    assert!(!wanted.is_empty(), "{name}: the fixture has no outputs to compare");
    for key in wanted {
        let e = &expected[key];
        let a = &got.iter().find(|(n, _)| n == key).unwrap_or_else(|| panic!("{name}: no output `{key}`")).1;
        assert_eq!(a.shape, e.shape, "{name}: `{key}` shape");
        let (av, ev) = (a.as_f32().expect("f32 output"), e.as_f32().expect("f32 fixture"));
        let (max, bad, first) = compare(av, ev);
        eprintln!("{name}: `{key}` {:?}: max |a - e| = {max:e}, {bad} over tolerance", e.shape);
        if bad > 0 {
            let i = first.unwrap_or(0);
            failures.push(format!(
                "`{key}`: {bad} of {} elements over {ATOL} + {RTOL}|e|; max |a - e| = {max:e}; first at flat index {i}: {} vs {}",
                ev.len(),
                av[i],
                ev[i]
            ));
        }
        report.push((key.clone(), max));
    }
    assert!(failures.is_empty(), "{name}: parity with the official implementation fails:\n{}", failures.join("\n"));
    report
}

#[test]
fn var_forward_matches_the_official_code() {
    check("var", None);
}

#[test]
fn llamagen_forward_matches_the_official_code() {
    check("llamagen", None);
}

#[test]
fn dit_forward_matches_the_official_code() {
    check("dit", None);
}

#[test]
fn dit_guided_forward_matches_the_official_code() {
    // forward_with_cfg(cfg_x, cfg_t, cfg_y, 4.0): guidance on eps channels [:3] only.
    check("dit", Some(4.0));
}

/// `forward_with_cfg` reads only the first half of the batch's latents (it
/// duplicates it; `t` and the labels are taken whole): with the second half
/// replaced by anything, the outputs are still the official ones.
#[test]
fn dit_guided_forward_uses_the_first_half_as_the_official_code_does() {
    let (spec, w) = load("dit");
    let mut inputs: BTreeMap<String, HostTensor> = read_tensors(&fixture("dit", "inputs")).expect("inputs");
    let expected = read_tensors(&fixture("dit", "outputs")).expect("outputs");
    let x = inputs.get_mut("cfg_x").expect("cfg_x");
    let v = match &mut x.data {
        ecarc_runtime::tensor::Data::F32(v) => v,
        _ => panic!("f32 latents"),
    };
    let half = v.len() / 2;
    for (i, e) in v[half..].iter_mut().enumerate() {
        *e = (i as f32 * 0.37).sin() * 3.0;
    }
    let backend = Reference::new();
    let g = Generator::from_spec(spec, &backend, &w).expect("generator");
    let got = g.forward(&inputs, Some(4.0)).expect("guided forward");
    let out = &got.iter().find(|(n, _)| n == "cfg_out").expect("cfg_out").1;
    let (max, bad, _) = compare(out.as_f32().unwrap(), expected["cfg_out"].as_f32().unwrap());
    assert_eq!(bad, 0, "the second half changed the guided output (max |a - e| = {max:e})");
}

/// Timesteps come as integers or floats, as the official code takes them.
#[test]
fn forwards_take_integer_or_float_timesteps() {
    // DiT's `t` is a float in the fixture; DD's is an integer.
    for (name, key) in [("dit", "t"), ("var_dd", "t")] {
        let (spec, w) = load(name);
        let inputs: BTreeMap<String, HostTensor> = read_tensors(&fixture(name, "inputs")).expect("inputs");
        let backend = Reference::new();
        let g = Generator::from_spec(spec, &backend, &w).expect("generator");
        let base = g.forward(&inputs, None).expect("forward");
        let t = &inputs[key];
        let other = match &t.data {
            ecarc_runtime::tensor::Data::F32(v) => {
                assert!(v.iter().all(|x| x.fract() == 0.0), "{name}: integral timesteps in the fixture");
                HostTensor::i64(t.shape.clone(), v.iter().map(|&x| x as i64).collect())
            }
            ecarc_runtime::tensor::Data::I64(v) => {
                HostTensor::f32(t.shape.clone(), v.iter().map(|&x| x as f32).collect())
            }
        };
        let mut changed = inputs.clone();
        changed.insert(key.to_string(), other);
        assert_eq!(g.forward(&changed, None).expect("forward"), base, "{name}: `{key}` as the other dtype");
        if name == "var_dd" {
            let mut frac = inputs.clone();
            frac.insert(key.to_string(), HostTensor::f32(vec![], vec![1.5]));
            let err = g.forward(&frac, None).unwrap_err().to_string();
            assert!(err.contains("not exactly i64"), "{err}");
        }
    }
}

#[test]
fn var_dd_forward_matches_the_official_code() {
    // t = 2: the class position and the teacher's 1x1 and 2x2 tokens are data.
    check("var_dd", None);
}

#[test]
fn llamagen_dd_forward_matches_the_official_code() {
    // t = 5: the class position and tokens 0..4 are data.
    check("llamagen_dd", None);
}

/// VAR greedy CFG generation end to end: the official `autoregressive_infer_cfg(B=2,
/// label_B=[1, 8], cfg=1.5, top_k=1)` with the var fixture's transformer and a tiny VQVAE
/// decoder (`var.tokenizer.safetensors`). Tokens per scale must be identical (every
/// decision clears a tie by more than 1e-3: the smallest top-1 / top-2 gap is 9e-3),
/// the image in [0, 1] within 1e-4.
#[test]
fn var_greedy_generation_matches_the_official_code() {
    for backend in backends() {
        var_greedy_generation_on(backend.as_ref());
    }
}

fn var_greedy_generation_on(backend: &dyn Backend) {
    use ecarc_runtime::driver::{Quiet, SampleOptions};
    let spec = spec_of(&root().join("tests/parity/var.ecar"), &["sample.top_k=1"]);
    let w = Weights::load_files(&[fixture("var", "weights").as_path(), fixture("var", "tokenizer").as_path()], &spec)
        .unwrap_or_else(|e| panic!("the official VAR and VQVAE state dicts do not load: {e}"));
    let inputs = read_tensors(&fixture("var_gen", "inputs")).expect("inputs");
    let expected = read_tensors(&fixture("var_gen", "outputs")).expect("outputs");
    let labels = inputs["labels"].as_i64().expect("i64 labels").to_vec();
    let g = Generator::from_spec(spec, backend, &w).expect("generator");
    let out = g.sample(&SampleOptions { labels, seed: 0, keep: Keep::Debug }, &Quiet).expect("sample");
    let on = backend.name();
    for k in 0..3 {
        let name = format!("stage.{k}.tokens");
        let got = &out.stages.iter().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("no `{name}`")).1;
        let e = &expected[&name];
        assert_eq!(got.as_i64().expect("i64 tokens"), e.as_i64().expect("i64 tokens"), "`{name}` differs on {on}");
    }
    let e = &expected["image"];
    assert_eq!(out.image.shape, e.shape, "image shape");
    let (max, bad, first) = compare(out.image.as_f32().unwrap(), e.as_f32().unwrap());
    eprintln!("var_gen on {on}: image {:?}: max |a - e| = {max:e}, {bad} over tolerance", e.shape);
    assert!(bad == 0, "{on}: image: {bad} elements over tolerance, max |a - e| = {max:e}, first at {first:?}");
}

// ---- generation and sampling from fixed noise -------------------------------------------

/// The model `NAME.ecar` with `sets`, the official generator state dict and the tiny
/// official tokenizer (`TOKENIZER.tokenizer.safetensors`, f16), through the real loader.
fn load_generator(name: &str, tokenizer: &str, sets: &[&str]) -> (ModelSpec, Weights) {
    load_model(name, name, tokenizer, sets)
}

/// As [`load_generator`] with the model file `MODEL.ecar` apart from the weights' name.
fn load_model(model: &str, name: &str, tokenizer: &str, sets: &[&str]) -> (ModelSpec, Weights) {
    let spec = spec_of(&root().join(format!("tests/parity/{model}.ecar")), sets);
    let w =
        Weights::load_files(&[fixture(name, "weights").as_path(), fixture(tokenizer, "tokenizer").as_path()], &spec)
            .unwrap_or_else(|e| panic!("{name}: the official generator and tokenizer state dicts do not load: {e}"));
    (spec, w)
}

/// Compare a float output within the tolerance; returns the max error.
fn assert_close(what: &str, got: &HostTensor, e: &HostTensor) -> f32 {
    assert_eq!(got.shape, e.shape, "{what}: shape");
    let (av, ev) = (got.as_f32().expect("f32 result"), e.as_f32().expect("f32 fixture"));
    let (max, bad, first) = compare(av, ev);
    eprintln!("{what} {:?}: max |a - e| = {max:e}, {bad} over tolerance", e.shape);
    if let Some(i) = first {
        panic!("{what}: {bad} of {} elements over {ATOL} + {RTOL}|e|; max |a - e| = {max:e}; first at flat index {i}: {} vs {}", ev.len(), av[i], ev[i]);
    }
    max
}

/// The tokens a categorical sample chose, every stage's `[N, n_k]` concatenated in order.
fn chosen_tokens(stages: &[(String, HostTensor)], images: usize) -> Vec<i64> {
    let parts: Vec<&HostTensor> =
        stages.iter().filter(|(n, _)| n.ends_with(".tokens") && !n.contains(".input.")).map(|(_, t)| t).collect();
    let mut rows = vec![Vec::new(); images];
    for t in parts {
        let v = t.as_i64().expect("i64 tokens");
        let per = v.len() / images;
        for (i, row) in rows.iter_mut().enumerate() {
            row.extend_from_slice(&v[i * per..(i + 1) * per]);
        }
    }
    rows.concat()
}

/// LlamaGen greedy CFG generation end to end: the official `generate(gpt, [3, 7], 16,
/// cfg_scale=4.0, top_k=1)` with the llamagen fixture's GPT, then `VQModel.decode_code`
/// through a tiny official VQ-16 decoder (`llamagen.tokenizer.safetensors`), the image
/// clamped to [-1, 1] and mapped by (x + 1) / 2 (sample_c2i.py's save_image with
/// normalize=True, value_range=(-1, 1); ecarc's decoder does the same). Every guided
/// decision clears a tie by more than 1e-3 (the smallest top-1 / top-2 gap is 4.2e-3).
#[test]
fn llamagen_greedy_generation_matches_the_official_code() {
    for backend in backends() {
        llamagen_greedy_generation_on(backend.as_ref());
    }
}

fn llamagen_greedy_generation_on(backend: &dyn Backend) {
    use ecarc_runtime::driver::{Quiet, SampleOptions};
    let (spec, w) = load_generator("llamagen", "llamagen", &["sample.top_k=1", "sample.cfg=4.0"]);
    let inputs = read_tensors(&fixture("llamagen_gen", "inputs")).expect("inputs");
    let expected = read_tensors(&fixture("llamagen_gen", "outputs")).expect("outputs");
    let labels = inputs["labels"].as_i64().expect("i64 labels").to_vec();
    let g = Generator::from_spec(spec, backend, &w).expect("generator");
    let out = g.sample(&SampleOptions { labels: labels.clone(), seed: 0, keep: Keep::Debug }, &Quiet).expect("sample");
    let on = backend.name();
    // The margin the fixture claims, on our guided logits.
    let margin = out
        .stages
        .iter()
        .filter(|(n, _)| n.ends_with(".logits"))
        .map(|(_, l)| {
            let v = l.as_f32().expect("f32 logits");
            let vocab = *l.shape.last().unwrap();
            v.chunks(vocab)
                .map(|row| {
                    let mut s = row.to_vec();
                    s.sort_by(|a, b| b.total_cmp(a));
                    s[0] - s[1]
                })
                .fold(f32::INFINITY, f32::min)
        })
        .fold(f32::INFINITY, f32::min);
    eprintln!("llamagen_gen on {on}: smallest guided top-1 / top-2 gap {margin}");
    assert!(margin > 1e-3, "{on}: a greedy decision is within 1e-3 of a tie ({margin})");
    let got = chosen_tokens(&out.stages, labels.len());
    assert_eq!(got, expected["tokens"].as_i64().expect("i64 tokens"), "tokens differ on {on}");
    assert_close(&format!("llamagen_gen on {on}: image"), &out.image, &expected["image"]);
}

/// The smallest top-1 / top-2 gap of `logits [N, L, V]` over positions `from..to`.
fn argmax_margin(logits: &HostTensor, from: usize, to: usize) -> f32 {
    let (l, v) = (logits.shape[1], logits.shape[2]);
    let lv = logits.as_f32().expect("f32 logits");
    let mut m = f32::INFINITY;
    for n in 0..logits.shape[0] {
        for p in from..to {
            let mut row = lv[(n * l + p) * v..(n * l + p + 1) * v].to_vec();
            row.sort_by(|a, b| b.total_cmp(a));
            m = m.min(row[0] - row[1]);
        }
    }
    m
}

/// Distilled Decoding from the fixture's noise: `sample_from` with `distill.steps`,
/// `distill.split`, `distill.greedy_prefix` as the official run had them, against the
/// official final sequence after each step, f_hat (VAR-DD) and image. The greedy decisions
/// from the logits (positions before the greedy prefix that are not data) are re-checked on
/// our forward: each clears a tie by more than 1e-3.
fn check_dd_sample(name: &str, label_key: &str, case: &str, sets: &[&str], tokenizer: &str) {
    for backend in backends() {
        let on = format!("{case} on {}", backend.name());
        check_dd_sample_on(backend.as_ref(), name, label_key, &on, case, sets, tokenizer);
    }
}

/// [`check_dd_sample`] on one backend; `case` names the fixture's run,
/// `what` the run in messages.
fn check_dd_sample_on(
    backend: &dyn Backend,
    name: &str,
    label_key: &str,
    what: &str,
    case: &str,
    sets: &[&str],
    tokenizer: &str,
) {
    use ecarc_runtime::driver::{Quiet, SampleOptions};
    let (spec, w) = load_generator(name, tokenizer, sets);
    let inputs = read_tensors(&fixture(&format!("{name}_sample"), "inputs")).expect("inputs");
    let expected = read_tensors(&fixture(&format!("{name}_sample"), "outputs")).expect("outputs");
    let labels = inputs["labels"].as_i64().expect("i64 labels").to_vec();
    let noise = &inputs["noise"];
    let distill = spec.distill.clone().expect("a distilled model");
    let g = Generator::from_spec(spec, backend, &w).expect("generator");
    let opts = SampleOptions { labels: labels.clone(), seed: 0, keep: Keep::Debug };
    let out = g.sample_from(&opts, Some(noise), &Quiet).unwrap_or_else(|e| panic!("{name} {what}: sample: {e}"));

    // Where the greedy decisions from the logits are, step by step.
    let layout = &g.program.layout;
    let greedy = (layout.data_len(distill.greedy_prefix) as usize).min(noise.shape[1]);
    let t_list = if distill.steps == 1 { vec![0] } else { vec![0, distill.split] };
    let mut x = noise.clone();
    for (i, &t) in t_list.iter().enumerate() {
        let data = (layout.data_len(t) as usize).min(noise.shape[1]);
        // The step's input: the data prefix of the previous result, then the noise.
        let (l, dim) = (noise.shape[1], noise.shape[2]);
        let (xv, nv) = (x.as_f32().unwrap(), noise.as_f32().unwrap());
        let x_in: Vec<f32> = (0..xv.len()).map(|j| if (j / dim) % l < data { xv[j] } else { nv[j] }).collect();
        if greedy > data {
            let fwd_in: BTreeMap<String, HostTensor> = [
                (label_key.to_string(), HostTensor::i64(vec![labels.len()], labels.clone())),
                ("x".to_string(), HostTensor::f32(noise.shape.clone(), x_in)),
                ("t".to_string(), HostTensor::i64(vec![], vec![t as i64])),
            ]
            .into_iter()
            .collect();
            let f = g.forward(&fwd_in, None).expect("forward");
            let logits = &f.iter().find(|(n, _)| n == "logits").expect("logits").1;
            let m = argmax_margin(logits, data, greedy);
            eprintln!("{name} {what}: step {i}: smallest top-1 / top-2 gap over positions {data}..{greedy}: {m}");
            assert!(m > 1e-3, "{name} {what}: a greedy decision is within 1e-3 of a tie ({m})");
        }
        let key = format!("step.{i}.x");
        let got = &out.stages.iter().find(|(n, _)| *n == key).unwrap_or_else(|| panic!("no `{key}`")).1;
        assert_close(&format!("{name} {what}: {key}"), got, &expected[&format!("{case}.{key}")]);
        x = got.clone();
    }
    if let Some(f) = expected.get(&format!("{case}.f_hat")) {
        let (latent_name, latent) = out.latent.as_ref().expect("the decoder's input is kept");
        assert_eq!(latent_name, "f_hat");
        assert_close(&format!("{name} {what}: f_hat"), latent, f);
    }
    assert_close(&format!("{name} {what}: image"), &out.image, &expected[&format!("{case}.image")]);
}

/// VAR-DD, sample.py from fixed noise: 1 step (t_list [0]), split 2 (the first 5 tokens,
/// teacher scales 1x1 and 2x2, greedy from the logits, the 4x4 scale continuous), then the
/// residual accumulation through the tiny official VQVAE (var.tokenizer.safetensors).
#[test]
fn var_dd_one_step_sampling_matches_the_official_code() {
    check_dd_sample("var_dd", "label_B", "1step", &["distill.steps=1", "distill.split=2"], "var");
}

/// VAR-DD, 2 steps (t_list [0, 2], loss_split_t 2): the 2nd step keeps the first 5 tokens
/// (data: snapped to their nearest codes) and re-noises the rest with the same noise.
#[test]
fn var_dd_two_step_sampling_matches_the_official_code() {
    check_dd_sample("var_dd", "label_B", "2step", &["distill.steps=2", "distill.split=2"], "var");
}

/// VAR-DD, 2 steps with loss_split_t 1 (greedy prefix 1 scale < the 2 data scales): data
/// tokens past the greedy prefix keep their (continuous) input.
#[test]
fn var_dd_two_step_sampling_with_a_shorter_greedy_prefix_matches_the_official_code() {
    check_dd_sample(
        "var_dd",
        "label_B",
        "2step_split1",
        &["distill.steps=2", "distill.split=2", "distill.greedy_prefix=1"],
        "var",
    );
}

/// LlamaGen-DD, eval_fewstep.py from fixed noise: 1 step (t_list [0], split_t 5: tokens
/// 0..4 greedy from the logits on the normalised codebook, the rest continuous), decoded by
/// the tiny official VQ-16 (llamagen.tokenizer.safetensors) without re-quantisation.
#[test]
fn llamagen_dd_one_step_sampling_matches_the_official_code() {
    check_dd_sample("llamagen_dd", "cond_idx", "1step", &["distill.steps=1", "distill.split=5"], "llamagen");
}

/// LlamaGen-DD, 2 steps (t_list [0, 5], split_t 5: LlamaGen-DD-B's rule).
#[test]
fn llamagen_dd_two_step_sampling_matches_the_official_code() {
    check_dd_sample("llamagen_dd", "cond_idx", "2step", &["distill.steps=2", "distill.split=5"], "llamagen");
}

/// LlamaGen-DD, 2 steps (t_list [0, 5]) with split_t 8 (LlamaGen-DD-L's rule: the greedy
/// prefix reaches past the re-noise point, so tokens 5..7 of the 2nd step are argmax codes).
#[test]
fn llamagen_dd_two_step_sampling_with_a_longer_greedy_prefix_matches_the_official_code() {
    check_dd_sample(
        "llamagen_dd",
        "cond_idx",
        "2step_split8",
        &["distill.steps=2", "distill.split=5", "distill.greedy_prefix=8"],
        "llamagen",
    );
}

/// DiT DDIM (eta 0) sampling with CFG 4 on the first 3 channels from the fixture's initial
/// latent: the official `ddim_sample_loop(forward_with_cfg, clip_denoised=False)` of
/// `create_diffusion("7")` (respaced timesteps [0, 166, 333, 500, 666, 832, 999], the model fed
/// the original index), then the tiny diffusers AutoencoderKL decoder (dit.tokenizer.safetensors):
/// `decode(latent / 0.18215)` clamped to [-1, 1], (x + 1) / 2.
#[test]
fn dit_ddim_sampling_matches_the_official_code() {
    for backend in backends() {
        dit_ddim_sampling_on(backend.as_ref());
    }
}

fn dit_ddim_sampling_on(backend: &dyn Backend) {
    use ecarc_runtime::driver::{Quiet, SampleOptions};
    let (spec, w) = load_model("dit_sample", "dit", "dit", &[]);
    let inputs = read_tensors(&fixture("dit_sample", "inputs")).expect("inputs");
    let expected = read_tensors(&fixture("dit_sample", "outputs")).expect("outputs");
    let labels = inputs["labels"].as_i64().expect("i64 labels").to_vec();
    let g = Generator::from_spec(spec, backend, &w).expect("generator");
    let opts = SampleOptions { labels, seed: 0, keep: Keep::Debug };
    let out = g.sample_from(&opts, Some(&inputs["latent"]), &Quiet).expect("sample");
    let (latent_name, latent) = out.latent.as_ref().expect("the decoder's input is kept");
    assert_eq!(latent_name, "latent");
    let on = backend.name();
    assert_close(&format!("dit_sample on {on}: latent"), latent, &expected["latent"]);
    assert_close(&format!("dit_sample on {on}: image"), &out.image, &expected["image"]);
}

// ---- the same through the CLI: `ecarc sample --save-tensors`, `ecarc decode` -------------

fn ecarc(args: &[&str]) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ecarc"))
        .arg("--color")
        .arg("never")
        .args(args)
        .output()
        .expect("run ecarc");
    assert!(out.status.success(), "ecarc {} failed:\n{}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// A fresh directory for one CLI parity test.
fn cli_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ecarc-parity-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn path_str(p: &std::path::Path) -> String {
    p.to_str().expect("utf-8 path").to_string()
}

/// `ecarc sample --save-tensors` on a greedy generation fixture, then `ecarc decode` on the
/// saved decoder input: tokens and both float images against the official ones.
fn check_cli_generation(model: &str, fixture_name: &str, classes: &str, flags: &[&str], latent: &str) {
    let d = cli_dir(fixture_name);
    let ecar = path_str(&root().join(format!("tests/parity/{model}.ecar")));
    let (w, t) = (path_str(&fixture(model, "weights")), path_str(&fixture(model, "tokenizer")));
    let (png, saved, decoded) = (d.join("out.png"), d.join("sample.safetensors"), d.join("decoded.safetensors"));
    let mut args = vec!["sample", &ecar, "--weights", &w, "--weights", &t, "--class", classes, "--seed", "0"];
    args.extend_from_slice(flags);
    let (png_s, saved_s, decoded_s) = (path_str(&png), path_str(&saved), path_str(&decoded));
    args.extend_from_slice(&["-o", &png_s, "--save-tensors", &saved_s]);
    ecarc(&args);
    let expected = read_tensors(&fixture(fixture_name, "outputs")).expect("outputs");
    let got = read_tensors(&saved).expect("ecarc sample --save-tensors output");
    let images = expected["image"].shape[0];
    // The file's order is lexicographic: put `stage.K.*` in numeric order of K.
    let mut stages: Vec<(usize, (String, HostTensor))> = got
        .iter()
        .filter_map(|(k, v)| {
            let stage = k.strip_prefix("stage.")?.split('.').next()?.parse::<usize>().ok()?;
            Some((stage, (k.clone(), v.clone())))
        })
        .collect();
    stages.sort_by_key(|(k, _)| *k);
    let stages: Vec<(String, HostTensor)> = stages.into_iter().map(|(_, s)| s).collect();
    // The official tokens: `tokens [N, L]` (LlamaGen) or `stage.K.tokens` per scale (VAR).
    let want: Vec<i64> = match expected.get("tokens") {
        Some(t) => t.as_i64().expect("i64 tokens").to_vec(),
        None => {
            let named: Vec<(String, HostTensor)> = (0..)
                .map(|k| format!("stage.{k}.tokens"))
                .map_while(|n| expected.get(&n).map(|t| (n.clone(), t.clone())))
                .collect();
            chosen_tokens(&named, images)
        }
    };
    assert_eq!(chosen_tokens(&stages, images), want, "{fixture_name}: `ecarc sample` chose other tokens");
    assert_close(&format!("{fixture_name}: `ecarc sample` image"), &got["image"], &expected["image"]);
    assert!(got.contains_key(&format!("latent.{latent}")), "{fixture_name}: no `latent.{latent}` saved");
    ecarc(&["decode", &ecar, "--weights", &w, "--weights", &t, "--tokens", &saved_s, "-o", &decoded_s]);
    let image = &read_tensors(&decoded).expect("ecarc decode output")["image"];
    assert_close(&format!("{fixture_name}: `ecarc decode` image"), image, &expected["image"]);
    let _ = std::fs::remove_dir_all(&d);
}

/// LlamaGen greedy CFG generation through `ecarc sample --top-k 1 --cfg 4 --save-tensors`,
/// then `ecarc decode` of the saved `latent.tokens` through the tiny official VQ-16 decoder.
#[test]
fn cli_llamagen_sample_and_decode_match_the_official_code() {
    check_cli_generation("llamagen", "llamagen_gen", "3,7", &["--top-k", "1", "--cfg", "4"], "tokens");
}

/// VAR greedy CFG generation (cfg 1.5, the model's linear schedule) through `ecarc sample
/// --top-k 1 --save-tensors`, then `ecarc decode` of the saved `latent.f_hat`.
#[test]
fn cli_var_sample_and_decode_match_the_official_code() {
    check_cli_generation("var", "var_gen", "1,8", &["--top-k", "1"], "f_hat");
}

/// `ecarc decode` on the official decoder inputs of the sampling fixtures (DiT's final latent,
/// VAR-DD's f_hat, LlamaGen-DD's continuous codes) against the official images.
#[test]
fn cli_decode_matches_the_official_decoders() {
    let d = cli_dir("decode");
    let cases = [
        ("dit_sample", "dit", "dit", "dit_sample", "latent", "latent"),
        ("var_dd", "var_dd", "var", "var_dd_sample", "2step.f_hat", "f_hat"),
        ("llamagen_dd", "llamagen_dd", "llamagen", "llamagen_dd_sample", "2step.step.1.x", "codes"),
    ];
    for (model, weights, tokenizer, fixture_name, key, input) in cases {
        let expected = read_tensors(&fixture(fixture_name, "outputs")).expect("outputs");
        let given = d.join(format!("{fixture_name}.in.safetensors"));
        write_tensors(&given, &[(input, &expected[key])]).expect("write the decoder input");
        let out = d.join(format!("{fixture_name}.image.safetensors"));
        let ecar = path_str(&root().join(format!("tests/parity/{model}.ecar")));
        let (w, t) = (path_str(&fixture(weights, "weights")), path_str(&fixture(tokenizer, "tokenizer")));
        ecarc(&[
            "decode",
            &ecar,
            "--weights",
            &w,
            "--weights",
            &t,
            "--tokens",
            &path_str(&given),
            "-o",
            &path_str(&out),
        ]);
        let image = &read_tensors(&out).expect("ecarc decode output")["image"];
        let want = expected.get("image").or_else(|| expected.get("2step.image")).expect("official image");
        assert_close(&format!("{fixture_name}: `ecarc decode` of the official `{key}`"), image, want);
    }
    let _ = std::fs::remove_dir_all(&d);
}
