//! Evaluating one design of a space: check it, cost it, test its constraints.
//!
//! **Checking.** Every design is checked by the checker's rules through
//! [`check_point`]: the same code as `ecarc check`, with the results of the
//! parts of the check whose inputs did not change reused (see
//! `crate::check::memo`). A worker keeps one body and changes in place only
//! the axes whose option differs from the previous design it visited.
//!
//! **Costing.** Parameters are the checker's exact count. Forward and sample
//! MACs come from the symbolic formulas (`crate::cost::formula`), built once
//! per *formula class* and evaluated per design (a slot vector, no lowering):
//!
//! - a formula is built from a design's checked spec and body; its symbols
//!   are leaves (literal fields named by their path, derived values, schedule
//!   aggregates, non-polynomial sub-expressions named by their text);
//! - an axis is *free* in a class when all its options are integer literals
//!   and its path is a symbol of the class's formula: its value is set in the
//!   slot. Derived values and schedule aggregates are set from each design's
//!   checked parts. Every other symbol is a constant of the class;
//! - the class of a design is the options of every axis that is not free,
//!   with a digest of what the formula's structure depends on (kinds, the
//!   start-token branch, CFG, solver, stage layout). A formula with a
//!   non-polynomial leaf makes every axis part of the class (its value could
//!   depend on any, the schedule's included).
//!   Axes under `schedule` and `sample` are never part of the class: the
//!   formulas read those components only through the checked spec (the
//!   schedule aggregates, set per design, and the digest);
//! - a cross-check on every design: the formula's parameter count must equal
//!   the checker's. A design where it does not is costed by building the
//!   formula at that design (counted in [`EvalStats::formula_rebuilds`]).
//!
//! Peak activation memory is not a formula: when a search needs it, each
//! design is lowered and costed through the IR (slow, exact).

use super::objective::{Constraint, Metric, Values};
use crate::check::check_model;
use crate::check::memo::{check_point, CheckedPoint, FxBuild, Memo};
use crate::cost::formula::{formula, Compiled, Formula, SCHEDULE_SYMBOLS};
use crate::space::{self, Axis};
use crate::spec::*;
use ecarc_grammar::ast::{ExprKind, Ident, Num};
use ecarc_grammar::merged::{MBody, MValue};
use ecarc_grammar::Diag;
use std::collections::HashMap;
use std::sync::Arc;

/// A search space: a model body with alternatives, expanded into axes.
#[derive(Clone, Debug)]
pub struct Space {
    pub name: Ident,
    /// The model's body with every axis at its first option (design 0).
    pub body: MBody,
    pub axes: Vec<Axis>,
    pub total: u128,
    /// Per axis: the integer value of each option, when every option is an integer literal.
    numeric: Vec<Option<Vec<i128>>>,
    /// What each owner's groups can name (for the memo's keys).
    names: crate::check::memo::OwnerNames,
    /// Per axis: whether it is under `schedule` or `sample`. The formulas never
    /// read those bodies: they see them through the checked spec only (the
    /// schedule aggregates, set per design, and the [`digest`]).
    via_spec: Vec<bool>,
}

impl Space {
    pub fn new(name: Ident, body: MBody, sources: &ecarc_grammar::SourceMap) -> Result<Space, Vec<Diag>> {
        let axes = space::axes(&body, sources)?;
        let total = space::size(&axes);
        let numeric = axes
            .iter()
            .map(|a| {
                a.options
                    .iter()
                    .map(|o| match o {
                        MValue::Expr(e) => match &e.kind {
                            ExprKind::Number { value: Num::Int(i), .. } => Some(*i as i128),
                            _ => None,
                        },
                        _ => None,
                    })
                    .collect::<Option<Vec<i128>>>()
            })
            .collect();
        // Which derived values each owner's groups can name, from the space's
        // body with every option (see `check::memo`).
        let names = Memo::names_for_space(&body);
        // The body with each axis at its first option: what workers clone and
        // change in place (a long range's options are not copied with it).
        let mut body = body;
        for a in &axes {
            space::apply(&mut body, a, 0);
        }
        let via_spec =
            axes.iter().map(|a| matches!(a.path[0].as_str(), "schedule" | "sample") && a.path.len() > 1).collect();
        Ok(Space { name, body, axes, total, numeric, via_spec, names })
    }

    /// `(axis path, option label)` of a design.
    pub fn assignment(&self, index: u128) -> Vec<(String, String)> {
        let choice = space::choice(&self.axes, index);
        self.axes.iter().zip(choice).map(|(a, c)| (a.path.join("."), a.labels[c as usize].clone())).collect()
    }

    /// The concrete body of a design.
    pub fn point(&self, index: u128) -> MBody {
        space::point(&self.body, &self.axes, index).0
    }
}

/// What one design gave.
#[derive(Clone, Debug)]
pub enum DesignOutcome {
    /// Checked, costed and within every constraint.
    Valid(Values),
    /// Checked and costed, but outside the constraints listed (indices into
    /// the design's constraints).
    Rejected(Values, Vec<Constraint>),
    /// Broken: the checker's (or the lowering's) errors.
    Invalid(Vec<Diag>),
}

/// How the designs were costed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvalStats {
    /// Formulas built (once per class).
    pub formulas_built: u64,
    /// Designs whose class formula disagreed with the checker's parameter
    /// count and were costed by a formula built at the design.
    pub formula_rebuilds: u64,
    /// Designs lowered through the IR (peak memory, or no formula possible).
    pub lowered: u64,
}

/// Formula classes kept at most (per level).
const MAX_CLASSES: usize = 4_096;

/// Where a derived symbol's value comes from.
#[derive(Clone, Copy, Debug)]
enum Derived {
    Patch,
    TimeEmbed,
    HeadDim,
    FfnHidden,
    Levels,
    TokenChannels,
    Vocab,
    Classes,
}

impl Derived {
    fn of(name: &str) -> Option<Derived> {
        Some(match name {
            "patch" => Derived::Patch,
            "time_embed" => Derived::TimeEmbed,
            "head_dim" => Derived::HeadDim,
            "ffn_hidden" => Derived::FfnHidden,
            "levels" => Derived::Levels,
            "latent_channels" | "code_dim" | "token_channels" => Derived::TokenChannels,
            "vocab" => Derived::Vocab,
            "classes" => Derived::Classes,
            _ => return None,
        })
    }
    fn value(self, p: &CheckedPoint) -> Option<i128> {
        Some(match self {
            Derived::Patch => p.backbone.patch as i128,
            Derived::TimeEmbed => p.backbone.time_embed as i128,
            Derived::HeadDim => p.backbone.head_dim as i128,
            Derived::FfnHidden => p.backbone.block.ffn_hidden as i128,
            Derived::Levels => p.tokenizer.ch_mult.len() as i128,
            Derived::TokenChannels => p.tokenizer.token_channels as i128,
            Derived::Vocab => p.tokenizer.vocab? as i128,
            Derived::Classes => p.classes as i128,
        })
    }
}

/// A formula ready for the designs of one class.
struct ClassFormula {
    compiled: Compiled,
    /// Slot values at the design it was built from.
    base: Vec<i128>,
    /// (axis, slot) of the free axes.
    free: Vec<(usize, usize)>,
    derived: Vec<(Derived, usize)>,
}

/// How designs of a class are costed.
enum Costing {
    Formula(Arc<ClassFormula>),
    /// No formula can be built for the class (a construct the formulas do
    /// not cover): lowered through the IR, design by design.
    Lowered,
}

/// Free axes of a group of classes (decided by the first formula built).
struct Level1 {
    /// `None`: every axis is part of the class (a non-polynomial leaf).
    free: Option<Vec<bool>>,
    classes: HashMap<Vec<u64>, Costing, FxBuild>,
}

/// Evaluates designs; one per worker thread.
pub(crate) struct Evaluator<'s> {
    space: &'s Space,
    memo: Memo,
    body: MBody,
    current: Vec<u32>,
    choice: Vec<u32>,
    classes: HashMap<Vec<u64>, Level1, FxBuild>,
    need_peak: bool,
    pub stats: EvalStats,
}

impl<'s> Evaluator<'s> {
    /// `need_peak`: compute peak activation memory (lowers every design).
    pub fn new(space: &'s Space, need_peak: bool) -> Evaluator<'s> {
        Evaluator {
            space,
            memo: Memo::with_names(&space.axes, space.names.clone()),
            body: space.body.clone(),
            current: vec![u32::MAX; space.axes.len()],
            choice: vec![0; space.axes.len()],
            classes: HashMap::default(),
            need_peak,
            stats: EvalStats::default(),
        }
    }

    pub(crate) fn memo_stats(&self) -> crate::check::memo::MemoStats {
        self.memo.stats()
    }

    /// Check and cost design `index`; test the model's constraints.
    pub(crate) fn eval(&mut self, index: u128) -> DesignOutcome {
        self.choice = space::choice(&self.space.axes, index);
        for (k, a) in self.space.axes.iter().enumerate() {
            if self.current[k] != self.choice[k] {
                space::apply(&mut self.body, a, self.choice[k] as usize);
                self.current[k] = self.choice[k];
            }
        }
        let point = match check_point(&self.space.name, &self.body, &self.choice, &self.memo) {
            Ok(p) => p,
            Err(diags) => return DesignOutcome::Invalid(diags.into_iter().filter(Diag::is_error).collect()),
        };
        let mut values = match self.cost(&point) {
            Ok(v) => v,
            Err(d) => return DesignOutcome::Invalid(vec![d]),
        };
        let mut failed = Vec::new();
        for c in &point.constraints {
            let c = match Constraint::from_spec(c) {
                Ok(c) => c,
                Err(e) => return DesignOutcome::Invalid(vec![Diag::error("E0440", e)]),
            };
            if values.get(c.metric).is_none() {
                match self.lowered(&point) {
                    Ok(peak) => values.set(Metric::PeakActivationBytes, peak),
                    Err(d) => return DesignOutcome::Invalid(vec![d]),
                }
            }
            let v = values.get(c.metric).expect("computed");
            if !c.holds(v) {
                failed.push(c);
            }
        }
        if failed.is_empty() {
            DesignOutcome::Valid(values)
        } else {
            DesignOutcome::Rejected(values, failed)
        }
    }

    /// The full spec of the current design (a fresh, unmemoised check).
    fn spec(&self) -> Result<ModelSpec, Diag> {
        check_model(&self.space.name, &self.body).map_err(|d| {
            d.into_iter()
                .find(Diag::is_error)
                .unwrap_or_else(|| Diag::error("E0699", "internal: the design checks in search but not on its own"))
        })
    }

    /// Peak activation bytes of the current design, through the IR.
    fn lowered(&mut self, _point: &CheckedPoint) -> Result<i128, Diag> {
        self.stats.lowered += 1;
        let spec = self.spec()?;
        let a = crate::artifact::compile(&spec, &crate::lower::SpecSpans::from_body(&self.body), vec![])?;
        Ok(a.report.peak_activation_bytes as i128)
    }

    fn cost(&mut self, p: &CheckedPoint) -> Result<Values, Diag> {
        let mut v = Values::default();
        v.set(Metric::Params, p.params as i128);
        v.set(Metric::Stages, p.schedule.num_stages() as i128);
        v.set(Metric::Tokens, p.schedule.total_tokens() as i128);
        let (fwd, sample) = self.macs(p)?;
        v.set(Metric::ForwardMacs, fwd);
        v.set(Metric::SampleMacs, sample);
        if self.need_peak {
            v.set(Metric::PeakActivationBytes, self.lowered(p)?);
        }
        Ok(v)
    }

    /// Forward and sample MACs of the current design.
    fn macs(&mut self, p: &CheckedPoint) -> Result<(i128, i128), Diag> {
        let space = self.space;
        let mut level1: Vec<u64> = Vec::with_capacity(space.axes.len() + 32);
        for (k, n) in space.numeric.iter().enumerate() {
            if n.is_none() && !space.via_spec[k] {
                level1.push(self.choice[k] as u64);
            }
        }
        digest(p, &mut level1);
        if !self.classes.contains_key(&level1) {
            if self.classes.len() >= MAX_CLASSES {
                // Bounded memory for spaces with very many classes; only speed depends on it.
                self.classes.clear();
            }
            let (costing, free) = self.build(p)?;
            let mut l = Level1 { free, classes: HashMap::default() };
            let key = self.level2(l.free.as_deref());
            l.classes.insert(key, costing);
            self.classes.insert(level1.clone(), l);
        }
        let key = self.level2(self.classes[&level1].free.as_deref());
        if !self.classes[&level1].classes.contains_key(&key) {
            let (costing, _) = self.build(p)?;
            let l = self.classes.get_mut(&level1).expect("inserted");
            if l.classes.len() >= MAX_CLASSES {
                l.classes.clear();
            }
            l.classes.insert(key.clone(), costing);
        }
        let f = match &self.classes[&level1].classes[&key] {
            Costing::Formula(f) => f.clone(),
            Costing::Lowered => return self.ir_macs(),
        };
        let mut slots = f.base.clone();
        for &(axis, slot) in &f.free {
            slots[slot] = space.numeric[axis].as_ref().expect("numeric")[self.choice[axis] as usize];
        }
        for &(d, slot) in &f.derived {
            slots[slot] = d
                .value(p)
                .ok_or_else(|| Diag::error("E0699", "internal: a derived value of the cost formula is missing"))?;
        }
        f.compiled.set_schedule(&mut slots, &p.schedule);
        match f.compiled.eval(&slots) {
            Some(c) if c.params == p.params as i128 => Ok((c.forward_macs, c.sample_macs)),
            _ => {
                // The class's formula does not fit this design: build one for it.
                self.stats.formula_rebuilds += 1;
                match self.build(p)?.0 {
                    Costing::Formula(f) => {
                        let c = f.compiled.eval(&f.base).ok_or_else(overflow)?;
                        Ok((c.forward_macs, c.sample_macs))
                    }
                    Costing::Lowered => self.ir_macs(),
                }
            }
        }
    }

    /// The options of the axes that are part of a class besides those of
    /// level 1: the numeric axes that are not free, or every axis.
    fn level2(&self, free: Option<&[bool]>) -> Vec<u64> {
        let Some(free) = free else { return self.choice.iter().map(|&c| c as u64).collect() };
        self.space
            .numeric
            .iter()
            .enumerate()
            .filter(|(k, n)| n.is_some() && !free[*k] && !self.space.via_spec[*k])
            .map(|(k, _)| self.choice[k] as u64)
            .collect()
    }

    /// MACs through the IR.
    fn ir_macs(&mut self) -> Result<(i128, i128), Diag> {
        self.stats.lowered += 1;
        let spec = self.spec()?;
        let a = crate::artifact::compile(&spec, &crate::lower::SpecSpans::from_body(&self.body), vec![])?;
        Ok((a.report.forward_macs as i128, a.report.sample_macs as i128))
    }

    /// A formula for the current design's class, and which axes are free in it.
    fn build(&mut self, p: &CheckedPoint) -> Result<(Costing, Option<Vec<bool>>), Diag> {
        let spec = self.spec()?;
        let f: Formula = match formula(&spec, &self.body) {
            Ok(f) => f,
            Err(_) => {
                // Not covered by the formulas: the lowering decides (an E06xx
                // error for a design that cannot be built, else IR figures).
                crate::artifact::compile(&spec, &crate::lower::SpecSpans::from_body(&self.body), vec![])?;
                return Ok((Costing::Lowered, None));
            }
        };
        self.stats.formulas_built += 1;
        let values = Formula::values(&spec, &self.body).map_err(|e| Diag::error("E0699", format!("internal: {e}")))?;
        let compiled = f.compile();
        let base = compiled.slots(&values).map_err(|e| Diag::error("E0699", format!("internal: {e}")))?;
        let opaque = f.symbols.iter().any(|s| s.contains('('));
        let mut free_axes = vec![false; self.space.axes.len()];
        let mut free = Vec::new();
        let mut derived = Vec::new();
        for (slot, s) in f.symbols.iter().enumerate() {
            if SCHEDULE_SYMBOLS.contains(&s.as_str()) {
                continue;
            }
            if let Some(d) = Derived::of(s) {
                derived.push((d, slot));
                continue;
            }
            if opaque {
                continue;
            }
            if let Some(k) = self.space.axes.iter().position(|a| leaf_name(&a.path) == *s) {
                if self.space.numeric[k].is_some() {
                    free_axes[k] = true;
                    free.push((k, slot));
                }
            }
        }
        // The formula at its own design must be the checker's count.
        let own = compiled.eval(&base).ok_or_else(overflow)?;
        if own.params != p.params as i128 {
            return Err(Diag::error(
                "E0699",
                format!("internal: the cost formula counts {} parameters, the checker {}", own.params, p.params),
            ));
        }
        // A non-polynomial leaf's value may depend on any axis (the schedule's too).
        let free_axes = if opaque { None } else { Some(free_axes) };
        Ok((Costing::Formula(Arc::new(ClassFormula { compiled, base, free, derived })), free_axes))
    }
}

fn overflow() -> Diag {
    Diag::error("E0317", "integer overflow").help("the design's figures do not fit in 128 bits")
}

/// The formula's symbol for a literal field at `path` (`cost::formula`: the
/// component path and the key; model fields by their key; the tokenizer's
/// fields that define derived values by the derived name).
fn leaf_name(path: &[String]) -> String {
    match path {
        [k] => k.clone(),
        [t, k] if t == "tokenizer" && matches!(k.as_str(), "code_dim" | "latent_channels" | "vocab") => k.clone(),
        _ => path.join("."),
    }
}

/// What the structure of a design's formula depends on besides its symbols:
/// kinds and switches, the start-token branch, CFG, the solver, the stage layout.
fn digest(p: &CheckedPoint, out: &mut Vec<u64>) {
    let b = &p.backbone;
    let k = &b.block;
    let s = &p.sampler;
    let (stages, first) = match &p.schedule.layout {
        Layout::Raster { grid } => (grid[0] * grid[1], 1),
        Layout::Stages(s) => (s.len() as u64, s.first().map_or(0, |s| s.tokens)),
    };
    out.extend([
        b.condition as u64,
        b.cond_tokens,
        b.attn as u64,
        b.positions as u64,
        b.qk_norm as u64,
        k.norm as u64,
        k.norm_affine as u64,
        k.modulation as u64,
        k.ffn as u64,
        k.mlp_ratio.to_bits(),
        k.qkv_bias as u64,
        k.proj_bias as u64,
        k.ffn_bias as u64,
        p.head.kind as u64,
        p.tokenizer.kind as u64,
        s.solver as u64,
        s.cfg.to_bits(),
        s.cfg_schedule as u64,
        s.cfg_channels.unwrap_or(u64::MAX),
        s.learned_variance as u64,
        p.schedule.tokens as u64,
        matches!(p.schedule.layout, Layout::Raster { .. }) as u64,
        stages,
        first,
        p.schedule.final_grid()[0],
        p.schedule.final_grid()[1],
    ]);
    match &p.distill {
        Some(d) => out.extend([1, d.steps, d.split, d.greedy_prefix]),
        None => out.push(0),
    }
    if let Some(phi) = &p.tokenizer.phi {
        out.push(phi.convs);
        out.extend(phi.map.iter().copied());
    }
}
