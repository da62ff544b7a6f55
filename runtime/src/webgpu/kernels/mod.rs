//! The wgpu backend's hand-written kernels (WGSL in `../shaders/`) and the
//! context they record into. Every kernel follows the binding rule of
//! `record.rs`: binding 0 `info: array<u32>` (sizes, offsets, strides), the
//! buffers read, then the one written. Operands are strided views
//! (`Buffer::offset`/`strides`), so layout ops never copy; results are new
//! dense buffers unless a kernel writes into a given view.

pub(crate) mod anchors;
#[cfg(test)]
mod anchors_tests;
pub(crate) mod attention;
pub(crate) mod copy;
mod elementwise;
mod embedding;
pub(crate) mod gemm;
mod group_norm;
mod guide;
mod nearest_code;
pub(crate) mod ops;
#[cfg(test)]
mod ops_tests;
mod position;
mod resize;
mod rows;
mod sample;

use super::device::{Gpu, BACKEND};
use super::record::{Grid, Pipelines, Recorder, Stats};
use crate::backend::Buffer;
use crate::error::{Result, RuntimeError};
use ecarc_compiler::ir::DType;

/// What a kernel needs to allocate and record.
pub(crate) struct Ctx<'r, 'g> {
    pub gpu: &'g Gpu,
    pub pipelines: &'g Pipelines,
    pub stats: &'g Stats,
    pub rec: &'r mut Recorder<'g>,
}

impl Ctx<'_, '_> {
    /// Record one dispatch of the shader `wgsl` (compiled once, cached).
    pub fn run(
        &mut self,
        label: &str,
        wgsl: &str,
        reads: &[&Buffer],
        write: &Buffer,
        info: &[u32],
        grid: Grid,
    ) -> Result<()> {
        let p = self.pipelines.get(self.gpu, label, wgsl, self.stats)?;
        self.rec.dispatch(p, reads, write, info, grid)
    }

    /// A new dense device buffer.
    pub fn alloc(&self, dtype: DType, shape: &[usize]) -> Result<Buffer> {
        self.gpu.alloc(dtype, shape)
    }
}

/// Where an anchor kernel's result goes (the store hook of
/// `ecarc_compiler::codegen::epilogue`): the hook module appended to the
/// kernel's text (its bindings from the anchor's first free one), the
/// buffers it reads, the view it writes (of the hook's result shape, the
/// anchor's element count) and its meta words, appended to the anchor's info.
pub(crate) struct Store<'a> {
    pub wgsl: &'a str,
    pub reads: Vec<Buffer>,
    pub out: Buffer,
    pub meta: Vec<u32>,
}

/// `v` as a 32-bit word of an info block, or an error naming `what`.
pub(crate) fn word(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| RuntimeError::Execution {
        backend: BACKEND.into(),
        program: String::new(),
        why: format!("{what} = {v} does not fit the wgpu backend's 32-bit indices"),
    })
}

/// A view's offset then its strides, as info words.
pub(crate) fn view_words(b: &Buffer) -> Result<Vec<u32>> {
    let mut w = vec![word(b.offset, "a view's offset")?];
    for &s in &b.strides {
        w.push(word(s, "a view's stride")?);
    }
    Ok(w)
}

/// A shape as info words.
pub(crate) fn shape_words(shape: &[usize]) -> Result<Vec<u32>> {
    shape.iter().map(|&d| word(d, "a dimension")).collect()
}

/// Number of elements, as an info word.
pub(crate) fn count(shape: &[usize]) -> Result<u32> {
    word(shape.iter().product(), "an element count")
}

/// `shape` with strides of a dense row-major layout starting at `offset`.
pub(crate) fn view(b: &Buffer, offset: usize, shape: Vec<usize>, strides: Vec<usize>) -> Buffer {
    Buffer { dtype: b.dtype, shape, offset, strides, storage: b.storage.clone() }
}

/// Record `op` on its operands when a WGSL kernel implements it; `None`
/// when it must run on the host.
pub(crate) fn op(
    cx: &mut Ctx,
    op: &ecarc_compiler::ir::Op,
    x: &[Buffer],
    b: &ecarc_compiler::ir::Bindings,
    shape: &[usize],
) -> Result<Option<Buffer>> {
    if let Some(out) = anchors::anchor(cx, op, x, b, shape)? {
        return Ok(Some(out));
    }
    ops::op(cx, op, x, b, shape)
}
