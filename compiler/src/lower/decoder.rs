//! The tokenizer decoder: tokens (or latents) of the final grid -> image. One
//! architecture covers the four tokenizers (VQGAN/LDM-style conv decoders):
//! `post_quant_conv`, `conv_in`, a middle of resnet/attention/resnet, then
//! levels from the coarsest (`len(ch_mult) - 1`) to the finest (0), each with
//! `res_blocks + 1` resnet blocks, optional attention, and a nearest x2
//! upsample + conv between levels; GroupNorm, SiLU, `conv_out`. Which blocks
//! have attention or shortcut convs, and how attention's q/k/v are stored
//! (one fused conv, three 1x1 convs or linears) follow from the declared tensors.
//!
//! Copy indices: resnet blocks `[level, block]`; the middle is level
//! `len(ch_mult)` with blocks 0 and 1 and attention `[len(ch_mult), 0]`;
//! upsample convs `[level]` (the level they lead into: `l` for the upsample
//! after level `l`).

use super::ctx::{d, Ctx, Res, N};
use crate::ir::op::{Binary, Mask, Unary};
use crate::ir::{Dim, Op, Sym, TensorType, F};
use crate::spec::*;

const GROUPS: u32 = 32;
const EPS: f64 = 1e-6;

fn group_norm(c: &mut Ctx, x: N, role: &str, index: &[u64]) -> Res<N> {
    let w = c.p_at(role, index)?;
    let b = c.p_at(&format!("{role}_bias"), index)?;
    Ok(c.op(Op::GroupNorm { groups: GROUPS, eps: F::new(EPS) }, &[x, w, b]))
}

fn resnet(c: &mut Ctx, x: N, index: &[u64]) -> Res<N> {
    let h = group_norm(c, x, "dec_norm1", index)?;
    let h = c.unary(Unary::Silu, h);
    let h = c.conv(h, "dec_conv1", index, 1)?;
    let h = group_norm(c, h, "dec_norm2", index)?;
    let h = c.unary(Unary::Silu, h);
    let h = c.conv(h, "dec_conv2", index, 1)?;
    let skip = if c.has_at("dec_shortcut", index) { c.conv(x, "dec_shortcut", index, 1)? } else { x };
    Ok(c.add(skip, h))
}

/// Single-head self-attention over the pixels of `[B, C, H, W]`.
fn attention(c: &mut Ctx, x: N, index: &[u64]) -> Res<N> {
    let s = c.shape(x);
    let (b, ch, hw) = (s[0].clone(), s[1].clone(), s[2].mul(&s[3]));
    let h = group_norm(c, x, "dec_attn_norm", index)?;
    // As tokens [B, HW, C] so 1x1 convs and linears are the same map.
    let tok = c.reshape(h, vec![b.clone(), ch.clone(), hw.clone()]);
    let tok = c.permute(tok, &[0, 2, 1]);
    let proj = |c: &mut Ctx, x: N, role: &str| -> Res<N> {
        let w = c.p_at(role, index)?;
        let ws = c.shape(w);
        let w2 = c.reshape(w, vec![ws[0].clone(), ws[1].clone()]);
        Ok(match c.opt_at(&format!("{role}_bias"), index) {
            Some(bias) => c.op(Op::Linear, &[x, w2, bias]),
            None => c.op(Op::Linear, &[x, w2]),
        })
    };
    let (q, k, v) = if c.has_at("dec_attn_qkv", index) {
        let qkv = proj(c, tok, "dec_attn_qkv")?;
        let p = c.chunks(qkv, 3);
        (p[0], p[1], p[2])
    } else {
        (proj(c, tok, "dec_attn_q")?, proj(c, tok, "dec_attn_k")?, proj(c, tok, "dec_attn_v")?)
    };
    let chn = ch.as_const().unwrap_or(1) as f64;
    let attn = Op::Attention { mask: Mask::Full, scale: F::new(1.0 / chn.sqrt()), keys: hw.clone() };
    let o = c.op(attn, &[q, k, v]);
    let o = proj(c, o, "dec_attn_out")?;
    let o = c.permute(o, &[0, 2, 1]);
    let o = c.reshape(o, s.clone());
    Ok(c.add(x, o))
}

/// The whole decode program: `decode`.
pub fn decode(c: &mut Ctx, spec: &ModelSpec) -> Res<()> {
    let tk = &spec.tokenizer;
    let b = Dim::sym(Sym::B);
    let grid = spec.schedule.final_grid();
    let (gh, gw) = (grid[0] * spec.backbone.patch, grid[1] * spec.backbone.patch);
    let ch = tk.token_channels;
    // What the generator hands over: code vectors of the final grid (VQ), the
    // accumulated f_hat (multi-scale VQ), or the latent map (VAE).
    let z = match tk.kind {
        // Code vectors of the final grid: a teacher's tokens looked up first
        // (`codes.from_tokens`), a distilled model's continuous codes as they
        // are (LlamaGen-DD decodes them without snapping to the codebook).
        TokenizerKind::Vq => {
            let codes = c.input("codes", TensorType::f32(vec![b.clone(), d(gh * gw), d(ch)]));
            let m = c.reshape(codes, vec![b.clone(), d(gh), d(gw), d(ch)]);
            c.permute(m, &[0, 3, 1, 2])
        }
        TokenizerKind::Msvq => c.input("f_hat", TensorType::f32(vec![b.clone(), d(ch), d(gh), d(gw)])),
        TokenizerKind::Vae => {
            let lat = c.input("latent", TensorType::f32(vec![b.clone(), d(ch), d(gh), d(gw)]));
            c.affine(lat, 1.0 / tk.latent_scale, 0.0)
        }
    };
    let mut h = c.conv(z, "post_quant_conv", &[], 1)?;
    h = c.conv(h, "dec_conv_in", &[], 1)?;
    let levels = tk.ch_mult.len() as u64;
    h = resnet(c, h, &[levels, 0])?;
    if c.has_at("dec_attn_norm", &[levels, 0]) {
        h = attention(c, h, &[levels, 0])?;
    }
    h = resnet(c, h, &[levels, 1])?;
    let mut size = [gh, gw];
    for l in (0..levels).rev() {
        for j in 0..=tk.res_blocks {
            h = resnet(c, h, &[l, j])?;
            if c.has_at("dec_attn_norm", &[l, j]) {
                h = attention(c, h, &[l, j])?;
            }
        }
        if l > 0 {
            size = [size[0] * 2, size[1] * 2];
            h = c.op(Op::Resize { mode: crate::ir::op::Resample::Nearest, h: d(size[0]), w: d(size[1]) }, &[h]);
            h = c.conv(h, "dec_upsample", &[l], 1)?;
        }
    }
    h = group_norm(c, h, "dec_norm_out", &[])?;
    h = c.unary(Unary::Silu, h);
    h = c.conv(h, "dec_conv_out", &[], 1)?;
    // [-1, 1] -> [0, 1], clamped.
    let lo = c.op(Op::Const { value: F::new(-1.0) }, &[]);
    h = c.op(Op::Binary(Binary::Max), &[h, lo]);
    h = c.op(Op::ClampMax { max: F::new(1.0) }, &[h]);
    let img = c.affine(h, 0.5, 0.5);
    c.output("image", img);
    Ok(())
}
