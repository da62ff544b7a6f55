//! The discrete diffusion schedule of a DDPM/DDIM sampler (DiT): a linear beta
//! schedule over `train_steps`, respaced to the stage's step count the way the
//! reference `space_timesteps(T, "N")` does, and the per-step scalars the
//! `solver.step` program reads.

/// The scalars of one respaced step (the `solver.step` inputs), in f64.
#[derive(Clone, Debug, PartialEq)]
pub struct StepCoefficients {
    /// The original (training) timestep fed to the network.
    pub timestep: f64,
    pub sqrt_recip_abar: f64,
    pub sqrt_recipm1_abar: f64,
    pub posterior_coef1: f64,
    pub posterior_coef2: f64,
    /// DDIM (eta 0) in the same form `c1 x0 + c2 x_t`: the reference's
    /// `sqrt(abar_prev) x0 + sqrt(1 - abar_prev) eps` with `eps` re-derived from x0,
    /// `(x_t / sqrt(abar) - x0) / sqrt(1 / abar - 1)`, i.e. `c1 = sqrt(abar_prev) -
    /// sqrt((1 - abar_prev) abar / (1 - abar))`, `c2 = sqrt((1 - abar_prev) / (1 - abar))`.
    /// (The DDPM posterior mean without noise is a different update.)
    pub ddim_coef1: f64,
    pub ddim_coef2: f64,
    /// `log beta_t` (the learned-variance upper bound).
    pub log_beta: f64,
    /// Clipped log posterior variance (the lower bound).
    pub log_posterior_var: f64,
    /// Posterior standard deviation (fixed-variance DDPM).
    pub sigma: f64,
    /// DDPM adds no noise at the last step.
    pub add_noise: bool,
}

/// Timesteps kept when respacing `train_steps` to `steps` in one section, as the
/// reference's `space_timesteps(T, "N")` computes them: `cur += (T - 1) / (N - 1)`
/// accumulated in f64 and Python's `round`, which takes exact halves to the even
/// integer (N = 7 of 1000 keeps 166 and 832 for 166.5 and 832.5, not 167 and 833;
/// tests/it/parity.rs `dit_ddim_sampling_matches_the_official_code`).
pub fn respaced_timesteps(train_steps: u64, steps: u64) -> Vec<u64> {
    if steps <= 1 {
        return vec![0];
    }
    let stride = (train_steps - 1) as f64 / (steps - 1) as f64;
    let mut cur = 0.0f64;
    let mut out = Vec::with_capacity(steps as usize);
    for _ in 0..steps {
        out.push(cur.round_ties_even() as u64);
        cur += stride;
    }
    out.dedup();
    out
}

/// Coefficients of every respaced step, in sampling order (noisiest first).
pub fn schedule(beta: [f64; 2], train_steps: u64, steps: u64) -> Vec<StepCoefficients> {
    let n = train_steps.max(1) as usize;
    let betas: Vec<f64> = (0..n)
        .map(|i| if n == 1 { beta[0] } else { beta[0] + (beta[1] - beta[0]) * i as f64 / (n - 1) as f64 })
        .collect();
    let mut abar_all = Vec::with_capacity(n);
    let mut acc = 1.0;
    for b in &betas {
        acc *= 1.0 - b;
        abar_all.push(acc);
    }
    // Respaced betas from the kept cumulative products.
    let kept = respaced_timesteps(train_steps, steps);
    let mut new_betas = Vec::with_capacity(kept.len());
    let mut last = 1.0;
    for &t in &kept {
        let a = abar_all[t as usize];
        new_betas.push(1.0 - a / last);
        last = a;
    }
    let mut abar = Vec::with_capacity(kept.len());
    let mut acc = 1.0;
    for b in &new_betas {
        acc *= 1.0 - b;
        abar.push(acc);
    }
    let post_var: Vec<f64> = (0..kept.len())
        .map(|i| {
            let prev = if i == 0 { 1.0 } else { abar[i - 1] };
            new_betas[i] * (1.0 - prev) / (1.0 - abar[i])
        })
        .collect();
    let mut out: Vec<StepCoefficients> = (0..kept.len())
        .map(|i| {
            let prev = if i == 0 { 1.0 } else { abar[i - 1] };
            let b = new_betas[i];
            // The reference clips the first posterior variance (0) to the second.
            let clipped = if i == 0 { post_var.get(1).copied().unwrap_or(post_var[0]) } else { post_var[i] };
            StepCoefficients {
                timestep: kept[i] as f64,
                sqrt_recip_abar: (1.0 / abar[i]).sqrt(),
                sqrt_recipm1_abar: (1.0 / abar[i] - 1.0).sqrt(),
                posterior_coef1: b * prev.sqrt() / (1.0 - abar[i]),
                posterior_coef2: (1.0 - prev) * (1.0 - b).sqrt() / (1.0 - abar[i]),
                ddim_coef1: prev.sqrt() - ((1.0 - prev) * abar[i] / (1.0 - abar[i])).sqrt(),
                ddim_coef2: ((1.0 - prev) / (1.0 - abar[i])).sqrt(),
                log_beta: b.ln(),
                log_posterior_var: clipped.ln(),
                sigma: post_var[i].sqrt(),
                add_noise: i > 0,
            }
        })
        .collect();
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn respacing_matches_the_reference_rule() {
        let t = respaced_timesteps(1000, 250);
        assert_eq!(t.len(), 250);
        assert_eq!(&t[..4], &[0, 4, 8, 12]);
        assert_eq!(*t.last().unwrap(), 999);
        assert_eq!(respaced_timesteps(1000, 1000), (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn respacing_rounds_exact_halves_to_even_as_python_does() {
        // 999 / 6 = 166.5: Python's round gives 166, 500 (499.5) and 832 (832.5).
        assert_eq!(respaced_timesteps(1000, 7), vec![0, 166, 333, 500, 666, 832, 999]);
        assert_eq!(respaced_timesteps(1000, 5), vec![0, 250, 500, 749, 999]);
    }

    #[test]
    fn ddim_coefficients_give_the_ddim_update() {
        // x_prev = c1 x0 + c2 x_t must equal sqrt(abar_prev) x0 + sqrt(1 - abar_prev) eps
        // for x_t = sqrt(abar) x0 + sqrt(1 - abar) eps.
        let s = schedule([1e-4, 0.02], 1000, 7);
        let (x0, eps) = (0.7f64, -1.3f64);
        let mut prev_abar = 1.0f64;
        let abars: Vec<f64> = s.iter().rev().map(|c| 1.0 / (c.sqrt_recip_abar * c.sqrt_recip_abar)).collect();
        for (i, c) in s.iter().rev().enumerate() {
            let abar = abars[i];
            let xt = abar.sqrt() * x0 + (1.0 - abar).sqrt() * eps;
            let want = prev_abar.sqrt() * x0 + (1.0 - prev_abar).sqrt() * eps;
            let got = c.ddim_coef1 * x0 + c.ddim_coef2 * xt;
            assert!((got - want).abs() <= 1e-9, "step {i}: {got} vs {want}");
            prev_abar = abar;
        }
    }

    #[test]
    fn full_schedule_posterior_is_the_textbook_one() {
        // Without respacing, coefficients follow DDPM's closed forms.
        let s = schedule([1e-4, 0.02], 1000, 1000);
        let last = &s[0]; // t = 999
        assert_eq!(last.timestep, 999.0);
        assert!(!s[999].add_noise && s[998].add_noise);
        let betas: Vec<f64> = (0..1000).map(|i| 1e-4 + (0.02 - 1e-4) * i as f64 / 999.0).collect();
        let abar: f64 = betas.iter().map(|b| 1.0 - b).product();
        let close = |a: f64, e: f64| (a - e).abs() <= 1e-9 + 1e-9 * e.abs();
        assert!(close(last.sqrt_recip_abar, (1.0 / abar).sqrt()));
        assert!(close(last.log_beta, 0.02f64.ln()));
        // coef1 + coef2 * ... : at t the mean of x0 = x_t is x_t when eps = 0.
        let abar_prev = abar / (1.0 - 0.02);
        assert!(close(last.posterior_coef1, 0.02 * abar_prev.sqrt() / (1.0 - abar)));
    }
}
