//! `fused` nodes on wgpu. A kernel is split as on the CPU backend
//! (`kernel::split`): a store kernel's slice part first ([`split::stored`]),
//! then at its anchor. Each anchor-free part is emitted once, at prepare, as
//! WGSL stages (`ecarc_compiler::codegen`); a run evaluates their meta words
//! under the bindings and the actual views, allocates scratch and the result
//! (or writes into the state's slice) and records every stage (a row stage
//! as a workgroup per row, `kernels::ops::groups`). The anchor is
//! one of the hand-written kernels (`kernels::op`).

use super::kernels::{self, word, Ctx};
use super::record::Grid;
use super::storage::{span, storage_of};
use crate::backend::Buffer;
use crate::error::{Result, RuntimeError};
use crate::reference::eval_dims;
use ecarc_compiler::codegen::{self, MetaWord, Program, Read, Write};
use ecarc_compiler::ir::graph::TensorType;
use ecarc_compiler::ir::{Bindings, DType, Dim, Op};
use ecarc_compiler::kernel::split::{self, Operand, Part, Source};
use ecarc_compiler::kernel::Kernel;

/// An anchor-free part, emitted.
pub(crate) struct GpuPart {
    program: Program,
    /// Types of the part's inputs, checked against the views given.
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
            Body::Anchored { anchor, anchor_ty, operands, epilogue } => {
                let mut vals = Vec::with_capacity(operands.len());
                for o in operands {
                    vals.push(match o {
                        GpuOperand::Input(i) => input(*i)?,
                        GpuOperand::Computed(p) => run_part(cx, p, &gather(p, None)?, b, None)?,
                    });
                }
                let shape = eval_dims(&anchor_ty.shape, b).map_err(invalid)?;
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
