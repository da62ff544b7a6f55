//! Broken designs, counted and explained: one group per distinct problem
//! (code, message and primary location, as `ecarc check` groups them), with
//! how many designs it breaks and the smallest design indices as examples.
//! A design with several problems counts in each of their groups.

use ecarc_grammar::{Diag, SourceMap, Span};
use serde::{Deserialize, Serialize};

/// Examples kept per group.
pub(crate) const EXAMPLES: usize = 3;

/// Groups while a run goes on (diagnostics with their spans).
#[derive(Clone, Debug, Default)]
pub(crate) struct Groups {
    groups: Vec<Group>,
}

#[derive(Clone, Debug)]
struct Group {
    code: String,
    message: String,
    span: Option<Span>,
    count: u128,
    /// The smallest design indices, each with its diagnostic (sorted).
    examples: Vec<(u128, Diag)>,
}

impl Groups {
    /// Add a broken design's errors.
    pub(crate) fn add(&mut self, index: u128, diags: &[Diag]) {
        for d in diags {
            let span = d.primary_span();
            match self.groups.iter_mut().find(|g| g.code == d.code && g.message == d.message && g.span == span) {
                Some(g) => {
                    g.count += 1;
                    keep_smallest(&mut g.examples, (index, d.clone()));
                }
                None => self.groups.push(Group {
                    code: d.code.to_string(),
                    message: d.message.clone(),
                    span,
                    count: 1,
                    examples: vec![(index, d.clone())],
                }),
            }
        }
    }

    pub fn merge(&mut self, other: Groups) {
        for o in other.groups {
            match self.groups.iter_mut().find(|g| g.code == o.code && g.message == o.message && g.span == o.span) {
                Some(g) => {
                    g.count += o.count;
                    for e in o.examples {
                        keep_smallest(&mut g.examples, e);
                    }
                }
                None => self.groups.push(o),
            }
        }
    }

    /// The groups as reported: rendered with the sources, most frequent first.
    /// `design` names a design's options.
    pub(crate) fn report(
        self,
        sources: &SourceMap,
        design: &dyn Fn(u128) -> Vec<(String, String)>,
    ) -> Vec<InvalidGroup> {
        let mut out: Vec<InvalidGroup> = self
            .groups
            .into_iter()
            .map(|g| {
                let location = match g.span {
                    Some(s) => {
                        let f = sources.get(s.file);
                        let (line, col) = line_col(&f.text, s.start as usize);
                        format!("{}:{line}:{col}", f.name)
                    }
                    None => String::new(),
                };
                let rendered = ecarc_grammar::diag::render_all_plain(&[g.examples[0].1.clone()], sources);
                InvalidGroup {
                    code: g.code,
                    message: g.message,
                    location,
                    count: g.count,
                    examples: g.examples.iter().map(|(i, _)| Example { index: *i, design: design(*i) }).collect(),
                    rendered,
                }
            })
            .collect();
        sort_groups(&mut out);
        out
    }
}

fn keep_smallest(examples: &mut Vec<(u128, Diag)>, e: (u128, Diag)) {
    if examples.iter().any(|x| x.0 == e.0) {
        return;
    }
    let at = examples.partition_point(|x| x.0 < e.0);
    if at < EXAMPLES {
        examples.insert(at, e);
        examples.truncate(EXAMPLES);
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..text.floor_char_boundary(offset.min(text.len()))];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// One problem and the designs it breaks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InvalidGroup {
    pub code: String,
    pub message: String,
    /// `file:line:column` of the problem's primary label.
    pub location: String,
    /// Designs it breaks.
    pub count: u128,
    /// The smallest design indices it breaks.
    pub examples: Vec<Example>,
    /// The diagnostic of the first example, rendered as `ecarc check` shows it.
    pub rendered: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Example {
    pub index: u128,
    pub design: Vec<(String, String)>,
}

/// Most frequent first, then by code, message and location.
pub(crate) fn sort_groups(groups: &mut [InvalidGroup]) {
    groups.sort_by(|a, b| {
        b.count.cmp(&a.count).then_with(|| (&a.code, &a.message, &a.location).cmp(&(&b.code, &b.message, &b.location)))
    });
}

/// Merge reported groups (from shards): counts add up, the smallest examples stay.
pub(crate) fn merge_reported(into: &mut Vec<InvalidGroup>, other: Vec<InvalidGroup>) {
    for o in other {
        match into.iter_mut().find(|g| (&g.code, &g.message, &g.location) == (&o.code, &o.message, &o.location)) {
            Some(g) => {
                g.count += o.count;
                if o.examples.first().map(|e| e.index) < g.examples.first().map(|e| e.index) {
                    g.rendered = o.rendered.clone();
                }
                for e in o.examples {
                    if g.examples.iter().any(|x| x.index == e.index) {
                        continue;
                    }
                    let at = g.examples.partition_point(|x| x.index < e.index);
                    g.examples.insert(at, e);
                }
                g.examples.truncate(EXAMPLES);
            }
            None => into.push(o),
        }
    }
    sort_groups(into);
}
