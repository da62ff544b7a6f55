//! Generation: Guide (classifier-free guidance), SampleTokens (temperature,
//! top-k, top-p, inverse-CDF sampling from one uniform per token) and
//! NearestCode (vector quantisation).

use super::norm::argmax_row;
use super::{f32_of, KResult};
use crate::tensor::HostTensor;

/// `u + s (c - u)` on the first `channels` entries of the last axis (all of
/// them when `None`), `c` elsewhere. `c` and `u` have the same shape, `s` is
/// a scalar.
pub fn guide(c: &HostTensor, u: &HostTensor, s: &HostTensor, channels: Option<usize>) -> KResult<HostTensor> {
    let cv = f32_of(c, "cond")?;
    let uv = f32_of(u, "uncond")?;
    let sv = f32_of(s, "scale")?;
    if c.shape != u.shape {
        return Err(format!("cond {:?} and uncond {:?} differ in shape", c.shape, u.shape));
    }
    if !s.shape.is_empty() {
        return Err(format!("the guidance scale must be a scalar, got {:?}", s.shape));
    }
    let scale = sv[0];
    let last = match (c.shape.last(), channels) {
        (_, None) => None,
        (Some(&d), Some(ch)) if ch <= d => Some((d, ch)),
        (d, Some(ch)) => return Err(format!("guidance on {ch} channels of a last axis of {d:?}")),
    };
    let out = cv
        .iter()
        .zip(uv)
        .enumerate()
        .map(|(i, (&cc, &uu))| match last {
            Some((d, ch)) if i % d >= ch => cc,
            _ => uu + scale * (cc - uu),
        })
        .collect();
    Ok(HostTensor::f32(c.shape.clone(), out))
}

/// Which tokens of one row of logits survive top-k and top-p, and their
/// unnormalised weights `exp(l / temperature - max)` (0 for dropped tokens).
///
/// - temperature: logits are divided by it;
/// - top-k (`0` = off, values above the vocabulary mean all): keep logits
///   `>=` the k-th largest (ties at the threshold are all kept);
/// - top-p (`>= 1` = off): over the probabilities of the tokens top-k kept,
///   sorted descending (ties by index), keep the smallest prefix whose
///   cumulative sum reaches `top_p`; the largest is always kept.
pub fn filtered_weights(row: &[f32], temperature: f32, top_k: usize, top_p: f32) -> Vec<f32> {
    let v = row.len();
    let l: Vec<f32> = row.iter().map(|&x| x / temperature).collect();
    let mut keep = vec![true; v];
    if top_k > 0 && top_k < v {
        let mut sorted = l.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let kth = sorted[top_k - 1];
        for (k, &x) in keep.iter_mut().zip(&l) {
            *k = x >= kth;
        }
    }
    let weights = |keep: &[bool]| -> Vec<f32> {
        let mut m = f32::NEG_INFINITY;
        for (&x, &k) in l.iter().zip(keep) {
            if k && x > m {
                m = x;
            }
        }
        l.iter().zip(keep).map(|(&x, &k)| if k { (x - m).exp() } else { 0.0 }).collect()
    };
    if top_p < 1.0 {
        let w = weights(&keep);
        let mut total = 0f32;
        for &x in &w {
            total += x;
        }
        let mut order: Vec<usize> = (0..v).filter(|&i| keep[i]).collect();
        // Descending probability; equal probabilities by index (a stable sort).
        order.sort_by(|&a, &b| w[b].total_cmp(&w[a]));
        let mut cum = 0f32;
        let mut new_keep = vec![false; v];
        for &i in &order {
            new_keep[i] = true;
            cum += w[i] / total;
            if cum >= top_p {
                break;
            }
        }
        keep = new_keep;
    }
    weights(&keep)
}

/// One sampled index: the first kept token whose cumulative probability (in
/// index order) exceeds `u`, or the last kept token when rounding leaves the
/// total below `u`.
pub fn sample_row(row: &[f32], u: f32, temperature: f32, top_k: usize, top_p: f32) -> usize {
    if top_k == 1 {
        return argmax_row(row);
    }
    let w = filtered_weights(row, temperature, top_k, top_p);
    let mut total = 0f32;
    for &x in &w {
        total += x;
    }
    let mut cum = 0f32;
    let mut last = 0;
    for (i, &x) in w.iter().enumerate() {
        if x > 0.0 {
            cum += x / total;
            last = i;
            if u < cum {
                return i;
            }
        }
    }
    last
}

/// Sample token indices from `logits[..., V]` with one uniform number in
/// `[0, 1]` per token (`uniform[...]`): temperature, top-k, top-p, then
/// inverse-CDF sampling over the kept tokens in index order. Deterministic in
/// its inputs; `top_k == 1` is greedy (the first maximum).
pub fn sample_tokens(
    logits: &HostTensor,
    uniform: &HostTensor,
    temperature: f64,
    top_k: usize,
    top_p: f64,
) -> KResult<HostTensor> {
    let lv = f32_of(logits, "logits")?;
    let uv = f32_of(uniform, "uniform")?;
    let r = logits.shape.len();
    if r == 0 || uniform.shape[..] != logits.shape[..r - 1] {
        return Err(format!(
            "uniform {:?} must be the logits' {:?} without the last axis",
            uniform.shape, logits.shape
        ));
    }
    let v = logits.shape[r - 1];
    if v == 0 {
        return Err("sampling from an empty vocabulary".into());
    }
    if !(temperature > 0.0 && temperature.is_finite()) {
        return Err(format!("temperature {temperature} must be positive and finite"));
    }
    if top_p.is_nan() || top_p <= 0.0 {
        return Err(format!("top_p {top_p} must be above 0"));
    }
    let mut out = Vec::with_capacity(uv.len());
    for (row_i, &u) in uv.iter().enumerate() {
        let row = &lv[row_i * v..(row_i + 1) * v];
        if !(0.0..=1.0).contains(&u) {
            return Err(format!("uniform value {u} at row {row_i} is outside [0, 1]"));
        }
        if row.iter().any(|x| x.is_nan()) {
            return Err(format!("the logits of row {row_i} contain NaN"));
        }
        if row.iter().all(|&x| x == f32::NEG_INFINITY) {
            return Err(format!("every logit of row {row_i} is -inf"));
        }
        out.push(sample_row(row, u, temperature as f32, top_k, top_p as f32) as i64);
    }
    Ok(HostTensor::i64(uniform.shape.clone(), out))
}

/// Index of the nearest row of `codes[V, D]` to each `x[..., D]` by squared
/// L2 distance `sum_d (x_d - c_d)^2`; the first on ties.
pub fn nearest_code(x: &HostTensor, codes: &HostTensor) -> KResult<HostTensor> {
    let xv = f32_of(x, "input")?;
    let cv = f32_of(codes, "codes")?;
    let r = x.shape.len();
    if codes.shape.len() != 2 || r == 0 || x.shape[r - 1] != codes.shape[1] {
        return Err(format!("codes {:?} must be [V, D] with D the last axis of {:?}", codes.shape, x.shape));
    }
    let (v, d) = (codes.shape[0], codes.shape[1]);
    if v == 0 {
        return Err("an empty codebook".into());
    }
    let rows: usize = x.shape[..r - 1].iter().product();
    let mut out = Vec::with_capacity(rows);
    for ri in 0..rows {
        let xr = &xv[ri * d..(ri + 1) * d];
        let mut best = 0usize;
        let mut best_dist = f32::INFINITY;
        for k in 0..v {
            let cr = &cv[k * d..(k + 1) * d];
            let mut dist = 0f32;
            for j in 0..d {
                let diff = xr[j] - cr[j];
                dist += diff * diff;
            }
            if dist < best_dist {
                best_dist = dist;
                best = k;
            }
        }
        out.push(best as i64);
    }
    Ok(HostTensor::i64(x.shape[..r - 1].to_vec(), out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::testutil::*;

    #[test]
    fn guide_all_and_first_channels() {
        let c = t(&[2, 3], &[1., 2., 3., 4., 5., 6.]);
        let u = t(&[2, 3], &[0., 0., 1., 1., 1., 1.]);
        let s = HostTensor::scalar(2.0);
        let y = guide(&c, &u, &s, None).unwrap();
        // u + 2 (c - u) = 2c - u
        assert_close(f(&y), &[2., 4., 5., 7., 9., 11.], 0.0, 0.0);
        let y = guide(&c, &u, &s, Some(2)).unwrap();
        assert_close(f(&y), &[2., 4., 3., 7., 9., 6.], 0.0, 0.0);
        let y = guide(&c, &u, &s, Some(0)).unwrap();
        assert_close(f(&y), f(&c), 0.0, 0.0);
        assert!(guide(&c, &u, &s, Some(4)).is_err());
        assert!(guide(&c, &t(&[3, 2], &[0.; 6]), &s, None).is_err());
        assert!(guide(&c, &u, &t(&[1], &[1.]), None).is_err());
    }

    /// Logits whose softmax is exactly `p` (up to rounding): ln p.
    fn logits_of(p: &[f64]) -> Vec<f32> {
        p.iter().map(|&x| x.ln() as f32).collect()
    }

    fn kept(w: &[f32]) -> Vec<usize> {
        (0..w.len()).filter(|&i| w[i] > 0.0).collect()
    }

    #[test]
    fn top_k_keeps_the_k_largest_and_ties_at_the_threshold() {
        let l = [0.5f32, 3., 1., 2., 2.];
        assert_eq!(kept(&filtered_weights(&l, 1.0, 2, 1.0)), vec![1, 3, 4]); // 2nd largest is 2, tied
        assert_eq!(kept(&filtered_weights(&l, 1.0, 4, 1.0)), vec![1, 2, 3, 4]); // 4th largest is 1
        assert_eq!(kept(&filtered_weights(&l, 1.0, 0, 1.0)), vec![0, 1, 2, 3, 4]);
        assert_eq!(kept(&filtered_weights(&l, 1.0, 99, 1.0)), vec![0, 1, 2, 3, 4]);
        // weights are exp(l - max)
        let w = filtered_weights(&l, 1.0, 0, 1.0);
        assert_close(&w, &l.map(|x| (x - 3.0).exp()), 1e-7, 1e-6);
    }

    #[test]
    fn top_p_keeps_the_smallest_prefix_reaching_p() {
        // p = [0.1, 0.4, 0.2, 0.3]; sorted: 0.4 (1), 0.3 (3), 0.2 (2), 0.1 (0).
        let l = logits_of(&[0.1, 0.4, 0.2, 0.3]);
        assert_eq!(kept(&filtered_weights(&l, 1.0, 0, 0.5)), vec![1, 3]); // 0.4 < 0.5 <= 0.7
        assert_eq!(kept(&filtered_weights(&l, 1.0, 0, 0.75)), vec![1, 2, 3]); // 0.7 < 0.75 <= 0.9
        assert_eq!(kept(&filtered_weights(&l, 1.0, 0, 0.95)), vec![0, 1, 2, 3]);
        // always keep the max, even when it alone exceeds p or p is tiny
        assert_eq!(kept(&filtered_weights(&l, 1.0, 0, 0.01)), vec![1]);
        assert_eq!(kept(&filtered_weights(&l, 1.0, 0, 0.3)), vec![1]);
        // top-p applies to the probabilities after top-k: top-2 renormalises 0.4, 0.3 to 4/7, 3/7;
        // p 0.6 needs both (4/7 = 0.571 < 0.6).
        assert_eq!(kept(&filtered_weights(&l, 1.0, 2, 0.6)), vec![1, 3]);
        assert_eq!(kept(&filtered_weights(&l, 1.0, 2, 0.5)), vec![1]);
    }

    #[test]
    fn temperature_divides_logits() {
        let l = [0f32, 1., 2.];
        let w = filtered_weights(&l, 0.5, 0, 1.0);
        assert_close(&w, &[(-4f32).exp(), (-2f32).exp(), 1.], 1e-7, 1e-6);
    }

    #[test]
    fn inverse_cdf_sampling_over_kept_tokens() {
        // p = [0.1, 0.4, 0.2, 0.3]: cdf in index order 0.1, 0.5, 0.7, 1.0.
        let l = logits_of(&[0.1, 0.4, 0.2, 0.3]);
        let draw = |u: f32, k: usize, p: f32| sample_row(&l, u, 1.0, k, p);
        assert_eq!(draw(0.0, 0, 1.0), 0);
        assert_eq!(draw(0.09, 0, 1.0), 0);
        assert_eq!(draw(0.11, 0, 1.0), 1);
        assert_eq!(draw(0.49, 0, 1.0), 1);
        assert_eq!(draw(0.51, 0, 1.0), 2);
        assert_eq!(draw(0.69, 0, 1.0), 2);
        assert_eq!(draw(0.71, 0, 1.0), 3);
        assert_eq!(draw(1.0, 0, 1.0), 3);
        // top-p 0.5 keeps {1, 3} with probabilities 4/7, 3/7 in index order.
        assert_eq!(draw(0.56, 0, 0.5), 1);
        assert_eq!(draw(0.58, 0, 0.5), 3);
        assert_eq!(draw(0.0, 0, 0.5), 1);
        assert_eq!(draw(1.0, 0, 0.5), 3);
    }

    #[test]
    fn top_k_one_is_argmax_with_first_max_on_ties() {
        let mut logits = seq(5 * 7, 21);
        // row 4: a tie for the max at 2 and 5
        logits[4 * 7 + 2] = 5.0;
        logits[4 * 7 + 5] = 5.0;
        let x = t(&[5, 7], &logits);
        let u = t(&[5], &[0.0, 0.3, 0.6, 0.99, 0.999]);
        let y = sample_tokens(&x, &u, 1.0, 1, 1.0).unwrap();
        let am = super::super::norm::argmax(&x).unwrap();
        assert_eq!(y.as_i64(), am.as_i64());
        assert_eq!(y.as_i64().unwrap()[4], 2);
        // a single kept token regardless of the uniform, also via top-p
        let y2 = sample_tokens(&x, &u, 1.0, 0, 1e-6).unwrap();
        assert_eq!(&y2.as_i64().unwrap()[..4], &am.as_i64().unwrap()[..4]);
    }

    #[test]
    fn sample_tokens_shapes_and_errors() {
        let x = t(&[2, 1, 3], &[0., 10., 0., 10., 0., 0.]);
        let y = sample_tokens(&x, &t(&[2, 1], &[0.5, 0.5]), 1.0, 0, 1.0).unwrap();
        assert_eq!(y.shape, vec![2, 1]);
        assert_eq!(y.as_i64().unwrap(), &[1, 0]);
        assert!(sample_tokens(&x, &t(&[2], &[0.5, 0.5]), 1.0, 0, 1.0).is_err());
        assert!(sample_tokens(&x, &t(&[2, 1], &[0.5, 1.5]), 1.0, 0, 1.0).is_err());
        assert!(sample_tokens(&x, &t(&[2, 1], &[0.5, 0.5]), 0.0, 0, 1.0).is_err());
        let nan = t(&[1, 2], &[f32::NAN, 0.]);
        assert!(sample_tokens(&nan, &t(&[1], &[0.5]), 1.0, 0, 1.0).is_err());
    }

    #[test]
    fn sampling_frequencies_follow_the_distribution() {
        // Uniforms on a fine grid reproduce the probabilities.
        let l = logits_of(&[0.1, 0.4, 0.2, 0.3]);
        let n = 1000;
        let mut counts = [0usize; 4];
        for i in 0..n {
            counts[sample_row(&l, (i as f32 + 0.5) / n as f32, 1.0, 0, 1.0)] += 1;
        }
        assert_eq!(counts, [100, 400, 200, 300]);
    }

    #[test]
    fn nearest_code_first_on_ties() {
        let codes = t(&[3, 2], &[0., 0., 1., 1., 2., 0.]);
        // (0.9, 0.8) -> code 1; (1, 0) is equidistant from codes 0 and 2 (1) and code 1 (1): first, 0.
        let x = t(&[1, 3, 2], &[0.9, 0.8, 1., 0., 1.9, -0.1]);
        let y = nearest_code(&x, &codes).unwrap();
        assert_eq!(y.shape, vec![1, 3]);
        assert_eq!(y.as_i64().unwrap(), &[1, 0, 2]);
        assert!(nearest_code(&x, &t(&[2, 3], &[0.; 6])).is_err());
    }
}
