//! The checker: a merged model body -> [`ModelSpec`], with every rule of
//! docs/language.md. Errors are collected so that one run reports them all.
//!
//! This module holds the entry points, the [`Checker`] and the model check
//! with its cross-field rules; each component has its own module (tokenizer,
//! backbone, head, schedule, sampler, distill), and `params` evaluates the
//! declared tensors.

use crate::eval::{Scope, N};
use crate::reader::Reader;
use crate::spec::*;
use ecarc_grammar::ast::Ident;
use ecarc_grammar::diag::did_you_mean;
use ecarc_grammar::merged::{Component, MBody, MValue};
use ecarc_grammar::{Diag, Span};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

mod backbone;
mod distill;
mod head;
pub mod memo;
mod params;
mod sampler;
mod schedule;
mod tokenizer;

pub(crate) use params::needs_expansion;
use params::ParamCtx;
pub use sampler::sampler_rules;

/// Metrics a `where` constraint may bound (computed by the cost model).
pub(crate) const METRICS: &[&str] =
    &["params", "forward_macs", "sample_macs", "peak_activation_bytes", "stages", "tokens"];

/// Token grids are at most this many tokens on a side (so counts never overflow).
const MAX_GRID_SIDE: u64 = 1 << 16;

/// At most this many tensors may be declared after expanding loops.
pub(crate) const MAX_TENSORS: u64 = 100_000;

const EPS: f64 = 1e-9;

/// Check one model (no alternatives left in `body`).
pub fn check_model(name: &Ident, body: &MBody) -> Result<ModelSpec, Vec<Diag>> {
    check_model_counted(name, body).0
}

/// [`check_model`], and how many declared tensors the check evaluated (its
/// work: a search space's check is budgeted by it).
pub(crate) fn check_model_counted(name: &Ident, body: &MBody) -> (Result<ModelSpec, Vec<Diag>>, u64) {
    let diags = RefCell::new(Vec::new());
    let empty = BTreeMap::new();
    let parts = Checker { diags: &diags, empty: &empty, memo: None }.model(name, body);
    let diags = diags.into_inner();
    let tensors = parts.as_ref().map_or(0, |p| p.tensors);
    let result = match parts {
        Some(p) if diags.iter().all(|d| !d.is_error()) => Ok(p.into_spec(name)),
        _ => Err(diags),
    };
    (result, tensors)
}

struct Checker<'a> {
    diags: &'a RefCell<Vec<Diag>>,
    empty: &'a BTreeMap<String, N>,
    /// Reuse of earlier results when checking many points of one search space
    /// (see [`memo`]); `None` checks everything afresh.
    memo: Option<memo::Ctx<'a>>,
}

/// What [`Checker::model`] produces: the checked parts of a model.
struct Parts {
    image: [u64; 2],
    classes: u64,
    tokenizer: TokenizerSpec,
    backbone: BackboneSpec,
    head: HeadSpec,
    schedule: ScheduleSpec,
    sampler: SamplerSpec,
    distill: Option<DistillSpec>,
    groups: GroupsOut,
    constraints: Vec<ConstraintSpec>,
    /// Declared tensors evaluated (copies of loops counted).
    tensors: u64,
}

/// The evaluated `params`/`buffers` groups: in one pass over every owner (the
/// definition of the rules), or per owner from [`memo`] when that gives the same.
enum GroupsOut {
    Sequential { params: Vec<ParamGroupSpec>, buffers: Vec<ParamGroupSpec>, tok_params: Vec<ParamGroupSpec> },
    Owners(Vec<std::sync::Arc<memo::OwnerGroups>>),
}

impl Parts {
    fn into_spec(self, name: &Ident) -> ModelSpec {
        let (params, buffers, tok_params) = match self.groups {
            GroupsOut::Sequential { params, buffers, tok_params } => (params, buffers, tok_params),
            GroupsOut::Owners(owners) => {
                let (mut params, mut buffers, mut tok_params) = (Vec::new(), Vec::new(), Vec::new());
                for o in &owners {
                    if o.owner == "tokenizer" {
                        tok_params.extend(o.params.iter().cloned());
                    } else {
                        params.extend(o.params.iter().cloned());
                    }
                    buffers.extend(o.buffers.iter().cloned());
                }
                (params, buffers, tok_params)
            }
        };
        let mut tokenizer = self.tokenizer;
        tokenizer.params = tok_params;
        ModelSpec {
            name: name.name.clone(),
            image: self.image,
            classes: self.classes,
            tokenizer,
            backbone: self.backbone,
            head: self.head,
            schedule: self.schedule,
            sampler: self.sampler,
            distill: self.distill,
            params,
            buffers,
            constraints: self.constraints,
        }
    }
}

fn base_name(c: &Component) -> Option<String> {
    c.bases.first().map(|b| b.name.clone())
}

impl<'a> Checker<'a> {
    fn error(&self, d: Diag) {
        self.diags.borrow_mut().push(d);
    }

    fn reader(&self, body: &'a MBody, chain: Vec<&'a MBody>, what: &'static str, at: Span) -> Reader<'a> {
        Reader::new(body, Scope::new(chain, self.empty), what, at, self.diags)
    }

    /// The same checker with derived values known so far in scope.
    fn with_derived(&self, derived: &'a BTreeMap<String, N>) -> Checker<'a> {
        Checker { diags: self.diags, empty: derived, memo: self.memo }
    }

    fn model(&self, name: &Ident, body: &'a MBody) -> Option<Parts> {
        let m = self.reader(body, vec![body], "model", name.span);
        let image = m.size("image", "256");
        let classes = m.int("classes", None, 1, 1 << 40, "1000");

        let tokenizer_c = m.component("tokenizer", true);
        let tokenizer = tokenizer_c.and_then(|(c, at)| {
            self.unit(memo::Unit::Tokenizer, &[], || self.tokenizer(c, body, at)).map(|t| (t, &c.body))
        });
        let backbone = m.component("backbone", true).and_then(|(c, at)| {
            let b = self.unit(memo::Unit::Backbone, &[], || self.backbone(c, body, at))?;
            Some((b, &c.body, block_body(&c.body)?))
        });
        // Later components may refer to what is known by now (`width cond_dim`).
        let mut early: BTreeMap<String, N> = BTreeMap::new();
        if let Some(c) = classes {
            early.insert("classes".into(), N::Int(c));
        }
        if let Some((t, _)) = &tokenizer {
            early.insert("token_channels".into(), N::Int(t.token_channels as i64));
            early.insert(
                if t.kind == TokenizerKind::Vae { "latent_channels" } else { "code_dim" }.into(),
                N::Int(t.token_channels as i64),
            );
            if let Some(v) = t.vocab {
                early.insert("vocab".into(), N::Int(v as i64));
            }
        }
        if let Some((b, _, _)) = &backbone {
            early.insert("cond_dim".into(), N::Int(b.width as i64));
            early.insert("head_dim".into(), N::Int(b.head_dim as i64));
            early.insert("patch".into(), N::Int(b.patch as i64));
            early.insert("time_embed".into(), N::Int(b.time_embed as i64));
            early.insert("ffn_hidden".into(), N::Int(b.block.ffn_hidden as i64));
        }
        let later = self.with_derived(&early);
        let early_key = memo::derived_key(&early);
        let head = m.component("head", true).and_then(|(c, at)| {
            later.unit(memo::Unit::Head, &early_key, || later.head(c, body, at)).map(|h| (h, &c.body))
        });
        let sampler_c = m.component("sample", false);
        let sampler = later.unit(memo::Unit::Sampler, &early_key, || match sampler_c {
            Some((c, at)) => later.sampler(Some(c), body, at),
            None => later.sampler(None, body, name.span),
        });
        let distill_c = m.component("distill", false);
        let distill =
            distill_c.and_then(|(c, at)| later.unit(memo::Unit::Distill, &early_key, || later.distill(c, body, at)));
        let schedule_c = m.component("schedule", true);
        // The kind of tokens, also when the tokenizer has other errors (then from
        // its `kind` word), so that the schedule's own mistakes are reported too.
        let token_kind = match &tokenizer {
            Some((t, _)) => Some(t.kind),
            None => tokenizer_c.and_then(|(c, _)| match c.body.field("kind").map(|f| &f.value) {
                Some(MValue::Expr(e)) => match e.as_name() {
                    Some("vae") => Some(TokenizerKind::Vae),
                    Some("vq") => Some(TokenizerKind::Vq),
                    Some("msvq") => Some(TokenizerKind::Msvq),
                    _ => None,
                },
                _ => None,
            }),
        }
        .map(|k| if k == TokenizerKind::Vae { TokenKind::Continuous } else { TokenKind::Discrete });
        let schedule = match (schedule_c, token_kind) {
            (Some((c, at)), Some(kind)) => {
                let mut key = early_key.clone();
                key.push(kind as u64);
                later.unit(memo::Unit::Schedule, &key, || later.schedule(c, body, at, kind))
            }
            _ => None,
        };
        m.allow(&[]);
        m.finish();

        let (tokenizer, tok_body) = tokenizer?;
        let (backbone, bb_body, block_body) = backbone?;
        let (head, head_body) = head?;
        let (schedule, sched_spans) = schedule?;
        let (sampler, sampler_span) = sampler?;
        let image = image?;
        let classes = classes? as u64;

        // ---- cross-field rules --------------------------------------------
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

        // ---- derived values and declared tensors ---------------------------
        let grid = schedule.final_grid();
        let mut derived = early.clone();
        let int = |v: u64| N::Int(v as i64);
        derived.insert("head_dim".into(), int(backbone.head_dim));
        derived.insert("ffn_hidden".into(), int(backbone.block.ffn_hidden));
        derived.insert("tokens".into(), int(schedule.total_tokens()));
        derived.insert("stages".into(), int(schedule.num_stages()));
        derived.insert("grid".into(), int(grid[0]));
        derived.insert("classes".into(), int(classes));
        derived.insert("patch".into(), int(backbone.patch));
        derived.insert("cond_dim".into(), int(backbone.width));
        derived.insert("token_channels".into(), int(tokenizer.token_channels));
        derived.insert("levels".into(), int(tokenizer.ch_mult.len() as u64));
        if tokenizer.kind == TokenizerKind::Vae {
            derived.insert("latent_channels".into(), int(tokenizer.token_channels));
        } else {
            derived.insert("code_dim".into(), int(tokenizer.token_channels));
        }
        if let Some(v) = tokenizer.vocab {
            derived.insert("vocab".into(), int(v));
        }
        let flags: BTreeMap<&str, bool> = [("distilled", distill.is_some())].into_iter().collect();
        // The owners of `params`/`buffers` groups, in the order they are evaluated,
        // each with its chain of bodies.
        let mut owners: Vec<(&'static str, Vec<&'a MBody>)> = vec![
            ("model", vec![body]),
            ("backbone", vec![bb_body, body]),
            ("backbone.block", vec![block_body, bb_body, body]),
            ("head", vec![head_body, body]),
        ];
        if let Some((c, _)) = distill_c {
            owners.push(("distill", vec![&c.body, body]));
        }
        owners.push(("tokenizer", vec![tok_body, body]));
        let per_owner = self.memo.and_then(|m| m.owner_groups(self, &owners, &derived, &flags));
        let (groups, tensors) = match per_owner {
            Some((owners, tensors)) => (GroupsOut::Owners(owners), tensors),
            None => {
                let pc = ParamCtx {
                    checker: self,
                    derived: &derived,
                    flags: &flags,
                    seen: RefCell::new(HashMap::new()),
                    count: RefCell::new(0),
                };
                let mut params = Vec::new();
                let mut buffers = Vec::new();
                let mut tok_params = Vec::new();
                for (owner, chain) in &owners {
                    let out = if *owner == "tokenizer" { &mut tok_params } else { &mut params };
                    pc.groups(chain[0], chain.clone(), owner, out, &mut buffers);
                }
                let tensors = pc.count.into_inner();
                if let Some(m) = self.memo {
                    m.evaluated(tensors);
                }
                (GroupsOut::Sequential { params, buffers, tok_params }, tensors)
            }
        };
        let mut constraints = Vec::new();
        for c in body.constraints() {
            if !METRICS.contains(&c.metric.name.as_str()) {
                let d = Diag::error("E0440", format!("unknown metric `{}`", c.metric.name))
                    .label(c.metric.span, "not a metric");
                self.error(match did_you_mean(&c.metric.name, METRICS.iter().copied()) {
                    Some(s) => d.help(format!("did you mean `{s}`? metrics: {}", METRICS.join(", "))),
                    None => d.help(format!("metrics: {}", METRICS.join(", "))),
                });
                continue;
            }
            if let Ok(b) = Scope::new(vec![body], &derived).num(&c.bound).map_err(|d| self.error(d)) {
                constraints.push(ConstraintSpec {
                    metric: c.metric.name.clone(),
                    op: c.op.as_str().into(),
                    bound: b.as_f64(),
                });
            }
        }

        if !ok {
            return None;
        }
        Some(Parts {
            image,
            classes,
            tokenizer,
            backbone,
            head,
            schedule,
            sampler,
            distill: distill.map(|d| d.0),
            groups,
            constraints,
            tensors,
        })
    }
}

/// The body of a backbone's `block` component.
fn block_body(bb: &MBody) -> Option<&MBody> {
    match bb.field("block").map(|f| &f.value) {
        Some(MValue::Component(c)) => Some(&c.body),
        _ => None,
    }
}

/// A nearby divisor of `n`, to suggest in a help line.
fn divisors_near(n: u64, target: u64) -> u64 {
    (1..=n.min(1 << 20)).filter(|d| n.is_multiple_of(*d)).min_by_key(|d| d.abs_diff(target)).unwrap_or(1)
}
