//! The GEMM anchors: Linear, MatMul and Conv2d as one batched GEMM
//! `out[bat, m, n] = A[bat] . B[bat] (+ bias)` whose operands are read in
//! place through their views: Linear's weight is B with its strides swapped,
//! MatMul's broadcast batches are zero strides, Conv2d is an implicit GEMM
//! (the weight times the input's patches, gathered while loading). Three
//! kernels share the operand preludes (`gemm_strided.wgsl`, `gemm_conv.wgsl`):
//! a tiled one (64x64 tiles through workgroup memory), a one-thread-per-output
//! baseline, and a GEMV for one or two rows (decode steps).

use super::{word, Ctx, Store};
use crate::backend::Buffer;
use crate::error::{Result, RuntimeError};
use crate::webgpu::record::Grid;
use ecarc_compiler::ir::DType;

const COMMON: &str = include_str!("../shaders/gemm_common.wgsl");
const STRIDED: &str = include_str!("../shaders/gemm_strided.wgsl");
const CONV: &str = include_str!("../shaders/gemm_conv.wgsl");
const TILED: &str = include_str!("../shaders/gemm_tiled.wgsl");
const NAIVE: &str = include_str!("../shaders/gemm_naive.wgsl");
const GEMV: &str = include_str!("../shaders/gemm_gemv.wgsl");

/// Which GEMM kernel runs (benchmarks and tests pick; the backend uses `Best`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gemm {
    /// The GEMV for one or two rows whose B is contiguous along k (a
    /// weight-streaming decode step), the tiled kernel otherwise.
    Best,
    Tiled,
    /// One thread per output element: the baseline.
    Naive,
}

/// Output tile of the tiled kernel, and columns per GEMV workgroup.
const TILE: usize = 64;
const GEMV_COLS: usize = 4;

/// How A and B are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Prelude {
    Strided,
    Conv,
}

/// One GEMM, its operands checked, as the kernels' info words.
pub(crate) struct Problem {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub batches: usize,
    pub a: Buffer,
    pub b: Buffer,
    /// The bias and whether it runs along the rows (Conv2d's channels) or the columns.
    pub bias: Option<(Buffer, bool)>,
    pub prelude: Prelude,
    /// The prelude's words (info[8..]).
    pub words: Vec<u32>,
    /// Whether A's k and B's n are contiguous (which way threads load tiles).
    pub a_k_inner: bool,
    pub b_n_inner: bool,
    /// Whether B's k is contiguous (the GEMV reads it so).
    pub b_k_inner: bool,
    pub out_shape: Vec<usize>,
}

fn invalid(why: String) -> RuntimeError {
    RuntimeError::Invalid(why)
}

fn f32s(bufs: &[(&Buffer, &str)]) -> Result<()> {
    for (b, what) in bufs {
        if b.dtype != DType::F32 {
            return Err(invalid(format!("{what} must be f32, got {b:?}")));
        }
    }
    Ok(())
}

/// A bias of `[n]` elements, checked.
fn bias_of(bias: Option<&Buffer>, n: usize, rows: bool) -> Result<Option<(Buffer, bool)>> {
    match bias {
        Some(b) if b.shape != [n] => Err(invalid(format!("bias {:?} must be [{n}]", b.shape))),
        Some(b) => {
            f32s(&[(b, "bias")])?;
            Ok(Some((b.clone(), rows)))
        }
        None => Ok(None),
    }
}

/// Axes of a view with adjacent ones merged where their strides allow and
/// unit ones dropped, as (extent, stride): the same elements in the same order.
fn merged(shape: &[usize], strides: &[usize]) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for (&d, &s) in shape.iter().zip(strides) {
        if d == 1 {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.1 == s * d => *last = (last.0 * d, s),
            _ => out.push((d, s)),
        }
    }
    out
}

/// The strided prelude's words.
fn strided_words(
    a: (usize, usize, usize),
    b: (usize, usize, usize),
    batch: &[(usize, usize, usize)],
) -> Result<Vec<u32>> {
    let mut w = Vec::with_capacity(7 + 3 * batch.len());
    for v in [a.0, a.1, a.2, b.0, b.1, b.2, batch.len()] {
        w.push(word(v, "a GEMM operand's offset or stride")?);
    }
    for pick in [0, 1, 2] {
        for d in batch {
            w.push(word([d.0, d.1, d.2][pick], "a GEMM batch stride")?);
        }
    }
    Ok(w)
}

/// `x[..., in] . w[out, in]^T (+ bias[out])`: the rows of `x` are A (its
/// leading axes merged as far as its strides allow, the rest batches), `w`
/// with its strides swapped is B, shared by every batch.
pub(crate) fn linear(x: &Buffer, w: &Buffer, bias: Option<&Buffer>) -> Result<Problem> {
    if w.shape.len() != 2 || x.shape.is_empty() {
        return Err(invalid(format!("linear takes x[..., in] and w[out, in], got {:?} and {:?}", x.shape, w.shape)));
    }
    f32s(&[(x, "the input"), (w, "the weight")])?;
    let (n_out, n_in) = (w.shape[0], w.shape[1]);
    let r = x.shape.len();
    if x.shape[r - 1] != n_in {
        return Err(invalid(format!("input {:?} does not end in the weight's in-features {n_in}", x.shape)));
    }
    let bias = bias_of(bias, n_out, false)?;
    let mut lead = merged(&x.shape[..r - 1], &x.strides[..r - 1]);
    let (m, rs) = lead.pop().unwrap_or((1, 0));
    let batch: Vec<(usize, usize, usize)> = lead.iter().map(|&(d, s)| (d, s, 0)).collect();
    let words = strided_words((x.offset, rs, x.strides[r - 1]), (w.offset, w.strides[1], w.strides[0]), &batch)?;
    let mut out_shape = x.shape.clone();
    out_shape[r - 1] = n_out;
    Ok(Problem {
        m,
        n: n_out,
        k: n_in,
        batches: batch.iter().map(|d| d.0).product(),
        a: x.clone(),
        b: w.clone(),
        bias,
        prelude: Prelude::Strided,
        words,
        a_k_inner: x.strides[r - 1] == 1,
        b_n_inner: w.strides[0] == 1 && w.strides[1] != 1,
        b_k_inner: w.strides[1] == 1 || n_in <= 1,
        out_shape,
    })
}

/// `a[..., m, k] @ b[..., k, n]`, batch axes broadcast (numpy rules).
pub(crate) fn matmul(a: &Buffer, b: &Buffer) -> Result<Problem> {
    let (ra, rb) = (a.shape.len(), b.shape.len());
    if ra < 2 || rb < 2 {
        return Err(invalid(format!("matmul operands must have rank >= 2, got {:?} and {:?}", a.shape, b.shape)));
    }
    f32s(&[(a, "lhs"), (b, "rhs")])?;
    let (m, k) = (a.shape[ra - 2], a.shape[ra - 1]);
    let (k2, n) = (b.shape[rb - 2], b.shape[rb - 1]);
    if k != k2 {
        return Err(invalid(format!("inner dimensions differ: {:?} @ {:?}", a.shape, b.shape)));
    }
    let batch = crate::reference::broadcast_shape(&a.shape[..ra - 2], &b.shape[..rb - 2]).map_err(invalid)?;
    // A batch axis's stride in an operand: 0 where the operand broadcasts.
    let stride = |x: &Buffer, i: usize| {
        let pad = batch.len() - (x.shape.len() - 2);
        if i < pad || x.shape[i - pad] == 1 {
            0
        } else {
            x.strides[i - pad]
        }
    };
    let dims: Vec<(usize, usize, usize)> =
        (0..batch.len()).filter(|&i| batch[i] != 1).map(|i| (batch[i], stride(a, i), stride(b, i))).collect();
    let (acs, brs, bcs) = (a.strides[ra - 1], b.strides[rb - 2], b.strides[rb - 1]);
    let words = strided_words((a.offset, a.strides[ra - 2], acs), (b.offset, brs, bcs), &dims)?;
    let mut out_shape = batch.clone();
    out_shape.extend([m, n]);
    Ok(Problem {
        m,
        n,
        k,
        batches: batch.iter().product(),
        a: a.clone(),
        b: b.clone(),
        bias: None,
        prelude: Prelude::Strided,
        words,
        a_k_inner: acs == 1,
        b_n_inner: bcs == 1,
        b_k_inner: brs == 1 || k <= 1,
        out_shape,
    })
}

/// `x[N, C, H, W] * w[O, C, k, k] (+ b[O])`, zero padding: per image, the
/// weight `[O, C*k*k]` times the patches `[C*k*k, OH*OW]`.
pub(crate) fn conv2d(x: &Buffer, w: &Buffer, bias: Option<&Buffer>, stride: usize, pad: usize) -> Result<Problem> {
    let [nb, c, h, wd, o, k] =
        crate::reference::linalg::conv2d_shapes(&x.shape, &w.shape, stride, pad).map_err(invalid)?;
    f32s(&[(x, "the input"), (w, "the weight")])?;
    let bias = bias_of(bias, o, true)?;
    let oh = (h + 2 * pad - k) / stride + 1;
    let ow = (wd + 2 * pad - k) / stride + 1;
    let mut words = Vec::with_capacity(16);
    for v in [k, stride, pad, h, wd, ow, w.offset] {
        words.push(word(v, "a convolution's size")?);
    }
    for &s in &w.strides {
        words.push(word(s, "a weight stride")?);
    }
    words.push(word(x.offset, "an input offset")?);
    for &s in &x.strides {
        words.push(word(s, "an input stride")?);
    }
    // The kernel computes tap positions as i32.
    if (h.max(wd) + pad) as u64 * 2 > i32::MAX as u64 {
        return Err(invalid(format!("input {:?} is too large for the wgpu convolution", x.shape)));
    }
    Ok(Problem {
        m: o,
        n: oh * ow,
        k: c * k * k,
        batches: nb,
        a: w.clone(),
        b: x.clone(),
        bias,
        prelude: Prelude::Conv,
        words,
        a_k_inner: w.strides[3] == 1,
        b_n_inner: x.strides[3] == 1,
        b_k_inner: false,
        out_shape: vec![nb, o, oh, ow],
    })
}

/// The first binding of a GEMM kernel's store hook (after info, a, b, bias).
pub(crate) const HOOK_BINDING: u32 = 4;

/// The WGSL of a kernel body over a prelude, its result through the store
/// hook `hook` (one pipeline each, cached).
pub(crate) fn shader(prelude: Prelude, body: &'static str, hook: &str) -> String {
    let p = match prelude {
        Prelude::Strided => STRIDED,
        Prelude::Conv => CONV,
    };
    format!("{COMMON}\n{p}\n{body}\n{hook}")
}

/// The kernel bodies by name (tests compose them with hooks).
#[cfg(test)]
pub(crate) const BODIES: [(&str, &str); 3] = [("tiled", TILED), ("naive", NAIVE), ("gemv", GEMV)];

/// Every GEMM shader, for validation without an adapter.
#[cfg(test)]
pub(crate) fn all_shaders() -> Vec<(String, String)> {
    let mut v = Vec::new();
    let hook = ecarc_compiler::codegen::epilogue::plain(HOOK_BINDING);
    for (pn, p) in [("strided", Prelude::Strided), ("conv", Prelude::Conv)] {
        for (bn, b) in BODIES {
            v.push((format!("gemm_{bn}_{pn}"), shader(p, b, &hook)));
        }
    }
    v
}

/// `count` workgroups over x and y within the device's per-dimension limit.
fn spread(cx: &Ctx, count: usize) -> Result<(u32, u32)> {
    let max = cx.gpu.limits.max_compute_workgroups_per_dimension.max(1) as usize;
    let x = count.clamp(1, max);
    Ok((word(x, "workgroups")?, word(count.div_ceil(x), "workgroups")?))
}

/// Record the GEMM; its result is a new dense `[..., m, n]` buffer.
pub(crate) fn run(cx: &mut Ctx, p: &Problem, kind: Gemm) -> Result<Buffer> {
    run_into(cx, p, kind, None)
}

/// Record the GEMM, its result through `store` (a fused epilogue and the
/// view it writes) when given, else into a new dense `[..., m, n]` buffer.
pub(crate) fn run_into(cx: &mut Ctx, p: &Problem, kind: Gemm, store: Option<&Store>) -> Result<Buffer> {
    let plain;
    let (hook, out, extra, hook_meta) = match store {
        Some(s) => {
            if s.out.shape.iter().product::<usize>() != p.out_shape.iter().product::<usize>() {
                return Err(invalid(format!("a GEMM of {:?} stored as {:?}", p.out_shape, s.out.shape)));
            }
            (s.wgsl, s.out.clone(), s.reads.iter().collect::<Vec<_>>(), s.meta.as_slice())
        }
        None => {
            plain = ecarc_compiler::codegen::epilogue::plain(HOOK_BINDING);
            (plain.as_str(), cx.alloc(DType::F32, &p.out_shape)?, vec![], &[][..])
        }
    };
    word(p.m * p.n * p.batches, "a GEMM's output size")?;
    if p.m * p.n * p.batches == 0 {
        return Ok(out);
    }
    let (mode, boff, bstride) = match &p.bias {
        None => (0, 0, 0),
        Some((b, rows)) => (if *rows { 2 } else { 1 }, b.offset, b.strides[0]),
    };
    let mut info = vec![
        word(p.m, "m")?,
        word(p.n, "n")?,
        word(p.k, "k")?,
        word(p.batches, "batches")?,
        mode,
        word(boff, "a bias offset")?,
        word(bstride, "a bias stride")?,
        u32::from(p.a_k_inner) | (u32::from(p.b_n_inner) << 1),
    ];
    info.extend_from_slice(&p.words);
    info.extend_from_slice(hook_meta);
    // Without a bias, A stands in its binding (never read).
    let bias = p.bias.as_ref().map_or(&p.a, |(b, _)| b);
    let mut reads = vec![&p.a, &p.b, bias];
    reads.extend(extra);
    let batches = word(p.batches, "GEMM batches")?;
    let gemv = kind == Gemm::Best && p.m <= 2 && p.b_k_inner && p.prelude == Prelude::Strided;
    if gemv {
        let (x, y) = spread(cx, p.n.div_ceil(GEMV_COLS))?;
        cx.run("gemv", &shader(p.prelude, GEMV, hook), &reads, &out, &info, Grid::Groups(x, y, batches))?;
    } else if kind == Gemm::Naive {
        cx.run(
            "gemm_naive",
            &shader(p.prelude, NAIVE, hook),
            &reads,
            &out,
            &info,
            Grid::Items((p.m * p.n * p.batches) as u64),
        )?;
    } else {
        let (x, y) = (word(p.n.div_ceil(TILE), "tiles")?, word(p.m.div_ceil(TILE), "tiles")?);
        cx.run("gemm_tiled", &shader(p.prelude, TILED, hook), &reads, &out, &info, Grid::Groups(x, y, batches))?;
    }
    Ok(out)
}
