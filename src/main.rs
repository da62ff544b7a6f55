//! The `ecarc` command line: a thin layer over the library crates.

use clap::{Parser, Subcommand, ValueEnum};
use ecarc_compiler::artifact::{compile, is_artifact, Artifact};
use ecarc_compiler::cost::render::render;
use ecarc_compiler::lower::SpecSpans;
use ecarc_compiler::session::{check_paths, Outcome, Override, Session};
use ecarc_grammar::diag::Diag;
use miette::{GraphicalReportHandler, GraphicalTheme};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

mod import_cmd;
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
        /// Only the program that runs stage N (0-based).
        #[arg(long)]
        stage: Option<usize>,
        /// Only the program with this name (`forward`, `step.next`, ...).
        #[arg(long)]
        program: Option<String>,
        #[arg(long, value_enum, default_value_t = GraphFormat::Text)]
        format: GraphFormat,
    },
    /// Format model files canonically (in place, atomically), keeping comments.
    Fmt {
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
        Command::Graph { file, stage, program, format } => cmd_graph(&file, &cli.sets, stage, program, format, color),
        Command::Run(cmd) => run_cmd::run(cmd, &cli.sets, color),
        Command::Import(args) => import_cmd::run(args, &cli.sets, color),
        Command::Search(args) => search_cmd::run(args, &cli.sets, color),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
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

fn cmd_check(files: &[PathBuf], sets: &[Override], json: bool, color: bool) -> Result<ExitCode, String> {
    let session = check_paths(files, sets);
    print_diags(&session, color);
    let mut out = std::io::stdout().lock();
    for m in &session.models {
        match &m.outcome {
            Outcome::Model(spec) => {
                if json {
                    let _ = writeln!(out, "{}", serde_json::to_string_pretty(spec).map_err(|e| e.to_string())?);
                } else {
                    let _ = writeln!(
                        out,
                        "ok     {:<16} {} params, {} stages, {} tokens",
                        m.name,
                        units::short(spec.param_count() as i128, "B"),
                        spec.schedule.num_stages(),
                        spec.schedule.total_tokens()
                    );
                }
            }
            Outcome::Space(s) => {
                let _ = writeln!(
                    out,
                    "space  {:<16} {} points over {} axes; {} of {} checked are valid",
                    m.name,
                    s.total,
                    s.axes.len(),
                    s.valid,
                    s.checked
                );
                for (path, labels) in &s.axes {
                    let _ = writeln!(out, "         {path} in {{{}}}", labels.join(", "));
                }
            }
            Outcome::Failed => {
                let _ = writeln!(out, "error  {}", m.name);
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
    for path in files {
        let mut program = ecarc_grammar::Program::new();
        let text = match std::fs::read_to_string(path) {
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
            write_atomically(path, formatted.as_bytes(), true)
                .map_err(|e| format!("cannot write `{}`: {e}", path.display()))?;
            println!("formatted {}", path.display());
        }
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// Write to a temporary file beside `path`, then rename over it: a crash never
/// leaves a half-written file. `durable` also syncs the data before the rename
/// (model files); build artifacts can be rebuilt, so they skip the fsync.
fn write_atomically(path: &std::path::Path, bytes: &[u8], durable: bool) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.ecarc-tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
        if let Ok(meta) = std::fs::metadata(path) {
            let _ = std::fs::set_permissions(&tmp, meta.permissions());
        }
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Check and compile every model of a file (or load an artifact).
fn compile_all(file: &std::path::Path, sets: &[Override], color: bool) -> Result<Vec<Artifact>, ExitCode> {
    if is_artifact(file) {
        return Artifact::load(file).map(|a| vec![a]).map_err(|e| {
            eprintln!("error: {e}");
            ExitCode::from(1)
        });
    }
    let session = check_paths(&[file], sets);
    print_diags(&session, color);
    if session.has_errors() {
        return Err(ExitCode::from(1));
    }
    let sources: Vec<String> = session.program.sources.files().map(|(_, f)| f.name.clone()).collect();
    let mut out = Vec::new();
    for m in &session.models {
        match (&m.outcome, &m.body) {
            (Outcome::Model(spec), Some(body)) => match compile(spec, &SpecSpans::from_body(body), sources.clone()) {
                Ok(a) => out.push(a),
                Err(d) => {
                    print_diag_list(&[d], &session.program.sources, color);
                    return Err(ExitCode::from(1));
                }
            },
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
    for a in &artifacts {
        let path = out_dir.join(format!("{}.ecarc.json", a.spec.name));
        write_atomically(&path, a.to_json().as_bytes(), false)
            .map_err(|e| format!("cannot write `{}`: {e}", path.display()))?;
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

fn cmd_graph(
    file: &std::path::Path,
    sets: &[Override],
    stage: Option<usize>,
    program: Option<String>,
    format: GraphFormat,
    color: bool,
) -> Result<ExitCode, String> {
    let artifacts = match compile_all(file, sets, color) {
        Ok(a) => a,
        Err(code) => return Ok(code),
    };
    for a in &artifacts {
        let mut names: Vec<String> = a.program.graphs.iter().map(|g| g.name.clone()).collect();
        if let Some(s) = stage {
            let n = a.spec.schedule.num_stages() as usize;
            if s >= n {
                eprintln!(
                    "error: `{}` has {n} stages (0..{}); there is no stage {s}",
                    a.spec.name,
                    n.saturating_sub(1)
                );
                return Ok(ExitCode::from(1));
            }
            names = a.program.plan.iter().filter(|r| r.stage == s).map(|r| r.graph.clone()).collect();
            names.dedup();
        }
        if let Some(p) = &program {
            if !names.contains(p) {
                eprintln!("error: no program `{p}`; `{}` has: {}", a.spec.name, names.join(", "));
                return Ok(ExitCode::from(1));
            }
            names = vec![p.clone()];
        }
        for name in names {
            let g = a.program.graph(&name).expect("named graph exists");
            match format {
                GraphFormat::Text => println!("{}", ecarc_compiler::ir::text::print(g, None)),
                GraphFormat::Dot => println!("{}", ecarc_compiler::ir::dot::to_dot(g)),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
