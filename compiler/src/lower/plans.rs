//! The plans of a lowered model (`plan/mod.rs` says what a plan is). One
//! walk over the stage schedule makes every family's sample: each stage runs
//! its backbone step, then its head (tokens sampled inside the step, a flow
//! head's ODE steps, or a denoiser's solver loop), then its transition; the
//! tokenizer decodes what the last stage left. Distilled Decoding replaces the
//! walk by its one or two forwards. What a stage does follows from which
//! programs the lowering made, never from a family name.
//!
//! Every source of every program is bound here: the entries name the values
//! that flow between programs; the rest follow one convention by port name
//! ([`Builder::standard`]): `labels`, position tables (`levels`, `key_levels`,
//! `rope_cos`, `rope_sin`), `cfg_scale` (the stage's guidance), `uniform` and
//! `noise` (seeded per stage), and states (`cache.*`, `f_hat`: carried values
//! of their own name, zeros at first).

use super::diffusion;
use super::TIME_SCALE;
use crate::ir::{Bindings, Dim, Graph, Op, Sym, TensorType};
use crate::plan::*;
use crate::spec::*;

/// Every input and result a `forward` plan may have: the ports a model's
/// entry names (`forward { labels "label_B" }`) may rename.
pub const FORWARD_PORTS: &[&str] = &["labels", "tokens", "x", "latent", "t", "logits", "z", "out", "x_out"];

/// The port a guided forward takes its guidance scale at (`--cfg`).
pub const GUIDANCE_PORT: &str = "cfg_scale";

/// What a stage of the schedule runs, from the programs the lowering made.
pub(super) struct Shape<'a> {
    pub spec: &'a ModelSpec,
    pub graphs: &'a [Graph],
    /// Generation programs run on a doubled batch.
    pub cfg: bool,
    /// Positions of the teacher-forced `forward`.
    pub forward_positions: u64,
    /// The first stage runs `step.first`.
    pub has_first: bool,
    /// The transition program after each stage.
    pub transitions: Vec<Option<String>>,
}

/// Builds entries, binding each program source.
pub(super) struct Builder<'a> {
    shape: &'a Shape<'a>,
    zeros: Vec<String>,
}

fn graph<'g>(graphs: &'g [Graph], name: &str) -> &'g Graph {
    graphs.iter().find(|g| g.name == name).unwrap_or_else(|| panic!("lowering made no program `{name}`"))
}

/// Keep `in:PORT` / `out:NAME` of an entry as `name`.
fn keep(port: &str, name: &str, keep: Keep) -> Record {
    Record { port: port.into(), name: name.into(), keep }
}

fn value(v: &str) -> Source {
    Source::Value(v.into())
}

impl<'a> Builder<'a> {
    fn new(shape: &'a Shape<'a>) -> Self {
        Builder { shape, zeros: Vec::new() }
    }

    fn has(&self, program: &str) -> bool {
        self.shape.graphs.iter().any(|g| g.name == program)
    }

    /// The source a port gets when the entry does not say.
    fn standard(&mut self, port: &str, state: bool) -> Source {
        if state {
            if !self.zeros.iter().any(|z| z == port) {
                self.zeros.push(port.to_string());
            }
            return value(port);
        }
        match port {
            // A guided program's labels are the images' and then the null class.
            "labels" => Source::Labels { null_class: self.shape.cfg.then_some(self.shape.spec.classes) },
            "levels" => Source::Table(Table::Levels),
            "key_levels" => Source::Table(Table::KeyLevels),
            "temperature" => Source::Setting(Setting::Temperature),
            "top_k" => Source::Setting(Setting::TopK),
            "top_p" => Source::Setting(Setting::TopP),
            "rope_cos" => Source::Table(Table::RopeCos),
            "rope_sin" => Source::Table(Table::RopeSin),
            GUIDANCE_PORT => Source::Guidance,
            "uniform" => Source::Uniform { stream: "stage.{stage}".into() },
            "noise" => Source::Normal { stream: "stage.{stage}".into() },
            _ => panic!("lowering bug: no source for the port `{port}`"),
        }
    }

    /// One entry: `given` binds ports explicitly, the rest by convention.
    #[allow(clippy::too_many_arguments)]
    fn entry(
        &mut self,
        program: &str,
        stage: Count,
        tokens: u64,
        past: Count,
        given: Vec<(&str, Source)>,
        outputs: &[(&str, &str)],
        records: Vec<Record>,
    ) -> Entry {
        let g = graph(self.shape.graphs, program);
        let mut inputs = Vec::new();
        for n in g.g.node_weights() {
            let (port, state) = match &n.op {
                Op::Input { name } => (name.as_str(), false),
                Op::State { name } => (name.as_str(), true),
                _ => continue,
            };
            let source = match given.iter().find(|(p, _)| *p == port) {
                Some((_, s)) => s.clone(),
                None => self.standard(port, state),
            };
            inputs.push(Bind { port: port.to_string(), source });
        }
        let mut outs: Vec<(String, String)> = outputs.iter().map(|(o, v)| (o.to_string(), v.to_string())).collect();
        // State updated in place flows on under its own name.
        for (o, _) in &g.outputs {
            if g.is_update(o) && !outs.iter().any(|(x, _)| x == o) {
                outs.push((o.clone(), o.clone()));
            }
        }
        Entry { program: program.into(), stage, tokens, past, inputs, outputs: outs, records }
    }

    fn plan(self, name: &str, stages: u64, inputs: Vec<PlanInput>, items: Vec<Item>, results: &[(&str, &str)]) -> Plan {
        Plan {
            name: name.into(),
            stages,
            inputs,
            zeros: self.zeros,
            items,
            results: results.iter().map(|(r, v)| (r.to_string(), v.to_string())).collect(),
        }
    }
}

fn input_ty(g: &Graph, port: &str) -> Option<TensorType> {
    g.g.node_weights().find(|n| matches!(&n.op, Op::Input { name } if name == port)).map(|n| n.ty.clone())
}

fn output_ty(g: &Graph, name: &str) -> Option<TensorType> {
    g.outputs.iter().find(|(o, _)| o == name).map(|(_, n)| g.g[*n].ty.clone())
}

/// `ty` with `T` bound to `tokens` and `P` to 0: a plan input's type, which
/// only the number of images leaves open. Dims are affine in `B` here.
fn at_tokens(ty: &TensorType, tokens: u64) -> TensorType {
    let shape = ty
        .shape
        .iter()
        .map(|d| {
            let (one, two) = (d.eval(&Bindings::new(1, tokens, 0)), d.eval(&Bindings::new(2, tokens, 0)));
            let per = two - one;
            Dim::sym(Sym::B).mul_c(per).add(&Dim::c(one - per))
        })
        .collect();
    TensorType { dtype: ty.dtype, shape }
}

fn labels_input() -> PlanInput {
    PlanInput {
        name: "labels".into(),
        ty: TensorType::i64(vec![crate::ir::Dim::sym(crate::ir::Sym::B)]),
        default: None,
    }
}

/// The ports of a step program that carry the previous stage's result.
const BODY_INPUTS: [&str; 3] = ["tokens", "x", "latent"];

/// The tail of a sample: decode what generation left in `value`. `what` is
/// the decoder's input kind: `codes` from token indices, the latent from
/// token rows, or the value as the decoder takes it.
fn decode_tail(b: &mut Builder, finish: u64, from: &str, kind: &str) -> Vec<Item> {
    let mut items = Vec::new();
    let at = Count::at(finish);
    // Token indices become codes, token rows a latent map, through one glue program.
    let convert = match kind {
        "tokens" => Some(("codes.from_tokens", "tokens", "codes", Some("latent.tokens"))),
        "x" => Some(("latent.from_tokens", "x", "latent", None)),
        _ => None,
    };
    let (port, val) = match convert {
        Some((program, input, output, kept)) => {
            let records = kept.map(|name| keep(&format!("in:{input}"), name, Keep::Stages)).into_iter().collect();
            let given = vec![(input, value(from))];
            items.push(Item::Run(b.entry(program, at, 0, Count::at(0), given, &[(output, output)], records)));
            (output, output)
        }
        None => (kind, from),
    };
    let mut records = vec![keep(&format!("in:{port}"), &format!("latent.{port}"), Keep::Stages)];
    if kind == "latent" {
        // A denoiser's final latent is also its one stage's result.
        records.push(keep("in:latent", "stage.0.x", Keep::Stages));
    }
    items.push(Item::Run(b.entry(
        "decode",
        at,
        0,
        Count::at(0),
        vec![(port, value(val))],
        &[("image", "image")],
        records,
    )));
    items
}

/// The decoder's input kind of this model's sample: `tokens` (indices),
/// `codes`, `f_hat`, or token rows `x` of a latent / a `latent` map.
fn decoder_input(s: &Shape) -> Option<&'static str> {
    let dec = s.graphs.iter().find(|g| g.name == "decode")?;
    ["codes", "f_hat", "latent"].into_iter().find(|p| input_ty(dec, p).is_some())
}

/// `body` `times` times: a repeat, or the entries themselves when once.
fn repeat(times: u64, body: Vec<Entry>) -> Item {
    match (times, &body[..]) {
        (1, [_]) => Item::Run(body.into_iter().next().expect("one entry")),
        _ => Item::Repeat { times, body },
    }
}

/// One flow head's ODE over stage `k`: `x` integrated over the stage's segment.
fn flow_items(b: &mut Builder, k: usize, st: &StageSpec, heun: bool) -> Vec<Item> {
    let [t0, t1] = st.segment.unwrap_or([1.0, 0.0]);
    let steps = st.steps.max(1);
    let dt = (t1 - t0) / steps as f64;
    let at = |j: f64| Series((0..steps).map(|i| (t0 + dt * (i as f64 + j)) * TIME_SCALE).collect());
    let stage = Count::at(k as u64);
    let head = |b: &mut Builder, x: &str, t: Series, out: &str| {
        b.entry(
            "head.step",
            stage,
            st.tokens,
            Count::at(0),
            vec![("z", value("z")), ("x", value(x)), ("t", Source::Scalar(t)), ("dt", Source::Scalar(Series::one(dt)))],
            &[("x", out)],
            vec![],
        )
    };
    let body = if heun {
        vec![
            head(b, "x", at(0.0), "x1"),
            head(b, "x1", at(1.0), "x2"),
            b.entry(
                "heun.mean",
                stage,
                st.tokens,
                Count::at(0),
                vec![("a", value("x")), ("b", value("x2"))],
                &[("x", "x")],
                vec![],
            ),
        ]
    } else {
        vec![head(b, "x", at(0.0), "x")]
    };
    vec![Item::Repeat { times: steps, body }]
}

/// A denoiser backbone's solver loop over stage `k` (DiT: its one stage).
fn denoise_items(b: &mut Builder, k: usize, st: &StageSpec, step: &str) -> Vec<Item> {
    let sm = &b.shape.spec.sampler;
    let stage = Count::at(k as u64);
    let net = |b: &mut Builder, x: &str, t: Series, out: &str| {
        b.entry(
            step,
            stage,
            st.tokens,
            Count::at(0),
            vec![("latent", value(x)), ("t", Source::Scalar(t))],
            &[("out", out)],
            vec![],
        )
    };
    let solver =
        |b: &mut Builder, out: &str, x: &str, scalars: Vec<(&str, Series)>, noise: Option<Source>, to: &str| {
            let mut given: Vec<(&str, Source)> = vec![("out", value(out)), ("x", value(x))];
            given.extend(scalars.into_iter().map(|(n, s)| (n, Source::Scalar(s))));
            if let Some(n) = noise {
                given.push(("noise", n));
            }
            b.entry("solver.step", stage, 0, Count::at(0), given, &[("x", to)], vec![])
        };
    match sm.solver {
        Solver::Ddpm | Solver::Ddim => {
            let ddim = sm.solver == Solver::Ddim;
            let coefs = diffusion::schedule(sm.beta, sm.train_steps, st.steps);
            let mut items = Vec::new();
            // Runs of steps that add noise (DDPM but its last step) or not.
            let mut i = 0;
            while i < coefs.len() {
                let noisy = coefs[i].add_noise && !ddim;
                let mut j = i;
                while j < coefs.len() && (coefs[j].add_noise && !ddim) == noisy {
                    j += 1;
                }
                let part = &coefs[i..j];
                let s = |f: &dyn Fn(&diffusion::StepCoefficients) -> f64| Series(part.iter().map(f).collect());
                let (c1, c2) = if ddim {
                    (s(&|c| c.ddim_coef1), s(&|c| c.ddim_coef2))
                } else {
                    (s(&|c| c.posterior_coef1), s(&|c| c.posterior_coef2))
                };
                let scalars = vec![
                    ("sqrt_recip_abar", s(&|c| c.sqrt_recip_abar)),
                    ("sqrt_recipm1_abar", s(&|c| c.sqrt_recipm1_abar)),
                    ("posterior_coef1", c1),
                    ("posterior_coef2", c2),
                    ("log_beta", s(&|c| c.log_beta)),
                    ("log_posterior_var", s(&|c| c.log_posterior_var)),
                    ("sigma", if ddim { Series(vec![0.0; part.len()]) } else { s(&|c| c.sigma) }),
                ];
                let noise = if noisy { Source::Normal { stream: "stage.{stage}".into() } } else { Source::Zeros };
                let body =
                    vec![net(b, "x", s(&|c| c.timestep), "out"), solver(b, "out", "x", scalars, Some(noise), "x")];
                items.push(repeat(part.len() as u64, body));
                i = j;
            }
            items
        }
        Solver::Euler | Solver::Heun => {
            let [t0, t1] = st.segment.unwrap_or([1.0, 0.0]);
            let steps = st.steps.max(1);
            let dt = (t1 - t0) / steps as f64;
            let at = |j: f64| Series((0..steps).map(|i| (t0 + dt * (i as f64 + j)) * TIME_SCALE).collect());
            let dts = || vec![("dt", Series::one(dt))];
            let body = if sm.solver == Solver::Heun {
                vec![
                    net(b, "x", at(0.0), "out"),
                    solver(b, "out", "x", dts(), None, "x1"),
                    net(b, "x1", at(1.0), "out"),
                    solver(b, "out", "x1", dts(), None, "x2"),
                    b.entry(
                        "heun.mean",
                        stage,
                        0,
                        Count::at(0),
                        vec![("a", value("x")), ("b", value("x2"))],
                        &[("x", "x")],
                        vec![],
                    ),
                ]
            } else {
                vec![net(b, "x", at(0.0), "out"), solver(b, "out", "x", dts(), None, "x")]
            };
            vec![Item::Repeat { times: steps, body }]
        }
    }
}

/// The plan of one sample (`pairs`: Distilled Decoding's training pairs from
/// a teacher whose steps choose tokens by the flow map instead).
pub(super) fn sample(s: &Shape, pairs: bool) -> Plan {
    let spec = s.spec;
    let mut b = Builder::new(s);
    let stages = spec.schedule.stages();
    let n = stages.len();
    let heun = spec.sampler.solver == Solver::Heun;
    let flow = b.has("head.step");
    let denoiser = b.has("solver.step");
    let raster = matches!(spec.schedule.layout, Layout::Raster { .. });
    let decoder = decoder_input(s);
    // A raster model decodes (or pairs) every token: they are appended as they come.
    let keep_all = pairs || (raster && decoder == Some("codes"));
    let mut inputs = vec![labels_input()];
    let mut items = Vec::new();

    // Flow heads and denoisers start from noise (the caller may give it).
    if flow || denoiser {
        let step = if denoiser { "solver.step" } else { "head.step" };
        let ty = input_ty(graph(s.graphs, step), "x").expect("a solver reads x");
        let ty = at_tokens(&ty, stages.first().map_or(0, |st| st.tokens));
        inputs.push(PlanInput { name: "x".into(), ty, default: Some(Source::Normal { stream: "stage.0".into() }) });
    }

    let mut past = 0u64;
    let mut k = 0usize;
    while k < n {
        let st = &stages[k];
        let program = if k == 0 && s.has_first { "step.first" } else { "step.next" };
        if denoiser {
            items.extend(denoise_items(&mut b, k, st, program));
            past += st.tokens;
            k += 1;
            continue;
        }
        // A run of alike stages (raster decoding) is one repeat.
        let alike =
            |j: usize| program == "step.next" && !flow && s.transitions[j].is_none() && stages[j].tokens == st.tokens;
        let mut m = k + 1;
        if alike(k) {
            while m < n && alike(m) {
                m += 1;
            }
        }
        let times = (m - k) as u64;
        let stage = Count::every(k as u64, u64::from(times > 1));
        let past_c = Count::every(past, if times > 1 { st.tokens } else { 0 });
        let g = graph(s.graphs, program);
        let mut given: Vec<(&str, Source)> = Vec::new();
        let mut records = Vec::new();
        for p in BODY_INPUTS {
            if input_ty(g, p).is_some() {
                given.push((p, value(p)));
                records.push(keep(&format!("in:{p}"), &format!("stage.{{stage}}.input.{p}"), Keep::Debug));
            }
        }
        let mut outputs: Vec<(&str, &str)> = Vec::new();
        if output_ty(g, "tokens").is_some() {
            outputs.push(("tokens", "tokens"));
            if keep_all && k == 0 {
                outputs.push(("tokens", "tokens_all"));
            }
            records.push(keep("out:tokens", "stage.{stage}.tokens", Keep::Stages));
        }
        if output_ty(g, "noise").is_some() {
            outputs.push(("noise", if k == 0 { "noise_all" } else { "noise" }));
            records.push(keep("out:noise", "stage.{stage}.noise", Keep::Stages));
        }
        for o in ["logits", "z"] {
            if output_ty(g, o).is_some() {
                if o == "z" {
                    outputs.push(("z", "z"));
                }
                records.push(keep(&format!("out:{o}"), &format!("stage.{{stage}}.{o}"), Keep::Debug));
            }
        }
        let mut body = vec![b.entry(program, stage, st.tokens, past_c, given, &outputs, records)];
        if keep_all && k > 0 {
            for (what, v) in [("tokens", "tokens"), ("noise", "noise")] {
                if pairs || what == "tokens" {
                    let app = format!("append.{what}");
                    let all = format!("{what}_all");
                    body.push(b.entry(
                        &app,
                        stage,
                        st.tokens,
                        past_c,
                        vec![("all", value(&all)), ("new", value(v))],
                        &[("all", &all)],
                        vec![],
                    ));
                }
            }
        }
        if times > 1 {
            items.push(Item::Repeat { times, body });
        } else {
            items.extend(body.into_iter().map(Item::Run));
        }
        if flow {
            items.extend(flow_items(&mut b, k, st, heun));
        }
        if let Some(t) = &s.transitions[k] {
            let tg = graph(s.graphs, t);
            let mut given: Vec<(&str, Source)> = Vec::new();
            let mut records = Vec::new();
            for p in ["tokens", "x"] {
                if input_ty(tg, p).is_some() {
                    given.push((p, value(p)));
                }
            }
            if flow {
                records.push(keep("in:x", &format!("stage.{k}.x"), Keep::Stages));
            }
            let mut outputs = vec![];
            for o in ["f_hat", "x"] {
                if output_ty(tg, o).is_some() {
                    outputs.push((o, o));
                }
            }
            items.push(Item::Run(b.entry(t, Count::at(k as u64), st.tokens, Count::at(0), given, &outputs, records)));
        }
        past += times * st.tokens;
        k = m;
    }

    if pairs {
        return b.plan("pairs", n as u64, inputs, items, &[("noise", "noise_all"), ("tokens", "tokens_all")]);
    }
    let finish = n as u64;
    match decoder {
        Some("codes") if keep_all => items.extend(decode_tail(&mut b, finish, "tokens_all", "tokens")),
        Some("f_hat") => items.extend(decode_tail(&mut b, finish, "f_hat", "f_hat")),
        Some("latent") if denoiser => items.extend(decode_tail(&mut b, finish, "x", "latent")),
        Some("latent") => {
            let mut tail = decode_tail(&mut b, finish, "x", "x");
            if let Some(Item::Run(e)) = tail.first_mut() {
                e.records.push(keep("in:x", &format!("stage.{}.x", n - 1), Keep::Stages));
            }
            items.extend(tail);
        }
        _ => {}
    }
    let results: &[(&str, &str)] = if decoder.is_some() { &[("image", "image")] } else { &[] };
    b.plan("sample", n as u64, inputs, items, results)
}

/// Distilled Decoding's sample: one forward per step from noise, the final
/// sequence after each, then (multi-scale tokenizers) the accumulation of
/// the codes scale by scale, and the decoder.
pub(super) fn distilled_sample(s: &Shape, steps: &[u64]) -> Plan {
    let spec = s.spec;
    let n = spec.schedule.stages().len() as u64;
    let mut b = Builder::new(s);
    let fwd = graph(s.graphs, "forward");
    let x_ty = input_ty(fwd, "x").expect("a DD forward reads x");
    let inputs = vec![
        labels_input(),
        PlanInput { name: "noise".into(), ty: x_ty, default: Some(Source::Normal { stream: "dd.noise".into() }) },
    ];
    let mut items = Vec::new();
    for (i, &t) in steps.iter().enumerate() {
        let x_in = if i == 0 {
            "noise".to_string()
        } else {
            items.push(Item::Run(b.entry(
                &format!("dd.renoise.{i}"),
                Count::at(0),
                0,
                Count::at(0),
                vec![("x", value("x")), ("noise", value("noise"))],
                &[("x", "x_in")],
                vec![],
            )));
            "x_in".to_string()
        };
        items.push(Item::Run(b.entry(
            "forward",
            Count::at(0),
            s.forward_positions,
            Count::at(0),
            vec![
                ("labels", Source::Labels { null_class: None }),
                ("x", value(&x_in)),
                ("nd", Source::Table(Table::NoiseData(DataLen::Stages(t)))),
            ],
            &[("logits", "logits"), ("x_out", "x_out")],
            vec![],
        )));
        items.push(Item::Run(b.entry(
            &format!("dd.final.{i}"),
            Count::at(0),
            0,
            Count::at(0),
            vec![("x_in", value(&x_in)), ("logits", value("logits")), ("x_out", value("x_out"))],
            &[("x", "x")],
            vec![keep("out:x", &format!("step.{i}.x"), Keep::Stages)],
        )));
    }
    match decoder_input(s) {
        Some("f_hat") => {
            let scales: Vec<(usize, &String)> =
                s.transitions.iter().enumerate().filter_map(|(k, t)| t.as_ref().map(|t| (k, t))).collect();
            let names: Vec<String> = scales.iter().map(|(k, _)| format!("stage.{k}.codes")).collect();
            let outs: Vec<(&str, &str)> = names.iter().map(|v| (v.as_str(), v.as_str())).collect();
            items.push(Item::Run(b.entry(
                "split.codes",
                Count::at(0),
                0,
                Count::at(0),
                vec![("codes", value("x"))],
                &outs,
                vec![],
            )));
            for ((k, t), v) in scales.iter().zip(&names) {
                let tokens = spec.schedule.stages()[*k].tokens;
                let at = Count::at(*k as u64);
                let e = b.entry(t, at, tokens, Count::at(0), vec![("codes", value(v))], &[("f_hat", "f_hat")], vec![]);
                items.push(Item::Run(e));
            }
            items.extend(decode_tail(&mut b, n, "f_hat", "f_hat"));
        }
        Some("codes") => items.extend(decode_tail(&mut b, n, "x", "codes")),
        _ => {}
    }
    let results: &[(&str, &str)] = if decoder_input(s).is_some() { &[("image", "image")] } else { &[] };
    b.plan("sample", n, inputs, items, results)
}

/// The teacher-forced forward with the reference code's inputs and outputs
/// (`forward`), and a denoiser's guided one (`forward.guided`).
pub(super) fn forwards(s: &Shape) -> Vec<Plan> {
    let mut plans = Vec::new();
    let distilled = s.spec.distill.is_some();
    for (name, program) in [("forward", "forward"), ("forward.guided", "forward.guided")] {
        let Some(g) = s.graphs.iter().find(|g| g.name == program) else { continue };
        let mut b = Builder::new(s);
        let mut inputs = Vec::new();
        let mut given: Vec<(&str, Source)> = Vec::new();
        for n in g.g.node_weights() {
            let Op::Input { name: port } = &n.op else { continue };
            let standard = ["levels", "key_levels", "rope_cos", "rope_sin"].contains(&port.as_str());
            if standard {
                continue;
            }
            if port == "nd" {
                given.push(("nd", Source::Table(Table::NoiseData(DataLen::Given("t".into())))));
                inputs.push(PlanInput { name: "t".into(), ty: TensorType::i64(vec![]), default: None });
                continue;
            }
            given.push((port.as_str(), value(port)));
            inputs.push(PlanInput { name: port.clone(), ty: n.ty.clone(), default: None });
        }
        // Labels first, then the inputs in the program's order.
        inputs.sort_by_key(|i| i.name != "labels");
        let outs: Vec<String> = g.outputs.iter().map(|(o, _)| o.clone()).filter(|o| !g.is_update(o)).collect();
        let out_pairs: Vec<(&str, &str)> = outs.iter().map(|o| (o.as_str(), o.as_str())).collect();
        let mut items = vec![Item::Run(b.entry(
            program,
            Count::at(0),
            s.forward_positions,
            Count::at(0),
            given,
            &out_pairs,
            vec![],
        ))];
        let mut results: Vec<(String, String)> = outs.iter().map(|o| (o.clone(), o.clone())).collect();
        if distilled && program == "forward" {
            items.push(Item::Run(b.entry(
                "dd.drop_start",
                Count::at(0),
                0,
                Count::at(0),
                vec![("logits", value("logits")), ("x_out", value("x_out"))],
                &[("logits", "token_logits"), ("x_out", "token_x_out")],
                vec![],
            )));
            results = vec![("logits".into(), "token_logits".into()), ("x_out".into(), "token_x_out".into())];
        }
        let refs: Vec<(&str, &str)> = results.iter().map(|(a, v)| (a.as_str(), v.as_str())).collect();
        plans.push(b.plan(name, 0, inputs, items, &refs));
    }
    plans
}

/// The decode plans: from the decoder's own input, and from what a sample
/// saves (token indices, every scale's tokens, a distilled model's codes).
pub(super) fn decodes(s: &Shape) -> Vec<Plan> {
    let mut plans = Vec::new();
    let Some(kind) = decoder_input(s) else { return plans };
    let dec = graph(s.graphs, "decode");
    let spec = s.spec;
    {
        let mut b = Builder::new(s);
        let ty = input_ty(dec, kind).expect("the decoder's input");
        let items = vec![Item::Run(b.entry(
            "decode",
            Count::at(0),
            0,
            Count::at(0),
            vec![(kind, value(kind))],
            &[("image", "image")],
            vec![],
        ))];
        plans.push(b.plan(
            "decode",
            0,
            vec![PlanInput { name: kind.into(), ty, default: None }],
            items,
            &[("image", "image")],
        ));
    }
    if kind == "codes" && s.graphs.iter().any(|g| g.name == "codes.from_tokens") {
        let mut b = Builder::new(s);
        let ty = input_ty(graph(s.graphs, "codes.from_tokens"), "tokens").expect("tokens");
        let items = decode_tail(&mut b, 0, "tokens", "tokens");
        plans.push(b.plan(
            "decode.tokens",
            0,
            vec![PlanInput { name: "tokens".into(), ty, default: None }],
            items,
            &[("image", "image")],
        ));
    }
    if kind == "f_hat" {
        // Every scale through its transition, from per-stage values or from one split sequence.
        let what = if spec.distill.is_some() { "codes" } else { "tokens" };
        let split = format!("split.{what}");
        // A distilled model saves only whole sequences.
        let forms: &[bool] = if spec.distill.is_some() { &[true] } else { &[false, true] };
        for &whole in forms {
            let mut b = Builder::new(s);
            let mut items = Vec::new();
            let mut inputs = Vec::new();
            let scales: Vec<(usize, &String)> =
                s.transitions.iter().enumerate().filter_map(|(k, t)| t.as_ref().map(|t| (k, t))).collect();
            let names: Vec<String> = scales.iter().map(|(k, _)| format!("stage.{k}.{what}")).collect();
            if whole {
                let ty = input_ty(graph(s.graphs, &split), what).expect("the split's input");
                inputs.push(PlanInput { name: what.into(), ty, default: None });
                let outs: Vec<(&str, &str)> = names.iter().map(|v| (v.as_str(), v.as_str())).collect();
                items.push(Item::Run(b.entry(
                    &split,
                    Count::at(0),
                    0,
                    Count::at(0),
                    vec![(what, value(what))],
                    &outs,
                    vec![],
                )));
            }
            for ((_, t), v) in scales.iter().zip(&names) {
                let ty = input_ty(graph(s.graphs, t), what).expect("a transition's input");
                let tokens = ty.shape[1].as_const().unwrap_or(0);
                if !whole {
                    inputs.push(PlanInput { name: v.clone(), ty, default: None });
                }
                let e = b.entry(
                    t,
                    Count::at(0),
                    tokens,
                    Count::at(0),
                    vec![(what, value(v))],
                    &[("f_hat", "f_hat")],
                    vec![],
                );
                items.push(Item::Run(e));
            }
            items.extend(decode_tail(&mut b, 0, "f_hat", "f_hat"));
            let name = if whole { format!("decode.{what}") } else { "decode.stages".to_string() };
            plans.push(b.plan(&name, 0, inputs, items, &[("image", "image")]));
        }
    }
    plans
}
