//! Strided copies: a view made dense (a reshape of a permuted view), a part
//! of a concat, a slice written into a state (`write_slice`).

use super::{count, shape_words, word, Ctx};
use crate::backend::Buffer;
use crate::error::{Result, RuntimeError};
use crate::webgpu::record::Grid;

const WGSL: &str = include_str!("../shaders/copy.wgsl");

/// Copy the elements of view `src` into view `dst` (same shape, same dtype).
pub(crate) fn copy_into(cx: &mut Ctx, src: &Buffer, dst: &Buffer) -> Result<()> {
    if src.shape != dst.shape || src.dtype != dst.dtype {
        return Err(RuntimeError::Invalid(format!("copy of {src:?} into {dst:?}: shapes or dtypes differ")));
    }
    let n = count(&src.shape)?;
    let mut info =
        vec![n, word(src.shape.len(), "a rank")?, word(src.offset, "an offset")?, word(dst.offset, "an offset")?];
    info.extend(shape_words(&src.shape)?);
    info.extend(shape_words(&src.strides)?);
    info.extend(shape_words(&dst.strides)?);
    cx.run("copy", WGSL, &[src], dst, &info, Grid::Items(n as u64))
}

/// A dense copy of a view.
pub(crate) fn dense(cx: &mut Ctx, src: &Buffer) -> Result<Buffer> {
    let out = cx.alloc(src.dtype, &src.shape)?;
    copy_into(cx, src, &out)?;
    Ok(out)
}
