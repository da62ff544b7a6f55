//! The anchors on wgpu: Linear, MatMul and Conv2d through the GEMM kernels
//! (`gemm.rs`), Attention through the flash-style kernel (`attention.rs`).

use super::gemm::{self, Gemm};
use super::{attention, Ctx, Store};
use crate::backend::Buffer;
use crate::error::{Result, RuntimeError};
use ecarc_compiler::ir::{Bindings, Op};

fn arity(x: &[Buffer], lo: usize, hi: usize, op: &Op) -> Result<()> {
    if x.len() < lo || x.len() > hi {
        return Err(RuntimeError::Invalid(format!("{} takes {lo}..={hi} operands, got {}", op.name(), x.len())));
    }
    Ok(())
}

/// Record `op` when it is an anchor; `None` for any other op (or an
/// attention too wide for the kernel).
pub(crate) fn anchor(cx: &mut Ctx, op: &Op, x: &[Buffer], b: &Bindings, _shape: &[usize]) -> Result<Option<Buffer>> {
    anchor_into(cx, op, x, b, None)
}

/// The first binding of `op`'s store hook (`None`: not an anchor).
pub(crate) fn hook_binding(op: &Op) -> Option<u32> {
    match op {
        Op::Linear | Op::MatMul | Op::Conv2d { .. } => Some(gemm::HOOK_BINDING),
        Op::Attention { .. } => Some(attention::HOOK_BINDING),
        _ => None,
    }
}

/// [`anchor`], its result through `store` (a fused epilogue) when given.
pub(crate) fn anchor_into(
    cx: &mut Ctx,
    op: &Op,
    x: &[Buffer],
    b: &Bindings,
    store: Option<&Store>,
) -> Result<Option<Buffer>> {
    match op {
        Op::Linear => {
            arity(x, 2, 3, op)?;
            gemm::run_into(cx, &gemm::linear(&x[0], &x[1], x.get(2))?, Gemm::Best, store).map(Some)
        }
        Op::MatMul => {
            arity(x, 2, 2, op)?;
            gemm::run_into(cx, &gemm::matmul(&x[0], &x[1])?, Gemm::Best, store).map(Some)
        }
        Op::Conv2d { stride, pad } => {
            arity(x, 2, 3, op)?;
            let p = gemm::conv2d(&x[0], &x[1], x.get(2), *stride as usize, *pad as usize)?;
            gemm::run_into(cx, &p, Gemm::Best, store).map(Some)
        }
        Op::Attention { mask, scale, keys } => {
            arity(x, 3, 4, op)?;
            let keys = crate::reference::index(keys.eval(b), "attention keys").map_err(RuntimeError::Invalid)?;
            let scale = crate::reference::attr(*scale);
            attention::attention(cx, &x[0], &x[1], &x[2], x.get(3), *mask, scale, keys, store)
        }
        _ => Ok(None),
    }
}
