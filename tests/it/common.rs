//! Shared helpers for the integration tests.

use ecarc_compiler::session::{check_paths, Outcome, Override};
use ecarc_compiler::ModelSpec;
use std::path::{Path, PathBuf};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `models/*.ecar` file (not the standard library), sorted.
pub fn model_files() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("models"))
        .expect("models/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "ecar"))
        .collect();
    v.sort();
    v
}

/// Check one file and return its single model's spec, panicking with the
/// rendered diagnostics if it does not check clean.
pub fn spec_of(path: &Path, sets: &[&str]) -> ModelSpec {
    let sets: Vec<Override> = sets.iter().map(|s| s.parse().expect("valid --set")).collect();
    let s = check_paths(&[path], &sets);
    assert!(!s.has_errors(), "{} does not check:\n{}", path.display(), s.render_diags());
    match s.models.into_iter().next().map(|m| m.outcome) {
        Some(Outcome::Model(spec)) => *spec,
        other => panic!("{}: expected one model, got {other:?}", path.display()),
    }
}
