//! Print the snapshot text of every model in a `.ecar` file: what
//! `ecarc build --snapshot` prints, and what snapshot tests pin.
//!
//! ```text
//! cargo run --example snapshot_variants                       # examples/variants.ecar
//! cargo run --example snapshot_variants -- my_variants.ecar   # your file
//! cargo run --example snapshot_variants -- my.ecar --set backbone.depth=12
//! ```
//!
//! A model's snapshot is its cost report (MACs per stage, forward and whole
//! sample, parameters by component, peak activations, roofline estimates)
//! followed by the IR of the programs that run its last stage. Source spans
//! are left out, so editing comments does not change it; anything that
//! changes what the model computes or costs does.
//!
//! # Pinning your variants with insta
//!
//! The calls below are the whole pattern; `tests/it/variants.rs` is a
//! working copy of it for `examples/variants.ecar`.
//!
//! 1. Write the variants in a file, each a few lines on top of a family base
//!    (`model mine extends ecar_base { ... }`), and check it:
//!    `cargo run -- check my_variants.ecar`.
//! 2. Add a test that checks the file with
//!    `ecarc_compiler::session::check_paths`, builds each model with
//!    `ecarc_compiler::artifact::compile(spec, &SpecSpans::from_body(body), sources)`
//!    and asserts `insta::assert_snapshot!(name, ecarc_compiler::snapshot::snapshot(&artifact))`.
//! 3. Run `cargo test`: the first run writes one `.snap.new` file per model
//!    next to the test. Review them with `cargo insta review` (install it with
//!    `cargo install cargo-insta`): read each report and program, and accept
//!    only what you expect. Never accept blindly.
//! 4. From then on, any change to a variant, to the standard library it
//!    extends, or to the compiler that alters its programs or its cost fails
//!    the test and shows as a diff in `cargo insta review`. Accept a diff when
//!    the change is intended (a new stage design, a fixed cost convention),
//!    and the snapshot records it in version control.
//!
//! Running this example is the quick look before writing the test: it prints
//! the same text the snapshots will hold.

use ecarc_compiler::artifact::compile;
use ecarc_compiler::lower::SpecSpans;
use ecarc_compiler::session::{check_paths, Outcome, Override};
use ecarc_compiler::snapshot::snapshot;
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: snapshot_variants [FILE.ecar] [--set KEY=VALUE]...";

fn main() -> ExitCode {
    let mut file = None;
    let mut sets: Vec<Override> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let set = match arg.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "--set" => match args.next() {
                Some(v) => v,
                None => return fail("--set needs KEY=VALUE"),
            },
            a if a.starts_with("--set=") => a.trim_start_matches("--set=").to_string(),
            a if a.starts_with('-') => return fail(&format!("unknown option `{a}`")),
            _ if file.is_some() => return fail("give one file"),
            _ => {
                file = Some(PathBuf::from(arg));
                continue;
            }
        };
        match set.parse() {
            Ok(o) => sets.push(o),
            Err(e) => return fail(&e),
        }
    }
    let file = file.unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/variants.ecar"));

    let session = check_paths(&[&file], &sets);
    if session.has_errors() {
        eprint!("{}", session.render_diags());
        return ExitCode::from(1);
    }
    let sources: Vec<String> = session.program.sources.files().map(|(_, f)| f.name.clone()).collect();
    let mut built = 0;
    for m in &session.models {
        let (Outcome::Model(spec), Some(body)) = (&m.outcome, &m.body) else {
            eprintln!("skipped `{}`: a search space; pick one design with --set", m.name);
            continue;
        };
        match compile(spec, &SpecSpans::from_body(body), sources.clone()) {
            Ok(a) => {
                println!("{}", snapshot(&a));
                built += 1;
            }
            Err(d) => {
                eprintln!("error: `{}` does not lower: {}", m.name, d.message);
                return ExitCode::from(1);
            }
        }
    }
    if built == 0 {
        return fail(&format!("`{}` defines no model to build", file.display()));
    }
    ExitCode::SUCCESS
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("error: {msg}\n{USAGE}");
    ExitCode::from(2)
}
