//! Layout: Reshape, Permute, Slice, WriteSlice, Concat (any dtype) and Resize of
//! `[N, C, H, W]` maps, which follows `torch.nn.functional.interpolate`
//! (`align_corners=False`; `area` is `adaptive_avg_pool2d`).

use super::{f32_of, strides, KResult};
use crate::tensor::{numel, Data, HostTensor};
use ecarc_compiler::ir::op::Resample;

/// A tensor with the elements of `x` at the flat indices `idx`.
fn gather(x: &HostTensor, shape: Vec<usize>, idx: &[usize]) -> HostTensor {
    match &x.data {
        Data::F32(v) => HostTensor::f32(shape, idx.iter().map(|&i| v[i]).collect()),
        Data::I64(v) => HostTensor::i64(shape, idx.iter().map(|&i| v[i]).collect()),
    }
}

/// The same elements under another shape of the same size.
pub fn reshape(x: &HostTensor, shape: &[usize]) -> KResult<HostTensor> {
    if numel(shape) != x.numel() {
        return Err(format!("cannot reshape {:?} to {shape:?}", x.shape));
    }
    Ok(HostTensor { shape: shape.to_vec(), data: x.data.clone() })
}

/// Axes permuted: output axis `i` is input axis `perm[i]`.
pub fn permute(x: &HostTensor, perm: &[usize]) -> KResult<HostTensor> {
    let r = x.shape.len();
    let mut seen = perm.to_vec();
    seen.sort_unstable();
    if perm.len() != r || seen.iter().enumerate().any(|(i, &p)| i != p) {
        return Err(format!("{perm:?} is not a permutation of {r} axes"));
    }
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape[p]).collect();
    let in_strides = strides(&x.shape);
    let total = numel(&shape);
    let mut idx = Vec::with_capacity(total);
    for flat in 0..total {
        let mut rem = flat;
        let mut src = 0;
        for axis in (0..r).rev() {
            let i = rem % shape[axis];
            rem /= shape[axis];
            src += i * in_strides[perm[axis]];
        }
        idx.push(src);
    }
    Ok(gather(x, shape, &idx))
}

/// `len` elements from `start` along `axis`.
pub fn slice(x: &HostTensor, axis: usize, start: usize, len: usize) -> KResult<HostTensor> {
    if axis >= x.shape.len() {
        return Err(format!("axis {axis} of a rank-{} tensor", x.shape.len()));
    }
    let n = x.shape[axis];
    if start.checked_add(len).is_none_or(|end| end > n) {
        return Err(format!("slice {start}..{start}+{len} of an axis of {n}"));
    }
    let outer: usize = x.shape[..axis].iter().product();
    let inner: usize = x.shape[axis + 1..].iter().product();
    let mut idx = Vec::with_capacity(outer * len * inner);
    for o in 0..outer {
        for i in start..start + len {
            for j in 0..inner {
                idx.push((o * n + i) * inner + j);
            }
        }
    }
    let mut shape = x.shape.clone();
    shape[axis] = len;
    Ok(gather(x, shape, &idx))
}

/// Write `src` into `dst` at rows `start..start + len` along `axis` (`len`
/// is `src`'s extent there), in place.
pub fn write_slice(dst: &mut HostTensor, src: &HostTensor, axis: usize, start: usize) -> KResult<()> {
    let r = dst.shape.len();
    let fits = src.shape.len() == r && axis < r && (0..r).all(|i| i == axis || src.shape[i] == dst.shape[i]);
    if !fits || src.dtype() != dst.dtype() {
        return Err(format!("cannot write {:?} into {:?} along axis {axis}", src.shape, dst.shape));
    }
    let (n, len) = (dst.shape[axis], src.shape[axis]);
    if start.checked_add(len).is_none_or(|end| end > n) {
        return Err(format!("rows {start}..{start}+{len} of an axis of {n}"));
    }
    let outer: usize = dst.shape[..axis].iter().product();
    let inner: usize = dst.shape[axis + 1..].iter().product();
    fn put<T: Copy>(d: &mut [T], s: &[T], outer: usize, n: usize, len: usize, start: usize, inner: usize) {
        for o in 0..outer {
            let to = (o * n + start) * inner;
            d[to..to + len * inner].copy_from_slice(&s[o * len * inner..(o + 1) * len * inner]);
        }
    }
    match (&mut dst.data, &src.data) {
        (Data::F32(d), Data::F32(s)) => put(d, s, outer, n, len, start, inner),
        (Data::I64(d), Data::I64(s)) => put(d, s, outer, n, len, start, inner),
        _ => unreachable!("dtypes checked above"),
    }
    Ok(())
}

/// Concatenation along `axis`; other axes and dtypes must agree.
pub fn concat(xs: &[&HostTensor], axis: usize) -> KResult<HostTensor> {
    let first = xs.first().ok_or("concat of nothing")?;
    let r = first.shape.len();
    if axis >= r {
        return Err(format!("axis {axis} of a rank-{r} tensor"));
    }
    let mut total = 0;
    for x in xs {
        let same_off_axis = x.shape.len() == r && (0..r).all(|i| i == axis || x.shape[i] == first.shape[i]);
        if !same_off_axis || x.dtype() != first.dtype() {
            return Err(format!(
                "concat operands {:?} and {:?} differ off axis {axis} or in dtype",
                first.shape, x.shape
            ));
        }
        total += x.shape[axis];
    }
    let outer: usize = first.shape[..axis].iter().product();
    let inner: usize = first.shape[axis + 1..].iter().product();
    let mut shape = first.shape.clone();
    shape[axis] = total;
    fn cat<T: Copy>(parts: &[&[T]], sizes: &[usize], outer: usize, inner: usize) -> Vec<T> {
        let mut out = Vec::new();
        for o in 0..outer {
            for (p, &n) in parts.iter().zip(sizes) {
                out.extend_from_slice(&p[o * n * inner..(o + 1) * n * inner]);
            }
        }
        out
    }
    let sizes: Vec<usize> = xs.iter().map(|x| x.shape[axis]).collect();
    Ok(match &first.data {
        Data::F32(_) => {
            let parts: Vec<&[f32]> = xs.iter().map(|x| x.as_f32().expect("checked dtype")).collect();
            HostTensor::f32(shape, cat(&parts, &sizes, outer, inner))
        }
        Data::I64(_) => {
            let parts: Vec<&[i64]> = xs.iter().map(|x| x.as_i64().expect("checked dtype")).collect();
            HostTensor::i64(shape, cat(&parts, &sizes, outer, inner))
        }
    })
}

/// Source index of output index `dst` for `nearest` (PyTorch's legacy
/// `nearest`): `min(floor(dst * (in / out)), in - 1)` with the scale in f32.
pub fn nearest_index(dst: usize, n_in: usize, n_out: usize) -> usize {
    let scale = n_in as f32 / n_out as f32;
    (((dst as f32) * scale).floor() as usize).min(n_in - 1)
}

/// The source coordinate of output index `dst` with `align_corners=False`:
/// `(dst + 0.5) * in / out - 0.5`, the scale in f32 as PyTorch computes it.
fn source_coord(dst: usize, n_in: usize, n_out: usize) -> f32 {
    let scale = n_in as f32 / n_out as f32;
    scale * (dst as f32 + 0.5) - 0.5
}

/// Linear taps `(i0, i1, w0, w1)` for output index `dst` (negative source
/// coordinates clamp to 0, the upper neighbour clamps to the last index).
pub fn linear_taps(dst: usize, n_in: usize, n_out: usize) -> (usize, usize, f32, f32) {
    let src = source_coord(dst, n_in, n_out).max(0.0);
    let i0 = (src as usize).min(n_in - 1);
    let i1 = if i0 < n_in - 1 { i0 + 1 } else { i0 };
    let l1 = src - i0 as f32;
    (i0, i1, 1.0 - l1, l1)
}

/// Keys' cubic convolution weights with `A = -0.75` for the four taps at
/// offsets -1, 0, 1, 2 from `floor(src)`, `t` the fractional part.
pub fn cubic_weights(t: f32) -> [f32; 4] {
    const A: f32 = -0.75;
    // |x| <= 1
    let near = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    // 1 < |x| < 2
    let far = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
}

/// Bicubic taps for output index `dst`: the floor of the (unclamped) source
/// coordinate and the weights; tap indices clamp to the border.
pub fn cubic_taps(dst: usize, n_in: usize, n_out: usize) -> ([usize; 4], [f32; 4]) {
    let src = source_coord(dst, n_in, n_out);
    let fl = src.floor();
    let w = cubic_weights(src - fl);
    let base = fl as i64;
    let idx = [0, 1, 2, 3].map(|k| (base - 1 + k).clamp(0, n_in as i64 - 1) as usize);
    (idx, w)
}

/// `[start, end)` of adaptive average pooling's window `i` of `n_out` over
/// `n_in`: `floor(i * in / out)` to `ceil((i + 1) * in / out)`.
pub fn area_window(i: usize, n_in: usize, n_out: usize) -> (usize, usize) {
    (i * n_in / n_out, ((i + 1) * n_in).div_ceil(n_out))
}

/// Resample `x[N, C, H, W]` to `[N, C, h, w]`.
pub fn resize(x: &HostTensor, mode: Resample, h: usize, w: usize) -> KResult<HostTensor> {
    let xs = f32_of(x, "input")?;
    if x.shape.len() != 4 {
        return Err(format!("resize takes [N, C, H, W], got {:?}", x.shape));
    }
    let (planes, ih, iw) = (x.shape[0] * x.shape[1], x.shape[2], x.shape[3]);
    if (ih == 0 || iw == 0) && h * w > 0 {
        return Err(format!("cannot resize an empty map {:?} to {h}x{w}", x.shape));
    }
    let mut out = Vec::with_capacity(planes * h * w);
    for p in 0..planes {
        let src = &xs[p * ih * iw..(p + 1) * ih * iw];
        let at = |y: usize, xx: usize| src[y * iw + xx];
        match mode {
            Resample::Nearest => {
                for oy in 0..h {
                    let sy = nearest_index(oy, ih, h);
                    for ox in 0..w {
                        out.push(at(sy, nearest_index(ox, iw, w)));
                    }
                }
            }
            Resample::Bilinear => {
                for oy in 0..h {
                    let (y0, y1, wy0, wy1) = linear_taps(oy, ih, h);
                    for ox in 0..w {
                        let (x0, x1, wx0, wx1) = linear_taps(ox, iw, w);
                        out.push(
                            wy0 * (wx0 * at(y0, x0) + wx1 * at(y0, x1)) + wy1 * (wx0 * at(y1, x0) + wx1 * at(y1, x1)),
                        );
                    }
                }
            }
            Resample::Bicubic => {
                for oy in 0..h {
                    let (ys, wy) = cubic_taps(oy, ih, h);
                    for ox in 0..w {
                        let (xs_, wx) = cubic_taps(ox, iw, w);
                        // Interpolate each of the four rows along x, then along y.
                        let mut acc = 0f32;
                        for k in 0..4 {
                            let mut row = 0f32;
                            for j in 0..4 {
                                row += at(ys[k], xs_[j]) * wx[j];
                            }
                            acc += row * wy[k];
                        }
                        out.push(acc);
                    }
                }
            }
            Resample::Area => {
                for oy in 0..h {
                    let (y0, y1) = area_window(oy, ih, h);
                    for ox in 0..w {
                        let (x0, x1) = area_window(ox, iw, w);
                        let mut sum = 0f32;
                        for yy in y0..y1 {
                            for xx in x0..x1 {
                                sum += at(yy, xx);
                            }
                        }
                        out.push(sum / (y1 - y0) as f32 / (x1 - x0) as f32);
                    }
                }
            }
        }
    }
    Ok(HostTensor::f32(vec![x.shape[0], x.shape[1], h, w], out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::testutil::*;

    #[test]
    fn reshape_keeps_data_and_checks_size() {
        let x = ti(&[2, 3], &[1, 2, 3, 4, 5, 6]);
        let y = reshape(&x, &[3, 1, 2]).unwrap();
        assert_eq!(y.shape, vec![3, 1, 2]);
        assert_eq!(y.as_i64().unwrap(), &[1, 2, 3, 4, 5, 6]);
        assert!(reshape(&x, &[4]).is_err());
    }

    #[test]
    fn permute_moves_axes() {
        // x[a, b, c] = 100a + 10b + c, shape [2, 3, 4]; permute [2, 0, 1] -> y[c, a, b].
        let mut v = vec![];
        for a in 0..2 {
            for b in 0..3 {
                for c in 0..4 {
                    v.push((100 * a + 10 * b + c) as f32);
                }
            }
        }
        let y = permute(&t(&[2, 3, 4], &v), &[2, 0, 1]).unwrap();
        assert_eq!(y.shape, vec![4, 2, 3]);
        let mut expected = vec![];
        for c in 0..4 {
            for a in 0..2 {
                for b in 0..3 {
                    expected.push((100 * a + 10 * b + c) as f32);
                }
            }
        }
        assert_eq!(f(&y), &expected[..]);
        assert!(permute(&t(&[2, 3, 4], &v), &[0, 0, 1]).is_err());
    }

    #[test]
    fn slice_middle_axis_and_bounds() {
        let x = t(&[2, 4, 2], &(0..16).map(|v| v as f32).collect::<Vec<_>>());
        let y = slice(&x, 1, 1, 2).unwrap();
        assert_eq!(y.shape, vec![2, 2, 2]);
        assert_eq!(f(&y), &[2., 3., 4., 5., 10., 11., 12., 13.]);
        assert!(slice(&x, 1, 3, 2).is_err());
        assert!(slice(&x, 3, 0, 1).is_err());
        assert_eq!(slice(&x, 0, 2, 0).unwrap().shape, vec![0, 4, 2]);
    }

    #[test]
    fn concat_along_an_inner_axis() {
        let a = t(&[2, 1, 2], &[1., 2., 3., 4.]);
        let b = t(&[2, 2, 2], &[5., 6., 7., 8., 9., 10., 11., 12.]);
        let y = concat(&[&a, &b], 1).unwrap();
        assert_eq!(y.shape, vec![2, 3, 2]);
        assert_eq!(f(&y), &[1., 2., 5., 6., 7., 8., 3., 4., 9., 10., 11., 12.]);
        let y = concat(&[&ti(&[1], &[1]), &ti(&[2], &[2, 3])], 0).unwrap();
        assert_eq!(y.as_i64().unwrap(), &[1, 2, 3]);
        assert!(concat(&[&a, &t(&[1, 1, 2], &[0., 0.])], 1).is_err());
        assert!(concat(&[&ti(&[1], &[1]), &t(&[1], &[1.])], 0).is_err());
    }

    /// A 1xN map along x only, so each resize reduces to one axis.
    fn row(v: &[f32]) -> HostTensor {
        t(&[1, 1, 1, v.len()], v)
    }

    #[test]
    fn nearest_up_and_down() {
        let y = resize(&row(&[1., 2., 3.]), Resample::Nearest, 1, 6).unwrap();
        assert_eq!(f(&y), &[1., 1., 2., 2., 3., 3.]);
        // 3 -> 5: floor(i * 0.6) = 0, 0, 1, 1, 2
        let y = resize(&row(&[1., 2., 3.]), Resample::Nearest, 1, 5).unwrap();
        assert_eq!(f(&y), &[1., 1., 2., 2., 3.]);
        // 5 -> 2: floor(i * 2.5) = 0, 2
        let y = resize(&row(&[1., 2., 3., 4., 5.]), Resample::Nearest, 1, 2).unwrap();
        assert_eq!(f(&y), &[1., 3.]);
        // 2D: [[1, 2], [3, 4]] -> 4x4 blocks
        let y = resize(&t(&[1, 1, 2, 2], &[1., 2., 3., 4.]), Resample::Nearest, 4, 4).unwrap();
        assert_eq!(f(&y), &[1., 1., 2., 2., 1., 1., 2., 2., 3., 3., 4., 4., 3., 3., 4., 4.]);
    }

    #[test]
    fn bilinear_half_pixel_centres() {
        // 2 -> 4, align_corners=False: src = (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25
        // clamped to 0, 0.25, 0.75, 1 (upper neighbour clamps): 1, 1.5, 2.5, 3 for [1, 3].
        let y = resize(&row(&[1., 3.]), Resample::Bilinear, 1, 4).unwrap();
        assert_close(f(&y), &[1., 1.5, 2.5, 3.], 1e-6, 0.0);
        // 2D against the separable definition computed directly.
        let v = seq(3 * 4, 5);
        let y = resize(&t(&[1, 1, 3, 4], &v), Resample::Bilinear, 5, 2).unwrap();
        let coord = |i: usize, n_in: usize, n_out: usize| -> (usize, usize, f64) {
            let s = ((i as f64 + 0.5) * n_in as f64 / n_out as f64 - 0.5).max(0.0);
            let i0 = s.floor() as usize;
            let i1 = (i0 + 1).min(n_in - 1);
            (i0, i1, s - i0 as f64)
        };
        let mut expected = vec![];
        for oy in 0..5 {
            let (y0, y1, ly) = coord(oy, 3, 5);
            for ox in 0..2 {
                let (x0, x1, lx) = coord(ox, 4, 2);
                let g = |yy: usize, xx: usize| v[yy * 4 + xx] as f64;
                let top = g(y0, x0) * (1.0 - lx) + g(y0, x1) * lx;
                let bot = g(y1, x0) * (1.0 - lx) + g(y1, x1) * lx;
                expected.push((top * (1.0 - ly) + bot * ly) as f32);
            }
        }
        assert_close(f(&y), &expected, 1e-6, 1e-6);
    }

    /// Keys' cubic kernel with a = -0.75, written from its definition.
    fn keys(s: f64) -> f64 {
        let a = -0.75;
        let s = s.abs();
        if s <= 1.0 {
            (a + 2.0) * s.powi(3) - (a + 3.0) * s.powi(2) + 1.0
        } else if s < 2.0 {
            a * s.powi(3) - 5.0 * a * s.powi(2) + 8.0 * a * s - 4.0 * a
        } else {
            0.0
        }
    }

    /// Bicubic resampling of one axis from the definition: sum over the four
    /// taps floor(src)-1..=floor(src)+2 (clamped) of keys(src - tap).
    fn bicubic_1d(v: &[f64], n_out: usize) -> Vec<f64> {
        let n_in = v.len();
        (0..n_out)
            .map(|i| {
                let s = (i as f64 + 0.5) * n_in as f64 / n_out as f64 - 0.5;
                let fl = s.floor();
                (-1..=2)
                    .map(|k| {
                        let tap = fl + k as f64;
                        let idx = (tap as i64).clamp(0, n_in as i64 - 1) as usize;
                        v[idx] * keys(s - tap)
                    })
                    .sum()
            })
            .collect()
    }

    #[test]
    fn bicubic_weights_sum_to_one_and_match_keys() {
        for &tt in &[0.0f32, 0.25, 0.5, 0.9] {
            let w = cubic_weights(tt);
            let expected = [keys(tt as f64 + 1.0), keys(tt as f64), keys(1.0 - tt as f64), keys(2.0 - tt as f64)];
            // The polynomials cancel terms of size ~3 in f32: absolute error ~1e-7.
            assert_close(&w, &expected.map(|v| v as f32), 1e-6, 1e-6);
            assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        // Exact at t = 0.5: [-0.09375, 0.59375, 0.59375, -0.09375].
        assert_close(&cubic_weights(0.5), &[-0.09375, 0.59375, 0.59375, -0.09375], 1e-7, 0.0);
    }

    #[test]
    fn bicubic_matches_separable_definition_up_and_down() {
        // 2D bicubic is separable: resample rows along x, then columns along y.
        for &(ih, iw, oh, ow) in &[(2, 3, 5, 7), (4, 4, 16, 16), (16, 16, 3, 5), (1, 1, 2, 2)] {
            let v = seq(ih * iw, (ih * 100 + ow) as u64);
            let y = resize(&t(&[1, 1, ih, iw], &v), Resample::Bicubic, oh, ow).unwrap();
            let rows: Vec<Vec<f64>> = (0..ih)
                .map(|r| bicubic_1d(&v[r * iw..(r + 1) * iw].iter().map(|&a| a as f64).collect::<Vec<_>>(), ow))
                .collect();
            let mut expected = vec![0f32; oh * ow];
            for c in 0..ow {
                let col: Vec<f64> = rows.iter().map(|r| r[c]).collect();
                for (r, val) in bicubic_1d(&col, oh).into_iter().enumerate() {
                    expected[r * ow + c] = val as f32;
                }
            }
            assert_close(f(&y), &expected, 1e-5, 1e-5);
        }
        // Same size is the identity.
        let v = seq(9, 3);
        let y = resize(&t(&[1, 1, 3, 3], &v), Resample::Bicubic, 3, 3).unwrap();
        assert_close(f(&y), &v, 1e-7, 0.0);
    }

    #[test]
    fn bicubic_known_values() {
        // [0, 1] upsampled to 4: src -0.25, 0.25, 0.75, 1.25 (floors -1, 0, 0, 1), taps clamped:
        //   i=0: t=0.75, values at taps 0,0,0,1: only the last weight, far(2 - 0.75) = -0.10546875
        //   i=1: t=0.25, values 0,0,1,1: near(0.75) + far(1.75)
        //   i=2 and i=3 mirror i=1 and i=0 (weights sum to 1).
        let y = resize(&row(&[0., 1.]), Resample::Bicubic, 1, 4).unwrap();
        let far = |x: f64| ((-0.75 * x + 3.75) * x - 6.0) * x + 3.0;
        let near = |x: f64| (1.25 * x - 2.25) * x * x + 1.0;
        let e0 = far(2.0 - 0.75);
        let e1 = near(1.0 - 0.25) + far(2.0 - 0.25);
        assert_close(f(&y), &[e0 as f32, e1 as f32, (1.0 - e1) as f32, (1.0 - e0) as f32], 1e-6, 0.0);
        assert!((e0 - (-0.10546875)).abs() < 1e-12);
    }

    #[test]
    fn area_is_adaptive_average_pooling() {
        // 4 -> 2: means of pairs.
        let y = resize(&row(&[1., 3., 5., 7.]), Resample::Area, 1, 2).unwrap();
        assert_close(f(&y), &[2., 6.], 0.0, 0.0);
        // 5 -> 3: windows [0,2), [1,4), [3,5).
        let y = resize(&row(&[1., 2., 3., 4., 5.]), Resample::Area, 1, 3).unwrap();
        assert_close(f(&y), &[1.5, 3., 4.5], 1e-6, 0.0);
        // 2D 4x4 -> 2x2 block means
        let v: Vec<f32> = (0..16).map(|i| i as f32).collect();
        let y = resize(&t(&[1, 1, 4, 4], &v), Resample::Area, 2, 2).unwrap();
        assert_close(f(&y), &[2.5, 4.5, 10.5, 12.5], 0.0, 0.0);
        // 16 -> 3 (VAR's scales): windows from floor/ceil.
        assert_eq!(area_window(0, 16, 3), (0, 6));
        assert_eq!(area_window(1, 16, 3), (5, 11));
        assert_eq!(area_window(2, 16, 3), (10, 16));
    }
}
