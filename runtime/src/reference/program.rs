//! A program prepared for the reference backend, and one run of it. Every
//! source is fetched and checked against its declared type under the bindings
//! (missing -> `MissingSource`, wrong dtype or shape -> `Mismatch`); then the
//! nodes the outputs need run in the liveness analysis' order, each result
//! checked against the node's declared type, and every value is dropped after
//! its last use. Layout ops make views; a declared state update writes into
//! the state's memory when the caller handed over its last reference.

use super::view::View;
use super::{eval, eval_dims, exec_err, symbolic_text, type_text, Counters, RefStorage};
use crate::backend::{Args, Buffer, Params};
use crate::error::{Result, RuntimeError};
use crate::tensor::HostTensor;
use ecarc_compiler::ir::liveness::Liveness;
use ecarc_compiler::ir::{Bindings, DType, Graph, Op};
use petgraph::stable_graph::NodeIndex;
use petgraph::visit::NodeIndexable;
use std::collections::HashMap;
use std::sync::Arc;

pub(crate) struct Prepared {
    pub(crate) graph: Graph,
    pub(crate) live: Liveness,
    /// The checkpoint tensors the program reads that were given at prepare.
    params: HashMap<String, View>,
}

/// The reference view of a buffer (its storage must be the reference's).
pub(crate) fn view_of(b: &Buffer) -> Result<View> {
    let t = b.storage.as_any().downcast_ref::<RefStorage>().ok_or_else(|| foreign(b.dtype, &b.shape))?.0.clone();
    checked(b.dtype, View { base: t, offset: b.offset, shape: b.shape.clone(), strides: b.strides.clone() })
}

/// Like [`view_of`], taking the buffer over: when it was the last reference
/// to its storage, the view is the only holder of the memory.
fn view_owned(b: Buffer) -> Result<View> {
    let Buffer { dtype, shape, offset, strides, storage } = b;
    let rs = storage.into_any().downcast::<RefStorage>().map_err(|_| foreign(dtype, &shape))?;
    let base = match Arc::try_unwrap(rs) {
        Ok(RefStorage(t)) => t,
        Err(shared) => shared.0.clone(),
    };
    checked(dtype, View { base, offset, shape, strides })
}

fn foreign(dtype: DType, shape: &[usize]) -> RuntimeError {
    RuntimeError::Invalid(format!(
        "a {} buffer from another backend was given to the reference backend; download and upload it",
        type_text(dtype, shape)
    ))
}

/// The view, if it fits its storage and the buffer's dtype.
fn checked(dtype: DType, v: View) -> Result<View> {
    if v.dtype() != dtype || v.strides.len() != v.shape.len() || v.extent() > v.base.numel() {
        return Err(RuntimeError::Invalid(format!(
            "a {} buffer (offset {}, strides {:?}) does not fit its storage of {}",
            type_text(dtype, &v.shape),
            v.offset,
            v.strides,
            type_text(v.dtype(), &v.base.shape)
        )));
    }
    Ok(v)
}

impl Prepared {
    pub(crate) fn new(g: &Graph, params: &Params) -> Result<Prepared> {
        let live = Liveness::of(g).ok_or_else(|| exec_err(&g.name, "the graph has a cycle"))?;
        if let Err(problems) = ecarc_compiler::ir::verify::verify(g) {
            return Err(exec_err(&g.name, format!("the graph does not verify: {}", problems.join("; "))));
        }
        let mut bound = HashMap::new();
        for n in g.g.node_weights() {
            if let Op::Param { key } = &n.op {
                if let Some(b) = params.get(key) {
                    bound.insert(key.clone(), view_of(b)?);
                }
            }
        }
        Ok(Prepared { graph: g.clone(), live, params: bound })
    }

    /// Check a source's value against its declared type.
    fn check_source(&self, n: NodeIndex, what: &'static str, name: &str, v: &View, b: &Bindings) -> Result<()> {
        let program = &self.graph.name;
        let node = &self.graph.g[n];
        let shape = eval_dims(&node.ty.shape, b)
            .map_err(|e| exec_err(program, format!("{what} `{name}` is declared {}: {e}", symbolic_text(&node.ty))))?;
        if v.dtype() != node.ty.dtype || v.shape != shape {
            let declared = symbolic_text(&node.ty);
            let expected = type_text(node.ty.dtype, &shape);
            let expected =
                if declared == expected { expected } else { format!("{expected} (declared {declared}, {b:?})") };
            return Err(RuntimeError::Mismatch {
                program: program.clone(),
                what,
                name: name.into(),
                expected,
                actual: type_text(v.dtype(), &v.shape),
            });
        }
        Ok(())
    }

    /// Every source's value, by node index.
    pub(crate) fn sources(&self, b: &Bindings, mut args: Args) -> Result<Vec<Option<View>>> {
        let g = &self.graph;
        let program = &g.name;
        let mut values: Vec<Option<View>> = vec![None; g.g.node_bound()];
        // Every source the program declares must be supplied, whether or not
        // the outputs need it.
        for &n in &self.live.order {
            let missing =
                |what, name: &str| RuntimeError::MissingSource { program: program.clone(), what, name: name.into() };
            let (what, name, v) = match &g.g[n].op {
                Op::Const { value } => ("const", "", View::whole(Arc::new(HostTensor::scalar(value.get() as f32)))),
                Op::Input { name } => {
                    let buf = args.inputs.get(name.as_str()).ok_or_else(|| missing("input", name))?;
                    ("input", name.as_str(), view_of(buf)?)
                }
                Op::State { name } => {
                    let buf = args.states.remove(name.as_str()).ok_or_else(|| missing("state", name))?;
                    ("state", name.as_str(), view_owned(buf)?)
                }
                Op::Param { key } => {
                    let v = self.params.get(key).cloned().ok_or_else(|| missing("param", key))?;
                    ("param", key.as_str(), v)
                }
                _ => continue,
            };
            if what != "const" {
                self.check_source(n, what, name, &v, b)?;
            }
            if self.live.needed[n.index()] {
                values[n.index()] = Some(v);
            }
        }
        Ok(values)
    }

    /// Run the program; also returns the largest number of computed (non-source)
    /// values alive at once, so tests can check that intermediates are freed.
    pub(super) fn run_counting(
        &self,
        b: &Bindings,
        args: Args,
        counters: &Counters,
    ) -> Result<(Vec<(String, Buffer)>, usize)> {
        let g = &self.graph;
        let program = &g.name;
        let (mut live, mut peak) = (0usize, 0usize);
        let mut values = self.sources(b, args)?;
        let mut uses = self.live.uses.clone();
        for &n in &self.live.order {
            let node = &g.g[n];
            if node.op.is_source() || !self.live.needed[n.index()] {
                continue;
            }
            let ops = &self.live.operands[n.index()];
            let who = || format!("node {} ({})", n.index(), node.op.name());
            let out = self
                .node(n, ops, &mut values, &uses, b, counters)
                .map_err(|e| exec_err(program, format!("{}: {e}", who())))?;
            let shape = eval_dims(&node.ty.shape, b).map_err(|e| exec_err(program, format!("{}: {e}", who())))?;
            if out.dtype() != node.ty.dtype || out.shape != shape {
                return Err(exec_err(
                    program,
                    format!(
                        "{}: computed {}, but the node is declared {} = {} under {b:?}",
                        who(),
                        type_text(out.dtype(), &out.shape),
                        symbolic_text(&node.ty),
                        type_text(node.ty.dtype, &shape)
                    ),
                ));
            }
            values[n.index()] = Some(out);
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
            let v = values[n.index()]
                .clone()
                .ok_or_else(|| exec_err(program, format!("output `{name}` was not computed")))?;
            outs.push((name.clone(), super::buffer_of(v)));
        }
        Ok((outs, peak))
    }

    /// One node's value from its operands' values.
    pub(crate) fn node(
        &self,
        n: NodeIndex,
        ops: &[NodeIndex],
        values: &mut [Option<View>],
        uses: &[usize],
        b: &Bindings,
        counters: &Counters,
    ) -> std::result::Result<View, String> {
        let get = |values: &[Option<View>], o: &NodeIndex| {
            values[o.index()].clone().ok_or_else(|| format!("operand {} has no value", o.index()))
        };
        let op = &self.graph.g[n].op;
        match op {
            Op::Reshape { shape } => {
                let x = get(values, &ops[0])?;
                let shape = eval_dims(shape, b)?;
                if x.numel() != crate::tensor::numel(&shape) {
                    return Err(format!("cannot reshape {:?} to {shape:?}", x.shape));
                }
                Ok(match x.reshape(&shape) {
                    Some(v) => v,
                    None => View::whole(Arc::new(counters.copy(&x))).reshape(&shape).expect("a dense view reshapes"),
                })
            }
            Op::Permute { perm } => {
                let x = get(values, &ops[0])?;
                let perm: Vec<usize> = perm.iter().map(|&p| p as usize).collect();
                let mut seen = perm.clone();
                seen.sort_unstable();
                if seen != (0..x.shape.len()).collect::<Vec<_>>() {
                    return Err(format!("{perm:?} is not a permutation of {} axes", x.shape.len()));
                }
                Ok(x.permute(&perm))
            }
            Op::Slice { axis, start, len } => {
                let x = get(values, &ops[0])?;
                let (a, start, len) = (
                    *axis as usize,
                    super::index(start.eval(b), "slice start")?,
                    super::index(len.eval(b), "slice length")?,
                );
                let n = *x.shape.get(a).ok_or_else(|| format!("axis {a} of a rank-{} tensor", x.shape.len()))?;
                if start.checked_add(len).is_none_or(|end| end > n) {
                    return Err(format!("slice {start}..{start}+{len} of an axis of {n}"));
                }
                Ok(x.slice(a, start, len))
            }
            Op::WriteSlice { axis, start } => {
                let start = super::index(start.eval(b), "write_slice start")?;
                let src = counters.dense_owned(get(values, &ops[1])?);
                write_slice(values, ops, uses, counters, &src, *axis as usize, start)
            }
            // A kernel that computes a state's slice writes it as `write_slice` does.
            Op::Fused(k) if k.store().is_some() => {
                let mut rest = Vec::with_capacity(ops.len() - 1);
                for o in &ops[1..] {
                    rest.push(counters.dense_owned(get(values, o)?).as_ref().clone());
                }
                let (src, axis, start) = super::fused::run_store(k, rest, b)?;
                write_slice(values, ops, uses, counters, &src, axis as usize, start)
            }
            Op::Attention { mask, scale, keys } => {
                let keys = super::index(keys.eval(b), "attention keys")?;
                let (q, k, v) = (get(values, &ops[0])?, get(values, &ops[1])?, get(values, &ops[2])?);
                let levels = match ops.get(3) {
                    Some(l) => Some(counters.dense_owned(get(values, l)?)),
                    None => None,
                };
                let out = super::attention::attention(&q, &k, &v, levels.as_deref(), *mask, super::attr(*scale), keys)?;
                Ok(View::whole(Arc::new(out)))
            }
            _ => {
                // An operand read for the last time is taken, so that a dense
                // kernel can have its memory without a copy.
                let mut ins = Vec::with_capacity(ops.len());
                for (i, o) in ops.iter().enumerate() {
                    let last = uses[o.index()] == 1 && !ops[..i].contains(o) && !ops[i + 1..].contains(o);
                    let v = if last { values[o.index()].take() } else { values[o.index()].clone() };
                    ins.push(counters.dense_owned(v.ok_or_else(|| format!("operand {} has no value", o.index()))?));
                }
                let refs: Vec<&HostTensor> = ins.iter().map(|a| a.as_ref()).collect();
                Ok(View::whole(Arc::new(eval(op, &refs, b)?)))
            }
        }
    }
}

/// Write `src` into rows `start..` of `axis` of the destination (operand 0):
/// in place when this is the destination's last use and its memory is held
/// by nobody else; otherwise on a copy.
pub(crate) fn write_slice(
    values: &mut [Option<View>],
    ops: &[NodeIndex],
    uses: &[usize],
    counters: &Counters,
    src: &HostTensor,
    axis: usize,
    start: usize,
) -> std::result::Result<View, String> {
    let mut dst = None;
    if uses[ops[0].index()] == 1 && !ops[1..].contains(&ops[0]) {
        if let Some(v) = values[ops[0].index()].take() {
            if v.is_whole() {
                dst = Some(v.base);
            } else {
                values[ops[0].index()] = Some(v);
            }
        }
    }
    let mut base = match dst {
        Some(base) if Arc::strong_count(&base) == 1 && Arc::weak_count(&base) == 0 => {
            counters.in_place();
            base
        }
        other => {
            let v = match other {
                Some(base) => View::whole(base),
                None => {
                    values[ops[0].index()].clone().ok_or_else(|| format!("operand {} has no value", ops[0].index()))?
                }
            };
            counters.copied_update();
            Arc::new(counters.copy(&v))
        }
    };
    let t = Arc::get_mut(&mut base).expect("the destination is held once");
    super::layout::write_slice(t, src, axis, start)?;
    counters.written(src.bytes());
    Ok(View::whole(base))
}
