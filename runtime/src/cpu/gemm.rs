//! The GEMM anchors: Linear, MatMul and Conv2d (im2col) through the `gemm`
//! crate on strided operands (views are read in place, a transposed weight
//! is a stride swap), with rayon inside the GEMM; and a weight-streaming
//! GEMV for Linear with one or two rows (decode steps: bandwidth-bound), with
//! AVX-512 / AVX2 dot products chosen at run time and a portable fallback.
//!
//! Sums are not in the reference's order (blocked, fused multiply-adds), so
//! results differ from the reference by rounding; for one shape and one
//! machine they are the same on every run (the GEMM splits rows and columns
//! across threads, never the reduction).

use crate::reference::view::View;
use crate::reference::{broadcast_shape, KResult};
use crate::tensor::{numel, HostTensor};
use rayon::prelude::*;
use std::sync::OnceLock;

/// A strided matrix: element `(i, j)` at `data[off + i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub data: &'a [f32],
    pub off: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    pub fn dense(data: &'a [f32], cols: usize) -> Mat<'a> {
        Mat { data, off: 0, rs: cols, cs: 1 }
    }
    /// The transpose (a stride swap).
    pub fn t(self) -> Mat<'a> {
        Mat { rs: self.cs, cs: self.rs, ..self }
    }
    /// Whether an `r x c` matrix lies inside `data`.
    fn fits(&self, r: usize, c: usize) -> bool {
        r == 0 || c == 0 || self.off + (r - 1) * self.rs + (c - 1) * self.cs < self.data.len()
    }
}

/// Work below which a GEMM runs on one thread (multiply-adds).
const PARALLEL_MACS: usize = 1 << 17;

/// `dst[m, n] (dense, row-major) = a[m, k] @ b[k, n]`.
pub(crate) fn gemm_into(dst: &mut [f32], m: usize, n: usize, k: usize, a: Mat, b: Mat, threads: bool) -> KResult<()> {
    if dst.len() != m * n || !a.fits(m, k) || !b.fits(k, n) {
        return Err(format!("a {m}x{k} @ {k}x{n} GEMM does not fit its operands"));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        dst.fill(0.0);
        return Ok(());
    }
    let par = if threads && m * n * k >= PARALLEL_MACS && rayon::current_num_threads() > 1 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: `fits` checked that every element the GEMM reads lies inside
    // the operands' slices and `dst` holds exactly m * n elements; the
    // operands do not alias `dst` (shared borrows of other memory).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.data.as_ptr().add(a.off),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr().add(b.off),
            b.cs as isize,
            b.rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
    Ok(())
}

fn f32s<'a>(v: &'a View, what: &str) -> KResult<&'a [f32]> {
    v.base.as_f32().ok_or_else(|| format!("{what} must be f32"))
}

/// `x[..., in]` as an `[rows, in]` matrix: a view when its strides allow, else
/// a dense copy (returned so it lives as long as the matrix).
fn rows_of(x: &View, n_in: usize) -> (View, Option<HostTensor>) {
    let rows = numel(&x.shape[..x.shape.len() - 1]);
    match x.reshape(&[rows, n_in]) {
        Some(v) => (v, None),
        None => {
            let t = x.to_tensor();
            let v = View::whole(std::sync::Arc::new(t.clone())).reshape(&[rows, n_in]).expect("a dense view reshapes");
            (v, Some(t))
        }
    }
}

/// `y[..., o] = sum_i x[..., i] * w[o, i] (+ b[o])`.
pub(crate) fn linear(x: &View, w: &View, b: Option<&View>) -> KResult<HostTensor> {
    linear_with(x, w, b, true)
}

/// [`linear`], the GEMV allowed or not (benchmarks compare the two).
pub(crate) fn linear_with(x: &View, w: &View, b: Option<&View>, gemv_ok: bool) -> KResult<HostTensor> {
    if w.shape.len() != 2 || x.shape.is_empty() {
        return Err(format!("linear takes x[..., in] and w[out, in], got {:?} and {:?}", x.shape, w.shape));
    }
    let (n_out, n_in) = (w.shape[0], w.shape[1]);
    if x.shape.last() != Some(&n_in) {
        return Err(format!("input {:?} does not end in the weight's in-features {n_in}", x.shape));
    }
    let bias = match b {
        Some(b) if b.shape != [n_out] => return Err(format!("bias {:?} must be [{n_out}]", b.shape)),
        Some(b) => Some(b.to_tensor()),
        None => None,
    };
    let (xr, _copy) = rows_of(x, n_in);
    let rows = xr.shape[0];
    let (xd, wd) = (f32s(&xr, "input")?, f32s(w, "weight")?);
    let mut shape = x.shape.clone();
    *shape.last_mut().expect("rank >= 1") = n_out;
    let mut y = vec![0f32; rows * n_out];
    let xm = Mat { data: xd, off: xr.offset, rs: xr.strides[0], cs: xr.strides[1] };
    let wm = Mat { data: wd, off: w.offset, rs: w.strides[0], cs: w.strides[1] };
    let streamed =
        gemv_ok && rows <= 2 && (xm.cs == 1 || n_in <= 1) && (wm.cs == 1 || n_in <= 1) && wm.fits(n_out, n_in);
    if streamed && xm.fits(rows, n_in) {
        gemv(&mut y, rows, n_out, n_in, xm, wm);
    } else {
        gemm_into(&mut y, rows, n_out, n_in, xm, wm.t(), true)?;
    }
    if let Some(bt) = bias {
        let bs = bt.as_f32().ok_or("bias must be f32")?;
        if n_out > 0 {
            for row in y.chunks_mut(n_out) {
                for (v, b) in row.iter_mut().zip(bs) {
                    *v += b;
                }
            }
        }
    }
    Ok(HostTensor::f32(shape, y))
}

// ---- GEMV -------------------------------------------------------------------

type Dot2 = fn(&[f32], &[f32], &[f32]) -> (f32, f32);

/// `(w . x0, w . x1)`: 32 independent lanes, folded pairwise.
#[inline(always)]
fn dot2_lanes<const FMA: bool>(w: &[f32], x0: &[f32], x1: &[f32]) -> (f32, f32) {
    const L: usize = 64;
    let n = w.len() / L * L;
    let (mut a0, mut a1) = ([0f32; L], [0f32; L]);
    let two = !x1.is_empty();
    for (c, wc) in w[..n].chunks_exact(L).enumerate() {
        let xc0 = &x0[c * L..c * L + L];
        for l in 0..L {
            a0[l] = if FMA { wc[l].mul_add(xc0[l], a0[l]) } else { a0[l] + wc[l] * xc0[l] };
        }
        if two {
            let xc1 = &x1[c * L..c * L + L];
            for l in 0..L {
                a1[l] = if FMA { wc[l].mul_add(xc1[l], a1[l]) } else { a1[l] + wc[l] * xc1[l] };
            }
        }
    }
    let fold = |a: &mut [f32; L]| {
        let mut w = L;
        while w > 1 {
            w /= 2;
            for l in 0..w {
                a[l] += a[l + w];
            }
        }
        a[0]
    };
    let (mut s0, mut s1) = (fold(&mut a0), fold(&mut a1));
    for i in n..w.len() {
        s0 += w[i] * x0[i];
        if two {
            s1 += w[i] * x1[i];
        }
    }
    (s0, s1)
}

fn dot2_portable(w: &[f32], x0: &[f32], x1: &[f32]) -> (f32, f32) {
    dot2_lanes::<false>(w, x0, x1)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn dot2_avx512_inner(w: &[f32], x0: &[f32], x1: &[f32]) -> (f32, f32) {
    dot2_lanes::<true>(w, x0, x1)
}

#[cfg(target_arch = "x86_64")]
fn dot2_avx512(w: &[f32], x0: &[f32], x1: &[f32]) -> (f32, f32) {
    // SAFETY: chosen only when the CPU has AVX-512F and FMA (`dot2`).
    unsafe { dot2_avx512_inner(w, x0, x1) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn dot2_avx2_inner(w: &[f32], x0: &[f32], x1: &[f32]) -> (f32, f32) {
    dot2_lanes::<true>(w, x0, x1)
}

#[cfg(target_arch = "x86_64")]
fn dot2_avx2(w: &[f32], x0: &[f32], x1: &[f32]) -> (f32, f32) {
    // SAFETY: chosen only when the CPU has AVX2 and FMA (`dot2`).
    unsafe { dot2_avx2_inner(w, x0, x1) }
}

/// The dot product for this CPU, and its name.
pub(crate) fn dot2() -> (Dot2, &'static str) {
    static CHOSEN: OnceLock<(Dot2, &'static str)> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma") {
                return (dot2_avx512 as Dot2, "avx512");
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return (dot2_avx2 as Dot2, "avx2");
            }
        }
        (dot2_portable as Dot2, "portable")
    })
}

/// `y[r, o] = x[r] . w[o]` for one or two rows, the weight's rows
/// contiguous (checked by the caller): each weight row is read once for both
/// rows, output blocks in parallel.
fn gemv(y: &mut [f32], rows: usize, n_out: usize, n_in: usize, x: Mat, w: Mat) {
    let (dot, _) = dot2();
    let x0 = &x.data[x.off..x.off + n_in];
    let x1: &[f32] = if rows == 2 { &x.data[x.off + x.rs..x.off + x.rs + n_in] } else { &[] };
    let mut pairs = vec![(0f32, 0f32); n_out];
    let block = (n_out / (4 * rayon::current_num_threads().max(1))).clamp(16, 1024);
    pairs.par_chunks_mut(block).enumerate().for_each(|(bi, out)| {
        for (j, p) in out.iter_mut().enumerate() {
            let o = bi * block + j;
            let row = &w.data[w.off + o * w.rs..w.off + o * w.rs + n_in];
            *p = dot(row, x0, x1);
        }
    });
    for (o, (p0, p1)) in pairs.into_iter().enumerate() {
        y[o] = p0;
        if rows == 2 {
            y[n_out + o] = p1;
        }
    }
}

// ---- MatMul -----------------------------------------------------------------

/// `x`'s batch axes broadcast to `batch`: the base offset of each batch
/// index, row-major.
fn batch_offsets(x: &View, batch: &[usize]) -> Vec<usize> {
    let r = x.shape.len() - 2;
    let pad = batch.len() - r;
    let strides: Vec<usize> =
        (0..batch.len()).map(|i| if i < pad || x.shape[i - pad] == 1 { 0 } else { x.strides[i - pad] }).collect();
    let v = View { base: x.base.clone(), offset: x.offset, shape: batch.to_vec(), strides };
    v.indices()
}

/// `a[..., m, k] @ b[..., k, n]`, batch axes broadcast.
pub(crate) fn matmul(a: &View, b: &View) -> KResult<HostTensor> {
    let (ra, rb) = (a.shape.len(), b.shape.len());
    if ra < 2 || rb < 2 {
        return Err(format!("matmul operands must have rank >= 2, got {:?} and {:?}", a.shape, b.shape));
    }
    let (m, k) = (a.shape[ra - 2], a.shape[ra - 1]);
    let (k2, n) = (b.shape[rb - 2], b.shape[rb - 1]);
    if k != k2 {
        return Err(format!("inner dimensions differ: {:?} @ {:?}", a.shape, b.shape));
    }
    let batch = broadcast_shape(&a.shape[..ra - 2], &b.shape[..rb - 2])?;
    let (ao, bo) = (batch_offsets(a, &batch), batch_offsets(b, &batch));
    let (ad, bd) = (f32s(a, "lhs")?, f32s(b, "rhs")?);
    let (ars, acs, brs, bcs) = (a.strides[ra - 2], a.strides[ra - 1], b.strides[rb - 2], b.strides[rb - 1]);
    let mut shape = batch.clone();
    shape.extend([m, n]);
    let mut out = vec![0f32; numel(&shape)];
    if m * n == 0 {
        return Ok(HostTensor::f32(shape, out));
    }
    let one = |i: usize, dst: &mut [f32], threads: bool| {
        let am = Mat { data: ad, off: ao[i], rs: ars, cs: acs };
        let bm = Mat { data: bd, off: bo[i], rs: brs, cs: bcs };
        gemm_into(dst, m, n, k, am, bm, threads)
    };
    if ao.len() > 1 && m * n * k < 4 * PARALLEL_MACS {
        // Many small products: one per task.
        out.par_chunks_mut(m * n).enumerate().try_for_each(|(i, dst)| one(i, dst, false))?;
    } else {
        for (i, dst) in out.chunks_mut(m * n).enumerate() {
            one(i, dst, true)?;
        }
    }
    Ok(HostTensor::f32(shape, out))
}

// ---- Conv2d -----------------------------------------------------------------

/// 2-D convolution as the reference's (`x[N, C, H, W] * w[O, C, k, k] (+ b[O])`,
/// zero padding), by im2col and one GEMM per image.
pub(crate) fn conv2d(x: &View, w: &View, b: Option<&View>, stride: usize, pad: usize) -> KResult<HostTensor> {
    let [nb, c, h, wd, o, k] = crate::reference::linalg::conv2d_shapes(&x.shape, &w.shape, stride, pad)?;
    let bias = match b {
        Some(b) if b.shape != [o] => return Err(format!("bias {:?} must be [{o}]", b.shape)),
        Some(b) => Some(b.to_tensor()),
        None => None,
    };
    let xt = if x.is_whole() { None } else { Some(x.to_tensor()) };
    let xs = match &xt {
        Some(t) => t.as_f32(),
        None => x.base.as_f32(),
    }
    .ok_or("input must be f32")?;
    let wt = if w.is_whole() { None } else { Some(w.to_tensor()) };
    let ws = match &wt {
        Some(t) => t.as_f32(),
        None => w.base.as_f32(),
    }
    .ok_or("weight must be f32")?;
    let oh = (h + 2 * pad - k) / stride + 1;
    let ow = (wd + 2 * pad - k) / stride + 1;
    let (plane, ckk) = (oh * ow, c * k * k);
    let mut out = vec![0f32; nb * o * plane];
    if plane == 0 || o == 0 {
        return Ok(HostTensor::f32(vec![nb, o, oh, ow], out));
    }
    let direct = k == 1 && stride == 1 && pad == 0;
    let mut col = if direct { Vec::new() } else { vec![0f32; ckk * plane] };
    for ni in 0..nb {
        let src = &xs[ni * c * h * wd..(ni + 1) * c * h * wd];
        let rhs = if direct {
            src
        } else {
            col.par_chunks_mut(plane).enumerate().for_each(|(r, dst)| {
                let (ci, ky, kx) = (r / (k * k), (r / k) % k, r % k);
                let s = &src[ci * h * wd..(ci + 1) * h * wd];
                for oy in 0..oh {
                    let iy = (oy * stride + ky) as isize - pad as isize;
                    let d = &mut dst[oy * ow..(oy + 1) * ow];
                    if iy < 0 || iy >= h as isize {
                        d.fill(0.0);
                        continue;
                    }
                    for (ox, v) in d.iter_mut().enumerate() {
                        let ix = (ox * stride + kx) as isize - pad as isize;
                        *v = if ix < 0 || ix >= wd as isize { 0.0 } else { s[iy as usize * wd + ix as usize] };
                    }
                }
            });
            &col[..]
        };
        let dst = &mut out[ni * o * plane..(ni + 1) * o * plane];
        gemm_into(dst, o, plane, ckk, Mat::dense(ws, ckk), Mat::dense(rhs, plane), true)?;
        if let Some(bt) = &bias {
            let bs = bt.as_f32().ok_or("bias must be f32")?;
            for (oi, p) in dst.chunks_mut(plane).enumerate() {
                for v in p {
                    *v += bs[oi];
                }
            }
        }
    }
    Ok(HostTensor::f32(vec![nb, o, oh, ow], out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::linalg;
    use crate::reference::testutil::seq;
    use std::sync::Arc;

    fn t(shape: &[usize], seed: u64) -> HostTensor {
        HostTensor::f32(shape.to_vec(), seq(shape.iter().product(), seed))
    }
    fn w(x: &HostTensor) -> View {
        View::whole(Arc::new(x.clone()))
    }
    fn close(a: &HostTensor, e: &HostTensor, what: &str) {
        assert_eq!(a.shape, e.shape, "{what}");
        for (i, (x, y)) in a.as_f32().unwrap().iter().zip(e.as_f32().unwrap()).enumerate() {
            assert!((x - y).abs() <= 1e-5 + 1e-5 * y.abs(), "{what}: element {i}: {x} vs {y}");
        }
    }

    #[test]
    fn linear_matches_the_reference_for_odd_sizes_and_one_two_many_rows() {
        for rows in [1, 2, 3, 17, 70] {
            for (n_in, n_out) in [(1, 1), (5, 3), (33, 31), (67, 129)] {
                let (x, wt, b) = (t(&[rows, n_in], 1), t(&[n_out, n_in], 2), t(&[n_out], 3));
                let want = linalg::linear(&x, &wt, Some(&b)).unwrap();
                close(&linear(&w(&x), &w(&wt), Some(&w(&b))).unwrap(), &want, &format!("{rows}x{n_in}->{n_out}"));
                let want = linalg::linear(&x, &wt, None).unwrap();
                close(&linear(&w(&x), &w(&wt), None).unwrap(), &want, "no bias");
            }
        }
    }

    #[test]
    fn linear_reads_strided_inputs_and_weights_in_place() {
        // x as a permuted view, w as a transposed view of a [in, out] tensor.
        let xb = t(&[6, 2, 9], 4);
        let xv = w(&xb).permute(&[1, 0, 2]); // [2, 6, 9], rows not uniform as [12, 9]
        let wb = t(&[9, 5], 5);
        let wv = w(&wb).permute(&[1, 0]); // [5, 9]
        let want = linalg::linear(&xv.to_tensor(), &wv.to_tensor(), None).unwrap();
        close(&linear(&xv, &wv, None).unwrap(), &want, "strided");
        // One row of a slice (GEMV path with an offset).
        let xs = w(&xb).slice(0, 3, 1).slice(1, 1, 1); // [1, 1, 9]
        let wd = wv.to_tensor();
        let want = linalg::linear(&xs.to_tensor(), &wd, None).unwrap();
        close(&linear(&xs, &w(&wd), None).unwrap(), &want, "sliced row");
    }

    #[test]
    fn matmul_matches_the_reference_with_broadcast_and_strides() {
        for (sa, sb) in [
            (vec![3, 5], vec![5, 4]),
            (vec![2, 3, 7, 5], vec![5, 9]),
            (vec![2, 1, 4, 3], vec![3, 3, 2]),
            (vec![1, 1], vec![1, 1]),
            (vec![4, 65, 33], vec![4, 33, 70]),
        ] {
            let (a, b) = (t(&sa, 6), t(&sb, 7));
            close(&matmul(&w(&a), &w(&b)).unwrap(), &linalg::matmul(&a, &b).unwrap(), &format!("{sa:?}@{sb:?}"));
        }
        // k^T as a permuted view.
        let k = t(&[2, 6, 4], 8);
        let kt = w(&k).permute(&[0, 2, 1]);
        let q = t(&[2, 3, 4], 9);
        let want = linalg::matmul(&q, &kt.to_tensor()).unwrap();
        close(&matmul(&w(&q), &kt).unwrap(), &want, "k^T view");
        assert!(matmul(&w(&q), &w(&q)).is_err());
    }

    #[test]
    fn conv2d_matches_the_reference() {
        for (n, c, h, wd, o, k, s, p) in
            [(1, 3, 5, 5, 4, 3, 1, 1), (2, 2, 7, 6, 3, 3, 2, 1), (1, 4, 4, 4, 5, 1, 1, 0), (2, 3, 6, 5, 2, 2, 2, 0)]
        {
            let (x, wt, b) = (t(&[n, c, h, wd], 10), t(&[o, c, k, k], 11), t(&[o], 12));
            let want = linalg::conv2d(&x, &wt, Some(&b), s, p).unwrap();
            close(&conv2d(&w(&x), &w(&wt), Some(&w(&b)), s, p).unwrap(), &want, &format!("{n} {c} {h} {wd} {o} {k}"));
        }
    }

    #[test]
    fn every_dot_product_agrees_with_the_portable_one() {
        for n in [0, 1, 31, 32, 33, 100, 1000] {
            let (a, b, c) = (seq(n, 1), seq(n, 2), seq(n, 3));
            let (p0, p1) = dot2_portable(&a, &b, &c);
            let (f0, f1) = (dot2().0)(&a, &b, &c);
            assert!((p0 - f0).abs() <= 1e-4 && (p1 - f1).abs() <= 1e-4, "{n}: {p0} {f0} {p1} {f1}");
            assert_eq!((dot2().0)(&a, &b, &[]).1, 0.0);
        }
    }
}
