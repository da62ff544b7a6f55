//! A program prepared for the CPU backend, and one run of it. Preparing
//! checks and orders the graph once (the reference's liveness analysis and
//! source checks, shared), binds the weights (dense copies only of weights
//! handed over as non-contiguous views) and prepares every fused kernel
//! (split at its anchor, parts compiled by the engine). A run walks the nodes
//! in order: anchors (Linear, MatMul, Conv2d, Attention) run native, fused
//! nodes as `fused.rs` says, layout ops make views, and the remaining ops run
//! the reference's kernels. Values are freed after their last use, and a
//! declared state update writes into the state's memory when the caller
//! handed it over (the reference's `write_slice`: the KV cache is not copied
//! per step).

use super::fused::{ElementwiseEngine, PreparedFused};
use super::{Impl, KernelStats, BACKEND};
use crate::backend::{Args, Buffer, Params};
use crate::error::{Result, RuntimeError};
use crate::reference::program::{self as refprog, Prepared as Base};
use crate::reference::view::View;
use crate::reference::{attr, eval_dims, index, type_text, Counters, KResult};
use crate::tensor::HostTensor;
use ecarc_compiler::ir::{Bindings, Graph, Op};
use std::sync::Arc;

pub(crate) struct Prepared {
    base: Base,
    /// By node index: the prepared kernel of each `fused` node.
    fused: Vec<Option<PreparedFused>>,
}

fn exec_err(program: &str, why: impl Into<String>) -> RuntimeError {
    RuntimeError::Execution { backend: BACKEND.into(), program: program.into(), why: why.into() }
}

/// Run a native anchor on its operands' values.
pub(crate) fn anchor(op: &Op, x: &[View], b: &Bindings, stats: &KernelStats, fused: bool) -> KResult<HostTensor> {
    let arity = |lo: usize, hi: usize| {
        if x.len() < lo || x.len() > hi {
            Err(format!("`{}` takes {lo}..={hi} operands, got {}", op.name(), x.len()))
        } else {
            Ok(())
        }
    };
    let out = match op {
        Op::Linear => {
            arity(2, 3)?;
            super::gemm::linear(&x[0], &x[1], x.get(2))?
        }
        Op::MatMul => {
            arity(2, 2)?;
            super::gemm::matmul(&x[0], &x[1])?
        }
        Op::Conv2d { stride, pad } => {
            arity(2, 3)?;
            super::gemm::conv2d(&x[0], &x[1], x.get(2), *stride as usize, *pad as usize)?
        }
        Op::Attention { mask, scale, keys } => {
            arity(3, 4)?;
            let keys = index(keys.eval(b), "attention keys")?;
            // Levels an element-wise part computed (a map of the input) are
            // f32 holding small integers: exact either way.
            let levels: Option<Vec<i64>> = match x.get(3).map(|l| l.to_tensor()) {
                Some(l) => Some(match &l.data {
                    crate::tensor::Data::I64(v) => v.clone(),
                    crate::tensor::Data::F32(v) => v.iter().map(|&f| f as i64).collect(),
                }),
                None => None,
            };
            let lv = levels.as_deref();
            super::attention::attention(&x[0], &x[1], &x[2], lv, *mask, attr(*scale), keys)?
        }
        _ => return Err(format!("`{}` is not an anchor", op.name())),
    };
    stats.count(if fused { fused_name(op) } else { op.name() }, Impl::Native);
    Ok(out)
}

fn fused_name(op: &Op) -> &'static str {
    match op {
        Op::Linear => "fused.linear",
        Op::MatMul => "fused.matmul",
        Op::Conv2d { .. } => "fused.conv2d",
        _ => "fused.attention",
    }
}

impl Prepared {
    pub(crate) fn new(g: &Graph, params: &Params, engine: &dyn ElementwiseEngine) -> Result<Prepared> {
        // Weights handed over as strided views are laid out densely once.
        let mut dense = Params::new();
        for (key, buf) in params {
            if buf.is_row_major() && buf.offset == 0 {
                continue;
            }
            let v = refprog::view_of(buf)?;
            dense.insert(key.clone(), crate::reference::buffer_of(View::whole(Arc::new(v.to_tensor()))));
        }
        let bound: Params;
        let params = if dense.is_empty() {
            params
        } else {
            bound = params.iter().map(|(k, b)| (k.clone(), dense.get(k).unwrap_or(b).clone())).collect();
            &bound
        };
        let base = Base::new(g, params).map_err(|e| match e {
            RuntimeError::Execution { program, why, .. } => exec_err(&program, why),
            e => e,
        })?;
        let mut fused = Vec::new();
        fused.resize_with(g.g.node_indices().map(|n| n.index() + 1).max().unwrap_or(0), || None);
        for n in g.g.node_indices() {
            if let Op::Fused(k) = &g.g[n].op {
                let p = PreparedFused::new(k, engine)
                    .map_err(|e| exec_err(&g.name, format!("node {} (fused): {e}", n.index())))?;
                fused[n.index()] = Some(p);
            }
        }
        Ok(Prepared { base, fused })
    }

    pub(crate) fn run(
        &self,
        b: &Bindings,
        args: Args,
        counters: &Counters,
        stats: &KernelStats,
    ) -> Result<Vec<(String, Buffer)>> {
        let g = &self.base.graph;
        let live = &self.base.live;
        let program = &g.name;
        let mut values = self.base.sources(b, args)?;
        let mut uses = live.uses.clone();
        for &n in &live.order {
            let node = &g.g[n];
            if node.op.is_source() || !live.needed[n.index()] {
                continue;
            }
            let ops = &live.operands[n.index()];
            let who = || format!("node {} ({})", n.index(), node.op.name());
            let get = |values: &[Option<View>], i: usize| {
                values[ops[i].index()].clone().ok_or_else(|| format!("operand {} has no value", ops[i].index()))
            };
            let out: KResult<View> = (|| match &node.op {
                Op::Linear | Op::MatMul | Op::Conv2d { .. } | Op::Attention { .. } => {
                    let x = (0..ops.len()).map(|i| get(&values, i)).collect::<KResult<Vec<_>>>()?;
                    Ok(View::whole(Arc::new(anchor(&node.op, &x, b, stats, false)?)))
                }
                Op::Fused(_) => {
                    let f = self.fused[n.index()].as_ref().ok_or("the fused kernel was not prepared")?;
                    match &f.store {
                        None => {
                            let x = (0..ops.len()).map(|i| get(&values, i)).collect::<KResult<Vec<_>>>()?;
                            Ok(View::whole(Arc::new(f.run(&x, b, stats)?)))
                        }
                        Some((axis, start)) => {
                            // Input 0 is the state, never read: the slice's
                            // values are computed from the others, then written.
                            let mut x = vec![get(&values, 0)?];
                            for i in 1..ops.len() {
                                x.push(get(&values, i)?);
                            }
                            let src = f.run(&x, b, stats)?;
                            drop(x);
                            let start = index(start.eval(b), "write_slice start")?;
                            stats.count("write_slice", Impl::Native);
                            refprog::write_slice(&mut values, ops, &uses, counters, &src, *axis as usize, start)
                        }
                    }
                }
                Op::Reshape { .. } | Op::Permute { .. } | Op::Slice { .. } => {
                    self.base.node(n, ops, &mut values, &uses, b, counters)
                }
                Op::WriteSlice { .. } => {
                    stats.count("write_slice", Impl::Native);
                    self.base.node(n, ops, &mut values, &uses, b, counters)
                }
                op => {
                    stats.count(op.name(), Impl::Reference);
                    self.base.node(n, ops, &mut values, &uses, b, counters)
                }
            })();
            let out = out.map_err(|e| exec_err(program, format!("{}: {e}", who())))?;
            let shape = eval_dims(&node.ty.shape, b).map_err(|e| exec_err(program, format!("{}: {e}", who())))?;
            if out.dtype() != node.ty.dtype || out.shape != shape {
                return Err(exec_err(
                    program,
                    format!(
                        "{}: computed {}, but the node is declared {} under {b:?}",
                        who(),
                        type_text(out.dtype(), &out.shape),
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
        let mut outs = Vec::with_capacity(g.outputs.len());
        for (name, n) in &g.outputs {
            let v = values[n.index()]
                .clone()
                .ok_or_else(|| exec_err(program, format!("output `{name}` was not computed")))?;
            outs.push((name.clone(), crate::reference::buffer_of(v)));
        }
        Ok(outs)
    }
}
