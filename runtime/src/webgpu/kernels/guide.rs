//! Classifier-free guidance: `u + s (c - u)` on the first `channels` entries
//! of the last axis, `c` elsewhere; `s` a scalar read on the device.

use super::ops::{dtype, invalid, items_info, scalar, shader};
use super::{shape_words, word, Ctx};
use crate::backend::Buffer;
use crate::error::Result;
use crate::webgpu::record::Grid;
use ecarc_compiler::ir::DType;

const WGSL: &str = shader!("guide.wgsl");

pub(crate) fn guide(cx: &mut Ctx, c: &Buffer, u: &Buffer, s: &Buffer, channels: Option<usize>) -> Result<Buffer> {
    dtype(c, DType::F32, "cond")?;
    dtype(u, DType::F32, "uncond")?;
    if c.shape != u.shape {
        return Err(invalid(format!("cond {:?} and uncond {:?} differ in shape", c.shape, u.shape)));
    }
    let s_at = scalar(s, DType::F32, "the guidance scale")?;
    let (d, ch) = match (c.shape.last(), channels) {
        (d, None) => (d.copied().unwrap_or(1), u32::MAX),
        (Some(&d), Some(ch)) if ch <= d => (d, word(ch, "channels")?),
        (d, Some(ch)) => return Err(invalid(format!("guidance on {ch} channels of a last axis of {d:?}"))),
    };
    let mut info = items_info(c, [word(d, "a width")?, ch, s_at, 0, 0, 0])?;
    info.push(word(u.offset, "an offset")?);
    info.extend(shape_words(&u.strides)?);
    let out = cx.alloc(DType::F32, &c.shape)?;
    cx.run("guide", WGSL, &[c, u, s], &out, &info, Grid::Items(info[0] as u64))?;
    Ok(out)
}
