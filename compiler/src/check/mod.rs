//! The checker: a merged model body -> [`ModelSpec`], with every rule of
//! docs/language.md. Errors are collected so that one run reports them all.

use crate::eval::{Scope, N};
use crate::reader::Reader;
use crate::spec::*;
use ecarc_grammar::ast::{Expr, ExprKind, Ident, ParamGroup, ParamKind};
use ecarc_grammar::diag::did_you_mean;
use ecarc_grammar::merged::{Component, MBody, MValue};
use ecarc_grammar::{Diag, Span};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

pub mod memo;

/// Metrics a `where` constraint may bound (computed by the cost model).
pub const METRICS: &[&str] = &["params", "forward_macs", "sample_macs", "peak_activation_bytes", "stages", "tokens"];

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
pub fn check_model_counted(name: &Ident, body: &MBody) -> (Result<ModelSpec, Vec<Diag>>, u64) {
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

/// The bounds of the sampler's numbers, one rule each for the checker (which
/// reports a broken rule at the field's span) and for the CLI's `--cfg`,
/// `--top-p` and `--temperature` overrides (which report it for the flag), so
/// that a setting the checker refuses is refused on the command line too.
pub mod sampler_rules {
    /// The largest guidance scale: published models use 1.5 to 10; far larger
    /// scales push logits and latents toward f32 overflow.
    pub const MAX_CFG: f64 = 100.0;
    /// The smallest temperature: logits are divided by it in f32 (1e-39 is a
    /// subnormal, 1e-300 is 0 there), and below 1e-4 sampling is greedy anyway.
    pub const MIN_TEMPERATURE: f64 = 1e-4;
    /// The largest temperature (all tokens equally likely long before).
    pub const MAX_TEMPERATURE: f64 = 1e6;

    /// A broken rule: a code, a message, the label at the value and a help line.
    #[derive(Clone, Debug, PartialEq)]
    pub struct Broken {
        pub code: &'static str,
        pub message: String,
        pub label: String,
        pub help: String,
    }

    impl Broken {
        /// As a diagnostic at the value's span.
        pub fn at(&self, span: ecarc_grammar::Span) -> ecarc_grammar::Diag {
            ecarc_grammar::Diag::error(self.code, self.message.clone())
                .label(span, self.label.clone())
                .help(self.help.clone())
        }
    }

    /// A number as a reader writes it: `1e-39`, not forty digits.
    pub fn shown(v: f64) -> String {
        if v != 0.0 && v.is_finite() && !(1e-4..1e16).contains(&v.abs()) {
            format!("{v:e}")
        } else {
            format!("{v}")
        }
    }

    fn broken(code: &'static str, message: String, label: String, help: String) -> Result<(), Broken> {
        Err(Broken { code, message, label, help })
    }

    /// `cfg`: at least 0 (1 turns guidance off), at most [`MAX_CFG`].
    pub fn cfg(x: f64) -> Result<(), Broken> {
        if !(x.is_finite() && x >= 0.0) {
            return broken(
                "E0304",
                "`cfg` is out of range".into(),
                format!("{} is not allowed here", shown(x)),
                "`cfg` must be at least 0 (1 turns guidance off)".into(),
            );
        }
        if x > MAX_CFG {
            return broken(
                "E0438",
                "the guidance scale is too large".into(),
                format!("cfg {} amplifies the conditional logits {}-fold", shown(x), shown(x)),
                format!("use a scale of at most {MAX_CFG} (published models use 1.5 to 10); 1 turns guidance off"),
            );
        }
        Ok(())
    }

    /// `top_p`: in (0, 1].
    pub fn top_p(p: f64) -> Result<(), Broken> {
        if !(p > 0.0 && p <= 1.0) {
            let (message, label) = if p <= 0.0 {
                ("`top_p` must be above 0".to_string(), format!("top_p {} keeps no token", shown(p)))
            } else {
                ("`top_p` is out of range".to_string(), format!("{} is not allowed here", shown(p)))
            };
            return broken("E0304", message, label, "top_p lies in (0, 1]; 1 turns nucleus sampling off".into());
        }
        Ok(())
    }

    /// `temperature`: in [[`MIN_TEMPERATURE`], [`MAX_TEMPERATURE`]].
    pub fn temperature(t: f64) -> Result<(), Broken> {
        let greedy = "for greedy decoding use `top_k 1` (with the default temperature 1)";
        if !(t.is_finite() && t > 0.0) {
            return broken(
                "E0304",
                "`temperature` must be above 0".into(),
                "logits are divided by the temperature".into(),
                greedy.into(),
            );
        }
        if t < MIN_TEMPERATURE {
            return broken(
                "E0419",
                "the temperature is too small".into(),
                format!("logits / {} overflow f32 or collapse onto one token", shown(t)),
                format!("use a temperature of at least {MIN_TEMPERATURE}; {greedy}"),
            );
        }
        if t > MAX_TEMPERATURE {
            return broken(
                "E0304",
                "`temperature` is out of range".into(),
                format!("{} is not allowed here", shown(t)),
                format!("`temperature` must be at most {MAX_TEMPERATURE}"),
            );
        }
        Ok(())
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
        if backbone.positions == Positions::Rope2d
            && schedule.tokens == TokenKind::Continuous
            && backbone.condition == Conditioning::ClassToken
        {
            // fine: nothing to check; kept explicit for readers
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

    fn tokenizer(&self, c: &'a Component, model: &'a MBody, at: Span) -> Option<TokenizerSpec> {
        let r = self.reader(&c.body, vec![&c.body, model], "tokenizer", at);
        let kind = r.word(
            "kind",
            &[("vae", TokenizerKind::Vae), ("vq", TokenizerKind::Vq), ("msvq", TokenizerKind::Msvq)],
            None,
        );
        let channels = r.int("channels", None, 1, 1 << 20, "128");
        let ch_mult = r.int_list("ch_mult", 1, "[1, 1, 2, 2, 4]", true);
        let res_blocks = r.int("res_blocks", Some(2), 0, 1024, "2");
        let z_channels = r.int("z_channels", None, 1, 1 << 20, "256");
        let l2_norm = r.bool("l2_norm", false);
        let latent_scale = r.float("latent_scale", Some(1.0), f64::MIN_POSITIVE, 1e6, "0.18215");
        let stride_f = r.field("stride").cloned();
        let (token_channels, vocab, phi) = match kind {
            Some(TokenizerKind::Vae) => {
                r.allow(&["code_dim", "vocab", "phi"]);
                for k in ["code_dim", "vocab", "phi"] {
                    if let Some(f) = c.body.field(k) {
                        r.error(
                            Diag::error("E0308", format!("`{k}` does not apply to a VAE tokenizer"))
                                .label(f.key.span, "only for vq/msvq")
                                .help("remove it, or set `kind vq`"),
                        );
                    }
                }
                (r.int("latent_channels", None, 1, 1 << 20, "16"), None, None)
            }
            Some(k) => {
                r.allow(&["latent_channels"]);
                if let Some(f) = c.body.field("latent_channels") {
                    r.error(
                        Diag::error("E0308", "`latent_channels` is for VAE tokenizers")
                            .label(f.key.span, "not for vq/msvq")
                            .help("a VQ token's channels are `code_dim`"),
                    );
                }
                let code_dim = r.int("code_dim", None, 1, 1 << 20, "8");
                let vocab = r.int("vocab", None, 1, 1 << 32, "16384");
                let phi = if k == TokenizerKind::Msvq {
                    r.component("phi", true).and_then(|(p, pat)| self.phi(p, &c.body, model, pat))
                } else {
                    r.allow(&["phi"]);
                    if let Some(f) = c.body.field("phi") {
                        r.error(
                            Diag::error("E0308", "`phi` is for multi-scale VQ tokenizers")
                                .label(f.key.span, "only for msvq")
                                .help("remove it, or set `kind msvq`"),
                        );
                    }
                    None
                };
                (code_dim, vocab, phi)
            }
            None => {
                // The kind is missing or wrong (reported); do not also call its keys unknown.
                r.allow(&["latent_channels", "code_dim", "vocab", "phi"]);
                (None, None, None)
            }
        };
        r.finish();
        let ch_mult = ch_mult?;
        let derived_stride = 1u64.checked_shl(ch_mult.len().saturating_sub(1) as u32).filter(|_| ch_mult.len() < 40);
        let stride = match (stride_f, derived_stride) {
            (Some(f), Some(ds)) => {
                let MValue::Expr(e) = &f.value else { return None };
                let s = r.int_of(e, "stride")?;
                if s as u64 != ds {
                    r.error(
                        Diag::error("E0406", "stride does not match ch_mult")
                            .label(e.span, format!("stride {s}"))
                            .label(c.body.field("ch_mult").map(|f| f.span).unwrap_or(at), format!("{} levels downsample by {ds}", ch_mult.len()))
                            .help(format!("the encoder halves the resolution between levels: stride is 2^(len(ch_mult) - 1) = {ds}")),
                    );
                    return None;
                }
                ds
            }
            (None, Some(ds)) => ds,
            (_, None) => {
                r.error(
                    Diag::error("E0304", "`ch_mult` has too many levels")
                        .label(
                            c.body.field("ch_mult").map(|f| f.span).unwrap_or(at),
                            format!("{} levels: the stride 2^{} overflows", ch_mult.len(), ch_mult.len() - 1),
                        )
                        .help("image tokenizers use 3 to 6 levels (stride 4 to 32)"),
                );
                return None;
            }
        };
        // The conv decoders (and encoders) of every supported tokenizer normalise
        // with GroupNorm(32): each level's width must split into 32 groups.
        if let Some(ch) = channels {
            let ch = ch as u64;
            if let Some(&m) = ch_mult.iter().find(|&&m| ch.saturating_mul(m) % 32 != 0) {
                let span = c.body.field("channels").map(|f| f.span).unwrap_or(at);
                r.error(
                    Diag::error("E0437", "tokenizer widths must be multiples of 32")
                        .label(span, format!("channels {ch} x ch_mult {m} = {} channels", ch.saturating_mul(m)))
                        .help("the decoder's GroupNorm has 32 groups: use channels (x each ch_mult) divisible by 32"),
                );
                return None;
            }
        }
        Some(TokenizerSpec {
            name: base_name(c),
            kind: kind?,
            channels: channels? as u64,
            ch_mult,
            res_blocks: res_blocks? as u64,
            z_channels: z_channels? as u64,
            token_channels: token_channels? as u64,
            vocab: vocab.map(|v| v as u64),
            stride,
            l2_norm,
            latent_scale: latent_scale?,
            phi,
            params: vec![],
        })
    }

    fn phi(&self, c: &'a Component, tok: &'a MBody, model: &'a MBody, at: Span) -> Option<PhiSpec> {
        let r = self.reader(&c.body, vec![&c.body, tok, model], "phi", at);
        let convs = r.int("convs", None, 1, 1024, "4");
        let map_f = r.field("map");
        let mix = r.float("mix", Some(0.5), 0.0, 1.0, "0.5");
        r.finish();
        let convs = convs? as u64;
        let map = match map_f {
            Some(f) => {
                let MValue::Expr(e) = &f.value else {
                    r.error(crate::eval::type_error(f.value.span(), "a list", "something else"));
                    return None;
                };
                let map = r.int_list_of(e, "map", 0)?;
                if let Some((i, &bad)) = map.iter().enumerate().find(|(_, &m)| m >= convs) {
                    let span = match &e.kind {
                        ExprKind::List(items) => items[i].span,
                        _ => e.span,
                    };
                    r.error(
                        Diag::error("E0407", "phi map names a conv that does not exist")
                            .label(span, format!("conv {bad}, but there are {convs} (0..{})", convs - 1))
                            .help("every entry must be below `convs`"),
                    );
                    return None;
                }
                map
            }
            None => {
                r.error(
                    Diag::error("E0303", "phi is missing `map`")
                        .label(at, "needs `map`")
                        .help("add `map [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]` (VAR's scale -> conv map)"),
                );
                return None;
            }
        };
        Some(PhiSpec { convs, map, mix: mix? })
    }

    fn backbone(&self, c: &'a Component, model: &'a MBody, at: Span) -> Option<BackboneSpec> {
        let r = self.reader(&c.body, vec![&c.body, model], "backbone", at);
        let depth = r.int("depth", None, 1, 100_000, "24");
        let width = r.int("width", None, 1, 1 << 24, "1024");
        let heads = r.int("heads", None, 1, 1 << 16, "16");
        let condition = r.word(
            "condition",
            &[
                ("class_token", Conditioning::ClassToken),
                ("adaln_class", Conditioning::AdalnClass),
                ("adaln_time_class", Conditioning::AdalnTimeClass),
            ],
            None,
        );
        let cond_tokens = r.int("cond_tokens", Some(1), 1, 1 << 16, "1");
        let attn = r.word(
            "attn",
            &[
                ("full", AttnMask::Full),
                ("causal", AttnMask::Causal),
                ("block_causal", AttnMask::BlockCausal),
                ("earlier_plus_self", AttnMask::EarlierPlusSelf),
            ],
            None,
        );
        let positions = r.word(
            "positions",
            &[("learned", Positions::Learned), ("sincos_2d", Positions::Sincos2d), ("rope_2d", Positions::Rope2d)],
            None,
        );
        let rope_base = r.float("rope_base", Some(10000.0), 1.0, 1e12, "10000");
        let qk_norm = r.word("qk_norm", &[("none", QkNorm::None), ("l2", QkNorm::L2)], Some(QkNorm::None));
        let qk_scale_max = r.float("qk_scale_max", Some(100.0), f64::MIN_POSITIVE, 1e12, "100");
        let patch = r.int("patch", Some(1), 1, 1024, "2");
        let time_embed = r.int("time_embed", Some(256), 2, 1 << 20, "256");
        let block_c = r.component("block", true);
        r.finish();
        let (width, heads) = (width? as u64, heads? as u64);
        let mut ok = true;
        if width % heads != 0 {
            ok = false;
            r.error(
                Diag::error("E0401", "width is not divisible by heads")
                    .label(c.body.field("width").map(|f| f.span).unwrap_or(at), format!("width {width}"))
                    .label(c.body.field("heads").map(|f| f.span).unwrap_or(at), format!("{heads} heads"))
                    .help(format!(
                        "choose heads dividing {width} (e.g. {}) or a width that is a multiple of {heads}",
                        divisors_near(width, heads)
                    )),
            );
        }
        let head_dim = width / heads;
        if positions == Some(Positions::Rope2d) && ok && head_dim % 4 != 0 {
            ok = false;
            r.error(
                Diag::error("E0402", "2D RoPE needs a head dimension divisible by 4")
                    .label(
                        c.body.field("positions").map(|f| f.span).unwrap_or(at),
                        "2D RoPE rotates head_dim/4 pairs by row and head_dim/4 by column",
                    )
                    .label(
                        c.body.field("heads").map(|f| f.span).unwrap_or(at),
                        format!("head_dim = {width} / {heads} = {head_dim}"),
                    )
                    .help("change width or heads so that width / heads is a multiple of 4"),
            );
        }
        let (bc, bat) = block_c?;
        let block = self.block(bc, &c.body, model, bat, width);
        if !ok {
            return None;
        }
        Some(BackboneSpec {
            name: base_name(c),
            depth: depth? as u64,
            width,
            heads,
            head_dim,
            condition: condition?,
            cond_tokens: cond_tokens? as u64,
            attn: attn?,
            positions: positions?,
            rope_base: rope_base?,
            qk_norm: qk_norm?,
            qk_scale_max: qk_scale_max?,
            patch: patch? as u64,
            time_embed: time_embed? as u64,
            block: block?,
        })
    }

    fn block(&self, c: &'a Component, bb: &'a MBody, model: &'a MBody, at: Span, width: u64) -> Option<BlockSpec> {
        let r = self.reader(&c.body, vec![&c.body, bb, model], "block", at);
        let norm = r.word("norm", &[("layernorm", NormKind::Layernorm), ("rmsnorm", NormKind::Rmsnorm)], None);
        let norm_eps = r.float("norm_eps", Some(1e-6), 0.0, 1.0, "1e-6");
        let norm_affine = r.bool("norm_affine", true);
        let modulation =
            r.word("modulation", &[("none", Modulation::None), ("adaln", Modulation::Adaln)], Some(Modulation::None));
        let order_f = r.field("adaln_order");
        let ffn = r.word(
            "ffn",
            &[("gelu", FfnKind::Gelu), ("gelu_tanh", FfnKind::GeluTanh), ("swiglu", FfnKind::Swiglu)],
            None,
        );
        let mlp_ratio = r.float("mlp_ratio", Some(4.0), f64::MIN_POSITIVE, 1024.0, "4.0");
        let ffn_multiple = r.int("ffn_multiple", Some(256), 1, 1 << 20, "256");
        let explicit_hidden = r.field("ffn_hidden");
        let qkv_bias = r.word(
            "qkv_bias",
            &[("none", QkvBias::None), ("qv", QkvBias::Qv), ("full", QkvBias::Full)],
            Some(QkvBias::None),
        );
        let proj_bias = r.bool("proj_bias", true);
        let ffn_bias = r.bool("ffn_bias", true);
        r.finish();

        let chunks: &[(&str, AdaChunk)] = &[
            ("shift1", AdaChunk::Shift1),
            ("scale1", AdaChunk::Scale1),
            ("gate1", AdaChunk::Gate1),
            ("shift2", AdaChunk::Shift2),
            ("scale2", AdaChunk::Scale2),
            ("gate2", AdaChunk::Gate2),
        ];
        let adaln_order = match (modulation, order_f) {
            (Some(Modulation::Adaln), Some(f)) => {
                let MValue::Expr(e) = &f.value else { return None };
                let ExprKind::List(items) = &e.kind else {
                    r.error(crate::eval::type_error(e.span, "a list of chunk names", "a single value"));
                    return None;
                };
                let order: Vec<AdaChunk> = items.iter().filter_map(|i| r.word_of(i, "adaln chunk", chunks)).collect();
                if order.len() != items.len() {
                    return None;
                }
                let mut sorted = order.clone();
                sorted.sort_by_key(|c| *c as u8);
                sorted.dedup();
                if order.len() != 6 || sorted.len() != 6 {
                    let missing: Vec<&str> =
                        chunks.iter().filter(|(_, c)| !order.contains(c)).map(|(n, _)| *n).collect();
                    let repeated = (1..order.len()).find(|&i| order[..i].contains(&order[i]));
                    let (span, label) = match repeated {
                        Some(i) => (items[i].span, format!("`{}` is named again here", chunk_name(chunks, order[i]))),
                        None => (e.span, format!("{} names, {} distinct", order.len(), sorted.len())),
                    };
                    let missing = match missing.as_slice() {
                        [] => String::new(),
                        m => format!("missing: {}; ", m.join(", ")),
                    };
                    r.error(
                        Diag::error("E0408", "adaln_order must name each of the 6 chunks once")
                            .label(span, label)
                            .help(format!("{missing}list shift1 scale1 gate1 shift2 scale2 gate2 in the checkpoint's order (VAR: gate1 gate2 scale1 scale2 shift1 shift2; DiT: shift1 scale1 gate1 shift2 scale2 gate2)")),
                    );
                    return None;
                }
                order
            }
            (Some(Modulation::Adaln), None) => {
                r.error(
                    Diag::error("E0303", "block is missing `adaln_order`")
                        .label(
                            c.body.field("modulation").map(|f| f.span).unwrap_or(at),
                            "adaLN modulation needs the chunk order",
                        )
                        .help("add e.g. `adaln_order [shift1, scale1, gate1, shift2, scale2, gate2]`"),
                );
                return None;
            }
            (_, Some(f)) => {
                r.error(
                    Diag::error("E0308", "`adaln_order` without adaLN modulation")
                        .label(f.key.span, "has no effect")
                        .help("set `modulation adaln` or remove it"),
                );
                return None;
            }
            (_, None) => vec![],
        };
        let ffn = ffn?;
        let mlp_ratio = mlp_ratio?;
        let ffn_hidden = match explicit_hidden {
            Some(f) => {
                let MValue::Expr(e) = &f.value else { return None };
                let h = r.int_of(e, "ffn_hidden")?;
                if h < 1 {
                    r.error(
                        Diag::error("E0304", "`ffn_hidden` must be at least 1")
                            .label(e.span, "too small")
                            .help("give a positive width"),
                    );
                    return None;
                }
                h as u64
            }
            None => {
                let hidden = mlp_ratio * width as f64;
                match ffn {
                    // LlamaGen: find_multiple(int(2 * ratio * dim / 3), multiple)
                    FfnKind::Swiglu => {
                        let m = ffn_multiple? as u64;
                        let h = (2.0 * hidden / 3.0).floor() as u64;
                        h.div_ceil(m) * m
                    }
                    _ => {
                        if (hidden - hidden.round()).abs() > 1e-6 {
                            r.error(
                                Diag::error("E0409", "mlp_ratio x width is not a whole number")
                                    .label(
                                        c.body.field("mlp_ratio").map(|f| f.span).unwrap_or(at),
                                        format!("{mlp_ratio} x {width} = {hidden}"),
                                    )
                                    .help("choose a ratio that gives a whole hidden width, or set `ffn_hidden`"),
                            );
                            return None;
                        }
                        hidden.round() as u64
                    }
                }
            }
        };
        Some(BlockSpec {
            name: base_name(c),
            norm: norm?,
            norm_eps: norm_eps?,
            norm_affine,
            modulation: modulation?,
            adaln_order,
            ffn,
            mlp_ratio,
            ffn_hidden,
            qkv_bias: qkv_bias?,
            proj_bias,
            ffn_bias,
        })
    }

    fn head(&self, c: &'a Component, model: &'a MBody, at: Span) -> Option<HeadSpec> {
        let r = self.reader(&c.body, vec![&c.body, model], "head", at);
        let kind = r.word(
            "kind",
            &[
                ("categorical", HeadKind::Categorical),
                ("flow_mlp", HeadKind::FlowMlp),
                ("flow_transformer", HeadKind::FlowTransformer),
                ("dd_continuous", HeadKind::DdContinuous),
                ("linear", HeadKind::Linear),
            ],
            None,
        );
        let flow = matches!(kind, Some(HeadKind::FlowMlp | HeadKind::FlowTransformer));
        let (depth, width) = if flow {
            (r.int("depth", None, 1, 100_000, "6"), r.int("width", None, 1, 1 << 24, "1024"))
        } else {
            (
                r.int("depth", Some(0), 0, 100_000, "6").filter(|&d| d > 0),
                r.int("width", Some(0), 0, 1 << 24, "1024").filter(|&w| w > 0),
            )
        };
        let heads = if kind == Some(HeadKind::FlowTransformer) {
            r.int("heads", None, 1, 1 << 16, "16")
        } else {
            r.int("heads", Some(0), 0, 1 << 16, "16").filter(|&h| h > 0)
        };
        let time_embed = r.int("time_embed", Some(256), 2, 1 << 20, "256");
        r.finish();
        let kind = kind?;
        if kind == HeadKind::FlowTransformer {
            if let (Some(w), Some(h)) = (width, heads) {
                if w % h != 0 {
                    r.error(
                        Diag::error("E0401", "head width is not divisible by its heads")
                            .label(c.body.field("width").map(|f| f.span).unwrap_or(at), format!("width {w}"))
                            .label(c.body.field("heads").map(|f| f.span).unwrap_or(at), format!("{h} heads"))
                            .help(format!("choose heads dividing {w} (e.g. {})", divisors_near(w as u64, h as u64))),
                    );
                    return None;
                }
            }
        }
        if flow && (depth.is_none() || width.is_none()) {
            return None;
        }
        Some(HeadSpec {
            name: base_name(c),
            kind,
            depth: depth.map(|v| v as u64),
            width: width.map(|v| v as u64),
            heads: heads.map(|v| v as u64),
            time_embed: time_embed? as u64,
        })
    }

    fn schedule(
        &self,
        c: &'a Component,
        model: &'a MBody,
        at: Span,
        tokens: TokenKind,
    ) -> Option<(ScheduleSpec, ScheduleSpans)> {
        let r = self.reader(&c.body, vec![&c.body, model], "schedule", at);
        let raster_f = r.field("raster");
        let scales_f = r.field("scales");
        let segments_f = r.field("segments");
        let steps_f = r.field("steps");
        let upsample = r.word(
            "upsample",
            &[("nearest", Upsample::Nearest), ("bilinear", Upsample::Bilinear), ("bicubic", Upsample::Bicubic)],
            Some(Upsample::Nearest),
        );
        let renoise_f = r.field("renoise");
        r.finish();
        let rows: Vec<_> = c.body.stages().collect();
        let forms = [raster_f.map(|f| f.key.span), scales_f.map(|f| f.key.span), rows.first().map(|s| s.span)];
        let form_names = ["`raster`", "`scales`", "the `stage` rows"];
        let named: Vec<(Span, &str)> = forms.iter().zip(form_names).filter_map(|(s, n)| s.map(|s| (s, n))).collect();
        let given: Vec<Span> = named.iter().map(|(s, _)| *s).collect();
        if named.len() > 1 {
            r.error(
                Diag::error("E0428", "the stages are given in more than one way")
                    .label(named[1].0, format!("{} list the stages again", named[1].1))
                    .label(named[0].0, format!("{} already lists them", named[0].1))
                    .help("keep exactly one of `raster GRID`, `scales [...]` or `stage` rows"),
            );
            return None;
        }
        if given.is_empty() {
            r.error(Diag::error("E0303", "schedule has no stages").label(at, "no stages").help(
                "add `raster 16x16`, `scales [1, 2, 4, 8, 16]`, or rows such as `stage 16x16 1.0 -> 0.0 steps 50`",
            ));
            return None;
        }
        let continuous = tokens == TokenKind::Continuous;
        let steps_of = |e: &Expr| -> Option<u64> {
            let s = r.int_of(e, "steps")?;
            if !(1..=1_000_000).contains(&s) {
                r.error(
                    Diag::error("E0304", "`steps` is out of range")
                        .label(e.span, format!("{s} steps"))
                        .help("steps must be between 1 and 1000000"),
                );
                return None;
            }
            Some(s as u64)
        };
        let expr_of = |f: &'a ecarc_grammar::merged::MField, what: &str| -> Option<&'a Expr> {
            match &f.value {
                MValue::Expr(e) => Some(e),
                other => {
                    r.error(crate::eval::type_error(other.span(), what, "something else"));
                    None
                }
            }
        };
        let mut segment_spans: Vec<Span> = Vec::new();
        // The finest stage's grid and each stage's step count, for cross-field reports.
        let mut last = at;
        let mut step_spans: Vec<Span> = Vec::new();
        let layout = if let Some(f) = raster_f {
            let e = expr_of(f, "a size")?;
            let grid = r.size_of(e, "raster")?;
            if grid[0].checked_mul(grid[1]).is_none_or(|n| n > 1 << 24) {
                r.error(
                    Diag::error("E0304", "raster grid is too large")
                        .label(e.span, format!("{}x{} tokens", grid[1], grid[0]))
                        .help("a raster is the token grid (image / stride / patch, e.g. `16x16`), at most 16M tokens"),
                );
                return None;
            }
            if continuous {
                r.error(
                    Diag::error("E0429", "a raster schedule needs discrete tokens")
                        .label(f.key.span, "raster stages sample one code each")
                        .help("for continuous tokens, list stages with flow segments (`stage` rows or `scales`)"),
                );
                return None;
            }
            for k in [segments_f, steps_f].into_iter().flatten() {
                r.error(
                    Diag::error("E0403", format!("`{}` does not apply to discrete stages", k.key.name))
                        .label(k.key.span, "discrete stages have no flow time")
                        .help(format!(
                            "remove `{}`: this model's tokenizer makes discrete codes, sampled once per stage",
                            k.key.name
                        )),
                );
            }
            last = e.span;
            Layout::Raster { grid }
        } else if let Some(f) = scales_f {
            let e = expr_of(f, "a list of scales")?;
            let scales = r.int_list_of(e, "scales", 1)?;
            if scales.len() > 4096 {
                r.error(
                    Diag::error("E0304", "too many scales")
                        .label(e.span, format!("{} scales", scales.len()))
                        .help("at most 4096 stages"),
                );
                return None;
            }
            let n = scales.len();
            let (segs, steps): (Vec<Option<[f64; 2]>>, Vec<u64>) = if continuous {
                let bounds: Vec<f64> = match segments_f {
                    None => (0..=n).map(|i| 1.0 - i as f64 / n as f64).collect(),
                    Some(sf) => {
                        let se = expr_of(sf, "`uniform` or a list of boundaries")?;
                        match &se.kind {
                            ExprKind::Name(w) if w == "uniform" => (0..=n).map(|i| 1.0 - i as f64 / n as f64).collect(),
                            ExprKind::List(items) => {
                                if items.len() != n + 1 {
                                    r.error(
                                        Diag::error("E0422", "segment boundaries do not match the scales")
                                            .label(se.span, format!("{} boundaries", items.len()))
                                            .label(e.span, format!("{n} scales"))
                                            .help(format!(
                                                "give {} boundaries from 1.0 down to 0.0 (one more than the scales)",
                                                n + 1
                                            )),
                                    );
                                    return None;
                                }
                                let mut b = Vec::new();
                                for it in items {
                                    b.push(r.num_of(it)?.as_f64());
                                    segment_spans.push(it.span);
                                }
                                b
                            }
                            _ => {
                                r.error(
                                    Diag::error("E0305", "`segments` must be `uniform` or a list of boundaries")
                                        .label(se.span, "not a segment rule")
                                        .help("write `segments uniform` or `segments [1.0, 0.6, 0.3, 0.0]`"),
                                );
                                return None;
                            }
                        }
                    }
                };
                if segment_spans.is_empty() {
                    segment_spans = vec![e.span; n];
                }
                let steps: Vec<u64> = match steps_f {
                    None => vec![1; n],
                    Some(sf) => {
                        let se = expr_of(sf, "steps")?;
                        match &se.kind {
                            ExprKind::List(items) => {
                                if items.len() != n {
                                    r.error(
                                        Diag::error("E0422", "per-stage steps do not match the scales")
                                            .label(se.span, format!("{} step counts", items.len()))
                                            .label(e.span, format!("{n} scales"))
                                            .help("give one step count per scale, or one number for all"),
                                    );
                                    return None;
                                }
                                items.iter().map(&steps_of).collect::<Option<_>>()?
                            }
                            _ => vec![steps_of(se)?; n],
                        }
                    }
                };
                (bounds.windows(2).map(|w| Some([w[0], w[1]])).collect(), steps)
            } else {
                for k in [segments_f, steps_f].into_iter().flatten() {
                    r.error(
                        Diag::error("E0403", format!("`{}` does not apply to discrete stages", k.key.name))
                            .label(k.key.span, "discrete stages have no flow time")
                            .help(format!(
                                "remove `{}`: this model's tokenizer makes discrete codes, sampled once per stage",
                                k.key.name
                            )),
                    );
                }
                (vec![None; n], vec![1; n])
            };
            for w in scales.windows(2).enumerate() {
                if w.1[1] < w.1[0] {
                    let span = match &e.kind {
                        ExprKind::List(items) => items[w.0 + 1].span,
                        _ => e.span,
                    };
                    r.error(
                        Diag::error("E0423", "scales must not decrease")
                            .label(span, format!("{} comes after {}", w.1[1], w.1[0]))
                            .help("stages go from coarse to fine: list scales in non-decreasing order"),
                    );
                    return None;
                }
            }
            last = match &e.kind {
                ExprKind::List(items) => items.last().map_or(e.span, |i| i.span),
                _ => e.span,
            };
            step_spans = match steps_f.map(|f| &f.value) {
                Some(MValue::Expr(se)) => match &se.kind {
                    ExprKind::List(items) => items.iter().map(|i| i.span).collect(),
                    _ => vec![se.span; n],
                },
                _ => vec![at; n],
            };
            if let Some(&big) = scales.iter().find(|&&s| s > MAX_GRID_SIDE) {
                r.error(
                    Diag::error("E0304", "a scale is too large")
                        .label(e.span, format!("scale {big}"))
                        .help(format!("token grids are at most {MAX_GRID_SIDE} on a side")),
                );
                return None;
            }
            let stages = scales
                .iter()
                .zip(segs)
                .zip(steps)
                .map(|((&s, segment), steps)| StageSpec { grid: [s, s], tokens: s * s, segment, steps })
                .collect();
            Layout::Stages(stages)
        } else {
            for k in [segments_f, steps_f].into_iter().flatten() {
                r.error(
                    Diag::error("E0308", format!("`{}` is for `scales` schedules", k.key.name))
                        .label(k.key.span, "stage rows give their own")
                        .help("put the segment and steps on each `stage` row"),
                );
            }
            if rows.len() > 1 << 16 {
                r.error(
                    Diag::error("E0304", "too many stage rows").label(rows[0].span, "here").help("at most 65536 rows"),
                );
                return None;
            }
            let mut stages = Vec::new();
            let mut prev: Option<([u64; 2], Span)> = None;
            for row in &rows {
                let grid = r.size_of(&row.grid, "stage")?;
                if grid.iter().any(|&g| g > MAX_GRID_SIDE) {
                    r.error(
                        Diag::error("E0304", "a stage grid is too large")
                            .label(row.grid.span, format!("{}x{}", grid[0], grid[1]))
                            .help(format!("token grids are at most {MAX_GRID_SIDE} on a side")),
                    );
                    return None;
                }
                if let Some((pg, _)) = prev {
                    if grid[0] < pg[0] || grid[1] < pg[1] {
                        r.error(
                            Diag::error("E0423", "stage grids must not shrink")
                                .label(row.grid.span, format!("{}x{} after {}x{}", grid[0], grid[1], pg[0], pg[1]))
                                .help("order stages from coarse to fine"),
                        );
                        return None;
                    }
                }
                prev = Some((grid, row.span));
                let segment = match &row.segment {
                    Some((f, t, s)) => {
                        if !continuous {
                            r.error(
                                Diag::error("E0403", "a discrete stage carries no flow segment")
                                    .label(*s, "flow time given here")
                                    .help("this model's tokenizer makes discrete codes; remove the segment"),
                            );
                            return None;
                        }
                        segment_spans.push(*s);
                        Some([r.num_of(f)?.as_f64(), r.num_of(t)?.as_f64()])
                    }
                    None if continuous => {
                        r.error(
                            Diag::error("E0424", "a continuous stage needs its flow segment")
                                .label(row.span, "no `FROM -> TO`")
                                .help("add the flow time this stage integrates, e.g. `stage 4x4 0.6 -> 0.4 steps 4`"),
                        );
                        return None;
                    }
                    None => None,
                };
                let steps = match &row.steps {
                    Some(e) if !continuous => {
                        r.error(
                            Diag::error("E0403", "a discrete stage has no ODE steps")
                                .label(e.span, "steps given here")
                                .help("remove `steps`: a discrete stage samples once"),
                        );
                        return None;
                    }
                    Some(e) => steps_of(e)?,
                    None => 1,
                };
                last = row.grid.span;
                step_spans.push(row.steps.as_ref().map_or(row.span, |e| e.span));
                stages.push(StageSpec { grid, tokens: grid[0] * grid[1], segment, steps });
            }
            Layout::Stages(stages)
        };
        if continuous {
            if let Layout::Stages(stages) = &layout {
                self.check_segments(stages, &segment_spans, at)?;
            }
        }
        let renoise = match renoise_f {
            None => Renoise::None,
            Some(f) => {
                let e = expr_of(f, "a renoise rule")?;
                match &e.kind {
                    ExprKind::Name(n) if n == "none" => Renoise::None,
                    ExprKind::Call { name, args } if name.name == "pyramid" => {
                        let g = match args.as_slice() {
                            [a] if a.name.as_ref().is_none_or(|n| n.name == "gamma") => r.num_of(&a.value)?.as_f64(),
                            _ => {
                                r.error(
                                    Diag::error("E0310", "`pyramid` takes one argument, `gamma`")
                                        .label(e.span, "e.g. `pyramid(gamma = 1/3)`")
                                        .help("write `renoise pyramid(gamma = 1/3)`"),
                                );
                                return None;
                            }
                        };
                        if g <= 0.0 || !g.is_finite() {
                            r.error(
                                Diag::error("E0304", "`gamma` must be positive")
                                    .label(e.span, format!("gamma {g}"))
                                    .help("the pyramidal-flow rule uses gamma = 1/3"),
                            );
                            return None;
                        }
                        Renoise::Pyramid { gamma: g }
                    }
                    _ => {
                        r.error(
                            Diag::error("E0305", "unknown renoise rule")
                                .label(e.span, "not a renoise rule")
                                .help("write `renoise none` or `renoise pyramid(gamma = 1/3)`"),
                        );
                        return None;
                    }
                }
            }
        };
        if !continuous && renoise != Renoise::None {
            r.error(
                Diag::error("E0403", "renoise applies to continuous stages")
                    .label(renoise_f.map(|f| f.span).unwrap_or(at), "discrete tokens are not re-noised")
                    .help("remove `renoise`: this model's tokenizer makes discrete codes"),
            );
            return None;
        }
        Some((
            ScheduleSpec { tokens, layout, upsample: upsample?, renoise },
            ScheduleSpans { at, last, steps: step_spans },
        ))
    }

    fn check_segments(&self, stages: &[StageSpec], spans: &[Span], at: Span) -> Option<()> {
        let span_of = |i: usize| spans.get(i).copied().unwrap_or(at);
        for (i, s) in stages.iter().enumerate() {
            let [from, to] = s.segment?;
            if !(0.0 - EPS..=1.0 + EPS).contains(&from) || !(0.0 - EPS..=1.0 + EPS).contains(&to) {
                self.error(
                    Diag::error("E0425", "flow time outside [0, 1]")
                        .label(
                            span_of(i),
                            format!(
                                "{} is outside [0, 1]",
                                if (0.0 - EPS..=1.0 + EPS).contains(&from) { to } else { from }
                            ),
                        )
                        .help("flow time runs from 1 (noise) to 0 (data)"),
                );
                return None;
            }
            if from <= to + EPS {
                self.error(
                    Diag::error("E0425", "flow segment does not decrease")
                        .label(
                            span_of(i),
                            format!("{from} -> {to} goes {}", if from == to { "nowhere" } else { "backwards" }),
                        )
                        .help("flow time runs from 1 (noise) to 0 (data): write FROM -> TO with FROM > TO"),
                );
                return None;
            }
            if i == 0 && (from - 1.0).abs() > EPS {
                self.error(
                    Diag::error("E0426", "the first stage must start at flow time 1")
                        .label(span_of(i), format!("starts at {from}"))
                        .help("the first stage starts from pure noise: `1.0 -> ...`"),
                );
                return None;
            }
            if i > 0 {
                let prev = stages[i - 1].segment?[1];
                if (prev - from).abs() > EPS {
                    self.error(
                        Diag::error("E0427", "flow segments are not contiguous")
                            .label(span_of(i), format!("starts at {from}"))
                            .label(span_of(i - 1), format!("the previous stage ends at {prev}"))
                            .help(format!("start this stage at {prev}, where the previous one ends")),
                    );
                    return None;
                }
            }
            if i + 1 == stages.len() && to.abs() > EPS {
                self.error(
                    Diag::error("E0426", "the last stage must end at flow time 0")
                        .label(span_of(i), format!("ends at {to}"))
                        .help("the last stage must reach clean data: `... -> 0.0`"),
                );
                return None;
            }
        }
        Some(())
    }

    fn sampler(&self, c: Option<&'a Component>, model: &'a MBody, at: Span) -> Option<(SamplerSpec, SamplerSpans)> {
        static EMPTY: std::sync::OnceLock<MBody> = std::sync::OnceLock::new();
        let empty = EMPTY.get_or_init(|| MBody { entries: vec![], span: Span::new(ecarc_grammar::FileId(0), 0, 0) });
        let body = c.map(|c| &c.body).unwrap_or(empty);
        let r = self.reader(body, vec![body, model], "sampler", at);
        let spans = SamplerSpans {
            at,
            top_k: body.field("top_k").map(|f| f.span),
            top_p: body.field("top_p").map(|f| f.span),
            solver: body.field("solver").map(|f| f.span),
            cfg_channels: body.field("cfg_channels").map(|f| f.span),
            train_steps: body.field("train_steps").map(|f| f.span),
        };
        let mut cfg = r.float("cfg", Some(1.0), 0.0, 1e6, "1.5");
        if let (Some(x), Some(f)) = (cfg, r.field("cfg")) {
            if let Err(b) = sampler_rules::cfg(x) {
                r.error(b.at(f.value.span()));
                cfg = None;
            }
        }
        let cfg_schedule = r.word(
            "cfg_schedule",
            &[("constant", CfgSchedule::Constant), ("linear", CfgSchedule::Linear)],
            Some(CfgSchedule::Constant),
        );
        // Errors below leave the value unset (`bad`) rather than returning early,
        // so that the rest of the sampler (unknown keys included) is still checked.
        let mut bad = false;
        let cfg_channels = match r.field("cfg_channels") {
            None => None,
            Some(f) => match &f.value {
                MValue::Expr(e) if e.as_name() == Some("all") => None,
                MValue::Expr(e) => match r.int_of(e, "cfg_channels") {
                    Some(v) if v >= 1 => Some(v as u64),
                    Some(v) => {
                        r.error(
                            Diag::error("E0304", "`cfg_channels` must be at least 1")
                                .label(e.span, format!("{v} channels would guide nothing"))
                                .help("write a positive count, or `all` to guide every channel"),
                        );
                        bad = true;
                        None
                    }
                    None => {
                        bad = true;
                        None
                    }
                },
                other => {
                    r.error(crate::eval::type_error(other.span(), "a channel count or `all`", "something else"));
                    bad = true;
                    None
                }
            },
        };
        let top_k = r.int("top_k", Some(0), 0, i64::MAX, "900");
        let mut top_p = r.float("top_p", Some(1.0), 0.0, 1.0, "0.96");
        if let (Some(p), Some(f)) = (top_p, r.field("top_p")) {
            if let Err(b) = sampler_rules::top_p(p) {
                r.error(b.at(f.value.span()));
                top_p = None;
            }
        }
        let mut temperature = r.float("temperature", Some(1.0), 0.0, sampler_rules::MAX_TEMPERATURE, "1.0");
        if let (Some(t), Some(f)) = (temperature, r.field("temperature")) {
            if let Err(b) = sampler_rules::temperature(t) {
                r.error(b.at(f.value.span()));
                temperature = None;
            }
        }
        let solver = r.word(
            "solver",
            &[("euler", Solver::Euler), ("heun", Solver::Heun), ("ddpm", Solver::Ddpm), ("ddim", Solver::Ddim)],
            Some(Solver::Euler),
        );
        let learned_variance = r.bool("learned_variance", false);
        let train_steps = r.int("train_steps", Some(1000), 1, 1_000_000, "1000");
        let beta = match r.field("beta") {
            None => Some([1e-4, 0.02]),
            Some(f) => {
                let MValue::Expr(e) = &f.value else { return None };
                match &e.kind {
                    ExprKind::Call { name, args } if name.name == "linear" && args.len() == 2 => {
                        let a = r.num_of(&args[0].value)?.as_f64();
                        let b = r.num_of(&args[1].value)?.as_f64();
                        if !(0.0 < a && a < b && b < 1.0) {
                            let why = if a >= b && 0.0 < b && a < 1.0 {
                                "start is not below end: are they swapped?".to_string()
                            } else {
                                format!("linear({a}, {b})")
                            };
                            r.error(
                                Diag::error("E0304", "beta schedule out of range")
                                    .label(e.span, why)
                                    .help("betas must satisfy 0 < start < end < 1 (DiT: linear(1e-4, 0.02))"),
                            );
                            return None;
                        }
                        Some([a, b])
                    }
                    _ => {
                        r.error(
                            Diag::error("E0305", "unknown beta schedule")
                                .label(e.span, "expected `linear(start, end)`")
                                .help("write `beta linear(1e-4, 0.02)`"),
                        );
                        return None;
                    }
                }
            }
        };
        r.finish();
        Some((
            SamplerSpec {
                name: c.and_then(base_name),
                cfg: cfg?,
                cfg_schedule: cfg_schedule?,
                cfg_channels: if bad { return None } else { cfg_channels },
                top_k: top_k? as u64,
                top_p: top_p?,
                temperature: temperature?,
                solver: solver?,
                learned_variance,
                beta: beta?,
                train_steps: train_steps? as u64,
            },
            spans,
        ))
    }

    fn distill(&self, c: &'a Component, model: &'a MBody, at: Span) -> Option<(DistillSpec, DistillSpans)> {
        let r = self.reader(&c.body, vec![&c.body, model], "distill", at);
        let method = r.word("method", &[("dd", ())], Some(()));
        let steps = r.int("steps", Some(1), 1, 2, "1");
        let split = r.int("split", Some(0), 0, i64::MAX, "80");
        let greedy = r.int("greedy_prefix", Some(-1), -1, i64::MAX, "130");
        r.finish();
        method?;
        let spans = DistillSpans {
            at,
            split: c.body.field("split").map(|f| f.span),
            greedy: c.body.field("greedy_prefix").map(|f| f.span),
        };
        let (steps, split) = (steps? as u64, split? as u64);
        if steps == 2 && c.body.field("split").is_none() {
            r.error(
                Diag::error("E0303", "two-step DD needs `split`")
                    .label(c.body.field("steps").map_or(at, |f| f.span), "steps 2 without split")
                    .help("add `split N`: the stage after which the second step re-noises (VAR-d16: 5, LlamaGen: 80)"),
            );
            return None;
        }
        // Without `greedy_prefix`, the first `split` stages come from the teacher head's argmax.
        let greedy_prefix = match greedy? {
            -1 => split,
            g => g as u64,
        };
        Some((DistillSpec { name: base_name(c), steps, split, greedy_prefix }, spans))
    }
}

#[derive(Clone)]
struct SamplerSpans {
    at: Span,
    top_k: Option<Span>,
    top_p: Option<Span>,
    solver: Option<Span>,
    cfg_channels: Option<Span>,
    train_steps: Option<Span>,
}

/// Where the schedule's parts are, for cross-field reports.
#[derive(Clone)]
struct ScheduleSpans {
    /// The `schedule` key of the model.
    at: Span,
    /// The finest stage's grid (last scale, last row's grid, or the raster size).
    last: Span,
    /// Each stage's step count (or its row, or `at`).
    steps: Vec<Span>,
}

#[derive(Clone)]
struct DistillSpans {
    at: Span,
    split: Option<Span>,
    greedy: Option<Span>,
}

/// The body of a backbone's `block` component.
fn block_body(bb: &MBody) -> Option<&MBody> {
    match bb.field("block").map(|f| &f.value) {
        Some(MValue::Component(c)) => Some(&c.body),
        _ => None,
    }
}

/// The name of an adaLN chunk.
fn chunk_name(chunks: &[(&'static str, AdaChunk)], c: AdaChunk) -> &'static str {
    chunks.iter().find(|(_, x)| *x == c).map_or("?", |(n, _)| *n)
}

/// Whether `e` names `var` anywhere.
pub(crate) fn mentions(e: &Expr, var: &str) -> bool {
    match &e.kind {
        ExprKind::Name(n) => n == var,
        ExprKind::Paren(x) | ExprKind::Neg(x) => mentions(x, var),
        ExprKind::Binary { lhs, rhs, .. } => mentions(lhs, var) || mentions(rhs, var),
        ExprKind::Call { args, .. } => args.iter().any(|a| mentions(&a.value, var)),
        ExprKind::List(items) => items.iter().any(|i| mentions(i, var)),
        ExprKind::Index { name, index } => name.name == var || mentions(index, var),
        _ => false,
    }
}

/// Whether a group must be evaluated copy by copy (see `group_expanded`).
pub(crate) fn needs_expansion(g: &ParamGroup) -> bool {
    if g.inner.is_some() || g.guard.is_some() {
        return true;
    }
    let Some(r) = &g.repeat else { return false };
    let var = r.var.name.as_str();
    g.decls.iter().any(|d| d.shape.iter().any(|e| mentions(e, var)) || has_computed_placeholder(&d.key.value, &[var]))
        || g.prefix.as_ref().is_some_and(|p| has_computed_placeholder(&p.value, &[var]))
}

/// Replace each `{expr}` in a key template by its value (loop variables in scope).
fn fill_placeholders(template: &str, sc: &Scope, span: Span, err: &dyn Fn(Diag)) -> Option<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else {
            err(Diag::error("E0436", "unclosed `{` in a checkpoint key")
                .label(span, "here")
                .help("placeholders look like `{i}` or `{4 - l}`"));
            return None;
        };
        let inner = &rest[open + 1..open + close];
        let value = match ecarc_grammar::parser::parse_set_value(ecarc_grammar::FileId(u32::MAX), inner) {
            Ok(ecarc_grammar::ast::FieldValue::Value(ecarc_grammar::ast::Value::Expr(e))) => sc.num(&e).ok(),
            _ => None,
        };
        match value {
            Some(N::Int(v)) if v >= 0 => out.push_str(&v.to_string()),
            _ => {
                err(Diag::error("E0436", format!("the key placeholder `{{{inner}}}` is not a non-negative integer"))
                    .label(span, "in this key")
                    .help("placeholders are loop variables or integer expressions of them, e.g. `{l}` or `{4 - l}`"));
                return None;
            }
        }
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    Some(out)
}

/// Whether a key template has a placeholder other than a bare loop variable
/// (`{4 - l}`), which needs evaluating copy by copy.
fn has_computed_placeholder(template: &str, vars: &[&str]) -> bool {
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else { return false };
        let inner = rest[open + 1..open + close].trim();
        if !vars.contains(&inner) {
            return true;
        }
        rest = &rest[open + close + 1..];
    }
    false
}

/// A nearby divisor of `n`, to suggest in a help line.
fn divisors_near(n: u64, target: u64) -> u64 {
    (1..=n.min(1 << 20)).filter(|d| n.is_multiple_of(*d)).min_by_key(|d| d.abs_diff(target)).unwrap_or(1)
}

/// Evaluates `params`/`buffers` groups with the derived values in scope.
struct ParamCtx<'c, 'a> {
    checker: &'c Checker<'a>,
    derived: &'c BTreeMap<String, N>,
    flags: &'c BTreeMap<&'static str, bool>,
    /// Full key -> where it was declared, to report duplicates.
    seen: RefCell<HashMap<String, Span>>,
    count: RefCell<u64>,
}

impl<'c, 'a> ParamCtx<'c, 'a> {
    fn groups(
        &self,
        body: &'c MBody,
        chain: Vec<&'c MBody>,
        owner: &str,
        params: &mut Vec<ParamGroupSpec>,
        buffers: &mut Vec<ParamGroupSpec>,
    ) {
        let scope = Scope::new(chain, self.derived);
        for g in body.param_groups() {
            let specs = if needs_expansion(g) {
                self.group_expanded(g, &scope, owner)
            } else {
                self.group(g, &scope, owner).into_iter().collect()
            };
            for spec in specs {
                match g.kind {
                    ParamKind::Params => params.push(spec),
                    ParamKind::Buffers => buffers.push(spec),
                }
            }
        }
    }

    /// A group evaluated copy by copy: nested loops, a `when a OP b` guard,
    /// shapes or keys that depend on the loop variables. Each copy that passes
    /// the guard becomes its own [`ParamGroupSpec`] with `index` = the loop values.
    fn group_expanded(&self, g: &ParamGroup, scope: &Scope<'c>, owner: &str) -> Vec<ParamGroupSpec> {
        if let Some(c) = &g.condition {
            match self.flag(&c.flag, scope) {
                Some(v) if v != c.negated => {}
                _ => return vec![],
            }
        }
        let err = |d: Diag| self.checker.error(d);
        let mut loops: Vec<(String, i64, i64)> = Vec::new();
        for r in g.repeat.iter().chain(g.inner.iter()) {
            let (lo, hi) = match (scope.num(&r.lo), scope.num(&r.hi)) {
                (Ok(N::Int(lo)), Ok(N::Int(hi))) if 0 <= lo && lo <= hi => (lo, hi),
                (Err(e), _) | (_, Err(e)) => {
                    err(e);
                    return vec![];
                }
                (Ok(lo), Ok(hi)) => {
                    err(Diag::error("E0304", "loop bounds must be integers with 0 <= lo <= hi")
                        .label(r.span, format!("{lo}..{hi}"))
                        .help("loops count up from the lower bound: write e.g. `for l in 0..levels`"));
                    return vec![];
                }
            };
            loops.push((r.var.name.clone(), lo, hi));
        }
        // No loops (a guard alone): one copy. An empty loop (`j in 0..0`): none.
        let copies: u64 = loops.iter().map(|(_, lo, hi)| (hi - lo) as u64).product();
        let n = copies.saturating_mul(g.decls.len() as u64);
        if self.count.borrow().saturating_add(n) > MAX_TENSORS {
            err(Diag::error("E0434", "too many tensors declared")
                .label(
                    g.repeat.as_ref().map_or(g.span, |r| r.span),
                    format!("{copies} copies x {} tensors", g.decls.len()),
                )
                .help(format!(
                    "a model declares at most {MAX_TENSORS} tensors after expanding loops; check the loop bounds"
                )));
            return vec![];
        }
        let mut out = Vec::new();
        let mut assignment: Vec<i64> = loops.iter().map(|l| l.1).collect();
        'copies: for _ in 0..copies {
            let mut sc = scope.clone();
            sc.locals = loops.iter().zip(&assignment).map(|((v, _, _), &x)| (v.clone(), N::Int(x))).collect();
            // advance the odometer for the next round (last loop fastest)
            let current = assignment.clone();
            for k in (0..loops.len()).rev() {
                assignment[k] += 1;
                if assignment[k] < loops[k].2 {
                    break;
                }
                assignment[k] = loops[k].1;
            }
            if let Some(gd) = &g.guard {
                let (a, b) = match (sc.num(&gd.lhs), sc.num(&gd.rhs)) {
                    (Ok(a), Ok(b)) => (a.as_f64(), b.as_f64()),
                    (Err(e), _) | (_, Err(e)) => {
                        err(e);
                        return vec![];
                    }
                };
                if !gd.op.holds(a, b) {
                    continue 'copies;
                }
            }
            let mut tensors = Vec::new();
            for d in &g.decls {
                let mut shape = Vec::new();
                for dim in &d.shape {
                    match sc.num(dim) {
                        Ok(N::Int(v)) if v >= 1 => shape.push(v as u64),
                        Ok(v) => {
                            err(Diag::error("E0433", "a tensor dimension must be a positive integer")
                                .label(dim.span, format!("this is {v}"))
                                .help("dimensions are whole numbers >= 1; check the expression against the checkpoint's shape"));
                            return vec![];
                        }
                        Err(e) => {
                            err(e);
                            return vec![];
                        }
                    }
                }
                if !crate::roles::is_role(&d.role.name) {
                    let names = crate::roles::ROLES.iter().map(|(r, _)| *r);
                    let e = Diag::error("E0435", format!("unknown tensor role `{}`", d.role.name))
                        .label(d.role.span, "not a role");
                    err(match did_you_mean(&d.role.name, names) {
                        Some(r) => e.help(format!("did you mean `{r}`? roles are listed in docs/language.md")),
                        None => e.help(
                            "a role says what the tensor is for (qkv, ffn_up, dec_conv1, ...); see docs/language.md",
                        ),
                    });
                    return vec![];
                }
                let Some(key) = fill_placeholders(&d.key.value, &sc, d.key.span, &err) else { return vec![] };
                tensors.push(TensorSpec { role: d.role.name.clone(), key, shape });
            }
            let prefix = match &g.prefix {
                Some(p) => match fill_placeholders(&p.value, &sc, p.span, &err) {
                    Some(v) => v,
                    None => return vec![],
                },
                None => String::new(),
            };
            out.push(ParamGroupSpec {
                owner: owner.into(),
                prefix,
                index: current.iter().map(|&v| v as u64).collect(),
                repeat: None,
                tensors,
            });
        }
        *self.count.borrow_mut() += out.iter().map(|s| s.tensors.len() as u64).sum::<u64>();
        let mut seen = self.seen.borrow_mut();
        for spec in &out {
            for (i, (key, _)) in spec.expand().into_iter().enumerate() {
                let decl_span = g.decls.get(i).map(|d| d.key.span).unwrap_or(g.span);
                if let Some(first) = seen.get(&key) {
                    err(Diag::error("E0430", format!("checkpoint key `{key}` is declared twice"))
                        .label(decl_span, "declared again here")
                        .label(*first, "first declared here")
                        .help("each tensor of a checkpoint has one key; rename one or guard it with `when`"));
                    return vec![];
                }
                seen.insert(key, decl_span);
            }
        }
        out
    }

    fn flag(&self, name: &Ident, scope: &Scope) -> Option<bool> {
        if let Some(&v) = self.flags.get(name.name.as_str()) {
            return Some(v);
        }
        for b in &scope.bodies {
            if let Some(f) = b.field(&name.name) {
                if let MValue::Expr(e) = &f.value {
                    match e.as_name() {
                        Some("true") => return Some(true),
                        Some("false") => return Some(false),
                        _ => {}
                    }
                }
                self.checker.error(
                    Diag::error("E0431", format!("`{}` is not a boolean", name.name))
                        .label(name.span, "used as a condition")
                        .label(f.value.span(), "defined here")
                        .help("conditions name `distilled` or a field set to true/false"),
                );
                return None;
            }
        }
        let mut cands: Vec<&str> = self.flags.keys().copied().collect();
        for b in &scope.bodies {
            cands.extend(b.fields().map(|f| f.key.name.as_str()));
        }
        let d = Diag::error("E0431", format!("unknown condition `{}`", name.name)).label(name.span, "not a flag");
        self.checker.error(match did_you_mean(&name.name, cands.iter().copied()) {
            Some(s) => d.help(format!("did you mean `{s}`?")),
            None => d.help("conditions name `distilled` or a boolean field in scope"),
        });
        None
    }

    fn group(&self, g: &ParamGroup, scope: &Scope<'c>, owner: &str) -> Option<ParamGroupSpec> {
        if let Some(c) = &g.condition {
            let v = self.flag(&c.flag, scope)?;
            if v == c.negated {
                return None;
            }
        }
        let err = |d: Diag| {
            self.checker.error(d);
        };
        let repeat = match &g.repeat {
            None => None,
            Some(r) => {
                let lo = scope.num(&r.lo).map_err(err).ok()?;
                let hi = scope.num(&r.hi).map_err(err).ok()?;
                match (lo, hi) {
                    (N::Int(lo), N::Int(hi)) if 0 <= lo && lo <= hi => {
                        let prefix_has =
                            g.prefix.as_ref().is_some_and(|p| p.value.contains(&format!("{{{}}}", r.var.name)));
                        let decls_have = g.decls.iter().all(|d| d.key.value.contains(&format!("{{{}}}", r.var.name)));
                        if !prefix_has && !decls_have && hi - lo > 1 {
                            err(Diag::error(
                                "E0432",
                                format!("keys do not use the loop variable `{{{}}}`", r.var.name),
                            )
                            .label(r.span, "every copy would get the same keys")
                            .help(format!(
                                "put `{{{}}}` in the prefix, e.g. \"blocks.{{{}}}.\"",
                                r.var.name, r.var.name
                            )));
                            return None;
                        }
                        Some(RepeatSpec { var: r.var.name.clone(), start: lo as u64, count: (hi - lo) as u64 })
                    }
                    _ => {
                        let why = match (lo, hi) {
                            (N::Int(l), N::Int(h)) if l > h => format!("{lo}..{hi} runs backwards"),
                            (N::Int(l), _) if l < 0 => format!("{lo}..{hi} starts below 0"),
                            _ => format!("{lo}..{hi} is not a range of integers"),
                        };
                        err(Diag::error("E0304", "loop bounds must be integers with 0 <= lo <= hi")
                            .label(r.span, why)
                            .help("loops count up from the lower bound: write e.g. `for i in 0..depth`"));
                        return None;
                    }
                }
            }
        };
        let mut tensors = Vec::new();
        for d in &g.decls {
            let mut shape = Vec::new();
            for dim in &d.shape {
                match scope.num(dim) {
                    Ok(N::Int(v)) if v >= 1 => shape.push(v as u64),
                    Ok(v) => {
                        let shown = match v {
                            N::Float(x) => crate::eval::fmt_f64(x),
                            N::Int(i) => i.to_string(),
                        };
                        err(Diag::error("E0433", "a tensor dimension must be a positive integer")
                            .label(dim.span, format!("this is {shown}"))
                            .help("dimensions are whole numbers >= 1; check the expression against the checkpoint's shape"));
                        return None;
                    }
                    Err(mut e) => {
                        if let Some(r) = &g.repeat {
                            if e.code == "E0315" && mentions(dim, &r.var.name) {
                                e = Diag::error("E0315", format!("the loop variable `{}` is used in a shape", r.var.name))
                                    .label(e.primary_span().unwrap_or(dim.span), format!("`{}` only numbers the keys", r.var.name))
                                    .label(r.var.span, "the loop variable")
                                    .help(format!(
                                        "shapes are the same in every copy: use fields and derived values, and put `{{{}}}` in the keys",
                                        r.var.name
                                    ));
                            }
                        }
                        err(e);
                        return None;
                    }
                }
            }
            if !crate::roles::is_role(&d.role.name) {
                let names = crate::roles::ROLES.iter().map(|(r, _)| *r);
                let e = Diag::error("E0435", format!("unknown tensor role `{}`", d.role.name))
                    .label(d.role.span, "not a role");
                err(match did_you_mean(&d.role.name, names) {
                    Some(r) => e.help(format!("did you mean `{r}`? roles are listed in docs/language.md")),
                    None => e.help(
                        "a role says what the tensor is for (qkv, ffn_up, class_table, ...); see docs/language.md",
                    ),
                });
                return None;
            }
            tensors.push(TensorSpec { role: d.role.name.clone(), key: d.key.value.clone(), shape });
        }
        let spec = ParamGroupSpec {
            owner: owner.into(),
            prefix: g.prefix.as_ref().map(|p| p.value.clone()).unwrap_or_default(),
            index: vec![],
            repeat,
            tensors,
        };
        let copies = spec.repeat.as_ref().map_or(1, |r| r.count);
        let n = copies.saturating_mul(spec.tensors.len() as u64);
        let total = self.count.borrow().saturating_add(n);
        if total > MAX_TENSORS {
            // Not counted, so that later groups are not blamed for this one.
            let (span, what) = match (&g.repeat, &spec.repeat) {
                (Some(r), Some(rs)) => (r.span, format!("{} copies x {} tensors = {n}", rs.count, spec.tensors.len())),
                _ => (g.span, format!("{n} tensors")),
            };
            err(Diag::error("E0434", "too many tensors declared")
                .label(span, what)
                .help(format!(
                    "a model declares at most {MAX_TENSORS} tensors after expanding loops; check the loop bounds (e.g. `for i in 0..depth`)"
                )));
            return None;
        }
        *self.count.borrow_mut() = total;
        // Duplicate full keys across every group of the model.
        let mut seen = self.seen.borrow_mut();
        for (i, (key, _)) in spec.expand().into_iter().enumerate() {
            let decl_span = g.decls.get(i % g.decls.len().max(1)).map(|d| d.key.span).unwrap_or(g.span);
            if let Some(first) = seen.get(&key) {
                err(Diag::error("E0430", format!("checkpoint key `{key}` is declared twice"))
                    .label(decl_span, "declared again here")
                    .label(*first, "first declared here")
                    .help("each tensor of a checkpoint has one key; rename one or guard it with `when`"));
                return None;
            }
            seen.insert(key, decl_span);
        }
        Some(spec)
    }
}
