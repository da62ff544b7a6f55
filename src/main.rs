//! The `ecarc` command line: a thin layer over the library crates.

use clap::{Parser, Subcommand, ValueEnum};
use ecarc_compiler::artifact::{compile_with, is_artifact, Artifact};
use ecarc_compiler::cost::render::render;
use ecarc_compiler::lower::SpecSpans;
use ecarc_compiler::session::{check_paths, Outcome, Override, Session};
use ecarc_grammar::diag::Diag;
use miette::{GraphicalReportHandler, GraphicalTheme};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

// Every `println!`, `print!`, `eprintln!` and `eprint!` of this crate is one of
// these (they shadow std's): a closed stdout (`ecarc build --snapshot | head`)
// ends the command quietly with exit status 141 (what a shell reports for a
// command ended by SIGPIPE) after removing any pending temporary output file,
// instead of panicking; another stdout error (a full disk) is one `error:` line
// and exit status 1; a stderr that cannot be written is ignored.
macro_rules! println {
    () => { $crate::stdout_write(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::stdout_write(format_args!("{}\n", format_args!($($arg)*))) };
}
macro_rules! print {
    ($($arg:tt)*) => { $crate::stdout_write(format_args!($($arg)*)) };
}
macro_rules! eprintln {
    () => { $crate::stderr_write(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::stderr_write(format_args!("{}\n", format_args!($($arg)*))) };
}
macro_rules! eprint {
    ($($arg:tt)*) => { $crate::stderr_write(format_args!($($arg)*)) };
}

/// Exit statuses: 0 success, 1 every usage and runtime error (clap's argument
/// errors included), 130 / 143 after SIGINT / SIGTERM (129 after SIGHUP), 141
/// on a closed stdout. See README.md and docs/runtime.md.
const EXIT_CLOSED_STDOUT: i32 = 141;

fn stdout_write(args: std::fmt::Arguments) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|_| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            ecarc_runtime::output::abandon_and_exit(EXIT_CLOSED_STDOUT);
        }
        stderr_write(format_args!("error: cannot write to stdout: {e}\n"));
        ecarc_runtime::output::abandon_and_exit(1);
    }
}

fn stderr_write(args: std::fmt::Arguments) {
    let _ = std::io::stderr().lock().write_fmt(args);
}

/// On SIGINT, SIGTERM or SIGHUP: remove the temporary files of outputs not yet
/// written, then exit 128 + the signal's number (130, 143, 129).
fn remove_temporary_files_on_signals() {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
        Ok(mut signals) => {
            std::thread::spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    ecarc_runtime::output::abandon_and_exit(128 + sig);
                }
            });
        }
        Err(e) => eprintln!("warning: cannot handle Ctrl-C ({e}): an interrupted run may leave a temporary file"),
    }
}

mod bench_cmd;
mod bench_gemm;
mod dot_doc;
mod import_cmd;
mod progress;
mod run_cmd;
mod search_cmd;
mod units;

#[derive(clap::Parser)]
#[command(
    name = "ecarc",
    version,
    about = "Check, compile and run autoregressive image-generation models described in .ecar files"
)]
struct Cli {
    /// Override a field of every model, e.g. `--set backbone.depth=20` or
    /// `--set "schedule.scales=[1, 2, 4, 8, 16]"`. Repeatable; applied after `extends`.
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    sets: Vec<Override>,
    /// When to colour diagnostics.
    #[arg(long, global = true, value_enum, default_value_t = Color::Auto)]
    color: Color,
    /// Optimisation level: `-O0` lowers and runs without the optimiser (no
    /// graph rewrites but dead-code elimination, no fusion, no memory plan);
    /// `-O1` (the default) runs every pass.
    #[arg(short = 'O', global = true, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    opt_level: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum Color {
    Auto,
    Always,
    Never,
}

#[derive(Clone, Copy, ValueEnum)]
enum GraphFormat {
    Text,
    Dot,
}

#[derive(Subcommand)]
enum Command {
    /// Check model files: parse, resolve imports and `extends`, type-check every
    /// model and every point of a search space. Exit 0 when clean, 1 with errors.
    Check {
        /// Model files, or directories (their `.ecar` files, recursively).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print each checked model's ModelSpec as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Compile a model: check it, lower it to step programs, cost it. Prints the
    /// cost report and writes the backend-neutral artifact `NAME.ecarc.json`.
    Build {
        file: PathBuf,
        /// Directory for the artifacts.
        #[arg(short, long, default_value = "ecarc-out")]
        out_dir: PathBuf,
        /// Print the report as JSON instead of the table.
        #[arg(long)]
        json: bool,
        /// Print the stable snapshot text (report and IR) instead of the table.
        #[arg(long)]
        snapshot: bool,
        /// Compare whole-sample MACs with another model (e.g. `models/dit_xl2.ecar`,
        /// or a teacher: `--compare models/var_d16.ecar`). `--set` applies to FILE only.
        #[arg(long, value_name = "BASELINE")]
        compare: Option<PathBuf>,
    },
    /// Print a model's lowered programs.
    Graph {
        /// A `.ecar` file or an artifact from `ecarc build`.
        file: PathBuf,
        /// Only the programs that run stage N (1-based, as progress counts).
        #[arg(long)]
        stage: Option<usize>,
        /// Print the execution plans instead (`sample`, `forward`, `decode`, ...),
        /// or only the one named (`--plan=decode`).
        #[arg(long, value_name = "NAME", num_args = 0..=1, require_equals = true, default_missing_value = "")]
        plan: Option<String>,
        /// Only the program with this name (`forward`, `step.next`, ...).
        #[arg(long)]
        program: Option<String>,
        /// The programs after the pass pipeline up to and including PASS
        /// (`cse`, `dce`, `fold`, `fuse`, `mem`), from the unoptimised lowering:
        /// `--after fuse` shows each fused kernel under its `fused` node.
        #[arg(long, value_name = "PASS")]
        after: Option<String>,
        #[arg(long, value_enum, default_value_t = GraphFormat::Text)]
        format: GraphFormat,
    },
    /// Format model files canonically (in place, atomically), keeping comments.
    Fmt {
        /// Model files, or directories (their `.ecar` files, recursively).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Do not write: exit 1 if any file is not formatted, listing it.
        #[arg(long)]
        check: bool,
    },
    #[command(flatten)]
    Run(run_cmd::RunCommand),
    /// Convert released checkpoints (PyTorch .pth or safetensors) into the safetensors
    /// file a model loads, matched against its declared checkpoint keys.
    Import(import_cmd::ImportArgs),
    /// Search a space of designs: check and cost every design (or a sample), keep
    /// the Pareto front of the objectives within the `where` constraints.
    Search(search_cmd::SearchArgs),
    /// Measure how fast a model samples on a backend: median seconds per image and
    /// per stage, FLOP/s and bytes/s against the machine's measured limits
    /// (`--machine`), prepare time, and the ratio against a second model (`--vs`).
    Bench(bench_cmd::BenchArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // `--help` and `--version` print to stdout and succeed; every
            // argument error is exit status 1, as every other error.
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(1) } else { ExitCode::SUCCESS };
        }
    };
    UNOPTIMISED.store(cli.opt_level == 0, std::sync::atomic::Ordering::Relaxed);
    remove_temporary_files_on_signals();
    let color = match cli.color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    let result = match cli.command {
        Command::Check { files, json } => cmd_check(&files, &cli.sets, json, color),
        Command::Fmt { files, check } => cmd_fmt(&files, check, color),
        Command::Build { file, out_dir, json, snapshot, compare } => {
            cmd_build(&file, &cli.sets, &out_dir, json, snapshot, compare.as_deref(), color)
        }
        Command::Graph { file, stage, program, plan, after, format } => {
            cmd_graph(&file, &cli.sets, stage, program, plan, after, format, color)
        }
        Command::Run(cmd) => run_cmd::run(cmd, &cli.sets, color),
        Command::Import(args) => import_cmd::run(args, &cli.sets, color),
        Command::Search(args) => search_cmd::run(args, &cli.sets, color),
        Command::Bench(args) => bench_cmd::run(args, &cli.sets, color),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn print_diags(session: &Session, color: bool) {
    print_diag_list(&session.diags, &session.program.sources, color);
}

fn print_diag_list(diags: &[Diag], sources: &ecarc_grammar::SourceMap, color: bool) {
    let theme = if color { GraphicalTheme::unicode() } else { GraphicalTheme::unicode_nocolor() };
    let handler = GraphicalReportHandler::new_themed(theme);
    let mut err = std::io::stderr().lock();
    for d in diags {
        let mut s = String::new();
        let _ = handler.render_report(&mut s, &d.to_report(sources));
        let _ = writeln!(err, "{s}");
    }
}

/// The files named on the command line, with each directory replaced by the
/// `.ecar` files under it (recursively, sorted): `ecarc check examples/`.
fn expand_dirs(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
        let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot read `{}`: {e}", dir.display()))?;
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            if p.is_dir() {
                walk(&p, out)?;
            } else if p.extension().is_some_and(|x| x == "ecar") {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let before = out.len();
            walk(p, &mut out)?;
            if out.len() == before {
                return Err(format!("`{}` holds no .ecar file", p.display()));
            }
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn cmd_check(files: &[PathBuf], sets: &[Override], json: bool, color: bool) -> Result<ExitCode, String> {
    let files = expand_dirs(files)?;
    let session = check_paths(&files, sets);
    print_diags(&session, color);
    for m in &session.models {
        let name = ecarc_compiler::session::variant_name(&m.name, sets);
        match &m.outcome {
            Outcome::Model(spec) => {
                if json {
                    println!("{}", serde_json::to_string_pretty(spec).map_err(|e| e.to_string())?);
                } else {
                    println!(
                        "ok     {:<16} {} params, {} stages, {} tokens",
                        name,
                        units::short(spec.param_count() as i128, "B"),
                        spec.schedule.num_stages(),
                        spec.schedule.total_tokens()
                    );
                }
            }
            Outcome::Space(s) => {
                println!(
                    "space  {:<16} {} points over {} axes; {} of {} checked are valid",
                    name,
                    s.total,
                    s.axes.len(),
                    s.valid,
                    s.checked
                );
                for (path, labels) in &s.axes {
                    println!("         {path} in {{{}}}", labels.join(", "));
                }
            }
            Outcome::Failed => {
                println!("error  {name}");
            }
        }
    }
    let errors = session.diags.iter().filter(|d| d.is_error()).count();
    if errors > 0 {
        eprintln!("error: {errors} error{} found", if errors == 1 { "" } else { "s" });
        Ok(ExitCode::from(1))
    } else {
        Ok(ExitCode::SUCCESS)
    }
}

fn cmd_fmt(files: &[PathBuf], check: bool, color: bool) -> Result<ExitCode, String> {
    let mut failed = false;
    for path in &expand_dirs(files)? {
        let mut program = ecarc_grammar::Program::new();
        let read = ecarc_grammar::resolve::read_capped(path, ecarc_grammar::resolve::MAX_FILE_BYTES)
            .and_then(|b| String::from_utf8(b).map_err(|_| "it is not valid UTF-8".to_string()));
        let text = match read {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: cannot read `{}`: {e}", path.display());
                failed = true;
                continue;
            }
        };
        let id = program.sources.add(path.display().to_string(), Some(path.clone()), text.as_str());
        let file = match ecarc_grammar::parser::parse_file(id, &text) {
            Ok(f) => f,
            Err(diags) => {
                print_diag_list(&diags, &program.sources, color);
                failed = true;
                continue;
            }
        };
        let formatted = ecarc_grammar::fmt::format_file(&file, &text);
        if formatted == text {
            continue;
        }
        if check {
            println!("{} is not formatted", path.display());
            failed = true;
        } else {
            // In place: the file is its own input, written through the one writer.
            ecarc_runtime::output::write_file(path, |tmp| {
                std::fs::write(tmp, formatted.as_bytes()).map_err(|e| format!("cannot write: {e}"))
            })
            .map_err(|e| e.to_string())?;
            println!("formatted {}", path.display());
        }
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// Check and compile every model of a file (or load an artifact). With `--set`
/// overrides each model is named as its variant
/// ([`ecarc_compiler::session::variant_name`]), in reports and file names.
/// `-O0` for this process: every command compiles through [`compile_all`],
/// so the flag is read in one place (set once in `main`, before any command).
static UNOPTIMISED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn compile_all(file: &std::path::Path, sets: &[Override], color: bool) -> Result<Vec<Artifact>, ExitCode> {
    if is_artifact(file) {
        let unoptimised = UNOPTIMISED.load(std::sync::atomic::Ordering::Relaxed);
        return Artifact::load(file)
            .map(|mut a| {
                a.program.optimise &= !unoptimised;
                vec![a]
            })
            .map_err(|e| {
                eprintln!("error: {e}");
                ExitCode::from(1)
            });
    }
    let session = check_paths(&[file], sets);
    print_diags(&session, color);
    let errors = session.diags.iter().filter(|d| d.is_error()).count();
    if errors > 0 {
        eprintln!("error: `{}` does not check ({errors} error{})", file.display(), if errors == 1 { "" } else { "s" });
        return Err(ExitCode::from(1));
    }
    let sources: Vec<String> = session.program.sources.files().map(|(_, f)| f.name.clone()).collect();
    let mut out = Vec::new();
    for m in &session.models {
        match (&m.outcome, &m.body) {
            (Outcome::Model(spec), Some(body)) => {
                let mut spec = spec.as_ref().clone();
                spec.name = ecarc_compiler::session::variant_name(&spec.name, sets);
                let opts = ecarc_compiler::lower::LowerOptions {
                    unoptimised: UNOPTIMISED.load(std::sync::atomic::Ordering::Relaxed),
                    ..Default::default()
                };
                match compile_with(&spec, &SpecSpans::from_body(body), sources.clone(), opts) {
                    Ok(a) => out.push(a),
                    Err(d) => {
                        print_diag_list(&[d], &session.program.sources, color);
                        return Err(ExitCode::from(1));
                    }
                }
            }
            (Outcome::Space(s), _) => {
                eprintln!(
                    "error: `{}` is a search space ({} points); build one design with --set, or use `ecarc search`",
                    m.name, s.total
                );
                return Err(ExitCode::from(1));
            }
            _ => return Err(ExitCode::from(1)),
        }
    }
    if out.is_empty() {
        eprintln!("error: `{}` defines no model", file.display());
        return Err(ExitCode::from(1));
    }
    Ok(out)
}

fn cmd_build(
    file: &std::path::Path,
    sets: &[Override],
    out_dir: &std::path::Path,
    json: bool,
    snapshot: bool,
    compare: Option<&std::path::Path>,
    color: bool,
) -> Result<ExitCode, String> {
    let artifacts = match compile_all(file, sets, color) {
        Ok(a) => a,
        Err(code) => return Ok(code),
    };
    let baseline = match compare.map(|c| compile_all(c, &[], color)) {
        None => None,
        Some(Ok(mut b)) => Some(b.remove(0)),
        Some(Err(code)) => return Ok(code),
    };
    std::fs::create_dir_all(out_dir).map_err(|e| format!("cannot create `{}`: {e}", out_dir.display()))?;
    // Every artifact of the file is written, or none.
    let mut outputs = ecarc_runtime::output::Outputs::new();
    outputs.input(file);
    if let Some(c) = compare {
        outputs.input(c);
    }
    let mut paths = Vec::new();
    for a in &artifacts {
        let path = out_dir.join(format!("{}.ecarc.json", a.spec.name));
        let slot = outputs.add("the artifact", &path, &[]).map_err(|e| e.to_string())?;
        outputs.write_bytes(slot, a.to_json().as_bytes()).map_err(|e| e.to_string())?;
        paths.push(path);
    }
    outputs.commit().map_err(|e| e.to_string())?;
    for (a, path) in artifacts.iter().zip(&paths) {
        if json {
            println!("{}", serde_json::to_string_pretty(&a.report).map_err(|e| e.to_string())?);
        } else if snapshot {
            println!("{}", ecarc_compiler::snapshot::snapshot(a));
        } else {
            println!("{}", render(&a.report));
            eprintln!("wrote {}", path.display());
        }
        if let Some(b) = &baseline {
            println!("{}", ecarc_compiler::cost::render::compare(&a.report, &b.report));
        }
    }
    Ok(ExitCode::SUCCESS)
}

// One argument per `graph` flag, as clap parsed them.
#[allow(clippy::too_many_arguments)]
fn cmd_graph(
    file: &std::path::Path,
    sets: &[Override],
    stage: Option<usize>,
    program: Option<String>,
    plan: Option<String>,
    after: Option<String>,
    format: GraphFormat,
    color: bool,
) -> Result<ExitCode, String> {
    let pipeline = match after.as_deref().map(ecarc_compiler::pass::Pipeline::until).transpose() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: --after: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    if pipeline.is_some() {
        // The passes run here, from the lowering without the optimiser.
        UNOPTIMISED.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let artifacts = match compile_all(file, sets, color) {
        Ok(a) => a,
        Err(code) => return Ok(code),
    };
    if let Some(want) = plan {
        for a in &artifacts {
            let plans: Vec<&ecarc_compiler::plan::Plan> =
                a.program.plans.iter().filter(|p| want.is_empty() || p.name == want).collect();
            if plans.is_empty() {
                let names: Vec<&str> = a.program.plans.iter().map(|p| p.name.as_str()).collect();
                eprintln!("error: `{}` has no plan `{want}`; it has: {}", a.spec.name, names.join(", "));
                return Ok(ExitCode::from(1));
            }
            for p in plans {
                println!("{}", ecarc_compiler::plan::text::print(p));
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    // DOT: one document for everything printed (a cluster per program).
    let mut dot_parts: Vec<(String, String)> = Vec::new();
    for a in &artifacts {
        let mut names: Vec<String> = a.program.graphs.iter().map(|g| g.name.clone()).collect();
        if let Some(s) = stage {
            let n = a.spec.schedule.num_stages() as usize;
            if s == 0 || s > n {
                eprintln!("error: `{}` has {n} stages (1..={n}); there is no stage {s}", a.spec.name);
                return Ok(ExitCode::from(1));
            }
            let plan = a.program.sample_plan();
            names = plan
                .map(|p| p.programs_of_stage(s as u64 - 1))
                .unwrap_or_default()
                .into_iter()
                .map(String::from)
                .collect();
        }
        if let Some(p) = &program {
            if !names.contains(p) {
                eprintln!("error: no program `{p}`; `{}` has: {}", a.spec.name, names.join(", "));
                return Ok(ExitCode::from(1));
            }
            names = vec![p.clone()];
        }
        for name in names {
            let mut g = a.program.graph(&name).expect("named graph exists").clone();
            if let Some(p) = &pipeline {
                p.run(&mut g).map_err(|e| format!("optimiser bug: {e}"))?;
            }
            let g = &g;
            match format {
                GraphFormat::Text => println!("{}", ecarc_compiler::ir::text::print(g, None)),
                GraphFormat::Dot => {
                    let label = if artifacts.len() > 1 { format!("{}: {name}", a.spec.name) } else { name.clone() };
                    dot_parts.push((label, ecarc_compiler::ir::dot::to_dot(g)));
                }
            }
        }
    }
    if !dot_parts.is_empty() {
        let title = artifacts.iter().map(|a| a.spec.name.as_str()).collect::<Vec<_>>().join(", ");
        print!("{}", dot_doc::combine(&title, &dot_parts));
    }
    Ok(ExitCode::SUCCESS)
}
