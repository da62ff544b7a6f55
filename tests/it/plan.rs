//! The plan is what runs: every tiny model with every solver it accepts runs
//! each program exactly as often as its sample plan says (Heun included), and
//! the progress total is the same count.

use crate::common::{root, Tracing};
use ecarc_compiler::plan::Keep;
use ecarc_compiler::session::{check_paths, Outcome, Override};
use ecarc_compiler::ModelSpec;
use ecarc_runtime::driver::{Generator, Observer, Outline, SampleOptions};
use ecarc_runtime::reference::Reference;
use ecarc_runtime::weights::Weights;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::Path;

/// Counts what progress is told.
#[derive(Default)]
struct Tally {
    total: Cell<u64>,
    ran: Cell<u64>,
}

impl Observer for Tally {
    fn begin(&self, outline: &Outline) {
        self.total.set(self.total.get() + outline.total_runs);
    }
    fn ran(&self) {
        self.ran.set(self.ran.get() + 1);
    }
}

/// The one model of `path` with `sets`, or `None` when it does not check
/// (a solver its sampler does not take).
fn try_spec(path: &Path, sets: &[String]) -> Option<ModelSpec> {
    let sets: Vec<Override> = sets.iter().map(|s| s.parse().expect("valid --set")).collect();
    let s = check_paths(&[path], &sets);
    if s.has_errors() {
        return None;
    }
    match s.models.into_iter().next().map(|m| m.outcome) {
        Some(Outcome::Model(spec)) => Some(*spec),
        _ => None,
    }
}

#[test]
fn every_tiny_model_runs_its_plan_with_every_solver() {
    let mut files: Vec<_> = std::fs::read_dir(root().join("examples/tiny"))
        .expect("examples/tiny")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "ecar"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "the tiny models are missing");
    let mut checked = Vec::new();
    for file in &files {
        for solver in ["euler", "heun", "ddpm", "ddim"] {
            let Some(spec) = try_spec(file, &[format!("sample.solver={solver}")]) else { continue };
            let w = Weights::random(&spec, 0);
            let backend = Tracing::new();
            let g = Generator::from_spec(spec.clone(), &backend, &w).expect("generator");
            backend.runs.borrow_mut().clear();
            let tally = Tally::default();
            let opts = SampleOptions { labels: vec![1, 2], seed: 5, keep: Keep::Stages };
            g.sample(&opts, &tally).unwrap_or_else(|e| panic!("{} {solver}: {e}", spec.name));
            let plan = g.program.sample_plan().expect("a sample plan");
            let mut planned: BTreeMap<String, u64> = BTreeMap::new();
            for (e, _) in plan.runs() {
                *planned.entry(e.program.clone()).or_default() += 1;
            }
            let what = format!("{} with {solver}", spec.name);
            assert_eq!(backend.runs_per_program(), planned, "{what}: runs per program");
            assert_eq!(tally.total.get(), plan.total_runs(), "{what}: the progress total");
            assert_eq!(tally.ran.get(), plan.total_runs(), "{what}: runs reported to progress");
            if solver == "heun" && plan.programs().iter().any(|p| *p == "head.step" || *p == "solver.step") {
                // Heun evaluates the network twice per step but the last.
                let euler = try_spec(file, &["sample.solver=euler".to_string()]).expect("euler checks");
                let eg = Generator::from_spec(euler, &Reference::new(), &w)
                    .map(|g| g.program.sample_plan().unwrap().total_runs());
                assert!(plan.total_runs() > eg.expect("euler plan"), "{what}: Heun plans more runs than Euler");
            }
            checked.push(what);
        }
    }
    eprintln!("checked: {}", checked.join(", "));
    for want in
        ["tiny_dit with heun", "tiny_dit with ddpm", "tiny_dit with ddim", "tiny_ecar with heun", "tiny_var with euler"]
    {
        assert!(checked.iter().any(|c| c == want), "{want} was not run; ran: {checked:?}");
    }
}
