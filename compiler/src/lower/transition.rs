//! Between stages: what the next stage's tokens are made of. One small
//! program per pair of consecutive grids (sizes are fixed there).
//!
//! - residual multi-scale VQ (VAR): codes -> bicubic up to the final grid ->
//!   phi conv -> accumulate into f_hat; the next input is f_hat area-downsampled;
//! - continuous stages (ECAR): upsample the partially denoised map, renoise.
//!
//! Raster schedules need none: the sampled token is the next step's input.
//! Outputs are per image; a guided step doubles its own input.

use super::ctx::{d, Ctx, Res, N};
use crate::ir::op::{Binary, Resample};
use crate::ir::{Dim, Op, Sym, TensorType};
use crate::spec::*;

/// `[B, h*w, C]` tokens -> `[B, C, h, w]` map.
fn to_map(c: &mut Ctx, x: N, b: &Dim, grid: [u64; 2], ch: u64) -> N {
    let r = c.reshape(x, vec![b.clone(), d(grid[0]), d(grid[1]), d(ch)]);
    c.permute(r, &[0, 3, 1, 2])
}

/// `[B, C, h, w]` map -> `[B, h*w, C]` tokens.
fn to_tokens(c: &mut Ctx, m: N, b: &Dim, grid: [u64; 2], ch: u64) -> N {
    let p = c.permute(m, &[0, 2, 3, 1]);
    c.reshape(p, vec![b.clone(), d(grid[0] * grid[1]), d(ch)])
}

fn resize(c: &mut Ctx, m: N, mode: Resample, grid: [u64; 2]) -> N {
    let s = c.shape(m);
    if s[2] == d(grid[0]) && s[3] == d(grid[1]) {
        return m;
    }
    c.op(Op::Resize { mode, h: d(grid[0]), w: d(grid[1]) }, &[m])
}

/// Whether a distilled model's schedule leads with the class position as a
/// stage of its own, which has no code (VAR-DD: one stage more than phi's map).
pub(crate) fn leads_with_class_stage(spec: &ModelSpec, phi: &PhiSpec) -> bool {
    spec.distill.is_some() && phi.map.len() as u64 + 1 == spec.schedule.num_stages()
}

/// The phi conv of scale `k`: `map[k]`, the last one past the map's end.
pub(crate) fn phi_conv(phi: &PhiSpec, k: usize) -> u64 {
    phi.map.get(k).copied().unwrap_or(*phi.map.last().unwrap_or(&0))
}

/// After stage `k` of a residual multi-scale VQ schedule. A distilled model
/// (VAR-DD) hands over continuous code vectors (`codes`) instead of token
/// indices, and its schedule's leading stage is the class position, which has
/// no code: teacher scale `k - 1` then.
pub fn residual_vq(c: &mut Ctx, spec: &ModelSpec, k: usize) -> Res<()> {
    let stages = spec.schedule.stages();
    let b = Dim::sym(Sym::B);
    let ch = spec.tokenizer.token_channels;
    let fin = spec.schedule.final_grid();
    let phi = spec.tokenizer.phi.as_ref().expect("msvq has phi (checked)");
    let distilled = spec.distill.is_some();
    let scale = if leads_with_class_stage(spec, phi) { k.saturating_sub(1) } else { k };
    let grid = stages[k].grid;
    let codes = if distilled {
        c.input("codes", TensorType::f32(vec![b.clone(), d(stages[k].tokens), d(ch)]))
    } else {
        let tokens = c.input("tokens", TensorType::i64(vec![b.clone(), d(stages[k].tokens)]));
        let codebook = c.p("codebook", None)?;
        c.op(Op::Embedding, &[codebook, tokens])
    };
    let map = to_map(c, codes, &b, grid, ch);
    let up = resize(c, map, Resample::Bicubic, fin);
    // phi_k(h) = (1 - mix) h + mix conv3x3(h); the conv of scale k is map[k].
    let conv = phi_conv(phi, scale);
    let w = c.p("phi_conv", Some(conv))?;
    let bias = c.p("phi_conv_bias", Some(conv))?;
    let conv = c.op(Op::Conv2d { stride: 1, pad: 1 }, &[up, w, bias]);
    let keep = c.affine(up, 1.0 - phi.mix, 0.0);
    let mixed = c.affine(conv, phi.mix, 0.0);
    let h = c.add(keep, mixed);
    let f_hat = c.state("f_hat", TensorType::f32(vec![b.clone(), d(ch), d(fin[0]), d(fin[1])]));
    let f_hat = c.add(f_hat, h);
    c.output("f_hat", f_hat);
    // The next stage's input (a distilled model is given all its inputs at once).
    if let (Some(next), false) = (stages.get(k + 1), distilled) {
        let down = resize(c, f_hat, Resample::Area, next.grid);
        let x = to_tokens(c, down, &b, next.grid, ch);
        c.output("x", x);
    }
    Ok(())
}

/// After continuous stage `k`: upsample the partially denoised map to the next
/// grid and renoise it (pyramidal flow: `a * up + b * noise`).
pub fn upsample_renoise(c: &mut Ctx, spec: &ModelSpec, k: usize) {
    let stages = spec.schedule.stages();
    let b = Dim::sym(Sym::B);
    let ch = spec.tokenizer.token_channels;
    let (cur, next) = (&stages[k], &stages[k + 1]);
    let x = c.input("x", TensorType::f32(vec![b.clone(), d(cur.tokens), d(ch)]));
    let map = to_map(c, x, &b, cur.grid, ch);
    let mode = match spec.schedule.upsample {
        Upsample::Nearest => Resample::Nearest,
        Upsample::Bilinear => Resample::Bilinear,
        Upsample::Bicubic => Resample::Bicubic,
    };
    let up = resize(c, map, mode, next.grid);
    let up = to_tokens(c, up, &b, next.grid, ch);
    let out = match spec.schedule.renoise {
        Renoise::None => up,
        Renoise::Pyramid { gamma } => {
            let sigma = next.segment.map_or(0.0, |s| s[0]);
            let (a, bn) = pyramid_coefficients(sigma, gamma);
            let noise = c.input("noise", TensorType::f32(vec![b.clone(), d(next.tokens), d(ch)]));
            let scaled = c.affine(up, a, 0.0);
            let n = c.affine(noise, bn, 0.0);
            c.op(Op::Binary(Binary::Add), &[scaled, n])
        }
    };
    c.output("x", out);
}

/// Pyramidal-flow renoise coefficients at the next stage's start time `sigma`:
/// signal `s = 1 - sigma`, `a = 1 / (sqrt(1 + 1/g) (1 - s) + s)`, `b = a (1 - s) / sqrt(g)`.
pub fn pyramid_coefficients(sigma: f64, gamma: f64) -> (f64, f64) {
    let s = 1.0 - sigma;
    let a = 1.0 / ((1.0 + 1.0 / gamma).sqrt() * (1.0 - s) + s);
    (a, a * (1.0 - s) / gamma.sqrt())
}
