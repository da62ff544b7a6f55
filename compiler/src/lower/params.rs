//! Tensors by role: the lowering asks for "the `qkv` of layer 3" and gets the
//! checkpoint key and shape the model declared. No family knows its keys here.

use crate::spec::{ModelSpec, ParamGroupSpec};
use std::collections::HashMap;

#[derive(Clone, Debug)]
pub struct DeclaredTensor {
    pub owner: String,
    pub key: String,
    /// The key as declared (`blocks.{i}.attn.proj.weight`), to find its span.
    pub template: String,
    pub shape: Vec<u64>,
}

/// Where a role is looked up: the group owners, in order of preference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamScope {
    /// The backbone and its blocks (and model-level groups).
    Backbone,
    /// The head first, then the backbone (heads may use backbone-level tensors).
    Head,
    Tokenizer,
}

impl ParamScope {
    /// Owners in order of preference.
    pub(crate) fn owners(self) -> &'static [&'static str] {
        match self {
            ParamScope::Backbone => &["backbone.block", "backbone", "model", "distill"],
            ParamScope::Head => &["head", "backbone", "model", "distill"],
            ParamScope::Tokenizer => &["tokenizer"],
        }
    }
}

/// What [`ParamIndex`] needs of a declaration: the owner of its group.
pub(crate) trait Owned {
    fn owner(&self) -> &str;
}

impl Owned for DeclaredTensor {
    fn owner(&self) -> &str {
        &self.owner
    }
}

/// Declarations by role and copy index. The lowering indexes the spec's tensors;
/// the cost formulas (`cost/formula/groups.rs`) index their symbolic
/// declarations in the same order, so both find the same tensor for a role.
#[derive(Debug)]
pub struct ParamIndex<D = DeclaredTensor> {
    /// (role, copy index) -> declarations (several owners may declare a role).
    /// The copy index has one entry per loop of the group (`[]` outside loops,
    /// `[i]` in `for i in ..`, `[l, j]` in `for l in .., j in ..`).
    map: HashMap<(String, Vec<u64>), Vec<D>>,
}

impl<D> Default for ParamIndex<D> {
    fn default() -> Self {
        ParamIndex { map: HashMap::new() }
    }
}

/// The copies of a group: each copy (`None` without a repeat) with its copy
/// index, the group's loop values (`index`) then the copy of its `repeat`
/// (`(start, count)`).
pub(crate) fn copies(index: &[u64], repeat: Option<(u64, u64)>) -> impl Iterator<Item = (Option<u64>, Vec<u64>)> + '_ {
    let copies: Vec<Option<u64>> = match repeat {
        Some((start, count)) => (start..start + count).map(Some).collect(),
        None => vec![None],
    };
    copies.into_iter().map(move |copy| (copy, index.iter().copied().chain(copy).collect()))
}

impl ParamIndex {
    pub fn new(spec: &ModelSpec) -> Self {
        let mut idx = ParamIndex::default();
        for g in spec.params.iter().chain(&spec.buffers).chain(&spec.tokenizer.params) {
            idx.add_group(g);
        }
        idx
    }

    fn add_group(&mut self, g: &ParamGroupSpec) {
        for (copy, index) in copies(&g.index, g.repeat.as_ref().map(|r| (r.start, r.count))) {
            for t in &g.tensors {
                let template = g.key(t, None);
                let key = g.key(t, copy);
                let d = DeclaredTensor { owner: g.owner.clone(), key, template, shape: t.shape.clone() };
                self.insert(&t.role, index.clone(), d);
            }
        }
    }
}

impl<D: Owned> ParamIndex<D> {
    /// Add a declaration; of one owner's, the first added wins.
    pub(crate) fn insert(&mut self, role: &str, index: Vec<u64>, d: D) {
        self.map.entry((role.to_string(), index)).or_default().push(d);
    }

    pub fn get(&self, scope: ParamScope, role: &str, copy: Option<u64>) -> Option<&D> {
        self.get_at(scope, role, copy.as_slice())
    }

    pub fn get_at(&self, scope: ParamScope, role: &str, index: &[u64]) -> Option<&D> {
        let decls = self.map.get(&(role.to_string(), index.to_vec()))?;
        scope.owners().iter().find_map(|o| decls.iter().find(|d| d.owner() == *o))
    }
}
