//! Checkpoint import: PyTorch `.pth` files made by `torch.save` (committed
//! under tests/checkpoints/, made by a script outside the repository from
//! the declared keys of `examples/tiny/var.ecar` shrunk by [`SETS`]), read
//! by `checkpoint::open`, mapped by `ecarc import`, and fuzzed.

use crate::common::{root, spec_of};
use ecarc_compiler::ModelSpec;
use ecarc_runtime::checkpoint::{self, Checkpoint, Format};
use ecarc_runtime::weights::{declared_tensors, write_tensors, TensorKind, Weights};
use ecarc_runtime::{HostTensor, RuntimeError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `examples/tiny/var.ecar` shrunk so that its checkpoints are a few KB.
pub const SETS: [&str; 9] = [
    "backbone.depth=1",
    "backbone.width=16",
    "backbone.heads=2",
    "tokenizer.channels=32",
    "tokenizer.z_channels=4",
    "tokenizer.code_dim=4",
    "tokenizer.vocab=16",
    "sample.top_k=4",
    "tokenizer.ch_mult=[1, 1, 1, 1]",
];

fn spec() -> ModelSpec {
    spec_of(&root().join("examples/tiny/var.ecar"), &SETS)
}

// The fixtures' keys and shapes are the model's declared tensors: the script that makes
// them reads them from `ecarc init-weights examples/tiny/var.ecar --set ... -o W.safetensors`
// (every declared parameter, by checkpoint key and shape).

fn fixture(name: &str) -> PathBuf {
    root().join("tests/checkpoints").join(name)
}

fn ecarc() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ecarc"));
    c.arg("--color").arg("never");
    for s in SETS {
        c.arg("--set").arg(s);
    }
    c
}

/// The value the fixture script stores at flat index `i` of the `j`-th
/// declared tensor: a multiple of 1/64 in [-50/64, 50/64], exact in f16 and bf16.
fn expected_value(j: usize, i: usize) -> f32 {
    (((i * 7 + j * 13) % 101) as f32 - 50.0) / 64.0
}

/// The tensors the fixture script stored for the declared tensors of `kind`. The
/// tokenizer fixture holds no encoder (the encoder was declared after the fixtures were
/// made, after the decoder, so the other tensors kept their index `j`); a checkpoint may
/// leave the encoder out as a whole.
fn expected(kind: TensorKind) -> BTreeMap<String, HostTensor> {
    declared_tensors(&spec())
        .into_iter()
        .enumerate()
        .filter(|(_, d)| d.kind == kind && !d.is_encoder())
        .map(|(j, d)| {
            let n = d.shape.iter().product();
            (d.key, HostTensor::f32(d.shape, (0..n).map(|i| expected_value(j, i)).collect()))
        })
        .collect()
}

#[test]
fn every_nesting_and_dtype_reads_back_exactly() {
    let generator = expected(TensorKind::Param);
    let cases = [
        ("var_gen_model_f32.pth", "model", vec![]),
        ("var_gen_trainer_f16.pth", "trainer.var_wo_ddp", vec![]),
        ("var_gen_ema_bf16.pth", "ema", vec!["model".to_string()]),
    ];
    for (file, nesting, others) in cases {
        let ck = checkpoint::open(&fixture(file), None).unwrap();
        assert_eq!(ck.format, Format::PyTorch);
        assert_eq!((ck.nesting.as_str(), &ck.others), (nesting, &others), "{file}");
        for (k, t) in &generator {
            assert_eq!(ck.tensors.get(k), Some(t), "{file}: `{k}`");
        }
    }
    // The f32 file also holds the buffers: the integer level index as i64.
    let ck = checkpoint::open(&fixture("var_gen_model_f32.pth"), None).unwrap();
    assert_eq!(ck.tensors.len(), generator.len() + 3);
    let lvl = &ck.tensors["lvl_1L"];
    assert_eq!(lvl.shape, [1, 21]);
    assert_eq!(lvl.as_i64().unwrap(), (0..21).map(|i| i % 3).collect::<Vec<i64>>());
    // The tokenizer alone, a bare dict, bf16, with strided and offset views.
    let ck = checkpoint::open(&fixture("var_tok_bare_bf16.pth"), None).unwrap();
    assert_eq!(ck.nesting, "");
    assert_eq!(ck.tensors, expected(TensorKind::TokenizerParam));
}

#[test]
fn key_picks_the_state_dict_or_says_what_is_there() {
    let ck = checkpoint::open(&fixture("var_gen_ema_bf16.pth"), Some("model")).unwrap();
    assert_eq!(ck.tensors.keys().collect::<Vec<_>>(), ["head.weight"]);
    let ck = checkpoint::open(&fixture("var_gen_trainer_f16.pth"), Some("trainer.var_wo_ddp")).unwrap();
    assert_eq!(ck.tensors.len(), 22);
    let err = |key: &str| checkpoint::open(&fixture("var_gen_trainer_f16.pth"), Some(key)).unwrap_err().to_string();
    insta::assert_snapshot!(
        "key_errors",
        [err("trainer"), err("trainer.step"), err("model"), err("args.flags")]
            .join("\n")
            .replace(&fixture("").display().to_string(), "tests/checkpoints/")
    );
}

#[test]
fn a_malicious_pickle_is_refused_without_running_it() {
    let marker = Path::new("/tmp/ecarc-pwned");
    let _ = std::fs::remove_file(marker);
    let e = checkpoint::open(&fixture("malicious.pth"), None).unwrap_err().to_string();
    assert!(e.contains("refusing the pickle global `posix.system`"), "{e}");
    assert!(!marker.exists());
    let dir = Scratch::new("1");
    let out = ecarc()
        .args(["import", "--model"])
        .arg(root().join("examples/tiny/var.ecar"))
        .arg(fixture("malicious.pth"))
        .arg("-o")
        .arg(dir.0.as_path().join("w.safetensors"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`posix.system`"));
    assert_eq!(std::fs::read_dir(dir.0.as_path()).unwrap().count(), 0);
    assert!(!marker.exists());
}

/// `ecarc import` in `dir` (relative names keep messages stable).
fn import(dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = ecarc()
        .current_dir(dir)
        .arg("import")
        .args(args)
        .arg("--model")
        .arg(root().join("examples/tiny/var.ecar"))
        .output()
        .unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn copy_fixtures(dir: &Path) {
    for f in ["var_gen_model_f32.pth", "var_gen_trainer_f16.pth", "var_gen_ema_bf16.pth", "var_tok_bare_bf16.pth"] {
        std::fs::copy(fixture(f), dir.join(f)).unwrap();
    }
}

#[test]
fn import_round_trips_to_identical_tensors() {
    let dir = Scratch::new("2");
    copy_fixtures(dir.0.as_path());
    let spec = spec();
    let mut all = expected(TensorKind::Param);
    all.extend(expected(TensorKind::TokenizerParam));
    // Generator and tokenizer from two files (f16 under trainer.var_wo_ddp, bare bf16).
    let (code, stdout, stderr) =
        import(dir.0.as_path(), &["var_gen_trainer_f16.pth", "var_tok_bare_bf16.pth", "-o", "all.safetensors"]);
    assert_eq!(code, Some(0), "{stderr}");
    insta::assert_snapshot!("import_two_files", format!("{stderr}{stdout}"));
    let w = Weights::load(&dir.0.as_path().join("all.safetensors"), &spec).unwrap();
    assert_eq!(w.iter().map(|(k, t)| (k.to_string(), t.clone())).collect::<BTreeMap<_, _>>(), all);
    // Each generator file alone gives the same bytes; so does re-importing the output.
    let reference = std::fs::read(dir.0.as_path().join("all.safetensors")).unwrap();
    let again = |files: &[&str]| {
        let (code, _, stderr) = import(dir.0.as_path(), &[files, &["-o", "again.safetensors"]].concat());
        assert_eq!(code, Some(0), "{files:?}: {stderr}");
        std::fs::read(dir.0.as_path().join("again.safetensors")).unwrap()
    };
    for name in ["var_gen_model_f32.pth", "var_gen_ema_bf16.pth"] {
        assert_eq!(again(&[name, "var_tok_bare_bf16.pth"]), reference, "{name}");
    }
    assert_eq!(again(&["all.safetensors"]), reference);
    // One part: the inference says so, and the output loads next to the other part.
    let (code, _, stderr) = import(dir.0.as_path(), &["var_tok_bare_bf16.pth", "-o", "tok.safetensors"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("part: tokenizer (inferred: 0 of 22 generator"), "{stderr}");
    let (code, _, stderr) = import(dir.0.as_path(), &["var_gen_model_f32.pth", "-o", "gen.safetensors"]);
    assert_eq!(code, Some(0), "{stderr}");
    let w = Weights::load_files(
        &[&dir.0.as_path().join("gen.safetensors"), &dir.0.as_path().join("tok.safetensors")],
        &spec,
    )
    .unwrap();
    assert_eq!(w.len(), all.len());
}

/// A released tokenizer holds its encoder: import checks it key for key and writes it. A
/// decoder-only file (the fixture) imports too, with a note; an incomplete encoder does not.
#[test]
fn import_checks_the_tokenizer_encoder_when_present() {
    let dir = Scratch::new("enc");
    let spec = spec();
    let encoder: Vec<(String, HostTensor)> = {
        let random = Weights::random(&spec, 5);
        declared_tensors(&spec)
            .into_iter()
            .filter(|d| d.is_encoder())
            .map(|d| (d.key.clone(), random.get(&d.key).unwrap().clone()))
            .collect()
    };
    assert!(encoder.len() > 10);
    let decoder = checkpoint::open(&fixture("var_tok_bare_bf16.pth"), None).unwrap().tensors;
    let write = |name: &str, skip: Option<&str>| {
        let mut all: Vec<(&str, &HostTensor)> = decoder.iter().map(|(k, t)| (k.as_str(), t)).collect();
        all.extend(encoder.iter().filter(|(k, _)| Some(k.as_str()) != skip).map(|(k, t)| (k.as_str(), t)));
        write_tensors(&dir.0.join(name), &all).unwrap();
    };
    // Whole: imported, with the encoder, and no note.
    write("whole.safetensors", None);
    let (code, _, stderr) = import(dir.0.as_path(), &["whole.safetensors", "-o", "tok.safetensors"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("no tokenizer encoder"), "{stderr}");
    let mut gen_only = spec.clone();
    gen_only.params.clear();
    let w = Weights::load(&dir.0.join("tok.safetensors"), &gen_only).unwrap();
    assert!(w.absent_encoder().is_empty());
    for (k, t) in &encoder {
        assert_eq!(w.get(k), Some(t), "`{k}`");
    }
    std::fs::remove_file(dir.0.join("tok.safetensors")).unwrap();
    // Decoder only: imported, with a note.
    std::fs::copy(fixture("var_tok_bare_bf16.pth"), dir.0.join("var_tok_bare_bf16.pth")).unwrap();
    let (code, stdout, stderr) = import(dir.0.as_path(), &["var_tok_bare_bf16.pth", "-o", "tok.safetensors"]);
    assert_eq!(code, Some(0), "{stderr}");
    let note = format!(
        "note: no tokenizer encoder in the checkpoint(s): its {} declared tensors are left out (generation does not read them)",
        encoder.len()
    );
    assert!(stderr.contains(&note), "{stderr}");
    assert!(stdout.contains(&format!("wrote tok.safetensors: {} tensors", decoder.len())), "{stdout}");
    std::fs::remove_file(dir.0.join("tok.safetensors")).unwrap();
    // One encoder tensor missing: an error, and nothing written.
    write("partial.safetensors", Some("encoder.conv_in.weight"));
    let (code, _, stderr) = import(dir.0.as_path(), &["partial.safetensors", "-o", "tok.safetensors"]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("1 problem(s)")
            && stderr.contains("missing `encoder.conv_in.weight` [32, 3, 3, 3] (enc_conv_in of tokenizer)"),
        "{stderr}"
    );
    assert!(!dir.0.join("tok.safetensors").exists());
}

#[test]
fn one_tensor_removed_renamed_or_reshaped_is_one_precise_error() {
    let dir = Scratch::new("3");
    let base = checkpoint::open(&fixture("var_gen_trainer_f16.pth"), None).unwrap().tensors;
    let key = "blocks.0.attn.mat_qkv.weight";
    assert!(base.contains_key(key), "{:?}", base.keys());
    let mut cases: Vec<(&str, BTreeMap<String, HostTensor>)> = Vec::new();
    let mut removed = base.clone();
    removed.remove(key);
    cases.push(("removed", removed));
    let mut renamed = base.clone();
    let t = renamed.remove(key).unwrap();
    renamed.insert("blocks.0.attn.mat_qkv.weights".into(), t);
    cases.push(("renamed", renamed));
    let mut reshaped = base.clone();
    let t = reshaped.remove(key).unwrap();
    let (rows, cols) = (t.shape[0], t.shape[1]);
    reshaped.insert(key.into(), HostTensor::f32(vec![cols, rows], t.as_f32().unwrap().to_vec()));
    cases.push(("reshaped", reshaped));
    let mut messages = Vec::new();
    for (name, tensors) in cases {
        let file = format!("{name}.safetensors");
        let named: Vec<(&str, &HostTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
        write_tensors(&dir.0.as_path().join(&file), &named).unwrap();
        let (code, stdout, stderr) = import(dir.0.as_path(), &[&file, "-o", "out.safetensors"]);
        assert_eq!(code, Some(1), "{name}: {stdout}");
        assert!(!dir.0.as_path().join("out.safetensors").exists(), "{name}");
        messages.push(format!("--- {name}\n{stderr}"));
    }
    insta::assert_snapshot!("one_error_each", messages.join(""));
    // An extra tensor the model does not declare (a training statistic): one error, or left out with --ignore.
    let mut extra = base.clone();
    extra.insert("quantize.ema_vocab_hit_SV".into(), HostTensor::f32(vec![2], vec![0.0, 1.0]));
    let named: Vec<(&str, &HostTensor)> = extra.iter().map(|(k, t)| (k.as_str(), t)).collect();
    write_tensors(&dir.0.join("extra.safetensors"), &named).unwrap();
    let (code, _, stderr) = import(dir.0.as_path(), &["extra.safetensors", "-o", "out.safetensors"]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("1 problem(s)")
            && stderr.contains("unexpected `quantize.ema_vocab_hit_SV` [2]: the model declares no such tensor"),
        "{stderr}"
    );
    assert!(!dir.0.join("out.safetensors").exists());
    let (code, _, stderr) = import(
        dir.0.as_path(),
        &["extra.safetensors", "--ignore", "quantize.ema_vocab_hit_SV", "-o", "out.safetensors"],
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("ignored 1 tensor(s) under `quantize.ema_vocab_hit_SV`"), "{stderr}");
    std::fs::remove_file(dir.0.join("out.safetensors")).unwrap();
    // A generator file imported as the tokenizer: every tokenizer tensor is missing.
    std::fs::copy(fixture("var_gen_model_f32.pth"), dir.0.as_path().join("g.pth")).unwrap();
    let (code, _, stderr) = import(dir.0.as_path(), &["g.pth", "--part", "tokenizer", "-o", "out.safetensors"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("missing `decoder.conv_in.weight`"), "{stderr}");
    assert!(!dir.0.as_path().join("out.safetensors").exists());
}

/// Bytes a checkpoint's tensors take in memory (f32 or i64).
fn tensor_bytes(ck: &Checkpoint) -> usize {
    ck.tensors.values().map(HostTensor::bytes).sum()
}

/// The fuzz cases: 100,000 in all (a fixed seed), each a PyTorch or a
/// safetensors checkpoint of the tiny generator, truncated, with bytes
/// replaced (anywhere, in the pickle, in the zip's central directory, in the
/// safetensors header's digits) or with garbage appended. None may panic;
/// what reads must take at most 32 bytes of tensors per byte of file (the
/// bound `checkpoint` documents); every 50th case runs the whole import
/// (match, then an atomic write) and finds a complete file or none.
#[test]
fn mutated_and_truncated_checkpoints_never_panic_overallocate_or_write_partially() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRng, TestRunner};
    let mut spec = spec();
    spec.tokenizer.params.clear();
    let pth = std::fs::read(fixture("var_gen_trainer_f16.pth")).unwrap();
    let good = checkpoint::from_bytes("g", &pth, None).unwrap();
    let dir = Scratch::new("fuzz");
    let st_path = dir.0.join("g.safetensors");
    let named: Vec<(&str, &HostTensor)> = good.tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    write_tensors(&st_path, &named).unwrap();
    let st = std::fs::read(&st_path).unwrap();
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle).unwrap();
    // The pickle (after its local header) and the central directory of the zip.
    let pkl = find(&pth, b"/data.pkl");
    let pkl = pkl..(pkl + 4096).min(pth.len());
    let central = find(&pth, b"PK\x01\x02")..pth.len();
    let header_len = u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
    let digits: Vec<usize> = (8..8 + header_len).filter(|&i| st[i].is_ascii_digit()).collect();

    #[derive(Clone, Debug)]
    enum Edit {
        Truncate(usize),
        Replace(Vec<(usize, u8)>),
        Append(Vec<u8>),
    }
    let region = |r: std::ops::Range<usize>, n: usize| {
        proptest::collection::vec((r, any::<u8>()), 1..n).prop_map(Edit::Replace).boxed()
    };
    let digit_at = digits.clone();
    let pth_edit = prop_oneof![
        (0..pth.len()).prop_map(Edit::Truncate),
        region(0..pth.len(), 8),
        region(pkl.clone(), 4),
        region(central.clone(), 4),
        proptest::collection::vec(any::<u8>(), 1..64).prop_map(Edit::Append),
    ];
    let st_edit = prop_oneof![
        (0..st.len()).prop_map(Edit::Truncate),
        region(0..st.len(), 8),
        region(0..8 + header_len, 4),
        proptest::collection::vec((0..digits.len(), b'0'..=b'9'), 1..3)
            .prop_map(move |f| Edit::Replace(f.into_iter().map(|(i, d)| (digit_at[i], d)).collect())),
    ];
    let case = prop_oneof![7 => pth_edit.prop_map(|e| (true, e)), 3 => st_edit.prop_map(|e| (false, e))];
    let config = Config { cases: 100_000, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new_with_rng(config.clone(), TestRng::deterministic_rng(config.rng_algorithm));
    let out = dir.0.join("out.safetensors");
    let count = std::cell::Cell::new(0usize);
    let read_ok = std::cell::Cell::new(0usize);
    runner
        .run(&case, |(is_pth, edit)| {
            let mut bytes = if is_pth { pth.clone() } else { st.clone() };
            match edit {
                Edit::Truncate(n) => bytes.truncate(n),
                Edit::Replace(r) => r.into_iter().for_each(|(i, b)| bytes[i] = b),
                Edit::Append(g) => bytes.extend(g),
            }
            count.set(count.get() + 1);
            let Ok(ck) = checkpoint::from_bytes("f", &bytes, None) else { return Ok(()) };
            read_ok.set(read_ok.get() + 1);
            prop_assert!(tensor_bytes(&ck) <= 32 * bytes.len(), "{} bytes of tensors", tensor_bytes(&ck));
            let matched = Weights::from_tensors(&[("f".into(), ck.tensors)], &spec);
            if count.get().is_multiple_of(50) {
                match matched {
                    Ok(w) => {
                        w.save(&out).unwrap();
                        prop_assert_eq!(Weights::load(&out, &spec).unwrap().len(), w.len());
                        std::fs::remove_file(&out).unwrap();
                    }
                    Err(e) => {
                        prop_assert!(matches!(e, RuntimeError::Weights { .. }), "{e}");
                        prop_assert!(!out.exists());
                    }
                }
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(count.get(), 100_000);
    // Most edits of tensor data still read; the mix exercises both paths.
    assert!(read_ok.get() > 10_000 && read_ok.get() < 90_000, "{} of 100,000 read", read_ok.get());
}

/// A fresh directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("ecarc-checkpoints-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
