//! The schedule driver: runs any model's stage schedule on any [`Backend`].
//! Every family is a list of stages; what a stage does follows from which
//! programs the lowering produced for it (see docs/runtime.md):
//! - a backbone step (`step.first` / `step.next`) with the KV cache carried
//!   across stages; a categorical head samples tokens inside the program;
//! - a flow head (`head.step`) integrating the stage's time segment (Euler, or
//!   Heun as the average of the start and two Euler steps);
//! - a denoiser backbone with its `solver.step` (DDPM/DDIM, flow) per step;
//! - a transition (`transition.K`): VAR's residual accumulation, ECAR's
//!   upsample + renoise;
//! - Distilled Decoding: one or two full forwards from noise;
//!
//! then the tokenizer's `decode`. Small glue programs (doubling a batch for
//! guidance, slicing) run on the same backend, so values stay on the device.

pub mod dd;
pub mod diffusion;
pub mod forward;
pub mod glue;
pub mod positions;
mod sample;
mod solve;

use crate::backend::{Args, Backend, Buffer, Executable};
use crate::error::{Result, RuntimeError};
use crate::rng::SeededRng;
use crate::tensor::HostTensor;
use ecarc_compiler::ir::{Bindings, DType, Graph, Op};
use ecarc_compiler::lower::params::{ParamIndex, Scope};
use ecarc_compiler::lower::Program;
use ecarc_compiler::spec::{CfgSchedule, Layout, ModelSpec};
use glue::Glue;
use positions::Positions;
use std::collections::HashMap;

/// Flow times (in [0, 1]) are fed to networks multiplied by this, the range
/// of the diffusion timesteps their time embeddings are made for.
pub const TIME_SCALE: f64 = 1000.0;

/// What one sample is asked for.
#[derive(Clone, Debug)]
pub struct SampleOptions {
    /// One class label per image.
    pub labels: Vec<i64>,
    pub seed: u64,
    /// Choose each categorical token by the teacher flow map from a Gaussian
    /// noise token instead of sampling (Distilled Decoding's training pairs);
    /// the noise is returned as `stage.K.noise`.
    pub flow_map: bool,
    /// Keep each backbone step's body input and result (`stage.K.input`,
    /// `stage.K.logits` or `stage.K.z`) in the output, for checks such as
    /// KV-cached == teacher-forced.
    pub record: bool,
}

/// Told about progress (the CLI draws bars from it).
pub trait Observer {
    /// Stage `stage` of `stages` begins and will take `steps` program runs.
    fn stage(&self, _stage: usize, _stages: usize, _steps: u64) {}
    fn step(&self) {}
    fn decoding(&self) {}
}

/// No progress reporting.
pub struct Quiet;
impl Observer for Quiet {}

/// Wall time of one stage (or of the decoder).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Timing {
    pub what: String,
    pub runs: u64,
    pub seconds: f64,
}

/// Everything a sample produced.
#[derive(Clone, Debug)]
pub struct SampleOutput {
    /// `[N, 3, H, W]` in [0, 1], before 8-bit rounding.
    pub image: HostTensor,
    /// What the decoder was given: the final latent map, f_hat, tokens or codes.
    pub latent: (String, HostTensor),
    /// Per stage, what it chose: token indices (categorical) or its final
    /// continuous tokens (flow), named `stage.K.tokens` / `stage.K.x`.
    pub stages: Vec<(String, HostTensor)>,
    pub timings: Vec<Timing>,
}

/// A model ready to run on one backend: programs prepared, weights resident.
pub struct Generator<'b> {
    pub spec: ModelSpec,
    pub program: Program,
    backend: &'b dyn Backend,
    exes: HashMap<String, Executable>,
    params: HashMap<String, Buffer>,
    glue: Glue<'b>,
    positions: Positions,
}

/// Per-run context for the inputs the driver computes.
struct Step<'a> {
    images: u64,
    tokens: u64,
    past: u64,
    labels: &'a [i64],
    cfg_scale: f32,
    rng: Option<&'a mut SeededRng>,
}

impl<'b> Generator<'b> {
    pub fn new(
        spec: ModelSpec,
        program: Program,
        backend: &'b dyn Backend,
        params: HashMap<String, Buffer>,
    ) -> Result<Self> {
        let mut exes = HashMap::new();
        for g in &program.graphs {
            exes.insert(g.name.clone(), backend.prepare(g)?);
        }
        let has_pos_start = ParamIndex::new(&spec).get(Scope::Backbone, "pos_start", None).is_some();
        let prefix = ecarc_compiler::lower::backbone::prefix_len(&spec, has_pos_start);
        let raster = matches!(spec.schedule.layout, Layout::Raster { .. });
        let positions = Positions::new(&spec, if raster { prefix } else { 0 });
        Ok(Generator { spec, program, backend, exes, params, glue: Glue::new(backend), positions })
    }

    /// Lower `spec` and put `weights` on the backend.
    pub fn from_spec(spec: ModelSpec, backend: &'b dyn Backend, weights: &crate::weights::Weights) -> Result<Self> {
        let program = ecarc_compiler::lower::lower(&spec, &ecarc_compiler::lower::SpecSpans::default())
            .map_err(|d| RuntimeError::Invalid(format!("the model does not lower: {}", d.message)))?;
        let params = weights.upload(backend)?;
        Generator::new(spec, program, backend, params)
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend
    }

    fn graph(&self, name: &str) -> Result<&Graph> {
        self.program.graph(name).ok_or_else(|| RuntimeError::Invalid(format!("the model has no program `{name}`")))
    }

    fn null_class(&self) -> i64 {
        self.spec.classes as i64
    }

    /// Guidance scale at stage `k` of `n`: constant, or VAR's linear ramp
    /// `1 + cfg * k / (n - 1)` (its logits are `(1 + t) c - t u`, `t = cfg k/(n-1)`).
    pub fn cfg_scale(&self, k: usize, n: usize) -> f32 {
        let s = &self.spec.sampler;
        match s.cfg_schedule {
            CfgSchedule::Constant => s.cfg as f32,
            CfgSchedule::Linear => {
                let r = if n > 1 { k as f64 / (n - 1) as f64 } else { 1.0 };
                (1.0 + s.cfg * r) as f32
            }
        }
    }

    fn upload(&self, t: &HostTensor) -> Result<Buffer> {
        self.backend.upload(t)
    }

    /// Run program `name`: `given` inputs, computed standard inputs, carried
    /// `states` (a state not carried yet starts at zero).
    fn call(
        &self,
        name: &str,
        step: &mut Step,
        given: &[(&str, &Buffer)],
        states: &HashMap<String, Buffer>,
    ) -> Result<HashMap<String, Buffer>> {
        let g = self.graph(name)?;
        let exe = &self.exes[name];
        let bind = Bindings::new(step.images, step.tokens, step.past);
        let mut args = Args { params: Some(&self.params), ..Default::default() };
        let mut owned: Vec<(String, Buffer)> = Vec::new();
        let mut owned_states: Vec<(String, Buffer)> = Vec::new();
        let mut rope = None;
        for n in g.g.node_indices() {
            let node = &g.g[n];
            let shape: Vec<usize> = node.ty.shape.iter().map(|d| d.eval(&bind) as usize).collect();
            match &node.op {
                Op::Input { name: input } => {
                    // Given inputs the program does not declare are left out.
                    if let Some((k, v)) = given.iter().find(|(k, _)| k == input) {
                        args.inputs.insert(k, v);
                        continue;
                    }
                    let t = match input.as_str() {
                        // Both RoPE tables come from one pass over the positions.
                        "rope_cos" | "rope_sin" => {
                            let (cos, sin) = rope.get_or_insert_with(|| self.positions.rope(step.past, step.tokens));
                            if input == "rope_cos" {
                                cos.clone()
                            } else {
                                sin.clone()
                            }
                        }
                        _ => self.standard_input(name, input, &shape, step)?,
                    };
                    owned.push((input.clone(), self.upload(&t)?));
                }
                Op::State { name: state } if !states.contains_key(state) => {
                    owned_states.push((state.clone(), self.upload(&HostTensor::zeros(node.ty.dtype, shape))?));
                }
                _ => {}
            }
        }
        for (k, v) in &owned {
            args.inputs.insert(k.as_str(), v);
        }
        for (k, v) in states {
            args.states.insert(k.as_str(), v);
        }
        for (k, v) in &owned_states {
            args.states.insert(k.as_str(), v);
        }
        Ok(self.backend.run(exe, &bind, &args)?.into_iter().collect())
    }

    /// Inputs computed from the schedule and the options.
    fn standard_input(&self, program: &str, name: &str, shape: &[usize], step: &mut Step) -> Result<HostTensor> {
        let p = &self.positions;
        Ok(match name {
            "labels" => {
                let guided = shape[0] == 2 * step.labels.len();
                positions::labels(step.labels, self.null_class(), guided)
            }
            "levels" => p.levels(step.past, step.tokens),
            "attn_bias" => p.attn_bias(step.past, step.tokens),

            "cfg_scale" => HostTensor::scalar(step.cfg_scale),
            "uniform" | "noise" => {
                let n = shape.iter().product();
                let rng = step.rng.as_deref_mut().ok_or_else(|| RuntimeError::MissingSource {
                    program: program.into(),
                    what: "random input",
                    name: name.into(),
                })?;
                let v = if name == "uniform" { rng.uniform(n) } else { rng.normal(n) };
                HostTensor::f32(shape.to_vec(), v)
            }
            _ => return Err(RuntimeError::MissingSource { program: program.into(), what: "input", name: name.into() }),
        })
    }

    fn input_shape(&self, program: &str, input: &str, bind: &Bindings) -> Result<Vec<usize>> {
        let g = self.graph(program)?;
        g.g.node_weights()
            .find(|n| matches!(&n.op, Op::Input { name } if name == input))
            .map(|n| n.ty.shape.iter().map(|d| d.eval(bind) as usize).collect())
            .ok_or_else(|| RuntimeError::Invalid(format!("program `{program}` has no input `{input}`")))
    }

    fn has_input(&self, program: &str, input: &str) -> bool {
        self.program
            .graph(program)
            .is_some_and(|g| g.g.node_weights().any(|n| matches!(&n.op, Op::Input { name } if name == input)))
    }

    fn normal(&self, rng: &mut SeededRng, shape: Vec<usize>) -> Result<Buffer> {
        let n = shape.iter().product();
        self.upload(&HostTensor::f32(shape, rng.normal(n)))
    }

    /// The given initial noise (checked against the shape), or drawn noise.
    fn initial_noise(&self, given: Option<&HostTensor>, rng: &mut SeededRng, shape: Vec<usize>) -> Result<Buffer> {
        match given {
            Some(t) if t.shape == shape && t.dtype() == DType::F32 => self.upload(t),
            Some(t) => Err(RuntimeError::Invalid(format!(
                "the initial noise is {}{:?}; this model starts from f32{shape:?}",
                t.dtype().name(),
                t.shape
            ))),
            None => self.normal(rng, shape),
        }
    }

    fn scalar(&self, v: f64) -> Result<Buffer> {
        self.upload(&HostTensor::scalar(v as f32))
    }

    fn batch_of(&self, v: f64, n: usize) -> Result<Buffer> {
        self.upload(&HostTensor::f32(vec![n], vec![v as f32; n]))
    }

    fn maybe_double(&self, x: &Buffer) -> Result<Buffer> {
        if self.program.cfg {
            self.glue.double(x)
        } else {
            Ok(x.clone())
        }
    }
}
