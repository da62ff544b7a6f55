//! Assembling a model's formula: its symbols and derived values, its declared
//! tensors (cross-checked against the spec), then the forward's and the sample's MACs.

use super::decls::Index;
use super::groups::SymbolicGroups;
use super::macs::{c, Macs, P, T};
use super::schedule::{aggregate, schedule_values, SCHEDULE_SYMBOLS};
use super::symbolic::{Link, SymbolicEvaluator};
use super::{Formula, Poly};
use crate::check::{channels_name, derived_values, group_flags};
use crate::lower::backbone::{first_seq, forward_seq, seq_start, Seq, SeqStart};
use crate::lower::params::ParamScope;
use crate::lower::{backbone_per_solver_step, forward_feeds_every_token};
use crate::spec::*;
use ecarc_grammar::merged::{MBody, MValue};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

fn component<'a>(body: &'a MBody, key: &str) -> Option<&'a MBody> {
    match body.field(key).map(|f| &f.value) {
        Some(MValue::Component(c)) => Some(&c.body),
        _ => None,
    }
}

pub(super) fn build(spec: &ModelSpec, body: &MBody) -> Result<(Formula, BTreeMap<String, i128>), String> {
    let bb_body = component(body, "backbone").ok_or("the model has no backbone")?;
    let block_body = component(bb_body, "block").ok_or("the backbone has no block")?;
    let head_body = component(body, "head").ok_or("the model has no head")?;
    let tok_body = component(body, "tokenizer").ok_or("the model has no tokenizer")?;
    let distill_body = component(body, "distill");
    let model: Link = (body, "");
    let bb: [Link; 2] = [(bb_body, "backbone"), model];
    let block: [Link; 3] = [(block_body, "backbone.block"), bb[0], model];
    let head: [Link; 2] = [(head_body, "head"), model];
    let tok: [Link; 2] = [(tok_body, "tokenizer"), model];

    // The checker's numeric derived values (for leaves of non-polynomial text).
    let (b, t) = (&spec.backbone, &spec.tokenizer);
    let derived_num = derived_values(spec.classes, t, b, &spec.schedule);
    let channels = channels_name(t);

    let sym = SymbolicEvaluator {
        derived: BTreeMap::new(),
        derived_num,
        values: RefCell::new(BTreeMap::new()),
        locals: RefCell::new(Vec::new()),
    };
    let width = sym.own_field("width", &bb, None)?;
    let heads = sym.own_field("heads", &bb, None)?;
    let depth = sym.own_field("depth", &bb, None)?;
    let patch = sym.own_field("patch", &bb, Some(1))?;
    let time_embed = sym.own_field("time_embed", &bb, Some(256))?;

    // Derived values, symbolically.
    let mut derived: BTreeMap<String, Poly> = BTreeMap::new();
    let leaf = |name: &str, v: u64| sym.leaf(name, v as i128);
    derived.insert("cond_dim".into(), width.clone());
    derived
        .insert("patch".into(), if bb_body.field("patch").is_some() { patch.clone() } else { leaf("patch", b.patch)? });
    derived.insert(
        "time_embed".into(),
        if bb_body.field("time_embed").is_some() { time_embed.clone() } else { leaf("time_embed", b.time_embed)? },
    );
    derived.insert(
        "head_dim".into(),
        match width.div_exact(&heads) {
            Some(q) => q,
            None => leaf("head_dim", b.head_dim)?,
        },
    );
    let ffn_hidden = match (block_body.field("ffn_hidden"), b.block.ffn) {
        (Some(f), _) => sym.field_value("ffn_hidden", &f.value, "backbone.block", &block, 0)?,
        (None, FfnKind::Gelu | FfnKind::GeluTanh)
            if b.block.mlp_ratio.fract() == 0.0 && b.block.mlp_ratio.abs() < 1e9 =>
        {
            width.scale(b.block.mlp_ratio as i128)
        }
        _ => leaf("ffn_hidden", b.block.ffn_hidden)?,
    };
    derived.insert("ffn_hidden".into(), ffn_hidden);
    derived.insert("classes".into(), sym.name("classes", &[model], 0)?);
    for (k, v) in [
        ("tokens", spec.schedule.total_tokens()),
        ("stages", spec.schedule.num_stages()),
        ("grid", spec.schedule.final_grid()[0]),
        ("levels", t.ch_mult.len() as u64),
        (channels, t.token_channels),
    ] {
        derived.insert(k.into(), leaf(k, v)?);
    }
    derived.insert("token_channels".into(), Poly::var(channels));
    if let Some(v) = t.vocab {
        derived.insert("vocab".into(), leaf("vocab", v)?);
    }
    let sym = SymbolicEvaluator { derived, ..sym };
    for (p, v, what) in [(&width, b.width, "width"), (&depth, b.depth, "depth"), (&patch, b.patch, "patch")] {
        if sym.value(p)? != v as i128 {
            return Err(format!("backbone {what}: formula gives {}, the spec {v}", sym.value(p)?));
        }
    }

    // ---- declared tensors, in the checker's (and ParamIndex's) order
    let groups = SymbolicGroups { sym: &sym, flags: group_flags(spec.distill.is_some()) };
    let distill_chain: Option<[Link; 2]> = distill_body.map(|d| [(d, "distill"), model]);
    let model_chain = [model];
    let mut chains: Vec<(&[Link], &'static str)> =
        vec![(&model_chain, "model"), (&bb, "backbone"), (&block, "backbone.block"), (&head, "head")];
    if let Some(dc) = &distill_chain {
        chains.push((dc, "distill"));
    }
    let (mut params, mut buffers) = (Vec::new(), Vec::new());
    for (chain, owner) in &chains {
        let (p, b) = groups.of(chain, owner, false)?;
        params.extend(p);
        buffers.extend(b);
    }
    let (tok_params, tok_buffers) = groups.of(&tok, "tokenizer", true)?;
    buffers.extend(tok_buffers);

    // Cross-check every generator tensor against the spec: the same (role,
    // shape) copies, counted as a multiset (expanded groups are listed per copy).
    let mut want: BTreeMap<(&str, Vec<i128>), i128> = BTreeMap::new();
    for g in &spec.params {
        let n = g.repeat.as_ref().map_or(1, |r| r.count) as i128;
        for t in &g.tensors {
            *want.entry((t.role.as_str(), t.shape.iter().map(|&v| v as i128).collect())).or_default() += n;
        }
    }
    let mut got: BTreeMap<(&str, Vec<i128>), i128> = BTreeMap::new();
    let mut params_poly = Poly::zero();
    for d in &params {
        let dims: Vec<i128> = d.shape.iter().map(|p| sym.value(p)).collect::<Result<_, _>>()?;
        *got.entry((d.role.as_str(), dims)).or_default() += sym.value(&d.copies())?;
        params_poly = params_poly.add(&d.copies().mul(&d.numel()));
    }
    if got != want {
        let diff: Vec<String> = got
            .iter()
            .filter(|(k, v)| want.get(*k) != Some(*v))
            .map(|((r, s), n)| format!("{n} x `{r}` {s:?}"))
            .chain(
                want.iter()
                    .filter(|(k, _)| !got.contains_key(*k))
                    .map(|((r, s), n)| format!("spec: {n} x `{r}` {s:?}")),
            )
            .collect();
        return Err(format!("declared tensors differ from the spec: {}", diff.join(", ")));
    }
    let idx = Index::new(params.into_iter().chain(buffers).chain(tok_params).collect());

    // ---- MACs
    let flow = matches!(spec.head.kind, HeadKind::FlowMlp | HeadKind::FlowTransformer);
    let (head_depth, head_width) = if flow {
        (sym.own_field("depth", &head, None)?, sym.own_field("width", &head, None)?)
    } else {
        (Poly::zero(), Poly::zero())
    };
    let g = spec.schedule.final_grid();
    let grid = Poly::var("grid");
    let area = if g[0] == g[1] { grid.mul(&grid) } else { grid.mul(&sym.leaf("grid_w", g[1] as i128)?) };
    let m = Macs { spec, idx: &idx, sym: &sym, depth, width, head_depth, head_width, area };

    // The start token(s), as the lowering's `prefix_len` counts them.
    let prefix = match seq_start(spec, idx.has(ParamScope::Backbone, "pos_start", None)) {
        SeqStart::ClassTokens => sym.own_field("cond_tokens", &bb, Some(1))?,
        SeqStart::StartPosition => c(1),
        SeqStart::Nothing => c(0),
    };
    let prefix_n = sym.value(&prefix)?;
    let prefix_n = u64::try_from(prefix_n).map_err(|_| format!("{prefix_n} start tokens"))?;
    let one = c(1);

    // Teacher-forced forward: batch 1, nothing cached. A teacher feeds every
    // token but the last (the start token(s) predict the first stage); a DD
    // forward on a raster schedule feeds every token after the start token(s).
    let tokens = Poly::var("tokens");
    let body_n = if forward_feeds_every_token(spec) { tokens.clone() } else { tokens.sub(&prefix) };
    let positions = body_n.add(&prefix);
    let fwd_seq = forward_seq(prefix_n, body_n);
    let forward = m.backbone(&fwd_seq, &one, &positions, &Poly::zero())?.add(&m.step_head(&one, &positions)?);

    let sample = if let Some(d) = &spec.distill {
        // Each DD step is one forward over every position, without guidance.
        let steps = match &distill_chain {
            Some(dc) => sym.own_field("steps", dc, Some(1))?,
            None => c(d.steps as i128),
        };
        steps.mul(&forward).add(&m.transitions()?)
    } else {
        let cfg = crate::lower::uses_cfg(spec);
        let bt = c(if cfg { 2 } else { 1 });
        let per_step = backbone_per_solver_step(spec);
        // Network evaluations per solver step (Heun evaluates twice); the
        // solver's own update is elementwise (no MACs).
        let evals = c(if spec.sampler.solver == Solver::Heun { 2 } else { 1 });
        let stages = spec.schedule.stages();
        let first_tokens = stages.first().map_or(0, |s| s.tokens);
        let (t, p) = (Poly::var(T), Poly::var(P));
        // Every backbone run as `step.next` ...
        let next = m.backbone(&Seq::Body, &bt, &t, &p)?.add(&m.step_head(&bt, &t)?);
        let mut sample = aggregate(&next, per_step)?;
        if per_step {
            sample = sample.mul(&evals);
        }
        // ... corrected for the first stage's `step.first` program.
        let first_seq = first_seq(prefix_n, first_tokens, || t.sub(&prefix));
        if let Some(seq) = &first_seq {
            let zero = Poly::zero();
            let mut diff = m.backbone(seq, &bt, &t, &zero)?.sub(&m.backbone(&Seq::Body, &bt, &t, &zero)?);
            if matches!(seq, Seq::Prefix) {
                // Only when the first stage holds exactly the start tokens.
                diff = diff.substitute(T, &prefix);
            } else {
                diff = diff.substitute(T, &Poly::var("t_first"));
            }
            let runs_first = if per_step { evals.mul(&Poly::var("steps_first")) } else { c(1) };
            sample = sample.add(&runs_first.mul(&diff));
        }
        if flow {
            sample = sample.add(&evals.mul(&aggregate(&m.flow_step(&bt, &t)?, true)?));
        }
        sample.add(&m.transitions()?)
    };

    // Values of the schedule symbols.
    let sv = schedule_values(&spec.schedule);
    let used: BTreeSet<String> = [&params_poly, &forward, &sample].iter().flat_map(|p| p.symbols()).collect();
    for (name, v) in SCHEDULE_SYMBOLS.iter().zip(sv) {
        if used.contains(*name) {
            sym.leaf(name, v)?;
        }
    }
    let values = sym.values.borrow().clone();
    for s in &used {
        if !values.contains_key(s) {
            return Err(format!("symbol `{s}` has no value"));
        }
    }
    let values: BTreeMap<String, i128> = values.into_iter().filter(|(k, _)| used.contains(k)).collect();
    let f = Formula {
        params: params_poly,
        forward_macs: forward,
        sample_macs: sample,
        symbols: used.into_iter().collect(),
    };
    if f.params.eval_map(&values)? != spec.param_count() as i128 {
        return Err(format!("params: formula gives {}, the spec {}", f.params.eval_map(&values)?, spec.param_count()));
    }
    Ok((f, values))
}
