//! `fused` nodes on wgpu (placeholder until the WGSL emitter lands).

use super::kernels::Ctx;
use crate::backend::Buffer;
use crate::error::{Result, RuntimeError};
use ecarc_compiler::ir::{Bindings, Dim};
use ecarc_compiler::kernel::Kernel;

pub(crate) struct PreparedFused {
    pub store: Option<(u8, Dim)>,
}

impl PreparedFused {
    pub fn new(_k: &Kernel) -> std::result::Result<PreparedFused, String> {
        Err("fused kernels are not supported yet".into())
    }
    pub fn slice_shape(&self, _dst: &[usize], _axis: usize, _b: &Bindings) -> std::result::Result<Vec<usize>, String> {
        Err("no".into())
    }
    pub fn run(&self, _cx: &mut Ctx, _x: &[Buffer], _b: &Bindings, _out: Option<&Buffer>) -> Result<Buffer> {
        Err(RuntimeError::Invalid("no".into()))
    }
}
