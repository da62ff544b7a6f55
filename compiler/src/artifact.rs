//! The compiled, backend-neutral artifact `ecarc build` writes: the checked
//! spec, its lowered programs and plan, and the cost report. Later commands
//! accept it in place of the `.ecar`; backends generate their kernels when they
//! load it.

use crate::cost::{self, CostReport, Device};
use crate::lower::{self, Program, SpecSpans};
use crate::spec::ModelSpec;
use ecarc_grammar::Diag;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Bumped whenever the artifact's structure changes.
pub(crate) const FORMAT: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Artifact {
    pub format: u32,
    pub ecarc_version: String,
    /// Source file names, indexed by the `FileId`s inside node spans.
    pub sources: Vec<String>,
    pub spec: ModelSpec,
    pub program: Program,
    pub report: CostReport,
}

/// Lower and cost a checked model.
pub fn compile(spec: &ModelSpec, spans: &SpecSpans, sources: Vec<String>) -> Result<Artifact, Diag> {
    compile_with(spec, spans, sources, lower::LowerOptions::default())
}

/// [`compile`] with lowering options (`-O0`: `Options::unoptimised`).
pub fn compile_with(
    spec: &ModelSpec,
    spans: &SpecSpans,
    sources: Vec<String>,
    opts: lower::LowerOptions,
) -> Result<Artifact, Diag> {
    let program = lower::lower_with(spec, spans, opts)?;
    let mut report = cost::report(spec, &program, &[Device::this_cpu(), Device::h100()]);
    if program.optimise {
        // A program the kernel passes cannot take is a compiler bug; the
        // driver reports it when the program runs.
        report.optimiser = cost::optimiser::report(&program, spec.schedule.stages().len()).ok();
    }
    Ok(Artifact {
        format: FORMAT,
        ecarc_version: env!("CARGO_PKG_VERSION").to_string(),
        sources,
        spec: spec.clone(),
        program,
        report,
    })
}

impl Artifact {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("artifacts serialise")
    }

    pub fn from_json(text: &str) -> Result<Artifact, String> {
        #[derive(Deserialize)]
        struct Header {
            format: u32,
        }
        let h: Header = serde_json::from_str(text).map_err(|e| format!("not an ecarc artifact: {e}"))?;
        if h.format != FORMAT {
            return Err(format!(
                "artifact format {} but this ecarc reads format {FORMAT}; rebuild it with `ecarc build`",
                h.format
            ));
        }
        serde_json::from_str(text).map_err(|e| format!("corrupt artifact: {e}"))
    }

    /// Read an artifact file: a regular file of at most [`MAX_ARTIFACT_BYTES`].
    pub fn load(path: &Path) -> Result<Artifact, String> {
        let bytes = ecarc_grammar::resolve::read_capped(path, MAX_ARTIFACT_BYTES)
            .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
        let text = String::from_utf8(bytes).map_err(|_| format!("`{}` is not valid UTF-8", path.display()))?;
        Artifact::from_json(&text)
    }
}

/// The largest artifact [`Artifact::load`] reads (the largest reference model's is a few MB).
pub(crate) const MAX_ARTIFACT_BYTES: u64 = 256 << 20;

/// Whether a path names an artifact rather than a model file.
pub fn is_artifact(path: &Path) -> bool {
    path.to_string_lossy().ends_with(".ecarc.json")
}
