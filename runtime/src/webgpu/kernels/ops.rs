//! WGSL kernels for the graph ops that are neither anchors (`anchors.rs`)
//! nor layout (`program.rs`), so that a sample never goes back to the host:
//! element-wise maps, row normalisations and reductions, GroupNorm,
//! Embedding, Sinusoid, Rope, Resize, Guide, NearestCode and SampleTokens,
//! one file per concept, their shaders in `../shaders/ops/` behind the
//! shared helpers of `common.wgsl`. FlowMapTokens alone stays on the host:
//! it integrates in f64, which WGSL does not have (docs/backends.md).
//!
//! Every kernel reads its operands through their strides (a permuted or
//! sliced view is never copied first) and writes a new dense buffer. Shapes
//! and dtypes are checked here, as the reference checks them; what only the
//! data can break (an id out of range, a bad sampling setting) cannot stop a
//! kernel, so it gives NaN or the token -1 instead of the reference's error.

use super::{count, shape_words, view_words, word, Ctx};
use crate::backend::Buffer;
use crate::error::{Result, RuntimeError};
use crate::webgpu::record::Grid;
use ecarc_compiler::ir::{Bindings, DType, Op};

/// The text of a kernel of `../shaders/ops/`, after the shared helpers.
macro_rules! shader {
    ($file:literal) => {
        concat!(include_str!("../shaders/ops/common.wgsl"), include_str!(concat!("../shaders/ops/", $file)))
    };
}
pub(crate) use shader;

/// Record `op` when one of these kernels implements it; `None` otherwise
/// (FlowMapTokens, and the anchors and layout ops handled elsewhere).
/// Sizes come from the operands (and Resize's target from the node's
/// `shape`), so the bindings are not needed.
pub(crate) fn op(cx: &mut Ctx, op: &Op, x: &[Buffer], _b: &Bindings, shape: &[usize]) -> Result<Option<Buffer>> {
    use super::{elementwise as ew, embedding, group_norm, guide, nearest_code, position, resize, rows, sample};
    let at = |lo: usize, hi: usize| arity(op, x, lo, hi);
    let out = match op {
        Op::Unary(u) => {
            at(1, 1)?;
            ew::unary(cx, *u, &x[0])?
        }
        Op::Affine { scale, shift } => {
            at(1, 1)?;
            ew::affine(cx, &x[0], scale.get() as f32, shift.get() as f32)?
        }
        Op::ClampMax { max } => {
            at(1, 1)?;
            ew::clamp_max(cx, &x[0], max.get() as f32)?
        }
        Op::Binary(o) => {
            at(2, 2)?;
            ew::binary(cx, *o, &x[0], &x[1])?
        }
        Op::LayerNorm { eps } => {
            at(1, 3)?;
            rows::layer_norm(cx, &x[0], x.get(1), x.get(2), eps.get() as f32)?
        }
        Op::RmsNorm { eps } => {
            at(2, 2)?;
            rows::rms_norm(cx, &x[0], &x[1], eps.get() as f32)?
        }
        Op::L2Normalize { eps } => {
            at(1, 1)?;
            rows::l2_normalize(cx, &x[0], eps.get() as f32)?
        }
        Op::Softmax => {
            at(1, 1)?;
            rows::softmax(cx, &x[0])?
        }
        Op::ArgMax => {
            at(1, 1)?;
            rows::argmax(cx, &x[0])?
        }
        Op::GroupNorm { groups, eps } => {
            at(3, 3)?;
            group_norm::group_norm(cx, &x[0], &x[1], &x[2], *groups as usize, eps.get() as f32)?
        }
        Op::Embedding => {
            at(2, 2)?;
            embedding::embedding(cx, &x[0], &x[1])?
        }
        Op::Sinusoid { dim, max_period } => {
            at(1, 1)?;
            position::sinusoid(cx, &x[0], *dim as usize, max_period.get())?
        }
        Op::Rope => {
            at(3, 3)?;
            position::rope(cx, &x[0], &x[1], &x[2])?
        }
        Op::Resize { mode, .. } => {
            at(1, 1)?;
            let (h, w) = match shape {
                [_, _, h, w] => (*h, *w),
                _ => return Err(invalid(format!("resize to {shape:?}: the result must be [N, C, h, w]"))),
            };
            resize::resize(cx, &x[0], *mode, h, w)?
        }
        Op::Guide { channels } => {
            at(3, 3)?;
            guide::guide(cx, &x[0], &x[1], &x[2], channels.map(|c| c as usize))?
        }
        Op::NearestCode => {
            at(2, 2)?;
            nearest_code::nearest_code(cx, &x[0], &x[1])?
        }
        Op::SampleTokens => {
            at(5, 5)?;
            sample::sample_tokens(cx, &x[0], &x[1], &x[2], &x[3], &x[4])?
        }
        _ => return Ok(None),
    };
    Ok(Some(out))
}

/// Whether [`op`] has a kernel for ops of this kind.
#[cfg(test)]
pub(crate) fn covers(op: &Op) -> bool {
    use Op::*;
    matches!(
        op,
        Unary(_)
            | Affine { .. }
            | ClampMax { .. }
            | Binary(_)
            | LayerNorm { .. }
            | RmsNorm { .. }
            | L2Normalize { .. }
            | Softmax
            | ArgMax
            | GroupNorm { .. }
            | Embedding
            | Sinusoid { .. }
            | Rope
            | Resize { .. }
            | Guide { .. }
            | NearestCode
            | SampleTokens
    )
}

pub(crate) fn invalid(why: String) -> RuntimeError {
    RuntimeError::Invalid(why)
}

fn arity(op: &Op, x: &[Buffer], lo: usize, hi: usize) -> Result<()> {
    if x.len() < lo || x.len() > hi {
        return Err(invalid(format!("{} takes {lo}..={hi} operands, got {}", op.name(), x.len())));
    }
    Ok(())
}

/// An error unless `b` holds `dtype`.
pub(crate) fn dtype(b: &Buffer, dtype: DType, what: &str) -> Result<()> {
    if b.dtype != dtype {
        return Err(invalid(format!("{what} must be {}, got {}{:?}", dtype.name(), b.dtype.name(), b.shape)));
    }
    Ok(())
}

/// An error unless `b` is a scalar of `dt` (a sampling setting, a guidance scale).
pub(crate) fn scalar(b: &Buffer, dt: DType, what: &str) -> Result<u32> {
    dtype(b, dt, what)?;
    if !b.shape.is_empty() {
        return Err(invalid(format!("{what} must be a scalar, got {:?}", b.shape)));
    }
    word(b.offset, "an offset")
}

/// Workgroups for one per item of `n`, spread over x and y past the
/// device's per-dimension limit (`group_row` in common.wgsl).
pub(crate) fn groups(cx: &Ctx, n: usize) -> Result<Grid> {
    if n == 0 {
        return Ok(Grid::Groups(0, 1, 1));
    }
    let max = (cx.gpu.limits.max_compute_workgroups_per_dimension.max(1)) as usize;
    let x = n.min(max);
    Ok(Grid::Groups(word(x, "workgroups")?, word(n.div_ceil(x), "workgroups")?, 1))
}

/// The rows of a view over its last axis: `(rows, d, lr, words)`, `lr`
/// the number of axes before the last and the words `lead shape[lr],
/// offset, lead strides[lr], last stride` (what the row kernels read after
/// their 8-word header).
pub(crate) fn row_words(x: &Buffer, what: &str) -> Result<(usize, usize, u32, Vec<u32>)> {
    let r = x.shape.len();
    if r == 0 {
        return Err(invalid(format!("{what} of a scalar")));
    }
    let lead = &x.shape[..r - 1];
    let mut w = shape_words(lead)?;
    w.push(word(x.offset, "an offset")?);
    w.extend(shape_words(&x.strides[..r - 1])?);
    w.push(word(x.strides[r - 1], "a stride")?);
    Ok((lead.iter().product(), x.shape[r - 1], word(lead.len(), "a rank")?, w))
}

/// `[count, rank]` then padding to 8 words, the shape, and the view's offset
/// and strides: the element-wise kernels' info.
pub(crate) fn items_info(x: &Buffer, extra: [u32; 6]) -> Result<Vec<u32>> {
    let mut info = vec![count(&x.shape)?, word(x.shape.len(), "a rank")?];
    info.extend(extra);
    info.extend(shape_words(&x.shape)?);
    info.extend(view_words(x)?);
    Ok(info)
}
