//! Costing designs from the symbolic formulas (`cost::formula`): a formula is
//! prepared once per model structure, then each design is a slot vector.
//! Goal: under 10 µs a design. Each iteration costs 100,000 designs
//! (varying depth, width and the stage schedule); the throughput line gives
//! designs per second. For scale, `lower_and_cost` lowers and costs one design
//! through the IR, the path the formulas replace.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use ecarc_compiler::artifact::compile;
use ecarc_compiler::cost::formula::{formula, Compiled, Formula};
use ecarc_compiler::lower::SpecSpans;
use ecarc_compiler::session::{check_paths, Outcome};
use ecarc_compiler::spec::{Layout, ScheduleSpec, StageSpec};
use ecarc_compiler::ModelSpec;
use std::path::PathBuf;

const DESIGNS: usize = 100_000;

fn prepared(model: &str) -> (ModelSpec, Compiled, Vec<i128>) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("models/{model}.ecar"));
    let s = check_paths(&[&path], &[]);
    assert!(!s.has_errors());
    let m = s.models.into_iter().next().unwrap();
    let (Outcome::Model(spec), Some(body)) = (m.outcome, m.body) else { panic!("{model}: one model") };
    let f = formula(&spec, &body).unwrap();
    let c = f.compile();
    let slots = c.slots(&Formula::values(&spec, &body).unwrap()).unwrap();
    (*spec, c, slots)
}

/// Square stages over `scales`, flow segments split evenly, `steps` each.
fn schedule(base: &ScheduleSpec, scales: &[u64], steps: u64) -> ScheduleSpec {
    let n = scales.len();
    let continuous = matches!(&base.layout, Layout::Stages(s) if s.iter().any(|s| s.segment.is_some()));
    let stages = scales
        .iter()
        .enumerate()
        .map(|(i, &s)| StageSpec {
            grid: [s, s],
            tokens: s * s,
            segment: continuous.then(|| [1.0 - i as f64 / n as f64, 1.0 - (i + 1) as f64 / n as f64]),
            steps: if continuous { steps } else { 1 },
        })
        .collect();
    ScheduleSpec { layout: Layout::Stages(stages), ..base.clone() }
}

const SCALES: &[&[u64]] =
    &[&[1, 2, 3, 4, 5, 6, 8, 10, 13, 16], &[1, 2, 4, 8, 16], &[1, 4, 16], &[4, 16], &[1, 2, 3, 4, 6, 8, 12, 16]];

/// Slot vectors for `DESIGNS` designs: depth 8..=40, (for ECAR) backbone width
/// and head depth/width, and one of the schedules.
fn designs(spec: &ModelSpec, c: &Compiled, base: &[i128]) -> Vec<Vec<i128>> {
    let schedules: Vec<ScheduleSpec> =
        SCALES.iter().flat_map(|s| [4, 8].map(|steps| schedule(&spec.schedule, s, steps))).collect();
    let slot = |n: &str| c.slot(n);
    (0..DESIGNS)
        .map(|i| {
            let mut v = base.to_vec();
            if let Some(k) = slot("backbone.depth") {
                v[k] = 8 + (i % 33) as i128;
            }
            if let Some(k) = slot("backbone.width") {
                v[k] = 256 * (2 + (i / 33 % 5) as i128);
            }
            if let Some(k) = slot("head.depth") {
                v[k] = 4 + (i / 165 % 9) as i128;
            }
            if let Some(k) = slot("head.width") {
                v[k] = 256 * (3 + (i / 1485 % 4) as i128);
            }
            c.set_schedule(&mut v, &schedules[i % schedules.len()]);
            v
        })
        .collect()
}

fn bench(cr: &mut Criterion) {
    let mut g = cr.benchmark_group("formula");
    g.sample_size(20);
    g.throughput(Throughput::Elements(DESIGNS as u64));
    for model in ["var_d16", "ecar_l", "dit_xl2", "llamagen_b"] {
        let (spec, c, base) = prepared(model);
        let points = designs(&spec, &c, &base);
        // The evaluation alone: slot vectors ready.
        g.bench_function(format!("{model}/eval_100k"), |b| {
            b.iter(|| {
                let mut acc = 0i128;
                for p in &points {
                    let cost = c.eval(black_box(p)).expect("no overflow");
                    acc = acc.wrapping_add(cost.params ^ cost.forward_macs ^ cost.sample_macs);
                }
                acc
            })
        });
    }
    // Setting the schedule symbols from a stage list (schedule prepared) + eval.
    let (spec, c, base) = prepared("ecar_l");
    let schedules: Vec<ScheduleSpec> = SCALES.iter().map(|s| schedule(&spec.schedule, s, 8)).collect();
    let (kd, kw) = (c.slot("backbone.depth").unwrap(), c.slot("backbone.width").unwrap());
    g.bench_function("ecar_l/set_schedule_and_eval_100k", |b| {
        let mut v = base.clone();
        b.iter(|| {
            let mut acc = 0i128;
            for i in 0..DESIGNS {
                v[kd] = 8 + (i % 33) as i128;
                v[kw] = 256 * (2 + (i / 33 % 5) as i128);
                c.set_schedule(&mut v, &schedules[i % schedules.len()]);
                acc = acc.wrapping_add(c.eval(black_box(&v)).expect("no overflow").sample_macs);
            }
            acc
        })
    });
    g.finish();

    // For scale: one design through lowering and the IR cost model.
    let mut g = cr.benchmark_group("formula_baseline");
    g.sample_size(10);
    for model in ["var_d16", "ecar_l"] {
        let (spec, _, _) = prepared(model);
        g.bench_function(format!("{model}/lower_and_cost_1"), |b| {
            b.iter(|| compile(black_box(&spec), &SpecSpans::default(), vec![]).unwrap().report.sample_macs)
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
