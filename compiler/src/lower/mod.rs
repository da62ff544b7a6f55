//! Lowering a checked [`ModelSpec`] to step programs and the plan that runs
//! them. The stage schedule is the one mechanism: every family is a list of
//! stages, and each stage runs the backbone step (once, or once per solver step
//! when the backbone is itself the denoiser), then its head (a categorical
//! sample, or the flow head's ODE steps over the stage's time segment).

pub mod backbone;
pub mod ctx;
pub mod decoder;
pub mod heads;
pub mod params;
pub mod solver;
pub mod transition;

use crate::ir::{Bindings, Dim, Graph, Sym};
use crate::spec::*;
use backbone::{cached_step, lower_backbone, prefix_len, Seq, Step};
use ctx::{d, Ctx, Missing};
use ecarc_grammar::merged::{MBody, MValue};
use ecarc_grammar::{Diag, Span};
use params::{ParamIndex, Scope};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// One graph execution in the plan of a whole sample.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// The stage this run belongs to.
    pub stage: usize,
    /// Which program (`step.first`, `step.next`, `head.step`, ...).
    pub graph: String,
    /// Values of `T` and `P` (the batch `B` is the number of images).
    pub tokens: u64,
    pub past: u64,
    /// How many times it runs (solver steps).
    pub times: u64,
}

/// A lowered model: its programs and the plan of one sample.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Program {
    pub model: String,
    pub graphs: Vec<Graph>,
    pub plan: Vec<Run>,
    /// Whether the generation programs run on a doubled (guided) batch.
    pub cfg: bool,
}

impl Program {
    pub fn graph(&self, name: &str) -> Option<&Graph> {
        self.graphs.iter().find(|g| g.name == name)
    }
    pub fn bindings(&self, run: &Run, images: u64) -> Bindings {
        Bindings::new(images, run.tokens, run.past)
    }
}

/// Spans to attach to nodes: the components and each declared tensor (by
/// its key as declared, `blocks.{i}.attn.proj.weight`).
#[derive(Clone, Debug, Default)]
pub struct SpecSpans {
    pub tokenizer: Option<Span>,
    pub backbone: Option<Span>,
    pub head: Option<Span>,
    pub schedule: Option<Span>,
    pub params: HashMap<String, Span>,
}

impl SpecSpans {
    /// Spans from a model's merged body (what the checker read the spec from).
    pub fn from_body(body: &MBody) -> SpecSpans {
        let mut out = SpecSpans {
            tokenizer: body.field("tokenizer").map(|f| f.key.span),
            backbone: body.field("backbone").map(|f| f.key.span),
            head: body.field("head").map(|f| f.key.span),
            schedule: body.field("schedule").map(|f| f.key.span),
            params: HashMap::new(),
        };
        collect_param_spans(body, &mut out.params);
        out
    }
}

fn collect_param_spans(body: &MBody, out: &mut HashMap<String, Span>) {
    for g in body.param_groups() {
        let prefix = g.prefix.as_ref().map(|p| p.value.as_str()).unwrap_or("");
        for d in &g.decls {
            out.entry(format!("{prefix}{}", d.key.value)).or_insert(d.span);
        }
    }
    for f in body.fields() {
        if let MValue::Component(c) = &f.value {
            collect_param_spans(&c.body, out);
        }
    }
}

/// Whether the sampler guides with a doubled batch.
pub fn uses_cfg(spec: &ModelSpec) -> bool {
    spec.distill.is_none() && (spec.sampler.cfg != 1.0 || spec.sampler.cfg_schedule == CfgSchedule::Linear)
}

/// Whether the backbone itself is the denoiser, run at every solver step (DiT).
fn backbone_per_solver_step(spec: &ModelSpec) -> bool {
    spec.head.kind == HeadKind::Linear
}

pub fn lower(spec: &ModelSpec, spans: &SpecSpans) -> Result<Program, Diag> {
    let idx = ParamIndex::new(spec);
    let miss = |m: Missing, span: Option<Span>| m.to_diag(span);
    let cfg = uses_cfg(spec);
    let stages = spec.schedule.stages();
    let has_pos_start = idx.get(Scope::Backbone, "pos_start", None).is_some();
    let prefix = prefix_len(spec, has_pos_start);
    let mut graphs = Vec::new();
    let mut plan = Vec::new();

    // ---- the teacher-forced forward (cost convention; parity) --------------
    // Positions of one full pass. A teacher forward feeds every token but the
    // last (the prefix position predicts the first stage). A DD forward feeds
    // every token: on a raster schedule that is one more position than the
    // teacher's (LlamaGen-DD: class + 256); a scale schedule for DD already
    // lists the class position as its leading 1x1 stage (VAR-DD: 681).
    let total = spec.schedule.total_tokens();
    let raster = matches!(spec.schedule.layout, Layout::Raster { .. });
    let body = if spec.distill.is_some() && raster { total } else { total.saturating_sub(prefix) };
    let positions = body + prefix;
    let fwd_seq = if prefix > 0 { Seq::PrefixAndBody { body: d(body) } } else { Seq::Body };
    let fwd = Step {
        seq: fwd_seq,
        batch: Dim::sym(Sym::B),
        tokens: d(positions),
        past: d(0),
        teacher_forced: true,
        keeps_cache: false,
    };
    graphs.push(step_graph("forward", spec, &idx, spans, &fwd, false).map_err(|m| miss(m, spans.backbone))?);

    // The tokenizer decoder, when the tokenizer declares its tensors. It runs
    // once after the plan; its cost is reported apart (tokenizers are not part
    // of the generator by the counting conventions).
    if idx.get(Scope::Tokenizer, "dec_conv_in", None).is_some() {
        let mut c = Ctx::new("decode", &idx, Scope::Tokenizer, &spans.params);
        c.span = spans.tokenizer;
        decoder::decode(&mut c, spec).map_err(|m| miss(m, spans.tokenizer))?;
        graphs.push(c.g);
    }

    if spec.distill.is_some() {
        // Distilled Decoding: each of its steps is one forward over every
        // position; a multi-scale tokenizer then accumulates the continuous
        // codes scale by scale (the class position, stage 0, has none).
        let steps = spec.distill.as_ref().map_or(1, |d| d.steps);
        plan.push(Run { stage: 0, graph: "forward".into(), tokens: positions, past: 0, times: steps });
        if spec.tokenizer.kind == TokenizerKind::Msvq {
            for (k, s) in stages.iter().enumerate().skip(prefix as usize) {
                let name = format!("transition.{k}");
                let mut c = Ctx::new(&name, &idx, Scope::Tokenizer, &spans.params);
                c.span = spans.schedule;
                transition::residual_vq(&mut c, spec, k, false).map_err(|m| miss(m, spans.schedule))?;
                graphs.push(c.g);
                plan.push(Run { stage: k, graph: name, tokens: s.tokens, past: 0, times: 1 });
            }
        }
        return Ok(Program { model: spec.name.clone(), graphs, plan, cfg: false });
    }

    // ---- generation programs ---------------------------------------------
    let first_tokens = stages.first().map_or(0, |s| s.tokens);
    let first_seq = match prefix {
        0 => None,
        p if p == first_tokens => Some(Seq::Prefix),
        p => Some(Seq::PrefixAndBody { body: d(first_tokens.saturating_sub(p)) }),
    };
    let per_step = backbone_per_solver_step(spec);
    if let Some(seq) = first_seq.clone() {
        let mut st = cached_step(seq, cfg);
        st.tokens = d(first_tokens);
        st.past = d(0);
        st.keeps_cache = stages.len() > 1;
        graphs.push(step_graph("step.first", spec, &idx, spans, &st, cfg).map_err(|m| miss(m, spans.backbone))?);
    }
    let needs_next = stages.len() > 1 || first_seq.is_none();
    if needs_next {
        let mut st = cached_step(Seq::Body, cfg);
        if stages.len() == 1 {
            // One stage holding every token (DiT): nothing is cached, sizes are fixed.
            st.past = d(0);
            st.tokens = d(first_tokens);
            st.keeps_cache = false;
        }
        graphs.push(step_graph("step.next", spec, &idx, spans, &st, cfg).map_err(|m| miss(m, spans.backbone))?);
    }
    let flow_head = matches!(spec.head.kind, HeadKind::FlowMlp | HeadKind::FlowTransformer);
    if flow_head {
        let b = Dim::sym(Sym::B);
        let batch = if cfg { b.mul_c(2) } else { b };
        let mut c = Ctx::new("head.step", &idx, Scope::Head, &spans.params);
        c.span = spans.head;
        heads::flow_step(&mut c, spec, &batch, &Dim::sym(Sym::T), cfg).map_err(|m| miss(m, spans.head))?;
        graphs.push(c.g);
    }

    // Between stages: one program per stage boundary (grids are fixed there).
    let transition_kind = match (spec.tokenizer.kind, &spec.schedule.layout) {
        (_, Layout::Raster { .. }) => None,
        (TokenizerKind::Msvq, _) => Some(TokenizerKind::Msvq),
        (TokenizerKind::Vae, _) => Some(TokenizerKind::Vae),
        (TokenizerKind::Vq, _) => None,
    };
    let mut transitions = vec![None; stages.len()];
    for k in 0..stages.len() {
        let name = format!("transition.{k}");
        let mut c = Ctx::new(&name, &idx, Scope::Tokenizer, &spans.params);
        c.span = spans.schedule;
        match transition_kind {
            Some(TokenizerKind::Msvq) => {
                transition::residual_vq(&mut c, spec, k, cfg).map_err(|m| miss(m, spans.schedule))?;
            }
            Some(TokenizerKind::Vae) if k + 1 < stages.len() => transition::upsample_renoise(&mut c, spec, k, cfg),
            _ => continue,
        }
        graphs.push(c.g);
        transitions[k] = Some(name);
    }

    // The solver update of a denoiser backbone (DiT).
    if per_step {
        let mut c = Ctx::new("solver.step", &idx, Scope::Head, &spans.params);
        c.span = spans.head;
        solver::solver_step(&mut c, spec).map_err(|m| miss(m, spans.head))?;
        graphs.push(c.g);
    }
    // Heun evaluates the network twice per step.
    let evals = |steps: u64| if spec.sampler.solver == Solver::Heun { 2 * steps } else { steps };

    let mut past = 0;
    for (i, s) in stages.iter().enumerate() {
        let graph = if i == 0 && first_seq.is_some() { "step.first" } else { "step.next" };
        let times = if per_step { evals(s.steps) } else { 1 };
        plan.push(Run { stage: i, graph: graph.into(), tokens: s.tokens, past, times });
        if per_step {
            plan.push(Run { stage: i, graph: "solver.step".into(), tokens: s.tokens, past: 0, times: s.steps });
        }
        if flow_head {
            plan.push(Run { stage: i, graph: "head.step".into(), tokens: s.tokens, past: 0, times: evals(s.steps) });
        }
        if let Some(t) = &transitions[i] {
            plan.push(Run { stage: i, graph: t.clone(), tokens: s.tokens, past: 0, times: 1 });
        }
        past += s.tokens;
    }
    Ok(Program { model: spec.name.clone(), graphs, plan, cfg })
}

/// A backbone step with the head this model has.
fn step_graph(
    name: &str,
    spec: &ModelSpec,
    idx: &ParamIndex,
    spans: &SpecSpans,
    step: &Step,
    cfg: bool,
) -> Result<Graph, Missing> {
    let mut c = Ctx::new(name, idx, Scope::Backbone, &spans.params);
    c.span = spans.backbone;
    let out = lower_backbone(&mut c, spec, step)?;
    c.scope = Scope::Head;
    c.span = spans.head.or(spans.backbone);
    let teacher_forced = name == "forward";
    match spec.head.kind {
        HeadKind::Categorical | HeadKind::DdContinuous => {
            let h = heads::output_norm(&mut c, spec, &out)?;
            let logits = heads::logits(&mut c, h)?;
            if teacher_forced || spec.head.kind == HeadKind::DdContinuous {
                c.output("logits", logits);
            } else {
                let l = if cfg { heads::guide(&mut c, logits, None) } else { logits };
                let tokens = heads::sample(&mut c, spec, l);
                c.output("tokens", tokens);
                // The guided logits too: the DD teacher flow map reads the distribution.
                c.output("logits", l);
            }
            if spec.head.kind == HeadKind::DdContinuous {
                let x = heads::dd_continuous(&mut c, spec, &out)?;
                c.output("x_out", x);
            }
        }
        HeadKind::FlowMlp | HeadKind::FlowTransformer => {
            let z = heads::output_norm(&mut c, spec, &out)?;
            c.output("z", z);
        }
        HeadKind::Linear => {
            let o = heads::final_layer(&mut c, spec, &out)?;
            let o = if cfg && !teacher_forced {
                // Guide per output channel: [2B, T, p*p, C] has the channel fastest.
                let s = c.shape(o);
                let p2 = spec.backbone.patch * spec.backbone.patch;
                let per = s[2].div_c(p2).expect("p*p*C outputs per token");
                let split = c.reshape(o, vec![s[0].clone(), s[1].clone(), d(p2), per]);
                let g = heads::guide(&mut c, split, spec.sampler.cfg_channels);
                let gs = c.shape(g);
                c.reshape(g, vec![gs[0].clone(), s[1].clone(), s[2].clone()])
            } else {
                o
            };
            let o = solver::unpatchify_output(&mut c, spec, o);
            c.output("out", o);
        }
    }
    Ok(c.g)
}
