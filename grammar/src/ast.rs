//! The syntax tree of a `.ecar` file. Every node has a [`Span`].

use crate::source::Span;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct File {
    pub items: Vec<Item>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Item {
    Import(Import),
    Definition(Definition),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Import {
    pub path: StrLit,
    pub span: Span,
}

/// `KIND NAME [extends BASE] { ... }`, e.g. `model ecar_l { ... }`,
/// `tokenizer kl16 { ... }`, `block var_adaln { ... }`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Definition {
    pub kind: Ident,
    pub name: Ident,
    pub extends: Option<Ident>,
    pub body: Body,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Body {
    pub entries: Vec<Entry>,
    pub span: Span,
}

// Syntax trees are built once per file and walked by reference; boxing the
// large variants would cost an allocation per node for no measurable gain.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Entry {
    Field(Field),
    Stage(StageRow),
    Params(ParamGroup),
    Constraint(Constraint),
}

impl Entry {
    pub(crate) fn span(&self) -> Span {
        match self {
            Entry::Field(f) => f.span,
            Entry::Stage(s) => s.span,
            Entry::Params(p) => p.span,
            Entry::Constraint(c) => c.span,
        }
    }
}

/// `key value` or `key in alternatives`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Field {
    pub key: Ident,
    pub value: FieldValue,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum FieldValue {
    Value(Value),
    Alternatives(Alternatives),
}

/// `in { a, b, c }` or `in lo..=hi step s`.
// Syntax trees are built once per file and walked by reference; boxing the
// large variants would cost an allocation per node for no measurable gain.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Alternatives {
    Set { items: Vec<Value>, span: Span },
    Range { lo: Expr, hi: Expr, inclusive: bool, step: Option<Expr>, span: Span },
}

impl Alternatives {
    pub fn span(&self) -> Span {
        match self {
            Alternatives::Set { span, .. } | Alternatives::Range { span, .. } => *span,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Value {
    Expr(Expr),
    /// `[BASE] { entries }`: a sub-component, optionally based on a definition.
    Component {
        base: Option<Ident>,
        body: Body,
        span: Span,
    },
    /// `from -> to`: a flow-time segment.
    Segment {
        from: Expr,
        to: Expr,
        span: Span,
    },
}

impl Value {
    pub fn span(&self) -> Span {
        match self {
            Value::Expr(e) => e.span,
            Value::Component { span, .. } | Value::Segment { span, .. } => *span,
        }
    }
}

/// `stage GRID [from -> to] [steps N]`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StageRow {
    pub grid: Expr,
    pub segment: Option<(Expr, Expr, Span)>,
    pub steps: Option<Expr>,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ParamKind {
    Params,
    Buffers,
}

/// `params ["prefix"] [for i in lo..hi[, j in lo..hi]] [when [!]flag | when a OP b] { role "key" [dims] ... }`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ParamGroup {
    pub kind: ParamKind,
    pub prefix: Option<StrLit>,
    pub repeat: Option<Repeat>,
    /// The second, inner loop of `for l in .., j in ..`.
    pub inner: Option<Repeat>,
    pub condition: Option<Condition>,
    /// `when a OP b`: a comparison evaluated for each copy.
    pub guard: Option<Guard>,
    pub decls: Vec<ParamDecl>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Repeat {
    pub var: Ident,
    pub lo: Expr,
    pub hi: Expr,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Condition {
    pub negated: bool,
    pub flag: Ident,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Guard {
    pub lhs: Expr,
    pub op: CmpOp,
    pub rhs: Expr,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ParamDecl {
    pub role: Ident,
    pub key: StrLit,
    pub shape: Vec<Expr>,
    pub span: Span,
}

/// `where METRIC OP bound` (evaluated by `ecarc search`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Constraint {
    pub metric: Ident,
    pub op: CmpOp,
    pub bound: Expr,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum CmpOp {
    Le,
    Ge,
    Lt,
    Gt,
    Eq,
    Ne,
}

impl CmpOp {
    /// Whether `a OP b` holds.
    pub fn holds(self, a: f64, b: f64) -> bool {
        match self {
            CmpOp::Le => a <= b,
            CmpOp::Ge => a >= b,
            CmpOp::Lt => a < b,
            CmpOp::Gt => a > b,
            CmpOp::Eq => a == b,
            CmpOp::Ne => a != b,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CmpOp::Le => "<=",
            CmpOp::Ge => ">=",
            CmpOp::Lt => "<",
            CmpOp::Gt => ">",
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StrLit {
    pub value: String,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

/// A number, as written or as the checker evaluates it: integers stay exact.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Num {
    Int(i64),
    Float(f64),
}

impl Num {
    pub fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }
}

impl std::fmt::Display for Num {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Num::Int(i) => write!(f, "{i}"),
            Num::Float(x) => write!(f, "{x}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
}

impl BinOp {
    pub fn as_str(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
        }
    }
    pub(crate) fn precedence(self) -> u8 {
        match self {
            BinOp::Add | BinOp::Sub => 1,
            BinOp::Mul | BinOp::Div => 2,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum ExprKind {
    /// A number literal; `text` is kept so the formatter prints it as written.
    Number {
        value: Num,
        text: String,
    },
    /// `16x16`.
    Size {
        w: u64,
        h: u64,
    },
    Str(String),
    /// A name: an enum word (`rmsnorm`), a boolean, or a reference to a field.
    Name(String),
    Call {
        name: Ident,
        args: Vec<Arg>,
    },
    /// `name[index]`: an element of a list-valued field.
    Index {
        name: Ident,
        index: Box<Expr>,
    },
    List(Vec<Expr>),
    Neg(Box<Expr>),
    Binary {
        op: BinOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
    /// Kept so the formatter can print parentheses the user wrote.
    Paren(Box<Expr>),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
}

impl Expr {
    /// The name, if this expression is a bare name.
    pub fn as_name(&self) -> Option<&str> {
        match &self.kind {
            ExprKind::Name(n) => Some(n),
            ExprKind::Paren(e) => e.as_name(),
            _ => None,
        }
    }
}
