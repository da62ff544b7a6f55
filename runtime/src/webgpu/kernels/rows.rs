//! Row kernels over the last axis, one workgroup per row: LayerNorm,
//! RmsNorm, L2Normalize and Softmax (`rows.wgsl`), ArgMax (`argmax.wgsl`).

use super::ops::{dtype, groups, invalid, row_words, shader};
use super::{word, Ctx};
use crate::backend::Buffer;
use crate::error::Result;
use ecarc_compiler::ir::DType;

const ROWS: &str = shader!("rows.wgsl");
const ARGMAX: &str = shader!("argmax.wgsl");

/// A per-channel operand of length `d`: its offset and stride.
fn channel(w: &Buffer, d: usize, what: &str) -> Result<[u32; 2]> {
    dtype(w, DType::F32, what)?;
    if w.shape != [d] {
        return Err(invalid(format!("{what} {:?} must be [{d}]", w.shape)));
    }
    Ok([word(w.offset, "an offset")?, word(w.strides[0], "a stride")?])
}

fn row_kernel(
    cx: &mut Ctx,
    kind: u32,
    x: &Buffer,
    w: Option<&Buffer>,
    b: Option<&Buffer>,
    eps: f32,
    name: &str,
) -> Result<Buffer> {
    dtype(x, DType::F32, "the input")?;
    let (rows, d, lr, tail) = row_words(x, name)?;
    let mut info = vec![word(rows, "rows")?, word(d, "a row")?, lr, kind, eps.to_bits()];
    info.extend([w.is_some() as u32, b.is_some() as u32, 0]);
    info.extend(tail);
    for (v, what) in [(w, "the weight"), (b, "the bias")] {
        info.extend(match v {
            Some(v) => channel(v, d, what)?,
            None => [0, 0],
        });
    }
    let out = cx.alloc(DType::F32, &x.shape)?;
    // An absent weight or bias is bound to x, never read.
    let grid = groups(cx, rows)?;
    cx.run(name, ROWS, &[x, w.unwrap_or(x), b.unwrap_or(x)], &out, &info, grid)?;
    Ok(out)
}

pub(crate) fn layer_norm(cx: &mut Ctx, x: &Buffer, w: Option<&Buffer>, b: Option<&Buffer>, eps: f32) -> Result<Buffer> {
    row_kernel(cx, 0, x, w, b, eps, "layer_norm")
}

pub(crate) fn rms_norm(cx: &mut Ctx, x: &Buffer, w: &Buffer, eps: f32) -> Result<Buffer> {
    row_kernel(cx, 1, x, Some(w), None, eps, "rms_norm")
}

pub(crate) fn l2_normalize(cx: &mut Ctx, x: &Buffer, eps: f32) -> Result<Buffer> {
    row_kernel(cx, 2, x, None, None, eps, "l2_normalize")
}

pub(crate) fn softmax(cx: &mut Ctx, x: &Buffer) -> Result<Buffer> {
    row_kernel(cx, 3, x, None, None, 0.0, "softmax")
}

/// The first index of each row's largest value (NaN never wins), `i64[...]`.
pub(crate) fn argmax(cx: &mut Ctx, x: &Buffer) -> Result<Buffer> {
    dtype(x, DType::F32, "the input")?;
    let (rows, d, lr, tail) = row_words(x, "argmax")?;
    if d == 0 {
        return Err(invalid("argmax over an empty axis".into()));
    }
    let mut info = vec![word(rows, "rows")?, word(d, "a row")?, lr, 0, 0, 0, 0, 0];
    info.extend(tail);
    let out = cx.alloc(DType::I64, &x.shape[..x.shape.len() - 1])?;
    let grid = groups(cx, rows)?;
    cx.run("argmax", ARGMAX, &[x], &out, &info, grid)?;
    Ok(out)
}
