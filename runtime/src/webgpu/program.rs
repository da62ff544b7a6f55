//! A program prepared for the wgpu backend, and one run of it. Preparing
//! checks and orders the graph (the liveness analysis every backend shares),
//! binds the weights and constants as device buffers and prepares every
//! fused kernel (`fused.rs`). A run walks the nodes in order and records
//! their dispatches; layout ops only make views (a reshape of a non-dense
//! view copies), a declared state update writes into the state's storage when
//! the caller handed it over, and everything is submitted once at the end.
//! An op with no WGSL kernel runs on the host ([`Stats`] counts it): the
//! dispatches so far are submitted, its operands read back, and its result
//! uploaded.

use super::device::{Gpu, BACKEND};
use super::finite::FiniteChecks;
use super::fused::PreparedFused;
use super::kernels::{self, copy, Ctx};
use super::record::{Pipelines, Recorder, Stats};
use super::storage::storage_of;
use crate::backend::{row_major, Args, Buffer, Params};
use crate::error::{Result, RuntimeError};
use crate::reference::{eval_dims, index, type_text};
use crate::tensor::HostTensor;
use ecarc_compiler::ir::liveness::Liveness;
use ecarc_compiler::ir::{Bindings, Graph, Op};
use petgraph::visit::NodeIndexable;
use std::collections::HashMap;
use std::sync::Arc;

pub(crate) struct Prepared {
    graph: Graph,
    live: Liveness,
    /// Device buffers of the checkpoint tensors and constants, by node index.
    bound: HashMap<usize, Buffer>,
    /// By node index: the prepared kernel of each `fused` node.
    fused: Vec<Option<PreparedFused>>,
}

fn exec_err(program: &str, why: impl Into<String>) -> RuntimeError {
    RuntimeError::Execution { backend: BACKEND.into(), program: program.into(), why: why.into() }
}

impl Prepared {
    pub(crate) fn new(g: &Graph, params: &Params, gpu: &Gpu) -> Result<Prepared> {
        let live = Liveness::of(g).ok_or_else(|| exec_err(&g.name, "the graph has a cycle"))?;
        if let Err(problems) = ecarc_compiler::ir::verify::verify(g) {
            return Err(exec_err(&g.name, format!("the graph does not verify: {}", problems.join("; "))));
        }
        let mut bound = HashMap::new();
        let mut fused = Vec::new();
        fused.resize_with(g.g.node_bound(), || None);
        for n in g.g.node_indices() {
            match &g.g[n].op {
                Op::Param { key } => {
                    if let Some(b) = params.get(key) {
                        storage_of(b)?;
                        bound.insert(n.index(), b.clone());
                    }
                }
                Op::Const { value } => {
                    bound.insert(n.index(), gpu.upload(&HostTensor::scalar(value.get() as f32))?);
                }
                Op::Fused(k) => {
                    let p = PreparedFused::new(k)
                        .map_err(|e| exec_err(&g.name, format!("node {} (fused): {e}", n.index())))?;
                    fused[n.index()] = Some(p);
                }
                _ => {}
            }
        }
        Ok(Prepared { graph: g.clone(), live, bound, fused })
    }

    /// Every source's buffer, checked against its declared type.
    fn sources(&self, b: &Bindings, mut args: Args) -> Result<Vec<Option<Buffer>>> {
        let g = &self.graph;
        let program = &g.name;
        let mut values: Vec<Option<Buffer>> = vec![None; g.g.node_bound()];
        for &n in &self.live.order {
            let missing =
                |what, name: &str| RuntimeError::MissingSource { program: program.clone(), what, name: name.into() };
            let (what, name, v) = match &g.g[n].op {
                Op::Const { .. } => ("const", "", self.bound[&n.index()].clone()),
                Op::Input { name } => {
                    let buf = args.inputs.get(name.as_str()).ok_or_else(|| missing("input", name))?;
                    ("input", name.as_str(), (*buf).clone())
                }
                Op::State { name } => {
                    let buf = args.states.remove(name.as_str()).ok_or_else(|| missing("state", name))?;
                    ("state", name.as_str(), buf)
                }
                Op::Param { key } => {
                    let v = self.bound.get(&n.index()).cloned().ok_or_else(|| missing("param", key))?;
                    ("param", key.as_str(), v)
                }
                _ => continue,
            };
            storage_of(&v)?;
            if what != "const" {
                let node = &g.g[n];
                let shape =
                    eval_dims(&node.ty.shape, b).map_err(|e| exec_err(program, format!("{what} `{name}`: {e}")))?;
                if v.dtype != node.ty.dtype || v.shape != shape {
                    return Err(RuntimeError::Mismatch {
                        program: program.clone(),
                        what,
                        name: name.into(),
                        expected: type_text(node.ty.dtype, &shape),
                        actual: type_text(v.dtype, &v.shape),
                    });
                }
            }
            if self.live.needed[n.index()] {
                values[n.index()] = Some(v);
            }
        }
        Ok(values)
    }

    pub(crate) fn run(
        &self,
        gpu: &Gpu,
        pipelines: &Pipelines,
        stats: &Stats,
        b: &Bindings,
        args: Args,
        checks: &FiniteChecks,
    ) -> Result<Vec<(String, Buffer)>> {
        let g = &self.graph;
        let program = &g.name;
        let mut values = self.sources(b, args)?;
        let mut uses = self.live.uses.clone();
        let mut rec = Recorder::new(gpu, stats);
        // The previous run's output checks go first, in this submission.
        checks.record(&mut Ctx { gpu, pipelines, stats, rec: &mut rec })?;
        for &n in &self.live.order {
            let node = &g.g[n];
            if node.op.is_source() || !self.live.needed[n.index()] {
                continue;
            }
            let ops = &self.live.operands[n.index()];
            let who = || format!("node {} ({})", n.index(), node.op.name());
            let fail = |e: RuntimeError| match e {
                RuntimeError::Execution { why, .. } => exec_err(program, format!("{}: {why}", who())),
                RuntimeError::Invalid(why) => exec_err(program, format!("{}: {why}", who())),
                e => e,
            };
            let shape = eval_dims(&node.ty.shape, b).map_err(|e| exec_err(program, format!("{}: {e}", who())))?;
            let get = |values: &[Option<Buffer>], i: usize| {
                values[ops[i].index()]
                    .clone()
                    .ok_or_else(|| exec_err(program, format!("{}: operand {} has no value", who(), ops[i].index())))
            };
            let out: Buffer = match &node.op {
                Op::Reshape { .. } => {
                    let x = get(&values, 0)?;
                    let x = if x.is_row_major() {
                        x
                    } else {
                        copy::dense(&mut Ctx { gpu, pipelines, stats, rec: &mut rec }, &x).map_err(fail)?
                    };
                    kernels::view(&x, x.offset, shape.clone(), row_major(&shape))
                }
                Op::Permute { perm } => {
                    let x = get(&values, 0)?;
                    let strides = perm.iter().map(|&p| x.strides[p as usize]).collect();
                    kernels::view(&x, x.offset, shape.clone(), strides)
                }
                Op::Slice { axis, start, .. } => {
                    let x = get(&values, 0)?;
                    let start = index(start.eval(b), "slice start").map_err(|e| exec_err(program, e))?;
                    let a = *axis as usize;
                    kernels::view(&x, x.offset + start * x.strides[a], shape.clone(), x.strides.clone())
                }
                Op::Concat { axis } => {
                    let a = *axis as usize;
                    let out = gpu.alloc(node.ty.dtype, &shape).map_err(fail)?;
                    let mut at = 0;
                    for i in 0..ops.len() {
                        let part = get(&values, i)?;
                        let dst = kernels::view(&out, at * out.strides[a], part.shape.clone(), out.strides.clone());
                        at += part.shape[a];
                        copy::copy_into(&mut Ctx { gpu, pipelines, stats, rec: &mut rec }, &part, &dst)
                            .map_err(fail)?;
                    }
                    out
                }
                Op::WriteSlice { axis, start } => {
                    let start = index(start.eval(b), "write_slice start").map_err(|e| exec_err(program, e))?;
                    let src = get(&values, 1)?;
                    let dst =
                        self.take_for_write(&mut values, &uses, ops[0].index(), gpu, pipelines, stats, &mut rec)?;
                    let slice = slice_view(&dst, *axis as usize, start, &src.shape);
                    copy::copy_into(&mut Ctx { gpu, pipelines, stats, rec: &mut rec }, &src, &slice).map_err(fail)?;
                    dst
                }
                Op::Fused(_) => {
                    let f =
                        self.fused[n.index()].as_ref().ok_or_else(|| exec_err(program, "fused kernel not prepared"))?;
                    match &f.store {
                        None => {
                            let x = (0..ops.len()).map(|i| get(&values, i)).collect::<Result<Vec<_>>>()?;
                            let mut cx = Ctx { gpu, pipelines, stats, rec: &mut rec };
                            f.run(&mut cx, &x, b, None).map_err(fail)?
                        }
                        Some((axis, start)) => {
                            let start = index(start.eval(b), "write_slice start").map_err(|e| exec_err(program, e))?;
                            let x = (1..ops.len()).map(|i| get(&values, i)).collect::<Result<Vec<_>>>()?;
                            let dst = self.take_for_write(
                                &mut values,
                                &uses,
                                ops[0].index(),
                                gpu,
                                pipelines,
                                stats,
                                &mut rec,
                            )?;
                            let slice_shape =
                                f.slice_shape(&dst.shape, *axis as usize, b).map_err(|e| exec_err(program, e))?;
                            let slice = slice_view(&dst, *axis as usize, start, &slice_shape);
                            // Input 0 (the state) is not read: pass the slice in its place.
                            let mut all = vec![slice.clone()];
                            all.extend(x);
                            let mut cx = Ctx { gpu, pipelines, stats, rec: &mut rec };
                            f.run(&mut cx, &all, b, Some(&slice)).map_err(fail)?;
                            dst
                        }
                    }
                }
                op => {
                    let x = (0..ops.len()).map(|i| get(&values, i)).collect::<Result<Vec<_>>>()?;
                    let mut cx = Ctx { gpu, pipelines, stats, rec: &mut rec };
                    match kernels::op(&mut cx, op, &x, b, &shape).map_err(fail)? {
                        Some(out) => out,
                        None => {
                            // No WGSL kernel: submit what is recorded, run on the host.
                            std::mem::replace(&mut rec, Recorder::new(gpu, stats)).submit(program)?;
                            let host = x.iter().map(|v| gpu.download(v, stats)).collect::<Result<Vec<_>>>()?;
                            let refs: Vec<&HostTensor> = host.iter().collect();
                            let t = crate::reference::eval(op, &refs, b)
                                .map_err(|e| exec_err(program, format!("{}: {e}", who())))?;
                            stats.host_op(op.name());
                            gpu.upload(&t)?
                        }
                    }
                }
            };
            if out.dtype != node.ty.dtype || out.shape != shape {
                return Err(exec_err(
                    program,
                    format!(
                        "{}: computed {}, but the node is declared {} under {b:?}",
                        who(),
                        type_text(out.dtype, &out.shape),
                        type_text(node.ty.dtype, &shape)
                    ),
                ));
            }
            values[n.index()] = Some(out);
            for o in ops {
                uses[o.index()] -= 1;
                if uses[o.index()] == 0 {
                    values[o.index()] = None;
                }
            }
        }
        rec.submit(program)?;
        let mut outs = Vec::with_capacity(g.outputs.len());
        for (name, n) in &g.outputs {
            let v = values[n.index()]
                .clone()
                .ok_or_else(|| exec_err(program, format!("output `{name}` was not computed")))?;
            outs.push((name.clone(), v));
        }
        Ok(outs)
    }

    /// The buffer a state update writes into: the state's own storage when
    /// this node is its last reader and nothing else holds it (written in
    /// place: the KV cache is not copied per step), else a dense copy.
    #[allow(clippy::too_many_arguments)]
    fn take_for_write<'g>(
        &self,
        values: &mut [Option<Buffer>],
        uses: &[usize],
        at: usize,
        gpu: &'g Gpu,
        pipelines: &'g Pipelines,
        stats: &'g Stats,
        rec: &mut Recorder<'g>,
    ) -> Result<Buffer> {
        let program = &self.graph.name;
        let v = if uses[at] == 1 { values[at].take() } else { values[at].clone() }
            .ok_or_else(|| exec_err(program, "the written state has no value"))?;
        let whole =
            v.offset == 0 && v.is_row_major() && storage_of(&v)?.words == v.shape.iter().product::<usize>() as u64;
        if whole && Arc::strong_count(&v.storage) == 1 {
            return Ok(v);
        }
        copy::dense(&mut Ctx { gpu, pipelines, stats, rec }, &v)
    }
}

/// The view of rows `start..` of `axis` of `dst` with `shape`.
fn slice_view(dst: &Buffer, axis: usize, start: usize, shape: &[usize]) -> Buffer {
    kernels::view(dst, dst.offset + start * dst.strides[axis], shape.to_vec(), dst.strides.clone())
}
