//! Parameters and MACs as symbolic polynomials in a model's fields, so that a
//! search can cost thousands of designs without lowering each.
//!
//! [`formula`] reads the checked [`ModelSpec`] and the merged model body it came
//! from and produces three polynomials with exact integer coefficients:
//!
//! - `params`: every declared `params` group of the generator (model, backbone,
//!   backbone.block, head, distill), its shapes evaluated *symbolically* from the
//!   body's expressions with the checker's scope chains, `when` conditions and
//!   `for` repeats honoured (a repeat's count is `hi - lo`, symbolic); groups
//!   the checker expands copy by copy (nested loops, `when a OP b` guards, the
//!   loop variable in a shape) are expanded the same way, with constant copy
//!   counts and symbolic shapes;
//! - `forward_macs`: the teacher-forced forward (batch 1, no CFG), and
//! - `sample_macs`: one whole sample (every stage, solver step, KV cache, CFG),
//!
//! both following the lowering (`lower/`) node by node: which linears run per
//! token or per image, attention's two matmuls over `P + T` keys, the transition
//! convolutions, CFG doubling, Heun's two evaluations per step, Distilled
//! Decoding's `steps` forwards.
//!
//! **Symbols.** A field whose value is a number literal is a leaf named after
//! the field and its component (`backbone.depth`, `head.width`, model-level
//! `classes`); a field holding an expression is substituted (VAR's `width 64 *
//! depth` makes everything a polynomial in `backbone.depth`). Derived values
//! (`tokens`, `stages`, `grid`, `vocab`, `code_dim`, `latent_channels`,
//! `token_channels`, `head_dim`, `ffn_hidden`, `patch`, `time_embed`) are leaves
//! of those names unless they can be substituted exactly (`cond_dim` is the
//! backbone width; `patch`/`time_embed` are the backbone's fields when it has
//! them; `ffn_hidden` is `r * width` for a GELU FFN with an integral
//! `mlp_ratio` r; `head_dim` is `width / heads` when that divides exactly; the
//! tokenizer's `code_dim`, `latent_channels` and `vocab` fields share the
//! derived symbols of those names, and `token_channels` is one of them). A
//! non-polynomial sub-expression (inexact division, a function call) is a leaf
//! named by its source text (loop variables replaced by their values), and a
//! literal list element is a leaf like `tokenizer.ch_mult[2]`. The schedule
//! enters through aggregates over the stages (see [`SCHEDULE_SYMBOLS`]).
//!
//! The tokenizer decoder (`decode_macs`, reported apart) is not part of these
//! formulas.
//!
//! **Validity.** The polynomials are exact for every design with the same
//! *structure* as the one they were built from: the same tensor roles
//! declared, the same conditioning / FFN / head kinds, CFG on or off, the same
//! branch for the start token(s). Leaves are independent inputs: a search that
//! changes the schedule sets the schedule symbols (e.g. with
//! [`Compiled::set_schedule`]), one that changes `backbone.depth` of a LlamaGen
//! model must also set `ffn_hidden` (a rounded, non-polynomial value there).
//!
//! **Shared rules.** The formulas take from the lowering its role lookup
//! (`ParamIndex`, `ParamScope`), its step sequences (`Seq`, the start tokens,
//! `forward_seq`, `first_seq`) and its transition rules, and from the checker
//! its derived values, `params` conditions and expansion test. What remains a
//! mirror is the arithmetic itself: `macs.rs` walks the lowering's programs and
//! `groups.rs`/`symbolic.rs` evaluate groups and expressions, with polynomials
//! where those compute numbers; `tests/it/formula.rs` pins them equal.

mod build;
mod compiled;
mod decls;
mod groups;
mod macs;
mod poly;
mod schedule;
mod symbolic;

pub use compiled::Compiled;
pub use poly::Poly;
pub use schedule::{schedule_values, SCHEDULE_SYMBOLS};

use crate::spec::ModelSpec;
use ecarc_grammar::merged::MBody;
use std::collections::HashMap;

/// The three figures of one design.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    pub params: i128,
    pub forward_macs: i128,
    pub sample_macs: i128,
}

/// Parameters and MACs of a model as polynomials in its symbols.
#[derive(Clone, Debug, PartialEq)]
pub struct Formula {
    pub params: Poly,
    pub forward_macs: Poly,
    pub sample_macs: Poly,
    /// Every symbol of the three polynomials, sorted.
    pub symbols: Vec<String>,
}

impl Formula {
    /// Values of every symbol of the formula built from `(spec, body)`.
    pub fn values(spec: &ModelSpec, body: &MBody) -> Result<HashMap<String, i128>, String> {
        let (_, values) = build::build(spec, body)?;
        Ok(values.into_iter().collect())
    }

    /// Evaluate the three polynomials.
    pub fn eval(&self, values: &HashMap<String, i128>) -> Result<Cost, String> {
        Ok(Cost {
            params: self.params.eval(values)?,
            forward_macs: self.forward_macs.eval(values)?,
            sample_macs: self.sample_macs.eval(values)?,
        })
    }
}

/// Build the formula of a checked model from its merged body.
pub fn formula(spec: &ModelSpec, body: &MBody) -> Result<Formula, String> {
    build::build(spec, body).map(|(f, _)| f)
}
