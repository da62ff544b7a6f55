//! The generator's declared tensors with symbolic shapes, looked up by role
//! with the lowering's own index (`lower/params.rs`), so both pick the same one.

use super::Poly;
use crate::lower::params::{copies, Owned, ParamIndex, ParamScope};

/// One declaration of a `params`/`buffers` group (all copies of a repeat).
pub(super) struct Decl {
    pub(super) owner: &'static str,
    pub(super) role: String,
    /// Loop values of a group expanded copy by copy (`[]` otherwise).
    pub(super) index: Vec<u64>,
    /// Copies `start..start + count` (numeric), with the count as a polynomial.
    pub(super) repeat: Option<(u64, u64, Poly)>,
    pub(super) shape: Vec<Poly>,
}

impl Decl {
    pub(super) fn numel(&self) -> Poly {
        self.shape.iter().fold(Poly::constant(1), |a, d| a.mul(d))
    }
    /// `out * in` of a linear weight `[out, in]`.
    pub(super) fn linear(&self) -> Result<Poly, String> {
        match self.shape.as_slice() {
            [o, i, ..] => Ok(o.mul(i)),
            _ => Err(format!("`{}` is not a [out, in] weight", self.role)),
        }
    }
    pub(super) fn copies(&self) -> Poly {
        self.repeat.as_ref().map_or(Poly::constant(1), |r| r.2.clone())
    }
}

/// A declaration's place in [`Index::decls`], under its owner.
struct DeclAt {
    owner: &'static str,
    at: usize,
}

impl Owned for DeclAt {
    fn owner(&self) -> &str {
        self.owner
    }
}

/// The declarations, in the checker's (and the spec's) order, and the
/// lowering's index over them.
pub(super) struct Index {
    pub(super) decls: Vec<Decl>,
    by_role: ParamIndex<DeclAt>,
}

impl Index {
    pub(super) fn new(decls: Vec<Decl>) -> Index {
        let mut by_role = ParamIndex::default();
        for (at, d) in decls.iter().enumerate() {
            for (_, index) in copies(&d.index, d.repeat.as_ref().map(|r| (r.0, r.1))) {
                by_role.insert(&d.role, index, DeclAt { owner: d.owner, at });
            }
        }
        Index { decls, by_role }
    }
    pub(super) fn get(&self, scope: ParamScope, role: &str, copy: Option<u64>) -> Option<usize> {
        self.by_role.get(scope, role, copy).map(|d| d.at)
    }
    pub(super) fn has(&self, scope: ParamScope, role: &str, copy: Option<u64>) -> bool {
        self.get(scope, role, copy).is_some()
    }
    pub(super) fn need(&self, scope: ParamScope, role: &str, copy: Option<u64>) -> Result<&Decl, String> {
        self.get(scope, role, copy).map(|i| &self.decls[i]).ok_or_else(|| {
            let at = copy.map_or(String::new(), |i| format!(" for layer {i}"));
            format!("no tensor with role `{role}`{at} (the lowering needs it)")
        })
    }
}
