//! The driver: runs a model's plans on any [`Backend`]. A plan (see
//! `ecarc_compiler::plan`) says which program runs when, with which sizes,
//! where each source comes from and where each output goes; the interpreter
//! (`interpret.rs`) runs it and knows no family. The entry points build on it:
//! - [`Generator::sample`]: the `sample` plan (or Distilled Decoding's);
//! - [`Generator::forward`]: a teacher-forced forward with the reference
//!   implementation's tensor names, as the model declares them;
//! - [`Generator::decode`]: the tokenizer decoder from any tensor set a decode
//!   plan starts from;
//! - [`pairs`]: Distilled Decoding's training pairs from a teacher.

pub mod estimate;
mod forward;
mod interpret;
mod packed;
mod sample;
mod settings;
mod sources;

pub use interpret::PlanRun;
pub use packed::bind_packed_params;
pub use sample::{pairs, pairs_program};
pub use settings::Settings;

use crate::backend::{Backend, Buffer, Executable, Params};
use crate::error::{Result, RuntimeError};
use crate::tensor::HostTensor;
use ecarc_compiler::ir::{Op, TensorType};
use ecarc_compiler::lower::{LowerOptions, Program};
use ecarc_compiler::plan::Keep;
use ecarc_compiler::spec::ModelSpec;
use std::collections::{BTreeSet, HashMap};

/// What one sample is asked for.
#[derive(Clone, Debug)]
pub struct SampleOptions {
    /// One class label per image.
    pub labels: Vec<i64>,
    pub seed: u64,
    /// Which recorded values come back: [`Keep::Stages`] (each stage's result,
    /// the decoder's input: what `--save-tensors` writes) or [`Keep::Debug`]
    /// (also each step's inputs and raw results, for checks).
    pub keep: Keep,
}

/// Told about progress (the CLI draws bars from it).
pub trait Observer {
    /// A plan begins (see [`Outline`]).
    fn begin(&self, _outline: &Outline) {}
    /// Stage `stage` (0-based; `outline.stages` is the finishing work, such as
    /// decoding) begins.
    fn stage(&self, _stage: u64) {}
    /// One program run finished.
    fn ran(&self) {}
}

/// The shape of a plan run, for progress.
#[derive(Clone, Debug)]
pub struct Outline {
    pub plan: String,
    /// Stages of the schedule (0 when the plan walks none).
    pub stages: u64,
    /// Program runs per stage; the last entry is the finishing work.
    pub runs_per_stage: Vec<u64>,
    pub total_runs: u64,
    /// The expected time in seconds on this backend, when it was measured.
    pub estimate: Option<f64>,
}

/// No progress reporting.
pub struct Quiet;
impl Observer for Quiet {}

/// Wall time of one stage (or of the finishing work).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Timing {
    /// `stage 3` (1-based) or `decode`.
    pub what: String,
    pub runs: u64,
    pub seconds: f64,
}

/// Everything a sample produced.
#[derive(Clone, Debug)]
pub struct SampleOutput {
    /// `[N, 3, H, W]` in [0, 1], before 8-bit rounding.
    pub image: HostTensor,
    /// What the decoder was given (`f_hat`, `tokens`, `codes`, `latent`), when kept.
    pub latent: Option<(String, HostTensor)>,
    /// Recorded values by name: `stage.K.tokens`, `stage.K.x`, DD's `step.I.x`;
    /// with [`Keep::Debug`] also `stage.K.input.NAME`, `stage.K.logits`, `stage.K.z`.
    pub stages: Vec<(String, HostTensor)>,
    pub timings: Vec<Timing>,
}

/// A program's sources, read off the graph once.
#[derive(Clone, Debug)]
pub(crate) struct Port {
    pub name: String,
    pub state: bool,
    pub ty: TensorType,
}

/// The programs of one lowering, prepared on a backend.
pub(crate) struct Prepared {
    exes: HashMap<String, Executable>,
    ports: HashMap<String, Vec<Port>>,
}

impl Prepared {
    fn new(program: &Program, backend: &dyn Backend, params: &mut Params) -> Result<Prepared> {
        let mut exes = HashMap::new();
        let mut ports = HashMap::new();
        let kernels = ecarc_compiler::pass::Pipeline::kernels();
        for g in &program.graphs {
            let exe = if program.optimise {
                let mut fused = g.clone();
                kernels.run(&mut fused).map_err(|e| RuntimeError::Invalid(format!("optimiser bug: {e}")))?;
                bind_packed_params(&fused, backend, params)?;
                backend.prepare(&fused, params)?
            } else {
                backend.prepare(g, params)?
            };
            exes.insert(g.name.clone(), exe);
            let p: Vec<Port> =
                g.g.node_weights()
                    .filter_map(|n| match &n.op {
                        Op::Input { name } => Some(Port { name: name.clone(), state: false, ty: n.ty.clone() }),
                        Op::State { name } => Some(Port { name: name.clone(), state: true, ty: n.ty.clone() }),
                        _ => None,
                    })
                    .collect();
            ports.insert(g.name.clone(), p);
        }
        Ok(Prepared { exes, ports })
    }
}

/// A model ready to run on one backend: programs prepared, weights bound
/// once. Every setting ([`Settings`]) is an input of the prepared programs:
/// changing one never lowers or prepares again. Guidance on or off changes
/// the batch, so the `sample` plan is prepared both ways.
pub struct Generator<'b> {
    pub spec: ModelSpec,
    pub program: Program,
    backend: &'b dyn Backend,
    prepared: Prepared,
    /// The `sample` plan lowered with guidance the other way, prepared too.
    other_guidance: Option<(Program, Prepared)>,
    /// Position tables by `(table, P, T)`, computed and uploaded when prepared.
    tables: std::cell::RefCell<HashMap<sources::TableKey, Buffer>>,
    settings: Settings,
}

impl<'b> Generator<'b> {
    /// Prepare every program and the plans' host tables once. `params` need
    /// hold only the tensors the plans that will run read.
    pub fn new(spec: ModelSpec, program: Program, backend: &'b dyn Backend, mut params: Params) -> Result<Self> {
        let prepared = Prepared::new(&program, backend, &mut params)?;
        let other_guidance = if spec.distill.is_none() && program.sample_plan().is_some() {
            let opts = LowerOptions {
                guidance: Some(!program.cfg),
                unoptimised: !program.optimise,
                ..LowerOptions::default()
            };
            let mut other =
                ecarc_compiler::lower::lower_with(&spec, &ecarc_compiler::lower::SpecSpans::default(), opts)
                    .map_err(|d| RuntimeError::Invalid(format!("the model does not lower: {}", d.message)))?;
            let keep: BTreeSet<String> =
                other.sample_plan().map(|p| p.programs()).unwrap_or_default().into_iter().map(String::from).collect();
            other.graphs.retain(|g| keep.contains(&g.name));
            other.plans.retain(|p| p.name == "sample");
            let prepared = Prepared::new(&other, backend, &mut params)?;
            Some((other, prepared))
        } else {
            None
        };
        let settings = Settings::of(&spec);
        let g = Generator { spec, program, backend, prepared, other_guidance, tables: Default::default(), settings };
        g.prepare_tables()?;
        Ok(g)
    }

    /// Lower `spec` and put `weights` on the backend.
    pub fn from_spec(spec: ModelSpec, backend: &'b dyn Backend, weights: &crate::weights::Weights) -> Result<Self> {
        Generator::from_spec_with(spec, backend, weights, LowerOptions::default())
    }

    /// [`Generator::from_spec`] with lowering options (`dd-pairs` lowers the
    /// teacher with the flow map's token choice).
    pub fn from_spec_with(
        spec: ModelSpec,
        backend: &'b dyn Backend,
        weights: &crate::weights::Weights,
        opts: LowerOptions,
    ) -> Result<Self> {
        let program = ecarc_compiler::lower::lower_with(&spec, &ecarc_compiler::lower::SpecSpans::default(), opts)
            .map_err(|d| RuntimeError::Invalid(format!("the model does not lower: {}", d.message)))?;
        let params = weights.upload(backend)?;
        Generator::new(spec, program, backend, params)
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend
    }

    /// The run settings (guidance, temperature, top-k, top-p), from the
    /// model's `sample` block unless set.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Change the settings of later runs (nothing is lowered or prepared again).
    pub fn set_settings(&mut self, settings: Settings) {
        self.settings = settings;
    }

    /// The lowering a plan runs from: the `sample` plan follows the settings'
    /// guidance, every other plan the model's own lowering.
    fn lowering(&self, plan: &str) -> (&Program, &Prepared) {
        match &self.other_guidance {
            Some((p, x)) if plan == "sample" && p.cfg == self.settings.guided() => (p, x),
            _ => (&self.program, &self.prepared),
        }
    }

    fn plan(&self, name: &str) -> Result<&ecarc_compiler::plan::Plan> {
        self.lowering(name)
            .0
            .plan(name)
            .ok_or_else(|| RuntimeError::Invalid(format!("`{}` has no `{name}` plan", self.spec.name)))
    }

    /// The checkpoint keys the plans named here read (every plan: `None`).
    pub fn params_read(program: &Program, plans: Option<&[&str]>) -> BTreeSet<String> {
        let mut programs: BTreeSet<&str> = BTreeSet::new();
        for p in &program.plans {
            if plans.is_none_or(|names| names.contains(&p.name.as_str())) {
                programs.extend(p.programs());
            }
        }
        program
            .graphs
            .iter()
            .filter(|g| programs.contains(g.name.as_str()))
            .flat_map(|g| g.g.node_weights())
            .filter_map(|n| match &n.op {
                Op::Param { key } => Some(key.clone()),
                _ => None,
            })
            .collect()
    }
}
