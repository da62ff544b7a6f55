//! The cranelift JIT (`cpu/jit`) as the CPU backend's element-wise engine:
//! each anchor-free part is compiled to native code the first time it runs
//! under given shapes and input strides (`JitKernel::specialisation` plus
//! the strides), then reused from a per-kernel cache: a decode step's cache
//! write compiles once for every position. A part the JIT refuses runs on
//! the interpreter engine and is counted as such.

use super::fused::{CompiledKernel, ElementwiseEngine, Interpreter};
use super::jit::{JitArg, JitKernel};
use super::Impl;
use crate::reference::view::View;
use crate::tensor::{Data, HostTensor};
use ecarc_compiler::ir::Bindings;
use ecarc_compiler::kernel::Kernel;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Compiles every part with cranelift.
#[derive(Clone, Copy, Debug, Default)]
pub struct Jit;

/// What a compile depends on: the kernel's specialisation and the input strides.
type Key = (Vec<u64>, Vec<Vec<usize>>);

struct Compiled {
    kernel: Kernel,
    cache: Mutex<HashMap<Key, Arc<JitKernel>>>,
    fallback: Box<dyn CompiledKernel>,
    /// Why a compile failed, if one did: later runs go straight to the interpreter.
    refused: Mutex<Option<String>>,
}

impl ElementwiseEngine for Jit {
    fn implementation(&self) -> Impl {
        Impl::Native
    }
    fn prepare(&self, k: &Kernel) -> Result<Box<dyn CompiledKernel>, String> {
        let fallback = Interpreter::default().prepare(k)?;
        Ok(Box::new(Compiled { kernel: k.clone(), cache: Mutex::default(), fallback, refused: Mutex::new(None) }))
    }
}

impl Compiled {
    fn compiled(&self, inputs: &[&View], b: &Bindings) -> Result<Arc<JitKernel>, String> {
        let strides: Vec<Vec<usize>> = inputs.iter().map(|v| v.strides.clone()).collect();
        let key = (JitKernel::specialisation(&self.kernel, b), strides);
        let mut cache = self.cache.lock().map_err(|_| "the JIT cache is poisoned".to_string())?;
        if let Some(k) = cache.get(&key) {
            return Ok(k.clone());
        }
        let k = Arc::new(JitKernel::compile(&self.kernel, b, &key.1)?);
        cache.insert(key, k.clone());
        Ok(k)
    }
}

impl CompiledKernel for Compiled {
    fn implementation(&self) -> Impl {
        match self.refused.lock() {
            Ok(r) if r.is_none() => Impl::Native,
            _ => Impl::Interpreter,
        }
    }
    fn run(&self, inputs: &[&View], b: &Bindings) -> Result<HostTensor, String> {
        if self.refused.lock().map(|r| r.is_some()).unwrap_or(true) {
            return self.fallback.run(inputs, b);
        }
        let jit = match self.compiled(inputs, b) {
            Ok(j) => j,
            Err(e) => {
                if let Ok(mut r) = self.refused.lock() {
                    *r = Some(e);
                }
                return self.fallback.run(inputs, b);
            }
        };
        let args: Vec<JitArg> = inputs
            .iter()
            .map(|v| match &v.base.data {
                Data::F32(x) => JitArg::F32(&x[v.offset.min(x.len())..]),
                Data::I64(x) => JitArg::I64(&x[v.offset.min(x.len())..]),
            })
            .collect();
        let shape: Vec<usize> = self.kernel.output().shape.iter().map(|d| d.eval(b) as usize).collect();
        let mut out = vec![0.0f32; shape.iter().product()];
        jit.run_checked(&args, &mut out)?;
        Ok(HostTensor::f32(shape, out))
    }
}
