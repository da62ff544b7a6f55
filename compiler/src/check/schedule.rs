//! The schedule component: its stages (`raster`, `scales` or `stage` rows),
//! their flow segments and steps, upsampling and re-noising.

use super::{Checker, EPS, MAX_GRID_SIDE};
use crate::reader::Reader;
use crate::spec::*;
use ecarc_grammar::ast::{Expr, ExprKind, StageRow};
use ecarc_grammar::merged::{Component, MBody, MField, MValue};
use ecarc_grammar::{Diag, Span};

impl<'a> Checker<'a> {
    pub(super) fn schedule(
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
        let s = Reading { r: &r, at, continuous: tokens == TokenKind::Continuous, segments_f, steps_f };
        let listed = if let Some(f) = raster_f {
            s.raster(f)?
        } else if let Some(f) = scales_f {
            s.scales(f)?
        } else {
            s.rows(&rows)?
        };
        if s.continuous {
            if let Layout::Stages(stages) = &listed.layout {
                self.check_segments(stages, &listed.segment_spans, at)?;
            }
        }
        let renoise = match renoise_f {
            None => Renoise::None,
            Some(f) => s.renoise(f)?,
        };
        if !s.continuous && renoise != Renoise::None {
            r.error(
                Diag::error("E0403", "renoise applies to continuous stages")
                    .label(renoise_f.map(|f| f.span).unwrap_or(at), "discrete tokens are not re-noised")
                    .help("remove `renoise`: this model's tokenizer makes discrete codes"),
            );
            return None;
        }
        Some((
            ScheduleSpec { tokens, layout: listed.layout, upsample: upsample?, renoise },
            ScheduleSpans { at, last: listed.last, steps: listed.step_spans },
        ))
    }

    /// The flow segments of continuous stages: each within [0, 1] and
    /// decreasing, the first from 1, the last to 0, each starting where the
    /// previous one ends (E0425 to E0427).
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
}

/// Where the schedule's parts are, for cross-field reports.
#[derive(Clone)]
pub(super) struct ScheduleSpans {
    /// The `schedule` key of the model.
    pub(super) at: Span,
    /// The finest stage's grid (last scale, last row's grid, or the raster size).
    pub(super) last: Span,
    /// Each stage's step count (or its row, or `at`).
    pub(super) steps: Vec<Span>,
}

/// One schedule being read: its reader, and what each form of stage list needs.
struct Reading<'r, 'a> {
    r: &'r Reader<'a>,
    /// The `schedule` key of the model.
    at: Span,
    /// Whether the tokens are continuous (stages with flow segments and ODE steps).
    continuous: bool,
    /// The `segments` and `steps` keys (for `scales`; errors for the other forms).
    segments_f: Option<&'a MField>,
    steps_f: Option<&'a MField>,
}

/// The stages as one form lists them, and where their parts are.
struct Listed {
    layout: Layout,
    /// Each stage's flow segment (with `segments [...]`: each boundary), for
    /// [`Checker::check_segments`]'s reports.
    segment_spans: Vec<Span>,
    /// The finest stage's grid.
    last: Span,
    /// Each stage's step count (or its row, or the `schedule` key).
    step_spans: Vec<Span>,
}

impl<'a> Reading<'_, 'a> {
    /// A step count: 1 to 1000000.
    fn steps_of(&self, e: &Expr) -> Option<u64> {
        let r = self.r;
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
    }

    /// The field's value as an expression (a component there is reported).
    fn expr_of(&self, f: &'a MField, what: &str) -> Option<&'a Expr> {
        match &f.value {
            MValue::Expr(e) => Some(e),
            other => {
                self.r.error(crate::eval::type_error(other.span(), what, "something else"));
                None
            }
        }
    }

    /// `segments` and `steps` given for discrete stages: one error each.
    fn no_flow_keys(&self) {
        for k in [self.segments_f, self.steps_f].into_iter().flatten() {
            self.r.error(
                Diag::error("E0403", format!("`{}` does not apply to discrete stages", k.key.name))
                    .label(k.key.span, "discrete stages have no flow time")
                    .help(format!(
                        "remove `{}`: this model's tokenizer makes discrete codes, sampled once per stage",
                        k.key.name
                    )),
            );
        }
    }

    /// `raster GRID`: one discrete token per stage, in raster order.
    fn raster(&self, f: &'a MField) -> Option<Listed> {
        let r = self.r;
        let e = self.expr_of(f, "a size")?;
        let grid = r.size_of(e, "raster")?;
        if grid[0].checked_mul(grid[1]).is_none_or(|n| n > 1 << 24) {
            r.error(
                Diag::error("E0304", "raster grid is too large")
                    .label(e.span, format!("{}x{} tokens", grid[1], grid[0]))
                    .help("a raster is the token grid (image / stride / patch, e.g. `16x16`), at most 16M tokens"),
            );
            return None;
        }
        if self.continuous {
            r.error(
                Diag::error("E0429", "a raster schedule needs discrete tokens")
                    .label(f.key.span, "raster stages sample one code each")
                    .help("for continuous tokens, list stages with flow segments (`stage` rows or `scales`)"),
            );
            return None;
        }
        self.no_flow_keys();
        Some(Listed {
            layout: Layout::Raster { grid },
            segment_spans: Vec::new(),
            last: e.span,
            step_spans: Vec::new(),
        })
    }

    /// `scales [...]`: square stages, with `segments` and `steps` for continuous tokens.
    fn scales(&self, f: &'a MField) -> Option<Listed> {
        let r = self.r;
        let e = self.expr_of(f, "a list of scales")?;
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
        type Segments = Vec<Option<[f64; 2]>>;
        let (segs, steps, segment_spans): (Segments, Vec<u64>, Vec<Span>) = if self.continuous {
            let (bounds, spans) = self.scale_bounds(e, n)?;
            let spans = if spans.is_empty() { vec![e.span; n] } else { spans };
            let steps = self.scale_steps(e, n)?;
            (bounds.windows(2).map(|w| Some([w[0], w[1]])).collect(), steps, spans)
        } else {
            self.no_flow_keys();
            (vec![None; n], vec![1; n], Vec::new())
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
        let last = match &e.kind {
            ExprKind::List(items) => items.last().map_or(e.span, |i| i.span),
            _ => e.span,
        };
        let step_spans = match self.steps_f.map(|f| &f.value) {
            Some(MValue::Expr(se)) => match &se.kind {
                ExprKind::List(items) => items.iter().map(|i| i.span).collect(),
                _ => vec![se.span; n],
            },
            _ => vec![self.at; n],
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
        Some(Listed { layout: Layout::Stages(stages), segment_spans, last, step_spans })
    }

    /// The flow-time boundaries of `n` scales (`e`: the scales): `segments
    /// uniform` (the default) or a list of `n + 1`; with a list, each
    /// boundary's span (else none).
    fn scale_bounds(&self, e: &Expr, n: usize) -> Option<(Vec<f64>, Vec<Span>)> {
        let r = self.r;
        let uniform = || -> Vec<f64> { (0..=n).map(|i| 1.0 - i as f64 / n as f64).collect() };
        let Some(sf) = self.segments_f else { return Some((uniform(), Vec::new())) };
        let se = self.expr_of(sf, "`uniform` or a list of boundaries")?;
        match &se.kind {
            ExprKind::Name(w) if w == "uniform" => Some((uniform(), Vec::new())),
            ExprKind::List(items) => {
                if items.len() != n + 1 {
                    r.error(
                        Diag::error("E0422", "segment boundaries do not match the scales")
                            .label(se.span, format!("{} boundaries", items.len()))
                            .label(e.span, format!("{n} scales"))
                            .help(format!("give {} boundaries from 1.0 down to 0.0 (one more than the scales)", n + 1)),
                    );
                    return None;
                }
                let mut b = Vec::new();
                let mut spans = Vec::new();
                for it in items {
                    b.push(r.num_of(it)?.as_f64());
                    spans.push(it.span);
                }
                Some((b, spans))
            }
            _ => {
                r.error(
                    Diag::error("E0305", "`segments` must be `uniform` or a list of boundaries")
                        .label(se.span, "not a segment rule")
                        .help("write `segments uniform` or `segments [1.0, 0.6, 0.3, 0.0]`"),
                );
                None
            }
        }
    }

    /// The ODE steps of `n` scales (`e`: the scales): 1 each by default, one
    /// number for all, or a list of `n`.
    fn scale_steps(&self, e: &Expr, n: usize) -> Option<Vec<u64>> {
        let Some(sf) = self.steps_f else { return Some(vec![1; n]) };
        let se = self.expr_of(sf, "steps")?;
        match &se.kind {
            ExprKind::List(items) => {
                if items.len() != n {
                    self.r.error(
                        Diag::error("E0422", "per-stage steps do not match the scales")
                            .label(se.span, format!("{} step counts", items.len()))
                            .label(e.span, format!("{n} scales"))
                            .help("give one step count per scale, or one number for all"),
                    );
                    return None;
                }
                items.iter().map(|i| self.steps_of(i)).collect()
            }
            _ => Some(vec![self.steps_of(se)?; n]),
        }
    }

    /// `stage` rows: each with its grid, and for continuous tokens its flow
    /// segment and steps.
    fn rows(&self, rows: &[&'a StageRow]) -> Option<Listed> {
        let r = self.r;
        let continuous = self.continuous;
        for k in [self.segments_f, self.steps_f].into_iter().flatten() {
            r.error(
                Diag::error("E0308", format!("`{}` is for `scales` schedules", k.key.name))
                    .label(k.key.span, "stage rows give their own")
                    .help("put the segment and steps on each `stage` row"),
            );
        }
        if rows.len() > 1 << 16 {
            r.error(Diag::error("E0304", "too many stage rows").label(rows[0].span, "here").help("at most 65536 rows"));
            return None;
        }
        let mut segment_spans = Vec::new();
        let mut last = self.at;
        let mut step_spans = Vec::new();
        let mut stages = Vec::new();
        let mut prev: Option<([u64; 2], Span)> = None;
        for row in rows {
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
                Some(e) => self.steps_of(e)?,
                None => 1,
            };
            last = row.grid.span;
            step_spans.push(row.steps.as_ref().map_or(row.span, |e| e.span));
            stages.push(StageSpec { grid, tokens: grid[0] * grid[1], segment, steps });
        }
        Some(Listed { layout: Layout::Stages(stages), segment_spans, last, step_spans })
    }

    /// `renoise none` or `renoise pyramid(gamma = G)`.
    fn renoise(&self, f: &'a MField) -> Option<Renoise> {
        let r = self.r;
        let e = self.expr_of(f, "a renoise rule")?;
        match &e.kind {
            ExprKind::Name(n) if n == "none" => Some(Renoise::None),
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
                Some(Renoise::Pyramid { gamma: g })
            }
            _ => {
                r.error(
                    Diag::error("E0305", "unknown renoise rule")
                        .label(e.span, "not a renoise rule")
                        .help("write `renoise none` or `renoise pyramid(gamma = 1/3)`"),
                );
                None
            }
        }
    }
}
