//! `ecarc search` speed: designs checked, costed and kept on the front per
//! second, on the 134,784 ECAR stage designs of `tests/search/ecar_search.ecar`.
//! Goal: at least 100,000 designs a second on the 2-core reference machine.
//! The throughput line of `search/ecar_search_all` is that figure (every
//! design: memoised checks, formula costs, constraints, Pareto front, broken
//! designs grouped). `one_thread` runs the same on one thread.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ecarc_compiler::search::objective::parse_objectives;
use ecarc_compiler::search::{self, Options, Selection, Shard, Space};
use ecarc_compiler::session::load_models;
use std::path::PathBuf;

fn bench(c: &mut Criterion) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/search/ecar_search.ecar");
    let l = load_models(&[&path], &[]);
    assert!(l.diags.iter().all(|d| !d.is_error()));
    let (name, body) = l.models.into_iter().next().expect("one model");
    let space = Space::new(name, body, &l.program.sources).expect("valid axes");
    let opts = Options {
        objectives: parse_objectives("sample_macs,max:params").unwrap(),
        selection: Selection::All,
        shard: Shard::ALL,
    };
    let mut g = c.benchmark_group("search");
    g.sample_size(10);
    g.throughput(Throughput::Elements(space.total as u64));
    g.bench_function(format!("ecar_search_all_{}", space.total), |b| {
        b.iter(|| {
            let (r, _) = search::run(&space, "ecar_search.ecar", &opts, &l.program.sources, &|_| {}).unwrap();
            assert_eq!(r.counts.designs, space.total);
            r.front.len()
        })
    });
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    g.bench_function("ecar_search_all_one_thread", |b| {
        b.iter(|| {
            one.install(|| {
                search::run(&space, "ecar_search.ecar", &opts, &l.program.sources, &|_| {}).unwrap().0.front.len()
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
