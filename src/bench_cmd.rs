//! `ecarc bench`: how fast a model samples on a backend, measured: prepare
//! time (kernel compilation, weight packing), warm-up, several timed samples
//! of one image, the median per image and per stage, the achieved FLOP/s
//! and bytes/s against the machine's measured limits, and the ratio against
//! a second model run the same way.

use crate::run_cmd::{backend, load_model, load_weights, BackendName, Fail};
use clap::Args;
use ecarc_compiler::artifact::Artifact;
use ecarc_compiler::plan::Keep;
use ecarc_compiler::session::Override;
use ecarc_runtime::driver::{Generator, Quiet, SampleOptions};
use ecarc_runtime::machine::Machine;
use ecarc_runtime::webgpu::Wgpu;
use ecarc_runtime::Backend;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Args)]
pub struct BenchArgs {
    /// A `.ecar` file or an artifact from `ecarc build`.
    #[arg(required_unless_present_any = ["machine", "list_adapters", "gemm"])]
    file: Option<PathBuf>,
    /// Which model of FILE, when it defines several.
    #[arg(long, value_name = "NAME")]
    model: Option<String>,
    /// A second model, run the same way: the report gives the speed ratio
    /// next to the ratio of their MACs.
    #[arg(long, value_name = "FILE2")]
    vs: Option<PathBuf>,
    /// The backend that runs the programs.
    #[arg(long, value_enum, default_value_t = BackendName::Cpu)]
    backend: BackendName,
    /// With `--backend wgpu`: the adapter whose name contains NAME (case-insensitive).
    #[arg(long, value_name = "NAME")]
    adapter: Option<String>,
    /// List the adapters wgpu finds (with `--backend wgpu`) and exit.
    #[arg(long)]
    list_adapters: bool,
    /// Safetensors checkpoint(s); default: random weights (speed does not depend on them).
    #[arg(long = "weights", value_name = "W.safetensors")]
    weights: Vec<PathBuf>,
    /// Timed samples (one image each); the median is reported.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    runs: u32,
    /// Untimed samples first (caches, page faults, lazy compilation).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=100))]
    warmup: u32,
    /// Measure the machine's FMA peak and read bandwidth again (and cache
    /// them); alone, print them and exit.
    #[arg(long)]
    machine: bool,
    /// Time one matrix product `x[M,K] . w[N,K]^T` instead of a model: on
    /// wgpu the tiled, naive and best (GEMV for M <= 2) kernels, on cpu the
    /// backend's one-node `linear` program.
    #[arg(long, value_name = "M,K,N", value_parser = parse_gemm, conflicts_with_all = ["file", "vs", "machine"])]
    gemm: Option<GemmShape>,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

/// `--gemm M,K,N`.
#[derive(Clone, Copy, Debug)]
pub struct GemmShape {
    m: usize,
    k: usize,
    n: usize,
}

/// At most this many f32 over x, w and the output (1 GiB).
const GEMM_MAX_ELEMENTS: usize = 1 << 28;

fn parse_gemm(s: &str) -> Result<GemmShape, String> {
    let v: Vec<&str> = s.split(',').map(str::trim).collect();
    if v.len() != 3 {
        return Err(format!("expected three sizes `M,K,N` (e.g. `256,1024,1024`), got `{s}`"));
    }
    let mut d = [0usize; 3];
    for (i, (x, name)) in v.iter().zip(["M", "K", "N"]).enumerate() {
        d[i] = x.parse::<usize>().map_err(|_| format!("{name} = `{x}` is not a whole number"))?;
        if d[i] == 0 || d[i] > 1 << 20 {
            return Err(format!("{name} = {} is out of range (1 to {})", d[i], 1 << 20));
        }
    }
    let (m, k, n) = (d[0], d[1], d[2]);
    let elements = m.checked_mul(k).zip(n.checked_mul(k)).zip(m.checked_mul(n));
    match elements.and_then(|((a, b), c)| a.checked_add(b)?.checked_add(c)) {
        Some(e) if e <= GEMM_MAX_ELEMENTS => Ok(GemmShape { m, k, n }),
        _ => Err(format!("x, w and the output would hold more than {GEMM_MAX_ELEMENTS} floats (1 GiB)")),
    }
}

/// What one model's benchmark measured.
#[derive(Serialize)]
struct Measured {
    model: String,
    backend: String,
    /// Seconds to prepare every program (compile kernels, pack weights).
    prepare_seconds: f64,
    runs: u32,
    /// Median seconds per image, the tokenizer decoder included.
    seconds_per_image: f64,
    /// All timed runs, in order.
    run_seconds: Vec<f64>,
    /// Median seconds of each stage (and of `decode`), in plan order.
    stages: Vec<(String, f64)>,
    /// Multiply-adds of one image, CFG doubling and the decoder included.
    macs: u128,
    /// 2 * MACs / median seconds.
    flops_per_s: f64,
    /// Weights and activations one image reads and writes, per the cost model.
    bytes: u128,
    bytes_per_s: f64,
    /// With `--backend wgpu`: the adapter, its kind (`Cpu` is a software
    /// adapter, whose limits are the CPU's), and the GPU's busy time per
    /// image from timestamp queries (median; `None` without them).
    adapter: Option<String>,
    adapter_kind: Option<String>,
    gpu_seconds_per_image: Option<f64>,
    /// Compute passes timed per image (one per program run, plus checks).
    gpu_passes_per_image: Option<u64>,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn bench_one(file: &Path, a: &BenchArgs, sets: &[Override], color: bool) -> Result<Measured, Fail> {
    let art: Artifact = load_model(file, a.model.as_deref(), sets, color)?;
    // On wgpu the handle too: it turns timing on and reads it.
    let (backend, wgpu): (Box<dyn Backend>, Option<Wgpu>) = match a.backend {
        BackendName::Wgpu => {
            let w = Wgpu::new(a.adapter.as_deref())?;
            (Box::new(w.clone()), Some(w))
        }
        _ => (backend(a.backend, a.adapter.as_deref())?, None),
    };
    let spec = art.spec.clone();
    let needed = Generator::params_read(&art.program, Some(&["sample"]));
    let weights = load_weights(&spec, &a.weights, &needed)?;
    let r = &art.report;
    let macs = r.sample_macs + r.decode_macs;
    let activations = r.optimiser.as_ref().map_or(0, |o| o.sample_bytes.after as u128);
    let bytes = ecarc_compiler::cost::sample_weight_bytes(&art.program) + activations;
    let name = spec.name.clone();

    let started = Instant::now();
    let params = weights.upload(backend.as_ref())?;
    let g = Generator::new(spec, art.program, backend.as_ref(), params)?;
    let prepare_seconds = started.elapsed().as_secs_f64();

    // One class, drawn once: every run samples the same image.
    let classes = g.spec.classes.max(1) as i64;
    let opts = SampleOptions { labels: vec![7 % classes], seed: 0, keep: Keep::Nothing };
    for _ in 0..a.warmup {
        g.sample(&opts, &Quiet)?;
    }
    let mut run_seconds = Vec::new();
    // Timestamps of the timed runs only; read after each run's clock stops.
    let timing = wgpu.as_ref().is_some_and(|w| w.set_timing(true));
    if let Some(w) = wgpu.as_ref().filter(|_| timing) {
        w.gpu_time()?;
    }
    let mut gpu_seconds = Vec::new();
    let mut gpu_passes = 0;
    let mut per_stage: BTreeMap<usize, (String, Vec<f64>)> = BTreeMap::new();
    for _ in 0..a.runs {
        let t = Instant::now();
        let out = g.sample(&opts, &Quiet)?;
        run_seconds.push(t.elapsed().as_secs_f64());
        if let Some(g) = wgpu.as_ref().filter(|_| timing).map(Wgpu::gpu_time).transpose()?.flatten() {
            gpu_seconds.push(g.seconds);
            gpu_passes = g.passes;
        }
        for (i, s) in out.timings.iter().enumerate() {
            per_stage.entry(i).or_insert_with(|| (s.what.clone(), vec![])).1.push(s.seconds);
        }
        eprintln!("  run {}: {:.3} s", run_seconds.len(), run_seconds.last().unwrap());
    }
    if let Some(w) = &wgpu {
        w.set_timing(false);
    }
    let seconds_per_image = median(&mut run_seconds.clone());
    let stages = per_stage.into_values().map(|(what, mut v)| (what, median(&mut v))).collect();
    Ok(Measured {
        model: name,
        backend: g.backend().name().into(),
        prepare_seconds,
        runs: a.runs,
        seconds_per_image,
        run_seconds,
        stages,
        macs,
        flops_per_s: 2.0 * macs as f64 / seconds_per_image,
        bytes,
        bytes_per_s: bytes as f64 / seconds_per_image,
        adapter: wgpu.as_ref().map(|w| w.adapter().name.clone()),
        adapter_kind: wgpu.as_ref().map(|w| w.adapter().kind.clone()),
        gpu_seconds_per_image: (!gpu_seconds.is_empty()).then(|| median(&mut gpu_seconds)),
        gpu_passes_per_image: (!gpu_seconds.is_empty()).then_some(gpu_passes),
    })
}

fn si(v: f64, unit: &str) -> String {
    if v >= 1e9 {
        format!("{:.1} G{unit}", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.1} M{unit}", v / 1e6)
    } else {
        format!("{:.1} k{unit}", v / 1e3)
    }
}

fn print_machine(m: &Machine) {
    println!(
        "machine: {} ({} threads): FMA peak {}FLOP/s ({}), read bandwidth {}B/s",
        m.cpu,
        m.threads,
        si(m.fma_flops, ""),
        m.fma_isa,
        si(m.read_bytes_per_s, "")
    );
}

fn print_measured(x: &Measured, m: &Machine) {
    println!("{} on {}:", x.model, x.backend);
    if let (Some(name), Some(kind)) = (&x.adapter, &x.adapter_kind) {
        println!("  adapter: {name} ({kind})");
    }
    println!("  prepare (compile, pack weights): {:.3} s", x.prepare_seconds);
    println!(
        "  per image: {:.3} s (median of {}; runs {})",
        x.seconds_per_image,
        x.runs,
        x.run_seconds.iter().map(|s| format!("{s:.3}")).collect::<Vec<_>>().join(", ")
    );
    match (x.gpu_seconds_per_image, &x.adapter) {
        (Some(g), _) => println!(
            "  GPU busy per image: {g:.3} s ({:.0}% of the wall time; {} compute passes, timestamp queries)",
            100.0 * g / x.seconds_per_image,
            x.gpu_passes_per_image.unwrap_or(0)
        ),
        (None, Some(_)) => println!("  GPU busy per image: no timestamp queries on this adapter"),
        (None, None) => {}
    }
    // Long raster schedules: the first and last few stages, the rest summed.
    let n = x.stages.len();
    for (i, (what, s)) in x.stages.iter().enumerate() {
        if n > 12 && (6..n - 4).contains(&i) {
            if i == 6 {
                let rest: f64 = x.stages[6..n - 4].iter().map(|(_, s)| s).sum();
                println!("    {:<12} {rest:>10.4} s", format!("({} more)", n - 10));
            }
            continue;
        }
        println!("    {what:<12} {s:>10.4} s");
    }
    // A hardware GPU's peak is not the CPU's: achieved figures only.
    if x.adapter_kind.as_deref().is_some_and(|k| k != "Cpu") {
        println!(
            "  compute: {}FLOP/s ({} per image; the GPU's peak is unknown)",
            si(x.flops_per_s, ""),
            ecarc_compiler::cost::render::macs(x.macs)
        );
        println!(
            "  memory: {}B/s ({} moved per image; the GPU's bandwidth is unknown)",
            si(x.bytes_per_s, ""),
            ecarc_compiler::cost::render::bytes(x.bytes)
        );
        return;
    }
    let of = if x.adapter.is_some() { "the CPU's FMA peak (a software adapter)" } else { "the FMA peak" };
    println!(
        "  compute: {}FLOP/s = {:.1}% of {of} ({} per image)",
        si(x.flops_per_s, ""),
        100.0 * x.flops_per_s / m.fma_flops,
        ecarc_compiler::cost::render::macs(x.macs)
    );
    println!(
        "  memory: {}B/s = {:.1}% of the read bandwidth ({} moved per image: weights per run + fused activations)",
        si(x.bytes_per_s, ""),
        100.0 * x.bytes_per_s / m.read_bytes_per_s,
        ecarc_compiler::cost::render::bytes(x.bytes)
    );
}

pub fn run(a: BenchArgs, sets: &[Override], color: bool) -> Result<ExitCode, String> {
    let result = (|| -> Result<(), Fail> {
        if a.list_adapters {
            return list_adapters(&a);
        }
        if let Some(shape) = a.gemm {
            return crate::bench_gemm::run(
                [shape.m, shape.k, shape.n],
                crate::bench_gemm::How {
                    backend: a.backend,
                    adapter: a.adapter.as_deref(),
                    runs: a.runs,
                    warmup: a.warmup,
                    json: a.json,
                },
            );
        }
        let machine = if a.machine {
            eprintln!("measuring the machine's FMA peak and read bandwidth...");
            let m = Machine::measure();
            m.save();
            m
        } else {
            Machine::cached_or_measure()
        };
        let Some(file) = &a.file else {
            if a.json {
                println!("{}", serde_json::to_string_pretty(&machine).map_err(|e| e.to_string())?);
            } else {
                print_machine(&machine);
            }
            return Ok(());
        };
        eprintln!("benchmarking {} ({} warm-up, {} timed)", file.display(), a.warmup, a.runs);
        let first = bench_one(file, &a, sets, color)?;
        let second = match &a.vs {
            Some(f) => {
                eprintln!("benchmarking {} ({} warm-up, {} timed)", f.display(), a.warmup, a.runs);
                Some(bench_one(f, &BenchArgs { model: None, ..a.clone_settings() }, &[], color)?)
            }
            None => None,
        };
        if a.json {
            let v = serde_json::json!({
                "machine": machine,
                "model": first,
                "vs": second,
                "speed_ratio": second.as_ref().map(|s| s.seconds_per_image / first.seconds_per_image),
                "macs_ratio": second.as_ref().map(|s| s.macs as f64 / first.macs as f64),
            });
            println!("{}", serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?);
            return Ok(());
        }
        print_machine(&machine);
        print_measured(&first, &machine);
        if let Some(s) = &second {
            print_measured(s, &machine);
            println!(
                "{} vs {}: {:.2}x faster per image; {:.2}x fewer MACs ({:.0}% of the MACs ratio reached)",
                first.model,
                s.model,
                s.seconds_per_image / first.seconds_per_image,
                s.macs as f64 / first.macs as f64,
                100.0 * (s.seconds_per_image / first.seconds_per_image) / (s.macs as f64 / first.macs as f64)
            );
        }
        Ok(())
    })();
    Ok(crate::run_cmd::report(result))
}

/// `--list-adapters`: what wgpu finds, and which one `--backend wgpu` opens.
fn list_adapters(a: &BenchArgs) -> Result<(), Fail> {
    if !matches!(a.backend, BackendName::Wgpu) {
        return Err(Fail::Msg("`--list-adapters` lists wgpu adapters".into(), vec!["add `--backend wgpu`".into()]));
    }
    let found = ecarc_runtime::webgpu::list_adapters();
    let chosen = ecarc_runtime::webgpu::Wgpu::new(a.adapter.as_deref()).map(|w| w.adapter().clone());
    if a.json {
        let v = serde_json::json!({
            "adapters": found.iter().map(|s| serde_json::json!({
                "name": s.name, "api": s.api, "kind": s.kind, "driver": s.driver,
            })).collect::<Vec<_>>(),
            "chosen": chosen.as_ref().ok().map(|s| s.name.clone()),
            "error": chosen.as_ref().err().map(|e| e.to_string()),
        });
        println!("{}", serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?);
        return Ok(());
    }
    if found.is_empty() {
        println!("wgpu found no adapter");
    }
    for s in &found {
        let mark = if chosen.as_ref().is_ok_and(|c| c == s) { "*" } else { " " };
        println!("{mark} {s}");
    }
    match chosen {
        Ok(c) => {
            println!("`--backend wgpu` opens: {}", c.name);
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

impl BenchArgs {
    /// The run settings, for the `--vs` model.
    fn clone_settings(&self) -> BenchArgs {
        BenchArgs {
            file: None,
            model: None,
            vs: None,
            backend: self.backend,
            adapter: self.adapter.clone(),
            list_adapters: false,
            weights: vec![],
            runs: self.runs,
            warmup: self.warmup,
            machine: false,
            gemm: None,
            json: self.json,
        }
    }
}
