//! The solver step of a model whose backbone is itself the denoiser (DiT): the
//! update from the guided model output to the next, less noisy latent.
//! - DDPM/DDIM with learned variance (DiT): `eps` and the variance interpolation
//!   `v` from the output, `x0 = a x - b eps`, posterior mean `c1 x0 + c2 x`,
//!   `log var = f max + (1 - f) min` with `f = (v + 1) / 2`, plus noise (DDPM).
//!   The per-step schedule values are scalar inputs computed by the driver from
//!   the beta schedule (`beta linear(start, end)`, `train_steps`, respacing).
//! - Flow solvers (Euler; Heun evaluates twice): `x + dt * v`.

use super::ctx::{d, Ctx, Res, N};
use crate::ir::op::{Binary, Unary};
use crate::ir::{Dim, Op, Sym, TensorType};
use crate::spec::*;

/// `[B, T, p*p*C]` per-token outputs -> `[B, C, g*p, g*p]` map (DiT's unpatchify).
fn unpatchify(c: &mut Ctx, out: N, b: &Dim, grid: [u64; 2], p: u64, ch: u64) -> N {
    let r = c.reshape(out, vec![b.clone(), d(grid[0]), d(grid[1]), d(p), d(p), d(ch)]);
    let r = c.permute(r, &[0, 5, 1, 3, 2, 4]);
    c.reshape(r, vec![b.clone(), d(ch), d(grid[0] * p), d(grid[1] * p)])
}

/// A denoiser's per-token output `[B, T, p*p*C]` as the `[B, C, H, W]` map the
/// reference implementations return (and the solver reads).
pub fn unpatchify_output(c: &mut Ctx, spec: &ModelSpec, out: N) -> N {
    let s = c.shape(out);
    let b = s[0].clone();
    let grid = spec.schedule.final_grid();
    let p = spec.backbone.patch;
    let ch = s[2].as_const().unwrap_or(0) / (p * p);
    unpatchify(c, out, &b, grid, p, ch)
}

pub fn solver_step(c: &mut Ctx, spec: &ModelSpec) -> Res<()> {
    let b = Dim::sym(Sym::B);
    let grid = spec.schedule.final_grid();
    let p = spec.backbone.patch;
    let lat = spec.tokenizer.token_channels;
    let learned = spec.sampler.learned_variance;
    // Channels of the denoiser's output as its final layer declares them.
    let out_ch =
        c.declared_shape("final_out", None).map_or(if learned { 2 * lat } else { lat }, |s| s[0] / (p * p).max(1));
    // Learned variance needs the second half of the channels.
    let learned = learned && out_ch >= 2 * lat;
    let map = c.input("out", TensorType::f32(vec![b.clone(), d(out_ch), d(grid[0] * p), d(grid[1] * p)]));
    let x = c.input("x", TensorType::f32(vec![b.clone(), d(lat), d(grid[0] * p), d(grid[1] * p)]));
    let eps = c.slice(map, 1, d(0), d(lat));
    let scalar = |c: &mut Ctx, name: &str| c.input(name, TensorType::f32(vec![]));
    let next = match spec.sampler.solver {
        Solver::Ddpm | Solver::Ddim => {
            // x0 = sqrt(1/abar) x - sqrt(1/abar - 1) eps
            let a = scalar(c, "sqrt_recip_abar");
            let bb = scalar(c, "sqrt_recipm1_abar");
            let ax = c.mul(x, a);
            let be = c.mul(eps, bb);
            let x0 = c.op(Op::Binary(Binary::Sub), &[ax, be]);
            let c1 = scalar(c, "posterior_coef1");
            let c2 = scalar(c, "posterior_coef2");
            let m1 = c.mul(x0, c1);
            let m2 = c.mul(x, c2);
            let mean = c.add(m1, m2);
            let noise = c.input("noise", TensorType::f32(vec![b.clone(), d(lat), d(grid[0] * p), d(grid[1] * p)]));
            let sigma = if learned {
                let v = c.slice(map, 1, d(lat), d(lat));
                let frac = c.affine(v, 0.5, 0.5);
                let max_log = scalar(c, "log_beta");
                let min_log = scalar(c, "log_posterior_var");
                let one_minus = c.affine(frac, -1.0, 1.0);
                let hi = c.mul(frac, max_log);
                let lo = c.mul(one_minus, min_log);
                let log_var = c.add(hi, lo);
                let half = c.affine(log_var, 0.5, 0.0);
                c.unary(Unary::Exp, half)
            } else {
                // Fixed variance: the driver passes sigma_t (0 for DDIM's eta 0).
                scalar(c, "sigma")
            };
            let sn = c.mul(sigma, noise);
            c.add(mean, sn)
        }
        Solver::Euler | Solver::Heun => {
            let dt = scalar(c, "dt");
            let step = c.mul(eps, dt);
            c.add(x, step)
        }
    };
    c.output("x", next);
    Ok(())
}
