//! Lowering a checked [`ModelSpec`] to step programs and the plan that runs
//! them. The stage schedule is the one mechanism: every family is a list of
//! stages, and each stage runs the backbone step (once, or once per solver step
//! when the backbone is itself the denoiser), then its head (a categorical
//! sample, or the flow head's ODE steps over the stage's time segment).

pub(crate) mod backbone;
pub(crate) mod ctx;
pub(crate) mod decoder;
pub(crate) mod diffusion;
pub(crate) mod glue;
pub(crate) mod heads;
pub(crate) mod params;
pub mod plans;
pub(crate) mod solver;
pub(crate) mod transition;

use crate::ir::{DType, Dim, Graph, Sym, TensorType};
use crate::plan::{Plan, SeqLayout};
use crate::spec::*;
use backbone::{cached_step, first_seq, forward_seq, lower_backbone, prefix_len, BackboneStep, Doubling, Seq};
use ctx::{d, Ctx, Missing};
use ecarc_grammar::merged::{MBody, MValue};
use ecarc_grammar::{Diag, Span};
pub use heads::TokenChoice;
use params::{ParamIndex, ParamScope};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Flow times (in [0, 1]) are fed to networks multiplied by this, the range
/// of the diffusion timesteps their time embeddings are made for.
pub const TIME_SCALE: f64 = 1000.0;

/// A lowered model: its programs and the plans that run them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Program {
    pub model: String,
    pub graphs: Vec<Graph>,
    /// `sample` (or `pairs`), `forward`, `forward.guided`, `decode*`.
    pub plans: Vec<Plan>,
    /// The sequence layout the plans' position tables come from.
    pub layout: SeqLayout,
    /// Whether the generation programs run on a doubled (guided) batch.
    pub cfg: bool,
    /// Whether a backend runs the kernel passes (`pass::KERNEL_PASSES`:
    /// fusion, memory planning) on each program before preparing it
    /// (false under `-O0`).
    #[serde(default = "yes")]
    pub optimise: bool,
}

fn yes() -> bool {
    true
}

impl Program {
    pub fn graph(&self, name: &str) -> Option<&Graph> {
        self.graphs.iter().find(|g| g.name == name)
    }
    pub fn plan(&self, name: &str) -> Option<&Plan> {
        self.plans.iter().find(|p| p.name == name)
    }
    /// The plan of one sample.
    pub fn sample_plan(&self) -> Option<&Plan> {
        self.plan("sample")
    }
    /// The decode plans, in the order they are tried.
    pub fn decode_plans(&self) -> impl Iterator<Item = &Plan> {
        self.plans.iter().filter(|p| p.name == "decode" || p.name.starts_with("decode."))
    }
}

/// Choices that change what the lowering makes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LowerOptions {
    /// How a categorical head chooses tokens (`FlowMap`: `ecarc dd-pairs`,
    /// whose plan is called `pairs`).
    pub choice: TokenChoice,
    /// Guide with a doubled batch (`Some(true)`) or not, whatever the
    /// sampler's own scale says (`None`: as [`uses_cfg`] says). A runner
    /// prepares both, so that switching guidance never lowers again.
    pub guidance: Option<bool>,
    /// `-O0`: lowering runs only dead-code elimination and backends run no
    /// kernel passes (no fusion, no memory plan).
    pub unoptimised: bool,
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

/// Whether the teacher-forced `forward` feeds every token (a DD student on a
/// raster schedule), not every token after the start token(s).
pub(crate) fn forward_feeds_every_token(spec: &ModelSpec) -> bool {
    spec.distill.is_some() && matches!(spec.schedule.layout, Layout::Raster { .. })
}

/// Whether the backbone itself is the denoiser, run at every solver step (DiT).
pub(crate) fn backbone_per_solver_step(spec: &ModelSpec) -> bool {
    spec.head.kind == HeadKind::Linear
}

pub fn lower(spec: &ModelSpec, spans: &SpecSpans) -> Result<Program, Diag> {
    lower_with(spec, spans, LowerOptions::default())
}

/// One lowered program in a context of `scope`, spanned by `span`.
fn program(
    name: &str,
    idx: &ParamIndex,
    spans: &SpecSpans,
    scope: ParamScope,
    span: Option<Span>,
    build: impl FnOnce(&mut Ctx) -> Result<(), Missing>,
) -> Result<Graph, Diag> {
    let mut c = Ctx::new(name, idx, scope, &spans.params);
    c.span = span;
    build(&mut c).map_err(|m| m.to_diag(span))?;
    Ok(c.g)
}

pub fn lower_with(spec: &ModelSpec, spans: &SpecSpans, opts: LowerOptions) -> Result<Program, Diag> {
    let mut p = lower_programs(spec, spans, opts)?;
    p.optimise = !opts.unoptimised;
    Ok(p)
}

fn lower_programs(spec: &ModelSpec, spans: &SpecSpans, opts: LowerOptions) -> Result<Program, Diag> {
    let idx = ParamIndex::new(spec);
    let cfg = spec.distill.is_none() && opts.guidance.unwrap_or_else(|| uses_cfg(spec));
    let stages = spec.schedule.stages();
    let has_pos_start = idx.get(ParamScope::Backbone, "pos_start", None).is_some();
    let prefix = prefix_len(spec, has_pos_start);
    let b = Dim::sym(Sym::B);
    let mut graphs = Vec::new();
    let tk = &spec.tokenizer;

    // ---- the teacher-forced forward (cost convention; parity) --------------
    // Positions of one full pass. A teacher forward feeds every token but the
    // last (the prefix position predicts the first stage). A DD forward feeds
    // every token: on a raster schedule that is one more position than the
    // teacher's (LlamaGen-DD: class + 256); a scale schedule for DD already
    // lists the class position as its leading 1x1 stage (VAR-DD: 681).
    let total = spec.schedule.total_tokens();
    let raster = matches!(spec.schedule.layout, Layout::Raster { .. });
    let body = if forward_feeds_every_token(spec) { total } else { total.saturating_sub(prefix) };
    let positions = body + prefix;
    let fwd_seq = forward_seq(prefix, d(body));
    let fwd = BackboneStep {
        seq: fwd_seq.clone(),
        batch: b.clone(),
        doubling: Doubling::None,
        tokens: d(positions),
        past: d(0),
        teacher_forced: true,
        cache: None,
    };
    let choice = opts.choice;
    graphs.push(step_graph("forward", spec, &idx, spans, &fwd, false, choice).map_err(|m| m.to_diag(spans.backbone))?);
    let denoiser = backbone_per_solver_step(spec);
    if denoiser {
        // DiT's `forward_with_cfg`: the first half's latent twice, guided.
        let guided = BackboneStep { batch: b.mul_c(2), doubling: Doubling::FirstHalf, ..fwd.clone() };
        graphs.push(
            step_graph("forward.guided", spec, &idx, spans, &guided, true, choice)
                .map_err(|m| m.to_diag(spans.backbone))?,
        );
    }

    // ---- the tokenizer: its decoder, and the glue around it ---------------
    // The decoder runs once per image after the stages; its cost is reported
    // apart (tokenizers are not part of the generator by the counting conventions).
    let has_decoder = idx.get(ParamScope::Tokenizer, "dec_conv_in", None).is_some();
    let has_codebook = idx.get(ParamScope::Tokenizer, "codebook", None).is_some();
    let tok = |name: &str, build: &dyn Fn(&mut Ctx) -> Result<(), Missing>| {
        program(name, &idx, spans, ParamScope::Tokenizer, spans.tokenizer, |c| build(c))
    };
    if has_decoder {
        graphs.push(tok("decode", &|c| decoder::decode(c, spec))?);
        if tk.kind == TokenizerKind::Vq && has_codebook {
            graphs.push(tok("codes.from_tokens", &|c| glue::codes_from_tokens(c, spec))?);
        }
        if tk.kind == TokenizerKind::Vae && !denoiser {
            graphs.push(tok("latent.from_tokens", &|c| {
                glue::latent_from_tokens(c, spec);
                Ok(())
            })?);
        }
    }
    let msvq = tk.kind == TokenizerKind::Msvq && !raster;
    let first_scale = if spec.distill.is_some() { prefix as usize } else { 0 };
    if msvq {
        let (name, dtype, inner) = if spec.distill.is_some() {
            ("codes", DType::F32, vec![tk.token_channels])
        } else {
            ("tokens", DType::I64, vec![])
        };
        graphs.push(tok(&format!("split.{name}"), &|c| {
            glue::split(c, spec, name, dtype, &inner, first_scale);
            Ok(())
        })?);
    }

    // Between stages: one program per stage boundary (grids are fixed there).
    let mut transitions = vec![None; stages.len()];
    for (k, slot) in transitions.iter_mut().enumerate() {
        let name = format!("transition.{k}");
        let g = match (msvq, tk.kind) {
            (true, _) if k >= first_scale => program(&name, &idx, spans, ParamScope::Tokenizer, spans.schedule, |c| {
                transition::residual_vq(c, spec, k)
            })?,
            (false, TokenizerKind::Vae) if !raster && spec.distill.is_none() && k + 1 < stages.len() => {
                program(&name, &idx, spans, ParamScope::Tokenizer, spans.schedule, |c| {
                    transition::upsample_renoise(c, spec, k);
                    Ok(())
                })?
            }
            _ => continue,
        };
        graphs.push(g);
        *slot = Some(name);
    }

    let layout = SeqLayout::new(spec, prefix);
    fn shape_of<'a>(
        spec: &'a ModelSpec,
        graphs: &'a [Graph],
        cfg: bool,
        forward_positions: u64,
        has_first: bool,
        transitions: &[Option<String>],
    ) -> plans::Shape<'a> {
        plans::Shape { spec, graphs, cfg, forward_positions, has_first, transitions: transitions.to_vec() }
    }

    if let Some(dd) = &spec.distill {
        // Distilled Decoding: each step is one forward over every position;
        // the final sequence after each is a glue program of its own.
        let steps: Vec<u64> = if dd.steps >= 2 { vec![0, dd.split] } else { vec![0] };
        let fwd_g = graphs.iter().find(|g| g.name == "forward").expect("the forward");
        let out_ty = |n: &str| fwd_g.outputs.iter().find(|(o, _)| o == n).map(|(_, i)| fwd_g.g[*i].ty.clone());
        let (logits_ty, x_out_ty) = match (out_ty("logits"), out_ty("x_out")) {
            (Some(l), Some(x)) => (l, x),
            _ => {
                return Err(
                    Missing { role: "dd_out".into(), index: vec![], scope: ParamScope::Head }.to_diag(spans.head)
                )
            }
        };
        let konst = |t: &TensorType, i: usize| t.shape[i].as_const().unwrap_or(0);
        let (vocab, dim) = (konst(&logits_ty, 2), konst(&x_out_ty, 2));
        let greedy = layout.data_len(dd.greedy_prefix);
        for (i, &t) in steps.iter().enumerate() {
            let data = layout.data_len(t);
            if i > 0 {
                graphs.push(tok(&format!("dd.renoise.{i}"), &|c| {
                    glue::dd_renoise(c, body, dim, data);
                    Ok(())
                })?);
            }
            graphs.push(tok(&format!("dd.final.{i}"), &|c| {
                glue::dd_final(c, spec, body, dim, vocab, prefix, data, greedy)
            })?);
        }
        graphs.push(tok("dd.drop_start", &|c| {
            glue::dd_drop_start(c, logits_ty.clone(), x_out_ty.clone(), prefix);
            Ok(())
        })?);
        optimise(&mut graphs, opts.unoptimised);
        let shape = shape_of(spec, &graphs, false, positions, false, &transitions);
        let mut plans = vec![plans::distilled_sample(&shape, &steps)];
        plans.extend(plans::forwards(&shape));
        plans.extend(plans::decodes(&shape));
        return finish(spec, graphs, plans, layout, false);
    }

    // ---- generation programs ---------------------------------------------
    let first_tokens = stages.first().map_or(0, |s| s.tokens);
    let starts_from_noise = matches!(spec.head.kind, HeadKind::FlowMlp | HeadKind::FlowTransformer);
    if prefix > 0 && prefix != first_tokens && !starts_from_noise {
        // Only a flow stage has a starting state (its noise) to stand at the stage's other positions.
        let mut d = Diag::error(
            "E0602",
            format!(
                "the first stage has {first_tokens} tokens but the sequence starts with {prefix} start token(s), \
                 and a head that samples tokens leaves nothing to feed the stage's other positions (a flow head feeds \
                 the stage's starting noise)"
            ),
        )
        .help(format!("make the first stage hold exactly the start tokens ({prefix} token(s), e.g. `stage 1x1`)"));
        if let Some(s) = spans.schedule {
            d = d.label(s, "the schedule");
        }
        return Err(d);
    }
    let first_seq = first_seq(prefix, first_tokens, || d(first_tokens.saturating_sub(prefix)));
    if let Some(seq) = first_seq.clone() {
        let mut st = cached_step(seq, cfg, layout.positions());
        st.tokens = d(first_tokens);
        st.past = d(0);
        if stages.len() == 1 {
            st.cache = None;
        }
        graphs.push(
            step_graph("step.first", spec, &idx, spans, &st, cfg, choice).map_err(|m| m.to_diag(spans.backbone))?,
        );
    }
    let needs_next = stages.len() > 1 || first_seq.is_none();
    if needs_next {
        let mut st = cached_step(Seq::Body, cfg, layout.positions());
        if stages.len() == 1 {
            // One stage holding every token (DiT): nothing is cached, sizes are fixed.
            st.past = d(0);
            st.tokens = d(first_tokens);
            st.cache = None;
        }
        graphs
            .push(step_graph("step.next", spec, &idx, spans, &st, cfg, choice).map_err(|m| m.to_diag(spans.backbone))?);
    }
    let flow_head = matches!(spec.head.kind, HeadKind::FlowMlp | HeadKind::FlowTransformer);
    if flow_head {
        graphs.push(program("head.step", &idx, spans, ParamScope::Head, spans.head, |c| {
            heads::flow_step(c, spec, &Dim::sym(Sym::T), cfg)
        })?);
    }
    // The solver update of a denoiser backbone (DiT).
    if denoiser {
        graphs
            .push(program("solver.step", &idx, spans, ParamScope::Head, spans.head, |c| solver::solver_step(c, spec))?);
    }
    // Heun's rule averages the start and two Euler steps of whatever integrates.
    if spec.sampler.solver == Solver::Heun && (flow_head || denoiser) {
        let x_ty = |g: &str| {
            graphs.iter().find(|p| p.name == g).and_then(|p| {
                p.g.node_weights()
                    .find(|n| matches!(&n.op, crate::ir::Op::Input { name } if name == "x"))
                    .map(|n| n.ty.clone())
            })
        };
        let ty = x_ty(if denoiser { "solver.step" } else { "head.step" }).expect("a solver reads x");
        graphs.push(tok("heun.mean", &|c| {
            glue::heun_mean(c, ty.clone());
            Ok(())
        })?);
    }
    // A raster model's tokens (and, for Distilled Decoding's pairs, its noise)
    // grow one stage at a time.
    let pairs = choice == TokenChoice::FlowMap;
    if raster || pairs {
        graphs.push(tok("append.tokens", &|c| {
            glue::append(c, DType::I64, &[]);
            Ok(())
        })?);
    }
    if pairs {
        let dim = idx.get(ParamScope::Tokenizer, "codebook", None).map_or(tk.token_channels, |c| c.shape[1]);
        graphs.push(tok("append.noise", &|c| {
            glue::append(c, DType::F32, &[dim]);
            Ok(())
        })?);
    }
    optimise(&mut graphs, opts.unoptimised);
    let shape = shape_of(spec, &graphs, cfg, positions, first_seq.is_some(), &transitions);
    let mut plans = vec![plans::sample(&shape, pairs)];
    plans.extend(plans::forwards(&shape));
    plans.extend(plans::decodes(&shape));
    finish(spec, graphs, plans, layout, cfg)
}

/// The standard pass pipeline on every program, before the plans bind their
/// ports (so a source that dead-code elimination removes is never bound).
fn optimise(graphs: &mut [Graph], unoptimised: bool) {
    use rayon::prelude::*;
    // Programs are independent: one pipeline each, in parallel.
    graphs.par_iter_mut().for_each(|g| {
        let pipeline = if unoptimised { crate::pass::Pipeline::minimal() } else { crate::pass::Pipeline::standard() };
        if let Err(e) = pipeline.run(g) {
            panic!("lowering bug: {e}");
        }
    });
}

/// The program, its plans verified in debug builds (a plan that does not
/// verify is a lowering bug).
fn finish(
    spec: &ModelSpec,
    graphs: Vec<Graph>,
    plans: Vec<Plan>,
    layout: SeqLayout,
    cfg: bool,
) -> Result<Program, Diag> {
    if cfg!(debug_assertions) {
        for p in plans.iter().filter(|p| p.name.starts_with("forward")) {
            let ports = p.inputs.iter().map(|i| &i.name).chain(p.results.iter().map(|(r, _)| r));
            for port in ports.filter(|n| *n != plans::GUIDANCE_PORT) {
                assert!(
                    plans::FORWARD_PORTS.contains(&port.as_str()),
                    "lowering bug: `{port}` is not in FORWARD_PORTS"
                );
            }
        }
        for p in &plans {
            if let Err(e) = crate::plan::verify::verify(p, &graphs) {
                panic!("lowering bug: the plan `{}` of `{}` does not verify:\n{}", p.name, spec.name, e.join("\n"));
            }
        }
    }
    Ok(Program { model: spec.name.clone(), graphs, plans, layout, cfg, optimise: true })
}

/// A backbone step with the head this model has.
fn step_graph(
    name: &str,
    spec: &ModelSpec,
    idx: &ParamIndex,
    spans: &SpecSpans,
    step: &BackboneStep,
    cfg: bool,
    choice: TokenChoice,
) -> Result<Graph, Missing> {
    let mut c = Ctx::new(name, idx, ParamScope::Backbone, &spans.params);
    c.span = spans.backbone;
    let out = lower_backbone(&mut c, spec, step)?;
    c.scope = ParamScope::Head;
    c.span = spans.head.or(spans.backbone);
    let teacher_forced = step.teacher_forced;
    match spec.head.kind {
        HeadKind::Categorical | HeadKind::DdContinuous => {
            let h = heads::output_norm(&mut c, spec, &out)?;
            let logits = heads::logits(&mut c, h)?;
            if teacher_forced || spec.head.kind == HeadKind::DdContinuous {
                c.output("logits", logits);
            } else {
                let l = if cfg { heads::guide(&mut c, logits, None) } else { logits };
                let tokens = match choice {
                    TokenChoice::Sample => heads::sample(&mut c, l),
                    TokenChoice::FlowMap => heads::flow_map(&mut c, spec, l)?,
                };
                c.output("tokens", tokens);
                // The guided logits too (checks read the distribution).
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
            let p2 = spec.backbone.patch * spec.backbone.patch;
            let o = if step.doubling == Doubling::FirstHalf {
                // `forward_with_cfg`: both halves' first channels guided, the rest as computed.
                let s = c.shape(o);
                let per = s[2].div_c(p2).expect("p*p*C outputs per token");
                let split = c.reshape(o, vec![s[0].clone(), s[1].clone(), d(p2), per.clone()]);
                let channels = spec.sampler.cfg_channels.unwrap_or(per.as_const().unwrap_or(0));
                let g = glue::guide_both_halves(&mut c, split, channels);
                c.reshape(g, s)
            } else if cfg && !teacher_forced {
                // Guide per output channel: [2B, T, p*p, C] has the channel fastest.
                let s = c.shape(o);
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
