//! The CPU backend (`--backend cpu`): the reference's host storage (so
//! buffers are strided views of shared host tensors, and upload, download and
//! the in-place state updates are the reference's), with native kernels where
//! the time goes: GEMM anchors through the `gemm` crate and a weight-streaming
//! GEMV (`gemm.rs`), flash-style attention (`attention.rs`), fused kernels
//! split at their anchor with the element-wise parts on an engine
//! (`fused.rs`); the remaining ops run the reference's kernels. Every
//! dispatch is counted by op kind and implementation ([`Cpu::kernel_stats`]),
//! so tests and benchmarks can see what fell back.

mod attention;
pub mod fused;
mod gemm;
pub mod jit;
mod jit_engine;
mod program;

use crate::backend::*;
use crate::error::{Result, RuntimeError};
use crate::reference::{Counters, Reference};
use crate::tensor::HostTensor;
use ecarc_compiler::ir::{Bindings, Graph};
use fused::{ElementwiseEngine, Interpreter};
use program::Prepared;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

const BACKEND: &str = "cpu";

/// Which implementation ran a kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Impl {
    /// The CPU backend's own kernel.
    Native,
    /// The reference interpreter's kernel for the op.
    Reference,
    /// The kernel IR's host interpreter (an element-wise part of a fused kernel).
    Interpreter,
}

impl Impl {
    pub fn name(self) -> &'static str {
        match self {
            Impl::Native => "native",
            Impl::Reference => "reference-kernel",
            Impl::Interpreter => "kernel-ir-interpreter",
        }
    }
}

/// Dispatches by op kind (`linear`, `fused.linear`, `fused.elementwise`,
/// `embedding`, ...) and implementation. Clones share the counts.
#[derive(Clone, Debug, Default)]
pub struct KernelStats {
    counts: Arc<Mutex<BTreeMap<(&'static str, Impl), u64>>>,
}

impl KernelStats {
    pub(crate) fn count(&self, kind: &'static str, how: Impl) {
        if let Ok(mut c) = self.counts.lock() {
            *c.entry((kind, how)).or_insert(0) += 1;
        }
    }
    /// Every (kind, implementation) with its number of dispatches.
    pub fn snapshot(&self) -> BTreeMap<(&'static str, Impl), u64> {
        self.counts.lock().map(|c| c.clone()).unwrap_or_default()
    }
    /// Dispatches that ran `how`.
    pub fn total(&self, how: Impl) -> u64 {
        self.snapshot().iter().filter(|((_, i), _)| *i == how).map(|(_, n)| n).sum()
    }
    pub fn reset(&self) {
        if let Ok(mut c) = self.counts.lock() {
            c.clear();
        }
    }
    /// One line per kind: `linear native 120`.
    pub fn render(&self) -> String {
        self.snapshot().iter().map(|((k, i), n)| format!("{k:<20} {:<22} {n}\n", i.name())).collect()
    }
}

/// The CPU backend. Clones share their counters.
#[derive(Clone)]
pub struct Cpu {
    host: Reference,
    counters: Arc<Counters>,
    stats: KernelStats,
    engine: Arc<dyn ElementwiseEngine>,
}

impl Default for Cpu {
    fn default() -> Self {
        Cpu::new()
    }
}

impl Cpu {
    /// Fused element-wise parts compiled by the cranelift JIT.
    pub fn new() -> Cpu {
        Cpu::with_engine(Arc::new(jit_engine::Jit))
    }

    /// Fused element-wise parts on the kernel IR's interpreter (the JIT's
    /// oracle on this backend).
    pub fn interpreted() -> Cpu {
        Cpu::with_engine(Arc::new(Interpreter::default()))
    }

    /// A CPU backend whose fused element-wise parts run on `engine`.
    pub fn with_engine(engine: Arc<dyn ElementwiseEngine>) -> Cpu {
        Cpu { host: Reference::new(), counters: Arc::default(), stats: KernelStats::default(), engine }
    }

    /// Which implementation ran each kind of kernel, so far.
    pub fn kernel_stats(&self) -> &KernelStats {
        &self.stats
    }

    /// Bytes copied and written so far, and how state updates were written
    /// (as [`Reference::traffic`]).
    pub fn traffic(&self) -> crate::reference::Traffic {
        self.counters.traffic()
    }

    /// The GEMV dot product this CPU uses (`avx512`, `avx2`, `portable`).
    pub fn gemv_isa() -> &'static str {
        gemm::dot2().1
    }
}

impl Backend for Cpu {
    fn name(&self) -> &'static str {
        BACKEND
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            all_ops: true,
            memory_bytes: None,
            device: format!("host CPU ({} threads, GEMV {})", rayon::current_num_threads(), Cpu::gemv_isa()),
        }
    }
    fn upload(&self, t: &HostTensor) -> Result<Buffer> {
        self.host.upload(t)
    }
    fn download(&self, b: &Buffer) -> Result<HostTensor> {
        self.host.download(b)
    }
    fn non_finite(&self, b: &Buffer) -> Result<Option<String>> {
        self.host.non_finite(b)
    }
    fn prepare(&self, g: &Graph, params: &Params) -> Result<Executable> {
        let p = Prepared::new(g, params, self.engine.as_ref())?;
        Ok(Executable { name: g.name.clone(), inner: Arc::new(p) })
    }
    fn run(&self, exe: &Executable, bindings: &Bindings, args: Args) -> Result<Vec<(String, Buffer)>> {
        let p = exe
            .inner
            .downcast_ref::<Prepared>()
            .ok_or_else(|| RuntimeError::Invalid(format!("program `{}` was prepared by another backend", exe.name)))?;
        p.run(bindings, args, &self.counters, &self.stats)
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}

/// The native kernels on dense host tensors, for benchmarks and tests.
pub mod kernels {
    use crate::reference::view::View;
    use crate::tensor::HostTensor;
    use std::sync::Arc;

    fn view(t: &HostTensor) -> View {
        View::whole(Arc::new(t.clone()))
    }

    /// `x[..., in] @ w[out, in]^T (+ b)`: GEMM, or the streamed GEMV for one or two rows.
    pub fn linear(x: &HostTensor, w: &HostTensor, b: Option<&HostTensor>) -> Result<HostTensor, String> {
        super::gemm::linear(&view(x), &view(w), b.map(view).as_ref())
    }

    /// [`linear`] always through the GEMM (never the streamed GEMV).
    pub fn linear_gemm(x: &HostTensor, w: &HostTensor, b: Option<&HostTensor>) -> Result<HostTensor, String> {
        super::gemm::linear_with(&view(x), &view(w), b.map(view).as_ref(), false)
    }

    /// `a[..., m, k] @ b[..., k, n]`.
    pub fn matmul(a: &HostTensor, b: &HostTensor) -> Result<HostTensor, String> {
        super::gemm::matmul(&view(a), &view(b))
    }
}
