//! Embedding: rows of `table[V, D]` gathered at `ids[...]`; an id out of
//! range gives a NaN row (`embedding.wgsl` says why).

use super::ops::{dtype, invalid, shader};
use super::{count, shape_words, view_words, word, Ctx};
use crate::backend::Buffer;
use crate::error::Result;
use crate::webgpu::record::Grid;
use ecarc_compiler::ir::DType;

const WGSL: &str = shader!("embedding.wgsl");

pub(crate) fn embedding(cx: &mut Ctx, table: &Buffer, ids: &Buffer) -> Result<Buffer> {
    dtype(table, DType::F32, "the table")?;
    dtype(ids, DType::I64, "the indices")?;
    let [v, d] = table.shape[..] else {
        return Err(invalid(format!("table must be [V, D], got {:?}", table.shape)));
    };
    let mut shape = ids.shape.clone();
    shape.push(d);
    let n = count(&shape)?;
    let mut info = vec![n, word(ids.shape.len(), "a rank")?, word(v, "a vocabulary")?, word(d, "a width")?];
    info.extend([word(table.offset, "an offset")?, word(table.strides[0], "a stride")?]);
    info.extend([word(table.strides[1], "a stride")?, 0]);
    info.extend(shape_words(&ids.shape)?);
    info.extend(view_words(ids)?);
    let out = cx.alloc(DType::F32, &shape)?;
    cx.run("embedding", WGSL, &[table, ids], &out, &info, Grid::Items(n as u64))?;
    Ok(out)
}
