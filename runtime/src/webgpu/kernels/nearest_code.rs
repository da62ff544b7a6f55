//! NearestCode: the index of the nearest row of a codebook (squared L2),
//! one workgroup per row of `x`.

use super::ops::{dtype, groups, invalid, row_words, shader};
use super::{word, Ctx};
use crate::backend::Buffer;
use crate::error::Result;
use ecarc_compiler::ir::DType;

const WGSL: &str = shader!("nearest_code.wgsl");

pub(crate) fn nearest_code(cx: &mut Ctx, x: &Buffer, codes: &Buffer) -> Result<Buffer> {
    dtype(x, DType::F32, "the input")?;
    dtype(codes, DType::F32, "the codes")?;
    let (rows, d, lr, tail) = row_words(x, "nearest_code")?;
    let [v, cd] = codes.shape[..] else {
        return Err(invalid(format!("codes {:?} must be [V, D] with D the last axis of {:?}", codes.shape, x.shape)));
    };
    if cd != d {
        return Err(invalid(format!("codes {:?} must be [V, D] with D the last axis of {:?}", codes.shape, x.shape)));
    }
    if v == 0 {
        return Err(invalid("an empty codebook".into()));
    }
    let mut info = vec![word(rows, "rows")?, word(d, "a width")?, word(v, "a codebook")?, lr];
    info.extend([word(codes.offset, "an offset")?, word(codes.strides[0], "a stride")?]);
    info.extend([word(codes.strides[1], "a stride")?, 0]);
    info.extend(tail);
    let out = cx.alloc(DType::I64, &x.shape[..x.shape.len() - 1])?;
    let grid = groups(cx, rows)?;
    cx.run("nearest_code", WGSL, &[x, codes], &out, &info, grid)?;
    Ok(out)
}
