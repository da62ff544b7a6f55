//! `ecarc build` speed, two ways:
//! - `build/library/*`: the library calls the CLI makes (check, lower, cost),
//!   without writing anything; with each phase alone beside it, to show where
//!   the time goes;
//! - `build/process/ecar_l`: the whole command as a user runs it, spawning the
//!   release binary `ecarc build models/ecar_l.ecar -o <tmpdir>` (process
//!   start-up, checking, lowering, costing, serialising and writing the
//!   artifact). Skipped with a message when the binary is missing.
//!
//! Goal: the whole process under 20 ms for `ecar_l`.
//! Run with `cargo bench --bench build`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use ecarc_compiler::artifact::{compile, Artifact};
use ecarc_compiler::cost::{self, Device};
use ecarc_compiler::lower::{self, SpecSpans};
use ecarc_compiler::session::{check_paths, Outcome, Session};
use ecarc_compiler::ModelSpec;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn model(name: &str) -> PathBuf {
    root().join(format!("models/{name}.ecar"))
}

/// What `ecarc build` does before writing: check the file, then lower and
/// cost each of its models.
fn build(path: &Path) -> Vec<Artifact> {
    let session = check_paths(&[path], &[]);
    assert!(!session.has_errors(), "{}", session.render_diags());
    let sources: Vec<String> = session.program.sources.files().map(|(_, f)| f.name.clone()).collect();
    session
        .models
        .iter()
        .map(|m| match (&m.outcome, &m.body) {
            (Outcome::Model(spec), Some(body)) => {
                compile(spec, &SpecSpans::from_body(body), sources.clone()).expect("the model lowers")
            }
            _ => panic!("`{}` is not a single design", m.name),
        })
        .collect()
}

/// The checked spec and its spans, for timing the later phases alone.
fn checked(path: &Path) -> (Session, ModelSpec, SpecSpans) {
    let session = check_paths(&[path], &[]);
    let m = &session.models[0];
    let (Outcome::Model(spec), Some(body)) = (&m.outcome, &m.body) else { panic!("not a single design") };
    let (spec, spans) = ((**spec).clone(), SpecSpans::from_body(body));
    (session, spec, spans)
}

/// The release binary: the one cargo built for this benchmark, else
/// `target/release/ecarc`.
fn binary() -> Option<PathBuf> {
    let built = option_env!("CARGO_BIN_EXE_ecarc").map(PathBuf::from);
    built.into_iter().chain([root().join("target/release/ecarc")]).find(|p| p.is_file())
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("build");
    for name in ["ecar_l", "var_d16", "llamagen_l", "dit_xl2"] {
        let path = model(name);
        // llamagen_l takes about ten times longer: fewer samples keep the run short.
        g.sample_size(if name == "llamagen_l" { 20 } else { 100 });
        g.bench_function(format!("library/{name}"), |b| b.iter(|| build(black_box(&path))));
    }

    // Phase by phase (the library total is about their sum). llamagen_l's plan
    // has 256 runs (one a token), ecar_l's 14.
    let devices = [Device::this_cpu(), Device::h100()];
    for name in ["ecar_l", "llamagen_l"] {
        let path = model(name);
        g.sample_size(if name == "llamagen_l" { 20 } else { 100 });
        g.bench_function(format!("phase/check/{name}"), |b| b.iter(|| check_paths(&[black_box(&path)], &[])));
        let (_session, spec, spans) = checked(&path);
        g.bench_function(format!("phase/lower/{name}"), |b| b.iter(|| lower::lower(black_box(&spec), &spans).unwrap()));
        let program = lower::lower(&spec, &spans).unwrap();
        g.bench_function(format!("phase/cost/{name}"), |b| {
            b.iter(|| cost::report(black_box(&spec), &program, &devices))
        });
        let artifact = compile(&spec, &spans, vec![]).unwrap();
        g.bench_function(format!("phase/to_json/{name}"), |b| b.iter(|| black_box(&artifact).to_json()));
    }

    // The whole command, process start-up and artifact writing included.
    g.sample_size(30).measurement_time(Duration::from_secs(8));
    let path = model("ecar_l");
    match binary() {
        None => eprintln!(
            "build/process/ecar_l: skipped, no release binary at target/release/ecarc (run `cargo build --release`)"
        ),
        Some(bin) => {
            let out = std::env::temp_dir().join(format!("ecarc-bench-build-{}", std::process::id()));
            g.bench_function("process/ecar_l", |b| {
                b.iter(|| {
                    let status = Command::new(&bin)
                        .args(["build".as_ref(), path.as_os_str(), "-o".as_ref(), out.as_os_str()])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .expect("ecarc starts");
                    assert!(status.success(), "`{} build` failed: {status}", bin.display());
                })
            });
            let _ = std::fs::remove_dir_all(&out);
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
