//! Shared helpers for the integration tests.

use ecarc_compiler::ir::{Bindings, Graph};
use ecarc_compiler::session::{check_paths, Outcome, Override};
use ecarc_compiler::ModelSpec;
use ecarc_runtime::backend::{Args, Backend, Buffer, Capabilities, Executable, Params};
use ecarc_runtime::error::Result;
use ecarc_runtime::reference::{Reference, Traffic};
use ecarc_runtime::tensor::HostTensor;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
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

/// The reference backend, recording what each run copied and wrote, and
/// counting prepares.
pub struct Tracing {
    pub inner: Reference,
    pub prepares: Cell<usize>,
    /// Every run: the program, its bindings, what it copied and wrote.
    pub runs: RefCell<Vec<(String, Bindings, Traffic)>>,
}

impl Tracing {
    /// How many times each program ran.
    pub fn runs_per_program(&self) -> BTreeMap<String, u64> {
        let mut m = BTreeMap::new();
        for (p, ..) in self.runs.borrow().iter() {
            *m.entry(p.clone()).or_default() += 1;
        }
        m
    }

    pub fn new() -> Tracing {
        Tracing { inner: Reference::new(), prepares: Cell::new(0), runs: RefCell::new(vec![]) }
    }
}

impl Backend for Tracing {
    fn name(&self) -> &'static str {
        "tracing"
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    fn upload(&self, t: &HostTensor) -> Result<Buffer> {
        self.inner.upload(t)
    }
    fn download(&self, b: &Buffer) -> Result<HostTensor> {
        self.inner.download(b)
    }
    fn prepare(&self, g: &Graph, params: &Params) -> Result<Executable> {
        self.prepares.set(self.prepares.get() + 1);
        self.inner.prepare(g, params)
    }
    fn run(&self, exe: &Executable, b: &Bindings, args: Args) -> Result<Vec<(String, Buffer)>> {
        let before = self.inner.traffic();
        let out = self.inner.run(exe, b, args)?;
        self.runs.borrow_mut().push((exe.name.clone(), *b, self.inner.traffic() - before));
        Ok(out)
    }
    fn synchronize(&self) -> Result<()> {
        self.inner.synchronize()
    }
}
