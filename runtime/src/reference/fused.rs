//! `fused` nodes on the reference backend: the kernel IR's own interpreter
//! (`ecarc_compiler::kernel::interpret`), with the reference's kernels as the
//! library that runs anchors, so a fused program computes the same bits as
//! the ops it replaced.

use super::view::View;
use crate::tensor::{Data, HostTensor};
use ecarc_compiler::ir::{Bindings, Op};
use ecarc_compiler::kernel::interpret::{self, Anchors, Value};
use ecarc_compiler::kernel::Kernel;
use std::sync::Arc;

fn value(t: HostTensor) -> Value {
    let data = match t.data {
        Data::F32(v) => interpret::Data::F32(v),
        Data::I64(v) => interpret::Data::I64(v),
    };
    Value { shape: t.shape, data }
}

fn tensor(v: &Value) -> HostTensor {
    match &v.data {
        interpret::Data::F32(x) => HostTensor::f32(v.shape.clone(), x.clone()),
        interpret::Data::I64(x) => HostTensor::i64(v.shape.clone(), x.clone()),
    }
}

struct Reference;

impl Anchors for Reference {
    fn run(&self, op: &Op, operands: &[&Value], b: &Bindings) -> Result<Value, String> {
        let ins: Vec<HostTensor> = operands.iter().map(|v| tensor(v)).collect();
        let out = match op {
            Op::Attention { mask, scale, keys } => {
                let keys = super::index(keys.eval(b), "attention keys")?;
                let view = |t: &HostTensor| View::whole(Arc::new(t.clone()));
                super::attention::attention(
                    &view(&ins[0]),
                    &view(&ins[1]),
                    &view(&ins[2]),
                    ins.get(3),
                    *mask,
                    super::attr(*scale),
                    keys,
                )?
            }
            _ => super::eval(op, &ins.iter().collect::<Vec<_>>(), b)?,
        };
        Ok(value(out))
    }
}

/// Run kernel `k` on its inputs.
pub(crate) fn run(k: &Kernel, inputs: Vec<HostTensor>, b: &Bindings) -> Result<HostTensor, String> {
    let values: Vec<Value> = inputs.into_iter().map(value).collect();
    let out = interpret::run(k, &values.iter().collect::<Vec<_>>(), b, &Reference)?;
    Ok(tensor(&out))
}

/// Run a kernel that writes a slice of its input 0 ([`Kernel::store`]) on
/// its other inputs: the slice's values, the axis and the first row.
pub(super) fn run_store(k: &Kernel, rest: Vec<HostTensor>, b: &Bindings) -> Result<(HostTensor, u8, usize), String> {
    let values: Vec<Value> = rest.into_iter().map(value).collect();
    let (v, axis, start) = interpret::run_store(k, &values.iter().collect::<Vec<_>>(), b, &Reference)?;
    Ok((tensor(&v), axis, start))
}
