//! Code generation for anchor-free kernels (the parts `kernel::split`
//! produces, and whole kernels without an anchor): a kernel becomes a
//! [`Program`] of [`Stage`]s, each a typed shader tree (`tree.rs`) printed as
//! WGSL (`wgsl.rs`); a CUDA printer can print the same trees.
//!
//! # The ABI between a program and the runtime that runs it
//! - A kernel whose reductions all fold the rows of its result (norms,
//!   softmaxes: the rule is in `rows.rs`) is ONE row stage
//!   ([`Stage::row_threads`] is `Some(n)`): [`Stage::threads`] rows, one
//!   workgroup of `n` threads per row, folding cooperatively (a tree over
//!   workgroup memory) then writing the row. Otherwise:
//! - A program's stages run in order, each as one dispatch of
//!   [`Stage::threads`] threads (one per item; a thread at or past `meta[0]`
//!   does nothing). The [`Expr::Reduce`]s run first, one thread per row,
//!   each folding its row in index order in f32 (the dense evaluator's
//!   order, so results agree to rounding); consecutive reductions over rows
//!   of one shape share a stage (a later fold reads an earlier one of its
//!   own row from a register; one read at another row splits the group) and
//!   one scratch buffer, reduction `s` of the group at `s * rows + row`. The
//!   last stage computes the result, one thread per element, reading the
//!   scratch. Everything else (index maps, element-wise ops, concats) is
//!   inlined into index arithmetic and per-element expressions.
//! - Bindings (group 0): binding 0 is the meta block `array<u32>` (read),
//!   then the buffers in [`Stage::reads`] order (read), then the one written
//!   ([`Stage::write`], read_write). Inputs are `array<f32>`, or
//!   `array<i32>` for i64 inputs (read as f32, as the interpreter does).
//!   Scratch buffers are dense f32 of [`Program::scratch`] elements.
//! - The meta block is [`Stage::meta`] evaluated by the runtime under the
//!   bindings and the actual views: inputs and the output are arbitrary
//!   strided views (offset and strides in elements, known at run time), so
//!   one shader serves every view and every `B`, `T`, `P`. Word 0 is always
//!   [`MetaWord::Threads`]. Constant dimensions are literals in the shader.
//! - Indices are u32: the runtime refuses a value that does not fit.
//!
//! Refused with an `Err` (never a panic): anchors and `write_slice` results
//! (the runtime splits a kernel with `kernel::split` first), constant
//! dimensions beyond u32.

mod build;
pub mod epilogue;
pub mod rows;
pub mod tree;
pub mod wgsl;

#[cfg(test)]
mod tests;

use crate::ir::dim::Dim;
use crate::kernel::Kernel;

/// A buffer a stage reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Read {
    /// Input `i` of the kernel, a strided view.
    Input(u32),
    /// Scratch buffer `i` of the program, dense.
    Scratch(u32),
}

/// The buffer a stage writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Write {
    /// The kernel's result: a strided view of the output shape.
    Output,
    /// Scratch buffer `i`, dense, element `id` per thread.
    Scratch(u32),
}

/// What one word of a stage's meta block holds.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum MetaWord {
    /// The stage's thread count ([`Stage::threads`]).
    Threads,
    /// A symbolic dimension's value.
    Dim(Dim),
    /// Input `i`'s offset in elements.
    InputOffset(u32),
    /// Input `i`'s stride along axis `a`.
    InputStride(u32, u8),
    OutputOffset,
    OutputStride(u8),
}

/// One dispatch.
#[derive(Clone, Debug, PartialEq)]
pub struct Stage {
    /// The shader (entry point `main`, workgroup size 64).
    pub wgsl: String,
    pub reads: Vec<Read>,
    pub write: Write,
    pub meta: Vec<MetaWord>,
    /// One thread per item; in a row stage, one workgroup per item (row).
    pub threads: Dim,
    /// `Some(n)`: a row stage (`rows.rs`), launched as one workgroup of `n`
    /// threads per row, `threads` rows, the row
    /// `wid.x + wid.y * nwg.x` (workgroups spread over x and y past the
    /// device's per-dimension limit); `None`: one thread per item.
    pub row_threads: Option<u32>,
    /// The tree `wgsl` prints.
    pub shader: tree::Shader,
}

/// An anchor-free kernel as stages.
#[derive(Clone, Debug, PartialEq)]
pub struct Program {
    pub stages: Vec<Stage>,
    /// Elements of each scratch buffer (dense f32).
    pub scratch: Vec<Dim>,
}

/// The WGSL program of an anchor-free kernel.
pub fn emit(k: &Kernel) -> Result<Program, String> {
    program(build::build(k, true)?)
}

/// [`emit`] without a row stage (the fold stages, then the result's): the
/// fallback path, for comparisons and figures.
pub fn emit_without_row_stage(k: &Kernel) -> Result<Program, String> {
    program(build::build(k, false)?)
}

fn program(parts: build::Built) -> Result<Program, String> {
    let stages = parts
        .stages
        .into_iter()
        .map(|s| Stage {
            wgsl: wgsl::print(&s.shader),
            reads: s
                .shader
                .reads
                .iter()
                .map(|(b, _)| match b {
                    tree::Buf::Input(i) => Read::Input(*i),
                    tree::Buf::Scratch(i) => Read::Scratch(*i),
                })
                .collect(),
            write: s.write,
            meta: s.meta,
            threads: s.threads,
            row_threads: s.shader.row_threads,
            shader: s.shader,
        })
        .collect();
    Ok(Program { stages, scratch: parts.scratch })
}
