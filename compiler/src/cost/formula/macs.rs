//! MACs, following the lowering (`lower/`) node by node.

use super::decls::{Decl, Index};
use super::symbolic::SymbolicEvaluator;
use super::Poly;
use crate::lower::backbone::Seq;
use crate::lower::params::ParamScope;
use crate::lower::transition::{leads_with_class_stage, phi_conv};
use crate::spec::*;
use std::collections::BTreeMap;

/// Runtime symbols of a step program: tokens of the step and cached positions.
pub(super) const T: &str = "$T";
pub(super) const P: &str = "$P";

pub(super) struct Macs<'a> {
    pub(super) spec: &'a ModelSpec,
    pub(super) idx: &'a Index,
    pub(super) sym: &'a SymbolicEvaluator,
    /// Backbone depth and width, head depth and width (flow heads).
    pub(super) depth: Poly,
    pub(super) width: Poly,
    pub(super) head_depth: Poly,
    pub(super) head_width: Poly,
    /// Area of the final token grid.
    pub(super) area: Poly,
}

pub(super) fn c(v: i128) -> Poly {
    Poly::constant(v)
}

impl Macs<'_> {
    fn lin(&self, scope: ParamScope, role: &str, copy: Option<u64>) -> Result<Poly, String> {
        self.idx.need(scope, role, copy)?.linear()
    }

    /// Sum over layers `0..n` of `f(decl of role at layer)`; layers without the
    /// role are an error when `required`, else skipped.
    fn layers(
        &self,
        scope: ParamScope,
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

    fn presence(&self, scope: ParamScope, roles: &[&str], copy: Option<u64>) -> Result<(), String> {
        for r in roles {
            self.idx.need(scope, r, copy)?;
        }
        Ok(())
    }

    /// `lower_backbone`: conditioning, embedding, layers.
    pub(super) fn backbone(&self, seq: &Seq<Poly>, bt: &Poly, t: &Poly, past: &Poly) -> Result<Poly, String> {
        let (spec, bb) = (self.spec, &self.spec.backbone);
        let s = ParamScope::Backbone;
        let mut m = Poly::zero();
        self.presence(s, &["class_table"], None)?;
        if bb.condition == Conditioning::AdalnTimeClass {
            m = m.add(&bt.mul(&self.lin(s, "time_in", None)?));
            m = m.add(&bt.mul(&self.lin(s, "time_out", None)?));
        }
        let body = match seq {
            Seq::Prefix => None,
            Seq::Body => Some(t.clone()),
            Seq::PrefixAndBody { body, .. } => Some(body.clone()),
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
        let s = ParamScope::Backbone;
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
    pub(super) fn step_head(&self, bt: &Poly, t: &Poly) -> Result<Poly, String> {
        let s = ParamScope::Head;
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
    pub(super) fn flow_step(&self, bt: &Poly, t: &Poly) -> Result<Poly, String> {
        let s = ParamScope::Head;
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
    pub(super) fn transitions(&self) -> Result<Poly, String> {
        let spec = self.spec;
        if matches!(spec.schedule.layout, Layout::Raster { .. }) || spec.tokenizer.kind != TokenizerKind::Msvq {
            // Raster schedules have none; continuous ones only resize (no MACs).
            return Ok(Poly::zero());
        }
        let s = ParamScope::Tokenizer;
        let phi = spec.tokenizer.phi.as_ref().ok_or("msvq without phi")?;
        let n = spec.schedule.num_stages();
        // A distilled schedule's leading stage (the class position) has no codes.
        let lead = u64::from(leads_with_class_stage(spec, phi));
        let mut by_decl: BTreeMap<usize, u64> = BTreeMap::new();
        for k in 0..(n - lead) as usize {
            if spec.distill.is_none() {
                self.presence(s, &["codebook"], None)?;
            }
            let conv = phi_conv(phi, k);
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
