//! The backbone component and its transformer `block`.

use super::{base_name, divisors_near, Checker};
use crate::spec::*;
use ecarc_grammar::ast::ExprKind;
use ecarc_grammar::merged::{Component, MBody, MValue};
use ecarc_grammar::{Diag, Span};

impl<'a> Checker<'a> {
    pub(super) fn backbone(&self, c: &'a Component, model: &'a MBody, at: Span) -> Option<BackboneSpec> {
        let r = self.reader(&c.body, vec![&c.body, model], "backbone", at);
        let depth = r.int("depth", None, 1, 100_000, "24");
        let width = r.int("width", None, 1, 1 << 24, "1024");
        let heads = r.int("heads", None, 1, 1 << 16, "16");
        let condition = r.word(
            "condition",
            &[
                ("class_token", Conditioning::ClassToken),
                ("adaln_class", Conditioning::AdalnClass),
                ("adaln_time_class", Conditioning::AdalnTimeClass),
            ],
            None,
        );
        let cond_tokens = r.int("cond_tokens", Some(1), 1, 1 << 16, "1");
        let attn = r.word(
            "attn",
            &[
                ("full", AttnMask::Full),
                ("causal", AttnMask::Causal),
                ("block_causal", AttnMask::BlockCausal),
                ("earlier_plus_self", AttnMask::EarlierPlusSelf),
            ],
            None,
        );
        let positions = r.word(
            "positions",
            &[
                ("learned", PositionEncoding::Learned),
                ("sincos_2d", PositionEncoding::Sincos2d),
                ("rope_2d", PositionEncoding::Rope2d),
            ],
            None,
        );
        let rope_base = r.float("rope_base", Some(10000.0), 1.0, 1e12, "10000");
        let qk_norm = r.word("qk_norm", &[("none", QkNorm::None), ("l2", QkNorm::L2)], Some(QkNorm::None));
        let qk_scale_max = r.float("qk_scale_max", Some(100.0), f64::MIN_POSITIVE, 1e12, "100");
        let patch = r.int("patch", Some(1), 1, 1024, "2");
        let time_embed = r.int("time_embed", Some(256), 2, 1 << 20, "256");
        let block_c = r.component("block", true);
        r.finish();
        let (width, heads) = (width? as u64, heads? as u64);
        let mut ok = true;
        if width % heads != 0 {
            ok = false;
            r.error(
                Diag::error("E0401", "width is not divisible by heads")
                    .label(c.body.field("width").map(|f| f.span).unwrap_or(at), format!("width {width}"))
                    .label(c.body.field("heads").map(|f| f.span).unwrap_or(at), format!("{heads} heads"))
                    .help(format!(
                        "choose heads dividing {width} (e.g. {}) or a width that is a multiple of {heads}",
                        divisors_near(width, heads)
                    )),
            );
        }
        let head_dim = width / heads;
        if positions == Some(PositionEncoding::Rope2d) && ok && head_dim % 4 != 0 {
            ok = false;
            r.error(
                Diag::error("E0402", "2D RoPE needs a head dimension divisible by 4")
                    .label(
                        c.body.field("positions").map(|f| f.span).unwrap_or(at),
                        "2D RoPE rotates head_dim/4 pairs by row and head_dim/4 by column",
                    )
                    .label(
                        c.body.field("heads").map(|f| f.span).unwrap_or(at),
                        format!("head_dim = {width} / {heads} = {head_dim}"),
                    )
                    .help("change width or heads so that width / heads is a multiple of 4"),
            );
        }
        let (bc, bat) = block_c?;
        let block = self.block(bc, &c.body, model, bat, width);
        if !ok {
            return None;
        }
        Some(BackboneSpec {
            name: base_name(c),
            depth: depth? as u64,
            width,
            heads,
            head_dim,
            condition: condition?,
            cond_tokens: cond_tokens? as u64,
            attn: attn?,
            positions: positions?,
            rope_base: rope_base?,
            qk_norm: qk_norm?,
            qk_scale_max: qk_scale_max?,
            patch: patch? as u64,
            time_embed: time_embed? as u64,
            block: block?,
        })
    }

    fn block(&self, c: &'a Component, bb: &'a MBody, model: &'a MBody, at: Span, width: u64) -> Option<BlockSpec> {
        let r = self.reader(&c.body, vec![&c.body, bb, model], "block", at);
        let norm = r.word("norm", &[("layernorm", NormKind::Layernorm), ("rmsnorm", NormKind::Rmsnorm)], None);
        let norm_eps = r.float("norm_eps", Some(1e-6), 0.0, 1.0, "1e-6");
        let norm_affine = r.bool("norm_affine", true);
        let modulation =
            r.word("modulation", &[("none", Modulation::None), ("adaln", Modulation::Adaln)], Some(Modulation::None));
        let order_f = r.field("adaln_order");
        let ffn = r.word(
            "ffn",
            &[("gelu", FfnKind::Gelu), ("gelu_tanh", FfnKind::GeluTanh), ("swiglu", FfnKind::Swiglu)],
            None,
        );
        let mlp_ratio = r.float("mlp_ratio", Some(4.0), f64::MIN_POSITIVE, 1024.0, "4.0");
        let ffn_multiple = r.int("ffn_multiple", Some(256), 1, 1 << 20, "256");
        let explicit_hidden = r.field("ffn_hidden");
        let qkv_bias = r.word(
            "qkv_bias",
            &[("none", QkvBias::None), ("qv", QkvBias::Qv), ("full", QkvBias::Full)],
            Some(QkvBias::None),
        );
        let proj_bias = r.bool("proj_bias", true);
        let ffn_bias = r.bool("ffn_bias", true);
        r.finish();

        let chunks: &[(&str, AdaChunk)] = &[
            ("shift1", AdaChunk::Shift1),
            ("scale1", AdaChunk::Scale1),
            ("gate1", AdaChunk::Gate1),
            ("shift2", AdaChunk::Shift2),
            ("scale2", AdaChunk::Scale2),
            ("gate2", AdaChunk::Gate2),
        ];
        let adaln_order = match (modulation, order_f) {
            (Some(Modulation::Adaln), Some(f)) => {
                let MValue::Expr(e) = &f.value else { return None };
                let ExprKind::List(items) = &e.kind else {
                    r.error(crate::eval::type_error(e.span, "a list of chunk names", "a single value"));
                    return None;
                };
                let order: Vec<AdaChunk> = items.iter().filter_map(|i| r.word_of(i, "adaln chunk", chunks)).collect();
                if order.len() != items.len() {
                    return None;
                }
                let mut sorted = order.clone();
                sorted.sort_by_key(|c| *c as u8);
                sorted.dedup();
                if order.len() != 6 || sorted.len() != 6 {
                    let missing: Vec<&str> =
                        chunks.iter().filter(|(_, c)| !order.contains(c)).map(|(n, _)| *n).collect();
                    let repeated = (1..order.len()).find(|&i| order[..i].contains(&order[i]));
                    let (span, label) = match repeated {
                        Some(i) => (items[i].span, format!("`{}` is named again here", chunk_name(chunks, order[i]))),
                        None => (e.span, format!("{} names, {} distinct", order.len(), sorted.len())),
                    };
                    let missing = match missing.as_slice() {
                        [] => String::new(),
                        m => format!("missing: {}; ", m.join(", ")),
                    };
                    r.error(
                        Diag::error("E0408", "adaln_order must name each of the 6 chunks once")
                            .label(span, label)
                            .help(format!("{missing}list shift1 scale1 gate1 shift2 scale2 gate2 in the checkpoint's order (VAR: gate1 gate2 scale1 scale2 shift1 shift2; DiT: shift1 scale1 gate1 shift2 scale2 gate2)")),
                    );
                    return None;
                }
                order
            }
            (Some(Modulation::Adaln), None) => {
                r.error(
                    Diag::error("E0303", "block is missing `adaln_order`")
                        .label(
                            c.body.field("modulation").map(|f| f.span).unwrap_or(at),
                            "adaLN modulation needs the chunk order",
                        )
                        .help("add e.g. `adaln_order [shift1, scale1, gate1, shift2, scale2, gate2]`"),
                );
                return None;
            }
            (_, Some(f)) => {
                r.error(
                    Diag::error("E0308", "`adaln_order` without adaLN modulation")
                        .label(f.key.span, "has no effect")
                        .help("set `modulation adaln` or remove it"),
                );
                return None;
            }
            (_, None) => vec![],
        };
        let ffn = ffn?;
        let mlp_ratio = mlp_ratio?;
        let ffn_hidden = match explicit_hidden {
            Some(f) => {
                let MValue::Expr(e) = &f.value else { return None };
                let h = r.int_of(e, "ffn_hidden")?;
                if h < 1 {
                    r.error(
                        Diag::error("E0304", "`ffn_hidden` must be at least 1")
                            .label(e.span, "too small")
                            .help("give a positive width"),
                    );
                    return None;
                }
                h as u64
            }
            None => {
                let hidden = mlp_ratio * width as f64;
                match ffn {
                    // LlamaGen: find_multiple(int(2 * ratio * dim / 3), multiple)
                    FfnKind::Swiglu => {
                        let m = ffn_multiple? as u64;
                        let h = (2.0 * hidden / 3.0).floor() as u64;
                        h.div_ceil(m) * m
                    }
                    _ => {
                        if (hidden - hidden.round()).abs() > 1e-6 {
                            r.error(
                                Diag::error("E0409", "mlp_ratio x width is not a whole number")
                                    .label(
                                        c.body.field("mlp_ratio").map(|f| f.span).unwrap_or(at),
                                        format!("{mlp_ratio} x {width} = {hidden}"),
                                    )
                                    .help("choose a ratio that gives a whole hidden width, or set `ffn_hidden`"),
                            );
                            return None;
                        }
                        hidden.round() as u64
                    }
                }
            }
        };
        Some(BlockSpec {
            name: base_name(c),
            norm: norm?,
            norm_eps: norm_eps?,
            norm_affine,
            modulation: modulation?,
            adaln_order,
            ffn,
            mlp_ratio,
            ffn_hidden,
            qkv_bias: qkv_bias?,
            proj_bias,
            ffn_bias,
        })
    }
}

/// The name of an adaLN chunk.
fn chunk_name(chunks: &[(&'static str, AdaChunk)], c: AdaChunk) -> &'static str {
    chunks.iter().find(|(_, x)| *x == c).map_or("?", |(n, _)| *n)
}
