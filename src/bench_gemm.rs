//! `ecarc bench --gemm M,K,N`: one matrix product `x[M,K] . w[N,K]^T`,
//! timed. On wgpu each GEMM kernel (tiled, naive, and `best`: the GEMV for
//! one or two rows, the tiled kernel otherwise), one submission per run,
//! waited for; on the other backends the one-node `linear` program through
//! the `Backend` trait (prepared once, weights packed outside the clock).

use crate::run_cmd::{backend, BackendName, Fail};
use ecarc_compiler::ir::{text, Bindings};
use ecarc_runtime::tensor::HostTensor;
use ecarc_runtime::webgpu::{Gemm, Wgpu};
use ecarc_runtime::{Args, Backend, Buffer};
use serde::Serialize;
use std::collections::HashMap;
use std::time::Instant;

/// The settings `ecarc bench` passes on.
pub struct How<'a> {
    pub backend: BackendName,
    pub adapter: Option<&'a str>,
    pub runs: u32,
    pub warmup: u32,
    pub json: bool,
}

#[derive(Serialize)]
struct Kernel {
    kernel: &'static str,
    /// Median wall seconds of a run (submit and wait).
    seconds: f64,
    gflops: f64,
    /// Median GPU seconds from timestamp queries, where the adapter has them.
    gpu_seconds: Option<f64>,
}

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Warm-up, then `runs` timed calls of `f`; the wall and GPU medians.
fn time(how: &How, wgpu: Option<&Wgpu>, mut f: impl FnMut() -> Result<(), Fail>) -> Result<(f64, Option<f64>), Fail> {
    for _ in 0..how.warmup {
        f()?;
    }
    let timing = wgpu.is_some_and(|w| w.set_timing(true));
    if let Some(w) = wgpu.filter(|_| timing) {
        w.gpu_time()?;
    }
    let (mut wall, mut gpu) = (vec![], vec![]);
    for _ in 0..how.runs {
        let t = Instant::now();
        f()?;
        wall.push(t.elapsed().as_secs_f64());
        if let Some(g) = wgpu.filter(|_| timing).map(Wgpu::gpu_time).transpose()?.flatten() {
            gpu.push(g.seconds);
        }
    }
    if let Some(w) = wgpu {
        w.set_timing(false);
    }
    Ok((median(wall), (!gpu.is_empty()).then(|| median(gpu))))
}

pub fn run([m, k, n]: [usize; 3], how: How) -> Result<(), Fail> {
    let flops = 2.0 * m as f64 * k as f64 * n as f64;
    let x = HostTensor::f32(vec![m, k], values(m * k, 1));
    let w = HostTensor::f32(vec![n, k], values(n * k, 2));
    eprintln!("timing x[{m},{k}] . w[{n},{k}]^T ({} warm-up, {} timed)", how.warmup, how.runs);
    let mut kernels = vec![];
    let device;
    let mut push = |kernel, (seconds, gpu_seconds): (f64, Option<f64>)| {
        kernels.push(Kernel { kernel, seconds, gflops: flops / seconds / 1e9, gpu_seconds });
    };
    if let BackendName::Wgpu = how.backend {
        let g = Wgpu::new(how.adapter)?;
        device = format!("{} ({})", g.adapter().name, g.adapter().kind);
        let (xb, wb) = (g.upload(&x)?, g.upload(&w)?);
        let best = if m <= 2 { "gemv (best)" } else { "best (= tiled for M > 2)" };
        for (name, kind) in [("tiled", Gemm::Tiled), ("naive", Gemm::Naive), (best, Gemm::Best)] {
            push(
                name,
                time(&how, Some(&g), || {
                    let out = g.linear_with(&xb, &wb, None, kind)?;
                    g.synchronize()?;
                    drop(out);
                    Ok(())
                })?,
            );
        }
        if !g.has_timestamps() {
            eprintln!("no timestamp queries on this adapter: wall time only");
        }
    } else {
        let b = backend(how.backend, how.adapter)?;
        device = b.capabilities().device;
        let graph = text::parse(&format!(
            "graph \"gemm\" {{\n  %0 = input \"x\" : f32[{m}, {k}]\n  %1 = param \"w\" : f32[{n}, {k}]\n  \
             %2 = linear(%0, %1) : f32[{m}, {n}]\n  out \"y\" = %2\n}}\n"
        ))?;
        let params: HashMap<String, Buffer> = HashMap::from([("w".to_string(), b.upload(&w)?)]);
        let exe = b.prepare(&graph, &params)?;
        let xb = b.upload(&x)?;
        push(
            "linear",
            time(&how, None, || {
                let args = Args { inputs: HashMap::from([("x", &xb)]), states: HashMap::new() };
                let out = b.run(&exe, &Bindings::new(1, 1, 1), args)?;
                b.synchronize()?;
                drop(out);
                Ok(())
            })?,
        );
    }
    let ratio = |a: &str, b: &str| {
        let t = |name: &str| kernels.iter().find(|x| x.kernel.starts_with(name)).map(|x| x.seconds);
        t(b).zip(t(a)).map(|(b, a)| b / a)
    };
    let tiled_vs_naive = ratio("tiled", "naive");
    let gemv_vs_tiled = if m <= 2 { ratio("gemv", "tiled") } else { None };
    if how.json {
        let v = serde_json::json!({
            "backend": format!("{:?}", how.backend).to_lowercase(),
            "device": device,
            "m": m, "k": k, "n": n,
            "runs": how.runs,
            "kernels": kernels,
            "tiled_speedup_over_naive": tiled_vs_naive,
            "gemv_speedup_over_tiled": gemv_vs_tiled,
        });
        println!("{}", serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?);
        return Ok(());
    }
    println!("x[{m},{k}] . w[{n},{k}]^T on {device} (median of {}):", how.runs);
    for x in &kernels {
        let gpu = x.gpu_seconds.map(|g| format!("  (GPU busy {:.3} ms)", g * 1e3)).unwrap_or_default();
        println!("  {:<26} {:>10.3} ms {:>9.2} GFLOP/s{gpu}", x.kernel, x.seconds * 1e3, x.gflops);
    }
    if let Some(r) = tiled_vs_naive {
        println!("  tiled speed-up over naive: {r:.2}x");
    }
    if let Some(r) = gemv_vs_tiled {
        println!("  gemv speed-up over tiled: {r:.2}x");
    }
    Ok(())
}
