//! `fused` nodes on the CPU backend. A kernel is split at its anchor
//! (`ecarc_compiler::kernel::split`): each prologue part and the epilogue
//! part run on an [`ElementwiseEngine`], the anchor on the native kernels
//! (`gemm.rs`, `attention.rs`). A kernel that writes a slice of a state
//! computes the slice this way and the program writes it in place.
//!
//! The engine is a trait object so that a code-generating engine can replace
//! the one implementation there is today, [`Interpreter`], which runs the
//! kernel IR's host interpreter (and is counted as an interpreter fallback).

use super::{Impl, KernelStats};
use crate::reference::view::View;
use crate::reference::KResult;
use crate::tensor::{Data, HostTensor};
use ecarc_compiler::ir::{Bindings, Dim, Op};
use ecarc_compiler::kernel::interpret::{self, Anchors, Value};
use ecarc_compiler::kernel::split::{self, Operand, Part, Source};
use ecarc_compiler::kernel::Kernel;
use std::sync::Arc;

/// Compiles anchor-free kernels (element-wise maps, row reductions, index
/// maps) for the CPU.
pub trait ElementwiseEngine: Send + Sync {
    /// What runs the kernels it prepares.
    fn implementation(&self) -> Impl;
    /// Prepare `k` (anchor-free) once; bindings come with each run.
    fn prepare(&self, k: &Kernel) -> Result<Box<dyn CompiledKernel>, String>;
}

/// A prepared anchor-free kernel.
pub trait CompiledKernel: Send + Sync {
    /// The kernel's result (dense, row-major) on its inputs (any views).
    fn run(&self, inputs: &[&View], b: &Bindings) -> Result<HostTensor, String>;
    /// What ran it last (an engine may fall back for a kernel it refuses).
    fn implementation(&self) -> Impl;
}

/// The kernel IR's interpreter as an engine: correct for every kernel, but
/// an interpreter. By default node by node (`kernel::dense`: whole arrays
/// per node); [`Interpreter::per_element`] is the per-element interpreter the
/// reference uses (`kernel::interpret`), the same bits, much slower.
#[derive(Clone, Copy, Debug, Default)]
pub struct Interpreter {
    per_element: bool,
}

impl Interpreter {
    pub fn per_element() -> Interpreter {
        Interpreter { per_element: true }
    }
}

struct Interpreted(Kernel, bool);

struct NoAnchor;

impl Anchors for NoAnchor {
    fn run(&self, op: &Op, _: &[&Value], _: &Bindings) -> Result<Value, String> {
        Err(format!("an element-wise part has an anchor `{}`", op.name()))
    }
}

fn value(v: &View) -> Value {
    let t = if v.is_whole() && v.base.shape == v.shape { None } else { Some(v.to_tensor()) };
    let data = match t.as_ref().map_or(&v.base.data, |t| &t.data) {
        Data::F32(x) => interpret::Data::F32(x.clone()),
        Data::I64(x) => interpret::Data::I64(x.clone()),
    };
    Value { shape: v.shape.clone(), data }
}

impl ElementwiseEngine for Interpreter {
    fn implementation(&self) -> Impl {
        Impl::Interpreter
    }
    fn prepare(&self, k: &Kernel) -> Result<Box<dyn CompiledKernel>, String> {
        if k.anchor().is_some() {
            return Err("the interpreter engine takes anchor-free kernels".into());
        }
        Ok(Box::new(Interpreted(k.clone(), self.per_element)))
    }
}

impl CompiledKernel for Interpreted {
    fn implementation(&self) -> Impl {
        Impl::Interpreter
    }
    fn run(&self, inputs: &[&View], b: &Bindings) -> Result<HostTensor, String> {
        let values: Vec<Value> = inputs.iter().map(|v| value(v)).collect();
        let refs: Vec<&Value> = values.iter().collect();
        let out = if self.1 {
            interpret::run(&self.0, &refs, b, &NoAnchor)?
        } else {
            ecarc_compiler::kernel::dense::run(&self.0, &refs, b, &NoAnchor)?
        };
        match out.data {
            interpret::Data::F32(x) => Ok(HostTensor::f32(out.shape, x)),
            interpret::Data::I64(_) => Err("a kernel computed integers".into()),
        }
    }
}

/// A prepared part: its compiled kernel and where its inputs come from.
struct PreparedPart {
    kernel: Box<dyn CompiledKernel>,
    sources: Vec<Source>,
}

enum PreparedOperand {
    Input(u32),
    Computed(PreparedPart),
}

enum Body {
    /// No anchor: one part.
    Elementwise(PreparedPart),
    Anchored {
        anchor: Op,
        operands: Vec<PreparedOperand>,
        epilogue: Option<PreparedPart>,
    },
}

/// A `fused` node prepared for the CPU.
pub(crate) struct PreparedFused {
    body: Body,
    /// For a kernel that writes a slice of its input 0: the axis and first row.
    pub store: Option<(u8, Dim)>,
}

fn prepare_part(p: Part, engine: &dyn ElementwiseEngine) -> Result<PreparedPart, String> {
    Ok(PreparedPart { kernel: engine.prepare(&p.kernel)?, sources: p.sources })
}

impl PreparedFused {
    pub fn new(k: &Kernel, engine: &dyn ElementwiseEngine) -> Result<PreparedFused, String> {
        let (k, store) = match split::stored(k) {
            Some((part, axis, start)) => (part, Some((axis, start))),
            None => (k.clone(), None),
        };
        let body = match split::split_at_anchor(&k) {
            None => Body::Elementwise(prepare_part(split::whole(&k), engine)?),
            Some(s) => Body::Anchored {
                anchor: s.anchor,
                operands: s
                    .operands
                    .into_iter()
                    .map(|o| match o {
                        Operand::Input(i) => Ok(PreparedOperand::Input(i)),
                        Operand::Computed(p) => Ok(PreparedOperand::Computed(prepare_part(p, engine)?)),
                    })
                    .collect::<Result<_, String>>()?,
                epilogue: s.epilogue.map(|p| prepare_part(p, engine)).transpose()?,
            },
        };
        Ok(PreparedFused { body, store })
    }

    /// The kernel's value (for a store kernel, the slice's) on the fused
    /// node's operands.
    pub fn run(&self, inputs: &[View], b: &Bindings, stats: &KernelStats) -> KResult<HostTensor> {
        let part = |p: &PreparedPart, anchor: Option<&View>| -> KResult<HostTensor> {
            let mut ins = Vec::with_capacity(p.sources.len());
            for s in &p.sources {
                ins.push(match s {
                    Source::Input(i) => inputs.get(*i as usize).ok_or_else(|| format!("no kernel input {i}"))?,
                    Source::Anchor => anchor.ok_or("the anchor has not run")?,
                });
            }
            let out = p.kernel.run(&ins, b);
            stats.count("fused.elementwise", p.kernel.implementation());
            out
        };
        match &self.body {
            Body::Elementwise(p) => part(p, None),
            Body::Anchored { anchor, operands, epilogue } => {
                let mut vals = Vec::with_capacity(operands.len());
                for o in operands {
                    vals.push(match o {
                        PreparedOperand::Input(i) => {
                            inputs.get(*i as usize).cloned().ok_or_else(|| format!("no kernel input {i}"))?
                        }
                        PreparedOperand::Computed(p) => View::whole(Arc::new(part(p, None)?)),
                    });
                }
                let y = super::program::anchor(anchor, &vals, b, stats, true)?;
                match epilogue {
                    None => Ok(y),
                    Some(p) => part(p, Some(&View::whole(Arc::new(y)))),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::testutil::seq;
    use ecarc_compiler::ir::op::{Binary, Unary, F};
    use ecarc_compiler::ir::TensorType;
    use ecarc_compiler::kernel::{Expr, KNode, Layout};

    fn t(shape: &[u64]) -> TensorType {
        TensorType::f32(shape.iter().map(|&d| Dim::c(d)).collect())
    }
    fn n(shape: &[u64], expr: Expr) -> KNode {
        KNode { ty: t(shape), expr }
    }

    /// The reference's linear as the interpreter's anchor library.
    struct RefLinear;
    impl Anchors for RefLinear {
        fn run(&self, _: &Op, x: &[&Value], _: &Bindings) -> Result<Value, String> {
            let h = |v: &Value| match &v.data {
                interpret::Data::F32(d) => HostTensor::f32(v.shape.clone(), d.clone()),
                interpret::Data::I64(d) => HostTensor::i64(v.shape.clone(), d.clone()),
            };
            let y = crate::reference::linalg::linear(&h(x[0]), &h(x[1]), None)?;
            Ok(Value { shape: y.shape.clone(), data: interpret::Data::F32(y.as_f32().unwrap().to_vec()) })
        }
    }

    #[test]
    fn a_split_linear_kernel_computes_what_the_interpreter_does_on_strided_inputs() {
        // gelu(linear(2x - 1, w) + b) + y
        let k = Kernel {
            inputs: vec![t(&[3, 4]), t(&[5, 4]), t(&[5]), t(&[3, 5])],
            nodes: vec![
                n(&[3, 4], Expr::Load(0)),
                n(&[3, 4], Expr::Affine { x: 0, scale: F::new(2.0), shift: F::new(-1.0) }),
                n(&[5, 4], Expr::Load(1)),
                n(&[3, 5], Expr::Anchor { op: Op::Linear, operands: vec![1, 2] }),
                n(&[5], Expr::Load(2)),
                n(&[3, 5], Expr::Map { x: 4, map: Layout::Broadcast }),
                n(&[3, 5], Expr::Binary(Binary::Add, 3, 5)),
                n(&[3, 5], Expr::Unary(Unary::Gelu, 6)),
                n(&[3, 5], Expr::Load(3)),
                n(&[3, 5], Expr::Binary(Binary::Add, 7, 8)),
            ],
        };
        k.verify(&k.inputs.iter().collect::<Vec<_>>()).unwrap();
        let dense = |shape: &[usize], seed| HostTensor::f32(shape.to_vec(), seq(shape.iter().product(), seed));
        // x as the transpose of a [4, 3] tensor: a strided view.
        let xt = View::whole(Arc::new(dense(&[4, 3], 1))).permute(&[1, 0]);
        let (w, b, y) = (dense(&[5, 4], 2), dense(&[5], 3), dense(&[3, 5], 4));
        let views = vec![
            xt.clone(),
            View::whole(Arc::new(w.clone())),
            View::whole(Arc::new(b.clone())),
            View::whole(Arc::new(y.clone())),
        ];
        let stats = KernelStats::default();
        let p = PreparedFused::new(&k, &Interpreter::default()).unwrap();
        let got = p.run(&views, &Bindings::default(), &stats).unwrap();
        let vals: Vec<Value> = views.iter().map(value).collect();
        let want = interpret::run(&k, &vals.iter().collect::<Vec<_>>(), &Bindings::default(), &RefLinear).unwrap();
        let interpret::Data::F32(want) = want.data else { unreachable!() };
        for (a, e) in got.as_f32().unwrap().iter().zip(&want) {
            assert!((a - e).abs() <= 1e-5 + 1e-5 * e.abs(), "{a} vs {e}");
        }
        let counts = stats.snapshot();
        assert_eq!(counts.get(&("fused.linear", Impl::Native)), Some(&1));
        assert_eq!(counts.get(&("fused.elementwise", Impl::Interpreter)), Some(&2));
        // Too few operands is an error, not a panic.
        assert!(p.run(&views[..2], &Bindings::default(), &stats).is_err());
    }
}
