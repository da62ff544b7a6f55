//! pest parse tree -> AST. Parsing never panics: bad input becomes a [`Diag`].

use crate::ast::*;
use crate::diag::Diag;
use crate::source::{FileId, Span};
use pest::iterators::Pair;
use pest::Parser as _;

#[derive(pest_derive::Parser)]
#[grammar = "ecar.pest"]
struct EcarParser;

/// Brackets may nest at most this deep. pest's recursive descent uses the native
/// stack, so depth is bounded before parsing rather than discovered by a crash.
pub(crate) const MAX_NESTING: usize = 64;

/// An expression may nest at most this deep: operators, signs and brackets
/// together (`1+1+...+1` with n terms is n - 1 deep). Everything downstream
/// (evaluation, formatting, dropping the tree) recurses over expressions.
pub(crate) const MAX_EXPR_DEPTH: usize = 256;

/// Parse a whole file.
pub fn parse_file(file: FileId, text: &str) -> Result<File, Vec<Diag>> {
    check_nesting(file, text)?;
    let mut pairs = EcarParser::parse(Rule::file, text).map_err(|e| vec![pest_error(file, e)])?;
    let root = pairs.next().expect("file rule always yields one pair");
    let mut b = Builder { file, errors: Vec::new() };
    let span = b.span(&root);
    let mut items = Vec::new();
    for p in root.into_inner() {
        match p.as_rule() {
            Rule::import => {
                let span = b.span(&p);
                let s = p.into_inner().find(|q| q.as_rule() == Rule::string).expect("import has a string");
                items.push(Item::Import(Import { path: b.string(s), span }));
            }
            Rule::definition => items.push(Item::Definition(b.definition(p))),
            Rule::EOI => {}
            r => unreachable!("unexpected rule at top level: {r:?}"),
        }
    }
    if b.errors.is_empty() {
        Ok(File { items, span })
    } else {
        Err(b.errors)
    }
}

/// Parse the right-hand side of `--set key=value` (a value or `in` alternatives).
pub fn parse_set_value(file: FileId, text: &str) -> Result<FieldValue, Vec<Diag>> {
    check_nesting(file, text)?;
    let mut pairs = EcarParser::parse(Rule::set_value, text).map_err(|e| vec![pest_error(file, e)])?;
    let root = pairs.next().expect("set_value yields one pair");
    let mut b = Builder { file, errors: Vec::new() };
    let inner = root.into_inner().next().expect("set_value has a value");
    let v = match inner.as_rule() {
        Rule::alternatives => FieldValue::Alternatives(b.alternatives(inner)),
        _ => FieldValue::Value(b.value(inner)),
    };
    if b.errors.is_empty() {
        Ok(v)
    } else {
        Err(b.errors)
    }
}

fn check_nesting(file: FileId, text: &str) -> Result<(), Vec<Diag>> {
    let mut depth = 0usize;
    for (i, b) in crate::lex::code_bytes(text.as_bytes()) {
        match b {
            b'{' | b'[' | b'(' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(vec![Diag::error("E0102", format!("brackets nest deeper than {MAX_NESTING} levels"))
                        .label(Span::new(file, i, i + 1), "this bracket is too deep")
                        .help("flatten the definition: model files never need deep nesting")]);
                }
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

fn rule_name(r: &Rule) -> Option<&'static str> {
    Some(match r {
        Rule::EOI => "end of file",
        Rule::import => "`import`",
        Rule::definition => "a definition (`model NAME { ... }`)",
        Rule::ident | Rule::name | Rule::index_name => "a name",
        Rule::extends | Rule::kw_extends => "`extends`",
        Rule::body => "`{`",
        Rule::field | Rule::stage_row | Rule::param_group | Rule::constraint => "an entry (`key value`)",
        Rule::alternatives | Rule::kw_in => "`in`",
        Rule::value | Rule::expr | Rule::segment | Rule::component => "a value",
        Rule::number => "a number",
        Rule::size => "a size such as `16x16`",
        Rule::string => "a string",
        Rule::list => "a list",
        Rule::call => "a call",
        Rule::range_op => "`..` or `..=`",
        Rule::set => "`{`",
        Rule::kw_step => "`step`",
        Rule::kw_steps => "`steps`",
        Rule::cmp_op => "a comparison (`<=`, `>=`, `<`, `>`, `==`)",
        Rule::param_decl => "a parameter (`role \"key\" [dims]`)",
        Rule::shape => "a shape such as `[width, width]`",
        Rule::repeat | Rule::kw_for => "`for`",
        Rule::condition | Rule::kw_when => "`when`",
        Rule::add | Rule::sub | Rule::mul | Rule::div => "an operator",
        Rule::neg => "`-`",
        Rule::arg => "an argument",
        _ => return None,
    })
}

fn pest_error(file: FileId, e: pest::error::Error<Rule>) -> Diag {
    use pest::error::{ErrorVariant, InputLocation};
    let (start, end) = match e.location {
        InputLocation::Pos(p) => (p, p),
        InputLocation::Span((s, e)) => (s, e),
    };
    let mut expected: Vec<&str> = match &e.variant {
        ErrorVariant::ParsingError { positives, .. } => positives.iter().filter_map(rule_name).collect(),
        ErrorVariant::CustomError { .. } => vec![],
    };
    expected.sort();
    expected.dedup();
    let what = match expected.len() {
        0 => "unexpected input".to_string(),
        1 => format!("expected {}", expected[0]),
        _ => {
            let (last, rest) = expected.split_last().expect("len >= 2");
            format!("expected {} or {}", rest.join(", "), last)
        }
    };
    Diag::error("E0101", format!("syntax error: {what}"))
        .label(Span::new(file, start, end.max(start)), what)
        .help("entries are `key value`, `stage GRID FROM -> TO steps N`, or `key in {a, b}`; see docs/language.md")
}

struct Builder {
    file: FileId,
    errors: Vec<Diag>,
}

impl Builder {
    /// The pair's span without the whitespace and comments pest's implicit
    /// skipping leaves at its end (a rule ending in `x*` swallows them), so that
    /// a trailing comment is never inside the entry it follows.
    fn span(&self, p: &Pair<Rule>) -> Span {
        let s = p.as_span();
        let text = p.get_input();
        Span::new(self.file, s.start(), trim_trailing_trivia(text, s.start(), s.end()))
    }

    fn ident(&self, p: Pair<Rule>) -> Ident {
        Ident { name: p.as_str().to_string(), span: self.span(&p) }
    }

    fn string(&self, p: Pair<Rule>) -> StrLit {
        let span = self.span(&p);
        let raw = p.into_inner().next().map(|q| q.as_str()).unwrap_or("");
        let mut value = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                match chars.next() {
                    Some('n') => value.push('\n'),
                    Some('t') => value.push('\t'),
                    Some(other) => value.push(other),
                    None => {}
                }
            } else {
                value.push(c);
            }
        }
        StrLit { value, span }
    }

    fn definition(&mut self, p: Pair<Rule>) -> Definition {
        let span = self.span(&p);
        let mut it = p.into_inner();
        let kind = self.ident(it.next().expect("kind"));
        let name = self.ident(it.next().expect("name"));
        let mut extends = None;
        let mut body = None;
        for q in it {
            match q.as_rule() {
                Rule::extends => extends = Some(self.ident(q.into_inner().nth(1).expect("base name"))),
                Rule::body => body = Some(self.body(q)),
                r => unreachable!("definition: {r:?}"),
            }
        }
        Definition { kind, name, extends, body: body.expect("definition has a body"), span }
    }

    fn body(&mut self, p: Pair<Rule>) -> Body {
        let span = self.span(&p);
        let entries = p.into_inner().map(|q| self.entry(q)).collect();
        Body { entries, span }
    }

    fn entry(&mut self, p: Pair<Rule>) -> Entry {
        let span = self.span(&p);
        match p.as_rule() {
            Rule::field => {
                let mut it = p.into_inner();
                let key = self.ident(it.next().expect("key"));
                let v = it.next().expect("field value");
                let value = match v.as_rule() {
                    Rule::alternatives => FieldValue::Alternatives(self.alternatives(v)),
                    _ => FieldValue::Value(self.value(v)),
                };
                Entry::Field(Field { key, value, span })
            }
            Rule::stage_row => {
                let mut grid = None;
                let mut segment = None;
                let mut steps = None;
                for q in p.into_inner() {
                    match q.as_rule() {
                        Rule::kw_stage | Rule::kw_steps => {}
                        Rule::expr if grid.is_none() => grid = Some(self.expr(q)),
                        Rule::expr => steps = Some(self.expr(q)),
                        Rule::segment => {
                            let s = self.span(&q);
                            let mut it = q.into_inner();
                            let from = self.expr(it.next().expect("from"));
                            let to = self.expr(it.next().expect("to"));
                            segment = Some((from, to, s));
                        }
                        r => unreachable!("stage row: {r:?}"),
                    }
                }
                Entry::Stage(StageRow { grid: grid.expect("stage grid"), segment, steps, span })
            }
            Rule::param_group => {
                let mut kind = ParamKind::Params;
                let mut prefix = None;
                let mut repeat = None;
                let mut inner = None;
                let mut condition = None;
                let mut guard = None;
                let mut decls = Vec::new();
                for q in p.into_inner() {
                    match q.as_rule() {
                        Rule::param_kind => {
                            if q.as_str() == "buffers" {
                                kind = ParamKind::Buffers
                            }
                        }
                        Rule::string => prefix = Some(self.string(q)),
                        Rule::repeat => {
                            for lv in q.into_inner().filter(|r| r.as_rule() == Rule::loop_var) {
                                let s = self.span(&lv);
                                let mut it = lv.into_inner().filter(|r| r.as_rule() != Rule::kw_in);
                                let var = self.ident(it.next().expect("var"));
                                let lo = self.expr(it.next().expect("lo"));
                                let hi = self.expr(it.next().expect("hi"));
                                let r = Repeat { var, lo, hi, span: s };
                                if repeat.is_none() {
                                    repeat = Some(r);
                                } else {
                                    inner = Some(r);
                                }
                            }
                        }
                        Rule::condition => {
                            let s = self.span(&q);
                            let mut negated = false;
                            let mut flag = None;
                            for r in q.into_inner() {
                                match r.as_rule() {
                                    Rule::negation => negated = true,
                                    Rule::ident => flag = Some(self.ident(r)),
                                    Rule::guard => {
                                        let gs = self.span(&r);
                                        let mut it = r.into_inner();
                                        let lhs = self.expr(it.next().expect("lhs"));
                                        let op = cmp_op(it.next().expect("op").as_str());
                                        let rhs = self.expr(it.next().expect("rhs"));
                                        guard = Some(Guard { lhs, op, rhs, span: gs });
                                    }
                                    _ => {}
                                }
                            }
                            if let Some(flag) = flag {
                                condition = Some(Condition { negated, flag, span: s });
                            }
                        }
                        Rule::param_decl => {
                            let s = self.span(&q);
                            let mut it = q.into_inner();
                            let role = self.ident(it.next().expect("role"));
                            let key = self.string(it.next().expect("key"));
                            let shape = it.next().expect("shape").into_inner().map(|e| self.expr(e)).collect();
                            decls.push(ParamDecl { role, key, shape, span: s });
                        }
                        r => unreachable!("param group: {r:?}"),
                    }
                }
                Entry::Params(ParamGroup { kind, prefix, repeat, inner, condition, guard, decls, span })
            }
            Rule::constraint => {
                let mut it = p.into_inner().filter(|q| q.as_rule() != Rule::kw_where);
                let metric = self.ident(it.next().expect("metric"));
                let op = cmp_op(it.next().expect("op").as_str());
                let bound = self.expr(it.next().expect("bound"));
                Entry::Constraint(Constraint { metric, op, bound, span })
            }
            r => unreachable!("entry: {r:?}"),
        }
    }

    fn alternatives(&mut self, p: Pair<Rule>) -> Alternatives {
        let span = self.span(&p);
        let inner = p.into_inner().find(|q| q.as_rule() != Rule::kw_in).expect("alternatives body");
        match inner.as_rule() {
            Rule::set => Alternatives::Set { items: inner.into_inner().map(|q| self.value(q)).collect(), span },
            Rule::range => {
                let mut lo = None;
                let mut hi = None;
                let mut step = None;
                let mut inclusive = false;
                for q in inner.into_inner() {
                    match q.as_rule() {
                        Rule::expr if lo.is_none() => lo = Some(self.expr(q)),
                        Rule::expr if hi.is_none() => hi = Some(self.expr(q)),
                        Rule::expr => step = Some(self.expr(q)),
                        Rule::range_op => inclusive = q.as_str() == "..=",
                        _ => {}
                    }
                }
                Alternatives::Range { lo: lo.expect("lo"), hi: hi.expect("hi"), inclusive, step, span }
            }
            r => unreachable!("alternatives: {r:?}"),
        }
    }

    fn value(&mut self, p: Pair<Rule>) -> Value {
        let p = if p.as_rule() == Rule::value { p.into_inner().next().expect("value inner") } else { p };
        let span = self.span(&p);
        match p.as_rule() {
            Rule::expr => Value::Expr(self.expr(p)),
            Rule::segment => {
                let mut it = p.into_inner();
                let from = self.expr(it.next().expect("from"));
                let to = self.expr(it.next().expect("to"));
                Value::Segment { from, to, span }
            }
            Rule::component => {
                let mut base = None;
                let mut body = None;
                for q in p.into_inner() {
                    match q.as_rule() {
                        Rule::ident => base = Some(self.ident(q)),
                        Rule::body => body = Some(self.body(q)),
                        r => unreachable!("component: {r:?}"),
                    }
                }
                Value::Component { base, body: body.expect("component body"), span }
            }
            r => unreachable!("value: {r:?}"),
        }
    }

    fn expr(&mut self, p: Pair<Rule>) -> Expr {
        self.expr_d(p).0
    }

    /// Operator-precedence parse of `prefix* primary (infix prefix* primary)*`,
    /// with the depth of the tree built. An expression deeper than
    /// [`MAX_EXPR_DEPTH`] is an error and becomes a placeholder of depth 1, so no
    /// deep tree is ever built (`- - - ... 1` and `1+1+...` with 100k terms).
    fn expr_d(&mut self, p: Pair<Rule>) -> (Expr, usize) {
        let whole = self.span(&p);
        let mut operands: Vec<(Expr, usize)> = Vec::new();
        let mut ops: Vec<(BinOp, Span)> = Vec::new();
        let mut negs: Vec<Span> = Vec::new();
        for q in p.into_inner() {
            match q.as_rule() {
                Rule::neg => negs.push(self.span(&q)),
                Rule::add | Rule::sub | Rule::mul | Rule::div => {
                    let op = match q.as_rule() {
                        Rule::add => BinOp::Add,
                        Rule::sub => BinOp::Sub,
                        Rule::mul => BinOp::Mul,
                        _ => BinOp::Div,
                    };
                    let at = self.span(&q);
                    while let Some(&(top, _)) = ops.last() {
                        if top.precedence() >= op.precedence() {
                            if let Err(at) = reduce(&mut operands, &mut ops) {
                                return self.too_deep(whole, at);
                            }
                        } else {
                            break;
                        }
                    }
                    ops.push((op, at));
                }
                _ => {
                    let (mut e, mut depth) = self.primary(q);
                    while let Some(s) = negs.pop() {
                        depth += 1;
                        if depth > MAX_EXPR_DEPTH {
                            // Point at the outermost sign: where the run starts.
                            let first = negs.first().copied().unwrap_or(s);
                            return self.too_deep(whole, first);
                        }
                        let span = s.to(e.span);
                        e = Expr { kind: ExprKind::Neg(Box::new(e)), span };
                    }
                    operands.push((e, depth));
                }
            }
        }
        while !ops.is_empty() {
            if let Err(at) = reduce(&mut operands, &mut ops) {
                return self.too_deep(whole, at);
            }
        }
        operands.pop().expect("expression has an operand")
    }

    fn too_deep(&mut self, whole: Span, at: Span) -> (Expr, usize) {
        self.errors.push(
            Diag::error("E0102", format!("expression nests deeper than {MAX_EXPR_DEPTH} levels"))
                .label(at, "nested too deeply from here")
                .help("split the expression: give parts of it their own fields"),
        );
        (Expr { kind: ExprKind::Number { value: Num::Int(0), text: "0".into() }, span: whole }, 1)
    }

    /// A primary expression and its depth.
    fn primary(&mut self, p: Pair<Rule>) -> (Expr, usize) {
        let span = self.span(&p);
        let mut depth = 1;
        let kind = match p.as_rule() {
            Rule::number => self.number(p.as_str(), span),
            Rule::size => {
                let (w, h) = p.as_str().split_once('x').expect("size has x");
                match (w.parse::<u64>(), h.parse::<u64>()) {
                    (Ok(w), Ok(h)) if w <= i64::MAX as u64 && h <= i64::MAX as u64 => ExprKind::Size { w, h },
                    _ => {
                        self.errors.push(
                            Diag::error("E0103", "size is too large")
                                .label(span, "this size does not fit in 64 bits")
                                .help("sizes are token or pixel grids such as `16x16` or `256x256`"),
                        );
                        ExprKind::Size { w: 0, h: 0 }
                    }
                }
            }
            Rule::string => ExprKind::Str(self.string(p).value),
            Rule::name => ExprKind::Name(p.as_str().to_string()),
            Rule::list => ExprKind::List(
                p.into_inner()
                    .map(|q| {
                        let (e, d) = self.expr_d(q);
                        depth = depth.max(d + 1);
                        e
                    })
                    .collect(),
            ),
            Rule::call => {
                let mut it = p.into_inner();
                let name = self.ident(it.next().expect("call name"));
                let args = it
                    .map(|a| {
                        let mut parts = a.into_inner();
                        let first = parts.next().expect("arg");
                        let (name, (value, d)) = if first.as_rule() == Rule::ident {
                            (Some(self.ident(first)), self.expr_d(parts.next().expect("arg value")))
                        } else {
                            (None, self.expr_d(first))
                        };
                        depth = depth.max(d + 1);
                        Arg { name, value }
                    })
                    .collect();
                ExprKind::Call { name, args }
            }
            Rule::index => {
                let mut it = p.into_inner();
                let name = self.ident(it.next().expect("indexed name"));
                let (index, d) = self.expr_d(it.next().expect("index"));
                depth = d + 1;
                ExprKind::Index { name, index: Box::new(index) }
            }
            Rule::expr => {
                let (e, d) = self.expr_d(p);
                depth = d + 1;
                ExprKind::Paren(Box::new(e))
            }
            r => unreachable!("primary: {r:?}"),
        };
        (Expr { kind, span }, depth)
    }

    fn number(&mut self, text: &str, span: Span) -> ExprKind {
        let (digits, mult) = match text.as_bytes().last() {
            Some(b'K') => (&text[..text.len() - 1], 1_000i64),
            Some(b'M') => (&text[..text.len() - 1], 1_000_000),
            Some(b'G') => (&text[..text.len() - 1], 1_000_000_000),
            Some(b'T') => (&text[..text.len() - 1], 1_000_000_000_000),
            _ => (text, 1),
        };
        let is_float = digits.contains(['.', 'e', 'E']);
        let value = if is_float {
            match digits.parse::<f64>() {
                Ok(f) if (f * mult as f64).is_finite() => {
                    let v = f * mult as f64;
                    // 1.5M is an integer count; keep it exact when it is whole.
                    if mult > 1 && v.fract() == 0.0 && v.abs() < 9.0e15 {
                        Num::Int(v as i64)
                    } else {
                        Num::Float(v)
                    }
                }
                _ => return self.number_error(span, text),
            }
        } else {
            match digits.parse::<i64>().ok().and_then(|v| v.checked_mul(mult)) {
                Some(v) => Num::Int(v),
                None => return self.number_error(span, text),
            }
        };
        ExprKind::Number { value, text: text.to_string() }
    }

    fn number_error(&mut self, span: Span, text: &str) -> ExprKind {
        let shown = if text.len() > 24 { format!("{}...", &text[..20]) } else { text.to_string() };
        self.errors.push(
            Diag::error("E0103", format!("number `{shown}` is out of range"))
                .label(span, "this number does not fit in a 64-bit integer or a finite float")
                .help(format!(
                    "integers must lie within +/-{}; use a unit suffix (K, M, G, T) for large counts",
                    i64::MAX
                )),
        );
        ExprKind::Number { value: Num::Int(0), text: text.to_string() }
    }
}

/// End of `text[start..end]` with trailing whitespace and `//` comments removed.
fn trim_trailing_trivia(text: &str, start: usize, mut end: usize) -> usize {
    loop {
        let trimmed = text[start..end].trim_end();
        end = start + trimmed.len();
        let line_start = text[start..end].rfind('\n').map_or(start, |i| start + i + 1);
        match comment_start(&text[line_start..end]) {
            Some(c) => end = line_start + c,
            None => return end,
        }
    }
}

/// Byte offset of a `//` comment in one line, outside string literals.
fn comment_start(line: &str) -> Option<usize> {
    crate::lex::comments(line.as_bytes()).first().map(|r| r.start)
}

/// A comparison operator from its text.
fn cmp_op(s: &str) -> CmpOp {
    match s {
        "<=" => CmpOp::Le,
        ">=" => CmpOp::Ge,
        "<" => CmpOp::Lt,
        ">" => CmpOp::Gt,
        "!=" => CmpOp::Ne,
        _ => CmpOp::Eq,
    }
}

/// Apply the top operator; `Err(operator span)` when the result would be too deep.
fn reduce(operands: &mut Vec<(Expr, usize)>, ops: &mut Vec<(BinOp, Span)>) -> Result<(), Span> {
    let (op, at) = ops.pop().expect("operator");
    let (rhs, dr) = operands.pop().expect("rhs");
    let (lhs, dl) = operands.pop().expect("lhs");
    let depth = dl.max(dr) + 1;
    if depth > MAX_EXPR_DEPTH {
        return Err(at);
    }
    let span = lhs.span.to(rhs.span);
    operands.push((Expr { kind: ExprKind::Binary { op, lhs: Box::new(lhs), rhs: Box::new(rhs) }, span }, depth));
    Ok(())
}
