//! A cranelift JIT for anchor-free kernels of the kernel IR
//! (`ecarc_compiler::kernel`): native code specialised on the kernel's
//! concrete shapes and its inputs' strides, computing the same bits as the
//! kernel-IR interpreter (`kernel::interpret`). See docs/backends.md, "CPU:
//! kernel IR -> cranelift".
//!
//! ```text
//! let jit = JitKernel::compile(&kernel, &bindings, &strides)?; // once, cached by the caller
//! jit.run_checked(&[JitArg::F32(&x), JitArg::F32(&w)], &mut out)?;
//! ```

mod codegen;
#[cfg(test)]
mod tests;

use cranelift_codegen::ir::UserFuncName;
use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_codegen::settings::{self, Configurable};
use cranelift_frontend::FunctionBuilderContext;
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, Linkage, Module};
use ecarc_compiler::ir::{Bindings, DType};
use ecarc_compiler::kernel::{Expr, KId, Kernel, Layout};
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::OnceLock;

/// One stage: `f(table, row_begin, row_end)`.
type StageFn = unsafe extern "C" fn(*const *mut u8, i64, i64);

struct Stage {
    f: StageFn,
    rows: usize,
    /// Rough cost of one row (elements times nodes), to decide on threads.
    row_work: usize,
}

/// The JIT's code memory, freed with the kernel.
struct Code(Option<JITModule>);

impl Drop for Code {
    fn drop(&mut self) {
        if let Some(m) = self.0.take() {
            // SAFETY: the stage pointers die with the `JitKernel` owning this.
            unsafe { m.free_memory() };
        }
    }
}

/// A kernel compiled to native code for one set of shapes and input strides.
pub struct JitKernel {
    stages: Vec<Stage>,
    /// Element counts of the scratch buffers (one per reduction, one per
    /// kept operand).
    scratch: Vec<usize>,
    dtypes: Vec<DType>,
    /// Elements each input's view spans (largest offset + 1; 0 if empty).
    spans: Vec<usize>,
    /// Elements the output spans from `out`.
    out_span: usize,
    /// Whether the kernel writes a slice of its input 0 ([`Kernel::store`]).
    store: bool,
    /// Whether every stage has the same rows and reads scratch only at its
    /// own row: then a block of rows runs all stages before the next block
    /// (one parallel sweep, the block's values still in cache).
    rowwise: bool,
    _code: Code,
}

// SAFETY: after `finalize_definitions` the code is immutable; the module is
// only touched again to free it on drop, which needs `&mut self`.
unsafe impl Send for Code {}
unsafe impl Sync for Code {}

/// How [`JitKernel::exec`] orders the blocks of rows of a `rowwise` kernel.
#[derive(Clone, Copy, Debug)]
enum Order {
    /// Blocks over the threads when the kernel is large enough.
    Auto,
    /// One row a block, in order or reversed, on this thread: a test that a
    /// `rowwise` kernel reads no other row's scratch.
    #[cfg_attr(not(test), allow(dead_code))]
    RowByRow { reverse: bool },
}

/// A safe argument of [`JitKernel::run_checked`].
#[derive(Clone, Copy, Debug)]
pub enum JitArg<'a> {
    F32(&'a [f32]),
    I64(&'a [i64]),
}

/// Below this much work (elements times nodes) a stage runs on one thread.
const PARALLEL_WORK: usize = 1 << 16;

fn isa() -> Result<OwnedTargetIsa, String> {
    static ISA: OnceLock<Result<OwnedTargetIsa, String>> = OnceLock::new();
    ISA.get_or_init(|| {
        let mut fb = settings::builder();
        let set = |fb: &mut settings::Builder, k: &str, v: &str| fb.set(k, v).map_err(|e| format!("{k}={v}: {e}"));
        set(&mut fb, "opt_level", "speed")?;
        set(&mut fb, "use_colocated_libcalls", "false")?;
        set(&mut fb, "is_pic", "false")?;
        set(&mut fb, "enable_verifier", if cfg!(debug_assertions) { "true" } else { "false" })?;
        let ib = cranelift_native::builder().map_err(|e| format!("host not supported by cranelift: {e}"))?;
        ib.finish(settings::Flags::new(fb)).map_err(|e| format!("cranelift ISA: {e}"))
    })
    .clone()
}

/// Whether to emit the final stage's `f32x4` loop (`ECARC_JIT_SIMD=0`
/// turns it off, to compare).
fn simd() -> bool {
    static SIMD: OnceLock<bool> = OnceLock::new();
    *SIMD.get_or_init(|| std::env::var("ECARC_JIT_SIMD").map_or(true, |v| v != "0"))
}

/// A node cost (distinct nodes, a call counting [`CALL_COST`]) at or above
/// which a reduction's operand that later stages read again is stored by
/// its reduction's stage instead of being computed twice.
const KEEP_COST: usize = 8;
const CALL_COST: usize = 8;

/// The reductions' operands worth keeping, with the stage storing each.
fn keep(k: &Kernel, reach: &[bool], reduces: &[KId]) -> Vec<(KId, usize)> {
    let mut kept: Vec<(KId, usize)> = vec![];
    for (s, &r) in reduces.iter().enumerate() {
        let Expr::Reduce { x, .. } = k.nodes[r as usize].expr else { continue };
        if kept.iter().any(|&(y, _)| y == x) {
            continue;
        }
        let readers = (0..k.nodes.len())
            .filter(|&i| reach[i] && i != r as usize && k.nodes[i].expr.operands().contains(&x))
            .count();
        if readers == 0 {
            continue;
        }
        // Distinct nodes computed for `x`, down to loads, reductions and kept nodes.
        let mut seen = vec![false; k.nodes.len()];
        let mut stack = vec![x];
        let mut cost = 0;
        while let Some(n) = stack.pop() {
            if std::mem::replace(&mut seen[n as usize], true) {
                continue;
            }
            let e = &k.nodes[n as usize].expr;
            cost += match e {
                Expr::Unary(u, _)
                    if !matches!(u, ecarc_compiler::ir::op::Unary::Neg | ecarc_compiler::ir::op::Unary::Sqrt) =>
                {
                    CALL_COST
                }
                Expr::Const(_) => 0,
                _ => 1,
            };
            let stored = n != x && kept.iter().any(|&(y, _)| y == n);
            if !stored && !matches!(e, Expr::Reduce { .. }) {
                stack.extend(e.operands());
            }
        }
        if cost >= KEEP_COST {
            kept.push((x, s));
        }
    }
    kept
}

/// The largest element offset + 1 of a view (0 when empty).
fn span(shape: &[usize], strides: &[usize]) -> usize {
    if shape.contains(&0) {
        return 0;
    }
    shape.iter().zip(strides).map(|(&d, &s)| (d - 1) * s).sum::<usize>() + 1
}

fn row_major(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for a in (0..shape.len().saturating_sub(1)).rev() {
        s[a] = s[a + 1] * shape[a + 1];
    }
    s
}

impl JitKernel {
    /// Compile `k` (no `Expr::Anchor`) for concrete shapes: `b` binds the
    /// symbolic dims, `input_strides[i]` are the element strides of input
    /// `i`'s view (strided views are read in place). `Err(reason)` for
    /// anything unsupported or ill-formed; never panics.
    pub fn compile(k: &Kernel, b: &Bindings, input_strides: &[Vec<usize>]) -> Result<JitKernel, String> {
        if let Some((op, _)) = k.anchor() {
            return Err(format!("the kernel has the anchor `{}` (the JIT takes anchor-free kernels)", op.name()));
        }
        k.verify(&k.inputs.iter().collect::<Vec<_>>())?;
        if input_strides.len() != k.inputs.len() {
            return Err(format!("{} input strides for {} inputs", input_strides.len(), k.inputs.len()));
        }
        let concrete = |d: &[ecarc_compiler::ir::Dim]| d.iter().map(|d| d.eval(b) as usize).collect::<Vec<usize>>();
        let in_shapes: Vec<Vec<usize>> = k.inputs.iter().map(|t| concrete(&t.shape)).collect();
        for (i, (s, st)) in in_shapes.iter().zip(input_strides).enumerate() {
            if s.len() != st.len() {
                return Err(format!("input {i} has rank {} but {} strides", s.len(), st.len()));
            }
        }
        let shapes: Vec<Vec<usize>> = k.nodes.iter().map(|n| concrete(&n.ty.shape)).collect();
        // Index arithmetic is i64, folded at compile time: keep every extent,
        // size and span far from overflowing it.
        let limit = 1usize << 40;
        let fits =
            |s: &[usize]| s.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d.max(1))).is_some_and(|n| n < limit);
        if let Some(i) = shapes.iter().position(|s| !fits(s)) {
            return Err(format!("kernel node {i}: shape {:?} too large", shapes[i]));
        }
        for (i, (s, st)) in in_shapes.iter().zip(input_strides).enumerate() {
            let span =
                s.iter().zip(st).try_fold(0usize, |acc, (&d, &t)| acc.checked_add(d.saturating_sub(1).checked_mul(t)?));
            if span.is_none_or(|n| n >= limit) {
                return Err(format!("input {i}: a view of {s:?} with strides {st:?} spans too much"));
            }
        }
        let mut starts = HashMap::new();
        for (i, n) in k.nodes.iter().enumerate() {
            match &n.expr {
                Expr::Map { x, map: Layout::Slice { axis, start } } => {
                    let (s, a) = (start.eval(b) as usize, *axis as usize);
                    if s + shapes[i][a] > shapes[*x as usize][a] {
                        return Err(format!(
                            "kernel node {i}: slice {s}.. of {} rows beyond {}",
                            shapes[i][a], shapes[*x as usize][a]
                        ));
                    }
                    starts.insert(i as KId, s);
                }
                Expr::WriteSlice { src, axis, start, .. } => {
                    let (s, a) = (start.eval(b) as usize, *axis as usize);
                    if s + shapes[*src as usize][a] > shapes[i][a] {
                        return Err(format!("kernel node {i}: write_slice {s}.. beyond {} rows", shapes[i][a]));
                    }
                }
                _ => {}
            }
        }
        let (result, out_strides, store) = match k.store() {
            Some((src, axis, _)) => {
                if input_strides[0].len() != shapes[src as usize].len() || (axis as usize) >= input_strides[0].len() {
                    return Err("a store kernel whose slice's rank is not its destination's".into());
                }
                (src, input_strides[0].clone(), true)
            }
            None => {
                let last = (k.nodes.len() - 1) as KId;
                (last, row_major(&shapes[last as usize]), false)
            }
        };
        // The nodes the result reads.
        let mut reach = vec![false; k.nodes.len()];
        reach[result as usize] = true;
        for i in (0..=result as usize).rev() {
            if reach[i] {
                for o in k.nodes[i].expr.operands() {
                    reach[o as usize] = true;
                }
            }
        }
        let reduces: Vec<KId> = (0..k.nodes.len())
            .filter(|&i| reach[i] && matches!(k.nodes[i].expr, Expr::Reduce { .. }))
            .map(|i| i as KId)
            .collect();
        let nodes_read = reach.iter().filter(|&&r| r).count();
        let kept = keep(k, &reach, &reduces);
        let plan = codegen::Plan {
            k,
            shapes,
            strides: input_strides,
            starts,
            result,
            out_strides,
            reduces,
            kept,
            simd: simd(),
        };

        let isa = isa()?;
        let call_conv = isa.default_call_conv();
        let config = isa.frontend_config();
        // Owned by `code` from the start, so an error below frees it too.
        let mut code = Code(Some(JITModule::new(JITBuilder::with_isa(isa, default_libcall_names()))));
        let module = code.0.as_mut().expect("just made");
        let mut ctx = module.make_context();
        let mut fctx = FunctionBuilderContext::new();
        let mut ids = vec![];
        let mut stages = vec![];
        let (mut row_local, mut leads) = (true, vec![]);
        for s in 0..=plan.reduces.len() {
            let sig = codegen::stage_signature(call_conv);
            let id = module
                .declare_function(&format!("stage{s}"), Linkage::Local, &sig)
                .map_err(|e| format!("declare: {e}"))?;
            ctx.func.signature = sig;
            ctx.func.name = UserFuncName::user(0, id.as_u32());
            row_local &= codegen::emit_stage(&plan, s, &mut ctx.func, &mut fctx, call_conv, config)?;
            leads.push(plan.stage_space(s).0);
            if std::env::var_os("ECARC_JIT_CLIF").is_some() {
                eprintln!("{}", ctx.func.display());
            }
            module.define_function(id, &mut ctx).map_err(|e| format!("cranelift: {e:?}"))?;
            module.clear_context(&mut ctx);
            ids.push(id);
            let (lead, len) = plan.stage_space(s);
            let len = match plan.reduces.get(s) {
                Some(&r) => {
                    let Expr::Reduce { x, .. } = &k.nodes[r as usize].expr else { unreachable!("a reduce") };
                    plan.shapes[*x as usize].last().copied().unwrap_or(1)
                }
                None => len,
            };
            stages.push((lead.iter().product::<usize>(), len.saturating_mul(nodes_read)));
        }
        module.finalize_definitions().map_err(|e| format!("cranelift: {e}"))?;
        let stages = ids
            .iter()
            .zip(stages)
            .map(|(&id, (rows, row_work))| {
                let p = module.get_finalized_function(id);
                // SAFETY: compiled with `stage_signature`, the C ABI of `StageFn`.
                let f = unsafe { std::mem::transmute::<*const u8, StageFn>(p) };
                Stage { f, rows, row_work }
            })
            .collect();
        let scratch = plan
            .reduces
            .iter()
            .chain(plan.kept.iter().map(|(x, _)| x))
            .map(|&r| plan.shapes[r as usize].iter().product::<usize>())
            .collect();
        let spans = in_shapes.iter().zip(input_strides).map(|(s, st)| span(s, st)).collect();
        let out_span = span(&plan.shapes[result as usize], &plan.out_strides);
        Ok(JitKernel {
            stages,
            scratch,
            dtypes: k.inputs.iter().map(|t| t.dtype).collect(),
            spans,
            out_span,
            store,
            rowwise: row_local && leads.windows(2).all(|w| w[0] == w[1]),
            _code: code,
        })
    }

    /// What the code compiled for `k` under `b` depends on besides `k` and
    /// the input strides: every node's concrete shape and every `Slice`
    /// start. A store kernel's `WriteSlice` start is not in it (the caller
    /// offsets `out`), so bindings with equal keys, such as the decode steps
    /// of a KV-cache write, can share one `JitKernel` (caching on kernel,
    /// key and strides); the slice must still fit its destination, which
    /// `run_checked` checks through the length of `out`.
    pub fn specialisation(k: &Kernel, b: &Bindings) -> Vec<u64> {
        let mut key = vec![];
        for n in &k.nodes {
            key.push(n.ty.shape.len() as u64);
            key.extend(n.ty.shape.iter().map(|d| d.eval(b)));
            if let Expr::Map { map: Layout::Slice { start, .. }, .. } = &n.expr {
                key.push(start.eval(b));
            }
        }
        key
    }

    /// Whether the kernel writes a slice of its input 0 in place.
    pub fn is_store(&self) -> bool {
        self.store
    }

    /// Elements the output spans from `out` (the dense result's length,
    /// or for a store kernel the slice's span in the destination).
    pub fn out_span(&self) -> usize {
        self.out_span
    }

    /// Run the kernel.
    ///
    /// # Safety
    /// `inputs[i]` points at the first element of a view of input `i`
    /// (f32 or i64 as the kernel declares it) with the strides given at
    /// compile time, readable over its whole span (a store kernel's input 0
    /// is never read); `out` is writable for [`Self::out_span`] elements:
    /// the dense row-major result, or for a store kernel the destination's
    /// first written element (the destination's strides, only the slice is
    /// written). `out` overlaps no input that is read.
    pub unsafe fn run(&self, inputs: &[*const u8], out: *mut f32) {
        // SAFETY: the caller's contract.
        unsafe { self.exec(inputs, out, Order::Auto) }
    }

    /// # Safety
    /// As [`Self::run`].
    unsafe fn exec(&self, inputs: &[*const u8], out: *mut f32, order: Order) {
        debug_assert_eq!(inputs.len(), self.dtypes.len(), "one pointer per input");
        let mut scratch: Vec<Vec<f32>> = self.scratch.iter().map(|&n| vec![0f32; n]).collect();
        let mut table: Vec<*mut u8> = inputs.iter().map(|&p| p as *mut u8).collect();
        table.push(out as *mut u8);
        table.extend(scratch.iter_mut().map(|s| s.as_mut_ptr() as *mut u8));
        let addr = table.as_ptr() as usize;
        let threads = rayon::current_num_threads();
        if self.rowwise && self.stages.len() > 1 {
            let rows = self.stages[0].rows;
            let work = self.stages.iter().fold(0usize, |a, s| a.saturating_add(s.rows.saturating_mul(s.row_work)));
            let blocks = match order {
                Order::Auto if threads > 1 && rows > 1 && work >= PARALLEL_WORK => rows.min(threads * 4),
                Order::Auto => 1,
                Order::RowByRow { .. } => rows,
            };
            let block = |c: usize| {
                let (b, e) = (rows * c / blocks, rows * (c + 1) / blocks);
                for st in &self.stages {
                    // SAFETY: blocks write disjoint rows and read only their
                    // own rows of scratch (`rowwise`); the caller's contract.
                    unsafe { (st.f)(addr as *const *mut u8, b as i64, e as i64) };
                }
            };
            match order {
                Order::RowByRow { reverse: true } => (0..blocks).rev().for_each(block),
                Order::RowByRow { reverse: false } => (0..blocks).for_each(block),
                Order::Auto if blocks > 1 => (0..blocks).into_par_iter().for_each(block),
                Order::Auto => block(0),
            }
            drop(table);
            drop(scratch);
            return;
        }
        for st in &self.stages {
            if st.rows == 0 {
                continue;
            }
            if threads > 1 && st.rows > 1 && st.rows.saturating_mul(st.row_work) >= PARALLEL_WORK {
                let chunks = st.rows.min(threads * 4);
                let f = st.f;
                (0..chunks).into_par_iter().for_each(|c| {
                    let (b, e) = (st.rows * c / chunks, st.rows * (c + 1) / chunks);
                    // SAFETY: chunks write disjoint rows; the caller's contract.
                    unsafe { f(addr as *const *mut u8, b as i64, e as i64) };
                });
            } else {
                // SAFETY: the caller's contract.
                unsafe { (st.f)(table.as_ptr(), 0, st.rows as i64) };
            }
        }
        drop(table);
        drop(scratch);
    }

    /// [`Self::run`] over slices, every bound checked up front. For a store
    /// kernel `inputs[0]` is not read (any slice will do) and `out` starts
    /// at the destination's first written element.
    pub fn run_checked(&self, inputs: &[JitArg], out: &mut [f32]) -> Result<(), String> {
        self.run_checked_in(inputs, out, Order::Auto)
    }

    fn run_checked_in(&self, inputs: &[JitArg], out: &mut [f32], order: Order) -> Result<(), String> {
        if inputs.len() != self.dtypes.len() {
            return Err(format!("the kernel takes {} inputs, given {}", self.dtypes.len(), inputs.len()));
        }
        let mut ptrs = Vec::with_capacity(inputs.len());
        for (i, a) in inputs.iter().enumerate() {
            let (dtype, len, p) = match a {
                JitArg::F32(s) => (DType::F32, s.len(), s.as_ptr() as *const u8),
                JitArg::I64(s) => (DType::I64, s.len(), s.as_ptr() as *const u8),
            };
            if !(self.store && i == 0) {
                if dtype != self.dtypes[i] {
                    return Err(format!("input {i} is {}, declared {}", dtype.name(), self.dtypes[i].name()));
                }
                if len < self.spans[i] {
                    return Err(format!("input {i} has {len} elements, its view spans {}", self.spans[i]));
                }
            }
            ptrs.push(p);
        }
        if out.len() < self.out_span {
            return Err(format!("the output has {} elements, the result spans {}", out.len(), self.out_span));
        }
        // SAFETY: bounds and dtypes checked above; `out` is a unique borrow.
        unsafe { self.exec(&ptrs, out.as_mut_ptr(), order) };
        Ok(())
    }
}
