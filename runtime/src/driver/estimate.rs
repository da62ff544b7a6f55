//! The time a plan will take on a backend, before it runs: the plan's exact
//! multiply-adds (every run, as the plan runs them) over the backend's measured
//! speed on a GEMM-shaped program (timed once per process and backend). Only
//! plans large enough for the measurement to be worth it get an estimate.

use super::Generator;
use crate::backend::{Args, Backend};
use crate::tensor::HostTensor;
use ecarc_compiler::cost::graph_macs;
use ecarc_compiler::ir::{Bindings, Dim, Graph, Op, TensorType};
use ecarc_compiler::plan::Plan;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// Plans below this many multiply-adds run without an estimate (they take
/// well under a few seconds on any backend).
const WORTH_ESTIMATING: u128 = 2_000_000_000;

/// Measured multiply-adds per second, by backend name.
static SPEED: Mutex<Vec<(&'static str, f64)>> = Mutex::new(Vec::new());

/// Multiply-adds of one whole run of `plan` for `images` images.
pub fn plan_macs(g: &Generator, plan: &Plan, images: u64) -> u128 {
    let mut per: HashMap<&str, Dim> = HashMap::new();
    for name in plan.programs() {
        if let Some(graph) = g.program.graph(name) {
            per.insert(name, graph_macs(graph));
        }
    }
    plan.runs().map(|(e, i)| per.get(e.program.as_str()).map_or(0, |m| m.eval(&e.bindings(images, i)) as u128)).sum()
}

/// Multiply-adds per second of `backend` on a `[256, 512] x [512, 512]` linear map.
pub fn measured_speed(backend: &dyn Backend) -> Option<f64> {
    if let Some(&(_, s)) = SPEED.lock().ok()?.iter().find(|(n, _)| *n == backend.name()) {
        return Some(s);
    }
    let (rows, k, n) = (256u64, 512u64, 512u64);
    let mut graph = Graph::new("speed");
    let x = graph.source(Op::Input { name: "x".into() }, TensorType::f32(vec![Dim::c(rows), Dim::c(k)]), None);
    let w = graph.source(Op::Input { name: "w".into() }, TensorType::f32(vec![Dim::c(n), Dim::c(k)]), None);
    let y = graph.add(Op::Linear, &[x, w], None);
    graph.output("y", y);
    let exe = backend.prepare(&graph, &Default::default()).ok()?;
    let xb = backend.upload(&HostTensor::f32(vec![rows as usize, k as usize], vec![0.5; (rows * k) as usize])).ok()?;
    let wb = backend.upload(&HostTensor::f32(vec![n as usize, k as usize], vec![0.25; (n * k) as usize])).ok()?;
    let args = || Args { inputs: [("x", &xb), ("w", &wb)].into_iter().collect(), ..Default::default() };
    let b = Bindings::new(1, 0, 0);
    backend.run(&exe, &b, args()).ok()?;
    backend.synchronize().ok()?;
    let reps = 3;
    let started = Instant::now();
    for _ in 0..reps {
        backend.run(&exe, &b, args()).ok()?;
    }
    backend.synchronize().ok()?;
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let speed = (reps as f64 * (rows * k * n) as f64) / secs;
    SPEED.lock().ok()?.push((backend.name(), speed));
    Some(speed)
}

/// The estimated seconds of a plan run, when it is large enough to estimate.
pub fn plan_seconds(g: &Generator, plan: &Plan, images: u64) -> Option<f64> {
    let macs = plan_macs(g, plan, images);
    if macs < WORTH_ESTIMATING {
        return None;
    }
    Some(macs as f64 / measured_speed(g.backend())?)
}
