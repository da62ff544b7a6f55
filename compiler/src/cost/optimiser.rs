//! What the optimiser does to a program, for `ecarc build`: kernels
//! dispatched and activation bytes moved before and after fusion (the
//! definitions of `kernel/traffic.rs`), per stage of one sample and per
//! program, and each program's peak activation memory before memory
//! planning (live values freed after last use, `cost::peak_activation_bytes`)
//! and after (the `mem` pass's static arena). One image, weights excluded.

use super::peak_activation_bytes;
use crate::ir::{Bindings, Graph};
use crate::kernel::traffic::{Counter, Dispatches};
use crate::lower::Program;
use crate::pass::Pipeline;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BeforeAfter {
    pub before: u64,
    pub after: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageFusion {
    /// 0-based, as `CostReport::stages`.
    pub index: usize,
    pub kernels: BeforeAfter,
    pub bytes: BeforeAfter,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgramFusion {
    pub name: String,
    /// Runs in one sample (0: a program the sample does not run, e.g. `forward`).
    pub runs: u64,
    /// Kernels of one run at the largest bindings the sample gives it
    /// (the forward's: one image, no CFG), before and after fusion.
    pub kernels_per_run: BeforeAfter,
    /// Peak activation bytes of one run at those bindings: unplanned (freed
    /// after last use) and the planned arena.
    pub peak: BeforeAfter,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OptimiserReport {
    /// One sample of one image, the tokenizer decoder excluded (as the MACs).
    pub sample_kernels: BeforeAfter,
    pub sample_bytes: BeforeAfter,
    pub stages: Vec<StageFusion>,
    pub programs: Vec<ProgramFusion>,
}

/// The optimiser's figures for `prog` (lowered with the standard pipeline);
/// the kernel passes (`fuse`, `mem`) run here on a copy of each program, as
/// the driver runs them before a backend prepares it.
pub fn report(prog: &Program, stages: usize) -> Result<OptimiserReport, String> {
    // Programs are independent: the kernel passes and the counts of each
    // in parallel.
    use rayon::prelude::*;
    let done: Vec<(Graph, Counter, Counter)> = prog
        .graphs
        .par_iter()
        .map(|g| {
            let mut f = g.clone();
            Pipeline::kernels().run(&mut f).map_err(|e| format!("{}: {e}", g.name))?;
            let (before, after) = (Counter::unfused(g), Counter::dispatched(&f));
            Ok((f, before, after))
        })
        .collect::<Result<_, String>>()?;
    let mut fused: BTreeMap<&str, Graph> = BTreeMap::new();
    let mut counters: BTreeMap<&str, (Counter, Counter)> = BTreeMap::new();
    for (g, (f, before, after)) in prog.graphs.iter().zip(done) {
        fused.insert(g.name.as_str(), f);
        counters.insert(g.name.as_str(), (before, after));
    }
    let mut per_stage = vec![(Dispatches::default(), Dispatches::default()); stages.max(1)];
    let mut runs: BTreeMap<&str, u64> = BTreeMap::new();
    let mut largest: BTreeMap<&str, Bindings> = BTreeMap::new();
    if let Some(plan) = prog.sample_plan() {
        for (e, i) in plan.runs().filter(|(e, _)| e.program != "decode") {
            let name = e.program.as_str();
            let Some((before, after)) = counters.get(name) else { continue };
            let b = e.bindings(1, i);
            let s = (e.stage.eval(i) as usize).min(per_stage.len() - 1);
            per_stage[s].0 += before.eval(&b);
            per_stage[s].1 += after.eval(&b);
            *runs.entry(name).or_default() += 1;
            // Shapes only grow with T and P (see `cost::report`).
            let l = largest.entry(name).or_insert(b);
            l.b = l.b.max(b.b);
            l.t = l.t.max(b.t);
            l.p = l.p.max(b.p);
        }
    }
    let mut sample_kernels = BeforeAfter::default();
    let mut sample_bytes = BeforeAfter::default();
    let stages = per_stage
        .iter()
        .enumerate()
        .map(|(index, (u, d))| {
            sample_kernels.before += u.kernels;
            sample_kernels.after += d.kernels;
            sample_bytes.before += u.bytes;
            sample_bytes.after += d.bytes;
            StageFusion {
                index,
                kernels: BeforeAfter { before: u.kernels, after: d.kernels },
                bytes: BeforeAfter { before: u.bytes, after: d.bytes },
            }
        })
        .collect();
    let programs = prog
        .graphs
        .iter()
        .map(|g| {
            let name = g.name.as_str();
            let f = &fused[name];
            let (before, after) = &counters[name];
            let b = largest.get(name).copied().unwrap_or(Bindings::new(1, 0, 0));
            let arena = f.memory.as_ref().map_or(0, |m| m.layout(f, &b).total);
            ProgramFusion {
                name: g.name.clone(),
                runs: runs.get(name).copied().unwrap_or(0),
                kernels_per_run: BeforeAfter { before: before.eval(&b).kernels, after: after.eval(&b).kernels },
                peak: BeforeAfter { before: peak_activation_bytes(g, &b), after: arena },
            }
        })
        .collect();
    Ok(OptimiserReport { sample_kernels, sample_bytes, stages, programs })
}
