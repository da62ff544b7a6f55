//! `ecarc check` speed: load, resolve and check each reference model file (the
//! whole library path the CLI takes, minus process start-up). Goal: well under
//! 10 ms a file.

use criterion::{criterion_group, criterion_main, Criterion};
use ecarc_compiler::session::check_paths;
use std::path::PathBuf;

fn models() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "ecar"))
        .collect();
    v.sort();
    v
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("check");
    for name in ["ecar_l", "var_d16", "llamagen_3b", "dit_xl2"] {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("models/{name}.ecar"));
        g.bench_function(name, |b| {
            b.iter(|| {
                let s = check_paths(&[&path], &[]);
                assert!(!s.has_errors());
                s
            })
        });
    }
    let all = models();
    g.bench_function(format!("all_{}_models", all.len()), |b| {
        b.iter(|| {
            let s = check_paths(&all, &[]);
            assert!(!s.has_errors());
            s
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
