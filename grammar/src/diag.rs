//! Diagnostics: plain data (code, message, spanned labels, help), rendered with
//! miette against the [`SourceMap`] that owns the spans. Keeping them as data lets
//! every stage collect several errors at once and lets tests snapshot them.

use crate::source::{SourceMap, Span};
use miette::{Diagnostic, GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource, Severity};
use std::fmt;
use std::sync::Arc;

/// A label: a span and what to say about it.
#[derive(Clone, Debug, PartialEq)]
pub struct Label {
    pub span: Span,
    pub message: String,
}

/// One diagnostic. The primary label comes first; labels in other files than the
/// primary one are rendered as related notes pointing into those files.
#[derive(Clone, Debug, PartialEq)]
pub struct Diag {
    pub code: &'static str,
    pub message: String,
    pub labels: Vec<Label>,
    pub help: Option<String>,
    pub severity: Sev,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sev {
    Error,
    Warning,
}

impl Diag {
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        Diag { code, message: message.into(), labels: vec![], help: None, severity: Sev::Error }
    }
    pub fn warning(code: &'static str, message: impl Into<String>) -> Self {
        Diag { severity: Sev::Warning, ..Diag::error(code, message) }
    }
    /// Add a label; the first one added is the primary location.
    pub fn label(mut self, span: Span, message: impl Into<String>) -> Self {
        self.labels.push(Label { span, message: message.into() });
        self
    }
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
    pub fn primary_span(&self) -> Option<Span> {
        self.labels.first().map(|l| l.span)
    }
    pub fn is_error(&self) -> bool {
        self.severity == Sev::Error
    }

    /// A miette diagnostic with its source attached, ready to print.
    pub fn to_report(&self, sources: &SourceMap) -> Rendered {
        let primary_file = self.primary_span().map(|s| s.file);
        let mut labels = Vec::new();
        let mut related = Vec::new();
        for l in &self.labels {
            if Some(l.span.file) == primary_file {
                labels.push(l.clone());
            } else {
                related.push(Rendered {
                    code: None,
                    message: l.message.clone(),
                    labels: vec![Label { span: l.span, message: String::new() }],
                    help: None,
                    severity: Severity::Advice,
                    source: Some(named_source(sources, l.span)),
                    related: vec![],
                });
            }
        }
        Rendered {
            code: Some(self.code),
            message: self.message.clone(),
            labels,
            help: self.help.clone(),
            severity: match self.severity {
                Sev::Error => Severity::Error,
                Sev::Warning => Severity::Warning,
            },
            source: self.primary_span().map(|s| named_source(sources, s)),
            related,
        }
    }

    /// Render as text without colours (for tests, logs and `--color never`).
    pub fn render_plain(&self, sources: &SourceMap) -> String {
        let mut out = String::new();
        let handler = GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor()).with_width(100);
        let _ = handler.render_report(&mut out, &self.to_report(sources));
        out
    }
}

/// Render a list of diagnostics as plain text, separated by blank lines.
pub fn render_all_plain(diags: &[Diag], sources: &SourceMap) -> String {
    diags.iter().map(|d| d.render_plain(sources)).collect::<Vec<_>>().join("\n")
}

fn named_source(sources: &SourceMap, span: Span) -> NamedSource<Arc<str>> {
    let f = sources.get(span.file);
    NamedSource::new(f.name.clone(), f.text.clone())
}

/// A [`Diag`] bound to its source text: implements [`miette::Diagnostic`].
#[derive(Debug)]
pub struct Rendered {
    code: Option<&'static str>,
    message: String,
    labels: Vec<Label>,
    help: Option<String>,
    severity: Severity,
    source: Option<NamedSource<Arc<str>>>,
    related: Vec<Rendered>,
}

impl fmt::Display for Rendered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Rendered {}

impl Diagnostic for Rendered {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.code.map(|c| Box::new(c) as Box<dyn fmt::Display>)
    }
    fn severity(&self) -> Option<Severity> {
        Some(self.severity)
    }
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help.as_ref().map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.source.as_ref().map(|s| s as &dyn miette::SourceCode)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        if self.labels.is_empty() {
            return None;
        }
        Some(Box::new(self.labels.iter().enumerate().map(|(i, l)| {
            let text = if l.message.is_empty() { None } else { Some(l.message.clone()) };
            if i == 0 {
                LabeledSpan::new_primary_with_span(text, l.span.range())
            } else {
                LabeledSpan::new_with_span(text, l.span.range())
            }
        })))
    }
    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        if self.related.is_empty() {
            return None;
        }
        Some(Box::new(self.related.iter().map(|r| r as &dyn Diagnostic)))
    }
}

/// The closest candidate to `name`, if one is close enough to be a likely typo.
pub fn did_you_mean<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let mut best: Option<(f64, &str)> = None;
    for c in candidates {
        let score = strsim::jaro_winkler(name, c);
        let dist = strsim::levenshtein(name, c);
        let close = score > 0.85 || dist <= (name.len().max(3) / 3).max(1);
        if close && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, c));
        }
    }
    best.map(|(_, c)| c)
}
