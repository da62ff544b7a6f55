//! The commands that run a model (`sample`, `decode`, `forward`, `dd-pairs`,
//! `init-weights`) through the `ecarc` binary, on the tiny models: files come
//! out right and reproducibly, the CLI agrees with the library, and bad input
//! is a clean `error:` with exit status 1 and no output file.

use crate::common::{root, spec_of};
use ecarc_runtime::driver::Generator;
use ecarc_runtime::image_out::{grid_shape, GAP};
use ecarc_runtime::rng::SeededRng;
use ecarc_runtime::weights::{read_tensors, write_tensors, Weights};
use ecarc_runtime::HostTensor;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const FAMILIES: [&str; 6] = ["var", "llamagen", "ecar", "dit", "var_dd", "llamagen_dd"];

fn ecarc() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ecarc"));
    c.arg("--color").arg("never");
    c
}

fn tiny(name: &str) -> PathBuf {
    root().join(format!("examples/tiny/{name}.ecar"))
}

/// A fresh directory for one test.
fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ecarc-cli-run-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Run `ecarc ARGS`, which must succeed.
fn ok<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let args: Vec<S> = args.into_iter().collect();
    let shown: Vec<String> = args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect();
    let out = ecarc().args(&args).output().unwrap();
    assert!(out.status.success(), "ecarc {} failed:\n{}", shown.join(" "), stderr(&out));
    out
}

/// Run `ecarc ARGS`, which must fail cleanly: exit 1, an `error:` line, no panic.
fn fails<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let args: Vec<S> = args.into_iter().collect();
    let shown: Vec<String> = args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect();
    let out = ecarc().args(&args).output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "ecarc {}: expected exit 1:\n{err}", shown.join(" "));
    assert!(err.contains("error"), "ecarc {}: no error message:\n{err}", shown.join(" "));
    assert!(!err.contains("panicked"), "ecarc {} panicked:\n{err}", shown.join(" "));
    err
}

/// The path of `examples/tiny/NAME.ecar` as a `'static` argument.
fn model(name: &str) -> &'static str {
    Box::leak(tiny(name).to_str().unwrap().to_string().into_boxed_str())
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn tensors(path: &Path) -> BTreeMap<String, HostTensor> {
    read_tensors(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The stage results (`stage.K.*`, `step.K.*`) of a `--save-tensors` file.
fn stage_tensors(path: &Path) -> BTreeMap<String, HostTensor> {
    tensors(path).into_iter().filter(|(k, _)| k.starts_with("stage.") || k.starts_with("step.")).collect()
}

#[test]
fn every_tiny_model_samples_to_a_png_of_the_grid_size() {
    let dir = temp_dir("png");
    for (i, name) in FAMILIES.iter().enumerate() {
        // 1, 2, 3, ... images: grids of one, a row, and with an empty cell.
        let n = i + 1;
        let png = dir.join(format!("{name}.png"));
        let out = ok(["sample", model(name), "-n", &n.to_string(), "--seed", "3", "-o", p(&png)]);
        assert!(stderr(&out).contains("random weights (seed 0)"), "{name}: {}", stderr(&out));
        let img = image::open(&png).unwrap_or_else(|e| panic!("{name}: {e}")).to_rgb8();
        let (rows, cols) = grid_shape(n);
        let side = 32; // every tiny model makes 32 px images
        let expect = ((cols * side + (cols - 1) * GAP) as u32, (rows * side + (rows - 1) * GAP) as u32);
        assert_eq!(img.dimensions(), expect, "{name} with {n} images");
        // Random weights still make an image, not a flat colour.
        let first = img.get_pixel(0, 0);
        assert!(img.pixels().any(|px| px != first), "{name}: a constant image");
    }
}

#[test]
fn same_seed_same_bytes_other_seed_other_image() {
    let dir = temp_dir("seed");
    for name in ["var", "llamagen", "ecar", "dit"] {
        let run = |tag: &str, seed: &str| {
            let (png, st) = (dir.join(format!("{name}-{tag}.png")), dir.join(format!("{name}-{tag}.safetensors")));
            ok(["sample", model(name), "--class", "2", "4", "--seed", seed, "-o", p(&png), "--save-tensors", p(&st)]);
            (std::fs::read(&png).unwrap(), std::fs::read(&st).unwrap())
        };
        let (a_png, a_st) = run("a", "7");
        let (b_png, b_st) = run("b", "7");
        let (c_png, c_st) = run("c", "8");
        assert!(a_png == b_png, "{name}: the same seed gave different PNGs");
        assert!(a_st == b_st, "{name}: the same seed gave different --save-tensors files");
        assert!(a_png != c_png, "{name}: seeds 7 and 8 gave the same PNG");
        assert!(a_st != c_st, "{name}: seeds 7 and 8 gave the same tensors");
    }
}

#[test]
fn save_tensors_holds_stages_latent_float_image_and_labels() {
    let dir = temp_dir("save");
    let expect_latent =
        [("var", "f_hat"), ("llamagen", "tokens"), ("ecar", "latent"), ("dit", "latent"), ("llamagen_dd", "codes")];
    for (name, latent) in expect_latent {
        let (png, st) = (dir.join(format!("{name}.png")), dir.join(format!("{name}.safetensors")));
        ok(["sample", model(name), "--class", "1", "-n", "2", "-o", p(&png), "--save-tensors", p(&st)]);
        let t = tensors(&st);
        assert_eq!(t["labels"].as_i64().unwrap(), &[1, 1], "{name}");
        let image = &t["image"];
        assert_eq!(image.shape, vec![2, 3, 32, 32], "{name}");
        let v = image.as_f32().unwrap();
        assert!(v.iter().all(|x| (0.0..=1.0).contains(x)), "{name}: image outside [0, 1]");
        // The float image, not its 8-bit rounding.
        assert!(v.iter().any(|x| (x * 255.0 - (x * 255.0).round()).abs() > 1e-3), "{name}: looks rounded");
        let key = format!("latent.{latent}");
        assert!(t.contains_key(&key), "{name}: no `{key}` in {:?}", t.keys().collect::<Vec<_>>());
        assert_eq!(t[&key].shape[0], 2, "{name}");
        assert!(!stage_tensors(&st).is_empty(), "{name}: no stage results");
    }
    // Categorical stages save the chosen token indices, one tensor per stage.
    let t = tensors(&dir.join("var.safetensors"));
    for (k, len) in [(0, 1), (1, 4), (2, 16)] {
        let tok = &t[&format!("stage.{k}.tokens")];
        assert_eq!(tok.shape, vec![2, len]);
        assert!(tok.as_i64().unwrap().iter().all(|&i| (0..256).contains(&i)));
    }
    let t = tensors(&dir.join("llamagen.safetensors"));
    let joined: Vec<i64> = (0..16).flat_map(|k| t[&format!("stage.{k}.tokens")].as_i64().unwrap().to_vec()).collect();
    // `latent.tokens` is [N, 16]: token k of image i is stage k's row i.
    let latent = t["latent.tokens"].as_i64().unwrap();
    for i in 0..2 {
        for k in 0..16 {
            assert_eq!(latent[i * 16 + k], joined[k * 2 + i]);
        }
    }
}

#[test]
fn json_reports_timings_image_seed_and_labels() {
    let dir = temp_dir("json");
    let png = dir.join("var.png");
    let out = ok(["sample", model("var"), "--json", "--class", "3", "5", "-n", "2", "--seed", "11", "-o", p(&png)]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(v["image"], p(&png));
    assert_eq!(v["seed"], 11);
    assert_eq!(v["labels"], serde_json::json!([3, 3, 5, 5]));
    assert_eq!(v["model"], "tiny_var");
    assert_eq!(v["backend"], "cpu", "the default backend");
    assert_eq!(v["size"], serde_json::json!([32, 32]));
    let timings = v["timings"].as_array().unwrap();
    let what: Vec<&str> = timings.iter().map(|t| t["what"].as_str().unwrap()).collect();
    assert_eq!(what, ["stage 1", "stage 2", "stage 3", "decode"], "1-based stages, as progress counts");
    let sum: f64 = timings.iter().map(|t| t["seconds"].as_f64().unwrap()).sum();
    assert!((v["total_seconds"].as_f64().unwrap() - sum).abs() < 1e-9);
    assert!(timings.iter().all(|t| t["runs"].as_u64().unwrap() >= 1));
    assert!(png.exists());
    // No progress bar: stderr holds only the note about random weights.
    assert!(!stderr(&out).contains("stage 0"), "{}", stderr(&out));
}

#[test]
fn default_classes_come_from_the_seed() {
    let dir = temp_dir("classes");
    let labels = |seed: &str| {
        let out = ok(["sample", model("llamagen"), "--json", "-n", "6", "--seed", seed, "-o", p(&dir.join("x.png"))]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["labels"].as_array().unwrap().iter().map(|l| l.as_i64().unwrap()).collect::<Vec<_>>()
    };
    let (a, b, c) = (labels("1"), labels("1"), labels("2"));
    assert_eq!(a.len(), 6);
    assert!(a.iter().all(|l| (0..10).contains(l)), "{a:?}");
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn greedy_decoding_is_deterministic_across_seeds() {
    let dir = temp_dir("greedy");
    for name in ["var", "llamagen"] {
        let run = |seed: &str, extra: &[&str]| {
            let st = dir.join(format!("{name}-{seed}-{}.safetensors", extra.len()));
            let mut args = vec!["sample", model(name), "--class", "0", "7", "--seed", seed];
            args.extend_from_slice(extra);
            let png = dir.join("x.png");
            args.extend(["-o", p(&png), "--save-tensors", p(&st)]);
            ok(&args);
            stage_tensors(&st)
        };
        // `--top-k 1` keeps one token: the seed no longer matters.
        let (a, b) = (run("1", &["--top-k", "1"]), run("2", &["--top-k", "1"]));
        assert_eq!(a, b, "{name}: greedy tokens depend on the seed");
        // ... as `--set sample.top_k=1` on the model file does.
        let c = run("3", &["--set", "sample.top_k=1"]);
        assert_eq!(a, c, "{name}: --top-k 1 and --set sample.top_k=1 differ");
        // Without it the seed matters (so the check above means something).
        let (d, e) = (run("1", &[]), run("2", &[]));
        assert_ne!(d, e, "{name}: sampled tokens do not depend on the seed");
    }
}

#[test]
fn sampler_flags_are_checked() {
    let dir = temp_dir("flags");
    let png = dir.join("x.png");
    let cases: [(&str, &[&str], &str); 6] = [
        ("var", &["--top-k", "257"], "larger than the vocabulary"),
        ("dit", &["--top-k", "2"], "continuous"),
        ("var", &["--top-p", "0"], "--top-p 0 is out of range"),
        ("var", &["--top-p", "1.5"], "--top-p 1.5 is out of range"),
        ("var", &["--temperature", "0"], "--temperature 0 is out of range"),
        ("var", &["--cfg", "-1"], "--cfg -1 is out of range"),
    ];
    for (name, flags, msg) in cases {
        let mut args = vec!["sample", model(name), "-o", p(&png)];
        args.extend_from_slice(flags);
        let err = fails(&args);
        assert!(err.contains(msg), "{flags:?}: {err}");
    }
    assert!(!png.exists());
    // A flag that changes the sampler does change the samples.
    let run = |flags: &[&str]| {
        let st = dir.join("t.safetensors");
        let mut args = vec!["sample", model("var"), "--seed", "4", "-o", p(&png), "--save-tensors", p(&st)];
        args.extend_from_slice(flags);
        ok(&args);
        stage_tensors(&st)
    };
    assert_ne!(run(&[]), run(&["--temperature", "5", "--top-k", "0", "--top-p", "1"]));
    assert_ne!(run(&[]), run(&["--cfg", "1"]));
}

#[test]
fn decode_of_saved_tensors_reproduces_the_sampled_image() {
    let dir = temp_dir("decode");
    for name in FAMILIES {
        let (png, st) = (dir.join(format!("{name}.png")), dir.join(format!("{name}.safetensors")));
        ok(["sample", model(name), "--class", "6", "2", "--seed", "5", "-o", p(&png), "--save-tensors", p(&st)]);
        let (out, png2) = (dir.join(format!("{name}.decoded.safetensors")), dir.join(format!("{name}.decoded.png")));
        ok(["decode", model(name), "--tokens", p(&st), "-o", p(&out), "--png", p(&png2)]);
        let decoded = tensors(&out);
        assert_eq!(decoded.keys().collect::<Vec<_>>(), ["image"], "{name}");
        assert_eq!(decoded["image"], tensors(&st)["image"], "{name}: the decoded image differs from the sampled one");
        assert!(std::fs::read(&png).unwrap() == std::fs::read(&png2).unwrap(), "{name}: PNGs differ");
    }
    // A file with just the tokens, under the plain name or as its only tensor.
    let t = tensors(&dir.join("llamagen.safetensors"));
    for key in ["tokens", "whatever"] {
        let one = dir.join(format!("only-{key}.safetensors"));
        write_tensors(&one, &[(key, &t["latent.tokens"])]).unwrap();
        let out = dir.join(format!("only-{key}.out.safetensors"));
        ok(["decode", model("llamagen"), "--tokens", p(&one), "-o", p(&out)]);
        assert_eq!(tensors(&out)["image"], t["image"]);
    }
}

#[test]
fn decode_errors_name_what_the_decoder_takes() {
    let dir = temp_dir("decode-bad");
    let out = dir.join("out.safetensors");
    // Two tensors, neither the decoder's input.
    let two = dir.join("two.safetensors");
    let x = HostTensor::i64(vec![1, 16], vec![0; 16]);
    write_tensors(&two, &[("a", &x), ("b", &x)]).unwrap();
    let err = fails(["decode", model("llamagen"), "--tokens", p(&two), "-o", p(&out)]);
    assert!(err.contains("starts from one of: `codes` f32[N, 16, 8]; `tokens` i64[N, 16]"), "{err}");
    assert!(err.contains("the file holds `a`, `b`"), "{err}");
    // The right name with the wrong shape, and with the wrong dtype.
    let bad = dir.join("bad.safetensors");
    write_tensors(&bad, &[("tokens", &HostTensor::i64(vec![1, 15], vec![0; 15]))]).unwrap();
    let err = fails(["decode", model("llamagen"), "--tokens", p(&bad), "-o", p(&out)]);
    assert!(err.contains("[1, 16]") && err.contains("[1, 15]"), "{err}");
    // (Whole numbers in floats are taken as indices; others are not.)
    write_tensors(&bad, &[("tokens", &HostTensor::f32(vec![1, 16], vec![0.5; 16]))]).unwrap();
    let err = fails(["decode", model("llamagen"), "--tokens", p(&bad), "-o", p(&out)]);
    assert!(err.contains("not exactly i64"), "{err}");
    // Token indices outside the codebook.
    write_tensors(&bad, &[("tokens", &HostTensor::i64(vec![1, 16], vec![256; 16]))]).unwrap();
    let err = fails(["decode", model("llamagen"), "--tokens", p(&bad), "-o", p(&out)]);
    assert!(err.contains("out of range"), "{err}");
    // Not a safetensors file; no file at all.
    std::fs::write(&bad, b"not safetensors").unwrap();
    let err = fails(["decode", model("llamagen"), "--tokens", p(&bad), "-o", p(&out)]);
    assert!(err.contains("bad.safetensors"), "{err}");
    let err = fails(["decode", model("llamagen"), "--tokens", p(&dir.join("none.safetensors")), "-o", p(&out)]);
    assert!(err.contains("none.safetensors"), "{err}");
    assert!(!out.exists());
}

#[test]
fn init_weights_writes_the_seeded_random_checkpoint() {
    let dir = temp_dir("init");
    let w = dir.join("w.safetensors");
    ok(["init-weights", model("var"), "--seed", "9", "-o", p(&w)]);
    let spec = spec_of(&tiny("var"), &[]);
    let loaded = Weights::load(&w, &spec).unwrap();
    let random = Weights::random(&spec, 9);
    assert_eq!(loaded.len(), random.len());
    for (k, t) in random.iter() {
        assert_eq!(loaded.get(k), Some(t), "{k}");
    }
    // A checkpoint given with --weights is what runs: the file's seed-9 weights
    // give other images than the default random ones (seed 0), and seed 0's file
    // gives the same as no --weights.
    let w0 = dir.join("w0.safetensors");
    ok(["init-weights", model("var"), "-o", p(&w0)]);
    let png = |tag: &str, weights: Option<&Path>| {
        let out = dir.join(format!("{tag}.png"));
        let mut args = vec!["sample", model("var"), "--class", "1", "-o", p(&out)];
        if let Some(w) = weights {
            args.extend(["--weights", p(w)]);
        }
        let o = ok(&args);
        assert_eq!(weights.is_none(), stderr(&o).contains("random weights"), "{}", stderr(&o));
        std::fs::read(out).unwrap()
    };
    let (none, zero, nine) = (png("none", None), png("zero", Some(&w0)), png("nine", Some(&w)));
    assert!(none == zero);
    assert!(none != nine);
}

#[test]
fn missing_or_misshaped_weights_name_the_key() {
    let dir = temp_dir("weights");
    let w = dir.join("w.safetensors");
    ok(["init-weights", model("var"), "-o", p(&w)]);
    let mut t = tensors(&w);
    t.remove("class_emb.weight");
    let head = t.remove("head.weight").unwrap();
    let wrong = HostTensor::f32(vec![head.shape[0] + 1, head.shape[1]], vec![0.0; (head.shape[0] + 1) * head.shape[1]]);
    t.insert("head.weight".into(), wrong);
    let named: Vec<(&str, &HostTensor)> = t.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let bad = dir.join("bad.safetensors");
    write_tensors(&bad, &named).unwrap();
    let png = dir.join("x.png");
    let err = fails(["sample", model("var"), "--weights", p(&bad), "-o", p(&png)]);
    assert!(err.contains("missing `class_emb.weight` [11, 64]"), "{err}");
    assert!(err.contains("`head.weight` has shape"), "{err}");
    assert!(!png.exists(), "a failed run left an image");
    // Several files form one checkpoint: the generator and the key apart.
    let rest = dir.join("rest.safetensors");
    let emb = dir.join("emb.safetensors");
    let mut t = tensors(&w);
    let e = t.remove("class_emb.weight").unwrap();
    let named: Vec<(&str, &HostTensor)> = t.iter().map(|(k, v)| (k.as_str(), v)).collect();
    write_tensors(&rest, &named).unwrap();
    write_tensors(&emb, &[("class_emb.weight", &e)]).unwrap();
    ok(["sample", model("var"), "--weights", p(&rest), "--weights", p(&emb), "-o", p(&png)]);
    assert!(png.exists());
}

#[test]
fn bad_input_is_a_clean_error_and_writes_nothing() {
    let dir = temp_dir("errors");
    let png = dir.join("x.png");
    let st = dir.join("x.safetensors");
    let var = tiny("var");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--backend", "wgpu", "--adapter", "no such adapter"], "backend `wgpu` is not available"),
        (vec!["--adapter", "llvmpipe"], "use it with `--backend wgpu`"),
        (vec!["--backend", "cuda"], "use `--backend reference`"),
        (vec!["--class", "10"], "class 10 is out of range"),
        (vec!["--class", "-1"], "class -1 is out of range"),
        (vec!["-n", "0"], "-n must be at least 1"),
        (vec!["-n", "100000000", "--class", "1", "2"], "too many images"),
        (vec!["--weights", "/nonexistent/w.safetensors"], "/nonexistent/w.safetensors"),
        (vec!["--save-tensors", p(&png)], "ending in .safetensors"),
        (vec!["--save-tensors", "/nonexistent/dir/t.safetensors"], "does not exist"),
    ];
    for (flags, msg) in cases {
        let mut args = vec!["sample", p(&var), "-o", p(&png), "--save-tensors", p(&st)];
        if flags[0] == "--save-tensors" {
            args.truncate(4);
        }
        args.extend_from_slice(&flags);
        let err = fails(&args);
        assert!(err.contains(msg), "{flags:?}: {err}");
        assert!(!png.exists() && !st.exists(), "{flags:?} left a file behind");
    }
    // Not safetensors.
    std::fs::write(dir.join("junk.safetensors"), b"\x08\0\0\0\0\0\0\0{\"a\":1}").unwrap();
    let err = fails(["sample", p(&var), "--weights", p(&dir.join("junk.safetensors")), "-o", p(&png)]);
    assert!(err.contains("junk.safetensors"), "{err}");
    // The model file itself.
    let err = fails(["sample", p(&dir.join("none.ecar")), "-o", p(&png)]);
    assert!(err.contains("none.ecar"), "{err}");
    // A missing output directory is found before sampling.
    let err = fails(["sample", p(&var), "-o", p(&dir.join("no/such/dir.png"))]);
    assert!(err.contains("does not exist"), "{err}");
    // An unknown backend is a usage error (clap's list of values).
    let out = ecarc().args(["sample", p(&var), "--backend", "metal", "-o", p(&png)]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("reference, cpu, wgpu, cuda"), "{}", stderr(&out));
    assert!(!png.exists());
    // Every command that runs a model takes --backend.
    let w = dir.join("w.safetensors");
    for args in [
        vec!["decode", p(&var), "--tokens", p(&w), "-o", p(&st)],
        vec!["forward", p(&var), "--inputs", p(&w), "-o", p(&st)],
        vec!["dd-pairs", p(&var), "-o", p(&st)],
    ] {
        let mut args = args;
        args.extend(["--backend", "cuda"]);
        let err = fails(&args);
        assert!(err.contains("backend `cuda` is not available"), "{args:?}: {err}");
    }
}

#[test]
fn artifacts_sample_as_the_model_file_does() {
    let dir = temp_dir("artifact");
    ok(["build", model("llamagen"), "--out-dir", p(&dir)]);
    let art = dir.join("tiny_llamagen.ecarc.json");
    assert!(art.exists());
    for flags in [&[][..], &["--top-k", "1", "--temperature", "0.5"][..]] {
        let run = |file: &Path, tag: &str| {
            let png = dir.join(format!("{tag}.png"));
            let mut args = vec!["sample", p(file), "--class", "3", "--seed", "2", "-o", p(&png)];
            args.extend_from_slice(flags);
            ok(&args);
            std::fs::read(png).unwrap()
        };
        assert!(run(&tiny("llamagen"), "file") == run(&art, "artifact"), "{flags:?}");
    }
}

/// Random inputs of the forward signature (labels in range, tokens in the vocabulary).
fn forward_inputs(name: &str, n: usize) -> BTreeMap<String, HostTensor> {
    let mut rng = SeededRng::new(17);
    let mut m = BTreeMap::new();
    let labels = HostTensor::i64(vec![n], (0..n as i64).map(|i| (3 * i + 1) % 10).collect());
    match name {
        "var" => {
            m.insert("label_B".into(), labels);
            m.insert("x_BLCv_wo_first_l".into(), HostTensor::f32(vec![n, 20, 32], rng.normal(n * 20 * 32)));
        }
        "llamagen" => {
            m.insert("cond_idx".into(), labels);
            let idx = rng.uniform(n * 15).iter().map(|u| (u * 256.0) as i64 % 256).collect();
            m.insert("idx".into(), HostTensor::i64(vec![n, 15], idx));
        }
        "dit" => {
            m.insert("y".into(), labels);
            m.insert("x".into(), HostTensor::f32(vec![n, 4, 8, 8], rng.normal(n * 256)));
            m.insert("t".into(), HostTensor::f32(vec![n], (0..n).map(|i| 100.0 + 400.0 * i as f32).collect()));
        }
        "dit_cfg" => {
            // The conditional half, then the same inputs with the null class (10).
            let x = rng.normal(n / 2 * 256);
            let y: Vec<i64> = (0..n as i64 / 2).map(|i| i + 2).chain(std::iter::repeat_n(10, n / 2)).collect();
            m.insert("cfg_y".into(), HostTensor::i64(vec![n], y));
            m.insert("cfg_x".into(), HostTensor::f32(vec![n, 4, 8, 8], [x.clone(), x].concat()));
            m.insert("cfg_t".into(), HostTensor::f32(vec![n], vec![250.0; n]));
        }
        _ => unreachable!(),
    }
    m
}

fn save(path: &Path, m: &BTreeMap<String, HostTensor>) {
    let named: Vec<(&str, &HostTensor)> = m.iter().map(|(k, v)| (k.as_str(), v)).collect();
    write_tensors(path, &named).unwrap();
}

#[test]
fn forward_round_trip_matches_the_library() {
    let dir = temp_dir("forward");
    // (model, output file stem, --cfg, result name, result shape)
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, &'a str, Vec<usize>);
    let cases: [Case; 4] = [
        ("var", "var", None, "logits_BLV", vec![2, 21, 256]),
        ("llamagen", "llamagen", None, "logits", vec![2, 16, 256]),
        ("dit", "dit", None, "out", vec![2, 8, 8, 8]),
        ("dit", "dit_cfg", Some("4"), "cfg_out", vec![4, 8, 8, 8]),
    ];
    for (name, inputs_of, cfg, out_name, out_shape) in cases {
        let w = dir.join(format!("{name}.w.safetensors"));
        ok(["init-weights", model(name), "--seed", "1", "-o", p(&w)]);
        let rows = if cfg.is_some() { 4 } else { 2 };
        let inputs = forward_inputs(inputs_of, rows);
        let (inp, out) =
            (dir.join(format!("{inputs_of}.in.safetensors")), dir.join(format!("{inputs_of}.out.safetensors")));
        save(&inp, &inputs);
        let mut args = vec!["forward", model(name), "--weights", p(&w), "--inputs", p(&inp), "-o", p(&out)];
        if let Some(s) = cfg {
            args.extend(["--cfg", s]);
        }
        ok(&args);
        let got = tensors(&out);
        assert_eq!(got.keys().collect::<Vec<_>>(), [out_name], "{inputs_of}");
        assert_eq!(got[out_name].shape, out_shape, "{inputs_of}");
        assert!(got[out_name].as_f32().unwrap().iter().all(|v| v.is_finite()), "{inputs_of}");
        // The library, on the same weights and inputs and the same (default)
        // backend, gives the same bits.
        let spec = spec_of(&tiny(name), &[]);
        let weights = Weights::load(&w, &spec).unwrap();
        let backend = ecarc_runtime::cpu::Cpu::new();
        let g = Generator::from_spec(spec, &backend, &weights).unwrap();
        let want = g.forward(&inputs, cfg.map(|s| s.parse().unwrap())).unwrap();
        assert_eq!(want.len(), 1);
        assert_eq!(got[out_name], want[0].1, "{inputs_of}: the CLI and the library differ");
    }
    // Guidance gives both halves the guided values on the guided channels (the
    // first 3 of 8, as DiT's `forward_with_cfg`), and leaves the others alone.
    let spec = spec_of(&tiny("dit"), &[]);
    let guided = spec.sampler.cfg_channels.unwrap() as usize * 64;
    assert_eq!(guided, 3 * 64);
    let v = tensors(&dir.join("dit_cfg.out.safetensors"))["cfg_out"].as_f32().unwrap().to_vec();
    let (half, row) = (v.len() / 2, 8 * 64);
    for i in 0..2 {
        let (c, u) = (&v[i * row..(i + 1) * row], &v[half + i * row..half + (i + 1) * row]);
        assert_eq!(c[..guided], u[..guided], "guided channels of row {i}");
        assert_ne!(c[guided..], u[guided..], "unguided channels of row {i}");
    }
}

#[test]
fn forward_errors_show_the_signature() {
    let dir = temp_dir("forward-bad");
    let out = dir.join("out.safetensors");
    let inp = dir.join("in.safetensors");
    // A mis-shaped input.
    let mut inputs = forward_inputs("var", 2);
    inputs.insert("x_BLCv_wo_first_l".into(), HostTensor::f32(vec![2, 21, 32], vec![0.0; 2 * 21 * 32]));
    save(&inp, &inputs);
    let err = fails(["forward", model("var"), "--inputs", p(&inp), "-o", p(&out)]);
    assert!(err.contains("input `x_BLCv_wo_first_l` is f32[2, 21, 32]"), "{err}");
    assert!(err.contains("label_B: i64[2]") && err.contains("x_BLCv_wo_first_l: f32[2, 20, 32]"), "{err}");
    // A missing one.
    inputs.remove("x_BLCv_wo_first_l");
    save(&inp, &inputs);
    let err = fails(["forward", model("var"), "--inputs", p(&inp), "-o", p(&out)]);
    assert!(err.contains("missing input `x_BLCv_wo_first_l`"), "{err}");
    // No labels at all, and labels outside the class table.
    save(&inp, &BTreeMap::from([("idx".to_string(), HostTensor::i64(vec![1, 15], vec![0; 15]))]));
    let err = fails(["forward", model("llamagen"), "--inputs", p(&inp), "-o", p(&out)]);
    assert!(err.contains("cond_idx: i64[1]") && err.contains("idx: i64[1, 15]"), "{err}");
    let mut inputs = forward_inputs("llamagen", 1);
    inputs.insert("cond_idx".into(), HostTensor::i64(vec![1], vec![99]));
    save(&inp, &inputs);
    let err = fails(["forward", model("llamagen"), "--inputs", p(&inp), "-o", p(&out)]);
    assert!(err.contains("out of range"), "{err}");
    // --cfg is DiT's.
    save(&inp, &forward_inputs("var", 1));
    let err = fails(["forward", model("var"), "--inputs", p(&inp), "-o", p(&out), "--cfg", "2"]);
    assert!(err.contains("guided forward") && err.contains("has none"), "{err}");
    assert!(!out.exists());
    // --signature prints what to give.
    let o = ok(["forward", model("dit"), "--signature", "-n", "3"]);
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(s.contains("y: i64[3]") && s.contains("x: f32[3, 4, 8, 8]") && s.contains("t: f32[3]"), "{s}");
    let o = ok(["forward", model("dit"), "--signature", "--cfg", "4"]);
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(s.contains("cfg_y: i64[2]") && s.contains("cfg_x: f32[2, 4, 8, 8]"), "{s}");
}

#[test]
fn dd_pairs_writes_noise_tokens_and_labels() {
    let dir = temp_dir("dd");
    for (name, len, dim) in [("var", 21, 32), ("llamagen", 16, 8)] {
        let run = |tag: &str, seed: &str| {
            let out = dir.join(format!("{name}-{tag}.safetensors"));
            ok(["dd-pairs", model(name), "-n", "2", "--class", "4", "--seed", seed, "-o", p(&out)]);
            tensors(&out)
        };
        let (a, b, c) = (run("a", "1"), run("b", "1"), run("c", "2"));
        assert_eq!(a["noise"].shape, vec![2, len, dim], "{name}");
        assert_eq!(a["tokens"].shape, vec![2, len], "{name}");
        assert_eq!(a["labels"].as_i64().unwrap(), &[4, 4]);
        assert!(a["tokens"].as_i64().unwrap().iter().all(|t| (0..256).contains(t)), "{name}");
        assert_eq!(a, b, "{name}: the same seed gave different pairs");
        assert_ne!(a["noise"], c["noise"], "{name}");
    }
    // The pairs come from a teacher, not from a distilled model.
    let err = fails(["dd-pairs", model("var_dd"), "-n", "1", "-o", p(&dir.join("x.safetensors"))]);
    assert!(err.contains("teacher"), "{err}");
    assert!(!dir.join("x.safetensors").exists());
}

#[test]
fn given_noise_replaces_the_drawn_noise() {
    let dir = temp_dir("noise");
    let noise = dir.join("noise.safetensors");
    // The tiny DiT's latent is [1, 4, 8, 8]; DDIM adds no noise of its own, so the
    // seed no longer matters once the start is given.
    let mut rng = ecarc_runtime::rng::SeededRng::new(42);
    let t = HostTensor::f32(vec![1, 4, 8, 8], rng.normal(256));
    ecarc_runtime::weights::write_tensors(&noise, &[("noise", &t)]).unwrap();
    let run = |seed: &str, out: &str| {
        let save = dir.join(format!("{out}.safetensors"));
        ok([
            "sample",
            model("dit"),
            "--set",
            "sample.solver=ddim",
            "--class",
            "2",
            "--seed",
            seed,
            "--noise",
            p(&noise),
            "-o",
            p(&dir.join(format!("{out}.png"))),
            "--save-tensors",
            p(&save),
        ]);
        tensors(&save).remove("image").unwrap()
    };
    let (a, b) = (run("1", "a"), run("2", "b"));
    assert_eq!(a, b);
    let drawn = dir.join("c.safetensors");
    ok([
        "sample",
        model("dit"),
        "--set",
        "sample.solver=ddim",
        "--class",
        "2",
        "--seed",
        "1",
        "-o",
        p(&dir.join("c.png")),
        "--save-tensors",
        p(&drawn),
    ]);
    assert_ne!(tensors(&drawn).remove("image").unwrap(), a);
    // A start of the wrong shape is refused with the shape the model wants.
    let bad = dir.join("bad.safetensors");
    ecarc_runtime::weights::write_tensors(&bad, &[("noise", &HostTensor::f32(vec![1, 4, 4, 4], vec![0.0; 64]))])
        .unwrap();
    let err = fails(["sample", model("dit"), "--class", "2", "--noise", p(&bad), "-o", p(&dir.join("d.png"))]);
    assert!(err.contains("[1, 4, 8, 8]"), "{err}");
    assert!(!dir.join("d.png").exists());
    // A categorical model has no initial noise: refused, not ignored.
    let err = fails(["sample", model("var"), "--class", "2", "--noise", p(&noise), "-o", p(&dir.join("e.png"))]);
    assert!(err.contains("does not start from noise"), "{err}");
}

#[test]
fn bench_reports_medians_rates_and_the_ratio_of_two_models() {
    // The machine's limits are measured once into this test's own cache.
    let cache = temp_dir("bench");
    let o = ecarc()
        .env("XDG_CACHE_HOME", &cache)
        .args(["bench", "--runs", "3", "--warmup", "0", "--json", "--vs"])
        .arg(tiny("llamagen"))
        .arg(tiny("var"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let m = &v["model"];
    assert_eq!(m["model"], "tiny_var");
    assert_eq!(m["run_seconds"].as_array().unwrap().len(), 3);
    let mut runs: Vec<f64> = m["run_seconds"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    runs.sort_by(f64::total_cmp);
    assert_eq!(m["seconds_per_image"].as_f64().unwrap(), runs[1], "the median of three runs");
    let stages: Vec<&str> = m["stages"].as_array().unwrap().iter().map(|s| s[0].as_str().unwrap()).collect();
    assert_eq!(stages.last(), Some(&"decode"), "{stages:?}");
    let flops = m["flops_per_s"].as_f64().unwrap();
    let macs = m["macs"].as_f64().unwrap();
    assert!((flops - 2.0 * macs / runs[1]).abs() <= 1e-6 * flops);
    assert!(v["machine"]["fma_flops"].as_f64().unwrap() > 1e9);
    assert!(v["machine"]["read_bytes_per_s"].as_f64().unwrap() > 1e8);
    assert!(cache.join("ecarc/machine.json").is_file(), "the limits are cached");
    let second = &v["vs"];
    assert_eq!(second["model"], "tiny_llamagen");
    let ratio = v["speed_ratio"].as_f64().unwrap();
    assert_eq!(ratio, second["seconds_per_image"].as_f64().unwrap() / m["seconds_per_image"].as_f64().unwrap());

    // A missing model file is an `error:` line and exit status 1.
    let o = ecarc().env("XDG_CACHE_HOME", &cache).args(["bench", "no/such/model.ecar"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("error"), "{}", stderr(&o));
}
