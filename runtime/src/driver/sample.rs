//! Sampling: the `sample` plan from the caller's labels and seed (and, for
//! parity with other code, a given initial noise), and Distilled Decoding's
//! training pairs, the `pairs` plan of a teacher lowered with the flow map's
//! token choice.

use super::{Generator, Observer, SampleOptions, SampleOutput};
use crate::backend::Backend;
use crate::error::{Result, RuntimeError};
use crate::tensor::HostTensor;
use crate::weights::Weights;
use ecarc_compiler::lower::{lower_with, LowerOptions, Program, SpecSpans, TokenChoice};
use ecarc_compiler::plan::Keep;
use ecarc_compiler::spec::{HeadKind, ModelSpec};
use std::collections::BTreeMap;

impl Generator<'_> {
    /// Generate one image per label.
    pub fn sample(&self, opts: &SampleOptions, observer: &dyn Observer) -> Result<SampleOutput> {
        self.sample_from(opts, None, observer)
    }

    /// The plan input a sample draws when the caller does not give it: the
    /// first flow stage's `x`, a denoiser's initial latent, DD's noise tokens.
    pub fn initial_noise_input(&self) -> Option<&ecarc_compiler::plan::PlanInput> {
        self.program.sample_plan()?.inputs.iter().find(|i| i.default.is_some())
    }

    /// [`Generator::sample`] starting from the given noise instead of drawn
    /// noise (parity with other implementations). Noise drawn later
    /// (renoising, DDPM steps, sampling uniforms) still comes from the seed.
    pub fn sample_from(
        &self,
        opts: &SampleOptions,
        initial: Option<&HostTensor>,
        observer: &dyn Observer,
    ) -> Result<SampleOutput> {
        self.check_labels(&opts.labels)?;
        let mut given = BTreeMap::new();
        if let Some(t) = initial {
            let Some(input) = self.initial_noise_input() else {
                return Err(RuntimeError::Invalid(format!(
                    "`{}` does not start from noise (its tokens are sampled from logits): initial noise applies to \
                     flow heads, denoisers and Distilled Decoding",
                    self.spec.name
                )));
            };
            given.insert(input.name.clone(), t.clone());
        }
        let run = self.run_plan("sample", &given, Some(&opts.labels), opts.seed, opts.keep, observer)?;
        let image = run.results.get("image").ok_or_else(|| {
            RuntimeError::Invalid(format!(
                "`{}`'s tokenizer declares no decoder tensors, so it cannot make images",
                self.spec.name
            ))
        })?;
        let image = self.backend.download(image)?;
        let (latent, stages): (Vec<_>, Vec<_>) = run.records.into_iter().partition(|(n, _)| n.starts_with("latent."));
        let latent = latent.into_iter().next().map(|(n, t)| (n["latent.".len()..].to_string(), t));
        Ok(SampleOutput { image, latent, stages, timings: run.timings })
    }

    fn check_labels(&self, labels: &[i64]) -> Result<()> {
        if labels.is_empty() {
            return Err(RuntimeError::Invalid("nothing to sample: give at least one class label".into()));
        }
        for &l in labels {
            if l < 0 || l >= self.spec.classes as i64 {
                return Err(RuntimeError::Invalid(format!(
                    "class {l} is out of range: the model has {} classes (0..{})",
                    self.spec.classes,
                    self.spec.classes.saturating_sub(1)
                )));
            }
        }
        Ok(())
    }

    /// `ecarc decode`: the tokenizer decoder from any tensor set one of the
    /// model's decode plans starts from (names as `sample --save-tensors`
    /// writes them; `latent.NAME` counts as `NAME`). A single tensor is tried
    /// against every plan with one input of its dtype and rank. Returns the
    /// image and the decoder's own input.
    pub fn decode(&self, tensors: &BTreeMap<String, HostTensor>) -> Result<(HostTensor, Option<(String, HostTensor)>)> {
        let named: BTreeMap<String, HostTensor> =
            tensors.iter().map(|(k, v)| (k.strip_prefix("latent.").unwrap_or(k).to_string(), v.clone())).collect();
        let plans: Vec<&ecarc_compiler::plan::Plan> = self.program.decode_plans().collect();
        if plans.is_empty() {
            return Err(RuntimeError::Invalid(format!("`{}`'s tokenizer declares no decoder", self.spec.name)));
        }
        let complete = |p: &ecarc_compiler::plan::Plan| p.inputs.iter().all(|i| named.contains_key(&i.name));
        let chosen = match plans.iter().find(|p| complete(p)) {
            Some(p) => Some((p.name.clone(), named.clone())),
            // One tensor under another name: the plan with one input of its dtype and rank.
            None if named.len() == 1 => {
                let t = named.values().next().expect("one tensor");
                plans
                    .iter()
                    .find(|p| {
                        p.inputs.len() == 1
                            && p.inputs[0].ty.dtype == t.dtype()
                            && p.inputs[0].ty.rank() == t.shape.len()
                    })
                    .map(|p| (p.name.clone(), BTreeMap::from([(p.inputs[0].name.clone(), t.clone())])))
            }
            None => None,
        };
        let Some((plan, given)) = chosen else {
            let forms: Vec<String> = plans
                .iter()
                .map(|p| {
                    let ins: Vec<String> = p
                        .inputs
                        .iter()
                        .map(|i| {
                            let dims: Vec<String> =
                                i.ty.shape.iter().map(|d| d.to_string().replace('B', "N")).collect();
                            format!("`{}` {}[{}]", i.name, i.ty.dtype.name(), dims.join(", "))
                        })
                        .collect();
                    ins.join(" + ")
                })
                .collect();
            let have: Vec<String> = named.keys().map(|k| format!("`{k}`")).collect();
            return Err(RuntimeError::Invalid(format!(
                "the decoder of `{}` starts from one of: {}; the file holds {}",
                self.spec.name,
                forms.join("; "),
                if have.is_empty() { "nothing".into() } else { have.join(", ") }
            )));
        };
        let run = self.run_plan(&plan, &given, None, 0, Keep::Stages, &super::Quiet)?;
        let image = self.backend.download(&run.results["image"])?;
        // The decoder's input: kept on the way, or given as it is.
        let latent = run
            .records
            .into_iter()
            .find(|(n, _)| n.starts_with("latent."))
            .map(|(n, t)| (n["latent.".len()..].to_string(), t))
            .or_else(|| (given.len() == 1).then(|| given.into_iter().next().expect("one tensor")));
        Ok((image, latent))
    }
}

/// The teacher's program for [`pairs`]: lowered with the flow map's token
/// choice, its plan called `pairs`.
pub fn pairs_program(spec: &ModelSpec) -> Result<Program> {
    if spec.distill.is_some() {
        return Err(RuntimeError::Invalid(
            "dd-pairs runs the teacher: give the teacher's model file (e.g. var_d16.ecar), not the distilled one"
                .into(),
        ));
    }
    if spec.head.kind != HeadKind::Categorical {
        return Err(RuntimeError::Invalid("dd-pairs needs a teacher with a categorical head (VAR, LlamaGen)".into()));
    }
    lower_with(spec, &SpecSpans::default(), LowerOptions { choice: TokenChoice::FlowMap, ..LowerOptions::default() })
        .map_err(|d| RuntimeError::Invalid(format!("the model does not lower: {}", d.message)))
}

/// Distilled Decoding's training pairs from a teacher: each image's tokens
/// chosen by the teacher flow map from Gaussian noise tokens, stage by stage
/// (each token with the teacher's distribution given the tokens before it).
/// `program` is [`pairs_program`]'s. Returns `noise [N, L, D]` and
/// `tokens [N, L]` (L = all tokens, in order).
pub fn pairs(
    spec: ModelSpec,
    program: Program,
    backend: &dyn Backend,
    weights: &Weights,
    labels: &[i64],
    seed: u64,
) -> Result<(HostTensor, HostTensor)> {
    let g = Generator::new(spec, program, backend, weights.upload(backend)?)?;
    g.check_labels(labels)?;
    let run = g.run_plan("pairs", &BTreeMap::new(), Some(labels), seed, Keep::Nothing, &super::Quiet)?;
    Ok((g.backend.download(&run.results["noise"])?, g.backend.download(&run.results["tokens"])?))
}
