//! GroupNorm of `x[N, C, H, W]`, one workgroup per (sample, group).

use super::ops::{dtype, groups, invalid, shader};
use super::{word, Ctx};
use crate::backend::Buffer;
use crate::error::Result;
use ecarc_compiler::ir::DType;

const WGSL: &str = shader!("group_norm.wgsl");

pub(crate) fn group_norm(cx: &mut Ctx, x: &Buffer, w: &Buffer, b: &Buffer, g: usize, eps: f32) -> Result<Buffer> {
    dtype(x, DType::F32, "the input")?;
    let [n, c, h, wd] = x.shape[..] else {
        return Err(invalid(format!("group_norm takes [N, C, H, W], got {:?}", x.shape)));
    };
    if g == 0 || c % g != 0 {
        return Err(invalid(format!("{c} channels cannot form {g} groups")));
    }
    let mut info = vec![word(n * g, "groups")?, word(g, "groups")?, word(c / g, "channels")?];
    info.extend([word(h, "a height")?, word(wd, "a width")?, eps.to_bits(), word(c, "channels")?, 0]);
    info.push(word(x.offset, "an offset")?);
    for &s in &x.strides {
        info.push(word(s, "a stride")?);
    }
    for (v, what) in [(w, "weight"), (b, "bias")] {
        dtype(v, DType::F32, what)?;
        if v.shape != [c] {
            return Err(invalid(format!("{what} {:?} must be [{c}]", v.shape)));
        }
        info.extend([word(v.offset, "an offset")?, word(v.strides[0], "a stride")?]);
    }
    let out = cx.alloc(DType::F32, &x.shape)?;
    let grid = groups(cx, n * g)?;
    cx.run("group_norm", WGSL, &[x, w, b], &out, &info, grid)?;
    Ok(out)
}
