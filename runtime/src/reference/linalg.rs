//! Linear algebra: Linear, MatMul (broadcast batch dims), Conv2d, Embedding.
//! Every output element is a sum accumulated sequentially in f32 from 0 over
//! the reduction index in increasing order, then the bias is added. Rows are
//! computed in parallel; each row's arithmetic does not depend on the split,
//! so results are bit-identical for any number of threads.

use super::{broadcast_index, broadcast_shape, f32_of, i64_of, KResult};
use crate::tensor::{numel, HostTensor};
use rayon::prelude::*;

/// `y[..., o] = sum_i x[..., i] * w[o, i] (+ b[o])`: `x[..., in]`, `w[out, in]`, `b[out]`.
pub fn linear(x: &HostTensor, w: &HostTensor, b: Option<&HostTensor>) -> KResult<HostTensor> {
    let xs = f32_of(x, "input")?;
    let ws = f32_of(w, "weight")?;
    if w.shape.len() != 2 {
        return Err(format!("weight must be [out, in], got {:?}", w.shape));
    }
    let (n_out, n_in) = (w.shape[0], w.shape[1]);
    if x.shape.last() != Some(&n_in) {
        return Err(format!("input {:?} does not end in the weight's in-features {n_in}", x.shape));
    }
    let bias = match b {
        Some(b) => {
            if b.shape != [n_out] {
                return Err(format!("bias {:?} must be [{n_out}]", b.shape));
            }
            Some(f32_of(b, "bias")?)
        }
        None => None,
    };
    let rows = numel(&x.shape[..x.shape.len() - 1]);
    let mut shape = x.shape.clone();
    *shape.last_mut().expect("rank >= 1") = n_out;
    let mut y = vec![0f32; rows * n_out];
    if n_out > 0 {
        y.par_chunks_mut(n_out).enumerate().for_each(|(r, yr)| {
            let xr = &xs[r * n_in..(r + 1) * n_in];
            for (o, yo) in yr.iter_mut().enumerate() {
                let wr = &ws[o * n_in..(o + 1) * n_in];
                let mut acc = 0f32;
                for i in 0..n_in {
                    acc += xr[i] * wr[i];
                }
                *yo = match bias {
                    Some(bs) => acc + bs[o],
                    None => acc,
                };
            }
        });
    }
    Ok(HostTensor::f32(shape, y))
}

/// `a[..., m, k] @ b[..., k, n]` with numpy broadcasting of the batch dims.
/// Loops in i-k-j order: each `out[i, j]` still sums over `k` in increasing order.
pub fn matmul(a: &HostTensor, b: &HostTensor) -> KResult<HostTensor> {
    let av = f32_of(a, "lhs")?;
    let bv = f32_of(b, "rhs")?;
    let (ra, rb) = (a.shape.len(), b.shape.len());
    if ra < 2 || rb < 2 {
        return Err(format!("matmul operands must have rank >= 2, got {:?} and {:?}", a.shape, b.shape));
    }
    let (m, k) = (a.shape[ra - 2], a.shape[ra - 1]);
    let (k2, n) = (b.shape[rb - 2], b.shape[rb - 1]);
    if k != k2 {
        return Err(format!("inner dimensions differ: {:?} @ {:?}", a.shape, b.shape));
    }
    let (a_batch, b_batch) = (&a.shape[..ra - 2], &b.shape[..rb - 2]);
    let batch = broadcast_shape(a_batch, b_batch)?;
    // Matrix index into a and b for each output batch index.
    let a_mat = broadcast_index(a_batch, &batch);
    let b_mat = broadcast_index(b_batch, &batch);
    let mut shape = batch.clone();
    shape.push(m);
    shape.push(n);
    let mut out = vec![0f32; numel(&shape)];
    if n > 0 {
        // One chunk per output row (all batches).
        out.par_chunks_mut(n).enumerate().for_each(|(r, row)| {
            let (bi, i) = (r / m, r % m);
            let am = &av[a_mat[bi] * m * k..(a_mat[bi] + 1) * m * k];
            let bm = &bv[b_mat[bi] * k * n..(b_mat[bi] + 1) * k * n];
            for kk in 0..k {
                let aik = am[i * k + kk];
                let brow = &bm[kk * n..(kk + 1) * n];
                for j in 0..n {
                    row[j] += aik * brow[j];
                }
            }
        });
    }
    Ok(HostTensor::f32(shape, out))
}

/// 2-D convolution (cross-correlation, as PyTorch), zero padding, square
/// kernel, groups 1: `x[N, C, H, W] * w[O, C, k, k] (+ b[O])` ->
/// `[N, O, (H + 2p - k) / s + 1, (W + 2p - k) / s + 1]`. Each output sums
/// over `c`, then `ky`, then `kx` (taps in the padding contribute nothing),
/// then adds the bias.
/// A convolution's sizes `[N, C, H, W, O, k]` from `x[N, C, H, W]` and
/// `w[O, C, k, k]`, checked (every conv2d kernel checks them here).
pub(crate) fn conv2d_shapes(x: &[usize], w: &[usize], stride: usize, pad: usize) -> KResult<[usize; 6]> {
    if x.len() != 4 || w.len() != 4 {
        return Err(format!("conv2d takes x[N,C,H,W] and w[O,C,k,k], got {x:?} and {w:?}"));
    }
    let (nb, c, h, wd) = (x[0], x[1], x[2], x[3]);
    let (o, c2, k, k2) = (w[0], w[1], w[2], w[3]);
    if c != c2 || k != k2 {
        return Err(format!("weight {w:?} does not fit input {x:?}"));
    }
    if stride == 0 {
        return Err("stride must be positive".into());
    }
    if h + 2 * pad < k || wd + 2 * pad < k {
        return Err(format!("kernel {k} larger than the padded input {x:?} (pad {pad})"));
    }
    Ok([nb, c, h, wd, o, k])
}

pub fn conv2d(
    x: &HostTensor,
    w: &HostTensor,
    b: Option<&HostTensor>,
    stride: usize,
    pad: usize,
) -> KResult<HostTensor> {
    let xs = f32_of(x, "input")?;
    let ws = f32_of(w, "weight")?;
    let [nb, c, h, wd, o, k] = conv2d_shapes(&x.shape, &w.shape, stride, pad)?;
    let bias = match b {
        Some(b) => {
            if b.shape != [o] {
                return Err(format!("bias {:?} must be [{o}]", b.shape));
            }
            Some(f32_of(b, "bias")?)
        }
        None => None,
    };
    let oh = (h + 2 * pad - k) / stride + 1;
    let ow = (wd + 2 * pad - k) / stride + 1;
    let mut out = vec![0f32; nb * o * oh * ow];
    if oh * ow > 0 {
        out.par_chunks_mut(oh * ow).enumerate().for_each(|(plane, dst)| {
            let (ni, oi) = (plane / o, plane % o);
            for ci in 0..c {
                let src = &xs[(ni * c + ci) * h * wd..(ni * c + ci + 1) * h * wd];
                for ky in 0..k {
                    for kx in 0..k {
                        let wv = ws[((oi * c + ci) * k + ky) * k + kx];
                        for oy in 0..oh {
                            let iy = (oy * stride + ky) as isize - pad as isize;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            for ox in 0..ow {
                                let ix = (ox * stride + kx) as isize - pad as isize;
                                if ix < 0 || ix >= wd as isize {
                                    continue;
                                }
                                dst[oy * ow + ox] += src[iy as usize * wd + ix as usize] * wv;
                            }
                        }
                    }
                }
            }
            if let Some(bs) = bias {
                for v in dst.iter_mut() {
                    *v += bs[oi];
                }
            }
        });
    }
    Ok(HostTensor::f32(vec![nb, o, oh, ow], out))
}

/// Rows of `table[V, D]` at `idx[...]`: `[..., D]`. An index outside `0..V`
/// is an error.
pub fn embedding(table: &HostTensor, idx: &HostTensor) -> KResult<HostTensor> {
    let tv = f32_of(table, "table")?;
    let iv = i64_of(idx, "indices")?;
    if table.shape.len() != 2 {
        return Err(format!("table must be [V, D], got {:?}", table.shape));
    }
    let (v, d) = (table.shape[0], table.shape[1]);
    let mut out = Vec::with_capacity(iv.len() * d);
    for (pos, &i) in iv.iter().enumerate() {
        if i < 0 || i as u64 >= v as u64 {
            return Err(format!("index {i} (at flat position {pos}) is out of range for a table of {v} rows"));
        }
        let r = i as usize;
        out.extend_from_slice(&tv[r * d..(r + 1) * d]);
    }
    let mut shape = idx.shape.clone();
    shape.push(d);
    Ok(HostTensor::f32(shape, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::testutil::*;

    #[test]
    fn linear_hand_computed_with_bias() {
        // x [2, 3], w [2, 3], b [2]
        let x = t(&[2, 3], &[1., 2., 3., -1., 0., 2.]);
        let w = t(&[2, 3], &[1., 0., -1., 0.5, 0.5, 0.5]);
        let b = t(&[2], &[10., -1.]);
        let y = linear(&x, &w, Some(&b)).unwrap();
        assert_eq!(y.shape, vec![2, 2]);
        // row0: 1-3 = -2 +10 = 8; 0.5*(6) = 3 -1 = 2. row1: -1-2 = -3+10 = 7; 0.5*1 = 0.5-1 = -0.5
        assert_close(f(&y), &[8., 2., 7., -0.5], 0.0, 0.0);
        let y = linear(&x, &w, None).unwrap();
        assert_close(f(&y), &[-2., 3., -3., 0.5], 0.0, 0.0);
    }

    #[test]
    fn linear_keeps_leading_dims_and_checks_shapes() {
        let x = t(&[2, 1, 2], &[1., 2., 3., 4.]);
        let w = t(&[3, 2], &[1., 0., 0., 1., 1., 1.]);
        let y = linear(&x, &w, None).unwrap();
        assert_eq!(y.shape, vec![2, 1, 3]);
        assert_close(f(&y), &[1., 2., 3., 3., 4., 7.], 0.0, 0.0);
        assert!(linear(&t(&[2, 3], &[0.; 6]), &w, None).is_err());
        assert!(linear(&x, &w, Some(&t(&[2], &[0., 0.]))).is_err());
    }

    #[test]
    fn matmul_broadcasts_batch_dims() {
        // a [2, 1, 2, 3], b [3, 3, 2] -> [2, 3, 2, 2]
        let av = seq(12, 1);
        let bv = seq(18, 2);
        let a = t(&[2, 1, 2, 3], &av);
        let b = t(&[3, 3, 2], &bv);
        let y = matmul(&a, &b).unwrap();
        assert_eq!(y.shape, vec![2, 3, 2, 2]);
        let mut expected = vec![];
        for p in 0..2 {
            for q in 0..3 {
                for i in 0..2 {
                    for j in 0..2 {
                        let mut s = 0f64;
                        for kk in 0..3 {
                            s += av[p * 6 + i * 3 + kk] as f64 * bv[q * 6 + kk * 2 + j] as f64;
                        }
                        expected.push(s as f32);
                    }
                }
            }
        }
        assert_close(f(&y), &expected, 1e-6, 1e-5);
        // A hand case: [[1,2],[3,4]] @ [[5,6],[7,8]] = [[19,22],[43,50]].
        let y = matmul(&t(&[2, 2], &[1., 2., 3., 4.]), &t(&[2, 2], &[5., 6., 7., 8.])).unwrap();
        assert_close(f(&y), &[19., 22., 43., 50.], 0.0, 0.0);
        assert!(matmul(&t(&[2, 3], &[0.; 6]), &t(&[2, 3], &[0.; 6])).is_err());
        assert!(matmul(&t(&[2, 2, 2], &[0.; 8]), &t(&[3, 2, 2], &[0.; 12])).is_err());
    }

    /// The direct 7-loop definition of a convolution with zero padding.
    #[allow(clippy::too_many_arguments)]
    fn conv_direct(x: &[f32], xs: [usize; 4], w: &[f32], ws: [usize; 4], b: &[f32], s: usize, p: usize) -> Vec<f32> {
        let [n, c, h, wd] = xs;
        let [o, _, k, _] = ws;
        let oh = (h + 2 * p - k) / s + 1;
        let ow = (wd + 2 * p - k) / s + 1;
        let mut out = vec![];
        for ni in 0..n {
            for oi in 0..o {
                for y in 0..oh {
                    for xx in 0..ow {
                        let mut acc = b[oi] as f64;
                        for ci in 0..c {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let iy = (y * s + ky) as i64 - p as i64;
                                    let ix = (xx * s + kx) as i64 - p as i64;
                                    let v = if iy < 0 || ix < 0 || iy >= h as i64 || ix >= wd as i64 {
                                        0.0
                                    } else {
                                        x[((ni * c + ci) * h + iy as usize) * wd + ix as usize]
                                    };
                                    acc += v as f64 * w[((oi * c + ci) * k + ky) * k + kx] as f64;
                                }
                            }
                        }
                        out.push(acc as f32);
                    }
                }
            }
        }
        out
    }

    #[test]
    fn conv2d_stride2_pad1_matches_direct_formula() {
        let (xs, ws) = ([2, 3, 5, 6], [4, 3, 3, 3]);
        let xv = seq(numel(&xs), 3);
        let wv = seq(numel(&ws), 4);
        let bv = vec![0.5, -0.25, 0.0, 1.0];
        let y = conv2d(&t(&xs, &xv), &t(&ws, &wv), Some(&t(&[4], &bv)), 2, 1).unwrap();
        assert_eq!(y.shape, vec![2, 4, 3, 3]);
        assert_close(f(&y), &conv_direct(&xv, xs, &wv, ws, &bv, 2, 1), 1e-5, 1e-5);
        // stride 1, no pad, no bias
        let y = conv2d(&t(&xs, &xv), &t(&ws, &wv), None, 1, 0).unwrap();
        assert_eq!(y.shape, vec![2, 4, 3, 4]);
        assert_close(f(&y), &conv_direct(&xv, xs, &wv, ws, &[0.0; 4], 1, 0), 1e-5, 1e-5);
    }

    #[test]
    fn conv2d_hand_case() {
        // 1 channel 3x3 input, 3x3 kernel of ones, pad 1, stride 2 -> 2x2 sums of 2x2 corners.
        let x = t(&[1, 1, 3, 3], &[1., 2., 3., 4., 5., 6., 7., 8., 9.]);
        let w = t(&[1, 1, 3, 3], &[1.; 9]);
        let y = conv2d(&x, &w, None, 2, 1).unwrap();
        assert_eq!(y.shape, vec![1, 1, 2, 2]);
        assert_close(f(&y), &[12., 16., 24., 28.], 0.0, 0.0);
        assert!(conv2d(&x, &t(&[1, 2, 3, 3], &[0.; 18]), None, 1, 0).is_err());
        assert!(conv2d(&x, &t(&[1, 1, 5, 5], &[0.; 25]), None, 1, 0).is_err());
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let x = t(&[3, 17, 33], &seq(3 * 17 * 33, 30));
        let w = t(&[29, 33], &seq(29 * 33, 31));
        let b = t(&[29], &seq(29, 32));
        let m = t(&[2, 1, 33, 5], &seq(2 * 33 * 5, 33));
        let img = t(&[2, 3, 9, 7], &seq(2 * 3 * 9 * 7, 34));
        let k = t(&[4, 3, 3, 3], &seq(4 * 27, 35));
        let run = || {
            (
                linear(&x, &w, Some(&b)).unwrap(),
                matmul(&x, &m).unwrap(),
                conv2d(&img, &k, Some(&t(&[4], &[0.1, 0.2, 0.3, 0.4])), 2, 1).unwrap(),
            )
        };
        let pool = |n| rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap();
        let one = pool(1).install(run);
        let four = pool(4).install(run);
        // Bitwise equality (PartialEq on f32 vectors; no NaN here).
        assert!(one == four);
    }

    #[test]
    fn embedding_gathers_rows_and_rejects_bad_indices() {
        let table = t(&[3, 2], &[0., 1., 10., 11., 20., 21.]);
        let y = embedding(&table, &ti(&[2, 2], &[2, 0, 1, 1])).unwrap();
        assert_eq!(y.shape, vec![2, 2, 2]);
        assert_close(f(&y), &[20., 21., 0., 1., 10., 11., 10., 11.], 0.0, 0.0);
        let e = embedding(&table, &ti(&[2], &[1, 3])).unwrap_err();
        assert!(e.contains("out of range"), "{e}");
        assert!(embedding(&table, &ti(&[1], &[-1])).is_err());
        assert!(embedding(&table, &t(&[1], &[0.])).is_err());
    }
}
