//! Attention as one kernel: `softmax(scale * q k^T) v` over the keys the mask
//! allows. It computes what matmul + mask + softmax + matmul would, summing in
//! the same order (over the head dimension for a score, over keys in order for
//! an output), but reads only the filled part of a KV cache and skips masked
//! keys, whose weight would be exactly zero.

use super::norm::softmax_row;
use super::view::View;
use super::{i64_of, KResult};
use crate::tensor::HostTensor;
use ecarc_compiler::ir::op::Mask;
use rayon::prelude::*;

/// Attention's operands, checked: their f32 data, the rank, the queries
/// `t`, the head dimensions `d` (of q and k) and `e` (of v). Every
/// attention kernel checks its operands here.
pub(crate) struct Operands<'a> {
    pub qv: &'a [f32],
    pub kv: &'a [f32],
    pub vv: &'a [f32],
    pub r: usize,
    pub t: usize,
    pub d: usize,
    pub e: usize,
}

pub(crate) fn operands<'a>(q: &'a View, k: &'a View, v: &'a View, keys: usize) -> KResult<Operands<'a>> {
    fn all<'a>(x: &'a View, what: &str) -> KResult<&'a [f32]> {
        x.base.as_f32().ok_or_else(|| format!("{what} must be f32"))
    }
    let (qv, kv, vv) = (all(q, "q")?, all(k, "k")?, all(v, "v")?);
    let [r, t, d, e] = shapes(&q.shape, &k.shape, &v.shape, keys)?;
    Ok(Operands { qv, kv, vv, r, t, d, e })
}

/// The shapes of attention's operands, checked: `[rank, T, d, e]` (the
/// wgpu kernel, whose operands are device buffers, checks them here too).
pub(crate) fn shapes(q: &[usize], k: &[usize], v: &[usize], keys: usize) -> KResult<[usize; 4]> {
    let r = q.len();
    if r < 2 || k.len() != r || v.len() != r {
        return Err(format!("q {q:?}, k {k:?}, v {v:?} must be [..., T, d] of one rank"));
    }
    let (t, d) = (q[r - 2], q[r - 1]);
    let (s, e) = (k[r - 2], v[r - 1]);
    if q[..r - 2] != k[..r - 2] || k[..r - 1] != v[..r - 1] || k[r - 1] != d {
        return Err(format!("q {q:?}, k {k:?}, v {v:?} disagree"));
    }
    if keys > s || t > keys {
        return Err(format!("{t} queries over {keys} keys of a cache of {s}"));
    }
    Ok([r, t, d, e])
}

/// `q[..., T, d]`, `k[..., S, d]`, `v[..., S, e]` (`S >= keys`), any
/// strides: queries at positions `keys - T .. keys` over keys `0..keys`;
/// `levels: i64[keys]` for the level masks. Result `[..., T, e]`, dense.
pub fn attention(
    q: &View,
    k: &View,
    v: &View,
    levels: Option<&HostTensor>,
    mask: Mask,
    scale: f32,
    keys: usize,
) -> KResult<HostTensor> {
    let Operands { qv, kv, vv, r, t, d, e } = operands(q, k, v, keys)?;
    let lv = match (mask.needs_levels(), levels) {
        (true, Some(l)) => {
            let l = i64_of(l, "levels")?;
            if l.len() != keys {
                return Err(format!("{} levels for {keys} keys", l.len()));
            }
            Some(l)
        }
        (true, None) => return Err(format!("the {} mask needs the keys' levels", mask.name())),
        (false, _) => None,
    };
    let level = |p: usize| lv.map_or(0, |l| l[p]);
    let (qb, kb, vb) = (q.batch_offsets(r - 2), k.batch_offsets(r - 2), v.batch_offsets(r - 2));
    let (qs, ks, vs) = (&q.strides[r - 2..], &k.strides[r - 2..], &v.strides[r - 2..]);
    let first = keys - t;
    let mut out = vec![0f32; qb.len() * t * e];
    if e > 0 {
        out.par_chunks_mut(e).enumerate().for_each(|(row, o)| {
            let (bh, i) = (row / t, row % t);
            let q0 = qb[bh] + i * qs[0];
            let qr: Vec<f32> = (0..d).map(|c| qv[q0 + c * qs[1]] * scale).collect();
            let pos = first + i;
            let allowed: Vec<usize> =
                (0..keys).filter(|&j| mask.allows(pos as u64, j as u64, level(pos), level(j))).collect();
            let scores: Vec<f32> = allowed
                .iter()
                .map(|&j| {
                    let k0 = kb[bh] + j * ks[0];
                    let mut acc = 0f32;
                    for (c, a) in qr.iter().enumerate() {
                        acc += a * kv[k0 + c * ks[1]];
                    }
                    acc
                })
                .collect();
            let mut w = Vec::with_capacity(scores.len());
            softmax_row(&scores, &mut w);
            for (&j, &p) in allowed.iter().zip(&w) {
                let v0 = vb[bh] + j * vs[0];
                for (c, acc) in o.iter_mut().enumerate() {
                    *acc += p * vv[v0 + c * vs[1]];
                }
            }
        });
    }
    let mut shape = q.shape.clone();
    shape[r - 1] = e;
    Ok(HostTensor::f32(shape, out))
}

#[cfg(test)]
mod tests {
    use super::super::linalg::matmul;
    use super::super::testutil::*;
    use super::*;
    use std::sync::Arc;

    /// The plain composition: scores, an additive mask, softmax, weights times v.
    fn composed(q: &HostTensor, k: &HostTensor, v: &HostTensor, allow: impl Fn(usize, usize) -> bool) -> Vec<f32> {
        let r = q.shape.len();
        let mut perm: Vec<usize> = (0..r).collect();
        perm.swap(r - 1, r - 2);
        let kt = super::super::layout::permute(k, &perm).unwrap();
        let sc = matmul(q, &kt).unwrap();
        let (t, n) = (q.shape[r - 2], k.shape[r - 2]);
        let mut masked = f(&sc).to_vec();
        for (idx, x) in masked.iter_mut().enumerate() {
            let (i, j) = ((idx / n) % t, idx % n);
            if !allow(i, j) {
                *x = f32::NEG_INFINITY;
            }
        }
        let p = super::super::norm::softmax(&HostTensor::f32(sc.shape.clone(), masked)).unwrap();
        f(&matmul(&p, v).unwrap()).to_vec()
    }

    #[test]
    fn every_mask_matches_the_composed_ops_bit_for_bit() {
        let (b, t, d) = (2, 5, 4);
        let q = t_(&[b, t, d], 1);
        let k = t_(&[b, t, d], 2);
        let v = t_(&[b, t, 3], 3);
        let lv = [0i64, 1, 1, 2, 2];
        let levels = ti(&[t], &lv);
        type Allows<'a> = &'a dyn Fn(usize, usize) -> bool;
        let cases: [(Mask, Allows); 4] = [
            (Mask::Full, &|_, _| true),
            (Mask::Causal, &|i, j| j <= i),
            (Mask::BlockCausal, &|i, j| lv[j] <= lv[i]),
            (Mask::EarlierPlusSelf, &|i, j| i == j || lv[j] < lv[i]),
        ];
        for (mask, allow) in cases {
            let got = attention(&w(&q), &w(&k), &w(&v), Some(&levels), mask, 1.0, t).unwrap();
            assert_eq!(got.shape, vec![b, t, 3]);
            assert_eq!(f(&got), composed(&q, &k, &v, allow).as_slice(), "{}", mask.name());
        }
    }

    #[test]
    fn a_cache_is_read_only_up_to_its_filled_keys() {
        // Two queries at positions 3, 4 over a cache of 8 whose first 5 rows are filled.
        let q = t_(&[1, 2, 4], 4);
        let mut kd = seq(8 * 4, 5);
        let mut vd = seq(8 * 2, 6);
        let (k5, v5) = (t(&[1, 5, 4], &kd[..20]), t(&[1, 5, 2], &vd[..10]));
        // Garbage past the filled rows must not matter.
        kd[20..].fill(f32::NAN);
        vd[10..].fill(1e30);
        let (k8, v8) = (t(&[1, 8, 4], &kd), t(&[1, 8, 2], &vd));
        let cached = attention(&w(&q), &w(&k8), &w(&v8), None, Mask::Causal, 0.5, 5).unwrap();
        let whole = attention(&w(&q), &w(&k5), &w(&v5), None, Mask::Causal, 0.5, 5).unwrap();
        assert_eq!(f(&cached), f(&whole));
        let qs = HostTensor::f32(q.shape.clone(), f(&q).iter().map(|x| x * 0.5).collect());
        assert_eq!(f(&whole), composed(&qs, &k5, &v5, |i, j| j <= i + 3).as_slice());
    }

    #[test]
    fn strided_views_read_the_same_elements_as_dense_copies() {
        // Head-split views [B, H, T, D] of [B, T, H*D] rows, as a step makes them.
        let (b, t, h, d) = (2, 3, 2, 4);
        let heads = |seed| {
            let x = t_(&[b, t, h * d], seed);
            View::whole(Arc::new(x)).reshape(&[b, t, h, d]).unwrap().permute(&[0, 2, 1, 3])
        };
        let (q, k, v) = (heads(7), heads(8), heads(9));
        let strided = attention(&q, &k, &v, None, Mask::Causal, 0.25, t).unwrap();
        let dense = |x: &View| w(&x.to_tensor());
        let copied = attention(&dense(&q), &dense(&k), &dense(&v), None, Mask::Causal, 0.25, t).unwrap();
        assert_eq!(f(&strided), f(&copied));
    }

    fn w(x: &HostTensor) -> View {
        View::whole(Arc::new(x.clone()))
    }

    fn t_(shape: &[usize], seed: u64) -> HostTensor {
        t(shape, &seq(shape.iter().product(), seed))
    }
}
