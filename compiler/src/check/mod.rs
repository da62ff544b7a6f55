//! The checker: a merged model body -> [`ModelSpec`], with every rule of
//! docs/language.md. Errors are collected so that one run reports them all.
//!
//! This module holds the entry points, the [`Checker`] and the model check;
//! each component has its own module (tokenizer, backbone, head, schedule,
//! sampler, distill), `cross` the rules between components, `params`
//! evaluates the declared tensors and `derived` lists the derived values.

use crate::eval::EvalScope;
use crate::reader::Reader;
use crate::spec::*;
use ecarc_grammar::ast::Ident;
use ecarc_grammar::ast::Num;
use ecarc_grammar::diag::did_you_mean;
use ecarc_grammar::merged::{Component, MBody, MValue};
use ecarc_grammar::{Diag, Span};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

mod backbone;
mod cross;
mod derived;
mod distill;
mod entries;
mod head;
pub mod memo;
mod params;
mod sampler;
mod schedule;
mod tokenizer;

use cross::Checked;
pub(crate) use derived::{channels_name, derived_values};
pub use entries::ENTRY_KEYS;
use params::ParamCtx;
pub(crate) use params::{group_flags, needs_expansion};
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
    empty: &'a BTreeMap<String, Num>,
    /// Reuse of earlier results when checking many points of one search space
    /// (see [`memo`]); `None` checks everything afresh.
    memo: Option<memo::MemoCtx<'a>>,
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
    entry_names: BTreeMap<String, BTreeMap<String, String>>,
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
            entry_names: self.entry_names,
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
        Reader::new(body, EvalScope::new(chain, self.empty), what, at, self.diags)
    }

    /// The same checker with derived values known so far in scope.
    fn with_derived(&self, derived: &'a BTreeMap<String, Num>) -> Checker<'a> {
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
        let mut early: BTreeMap<String, Num> = BTreeMap::new();
        if let Some(c) = classes {
            early.insert("classes".into(), Num::Int(c));
        }
        if let Some((t, _)) = &tokenizer {
            early.insert("token_channels".into(), Num::Int(t.token_channels as i64));
            early.insert(
                if t.kind == TokenizerKind::Vae { "latent_channels" } else { "code_dim" }.into(),
                Num::Int(t.token_channels as i64),
            );
            if let Some(v) = t.vocab {
                early.insert("vocab".into(), Num::Int(v as i64));
            }
        }
        if let Some((b, _, _)) = &backbone {
            early.insert("cond_dim".into(), Num::Int(b.width as i64));
            early.insert("head_dim".into(), Num::Int(b.head_dim as i64));
            early.insert("patch".into(), Num::Int(b.patch as i64));
            early.insert("time_embed".into(), Num::Int(b.time_embed as i64));
            early.insert("ffn_hidden".into(), Num::Int(b.block.ffn_hidden as i64));
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
        let entry_names = self.entry_names(&m);
        m.allow(&[]);
        m.finish();

        let (tokenizer, tok_body) = tokenizer?;
        let (backbone, bb_body, block_body) = backbone?;
        let (head, head_body) = head?;
        let (schedule, sched_spans) = schedule?;
        let (sampler, sampler_span) = sampler?;
        let image = image?;
        let classes = classes? as u64;

        let ok = self.cross_field_rules(&Checked {
            name,
            body,
            image,
            tokenizer: &tokenizer,
            tok_body,
            backbone: &backbone,
            bb_body,
            head: &head,
            head_body,
            schedule: &schedule,
            sched_spans: &sched_spans,
            sampler: &sampler,
            sampler_span: &sampler_span,
            distill: distill.as_ref(),
        });

        // ---- derived values and declared tensors ---------------------------
        let derived = derived_values(classes, &tokenizer, &backbone, &schedule);
        let flags = group_flags(distill.is_some());
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
            if let Ok(b) = EvalScope::new(vec![body], &derived).num(&c.bound).map_err(|d| self.error(d)) {
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
            entry_names,
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
