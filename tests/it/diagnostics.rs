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

/// Every error code in the compiler's sources is produced by some bad input,
/// except the ones listed here with the reason they cannot be written as a file.
#[test]
fn bad_inputs_cover_every_error_code() {
    const UNREACHABLE: &[(&str, &str)] = &[
        // `key in { }` does not parse: the grammar requires at least one option.
        ("E0502", "an empty set of alternatives is a syntax error first"),
    ];
    let mut covered = std::collections::BTreeSet::new();
    for path in bad_inputs() {
        covered.extend(assert_well_formed(&path, &check(&path)));
    }
    let mut in_sources = std::collections::BTreeSet::new();
    for dir in ["grammar/src", "compiler/src"] {
        for entry in std::fs::read_dir(dir).expect("source dir") {
            let p = entry.expect("entry").path();
            if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).expect("source");
                for (i, _) in text.match_indices("\"E0") {
                    let code = &text[i + 1..(i + 6).min(text.len())];
                    if code.len() == 5 && code[1..].bytes().all(|b| b.is_ascii_digit()) {
                        in_sources.insert(code.to_string());
                    }
                }
            }
        }
    }
    let missing: Vec<&String> = in_sources
        .iter()
        .filter(|c| !covered.contains(c.as_str()) && !UNREACHABLE.iter().any(|(u, _)| u == c))
        .collect();
    assert!(missing.is_empty(), "error codes no file in tests/bad/ produces: {missing:?}");
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
