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
pub mod forward;
pub mod diffusion;
pub mod glue;
pub mod positions;

use crate::backend::{Args, Backend, Buffer, Executable};
use crate::error::{Result, RuntimeError};
use crate::rng::SeededRng;
use crate::tensor::HostTensor;
use ecarc_compiler::ir::{Bindings, DType, Graph, Op};
use ecarc_compiler::lower::params::{ParamIndex, Scope};
use ecarc_compiler::lower::{Program, Run};
use ecarc_compiler::spec::{CfgSchedule, Layout, ModelSpec, Solver};
use glue::Glue;
use positions::Positions;
use std::collections::HashMap;
use std::time::Instant;

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
        let mut owned: Vec<(String, Buffer)> = Vec::new();
        let mut owned_states: Vec<(String, Buffer)> = Vec::new();
        for n in g.g.node_indices() {
            let node = &g.g[n];
            let shape: Vec<usize> = node.ty.shape.iter().map(|d| d.eval(&bind) as usize).collect();
            match &node.op {
                Op::Input { name: input } => {
                    if given.iter().any(|(k, _)| k == input) {
                        continue;
                    }
                    let t = self.standard_input(name, input, &shape, step)?;
                    owned.push((input.clone(), self.upload(&t)?));
                }
                Op::State { name: state } if !states.contains_key(state) => {
                    owned_states.push((state.clone(), self.upload(&HostTensor::zeros(node.ty.dtype, shape))?));
                }
                _ => {}
            }
        }
        let mut args = Args { params: Some(&self.params), ..Default::default() };
        for (k, v) in given {
            if self.has_input(name, k) {
                args.inputs.insert(k, v);
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
            "rope_cos" => p.rope(step.past, step.tokens).0,
            "rope_sin" => p.rope(step.past, step.tokens).1,
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

    /// Generate one image per label.
    pub fn sample(&self, opts: &SampleOptions, observer: &dyn Observer) -> Result<SampleOutput> {
        if opts.labels.is_empty() {
            return Err(RuntimeError::Invalid("nothing to sample: give at least one class label".into()));
        }
        for &l in &opts.labels {
            if l < 0 || l >= self.spec.classes as i64 {
                return Err(RuntimeError::Invalid(format!(
                    "class {l} is out of range: the model has {} classes (0..{})",
                    self.spec.classes,
                    self.spec.classes.saturating_sub(1)
                )));
            }
        }
        if self.spec.distill.is_some() {
            return dd::sample(self, opts, observer);
        }
        let rng = SeededRng::new(opts.seed);
        let images = opts.labels.len() as u64;
        let stages = self.spec.schedule.stages();
        let n = stages.len();
        let mut states: HashMap<String, Buffer> = HashMap::new();
        let mut out_stages = Vec::new();
        let mut timings = Vec::new();
        // The next backbone step's body input, and a continuous state (flow).
        let mut next_input: Option<(&'static str, Buffer)> = None;
        let mut x_flow: Option<Buffer> = None;
        let mut tokens_all: Vec<HostTensor> = Vec::new();

        for (k, s) in stages.iter().enumerate() {
            let started = Instant::now();
            let runs: Vec<&Run> = self.program.plan.iter().filter(|r| r.stage == k).collect();
            let total: u64 = runs.iter().map(|r| r.times).sum();
            observer.stage(k, n, total);
            let mut srng = rng.fork(&format!("stage.{k}"));
            let cfg_scale = self.cfg_scale(k, n);
            let step_run = runs.iter().find(|r| r.graph.starts_with("step."));
            let has = |g: &str| runs.iter().any(|r| r.graph == g);

            if has("solver.step") {
                let run =
                    step_run.ok_or_else(|| RuntimeError::Invalid("a solver stage without a backbone step".into()))?;
                let x = self.denoise(run, s, images, &opts.labels, cfg_scale, &mut srng, observer)?;
                out_stages.push((format!("stage.{k}.x"), self.backend.download(&x)?));
                x_flow = Some(x);
            } else if let Some(run) = step_run {
                let given: Vec<(&str, &Buffer)> = next_input.iter().map(|(k, v)| (*k, v)).collect();
                let mut st = Step {
                    images,
                    tokens: run.tokens,
                    past: run.past,
                    labels: &opts.labels,
                    cfg_scale,
                    rng: Some(&mut srng),
                };
                let mut out = self.call(&run.graph, &mut st, &given, &states)?;
                observer.step();
                if opts.record {
                    for (name, b) in &given {
                        out_stages.push((format!("stage.{k}.input.{name}"), self.backend.download(b)?));
                    }
                    for name in ["logits", "z"] {
                        if let Some(b) = out.get(name) {
                            out_stages.push((format!("stage.{k}.{name}"), self.backend.download(b)?));
                        }
                    }
                }
                next_input = None;
                for (name, b) in out.iter() {
                    if name.starts_with("cache.") {
                        states.insert(name.clone(), b.clone());
                    }
                }
                if let Some(tokens) = out.remove("tokens") {
                    let tokens = match (opts.flow_map, out.get("logits")) {
                        (true, Some(logits)) => {
                            let (noise, chosen) = self.flow_map_tokens(logits, &tokens, &mut srng)?;
                            out_stages.push((format!("stage.{k}.noise"), noise));
                            self.upload(&chosen)?
                        }
                        _ => tokens,
                    };
                    let host = self.backend.download(&tokens)?;
                    out_stages.push((format!("stage.{k}.tokens"), host.clone()));
                    tokens_all.push(host);
                    if has(&format!("transition.{k}")) {
                        next_input = Some(("tokens", tokens));
                    } else {
                        next_input = Some(("tokens", self.maybe_double(&tokens)?));
                    }
                }
                if let Some(z) = out.remove("z") {
                    let x0 = match x_flow.take() {
                        Some(x) => x,
                        None => {
                            let shape = self.input_shape("head.step", "x", &Bindings::new(images, s.tokens, 0))?;
                            let mut shape = shape;
                            shape[0] = images as usize;
                            self.normal(&mut srng, shape)?
                        }
                    };
                    let x = self.flow(&z, x0, s, images, cfg_scale, observer)?;
                    out_stages.push((format!("stage.{k}.x"), self.backend.download(&x)?));
                    x_flow = Some(x);
                }
            }

            let tname = format!("transition.{k}");
            if has(&tname) {
                let mut st =
                    Step { images, tokens: s.tokens, past: 0, labels: &opts.labels, cfg_scale, rng: Some(&mut srng) };
                let mut given: Vec<(&str, Buffer)> = Vec::new();
                if let Some(("tokens", t)) = &next_input {
                    given.push(("tokens", t.clone()));
                }
                if self.has_input(&tname, "x") {
                    let x =
                        x_flow.clone().ok_or_else(|| RuntimeError::Invalid("a transition before any state".into()))?;
                    given.push(("x", x));
                }
                let refs: Vec<(&str, &Buffer)> = given.iter().map(|(k, v)| (*k, v)).collect();
                let mut out = self.call(&tname, &mut st, &refs, &states)?;
                observer.step();
                if let Some(f) = out.remove("f_hat") {
                    states.insert("f_hat".into(), f);
                }
                match (out.remove("x"), out.remove("x_cond")) {
                    (Some(x), Some(cond)) => {
                        x_flow = Some(x);
                        next_input = Some(("x", cond));
                    }
                    (Some(x), None) => next_input = Some(("x", x)),
                    _ => next_input = None,
                }
            }
            self.backend.synchronize()?;
            timings.push(Timing { what: format!("stage {k}"), runs: total, seconds: started.elapsed().as_secs_f64() });
        }

        // ---- decode ---------------------------------------------------------
        let started = Instant::now();
        observer.decoding();
        let (name, value) = if self.has_input("decode", "f_hat") {
            let f = states.get("f_hat").cloned().ok_or_else(|| RuntimeError::Invalid("no f_hat to decode".into()))?;
            ("f_hat", f)
        } else if self.has_input("decode", "tokens") {
            let parts: Vec<Buffer> = tokens_all.iter().map(|t| self.upload(t)).collect::<Result<_>>()?;
            let refs: Vec<&Buffer> = parts.iter().collect();
            ("tokens", self.glue.concat(&refs, 1)?)
        } else {
            let x = x_flow.clone().ok_or_else(|| RuntimeError::Invalid("no latent to decode".into()))?;
            let x = if x.shape.len() == 3 {
                let g = self.spec.schedule.final_grid();
                self.glue.tokens_to_map(&x, g[0] as usize, g[1] as usize)?
            } else {
                x
            };
            ("latent", x)
        };
        let latent = (name.to_string(), self.backend.download(&value)?);
        let image = self.decode_buffer(name, &value, images)?;
        timings.push(Timing { what: "decode".into(), runs: 1, seconds: started.elapsed().as_secs_f64() });
        Ok(SampleOutput { image, latent, stages: out_stages, timings })
    }

    /// Tokens chosen by the teacher flow map from the (guided) logits of one
    /// step: one Gaussian noise token per position, mapped onto the codebook.
    fn flow_map_tokens(&self, logits: &Buffer, like: &Buffer, rng: &mut SeededRng) -> Result<(HostTensor, HostTensor)> {
        let book = self.backend.download(&dd::codebook(self)?)?;
        let mut book_v = book.as_f32().unwrap_or(&[]).to_vec();
        let dim = *book.shape.last().unwrap_or(&1);
        if self.spec.tokenizer.l2_norm {
            for row in book_v.chunks_mut(dim) {
                let n = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                row.iter_mut().for_each(|v| *v /= n);
            }
        }
        let l = self.backend.download(logits)?;
        let vocab = *l.shape.last().unwrap_or(&1);
        let rows = l.numel() / vocab.max(1);
        let noise = rng.normal(rows * dim);
        let sm = &self.spec.sampler;
        let lv = l.as_f32().unwrap_or(&[]);
        let chosen: Vec<i64> = (0..rows)
            .map(|r| {
                let p = dd::filtered_probs(&lv[r * vocab..(r + 1) * vocab], sm.temperature, sm.top_k, sm.top_p);
                dd::flow_map(&p, &book_v, dim, &noise[r * dim..(r + 1) * dim], 64) as i64
            })
            .collect();
        let mut nshape = like.shape.clone();
        nshape.push(dim);
        Ok((HostTensor::f32(nshape, noise), HostTensor::i64(like.shape.clone(), chosen)))
    }

    /// Run the tokenizer decoder on `value` (its input `name`).
    fn decode_buffer(&self, name: &str, value: &Buffer, images: u64) -> Result<HostTensor> {
        if self.program.graph("decode").is_none() {
            return Err(RuntimeError::Invalid(
                "the model's tokenizer declares no decoder tensors, so it cannot make images".into(),
            ));
        }
        let mut st = Step { images, tokens: 0, past: 0, labels: &[], cfg_scale: 1.0, rng: None };
        let mut out = self.call("decode", &mut st, &[(name, value)], &HashMap::new())?;
        let img = out.remove("image").ok_or_else(|| RuntimeError::Invalid("decode has no image output".into()))?;
        self.backend.download(&img)
    }

    /// `ecarc decode`: the decoder alone, on token indices, codes or a latent.
    pub fn decode(&self, input: &HostTensor) -> Result<HostTensor> {
        let names = ["tokens", "codes", "f_hat", "latent"];
        let name = names
            .into_iter()
            .find(|n| self.has_input("decode", n))
            .ok_or_else(|| RuntimeError::Invalid("the model has no decoder".into()))?;
        let images = *input.shape.first().unwrap_or(&0) as u64;
        let expect = self.input_shape("decode", name, &Bindings::new(images, 0, 0))?;
        let want = if name == "tokens" { DType::I64 } else { DType::F32 };
        if input.shape != expect || input.dtype() != want {
            return Err(RuntimeError::Invalid(format!(
                "the decoder takes `{name}` as {}{expect:?}; the file holds {}{:?}",
                want.name(),
                input.dtype().name(),
                input.shape
            )));
        }
        let b = self.upload(input)?;
        self.decode_buffer(name, &b, images)
    }

    /// A flow head's ODE over stage `s`'s time segment, starting from `x`.
    fn flow(
        &self,
        z: &Buffer,
        x: Buffer,
        s: &ecarc_compiler::spec::StageSpec,
        images: u64,
        cfg: f32,
        obs: &dyn Observer,
    ) -> Result<Buffer> {
        let [t0, t1] = s.segment.unwrap_or([1.0, 0.0]);
        let steps = s.steps.max(1);
        let dt = (t1 - t0) / steps as f64;
        let heun = self.spec.sampler.solver == Solver::Heun;
        let batch = if self.program.cfg { 2 * images as usize } else { images as usize };
        let dtb = self.scalar(dt * 1.0)?;
        let mut x = x;
        let euler = |x: &Buffer, t: f64| -> Result<Buffer> {
            let xx = self.maybe_double(x)?;
            let tb = self.batch_of(t * TIME_SCALE, batch)?;
            let mut st = Step { images, tokens: s.tokens, past: 0, labels: &[], cfg_scale: cfg, rng: None };
            let mut out =
                self.call("head.step", &mut st, &[("z", z), ("x", &xx), ("t", &tb), ("dt", &dtb)], &HashMap::new())?;
            obs.step();
            out.remove("x").ok_or_else(|| RuntimeError::Invalid("head.step has no output x".into()))
        };
        for i in 0..steps {
            let t = t0 + dt * i as f64;
            let x1 = euler(&x, t)?;
            x = if heun {
                let x2 = euler(&x1, t + dt)?;
                self.glue.mean(&x, &x2)?
            } else {
                x1
            };
        }
        Ok(x)
    }

    /// A denoiser backbone (DiT) over its stage: diffusion or flow solver steps.
    #[allow(clippy::too_many_arguments)]
    fn denoise(
        &self,
        run: &Run,
        s: &ecarc_compiler::spec::StageSpec,
        images: u64,
        labels: &[i64],
        cfg: f32,
        rng: &mut SeededRng,
        obs: &dyn Observer,
    ) -> Result<Buffer> {
        let bind = Bindings::new(images, run.tokens, 0);
        let shape = self.input_shape("solver.step", "x", &bind)?;
        let mut x = self.normal(rng, shape.clone())?;
        let batch = if self.program.cfg { 2 * images as usize } else { images as usize };
        let sm = &self.spec.sampler;
        let net = |x: &Buffer, t: f64, rng: &mut SeededRng| -> Result<Buffer> {
            let xx = self.maybe_double(x)?;
            let tb = self.batch_of(t, batch)?;
            let mut st = Step { images, tokens: run.tokens, past: 0, labels, cfg_scale: cfg, rng: Some(rng) };
            let mut out = self.call(&run.graph, &mut st, &[("latent", &xx), ("t", &tb)], &HashMap::new())?;
            obs.step();
            out.remove("out").ok_or_else(|| RuntimeError::Invalid("the denoiser has no output `out`".into()))
        };
        let solver = |out: &Buffer, x: &Buffer, scalars: &[(&str, f64)], noise: Option<Buffer>| -> Result<Buffer> {
            let bufs: Vec<(&str, Buffer)> =
                scalars.iter().map(|(k, v)| Ok((*k, self.scalar(*v)?))).collect::<Result<_>>()?;
            let mut given: Vec<(&str, &Buffer)> = vec![("out", out), ("x", x)];
            given.extend(bufs.iter().map(|(k, v)| (*k, v)));
            if let Some(n) = &noise {
                given.push(("noise", n));
            }
            let mut st = Step { images, tokens: run.tokens, past: 0, labels, cfg_scale: cfg, rng: None };
            let mut o = self.call("solver.step", &mut st, &given, &HashMap::new())?;
            obs.step();
            o.remove("x").ok_or_else(|| RuntimeError::Invalid("solver.step has no output x".into()))
        };
        match sm.solver {
            Solver::Ddpm | Solver::Ddim => {
                for c in diffusion::schedule(sm.beta, sm.train_steps, s.steps) {
                    let out = net(&x, c.timestep, rng)?;
                    let ddim = sm.solver == Solver::Ddim;
                    let noise = if c.add_noise && !ddim {
                        self.normal(rng, shape.clone())?
                    } else {
                        self.upload(&HostTensor::zeros(DType::F32, shape.clone()))?
                    };
                    let sigma = if ddim { 0.0 } else { c.sigma };
                    x = solver(
                        &out,
                        &x,
                        &[
                            ("sqrt_recip_abar", c.sqrt_recip_abar),
                            ("sqrt_recipm1_abar", c.sqrt_recipm1_abar),
                            ("posterior_coef1", c.posterior_coef1),
                            ("posterior_coef2", c.posterior_coef2),
                            ("log_beta", c.log_beta),
                            ("log_posterior_var", c.log_posterior_var),
                            ("sigma", sigma),
                        ],
                        Some(noise),
                    )?;
                }
            }
            Solver::Euler | Solver::Heun => {
                let [t0, t1] = s.segment.unwrap_or([1.0, 0.0]);
                let steps = s.steps.max(1);
                let dt = (t1 - t0) / steps as f64;
                for i in 0..steps {
                    let t = t0 + dt * i as f64;
                    let v = net(&x, t * TIME_SCALE, rng)?;
                    let x1 = solver(&v, &x, &[("dt", dt)], None)?;
                    x = if sm.solver == Solver::Heun {
                        let v2 = net(&x1, (t + dt) * TIME_SCALE, rng)?;
                        let x2 = solver(&v2, &x1, &[("dt", dt)], None)?;
                        self.glue.mean(&x, &x2)?
                    } else {
                        x1
                    };
                }
            }
        }
        Ok(x)
    }
}
