//! The canonical formatter: AST -> text, keeping every comment. One entry per
//! line, two-space indentation, aligned stage rows and parameter tables, at most
//! one blank line where the source had any. Idempotent by construction (tested).

use crate::ast::*;
use crate::diag::Diag;
use crate::parser::parse_file;
use crate::source::FileId;

/// Format a whole file's text. Fails only when the text does not parse.
pub fn format_source(text: &str) -> Result<String, Vec<Diag>> {
    let file = parse_file(FileId(0), text)?;
    Ok(format_file(&file, text))
}

pub fn format_file(file: &File, text: &str) -> String {
    let mut p = Printer { text, comments: scan_comments(text), next_comment: 0, out: String::new(), indent: 0 };
    let mut prev: Option<(&Item, u32)> = None;
    for item in &file.items {
        let start = item_span(item).start;
        if let Some((prev_item, prev_end)) = prev {
            let both_imports = matches!(prev_item, Item::Import(_)) && matches!(item, Item::Import(_));
            if !both_imports || p.blank_between(prev_end, start) {
                p.out.push('\n');
            }
        }
        p.leading_comments(start);
        match item {
            Item::Import(i) => {
                p.line_start();
                p.out.push_str("import ");
                p.out.push_str(&quote(&i.path.value));
            }
            Item::Definition(d) => p.definition(d),
        }
        p.trailing_comment(item_span(item).end);
        p.out.push('\n');
        prev = Some((item, item_span(item).end));
    }
    // Comments after the last item.
    if p.next_comment < p.comments.len() {
        let first = p.comments[p.next_comment].start;
        if prev.is_some_and(|(_, end)| p.blank_between(end, first)) {
            p.out.push('\n');
        }
        p.leading_comments(u32::MAX);
    }
    // A byte order mark stays where it was.
    if text.starts_with('\u{FEFF}') {
        p.out.insert(0, '\u{FEFF}');
    }
    p.out
}

fn item_span(i: &Item) -> crate::source::Span {
    match i {
        Item::Import(i) => i.span,
        Item::Definition(d) => d.span,
    }
}

#[derive(Debug)]
struct Comment {
    start: u32,
    end: u32,
}

/// Byte ranges of `//` comments outside strings.
fn scan_comments(text: &str) -> Vec<Comment> {
    crate::lex::comments(text.as_bytes())
        .into_iter()
        .map(|r| Comment { start: r.start as u32, end: r.end as u32 })
        .collect()
}

/// Components with at most this many plain fields fit on one line...
const INLINE_FIELDS: usize = 3;
/// ...when the braces and fields take at most this many characters.
const INLINE_WIDTH: usize = 60;

/// One entry rendered aside: blank line before it, comment lines before it,
/// its text (may span lines), and its trailing comment.
struct Row {
    blank: bool,
    leading: String,
    text: String,
    trailing: Option<String>,
}

struct Printer<'t> {
    text: &'t str,
    comments: Vec<Comment>,
    next_comment: usize,
    out: String,
    indent: usize,
}

impl Printer<'_> {
    fn line_start(&mut self) {
        for _ in 0..self.indent {
            self.out.push_str("  ");
        }
    }

    fn comment_text(&self, c: &Comment) -> String {
        self.text[c.start as usize..c.end as usize].trim_end().to_string()
    }

    /// Whether the source has a blank line between two offsets (comments aside).
    fn blank_between(&self, from: u32, to: u32) -> bool {
        let gap = self.text.get(from as usize..to as usize).unwrap_or("");
        let mut newlines = 0;
        for line in gap.split('\n').skip(1) {
            let t = line.trim();
            if t.is_empty() {
                newlines += 1;
            } else {
                break;
            }
        }
        newlines >= 1 && gap.matches('\n').count() >= 2
    }

    /// Emit comments that start before `pos`, each on its own line.
    fn leading_comments(&mut self, pos: u32) {
        while let Some(c) = self.comments.get(self.next_comment) {
            if c.start >= pos {
                break;
            }
            let t = self.comment_text(c);
            let blank_after = self.blank_between(c.end, pos.min(self.text.len() as u32)) && pos != u32::MAX;
            self.line_start();
            self.out.push_str(&t);
            self.out.push('\n');
            if blank_after {
                self.out.push('\n');
            }
            self.next_comment += 1;
        }
    }

    /// A comment starting on the same line right after `end` stays on that line.
    fn trailing_comment(&mut self, end: u32) {
        if let Some(c) = self.comments.get(self.next_comment) {
            let between = self.text.get(end as usize..c.start as usize).unwrap_or("\n");
            if c.start >= end && !between.contains('\n') {
                let t = self.comment_text(c);
                self.out.push_str("  ");
                self.out.push_str(&t);
                self.next_comment += 1;
            }
        }
    }

    fn definition(&mut self, d: &Definition) {
        self.line_start();
        self.out.push_str(&format!("{} {}", d.kind.name, d.name.name));
        if let Some(b) = &d.extends {
            self.out.push_str(&format!(" extends {}", b.name));
        }
        self.out.push(' ');
        self.body(&d.body);
    }

    fn body(&mut self, b: &Body) {
        if b.entries.is_empty() && !self.comments_within(b.span.start, b.span.end) {
            self.out.push_str("{}");
            return;
        }
        self.out.push_str("{\n");
        self.indent += 1;
        let widths = stage_widths(&b.entries);
        let mut rows = Vec::new();
        let mut prev_end: Option<u32> = None;
        for e in &b.entries {
            let s = e.span();
            let blank = prev_end.is_some_and(|pe| self.blank_between(pe, self.first_comment_or(s.start)));
            let row = self.row(blank, s.start, s.end, |p| p.entry(e, &widths));
            rows.push(row);
            prev_end = Some(s.end);
        }
        self.emit_rows(rows);
        self.leading_comments(b.span.end);
        self.indent -= 1;
        self.line_start();
        self.out.push('}');
    }

    /// Render one entry (with its leading comments) aside, so that trailing
    /// comments of neighbouring lines can be aligned before it is written.
    fn row(&mut self, blank: bool, start: u32, end: u32, print: impl FnOnce(&mut Self)) -> Row {
        let saved = std::mem::take(&mut self.out);
        self.leading_comments(start);
        let leading = std::mem::take(&mut self.out);
        self.line_start();
        print(self);
        let text = std::mem::take(&mut self.out);
        self.trailing_comment(end);
        let trailing = std::mem::take(&mut self.out).trim_start().to_string();
        self.out = saved;
        Row { blank, leading, text, trailing: (!trailing.is_empty()).then_some(trailing) }
    }

    /// Write rows; trailing comments of consecutive one-line rows (no blank line
    /// or comment line between them) start in one column, as gofmt does.
    fn emit_rows(&mut self, rows: Vec<Row>) {
        let mut i = 0;
        while i < rows.len() {
            let mut j = i + 1;
            while j < rows.len()
                && !rows[j].blank
                && rows[j].leading.is_empty()
                && !rows[j - 1].text.contains('\n')
                && !rows[j].text.contains('\n')
            {
                j += 1;
            }
            let column =
                rows[i..j].iter().filter(|r| r.trailing.is_some()).map(|r| r.text.chars().count()).max().unwrap_or(0);
            for r in &rows[i..j] {
                if r.blank {
                    self.out.push('\n');
                }
                self.out.push_str(&r.leading);
                self.out.push_str(&r.text);
                if let Some(t) = &r.trailing {
                    let pad = column.saturating_sub(r.text.lines().last().map_or(0, |l| l.chars().count()));
                    let pad = if r.text.contains('\n') { 0 } else { pad };
                    self.out.push_str(&" ".repeat(pad + 2));
                    self.out.push_str(t);
                }
                self.out.push('\n');
            }
            i = j;
        }
    }

    /// A small component on one line: `{ depth 8  width 1280 }`. Only plain
    /// fields (at most [`INLINE_FIELDS`]), no comments, and a short line.
    fn inline_body(&self, b: &Body) -> Option<String> {
        if b.entries.is_empty() || b.entries.len() > INLINE_FIELDS || self.comments_within(b.span.start, b.span.end) {
            return None;
        }
        let mut parts = Vec::new();
        for e in &b.entries {
            match e {
                Entry::Field(Field { key, value: FieldValue::Value(Value::Expr(x)), .. }) => {
                    parts.push(format!("{} {}", key.name, expr(x)))
                }
                _ => return None,
            }
        }
        let line = format!("{{ {} }}", parts.join("  "));
        (line.len() <= INLINE_WIDTH).then_some(line)
    }

    fn first_comment_or(&self, pos: u32) -> u32 {
        match self.comments.get(self.next_comment) {
            Some(c) if c.start < pos => c.start,
            _ => pos,
        }
    }

    fn comments_within(&self, start: u32, end: u32) -> bool {
        self.comments.get(self.next_comment).is_some_and(|c| c.start > start && c.start < end)
    }

    fn entry(&mut self, e: &Entry, widths: &(usize, usize)) {
        match e {
            Entry::Field(f) => {
                self.out.push_str(&f.key.name);
                self.out.push(' ');
                match &f.value {
                    FieldValue::Value(v) => self.value(v),
                    FieldValue::Alternatives(a) => self.alternatives(a),
                }
            }
            Entry::Stage(s) => {
                let grid = expr(&s.grid);
                let mut line = format!("stage {grid:<w$}", w = widths.0);
                if let Some((f, t, _)) = &s.segment {
                    line.push_str(&format!("  {:<w$}", format!("{} -> {}", expr(f), expr(t)), w = widths.1));
                } else if s.steps.is_some() && widths.1 > 0 {
                    line.push_str(&format!("  {:<w$}", "", w = widths.1));
                }
                if let Some(st) = &s.steps {
                    line.push_str(&format!("  steps {}", expr(st)));
                }
                self.out.push_str(line.trim_end());
            }
            Entry::Params(g) => self.params(g),
            Entry::Constraint(c) => {
                self.out.push_str(&format!("where {} {} {}", c.metric.name, c.op.as_str(), expr(&c.bound)))
            }
        }
    }

    fn params(&mut self, g: &ParamGroup) {
        self.out.push_str(match g.kind {
            ParamKind::Params => "params",
            ParamKind::Buffers => "buffers",
        });
        if let Some(p) = &g.prefix {
            self.out.push(' ');
            self.out.push_str(&quote(&p.value));
        }
        if let Some(r) = &g.repeat {
            self.out.push_str(&format!(" for {} in {}..{}", r.var.name, expr(&r.lo), expr(&r.hi)));
            if let Some(r) = &g.inner {
                self.out.push_str(&format!(", {} in {}..{}", r.var.name, expr(&r.lo), expr(&r.hi)));
            }
        }
        if let Some(c) = &g.condition {
            self.out.push_str(&format!(" when {}{}", if c.negated { "!" } else { "" }, c.flag.name));
        }
        if let Some(gd) = &g.guard {
            self.out.push_str(&format!(" when {} {} {}", expr(&gd.lhs), gd.op.as_str(), expr(&gd.rhs)));
        }
        if g.decls.is_empty() && !self.comments_within(g.span.start, g.span.end) {
            self.out.push_str(" {}");
            return;
        }
        self.out.push_str(" {\n");
        self.indent += 1;
        let rw = g.decls.iter().map(|d| d.role.name.len()).max().unwrap_or(0);
        let kw = g.decls.iter().map(|d| quote(&d.key.value).len()).max().unwrap_or(0);
        let mut rows = Vec::new();
        let mut prev_end: Option<u32> = None;
        for d in &g.decls {
            let blank = prev_end.is_some_and(|pe| self.blank_between(pe, self.first_comment_or(d.span.start)));
            let dims: Vec<String> = d.shape.iter().map(expr).collect();
            let line = format!("{:<rw$}  {:<kw$}  [{}]", d.role.name, quote(&d.key.value), dims.join(", "));
            rows.push(self.row(blank, d.span.start, d.span.end, |p| p.out.push_str(&line)));
            prev_end = Some(d.span.end);
        }
        self.emit_rows(rows);
        self.leading_comments(g.span.end);
        self.indent -= 1;
        self.line_start();
        self.out.push('}');
    }

    fn alternatives(&mut self, a: &Alternatives) {
        match a {
            Alternatives::Set { items, .. } => {
                self.out.push_str("in { ");
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        self.out.push_str(", ");
                    }
                    self.value(v);
                }
                self.out.push_str(" }");
            }
            Alternatives::Range { lo, hi, inclusive, step, .. } => {
                self.out.push_str(&format!("in {}{}{}", expr(lo), if *inclusive { "..=" } else { ".." }, expr(hi)));
                if let Some(s) = step {
                    self.out.push_str(&format!(" step {}", expr(s)));
                }
            }
        }
    }

    fn value(&mut self, v: &Value) {
        match v {
            Value::Expr(e) => self.out.push_str(&expr(e)),
            Value::Segment { from, to, .. } => self.out.push_str(&format!("{} -> {}", expr(from), expr(to))),
            Value::Component { base, body, .. } => {
                if let Some(b) = base {
                    self.out.push_str(&b.name);
                    self.out.push(' ');
                }
                match self.inline_body(body) {
                    Some(line) => self.out.push_str(&line),
                    None => self.body(body),
                }
            }
        }
    }
}

/// Column widths for consecutive stage rows: (grid, segment).
fn stage_widths(entries: &[Entry]) -> (usize, usize) {
    let mut g = 0;
    let mut s = 0;
    for e in entries {
        if let Entry::Stage(r) = e {
            g = g.max(expr(&r.grid).len());
            if let Some((f, t, _)) = &r.segment {
                s = s.max(format!("{} -> {}", expr(f), expr(t)).len());
            }
        }
    }
    (g, s)
}

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// An expression in canonical form.
pub fn expr(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Number { text, .. } => text.clone(),
        ExprKind::Size { w, h } => format!("{w}x{h}"),
        ExprKind::Str(s) => quote(s),
        ExprKind::Name(n) => n.clone(),
        ExprKind::Call { name, args } => {
            let a: Vec<String> = args
                .iter()
                .map(|a| match &a.name {
                    Some(n) => format!("{} = {}", n.name, expr(&a.value)),
                    None => expr(&a.value),
                })
                .collect();
            format!("{}({})", name.name, a.join(", "))
        }
        ExprKind::List(items) => format!("[{}]", items.iter().map(expr).collect::<Vec<_>>().join(", ")),
        ExprKind::Neg(inner) => format!("-{}", expr(inner)),
        ExprKind::Binary { op, lhs, rhs } => format!("{} {} {}", expr(lhs), op.as_str(), expr(rhs)),
        ExprKind::Index { name, index } => format!("{}[{}]", name.name, expr(index)),
        ExprKind::Paren(inner) => format!("({})", expr(inner)),
    }
}
