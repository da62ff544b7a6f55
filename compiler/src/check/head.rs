//! The head component (categorical, flow heads, DD's continuous head).

use super::{base_name, divisors_near, Checker};
use crate::spec::*;
use ecarc_grammar::merged::{Component, MBody};
use ecarc_grammar::{Diag, Span};

impl<'a> Checker<'a> {
    pub(super) fn head(&self, c: &'a Component, model: &'a MBody, at: Span) -> Option<HeadSpec> {
        let r = self.reader(&c.body, vec![&c.body, model], "head", at);
        let kind = r.word(
            "kind",
            &[
                ("categorical", HeadKind::Categorical),
                ("flow_mlp", HeadKind::FlowMlp),
                ("flow_transformer", HeadKind::FlowTransformer),
                ("dd_continuous", HeadKind::DdContinuous),
                ("linear", HeadKind::Linear),
            ],
            None,
        );
        let flow = matches!(kind, Some(HeadKind::FlowMlp | HeadKind::FlowTransformer));
        let (depth, width) = if flow {
            (r.int("depth", None, 1, 100_000, "6"), r.int("width", None, 1, 1 << 24, "1024"))
        } else {
            (
                r.int("depth", Some(0), 0, 100_000, "6").filter(|&d| d > 0),
                r.int("width", Some(0), 0, 1 << 24, "1024").filter(|&w| w > 0),
            )
        };
        let heads = if kind == Some(HeadKind::FlowTransformer) {
            r.int("heads", None, 1, 1 << 16, "16")
        } else {
            r.int("heads", Some(0), 0, 1 << 16, "16").filter(|&h| h > 0)
        };
        let time_embed = r.int("time_embed", Some(256), 2, 1 << 20, "256");
        r.finish();
        let kind = kind?;
        if kind == HeadKind::FlowTransformer {
            if let (Some(w), Some(h)) = (width, heads) {
                if w % h != 0 {
                    r.error(
                        Diag::error("E0401", "head width is not divisible by its heads")
                            .label(c.body.field("width").map(|f| f.span).unwrap_or(at), format!("width {w}"))
                            .label(c.body.field("heads").map(|f| f.span).unwrap_or(at), format!("{h} heads"))
                            .help(format!("choose heads dividing {w} (e.g. {})", divisors_near(w as u64, h as u64))),
                    );
                    return None;
                }
            }
        }
        if flow && (depth.is_none() || width.is_none()) {
            return None;
        }
        Some(HeadSpec {
            name: base_name(c),
            kind,
            depth: depth.map(|v| v as u64),
            width: width.map(|v| v as u64),
            heads: heads.map(|v| v as u64),
            time_embed: time_embed? as u64,
        })
    }
}
