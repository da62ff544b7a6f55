//! Element-wise kernels: Unary, Affine and ClampMax share one map shader,
//! Binary broadcasts as numpy does by giving a broadcast axis stride 0.
//! These appear in unoptimised graphs (`-O0`); after fusion they live inside
//! fused kernels.

use super::ops::{dtype, invalid, items_info, shader};
use super::{count, shape_words, word, Ctx};
use crate::backend::Buffer;
use crate::error::Result;
use crate::webgpu::record::Grid;
use ecarc_compiler::ir::op::{Binary, Unary};
use ecarc_compiler::ir::DType;

const MAP: &str = shader!("unary.wgsl");
const BINARY: &str = shader!("binary.wgsl");

/// The map of `x` by the shader's function `code` with parameters `a`, `b`.
fn map(cx: &mut Ctx, x: &Buffer, code: u32, a: f32, b: f32) -> Result<Buffer> {
    dtype(x, DType::F32, "the input")?;
    let out = cx.alloc(DType::F32, &x.shape)?;
    let info = items_info(x, [code, a.to_bits(), b.to_bits(), 0, 0, 0])?;
    cx.run("map", MAP, &[x], &out, &info, Grid::Items(info[0] as u64))?;
    Ok(out)
}

pub(crate) fn unary(cx: &mut Ctx, u: Unary, x: &Buffer) -> Result<Buffer> {
    let code = match u {
        Unary::Silu => 0,
        Unary::Gelu => 1,
        Unary::GeluTanh => 2,
        Unary::Exp => 3,
        Unary::Neg => 4,
        Unary::Sqrt => 5,
        Unary::Tanh => 6,
    };
    map(cx, x, code, 0.0, 0.0)
}

/// `x * scale + shift`.
pub(crate) fn affine(cx: &mut Ctx, x: &Buffer, scale: f32, shift: f32) -> Result<Buffer> {
    map(cx, x, 7, scale, shift)
}

/// `min(x, max)`, NaN kept.
pub(crate) fn clamp_max(cx: &mut Ctx, x: &Buffer, max: f32) -> Result<Buffer> {
    map(cx, x, 8, max, 0.0)
}

/// The strides that read `x` as if broadcast to `out` (aligned right, 0
/// along an axis it broadcasts).
fn broadcast_strides(x: &Buffer, out: &[usize]) -> Vec<usize> {
    let pad = out.len() - x.shape.len();
    (0..out.len()).map(|i| if i < pad || x.shape[i - pad] == 1 { 0 } else { x.strides[i - pad] }).collect()
}

pub(crate) fn binary(cx: &mut Ctx, op: Binary, a: &Buffer, b: &Buffer) -> Result<Buffer> {
    dtype(a, DType::F32, "the lhs")?;
    dtype(b, DType::F32, "the rhs")?;
    let shape = crate::reference::broadcast_shape(&a.shape, &b.shape).map_err(invalid)?;
    let code = match op {
        Binary::Add => 0,
        Binary::Sub => 1,
        Binary::Mul => 2,
        Binary::Div => 3,
        Binary::Min => 4,
        Binary::Max => 5,
    };
    let out = cx.alloc(DType::F32, &shape)?;
    let n = count(&shape)?;
    let mut info = vec![n, word(shape.len(), "a rank")?, code, 0, 0, 0, 0, 0];
    info.extend(shape_words(&shape)?);
    for x in [a, b] {
        info.push(word(x.offset, "an offset")?);
        info.extend(shape_words(&broadcast_strides(x, &shape))?);
    }
    cx.run("binary", BINARY, &[a, b], &out, &info, Grid::Items(n as u64))?;
    Ok(out)
}
