//! The `sample` component, and the bounds of its numbers that the CLI's
//! overrides share ([`sampler_rules`]).

use super::{base_name, Checker};
use crate::spec::*;
use ecarc_grammar::ast::ExprKind;
use ecarc_grammar::merged::{Component, MBody, MValue};
use ecarc_grammar::{Diag, Span};

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

impl<'a> Checker<'a> {
    pub(super) fn sampler(
        &self,
        c: Option<&'a Component>,
        model: &'a MBody,
        at: Span,
    ) -> Option<(SamplerSpec, SamplerSpans)> {
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
}

#[derive(Clone)]
pub(super) struct SamplerSpans {
    pub(super) at: Span,
    pub(super) top_k: Option<Span>,
    pub(super) top_p: Option<Span>,
    pub(super) solver: Option<Span>,
    pub(super) cfg_channels: Option<Span>,
    pub(super) train_steps: Option<Span>,
}
