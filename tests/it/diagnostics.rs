//! Rendered diagnostics of the bad inputs in `tests/bad/*.ecar`: one mistake per
//! file, each snapshotted as the user sees it (`ecarc check --color never`).
//! Every error must carry a code, a primary label and a help line.

use ecarc_compiler::session::{check_paths, Session};
use std::path::{Path, PathBuf};

/// `tests/bad/*.ecar`, sorted, as paths relative to the repository root (the
/// working directory of integration tests), so rendered file names are stable.
fn bad_inputs() -> Vec<PathBuf> {
    let dir = Path::new("tests/bad");
    assert!(dir.is_dir(), "integration tests run from the repository root; cwd is {:?}", std::env::current_dir());
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("tests/bad is readable")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "ecar"))
        .collect();
    v.sort();
    v
}

/// Check one file by its repository-relative path.
fn check(path: &Path) -> Session {
    check_paths(&[path], &[])
}

/// The rendered diagnostics with any absolute path to the checkout made relative.
fn rendered(session: &Session) -> String {
    let root = format!("{}/", env!("CARGO_MANIFEST_DIR"));
    session.render_diags().replace(&root, "")
}

/// The file's leading `// ...` comment: what the mistake is.
fn mistake(path: &Path) -> String {
    let bytes = std::fs::read(path).expect("bad input is readable");
    let text = String::from_utf8_lossy(&bytes);
    let first = text.lines().next().unwrap_or("");
    assert!(
        first.starts_with("// "),
        "{}: the first line must be a `// ` comment saying what is wrong",
        path.display()
    );
    first.trim_start_matches("// ").to_string()
}

/// Every error has a code, a primary label and a help line; returns the codes.
fn assert_well_formed(path: &Path, session: &Session) -> Vec<&'static str> {
    let errors: Vec<_> = session.diags.iter().filter(|d| d.is_error()).collect();
    assert!(!errors.is_empty(), "{}: expected at least one error, got none", path.display());
    for d in &errors {
        assert!(
            d.code.len() == 5 && d.code.starts_with('E') && d.code[1..].bytes().all(|b| b.is_ascii_digit()),
            "{}: bad code {:?} on `{}`",
            path.display(),
            d.code,
            d.message
        );
        assert!(d.primary_span().is_some(), "{}: {} `{}` has no primary label", path.display(), d.code, d.message);
        assert!(
            d.help.as_deref().is_some_and(|h| !h.trim().is_empty()),
            "{}: {} `{}` has no help line",
            path.display(),
            d.code,
            d.message
        );
        assert!(!d.message.trim().is_empty(), "{}: {} has an empty message", path.display(), d.code);
    }
    errors.iter().map(|d| d.code).collect()
}

#[test]
fn bad_inputs_render_snapshots() {
    let files = bad_inputs();
    assert!(files.len() >= 50, "expected at least 50 bad inputs, found {}", files.len());
    for path in &files {
        let session = check(path);
        assert_well_formed(path, &session);
        let name = path.file_stem().expect("file name").to_string_lossy().to_string();
        insta::with_settings!({
            prepend_module_to_snapshot => false,
            snapshot_suffix => name.clone(),
            description => mistake(path),
            input_file => path,
            omit_expression => true,
        }, {
            insta::assert_snapshot!("diagnostics__bad", rendered(&session));
        });
    }
}

/// The `.rs` files under `dirs` (repository-relative), recursively, sorted.
fn rust_sources(dirs: &[&str]) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let p = entry.expect("entry").path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    for dir in dirs {
        walk(Path::new(dir), &mut out);
    }
    out.sort();
    out
}

/// Every diagnostic code written as a string literal (`"E0304"`, `"W0501"`) in
/// the `.rs` files under `dirs`, with the first file that writes it.
fn codes_in_sources(dirs: &[&str]) -> std::collections::BTreeMap<String, PathBuf> {
    let mut codes = std::collections::BTreeMap::new();
    for path in rust_sources(dirs) {
        let text = std::fs::read_to_string(&path).expect("source");
        let b = text.as_bytes();
        for (i, _) in text.match_indices('"') {
            let literal = b.get(i + 1..i + 7);
            if let Some([kind, d @ .., b'"']) = literal {
                if (*kind == b'E' || *kind == b'W') && d.iter().all(u8::is_ascii_digit) {
                    codes.entry(text[i + 1..i + 6].to_string()).or_insert_with(|| path.clone());
                }
            }
        }
    }
    codes
}

/// Every error code in the compiler's sources is produced by some bad input,
/// except the ones listed here with the reason they cannot be written as a file.
#[test]
fn bad_inputs_cover_every_error_code() {
    const UNREACHABLE: &[(&str, &str)] = &[
        // `key in { }` does not parse: the grammar requires at least one option.
        ("E0502", "an empty set of alternatives is a syntax error first"),
        // More models than one run keeps: tests/it/hostile.rs generates such a file (15.5 MB).
        ("E0210", "needs a file of thousands of models, generated by a test instead"),
        // Raised by the lowering (`ecarc build`); these inputs are only checked.
        ("E0601", "a missing tensor role is found when lowering, after the check"),
        ("E0602", "found when lowering (tests/it/build.rs: a_first_stage_wider_than_the_start_needs_a_flow_head)"),
        // An internal consistency check of `ecarc search` (checker vs cost formula).
        ("E0699", "reports a bug in ecarc, which no model file should reach"),
    ];
    let mut covered = std::collections::BTreeSet::new();
    for path in bad_inputs() {
        covered.extend(assert_well_formed(&path, &check(&path)));
    }
    let in_sources = codes_in_sources(&["grammar/src", "compiler/src"]);
    assert!(in_sources.len() >= 70, "expected the checker's codes in the sources, found {in_sources:?}");
    let missing: Vec<&String> = in_sources
        .keys()
        .filter(|c| c.starts_with('E'))
        .filter(|c| !covered.contains(c.as_str()) && !UNREACHABLE.iter().any(|(u, _)| u == c))
        .collect();
    assert!(missing.is_empty(), "error codes no file in tests/bad/ produces: {missing:?}");
}

/// The table of codes in docs/language.md ("Diagnostics") lists exactly the
/// codes the sources of every crate emit, each with a one-line meaning.
#[test]
fn error_code_table_lists_every_code() {
    let doc = std::fs::read_to_string("docs/language.md").expect("docs/language.md");
    let mut table = std::collections::BTreeMap::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if let ["", code, meaning, _example, ""] = cells.as_slice() {
            let b = code.as_bytes();
            if b.len() == 5 && (b[0] == b'E' || b[0] == b'W') && b[1..].iter().all(u8::is_ascii_digit) {
                assert!(!meaning.is_empty(), "docs/language.md: {code} has no meaning in the table");
                assert!(table.insert(code.to_string(), *meaning).is_none(), "docs/language.md: {code} is listed twice");
            }
        }
    }
    let in_sources = codes_in_sources(&["grammar/src", "compiler/src", "runtime/src", "src"]);
    let unlisted: Vec<String> = in_sources
        .iter()
        .filter(|(c, _)| !table.contains_key(*c))
        .map(|(c, p)| format!("{c} ({})", p.display()))
        .collect();
    assert!(unlisted.is_empty(), "codes the sources emit but docs/language.md's table does not list: {unlisted:?}");
    let stale: Vec<&String> = table.keys().filter(|c| !in_sources.contains_key(*c)).collect();
    assert!(stale.is_empty(), "codes docs/language.md's table lists but no source emits: {stale:?}");
}

/// A file with several independent mistakes reports each of them in one run.
#[test]
fn several_mistakes_are_reported_together() {
    let path = Path::new("tests/data/several_mistakes.ecar");
    let session = check(path);
    let codes = assert_well_formed(path, &session);
    for want in ["E0315", "E0401", "E0305", "E0306", "E0423", "E0304", "E0412"] {
        assert!(codes.contains(&want), "{want} missing from {codes:?}:\n{}", rendered(&session));
    }
    insta::with_settings!({
        prepend_module_to_snapshot => false,
        input_file => path,
        omit_expression => true,
    }, {
        insta::assert_snapshot!("diagnostics__several_mistakes", rendered(&session));
    });
}

/// A root file that cannot be read has no source to point into, but still a code and help.
#[test]
fn missing_root_file() {
    let session = check(Path::new("tests/data/tiny_modle.ecar"));
    assert!(session.has_errors());
    let d = &session.diags[0];
    assert_eq!(d.code, "E0201");
    assert!(d.help.is_some());
    insta::with_settings!({ prepend_module_to_snapshot => false, omit_expression => true }, {
        insta::assert_snapshot!("diagnostics__missing_root_file", rendered(&session));
    });
}
