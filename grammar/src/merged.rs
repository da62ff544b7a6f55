//! The resolved form of a definition: imports followed, `extends` chains and
//! component references merged, overrides applied. Still untyped (the checker
//! in `ecarc-compiler` gives it types), but every entry keeps its original span,
//! so diagnostics point into the file that wrote it.

use crate::ast::{Alternatives, Constraint, Expr, Ident, ParamGroup, StageRow};
use crate::source::Span;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MBody {
    pub entries: Vec<MEntry>,
    pub span: Span,
}

// Syntax trees are built once per file and walked by reference; boxing the
// large variants would cost an allocation per node for no measurable gain.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum MEntry {
    Field(MField),
    Stage(StageRow),
    Params(ParamGroup),
    Constraint(Constraint),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MField {
    pub key: Ident,
    pub value: MValue,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum MValue {
    Expr(Expr),
    Segment {
        from: Expr,
        to: Expr,
        span: Span,
    },
    Component(Component),
    /// Alternatives, each already resolved (a set may hold components).
    Choice(Choice),
}

// Syntax trees are built once per file and walked by reference; boxing the
// large variants would cost an allocation per node for no measurable gain.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Choice {
    Set { items: Vec<MValue>, span: Span },
    Range { lo: Expr, hi: Expr, inclusive: bool, step: Option<Expr>, span: Span },
}

impl Choice {
    pub fn span(&self) -> Span {
        match self {
            Choice::Set { span, .. } | Choice::Range { span, .. } => *span,
        }
    }
    pub(crate) fn from_ast(a: &Alternatives, items: Vec<MValue>) -> Choice {
        match a {
            Alternatives::Set { span, .. } => Choice::Set { items, span: *span },
            Alternatives::Range { lo, hi, inclusive, step, span } => {
                Choice::Range { lo: lo.clone(), hi: hi.clone(), inclusive: *inclusive, step: step.clone(), span: *span }
            }
        }
    }
}

/// A sub-component: the chain of definitions it is based on (outermost base
/// last) and its merged body.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Component {
    pub bases: Vec<Ident>,
    pub body: MBody,
    pub span: Span,
}

impl MValue {
    pub fn span(&self) -> Span {
        match self {
            MValue::Expr(e) => e.span,
            MValue::Segment { span, .. } => *span,
            MValue::Component(c) => c.span,
            MValue::Choice(c) => c.span(),
        }
    }
}

impl MBody {
    pub fn field(&self, key: &str) -> Option<&MField> {
        self.entries.iter().find_map(|e| match e {
            MEntry::Field(f) if f.key.name == key => Some(f),
            _ => None,
        })
    }
    pub fn field_mut(&mut self, key: &str) -> Option<&mut MField> {
        self.entries.iter_mut().find_map(|e| match e {
            MEntry::Field(f) if f.key.name == key => Some(f),
            _ => None,
        })
    }
    pub fn fields(&self) -> impl Iterator<Item = &MField> {
        self.entries.iter().filter_map(|e| match e {
            MEntry::Field(f) => Some(f),
            _ => None,
        })
    }
    pub fn stages(&self) -> impl Iterator<Item = &StageRow> {
        self.entries.iter().filter_map(|e| match e {
            MEntry::Stage(s) => Some(s),
            _ => None,
        })
    }
    pub fn param_groups(&self) -> impl Iterator<Item = &ParamGroup> {
        self.entries.iter().filter_map(|e| match e {
            MEntry::Params(p) => Some(p),
            _ => None,
        })
    }
    pub fn constraints(&self) -> impl Iterator<Item = &Constraint> {
        self.entries.iter().filter_map(|e| match e {
            MEntry::Constraint(c) => Some(c),
            _ => None,
        })
    }

    /// `over` on top of `self`, entry by entry (see docs/language.md, "extends").
    pub fn merge(&self, over: &MBody) -> MBody {
        let mut out = self.clone();
        out.span = over.span;
        // The ways of listing stages are one slot: a child that gives any of them
        // replaces whatever form the base used.
        let stage_forms = |k: &str| matches!(k, "raster" | "scales");
        let over_has_stage_form = over
            .entries
            .iter()
            .any(|e| matches!(e, MEntry::Stage(_)) || matches!(e, MEntry::Field(f) if stage_forms(&f.key.name)));
        if over_has_stage_form {
            out.entries.retain(|e| {
                !matches!(e, MEntry::Stage(_)) && !matches!(e, MEntry::Field(f) if stage_forms(&f.key.name))
            });
        }
        for e in &over.entries {
            match e {
                MEntry::Field(f) => match out.field_mut(&f.key.name) {
                    Some(existing) => {
                        let merged = match (&existing.value, &f.value) {
                            (MValue::Component(b), MValue::Component(o)) if o.bases.is_empty() => {
                                MValue::Component(Component {
                                    bases: b.bases.clone(),
                                    body: b.body.merge(&o.body),
                                    span: o.span,
                                })
                            }
                            _ => f.value.clone(),
                        };
                        existing.value = merged;
                        existing.key = f.key.clone();
                        existing.span = f.span;
                    }
                    None => out.entries.push(e.clone()),
                },
                _ => out.entries.push(e.clone()),
            }
        }
        out
    }
}
