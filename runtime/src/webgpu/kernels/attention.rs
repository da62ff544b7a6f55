//! Attention on wgpu: one flash-style kernel (`attention.wgsl`), a
//! workgroup per query row, an online softmax over tiles of 64 keys, every
//! mask kind, q/k/v/levels read through their views (a KV cache in place, up
//! to `keys` rows). Head dimensions above 256 have no kernel (the op runs on
//! the host).

use super::{shape_words, word, Ctx, Store};
use crate::backend::Buffer;
use crate::error::{Result, RuntimeError};
use crate::webgpu::record::Grid;
use ecarc_compiler::ir::op::Mask;
use ecarc_compiler::ir::DType;

const WGSL: &str = include_str!("../shaders/attention.wgsl");

/// The kernel keeps a query row in workgroup memory and each thread at most
/// 4 output channels of 64 threads.
pub(crate) const MAX_HEAD: usize = 256;

/// The first binding of the kernel's store hook (after info, q, k, v, levels).
pub(crate) const HOOK_BINDING: u32 = 5;

/// The kernel with its result through the store hook `hook`.
pub(crate) fn shader(hook: &str) -> String {
    format!("{WGSL}\n{hook}")
}

/// `softmax(scale * q k^T + mask) v` over keys `0..keys` for the queries at
/// positions `keys - T .. keys`; `None` when the head is too wide for the kernel.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention(
    cx: &mut Ctx,
    q: &Buffer,
    k: &Buffer,
    v: &Buffer,
    levels: Option<&Buffer>,
    mask: Mask,
    scale: f32,
    keys: usize,
    store: Option<&Store>,
) -> Result<Option<Buffer>> {
    let [r, t, d, e] =
        crate::reference::attention::shapes(&q.shape, &k.shape, &v.shape, keys).map_err(RuntimeError::Invalid)?;
    for (x, what) in [(q, "q"), (k, "k"), (v, "v")] {
        if x.dtype != DType::F32 {
            return Err(RuntimeError::Invalid(format!("{what} must be f32, got {x:?}")));
        }
    }
    let lv = match (mask.needs_levels(), levels) {
        (true, Some(l)) if l.dtype != DType::I64 || l.shape != [keys] => {
            return Err(RuntimeError::Invalid(format!("levels {l:?} must be i64[{keys}]")))
        }
        (true, Some(l)) => Some(l),
        (true, None) => return Err(RuntimeError::Invalid(format!("the {} mask needs the keys' levels", mask.name()))),
        (false, _) => None,
    };
    if d > MAX_HEAD || e > MAX_HEAD {
        return Ok(None);
    }
    let mut shape = q.shape.clone();
    shape[r - 1] = e;
    let rows = shape[..r - 1].iter().product::<usize>();
    let plain;
    let (hook, out, extra, hook_meta) = match store {
        Some(s) => {
            if s.out.shape.iter().product::<usize>() != rows * e {
                return Err(RuntimeError::Invalid(format!("attention of {shape:?} stored as {:?}", s.out.shape)));
            }
            (s.wgsl, s.out.clone(), s.reads.iter().collect::<Vec<_>>(), s.meta.as_slice())
        }
        None => {
            plain = ecarc_compiler::codegen::epilogue::plain(HOOK_BINDING);
            (plain.as_str(), cx.alloc(DType::F32, &shape)?, vec![], &[][..])
        }
    };
    if rows * e == 0 {
        return Ok(Some(out));
    }
    let code = match mask {
        Mask::Full => 0,
        Mask::Causal => 1,
        Mask::BlockCausal => 2,
        Mask::EarlierPlusSelf => 3,
    };
    let (lo, ls) = lv.map_or((0, 0), |l| (l.offset, l.strides[0]));
    let mut info = vec![word(rows, "attention rows")?];
    for (x, what) in [
        (t, "queries"),
        (d, "a head dimension"),
        (e, "a head dimension"),
        (keys, "keys"),
        (keys - t, "a position"),
        (code, "a mask"),
    ] {
        info.push(word(x, what)?);
    }
    info.push(scale.to_bits());
    for x in [q, k, v] {
        info.extend(shape_words(&[x.offset, x.strides[r - 2], x.strides[r - 1]])?);
    }
    info.extend(shape_words(&[lo, ls, r - 2])?);
    info.extend(shape_words(&q.shape[..r - 2])?);
    for x in [q, k, v] {
        info.extend(shape_words(&x.strides[..r - 2])?);
    }
    info.extend_from_slice(hook_meta);
    let max = cx.gpu.limits.max_compute_workgroups_per_dimension.max(1) as usize;
    let gx = rows.min(max);
    let grid = Grid::Groups(word(gx, "workgroups")?, word(rows.div_ceil(gx), "workgroups")?, 1);
    // Without levels, q stands in their binding (never read).
    let mut reads = vec![q, k, v, lv.unwrap_or(q)];
    reads.extend(extra);
    cx.run("attention", &shader(hook), &reads, &out, &info, grid)?;
    Ok(Some(out))
}
