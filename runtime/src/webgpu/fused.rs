//! `fused` nodes on wgpu. A kernel is split as on the CPU backend
//! (`kernel::split`): a store kernel's slice part first ([`split::stored`]),
//! then at its anchor. Each anchor-free part is emitted once, at prepare, as
//! WGSL stages (`ecarc_compiler::codegen`); a run evaluates their meta words
//! under the bindings and the actual views, allocates scratch and the result
//! (or writes into the state's slice) and records every stage (a row stage
//! as a workgroup per row, `kernels::ops::groups`). The anchor is
//! one of the hand-written kernels (`kernels::op`).
//!
//! Epilogue fusion: when the epilogue reads the anchor's value only at the
//! element it writes (`codegen::epilogue::qualifies`), it is emitted as the
//! anchor kernel's store hook and runs inside the anchor's dispatch, which
//! writes the kernel's result (or a store kernel's slice) directly: one
//! dispatch instead of two. A store kernel without an epilogue stores the
//! anchor's result into the slice the same way (no copy). The separate
//! epilogue stages stay as the fallback: an epilogue that does not qualify,
//! or one whose buffers would pass the adapter's storage-buffer limit.
//! `ECARC_WGPU_UNFUSED_EPILOGUE` (set to anything) turns the fusion off.

use super::kernels::{self, word, Ctx};
use super::record::Grid;
use super::storage::{span, storage_of};
use crate::backend::Buffer;
use crate::error::{Result, RuntimeError};
use crate::reference::eval_dims;
use ecarc_compiler::codegen::{self, epilogue, MetaWord, Program, Read, Write};
use ecarc_compiler::ir::graph::TensorType;
use ecarc_compiler::ir::{Bindings, DType, Dim, Op};
use ecarc_compiler::kernel::split::{self, Operand, Part, Source};
use ecarc_compiler::kernel::{Expr, KNode, Kernel};

/// An anchor-free part, emitted.
pub(crate) struct GpuPart {
    program: Program,
    /// Types of the part's inputs, checked against the views given.
    inputs: Vec<TensorType>,
    output: TensorType,
    sources: Vec<Source>,
}

/// An epilogue (or a store kernel's store) run as the anchor's store hook.
struct HookPart {
    hook: epilogue::Hook,
    inputs: Vec<TensorType>,
    output: TensorType,
    sources: Vec<Source>,
}

enum GpuOperand {
    Input(u32),
    Computed(GpuPart),
}

enum Body {
    /// No anchor: one part.
    Elementwise(GpuPart),
    Anchored {
        anchor: Op,
        anchor_ty: TensorType,
        operands: Vec<GpuOperand>,
        epilogue: Option<GpuPart>,
        /// The epilogue (or the store) as the anchor's store hook, when it
        /// qualifies.
        hook: Option<Box<HookPart>>,
    },
}

/// A `fused` node prepared for wgpu.
pub(crate) struct PreparedFused {
    body: Body,
    /// The type of what the kernel computes (for a store kernel, the slice).
    value: TensorType,
    /// For a kernel that writes a slice of its input 0: the axis and first row.
    pub store: Option<(u8, Dim)>,
}

fn emit(p: Part) -> std::result::Result<GpuPart, String> {
    let program = codegen::emit(&p.kernel)?;
    Ok(GpuPart { program, inputs: p.kernel.inputs.clone(), output: p.kernel.output().clone(), sources: p.sources })
}

impl PreparedFused {
    pub fn new(k: &Kernel) -> std::result::Result<PreparedFused, String> {
        let (k, store) = match split::stored(k) {
            Some((part, axis, start)) => (part, Some((axis, start))),
            None => (k.clone(), None),
        };
        let value = k.nodes.last().ok_or("a kernel without nodes")?.ty.clone();
        let body = match split::split_at_anchor(&k) {
            None => Body::Elementwise(emit(split::whole(&k))?),
            Some(s) => Body::Anchored {
                hook: hook_part(&s, store.is_some()),
                anchor: s.anchor,
                anchor_ty: s.anchor_ty,
                operands: s
                    .operands
                    .into_iter()
                    .map(|o| match o {
                        Operand::Input(i) => Ok(GpuOperand::Input(i)),
                        Operand::Computed(p) => Ok(GpuOperand::Computed(emit(p)?)),
                    })
                    .collect::<std::result::Result<_, String>>()?,
                epilogue: s.epilogue.map(emit).transpose()?,
            },
        };
        Ok(PreparedFused { body, value, store })
    }

    /// Whether the epilogue (or the store) runs inside the anchor's kernel.
    #[cfg(test)]
    pub fn fuses_epilogue(&self) -> bool {
        matches!(&self.body, Body::Anchored { hook: Some(_), .. })
    }

    /// The shape of the slice a store kernel writes (its value's shape).
    pub fn slice_shape(&self, dst: &[usize], axis: usize, b: &Bindings) -> std::result::Result<Vec<usize>, String> {
        let shape = eval_dims(&self.value.shape, b)?;
        if shape.len() != dst.len() || axis >= dst.len() {
            return Err(format!("a slice {shape:?} along axis {axis} of a state {dst:?}"));
        }
        Ok(shape)
    }

    /// The kernel's value on the fused node's operands `x` (views), into a
    /// new dense buffer, or into `out` (a store kernel's slice) when given.
    pub fn run(&self, cx: &mut Ctx, x: &[Buffer], b: &Bindings, out: Option<&Buffer>) -> Result<Buffer> {
        let input = |i: u32| -> Result<Buffer> {
            x.get(i as usize).cloned().ok_or_else(|| invalid(format!("no kernel input {i}")))
        };
        let gather = |p: &GpuPart, anchor: Option<&Buffer>| -> Result<Vec<Buffer>> {
            p.sources
                .iter()
                .map(|s| match s {
                    Source::Input(i) => input(*i),
                    Source::Anchor => anchor.cloned().ok_or_else(|| invalid("the anchor has not run".into())),
                })
                .collect()
        };
        match &self.body {
            Body::Elementwise(p) => run_part(cx, p, &gather(p, None)?, b, out),
            Body::Anchored { anchor, anchor_ty, operands, epilogue, hook } => {
                let mut vals = Vec::with_capacity(operands.len());
                for o in operands {
                    vals.push(match o {
                        GpuOperand::Input(i) => input(*i)?,
                        GpuOperand::Computed(p) => run_part(cx, p, &gather(p, None)?, b, None)?,
                    });
                }
                let shape = eval_dims(&anchor_ty.shape, b).map_err(invalid)?;
                if let Some(h) = hook {
                    if let Some(y) = run_hooked(cx, anchor, &vals, h, x, b, out)? {
                        return Ok(y);
                    }
                }
                let y = kernels::op(cx, anchor, &vals, b, &shape)?.ok_or_else(|| RuntimeError::Execution {
                    backend: super::device::BACKEND.into(),
                    program: String::new(),
                    why: format!(
                        "the fused kernel's anchor `{}` has no wgpu kernel yet (nothing runs it on the device)",
                        anchor.name()
                    ),
                })?;
                match (epilogue, out) {
                    (Some(p), out) => run_part(cx, p, &gather(p, Some(&y))?, b, out),
                    (None, None) => Ok(y),
                    (None, Some(out)) => {
                        super::kernels::copy::copy_into(cx, &y, out)?;
                        Ok(out.clone())
                    }
                }
            }
        }
    }
}

/// The store hook of a split kernel: its epilogue's, or for a store kernel
/// without one the anchor's value as it is (written into the slice's view);
/// `None` when there is none, it does not qualify, the anchor has no hook,
/// or `ECARC_WGPU_UNFUSED_EPILOGUE` is set.
fn hook_part(s: &split::Split, store: bool) -> Option<Box<HookPart>> {
    if std::env::var_os("ECARC_WGPU_UNFUSED_EPILOGUE").is_some() {
        return None;
    }
    let first = kernels::anchors::hook_binding(&s.anchor)?;
    let part = match (&s.epilogue, store) {
        (Some(p), _) => p.clone(),
        (None, true) => Part {
            kernel: Kernel {
                inputs: vec![s.anchor_ty.clone()],
                nodes: vec![KNode { ty: s.anchor_ty.clone(), expr: Expr::Load(0) }],
            },
            sources: vec![Source::Anchor],
        },
        (None, false) => return None,
    };
    let a = part.sources.iter().position(|s| *s == Source::Anchor)? as u32;
    let hook = epilogue::emit(&part.kernel, a, first).ok()?;
    Some(Box::new(HookPart {
        hook,
        inputs: part.kernel.inputs.clone(),
        output: part.kernel.output().clone(),
        sources: part.sources,
    }))
}

/// Record the anchor with its store hook; `None` (nothing recorded) when
/// the hook's buffers would pass the adapter's storage-buffer limit.
fn run_hooked(
    cx: &mut Ctx,
    anchor: &Op,
    vals: &[Buffer],
    h: &HookPart,
    x: &[Buffer],
    b: &Bindings,
    out: Option<&Buffer>,
) -> Result<Option<Buffer>> {
    let first = kernels::anchors::hook_binding(anchor).ok_or_else(|| invalid("no store hook".into()))?;
    // info, the anchor's operands, the hook's reads, the result.
    if first + h.hook.reads.len() as u32 + 1 > cx.gpu.limits.max_storage_buffers_per_shader_stage {
        return Ok(None);
    }
    let shape = eval_dims(&h.output.shape, b).map_err(invalid)?;
    let y = match out {
        Some(o) => {
            if o.dtype != DType::F32 || o.shape != shape || span(o) > storage_of(o)?.words {
                return Err(invalid(format!("a fused kernel of {shape:?} written into {o:?}")));
            }
            o.clone()
        }
        None => cx.alloc(DType::F32, &shape)?,
    };
    // The hook's inputs; the anchor's value is no buffer (`y` stands in, never read).
    let mut ins = Vec::with_capacity(h.sources.len());
    for (i, (s, t)) in h.sources.iter().zip(&h.inputs).enumerate() {
        let v = match s {
            Source::Anchor => {
                ins.push(y.clone());
                continue;
            }
            Source::Input(j) => x.get(*j as usize).cloned().ok_or_else(|| invalid(format!("no kernel input {j}")))?,
        };
        let want = eval_dims(&t.shape, b).map_err(invalid)?;
        if v.dtype != t.dtype || v.shape != want || v.strides.len() != want.len() || span(&v) > storage_of(&v)?.words {
            return Err(invalid(format!(
                "fused epilogue input {i} is {v:?}, the kernel takes {}{want:?}",
                t.dtype.name()
            )));
        }
        ins.push(v);
    }
    let threads = shape.iter().product::<usize>() as u64;
    let meta = h.hook.meta.iter().map(|m| meta_word(m, threads, &ins, &y, b)).collect::<Result<Vec<u32>>>()?;
    let reads = h
        .hook
        .reads
        .iter()
        .map(|&i| ins.get(i as usize).cloned().ok_or_else(|| invalid(format!("no epilogue input {i}"))))
        .collect::<Result<Vec<_>>>()?;
    let store = kernels::Store { wgsl: &h.hook.wgsl, reads, out: y.clone(), meta };
    match kernels::anchors::anchor_into(cx, anchor, vals, b, Some(&store))? {
        Some(_) => Ok(Some(y)),
        None => Err(RuntimeError::Execution {
            backend: super::device::BACKEND.into(),
            program: String::new(),
            why: format!("the fused kernel's anchor `{}` has no wgpu kernel for these operands", anchor.name()),
        }),
    }
}

fn invalid(why: String) -> RuntimeError {
    RuntimeError::Invalid(why)
}

/// Record the stages of one part on its input views.
fn run_part(cx: &mut Ctx, p: &GpuPart, ins: &[Buffer], b: &Bindings, out: Option<&Buffer>) -> Result<Buffer> {
    if ins.len() != p.inputs.len() {
        return Err(invalid(format!("a fused part takes {} inputs, given {}", p.inputs.len(), ins.len())));
    }
    for (i, (v, t)) in ins.iter().zip(&p.inputs).enumerate() {
        let shape = eval_dims(&t.shape, b).map_err(invalid)?;
        if v.dtype != t.dtype || v.shape != shape || v.strides.len() != shape.len() {
            return Err(invalid(format!(
                "fused part input {i} is {}{:?}, the kernel takes {}{shape:?}",
                v.dtype.name(),
                v.shape,
                t.dtype.name()
            )));
        }
        // The shader indexes the storage directly: the view must lie in it.
        if span(v) > storage_of(v)?.words {
            return Err(invalid(format!("fused part input {i} reaches past its storage")));
        }
    }
    let shape = eval_dims(&p.output.shape, b).map_err(invalid)?;
    let y = match out {
        Some(o) => {
            if o.dtype != DType::F32 || o.shape != shape || span(o) > storage_of(o)?.words {
                return Err(invalid(format!("a fused kernel of {shape:?} written into {o:?}")));
            }
            o.clone()
        }
        None => cx.alloc(DType::F32, &shape)?,
    };
    let scratch =
        p.program.scratch.iter().map(|d| cx.alloc(DType::F32, &[d.eval(b) as usize])).collect::<Result<Vec<_>>>()?;
    let pick = |r: &Read| -> Result<&Buffer> {
        match r {
            Read::Input(i) => ins.get(*i as usize),
            Read::Scratch(s) => scratch.get(*s as usize),
        }
        .ok_or_else(|| invalid(format!("a fused stage reads {r:?}, which does not exist")))
    };
    for (j, s) in p.program.stages.iter().enumerate() {
        let threads = s.threads.eval(b);
        let meta = s.meta.iter().map(|m| meta_word(m, threads, ins, &y, b)).collect::<Result<Vec<u32>>>()?;
        let reads = s.reads.iter().map(pick).collect::<Result<Vec<_>>>()?;
        let write = match s.write {
            Write::Output => &y,
            Write::Scratch(i) => scratch.get(i as usize).ok_or_else(|| invalid("no such scratch".into()))?,
        };
        let (label, grid) = match s.row_threads {
            // A workgroup per row, spread over x and y as the shader expects.
            Some(_) => ("fused.rows", kernels::ops::groups(cx, usize::try_from(threads).unwrap_or(usize::MAX))?),
            None if j + 1 == p.program.stages.len() => ("fused", Grid::Items(threads)),
            None => ("fused.reduce", Grid::Items(threads)),
        };
        cx.run(label, &s.wgsl, &reads, write, &meta, grid)?;
    }
    Ok(y)
}

/// One meta word's value for these views.
fn meta_word(m: &MetaWord, threads: u64, ins: &[Buffer], y: &Buffer, b: &Bindings) -> Result<u32> {
    let view = |i: &u32| ins.get(*i as usize).ok_or_else(|| invalid(format!("no kernel input {i}")));
    let axis = |v: &Buffer, a: &u8| {
        v.strides.get(*a as usize).copied().ok_or_else(|| invalid(format!("no axis {a} in {v:?}")))
    };
    match m {
        MetaWord::Threads => word(usize::try_from(threads).unwrap_or(usize::MAX), "a thread count"),
        MetaWord::Dim(d) => word(usize::try_from(d.eval(b)).unwrap_or(usize::MAX), "a dimension"),
        MetaWord::InputOffset(i) => word(view(i)?.offset, "an offset"),
        MetaWord::InputStride(i, a) => word(axis(view(i)?, a)?, "a stride"),
        MetaWord::OutputOffset => word(y.offset, "an offset"),
        MetaWord::OutputStride(a) => word(axis(y, a)?, "a stride"),
    }
}

#[cfg(test)]
#[path = "fused_tests.rs"]
mod tests;
