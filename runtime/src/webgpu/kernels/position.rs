//! Positions and time: Sinusoid (timestep embedding) and Rope (rotary
//! embedding of interleaved pairs).

use super::ops::{dtype, invalid, shader};
use super::{count, shape_words, word, Ctx};
use crate::backend::Buffer;
use crate::error::Result;
use crate::webgpu::record::Grid;
use ecarc_compiler::ir::DType;

const SINUSOID: &str = shader!("sinusoid.wgsl");
const ROPE: &str = shader!("rope.wgsl");

/// `[N, dim]` of `cos(t f_k)`, `sin(t f_k)`; the frequencies are the
/// reference's own (`reference::position::frequencies`), passed as info words.
pub(crate) fn sinusoid(cx: &mut Ctx, t: &Buffer, dim: usize, max_period: f64) -> Result<Buffer> {
    dtype(t, DType::F32, "t")?;
    let [n] = t.shape[..] else {
        return Err(invalid(format!("sinusoid takes t[N], got {:?}", t.shape)));
    };
    let shape = [n, dim];
    let freqs = crate::reference::position::frequencies(dim, max_period);
    let total = count(&shape)?;
    let mut info = vec![total, word(dim, "a width")?, word(freqs.len(), "a width")?];
    info.extend([word(t.offset, "an offset")?, word(t.strides[0], "a stride")?, 0, 0, 0]);
    info.extend(freqs.iter().map(|f| f.to_bits()));
    let out = cx.alloc(DType::F32, &shape)?;
    cx.run("sinusoid", SINUSOID, &[t], &out, &info, Grid::Items(total as u64))?;
    Ok(out)
}

/// Rotate the interleaved pairs of `x[..., T, d]` by `cos, sin [T, d/2]`.
pub(crate) fn rope(cx: &mut Ctx, x: &Buffer, cos: &Buffer, sin: &Buffer) -> Result<Buffer> {
    dtype(x, DType::F32, "the input")?;
    dtype(cos, DType::F32, "cos")?;
    dtype(sin, DType::F32, "sin")?;
    let r = x.shape.len();
    if r < 2 || !x.shape[r - 1].is_multiple_of(2) {
        return Err(invalid(format!("rope input must be [..., T, d] with d even, got {:?}", x.shape)));
    }
    let (t, half) = (x.shape[r - 2], x.shape[r - 1] / 2);
    if cos.shape != [t, half] || sin.shape != [t, half] {
        return Err(invalid(format!("cos/sin must be [{t}, {half}], got {:?} and {:?}", cos.shape, sin.shape)));
    }
    let pairs = word(x.shape[..r - 1].iter().product::<usize>() * half, "pairs")?;
    let mut info = vec![pairs, word(r, "a rank")?, word(t, "positions")?, word(half, "pairs")?, 0, 0, 0, 0];
    info.extend(shape_words(&x.shape[..r - 1])?);
    info.push(word(x.offset, "an offset")?);
    info.extend(shape_words(&x.strides)?);
    for v in [cos, sin] {
        info.push(word(v.offset, "an offset")?);
        info.extend(shape_words(&v.strides)?);
    }
    let out = cx.alloc(DType::F32, &x.shape)?;
    cx.run("rope", ROPE, &[x, cos, sin], &out, &info, Grid::Items(pairs as u64))?;
    Ok(out)
}
