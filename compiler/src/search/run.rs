//! A search run: visit the designs of a shard in parallel (rayon), keep the
//! Pareto front, count the rejected and the broken designs.
//!
//! The designs are split into chunks of consecutive positions; each worker
//! evaluates a chunk with its own [`Evaluator`] (its caches stay warm across
//! chunks) and the chunks' partial results are merged. Merging is
//! order-independent (fronts keep the smallest index of ties, groups of
//! broken designs their smallest examples), so the result is the same for any
//! number of threads, any scheduling and any sharding.

use super::design::{Designs, Selection};
use super::evaluate::{DesignOutcome, EvalStats, Evaluator, Space};
use super::invalid::Groups;
use super::objective::{Metric, Objective, Values};
use super::pareto::Front;
use super::record::{fingerprint, AxisInfo, Counts, DesignRecord, RejectedCount, SearchResult, FORMAT};
use super::shard::Shard;
use crate::check::memo::MemoStats;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

/// Designs per chunk of work.
const CHUNK: u128 = 1024;

/// What to search for.
#[derive(Clone, Debug)]
pub struct Options {
    /// Metrics to minimise (or maximise), at least one.
    pub objectives: Vec<Objective>,
    pub selection: Selection,
    pub shard: Shard,
}

/// How a run went (not part of the result: it depends on the machine).
#[derive(Clone, Copy, Debug, Default)]
pub struct RunStats {
    pub seconds: f64,
    pub designs: u128,
    pub eval: EvalStats,
    pub memo: MemoStats,
}

impl RunStats {
    pub fn designs_per_second(&self) -> f64 {
        self.designs as f64 / self.seconds.max(1e-9)
    }
}

#[derive(Default)]
struct Partial {
    front: Front<Values>,
    invalid: Groups,
    counts: Counts,
    rejected: BTreeMap<String, u128>,
}

impl Partial {
    fn merge(mut self, o: Partial) -> Partial {
        self.front.merge(o.front);
        self.invalid.merge(o.invalid);
        self.counts.add(&o.counts);
        for (k, v) in o.rejected {
            *self.rejected.entry(k).or_default() += v;
        }
        self
    }
}

/// The fingerprint of a space and the settings that decide its front.
pub(crate) fn space_fingerprint(space: &Space, opts: &Options, constraints: &[String]) -> String {
    // The whole resolved model (imports, `extends`, `--set` applied), not only its axes.
    let body = serde_json::to_string(&space.body).unwrap_or_default();
    let mut parts: Vec<String> = vec![space.name.name.clone(), space.total.to_string(), body];
    for a in &space.axes {
        parts.push(a.path.join("."));
        parts.extend(a.labels.iter().cloned());
    }
    parts.extend(opts.objectives.iter().map(|o| o.to_string()));
    parts.extend(constraints.iter().cloned());
    parts.push(serde_json::to_string(&opts.selection).unwrap_or_default());
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    fingerprint(&refs)
}

/// The constraints of a space as written (`params <= 700M` becomes
/// `params <= 700000000`), from its first design that checks.
fn constraints_of(space: &Space) -> Vec<String> {
    space
        .body
        .constraints()
        .map(|c| format!("{} {} {}", c.metric.name, c.op.as_str(), ecarc_grammar::fmt::expr(&c.bound)))
        .collect()
}

/// Search one shard of a space. `progress` is called with the number of
/// designs done after each chunk. `file` names the space's file in the result.
pub fn run(
    space: &Space,
    file: &str,
    opts: &Options,
    sources: &ecarc_grammar::SourceMap,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<(SearchResult, RunStats), String> {
    if opts.objectives.is_empty() {
        return Err("give at least one objective".into());
    }
    let t0 = Instant::now();
    let designs = Designs::new(space.total, opts.selection, opts.shard);
    let n = designs.len();
    let chunks = n.div_ceil(CHUNK);
    let need_peak = opts.objectives.iter().any(|o| o.metric == Metric::PeakActivationBytes);
    let workers: Vec<Mutex<Option<Evaluator>>> =
        (0..rayon::current_num_threads().max(1)).map(|_| Mutex::new(None)).collect();
    let stats = Mutex::new((EvalStats::default(), MemoStats::default()));
    let part = (0..chunks)
        .into_par_iter()
        .map(|c| {
            let w = rayon::current_thread_index().unwrap_or(0) % workers.len();
            let mut slot = workers[w].lock().unwrap_or_else(|e| e.into_inner());
            let mut p = Partial::default();
            let end = ((c + 1) * CHUNK).min(n);
            for k in c * CHUNK..end {
                let index = designs.index(k);
                p.counts.designs += 1;
                let ev = slot.get_or_insert_with(|| Evaluator::new(space, need_peak));
                // A bug must not end the run: the design is reported broken and
                // the worker starts afresh (its caches may be half-updated).
                let outcome = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ev.eval(index))) {
                    Ok(o) => o,
                    Err(_) => {
                        *slot = None;
                        DesignOutcome::Invalid(vec![ecarc_grammar::Diag::error(
                            "E0699",
                            "internal: checking or costing this design panicked (a bug in ecarc)",
                        )])
                    }
                };
                match outcome {
                    DesignOutcome::Valid(v) => {
                        p.counts.valid += 1;
                        let objectives =
                            opts.objectives.iter().map(|o| o.key(v.get(o.metric).expect("computed"))).collect();
                        p.front.offer(objectives, index, v);
                    }
                    DesignOutcome::Rejected(_, failed) => {
                        p.counts.rejected += 1;
                        for c in failed {
                            *p.rejected.entry(c.to_string()).or_default() += 1;
                        }
                    }
                    DesignOutcome::Invalid(diags) => {
                        p.counts.invalid += 1;
                        p.invalid.add(index, &diags);
                    }
                }
            }
            progress((end - c * CHUNK) as u64);
            p
        })
        .reduce(Partial::default, Partial::merge);
    for slot in &workers {
        if let Some(ev) = slot.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
            let (e, m) = (ev.stats, ev.memo_stats());
            s.0.formulas_built += e.formulas_built;
            s.0.formula_rebuilds += e.formula_rebuilds;
            s.0.lowered += e.lowered;
            s.1.unit_hits += m.unit_hits;
            s.1.unit_misses += m.unit_misses;
            s.1.owner_hits += m.owner_hits;
            s.1.owner_misses += m.owner_misses;
            s.1.one_pass += m.one_pass;
            s.1.tensors += m.tensors;
        }
    }
    let (eval, memo) = *stats.lock().unwrap_or_else(|e| e.into_inner());
    let constraints = constraints_of(space);
    let front = part.front.into_sorted().into_iter().map(|p| record(space, p.index, &p.data, p.ties)).collect();
    let invalid = part.invalid.report(sources, &|i| space.assignment(i));
    let result = SearchResult {
        format: FORMAT.into(),
        model: space.name.name.clone(),
        file: file.into(),
        fingerprint: space_fingerprint(space, opts, &constraints),
        total: space.total,
        axes: space
            .axes
            .iter()
            .map(|a| AxisInfo {
                path: a.path.join("."),
                options: a.options.len(),
                labels: crate::session::abbreviate(&a.labels),
            })
            .collect(),
        objectives: opts.objectives.clone(),
        constraints,
        selection: opts.selection,
        shard_count: opts.shard.count,
        shards: vec![opts.shard.index],
        counts: part.counts,
        rejected: part.rejected.into_iter().map(|(constraint, count)| RejectedCount { constraint, count }).collect(),
        front,
        invalid,
        measured_on: None,
    };
    let stats = RunStats { seconds: t0.elapsed().as_secs_f64(), designs: n, eval, memo };
    Ok((result, stats))
}

/// The record of a design on the front.
pub(crate) fn record(space: &Space, index: u128, v: &Values, ties: u64) -> DesignRecord {
    DesignRecord {
        index,
        design: space.assignment(index),
        params: v.get(Metric::Params).unwrap_or(0),
        forward_macs: v.get(Metric::ForwardMacs).unwrap_or(0),
        sample_macs: v.get(Metric::SampleMacs).unwrap_or(0),
        stages: v.get(Metric::Stages).unwrap_or(0),
        tokens: v.get(Metric::Tokens).unwrap_or(0),
        peak_activation_bytes: v.get(Metric::PeakActivationBytes),
        seconds_per_image: None,
        ties,
    }
}
