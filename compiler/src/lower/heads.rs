//! Heads: what turns the backbone's hidden states into this step's result.
//! Output norms and projections that sit in the backbone's checkpoint (VAR's
//! `head_nm`, LlamaGen's final norm, DiT's final layer) are found by role.

use super::backbone::BackboneOut;
use super::ctx::{d, Ctx, Res, N};
use crate::ir::op::{Mask, Unary};
use crate::ir::{Dim, Op, TensorType, F};
use crate::spec::*;

/// Hidden states after the backbone's output norm: VAR-style adaLN before the
/// head (`head_ada`), a final RMS/LayerNorm (`final_norm`), or none.
pub fn output_norm(c: &mut Ctx, spec: &ModelSpec, out: &BackboneOut) -> Res<N> {
    let eps = F::new(spec.backbone.block.norm_eps);
    let x = out.hidden;
    if c.has("head_ada", None) {
        let cond = out.cond.unwrap_or(out.class_emb);
        let s = c.unary(Unary::Silu, cond);
        let ss = c.linear(s, "head_ada", None)?;
        let parts = c.chunks(ss, 2);
        let (scale, shift) = (c.per_token(parts[0]), c.per_token(parts[1]));
        let n = c.op(Op::LayerNorm { eps }, &[x]);
        return Ok(c.modulate(n, scale, shift));
    }
    if let Some(w) = c.opt("final_norm", None) {
        return Ok(match spec.backbone.block.norm {
            NormKind::Rmsnorm => c.op(Op::RmsNorm { eps }, &[x, w]),
            NormKind::Layernorm => c.op(Op::LayerNorm { eps }, &[x, w]),
        });
    }
    Ok(x)
}

/// Logits over the vocabulary.
pub fn logits(c: &mut Ctx, h: N) -> Res<N> {
    c.linear(h, "out", None)
}

/// DiT's final layer: adaLN (shift, scale) from the condition, then a linear
/// map to `patch * patch * channels` outputs per token.
pub fn final_layer(c: &mut Ctx, spec: &ModelSpec, out: &BackboneOut) -> Res<N> {
    let cond = out.cond.unwrap_or(out.class_emb);
    let s = c.unary(Unary::Silu, cond);
    let ss = c.linear(s, "final_ada", None)?;
    let parts = c.chunks(ss, 2);
    let (shift, scale) = (c.per_token(parts[0]), c.per_token(parts[1]));
    let n = c.op(Op::LayerNorm { eps: F::new(spec.backbone.block.norm_eps) }, &[out.hidden]);
    let m = c.modulate(n, scale, shift);
    c.linear(m, "final_out", None)
}

/// Distilled Decoding's continuous head: LayerNorm, shift/scale from a learned
/// `[2, C]` table plus the raw class embedding, linear to the code dimension.
pub fn dd_continuous(c: &mut Ctx, spec: &ModelSpec, out: &BackboneOut) -> Res<N> {
    let table = c.p("dd_scale_shift", None)?;
    let w = d(spec.backbone.width);
    let flat = c.reshape(table, vec![w.mul_c(2)]);
    let rows = c.chunks(flat, 2);
    let cls = c.per_token(out.class_emb);
    let shift = c.add(rows[0], cls);
    let scale = c.add(rows[1], cls);
    let n = c.op(Op::LayerNorm { eps: F::new(1e-6) }, &[out.hidden]);
    let m = c.modulate(n, scale, shift);
    c.linear(m, "dd_out", None)
}

/// Guidance on a doubled batch `[2B, ...]` (conditional half first): `[B, ...]`.
pub fn guide(c: &mut Ctx, x: N, channels: Option<u64>) -> N {
    let s = c.shape(x);
    let half = s[0].div_c(2).expect("guided batch is even");
    let cond = c.slice(x, 0, Dim::c(0), half.clone());
    let uncond = c.slice(x, 0, half.clone(), half);
    let scale = c.input("cfg_scale", TensorType::f32(vec![]));
    c.op(Op::Guide { channels: channels.map(|v| v as u32) }, &[cond, uncond, scale])
}

/// How a categorical head turns logits into tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TokenChoice {
    /// Sample with one uniform number per token (input `uniform`).
    #[default]
    Sample,
    /// Distilled Decoding's teacher flow map from one Gaussian noise token
    /// per position (input `noise`, also an output so a plan can keep it).
    FlowMap,
}

/// Heun steps of the teacher flow map (64 keeps the chosen code stable).
pub const FLOW_MAP_STEPS: u32 = 64;

/// Tokens chosen by the teacher flow map from (guided) logits `[B, T, V]`
/// and one noise token per position against the tokenizer's codebook
/// (L2-normalised where the tokenizer is).
pub fn flow_map(c: &mut Ctx, spec: &ModelSpec, logits: N) -> Res<N> {
    let s = c.shape(logits);
    let scope = c.scope;
    c.scope = crate::lower::params::ParamScope::Tokenizer;
    let book = c.p("codebook", None);
    c.scope = scope;
    let mut book = book?;
    if spec.tokenizer.l2_norm {
        book = c.op(Op::L2Normalize { eps: F::new(1e-12) }, &[book]);
    }
    let dim = c.shape(book)[1].clone();
    let mut ns = s[..s.len() - 1].to_vec();
    ns.push(dim);
    let noise = c.input("noise", TensorType::f32(ns));
    c.output("noise", noise);
    let [temperature, top_k, top_p] = settings(c);
    Ok(c.op(Op::FlowMapTokens { steps: FLOW_MAP_STEPS }, &[logits, noise, book, temperature, top_k, top_p]))
}

/// The sampling settings, as inputs the run supplies (so changing them never
/// lowers again).
fn settings(c: &mut Ctx) -> [N; 3] {
    [
        c.input("temperature", TensorType::f32(vec![])),
        c.input("top_k", TensorType::i64(vec![])),
        c.input("top_p", TensorType::f32(vec![])),
    ]
}

/// Sample token indices from (guided) logits `[B, T, V]`.
pub fn sample(c: &mut Ctx, logits: N) -> N {
    let s = c.shape(logits);
    let noise = c.input("uniform", TensorType::f32(s[..s.len() - 1].to_vec()));
    let [temperature, top_k, top_p] = settings(c);
    c.op(Op::SampleTokens, &[logits, noise, temperature, top_k, top_p])
}

/// One ODE step of a flow head over a stage's tokens:
/// `x <- x + dt * v(x, t, z)` with guidance on a doubled batch. `x` and `t`
/// are per image (`B`); the condition `z` comes from the (doubled) backbone.
pub fn flow_step(c: &mut Ctx, spec: &ModelSpec, tokens: &Dim, cfg: bool) -> Res<()> {
    let head = &spec.head;
    let images = Dim::sym(crate::ir::Sym::B);
    let batch = if cfg { images.mul_c(2) } else { images.clone() };
    let batch = &batch;
    let width = d(head.width.unwrap_or(spec.backbone.width));
    let lat = d(spec.tokenizer.token_channels);
    let z = c.input("z", TensorType::f32(vec![batch.clone(), tokens.clone(), d(spec.backbone.width)]));
    let x_img = c.input("x", TensorType::f32(vec![images.clone(), tokens.clone(), lat.clone()]));
    let t_img = c.input("t", TensorType::f32(vec![images]));
    let (x, t) = if cfg {
        (c.op(Op::Concat { axis: 0 }, &[x_img, x_img]), c.op(Op::Concat { axis: 0 }, &[t_img, t_img]))
    } else {
        (x_img, t_img)
    };
    let freqs = c.op(Op::Sinusoid { dim: head.time_embed as u32, max_period: F::new(10000.0) }, &[t]);
    let h = c.linear(freqs, "time_in", None)?;
    let h = c.unary(Unary::Silu, h);
    let temb = c.linear(h, "time_out", None)?;
    let zc = c.linear(z, "cond_in", None)?;
    let v = match head.kind {
        HeadKind::FlowMlp => {
            let tt = c.per_token(temb);
            let y = c.add(zc, tt);
            let sy = c.unary(Unary::Silu, y);
            let mut hx = c.linear(x, "x_in", None)?;
            for i in 0..head.depth.unwrap_or(0) {
                let ada = c.linear(sy, "ada", Some(i))?;
                let p = c.chunks(ada, 3);
                let w = c.p("ffn_norm", Some(i))?;
                let b = c.p("ffn_norm_bias", Some(i))?;
                let n = c.op(Op::LayerNorm { eps: F::new(1e-6) }, &[hx, w, b]);
                let m = c.modulate(n, p[1], p[0]);
                let up = c.linear(m, "ffn_up", Some(i))?;
                let a = c.unary(Unary::Silu, up);
                let down = c.linear(a, "ffn_down", Some(i))?;
                let g = c.mul(down, p[2]);
                hx = c.add(hx, g);
            }
            let fa = c.linear(sy, "final_ada", None)?;
            let p = c.chunks(fa, 2);
            let n = c.op(Op::LayerNorm { eps: F::new(1e-6) }, &[hx]);
            let m = c.modulate(n, p[1], p[0]);
            c.linear(m, "final_out", None)?
        }
        HeadKind::FlowTransformer => {
            let heads = head.heads.unwrap_or(1);
            let hd = head.width.unwrap_or(1) / heads.max(1);
            let xi = c.linear(x, "x_in", None)?;
            let mut hx = c.add(xi, zc);
            let sc = c.unary(Unary::Silu, temb);
            for i in 0..head.depth.unwrap_or(0) {
                let ada = c.linear(sc, "ada", Some(i))?;
                let p = c.chunks(ada, 6);
                let p: Vec<N> = p.into_iter().map(|v| c.per_token(v)).collect();
                // DiT chunk order: shift1 scale1 gate1 shift2 scale2 gate2.
                let n = c.op(Op::LayerNorm { eps: F::new(1e-6) }, &[hx]);
                let m = c.modulate(n, p[1], p[0]);
                let qkv = c.linear(m, "qkv", Some(i))?;
                let qkv = c.chunks(qkv, 3);
                let split = |c: &mut Ctx, v: N| {
                    let r = c.reshape(v, vec![batch.clone(), tokens.clone(), d(heads), d(hd)]);
                    c.permute(r, &[0, 2, 1, 3])
                };
                let q = split(c, qkv[0]);
                let k = split(c, qkv[1]);
                let v = split(c, qkv[2]);
                let attn =
                    Op::Attention { mask: Mask::Full, scale: F::new(1.0 / (hd as f64).sqrt()), keys: tokens.clone() };
                let o = c.op(attn, &[q, k, v]);
                let o = c.permute(o, &[0, 2, 1, 3]);
                let o = c.reshape(o, vec![batch.clone(), tokens.clone(), width.clone()]);
                let o = c.linear(o, "attn_out", Some(i))?;
                let o = c.mul(o, p[2]);
                hx = c.add(hx, o);
                let n = c.op(Op::LayerNorm { eps: F::new(1e-6) }, &[hx]);
                let m = c.modulate(n, p[4], p[3]);
                let up = c.linear(m, "ffn_up", Some(i))?;
                let a = c.unary(Unary::GeluTanh, up);
                let down = c.linear(a, "ffn_down", Some(i))?;
                let g = c.mul(down, p[5]);
                hx = c.add(hx, g);
            }
            let fa = c.linear(sc, "final_ada", None)?;
            let p = c.chunks(fa, 2);
            let (shift, scale) = (c.per_token(p[0]), c.per_token(p[1]));
            let n = c.op(Op::LayerNorm { eps: F::new(1e-6) }, &[hx]);
            let m = c.modulate(n, scale, shift);
            c.linear(m, "final_out", None)?
        }
        _ => unreachable!("flow_step is only lowered for flow heads"),
    };
    let v = if cfg { guide(c, v, spec.sampler.cfg_channels) } else { v };
    let dt = c.input("dt", TensorType::f32(vec![]));
    let step = c.op(Op::Binary(crate::ir::op::Binary::Mul), &[v, dt]);
    let next = c.add(x_img, step);
    c.output("x", next);
    Ok(())
}
