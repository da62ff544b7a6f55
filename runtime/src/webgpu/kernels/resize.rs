//! Resize of `[N, C, H, W]` maps (nearest, bilinear, bicubic, area). The
//! taps of each output row and column are computed here by the reference's
//! own functions (`reference::layout`) and passed in the info block, so the
//! indices and weights are the reference's bit for bit.

use super::ops::{dtype, invalid, shader};
use super::{count, word, Ctx};
use crate::backend::Buffer;
use crate::error::Result;
use crate::reference::layout::{area_window, cubic_taps, linear_taps, nearest_index};
use crate::webgpu::record::Grid;
use ecarc_compiler::ir::op::Resample;
use ecarc_compiler::ir::DType;

const WGSL: &str = shader!("resize.wgsl");

/// The 8-word tap entries of the `n_out` outputs along an axis of `n_in`.
fn taps(mode: Resample, n_in: usize, n_out: usize) -> Result<Vec<u32>> {
    let mut t = Vec::with_capacity(n_out * 8);
    let w = |i: usize| word(i, "a tap");
    for o in 0..n_out {
        let mut e = [0u32; 8];
        match mode {
            Resample::Nearest => e[0] = w(nearest_index(o, n_in, n_out))?,
            Resample::Bilinear => {
                let (i0, i1, w0, w1) = linear_taps(o, n_in, n_out);
                e[..4].copy_from_slice(&[w(i0)?, w(i1)?, w0.to_bits(), w1.to_bits()]);
            }
            Resample::Bicubic => {
                let (idx, wt) = cubic_taps(o, n_in, n_out);
                for k in 0..4 {
                    e[k] = w(idx[k])?;
                    e[4 + k] = wt[k].to_bits();
                }
            }
            Resample::Area => {
                let (a, b) = area_window(o, n_in, n_out);
                e[..2].copy_from_slice(&[w(a)?, w(b)?]);
            }
        }
        t.extend(e);
    }
    Ok(t)
}

pub(crate) fn resize(cx: &mut Ctx, x: &Buffer, mode: Resample, h: usize, w: usize) -> Result<Buffer> {
    dtype(x, DType::F32, "the input")?;
    let [n, c, ih, iw] = x.shape[..] else {
        return Err(invalid(format!("resize takes [N, C, H, W], got {:?}", x.shape)));
    };
    if (ih == 0 || iw == 0) && h * w > 0 {
        return Err(invalid(format!("cannot resize an empty map {:?} to {h}x{w}", x.shape)));
    }
    let shape = [n, c, h, w];
    let total = count(&shape)?;
    let out = cx.alloc(DType::F32, &shape)?;
    if total == 0 {
        return Ok(out);
    }
    let code = match mode {
        Resample::Nearest => 0,
        Resample::Bilinear => 1,
        Resample::Bicubic => 2,
        Resample::Area => 3,
    };
    let (ty, tx) = (taps(mode, ih, h)?, taps(mode, iw, w)?);
    let mut info = vec![total, word(c, "channels")?, word(h, "a height")?, word(w, "a width")?, code];
    info.push(word(x.offset, "an offset")?);
    for &s in &x.strides {
        info.push(word(s, "a stride")?);
    }
    let ytab = 14; // the words above
    info.extend([word(ytab, "a table")?, word(ytab + ty.len(), "a table")?, 0, 0]);
    info.extend(ty);
    info.extend(tx);
    cx.run("resize", WGSL, &[x], &out, &info, Grid::Items(total as u64))?;
    Ok(out)
}
