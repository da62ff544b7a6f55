//! The rules between a model's components (E0404 to E0421): the token grid
//! against the image, the head against the tokens, the sampler and `distill`
//! against the schedule and the tokenizer.

use super::Checker;
use crate::spec::*;
use ecarc_grammar::ast::Ident;
use ecarc_grammar::merged::{MBody, MValue};
use ecarc_grammar::Diag;

/// A model's checked components, with the bodies and spans that the reports
/// of the rules between them point at.
pub(super) struct Checked<'p, 'a> {
    pub(super) name: &'p Ident,
    pub(super) body: &'a MBody,
    pub(super) image: [u64; 2],
    pub(super) tokenizer: &'p TokenizerSpec,
    pub(super) tok_body: &'a MBody,
    pub(super) backbone: &'p BackboneSpec,
    pub(super) bb_body: &'a MBody,
    pub(super) head: &'p HeadSpec,
    pub(super) head_body: &'a MBody,
    pub(super) schedule: &'p ScheduleSpec,
    pub(super) sched_spans: &'p super::schedule::ScheduleSpans,
    pub(super) sampler: &'p SamplerSpec,
    pub(super) sampler_span: &'p super::sampler::SamplerSpans,
    pub(super) distill: Option<&'p (DistillSpec, super::distill::DistillSpans)>,
}

impl Checker<'_> {
    /// Report every broken rule between the components; whether all hold.
    pub(super) fn cross_field_rules(&self, m: &Checked) -> bool {
        let Checked {
            name,
            body,
            image,
            tokenizer,
            tok_body,
            backbone,
            bb_body,
            head,
            head_body,
            schedule,
            sched_spans,
            sampler,
            sampler_span,
            distill,
        } = *m;
        let mut ok = true;
        let mut fail = |d: Diag| {
            self.error(d);
            ok = false;
        };
        // What sets the token grid: the patch if the backbone gives one, else the image.
        let image_span = body.field("image").map(|f| f.span).unwrap_or(name.span);
        let token_grid_span = bb_body.field("patch").map(|f| f.span).unwrap_or(image_span);
        for (axis, &px) in image.iter().enumerate() {
            let cell = tokenizer.stride * backbone.patch;
            if px % cell != 0 {
                fail(
                    Diag::error("E0404", "image size is not a multiple of stride x patch")
                        .label(
                            image_span,
                            format!(
                                "{px} px is not divisible by {} (stride {} x patch {})",
                                cell, tokenizer.stride, backbone.patch
                            ),
                        )
                        .help(match px / cell {
                            0 => format!("use an image size that is a multiple of {cell}, e.g. {cell}"),
                            k => format!(
                                "use an image size that is a multiple of {cell}, e.g. {} or {}",
                                k * cell,
                                (k + 1) * cell
                            ),
                        }),
                );
                break;
            }
            let want = px / cell;
            let got = schedule.final_grid()[axis];
            if got != want && axis == 0 || (axis == 1 && got != want && schedule.final_grid()[0] == image[0] / cell) {
                fail(
                    Diag::error("E0405", "the last stage does not cover the token grid")
                        .label(
                            sched_spans.last,
                            format!("the finest stage is {}x{}", schedule.final_grid()[0], schedule.final_grid()[1]),
                        )
                        .label(
                            token_grid_span,
                            format!(
                                "image {}x{} / stride {} / patch {} gives {}x{} tokens",
                                image[0],
                                image[1],
                                tokenizer.stride,
                                backbone.patch,
                                image[0] / cell,
                                image[1] / cell
                            ),
                        )
                        .help(format!(
                            "make the last stage {}x{} (or change image, stride or patch)",
                            image[0] / cell,
                            image[1] / cell
                        )),
                );
                break;
            }
        }
        let head_kind_span = head_body.field("kind").map(|f| f.span).unwrap_or(head_body.span);
        match (head.kind, schedule.tokens) {
            (HeadKind::Categorical, TokenKind::Continuous)
            | (HeadKind::FlowMlp | HeadKind::FlowTransformer | HeadKind::Linear, TokenKind::Discrete) => {
                let want = if schedule.tokens == TokenKind::Continuous {
                    "a flow head (flow_mlp, flow_transformer or linear)"
                } else {
                    "a categorical head"
                };
                fail(
                    Diag::error("E0410", "head does not match the tokens")
                        .label(
                            head_kind_span,
                            format!(
                                "this head is {:?} but the tokenizer makes {:?} tokens",
                                head.kind, schedule.tokens
                            )
                            .to_lowercase(),
                        )
                        .help(format!("{} tokens need {want}", format!("{:?}", schedule.tokens).to_lowercase())),
                )
            }
            (HeadKind::DdContinuous, _) if distill.is_none() => fail(
                Diag::error("E0411", "a dd_continuous head needs `distill`")
                    .label(head_kind_span, "DD's continuous head, without `distill` in the model")
                    .help("add `distill dd { steps 1 }` or use the teacher's head"),
            ),
            _ => {}
        }
        // VAR's phi map has one entry per scale (DD's leading class position aside).
        if let Some(phi) = &tokenizer.phi {
            let n = schedule.num_stages() as usize;
            let fits = phi.map.len() == n || (distill.is_some() && phi.map.len() + 1 == n);
            if !fits {
                let map_span = tok_body
                    .field("phi")
                    .and_then(|f| match &f.value {
                        MValue::Component(c) => c.body.field("map").map(|m| m.span),
                        _ => None,
                    })
                    .unwrap_or(sched_spans.at);
                fail(
                    Diag::error("E0418", "the phi map does not match the scales")
                        .label(map_span, format!("{} entries", phi.map.len()))
                        .label(sched_spans.at, format!("{n} stages"))
                        .help("give one phi conv index per scale (VAR's 10 scales: [0, 0, 1, 1, 1, 2, 2, 3, 3, 3])"),
                );
            }
        }
        if let Some(vocab) = tokenizer.vocab {
            if sampler.top_k > vocab {
                fail(
                    Diag::error("E0412", "top_k is larger than the vocabulary")
                        .label(
                            sampler_span.top_k.unwrap_or(sampler_span.at),
                            format!("top_k {} > vocab {vocab}", sampler.top_k),
                        )
                        .help(format!("use a top_k of at most {vocab}, or 0 to turn it off")),
                );
            }
        } else if sampler.top_k > 0 || sampler.top_p < 1.0 {
            fail(
                Diag::error("E0413", "top_k / top_p need discrete tokens")
                    .label(
                        sampler_span.top_k.or(sampler_span.top_p).unwrap_or(sampler_span.at),
                        "this model's tokens are continuous",
                    )
                    .help("remove top_k / top_p; continuous tokens are integrated by the flow solver"),
            );
        }
        if matches!(sampler.solver, Solver::Ddpm | Solver::Ddim) && schedule.tokens == TokenKind::Discrete {
            fail(
                Diag::error("E0414", "a diffusion solver needs continuous tokens")
                    .label(sampler_span.solver.unwrap_or(sampler_span.at), "ddpm/ddim integrate continuous latents")
                    .help("remove `solver` for a discrete-token model"),
            );
        }
        if matches!(sampler.solver, Solver::Ddpm | Solver::Ddim) {
            for (i, s) in schedule.stages().iter().enumerate() {
                if s.steps > sampler.train_steps {
                    let mut d = Diag::error("E0415", "more sampling steps than diffusion training steps").label(
                        sched_spans.steps.get(i).copied().unwrap_or(sched_spans.at),
                        format!("{} steps > train_steps {}", s.steps, sampler.train_steps),
                    );
                    if let Some(t) = sampler_span.train_steps {
                        d = d.label(t, "the diffusion's training steps");
                    }
                    fail(d.help(format!(
                        "use at most {} sampling steps, or raise `train_steps` to what the model was trained with",
                        sampler.train_steps
                    )));
                    break;
                }
            }
        }
        if let Some(ch) = sampler.cfg_channels {
            let out = tokenizer.token_channels * backbone.patch * backbone.patch;
            if ch > out {
                fail(
                    Diag::error("E0416", "cfg_channels exceeds the output channels")
                        .label(sampler_span.cfg_channels.unwrap_or(sampler_span.at), format!("{ch} > {out}"))
                        .help(format!("guide at most the {out} channels a token has")),
                );
            }
        }
        if let Some((d, dspan)) = &distill {
            if schedule.tokens == TokenKind::Continuous {
                fail(
                    Diag::error("E0420", "Distilled Decoding needs a discrete-token teacher")
                        .label(dspan.at, "distill on a continuous-token model")
                        .help("DD distils VAR- or LlamaGen-style models; remove `distill`"),
                );
            }
            let n = schedule.num_stages();
            if d.greedy_prefix > n {
                fail(
                    Diag::error("E0417", "DD greedy prefix is longer than the schedule")
                        .label(
                            dspan.greedy.unwrap_or(dspan.at),
                            format!("greedy_prefix {} with {n} stages", d.greedy_prefix),
                        )
                        .help(format!("greedy_prefix counts stages taken from the teacher head's argmax: at most {n}")),
                );
            }
            if d.steps == 2 && (d.split == 0 || d.split >= n) {
                fail(
                    Diag::error("E0421", "DD split is outside the schedule")
                        .label(dspan.split.unwrap_or(dspan.at), format!("split {} with {n} stages", d.split))
                        .help(format!(
                            "the split must be between 1 and {} (a stage index after which the second step re-noises)",
                            n - 1
                        )),
                );
            }
        }
        ok
    }
}
