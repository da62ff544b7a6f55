//! Checking many points of one search space quickly, with the same rules.
//!
//! A point of a space is the space's body with one option chosen per axis
//! ([`crate::space`]). [`check_point`] runs the checker ([`Checker::model`])
//! on such a body, but reuses the results of *units* of the check that a
//! previous point computed from the same inputs:
//!
//! - the component checks (tokenizer, backbone with its block, head, sampler,
//!   distill, schedule), and
//! - the evaluation of each owner's `params`/`buffers` groups.
//!
//! A unit is a deterministic function of what it can read: its own component
//! (everything under it), the *top-level* fields of the bodies in its scope
//! chain (names are looked up there; components nested in those bodies are
//! not visible to a lookup), and the derived values it is given. Its cache key
//! is therefore: the chosen options of every axis inside its component or at
//! the model's top level (the backbone's top level too, for the block's
//! groups, which the backbone's component contains), and the values of the
//! derived map it was given (for an owner's groups, with [`Memo::for_space`]:
//! only the derived values it can name; a name found in a body is evaluated
//! in the same bodies, whose names are all collected). Equal keys, equal inputs, equal result: a reused
//! result is exactly what checking again would give, diagnostics included
//! (they are replayed in order).
//!
//! The groups of all owners share two pieces of state in the checker (the
//! running tensor count against `MAX_TENSORS`, and the set of checkpoint keys
//! seen, for E0430). Per owner they are evaluated with fresh state; the result
//! is used only when it provably equals the one pass: no owner reported
//! anything, the total stays within `MAX_TENSORS`, and no key is declared by
//! two owners (checked per pair of owner results, cached). Otherwise the
//! groups are evaluated again in the one pass, as [`super::check_model`] does.
//!
//! Everything else of [`Checker::model`] (reading the model's own fields, the
//! cross-field rules, derived values, constraints) runs for every point.

use super::*;
use crate::space::Axis;
use ecarc_grammar::ast::ParamGroup;
use std::any::Any;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

/// A component check that [`Memo`] caches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unit {
    Tokenizer,
    Backbone,
    Head,
    Sampler,
    Distill,
    Schedule,
}

impl Unit {
    const ALL: [Unit; 6] = [Unit::Tokenizer, Unit::Backbone, Unit::Head, Unit::Sampler, Unit::Distill, Unit::Schedule];
    /// The model's key of the component the unit checks.
    fn key(self) -> &'static str {
        match self {
            Unit::Tokenizer => "tokenizer",
            Unit::Backbone => "backbone",
            Unit::Head => "head",
            Unit::Sampler => "sample",
            Unit::Distill => "distill",
            Unit::Schedule => "schedule",
        }
    }
}

/// Owners of `params`/`buffers` groups, in the order the checker evaluates them,
/// with the model key of the component that holds each owner's chain.
const OWNERS: [(&str, &str); 6] = [
    ("model", ""),
    ("backbone", "backbone"),
    ("backbone.block", "backbone"),
    ("head", "head"),
    ("distill", "distill"),
    ("tokenizer", "tokenizer"),
];

/// Which axes each unit can observe (indices into the space's axes).
#[derive(Clone, Debug)]
struct AxisVisibility {
    units: [Vec<u32>; 6],
    owners: [Vec<u32>; 6],
    /// Per owner, the names its groups can look up (so the derived values that
    /// are part of its key); `None`: all derived values.
    owner_names: [Option<std::collections::BTreeSet<String>>; 6],
}

impl AxisVisibility {
    fn new(axes: &[Axis]) -> AxisVisibility {
        // An axis at the model's top level is visible to every unit (names are
        // looked up there); one inside a component only to that component's units.
        let visible = |component: &str| -> Vec<u32> {
            axes.iter()
                .enumerate()
                .filter(|(_, a)| a.path.len() == 1 || (!component.is_empty() && a.path[0] == component))
                .map(|(i, _)| i as u32)
                .collect()
        };
        AxisVisibility {
            units: Unit::ALL.map(|u| visible(u.key())),
            owners: OWNERS.map(|(_, c)| visible(c)),
            owner_names: [None, None, None, None, None, None],
        }
    }

    /// [`AxisVisibility::new`], with each owner's groups keyed only by the derived values
    /// it can name. What an owner's groups can look up: names in its component
    /// (every option of a choice; a name found there is evaluated in the same
    /// bodies) and in the model's top-level fields (the model owner: only
    /// those). A computed key placeholder that does not parse names everything.
    fn owner_names(body: &MBody) -> [Option<std::collections::BTreeSet<String>>; 6] {
        let mut out = [None, None, None, None, None, None];
        let mut top = Names::default();
        for f in body.fields() {
            if !matches!(f.value, MValue::Component(_)) {
                top.value(&f.value);
            }
        }
        for g in body.param_groups() {
            top.group(g);
        }
        for c in body.constraints() {
            top.expr(&c.bound);
        }
        for (k, (_, component)) in OWNERS.iter().enumerate() {
            let mut n = top.clone();
            if !component.is_empty() {
                match body.field(component) {
                    Some(f) => n.value(&f.value),
                    None => continue,
                }
            }
            out[k] = if n.all { None } else { Some(n.names) };
        }
        out
    }
}

/// What each owner's groups can name in a space (see [`Memo::names_for_space`]).
#[derive(Clone, Debug, Default)]
pub(crate) struct OwnerNames([Option<std::collections::BTreeSet<String>>; 6]);

/// Names an expression, value or body can look up.
#[derive(Clone, Default)]
struct Names {
    names: std::collections::BTreeSet<String>,
    /// Something could name anything (an unparsed placeholder).
    all: bool,
}

impl Names {
    fn expr(&mut self, e: &ecarc_grammar::ast::Expr) {
        use ecarc_grammar::ast::ExprKind as K;
        match &e.kind {
            K::Name(n) => {
                self.names.insert(n.clone());
            }
            K::Index { name, index } => {
                self.names.insert(name.name.clone());
                self.expr(index);
            }
            K::Call { args, .. } => args.iter().for_each(|a| self.expr(&a.value)),
            K::List(items) => items.iter().for_each(|i| self.expr(i)),
            K::Neg(x) | K::Paren(x) => self.expr(x),
            K::Binary { lhs, rhs, .. } => {
                self.expr(lhs);
                self.expr(rhs);
            }
            K::Number { .. } | K::Size { .. } | K::Str(_) => {}
        }
    }
    fn value(&mut self, v: &MValue) {
        match v {
            MValue::Expr(e) => self.expr(e),
            MValue::Segment { from, to, .. } => {
                self.expr(from);
                self.expr(to);
            }
            MValue::Component(c) => self.body(&c.body),
            MValue::Choice(ecarc_grammar::merged::Choice::Set { items, .. }) => {
                items.iter().for_each(|i| self.value(i))
            }
            MValue::Choice(ecarc_grammar::merged::Choice::Range { lo, hi, step, .. }) => {
                self.expr(lo);
                self.expr(hi);
                if let Some(s) = step {
                    self.expr(s);
                }
            }
        }
    }
    fn body(&mut self, b: &MBody) {
        for e in &b.entries {
            match e {
                ecarc_grammar::merged::MEntry::Field(f) => self.value(&f.value),
                ecarc_grammar::merged::MEntry::Stage(r) => {
                    self.expr(&r.grid);
                    if let Some((a, b, _)) = &r.segment {
                        self.expr(a);
                        self.expr(b);
                    }
                    if let Some(s) = &r.steps {
                        self.expr(s);
                    }
                }
                ecarc_grammar::merged::MEntry::Params(g) => self.group(g),
                ecarc_grammar::merged::MEntry::Constraint(c) => self.expr(&c.bound),
            }
        }
    }
    fn group(&mut self, g: &ParamGroup) {
        for r in g.repeat.iter().chain(g.inner.iter()) {
            self.expr(&r.lo);
            self.expr(&r.hi);
        }
        if let Some(c) = &g.condition {
            self.names.insert(c.flag.name.clone());
        }
        if let Some(gd) = &g.guard {
            self.expr(&gd.lhs);
            self.expr(&gd.rhs);
        }
        for d in &g.decls {
            d.shape.iter().for_each(|e| self.expr(e));
            self.placeholders(&d.key.value);
        }
        if let Some(p) = &g.prefix {
            self.placeholders(&p.value);
        }
    }
    /// Names in `{...}` placeholders of a checkpoint key.
    fn placeholders(&mut self, template: &str) {
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}') else { return };
            let inner = &rest[open + 1..open + close];
            match ecarc_grammar::parser::parse_set_value(ecarc_grammar::FileId(u32::MAX), inner) {
                Ok(ecarc_grammar::ast::FieldValue::Value(ecarc_grammar::ast::Value::Expr(e))) => self.expr(&e),
                _ => self.all = true,
            }
            rest = &rest[open + close + 1..];
        }
    }
}

/// The groups of one owner, evaluated on their own.
#[derive(Debug)]
pub(crate) struct OwnerGroups {
    pub owner: &'static str,
    pub params: Vec<ParamGroupSpec>,
    pub buffers: Vec<ParamGroupSpec>,
    /// Tensors declared (copies counted).
    pub count: u64,
    /// Scalars in `params` (not buffers).
    pub params_numel: u128,
    /// Every full checkpoint key declared.
    keys: std::collections::HashSet<String, FxBuild>,
    /// Nothing was reported.
    clean: bool,
    id: u32,
}

/// A small, fast hasher for the cache keys (slices of `u64`).
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

impl Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }
}

pub(crate) type FxBuild = BuildHasherDefault<FxHasher>;
type Map<K, V> = std::collections::HashMap<K, V, FxBuild>;

type UnitEntry = (Box<dyn Any + Send>, Vec<Diag>);

/// Cached results kept at most (each kind); a full cache is emptied and
/// refilled, so that spaces whose every design differs (a million depths)
/// stay within memory. Only speed depends on it.
const MAX_UNITS: usize = 200_000;
const MAX_OWNERS: usize = 8_192;
/// Tensors (keys) held by the cached owner results at most.
const MAX_OWNER_TENSORS: u64 = 2_000_000;
const MAX_PAIRS: usize = 1_000_000;

#[derive(Default)]
struct Caches {
    units: Map<Box<[u64]>, UnitEntry>,
    owners: Map<Box<[u64]>, Arc<OwnerGroups>>,
    /// Whether two owner results declare a common key.
    pairs: Map<(u32, u32), bool>,
    /// Tensors held by `owners`.
    owner_tensors: u64,
    next_id: u32,
    stats: MemoStats,
}

/// How often cached results were reused.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoStats {
    pub unit_hits: u64,
    pub unit_misses: u64,
    pub owner_hits: u64,
    pub owner_misses: u64,
    /// Points whose groups were evaluated in one pass (something was reported,
    /// a key was declared twice, or there are too many tensors).
    pub one_pass: u64,
    /// Declared tensors evaluated (not reused): the work done.
    pub tensors: u64,
}

/// The reusable results for one search space. Not shared between threads:
/// give each worker its own (the results do not depend on which one computed them).
pub struct Memo {
    visibility: AxisVisibility,
    caches: RefCell<Caches>,
    /// The key being built (no allocation for a cache hit).
    key: RefCell<Vec<u64>>,
}

impl Memo {
    /// A memo for the points of a space with these axes (from [`crate::space::axes`]).
    pub fn new(axes: &[Axis]) -> Memo {
        Memo { visibility: AxisVisibility::new(axes), caches: RefCell::default(), key: RefCell::default() }
    }

    /// [`Memo::new`] for the space `body` (the model with its alternatives):
    /// each owner's groups are keyed only by the derived values they can name,
    /// so that (say) the tokenizer's are not evaluated again for every schedule.
    pub fn for_space(body: &MBody, axes: &[Axis]) -> Memo {
        Memo::with_names(axes, Memo::names_for_space(body))
    }

    /// What each owner's groups can name in the space `body` (the model with
    /// its alternatives, not a point of it).
    pub(crate) fn names_for_space(body: &MBody) -> OwnerNames {
        OwnerNames(AxisVisibility::owner_names(body))
    }

    /// [`Memo::for_space`] with the names computed beforehand.
    pub(crate) fn with_names(axes: &[Axis], names: OwnerNames) -> Memo {
        let mut visibility = AxisVisibility::new(axes);
        visibility.owner_names = names.0;
        Memo { visibility, caches: RefCell::default(), key: RefCell::default() }
    }
    pub fn stats(&self) -> MemoStats {
        self.caches.borrow().stats
    }
}

/// The checker's handle on a memo while it checks one point.
#[derive(Clone, Copy)]
pub(super) struct MemoCtx<'a> {
    memo: &'a Memo,
    /// The option chosen on each axis.
    choice: &'a [u32],
}

/// Derived values as part of a cache key: each (name, value) in the map's order.
pub(super) fn derived_key(map: &BTreeMap<String, Num>) -> Vec<u64> {
    let mut key = Vec::with_capacity(map.len() * 3);
    for (k, v) in map {
        let mut h = FxHasher::default();
        h.write(k.as_bytes());
        key.push(h.finish());
        match *v {
            Num::Int(i) => key.extend([0, i as u64]),
            Num::Float(f) => key.extend([1, f.to_bits()]),
        }
    }
    key
}

impl<'a> MemoCtx<'a> {
    /// Count tensors evaluated afresh.
    pub(super) fn evaluated(&self, tensors: u64) {
        self.memo.caches.borrow_mut().stats.tensors += tensors;
    }

    /// A unit's cache key, in the memo's reused buffer.
    fn key(&self, tag: u64, axes: &[u32], extra: &[u64]) -> std::cell::RefMut<'a, Vec<u64>> {
        let mut key = self.memo.key.borrow_mut();
        key.clear();
        key.push(tag);
        key.extend(axes.iter().map(|&a| self.choice[a as usize] as u64));
        key.extend_from_slice(extra);
        key
    }

    /// Each owner's groups from the cache or evaluated on their own; `None`
    /// when the one pass over all owners must decide (see the module docs).
    pub(super) fn owner_groups(
        &self,
        checker: &Checker<'a>,
        owners: &[(&'static str, Vec<&'a MBody>)],
        derived: &BTreeMap<String, Num>,
        flags: &BTreeMap<&'static str, bool>,
    ) -> Option<(Vec<Arc<OwnerGroups>>, u64)> {
        // Each derived value once: (hash of its name, kind, bits), and a hash of
        // which names exist.
        let entries: Vec<(&str, [u64; 3])> = derived
            .iter()
            .map(|(k, v)| {
                let mut h = FxHasher::default();
                h.write(k.as_bytes());
                let (tag, bits) = match *v {
                    Num::Int(i) => (0, i as u64),
                    Num::Float(f) => (1, f.to_bits()),
                };
                (k.as_str(), [h.finish(), tag, bits])
            })
            .collect();
        let present = entries.iter().fold(0u64, |a, (_, e)| a.rotate_left(7) ^ e[0]);
        let flag_key: Vec<u64> = flags.values().map(|&b| b as u64).collect();
        let mut out = Vec::with_capacity(owners.len());
        let mut extra: Vec<u64> = Vec::with_capacity(entries.len() * 3 + 4);
        for (owner, chain) in owners {
            let k = OWNERS.iter().position(|(o, _)| o == owner).expect("a known owner");
            extra.clear();
            let names = &self.memo.visibility.owner_names[k];
            for (name, e) in &entries {
                if names.as_ref().is_none_or(|n| n.contains(*name)) {
                    extra.extend_from_slice(e);
                }
            }
            extra.push(present);
            extra.extend_from_slice(&flag_key);
            let key = self.key(100 + k as u64, &self.memo.visibility.owners[k], &extra);
            let cached = self.memo.caches.borrow().owners.get(key.as_slice()).cloned();
            let groups = match cached {
                Some(g) => {
                    self.memo.caches.borrow_mut().stats.owner_hits += 1;
                    g
                }
                None => {
                    let g = Arc::new(evaluate_owner(checker, owner, chain, derived, flags, {
                        let mut c = self.memo.caches.borrow_mut();
                        c.next_id += 1;
                        c.next_id
                    }));
                    let mut c = self.memo.caches.borrow_mut();
                    c.stats.owner_misses += 1;
                    c.stats.tensors += g.count;
                    if c.owners.len() >= MAX_OWNERS || c.owner_tensors + g.count > MAX_OWNER_TENSORS {
                        c.owners.clear();
                        c.owner_tensors = 0;
                    }
                    c.owner_tensors += g.count;
                    c.owners.insert(key.as_slice().into(), g.clone());
                    g
                }
            };
            out.push(groups);
        }
        let one_pass = || {
            self.memo.caches.borrow_mut().stats.one_pass += 1;
            None
        };
        if out.iter().any(|g| !g.clean) {
            return one_pass();
        }
        let total = out.iter().map(|g| g.count).sum::<u64>();
        if total > MAX_TENSORS {
            return one_pass();
        }
        for i in 0..out.len() {
            for j in i + 1..out.len() {
                let (a, b) = (&out[i], &out[j]);
                let pair = (a.id, b.id);
                let cached = self.memo.caches.borrow().pairs.get(&pair).copied();
                let shared = match cached {
                    Some(s) => s,
                    None => {
                        let (small, large) = if a.keys.len() <= b.keys.len() { (a, b) } else { (b, a) };
                        let s = small.keys.iter().any(|k| large.keys.contains(k));
                        let mut c = self.memo.caches.borrow_mut();
                        if c.pairs.len() >= MAX_PAIRS {
                            c.pairs.clear();
                        }
                        c.pairs.insert(pair, s);
                        s
                    }
                };
                if shared {
                    return one_pass();
                }
            }
        }
        Some((out, total))
    }
}

/// One owner's groups with their own tensor count and key set (what the one
/// pass gives for them when nothing is reported).
fn evaluate_owner<'a>(
    checker: &Checker<'a>,
    owner: &'static str,
    chain: &[&'a MBody],
    derived: &BTreeMap<String, Num>,
    flags: &BTreeMap<&'static str, bool>,
    id: u32,
) -> OwnerGroups {
    let before = checker.diags.borrow().len();
    let pc = ParamCtx { checker, derived, flags, seen: RefCell::new(HashMap::new()), count: RefCell::new(0) };
    let (mut params, mut buffers) = (Vec::new(), Vec::new());
    pc.groups(chain[0], chain.to_vec(), owner, &mut params, &mut buffers);
    // What it reported is not kept: the one pass reports it, in its order.
    let clean = checker.diags.borrow().len() == before;
    checker.diags.borrow_mut().truncate(before);
    let params_numel = params.iter().map(ParamGroupSpec::numel).sum();
    OwnerGroups {
        owner,
        params,
        buffers,
        count: pc.count.into_inner(),
        params_numel,
        keys: pc.seen.into_inner().into_keys().collect(),
        clean,
        id,
    }
}

impl<'a> Checker<'a> {
    /// Run a component check, or replay its cached result and diagnostics.
    /// `extra` holds the inputs besides the bodies (derived values).
    pub(super) fn unit<T: Clone + Send + 'static>(
        &self,
        unit: Unit,
        extra: &[u64],
        f: impl FnOnce() -> Option<T>,
    ) -> Option<T> {
        let Some(ctx) = self.memo else { return f() };
        let k = Unit::ALL.iter().position(|&u| u == unit).expect("a unit");
        let key = ctx.key(k as u64, &ctx.memo.visibility.units[k], extra);
        {
            let mut c = ctx.memo.caches.borrow_mut();
            if let Some((value, diags)) = c.units.get(key.as_slice()) {
                let v = value.downcast_ref::<Option<T>>().expect("one type per unit").clone();
                self.diags.borrow_mut().extend(diags.iter().cloned());
                c.stats.unit_hits += 1;
                return v;
            }
        }
        let key: Box<[u64]> = key.as_slice().into();
        let before = self.diags.borrow().len();
        let v = f();
        let diags = self.diags.borrow()[before..].to_vec();
        let mut c = ctx.memo.caches.borrow_mut();
        c.stats.unit_misses += 1;
        if c.units.len() >= MAX_UNITS {
            c.units.clear();
        }
        c.units.insert(key, (Box::new(v.clone()), diags));
        v
    }
}

/// A checked point of a search space: what search needs of its `ModelSpec`
/// (the component specs; the parameter count instead of the tensor list).
#[derive(Clone, Debug)]
pub struct CheckedPoint {
    pub image: [u64; 2],
    pub classes: u64,
    /// Without its `params` (see [`CheckedPoint::tokenizer_params`]).
    pub tokenizer: TokenizerSpec,
    pub backbone: BackboneSpec,
    pub head: HeadSpec,
    pub schedule: ScheduleSpec,
    pub sampler: SamplerSpec,
    pub distill: Option<DistillSpec>,
    pub constraints: Vec<ConstraintSpec>,
    /// Learned parameters of the generator (= `ModelSpec::param_count`).
    pub params: u128,
    /// Learned parameters of the tokenizer (= `ModelSpec::tokenizer_param_count`).
    pub tokenizer_params: u128,
    /// Declared tensors evaluated.
    pub tensors: u64,
}

/// Check one point of a space: `body` is the space's body with option
/// `choice[i]` on axis `i` (see [`crate::space::apply`]). Valid exactly when
/// [`super::check_model`] accepts `body`, with the same diagnostics otherwise.
pub fn check_point(name: &Ident, body: &MBody, choice: &[u32], memo: &Memo) -> Result<CheckedPoint, Vec<Diag>> {
    let diags = RefCell::new(Vec::new());
    let empty = BTreeMap::new();
    let ctx = MemoCtx { memo, choice };
    let parts = Checker { diags: &diags, empty: &empty, memo: Some(ctx) }.model(name, body);
    let diags = diags.into_inner();
    let p = match parts {
        Some(p) if diags.iter().all(|d| !d.is_error()) => p,
        _ => return Err(diags),
    };
    let (params, tokenizer_params) = match &p.groups {
        GroupsOut::Owners(owners) => owners.iter().fold((0u128, 0u128), |(g, t), o| {
            if o.owner == "tokenizer" {
                (g, t + o.params_numel)
            } else {
                (g + o.params_numel, t)
            }
        }),
        GroupsOut::Sequential { params, tok_params, .. } => {
            (params.iter().map(ParamGroupSpec::numel).sum(), tok_params.iter().map(ParamGroupSpec::numel).sum())
        }
    };
    Ok(CheckedPoint {
        image: p.image,
        classes: p.classes,
        tokenizer: p.tokenizer,
        backbone: p.backbone,
        head: p.head,
        schedule: p.schedule,
        sampler: p.sampler,
        distill: p.distill,
        constraints: p.constraints,
        params,
        tokenizer_params,
        tensors: p.tensors,
    })
}
