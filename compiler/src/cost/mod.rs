//! The cost model (docs/cost-model.md). MACs come from the lowered graphs'
//! shapes, so they are exact for what the programs compute; parameters come
//! from the declared tensors. Conventions follow spec/families.md: one MAC is
//! a multiply-add; linear layers, matmuls (attention's two included) and
//! convolutions count; norms, softmax and activations do not.

pub mod formula;
pub mod optimiser;
pub mod render;

use crate::ir::dim::product;
use crate::ir::liveness::Liveness;
use crate::ir::{Bindings, Dim, Graph, Op, TensorType};
use crate::lower::Program;
use crate::spec::ModelSpec;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// MACs of one node, as a polynomial in the symbols.
pub fn node_macs(g: &Graph, n: petgraph::stable_graph::NodeIndex) -> Dim {
    let ops = g.operands(n);
    let tys: Vec<&TensorType> = ops.iter().map(|&o| &g.g[o].ty).collect();
    op_macs(&g.g[n].op, &tys, &g.g[n].ty)
}

/// MACs of an op on operands of these types giving `out` (a fused kernel
/// counts its anchor's).
pub fn op_macs(op: &Op, operands: &[&TensorType], out: &TensorType) -> Dim {
    let ty = |i: usize| operands[i];
    match op {
        Op::Linear => {
            let w = &ty(1).shape;
            let x = &ty(0).shape;
            product(&x[..x.len() - 1]).mul(&w[0]).mul(&w[1])
        }
        Op::MatMul => {
            let a = &ty(0).shape;
            product(&out.shape).mul(&a[a.len() - 1])
        }
        Op::Attention { keys, .. } => {
            // q k^T over the `keys` filled positions, then the weights times v.
            let (q, v) = (&ty(0).shape, &ty(2).shape);
            let r = q.len();
            product(&q[..r - 1]).mul(keys).mul(&q[r - 1].add(&v[r - 1]))
        }
        Op::Conv2d { .. } => {
            let w = &ty(1).shape;
            product(&out.shape).mul(&product(&w[1..]))
        }
        Op::NearestCode => {
            let c = &ty(1).shape;
            product(&out.shape).mul(&c[0]).mul(&c[1])
        }
        Op::Fused(k) => k.macs(),
        _ => Dim::c(0),
    }
}

/// MACs of a whole graph, symbolic.
pub fn graph_macs(g: &Graph) -> Dim {
    g.g.node_indices().fold(Dim::c(0), |acc, n| acc.add(&node_macs(g, n)))
}

/// Bytes of every tensor a graph reads from parameters.
pub(crate) fn weight_bytes(g: &Graph) -> u64 {
    g.g.node_indices()
        .filter(|&n| matches!(g.g[n].op, Op::Param { .. }))
        .map(|n| g.g[n].ty.numel().as_const().unwrap_or(0) * g.g[n].ty.dtype.bytes())
        .sum()
}

/// Peak bytes of live activations of one run of `g` (see [`Liveness::peak_bytes`]).
pub fn peak_activation_bytes(g: &Graph, b: &Bindings) -> u64 {
    Liveness::of(g).map_or(0, |l| l.peak_bytes(g, b))
}

/// A device for the roofline estimate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Device {
    pub name: String,
    /// Peak f32 multiply-adds per second x 2 (FLOP/s).
    pub flops: f64,
    /// Memory bandwidth, bytes per second.
    pub bandwidth: f64,
}

impl Device {
    /// This project's reference CPU: 2 Zen 5 cores with AVX-512, measured.
    pub fn this_cpu() -> Device {
        Device { name: "cpu (2x Zen 5, measured)".into(), flops: 543e9, bandwidth: 47e9 }
    }
    /// NVIDIA H100 SXM, f32 without tensor cores, HBM3.
    pub fn h100() -> Device {
        Device { name: "H100 SXM (f32)".into(), flops: 67e12, bandwidth: 3.35e12 }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageCost {
    pub index: usize,
    pub grid: [u64; 2],
    pub tokens: u64,
    pub steps: u64,
    /// MACs of everything that runs for this stage, one image, CFG included.
    pub macs: u128,
    pub share: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    pub device: String,
    pub seconds: f64,
    /// Fraction of the time bound by compute (the rest by memory).
    pub compute_bound_fraction: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CostReport {
    pub model: String,
    /// Learned generator parameters (frozen included; buffers and tokenizer excluded).
    pub params: u128,
    pub params_by_component: Vec<(String, u128)>,
    pub buffer_elements: u128,
    pub tokenizer_params: u128,
    /// One teacher-forced forward, batch 1, no CFG.
    pub forward_macs: u128,
    /// One whole sample: every stage and solver step, KV cache, CFG doubling.
    pub sample_macs: u128,
    /// The tokenizer decoder, one image (0 when the tokenizer declares no decoder).
    pub decode_macs: u128,
    /// Network evaluations that must run one after another for a sample
    /// (backbone steps, head solver steps, DD forwards): what bounds latency
    /// when MACs do not.
    pub sequential_passes: u64,
    pub cfg: bool,
    /// Distilled Decoding: the number of full forwards that replace the schedule.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub distill_steps: Option<u64>,
    pub stages: Vec<StageCost>,
    /// Bytes of all learned tensors (f32).
    pub weight_bytes: u128,
    /// The largest live set of activations of any run, one image.
    pub peak_activation_bytes: u64,
    pub estimates: Vec<Estimate>,
    /// What the optimiser does (kernels, bytes moved, planned peak): set by
    /// `artifact::compile_with` when the program is optimised.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub optimiser: Option<optimiser::OptimiserReport>,
}

/// Weight bytes one sample of one image reads: each run reads every
/// parameter of its program once (the decoder apart, as for the MACs).
pub fn sample_weight_bytes(prog: &Program) -> u128 {
    let per: HashMap<&str, u64> = prog.graphs.iter().map(|g| (g.name.as_str(), weight_bytes(g))).collect();
    prog.sample_plan()
        .map(|p| {
            p.runs()
                .filter(|(e, _)| e.program != "decode")
                .map(|(e, _)| per.get(e.program.as_str()).copied().unwrap_or(0) as u128)
                .sum()
        })
        .unwrap_or(0)
}

/// Whether a program is one network evaluation (what bounds latency when
/// MACs do not): a backbone step, a flow head step, a whole forward.
pub(crate) fn is_network(program: &str) -> bool {
    program.starts_with("step.") || program == "head.step" || program == "forward"
}

pub fn report(spec: &ModelSpec, prog: &Program, devices: &[Device]) -> CostReport {
    let macs: HashMap<&str, Dim> = prog.graphs.iter().map(|g| (g.name.as_str(), graph_macs(g))).collect();
    let wbytes: HashMap<&str, u64> = prog.graphs.iter().map(|g| (g.name.as_str(), weight_bytes(g))).collect();
    let one = |tokens, past| Bindings::new(1, tokens, past);
    let forward_macs = macs.get("forward").map_or(0, |m| m.eval(&one(0, 0)) as u128);
    // What a sample runs, as the plan runs it, except the tokenizer decoder
    // (reported apart: tokenizers are not part of the generator).
    let runs: Vec<(&str, u64, u64, u64)> = prog
        .sample_plan()
        .map(|p| {
            p.runs()
                .filter(|(e, _)| e.program != "decode")
                .map(|(e, i)| (e.program.as_str(), e.stage.eval(i), e.tokens, e.past.eval(i)))
                .collect()
        })
        .unwrap_or_default();

    // Activation sizes grow with T and P (shapes are polynomials with
    // non-negative coefficients), and T and P only grow along a schedule, so a
    // program's peak over its runs is its peak at the largest T and P it sees:
    // one liveness walk per program, not one per run.
    let mut largest: HashMap<&str, Bindings> = HashMap::new();
    for &(g, _, t, p) in &runs {
        let e = largest.entry(g).or_insert(one(0, 0));
        e.t = e.t.max(t);
        e.p = e.p.max(p);
    }
    let peaks: HashMap<&str, u64> =
        largest.iter().map(|(name, b)| (*name, prog.graph(name).map_or(0, |g| peak_activation_bytes(g, b)))).collect();
    let stage_list = spec.schedule.stages();
    let mut per_stage = vec![0u128; stage_list.len().max(1)];
    let mut peak = 0;
    let mut seconds = vec![(0.0f64, 0.0f64); devices.len()];
    for &(g, stage, t, p) in &runs {
        let m = macs[g].eval(&one(t, p)) as u128;
        let last = per_stage.len() - 1;
        per_stage[(stage as usize).min(last)] += m;
        let act = peaks[g];
        peak = peak.max(act);
        for (dev, acc) in devices.iter().zip(seconds.iter_mut()) {
            let compute = 2.0 * m as f64 / dev.flops;
            let memory = (wbytes[g] as f64 + act as f64) / dev.bandwidth;
            acc.0 += compute.max(memory);
            if compute >= memory {
                acc.1 += compute;
            }
        }
    }
    let sample_macs: u128 = per_stage.iter().sum();
    let stages = stage_list
        .iter()
        .enumerate()
        .map(|(i, s)| StageCost {
            index: i,
            grid: s.grid,
            tokens: s.tokens,
            steps: s.steps,
            macs: per_stage[i],
            share: if sample_macs == 0 { 0.0 } else { per_stage[i] as f64 / sample_macs as f64 },
        })
        .collect();
    let mut by_component: BTreeMap<String, u128> = BTreeMap::new();
    for g in &spec.params {
        let name = match g.owner.as_str() {
            "backbone.block" => "blocks",
            other => other,
        };
        *by_component.entry(name.to_string()).or_default() += g.numel();
    }
    CostReport {
        model: spec.name.clone(),
        params: spec.param_count(),
        params_by_component: by_component.into_iter().collect(),
        buffer_elements: spec.buffers.iter().map(|g| g.numel()).sum(),
        tokenizer_params: spec.tokenizer_param_count(),
        forward_macs,
        sample_macs,
        decode_macs: macs.get("decode").map_or(0, |m| m.eval(&one(0, 0)) as u128),
        sequential_passes: runs.iter().filter(|(g, ..)| is_network(g)).count() as u64,
        cfg: prog.cfg,
        distill_steps: spec.distill.as_ref().map(|d| d.steps),
        stages,
        weight_bytes: spec.param_count() * 4,
        peak_activation_bytes: peak,
        estimates: devices
            .iter()
            .zip(seconds)
            .map(|(d, (s, c))| Estimate {
                device: d.name.clone(),
                seconds: s,
                compute_bound_fraction: if s > 0.0 { c / s } else { 0.0 },
            })
            .collect(),
        optimiser: None,
    }
}
