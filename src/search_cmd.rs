//! `ecarc search FILE` and `ecarc search merge SHARDS... -o merged.json`: a thin
//! layer over `ecarc_compiler::search` (see docs/search.md).
//!
//! - stdout: the front as a table (or, with `--json`, the whole result as JSON);
//! - stderr: the broken designs by problem (rendered as `ecarc check` shows
//!   them, with counts and examples), a progress bar on a terminal, and the
//!   speed of the run;
//! - exit 0 when the search ran (broken designs are results, not failures),
//!   1 when the file does not load, a setting is wrong or an argument is;
//! - the result (`-o`), the plot (`--plot`) and the emitted designs (`--emit`)
//!   are checked before the search and written together at its end, all or
//!   none (`ecarc_runtime::output`).

use crate::units::short;
use clap::{Args, Subcommand};
use ecarc_compiler::search::{
    self, emit, measure, merge, objective::parse_objectives, plot, Options, SearchResult, Selection, Shard, Space,
};
use ecarc_compiler::session::Override;
use ecarc_compiler::ModelSpec;
use ecarc_runtime::output::{Outputs, Slot};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

/// The most MACs (sample and decode) `--measure reference` runs for one design.
const MAX_REFERENCE_MACS: u128 = 5_000_000_000;

/// Spaces larger than this need `--samples`, and `--samples` visits at most
/// this many designs (about three minutes at 300,000 designs a second).
const MAX_ENUMERATED: u128 = 50_000_000;

/// The largest search result `search merge` reads (a front of a million designs).
const MAX_RESULT_BYTES: u64 = 256 << 20;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct SearchArgs {
    #[command(subcommand)]
    merge: Option<SearchSub>,
    /// The search space: a model file whose fields have alternatives
    /// (`depth in 16..=32 step 8`), with `where` constraints.
    #[arg(required = true)]
    file: Option<PathBuf>,
    /// The model to search when the file defines several.
    #[arg(long)]
    model: Option<String>,
    /// Metrics to minimise, comma-separated; `max:METRIC` maximises. Metrics: params,
    /// forward_macs, sample_macs, peak_activation_bytes (lowers every design: slow),
    /// stages, tokens.
    #[arg(long, default_value = "sample_macs,params", value_name = "METRICS")]
    objective: String,
    /// Measure the seconds per image of the first `--top` designs of the front on a
    /// backend (`reference`), with random weights.
    #[arg(long, value_name = "BACKEND")]
    measure: Option<String>,
    /// Designs of the front to show, emit and measure (the front is sorted by the
    /// first objective); the result files hold the whole front.
    #[arg(long, default_value_t = 20, value_name = "N")]
    top: usize,
    /// Search only shard I of N (0-based), e.g. `--shard $SLURM_ARRAY_TASK_ID/4`;
    /// `ecarc search merge` combines the shards' JSON results.
    #[arg(long, value_name = "I/N")]
    shard: Option<Shard>,
    /// Visit N designs drawn at random (distinct, reproducible with `--seed`)
    /// instead of every design.
    #[arg(long, value_name = "N")]
    samples: Option<u64>,
    /// The seed of `--samples`.
    #[arg(long, default_value_t = 0, value_name = "S")]
    seed: u64,
    /// Write the result: `.json` (everything, mergeable) or `.csv` (the front).
    #[arg(short = 'o', long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Plot the front (first two objectives): `.svg` or `.png`.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// Write the first `--top` designs of the front as concrete model files into DIR.
    #[arg(long, value_name = "DIR")]
    emit: Option<PathBuf>,
    /// Print the result as JSON on stdout (no table, no progress bar).
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum SearchSub {
    /// Combine the JSON results of the shards of one search (`--shard I/N`) into
    /// the result a single run gives.
    Merge(MergeArgs),
}

#[derive(Args)]
struct MergeArgs {
    /// The shards' results (`ecarc search ... --shard I/N -o shard_I.json`).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// The merged result: `.json` or `.csv`.
    #[arg(short = 'o', long, value_name = "FILE", required = true)]
    output: PathBuf,
    /// Accept a set that misses shards (the front of the shards given).
    #[arg(long)]
    allow_partial: bool,
    /// Plot the merged front: `.svg` or `.png`.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// Designs of the front to show.
    #[arg(long, default_value_t = 20, value_name = "N")]
    top: usize,
    /// Print the merged result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(args: SearchArgs, sets: &[Override], color: bool) -> Result<ExitCode, String> {
    if let Some(SearchSub::Merge(m)) = args.merge {
        return run_merge(m);
    }
    let file = args.file.clone().ok_or("give the search space's file")?;
    let objectives = parse_objectives(&args.objective)?;
    // Settings that would only fail after the search fail now, outputs included.
    let mut outs = Outputs::new();
    outs.input(&file);
    let result_slot = match &args.output {
        Some(o) => Some(outs.add("-o", o, &["json", "csv"]).map_err(|e| e.to_string())?),
        None => None,
    };
    let plot_slot = match &args.plot {
        Some(p) => Some(outs.add("--plot", p, &["svg", "png"]).map_err(|e| e.to_string())?),
        None => None,
    };
    if let Some(dir) = &args.emit {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create `{}`: {e}", dir.display()))?;
        ecarc_runtime::output::check_directory("--emit", dir).map_err(|e| e.to_string())?;
    }
    let loaded = ecarc_compiler::session::load_models(&[&file], sets);
    crate::print_diag_list(&loaded.diags, &loaded.program.sources, color);
    if loaded.diags.iter().any(|d| d.is_error()) {
        return Ok(ExitCode::from(1));
    }
    let names = || loaded.models.iter().map(|(n, _)| format!("`{}`", n.name)).collect::<Vec<_>>().join(", ");
    let (name, body) = match &args.model {
        Some(m) => loaded
            .models
            .iter()
            .find(|(n, _)| &n.name == m)
            .ok_or_else(|| format!("`{}` defines no model `{m}`; it defines {}", file.display(), names()))?,
        None => match loaded.models.as_slice() {
            [one] => one,
            [] => return Err(format!("`{}` defines no model", file.display())),
            _ => {
                return Err(format!(
                    "`{}` defines several models ({}); choose one with --model",
                    file.display(),
                    names()
                ))
            }
        },
    };
    let space = match Space::new(name.clone(), body.clone(), &loaded.program.sources) {
        Ok(s) => s,
        Err(d) => {
            crate::print_diag_list(&d, &loaded.program.sources, color);
            return Ok(ExitCode::from(1));
        }
    };
    let selection = match args.samples {
        Some(0) => return Err("--samples must be at least 1".into()),
        Some(n) if u128::from(n) > MAX_ENUMERATED => {
            return Err(format!(
                "--samples {n} is more than the {MAX_ENUMERATED} designs one search visits; split it with --shard I/N and `ecarc search merge`"
            ))
        }
        Some(n) => Selection::Sample { count: n, seed: args.seed },
        None if space.total > MAX_ENUMERATED => {
            return Err(format!(
                "the space has {} designs; visit a sample of them with `--samples N` (e.g. --samples 1000000)",
                space.total
            ))
        }
        None => Selection::All,
    };
    let backend = match &args.measure {
        Some(b) => Some(RuntimeMeasure::new(b)?),
        None => None,
    };
    let opts = Options { objectives, selection, shard: args.shard.unwrap_or(Shard::ALL) };
    let designs = search::design::Designs::new(space.total, selection, opts.shard).len();
    let bar = ProgressBar::with_draw_target(
        Some(designs.min(u64::MAX as u128) as u64),
        if args.json || !std::io::stderr().is_terminal() {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        },
    );
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} designs ({per_sec}, {eta} left)")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let file_name = file.display().to_string();
    let (mut result, stats) = search::run(&space, &file_name, &opts, &loaded.program.sources, &|n| bar.inc(n))?;
    bar.finish_and_clear();
    if let Some(m) = &backend {
        for (index, e) in measure::measure_front(&space, &mut result, args.top, m) {
            eprintln!("warning: design {index} was not measured: {e}");
        }
    }
    let mut emitted = Vec::new();
    if let Some(dir) = &args.emit {
        let root = loaded.program.roots.first().copied().ok_or("no root file")?;
        for r in result.front.iter().take(args.top) {
            let text = emit::emit(&space, r.index, root, &loaded.program.sources, dir)?;
            let path = dir.join(format!("{}.ecar", emit::design_name(&space.name.name, r.index)));
            let slot = outs.add("--emit", &path, &[]).map_err(|e| e.to_string())?;
            outs.write_bytes(slot, text.as_bytes()).map_err(|e| e.to_string())?;
            emitted.push(path);
        }
    }
    write_results(outs, &result, result_slot, plot_slot)?;
    if !args.json {
        for path in &emitted {
            eprintln!("wrote {}", path.display());
        }
    }
    report_invalid(&result);
    if args.json {
        println!("{}", result.to_json());
    } else {
        print_table(&result, args.top);
    }
    eprintln!(
        "{} designs in {:.2} s: {:.0} designs/s on {} threads{}",
        stats.designs,
        stats.seconds,
        stats.designs_per_second(),
        rayon_threads(),
        if stats.eval.lowered > 0 {
            format!(" ({} lowered through the IR)", stats.eval.lowered)
        } else {
            String::new()
        }
    );
    Ok(ExitCode::SUCCESS)
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).min(
        std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n: &usize| n > 0)
            .unwrap_or(usize::MAX),
    )
}

fn run_merge(m: MergeArgs) -> Result<ExitCode, String> {
    let mut outs = Outputs::new();
    outs.inputs(m.files.iter().map(PathBuf::as_path));
    let result_slot = outs.add("-o", &m.output, &["json", "csv"]).map_err(|e| e.to_string())?;
    let plot_slot = match &m.plot {
        Some(p) => Some(outs.add("--plot", p, &["svg", "png"]).map_err(|e| e.to_string())?),
        None => None,
    };
    let mut results = Vec::new();
    for f in &m.files {
        // Bounded, and regular files only: a FIFO or `/dev/zero` is refused, not read forever.
        let bytes = ecarc_grammar::resolve::read_capped(f, MAX_RESULT_BYTES)
            .map_err(|e| format!("cannot read `{}`: {e}", f.display()))?;
        let text = String::from_utf8(bytes).map_err(|_| format!("`{}` is not valid UTF-8", f.display()))?;
        results.push(SearchResult::from_json(&text).map_err(|e| format!("`{}`: {e}", f.display()))?);
    }
    let merged = merge::merge(results, m.allow_partial)?;
    write_results(outs, &merged, Some(result_slot), plot_slot)?;
    if m.json {
        println!("{}", merged.to_json());
    } else {
        print_table(&merged, m.top);
        eprintln!("merged {} shard results into {}", m.files.len(), m.output.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// Write the result (`.json` or `.csv`) and the plot into their planned
/// outputs, then every output of the run together.
fn write_results(mut outs: Outputs, r: &SearchResult, result: Option<Slot>, plot: Option<Slot>) -> Result<(), String> {
    if let Some(slot) = result {
        let csv = outs.path(slot).extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"));
        let text = if csv { r.to_csv() } else { r.to_json() };
        outs.write_bytes(slot, text.as_bytes()).map_err(|e| e.to_string())?;
    }
    if let Some(slot) = plot {
        let bytes = plot::render(r, outs.path(slot))?;
        outs.write_bytes(slot, &bytes).map_err(|e| e.to_string())?;
    }
    outs.commit().map_err(|e| e.to_string())
}

/// Broken designs, by problem, on stderr.
fn report_invalid(r: &SearchResult) {
    const SHOWN: usize = 10;
    for g in r.invalid.iter().take(SHOWN) {
        eprint!("{}", g.rendered);
        let examples: Vec<String> = g
            .examples
            .iter()
            .map(|e| {
                let d: Vec<String> = e.design.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("#{}: {}", e.index, d.join(", "))
            })
            .collect();
        eprintln!("  = {} of {} designs break this, e.g. {}\n", g.count, r.counts.designs, examples.join("; "));
    }
    if r.invalid.len() > SHOWN {
        eprintln!("... and {} more problems (all in the JSON result)", r.invalid.len() - SHOWN);
    }
}

fn print_table(r: &SearchResult, top: usize) {
    let shards = if r.shard_count > 1 {
        format!(" (shards {} of {})", r.shards.iter().map(u32::to_string).collect::<Vec<_>>().join(","), r.shard_count)
    } else {
        String::new()
    };
    println!(
        "search {}: {} of {} designs visited{shards}; {} valid, {} outside the constraints, {} broken",
        r.model, r.counts.designs, r.total, r.counts.valid, r.counts.rejected, r.counts.invalid
    );
    for c in &r.rejected {
        println!("  {} designs fail `where {}`", c.count, c.constraint);
    }
    let objectives: Vec<String> = r.objectives.iter().map(|o| o.to_string()).collect();
    println!(
        "Pareto front ({}): {} designs{}",
        objectives.join(", "),
        r.front.len(),
        if r.front.len() > top { format!(", the first {top}") } else { String::new() }
    );
    if r.front.is_empty() {
        return;
    }
    if r.front.len() == 1 && r.counts.valid > 1 && r.objectives.len() > 1 && r.objectives.iter().all(|o| !o.maximise) {
        println!("(one design is the cheapest in every objective; e.g. `--objective sample_macs,max:params` trades compute for capacity)");
    }
    let mut header: Vec<String> = vec!["design".into()];
    header.extend(r.axes.iter().map(|a| a.path.clone()));
    header.extend(["params", "sample_macs", "forward_macs"].map(String::from));
    let peak = r.front.iter().any(|x| x.peak_activation_bytes.is_some());
    if peak {
        header.push("peak_bytes".into());
    }
    let measured = r.front.iter().any(|x| x.seconds_per_image.is_some());
    if measured {
        header.push("s/image".into());
    }
    header.push("ties".into());
    let mut rows = vec![header];
    for x in r.front.iter().take(top) {
        let mut row = vec![format!("#{}", x.index)];
        row.extend(x.design.iter().map(|(_, v)| v.clone()));
        row.extend([short(x.params, "B"), short(x.sample_macs, "G"), short(x.forward_macs, "G")]);
        if peak {
            row.push(x.peak_activation_bytes.map_or("-".into(), |v| short(v, "G")));
        }
        if measured {
            row.push(x.seconds_per_image.map_or("-".into(), |s| format!("{s:.3}")));
        }
        row.push(x.ties.to_string());
        rows.push(row);
    }
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0)).collect();
    for row in rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", cells.join("  ").trim_end());
    }
}

/// `--measure BACKEND`: one image sampled on an `ecarc_runtime` backend with
/// random weights (the time does not depend on the weights' values).
struct RuntimeMeasure {
    name: String,
    backend: Box<dyn ecarc_runtime::Backend>,
}

impl RuntimeMeasure {
    fn new(name: &str) -> Result<RuntimeMeasure, String> {
        let backend = ecarc_runtime::backend_by_name(name, None).map_err(|e| format!("--measure {name}: {e}"))?;
        Ok(RuntimeMeasure { name: name.to_string(), backend })
    }
}

impl measure::Measure for RuntimeMeasure {
    fn name(&self) -> &str {
        &self.name
    }
    fn seconds_per_image(&self, spec: &ModelSpec) -> Result<f64, String> {
        use ecarc_runtime::driver::{Generator, Quiet, SampleOptions};
        let artifact = ecarc_compiler::artifact::compile(spec, &Default::default(), vec![]).map_err(|d| d.message)?;
        ecarc_runtime::memory::check_run(&artifact, 1).map_err(|e| e.to_string())?;
        if self.name == "reference" {
            // The plain interpreter is an oracle, not a fast backend: full-size
            // designs would take hours.
            let report = &artifact.report;
            let macs = report.sample_macs + report.decode_macs;
            if macs > MAX_REFERENCE_MACS {
                return Err(format!(
                    "{:.1} GMAC per image is too much for the reference interpreter (at most {} GMAC); measure small designs (examples/tiny/) with it",
                    macs as f64 / 1e9,
                    MAX_REFERENCE_MACS / 1_000_000_000
                ));
            }
        }
        let weights = ecarc_runtime::weights::Weights::random(spec, 0);
        let g = Generator::from_spec(spec.clone(), self.backend.as_ref(), &weights).map_err(|e| e.to_string())?;
        let opts = SampleOptions { labels: vec![0], seed: 0, keep: ecarc_compiler::plan::Keep::Nothing };
        let t0 = std::time::Instant::now();
        g.sample(&opts, &Quiet).map_err(|e| e.to_string())?;
        Ok(t0.elapsed().as_secs_f64())
    }
}
