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
//! Running a program: every source node is fetched from [`Args`] and checked
//! against its declared type under the bindings (missing -> `MissingSource`,
//! wrong dtype or shape -> `Mismatch`); then the nodes the outputs depend on
//! are evaluated in topological order, each result checked against the node's
//! declared type, and every intermediate value is freed after its last use.

mod elementwise;
mod flow_map;
mod generate;
#[cfg(test)]
mod golden;
mod layout;
mod linalg;
mod norm;
mod position;
#[cfg(test)]
mod tests;

use crate::backend::*;
use crate::error::{Result, RuntimeError};
use crate::tensor::{numel, Data, HostTensor};
use ecarc_compiler::ir::{Bindings, DType, Dim, Graph, Op, TensorType};
use petgraph::stable_graph::NodeIndex;
use petgraph::visit::NodeIndexable;
use std::any::Any;
use std::sync::Arc;

/// The reference backend (stateless).
#[derive(Clone, Copy, Debug, Default)]
pub struct Reference;

impl Reference {
    pub fn new() -> Self {
        Reference
    }
}

/// The reference backend's buffers: an immutable host tensor, shared.
pub struct RefStorage(pub Arc<HostTensor>);

impl Storage for RefStorage {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A program prepared for the reference backend: the graph, an evaluation
/// order, and for each node the number of uses that keep its value alive.
struct Prepared {
    graph: Graph,
    /// All nodes in a topological order.
    order: Vec<NodeIndex>,
    /// Operands of each node, by `NodeIndex::index()`.
    operands: Vec<Vec<NodeIndex>>,
    /// Whether a node is needed to compute the outputs, by index.
    needed: Vec<bool>,
    /// Consumers among the needed nodes (one per operand slot) plus output
    /// mentions, by index: the value is freed when this count reaches zero.
    uses: Vec<usize>,
}

const BACKEND: &str = "reference";

fn exec_err(program: &str, why: impl Into<String>) -> RuntimeError {
    RuntimeError::Execution { backend: BACKEND.into(), program: program.into(), why: why.into() }
}

/// `f32[2, 3]`.
fn type_text(dtype: DType, shape: &[usize]) -> String {
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
fn eval_dims(dims: &[Dim], b: &Bindings) -> std::result::Result<Vec<usize>, String> {
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

impl Prepared {
    fn new(g: &Graph) -> Result<Prepared> {
        let order = g.topo().ok_or_else(|| exec_err(&g.name, "the graph has a cycle"))?;
        if let Err(problems) = ecarc_compiler::ir::verify::verify(g) {
            return Err(exec_err(&g.name, format!("the graph does not verify: {}", problems.join("; "))));
        }
        let bound = g.g.node_bound();
        let mut operands = vec![Vec::new(); bound];
        for &n in &order {
            operands[n.index()] = g.operands(n);
        }
        // Needed: reachable backwards from the outputs.
        let mut needed = vec![false; bound];
        let mut stack: Vec<NodeIndex> = g.outputs.iter().map(|(_, n)| *n).collect();
        while let Some(n) = stack.pop() {
            if !needed[n.index()] {
                needed[n.index()] = true;
                stack.extend(operands[n.index()].iter().copied());
            }
        }
        let mut uses = vec![0usize; bound];
        for &n in &order {
            if needed[n.index()] {
                for o in &operands[n.index()] {
                    uses[o.index()] += 1;
                }
            }
        }
        for (_, n) in &g.outputs {
            uses[n.index()] += 1;
        }
        Ok(Prepared { graph: g.clone(), order, operands, needed, uses })
    }

    /// The tensor a source node stands for, checked against its declared type.
    fn source(&self, n: NodeIndex, bindings: &Bindings, args: &Args) -> Result<Arc<HostTensor>> {
        let program = &self.graph.name;
        let node = &self.graph.g[n];
        let (what, name, buf) = match &node.op {
            Op::Const { value } => return Ok(Arc::new(HostTensor::scalar(value.get() as f32))),
            Op::Input { name } => ("input", name, args.inputs.get(name.as_str()).copied()),
            Op::State { name } => ("state", name, args.states.get(name.as_str()).copied()),
            Op::Param { key } => ("param", key, args.params.and_then(|p| p.get(key))),
            other => return Err(exec_err(program, format!("{} is not a source", other.name()))),
        };
        let buf =
            buf.ok_or_else(|| RuntimeError::MissingSource { program: program.clone(), what, name: name.clone() })?;
        let shape = eval_dims(&node.ty.shape, bindings)
            .map_err(|e| exec_err(program, format!("{what} `{name}` is declared {}: {e}", symbolic_text(&node.ty))))?;
        if buf.dtype != node.ty.dtype || buf.shape != shape {
            let declared = symbolic_text(&node.ty);
            let expected = type_text(node.ty.dtype, &shape);
            let expected =
                if declared == expected { expected } else { format!("{expected} (declared {declared}, {bindings:?})") };
            return Err(RuntimeError::Mismatch {
                program: program.clone(),
                what,
                name: name.clone(),
                expected,
                actual: type_text(buf.dtype, &buf.shape),
            });
        }
        let t = tensor_of(buf)?;
        if t.dtype() != buf.dtype || t.shape != buf.shape {
            return Err(exec_err(
                program,
                format!(
                    "{what} `{name}`: the buffer says {} but holds {}",
                    type_text(buf.dtype, &buf.shape),
                    type_text(t.dtype(), &t.shape)
                ),
            ));
        }
        Ok(t.clone())
    }

    /// Run the program; also returns the largest number of computed (non-source)
    /// values alive at once, so tests can check that intermediates are freed.
    fn run_counting(&self, bindings: &Bindings, args: &Args) -> Result<(Vec<(String, Buffer)>, usize)> {
        let g = &self.graph;
        let (mut live, mut peak) = (0usize, 0usize);
        let program = &g.name;
        let mut values: Vec<Option<Arc<HostTensor>>> = vec![None; g.g.node_bound()];
        let mut uses = self.uses.clone();
        // Sources first: every source the program declares must be supplied,
        // whether or not the outputs need it.
        for &n in &self.order {
            if g.g[n].op.is_source() {
                let t = self.source(n, bindings, args)?;
                if self.needed[n.index()] {
                    values[n.index()] = Some(t);
                }
            }
        }
        for &n in &self.order {
            let node = &g.g[n];
            if node.op.is_source() || !self.needed[n.index()] {
                continue;
            }
            let ops = &self.operands[n.index()];
            let mut ins: Vec<Arc<HostTensor>> = Vec::with_capacity(ops.len());
            for o in ops {
                let v = values[o.index()]
                    .clone()
                    .ok_or_else(|| exec_err(program, format!("node {} has no value when needed", o.index())))?;
                ins.push(v);
            }
            let who = || format!("node {} ({})", n.index(), node.op.name());
            let refs: Vec<&HostTensor> = ins.iter().map(|a| a.as_ref()).collect();
            let out = eval(&node.op, &refs, bindings).map_err(|e| exec_err(program, format!("{}: {e}", who())))?;
            drop(refs);
            drop(ins);
            let shape =
                eval_dims(&node.ty.shape, bindings).map_err(|e| exec_err(program, format!("{}: {e}", who())))?;
            if out.dtype() != node.ty.dtype || out.shape != shape {
                return Err(exec_err(
                    program,
                    format!(
                        "{}: computed {}, but the node is declared {} = {} under {bindings:?}",
                        who(),
                        type_text(out.dtype(), &out.shape),
                        symbolic_text(&node.ty),
                        type_text(node.ty.dtype, &shape)
                    ),
                ));
            }
            values[n.index()] = Some(Arc::new(out));
            live += 1;
            peak = peak.max(live);
            for o in ops {
                uses[o.index()] -= 1;
                if uses[o.index()] == 0 {
                    values[o.index()] = None;
                    if !g.g[*o].op.is_source() {
                        live -= 1;
                    }
                }
            }
        }
        let mut outs = Vec::with_capacity(g.outputs.len());
        for (name, n) in &g.outputs {
            let t = values[n.index()]
                .clone()
                .ok_or_else(|| exec_err(program, format!("output `{name}` was not computed")))?;
            outs.push((name.clone(), buffer_of(t)));
        }
        Ok((outs, peak))
    }
}

fn buffer_of(t: Arc<HostTensor>) -> Buffer {
    Buffer { dtype: t.dtype(), shape: t.shape.clone(), storage: Arc::new(RefStorage(t)) }
}

fn tensor_of(b: &Buffer) -> Result<&Arc<HostTensor>> {
    b.storage.as_any().downcast_ref::<RefStorage>().map(|s| &s.0).ok_or_else(|| {
        RuntimeError::Invalid(format!(
            "a {} buffer from another backend was given to the reference backend; download and upload it",
            type_text(b.dtype, &b.shape)
        ))
    })
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
        Ok(buffer_of(Arc::new(t.clone())))
    }
    fn download(&self, b: &Buffer) -> Result<HostTensor> {
        Ok(tensor_of(b)?.as_ref().clone())
    }
    fn non_finite(&self, b: &Buffer) -> Result<Option<String>> {
        Ok(tensor_of(b)?.non_finite())
    }
    fn prepare(&self, g: &Graph) -> Result<Executable> {
        let p = Prepared::new(g)?;
        Ok(Executable { name: g.name.clone(), inner: Arc::new(p) })
    }
    fn run(&self, exe: &Executable, bindings: &Bindings, args: &Args) -> Result<Vec<(String, Buffer)>> {
        let p = exe
            .inner
            .downcast_ref::<Prepared>()
            .ok_or_else(|| RuntimeError::Invalid(format!("program `{}` was prepared by another backend", exe.name)))?;
        Ok(p.run_counting(bindings, args)?.0)
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

/// Evaluate one non-source op on its operand values.
fn eval(op: &Op, x: &[&HostTensor], b: &Bindings) -> KResult<HostTensor> {
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
        SampleTokens { temperature, top_k, top_p } => {
            arity(x, 2, 2)?;
            generate::sample_tokens(x[0], x[1], temperature.get(), *top_k as usize, top_p.get())
        }
        NearestCode => {
            arity(x, 2, 2)?;
            generate::nearest_code(x[0], x[1])
        }
        FlowMapTokens { temperature, top_k, top_p, steps } => {
            arity(x, 3, 3)?;
            flow_map::flow_map_tokens(
                x[0],
                x[1],
                x[2],
                temperature.get(),
                *top_k as usize,
                top_p.get(),
                *steps as usize,
            )
        }
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
