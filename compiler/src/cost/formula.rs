//! Parameters and MACs as symbolic polynomials in a model's fields, so that a
//! search can cost thousands of designs without lowering each.
//!
//! [`formula`] reads the checked [`ModelSpec`] and the merged model body it came
//! from and produces three polynomials with exact integer coefficients:
//!
//! - `params`: every declared `params` group of the generator (model, backbone,
//!   backbone.block, head, distill), its shapes evaluated *symbolically* from the
//!   body's expressions with the checker's scope chains, `when` conditions and
//!   `for` repeats honoured (a repeat's count is `hi - lo`, symbolic); groups
//!   the checker expands copy by copy (nested loops, `when a OP b` guards, the
//!   loop variable in a shape) are expanded the same way, with constant copy
//!   counts and symbolic shapes;
//! - `forward_macs`: the teacher-forced forward (batch 1, no CFG), and
//! - `sample_macs`: one whole sample (every stage, solver step, KV cache, CFG),
//!
//! both following the lowering (`lower/`) node by node: which linears run per
//! token or per image, attention's two matmuls over `P + T` keys, the transition
//! convolutions, CFG doubling, Heun's two evaluations per step, Distilled
//! Decoding's `steps` forwards.
//!
//! **Symbols.** A field whose value is a number literal is a leaf named after
//! the field and its component (`backbone.depth`, `head.width`, model-level
//! `classes`); a field holding an expression is substituted (VAR's `width 64 *
//! depth` makes everything a polynomial in `backbone.depth`). Derived values
//! (`tokens`, `stages`, `grid`, `vocab`, `code_dim`, `latent_channels`,
//! `token_channels`, `head_dim`, `ffn_hidden`, `patch`, `time_embed`) are leaves
//! of those names unless they can be substituted exactly (`cond_dim` is the
//! backbone width; `patch`/`time_embed` are the backbone's fields when it has
//! them; `ffn_hidden` is `r * width` for a GELU FFN with an integral
//! `mlp_ratio` r; `head_dim` is `width / heads` when that divides exactly; the
//! tokenizer's `code_dim`, `latent_channels` and `vocab` fields share the
//! derived symbols of those names, and `token_channels` is one of them). A
//! non-polynomial sub-expression (inexact division, a function call) is a leaf
//! named by its source text (loop variables replaced by their values), and a
//! literal list element is a leaf like `tokenizer.ch_mult[2]`. The schedule
//! enters through aggregates over the stages (see [`SCHEDULE_SYMBOLS`]).
//!
//! The tokenizer decoder (`decode_macs`, reported apart) is not part of these
//! formulas.
//!
//! **Validity.** The polynomials are exact for every design with the same
//! *structure* as the one they were built from: the same tensor roles
//! declared, the same conditioning / FFN / head kinds, CFG on or off, the same
//! branch for the start token(s). Leaves are independent inputs: a search that
//! changes the schedule sets the schedule symbols (e.g. with
//! [`Compiled::set_schedule`]), one that changes `backbone.depth` of a LlamaGen
//! model must also set `ffn_hidden` (a rounded, non-polynomial value there).

use crate::eval::{Scope, N};
use crate::spec::*;
use ecarc_grammar::ast::{BinOp, Expr, ExprKind, Num, ParamGroup, ParamKind};
use ecarc_grammar::merged::{MBody, MValue};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

// ---------------------------------------------------------------------------
// Polynomials
// ---------------------------------------------------------------------------

/// A monomial: symbols with their powers (>= 1), sorted by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mono(Vec<(String, u32)>);

impl Mono {
    pub fn degree(&self) -> u32 {
        self.0.iter().map(|(_, p)| p).sum()
    }
    pub fn factors(&self) -> &[(String, u32)] {
        &self.0
    }
    fn mul(&self, o: &Mono) -> Mono {
        let mut m: BTreeMap<&str, u32> = BTreeMap::new();
        for (s, p) in self.0.iter().chain(&o.0) {
            *m.entry(s).or_default() += p;
        }
        Mono(m.into_iter().map(|(s, p)| (s.to_string(), p)).collect())
    }
    /// `self / o` when every power of `o` is covered.
    fn div(&self, o: &Mono) -> Option<Mono> {
        let mut m: BTreeMap<&str, u32> = self.0.iter().map(|(s, p)| (s.as_str(), *p)).collect();
        for (s, p) in &o.0 {
            let have = m.get_mut(s.as_str())?;
            if *have < *p {
                return None;
            }
            *have -= p;
        }
        Some(Mono(m.into_iter().filter(|(_, p)| *p > 0).map(|(s, p)| (s.to_string(), p)).collect()))
    }
    fn power_of(&self, s: &str) -> u32 {
        self.0.iter().find(|(n, _)| n == s).map_or(0, |(_, p)| *p)
    }
    fn without(&self, names: &[&str]) -> Mono {
        Mono(self.0.iter().filter(|(n, _)| !names.contains(&n.as_str())).cloned().collect())
    }
}

/// A polynomial over named symbols with exact `i128` coefficients, kept in
/// canonical form (no zero coefficients), so equal polynomials compare equal.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Poly(BTreeMap<Mono, i128>);

impl Poly {
    pub fn zero() -> Poly {
        Poly(BTreeMap::new())
    }
    pub fn constant(c: i128) -> Poly {
        let mut m = BTreeMap::new();
        if c != 0 {
            m.insert(Mono::default(), c);
        }
        Poly(m)
    }
    pub fn var(name: &str) -> Poly {
        Poly(BTreeMap::from([(Mono(vec![(name.to_string(), 1)]), 1)]))
    }
    /// The value when the polynomial has no symbols.
    pub fn as_const(&self) -> Option<i128> {
        match self.0.len() {
            0 => Some(0),
            1 => self.0.get(&Mono::default()).copied(),
            _ => None,
        }
    }
    /// Terms, monomial -> coefficient.
    pub fn terms(&self) -> impl Iterator<Item = (&Mono, i128)> {
        self.0.iter().map(|(m, &c)| (m, c))
    }
    pub fn degree(&self) -> u32 {
        self.0.keys().map(Mono::degree).max().unwrap_or(0)
    }
    /// Every symbol the polynomial mentions.
    pub fn symbols(&self) -> BTreeSet<String> {
        self.0.keys().flat_map(|m| m.0.iter().map(|(s, _)| s.clone())).collect()
    }
    pub fn add(&self, o: &Poly) -> Poly {
        let mut m = self.0.clone();
        for (k, v) in &o.0 {
            *m.entry(k.clone()).or_insert(0) += v;
        }
        m.retain(|_, v| *v != 0);
        Poly(m)
    }
    pub fn sub(&self, o: &Poly) -> Poly {
        self.add(&o.scale(-1))
    }
    pub fn scale(&self, c: i128) -> Poly {
        if c == 0 {
            return Poly::zero();
        }
        Poly(self.0.iter().map(|(k, v)| (k.clone(), v * c)).collect())
    }
    pub fn mul(&self, o: &Poly) -> Poly {
        let mut m: BTreeMap<Mono, i128> = BTreeMap::new();
        for (a, x) in &self.0 {
            for (b, y) in &o.0 {
                *m.entry(a.mul(b)).or_insert(0) += x * y;
            }
        }
        m.retain(|_, v| *v != 0);
        Poly(m)
    }
    /// `self / d` when it is exact as a polynomial: `d` a nonzero constant or a
    /// single term dividing every term of `self`.
    pub fn div_exact(&self, d: &Poly) -> Option<Poly> {
        if d.0.len() != 1 {
            return None;
        }
        let (dm, &dc) = d.0.iter().next()?;
        let mut out = BTreeMap::new();
        for (m, &c) in &self.0 {
            if c % dc != 0 {
                return None;
            }
            out.insert(m.div(dm)?, c / dc);
        }
        Some(Poly(out))
    }
    /// Replace symbol `s` by the polynomial `by`.
    pub fn substitute(&self, s: &str, by: &Poly) -> Poly {
        let mut out = Poly::zero();
        for (m, &c) in &self.0 {
            let p = m.power_of(s);
            let mut t = Poly(BTreeMap::from([(m.without(&[s]), c)]));
            for _ in 0..p {
                t = t.mul(by);
            }
            out = out.add(&t);
        }
        out
    }
    /// Split by the powers of `names`: (powers, coefficient without them).
    fn split(&self, names: &[&str]) -> BTreeMap<Vec<u32>, Poly> {
        let mut out: BTreeMap<Vec<u32>, Poly> = BTreeMap::new();
        for (m, &c) in &self.0 {
            let key: Vec<u32> = names.iter().map(|n| m.power_of(n)).collect();
            let e = out.entry(key).or_default();
            *e = e.add(&Poly(BTreeMap::from([(m.without(names), c)])));
        }
        out
    }
    /// Evaluate with every symbol's value; checked arithmetic.
    pub fn eval(&self, values: &HashMap<String, i128>) -> Result<i128, String> {
        let mut acc: i128 = 0;
        for (m, &c) in &self.0 {
            let mut t = c;
            for (s, p) in &m.0 {
                let v = *values.get(s).ok_or_else(|| format!("no value for symbol `{s}`"))?;
                for _ in 0..*p {
                    t = t.checked_mul(v).ok_or("overflow")?;
                }
            }
            acc = acc.checked_add(t).ok_or("overflow")?;
        }
        Ok(acc)
    }
    fn eval_map(&self, values: &BTreeMap<String, i128>) -> Result<i128, String> {
        let h: HashMap<String, i128> = self
            .symbols()
            .into_iter()
            .map(|s| values.get(&s).map(|v| (s.clone(), *v)).ok_or_else(|| format!("no value for symbol `{s}`")))
            .collect::<Result<_, _>>()?;
        self.eval(&h)
    }
    /// Terms in display order: higher degree first, then by symbol names.
    pub fn ordered_terms(&self) -> Vec<(&Mono, i128)> {
        let mut t: Vec<(&Mono, i128)> = self.terms().collect();
        t.sort_by(|a, b| b.0.degree().cmp(&a.0.degree()).then_with(|| a.0.cmp(b.0)));
        t
    }
}

impl fmt::Display for Mono {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (s, p)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("*")?;
            }
            f.write_str(s)?;
            if *p > 1 {
                write!(f, "^{p}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for Poly {
    /// `18*depth*width^2 + 14*depth*width - 3`: higher degrees first.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let terms = self.ordered_terms();
        if terms.is_empty() {
            return f.write_str("0");
        }
        for (i, (m, c)) in terms.into_iter().enumerate() {
            let (neg, a) = (c < 0, c.unsigned_abs());
            match (i, neg) {
                (0, true) => f.write_str("-")?,
                (0, false) => {}
                (_, true) => f.write_str(" - ")?,
                (_, false) => f.write_str(" + ")?,
            }
            if m.0.is_empty() {
                write!(f, "{a}")?;
            } else if a == 1 {
                write!(f, "{m}")?;
            } else {
                write!(f, "{a}*{m}")?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Formula, compiled evaluation
// ---------------------------------------------------------------------------

/// The three figures of one design.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    pub params: i128,
    pub forward_macs: i128,
    pub sample_macs: i128,
}

/// Parameters and MACs of a model as polynomials in its symbols.
#[derive(Clone, Debug, PartialEq)]
pub struct Formula {
    pub params: Poly,
    pub forward_macs: Poly,
    pub sample_macs: Poly,
    /// Every symbol of the three polynomials, sorted.
    pub symbols: Vec<String>,
}

/// Schedule symbols a formula may use, computed from the stages by
/// [`schedule_values`] (`T_s` tokens, `P_s` earlier positions, `n_s` steps of
/// stage `s`; `r_s` backbone runs: `n_s` when the backbone is the denoiser, else 1):
/// - `tokens` = sum T_s, `stages` = number of stages, `grid` / `grid_w` = the last grid;
/// - `sum_t2` = sum T_s^2, `sum_tp` = sum T_s P_s (backbone once per stage);
/// - `sum_steps` = sum n_s, `sum_steps_t` = sum n_s T_s, `sum_steps_t2` = sum n_s T_s^2,
///   `sum_steps_tp` = sum n_s T_s P_s (flow-head steps, or per-step backbone runs;
///   a Heun solver's two evaluations per step are a factor 2 in the coefficients);
/// - `steps_first` = n_0, `t_first` = T_0 (corrections for the first step's program).
pub const SCHEDULE_SYMBOLS: [&str; 12] = [
    "tokens",
    "stages",
    "grid",
    "grid_w",
    "sum_t2",
    "sum_tp",
    "sum_steps",
    "sum_steps_t",
    "sum_steps_t2",
    "sum_steps_tp",
    "steps_first",
    "t_first",
];

/// Values of [`SCHEDULE_SYMBOLS`] (in that order) for a schedule. Allocation-free.
pub fn schedule_values(schedule: &ScheduleSpec) -> [i128; 12] {
    let mut v = [0i128; 12];
    let mut add = |t: i128, n: i128, p: i128, first: bool| {
        v[0] += t;
        v[1] += 1;
        v[4] += t * t;
        v[5] += t * p;
        v[6] += n;
        v[7] += n * t;
        v[8] += n * t * t;
        v[9] += n * t * p;
        if first {
            v[10] = n;
            v[11] = t;
        }
    };
    match &schedule.layout {
        Layout::Raster { grid } => {
            for i in 0..(grid[0] * grid[1]) as i128 {
                add(1, 1, i, i == 0);
            }
        }
        Layout::Stages(stages) => {
            let mut past = 0i128;
            for (i, s) in stages.iter().enumerate() {
                add(s.tokens as i128, s.steps as i128, past, i == 0);
                past += s.tokens as i128;
            }
        }
    }
    let g = schedule.final_grid();
    v[2] = g[0] as i128;
    v[3] = g[1] as i128;
    v
}

impl Formula {
    /// Values of every symbol of the formula built from `(spec, body)`.
    pub fn values(spec: &ModelSpec, body: &MBody) -> Result<HashMap<String, i128>, String> {
        let (_, values) = build(spec, body)?;
        Ok(values.into_iter().collect())
    }

    /// Evaluate the three polynomials.
    pub fn eval(&self, values: &HashMap<String, i128>) -> Result<Cost, String> {
        Ok(Cost {
            params: self.params.eval(values)?,
            forward_macs: self.forward_macs.eval(values)?,
            sample_macs: self.sample_macs.eval(values)?,
        })
    }

    /// A form evaluated from a slice of values, one slot per symbol.
    pub fn compile(&self) -> Compiled {
        let slot: HashMap<&str, u32> = self.symbols.iter().enumerate().map(|(i, s)| (s.as_str(), i as u32)).collect();
        let mut factors = Vec::new();
        let mut compile = |p: &Poly| -> Vec<CTerm> {
            p.ordered_terms()
                .into_iter()
                .map(|(m, c)| {
                    let start = factors.len() as u32;
                    for (s, pow) in &m.0 {
                        factors.push((slot[s.as_str()], *pow));
                    }
                    CTerm { coef: c, start, end: factors.len() as u32 }
                })
                .collect()
        };
        let polys = [compile(&self.params), compile(&self.forward_macs), compile(&self.sample_macs)];
        let sched = SCHEDULE_SYMBOLS.map(|s| slot.get(s).copied());
        Compiled { symbols: self.symbols.clone(), polys, factors, sched }
    }
}

#[derive(Clone, Copy, Debug)]
struct CTerm {
    coef: i128,
    start: u32,
    end: u32,
}

/// A [`Formula`] with symbols replaced by slot indices: evaluating a design is
/// a few hundred integer multiplications, no hashing and no allocation.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// Slot `i` holds the value of `symbols[i]`.
    pub symbols: Vec<String>,
    polys: [Vec<CTerm>; 3],
    factors: Vec<(u32, u32)>,
    sched: [Option<u32>; 12],
}

impl Compiled {
    pub fn slot(&self, name: &str) -> Option<usize> {
        self.symbols.iter().position(|s| s == name)
    }
    /// Slot values from a map (e.g. [`Formula::values`]).
    pub fn slots(&self, values: &HashMap<String, i128>) -> Result<Vec<i128>, String> {
        self.symbols
            .iter()
            .map(|s| values.get(s).copied().ok_or_else(|| format!("no value for symbol `{s}`")))
            .collect()
    }
    /// Set the schedule symbols this formula uses from a schedule.
    pub fn set_schedule(&self, slots: &mut [i128], schedule: &ScheduleSpec) {
        let v = schedule_values(schedule);
        for (slot, value) in self.sched.iter().zip(v) {
            if let Some(i) = slot {
                slots[*i as usize] = value;
            }
        }
    }
    #[inline]
    fn poly(&self, k: usize, v: &[i128]) -> Option<i128> {
        let mut acc: i128 = 0;
        for t in &self.polys[k] {
            let mut x = t.coef;
            for &(s, p) in &self.factors[t.start as usize..t.end as usize] {
                let y = v[s as usize];
                for _ in 0..p {
                    x = x.checked_mul(y)?;
                }
            }
            acc = acc.checked_add(x)?;
        }
        Some(acc)
    }
    /// Evaluate one design; `None` on overflow.
    #[inline]
    pub fn eval(&self, slots: &[i128]) -> Option<Cost> {
        assert_eq!(slots.len(), self.symbols.len(), "one value per symbol");
        Some(Cost {
            params: self.poly(0, slots)?,
            forward_macs: self.poly(1, slots)?,
            sample_macs: self.poly(2, slots)?,
        })
    }
}

/// Build the formula of a checked model from its merged body.
pub fn formula(spec: &ModelSpec, body: &MBody) -> Result<Formula, String> {
    build(spec, body).map(|(f, _)| f)
}

// ---------------------------------------------------------------------------
// Symbolic evaluation of field expressions
// ---------------------------------------------------------------------------

/// A body and its component path (`""` for the model, `backbone.block`, ...).
type Link<'a> = (&'a MBody, &'static str);

struct Sym {
    /// Derived names when no field of the chain has them.
    derived: BTreeMap<String, Poly>,
    /// The checker's numeric derived values, for non-polynomial leaves.
    derived_num: BTreeMap<String, N>,
    /// Value of every leaf created so far.
    values: RefCell<BTreeMap<String, i128>>,
    /// Loop variables bound while a group is expanded copy by copy.
    locals: RefCell<Vec<(String, i128)>>,
}

const MAX_DEPTH: u32 = 200;

fn literal(e: &Expr) -> Option<&Num> {
    match &e.kind {
        ExprKind::Number { value, .. } => Some(value),
        ExprKind::Paren(inner) => literal(inner),
        _ => None,
    }
}

fn num_to_i128(n: &Num) -> Option<i128> {
    match *n {
        Num::Int(i) => Some(i as i128),
        Num::Float(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e30 => Some(f as i128),
        Num::Float(_) => None,
    }
}

impl Sym {
    fn leaf(&self, name: &str, value: i128) -> Result<Poly, String> {
        let mut v = self.values.borrow_mut();
        match v.get(name) {
            Some(&old) if old != value => Err(format!("symbol `{name}` would have two values ({old} and {value})")),
            _ => {
                v.insert(name.to_string(), value);
                Ok(Poly::var(name))
            }
        }
    }

    fn expr(&self, e: &Expr, chain: &[Link], depth: u32) -> Result<Poly, String> {
        if depth > MAX_DEPTH {
            return Err("fields refer to each other too deeply".into());
        }
        match &e.kind {
            ExprKind::Number { value, .. } => match num_to_i128(value) {
                Some(i) => Ok(Poly::constant(i)),
                None => self.opaque(e, chain),
            },
            ExprKind::Paren(inner) => self.expr(inner, chain, depth),
            ExprKind::Neg(inner) => Ok(self.expr(inner, chain, depth)?.scale(-1)),
            ExprKind::Binary { op, lhs, rhs } => {
                let (a, b) = (self.expr(lhs, chain, depth)?, self.expr(rhs, chain, depth)?);
                match op {
                    BinOp::Add => Ok(a.add(&b)),
                    BinOp::Sub => Ok(a.sub(&b)),
                    BinOp::Mul => Ok(a.mul(&b)),
                    BinOp::Div => match a.div_exact(&b) {
                        Some(q) => Ok(q),
                        None => self.opaque(e, chain),
                    },
                }
            }
            ExprKind::Name(n) => self.name(n, chain, depth),
            ExprKind::Index { name, index } => self.element(&name.name, index, e, chain, depth),
            ExprKind::Call { .. } => self.opaque(e, chain),
            _ => Err(format!("`{}` is not a number", ecarc_grammar::fmt::expr(e))),
        }
    }

    /// A non-polynomial sub-expression: a leaf named by its source text (and
    /// the component it is evaluated in), valued by the checker's evaluator.
    fn opaque(&self, e: &Expr, chain: &[Link]) -> Result<Poly, String> {
        let text = self.text(e);
        match self.numeric(e, chain) {
            Ok(N::Int(v)) => {
                let name = match chain.first().map(|l| l.1) {
                    Some(p) if !p.is_empty() => format!("{p}:({text})"),
                    _ => format!("({text})"),
                };
                self.leaf(&name, v as i128)
            }
            Ok(N::Float(x)) => Err(format!("`{text}` is {x}, not an integer")),
            Err(d) => Err(format!("`{text}`: {}", d.message)),
        }
    }

    /// The checker's numeric value of `e` (loop variables bound).
    fn numeric(&self, e: &Expr, chain: &[Link]) -> Result<N, ecarc_grammar::Diag> {
        let mut scope = Scope::new(chain.iter().map(|l| l.0).collect(), &self.derived_num);
        scope.locals = self.locals.borrow().iter().map(|(k, v)| (k.clone(), N::Int(*v as i64))).collect();
        scope.num(e)
    }

    /// Source text with bound loop variables replaced by their values.
    fn text(&self, e: &Expr) -> String {
        let t = |x: &Expr| self.text(x);
        match &e.kind {
            ExprKind::Name(n) => match self.locals.borrow().iter().rev().find(|(k, _)| k == n) {
                Some((_, v)) => v.to_string(),
                None => n.clone(),
            },
            ExprKind::Index { name, index } => format!("{}[{}]", name.name, t(index)),
            ExprKind::Call { name, args } => {
                let a: Vec<String> = args
                    .iter()
                    .map(|a| match &a.name {
                        Some(n) => format!("{} = {}", n.name, t(&a.value)),
                        None => t(&a.value),
                    })
                    .collect();
                format!("{}({})", name.name, a.join(", "))
            }
            ExprKind::List(items) => format!("[{}]", items.iter().map(t).collect::<Vec<_>>().join(", ")),
            ExprKind::Neg(inner) => format!("-{}", t(inner)),
            ExprKind::Binary { op, lhs, rhs } => format!("{} {} {}", t(lhs), op.as_str(), t(rhs)),
            ExprKind::Paren(inner) => format!("({})", t(inner)),
            _ => ecarc_grammar::fmt::expr(e),
        }
    }

    /// `name[index]`: the element of a list-valued field. A number literal is a
    /// leaf named `component.name[i]`; an expression is substituted.
    fn element(&self, name: &str, index: &Expr, e: &Expr, chain: &[Link], depth: u32) -> Result<Poly, String> {
        let Some(i) = self.expr(index, chain, depth)?.as_const() else { return self.opaque(e, chain) };
        for (k, (body, path)) in chain.iter().enumerate() {
            let Some(f) = body.field(name) else { continue };
            let MValue::Expr(Expr { kind: ExprKind::List(items), .. }) = &f.value else {
                return Err(format!("`{name}` is not a list"));
            };
            let item =
                usize::try_from(i).ok().and_then(|i| items.get(i)).ok_or(format!("`{name}[{i}]` is out of range"))?;
            return match literal(item) {
                Some(num) => {
                    let value = num_to_i128(num).ok_or_else(|| format!("`{name}[{i}]` is not an integer"))?;
                    let leaf = if path.is_empty() { format!("{name}[{i}]") } else { format!("{path}.{name}[{i}]") };
                    self.leaf(&leaf, value)
                }
                None => self.expr(item, &chain[k..], depth + 1),
            };
        }
        Err(format!("unknown name `{name}`"))
    }

    /// A name as `eval.rs` resolves it: loop variables, fields of the chain,
    /// innermost first, then derived values.
    fn name(&self, n: &str, chain: &[Link], depth: u32) -> Result<Poly, String> {
        if let Some((_, v)) = self.locals.borrow().iter().rev().find(|(k, _)| k == n) {
            return Ok(Poly::constant(*v));
        }
        for (i, (body, path)) in chain.iter().enumerate() {
            if let Some(f) = body.field(n) {
                return self.field_value(n, &f.value, path, &chain[i..], depth);
            }
        }
        self.derived.get(n).cloned().ok_or_else(|| format!("unknown name `{n}`"))
    }

    /// The value of field `key` (of the body `chain[0]`, at `path`).
    fn field_value(&self, key: &str, v: &MValue, path: &str, chain: &[Link], depth: u32) -> Result<Poly, String> {
        let MValue::Expr(e) = v else { return Err(format!("`{key}` is not a number")) };
        match literal(e) {
            Some(num) => {
                let value = num_to_i128(num).ok_or_else(|| format!("`{key}` is not an integer"))?;
                let name = match (path, key) {
                    ("", _) => key.to_string(),
                    // The tokenizer's fields that define derived values share their symbol.
                    ("tokenizer", "code_dim" | "latent_channels" | "vocab") => key.to_string(),
                    _ => format!("{path}.{key}"),
                };
                self.leaf(&name, value)
            }
            None => self.expr(e, chain, depth + 1),
        }
    }

    /// The field `key` of `chain[0]` as a polynomial, or `default`.
    fn own_field(&self, key: &str, chain: &[Link], default: Option<i128>) -> Result<Poly, String> {
        let (body, path) = chain[0];
        match body.field(key) {
            Some(f) => self.field_value(key, &f.value, path, chain, 0),
            None => default.map(Poly::constant).ok_or_else(|| format!("`{path}` has no `{key}`")),
        }
    }

    fn value(&self, p: &Poly) -> Result<i128, String> {
        p.eval_map(&self.values.borrow())
    }
}

// ---------------------------------------------------------------------------
// Declared tensors, symbolically
// ---------------------------------------------------------------------------

struct Decl {
    owner: &'static str,
    role: String,
    /// Loop values of a group expanded copy by copy (`[]` otherwise).
    index: Vec<u64>,
    /// Copies `start..start + count` (numeric), with the count as a polynomial.
    repeat: Option<(u64, u64, Poly)>,
    shape: Vec<Poly>,
}

impl Decl {
    fn numel(&self) -> Poly {
        self.shape.iter().fold(Poly::constant(1), |a, d| a.mul(d))
    }
    /// `out * in` of a linear weight `[out, in]`.
    fn linear(&self) -> Result<Poly, String> {
        match self.shape.as_slice() {
            [o, i, ..] => Ok(o.mul(i)),
            _ => Err(format!("`{}` is not a [out, in] weight", self.role)),
        }
    }
    fn copies(&self) -> Poly {
        self.repeat.as_ref().map_or(Poly::constant(1), |r| r.2.clone())
    }
    /// Whether the declaration answers the copy index `at` (`ParamIndex::get_at`).
    fn has_copy(&self, at: &[u64]) -> bool {
        let k = self.index.len();
        match &self.repeat {
            None => at == self.index.as_slice(),
            Some((s, n, _)) => at.len() == k + 1 && at[..k] == self.index[..] && *s <= at[k] && at[k] < s + n,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope3 {
    Backbone,
    Head,
    Tokenizer,
}

impl Scope3 {
    fn owners(self) -> &'static [&'static str] {
        match self {
            Scope3::Backbone => &["backbone.block", "backbone", "model", "distill"],
            Scope3::Head => &["head", "backbone", "model", "distill"],
            Scope3::Tokenizer => &["tokenizer"],
        }
    }
}

/// `ParamIndex` over symbolic declarations, in the same order and preference.
struct Index {
    decls: Vec<Decl>,
}

impl Index {
    fn get(&self, scope: Scope3, role: &str, copy: Option<u64>) -> Option<usize> {
        scope.owners().iter().find_map(|o| {
            self.decls.iter().position(|d| d.owner == *o && d.role == role && d.has_copy(copy.as_slice()))
        })
    }
    fn has(&self, scope: Scope3, role: &str, copy: Option<u64>) -> bool {
        self.get(scope, role, copy).is_some()
    }
    fn need(&self, scope: Scope3, role: &str, copy: Option<u64>) -> Result<&Decl, String> {
        self.get(scope, role, copy).map(|i| &self.decls[i]).ok_or_else(|| {
            let at = copy.map_or(String::new(), |i| format!(" for layer {i}"));
            format!("no tensor with role `{role}`{at} (the lowering needs it)")
        })
    }
}

struct Groups<'s> {
    sym: &'s Sym,
    distilled: bool,
}

impl Groups<'_> {
    fn flag(&self, name: &str, chain: &[Link]) -> Result<bool, String> {
        if name == "distilled" {
            return Ok(self.distilled);
        }
        for (b, _) in chain {
            if let Some(f) = b.field(name) {
                return match &f.value {
                    MValue::Expr(e) if e.as_name() == Some("true") => Ok(true),
                    MValue::Expr(e) if e.as_name() == Some("false") => Ok(false),
                    _ => Err(format!("`{name}` is not a boolean")),
                };
            }
        }
        Err(format!("unknown condition `{name}`"))
    }

    /// Declarations of `chain[0]`'s groups: (params, buffers). With `tolerant`
    /// (the tokenizer's groups, which only the transitions read), a group that
    /// cannot be evaluated symbolically is left out instead of failing.
    fn of(&self, chain: &[Link], owner: &'static str, tolerant: bool) -> Result<(Vec<Decl>, Vec<Decl>), String> {
        let (mut params, mut buffers) = (Vec::new(), Vec::new());
        for g in chain[0].0.param_groups() {
            let decls = match self.group(g, chain, owner) {
                Ok(d) => d,
                Err(_) if tolerant => continue,
                Err(e) => return Err(e),
            };
            if g.kind == ParamKind::Buffers {
                buffers.extend(decls);
            } else {
                params.extend(decls);
            }
        }
        Ok((params, buffers))
    }

    fn group(&self, g: &ParamGroup, chain: &[Link], owner: &'static str) -> Result<Vec<Decl>, String> {
        if let Some(c) = &g.condition {
            if self.flag(&c.flag.name, chain)? == c.negated {
                return Ok(vec![]);
            }
        }
        if crate::check::needs_expansion(g) {
            return self.expanded(g, chain, owner);
        }
        let repeat = match &g.repeat {
            None => None,
            Some(r) => {
                let lo = self.sym.expr(&r.lo, chain, 0)?;
                let hi = self.sym.expr(&r.hi, chain, 0)?;
                let (l, h) = (self.sym.value(&lo)?, self.sym.value(&hi)?);
                if l < 0 || h < l {
                    return Err(format!("loop bounds {l}..{h}"));
                }
                Some((l as u64, (h - l) as u64, hi.sub(&lo)))
            }
        };
        g.decls
            .iter()
            .map(|d| {
                let shape = d.shape.iter().map(|e| self.sym.expr(e, chain, 0)).collect::<Result<Vec<_>, _>>()?;
                Ok(Decl { owner, role: d.role.name.clone(), index: vec![], repeat: repeat.clone(), shape })
            })
            .collect()
    }

    /// A group the checker evaluates copy by copy (nested loops, a `when a OP
    /// b` guard, shapes using the loop variable): one declaration per copy,
    /// shapes symbolic in the fields with the loop variables bound.
    fn expanded(&self, g: &ParamGroup, chain: &[Link], owner: &'static str) -> Result<Vec<Decl>, String> {
        let mut loops: Vec<(String, i128, i128)> = Vec::new();
        for r in g.repeat.iter().chain(g.inner.iter()) {
            let lo = self.sym.value(&self.sym.expr(&r.lo, chain, 0)?)?;
            let hi = self.sym.value(&self.sym.expr(&r.hi, chain, 0)?)?;
            if lo < 0 || hi < lo {
                return Err(format!("loop bounds {lo}..{hi}"));
            }
            loops.push((r.var.name.clone(), lo, hi));
        }
        let copies: i128 = loops.iter().map(|(_, lo, hi)| hi - lo).product();
        let mut out = Vec::new();
        let mut at: Vec<i128> = loops.iter().map(|l| l.1).collect();
        for _ in 0..copies {
            let current = at.clone();
            for k in (0..loops.len()).rev() {
                at[k] += 1;
                if at[k] < loops[k].2 {
                    break;
                }
                at[k] = loops[k].1;
            }
            *self.sym.locals.borrow_mut() = loops.iter().zip(&current).map(|(l, &v)| (l.0.clone(), v)).collect();
            let r = self.copy(g, chain, owner, &current);
            self.sym.locals.borrow_mut().clear();
            out.extend(r?);
        }
        Ok(out)
    }

    fn copy(&self, g: &ParamGroup, chain: &[Link], owner: &'static str, at: &[i128]) -> Result<Vec<Decl>, String> {
        if let Some(gd) = &g.guard {
            let num = |e: &Expr| self.sym.numeric(e, chain).map(N::as_f64).map_err(|d| d.message);
            let (a, b) = (num(&gd.lhs)?, num(&gd.rhs)?);
            if !gd.op.holds(a, b) {
                return Ok(vec![]);
            }
        }
        let index: Vec<u64> = at.iter().map(|&v| v as u64).collect();
        g.decls
            .iter()
            .map(|d| {
                let shape = d.shape.iter().map(|e| self.sym.expr(e, chain, 0)).collect::<Result<Vec<_>, _>>()?;
                Ok(Decl { owner, role: d.role.name.clone(), index: index.clone(), repeat: None, shape })
            })
            .collect()
    }
}

fn component<'a>(body: &'a MBody, key: &str) -> Option<&'a MBody> {
    match body.field(key).map(|f| &f.value) {
        Some(MValue::Component(c)) => Some(&c.body),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// MACs, following the lowering
// ---------------------------------------------------------------------------

/// Runtime symbols of a step program: tokens of the step and cached positions.
const T: &str = "$T";
const P: &str = "$P";

#[derive(Clone)]
enum Seq {
    Prefix,
    Body,
    PrefixAndBody(Poly),
}

struct Macs<'a> {
    spec: &'a ModelSpec,
    idx: &'a Index,
    sym: &'a Sym,
    /// Backbone depth and width, head depth and width (flow heads).
    depth: Poly,
    width: Poly,
    head_depth: Poly,
    head_width: Poly,
    /// Area of the final token grid.
    area: Poly,
}

fn c(v: i128) -> Poly {
    Poly::constant(v)
}

impl Macs<'_> {
    fn lin(&self, scope: Scope3, role: &str, copy: Option<u64>) -> Result<Poly, String> {
        self.idx.need(scope, role, copy)?.linear()
    }

    /// Sum over layers `0..n` of `f(decl of role at layer)`; layers without the
    /// role are an error when `required`, else skipped.
    fn layers(
        &self,
        scope: Scope3,
        role: &str,
        n: &Poly,
        required: bool,
        f: impl Fn(&Decl) -> Result<Poly, String>,
    ) -> Result<Poly, String> {
        let count = self.sym.value(n)?.max(0) as u64;
        let mut by_decl: BTreeMap<usize, u64> = BTreeMap::new();
        for l in 0..count {
            match self.idx.get(scope, role, Some(l)) {
                Some(i) => *by_decl.entry(i).or_default() += 1,
                None if required => {
                    return Err(format!("no tensor with role `{role}` for layer {l} (the lowering needs it)"))
                }
                None => {}
            }
        }
        let mut out = Poly::zero();
        if by_decl.len() == 1 && by_decl.values().next() == Some(&count) {
            let i = *by_decl.keys().next().unwrap_or(&0);
            return Ok(n.mul(&f(&self.idx.decls[i])?));
        }
        for (i, k) in by_decl {
            out = out.add(&f(&self.idx.decls[i])?.scale(k as i128));
        }
        Ok(out)
    }

    fn presence(&self, scope: Scope3, roles: &[&str], copy: Option<u64>) -> Result<(), String> {
        for r in roles {
            self.idx.need(scope, r, copy)?;
        }
        Ok(())
    }

    /// `lower_backbone`: conditioning, embedding, layers.
    fn backbone(&self, seq: &Seq, bt: &Poly, t: &Poly, past: &Poly) -> Result<Poly, String> {
        let (spec, bb) = (self.spec, &self.spec.backbone);
        let s = Scope3::Backbone;
        let mut m = Poly::zero();
        self.presence(s, &["class_table"], None)?;
        if bb.condition == Conditioning::AdalnTimeClass {
            m = m.add(&bt.mul(&self.lin(s, "time_in", None)?));
            m = m.add(&bt.mul(&self.lin(s, "time_out", None)?));
        }
        let body = match seq {
            Seq::Prefix => None,
            Seq::Body => Some(t.clone()),
            Seq::PrefixAndBody(n) => Some(n.clone()),
        };
        if !matches!(seq, Seq::Body) && self.idx.has(s, "pos_start", None) {
            self.presence(s, &["pos_start"], None)?;
        }
        if let Some(n) = body {
            m = m.add(&self.embed(bt, &n)?);
        }
        let nd = spec.distill.is_some() && self.idx.has(s, "nd_table", None);

        // ---- layers
        let blk = &bb.block;
        let rows = bt.mul(t);
        let per_token = |role: &'static str| -> Result<Poly, String> {
            self.layers(s, role, &self.depth, true, |d| Ok(rows.mul(&d.linear()?)))
        };
        if blk.modulation == Modulation::Adaln {
            m = m.add(&self.layers(s, "ada", &self.depth, true, |d| Ok(bt.mul(&d.linear()?)))?);
        }
        let norms = |role: &'static str| -> Result<(), String> {
            if blk.norm == NormKind::Rmsnorm || blk.norm_affine {
                self.layers(s, role, &self.depth, true, |_| Ok(Poly::zero()))?;
            }
            Ok(())
        };
        norms("attn_norm")?;
        norms("ffn_norm")?;
        m = m.add(&per_token("qkv")?);
        if blk.qkv_bias == QkvBias::Qv {
            self.layers(s, "q_bias", &self.depth, true, |_| Ok(Poly::zero()))?;
            self.layers(s, "v_bias", &self.depth, true, |_| Ok(Poly::zero()))?;
        }
        if bb.qk_norm == QkNorm::L2 {
            self.layers(s, "qk_scale", &self.depth, true, |_| Ok(Poly::zero()))?;
        }
        // QK^T and PV: heads * head_dim = width, over past + t keys.
        let attn = rows.mul(&past.add(t)).mul(&self.width).scale(2);
        m = m.add(&self.depth.mul(&attn));
        m = m.add(&per_token("attn_out")?);
        if nd {
            m = m.add(&self.layers(s, "nd_proj", &self.depth, false, |d| Ok(rows.mul(&d.linear()?)))?);
        }
        match blk.ffn {
            FfnKind::Swiglu => {
                m = m.add(&per_token("ffn_gate")?);
                m = m.add(&per_token("ffn_up")?);
                m = m.add(&per_token("ffn_down")?);
            }
            FfnKind::Gelu | FfnKind::GeluTanh => {
                m = m.add(&per_token("ffn_up")?);
                m = m.add(&per_token("ffn_down")?);
            }
        }
        if nd && self.idx.has(s, "nd_proj", Some(bb.depth)) {
            m = m.add(&rows.mul(&self.lin(s, "nd_proj", Some(bb.depth))?));
        }
        Ok(m)
    }

    /// `embed_tokens` of `n` body tokens.
    fn embed(&self, bt: &Poly, n: &Poly) -> Result<Poly, String> {
        let s = Scope3::Backbone;
        if self.idx.has(s, "token_table", None) {
            return Ok(Poly::zero());
        }
        if self.idx.has(s, "patch_embed", None) {
            let w = self.idx.need(s, "patch_embed", None)?;
            self.presence(s, &["patch_embed_bias"], None)?;
            let k = match w.shape.get(2) {
                Some(k) => self.sym.value(k)?,
                None => return Err("patch_embed is not [out, in, k, k]".into()),
            };
            if k != self.spec.backbone.patch as i128 {
                return Err(format!("patch_embed kernel {k} differs from the patch {}", self.spec.backbone.patch));
            }
            // Conv over the whole latent: out [bt, width, grid] x in * k * k.
            return Ok(bt.mul(&self.area).mul(&w.numel()));
        }
        Ok(bt.mul(n).mul(&self.lin(s, "token_in", None)?))
    }

    /// The head part of a step program (`step_graph` after the backbone).
    fn step_head(&self, bt: &Poly, t: &Poly) -> Result<Poly, String> {
        let s = Scope3::Head;
        let rows = bt.mul(t);
        let out_norm = || -> Result<Poly, String> {
            if self.idx.has(s, "head_ada", None) {
                return Ok(bt.mul(&self.lin(s, "head_ada", None)?));
            }
            Ok(Poly::zero())
        };
        Ok(match self.spec.head.kind {
            HeadKind::Categorical | HeadKind::DdContinuous => {
                let mut m = out_norm()?.add(&rows.mul(&self.lin(s, "out", None)?));
                if self.spec.head.kind == HeadKind::DdContinuous {
                    self.presence(s, &["dd_scale_shift"], None)?;
                    m = m.add(&rows.mul(&self.lin(s, "dd_out", None)?));
                }
                m
            }
            HeadKind::FlowMlp | HeadKind::FlowTransformer => out_norm()?,
            HeadKind::Linear => {
                bt.mul(&self.lin(s, "final_ada", None)?).add(&rows.mul(&self.lin(s, "final_out", None)?))
            }
        })
    }

    /// `heads::flow_step`: one ODE step of a flow head over `t` tokens.
    fn flow_step(&self, bt: &Poly, t: &Poly) -> Result<Poly, String> {
        let s = Scope3::Head;
        let rows = bt.mul(t);
        let mut m = bt.mul(&self.lin(s, "time_in", None)?);
        m = m.add(&bt.mul(&self.lin(s, "time_out", None)?));
        m = m.add(&rows.mul(&self.lin(s, "cond_in", None)?));
        m = m.add(&rows.mul(&self.lin(s, "x_in", None)?));
        let n = &self.head_depth;
        let per = |role: &'static str, r: &Poly| self.layers(s, role, n, true, |d| Ok(r.mul(&d.linear()?)));
        match self.spec.head.kind {
            HeadKind::FlowMlp => {
                m = m.add(&per("ada", &rows)?);
                self.layers(s, "ffn_norm", n, true, |_| Ok(Poly::zero()))?;
                self.layers(s, "ffn_norm_bias", n, true, |_| Ok(Poly::zero()))?;
                m = m.add(&per("ffn_up", &rows)?);
                m = m.add(&per("ffn_down", &rows)?);
                m = m.add(&rows.mul(&self.lin(s, "final_ada", None)?));
            }
            HeadKind::FlowTransformer => {
                m = m.add(&per("ada", bt)?);
                m = m.add(&per("qkv", &rows)?);
                // heads * (width / heads) = width (checked divisible).
                m = m.add(&n.mul(&rows.mul(t).mul(&self.head_width).scale(2)));
                m = m.add(&per("attn_out", &rows)?);
                m = m.add(&per("ffn_up", &rows)?);
                m = m.add(&per("ffn_down", &rows)?);
                m = m.add(&bt.mul(&self.lin(s, "final_ada", None)?));
            }
            _ => return Err("flow_step of a non-flow head".into()),
        }
        Ok(m.add(&rows.mul(&self.lin(s, "final_out", None)?)))
    }

    /// MACs of all transition programs (between stages), one image.
    fn transitions(&self) -> Result<Poly, String> {
        let spec = self.spec;
        if matches!(spec.schedule.layout, Layout::Raster { .. }) || spec.tokenizer.kind != TokenizerKind::Msvq {
            // Raster schedules have none; continuous ones only resize (no MACs).
            return Ok(Poly::zero());
        }
        let s = Scope3::Tokenizer;
        let phi = spec.tokenizer.phi.as_ref().ok_or("msvq without phi")?;
        let n = spec.schedule.num_stages();
        // A distilled schedule's leading stage (the class position) has no codes.
        let lead = u64::from(spec.distill.is_some() && phi.map.len() as u64 + 1 == n);
        let mut by_decl: BTreeMap<usize, u64> = BTreeMap::new();
        for k in 0..(n - lead) as usize {
            if spec.distill.is_none() {
                self.presence(s, &["codebook"], None)?;
            }
            let conv = phi.map.get(k).copied().unwrap_or(*phi.map.last().unwrap_or(&0));
            let i = self.idx.get(s, "phi_conv", Some(conv)).ok_or("no tensor with role `phi_conv`")?;
            self.presence(s, &["phi_conv_bias"], Some(conv))?;
            *by_decl.entry(i).or_default() += 1;
        }
        // Conv3x3 (pad 1) over the final grid: out [B, ch, grid] x in * 9.
        let per = |i: usize| self.area.mul(&self.idx.decls[i].numel());
        if by_decl.len() == 1 {
            let runs = Poly::var("stages").sub(&Poly::constant(lead as i128));
            return Ok(runs.mul(&per(*by_decl.keys().next().unwrap_or(&0))));
        }
        Ok(by_decl.into_iter().fold(Poly::zero(), |a, (i, k)| a.add(&per(i).scale(k as i128))))
    }
}

/// Sum a step polynomial in `$T`, `$P` over runs: each `T^a P^b` becomes the
/// schedule aggregate weighted like the runs.
fn aggregate(p: &Poly, weighted_by_steps: bool) -> Result<Poly, String> {
    let mut out = Poly::zero();
    for (pw, coef) in p.split(&[T, P]) {
        let name = match (weighted_by_steps, pw[0], pw[1]) {
            (false, 0, 0) => "stages",
            (false, 1, 0) => "tokens",
            (false, 2, 0) => "sum_t2",
            (false, 1, 1) => "sum_tp",
            (true, 0, 0) => "sum_steps",
            (true, 1, 0) => "sum_steps_t",
            (true, 2, 0) => "sum_steps_t2",
            (true, 1, 1) => "sum_steps_tp",
            (_, a, b) => return Err(format!("no schedule aggregate for T^{a} P^{b}")),
        };
        out = out.add(&coef.mul(&Poly::var(name)));
    }
    Ok(out)
}

fn build(spec: &ModelSpec, body: &MBody) -> Result<(Formula, BTreeMap<String, i128>), String> {
    let bb_body = component(body, "backbone").ok_or("the model has no backbone")?;
    let block_body = component(bb_body, "block").ok_or("the backbone has no block")?;
    let head_body = component(body, "head").ok_or("the model has no head")?;
    let tok_body = component(body, "tokenizer").ok_or("the model has no tokenizer")?;
    let distill_body = component(body, "distill");
    let model: Link = (body, "");
    let bb: [Link; 2] = [(bb_body, "backbone"), model];
    let block: [Link; 3] = [(block_body, "backbone.block"), bb[0], model];
    let head: [Link; 2] = [(head_body, "head"), model];
    let tok: [Link; 2] = [(tok_body, "tokenizer"), model];

    // The checker's numeric derived values (for leaves of non-polynomial text).
    let int = |v: u64| N::Int(v as i64);
    let (b, t) = (&spec.backbone, &spec.tokenizer);
    let mut derived_num: BTreeMap<String, N> = BTreeMap::new();
    for (k, v) in [
        ("classes", spec.classes),
        ("token_channels", t.token_channels),
        ("cond_dim", b.width),
        ("head_dim", b.head_dim),
        ("patch", b.patch),
        ("time_embed", b.time_embed),
        ("ffn_hidden", b.block.ffn_hidden),
        ("tokens", spec.schedule.total_tokens()),
        ("stages", spec.schedule.num_stages()),
        ("grid", spec.schedule.final_grid()[0]),
        ("levels", t.ch_mult.len() as u64),
    ] {
        derived_num.insert(k.into(), int(v));
    }
    let channels = if t.kind == TokenizerKind::Vae { "latent_channels" } else { "code_dim" };
    derived_num.insert(channels.into(), int(t.token_channels));
    if let Some(v) = t.vocab {
        derived_num.insert("vocab".into(), int(v));
    }

    let sym = Sym {
        derived: BTreeMap::new(),
        derived_num,
        values: RefCell::new(BTreeMap::new()),
        locals: RefCell::new(Vec::new()),
    };
    let width = sym.own_field("width", &bb, None)?;
    let heads = sym.own_field("heads", &bb, None)?;
    let depth = sym.own_field("depth", &bb, None)?;
    let patch = sym.own_field("patch", &bb, Some(1))?;
    let time_embed = sym.own_field("time_embed", &bb, Some(256))?;

    // Derived values, symbolically.
    let mut derived: BTreeMap<String, Poly> = BTreeMap::new();
    let leaf = |name: &str, v: u64| sym.leaf(name, v as i128);
    derived.insert("cond_dim".into(), width.clone());
    derived
        .insert("patch".into(), if bb_body.field("patch").is_some() { patch.clone() } else { leaf("patch", b.patch)? });
    derived.insert(
        "time_embed".into(),
        if bb_body.field("time_embed").is_some() { time_embed.clone() } else { leaf("time_embed", b.time_embed)? },
    );
    derived.insert(
        "head_dim".into(),
        match width.div_exact(&heads) {
            Some(q) => q,
            None => leaf("head_dim", b.head_dim)?,
        },
    );
    let ffn_hidden = match (block_body.field("ffn_hidden"), b.block.ffn) {
        (Some(f), _) => sym.field_value("ffn_hidden", &f.value, "backbone.block", &block, 0)?,
        (None, FfnKind::Gelu | FfnKind::GeluTanh)
            if b.block.mlp_ratio.fract() == 0.0 && b.block.mlp_ratio.abs() < 1e9 =>
        {
            width.scale(b.block.mlp_ratio as i128)
        }
        _ => leaf("ffn_hidden", b.block.ffn_hidden)?,
    };
    derived.insert("ffn_hidden".into(), ffn_hidden);
    derived.insert("classes".into(), sym.name("classes", &[model], 0)?);
    for (k, v) in [
        ("tokens", spec.schedule.total_tokens()),
        ("stages", spec.schedule.num_stages()),
        ("grid", spec.schedule.final_grid()[0]),
        ("levels", t.ch_mult.len() as u64),
        (channels, t.token_channels),
    ] {
        derived.insert(k.into(), leaf(k, v)?);
    }
    derived.insert("token_channels".into(), Poly::var(channels));
    if let Some(v) = t.vocab {
        derived.insert("vocab".into(), leaf("vocab", v)?);
    }
    let sym = Sym { derived, ..sym };
    for (p, v, what) in [(&width, b.width, "width"), (&depth, b.depth, "depth"), (&patch, b.patch, "patch")] {
        if sym.value(p)? != v as i128 {
            return Err(format!("backbone {what}: formula gives {}, the spec {v}", sym.value(p)?));
        }
    }

    // ---- declared tensors, in the checker's (and ParamIndex's) order
    let groups = Groups { sym: &sym, distilled: spec.distill.is_some() };
    let distill_chain: Option<[Link; 2]> = distill_body.map(|d| [(d, "distill"), model]);
    let model_chain = [model];
    let mut chains: Vec<(&[Link], &'static str)> =
        vec![(&model_chain, "model"), (&bb, "backbone"), (&block, "backbone.block"), (&head, "head")];
    if let Some(dc) = &distill_chain {
        chains.push((dc, "distill"));
    }
    let (mut params, mut buffers) = (Vec::new(), Vec::new());
    for (chain, owner) in &chains {
        let (p, b) = groups.of(chain, owner, false)?;
        params.extend(p);
        buffers.extend(b);
    }
    let (tok_params, tok_buffers) = groups.of(&tok, "tokenizer", true)?;
    buffers.extend(tok_buffers);

    // Cross-check every generator tensor against the spec: the same (role,
    // shape) copies, counted as a multiset (expanded groups are listed per copy).
    let mut want: BTreeMap<(&str, Vec<i128>), i128> = BTreeMap::new();
    for g in &spec.params {
        let n = g.repeat.as_ref().map_or(1, |r| r.count) as i128;
        for t in &g.tensors {
            *want.entry((t.role.as_str(), t.shape.iter().map(|&v| v as i128).collect())).or_default() += n;
        }
    }
    let mut got: BTreeMap<(&str, Vec<i128>), i128> = BTreeMap::new();
    let mut params_poly = Poly::zero();
    for d in &params {
        let dims: Vec<i128> = d.shape.iter().map(|p| sym.value(p)).collect::<Result<_, _>>()?;
        *got.entry((d.role.as_str(), dims)).or_default() += sym.value(&d.copies())?;
        params_poly = params_poly.add(&d.copies().mul(&d.numel()));
    }
    if got != want {
        let diff: Vec<String> = got
            .iter()
            .filter(|(k, v)| want.get(*k) != Some(*v))
            .map(|((r, s), n)| format!("{n} x `{r}` {s:?}"))
            .chain(
                want.iter()
                    .filter(|(k, _)| !got.contains_key(*k))
                    .map(|((r, s), n)| format!("spec: {n} x `{r}` {s:?}")),
            )
            .collect();
        return Err(format!("declared tensors differ from the spec: {}", diff.join(", ")));
    }
    let idx = Index { decls: params.into_iter().chain(buffers).chain(tok_params).collect() };

    // ---- MACs
    let flow = matches!(spec.head.kind, HeadKind::FlowMlp | HeadKind::FlowTransformer);
    let (head_depth, head_width) = if flow {
        (sym.own_field("depth", &head, None)?, sym.own_field("width", &head, None)?)
    } else {
        (Poly::zero(), Poly::zero())
    };
    let g = spec.schedule.final_grid();
    let grid = Poly::var("grid");
    let area = if g[0] == g[1] { grid.mul(&grid) } else { grid.mul(&sym.leaf("grid_w", g[1] as i128)?) };
    let m = Macs { spec, idx: &idx, sym: &sym, depth, width, head_depth, head_width, area };

    // The start token(s): `prefix_len`.
    let prefix = match b.condition {
        Conditioning::ClassToken => sym.own_field("cond_tokens", &bb, Some(1))?,
        _ if idx.has(Scope3::Backbone, "pos_start", None) => c(1),
        _ => c(0),
    };
    let prefix_n = sym.value(&prefix)?;
    let one = c(1);

    // Teacher-forced forward: batch 1, nothing cached. A teacher feeds every
    // token but the last (the start token(s) predict the first stage); a DD
    // forward on a raster schedule feeds every token after the start token(s).
    let tokens = Poly::var("tokens");
    let raster = matches!(spec.schedule.layout, Layout::Raster { .. });
    let body_n = if spec.distill.is_some() && raster { tokens.clone() } else { tokens.sub(&prefix) };
    let positions = body_n.add(&prefix);
    let fwd_seq = if prefix_n > 0 { Seq::PrefixAndBody(body_n) } else { Seq::Body };
    let forward = m.backbone(&fwd_seq, &one, &positions, &Poly::zero())?.add(&m.step_head(&one, &positions)?);

    let sample = if let Some(d) = &spec.distill {
        // Each DD step is one forward over every position, without guidance.
        let steps = match &distill_chain {
            Some(dc) => sym.own_field("steps", dc, Some(1))?,
            None => c(d.steps as i128),
        };
        steps.mul(&forward).add(&m.transitions()?)
    } else {
        let cfg = crate::lower::uses_cfg(spec);
        let bt = c(if cfg { 2 } else { 1 });
        let per_step = spec.head.kind == HeadKind::Linear;
        // Network evaluations per solver step (Heun evaluates twice); the
        // solver's own update is elementwise (no MACs).
        let evals = c(if spec.sampler.solver == Solver::Heun { 2 } else { 1 });
        let stages = spec.schedule.stages();
        let first_tokens = stages.first().map_or(0, |s| s.tokens) as i128;
        let (t, p) = (Poly::var(T), Poly::var(P));
        // Every backbone run as `step.next` ...
        let next = m.backbone(&Seq::Body, &bt, &t, &p)?.add(&m.step_head(&bt, &t)?);
        let mut sample = aggregate(&next, per_step)?;
        if per_step {
            sample = sample.mul(&evals);
        }
        // ... corrected for the first stage's `step.first` program.
        let first_seq = match prefix_n {
            0 => None,
            p if p == first_tokens => Some(Seq::Prefix),
            _ => Some(Seq::PrefixAndBody(t.sub(&prefix))),
        };
        if let Some(seq) = &first_seq {
            let zero = Poly::zero();
            let mut diff = m.backbone(seq, &bt, &t, &zero)?.sub(&m.backbone(&Seq::Body, &bt, &t, &zero)?);
            if matches!(seq, Seq::Prefix) {
                // Only when the first stage holds exactly the start tokens.
                diff = diff.substitute(T, &prefix);
            } else {
                diff = diff.substitute(T, &Poly::var("t_first"));
            }
            let runs_first = if per_step { evals.mul(&Poly::var("steps_first")) } else { c(1) };
            sample = sample.add(&runs_first.mul(&diff));
        }
        if flow {
            sample = sample.add(&evals.mul(&aggregate(&m.flow_step(&bt, &t)?, true)?));
        }
        sample.add(&m.transitions()?)
    };

    // Values of the schedule symbols.
    let sv = schedule_values(&spec.schedule);
    let used: BTreeSet<String> = [&params_poly, &forward, &sample].iter().flat_map(|p| p.symbols()).collect();
    for (name, v) in SCHEDULE_SYMBOLS.iter().zip(sv) {
        if used.contains(*name) {
            sym.leaf(name, v)?;
        }
    }
    let values = sym.values.borrow().clone();
    for s in &used {
        if !values.contains_key(s) {
            return Err(format!("symbol `{s}` has no value"));
        }
    }
    let values: BTreeMap<String, i128> = values.into_iter().filter(|(k, _)| used.contains(k)).collect();
    let f = Formula {
        params: params_poly,
        forward_macs: forward,
        sample_macs: sample,
        symbols: used.into_iter().collect(),
    };
    if f.params.eval_map(&values)? != spec.param_count() as i128 {
        return Err(format!("params: formula gives {}, the spec {}", f.params.eval_map(&values)?, spec.param_count()));
    }
    Ok((f, values))
}
