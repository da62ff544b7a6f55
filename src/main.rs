//! The `ecarc` command line: a thin layer over the library crates.

use clap::{Parser, Subcommand, ValueEnum};
use ecarc_compiler::session::{check_paths, Outcome, Override, Session};
use ecarc_grammar::diag::Diag;
use miette::{GraphicalReportHandler, GraphicalTheme};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

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
    /// Format model files canonically (in place, atomically), keeping comments.
    Fmt {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Do not write: exit 1 if any file is not formatted, listing it.
        #[arg(long)]
        check: bool,
    },
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
                        human(spec.param_count()),
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

fn human(n: u128) -> String {
    let f = n as f64;
    if f >= 1e9 {
        format!("{:.2}B", f / 1e9)
    } else if f >= 1e6 {
        format!("{:.1}M", f / 1e6)
    } else if f >= 1e3 {
        format!("{:.1}K", f / 1e3)
    } else {
        n.to_string()
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
            write_atomically(path, formatted.as_bytes())
                .map_err(|e| format!("cannot write `{}`: {e}", path.display()))?;
            println!("formatted {}", path.display());
        }
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// Write to a temporary file beside `path`, then rename over it: a crash never
/// leaves a half-written model file.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.ecarc-tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
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
