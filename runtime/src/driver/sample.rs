//! The stage loop: one backbone step per stage (KV cache carried), its head
//! (tokens sampled in the program, or the flow ODE), the transition to the
//! next stage, then the tokenizer's decoder.

use super::{dd, Generator, Observer, SampleOptions, SampleOutput, Step, Timing};
use crate::backend::Buffer;
use crate::error::{Result, RuntimeError};
use crate::rng::SeededRng;
use crate::tensor::HostTensor;
use ecarc_compiler::ir::{Bindings, DType};
use ecarc_compiler::lower::Run;
use std::collections::HashMap;
use std::time::Instant;

impl Generator<'_> {
    /// Generate one image per label.
    pub fn sample(&self, opts: &SampleOptions, observer: &dyn Observer) -> Result<SampleOutput> {
        self.sample_from(opts, None, observer)
    }

    /// [`Generator::sample`] starting from the given noise instead of drawn
    /// noise (parity with other implementations): the DD noise tokens
    /// `[N, L, D]`, the first flow stage's `x`, or a denoiser's initial latent.
    /// Noise drawn later (renoising, DDPM steps, sampling uniforms) still
    /// comes from the seed.
    pub fn sample_from(
        &self,
        opts: &SampleOptions,
        initial: Option<&HostTensor>,
        observer: &dyn Observer,
    ) -> Result<SampleOutput> {
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
            return dd::sample(self, opts, initial, observer);
        }
        // Only a flow head or a denoiser starts from noise; a categorical model
        // has nowhere to put it, and ignoring it silently would mislead.
        let starts_from_noise =
            self.program.graph("head.step").is_some() || self.program.graph("solver.step").is_some();
        if initial.is_some() && !starts_from_noise {
            return Err(RuntimeError::Invalid(format!(
                "`{}` does not start from noise (its tokens are sampled from logits): initial noise applies to \
                 flow heads, denoisers and Distilled Decoding",
                self.spec.name
            )));
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
        // The teacher's codebook on the host, read once (dd-pairs only).
        let mut flow_book: Option<(Vec<f32>, usize)> = None;

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
                let x = self.denoise(run, s, images, &opts.labels, cfg_scale, &mut srng, initial, observer)?;
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
                            let book = match &flow_book {
                                Some(b) => b,
                                None => flow_book.insert(self.host_codebook()?),
                            };
                            let (noise, chosen) = self.flow_map_tokens(logits, &tokens, book, &mut srng)?;
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
                            self.initial_noise(if k == 0 { initial } else { None }, &mut srng, shape)?
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
    pub(super) fn flow_map_tokens(
        &self,
        logits: &Buffer,
        like: &Buffer,
        book: &(Vec<f32>, usize),
        rng: &mut SeededRng,
    ) -> Result<(HostTensor, HostTensor)> {
        let (book_v, dim) = (&book.0, book.1);
        let l = self.backend.download(logits)?;
        let vocab = *l.shape.last().unwrap_or(&1);
        let rows = l.numel() / vocab.max(1);
        let noise = rng.normal(rows * dim);
        let sm = &self.spec.sampler;
        let lv = l.as_f32().unwrap_or(&[]);
        let chosen: Vec<i64> = (0..rows)
            .map(|r| {
                let p = dd::filtered_probs(&lv[r * vocab..(r + 1) * vocab], sm.temperature, sm.top_k, sm.top_p);
                dd::flow_map(&p, book_v, dim, &noise[r * dim..(r + 1) * dim], 64) as i64
            })
            .collect();
        let mut nshape = like.shape.clone();
        nshape.push(dim);
        Ok((HostTensor::f32(nshape, noise), HostTensor::i64(like.shape.clone(), chosen)))
    }

    /// The codebook rows the teacher flow map sends noise to (L2-normalised
    /// where the tokenizer is), on the host, and their dimension.
    fn host_codebook(&self) -> Result<(Vec<f32>, usize)> {
        let book = self.backend.download(&dd::codebook(self)?)?;
        let mut rows = book.as_f32().unwrap_or(&[]).to_vec();
        let dim = *book.shape.last().unwrap_or(&1);
        if self.spec.tokenizer.l2_norm {
            for row in rows.chunks_mut(dim) {
                let n = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                row.iter_mut().for_each(|v| *v /= n);
            }
        }
        Ok((rows, dim))
    }

    /// Run the tokenizer decoder on `value` (its input `name`).
    pub(super) fn decode_buffer(&self, name: &str, value: &Buffer, images: u64) -> Result<HostTensor> {
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
        // A multi-scale tokenizer's decoder reads f_hat: given every scale's
        // tokens `[N, L]` (or DD's codes `[N, L, D]`), accumulate it first.
        if name == "f_hat" && input.shape.len() != 4 {
            let f_hat = self.accumulate_scales(input)?;
            return self.decode_buffer(name, &f_hat, images);
        }
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

    /// VAR's residual accumulation over every scale: token indices `[N, L]`
    /// (or a distilled model's continuous codes `[N, L, D]`), L = all tokens
    /// in scale order, through the `transition.K` programs -> f_hat.
    pub fn accumulate_scales(&self, input: &HostTensor) -> Result<Buffer> {
        let runs: Vec<&Run> = self.program.plan.iter().filter(|r| r.graph.starts_with("transition.")).collect();
        let total: u64 = runs.iter().map(|r| r.tokens).sum();
        let images = *input.shape.first().unwrap_or(&0) as u64;
        let (name, dtype, rank) =
            if self.spec.distill.is_some() { ("codes", DType::F32, 3) } else { ("tokens", DType::I64, 2) };
        if runs.is_empty() || input.dtype() != dtype || input.shape.len() != rank || input.shape[1] as u64 != total {
            return Err(RuntimeError::Invalid(format!(
                "the decoder takes f_hat [N, C, H, W], or the {name} of every scale as {}[N, {total}{}]; the file holds {}{:?}",
                dtype.name(),
                if rank == 3 { ", D" } else { "" },
                input.dtype().name(),
                input.shape
            )));
        }
        let all = self.upload(input)?;
        let mut states: HashMap<String, Buffer> = HashMap::new();
        let mut offset = 0usize;
        for r in runs {
            let part = self.glue.slice(&all, 1, offset, r.tokens as usize)?;
            offset += r.tokens as usize;
            let mut st = Step { images, tokens: r.tokens, past: 0, labels: &[], cfg_scale: 1.0, rng: None };
            let mut out = self.call(&r.graph, &mut st, &[(name, &part)], &states)?;
            if let Some(f) = out.remove("f_hat") {
                states.insert("f_hat".into(), f);
            }
        }
        states.remove("f_hat").ok_or_else(|| RuntimeError::Invalid("the transitions made no f_hat".into()))
    }
}
