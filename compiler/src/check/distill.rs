//! The `distill` component (Distilled Decoding).

use super::{base_name, Checker};
use crate::spec::*;
use ecarc_grammar::merged::{Component, MBody};
use ecarc_grammar::{Diag, Span};

impl<'a> Checker<'a> {
    pub(super) fn distill(&self, c: &'a Component, model: &'a MBody, at: Span) -> Option<(DistillSpec, DistillSpans)> {
        let r = self.reader(&c.body, vec![&c.body, model], "distill", at);
        let method = r.word("method", &[("dd", ())], Some(()));
        let steps = r.int("steps", Some(1), 1, 2, "1");
        let split = r.int("split", Some(0), 0, i64::MAX, "80");
        let greedy = r.int("greedy_prefix", Some(-1), -1, i64::MAX, "130");
        r.finish();
        method?;
        let spans = DistillSpans {
            at,
            split: c.body.field("split").map(|f| f.span),
            greedy: c.body.field("greedy_prefix").map(|f| f.span),
        };
        let (steps, split) = (steps? as u64, split? as u64);
        if steps == 2 && c.body.field("split").is_none() {
            r.error(
                Diag::error("E0303", "two-step DD needs `split`")
                    .label(c.body.field("steps").map_or(at, |f| f.span), "steps 2 without split")
                    .help("add `split N`: the stage after which the second step re-noises (VAR-d16: 5, LlamaGen: 80)"),
            );
            return None;
        }
        // Without `greedy_prefix`, the first `split` stages come from the teacher head's argmax.
        let greedy_prefix = match greedy? {
            -1 => split,
            g => g as u64,
        };
        Some((DistillSpec { name: base_name(c), steps, split, greedy_prefix }, spans))
    }
}

#[derive(Clone)]
pub(super) struct DistillSpans {
    pub(super) at: Span,
    pub(super) split: Option<Span>,
    pub(super) greedy: Option<Span>,
}
