//! Attention as one flash-style kernel: per query row (rows of all batches
//! and heads in parallel), an online softmax over tiles of keys, so scores
//! are never materialised. It reads q, k and v as the views they are (a KV
//! cache in place, only up to `keys`), and skips every tile of keys the mask
//! disallows for the row: past the query for `causal`, tiles whose levels are
//! all later (`block_causal`) or not earlier and without the query itself
//! (`earlier_plus_self`). Same contract as the reference kernel
//! (`reference/attention.rs`); the sums are in another order (per tile,
//! rescaled), so results agree to rounding.

use crate::reference::view::View;
use crate::reference::KResult;
use crate::tensor::HostTensor;
use ecarc_compiler::ir::op::Mask;
use rayon::prelude::*;

/// Keys per tile.
const TILE: usize = 64;

/// `q . k` over `d` elements with strides (eight lanes when both are contiguous).
#[inline]
fn dot(q: &[f32], k: &[f32], k0: usize, ks: usize) -> f32 {
    let d = q.len();
    if ks == 1 {
        let k = &k[k0..k0 + d];
        let mut acc = [0f32; 8];
        let n = d / 8 * 8;
        for (qc, kc) in q[..n].chunks_exact(8).zip(k[..n].chunks_exact(8)) {
            for l in 0..8 {
                acc[l] += qc[l] * kc[l];
            }
        }
        let mut s = (acc[0] + acc[4]) + (acc[1] + acc[5]) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
        for i in n..d {
            s += q[i] * k[i];
        }
        s
    } else {
        q.iter().enumerate().map(|(c, a)| a * k[k0 + c * ks]).sum()
    }
}

/// `q[..., T, d]`, `k[..., S, d]`, `v[..., S, e]` (`S >= keys`): queries at
/// positions `keys - T .. keys` over keys `0..keys`; `levels: i64[keys]` for
/// the level masks. Result `[..., T, e]`, dense.
pub(crate) fn attention(
    q: &View,
    k: &View,
    v: &View,
    levels: Option<&[i64]>,
    mask: Mask,
    scale: f32,
    keys: usize,
) -> KResult<HostTensor> {
    let crate::reference::attention::Operands { qv, kv, vv, r, t, d, e } =
        crate::reference::attention::operands(q, k, v, keys)?;
    let lv = match (mask.needs_levels(), levels) {
        (true, Some(l)) if l.len() != keys => return Err(format!("{} levels for {keys} keys", l.len())),
        (true, Some(l)) => Some(l),
        (true, None) => return Err(format!("the {} mask needs the keys' levels", mask.name())),
        (false, _) => None,
    };
    let level = |p: usize| lv.map_or(0, |l| l[p]);
    // The lowest level in each tile, for skipping.
    let tile_min: Vec<i64> =
        (0..keys.div_ceil(TILE)).map(|i| (i * TILE..keys.min(i * TILE + TILE)).map(level).min().unwrap_or(0)).collect();
    let (qb, kb, vb) = (q.batch_offsets(r - 2), k.batch_offsets(r - 2), v.batch_offsets(r - 2));
    let (qs, ks, vs) = (&q.strides[r - 2..], &k.strides[r - 2..], &v.strides[r - 2..]);
    let first = keys - t;
    let mut out = vec![0f32; qb.len() * t * e];
    if e == 0 {
        let mut shape = q.shape.clone();
        shape[r - 1] = e;
        return Ok(HostTensor::f32(shape, out));
    }
    out.par_chunks_mut(e).enumerate().for_each(|(row, o)| {
        let (bh, i) = (row / t, row % t);
        let q0 = qb[bh] + i * qs[0];
        let qr: Vec<f32> = (0..d).map(|c| qv[q0 + c * qs[1]] * scale).collect();
        let pos = first + i;
        let lq = level(pos);
        let hi = if mask == Mask::Causal { pos + 1 } else { keys };
        let (mut m, mut l) = (f32::NEG_INFINITY, 0f32);
        let mut scores = [0f32; TILE];
        let mut allowed = [false; TILE];
        for (tile, &lowest) in tile_min.iter().enumerate().take(hi.div_ceil(TILE)) {
            let (lo, end) = (tile * TILE, hi.min(tile * TILE + TILE));
            let skip = match mask {
                Mask::Full | Mask::Causal => false,
                Mask::BlockCausal => lowest > lq,
                Mask::EarlierPlusSelf => lowest >= lq && !(lo..end).contains(&pos),
            };
            if skip {
                continue;
            }
            let mut tmax = f32::NEG_INFINITY;
            let mut any = false;
            for j in lo..end {
                let ok = mask.allows(pos as u64, j as u64, lq, level(j));
                allowed[j - lo] = ok;
                if ok {
                    let sc = dot(&qr, kv, kb[bh] + j * ks[0], ks[1]);
                    scores[j - lo] = sc;
                    if sc > tmax || sc.is_nan() {
                        tmax = sc;
                    }
                    any = true;
                }
            }
            if !any {
                continue;
            }
            let m_new = if tmax > m || tmax.is_nan() { tmax } else { m };
            if m_new != m {
                let corr = if m == f32::NEG_INFINITY { 0.0 } else { (m - m_new).exp() };
                l *= corr;
                for a in o.iter_mut() {
                    *a *= corr;
                }
                m = m_new;
            }
            for j in lo..end {
                if !allowed[j - lo] {
                    continue;
                }
                let p = (scores[j - lo] - m).exp();
                l += p;
                let v0 = vb[bh] + j * vs[0];
                if vs[1] == 1 {
                    for (a, x) in o.iter_mut().zip(&vv[v0..v0 + e]) {
                        *a += p * x;
                    }
                } else {
                    for (c, a) in o.iter_mut().enumerate() {
                        *a += p * vv[v0 + c * vs[1]];
                    }
                }
            }
        }
        if l > 0.0 || l.is_nan() {
            for a in o.iter_mut() {
                *a /= l;
            }
        }
    });
    let mut shape = q.shape.clone();
    shape[r - 1] = e;
    Ok(HostTensor::f32(shape, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::attention as reference;
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
    const MASKS: [Mask; 4] = [Mask::Full, Mask::Causal, Mask::BlockCausal, Mask::EarlierPlusSelf];

    /// Levels 0, 1, 1, 2, 2, 2, ... as a next-scale layout, and some unsorted.
    fn levels(n: usize, sorted: bool) -> HostTensor {
        let l: Vec<i64> = (0..n as i64).map(|i| if sorted { (i as f64).sqrt() as i64 } else { (i * 7) % 5 }).collect();
        HostTensor::i64(vec![n], l)
    }

    #[test]
    fn every_mask_matches_the_reference_over_odd_sizes_and_many_tiles() {
        for (b, tq, s, d, e) in
            [(1, 1, 1, 1, 1), (2, 5, 5, 4, 3), (3, 7, 150, 9, 5), (1, 130, 130, 16, 8), (2, 1, 200, 8, 8)]
        {
            let (q, k, v) = (t(&[b, tq, d], 1), t(&[b, s, d], 2), t(&[b, s, e], 3));
            for sorted in [true, false] {
                let lv = levels(s, sorted);
                for mask in MASKS {
                    let want = reference::attention(&w(&q), &w(&k), &w(&v), Some(&lv), mask, 0.7, s).unwrap();
                    let got = attention(&w(&q), &w(&k), &w(&v), lv.as_i64(), mask, 0.7, s).unwrap();
                    close(&got, &want, &format!("{} {b} {tq} {s} {d} {e} {sorted}", mask.name()));
                }
            }
        }
    }

    #[test]
    fn a_cache_is_read_in_place_up_to_its_keys_through_strided_views() {
        // A head-split [B, H, S, D] view of a [B, S, H*D] cache of 100 rows, 70 filled.
        let (b, h, d, cap, keys, tq) = (2, 3, 4, 100, 70, 2);
        let heads = |x: &HostTensor, rows| w(x).reshape(&[b, rows, h, d]).unwrap().permute(&[0, 2, 1, 3]);
        let mut kd = t(&[b, cap, h * d], 5);
        let vd = t(&[b, cap, h * d], 6);
        if let crate::tensor::Data::F32(x) = &mut kd.data {
            for bi in 0..b {
                x[(bi * cap + keys) * h * d..(bi + 1) * cap * h * d].fill(f32::NAN);
            }
        }
        let q = t(&[b, tq, h * d], 7);
        let (qv, kv, vv) = (heads(&q, tq), heads(&kd, cap), heads(&vd, cap));
        for mask in [Mask::Full, Mask::Causal] {
            let want = reference::attention(&qv, &kv, &vv, None, mask, 0.5, keys).unwrap();
            let got = attention(&qv, &kv, &vv, None, mask, 0.5, keys).unwrap();
            assert!(got.non_finite().is_none());
            close(&got, &want, mask.name());
        }
    }

    #[test]
    fn bad_operands_are_errors() {
        let (q, k) = (t(&[1, 2, 4], 1), t(&[1, 3, 4], 2));
        assert!(attention(&w(&q), &w(&k), &w(&k), None, Mask::BlockCausal, 1.0, 3).is_err());
        assert!(attention(&w(&q), &w(&k), &w(&k), None, Mask::Full, 1.0, 4).is_err());
        assert!(attention(&w(&k), &w(&q), &w(&q), None, Mask::Full, 1.0, 2).is_err());
    }
}
