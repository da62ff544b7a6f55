//! Tests of declarations, random initialisation, loading with its report,
//! and named-tensor files.

use super::files::TensorRef;
use super::*;
use ecarc_compiler::session::{check_paths, Outcome, Override};
use ecarc_compiler::spec::{ParamGroupSpec, RepeatSpec, TensorSpec};
use safetensors::{Dtype, View};
use std::borrow::Cow;
use std::path::PathBuf;

const TOKENIZER: [&str; 2] = ["tokenizer.channels=32", "tokenizer.z_channels=8"];
const SMALL: [&str; 3] = ["backbone.depth=1", "backbone.width=64", "backbone.heads=4"];

fn spec_of(model: &str, sets: &[&str]) -> ModelSpec {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models").join(format!("{model}.ecar"));
    let sets: Vec<Override> = sets.iter().chain(&TOKENIZER).map(|s| s.parse().expect("valid --set")).collect();
    let s = check_paths(&[&path], &sets);
    assert!(!s.has_errors(), "{model} does not check:\n{}", s.render_diags());
    match s.models.into_iter().next().map(|m| m.outcome) {
        Some(Outcome::Model(spec)) => *spec,
        other => panic!("{model}: expected one model, got {other:?}"),
    }
}

/// Tiny variants of real models (well under a million values each).
fn tiny_models() -> Vec<(&'static str, ModelSpec)> {
    let small = |extra: &[&'static str]| [&SMALL[..], extra].concat();
    vec![
        ("var_d16", spec_of("var_d16", &["backbone.depth=1"])),
        ("var_d16_dd", spec_of("var_d16_dd", &["backbone.depth=1"])),
        ("llamagen_b", spec_of("llamagen_b", &small(&["tokenizer.vocab=256"]))),
        ("llamagen_b_dd", spec_of("llamagen_b_dd", &small(&["tokenizer.vocab=256"]))),
        ("dit_s2", spec_of("dit_s2", &small(&[]))),
        ("ecar_b", spec_of("ecar_b", &small(&["head.width=64", "head.depth=1"]))),
    ]
}

fn tiny_var() -> ModelSpec {
    spec_of("var_d16", &["backbone.depth=1"])
}

/// Serialise named tensors as `write_tensors` does, in memory.
fn bytes_of(tensors: &[(&str, &HostTensor)]) -> Vec<u8> {
    safetensors::serialize(tensors.iter().map(|(n, t)| (*n, TensorRef(t))), None).unwrap()
}

fn bytes_of_weights(w: &Weights) -> Vec<u8> {
    bytes_of(&w.iter().collect::<Vec<_>>())
}

fn load_bytes(bytes: &[u8], spec: &ModelSpec) -> Result<Weights> {
    Weights::from_bytes(&[("w.safetensors".to_string(), bytes)], spec)
}

fn problems(r: Result<Weights>) -> Vec<String> {
    match r {
        Err(RuntimeError::Weights { file, problems }) => {
            assert_eq!(file, "w.safetensors");
            problems
        }
        other => panic!("expected a weights error, got {other:?}"),
    }
}

fn assert_same(a: &Weights, b: &Weights) {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, t) in a.iter() {
        assert!(b.get(k) == Some(t), "`{k}` differs");
    }
}

#[test]
fn every_role_has_an_init_rule() {
    for (role, _) in ecarc_compiler::roles::ROLES {
        assert!(init_for(role, &[8, 4]).is_some(), "role `{role}` has no initialisation rule: add it to the table");
    }
}

#[test]
fn random_covers_exactly_the_declared_params() {
    for (name, spec) in tiny_models() {
        let w = Weights::random(&spec, 0);
        let declared = declared_tensors(&spec);
        let params: BTreeMap<&str, &Vec<usize>> =
            declared.iter().filter(|d| d.kind.is_param()).map(|d| (d.key.as_str(), &d.shape)).collect();
        assert_eq!(w.keys().collect::<Vec<_>>(), params.keys().copied().collect::<Vec<_>>(), "{name}");
        for (k, t) in w.iter() {
            assert_eq!(&t.shape, params[k], "{name}: `{k}`");
        }
        assert!(declared.iter().filter(|d| !d.kind.is_param()).all(|d| !w.contains(&d.key)), "{name}: a buffer");
        assert_eq!(w.numel() as u128, spec.param_count() + spec.tokenizer_param_count(), "{name}");
        // Keys are unique across generator, tokenizer and buffers.
        let keys: BTreeSet<&str> = declared.iter().map(|d| d.key.as_str()).collect();
        assert_eq!(keys.len(), declared.len(), "{name}: a key declared twice");
    }
}

#[test]
fn random_is_deterministic_and_keyed() {
    let spec = tiny_var();
    let (a, b, c) = (Weights::random(&spec, 5), Weights::random(&spec, 5), Weights::random(&spec, 6));
    assert_same(&a, &b);
    assert_eq!(a.source(), "random (seed 5)");
    for (k, t) in a.iter() {
        let varies = init_for(&declared_role(&spec, k), &t.shape).unwrap().std > 0.0;
        assert_eq!(c.get(k) != Some(t), varies, "`{k}`: another seed should give other values");
    }
    // Each tensor has its own stream: one more layer changes no existing tensor.
    let one = Weights::random(&spec_of("llamagen_b", &[&SMALL[..], &["tokenizer.vocab=256"]].concat()), 1);
    let two = Weights::random(
        &spec_of("llamagen_b", &["backbone.depth=2", "backbone.width=64", "backbone.heads=4", "tokenizer.vocab=256"]),
        1,
    );
    assert!(two.len() > one.len());
    for (k, t) in one.iter() {
        assert!(two.get(k) == Some(t), "`{k}` changed when a layer was added");
    }
}

fn declared_role(spec: &ModelSpec, key: &str) -> String {
    declared_tensors(spec).into_iter().find(|d| d.key == key).unwrap().role
}

#[test]
fn random_values_follow_the_table() {
    for (name, spec) in tiny_models() {
        let w = Weights::random(&spec, 11);
        for d in declared_tensors(&spec).iter().filter(|d| d.kind.is_param()) {
            let v = w.get(&d.key).unwrap().as_f32().unwrap();
            assert!(v.iter().all(|x| x.is_finite()), "{name}: `{}` not finite", d.key);
            if d.role == "pos_table" && spec.backbone.positions == PositionEncoding::Sincos2d {
                // The fixed table itself, not a random draw.
                let g = spec.schedule.final_grid();
                let want = sincos_2d(d.shape[2], g[0] as usize, g[1] as usize, d.shape.clone());
                assert_eq!(w.get(&d.key), Some(&want), "{name}");
                continue;
            }
            let init = init_for(&d.role, &d.shape).unwrap();
            let n = v.len() as f64;
            let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
            let std = (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
            if init.std == 0.0 {
                assert!(v.iter().all(|&x| x == init.mean), "{name}: `{}`", d.key);
                continue;
            }
            if v.len() > 1 {
                assert!(std > 0.0, "{name}: `{}` is constant", d.key);
            }
            if v.len() >= 1000 {
                let (want_mean, want_std) = (init.mean as f64, init.std as f64);
                assert!((std / want_std - 1.0).abs() < 0.1, "{name}: `{}` std {std}, want {want_std}", d.key);
                assert!((mean - want_mean).abs() < 5.0 * want_std / n.sqrt(), "{name}: `{}` mean {mean}", d.key);
            }
        }
    }
}

#[test]
fn init_table_examples() {
    let shape = [6144, 1024];
    assert_eq!(init_for("ada", &shape), Some(Init { mean: 0.0, std: 1.0 / 32.0 }));
    assert_eq!(init_for("dec_conv1", &[128, 64, 3, 3]), Some(Init { mean: 0.0, std: 1.0 / 24.0 }));
    assert_eq!(init_for("enc_downsample", &[64, 64, 3, 3]), Some(Init { mean: 0.0, std: 1.0 / 24.0 }));
    assert_eq!(init_for("enc_attn_norm", &[64]), Some(Init { mean: 1.0, std: 0.1 }));
    assert_eq!(init_for("enc_conv_out_bias", &[32]), Some(Init { mean: 0.0, std: 0.02 }));
    assert_eq!(init_for("ffn_norm", &[64]), Some(Init { mean: 1.0, std: 0.1 }));
    assert_eq!(init_for("q_bias", &[64]), Some(Init { mean: 0.0, std: 0.02 }));
    assert_eq!(init_for("class_table", &[1001, 64]), Some(Init { mean: 0.0, std: 1.0 }));
    assert_eq!(init_for("qk_scale", &[1, 16, 1, 1]), Some(Init { mean: 4f32.ln(), std: 0.1 }));
    assert_eq!(init_for("dd_scale_shift", &[2, 64]), Some(Init { mean: 0.0, std: 0.125 }));
    assert_eq!(init_for("no_such_role", &[2, 64]), None);
    assert_eq!(init_or_fallback("no_such_role", &[2, 64]), Init { mean: 0.0, std: 0.125 });
    assert_eq!(init_or_fallback("no_such_role", &[64]), Init { mean: 0.0, std: 0.02 });
}

#[test]
fn save_then_load_is_identical() {
    let spec = tiny_var();
    let w = Weights::random(&spec, 3);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.safetensors");
    w.save(&path).unwrap();
    let back = Weights::load(&path, &spec).unwrap();
    assert_same(&w, &back);
    assert_eq!(back.source(), path.display().to_string());
    assert_eq!(back.buffers_in_file().count(), 0);
    // Keys are stored sorted, and the temporary file is gone.
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let order = meta.offset_keys();
    assert!(order.windows(2).all(|p| p[0] < p[1]));
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["tiny.safetensors"]);
    // Saving again replaces the file.
    Weights::random(&spec, 4).save(&path).unwrap();
    assert_same(&Weights::load(&path, &spec).unwrap(), &Weights::random(&spec, 4));
}

#[test]
fn one_problem_per_mistake() {
    let spec = tiny_var();
    let w = Weights::random(&spec, 0);
    let check = |edit: &dyn Fn(&mut Weights), want: &[&str]| {
        let mut v = w.clone();
        edit(&mut v);
        assert_eq!(problems(load_bytes(&bytes_of_weights(&v), &spec)), want);
    };
    let proj = "blocks.0.attn.proj.weight";
    check(&|v| drop(v.remove(proj)), &["missing `blocks.0.attn.proj.weight` [64, 64] (attn_out of backbone.block)"]);
    check(
        &|v| {
            let t = v.remove(proj).unwrap();
            v.insert("blocks.0.attn.proj.weigth", t);
        },
        &["unexpected `blocks.0.attn.proj.weigth` [64, 64]: did you mean `blocks.0.attn.proj.weight` [64, 64], which is missing?"],
    );
    check(
        &|v| drop(v.insert("head.weight", HostTensor::zeros(ecarc_compiler::ir::DType::F32, vec![4096, 32]))),
        &["`head.weight` has shape [4096, 32], expected [4096, 64]"],
    );
    check(
        &|v| drop(v.insert("head.weight", HostTensor::zeros(ecarc_compiler::ir::DType::F32, vec![64, 4096]))),
        &["`head.weight` has shape [64, 4096], expected [4096, 64] (transposed?)"],
    );
    check(
        &|v| drop(v.insert("pos_start", HostTensor::zeros(ecarc_compiler::ir::DType::F32, vec![64]))),
        &["`pos_start` has shape [64], expected [1, 1, 64] (the same number of elements: reshape it when converting)"],
    );
    check(
        &|v| drop(v.insert("blocks.1.attn.proj.weight", v.get(proj).unwrap().clone())),
        &["unexpected `blocks.1.attn.proj.weight` [64, 64]: the model declares no such tensor"],
    );
    check(
        &|v| v.tensors.get_mut("head.bias").unwrap().as_f32_mut().unwrap()[7] = f32::NAN,
        &["`head.bias` has 1 non-finite value(s) (the first at flat index 7)"],
    );
    // Several mistakes at once: every one, in declaration order, then the unexpected ones.
    check(
        &|v| {
            v.remove("pos_start");
            let t = v.remove(proj).unwrap();
            v.insert("blocks.0.attn.proj.weigth", t);
            v.insert("head.bias", HostTensor::zeros(ecarc_compiler::ir::DType::F32, vec![4095]));
            v.insert("extra", HostTensor::scalar(1.0));
        },
        &[
            "missing `pos_start` [1, 1, 64] (pos_start of backbone)",
            "`head.bias` has shape [4095], expected [4096]",
            "unexpected `blocks.0.attn.proj.weigth` [64, 64]: did you mean `blocks.0.attn.proj.weight` [64, 64], which is missing?",
            "unexpected `extra` []: the model declares no such tensor",
        ],
    );
}

#[test]
fn dtypes_and_buffers() {
    let spec = tiny_var();
    let w = Weights::random(&spec, 0);
    let mut named: Vec<(&str, &HostTensor)> = w.iter().collect();
    // A param stored as integers.
    let ints = HostTensor::i64(vec![4096], vec![0; 4096]);
    let mut bad = named.clone();
    bad.retain(|(k, _)| *k != "head.bias");
    bad.push(("head.bias", &ints));
    assert_eq!(
        problems(load_bytes(&bytes_of(&bad), &spec)),
        ["`head.bias` has dtype I64, expected a float type (F32, F16, BF16 or F64)"]
    );
    // Buffers may be present (any dtype), checked by shape, and are not loaded.
    let levels = HostTensor::i64(vec![1, 680], vec![0; 680]);
    let zero_k = HostTensor::f32(vec![64], vec![0.0; 64]);
    named.push(("lvl_1L", &levels));
    named.push(("blocks.0.attn.zero_k_bias", &zero_k));
    let loaded = load_bytes(&bytes_of(&named), &spec).unwrap();
    assert_same(&loaded, &w);
    assert_eq!(loaded.buffers_in_file().collect::<Vec<_>>(), ["blocks.0.attn.zero_k_bias", "lvl_1L"]);
    let short = HostTensor::i64(vec![1, 600], vec![0; 600]);
    named.retain(|(k, _)| *k != "lvl_1L");
    named.push(("lvl_1L", &short));
    assert_eq!(
        problems(load_bytes(&bytes_of(&named), &spec)),
        ["buffer `lvl_1L` has shape [1, 600], expected [1, 680] (buffers may be left out, but must match when present)"]
    );
}

/// A stored tensor of any dtype.
struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}
impl View for &Raw {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

#[test]
fn half_precision_files_load_as_f32() {
    let spec = tiny_var();
    let w = Weights::random(&spec, 2);
    for dtype in [Dtype::F16, Dtype::BF16, Dtype::F64] {
        let raw: Vec<(String, Raw)> = w
            .iter()
            .map(|(k, t)| {
                let v = t.as_f32().unwrap();
                let bytes = match dtype {
                    Dtype::F16 => v.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect(),
                    Dtype::BF16 => v.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect(),
                    _ => v.iter().flat_map(|&x| (x as f64).to_le_bytes()).collect(),
                };
                (k.to_string(), Raw { dtype, shape: t.shape.clone(), bytes })
            })
            .collect();
        let bytes = safetensors::serialize(raw.iter().map(|(k, r)| (k.as_str(), r)), None).unwrap();
        let back = load_bytes(&bytes, &spec).unwrap();
        for (k, t) in w.iter() {
            let want: Vec<f32> = match dtype {
                Dtype::F16 => t.as_f32().unwrap().iter().map(|&x| half::f16::from_f32(x).to_f32()).collect(),
                Dtype::BF16 => t.as_f32().unwrap().iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect(),
                _ => t.as_f32().unwrap().to_vec(),
            };
            assert_eq!(back.get(k).unwrap().as_f32().unwrap(), want, "{dtype:?} `{k}`");
        }
    }
}

#[test]
fn a_wrapped_checkpoint_is_one_problem() {
    let spec = tiny_var();
    let w = Weights::random(&spec, 0);
    let wrapped: Vec<(String, &HostTensor)> = w.iter().map(|(k, t)| (format!("model.{k}"), t)).collect();
    let named: Vec<(&str, &HostTensor)> = wrapped.iter().map(|(k, t)| (k.as_str(), *t)).collect();
    assert_eq!(
        problems(load_bytes(&bytes_of(&named), &spec)),
        [format!(
            "{} tensors are stored under an extra prefix `model.` (e.g. `model.blocks.0.ada_lin.1.bias` for `blocks.0.ada_lin.1.bias`): strip it when converting the checkpoint",
            w.len()
        )]
    );
}

#[test]
fn generator_and_tokenizer_in_two_files() {
    let spec = tiny_var();
    let w = Weights::random(&spec, 9);
    let tok: BTreeSet<String> =
        declared_tensors(&spec).into_iter().filter(|d| d.kind == TensorKind::TokenizerParam).map(|d| d.key).collect();
    let (t, g): (Vec<_>, Vec<_>) = w.iter().partition(|(k, _)| tok.contains(*k));
    let (gb, tb) = (bytes_of(&g), bytes_of(&t));
    let both = Weights::from_bytes(&[("gen".into(), &gb), ("tok".into(), &tb)], &spec).unwrap();
    assert_same(&both, &w);
    assert_eq!(both.source(), "gen + tok");
    // Only the generator: every tokenizer tensor is missing, but the encoder (optional as a whole).
    let encoder = declared_tensors(&spec).iter().filter(|d| d.is_encoder()).count();
    assert!(encoder > 0);
    assert_eq!(problems(load_bytes(&gb, &spec)).len(), tok.len() - encoder);
    // A tensor in both files.
    let mut t2 = t.clone();
    t2.push(g[0]);
    let tb2 = bytes_of(&t2);
    match Weights::from_bytes(&[("gen".into(), &gb), ("tok".into(), &tb2)], &spec) {
        Err(RuntimeError::Weights { file, problems }) => {
            assert_eq!(file, "gen + tok");
            assert_eq!(problems, [format!("`{}` is stored in both gen and tok", g[0].0)]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_tokenizer_encoder_is_optional_as_a_whole() {
    let spec = tiny_var();
    let w = Weights::random(&spec, 3);
    assert!(w.absent_encoder().is_empty());
    let encoder: Vec<String> = declared_tensors(&spec).into_iter().filter(|d| d.is_encoder()).map(|d| d.key).collect();
    // The reference VQVAE's encoder: conv_in, 5 levels, the middle, norm_out and conv_out.
    assert_eq!(encoder.len(), 132);
    assert!(encoder.iter().all(|k| k.starts_with("encoder.")));
    let without = |keep: &[&str]| {
        let mut v = w.clone();
        encoder.iter().filter(|k| !keep.contains(&k.as_str())).for_each(|k| drop(v.remove(k)));
        v
    };
    // Complete: loaded, nothing absent.
    let all = load_bytes(&bytes_of_weights(&w), &spec).unwrap();
    assert_same(&all, &w);
    assert!(all.absent_encoder().is_empty());
    // No encoder at all (a decoder-only tokenizer file): loads, and says which tensors are absent.
    let decoder_only = without(&[]);
    let loaded = load_bytes(&bytes_of_weights(&decoder_only), &spec).unwrap();
    assert_same(&loaded, &decoder_only);
    assert_eq!(loaded.absent_encoder(), encoder.as_slice());
    assert_eq!(loaded.len() + encoder.len(), w.len());
    // Once any encoder tensor is stored, all are required, as every other parameter.
    let mut one_missing = w.clone();
    one_missing.remove("encoder.conv_in.weight");
    assert_eq!(
        problems(load_bytes(&bytes_of_weights(&one_missing), &spec)),
        ["missing `encoder.conv_in.weight` [32, 3, 3, 3] (enc_conv_in of tokenizer)"]
    );
    let one_present = without(&["encoder.norm_out.bias"]);
    let p = problems(load_bytes(&bytes_of_weights(&one_present), &spec));
    assert_eq!(p.len(), encoder.len() - 1);
    assert!(p.iter().all(|m| m.starts_with("missing `encoder.")), "{p:?}");
    // An encoder tensor under a near-miss name is a rename, not an absent encoder.
    let mut renamed = without(&[]);
    renamed.insert("encoder.conv_in.weigth", w.get("encoder.conv_in.weight").unwrap().clone());
    assert_eq!(
        problems(load_bytes(&bytes_of_weights(&renamed), &spec)),
        ["unexpected `encoder.conv_in.weigth` [32, 3, 3, 3]: did you mean `encoder.conv_in.weight` [32, 3, 3, 3], which is missing?"]
    );
    // A decoder tensor is never optional.
    let mut no_decoder_in = decoder_only.clone();
    no_decoder_in.remove("decoder.conv_in.weight");
    assert_eq!(
        problems(load_bytes(&bytes_of_weights(&no_decoder_in), &spec)),
        ["missing `decoder.conv_in.weight` [128, 8, 3, 3] (dec_conv_in of tokenizer)"]
    );
}

#[test]
fn named_tensor_files_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.safetensors");
    let x = HostTensor::f32(vec![2, 3], vec![0.5, -1.0, 2.0, 3.25, f32::MAX, -0.0]);
    let tokens = HostTensor::i64(vec![4], vec![0, 16383, -1, i64::MAX]);
    let s = HostTensor::scalar(7.0);
    write_tensors(&path, &[("x", &x), ("tokens", &tokens), ("s", &s)]).unwrap();
    let back = read_tensors(&path).unwrap();
    assert_eq!(back.keys().collect::<Vec<_>>(), ["s", "tokens", "x"]);
    assert_eq!((&back["x"], &back["tokens"], &back["s"]), (&x, &tokens, &s));
    // Integer and float files of other dtypes.
    let raw = [
        ("a", Raw { dtype: Dtype::I32, shape: vec![2], bytes: [5i32.to_le_bytes(), (-3i32).to_le_bytes()].concat() }),
        ("b", Raw { dtype: Dtype::U8, shape: vec![3], bytes: vec![0, 1, 255] }),
        ("c", Raw { dtype: Dtype::F16, shape: vec![1], bytes: half::f16::from_f32(1.5).to_le_bytes().to_vec() }),
    ];
    let bytes = safetensors::serialize(raw.iter().map(|(k, r)| (*k, r)), None).unwrap();
    let back = read_tensors_from_bytes("r", &bytes).unwrap();
    assert_eq!(back["a"], HostTensor::i64(vec![2], vec![5, -3]));
    assert_eq!(back["b"], HostTensor::i64(vec![3], vec![0, 1, 255]));
    assert_eq!(back["c"], HostTensor::f32(vec![1], vec![1.5]));
    let f8 = [("q", Raw { dtype: Dtype::F8_E4M3, shape: vec![1], bytes: vec![0] })];
    let bytes = safetensors::serialize(f8.iter().map(|(k, r)| (*k, r)), None).unwrap();
    assert_eq!(
        read_tensors_from_bytes("r", &bytes).unwrap_err().to_string(),
        "r: tensor `q` has dtype F8_E4M3; expected a float (F32, F16, BF16, F64) or integer (I64, I32, ...) type"
    );
    // Duplicate names are refused and nothing is written.
    let other = dir.path().join("dup.safetensors");
    assert!(write_tensors(&other, &[("x", &x), ("x", &s)]).is_err());
    assert!(!other.exists());
}

#[test]
fn failed_writes_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let w = Weights::random(&tiny_var(), 0);
    // The target is a directory: the rename fails.
    std::fs::create_dir(dir.path().join("out")).unwrap();
    std::fs::write(dir.path().join("out/keep"), b"x").unwrap();
    let e = w.save(&dir.path().join("out")).unwrap_err();
    assert!(matches!(e, RuntimeError::File { .. }), "{e}");
    // A directory that does not exist.
    assert!(w.save(&dir.path().join("no/such/dir/w.safetensors")).is_err());
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["out"]);
}

#[test]
fn unreadable_files_are_file_errors() {
    let spec = tiny_var();
    let dir = tempfile::tempdir().unwrap();
    let good = bytes_of_weights(&Weights::random(&spec, 0));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("garbage", b"this is not a safetensors file at all".to_vec()),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("huge-header", [u64::MAX.to_le_bytes().to_vec(), good[8..].to_vec()].concat()),
    ];
    for (name, bytes) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        for r in [Weights::load(&path, &spec).map(|_| ()), read_tensors(&path).map(|_| ())] {
            match r {
                Err(RuntimeError::File { path: p, why }) => {
                    assert_eq!(p, path.display().to_string());
                    assert!(why.starts_with("not a valid safetensors file"), "{name}: {why}");
                }
                other => panic!("{name}: {other:?}"),
            }
        }
    }
    for path in [dir.path().join("absent"), dir.path().to_path_buf()] {
        assert!(matches!(Weights::load(&path, &spec), Err(RuntimeError::File { .. })));
        assert!(matches!(read_tensors(&path), Err(RuntimeError::File { .. })));
    }
}

#[test]
fn upload_sends_every_tensor_by_key() {
    let w = Weights::random(&tiny_var(), 0);
    let backend = crate::reference::Reference::new();
    let up = w.upload(&backend).unwrap();
    assert_eq!(up.len(), w.len());
    for (k, t) in w.iter() {
        assert_eq!(&backend.download(&up[k]).unwrap(), t, "`{k}`");
    }
}

/// A spec declaring a few small tensors (and a buffer), for fuzzing.
fn small_spec() -> ModelSpec {
    let mut spec = tiny_var();
    let t =
        |role: &str, key: &str, shape: &[u64]| TensorSpec { role: role.into(), key: key.into(), shape: shape.to_vec() };
    spec.params = vec![
        ParamGroupSpec {
            owner: "backbone".into(),
            prefix: "".into(),
            index: vec![],
            repeat: None,
            tensors: vec![t("class_table", "class_emb.weight", &[3, 4]), t("out_bias", "head.bias", &[5])],
        },
        ParamGroupSpec {
            owner: "backbone.block".into(),
            prefix: "blocks.{i}.".into(),
            index: vec![],
            repeat: Some(RepeatSpec { var: "i".into(), start: 0, count: 2 }),
            tensors: vec![t("attn_norm", "norm.weight", &[4])],
        },
    ];
    spec.tokenizer.params = vec![];
    spec.buffers = vec![ParamGroupSpec {
        owner: "backbone".into(),
        prefix: "".into(),
        index: vec![],
        repeat: None,
        tensors: vec![t("level_index", "lvl_1L", &[1, 2])],
    }];
    spec
}

#[test]
fn corrupted_files_never_panic() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRng, TestRunner};
    let spec = small_spec();
    let w = Weights::random(&spec, 0);
    assert_eq!(w.len(), 4);
    let levels = HostTensor::i64(vec![1, 2], vec![0, 1]);
    let mut named: Vec<(&str, &HostTensor)> = w.iter().collect();
    named.push(("lvl_1L", &levels));
    let good = bytes_of(&named);
    assert_same(&load_bytes(&good, &spec).unwrap(), &w);

    let config = Config { cases: 4000, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new_with_rng(config.clone(), TestRng::deterministic_rng(config.rng_algorithm));
    let len = good.len();
    // Digits of the JSON header (shapes, offsets): changing one keeps the header parseable.
    let digits: Vec<usize> = (8..len).filter(|&i| good[i].is_ascii_digit()).collect();
    let digit_at = digits.clone();
    let edit = prop_oneof![
        (0..len).prop_map(|n| (Some(n), vec![], vec![])),
        proptest::collection::vec((0..len, any::<u8>()), 1..8).prop_map(|f| (None, f, vec![])),
        proptest::collection::vec(any::<u8>(), 1..64).prop_map(|g| (None, vec![], g)),
        (0..len, proptest::collection::vec((0..16usize, any::<u8>()), 1..4)).prop_map(|(n, f)| (
            Some(n),
            f.into_iter().map(|(i, b)| (i % 16, b)).collect(),
            vec![]
        )),
        proptest::collection::vec((0..digits.len(), b'0'..=b'9'), 1..3).prop_map(move |f| (
            None,
            f.into_iter().map(|(i, d)| (digit_at[i], d)).collect(),
            vec![]
        )),
    ];
    runner
        .run(&edit, |(truncate, flips, garbage)| {
            let mut bytes = good.clone();
            for (i, b) in flips {
                if i < bytes.len() {
                    bytes[i] = b;
                }
            }
            if let Some(n) = truncate {
                bytes.truncate(n);
            }
            bytes.extend(garbage);
            match load_bytes(&bytes, &spec) {
                Ok(_) | Err(RuntimeError::File { .. }) | Err(RuntimeError::Weights { .. }) => {}
                Err(e) => panic!("unexpected error kind: {e}"),
            }
            let _ = read_tensors_from_bytes("f", &bytes);
            Ok(())
        })
        .unwrap();
}
