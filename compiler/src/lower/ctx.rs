//! A graph under construction with the model's tensors at hand: small helpers
//! (`linear`, `norm`, `modulate`, ...) so that lowering code reads like the
//! architecture it builds.

use super::params::{ParamIndex, ParamScope};
use crate::ir::op::{Binary, Unary};
use crate::ir::{Dim, Graph, Op, TensorType, F};
use ecarc_grammar::{Diag, Span};
use petgraph::stable_graph::NodeIndex;
use std::collections::HashMap;

pub type N = NodeIndex;

/// A tensor the architecture needs but the model does not declare.
#[derive(Debug, Clone)]
pub struct Missing {
    pub role: String,
    /// The copy index asked for (`[]` outside loops, `[layer]`, `[level, block]`).
    pub index: Vec<u64>,
    pub scope: ParamScope,
}

/// What a lowering step gives: a missing tensor stops it.
pub type Res<T> = Result<T, Missing>;

impl Missing {
    pub fn to_diag(&self, span: Option<Span>) -> Diag {
        let at = match self.index.as_slice() {
            [] => String::new(),
            [i] => format!(" for copy {i}"),
            idx => format!(" for copy {idx:?}"),
        };
        let what = match self.scope {
            ParamScope::Backbone => "backbone (or its block)",
            ParamScope::Head => "head",
            ParamScope::Tokenizer => "tokenizer",
        };
        let mut d = Diag::error("E0601", format!("the {what} declares no tensor with role `{}`{at}", self.role)).help(
            format!("this architecture needs it: add `{} \"KEY\" [DIMS]` to a `params` group of the {what}", self.role),
        );
        if let Some(s) = span {
            d = d.label(s, "lowered from here");
        }
        d
    }
}

pub struct Ctx<'a> {
    pub g: Graph,
    idx: &'a ParamIndex,
    pub scope: ParamScope,
    params: HashMap<String, N>,
    sources: HashMap<String, N>,
    /// The span attached to nodes created now (the component being lowered).
    pub span: Option<Span>,
    /// Spans of declared tensors, by declared key template.
    param_spans: &'a HashMap<String, Span>,
}

pub fn d(v: u64) -> Dim {
    Dim::c(v)
}

impl<'a> Ctx<'a> {
    pub fn new(name: &str, idx: &'a ParamIndex, scope: ParamScope, param_spans: &'a HashMap<String, Span>) -> Self {
        Ctx {
            g: Graph::new(name),
            idx,
            scope,
            params: HashMap::new(),
            sources: HashMap::new(),
            span: None,
            param_spans,
        }
    }

    /// The declared shape of a role's tensor, if the model declares it.
    pub fn declared_shape(&self, role: &str, layer: Option<u64>) -> Option<&[u64]> {
        self.idx.get(self.scope, role, layer).map(|d| d.shape.as_slice())
    }

    pub fn has(&self, role: &str, layer: Option<u64>) -> bool {
        self.idx.get(self.scope, role, layer).is_some()
    }

    pub fn has_at(&self, role: &str, index: &[u64]) -> bool {
        self.idx.get_at(self.scope, role, index).is_some()
    }

    /// The declared tensor with `role` (of `layer`), as a param node.
    pub fn p(&mut self, role: &str, layer: Option<u64>) -> Result<N, Missing> {
        self.p_at(role, layer.as_slice())
    }

    /// The declared tensor with `role` at a copy index (`[level, block]`).
    pub fn p_at(&mut self, role: &str, index: &[u64]) -> Result<N, Missing> {
        let decl = self.idx.get_at(self.scope, role, index).ok_or_else(|| Missing {
            role: role.to_string(),
            index: index.to_vec(),
            scope: self.scope,
        })?;
        if let Some(&n) = self.params.get(&decl.key) {
            return Ok(n);
        }
        let ty = TensorType::f32(decl.shape.iter().map(|&v| d(v)).collect());
        let span = self.param_spans.get(&decl.template).copied().or(self.span);
        let n = self.g.source(Op::Param { key: decl.key.clone() }, ty, span);
        self.params.insert(decl.key.clone(), n);
        Ok(n)
    }

    pub fn opt(&mut self, role: &str, layer: Option<u64>) -> Option<N> {
        self.p(role, layer).ok()
    }

    pub fn opt_at(&mut self, role: &str, index: &[u64]) -> Option<N> {
        self.p_at(role, index).ok()
    }

    /// A convolution with the tensors of `role` / `role_bias`, padding `k / 2`.
    pub fn conv(&mut self, x: N, role: &str, index: &[u64], stride: u32) -> Result<N, Missing> {
        let w = self.p_at(role, index)?;
        let k = self.shape(w)[2].as_const().unwrap_or(1);
        let pad = (k / 2) as u32;
        Ok(match self.opt_at(&format!("{role}_bias"), index) {
            Some(b) => self.op(Op::Conv2d { stride, pad }, &[x, w, b]),
            None => self.op(Op::Conv2d { stride, pad }, &[x, w]),
        })
    }

    pub fn input(&mut self, name: &str, ty: TensorType) -> N {
        self.named_source(Op::Input { name: name.into() }, name, ty)
    }

    pub fn state(&mut self, name: &str, ty: TensorType) -> N {
        self.named_source(Op::State { name: name.into() }, &format!("state:{name}"), ty)
    }

    fn named_source(&mut self, op: Op, key: &str, ty: TensorType) -> N {
        if let Some(&n) = self.sources.get(key) {
            return n;
        }
        let n = self.g.source(op, ty, self.span);
        self.sources.insert(key.to_string(), n);
        n
    }

    pub fn op(&mut self, op: Op, xs: &[N]) -> N {
        self.g.add(op, xs, self.span)
    }

    pub fn output(&mut self, name: &str, n: N) {
        self.g.output(name, n);
    }

    pub fn shape(&self, n: N) -> Vec<Dim> {
        self.g.ty(n).shape.clone()
    }

    // ---- arithmetic ---------------------------------------------------------
    pub fn add(&mut self, a: N, b: N) -> N {
        self.op(Op::Binary(Binary::Add), &[a, b])
    }
    pub fn mul(&mut self, a: N, b: N) -> N {
        self.op(Op::Binary(Binary::Mul), &[a, b])
    }
    pub fn unary(&mut self, u: Unary, x: N) -> N {
        self.op(Op::Unary(u), &[x])
    }
    pub fn affine(&mut self, x: N, scale: f64, shift: f64) -> N {
        self.op(Op::Affine { scale: F::new(scale), shift: F::new(shift) }, &[x])
    }
    pub fn reshape(&mut self, x: N, shape: Vec<Dim>) -> N {
        if self.shape(x) == shape {
            return x;
        }
        self.op(Op::Reshape { shape }, &[x])
    }
    pub fn permute(&mut self, x: N, perm: &[u8]) -> N {
        self.op(Op::Permute { perm: perm.to_vec() }, &[x])
    }
    pub fn slice(&mut self, x: N, axis: u8, start: Dim, len: Dim) -> N {
        self.op(Op::Slice { axis, start, len }, &[x])
    }
    /// Split the last axis into `n` equal chunks.
    pub fn chunks(&mut self, x: N, n: u64) -> Vec<N> {
        let s = self.shape(x);
        let axis = (s.len() - 1) as u8;
        let w = s.last().and_then(|d| d.div_c(n)).expect("chunkable last axis");
        (0..n).map(|i| self.slice(x, axis, w.mul_c(i), w.clone())).collect()
    }

    /// `x . w^T + b` with the tensors of `role` / `role_bias`.
    pub fn linear(&mut self, x: N, role: &str, layer: Option<u64>) -> Result<N, Missing> {
        let w = self.p(role, layer)?;
        let bias_role = format!("{role}_bias");
        Ok(match self.opt(&bias_role, layer) {
            Some(b) => self.op(Op::Linear, &[x, w, b]),
            None => self.op(Op::Linear, &[x, w]),
        })
    }

    /// `x * (1 + scale) + shift` (adaLN modulation); `scale`, `shift` broadcast.
    pub fn modulate(&mut self, x: N, scale: N, shift: N) -> N {
        let one_plus = self.affine(scale, 1.0, 1.0);
        let y = self.mul(x, one_plus);
        self.add(y, shift)
    }

    /// `[N, C]` -> `[N, 1, C]`, to broadcast a per-image vector over tokens.
    pub fn per_token(&mut self, v: N) -> N {
        let s = self.shape(v);
        if s.len() == 3 {
            return v;
        }
        self.reshape(v, vec![s[0].clone(), d(1), s[1].clone()])
    }
}
