//! Hostile input to the `ecarc` binary (issue 11): outputs that are inputs,
//! FIFOs, sockets, directories, read-only files and symlinks; signals; closed
//! pipes; non-finite tensors and settings; runs too large for the machine;
//! files too large to check; search inputs that never end. Every case checks
//! the exit status, the message and the state of every file afterwards: the
//! inputs byte-identical, no temporary file left, FIFOs and other non-regular
//! files untouched. Runs as the CI user (root in CI): the root-only case (a
//! character device, made with `mknod` like `/dev/null`, never the real one)
//! is guarded by the effective uid, and its non-root neighbours always run.

use crate::common::root;
use ecarc_runtime::weights::write_tensors;
use ecarc_runtime::HostTensor;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn ecarc() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ecarc"));
    c.arg("--color").arg("never");
    c
}

/// A fresh directory for one test.
fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ecarc-hostile-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn tiny(name: &str) -> PathBuf {
    root().join(format!("examples/tiny/{name}.ecar"))
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Run `ecarc ARGS` in `dir`, which must fail cleanly: exit 1, an `error`
/// message containing `want`, no panic. Returns the output text.
fn refused(dir: &Path, args: &[&str], want: &str) -> String {
    let o = ecarc().current_dir(dir).args(args).output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "ecarc {args:?}: expected exit 1:\n{t}");
    assert!(t.contains("error"), "ecarc {args:?}: no error:\n{t}");
    assert!(t.contains(want), "ecarc {args:?}: expected `{want}` in:\n{t}");
    assert!(!t.contains("panicked"), "ecarc {args:?} panicked:\n{t}");
    t
}

fn succeeds(dir: &Path, args: &[&str]) -> Output {
    let o = ecarc().current_dir(dir).args(args).output().unwrap();
    assert!(o.status.success(), "ecarc {args:?} failed:\n{}", text(&o));
    o
}

/// Every file of `dir` (not recursive): name -> contents (None for a
/// non-regular file), to compare before and after a run.
fn state(dir: &Path) -> Vec<(String, Option<Vec<u8>>, String)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            let kind = format!("{:?}", meta.file_type());
            let bytes = if meta.is_file() { Some(std::fs::read(e.path()).unwrap()) } else { None };
            (e.file_name().to_string_lossy().into_owned(), bytes, kind)
        })
        .collect();
    v.sort();
    v
}

fn no_temporary_files(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.contains(".ecarc-tmp") && !name.contains(".ecarc-bak"), "left behind: {name}");
    }
}

/// The effective uid (the owner of a file this process creates).
fn euid(dir: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    let p = dir.join(".uid-probe");
    std::fs::write(&p, b"").unwrap();
    let uid = std::fs::metadata(&p).unwrap().uid();
    std::fs::remove_file(&p).unwrap();
    uid
}

fn mkfifo(path: &Path) {
    let s = Command::new("mkfifo").arg(path).status().expect("mkfifo (coreutils) is installed");
    assert!(s.success());
}

fn is_fifo(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path).unwrap().file_type().is_fifo()
}

/// A directory holding a copy of the tiny VAR model (`m.ecar`) and its random
/// weights (`w.safetensors`).
fn workspace(tag: &str) -> PathBuf {
    let dir = temp_dir(tag);
    std::fs::copy(tiny("var"), dir.join("m.ecar")).unwrap();
    succeeds(&dir, &["init-weights", "m.ecar", "-o", "w.safetensors"]);
    dir
}

#[test]
fn an_output_that_is_an_input_is_refused_before_the_run() {
    let dir = workspace("alias");
    // A tokens file, a forward input and a checkpoint to alias.
    succeeds(&dir, &["sample", "m.ecar", "-o", "s.png", "--save-tensors", "t.safetensors"]);
    std::fs::hard_link(dir.join("m.ecar"), dir.join("hard.png")).unwrap();
    std::os::unix::fs::symlink("m.ecar", dir.join("link.png")).unwrap();
    std::os::unix::fs::symlink("w.safetensors", dir.join("wlink.safetensors")).unwrap();
    let before = state(&dir);
    let cases: Vec<Vec<&str>> = vec![
        // The model file, by a hard link and by a symlink (an -o named m.ecar is not a PNG).
        vec!["sample", "m.ecar", "-o", "hard.png"],
        vec!["sample", "./m.ecar", "-o", "link.png"],
        // --save-tensors onto --weights, by another spelling and through a symlink.
        vec!["sample", "m.ecar", "--weights", "w.safetensors", "-o", "x.png", "--save-tensors", "./w.safetensors"],
        vec!["sample", "m.ecar", "--weights", "w.safetensors", "-o", "x.png", "--save-tensors", "wlink.safetensors"],
        // decode, forward and import onto their inputs.
        vec!["decode", "m.ecar", "--tokens", "t.safetensors", "-o", "./t.safetensors"],
        vec!["forward", "m.ecar", "--inputs", "t.safetensors", "-o", "t.safetensors"],
        vec!["import", "w.safetensors", "--model", "m.ecar", "-o", "./w.safetensors"],
        vec!["init-weights", "m.ecar", "--weights-are-not-an-option"],
    ];
    for args in &cases[..7] {
        refused(&dir, args, "is the input");
        assert_eq!(state(&dir), before, "{args:?} changed the directory");
    }
    // (A usage error is exit 1 too.)
    refused(&dir, &cases[7], "unexpected argument");
    // `-o m.ecar` is refused by its extension before anything else.
    refused(&dir, &["sample", "m.ecar", "-o", "m.ecar"], "ending in .png");
    refused(&dir, &["import", "m.ecar", "--model", "m.ecar", "-o", "m.ecar"], "ending in .safetensors");
    assert_eq!(state(&dir), before);
}

#[test]
fn search_merge_onto_its_input_and_its_unbounded_inputs_are_refused() {
    let dir = temp_dir("merge");
    let space = root().join("examples/ecar_space.ecar");
    succeeds(&dir, &["search", space.to_str().unwrap(), "-o", "shard.json"]);
    let before = state(&dir);
    refused(&dir, &["search", "merge", "shard.json", "-o", "./shard.json"], "is the input");
    assert_eq!(state(&dir), before);
    // A FIFO (no writer: reading it would block forever) and a file past the cap.
    mkfifo(&dir.join("pipe.json"));
    let huge = dir.join("huge.json");
    std::fs::File::create(&huge).unwrap().set_len((256 << 20) + 1).unwrap(); // sparse
    let t0 = Instant::now();
    refused(&dir, &["search", "merge", "pipe.json", "-o", "m.json"], "named pipe (FIFO)");
    refused(&dir, &["search", "merge", "huge.json", "-o", "m.json"], "larger than 256 MiB");
    assert!(t0.elapsed() < Duration::from_secs(30), "took {:?}", t0.elapsed());
    assert!(is_fifo(&dir.join("pipe.json")));
    assert!(!dir.join("m.json").exists());
    no_temporary_files(&dir);
}

#[test]
fn non_regular_and_read_only_outputs_are_never_replaced() {
    let dir = workspace("kinds");
    mkfifo(&dir.join("fifo.png"));
    std::fs::create_dir(dir.join("dir.png")).unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(dir.join("sock.png")).unwrap();
    std::os::unix::fs::symlink("fifo.png", dir.join("to-fifo.png")).unwrap();
    std::fs::write(dir.join("ro.png"), b"keep me").unwrap();
    let mut perms = std::fs::metadata(dir.join("ro.png")).unwrap().permissions();
    perms.set_readonly(true);
    std::fs::set_permissions(dir.join("ro.png"), perms).unwrap();
    let mut cases = vec![
        ("fifo.png", "a named pipe (FIFO)"),
        ("dir.png", "a directory"),
        ("sock.png", "a socket"),
        ("to-fifo.png", "a named pipe (FIFO)"),
        ("ro.png", "read-only"),
    ];
    // As root, `-o /dev/null` replaced the device node: try a character device
    // made here the same way (never the real /dev/null).
    let root_only = euid(&dir) == 0;
    if root_only {
        let s = Command::new("mknod").arg(dir.join("null.png")).args(["c", "1", "3"]).status().unwrap();
        assert!(s.success());
        cases.push(("null.png", "a character device"));
    }
    let before = state(&dir);
    for (out, why) in &cases {
        refused(&dir, &["sample", "m.ecar", "-o", out], why);
        refused(&dir, &["decode", "m.ecar", "--tokens", "w.safetensors", "-o", "x.safetensors", "--png", out], why);
        assert_eq!(state(&dir), before, "-o {out} changed the directory");
    }
    assert!(is_fifo(&dir.join("fifo.png")));
    if root_only {
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::metadata(dir.join("null.png")).unwrap().file_type().is_char_device());
    }
    no_temporary_files(&dir);
}

#[test]
fn unwritable_places_fail_before_the_work() {
    let dir = workspace("unwritable");
    let space = root().join("examples/ecar_space.ecar");
    let space = space.to_str().unwrap();
    // A directory that cannot hold the output: read-only for a user; for root
    // (who writes anywhere) its neighbour, a "directory" that is a file.
    let blocked = if euid(&dir) == 0 {
        std::fs::write(dir.join("notadir"), b"x").unwrap();
        ("notadir/out", "is not a directory")
    } else {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir(dir.join("ro")).unwrap();
        std::fs::set_permissions(dir.join("ro"), std::fs::Permissions::from_mode(0o555)).unwrap();
        ("ro/out", "not writable")
    };
    let before = state(&dir);
    let png = format!("{}.png", blocked.0);
    let json = format!("{}.json", blocked.0);
    let st = format!("{}.safetensors", blocked.0);
    refused(&dir, &["sample", "m.ecar", "-o", &png], blocked.1);
    refused(&dir, &["sample", "m.ecar", "-o", "ok.png", "--save-tensors", &st], blocked.1);
    refused(&dir, &["init-weights", "m.ecar", "-o", &st], blocked.1);
    // search: refused before the search (no speed line), and nothing written.
    let t = refused(&dir, &["search", space, "-o", &json], blocked.1);
    assert!(!t.contains("designs/s"), "the search ran first:\n{t}");
    let t = refused(&dir, &["search", space, "-o", "x.json", "--plot", "nodir/x.png"], "does not exist");
    assert!(!t.contains("designs/s"), "the search ran first:\n{t}");
    assert_eq!(state(&dir), before);
    no_temporary_files(&dir);
}

#[test]
fn a_symlink_output_is_written_through_and_outputs_are_all_or_none() {
    let dir = workspace("through");
    std::fs::write(dir.join("real.png"), b"old").unwrap();
    std::os::unix::fs::symlink("real.png", dir.join("link.png")).unwrap();
    succeeds(&dir, &["sample", "m.ecar", "-o", "link.png"]);
    assert!(std::fs::symlink_metadata(dir.join("link.png")).unwrap().file_type().is_symlink());
    assert_eq!(&std::fs::read(dir.join("real.png")).unwrap()[..4], b"\x89PNG");
    // One bad output refuses the run: neither output is written.
    std::fs::write(dir.join("ro.safetensors"), b"keep").unwrap();
    let mut perms = std::fs::metadata(dir.join("ro.safetensors")).unwrap().permissions();
    perms.set_readonly(true);
    std::fs::set_permissions(dir.join("ro.safetensors"), perms).unwrap();
    refused(&dir, &["sample", "m.ecar", "-o", "new.png", "--save-tensors", "ro.safetensors"], "read-only");
    assert!(!dir.join("new.png").exists());
    refused(&dir, &["sample", "m.ecar", "-o", "x.jpg"], "ending in .png");
    refused(&dir, &["forward", "m.ecar", "--inputs", "w.safetensors", "-o", "out.json"], "ending in .safetensors");
    no_temporary_files(&dir);
}

/// Spawn `ecarc ARGS` in `dir`, wait until a temporary output file appears,
/// send `signal`, and return the exit status.
fn interrupted(dir: &Path, args: &[&str], signal: &str) -> Option<i32> {
    let mut child = ecarc().current_dir(dir).args(args).stderr(Stdio::piped()).spawn().unwrap();
    let t0 = Instant::now();
    loop {
        let tmp =
            std::fs::read_dir(dir).unwrap().any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".ecarc-tmp"));
        if tmp {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("ecarc {args:?} ended ({status}) before it created its temporary file");
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "no temporary file after 60 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    let s = Command::new("kill").arg(format!("-{signal}")).arg(child.id().to_string()).status().unwrap();
    assert!(s.success());
    let status = child.wait().unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(!err.contains("panicked"), "{err}");
    status.code()
}

#[test]
fn ctrl_c_and_sigterm_remove_the_temporary_file() {
    // var_d16's random checkpoint is 1.2 GB: the signal arrives long before it is written.
    let dir = temp_dir("signals");
    let model = root().join("models/var_d16.ecar");
    let model = model.to_str().unwrap();
    for (signal, code) in [("INT", 130), ("TERM", 143)] {
        let got = interrupted(&dir, &["init-weights", model, "-o", "w.safetensors"], signal);
        assert_eq!(got, Some(code), "SIG{signal}");
        assert_eq!(state(&dir), vec![], "SIG{signal} left files behind");
    }
}

#[test]
fn a_closed_stdout_ends_each_printing_command_quietly() {
    let dir = temp_dir("pipes");
    let var = root().join("models/var_d16.ecar");
    let var = var.to_str().unwrap();
    let models: Vec<String> = crate::common::model_files().iter().map(|p| p.display().to_string()).collect();
    let tiny_var = tiny("var");
    let space = root().join("examples/ecar_space.ecar");
    let mut cases: Vec<Vec<&str>> = vec![
        vec!["build", "--snapshot", var],
        vec!["build", "--json", var],
        vec!["build", var],
        vec!["graph", var],
        vec!["graph", "--format", "dot", var],
        vec!["forward", "--signature", "-n", "64", tiny_var.to_str().unwrap()],
        vec!["search", space.to_str().unwrap(), "--json"],
        vec!["--help"],
    ];
    let mut check = vec!["check", "--json"];
    check.extend(models.iter().map(String::as_str));
    cases.push(check);
    let mut sigpiped = 0;
    for args in &cases {
        for keep in [0usize, 100] {
            let mut child =
                ecarc().current_dir(&dir).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
            // A reader that takes `keep` bytes and closes.
            let mut out = child.stdout.take().unwrap();
            let mut buf = vec![0u8; keep];
            out.read_exact(&mut buf).unwrap();
            drop(out);
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            let status = child.wait().unwrap();
            assert!(!err.contains("panicked"), "ecarc {args:?} | head -c {keep}: {err}");
            assert!(!err.contains("error"), "ecarc {args:?} | head -c {keep}: {err}");
            match status.code() {
                Some(0) => {}
                Some(141) => sigpiped += 1,
                other => panic!("ecarc {args:?} | head -c {keep}: exit {other:?}\n{err}"),
            }
        }
    }
    // The large outputs do meet the closed pipe.
    assert!(sigpiped >= cases.len(), "only {sigpiped} runs saw the closed pipe");
    no_temporary_files(&dir);
    no_temporary_files(&dir.join("ecarc-out"));
}

#[test]
fn settings_and_inputs_that_make_numbers_non_finite_are_refused() {
    let dir = workspace("numerics");
    let before = |d: &Path| state(d);
    let b = before(&dir);
    refused(
        &dir,
        &["sample", "m.ecar", "--temperature", "1e-39", "-o", "x.png"],
        "--temperature 1e-39 is out of range",
    );
    refused(&dir, &["sample", "m.ecar", "--cfg", "1e5", "-o", "x.png"], "E0438");
    refused(&dir, &["sample", "m.ecar", "--set", "sample.temperature=1e-300", "-o", "x.png"], "E0419");
    refused(&dir, &["check", "m.ecar", "--set", "sample.temperature=1e-300"], "E0419");
    refused(&dir, &["check", "m.ecar", "--set", "sample.cfg=500"], "E0438");
    assert_eq!(state(&dir), b);
    // NaN and infinity in the tensors a run reads.
    let mut v = vec![0.5f32; 2 * 3 * 4];
    v[13] = f32::NAN;
    v[20] = f32::INFINITY;
    let bad = HostTensor::f32(vec![2, 3, 4], v);
    write_tensors(&dir.join("nan.safetensors"), &[("x", &bad)]).unwrap();
    let b = state(&dir);
    let want = "tensor `x` has 2 non-finite value(s) (the first, NaN, at index [1, 0, 1])";
    refused(&dir, &["decode", "m.ecar", "--tokens", "nan.safetensors", "-o", "i.safetensors", "--png", "i.png"], want);
    refused(&dir, &["forward", "m.ecar", "--inputs", "nan.safetensors", "-o", "f.safetensors"], want);
    let ecar = tiny("ecar");
    refused(&dir, &["sample", ecar.to_str().unwrap(), "--noise", "nan.safetensors", "-o", "n.png"], want);
    assert_eq!(state(&dir), b);
    no_temporary_files(&dir);
}

#[test]
fn runs_past_the_machine_memory_are_refused_before_allocating() {
    let dir = workspace("memory");
    let b = state(&dir);
    let t0 = Instant::now();
    let t = refused(&dir, &["sample", "m.ecar", "--set", "tokenizer.vocab=4294967296", "-o", "x.png"], "needs about");
    assert!(t.contains("this machine has") && t.contains("TiB"), "{t}");
    assert!(t0.elapsed() < Duration::from_secs(60));
    // The limit can be lowered (a container): the tiny model no longer fits 1 MB.
    let o = ecarc()
        .current_dir(&dir)
        .env("ECARC_MEMORY_LIMIT", "1000000")
        .args(["sample", "m.ecar", "-o", "x.png"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("(ECARC_MEMORY_LIMIT)"), "{}", text(&o));
    assert_eq!(state(&dir), b);
}

#[test]
fn a_16_mib_file_of_small_models_is_refused_quickly() {
    // As the issue found it: 168,000 small models in 15.5 MB.
    let dir = temp_dir("bigfile");
    let mut text = String::from("import \"std/var.ecar\"\n");
    for i in 0..168_000 {
        text.push_str(&format!(
            "model m{i:06} extends var_base {{ backbone {{ depth 2 }} }}  // a small variant of VAR with two blocks\n"
        ));
    }
    assert!(text.len() > 15 << 20 && text.len() < 16 << 20, "{}", text.len());
    std::fs::write(dir.join("big.ecar"), &text).unwrap();
    let t0 = Instant::now();
    let t = refused(&dir, &["check", "big.ecar"], "E0210");
    assert!(t.contains("too much to check in one run"), "{t}");
    assert!(t0.elapsed() < Duration::from_secs(60), "took {:?}", t0.elapsed());
}

#[test]
fn search_samples_are_bounded_like_enumeration() {
    let dir = temp_dir("samples");
    let space = root().join("tests/search/ecar_search.ecar");
    let t0 = Instant::now();
    refused(
        &dir,
        &["search", space.to_str().unwrap(), "--samples", "1000000000000"],
        "--samples 1000000000000 is more than",
    );
    assert!(t0.elapsed() < Duration::from_secs(30));
}

#[test]
fn newcomer_paths() {
    let dir = temp_dir("newcomer");
    // `ecarc check examples/` is clean.
    succeeds(&root(), &["check", "examples/"]);
    // A UTF-8 byte order mark is accepted, and `fmt` keeps it.
    let bom = format!("\u{feff}{}", std::fs::read_to_string(tiny("var")).unwrap());
    std::fs::write(dir.join("bom.ecar"), &bom).unwrap();
    succeeds(&dir, &["check", "bom.ecar"]);
    succeeds(&dir, &["fmt", "bom.ecar"]);
    assert!(std::fs::read_to_string(dir.join("bom.ecar")).unwrap().starts_with('\u{feff}'));
    // --set names the variant in the report and the artifact's file name.
    let var = root().join("models/var_d16.ecar");
    let o = succeeds(&dir, &["build", var.to_str().unwrap(), "--set", "backbone.depth=20", "--set", "sample.cfg=2.5"]);
    let name = "var_d16+backbone.depth=20+sample.cfg=2.5";
    assert!(text(&o).contains(&format!("Model: {name}")), "{}", text(&o));
    let files: Vec<String> = std::fs::read_dir(dir.join("ecarc-out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, [format!("{name}.ecarc.json")]);
    // Exit statuses: argument errors are 1, help and version 0.
    refused(&dir, &["frobnicate"], "unrecognized subcommand");
    refused(&dir, &["check"], "required");
    refused(&dir, &["sample", "m.ecar", "-n", "x", "-o", "x.png"], "invalid value");
    succeeds(&dir, &["--help"]);
    succeeds(&dir, &["--version"]);
    succeeds(&dir, &["sample", "--help"]);
}

#[test]
fn graph_dot_of_several_programs_is_one_document() {
    let o = succeeds(&root(), &["graph", "--format", "dot", tiny("var").to_str().unwrap()]);
    let dot = String::from_utf8(o.stdout).unwrap();
    assert_eq!(dot.matches("digraph ").count(), 1, "{dot}");
    let programs = dot.matches("subgraph \"cluster_").count();
    assert!(programs >= 4, "{programs} clusters");
    // Every node is declared once, every edge joins declared nodes, braces balance.
    let mut declared = std::collections::BTreeSet::new();
    let mut depth = 0i32;
    for line in dot.lines() {
        let t = line.trim();
        if !t.contains("[label=") {
            depth += t.matches('{').count() as i32 - t.matches('}').count() as i32;
        }
        if let Some((id, rest)) = t.split_once(' ') {
            if rest.starts_with("[label=") {
                assert!(declared.insert(id.to_string()), "{id} declared twice");
            }
        }
    }
    assert_eq!(depth, 0);
    for line in dot.lines() {
        if let Some((a, rest)) = line.trim().split_once(" -> ") {
            let b = rest.split([' ', ';']).next().unwrap();
            assert!(declared.contains(a) && declared.contains(b), "{line}");
        }
    }
    // Graphviz, where installed, reads it.
    if Command::new("dot").arg("-V").output().is_ok() {
        let mut child = Command::new("dot").arg("-Tsvg").stdin(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(dot.as_bytes()).unwrap();
        assert!(child.wait().unwrap().success());
    }
}
