//! Normalisations and reductions over the last axis (GroupNorm over groups of
//! channels): LayerNorm, RmsNorm, GroupNorm, L2Normalize, Softmax, ArgMax.
//! Sums run sequentially in f32 in index order.

use super::{f32_of, KResult};
use crate::tensor::HostTensor;

/// The length of the last axis and the number of rows before it.
fn rows_of(x: &HostTensor, op: &str) -> KResult<(usize, usize)> {
    let d = *x.shape.last().ok_or_else(|| format!("{op} of a scalar"))?;
    let rows = x.shape[..x.shape.len() - 1].iter().product();
    Ok((rows, d))
}

/// A per-channel weight of length `d`, if given.
fn weight<'a>(w: Option<&'a HostTensor>, d: usize, what: &str) -> KResult<Option<&'a [f32]>> {
    match w {
        None => Ok(None),
        Some(w) => {
            if w.shape != [d] {
                return Err(format!("{what} {:?} must be [{d}]", w.shape));
            }
            Ok(Some(f32_of(w, what)?))
        }
    }
}

/// Mean and biased variance of a slice (two passes).
fn mean_var(v: &[f32]) -> (f32, f32) {
    let n = v.len() as f32;
    let mut sum = 0f32;
    for &x in v {
        sum += x;
    }
    let mean = sum / n;
    let mut sq = 0f32;
    for &x in v {
        sq += (x - mean) * (x - mean);
    }
    (mean, sq / n)
}

/// LayerNorm over the last axis: `(x - mean) / sqrt(var + eps) * w + b`,
/// biased variance, `w` and `b` optional (1 and 0).
pub fn layer_norm(x: &HostTensor, w: Option<&HostTensor>, b: Option<&HostTensor>, eps: f32) -> KResult<HostTensor> {
    let xs = f32_of(x, "input")?;
    let (rows, d) = rows_of(x, "layer_norm")?;
    let w = weight(w, d, "weight")?;
    let b = weight(b, d, "bias")?;
    let mut out = Vec::with_capacity(xs.len());
    for r in 0..rows {
        let row = &xs[r * d..(r + 1) * d];
        let (mean, var) = mean_var(row);
        let inv = 1.0 / (var + eps).sqrt();
        for (i, &v) in row.iter().enumerate() {
            let mut y = (v - mean) * inv;
            if let Some(w) = w {
                y *= w[i];
            }
            if let Some(b) = b {
                y += b[i];
            }
            out.push(y);
        }
    }
    Ok(HostTensor::f32(x.shape.clone(), out))
}

/// RMSNorm over the last axis, in f32: `x * rsqrt(mean(x^2) + eps) * w`.
pub fn rms_norm(x: &HostTensor, w: &HostTensor, eps: f32) -> KResult<HostTensor> {
    let xs = f32_of(x, "input")?;
    let (rows, d) = rows_of(x, "rms_norm")?;
    let w = weight(Some(w), d, "weight")?.expect("given");
    let mut out = Vec::with_capacity(xs.len());
    for r in 0..rows {
        let row = &xs[r * d..(r + 1) * d];
        let mut sq = 0f32;
        for &v in row {
            sq += v * v;
        }
        let inv = 1.0 / (sq / d as f32 + eps).sqrt();
        for (i, &v) in row.iter().enumerate() {
            out.push(v * inv * w[i]);
        }
    }
    Ok(HostTensor::f32(x.shape.clone(), out))
}

/// GroupNorm of `x[N, C, H, W]`: statistics over each group of `C / groups`
/// channels and all positions, biased variance, eps inside the square root,
/// then the per-channel affine `w[C]`, `b[C]`.
pub fn group_norm(x: &HostTensor, w: &HostTensor, b: &HostTensor, groups: usize, eps: f32) -> KResult<HostTensor> {
    let xs = f32_of(x, "input")?;
    if x.shape.len() != 4 {
        return Err(format!("group_norm takes [N, C, H, W], got {:?}", x.shape));
    }
    let (n, c, hw) = (x.shape[0], x.shape[1], x.shape[2] * x.shape[3]);
    if groups == 0 || c % groups != 0 {
        return Err(format!("{c} channels cannot form {groups} groups"));
    }
    let w = weight(Some(w), c, "weight")?.expect("given");
    let b = weight(Some(b), c, "bias")?.expect("given");
    let per = c / groups;
    let mut out = vec![0f32; xs.len()];
    for ni in 0..n {
        for g in 0..groups {
            // Channels of a group are contiguous in [N, C, H, W].
            let start = (ni * c + g * per) * hw;
            let block = &xs[start..start + per * hw];
            let (mean, var) = mean_var(block);
            let inv = 1.0 / (var + eps).sqrt();
            for (j, &v) in block.iter().enumerate() {
                let ch = g * per + j / hw;
                out[start + j] = (v - mean) * inv * w[ch] + b[ch];
            }
        }
    }
    Ok(HostTensor::f32(x.shape.clone(), out))
}

/// `x / max(||x||_2, eps)` over the last axis (`F.normalize`).
pub fn l2_normalize(x: &HostTensor, eps: f32) -> KResult<HostTensor> {
    let xs = f32_of(x, "input")?;
    let (rows, d) = rows_of(x, "l2_normalize")?;
    let mut out = Vec::with_capacity(xs.len());
    for r in 0..rows {
        let row = &xs[r * d..(r + 1) * d];
        let mut sq = 0f32;
        for &v in row {
            sq += v * v;
        }
        let norm = sq.sqrt();
        let denom = if norm > eps { norm } else { eps };
        out.extend(row.iter().map(|&v| v / denom));
    }
    Ok(HostTensor::f32(x.shape.clone(), out))
}

/// Softmax of one row: `exp(x - max) / sum`. A row of only `-inf` gives NaN
/// (as PyTorch).
pub fn softmax_row(row: &[f32], out: &mut Vec<f32>) {
    let mut m = f32::NEG_INFINITY;
    for &v in row {
        if v > m || v.is_nan() {
            m = v;
        }
    }
    let start = out.len();
    let mut sum = 0f32;
    for &v in row {
        let e = (v - m).exp();
        sum += e;
        out.push(e);
    }
    for e in &mut out[start..] {
        *e /= sum;
    }
}

/// Softmax over the last axis.
pub fn softmax(x: &HostTensor) -> KResult<HostTensor> {
    let xs = f32_of(x, "input")?;
    let (rows, d) = rows_of(x, "softmax")?;
    let mut out = Vec::with_capacity(xs.len());
    for r in 0..rows {
        softmax_row(&xs[r * d..(r + 1) * d], &mut out);
    }
    Ok(HostTensor::f32(x.shape.clone(), out))
}

/// Index of the first largest value of a row (NaN never wins; a row of only
/// NaN gives 0).
pub fn argmax_row(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] || (row[best].is_nan() && !v.is_nan()) {
            best = i;
        }
    }
    best
}

/// ArgMax over the last axis: `i64[...]`, the first index on ties.
pub fn argmax(x: &HostTensor) -> KResult<HostTensor> {
    let xs = f32_of(x, "input")?;
    let (rows, d) = rows_of(x, "argmax")?;
    if d == 0 {
        return Err("argmax over an empty axis".into());
    }
    let out = (0..rows).map(|r| argmax_row(&xs[r * d..(r + 1) * d]) as i64).collect();
    Ok(HostTensor::i64(x.shape[..x.shape.len() - 1].to_vec(), out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::testutil::*;

    #[test]
    fn layer_norm_gives_mean_zero_variance_one() {
        let xv = seq(2 * 8, 7);
        let x = t(&[2, 8], &xv);
        let y = layer_norm(&x, None, None, 1e-6).unwrap();
        for r in 0..2 {
            let row = &f(&y)[r * 8..(r + 1) * 8];
            let mean: f64 = row.iter().map(|&v| v as f64).sum::<f64>() / 8.0;
            let var: f64 = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / 8.0;
            assert!(mean.abs() < 1e-6, "mean {mean}");
            assert!((var - 1.0).abs() < 1e-4, "var {var}");
        }
    }

    #[test]
    fn layer_norm_hand_case_with_affine() {
        // x = [1, 2, 3, 4]: mean 2.5, biased var 1.25.
        let x = t(&[1, 4], &[1., 2., 3., 4.]);
        let w = t(&[4], &[1., 2., 1., 1.]);
        let b = t(&[4], &[0., 0., 1., -1.]);
        let s = (1.25f64 + 1e-5).sqrt();
        let z: Vec<f64> = [-1.5, -0.5, 0.5, 1.5].iter().map(|v| v / s).collect();
        let y = layer_norm(&x, Some(&w), Some(&b), 1e-5).unwrap();
        assert_close(f(&y), &[z[0] as f32, (2.0 * z[1]) as f32, (z[2] + 1.0) as f32, (z[3] - 1.0) as f32], 1e-6, 1e-6);
        // weight only
        let y = layer_norm(&x, Some(&w), None, 1e-5).unwrap();
        assert_close(f(&y), &[z[0] as f32, (2.0 * z[1]) as f32, z[2] as f32, z[3] as f32], 1e-6, 1e-6);
        assert!(layer_norm(&x, Some(&t(&[3], &[1.; 3])), None, 1e-5).is_err());
    }

    #[test]
    fn rms_norm_hand_case() {
        // x = [3, 4]: mean square 12.5.
        let x = t(&[1, 2], &[3., 4.]);
        let w = t(&[2], &[1., 0.5]);
        let r = 1.0 / (12.5f64 + 1e-5).sqrt();
        let y = rms_norm(&x, &w, 1e-5).unwrap();
        assert_close(f(&y), &[(3.0 * r) as f32, (2.0 * r) as f32], 1e-7, 1e-6);
    }

    #[test]
    fn group_norm_normalises_each_group_and_applies_channel_affine() {
        // N 2, C 4, 2 groups of 2 channels, 3x1 spatial.
        let xv = seq(2 * 4 * 3, 11);
        let x = t(&[2, 4, 3, 1], &xv);
        let w = t(&[4], &[1., 2., 0.5, -1.]);
        let b = t(&[4], &[0., 1., -1., 0.5]);
        let y = group_norm(&x, &w, &b, 2, 1e-5).unwrap();
        let (wv, bv) = ([1., 2., 0.5, -1.], [0., 1., -1., 0.5]);
        let mut expected = vec![0f32; xv.len()];
        for n in 0..2 {
            for g in 0..2 {
                let idx: Vec<usize> =
                    (0..2).flat_map(|cc| (0..3).map(move |s| ((n * 4 + g * 2 + cc) * 3) + s)).collect();
                let mean: f64 = idx.iter().map(|&i| xv[i] as f64).sum::<f64>() / 6.0;
                let var: f64 = idx.iter().map(|&i| (xv[i] as f64 - mean).powi(2)).sum::<f64>() / 6.0;
                for &i in &idx {
                    let ch = (i / 3) % 4;
                    expected[i] = (((xv[i] as f64 - mean) / (var + 1e-5).sqrt()) * wv[ch] + bv[ch]) as f32;
                }
            }
        }
        assert_close(f(&y), &expected, 1e-5, 1e-5);
        assert!(group_norm(&x, &w, &b, 3, 1e-5).is_err());
    }

    #[test]
    fn l2_normalize_unit_norm_and_eps() {
        let x = t(&[2, 2], &[3., 4., 0., 0.]);
        let y = l2_normalize(&x, 1e-12).unwrap();
        assert_close(f(&y), &[0.6, 0.8, 0., 0.], 1e-7, 0.0);
        // a tiny vector is divided by eps, not by its norm
        let y = l2_normalize(&t(&[1, 2], &[3e-3, 4e-3]), 0.1).unwrap();
        assert_close(f(&y), &[0.03, 0.04], 1e-8, 1e-6);
    }

    #[test]
    fn softmax_sums_to_one_and_matches_formula() {
        let x = t(&[2, 3], &[1., 2., 3., 1000., 1000., 0.]);
        let y = softmax(&x).unwrap();
        let e: Vec<f64> = [1f64, 2., 3.].iter().map(|v| v.exp()).collect();
        let s: f64 = e.iter().sum();
        assert_close(&f(&y)[..3], &[(e[0] / s) as f32, (e[1] / s) as f32, (e[2] / s) as f32], 1e-7, 1e-6);
        // no overflow: the max is subtracted
        assert_close(&f(&y)[3..], &[0.5, 0.5, 0.0], 1e-7, 0.0);
        for r in 0..2 {
            let sum: f32 = f(&y)[r * 3..(r + 1) * 3].iter().sum();
            assert!((sum - 1.0).abs() < 1e-6);
        }
        // masked entries
        let y = softmax(&t(&[3], &[0., f32::NEG_INFINITY, 0.])).unwrap();
        assert_close(f(&y), &[0.5, 0., 0.5], 0.0, 0.0);
    }

    #[test]
    fn argmax_first_on_ties() {
        let x = t(&[3, 3], &[1., 3., 3., -1., -2., -1., 0., f32::NAN, 2.]);
        let y = argmax(&x).unwrap();
        assert_eq!(y.shape, vec![3]);
        assert_eq!(y.as_i64().unwrap(), &[1, 0, 2]);
    }
}
