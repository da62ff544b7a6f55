//! FlowMapTokens: Distilled Decoding's teacher flow map (docs/runtime.md).
//! A token's distribution is a mixture of point masses `p_k` at codes `c_k`;
//! on straight paths `x_t = (1 - t) x_0 + t eps` the posterior weights are
//! `w_k = softmax(log p_k - |x - (1-t) c_k|^2 / (2 t^2))`, the velocity is
//! `(x - m) / t` with `m = sum w_k c_k`. Integrated from `x(1) = eps` with
//! Heun steps uniform in t (the last one an Euler step onto the mean), the
//! token is the code the posterior picks at the last step. The probabilities
//! are the sampler's (temperature, top-k, top-p: [`filtered_weights`]); the
//! integration runs in f64.

use super::generate::filtered_weights;
use super::{f32_of, KResult};
use crate::tensor::HostTensor;

/// The code one noise token `eps` flows to under probabilities `probs`.
pub fn flow_map(probs: &[f64], codes: &[f32], dim: usize, eps: &[f32], steps: usize) -> usize {
    let v = probs.len();
    let posterior = |x: &[f64], t: f64| -> Vec<f64> {
        let mut lw: Vec<f64> = (0..v)
            .map(|k| {
                if probs[k] <= 0.0 {
                    return f64::NEG_INFINITY;
                }
                let d2: f64 = (0..dim)
                    .map(|j| {
                        let diff = x[j] - (1.0 - t) * codes[k * dim + j] as f64;
                        diff * diff
                    })
                    .sum();
                probs[k].ln() - d2 / (2.0 * t * t)
            })
            .collect();
        let m = lw.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut s = 0.0;
        for w in lw.iter_mut() {
            *w = (*w - m).exp();
            s += *w;
        }
        lw.iter_mut().for_each(|w| *w /= s);
        lw
    };
    let velocity = |x: &[f64], t: f64| -> Vec<f64> {
        let w = posterior(x, t);
        (0..dim)
            .map(|j| {
                let m: f64 = (0..v).map(|k| w[k] * codes[k * dim + j] as f64).sum();
                (x[j] - m) / t
            })
            .collect()
    };
    let steps = steps.max(2);
    let h = 1.0 / steps as f64;
    let mut x: Vec<f64> = eps.iter().map(|&e| e as f64).collect();
    for i in 0..steps - 1 {
        let t = 1.0 - i as f64 * h;
        let v1 = velocity(&x, t);
        let xe: Vec<f64> = x.iter().zip(&v1).map(|(a, b)| a - h * b).collect();
        let v2 = velocity(&xe, t - h);
        x = x.iter().zip(v1.iter().zip(&v2)).map(|(a, (b, c))| a - 0.5 * h * (b + c)).collect();
    }
    let w = posterior(&x, h);
    (0..v).max_by(|&a, &b| w[a].total_cmp(&w[b]).then(b.cmp(&a))).unwrap_or(0)
}

/// The sampler's distribution of one row of logits, in f64.
fn probabilities(row: &[f32], temperature: f32, top_k: usize, top_p: f32) -> Vec<f64> {
    let w = filtered_weights(row, temperature, top_k, top_p);
    let total: f64 = w.iter().map(|&x| x as f64).sum();
    w.iter().map(|&x| x as f64 / total).collect()
}

/// The kernel: `logits[..., V]`, `noise[..., D]`, `codes[V, D]` -> `i64[...]`.
pub fn flow_map_tokens(
    logits: &HostTensor,
    noise: &HostTensor,
    codes: &HostTensor,
    temperature: f64,
    top_k: usize,
    top_p: f64,
    steps: usize,
) -> KResult<HostTensor> {
    let (lv, nv, cv) = (f32_of(logits, "logits")?, f32_of(noise, "noise")?, f32_of(codes, "codes")?);
    let (rl, rn) = (logits.shape.len(), noise.shape.len());
    if rl == 0 || rn == 0 || logits.shape[..rl - 1] != noise.shape[..rn - 1] || codes.shape.len() != 2 {
        return Err(format!("logits {:?}, noise {:?}, codes {:?} do not fit", logits.shape, noise.shape, codes.shape));
    }
    let (v, dim) = (logits.shape[rl - 1], noise.shape[rn - 1]);
    if codes.shape != [v, dim] || v == 0 {
        return Err(format!("codes {:?} must be [{v}, {dim}]", codes.shape));
    }
    if !(temperature > 0.0 && temperature.is_finite()) {
        return Err(format!("temperature {temperature} must be positive and finite"));
    }
    let rows = lv.len() / v;
    let mut out = Vec::with_capacity(rows);
    for r in 0..rows {
        let row = &lv[r * v..(r + 1) * v];
        if row.iter().any(|x| x.is_nan()) || row.iter().all(|&x| x == f32::NEG_INFINITY) {
            return Err(format!("the logits of row {r} have no finite maximum"));
        }
        let p = probabilities(row, temperature as f32, top_k, top_p as f32);
        out.push(flow_map(&p, cv, dim, &nv[r * dim..(r + 1) * dim], steps) as i64);
    }
    Ok(HostTensor::i64(logits.shape[..rl - 1].to_vec(), out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SeededRng;

    #[test]
    fn one_point_of_mass_takes_every_noise_token() {
        let codes = [0.5f32, -1.0, 2.0, 0.25, -0.3, 0.1];
        let probs = [0.0, 1.0, 0.0];
        let mut rng = SeededRng::new(1);
        for _ in 0..200 {
            let eps = rng.normal(2);
            assert_eq!(flow_map(&probs, &codes, 2, &eps, 32), 1);
        }
    }

    #[test]
    fn two_points_split_by_their_weights() {
        // Two codes in 1D; the noise mass splits in the ratio of the weights.
        let codes = [-1.0f32, 1.0];
        for p in [0.5, 0.2, 0.8] {
            let probs = [p, 1.0 - p];
            let mut rng = SeededRng::new(7);
            let n = 4000;
            let first = (0..n).filter(|_| flow_map(&probs, &codes, 1, &rng.normal(1), 48) == 0).count();
            let frac = first as f64 / n as f64;
            // Binomial standard deviation at n = 4000 is <= 0.008.
            assert!((frac - p).abs() <= 0.03, "p = {p}: fraction {frac}");
        }
    }

    #[test]
    fn the_map_is_monotone_in_one_dimension() {
        // A flow in 1D preserves order: the split point is the p-quantile of N(0, 1).
        let codes = [-1.0f32, 1.0];
        let probs = [0.3, 0.7];
        let xs: Vec<usize> = (-30..=30).map(|i| flow_map(&probs, &codes, 1, &[i as f32 / 10.0], 48)).collect();
        let switches = xs.windows(2).filter(|w| w[0] != w[1]).count();
        assert_eq!(switches, 1, "{xs:?}");
        assert_eq!(xs[0], 0);
        // Phi^-1(0.3) = -0.5244: the switch lies near it.
        let at = xs.iter().position(|&k| k == 1).unwrap_or(0) as f64 / 10.0 - 3.0;
        assert!((at - -0.5244).abs() <= 0.15, "switch at {at}");
    }

    #[test]
    fn the_kernel_follows_top_k() {
        // Row 0 keeps only its two best tokens (top-k 2): every noise token lands on one of them.
        let logits = HostTensor::f32(vec![1, 4], vec![1.0, 3.0, 2.0, 0.0]);
        let codes = HostTensor::f32(vec![4, 1], vec![-3.0, -1.0, 1.0, 3.0]);
        let mut rng = SeededRng::new(3);
        for _ in 0..50 {
            let noise = HostTensor::f32(vec![1, 1], rng.normal(1));
            let t = flow_map_tokens(&logits, &noise, &codes, 1.0, 2, 1.0, 32).unwrap();
            let k = t.as_i64().unwrap()[0];
            assert!(k == 1 || k == 2, "token {k}");
        }
        let bad = HostTensor::f32(vec![3, 1], vec![0.0; 3]);
        assert!(flow_map_tokens(&logits, &HostTensor::f32(vec![1, 1], vec![0.0]), &bad, 1.0, 0, 1.0, 8).is_err());
    }
}
