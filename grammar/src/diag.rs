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
                let (source, shift) = source_for(sources, l.span);
                related.push(Rendered {
                    code: None,
                    message: l.message.clone(),
                    labels: shifted(&[Label { span: l.span, message: String::new() }], shift),
                    help: None,
                    severity: Severity::Advice,
                    source: Some(source),
                    related: vec![],
                });
            }
        }
        let (source, labels) = match self.primary_span() {
            Some(p) => {
                let (source, shift) = source_for(sources, p);
                (Some(source), shifted(&labels, shift))
            }
            None => (None, vec![]),
        };
        Rendered {
            code: Some(self.code),
            message: self.message.clone(),
            labels,
            help: self.help.clone(),
            severity: match self.severity {
                Sev::Error => Severity::Error,
                Sev::Warning => Severity::Warning,
            },
            source,
            related,
        }
    }

    /// Render as text without colours (for tests, logs and `--color never`).
    pub(crate) fn render_plain(&self, sources: &SourceMap) -> String {
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

/// Lines longer than this are shown as an excerpt around the label: the
/// renderer pads to the label's column, which must stay small.
const LONG_LINE: usize = 2_000;
/// Bytes of context kept on each side of the label in an excerpt.
const CONTEXT: usize = 120;

/// Where a span's shifted range starts (`None`: the whole file is shown).
type Shift = Option<std::ops::Range<usize>>;

/// The source to show for a span: the whole file, or, when the span sits on a
/// very long line (a 5 MB line, minified input), an excerpt of that line.
fn source_for(sources: &SourceMap, span: Span) -> (NamedSource<Arc<str>>, Shift) {
    let f = sources.get(span.file);
    let text: &str = &f.text;
    let (start, end) = (span.start as usize, (span.end as usize).min(text.len()));
    let line_start = text[..floor(text, start)].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[floor(text, end)..].find('\n').map_or(text.len(), |i| floor(text, end) + i);
    if line_end - line_start <= LONG_LINE {
        return (NamedSource::new(f.name.clone(), f.text.clone()), None);
    }
    let from = floor(text, start.saturating_sub(CONTEXT).max(line_start));
    // A label that is itself huge is shown by its beginning.
    let shown_end = end.min(start + LONG_LINE / 2);
    let to = ceil(text, (shown_end + CONTEXT).min(line_end).max(from));
    let (line, col) = sources.line_col(span.file, span.start);
    let name = format!("{} (excerpt of line {line} from column {})", f.name, col.saturating_sub(start - from));
    (NamedSource::new(name, Arc::<str>::from(&text[from..to])), Some(from..to))
}

/// Labels moved into an excerpt; labels outside it are dropped.
fn shifted(labels: &[Label], shift: Shift) -> Vec<Label> {
    match shift {
        None => labels.to_vec(),
        Some(w) => labels
            .iter()
            .filter(|l| (l.span.start as usize) >= w.start && (l.span.start as usize) <= w.end)
            .map(|l| Label {
                span: Span {
                    file: l.span.file,
                    start: l.span.start - w.start as u32,
                    end: (l.span.end as usize).min(w.end) as u32 - w.start as u32,
                },
                message: l.message.clone(),
            })
            .collect(),
    }
}

fn floor(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while i < s.len() && !s.is_char_boundary(i) {
        i += 1;
    }
    i
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
