//! Type inference: the result type of an op from its operand types. Used by
//! the builder (so programs are typed by construction) and by the verifier.

use super::dim::{product, Dim};
use super::graph::TensorType;
use super::op::{DType, Op};

fn want(cond: bool, msg: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(msg())
    }
}

fn arity(tys: &[&TensorType], n: std::ops::RangeInclusive<usize>) -> Result<(), String> {
    want(n.contains(&tys.len()), || format!("takes {}..={} operands, got {}", n.start(), n.end(), tys.len()))
}

fn f32s(tys: &[&TensorType]) -> Result<(), String> {
    want(tys.iter().all(|t| t.dtype == DType::F32), || "operands must be f32".into())
}

fn shape_str(s: &[Dim]) -> String {
    format!("[{}]", s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", "))
}

/// Numpy broadcasting of two shapes (a dimension broadcasts only if it is 1).
pub fn broadcast(a: &[Dim], b: &[Dim]) -> Result<Vec<Dim>, String> {
    let n = a.len().max(b.len());
    let one = Dim::c(1);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let da = if i + a.len() >= n { &a[i + a.len() - n] } else { &one };
        let db = if i + b.len() >= n { &b[i + b.len() - n] } else { &one };
        out.push(if da == db || *db == one {
            da.clone()
        } else if *da == one {
            db.clone()
        } else {
            return Err(format!("cannot broadcast {} with {}", shape_str(a), shape_str(b)));
        });
    }
    Ok(out)
}

/// Sampling settings given at run time: `temperature: f32[]`, `top_k: i64[]`, `top_p: f32[]`.
fn settings(tys: &[&TensorType]) -> Result<(), String> {
    let ok = tys.len() == 3
        && tys.iter().all(|t| t.rank() == 0)
        && [tys[0].dtype, tys[1].dtype, tys[2].dtype] == [DType::F32, DType::I64, DType::F32];
    want(ok, || "the settings must be scalars temperature: f32[], top_k: i64[], top_p: f32[]".into())
}

pub fn infer(op: &Op, tys: &[&TensorType]) -> Result<TensorType, String> {
    use Op::*;
    match op {
        Input { .. } | Param { .. } | State { .. } => Err("sources are created with an explicit type".into()),
        Fused(k) => {
            k.verify(tys)?;
            Ok(k.output().clone())
        }
        Const { .. } => {
            arity(tys, 0..=0)?;
            Ok(TensorType::f32(vec![]))
        }
        Linear => {
            arity(tys, 2..=3)?;
            f32s(tys)?;
            let (x, w) = (tys[0], tys[1]);
            want(w.rank() == 2, || "weight must be [out, in]".into())?;
            want(x.rank() >= 1 && x.shape.last() == Some(&w.shape[1]), || {
                format!("input {} does not end in the weight's in-features {}", shape_str(&x.shape), w.shape[1])
            })?;
            if let Some(b) = tys.get(2) {
                want(b.shape == [w.shape[0].clone()], || {
                    format!("bias {} must be [{}]", shape_str(&b.shape), w.shape[0])
                })?;
            }
            let mut s = x.shape.clone();
            *s.last_mut().expect("rank >= 1") = w.shape[0].clone();
            Ok(TensorType::f32(s))
        }
        MatMul => {
            arity(tys, 2..=2)?;
            f32s(tys)?;
            let (a, b) = (tys[0], tys[1]);
            want(a.rank() >= 2 && b.rank() >= 2, || "matmul operands must have rank >= 2".into())?;
            let (m, k) = (&a.shape[a.rank() - 2], &a.shape[a.rank() - 1]);
            let (k2, n) = (&b.shape[b.rank() - 2], &b.shape[b.rank() - 1]);
            want(k == k2, || format!("inner dimensions differ: {} @ {}", shape_str(&a.shape), shape_str(&b.shape)))?;
            let mut s = broadcast(&a.shape[..a.rank() - 2], &b.shape[..b.rank() - 2])?;
            s.push(m.clone());
            s.push(n.clone());
            Ok(TensorType::f32(s))
        }
        Conv2d { stride, pad } => {
            arity(tys, 2..=3)?;
            f32s(tys)?;
            let (x, w) = (tys[0], tys[1]);
            want(x.rank() == 4 && w.rank() == 4, || "conv2d takes x[N,C,H,W] and w[O,C,k,k]".into())?;
            want(x.shape[1] == w.shape[1], || format!("{} input channels, weight expects {}", x.shape[1], w.shape[1]))?;
            want(*stride > 0, || "stride must be positive".into())?;
            let k = w.shape[2].as_const().ok_or("kernel size must be constant")?;
            want(w.shape[3] == w.shape[2], || "kernels are square".into())?;
            if let Some(b) = tys.get(2) {
                want(b.shape == [w.shape[0].clone()], || format!("conv bias must be [{}]", w.shape[0]))?;
            }
            let out = |d: &Dim| -> Result<Dim, String> {
                let v = d.as_const().ok_or("conv2d needs constant spatial sizes")?;
                let padded = v + 2 * *pad as u64;
                want(padded >= k, || "kernel larger than the padded input".into())?;
                Ok(Dim::c((padded - k) / *stride as u64 + 1))
            };
            Ok(TensorType::f32(vec![x.shape[0].clone(), w.shape[0].clone(), out(&x.shape[2])?, out(&x.shape[3])?]))
        }
        Embedding => {
            arity(tys, 2..=2)?;
            let (t, i) = (tys[0], tys[1]);
            want(t.dtype == DType::F32 && t.rank() == 2, || "table must be f32 [V, D]".into())?;
            want(i.dtype == DType::I64, || "indices must be i64".into())?;
            let mut s = i.shape.clone();
            s.push(t.shape[1].clone());
            Ok(TensorType::f32(s))
        }
        Unary(_) | Affine { .. } | ClampMax { .. } | Softmax => {
            arity(tys, 1..=1)?;
            f32s(tys)?;
            Ok(tys[0].clone())
        }
        L2Normalize { .. } => {
            arity(tys, 1..=1)?;
            f32s(tys)?;
            Ok(tys[0].clone())
        }
        Binary(_) => {
            arity(tys, 2..=2)?;
            f32s(tys)?;
            Ok(TensorType::f32(broadcast(&tys[0].shape, &tys[1].shape)?))
        }
        LayerNorm { .. } | RmsNorm { .. } => {
            arity(tys, if matches!(op, RmsNorm { .. }) { 2..=2 } else { 1..=3 })?;
            f32s(tys)?;
            let last = tys[0].shape.last().ok_or("norm of a scalar")?;
            for w in &tys[1..] {
                want(w.shape == [last.clone()], || format!("norm weight {} must be [{last}]", shape_str(&w.shape)))?;
            }
            Ok(tys[0].clone())
        }
        GroupNorm { groups, .. } => {
            arity(tys, 3..=3)?;
            f32s(tys)?;
            let x = tys[0];
            want(x.rank() == 4, || "group_norm takes [N, C, H, W]".into())?;
            let c = x.shape[1].as_const().ok_or("channels must be constant")?;
            want(*groups > 0 && c % *groups as u64 == 0, || format!("{c} channels in {groups} groups"))?;
            for w in &tys[1..] {
                want(w.shape == [x.shape[1].clone()], || "group_norm weight and bias must be [C]".into())?;
            }
            Ok(x.clone())
        }
        ArgMax => {
            arity(tys, 1..=1)?;
            f32s(tys)?;
            let s = &tys[0].shape;
            want(!s.is_empty(), || "argmax of a scalar".into())?;
            Ok(TensorType::i64(s[..s.len() - 1].to_vec()))
        }
        Reshape { shape } => {
            arity(tys, 1..=1)?;
            want(product(shape) == tys[0].numel(), || {
                format!("cannot reshape {} to {}", shape_str(&tys[0].shape), shape_str(shape))
            })?;
            Ok(TensorType { dtype: tys[0].dtype, shape: shape.clone() })
        }
        Permute { perm } => {
            arity(tys, 1..=1)?;
            let r = tys[0].rank();
            let mut seen = perm.clone();
            seen.sort();
            want(perm.len() == r && seen.iter().enumerate().all(|(i, &p)| i == p as usize), || {
                format!("{perm:?} is not a permutation of {r} axes")
            })?;
            Ok(TensorType {
                dtype: tys[0].dtype,
                shape: perm.iter().map(|&p| tys[0].shape[p as usize].clone()).collect(),
            })
        }
        Slice { axis, start, len } => {
            arity(tys, 1..=1)?;
            let s = &tys[0].shape;
            let a = *axis as usize;
            want(a < s.len(), || format!("axis {a} of a rank-{} tensor", s.len()))?;
            if let (Some(st), Some(l), Some(n)) = (start.as_const(), len.as_const(), s[a].as_const()) {
                want(st.checked_add(l).is_some_and(|e| e <= n), || format!("slice {st}+{l} of {n}"))?;
            }
            let mut out = s.clone();
            out[a] = len.clone();
            Ok(TensorType { dtype: tys[0].dtype, shape: out })
        }
        Concat { axis } => {
            want(!tys.is_empty(), || "concat of nothing".into())?;
            let a = *axis as usize;
            let first = tys[0];
            want(a < first.rank(), || format!("axis {a} of a rank-{} tensor", first.rank()))?;
            let mut total = Dim::c(0);
            for t in tys {
                want(t.dtype == first.dtype && t.rank() == first.rank(), || {
                    "concat operands differ in dtype or rank".into()
                })?;
                for (i, (d, e)) in t.shape.iter().zip(&first.shape).enumerate() {
                    want(i == a || d == e, || {
                        format!(
                            "concat shapes {} and {} differ off axis {a}",
                            shape_str(&t.shape),
                            shape_str(&first.shape)
                        )
                    })?;
                }
                total = total.add(&t.shape[a]);
            }
            let mut s = first.shape.clone();
            s[a] = total;
            Ok(TensorType { dtype: first.dtype, shape: s })
        }
        WriteSlice { axis, start } => {
            arity(tys, 2..=2)?;
            let (dst, src) = (tys[0], tys[1]);
            let a = *axis as usize;
            want(dst.dtype == src.dtype && dst.rank() == src.rank(), || {
                "write_slice operands differ in dtype or rank".into()
            })?;
            want(a < dst.rank(), || format!("axis {a} of a rank-{} tensor", dst.rank()))?;
            for (i, (d, e)) in dst.shape.iter().zip(&src.shape).enumerate() {
                want(i == a || d == e, || {
                    format!(
                        "write_slice of {} into {} differs off axis {a}",
                        shape_str(&src.shape),
                        shape_str(&dst.shape)
                    )
                })?;
            }
            if let (Some(st), Some(l), Some(n)) = (start.as_const(), src.shape[a].as_const(), dst.shape[a].as_const()) {
                want(st.checked_add(l).is_some_and(|e| e <= n), || format!("write_slice {st}+{l} into {n}"))?;
            }
            Ok(dst.clone())
        }
        Attention { mask, keys, .. } => {
            arity(tys, if mask.needs_levels() { 4..=4 } else { 3..=3 })?;
            f32s(&tys[..3])?;
            let (q, k, v) = (tys[0], tys[1], tys[2]);
            let r = q.rank();
            want(r >= 2 && k.rank() == r && v.rank() == r, || "q, k and v must be [..., T, d] of one rank".into())?;
            want(q.shape[..r - 2] == k.shape[..r - 2] && k.shape[..r - 1] == v.shape[..r - 1], || {
                format!("q {}, k {} and v {} disagree", shape_str(&q.shape), shape_str(&k.shape), shape_str(&v.shape))
            })?;
            want(q.shape[r - 1] == k.shape[r - 1], || "q and k differ in head dimension".into())?;
            if let (Some(n), Some(s)) = (keys.as_const(), k.shape[r - 2].as_const()) {
                want(n <= s, || format!("{n} keys in a cache of {s}"))?;
            }
            if let (Some(n), Some(t)) = (keys.as_const(), q.shape[r - 2].as_const()) {
                want(t <= n, || format!("{t} queries but only {n} keys"))?;
            }
            if mask.needs_levels() {
                want(tys[3].dtype == DType::I64 && tys[3].shape == [keys.clone()], || {
                    format!("the levels must be i64[{keys}], got {}", shape_str(&tys[3].shape))
                })?;
            }
            let mut out = q.shape.clone();
            out[r - 1] = v.shape[r - 1].clone();
            Ok(TensorType::f32(out))
        }
        Resize { h, w, .. } => {
            arity(tys, 1..=1)?;
            f32s(tys)?;
            want(tys[0].rank() == 4, || "resize takes [N, C, H, W]".into())?;
            let s = &tys[0].shape;
            Ok(TensorType::f32(vec![s[0].clone(), s[1].clone(), h.clone(), w.clone()]))
        }
        Rope => {
            arity(tys, 3..=3)?;
            f32s(tys)?;
            let (x, c, s) = (tys[0], tys[1], tys[2]);
            want(x.rank() >= 2, || "rope input must be [..., T, d]".into())?;
            let t = &x.shape[x.rank() - 2];
            let half = x.shape[x.rank() - 1].div_c(2).ok_or("rope needs an even last dimension")?;
            want(c.shape == [t.clone(), half.clone()] && s.shape == c.shape, || {
                format!("cos/sin must be [{t}, {half}], got {} and {}", shape_str(&c.shape), shape_str(&s.shape))
            })?;
            Ok(x.clone())
        }
        Sinusoid { dim, .. } => {
            arity(tys, 1..=1)?;
            f32s(tys)?;
            want(tys[0].rank() == 1, || "sinusoid takes t[N]".into())?;
            want(*dim > 0 && *dim % 2 == 0, || "sinusoid dim must be even and positive".into())?;
            Ok(TensorType::f32(vec![tys[0].shape[0].clone(), Dim::c(*dim as u64)]))
        }
        Guide { .. } => {
            arity(tys, 3..=3)?;
            f32s(tys)?;
            want(tys[0].shape == tys[1].shape, || "cond and uncond differ in shape".into())?;
            want(tys[2].rank() == 0, || "guidance scale must be a scalar".into())?;
            Ok(tys[0].clone())
        }
        SampleTokens => {
            arity(tys, 5..=5)?;
            let s = &tys[0].shape;
            want(tys[0].dtype == DType::F32 && tys[1].dtype == DType::F32, || "logits and noise must be f32".into())?;
            want(!s.is_empty(), || "logits must have a vocabulary axis".into())?;
            want(tys[1].shape == s[..s.len() - 1], || "noise must have one value per sampled token".into())?;
            settings(&tys[2..])?;
            Ok(TensorType::i64(s[..s.len() - 1].to_vec()))
        }
        FlowMapTokens { .. } => {
            arity(tys, 6..=6)?;
            f32s(&tys[..3])?;
            let (l, n, c) = (&tys[0].shape, &tys[1].shape, tys[2]);
            want(!l.is_empty() && !n.is_empty(), || "logits and noise need a last axis".into())?;
            want(n[..n.len() - 1] == l[..l.len() - 1], || "noise must have one vector per token".into())?;
            want(c.rank() == 2 && c.shape[0] == l[l.len() - 1] && c.shape[1] == n[n.len() - 1], || {
                "codes must be [V, D]: V the logits' last axis, D the noise's".into()
            })?;
            settings(&tys[3..])?;
            Ok(TensorType::i64(l[..l.len() - 1].to_vec()))
        }
        NearestCode => {
            arity(tys, 2..=2)?;
            f32s(tys)?;
            let (x, c) = (tys[0], tys[1]);
            want(c.rank() == 2 && x.shape.last() == Some(&c.shape[1]), || {
                "codes must be [V, D] with D the input's last axis".into()
            })?;
            Ok(TensorType::i64(x.shape[..x.rank() - 1].to_vec()))
        }
    }
}
