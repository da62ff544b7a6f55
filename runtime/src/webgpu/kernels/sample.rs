//! SampleTokens on the device: two dispatches, `sample_filter.wgsl`
//! (temperature, top-k, top-p; a workgroup per row, leaving each token's
//! weight in a scratch buffer) then `sample_pick.wgsl` (checks, greedy or
//! inverse-CDF draw; a thread per row). The settings and the uniforms are
//! read from their device buffers, so changing them never re-records
//! anything, and the tokens are the reference's
//! (`reference::generate::sample_tokens`) wherever a uniform is not within
//! rounding of a boundary of the cumulative distribution: the weights
//! `exp(l - max)` come from the GPU's `exp`, whose last bits may differ
//! from the host's.

use super::ops::{dtype, groups, invalid, row_words, scalar, shader};
use super::{word, Ctx};
use crate::backend::Buffer;
use crate::error::Result;
use crate::webgpu::record::Grid;
use ecarc_compiler::ir::DType;

const FILTER: &str = shader!("sample_filter.wgsl");
const PICK: &str = shader!("sample_pick.wgsl");

pub(crate) fn sample_tokens(
    cx: &mut Ctx,
    logits: &Buffer,
    uniform: &Buffer,
    temperature: &Buffer,
    top_k: &Buffer,
    top_p: &Buffer,
) -> Result<Buffer> {
    dtype(logits, DType::F32, "logits")?;
    dtype(uniform, DType::F32, "uniform")?;
    let (rows, v, lr, tail) = row_words(logits, "sample_tokens")?;
    let lead = &logits.shape[..logits.shape.len() - 1];
    if uniform.shape[..] != *lead {
        return Err(invalid(format!(
            "uniform {:?} must be the logits' {:?} without the last axis",
            uniform.shape, logits.shape
        )));
    }
    if v == 0 {
        return Err(invalid("sampling from an empty vocabulary".into()));
    }
    let t_at = scalar(temperature, DType::F32, "temperature")?;
    let k_at = scalar(top_k, DType::I64, "top_k")?;
    let p_at = scalar(top_p, DType::F32, "top_p")?;
    // Scratch per row: sort space (V rounded up to a power of two), l, weights.
    let p2 = v.next_power_of_two();
    let per = p2 + 2 * v;
    let scratch = cx.alloc(DType::F32, &[rows.checked_mul(per).ok_or_else(|| invalid("too many logits".into()))?])?;
    let (rows_w, v_w, per_w) = (word(rows, "rows")?, word(v, "a vocabulary")?, word(per, "scratch")?);

    let mut info = vec![rows_w, v_w, word(p2, "a vocabulary")?, per_w, lr, t_at, k_at, p_at];
    info.extend(&tail);
    let grid = groups(cx, rows)?;
    cx.run("sample_filter", FILTER, &[logits, temperature, top_k, top_p], &scratch, &info, grid)?;

    let mut info = vec![rows_w, v_w, per_w, lr, t_at, k_at, p_at, 0];
    info.extend(&tail);
    info.push(word(uniform.offset, "an offset")?);
    for &s in &uniform.strides {
        info.push(word(s, "a stride")?);
    }
    let out = cx.alloc(DType::I64, lead)?;
    cx.run(
        "sample_pick",
        PICK,
        &[logits, uniform, temperature, top_k, top_p, &scratch],
        &out,
        &info,
        Grid::Items(rows as u64),
    )?;
    Ok(out)
}
