//! Search spaces: a model whose fields have alternatives (`depth in 12..=24 step 4`,
//! `scales in { [...], [...] }`) is expanded into design points, each a plain
//! merged body that the checker handles like any model.

use crate::eval::EvalScope;
use ecarc_grammar::ast::{Expr, ExprKind, Num};
use ecarc_grammar::merged::{Choice, MBody, MEntry, MValue};
use ecarc_grammar::{Diag, Span};
use std::collections::BTreeMap;

/// A range may not hold more values than this.
pub(crate) const MAX_RANGE: u64 = 1_000_000;

/// One choice point: the path of the field (`backbone.depth`) and its options.
#[derive(Clone, Debug)]
pub struct Axis {
    pub path: Vec<String>,
    pub span: Span,
    pub options: Vec<MValue>,
    /// How each option is shown (`16`, `[1, 2, 4]`, `flow_mlp {...}`).
    pub labels: Vec<String>,
}

/// The axes of a model body, outermost fields first. Empty for a plain model.
pub fn axes(body: &MBody, sources: &ecarc_grammar::SourceMap) -> Result<Vec<Axis>, Vec<Diag>> {
    let mut out = Vec::new();
    let mut diags = Vec::new();
    collect(body, &mut vec![], &mut out, &mut diags, sources);
    if diags.is_empty() {
        Ok(out)
    } else {
        Err(diags)
    }
}

/// Total number of points (saturating).
pub fn size(axes: &[Axis]) -> u128 {
    axes.iter().fold(1u128, |acc, a| acc.saturating_mul(a.options.len() as u128))
}

/// The point with mixed-radix index `index` (last axis fastest).
pub fn point(body: &MBody, axes: &[Axis], mut index: u128) -> (MBody, Vec<(String, String)>) {
    let mut choice = vec![0usize; axes.len()];
    for (i, a) in axes.iter().enumerate().rev() {
        let n = a.options.len() as u128;
        choice[i] = (index % n) as usize;
        index /= n;
    }
    let mut b = body.clone();
    let mut assignment = Vec::new();
    for (a, &c) in axes.iter().zip(&choice) {
        set_path(&mut b, &a.path, a.options[c].clone());
        assignment.push((a.path.join("."), a.labels[c].clone()));
    }
    (b, assignment)
}

/// Choose option `option` of `axis` in a body (the space's body, or a point of
/// it): the in-place form of [`point`], for visiting many points with one body.
pub fn apply(body: &mut MBody, axis: &Axis, option: usize) {
    set_path(body, &axis.path, axis.options[option].clone());
}

/// The options chosen by the mixed-radix index `index` (last axis fastest).
pub fn choice(axes: &[Axis], mut index: u128) -> Vec<u32> {
    let mut choice = vec![0u32; axes.len()];
    for (i, a) in axes.iter().enumerate().rev() {
        let n = a.options.len() as u128;
        choice[i] = (index % n) as u32;
        index /= n;
    }
    choice
}

/// Replace the value at `path` (which exists: it came from [`axes`]).
fn set_path(body: &mut MBody, path: &[String], value: MValue) {
    let Some(f) = body.field_mut(&path[0]) else { return };
    if path.len() == 1 {
        f.value = value;
    } else if let MValue::Component(c) = &mut f.value {
        set_path(&mut c.body, &path[1..], value);
    }
}

fn collect(
    body: &MBody,
    path: &mut Vec<String>,
    out: &mut Vec<Axis>,
    diags: &mut Vec<Diag>,
    sources: &ecarc_grammar::SourceMap,
) {
    for e in &body.entries {
        let MEntry::Field(f) = e else { continue };
        path.push(f.key.name.clone());
        match &f.value {
            MValue::Component(c) => collect(&c.body, path, out, diags, sources),
            MValue::Choice(ch) => {
                if let Some((options, labels)) = options(ch, diags, sources) {
                    for o in &options {
                        if let MValue::Component(c) = o {
                            let mut inner = Vec::new();
                            collect(&c.body, &mut path.clone(), &mut inner, diags, sources);
                            if let Some(a) = inner.first() {
                                diags.push(
                                    Diag::error("E0501", "alternatives inside an alternative")
                                        .label(a.span, "nested choice")
                                        .label(ch.span(), "inside this choice")
                                        .help("list the combinations as separate options of the outer choice"),
                                );
                            }
                        }
                    }
                    out.push(Axis { path: path.clone(), span: ch.span(), options, labels })
                }
            }
            _ => {}
        }
        path.pop();
    }
}

fn options(
    ch: &Choice,
    diags: &mut Vec<Diag>,
    sources: &ecarc_grammar::SourceMap,
) -> Option<(Vec<MValue>, Vec<String>)> {
    match ch {
        Choice::Set { items, span } => {
            if items.is_empty() {
                diags.push(
                    Diag::error("E0502", "empty set of alternatives")
                        .label(*span, "no options")
                        .help("give at least one option"),
                );
                return None;
            }
            let labels = items.iter().map(|v| label(v, sources)).collect();
            Some((items.clone(), labels))
        }
        Choice::Range { lo, hi, inclusive, step, span } => {
            let empty = BTreeMap::new();
            let scope = EvalScope::new(vec![], &empty);
            let num = |e: &Expr, diags: &mut Vec<Diag>| match scope.num(e) {
                Ok(n) => Some(n),
                Err(d) if d.code == "E0315" => {
                    diags.push(
                        Diag::error("E0315", "a range bound names a field")
                            .label(d.primary_span().unwrap_or(e.span), "ranges are expanded before fields have values")
                            .help("range bounds and steps must be constant numbers, e.g. `in 2..=24 step 2`"),
                    );
                    None
                }
                Err(d) => {
                    let help = match &d.help {
                        Some(h) => format!("{h}; range bounds and steps must be constant numbers"),
                        None => "range bounds and steps must be constant numbers".to_string(),
                    };
                    diags.push(d.help(help));
                    None
                }
            };
            let (lo_n, hi_n) = (num(lo, diags)?, num(hi, diags)?);
            let step_n = match step {
                Some(s) => num(s, diags)?,
                None => Num::Int(1),
            };
            let all_int = matches!((lo_n, hi_n, step_n), (Num::Int(_), Num::Int(_), Num::Int(_)));
            let (l, h, s) = (lo_n.as_f64(), hi_n.as_f64(), step_n.as_f64());
            if s <= 0.0 {
                diags.push(
                    Diag::error("E0503", "range step must be positive")
                        .label(step.as_ref().map(|e| e.span).unwrap_or(*span), format!("step {step_n} never advances"))
                        .help("write a positive step, e.g. `step 2`, or leave `step` out for 1"),
                );
                return None;
            }
            if h < l || (!*inclusive && h == l) {
                let help = if h == l {
                    format!("`..` leaves out the upper bound: write `{lo_n}..={hi_n}` for the single value {lo_n}")
                } else {
                    format!("ranges go up: write `{hi_n}..={lo_n}`")
                };
                diags.push(
                    Diag::error("E0503", "empty range")
                        .label(*span, format!("{lo_n} to {hi_n} holds no value"))
                        .help(help),
                );
                return None;
            }
            let count_f = ((h - l) / s + 1e-9).floor() + 1.0;
            if count_f > MAX_RANGE as f64 {
                diags.push(
                    Diag::error("E0504", "range too large")
                        .label(*span, format!("about {count_f:.0} values"))
                        .help(format!("a range holds at most {MAX_RANGE} values; use a larger step")),
                );
                return None;
            }
            let mut vals = Vec::new();
            for i in 0..count_f as u64 {
                let v = if all_int {
                    let (Num::Int(a), Num::Int(st)) = (lo_n, step_n) else { unreachable!() };
                    Num::Int(a + i as i64 * st)
                } else {
                    Num::Float(l + i as f64 * s)
                };
                if !*inclusive && v.as_f64() >= h - 1e-12 {
                    break;
                }
                vals.push(v);
            }
            let labels = vals.iter().map(|v| v.to_string()).collect();
            let options = vals
                .into_iter()
                .map(|value| {
                    let text = value.to_string();
                    MValue::Expr(Expr { kind: ExprKind::Number { value, text }, span: *span })
                })
                .collect();
            Some((options, labels))
        }
    }
}

fn label(v: &MValue, sources: &ecarc_grammar::SourceMap) -> String {
    match v {
        MValue::Component(c) => match c.bases.first() {
            Some(b) => format!("{} {{...}}", b.name),
            None => "{...}".into(),
        },
        other => {
            let t = sources.text(other.span());
            let t: String = t.split_whitespace().collect::<Vec<_>>().join(" ");
            if t.chars().count() > 60 {
                format!("{}...", t.chars().take(57).collect::<String>())
            } else {
                t
            }
        }
    }
}
