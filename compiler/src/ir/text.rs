//! The text form of a graph, in the MLIR/Relay style: one value per line,
//! numbered in a deterministic topological order, with every attribute and
//! every type written out. It is what snapshots and `ecarc graph` show, and it
//! parses back to the same graph.
//!
//! ```text
//! graph "backbone.next" {
//!   %0 = input "x" : f32[B, T, 32]
//!   %1 = param "word_embed.weight" : f32[1024, 32]
//!   %2 = linear(%0, %1) : f32[B, T, 1024]  // models/std/var.ecar:20:5
//!   %3 = slice(%2) {axis = 1, start = 0, len = T} : f32[B, T, 1024]
//!   out "logits" = %3
//! }
//! ```
//!
//! Grammar, one statement a line; `//` outside a string starts a comment:
//!
//! ```text
//! graph := 'graph' STRING '{'  stmt*  '}'
//! stmt  := '%'N '=' OP [STRING] ['(' '%'N (',' '%'N)* ')'] ['{' KEY '=' VALUE (',' ...)* '}'] ':' type
//!        | 'out' STRING '=' '%'N
//! type  := ('f32' | 'i64') '[' [DIM (',' DIM)*] ']'
//! ```
//!
//! `input`, `param` and `state` take a STRING and no operand list; `const`
//! takes neither; every other op takes an operand list. STRINGs are JSON string
//! literals, DIMs are [`Dim`]'s canonical text, floats are [`F`]'s Display
//! (shortest text that parses back to the same bits, `inf`, `NaN`), lists are
//! `[a, b]`, `Option`s are `none` or a number, enums are lower-case names.

use super::dim::Dim;
use super::graph::{Graph, TensorType};
use super::op::{Binary, DType, Op, Resample, Unary, F};
use ecarc_grammar::SourceMap;
use petgraph::stable_graph::NodeIndex;
use petgraph::visit::{EdgeRef, NodeIndexable};
use petgraph::Direction;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt::Write;
use std::str::FromStr;

// ---- order -------------------------------------------------------------------

/// The order nodes are numbered and printed in: sources first, then Kahn's
/// algorithm always taking the ready node with the smallest index. A parsed
/// graph's indices follow its printed order, so printing it again gives the
/// same numbering. Nodes on a cycle (an unverified graph) follow last, by
/// index, so that printing never fails.
pub fn order(g: &Graph) -> Vec<NodeIndex> {
    let key = |n: NodeIndex| Reverse((!g.g[n].op.is_source(), n));
    let mut pending = vec![0usize; g.g.node_bound()];
    let mut ready = BinaryHeap::new();
    for n in g.g.node_indices() {
        pending[n.index()] = g.g.edges_directed(n, Direction::Incoming).count();
        if pending[n.index()] == 0 {
            ready.push(key(n));
        }
    }
    let mut out = Vec::with_capacity(g.g.node_count());
    while let Some(Reverse((_, n))) = ready.pop() {
        out.push(n);
        for e in g.g.edges_directed(n, Direction::Outgoing) {
            let t = e.target();
            pending[t.index()] -= 1;
            if pending[t.index()] == 0 {
                ready.push(key(t));
            }
        }
    }
    if out.len() < g.g.node_count() {
        out.extend(g.g.node_indices().filter(|n| pending[n.index()] > 0));
    }
    out
}

// ---- pieces shared with DOT and the verifier -----------------------------------

/// `f32[B, T, 32]`; a scalar is `f32[]`.
pub fn type_str(ty: &TensorType) -> String {
    let dims: Vec<String> = ty.shape.iter().map(Dim::to_string).collect();
    format!("{}[{}]", ty.dtype.name(), dims.join(", "))
}

/// The name of an input or state, or the key of a param.
pub fn source_name(op: &Op) -> Option<&str> {
    match op {
        Op::Input { name } | Op::State { name } => Some(name),
        Op::Param { key } => Some(key),
        _ => None,
    }
}

/// Every attribute of an op as `(key, value text)`, in a fixed order.
pub fn attrs(op: &Op) -> Vec<(&'static str, String)> {
    use Op::*;
    let list = |xs: Vec<String>| format!("[{}]", xs.join(", "));
    match op {
        Input { .. } | Param { .. } | State { .. } => vec![],
        Linear | MatMul | Embedding | Unary(_) | Binary(_) | Softmax | ArgMax | Rope | NearestCode => vec![],
        Const { value } => vec![("value", value.to_string())],
        Conv2d { stride, pad } => vec![("stride", stride.to_string()), ("pad", pad.to_string())],
        Affine { scale, shift } => vec![("scale", scale.to_string()), ("shift", shift.to_string())],
        ClampMax { max } => vec![("max", max.to_string())],
        LayerNorm { eps } | RmsNorm { eps } | L2Normalize { eps } => vec![("eps", eps.to_string())],
        GroupNorm { groups, eps } => vec![("groups", groups.to_string()), ("eps", eps.to_string())],
        Reshape { shape } => vec![("shape", list(shape.iter().map(Dim::to_string).collect()))],
        Permute { perm } => vec![("perm", list(perm.iter().map(u8::to_string).collect()))],
        Slice { axis, start, len } => {
            vec![("axis", axis.to_string()), ("start", start.to_string()), ("len", len.to_string())]
        }
        Concat { axis } => vec![("axis", axis.to_string())],
        Resize { mode, h, w } => {
            vec![("mode", resample_name(*mode).into()), ("h", h.to_string()), ("w", w.to_string())]
        }
        Sinusoid { dim, max_period } => vec![("dim", dim.to_string()), ("max_period", max_period.to_string())],
        Guide { channels } => vec![("channels", channels.map_or("none".into(), |c| c.to_string()))],
        SampleTokens { temperature, top_k, top_p } => {
            vec![("temperature", temperature.to_string()), ("top_k", top_k.to_string()), ("top_p", top_p.to_string())]
        }
        FlowMapTokens { temperature, top_k, top_p, steps } => vec![
            ("temperature", temperature.to_string()),
            ("top_k", top_k.to_string()),
            ("top_p", top_p.to_string()),
            ("steps", steps.to_string()),
        ],
    }
}

fn resample_name(r: Resample) -> &'static str {
    match r {
        Resample::Nearest => "nearest",
        Resample::Bilinear => "bilinear",
        Resample::Bicubic => "bicubic",
        Resample::Area => "area",
    }
}

/// Every variant of the nested enums, for parsing names back.
const UNARIES: [Unary; 7] =
    [Unary::Silu, Unary::Gelu, Unary::GeluTanh, Unary::Exp, Unary::Neg, Unary::Sqrt, Unary::Tanh];
const BINARIES: [Binary; 6] = [Binary::Add, Binary::Sub, Binary::Mul, Binary::Div, Binary::Min, Binary::Max];
const RESAMPLES: [Resample; 4] = [Resample::Nearest, Resample::Bilinear, Resample::Bicubic, Resample::Area];

/// A new variant makes these matches fail to compile: add it to the lists above.
#[allow(dead_code)]
fn lists_are_complete(u: Unary, b: Binary, r: Resample) {
    use {Binary::*, Resample::*, Unary::*};
    match u {
        Silu | Gelu | GeluTanh | Exp | Neg | Sqrt | Tanh => {}
    }
    match b {
        Add | Sub | Mul | Div | Min | Max => {}
    }
    match r {
        Nearest | Bilinear | Bicubic | Area => {}
    }
}

fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("a string always serialises")
}

// ---- printing ------------------------------------------------------------------

/// The text form. With `sources`, each node's span follows as a
/// `// file:line:col` comment; without, the text does not change when the
/// `.ecar` sources are edited elsewhere (what snapshots want).
pub fn print(g: &Graph, sources: Option<&SourceMap>) -> String {
    let order = order(g);
    let num: HashMap<NodeIndex, usize> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let mut lines = Vec::with_capacity(order.len());
    for (i, &n) in order.iter().enumerate() {
        let node = &g.g[n];
        let mut s = format!("%{i} = {}", node.op.name());
        if let Some(name) = source_name(&node.op) {
            write!(s, " {}", quote(name)).unwrap();
        }
        if !node.op.is_source() {
            let refs: Vec<String> = g.operands(n).iter().map(|o| format!("%{}", num[o])).collect();
            write!(s, "({})", refs.join(", ")).unwrap();
        }
        let attrs = attrs(&node.op);
        if !attrs.is_empty() {
            let kv: Vec<String> = attrs.iter().map(|(k, v)| format!("{k} = {v}")).collect();
            write!(s, " {{{}}}", kv.join(", ")).unwrap();
        }
        write!(s, " : {}", type_str(&node.ty)).unwrap();
        let loc = sources.zip(node.span).map(|(sm, sp)| {
            let (line, col) = sm.line_col(sp.file, sp.start);
            // A newline in a file name would end the comment early.
            format!("{}:{line}:{col}", sm.get(sp.file).name.replace(['\n', '\r'], " "))
        });
        lines.push((s, loc));
    }
    // Align the span comments, but let one very long line not push them all.
    let width = lines.iter().filter(|(_, l)| l.is_some()).map(|(s, _)| s.chars().count()).max().unwrap_or(0).min(72);
    let mut out = format!("graph {} {{\n", quote(&g.name));
    for (s, loc) in lines {
        match loc {
            Some(loc) => writeln!(out, "  {s:<width$}  // {loc}").unwrap(),
            None => writeln!(out, "  {s}").unwrap(),
        }
    }
    for (name, n) in &g.outputs {
        let target = num.get(n).map_or_else(|| format!("%<missing node {}>", n.index()), |i| format!("%{i}"));
        writeln!(out, "  out {} = {target}", quote(name)).unwrap();
    }
    out.push_str("}\n");
    out
}

// ---- parsing -------------------------------------------------------------------

/// Parse the text form. Types are checked against inference as nodes are
/// built; spans are not recovered (comments are ignored).
pub fn parse(text: &str) -> Result<Graph, String> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with("//"));
    let Some((ln, first)) = lines.next() else {
        return Err("line 1: expected `graph \"name\" {`".into());
    };
    let mut c = Cursor::new(first, ln);
    c.keyword("graph")?;
    let name = c.string()?;
    c.expect("{")?;
    c.end()?;

    let mut p = Parser { g: Graph::new(name), ids: HashMap::new() };
    let mut closed = false;
    for (ln, line) in lines {
        let mut c = Cursor::new(line, ln);
        if closed {
            return Err(c.err("text after the graph's closing `}`"));
        }
        match c.peek() {
            Some('}') => {
                c.expect("}")?;
                c.end()?;
                closed = true;
            }
            Some('%') => p.node(&mut c)?,
            _ => {
                c.keyword("out")
                    .map_err(|_| c.err(format!("expected `%N = ...`, `out` or `}}`, found {}", c.found())))?;
                p.output(&mut c)?;
            }
        }
    }
    if !closed {
        return Err(format!("line {}: missing the graph's closing `}}`", text.lines().count() + 1));
    }
    Ok(p.g)
}

struct Parser {
    g: Graph,
    /// Value number in the text -> node.
    ids: HashMap<u64, NodeIndex>,
}

impl Parser {
    fn node(&mut self, c: &mut Cursor) -> Result<(), String> {
        let id = c.value()?;
        if self.ids.contains_key(&id) {
            return Err(c.err(format!("`%{id}` is defined twice")));
        }
        c.expect("=")?;
        let op_name = c.word()?;
        let label = if c.peek() == Some('"') { Some(c.string()?) } else { None };
        let mut operands = vec![];
        let has_operands = c.eat("(");
        if has_operands && !c.eat(")") {
            loop {
                let r = c.value()?;
                operands.push(*self.ids.get(&r).ok_or_else(|| c.err(format!("`%{r}` is not defined above")))?);
                if c.eat(")") {
                    break;
                }
                c.expect(",")?;
            }
        }
        let mut attrs = Attrs(vec![]);
        if c.eat("{") {
            loop {
                let k = c.word()?;
                c.expect("=")?;
                let v = c.until(&[',', '}'])?.trim();
                if attrs.0.iter().any(|(a, _)| a == k) {
                    return Err(c.err(format!("attribute `{k}` given twice")));
                }
                attrs.0.push((k.to_string(), v.to_string()));
                if c.eat("}") {
                    break;
                }
                c.expect(",")?;
            }
        }
        c.expect(":")?;
        let ty = c.ty()?;
        c.end()?;

        let op = build_op(op_name, label, &mut attrs).map_err(|e| c.err(e))?;
        if op.is_source() && has_operands {
            return Err(c.err(format!("`{op_name}` takes no operands")));
        }
        if !op.is_source() && !has_operands {
            return Err(c.err(format!("expected `(` and the operands of `{op_name}`")));
        }
        let n = match op {
            Op::Input { .. } | Op::Param { .. } | Op::State { .. } => self.g.source(op, ty, None),
            _ => {
                let n = self.g.try_add(op, &operands, None).map_err(|e| c.err(e))?;
                if self.g.g[n].ty != ty {
                    return Err(c.err(format!(
                        "type {} does not match the inferred {}",
                        type_str(&ty),
                        type_str(&self.g.g[n].ty)
                    )));
                }
                n
            }
        };
        self.ids.insert(id, n);
        Ok(())
    }

    fn output(&mut self, c: &mut Cursor) -> Result<(), String> {
        let name = c.string()?;
        c.expect("=")?;
        let r = c.value()?;
        c.end()?;
        let n = *self.ids.get(&r).ok_or_else(|| c.err(format!("`%{r}` is not defined above")))?;
        if self.g.outputs.iter().any(|(o, _)| *o == name) {
            return Err(c.err(format!("output {} is named twice", quote(&name))));
        }
        self.g.output(name, n);
        Ok(())
    }
}

fn build_op(name: &str, label: Option<String>, a: &mut Attrs) -> Result<Op, String> {
    let is_named = matches!(name, "input" | "param" | "state");
    if is_named != label.is_some() {
        return Err(if is_named {
            format!("`{name}` needs a quoted name")
        } else {
            format!("`{name}` takes no quoted name")
        });
    }
    let label = label.unwrap_or_default();
    let op = match name {
        "input" => Op::Input { name: label },
        "param" => Op::Param { key: label },
        "state" => Op::State { name: label },
        "const" => Op::Const { value: a.f("value")? },
        "linear" => Op::Linear,
        "matmul" => Op::MatMul,
        "conv2d" => Op::Conv2d { stride: a.num("stride")?, pad: a.num("pad")? },
        "embedding" => Op::Embedding,
        "affine" => Op::Affine { scale: a.f("scale")?, shift: a.f("shift")? },
        "clamp_max" => Op::ClampMax { max: a.f("max")? },
        "layer_norm" => Op::LayerNorm { eps: a.f("eps")? },
        "rms_norm" => Op::RmsNorm { eps: a.f("eps")? },
        "group_norm" => Op::GroupNorm { groups: a.num("groups")?, eps: a.f("eps")? },
        "l2_normalize" => Op::L2Normalize { eps: a.f("eps")? },
        "softmax" => Op::Softmax,
        "argmax" => Op::ArgMax,
        "reshape" => Op::Reshape { shape: a.list("shape", Dim::parse)? },
        "permute" => Op::Permute { perm: a.list("perm", |s| s.parse().map_err(|_| format!("`{s}` is not an axis")))? },
        "slice" => Op::Slice { axis: a.num("axis")?, start: a.dim("start")?, len: a.dim("len")? },
        "concat" => Op::Concat { axis: a.num("axis")? },
        "resize" => {
            let m = a.take("mode")?;
            let mode = RESAMPLES
                .into_iter()
                .find(|&r| resample_name(r) == m)
                .ok_or_else(|| format!("`{m}` is not a resampling mode"))?;
            Op::Resize { mode, h: a.dim("h")?, w: a.dim("w")? }
        }
        "rope" => Op::Rope,
        "sinusoid" => Op::Sinusoid { dim: a.num("dim")?, max_period: a.f("max_period")? },
        "guide" => {
            let ch = a.take("channels")?;
            let channels = if ch == "none" {
                None
            } else {
                Some(ch.parse().map_err(|_| format!("`channels = {ch}`: not a count"))?)
            };
            Op::Guide { channels }
        }
        "sample_tokens" => {
            Op::SampleTokens { temperature: a.f("temperature")?, top_k: a.num("top_k")?, top_p: a.f("top_p")? }
        }
        "nearest_code" => Op::NearestCode,
        "flow_map_tokens" => Op::FlowMapTokens {
            temperature: a.f("temperature")?,
            top_k: a.num("top_k")?,
            top_p: a.f("top_p")?,
            steps: a.num("steps")?,
        },
        _ => {
            if let Some(u) = UNARIES.into_iter().find(|&u| Op::Unary(u).name() == name) {
                Op::Unary(u)
            } else if let Some(b) = BINARIES.into_iter().find(|&b| Op::Binary(b).name() == name) {
                Op::Binary(b)
            } else {
                return Err(format!("unknown op `{name}`"));
            }
        }
    };
    if let Some((k, _)) = a.0.first() {
        return Err(format!("`{name}` has no attribute `{k}`"));
    }
    Ok(op)
}

/// The raw `key = value` texts of one node, consumed as the op is built.
struct Attrs(Vec<(String, String)>);

impl Attrs {
    fn take(&mut self, k: &str) -> Result<String, String> {
        let i = self.0.iter().position(|(a, _)| a == k).ok_or_else(|| format!("missing attribute `{k}`"))?;
        Ok(self.0.remove(i).1)
    }
    fn f(&mut self, k: &str) -> Result<F, String> {
        let v = self.take(k)?;
        // Bit-exact: `F`'s Display is the shortest text for these bits.
        v.parse::<f64>().map(|x| F(x.to_bits())).map_err(|_| format!("`{k} = {v}`: not a number"))
    }
    fn num<T: FromStr>(&mut self, k: &str) -> Result<T, String> {
        let v = self.take(k)?;
        v.parse().map_err(|_| format!("`{k} = {v}`: not a non-negative integer in range"))
    }
    fn dim(&mut self, k: &str) -> Result<Dim, String> {
        let v = self.take(k)?;
        Dim::parse(&v).map_err(|e| format!("`{k} = {v}`: {e}"))
    }
    fn list<T>(&mut self, k: &str, item: impl Fn(&str) -> Result<T, String>) -> Result<Vec<T>, String> {
        let v = self.take(k)?;
        let inner = v
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .ok_or_else(|| format!("`{k} = {v}`: expected a list `[a, b, ...]`"))?;
        if inner.trim().is_empty() {
            return Ok(vec![]);
        }
        inner.split(',').map(|s| item(s.trim()).map_err(|e| format!("`{k}`: {e}"))).collect()
    }
}

/// A position in one line of the text.
struct Cursor<'a> {
    s: &'a str,
    pos: usize,
    line: usize,
}

impl<'a> Cursor<'a> {
    fn new(s: &'a str, line: usize) -> Self {
        Cursor { s, pos: 0, line }
    }
    fn err(&self, msg: impl std::fmt::Display) -> String {
        format!("line {}: {msg}", self.line)
    }
    fn rest(&self) -> &'a str {
        &self.s[self.pos..]
    }
    fn skip_ws(&mut self) {
        let r = self.rest();
        self.pos += r.len() - r.trim_start().len();
    }
    fn peek(&mut self) -> Option<char> {
        self.skip_ws();
        self.rest().chars().next()
    }
    /// What is next, for messages.
    fn found(&self) -> String {
        let r = self.rest().trim_start();
        match r.split_whitespace().next() {
            None => "the end of the line".into(),
            Some(w) => format!("`{}`", w.chars().take(24).collect::<String>()),
        }
    }
    fn eat(&mut self, lit: &str) -> bool {
        self.skip_ws();
        let hit = self.rest().starts_with(lit);
        if hit {
            self.pos += lit.len();
        }
        hit
    }
    fn expect(&mut self, lit: &str) -> Result<(), String> {
        if self.eat(lit) {
            Ok(())
        } else {
            Err(self.err(format!("expected `{lit}`, found {}", self.found())))
        }
    }
    fn word(&mut self) -> Result<&'a str, String> {
        self.skip_ws();
        let r = self.rest();
        let len = r.find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_')).unwrap_or(r.len());
        if len == 0 {
            return Err(self.err(format!("expected a name, found {}", self.found())));
        }
        self.pos += len;
        Ok(&r[..len])
    }
    fn keyword(&mut self, kw: &str) -> Result<(), String> {
        let start = self.pos;
        match self.word() {
            Ok(w) if w == kw => Ok(()),
            _ => {
                self.pos = start;
                Err(self.err(format!("expected `{kw}`, found {}", self.found())))
            }
        }
    }
    /// A JSON string literal.
    fn string(&mut self) -> Result<String, String> {
        self.skip_ws();
        let r = self.rest();
        if !r.starts_with('"') {
            return Err(self.err(format!("expected a quoted string, found {}", self.found())));
        }
        let mut escaped = false;
        let end = r
            .char_indices()
            .skip(1)
            .find(|&(_, ch)| {
                let close = ch == '"' && !escaped;
                escaped = ch == '\\' && !escaped;
                close
            })
            .map(|(i, _)| i)
            .ok_or_else(|| self.err("unterminated string"))?;
        let s = serde_json::from_str(&r[..=end]).map_err(|e| self.err(format!("bad string: {e}")))?;
        self.pos += end + 1;
        Ok(s)
    }
    /// `%N`.
    fn value(&mut self) -> Result<u64, String> {
        self.expect("%")?;
        let r = self.rest();
        let len = r.find(|ch: char| !ch.is_ascii_digit()).unwrap_or(r.len());
        let n = r[..len]
            .parse()
            .map_err(|_| self.err(format!("expected a value number after `%`, found {}", self.found())))?;
        self.pos += len;
        Ok(n)
    }
    /// Raw text up to the first of `stops` outside brackets (not consumed).
    fn until(&mut self, stops: &[char]) -> Result<&'a str, String> {
        let r = self.rest();
        let mut depth = 0i32;
        for (i, ch) in r.char_indices() {
            match ch {
                '[' => depth += 1,
                ']' if depth > 0 => depth -= 1,
                _ if depth == 0 && stops.contains(&ch) => {
                    self.pos += i;
                    return Ok(&r[..i]);
                }
                _ => {}
            }
        }
        Err(self.err(format!("expected one of {stops:?} before the end of the line")))
    }
    fn ty(&mut self) -> Result<TensorType, String> {
        let dtype = match self.word()? {
            "f32" => DType::F32,
            "i64" => DType::I64,
            d => return Err(self.err(format!("unknown dtype `{d}`"))),
        };
        self.expect("[")?;
        let inner = self.until(&[']'])?;
        self.expect("]")?;
        let shape = if inner.trim().is_empty() {
            vec![]
        } else {
            inner
                .split(',')
                .map(|d| Dim::parse(d.trim()).map_err(|e| self.err(format!("`{}`: {e}", d.trim()))))
                .collect::<Result<_, _>>()?
        };
        Ok(TensorType { dtype, shape })
    }
    /// Only blanks or a comment may follow.
    fn end(&mut self) -> Result<(), String> {
        self.skip_ws();
        if self.rest().is_empty() || self.rest().starts_with("//") {
            Ok(())
        } else {
            Err(self.err(format!("unexpected {} at the end of the statement", self.found())))
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ir::dim::Sym;
    use ecarc_grammar::Span;

    fn d(s: &str) -> Dim {
        Dim::parse(s).unwrap()
    }
    fn f32t(dims: &str) -> TensorType {
        TensorType::f32(dims.split(',').map(|s| d(s.trim())).collect())
    }

    /// A graph using every op variant (and every nested variant), with awkward
    /// names and floats, that type-checks. Shared with the verifier and DOT tests.
    pub(crate) fn every_op_graph() -> Graph {
        let mut g = Graph::new("every.op \"quoted\"");
        let x = g.source(Op::Input { name: "x".into() }, f32t("B, T, 32"), None);
        let w = g.source(Op::Param { key: "lin.weight".into() }, f32t("64, 32"), None);
        let b = g.source(Op::Param { key: "lin.bias".into() }, f32t("64"), None);
        let odd = g.source(Op::Input { name: "we\"ird\\ // name\n\u{e9}".into() }, f32t("B, T, 32"), None);
        let kv = g.source(Op::State { name: "kv".into() }, f32t("B, P, 32"), None);
        let tok = g.source(Op::Input { name: "tokens".into() }, TensorType::i64(vec![d("B"), d("T")]), None);
        let table = g.source(Op::Param { key: "embed".into() }, f32t("1024, 32"), None);
        let img = g.source(Op::Input { name: "img".into() }, f32t("B, 3, 8, 8"), None);
        let cw = g.source(Op::Param { key: "conv.w".into() }, f32t("16, 3, 3, 3"), None);
        let cb = g.source(Op::Param { key: "conv.b".into() }, f32t("16"), None);
        let nw = g.source(Op::Param { key: "norm.w".into() }, f32t("32"), None);
        let nb = g.source(Op::Param { key: "norm.b".into() }, f32t("32"), None);
        let gw = g.source(Op::Param { key: "gn.w".into() }, f32t("16"), None);
        let gb = g.source(Op::Param { key: "gn.b".into() }, f32t("16"), None);
        let cos = g.source(Op::Input { name: "cos".into() }, f32t("T, 4"), None);
        let sin = g.source(Op::Input { name: "sin".into() }, f32t("T, 4"), None);
        let noise = g.source(Op::Input { name: "noise".into() }, f32t("B, T"), None);
        let t = g.source(Op::Input { name: "t".into() }, f32t("B"), None);
        let codes = g.source(Op::Param { key: "codes".into() }, f32t("512, 32"), None);
        let flow_noise = g.source(Op::Input { name: "flow_noise".into() }, f32t("B, T, 8"), None);
        let vocab_codes = g.source(Op::Param { key: "vocab_codes".into() }, f32t("64, 8"), None);

        let mut add = |op: Op, operands: &[NodeIndex]| g.try_add(op, operands, None).unwrap();
        let scale = add(Op::Const { value: F::new(7.5) }, &[]);
        add(Op::Const { value: F::new(f64::NAN) }, &[]);
        add(Op::Const { value: F(f64::to_bits(-0.0)) }, &[]);
        add(Op::Const { value: F::new(5e-324) }, &[]);
        let lin = add(Op::Linear, &[x, w, b]);
        let lin2 = add(Op::Linear, &[odd, w]);
        let xt = add(Op::Permute { perm: vec![0, 2, 1] }, &[x]);
        add(Op::MatMul, &[x, xt]);
        let conv = add(Op::Conv2d { stride: 1, pad: 1 }, &[img, cw, cb]);
        let emb = add(Op::Embedding, &[table, tok]);
        for u in UNARIES {
            add(Op::Unary(u), &[x]);
        }
        for bin in BINARIES {
            add(Op::Binary(bin), &[x, emb]);
        }
        add(Op::Affine { scale: F::new(1e-6), shift: F::new(f64::NEG_INFINITY) }, &[x]);
        add(Op::ClampMax { max: F::new(f64::MAX) }, &[x]);
        add(Op::LayerNorm { eps: F::new(1e-5) }, &[x, nw, nb]);
        add(Op::RmsNorm { eps: F::new(1e-6) }, &[x, nw]);
        add(Op::GroupNorm { groups: 4, eps: F::new(1e-6) }, &[conv, gw, gb]);
        add(Op::L2Normalize { eps: F::new(1e-12) }, &[x]);
        add(Op::Softmax, &[lin]);
        add(Op::ArgMax, &[lin]);
        let heads = add(Op::Reshape { shape: vec![d("B"), d("T"), d("4"), d("8")] }, &[x]);
        let heads = add(Op::Permute { perm: vec![0, 2, 1, 3] }, &[heads]);
        let cat = add(Op::Concat { axis: 1 }, &[kv, x]);
        let last = add(Op::Slice { axis: 1, start: d("P"), len: d("T") }, &[cat]);
        add(Op::Slice { axis: 1, start: d("0"), len: d("2*B*T + P - 1") }, &[cat]);
        for mode in RESAMPLES {
            add(Op::Resize { mode, h: d("16"), w: d("4") }, &[img]);
        }
        let roped = add(Op::Rope, &[heads, cos, sin]);
        let temb = add(Op::Sinusoid { dim: 16, max_period: F::new(10000.0) }, &[t]);
        let guided = add(Op::Guide { channels: Some(16) }, &[lin, lin2, scale]);
        add(Op::Guide { channels: None }, &[lin, lin2, scale]);
        let toks = add(Op::SampleTokens { temperature: F::new(1.0), top_k: 0, top_p: F::new(0.9) }, &[guided, noise]);
        let code = add(Op::NearestCode, &[last, codes]);
        let chosen = add(
            Op::FlowMapTokens { temperature: F::new(0.5), top_k: 3, top_p: F::new(0.75), steps: 16 },
            &[guided, flow_noise, vocab_codes],
        );
        g.output("chosen", chosen);
        g.output("logits", guided);
        g.output("tokens", toks);
        g.output("code", code);
        g.output("q \"rot\"", roped);
        g.output("temb", temb);
        g
    }

    /// One number per top-level variant; exhaustive, so a new variant fails
    /// to compile here until it is given a number (and the graph covers it).
    fn variant(op: &Op) -> usize {
        use Op::*;
        match op {
            Input { .. } => 0,
            Param { .. } => 1,
            State { .. } => 2,
            Const { .. } => 3,
            Linear => 4,
            MatMul => 5,
            Conv2d { .. } => 6,
            Embedding => 7,
            Unary(_) => 8,
            Binary(_) => 9,
            Affine { .. } => 10,
            ClampMax { .. } => 11,
            LayerNorm { .. } => 12,
            RmsNorm { .. } => 13,
            GroupNorm { .. } => 14,
            L2Normalize { .. } => 15,
            Softmax => 16,
            ArgMax => 17,
            Reshape { .. } => 18,
            Permute { .. } => 19,
            Slice { .. } => 20,
            Concat { .. } => 21,
            Resize { .. } => 22,
            Rope => 23,
            Guide { .. } => 24,
            SampleTokens { .. } => 25,
            NearestCode => 26,
            Sinusoid { .. } => 27,
            FlowMapTokens { .. } => 28,
        }
    }
    const VARIANTS: usize = 29;

    /// Ops, types and operands in printed order, and outputs by position:
    /// what "structurally equal" means across a round trip.
    #[allow(clippy::type_complexity)]
    fn structure(g: &Graph) -> (Vec<(Op, TensorType, Vec<usize>)>, Vec<(String, usize)>) {
        let order = order(g);
        let pos: HashMap<NodeIndex, usize> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
        let nodes = order
            .iter()
            .map(|&n| (g.g[n].op.clone(), g.g[n].ty.clone(), g.operands(n).iter().map(|o| pos[o]).collect()))
            .collect();
        (nodes, g.outputs.iter().map(|(s, n)| (s.clone(), pos[n])).collect())
    }

    fn assert_round_trips(g: &Graph) {
        let text = print(g, None);
        let back = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(print(&back, None), text);
        assert_eq!(structure(&back), structure(g));
        assert_eq!(back.name, g.name);
    }

    #[test]
    fn every_op_round_trips() {
        let g = every_op_graph();
        let mut seen: Vec<usize> = g.g.node_weights().map(|n| variant(&n.op)).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen, (0..VARIANTS).collect::<Vec<_>>(), "the test graph misses a variant");
        assert_round_trips(&g);
        // -0.0 keeps its sign bit through the text.
        assert!(print(&g, None).contains("const {value = -0.0} : f32[]"));
    }

    #[test]
    fn prints_the_documented_form() {
        let mut g = Graph::new("backbone.next");
        let x = g.source(Op::Input { name: "x".into() }, f32t("B, T, 32"), None);
        let w = g.source(Op::Param { key: "word_embed.weight".into() }, f32t("1024, 32"), None);
        let l = g.add(Op::Linear, &[x, w], None);
        let s = g.add(Op::Slice { axis: 1, start: Dim::c(0), len: Dim::sym(Sym::T) }, &[l], None);
        let a = g.add(Op::Affine { scale: F::new(0.5), shift: F::new(0.0) }, &[s], None);
        g.output("logits", a);
        let want = r#"graph "backbone.next" {
  %0 = input "x" : f32[B, T, 32]
  %1 = param "word_embed.weight" : f32[1024, 32]
  %2 = linear(%0, %1) : f32[B, T, 1024]
  %3 = slice(%2) {axis = 1, start = 0, len = T} : f32[B, T, 1024]
  %4 = affine(%3) {scale = 0.5, shift = 0.0} : f32[B, T, 1024]
  out "logits" = %4
}
"#;
        assert_eq!(print(&g, None), want);
        assert_round_trips(&g);
    }

    #[test]
    fn order_puts_sources_first_then_smallest_index() {
        let mut g = Graph::new("o");
        let x = g.source(Op::Input { name: "x".into() }, f32t("4"), None);
        let a = g.add(Op::Unary(Unary::Exp), &[x], None);
        let b = g.add(Op::Unary(Unary::Neg), &[x], None);
        // A source added after the ops still prints before them.
        let y = g.source(Op::Param { key: "y".into() }, f32t("4"), None);
        let c = g.add(Op::Binary(Binary::Add), &[b, y], None);
        let a2 = g.add(Op::Binary(Binary::Mul), &[c, a], None);
        assert_eq!(order(&g), vec![x, y, a, b, c, a2]);
        // Removing a node leaves a hole in the indices; printing is unaffected.
        let mut h = g.clone();
        h.g.remove_node(a2);
        assert_round_trips(&h);
        assert_round_trips(&g);
    }

    #[test]
    fn spans_print_as_comments_and_parse_ignores_them() {
        let mut sm = SourceMap::new();
        let file = sm.add("models/t.ecar", None, "model t {\n    linear 64\n}\n");
        let mut g = Graph::new("s");
        let x = g.source(Op::Input { name: "x // not a comment".into() }, f32t("B, 32"), Some(Span::new(file, 0, 5)));
        let w = g.source(Op::Param { key: "w".into() }, f32t("64, 32"), None);
        let l = g.add(Op::Linear, &[x, w], Some(Span::new(file, 14, 23)));
        g.output("y", l);
        let text = print(&g, Some(&sm));
        let want = r#"graph "s" {
  %0 = input "x // not a comment" : f32[B, 32]  // models/t.ecar:1:1
  %1 = param "w" : f32[64, 32]
  %2 = linear(%0, %1) : f32[B, 64]              // models/t.ecar:2:5
  out "y" = %2
}
"#;
        assert_eq!(text, want);
        let back = parse(&text).unwrap();
        assert!(back.g.node_weights().all(|n| n.span.is_none()));
        assert_eq!(print(&back, None), print(&g, None));
    }

    #[test]
    fn parse_accepts_comments_blank_lines_and_loose_spacing() {
        let text = "// a header\n\ngraph \"g\"{\n  // a note\n%7=input \"x\":f32[B,T]\n %2 = exp( %7 ) : f32[B, T] // c\n\n out \"y\"=%2\n}\n// trailer\n";
        let g = parse(text).unwrap();
        assert_eq!(
            print(&g, None),
            "graph \"g\" {\n  %0 = input \"x\" : f32[B, T]\n  %1 = exp(%0) : f32[B, T]\n  out \"y\" = %1\n}\n"
        );
    }

    #[test]
    fn parse_errors_name_the_line() {
        let head = "graph \"g\" {\n  %0 = input \"x\" : f32[B, 8]\n";
        let cases = [
            ("  %1 = exp(%0) : f32[B, 9]\n}\n", "line 3: type f32[B, 9] does not match the inferred f32[B, 8]"),
            ("  %1 = exp(%5) : f32[B, 8]\n}\n", "line 3: `%5` is not defined above"),
            ("  %0 = exp(%0) : f32[B, 8]\n}\n", "line 3: `%0` is defined twice"),
            ("  %1 = frob(%0) : f32[B, 8]\n}\n", "line 3: unknown op `frob`"),
            ("  %1 = affine(%0) {scale = 1.0} : f32[B, 8]\n}\n", "line 3: missing attribute `shift`"),
            ("  %1 = exp(%0) {axis = 1} : f32[B, 8]\n}\n", "line 3: `exp` has no attribute `axis`"),
            ("  %1 = clamp_max(%0) {max = big} : f32[B, 8]\n}\n", "line 3: `max = big`: not a number"),
            ("  %1 = slice(%0) {axis = 1, start = Q, len = 1} : f32[B, 1]\n}\n", "line 3: `start = Q`"),
            ("  %1 = exp : f32[B, 8]\n}\n", "line 3: expected `(` and the operands of `exp`"),
            ("  %1 = input(%0) \"y\" : f32[8]\n}\n", "line 3: expected `:`"),
            ("  %1 = param \"w\"(%0) : f32[8]\n}\n", "line 3: `param` takes no operands"),
            ("  %1 = exp(%0) : f16[B, 8]\n}\n", "line 3: unknown dtype `f16`"),
            ("  %1 = exp(%0) : f32[B, 8] extra\n}\n", "line 3: unexpected `extra`"),
            ("  %1 = linear(%0) : f32[B, 8]\n}\n", "line 3: linear: takes 2..=3 operands, got 1"),
            ("  out \"y\" = %0\n  out \"y\" = %0\n}\n", "line 4: output \"y\" is named twice"),
            ("  out \"y = %0\n}\n", "line 3: unterminated string"),
            ("  bogus\n}\n", "line 3: expected `%N = ...`, `out` or `}`"),
            ("  out \"y\" = %0\n", "line 4: missing the graph's closing `}`"),
            ("}\n%1 = exp(%0) : f32[B, 8]\n", "line 4: text after the graph's closing `}`"),
        ];
        for (tail, want) in cases {
            let err = parse(&format!("{head}{tail}")).unwrap_err();
            assert!(err.starts_with(want), "for {tail:?}: got {err:?}, want {want:?}");
        }
        assert!(parse("").unwrap_err().starts_with("line 1:"));
        assert!(parse("graf \"g\" {\n}\n").unwrap_err().starts_with("line 1: expected `graph`"));
    }

    mod random {
        use super::*;
        use proptest::prelude::*;

        /// A random polynomial over B, T, P, negative coefficients included.
        fn dim() -> impl Strategy<Value = Dim> {
            poly(-3..5)
        }

        /// Slice bounds stay non-negative: `Dim::as_const` wraps a negative
        /// constant to a huge u64 and slice inference then overflows.
        fn bound() -> impl Strategy<Value = Dim> {
            poly(0..5)
        }

        fn poly(coefs: std::ops::Range<i64>) -> impl Strategy<Value = Dim> {
            prop::collection::vec((0usize..7, coefs), 0..4).prop_map(|terms| {
                let monos = ["1", "B", "T", "P", "B*T", "T*T", "B*P"];
                let text: Vec<String> = terms.iter().map(|(m, c)| format!("{c}*{}", monos[*m])).collect();
                Dim::parse(&text.join(" + ")).unwrap_or_else(|_| Dim::c(0))
            })
        }

        fn float() -> impl Strategy<Value = F> {
            prop_oneof![
                any::<f64>().prop_map(|v| if v.is_nan() { F::new(v) } else { F(v.to_bits()) }),
                Just(F::new(f64::INFINITY)),
                Just(F(f64::to_bits(-0.0))),
                (-1e3f64..1e3).prop_map(F::new),
            ]
        }

        /// One building step, applied to earlier nodes picked by the indices.
        #[derive(Clone, Debug)]
        enum Step {
            Source(u8, String, Vec<Dim>),
            Unary(usize, usize),
            Binary(usize, usize, usize),
            Affine(usize, F, F),
            Slice(usize, u8, Dim, Dim),
            Reshape(usize, Vec<Dim>),
            Concat(Vec<usize>, u8),
            Output(String, usize),
        }

        fn step() -> impl Strategy<Value = Step> {
            let idx = any::<usize>();
            prop_oneof![
                (0u8..3, ".*", prop::collection::vec(dim(), 0..4)).prop_map(|(k, s, sh)| Step::Source(k, s, sh)),
                (0usize..UNARIES.len(), idx).prop_map(|(u, a)| Step::Unary(u, a)),
                (0usize..BINARIES.len(), idx, idx).prop_map(|(b, x, y)| Step::Binary(b, x, y)),
                (idx, float(), float()).prop_map(|(a, s, t)| Step::Affine(a, s, t)),
                (idx, 0u8..4, bound(), bound()).prop_map(|(a, ax, s, l)| Step::Slice(a, ax, s, l)),
                (idx, prop::collection::vec(dim(), 0..3)).prop_map(|(a, sh)| Step::Reshape(a, sh)),
                (prop::collection::vec(idx, 1..4), 0u8..3).prop_map(|(xs, ax)| Step::Concat(xs, ax)),
                (".*", idx).prop_map(|(s, a)| Step::Output(s, a)),
            ]
        }

        /// Apply the steps, skipping those that do not type-check.
        fn build(name: String, steps: Vec<Step>) -> Graph {
            let mut g = Graph::new(name);
            let mut nodes: Vec<NodeIndex> = vec![];
            for s in steps {
                let pick = |i: usize| nodes[i % nodes.len()];
                let added = match s {
                    Step::Source(k, name, shape) => {
                        let op = match k {
                            0 => Op::Input { name },
                            1 => Op::Param { key: name },
                            _ => Op::State { name },
                        };
                        // One declaration per source (the verifier rejects two types for one name).
                        if g.g.node_weights().any(|n| n.op == op) {
                            continue;
                        }
                        Ok(g.source(op, TensorType::f32(shape), None))
                    }
                    _ if nodes.is_empty() => continue,
                    Step::Unary(u, a) => g.try_add(Op::Unary(UNARIES[u]), &[pick(a)], None),
                    Step::Binary(b, x, y) => g.try_add(Op::Binary(BINARIES[b]), &[pick(x), pick(y)], None),
                    Step::Affine(a, scale, shift) => g.try_add(Op::Affine { scale, shift }, &[pick(a)], None),
                    Step::Slice(a, axis, start, len) => g.try_add(Op::Slice { axis, start, len }, &[pick(a)], None),
                    Step::Reshape(a, shape) => g.try_add(Op::Reshape { shape }, &[pick(a)], None),
                    Step::Concat(xs, axis) => {
                        let xs: Vec<NodeIndex> = xs.into_iter().map(pick).collect();
                        g.try_add(Op::Concat { axis }, &xs, None)
                    }
                    Step::Output(name, a) => {
                        if !g.outputs.iter().any(|(o, _)| *o == name) {
                            g.output(name, pick(a));
                        }
                        continue;
                    }
                };
                if let Ok(n) = added {
                    nodes.push(n);
                }
            }
            g
        }

        proptest! {
            #[test]
            fn random_graphs_round_trip(name in ".*", steps in prop::collection::vec(step(), 0..60)) {
                let g = build(name, steps);
                // Builders only make well-formed graphs; the verifier agrees.
                prop_assert_eq!(crate::ir::verify::verify(&g), Ok(()));
                assert_round_trips(&g);
            }
        }
    }
}
