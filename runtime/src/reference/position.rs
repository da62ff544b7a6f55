//! Positions and time: Sinusoid (DiT/MAR timestep embedding) and Rope
//! (LlamaGen's interleaved rotary embedding).

use super::{f32_of, KResult};
use crate::tensor::HostTensor;

/// The timestep embedding of `t[N]`: `[N, dim]` with `cos(t * f_k)` in the
/// first half and `sin(t * f_k)` in the second, `f_k = exp(-ln(max_period) *
/// k / half)` for `k < half = dim / 2`; an odd `dim` ends in a zero column.
/// Computed in f32 in the same order as the reference
/// (`exp((-ln(max_period) * k) / half)`, then `t * f`).
pub fn sinusoid(t: &HostTensor, dim: usize, max_period: f64) -> KResult<HostTensor> {
    let ts = f32_of(t, "t")?;
    if t.shape.len() != 1 {
        return Err(format!("sinusoid takes t[N], got {:?}", t.shape));
    }
    let freqs = frequencies(dim, max_period);
    let mut out = Vec::with_capacity(ts.len() * dim);
    for &tv in ts {
        let args: Vec<f32> = freqs.iter().map(|&fk| tv * fk).collect();
        out.extend(args.iter().map(|a| a.cos()));
        out.extend(args.iter().map(|a| a.sin()));
        if dim % 2 == 1 {
            out.push(0.0);
        }
    }
    Ok(HostTensor::f32(vec![ts.len(), dim], out))
}

/// The `dim / 2` frequencies of [`sinusoid`], in f32 as it computes them
/// (the wgpu backend uploads these, so its arguments are the same bits).
pub(crate) fn frequencies(dim: usize, max_period: f64) -> Vec<f32> {
    let half = dim / 2;
    let neg_log = -(max_period.ln()) as f32;
    (0..half).map(|k| (neg_log * k as f32 / half as f32).exp()).collect()
}

/// Rotate the interleaved pairs `(x[.., t, 2i], x[.., t, 2i+1])` of
/// `x[..., T, d]` by the angle whose cosine and sine are `cos[t, i]`,
/// `sin[t, i]`: `(x0 cos - x1 sin, x1 cos + x0 sin)`.
pub fn rope(x: &HostTensor, cos: &HostTensor, sin: &HostTensor) -> KResult<HostTensor> {
    let xs = f32_of(x, "input")?;
    let cs = f32_of(cos, "cos")?;
    let ss = f32_of(sin, "sin")?;
    let r = x.shape.len();
    if r < 2 || !x.shape[r - 1].is_multiple_of(2) {
        return Err(format!("rope input must be [..., T, d] with d even, got {:?}", x.shape));
    }
    let (t, d) = (x.shape[r - 2], x.shape[r - 1]);
    let half = d / 2;
    if cos.shape != [t, half] || sin.shape != [t, half] {
        return Err(format!("cos/sin must be [{t}, {half}], got {:?} and {:?}", cos.shape, sin.shape));
    }
    let mut out = vec![0f32; xs.len()];
    let blocks = xs.len().checked_div(t * d).unwrap_or(0);
    for blk in 0..blocks {
        for ti in 0..t {
            let base = (blk * t + ti) * d;
            for i in 0..half {
                let (x0, x1) = (xs[base + 2 * i], xs[base + 2 * i + 1]);
                let (c, s) = (cs[ti * half + i], ss[ti * half + i]);
                out[base + 2 * i] = x0 * c - x1 * s;
                out[base + 2 * i + 1] = x1 * c + x0 * s;
            }
        }
    }
    Ok(HostTensor::f32(x.shape.clone(), out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::testutil::*;

    #[test]
    fn sinusoid_cos_then_sin_halves() {
        // dim 4, max_period 10000: freqs 1 and 10000^(-1/2) = 0.01.
        let y = sinusoid(&t(&[2], &[0., 3.]), 4, 10000.0).unwrap();
        assert_eq!(y.shape, vec![2, 4]);
        let e = [1.0f64, 1.0, 0.0, 0.0, 3f64.cos(), 0.03f64.cos(), 3f64.sin(), 0.03f64.sin()];
        assert_close(f(&y), &e.map(|v| v as f32), 1e-6, 1e-6);
        // a large timestep, as DiT uses (t up to 999), against the f64 formula
        let y = sinusoid(&t(&[1], &[999.]), 8, 10000.0).unwrap();
        let e: Vec<f32> = (0..8)
            .map(|j| {
                let k = (j % 4) as f64;
                let a = 999.0 * (-(10000f64.ln()) * k / 4.0).exp();
                (if j < 4 { a.cos() } else { a.sin() }) as f32
            })
            .collect();
        assert_close(f(&y), &e, 2e-4, 0.0);
    }

    #[test]
    fn sinusoid_odd_dim_has_a_zero_column() {
        let y = sinusoid(&t(&[1], &[2.]), 3, 10000.0).unwrap();
        assert_close(f(&y), &[2f32.cos(), 2f32.sin(), 0.0], 1e-7, 0.0);
    }

    #[test]
    fn rope_rotates_a_known_vector() {
        // x [1, 2, 4]: two positions, two pairs each.
        let x = t(&[1, 2, 4], &[1., 0., 0., 2., 3., 4., 1., 1.]);
        let a = std::f32::consts::FRAC_PI_2;
        let b = std::f32::consts::FRAC_PI_4;
        // position 0: pair 0 by 90 degrees, pair 1 by 0; position 1: pair 0 by 180, pair 1 by 45.
        let cos = t(&[2, 2], &[a.cos(), 1., -1., b.cos()]);
        let sin = t(&[2, 2], &[a.sin(), 0., 0., b.sin()]);
        let y = rope(&x, &cos, &sin).unwrap();
        let r2 = std::f32::consts::SQRT_2;
        // (1,0) by 90 -> (0,1); (0,2) by 0 -> (0,2); (3,4) by 180 -> (-3,-4); (1,1) by 45 -> (0, sqrt2)
        assert_close(f(&y), &[0., 1., 0., 2., -3., -4., 0., r2], 1e-6, 1e-6);
        // zero cos and sin (LlamaGen's class-token position) zeroes the vector
        let y = rope(&t(&[1, 2], &[5., 6.]), &t(&[1, 1], &[0.]), &t(&[1, 1], &[0.])).unwrap();
        assert_eq!(f(&y), &[0., 0.]);
        assert!(rope(&x, &t(&[2, 1], &[0.; 2]), &t(&[2, 1], &[0.; 2])).is_err());
    }

    #[test]
    fn rope_keeps_norms_over_heads() {
        // x [2 heads, 3 positions, 2]; rotation preserves each pair's length.
        let xv = seq(12, 9);
        let ang = [0.3f32, 1.1, -2.0];
        let cos = t(&[3, 1], &ang.map(|a| a.cos()));
        let sin = t(&[3, 1], &ang.map(|a| a.sin()));
        let y = rope(&t(&[2, 3, 2], &xv), &cos, &sin).unwrap();
        for p in 0..6 {
            let (a, b) = (xv[2 * p], xv[2 * p + 1]);
            let (c, d) = (f(&y)[2 * p], f(&y)[2 * p + 1]);
            assert!(((a * a + b * b) - (c * c + d * d)).abs() < 1e-6);
            let th = ang[p % 3];
            assert_close(&[c, d], &[a * th.cos() - b * th.sin(), b * th.cos() + a * th.sin()], 1e-6, 1e-6);
        }
    }
}
