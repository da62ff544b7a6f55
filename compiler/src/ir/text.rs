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
//!        | ('out' | 'update') STRING '=' '%'N
//! type  := ('f32' | 'i64') '[' [DIM (',' DIM)*] ']'
//! ```
//!
//! `update` is an output that writes the state of its name in place (see
//! `Graph::updates`). `input`, `param` and `state` take a STRING and no operand list; `const`
//! takes neither; every other op takes an operand list. STRINGs are JSON string
//! literals, DIMs are [`Dim`]'s canonical text, floats are [`F`]'s Display
//! (shortest text that parses back to the same bits, `inf`, `NaN`), lists are
//! `[a, b]`, `Option`s are `none` or a number, enums are lower-case names.

use super::dim::Dim;
use super::graph::{Graph, TensorType};
use super::op::{Binary, DType, Mask, Op, Resample, Unary, F};
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
        Linear | MatMul | Embedding | Unary(_) | Binary(_) | Softmax | ArgMax | Rope | NearestCode | SampleTokens
        | Fused(_) => {
            vec![]
        }
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
        FlowMapTokens { steps } => vec![("steps", steps.to_string())],
        WriteSlice { axis, start } => vec![("axis", axis.to_string()), ("start", start.to_string())],
        Attention { mask, scale, keys } => {
            vec![("mask", mask.name().into()), ("scale", scale.to_string()), ("keys", keys.to_string())]
        }
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
const MASKS: [Mask; 4] = [Mask::Full, Mask::Causal, Mask::BlockCausal, Mask::EarlierPlusSelf];

/// A new variant makes these matches fail to compile: add it to the lists above.
#[allow(dead_code)]
fn lists_are_complete(u: Unary, b: Binary, r: Resample, m: Mask) {
    use {Binary::*, Mask::*, Resample::*, Unary::*};
    match m {
        Full | Causal | BlockCausal | EarlierPlusSelf => {}
    }
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
        // A fused node's kernel follows it, indented (parsing does not read it back).
        if let Op::Fused(k) = &node.op {
            lines.extend(k.lines().into_iter().map(|l| (format!("  | {l}"), None)));
        }
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
        let kw = if g.is_update(name) { "update" } else { "out" };
        writeln!(out, "  {kw} {} = {target}", quote(name)).unwrap();
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
                let update = c.keyword("update").is_ok();
                if !update {
                    c.keyword("out").map_err(|_| {
                        c.err(format!("expected `%N = ...`, `out`, `update` or `}}`, found {}", c.found()))
                    })?;
                }
                p.output(&mut c, update)?;
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

    fn output(&mut self, c: &mut Cursor, update: bool) -> Result<(), String> {
        let name = c.string()?;
        c.expect("=")?;
        let r = c.value()?;
        c.end()?;
        let n = *self.ids.get(&r).ok_or_else(|| c.err(format!("`%{r}` is not defined above")))?;
        if self.g.outputs.iter().any(|(o, _)| *o == name) {
            return Err(c.err(format!("output {} is named twice", quote(&name))));
        }
        if update {
            self.g.update(name, n);
        } else {
            self.g.output(name, n);
        }
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
        "sample_tokens" => Op::SampleTokens,
        "nearest_code" => Op::NearestCode,
        "flow_map_tokens" => Op::FlowMapTokens { steps: a.num("steps")? },
        "write_slice" => Op::WriteSlice { axis: a.num("axis")?, start: a.dim("start")? },
        "attention" => {
            let m = a.take("mask")?;
            let mask =
                MASKS.into_iter().find(|k| k.name() == m).ok_or_else(|| format!("`{m}` is not an attention mask"))?;
            Op::Attention { mask, scale: a.f("scale")?, keys: a.dim("keys")? }
        }
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
#[path = "text_tests.rs"]
pub(crate) mod tests;
