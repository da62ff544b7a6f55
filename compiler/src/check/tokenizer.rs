//! The tokenizer component (`vae`, `vq`, `msvq` with its `phi` convs).

use super::{base_name, Checker};
use crate::spec::*;
use ecarc_grammar::ast::ExprKind;
use ecarc_grammar::merged::{Component, MBody, MValue};
use ecarc_grammar::{Diag, Span};

impl<'a> Checker<'a> {
    pub(super) fn tokenizer(&self, c: &'a Component, model: &'a MBody, at: Span) -> Option<TokenizerSpec> {
        let r = self.reader(&c.body, vec![&c.body, model], "tokenizer", at);
        let kind = r.word(
            "kind",
            &[("vae", TokenizerKind::Vae), ("vq", TokenizerKind::Vq), ("msvq", TokenizerKind::Msvq)],
            None,
        );
        let channels = r.int("channels", None, 1, 1 << 20, "128");
        let ch_mult = r.int_list("ch_mult", 1, "[1, 1, 2, 2, 4]", true);
        let res_blocks = r.int("res_blocks", Some(2), 0, 1024, "2");
        let z_channels = r.int("z_channels", None, 1, 1 << 20, "256");
        let l2_norm = r.bool("l2_norm", false);
        let latent_scale = r.float("latent_scale", Some(1.0), f64::MIN_POSITIVE, 1e6, "0.18215");
        let stride_f = r.field("stride").cloned();
        let (token_channels, vocab, phi) = match kind {
            Some(TokenizerKind::Vae) => {
                r.allow(&["code_dim", "vocab", "phi"]);
                for k in ["code_dim", "vocab", "phi"] {
                    if let Some(f) = c.body.field(k) {
                        r.error(
                            Diag::error("E0308", format!("`{k}` does not apply to a VAE tokenizer"))
                                .label(f.key.span, "only for vq/msvq")
                                .help("remove it, or set `kind vq`"),
                        );
                    }
                }
                (r.int("latent_channels", None, 1, 1 << 20, "16"), None, None)
            }
            Some(k) => {
                r.allow(&["latent_channels"]);
                if let Some(f) = c.body.field("latent_channels") {
                    r.error(
                        Diag::error("E0308", "`latent_channels` is for VAE tokenizers")
                            .label(f.key.span, "not for vq/msvq")
                            .help("a VQ token's channels are `code_dim`"),
                    );
                }
                let code_dim = r.int("code_dim", None, 1, 1 << 20, "8");
                let vocab = r.int("vocab", None, 1, 1 << 32, "16384");
                let phi = if k == TokenizerKind::Msvq {
                    r.component("phi", true).and_then(|(p, pat)| self.phi(p, &c.body, model, pat))
                } else {
                    r.allow(&["phi"]);
                    if let Some(f) = c.body.field("phi") {
                        r.error(
                            Diag::error("E0308", "`phi` is for multi-scale VQ tokenizers")
                                .label(f.key.span, "only for msvq")
                                .help("remove it, or set `kind msvq`"),
                        );
                    }
                    None
                };
                (code_dim, vocab, phi)
            }
            None => {
                // The kind is missing or wrong (reported); do not also call its keys unknown.
                r.allow(&["latent_channels", "code_dim", "vocab", "phi"]);
                (None, None, None)
            }
        };
        r.finish();
        let ch_mult = ch_mult?;
        let derived_stride = 1u64.checked_shl(ch_mult.len().saturating_sub(1) as u32).filter(|_| ch_mult.len() < 40);
        let stride = match (stride_f, derived_stride) {
            (Some(f), Some(ds)) => {
                let MValue::Expr(e) = &f.value else { return None };
                let s = r.int_of(e, "stride")?;
                if s as u64 != ds {
                    r.error(
                        Diag::error("E0406", "stride does not match ch_mult")
                            .label(e.span, format!("stride {s}"))
                            .label(c.body.field("ch_mult").map(|f| f.span).unwrap_or(at), format!("{} levels downsample by {ds}", ch_mult.len()))
                            .help(format!("the encoder halves the resolution between levels: stride is 2^(len(ch_mult) - 1) = {ds}")),
                    );
                    return None;
                }
                ds
            }
            (None, Some(ds)) => ds,
            (_, None) => {
                r.error(
                    Diag::error("E0304", "`ch_mult` has too many levels")
                        .label(
                            c.body.field("ch_mult").map(|f| f.span).unwrap_or(at),
                            format!("{} levels: the stride 2^{} overflows", ch_mult.len(), ch_mult.len() - 1),
                        )
                        .help("image tokenizers use 3 to 6 levels (stride 4 to 32)"),
                );
                return None;
            }
        };
        // The conv decoders (and encoders) of every supported tokenizer normalise
        // with GroupNorm(32): each level's width must split into 32 groups.
        if let Some(ch) = channels {
            let ch = ch as u64;
            if let Some(&m) = ch_mult.iter().find(|&&m| ch.saturating_mul(m) % 32 != 0) {
                let span = c.body.field("channels").map(|f| f.span).unwrap_or(at);
                r.error(
                    Diag::error("E0437", "tokenizer widths must be multiples of 32")
                        .label(span, format!("channels {ch} x ch_mult {m} = {} channels", ch.saturating_mul(m)))
                        .help("the decoder's GroupNorm has 32 groups: use channels (x each ch_mult) divisible by 32"),
                );
                return None;
            }
        }
        Some(TokenizerSpec {
            name: base_name(c),
            kind: kind?,
            channels: channels? as u64,
            ch_mult,
            res_blocks: res_blocks? as u64,
            z_channels: z_channels? as u64,
            token_channels: token_channels? as u64,
            vocab: vocab.map(|v| v as u64),
            stride,
            l2_norm,
            latent_scale: latent_scale?,
            phi,
            params: vec![],
        })
    }

    fn phi(&self, c: &'a Component, tok: &'a MBody, model: &'a MBody, at: Span) -> Option<PhiSpec> {
        let r = self.reader(&c.body, vec![&c.body, tok, model], "phi", at);
        let convs = r.int("convs", None, 1, 1024, "4");
        let map_f = r.field("map");
        let mix = r.float("mix", Some(0.5), 0.0, 1.0, "0.5");
        r.finish();
        let convs = convs? as u64;
        let map = match map_f {
            Some(f) => {
                let MValue::Expr(e) = &f.value else {
                    r.error(crate::eval::type_error(f.value.span(), "a list", "something else"));
                    return None;
                };
                let map = r.int_list_of(e, "map", 0)?;
                if let Some((i, &bad)) = map.iter().enumerate().find(|(_, &m)| m >= convs) {
                    let span = match &e.kind {
                        ExprKind::List(items) => items[i].span,
                        _ => e.span,
                    };
                    r.error(
                        Diag::error("E0407", "phi map names a conv that does not exist")
                            .label(span, format!("conv {bad}, but there are {convs} (0..{})", convs - 1))
                            .help("every entry must be below `convs`"),
                    );
                    return None;
                }
                map
            }
            None => {
                r.error(
                    Diag::error("E0303", "phi is missing `map`")
                        .label(at, "needs `map`")
                        .help("add `map [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]` (VAR's scale -> conv map)"),
                );
                return None;
            }
        };
        Some(PhiSpec { convs, map, mix: mix? })
    }
}
