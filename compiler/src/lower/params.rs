//! Tensors by role: the lowering asks for "the `qkv` of layer 3" and gets the
//! checkpoint key and shape the model declared. No family knows its keys here.

use crate::spec::{ModelSpec, ParamGroupSpec};
use std::collections::HashMap;

#[derive(Clone, Debug)]
pub struct Declared {
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
    fn owners(self) -> &'static [&'static str] {
        match self {
            ParamScope::Backbone => &["backbone.block", "backbone", "model", "distill"],
            ParamScope::Head => &["head", "backbone", "model", "distill"],
            ParamScope::Tokenizer => &["tokenizer"],
        }
    }
}

#[derive(Debug, Default)]
pub struct ParamIndex {
    /// (role, copy index) -> declarations (several owners may declare a role).
    /// The copy index has one entry per loop of the group (`[]` outside loops,
    /// `[i]` in `for i in ..`, `[l, j]` in `for l in .., j in ..`).
    map: HashMap<(String, Vec<u64>), Vec<Declared>>,
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
        let copies: Vec<Option<u64>> = match &g.repeat {
            Some(r) => (r.start..r.start + r.count).map(Some).collect(),
            None => vec![None],
        };
        for copy in copies {
            let index: Vec<u64> = g.index.iter().copied().chain(copy).collect();
            for t in &g.tensors {
                let template = format!("{}{}", g.prefix, t.key);
                let mut key = template.clone();
                if let (Some(i), Some(r)) = (copy, &g.repeat) {
                    key = key.replace(&format!("{{{}}}", r.var), &i.to_string());
                }
                self.map.entry((t.role.clone(), index.clone())).or_default().push(Declared {
                    owner: g.owner.clone(),
                    key,
                    template,
                    shape: t.shape.clone(),
                });
            }
        }
    }

    pub fn get(&self, scope: ParamScope, role: &str, copy: Option<u64>) -> Option<&Declared> {
        self.get_at(scope, role, copy.as_slice())
    }

    pub fn get_at(&self, scope: ParamScope, role: &str, index: &[u64]) -> Option<&Declared> {
        let decls = self.map.get(&(role.to_string(), index.to_vec()))?;
        scope.owners().iter().find_map(|o| decls.iter().find(|d| d.owner == *o))
    }
}
