//! Small programs between the model's own: Heun's average, growing a token
//! sequence, splitting one into stages, token rows to a latent map, code
//! vectors from token indices, Distilled Decoding's re-noising and final
//! sequence. They are programs like any other, so plans name them as entries
//! and values stay on the device of whichever backend runs the plan.

use super::ctx::{d, Ctx, Res, N};
use crate::ir::{Dim, Op, Sym, TensorType, F};
use crate::spec::*;

fn b() -> Dim {
    Dim::sym(Sym::B)
}

/// `heun.mean`: `(a + b) / 2` over values of type `ty` (Heun's rule is the
/// average of the start and two Euler steps).
pub fn heun_mean(c: &mut Ctx, ty: TensorType) {
    let x = c.input("a", ty.clone());
    let y = c.input("b", ty);
    let s = c.add(x, y);
    let m = c.affine(s, 0.5, 0.0);
    c.output("x", m);
}

/// `append.NAME`: `all[B, P, ...] ++ new[B, T, ...]` along the sequence.
pub fn append(c: &mut Ctx, dtype: crate::ir::DType, inner: &[u64]) {
    let ty = |len: Dim| {
        let mut s = vec![b(), len];
        s.extend(inner.iter().map(|&v| d(v)));
        TensorType { dtype, shape: s }
    };
    let all = c.input("all", ty(Dim::sym(Sym::P)));
    let new = c.input("new", ty(Dim::sym(Sym::T)));
    let cat = c.op(Op::Concat { axis: 1 }, &[all, new]);
    c.output("all", cat);
}

/// `split.NAME`: a whole sequence `[B, L, ...]` into the stages `first..`,
/// outputs `stage.K.NAME`.
pub fn split(c: &mut Ctx, spec: &ModelSpec, name: &str, dtype: crate::ir::DType, inner: &[u64], first: usize) {
    let stages = spec.schedule.stages();
    let len: u64 = stages[first..].iter().map(|s| s.tokens).sum();
    let mut shape = vec![b(), d(len)];
    shape.extend(inner.iter().map(|&v| d(v)));
    let x = c.input(name, TensorType { dtype, shape });
    let mut at = 0;
    for (k, s) in stages.iter().enumerate().skip(first) {
        let part = c.slice(x, 1, d(at), d(s.tokens));
        c.output(&format!("stage.{k}.{name}"), part);
        at += s.tokens;
    }
}

/// `latent.from_tokens`: token rows `[B, h*w, C]` of the final grid as the
/// latent map `[B, C, h, w]` the decoder reads.
pub fn latent_from_tokens(c: &mut Ctx, spec: &ModelSpec) {
    let g = spec.schedule.final_grid();
    let ch = spec.tokenizer.token_channels;
    let x = c.input("x", TensorType::f32(vec![b(), d(g[0] * g[1]), d(ch)]));
    let m = c.reshape(x, vec![b(), d(g[0]), d(g[1]), d(ch)]);
    let m = c.permute(m, &[0, 3, 1, 2]);
    c.output("latent", m);
}

/// The codebook rows tokens stand for (L2-normalised where the tokenizer is).
fn codebook(c: &mut Ctx, spec: &ModelSpec) -> Res<N> {
    let book = c.p("codebook", None)?;
    Ok(if spec.tokenizer.l2_norm { c.op(Op::L2Normalize { eps: F::new(1e-12) }, &[book]) } else { book })
}

/// `codes.from_tokens`: token indices `[B, L]` of the final grid -> their
/// code vectors `[B, L, D]`.
pub fn codes_from_tokens(c: &mut Ctx, spec: &ModelSpec) -> Res<()> {
    let g = spec.schedule.final_grid();
    let tokens = c.input("tokens", TensorType::i64(vec![b(), d(g[0] * g[1])]));
    let book = codebook(c, spec)?;
    let codes = c.op(Op::Embedding, &[book, tokens]);
    c.output("codes", codes);
    Ok(())
}

/// `dd.renoise.I`: the first `data` positions of `x [B, L, D]`, then `noise`
/// (DD's re-noising with the same noise).
pub fn dd_renoise(c: &mut Ctx, len: u64, dim: u64, data: u64) {
    let ty = TensorType::f32(vec![b(), d(len), d(dim)]);
    let x = c.input("x", ty.clone());
    let noise = c.input("noise", ty);
    let head = c.slice(x, 1, d(0), d(data));
    let tail = c.slice(noise, 1, d(data), d(len - data));
    let y = c.op(Op::Concat { axis: 1 }, &[head, tail]);
    c.output("x", y);
}

/// `dd.drop_start`: a DD forward's `logits` and `x_out` without the start
/// positions (the reference returns the token positions only).
pub fn dd_drop_start(c: &mut Ctx, logits: TensorType, x_out: TensorType, start: u64) {
    for (name, ty) in [("logits", logits), ("x_out", x_out)] {
        let len = ty.shape[1].as_const().expect("a forward has constant positions");
        let v = c.input(name, ty);
        let s = c.slice(v, 1, d(start), d(len - start));
        c.output(name, s);
    }
}

/// `dd.final.I`: Distilled Decoding's sequence after one forward. Of `L`
/// positions, those before `data` keep the step's input `x_in` (the data it
/// was given), those before `greedy` take the codebook row of the logits'
/// argmax, the rest the continuous head's `x_out`; the forward's outputs
/// carry `start` leading positions first, which are dropped.
#[allow(clippy::too_many_arguments)]
pub fn dd_final(
    c: &mut Ctx,
    spec: &ModelSpec,
    len: u64,
    dim: u64,
    vocab: u64,
    start: u64,
    data: u64,
    greedy: u64,
) -> Res<()> {
    let x_in = c.input("x_in", TensorType::f32(vec![b(), d(len), d(dim)]));
    let logits = c.input("logits", TensorType::f32(vec![b(), d(len + start), d(vocab)]));
    let x_out = c.input("x_out", TensorType::f32(vec![b(), d(len + start), d(dim)]));
    let book = codebook(c, spec)?;
    let cuts = {
        let mut v = vec![0, data.min(len), greedy.min(len).max(data.min(len)), len];
        v.dedup();
        v
    };
    let mut parts = Vec::new();
    for w in cuts.windows(2) {
        let (lo, hi) = (w[0], w[1]);
        if lo == hi {
            continue;
        }
        let part = if lo < data {
            c.slice(x_in, 1, d(lo), d(hi - lo))
        } else if lo < greedy {
            let l = c.slice(logits, 1, d(start + lo), d(hi - lo));
            let idx = c.op(Op::ArgMax, &[l]);
            c.op(Op::Embedding, &[book, idx])
        } else {
            c.slice(x_out, 1, d(start + lo), d(hi - lo))
        };
        parts.push(part);
    }
    let y = if parts.len() == 1 { parts[0] } else { c.op(Op::Concat { axis: 1 }, &parts) };
    c.output("x", y);
    Ok(())
}

/// `forward.guided` output from a denoiser's `[2B, T, p*p, C]`: DiT's
/// `forward_with_cfg` guides the first `channels` channels of both halves to
/// `u + s (c - u)` and keeps the other channels as each half computed them.
pub fn guide_both_halves(c: &mut Ctx, out: N, channels: u64) -> N {
    let s = c.shape(out);
    let half = s[0].div_c(2).expect("a guided batch is even");
    let per = s[3].as_const().expect("constant channels");
    let ch = channels.min(per);
    let eps = c.slice(out, 3, d(0), d(ch));
    let cond = c.slice(eps, 0, d(0), half.clone());
    let uncond = c.slice(eps, 0, half.clone(), half);
    let scale = c.input("cfg_scale", TensorType::f32(vec![]));
    let g = c.op(Op::Guide { channels: None }, &[cond, uncond, scale]);
    let both = c.op(Op::Concat { axis: 0 }, &[g, g]);
    if ch == per {
        return both;
    }
    let rest = c.slice(out, 3, d(ch), d(per - ch));
    c.op(Op::Concat { axis: 3 }, &[both, rest])
}
