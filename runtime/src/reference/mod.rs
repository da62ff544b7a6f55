//! The reference interpreter: plain, obviously correct Rust over f32 host
//! tensors. It is the oracle every other backend and every graph pass is
//! tested against, so it favours clarity over speed: one kernel function per
//! op, simple loops, sums accumulated sequentially in f32 in the order a naive
//! loop would use. Kernels that run rows in parallel (Linear, MatMul, Conv2d)
//! compute every output element by the same sequential loop, so results are
//! bit-identical whatever the number of threads.
//!
//! Semantics follow the reference implementations (PyTorch): see each kernel's
//! doc comment and `compiler/src/ir/op.rs`.
//!
//! Programs run as `program.rs` says: values are views (`view.rs`), so
//! layout ops copy nothing until a kernel needs dense operands, and a declared
//! state update writes into the state's memory when it can. [`Counters`] count
//! the bytes copied and written, so tests can check both.

pub(crate) mod attention;
mod elementwise;
mod flow_map;
pub(crate) mod fused;
mod generate;
#[cfg(test)]
mod golden;
pub(crate) mod layout;
pub(crate) mod linalg;
pub(crate) mod norm;
pub(crate) mod position;
pub(crate) mod program;
#[cfg(test)]
mod tests;
pub(crate) mod view;

use crate::backend::*;
use crate::error::{Result, RuntimeError};
use crate::tensor::{numel, Data, HostTensor};
use ecarc_compiler::ir::{Bindings, DType, Dim, Graph, Op, TensorType};
use program::Prepared;
use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use view::View;

/// The reference backend. Clones share their counters.
#[derive(Clone, Debug, Default)]
pub struct Reference {
    counters: Arc<Counters>,
}

impl Reference {
    pub fn new() -> Self {
        Reference::default()
    }

    /// Bytes copied and written so far by this backend (and its clones).
    pub fn traffic(&self) -> Traffic {
        self.counters.traffic()
    }
}

impl Counters {
    /// What [`Reference::traffic`] reports, for these counters.
    pub(crate) fn traffic(&self) -> Traffic {
        let c = self;
        Traffic {
            copied_bytes: c.copied.load(Relaxed),
            state_bytes_written: c.written.load(Relaxed),
            updates_in_place: c.in_place.load(Relaxed),
            updates_copied: c.copied_updates.load(Relaxed),
        }
    }
}

/// What [`Reference::traffic`] reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Bytes of dense copies of views (a kernel that needed dense operands,
    /// a reshape of a permuted view) and of states copied before a write.
    pub copied_bytes: u64,
    /// Bytes written into states by `write_slice` (the new rows only).
    pub state_bytes_written: u64,
    /// State updates written into the state's own memory.
    pub updates_in_place: u64,
    /// State updates that had to copy the state first (someone else held it).
    pub updates_copied: u64,
}

impl std::ops::Sub for Traffic {
    type Output = Traffic;
    fn sub(self, o: Traffic) -> Traffic {
        Traffic {
            copied_bytes: self.copied_bytes - o.copied_bytes,
            state_bytes_written: self.state_bytes_written - o.state_bytes_written,
            updates_in_place: self.updates_in_place - o.updates_in_place,
            updates_copied: self.updates_copied - o.updates_copied,
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    copied: AtomicU64,
    written: AtomicU64,
    in_place: AtomicU64,
    copied_updates: AtomicU64,
}

impl Counters {
    /// `v` as a dense tensor of its shape: its base when the view is the
    /// whole base in order (re-shaped in place when nobody else holds it),
    /// else a counted copy.
    pub(crate) fn dense_owned(&self, v: View) -> Arc<HostTensor> {
        if !v.is_whole() {
            return Arc::new(self.copy(&v));
        }
        if v.base.shape == v.shape {
            return v.base;
        }
        let View { base, offset, shape, strides } = v;
        match Arc::try_unwrap(base) {
            Ok(mut t) => {
                t.shape = shape;
                Arc::new(t)
            }
            Err(base) => Arc::new(self.copy(&View { base, offset, shape, strides })),
        }
    }
    pub(crate) fn copy(&self, v: &View) -> HostTensor {
        let t = v.to_tensor();
        self.copied.fetch_add(t.bytes() as u64, Relaxed);
        t
    }
    fn written(&self, bytes: usize) {
        self.written.fetch_add(bytes as u64, Relaxed);
    }
    fn in_place(&self) {
        self.in_place.fetch_add(1, Relaxed);
    }
    fn copied_update(&self) {
        self.copied_updates.fetch_add(1, Relaxed);
    }
}

/// The reference backend's buffers: an immutable host tensor, shared.
pub struct RefStorage(pub Arc<HostTensor>);

impl Storage for RefStorage {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
}

const BACKEND: &str = "reference";

fn exec_err(program: &str, why: impl Into<String>) -> RuntimeError {
    RuntimeError::Execution { backend: BACKEND.into(), program: program.into(), why: why.into() }
}

/// `f32[2, 3]`.
pub(crate) fn type_text(dtype: DType, shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("{}[{}]", dtype.name(), dims.join(", "))
}

/// `f32[B, 3]`.
fn symbolic_text(ty: &TensorType) -> String {
    let dims: Vec<String> = ty.shape.iter().map(|d| d.to_string()).collect();
    format!("{}[{}]", ty.dtype.name(), dims.join(", "))
}

/// Evaluate dimensions under the bindings; an error if one does not fit in
/// memory indexing or the element count overflows.
pub(crate) fn eval_dims(dims: &[Dim], b: &Bindings) -> std::result::Result<Vec<usize>, String> {
    let mut out = Vec::with_capacity(dims.len());
    let mut total: usize = 1;
    for d in dims {
        let v = d.eval(b);
        let v = usize::try_from(v).map_err(|_| format!("dimension {d} = {v} is too large"))?;
        total = total.checked_mul(v).ok_or_else(|| format!("shape {dims:?} has too many elements"))?;
        out.push(v);
    }
    Ok(out)
}

/// A buffer over a view's data (no copy).
pub(crate) fn buffer_of(v: View) -> Buffer {
    Buffer {
        dtype: v.dtype(),
        shape: v.shape,
        offset: v.offset,
        strides: v.strides,
        storage: Arc::new(RefStorage(v.base)),
    }
}

impl Backend for Reference {
    fn name(&self) -> &'static str {
        BACKEND
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities { all_ops: true, memory_bytes: None, device: "host CPU (plain Rust interpreter)".into() }
    }
    fn upload(&self, t: &HostTensor) -> Result<Buffer> {
        let len = match &t.data {
            Data::F32(v) => v.len(),
            Data::I64(v) => v.len(),
        };
        if numel(&t.shape) != len {
            return Err(RuntimeError::Invalid(format!(
                "a tensor of shape {:?} with {} elements cannot be uploaded",
                t.shape, len
            )));
        }
        Ok(buffer_of(View::whole(Arc::new(t.clone()))))
    }
    fn download(&self, b: &Buffer) -> Result<HostTensor> {
        let v = program::view_of(b)?;
        Ok(if v.is_whole() { HostTensor { shape: v.shape, data: v.base.data.clone() } } else { v.to_tensor() })
    }
    fn non_finite(&self, b: &Buffer) -> Result<Option<String>> {
        let v = program::view_of(b)?;
        Ok(if v.is_whole() && v.base.shape == v.shape { v.base.non_finite() } else { self.download(b)?.non_finite() })
    }
    fn prepare(&self, g: &Graph, params: &Params) -> Result<Executable> {
        let p = Prepared::new(g, params)?;
        Ok(Executable { name: g.name.clone(), inner: Arc::new(p) })
    }
    fn run(&self, exe: &Executable, bindings: &Bindings, args: Args) -> Result<Vec<(String, Buffer)>> {
        let p = exe
            .inner
            .downcast_ref::<Prepared>()
            .ok_or_else(|| RuntimeError::Invalid(format!("program `{}` was prepared by another backend", exe.name)))?;
        Ok(p.run_counting(bindings, args, &self.counters)?.0)
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}

// ---- kernel plumbing --------------------------------------------------------

/// A kernel's result; the message is wrapped with the program and node.
pub(crate) type KResult<T> = std::result::Result<T, String>;

pub(crate) fn f32_of<'a>(t: &'a HostTensor, what: &str) -> KResult<&'a [f32]> {
    t.as_f32().ok_or_else(|| format!("{what} must be f32, got {}", type_text(t.dtype(), &t.shape)))
}

pub(crate) fn i64_of<'a>(t: &'a HostTensor, what: &str) -> KResult<&'a [i64]> {
    t.as_i64().ok_or_else(|| format!("{what} must be i64, got {}", type_text(t.dtype(), &t.shape)))
}

/// `x` as a float scalar attribute.
pub(crate) fn attr(x: ecarc_compiler::ir::F) -> f32 {
    x.get() as f32
}

/// Row-major strides of a shape.
pub(crate) fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

/// Numpy broadcasting of two shapes (a dimension broadcasts only if it is 1).
pub(crate) fn broadcast_shape(a: &[usize], b: &[usize]) -> KResult<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let da = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
        let db = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
        out.push(if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return Err(format!("cannot broadcast {a:?} with {b:?}"));
        });
    }
    Ok(out)
}

/// For each flat index of `out`, the flat index into a tensor of `shape`
/// broadcast to it (numpy rules; `shape` aligned to the right).
pub(crate) fn broadcast_index(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let pad = out.len() - shape.len();
    let src_strides = strides(shape);
    // Stride of each output axis in the source (0 where broadcast).
    let st: Vec<usize> =
        (0..out.len()).map(|i| if i < pad || shape[i - pad] == 1 { 0 } else { src_strides[i - pad] }).collect();
    let total = numel(out);
    let mut idx = Vec::with_capacity(total);
    for flat in 0..total {
        let mut rem = flat;
        let mut src = 0;
        for axis in (0..out.len()).rev() {
            let i = rem % out[axis];
            rem /= out[axis];
            src += i * st[axis];
        }
        idx.push(src);
    }
    idx
}

fn arity(ins: &[&HostTensor], lo: usize, hi: usize) -> KResult<()> {
    if ins.len() < lo || ins.len() > hi {
        Err(format!("takes {lo}..={hi} operands, got {}", ins.len()))
    } else {
        Ok(())
    }
}

/// `v` as an index, or why not.
pub(crate) fn index(v: u64, what: &str) -> KResult<usize> {
    usize::try_from(v).map_err(|_| format!("{what} {v} is too large"))
}

/// The sampling settings `temperature: f32[]`, `top_k: i64[]`, `top_p: f32[]`.
fn settings(x: &[&HostTensor]) -> KResult<(f64, usize, f64)> {
    let one_f32 = |t: &HostTensor, what| match f32_of(t, what)? {
        [v] => Ok(*v as f64),
        _ => Err(format!("{what} must be a scalar, got {:?}", t.shape)),
    };
    let top_k = match i64_of(x[1], "top_k")? {
        [k] => usize::try_from(*k).map_err(|_| format!("top_k {k} must not be negative"))?,
        _ => return Err(format!("top_k must be a scalar, got {:?}", x[1].shape)),
    };
    Ok((one_f32(x[0], "temperature")?, top_k, one_f32(x[2], "top_p")?))
}

/// Evaluate one non-source op on its operand values.
pub(crate) fn eval(op: &Op, x: &[&HostTensor], b: &Bindings) -> KResult<HostTensor> {
    use Op::*;
    match op {
        Input { .. } | Param { .. } | State { .. } | Const { .. } => Err("a source has no kernel".into()),
        Linear => {
            arity(x, 2, 3)?;
            linalg::linear(x[0], x[1], x.get(2).copied())
        }
        MatMul => {
            arity(x, 2, 2)?;
            linalg::matmul(x[0], x[1])
        }
        Conv2d { stride, pad } => {
            arity(x, 2, 3)?;
            linalg::conv2d(x[0], x[1], x.get(2).copied(), *stride as usize, *pad as usize)
        }
        Embedding => {
            arity(x, 2, 2)?;
            linalg::embedding(x[0], x[1])
        }
        Unary(u) => {
            arity(x, 1, 1)?;
            elementwise::unary(*u, x[0])
        }
        Binary(op) => {
            arity(x, 2, 2)?;
            elementwise::binary(*op, x[0], x[1])
        }
        Affine { scale, shift } => {
            arity(x, 1, 1)?;
            elementwise::affine(x[0], attr(*scale), attr(*shift))
        }
        ClampMax { max } => {
            arity(x, 1, 1)?;
            elementwise::clamp_max(x[0], attr(*max))
        }
        LayerNorm { eps } => {
            arity(x, 1, 3)?;
            norm::layer_norm(x[0], x.get(1).copied(), x.get(2).copied(), attr(*eps))
        }
        RmsNorm { eps } => {
            arity(x, 2, 2)?;
            norm::rms_norm(x[0], x[1], attr(*eps))
        }
        GroupNorm { groups, eps } => {
            arity(x, 3, 3)?;
            norm::group_norm(x[0], x[1], x[2], *groups as usize, attr(*eps))
        }
        L2Normalize { eps } => {
            arity(x, 1, 1)?;
            norm::l2_normalize(x[0], attr(*eps))
        }
        Softmax => {
            arity(x, 1, 1)?;
            norm::softmax(x[0])
        }
        ArgMax => {
            arity(x, 1, 1)?;
            norm::argmax(x[0])
        }
        Reshape { shape } => {
            arity(x, 1, 1)?;
            layout::reshape(x[0], &eval_dims(shape, b)?)
        }
        Permute { perm } => {
            arity(x, 1, 1)?;
            let perm: Vec<usize> = perm.iter().map(|&p| p as usize).collect();
            layout::permute(x[0], &perm)
        }
        Slice { axis, start, len } => {
            arity(x, 1, 1)?;
            let (start, len) = (start.eval(b), len.eval(b));
            let start = usize::try_from(start).map_err(|_| format!("slice start {start} is too large"))?;
            let len = usize::try_from(len).map_err(|_| format!("slice length {len} is too large"))?;
            layout::slice(x[0], *axis as usize, start, len)
        }
        Concat { axis } => {
            arity(x, 1, usize::MAX)?;
            layout::concat(x, *axis as usize)
        }
        Resize { mode, h, w } => {
            arity(x, 1, 1)?;
            let hw = eval_dims(&[h.clone(), w.clone()], b)?;
            layout::resize(x[0], *mode, hw[0], hw[1])
        }
        Sinusoid { dim, max_period } => {
            arity(x, 1, 1)?;
            position::sinusoid(x[0], *dim as usize, max_period.get())
        }
        Rope => {
            arity(x, 3, 3)?;
            position::rope(x[0], x[1], x[2])
        }
        Guide { channels } => {
            arity(x, 3, 3)?;
            generate::guide(x[0], x[1], x[2], channels.map(|c| c as usize))
        }
        SampleTokens => {
            arity(x, 5, 5)?;
            let (temperature, top_k, top_p) = settings(&x[2..])?;
            generate::sample_tokens(x[0], x[1], temperature, top_k, top_p)
        }
        NearestCode => {
            arity(x, 2, 2)?;
            generate::nearest_code(x[0], x[1])
        }
        FlowMapTokens { steps } => {
            arity(x, 6, 6)?;
            let (temperature, top_k, top_p) = settings(&x[3..])?;
            flow_map::flow_map_tokens(x[0], x[1], x[2], temperature, top_k, top_p, *steps as usize)
        }
        WriteSlice { .. } | Attention { .. } => Err("runs on views (program.rs)".into()),
        Fused(k) => fused::run(k, x.iter().map(|t| (*t).clone()).collect(), b),
    }
}

/// Helpers shared by the kernel tests.
#[cfg(test)]
pub(crate) mod testutil {
    use crate::tensor::HostTensor;

    /// `|a - e| <= atol + rtol * |e|` elementwise, with a message naming the
    /// first offending element.
    #[track_caller]
    pub fn assert_close(actual: &[f32], expected: &[f32], atol: f32, rtol: f32) {
        assert_close_named("", actual, expected, atol, rtol)
    }

    #[track_caller]
    pub fn assert_close_named(what: &str, actual: &[f32], expected: &[f32], atol: f32, rtol: f32) {
        assert_eq!(actual.len(), expected.len(), "{what}: lengths differ: {actual:?} vs {expected:?}");
        for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
            let ok = (a - e).abs() <= atol + rtol * e.abs() || (a.is_nan() && e.is_nan()) || a == e;
            assert!(
                ok,
                "{what} element {i}: got {a}, expected {e} (atol {atol}, rtol {rtol})\nactual   {actual:?}\nexpected {expected:?}"
            );
        }
    }

    pub fn t(shape: &[usize], data: &[f32]) -> HostTensor {
        HostTensor::f32(shape.to_vec(), data.to_vec())
    }

    pub fn ti(shape: &[usize], data: &[i64]) -> HostTensor {
        HostTensor::i64(shape.to_vec(), data.to_vec())
    }

    pub fn f(t: &HostTensor) -> &[f32] {
        t.as_f32().expect("f32 tensor")
    }

    /// A deterministic pseudo-random sequence in [-1, 1) (a tiny LCG, so the
    /// tests do not depend on a generator's version).
    pub fn seq(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }
}

/// The reference kernels on host tensors, for benchmarks comparing a backend with them.
pub mod kernels {
    use crate::tensor::HostTensor;

    /// `x[..., in] @ w[out, in]^T (+ b)`, sums in order.
    pub fn linear(x: &HostTensor, w: &HostTensor, b: Option<&HostTensor>) -> Result<HostTensor, String> {
        super::linalg::linear(x, w, b)
    }
}
