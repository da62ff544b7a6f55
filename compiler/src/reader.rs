//! Typed reads of one merged body: each accessor records the key as known, so
//! that what is left over is reported as unknown (with "did you mean"). Errors
//! are collected; accessors return `None` and checking goes on.

use crate::eval::{type_error, EvalScope};
use ecarc_grammar::ast::Num;
use ecarc_grammar::ast::{Expr, ExprKind};
use ecarc_grammar::diag::did_you_mean;
use ecarc_grammar::merged::{Component, MBody, MField, MValue};
use ecarc_grammar::{Diag, Span};
use std::cell::RefCell;

/// Unknown keys reported one by one per body; the rest are summarised.
const MAX_UNKNOWN_REPORTED: usize = 5;

pub(crate) struct Reader<'a> {
    pub body: &'a MBody,
    pub scope: EvalScope<'a>,
    /// What this body is, for messages: "backbone", "sampler", ...
    pub what: &'static str,
    /// Where to point when a required key is missing.
    pub at: Span,
    known: RefCell<Vec<&'static str>>,
    pub diags: &'a RefCell<Vec<Diag>>,
}

impl<'a> Reader<'a> {
    pub fn new(
        body: &'a MBody,
        scope: EvalScope<'a>,
        what: &'static str,
        at: Span,
        diags: &'a RefCell<Vec<Diag>>,
    ) -> Self {
        Reader { body, scope, what, at, known: RefCell::new(vec![]), diags }
    }

    pub(crate) fn error(&self, d: Diag) {
        self.diags.borrow_mut().push(d);
    }

    /// Declare keys as known without reading them (read elsewhere).
    pub(crate) fn allow(&self, keys: &[&'static str]) {
        self.known.borrow_mut().extend_from_slice(keys);
    }

    pub(crate) fn field(&self, key: &'static str) -> Option<&'a MField> {
        self.known.borrow_mut().push(key);
        self.body.field(key)
    }

    fn missing(&self, key: &str, example: &str) {
        self.error(
            Diag::error("E0303", format!("{} is missing `{key}`", self.what))
                .label(self.at, format!("this {} needs `{key}`", self.what))
                .help(format!("add a line such as `{key} {example}`")),
        );
    }

    fn expr(&self, f: &'a MField, expected: &str) -> Option<&'a Expr> {
        match &f.value {
            MValue::Expr(e) => Some(e),
            MValue::Segment { span, .. } => {
                self.error(type_error(*span, expected, "a flow segment"));
                None
            }
            MValue::Component(c) => {
                self.error(type_error(c.span, expected, "a component"));
                None
            }
            MValue::Choice(c) => {
                // Alternatives are expanded before checking; one left here is a bug in a caller.
                self.error(type_error(c.span(), expected, "alternatives"));
                None
            }
        }
    }

    pub(crate) fn num_of(&self, e: &Expr) -> Option<Num> {
        match self.scope.num(e) {
            Ok(n) => Some(n),
            Err(d) => {
                self.error(d);
                None
            }
        }
    }

    /// An integer, checked against `min..=max`.
    pub(crate) fn int(
        &self,
        key: &'static str,
        default: Option<i64>,
        min: i64,
        max: i64,
        example: &str,
    ) -> Option<i64> {
        let Some(f) = self.field(key) else {
            if default.is_none() {
                self.missing(key, example);
            }
            return default;
        };
        let e = self.expr(f, "an integer")?;
        let v = self.int_of(e, key)?;
        self.range_check(key, v as f64, min as f64, max as f64, e.span, &format!("{v}"))?;
        Some(v)
    }

    pub(crate) fn int_of(&self, e: &Expr, key: &str) -> Option<i64> {
        match self.num_of(e)? {
            Num::Int(i) => Some(i),
            Num::Float(x) => {
                self.error(
                    Diag::error("E0302", format!("`{key}` must be an integer"))
                        .label(e.span, format!("this is {}, not a whole number", crate::eval::fmt_f64(x)))
                        .help(format!("write a whole number for `{key}`")),
                );
                None
            }
        }
    }

    fn range_check(&self, key: &str, v: f64, min: f64, max: f64, span: Span, shown: &str) -> Option<()> {
        if v < min || v > max {
            let bound = if v < min { format!("at least {min}") } else { format!("at most {max}") };
            self.error(
                Diag::error("E0304", format!("`{key}` is out of range"))
                    .label(span, format!("{shown} is not allowed here"))
                    .help(format!("`{key}` must be {bound}")),
            );
            None
        } else {
            Some(())
        }
    }

    /// A decimal (integers accepted), checked against `min..=max`.
    pub(crate) fn float(
        &self,
        key: &'static str,
        default: Option<f64>,
        min: f64,
        max: f64,
        example: &str,
    ) -> Option<f64> {
        let Some(f) = self.field(key) else {
            if default.is_none() {
                self.missing(key, example);
            }
            return default;
        };
        let e = self.expr(f, "a number")?;
        let v = self.num_of(e)?.as_f64();
        self.range_check(key, v, min, max, e.span, &format!("{v}"))?;
        Some(v)
    }

    /// One of a fixed set of words.
    pub(crate) fn word<T: Copy>(
        &self,
        key: &'static str,
        choices: &[(&'static str, T)],
        default: Option<T>,
    ) -> Option<T> {
        let Some(f) = self.field(key) else {
            if default.is_none() {
                self.missing(key, choices.first().map(|c| c.0).unwrap_or("..."));
            }
            return default;
        };
        let names: Vec<&str> = choices.iter().map(|c| c.0).collect();
        let e = self.expr(f, &format!("one of {}", names.join(", ")))?;
        self.word_of(e, key, choices)
    }

    pub(crate) fn word_of<T: Copy>(&self, e: &Expr, key: &str, choices: &[(&'static str, T)]) -> Option<T> {
        let names: Vec<&str> = choices.iter().map(|c| c.0).collect();
        let Some(n) = e.as_name() else {
            self.error(
                Diag::error("E0305", format!("`{key}` must be one of: {}", names.join(", ")))
                    .label(e.span, "not one of the allowed words")
                    .help(format!("write one of: {}", names.join(", "))),
            );
            return None;
        };
        match choices.iter().find(|c| c.0 == n) {
            Some(c) => Some(c.1),
            None => {
                let help = match did_you_mean(n, names.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`? allowed: {}", names.join(", ")),
                    None => format!("allowed: {}", names.join(", ")),
                };
                self.error(
                    Diag::error("E0305", format!("unknown {key} `{n}`"))
                        .label(e.span, format!("not a valid `{key}`"))
                        .help(help),
                );
                None
            }
        }
    }

    pub(crate) fn bool(&self, key: &'static str, default: bool) -> bool {
        self.word(key, &[("true", true), ("false", false)], Some(default)).unwrap_or(default)
    }

    /// A size: `16x16`, or one integer for a square.
    pub fn size(&self, key: &'static str, example: &str) -> Option<[u64; 2]> {
        let Some(f) = self.field(key) else {
            self.missing(key, example);
            return None;
        };
        let e = self.expr(f, "a size")?;
        self.size_of(e, key)
    }

    pub(crate) fn size_of(&self, e: &Expr, key: &str) -> Option<[u64; 2]> {
        match &e.kind {
            ExprKind::Size { w, h } => {
                if *w == 0 || *h == 0 {
                    self.error(
                        Diag::error("E0304", format!("`{key}` size has a zero side"))
                            .label(e.span, format!("{w}x{h} holds no tokens"))
                            .help("sizes are at least 1x1, written WIDTHxHEIGHT such as `16x16`"),
                    );
                    return None;
                }
                Some([*h, *w])
            }
            _ => {
                let v = self.int_of(e, key)?;
                if v < 1 {
                    self.error(
                        Diag::error("E0304", format!("`{key}` must be at least 1"))
                            .label(e.span, format!("{v} is not a size"))
                            .help("write a size such as `16x16` or `16`"),
                    );
                    return None;
                }
                Some([v as u64, v as u64])
            }
        }
    }

    /// A list of integers each >= `min`.
    pub(crate) fn int_list(&self, key: &'static str, min: i64, example: &str, required: bool) -> Option<Vec<u64>> {
        let Some(f) = self.field(key) else {
            if required {
                self.missing(key, example);
            }
            return None;
        };
        let e = self.expr(f, "a list")?;
        self.int_list_of(e, key, min)
    }

    pub(crate) fn int_list_of(&self, e: &Expr, key: &str, min: i64) -> Option<Vec<u64>> {
        let ExprKind::List(items) = &e.kind else {
            self.error(type_error(e.span, "a list such as `[1, 2, 4]`", "a single value"));
            return None;
        };
        if items.is_empty() {
            self.error(
                Diag::error("E0304", format!("`{key}` is empty"))
                    .label(e.span, "empty list")
                    .help("give at least one element"),
            );
            return None;
        }
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for it in items {
            match self.int_of(it, key) {
                Some(v) if v >= min => out.push(v as u64),
                Some(v) => {
                    self.error(
                        Diag::error("E0304", format!("`{key}` elements must be at least {min}"))
                            .label(it.span, format!("{v} is too small"))
                            .help(format!("every element of `{key}` must be >= {min}")),
                    );
                    ok = false;
                }
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    pub(crate) fn component(&self, key: &'static str, required: bool) -> Option<(&'a Component, Span)> {
        let Some(f) = self.field(key) else {
            if required {
                self.error(
                    Diag::error("E0303", format!("{} is missing `{key}`", self.what))
                        .label(self.at, format!("this {} needs `{key}`", self.what))
                        .help(format!("add `{key} NAME` (a {} definition) or `{key} {{ ... }}`", kind_of(key))),
                );
            }
            return None;
        };
        match &f.value {
            MValue::Component(c) => Some((c, f.key.span)),
            other => {
                let found = match other {
                    MValue::Expr(e) => match &e.kind {
                        ExprKind::List(_) => "a list",
                        ExprKind::Number { .. } => "a number",
                        ExprKind::Size { .. } => "a size",
                        ExprKind::Str(_) => "a string",
                        _ => "a plain value",
                    },
                    MValue::Segment { .. } => "a flow segment",
                    _ => "a plain value",
                };
                let help = match (key, found) {
                    ("schedule", "a list") => {
                        "a list of scales goes inside the schedule: `schedule { scales [...] }`".to_string()
                    }
                    ("schedule", "a size") => {
                        "a raster goes inside the schedule: `schedule { raster 16x16 }`".to_string()
                    }
                    _ => format!("write `{key} NAME` (a {} definition) or `{key} {{ ... }}`", kind_of(key)),
                };
                self.error(type_error(other.span(), &format!("a {key} component"), found).help(help));
                None
            }
        }
    }

    /// Report fields that no accessor asked for.
    pub(crate) fn finish(&self) {
        let known = self.known.borrow();
        let unknown: Vec<_> = self.body.fields().filter(|f| !known.contains(&f.key.name.as_str())).collect();
        // A body full of unknown keys (a paste into the wrong block) gets the
        // first few reported one by one and the rest in one line.
        if unknown.len() > MAX_UNKNOWN_REPORTED {
            let rest = &unknown[MAX_UNKNOWN_REPORTED..];
            let names: Vec<&str> = rest.iter().take(8).map(|f| f.key.name.as_str()).collect();
            let more = if rest.len() > names.len() { ", ..." } else { "" };
            self.error(
                Diag::error("E0306", format!("{} more unknown keys in {}", rest.len(), self.what))
                    .label(rest[0].key.span, "the first of them")
                    .help(format!(
                        "`{}`{more} are not keys of {}; was this pasted into the wrong block?",
                        names.join("`, `"),
                        self.what
                    )),
            );
        }
        for f in unknown.into_iter().take(MAX_UNKNOWN_REPORTED) {
            {
                let mut d = Diag::error("E0306", format!("unknown key `{}` in {}", f.key.name, self.what))
                    .label(f.key.span, "not a key of this block");
                d = match did_you_mean(&f.key.name, known.iter().copied()) {
                    Some(s) => d.help(format!("did you mean `{s}`?")),
                    None => {
                        let mut ks: Vec<&str> = known.to_vec();
                        ks.sort();
                        ks.dedup();
                        d.help(format!("keys of {}: {}", self.what, ks.join(", ")))
                    }
                };
                self.error(d);
            }
        }
    }
}

/// The definition kind a component key names (`sample` names a `sampler`).
fn kind_of(key: &str) -> &str {
    match key {
        "sample" => "sampler",
        k => k,
    }
}
