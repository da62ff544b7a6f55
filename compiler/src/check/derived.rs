//! The derived values a model's expressions may name (`tokens`, `head_dim`,
//! `code_dim`, ...) once every component is checked. The checker evaluates the
//! `params` groups with them and the cost formulas (`cost/formula/build.rs`)
//! value their non-polynomial leaves with them, so both read the same list.

use crate::spec::{BackboneSpec, ScheduleSpec, TokenizerKind, TokenizerSpec};
use ecarc_grammar::ast::Num;
use std::collections::BTreeMap;

/// The name of a tokenizer's channels per token: `latent_channels` for a VAE,
/// `code_dim` for a quantizer.
pub(crate) fn channels_name(tokenizer: &TokenizerSpec) -> &'static str {
    if tokenizer.kind == TokenizerKind::Vae {
        "latent_channels"
    } else {
        "code_dim"
    }
}

/// Every derived value of a checked model.
pub(crate) fn derived_values(
    classes: u64,
    tokenizer: &TokenizerSpec,
    backbone: &BackboneSpec,
    schedule: &ScheduleSpec,
) -> BTreeMap<String, Num> {
    let int = |v: u64| Num::Int(v as i64);
    let mut derived = BTreeMap::new();
    for (k, v) in [
        ("classes", classes),
        ("token_channels", tokenizer.token_channels),
        (channels_name(tokenizer), tokenizer.token_channels),
        ("levels", tokenizer.ch_mult.len() as u64),
        ("cond_dim", backbone.width),
        ("head_dim", backbone.head_dim),
        ("patch", backbone.patch),
        ("time_embed", backbone.time_embed),
        ("ffn_hidden", backbone.block.ffn_hidden),
        ("tokens", schedule.total_tokens()),
        ("stages", schedule.num_stages()),
        ("grid", schedule.final_grid()[0]),
    ] {
        derived.insert(k.to_string(), int(v));
    }
    if let Some(v) = tokenizer.vocab {
        derived.insert("vocab".into(), int(v));
    }
    derived
}
