//! The wgpu backend (`--backend wgpu`): every program runs on the GPU through
//! wgpu (Vulkan, Metal, DX12, GL). Buffers are strided views of device
//! storage (`storage.rs`); a program run records all of its dispatches and
//! submits them at once (`record.rs`); fused kernels run as WGSL generated
//! from the kernel IR (`ecarc_compiler::codegen`, `fused.rs`), anchors and
//! the remaining ops as hand-written WGSL (`kernels/`), and the few ops with
//! no WGSL kernel yet run on the host, counted ([`Stats`]).

mod device;
mod finite;
mod fused;
mod kernels;
mod pool;
mod program;
mod record;
mod storage;
mod timing;

pub use device::{list_adapters, AdapterSummary};
pub use kernels::gemm::Gemm;
pub use record::{Counts, Stats};
pub use timing::GpuTime;

use crate::backend::*;
use crate::error::{Result, RuntimeError};
use crate::tensor::HostTensor;
use device::Gpu;
use ecarc_compiler::ir::{Bindings, Graph};
use program::Prepared;
use record::Pipelines;
use std::sync::Arc;

/// The wgpu backend. Clones share the device, the pipeline cache and the counts.
#[derive(Clone)]
pub struct Wgpu {
    gpu: Arc<Gpu>,
    pipelines: Arc<Pipelines>,
    stats: Stats,
    checks: Arc<finite::FiniteChecks>,
}

impl Wgpu {
    /// Open the adapter whose name contains `adapter` (any when `None`;
    /// `WGPU_BACKEND` picks the API).
    pub fn new(adapter: Option<&str>) -> Result<Wgpu> {
        Ok(Wgpu {
            gpu: Arc::new(Gpu::open(adapter)?),
            pipelines: Arc::default(),
            stats: Stats::default(),
            checks: Arc::default(),
        })
    }

    /// The adapter in use.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.gpu.adapter
    }

    /// Dispatches, submissions and read-backs so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Device buffers created so far (allocations the pool could not serve)
    /// and the bytes the pool holds for reuse.
    pub fn buffers(&self) -> (u64, u64) {
        (self.gpu.created.load(std::sync::atomic::Ordering::Relaxed), self.gpu.pool.pooled_bytes())
    }

    /// Whether the device has timestamp queries (`TIMESTAMP_QUERY`).
    pub fn has_timestamps(&self) -> bool {
        self.gpu.timing.supported
    }

    /// Turn GPU timing on (every compute pass then writes two timestamps,
    /// resolved on the device) or off; returns whether it is on (never
    /// without timestamp queries).
    pub fn set_timing(&self, on: bool) -> bool {
        self.gpu.timing.set(on)
    }

    /// The GPU time of the compute passes since the last call (waits for
    /// the queue, reads the timestamps back once) and starts over; `None`
    /// without timestamp queries. Not counted in [`Stats`]: only `ecarc bench` asks.
    pub fn gpu_time(&self) -> Result<Option<GpuTime>> {
        self.gpu.timing.take(&self.gpu)
    }

    /// `x[..., in] . w[out, in]^T (+ bias)` with the GEMM kernel `kind`, one
    /// submission (benchmarks compare the kernels; programs use `Gemm::Best`).
    pub fn linear_with(&self, x: &Buffer, w: &Buffer, bias: Option<&Buffer>, kind: Gemm) -> Result<Buffer> {
        let mut rec = record::Recorder::new(&self.gpu, &self.stats);
        let mut cx = kernels::Ctx { gpu: &self.gpu, pipelines: &self.pipelines, stats: &self.stats, rec: &mut rec };
        let out = kernels::gemm::run(&mut cx, &kernels::gemm::linear(x, w, bias)?, kind)?;
        rec.submit("linear")?;
        Ok(out)
    }
}

impl Backend for Wgpu {
    fn name(&self) -> &'static str {
        device::BACKEND
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities { all_ops: true, memory_bytes: None, device: self.gpu.adapter.to_string() }
    }
    fn upload(&self, t: &HostTensor) -> Result<Buffer> {
        self.gpu.upload(t)
    }
    fn download(&self, b: &Buffer) -> Result<HostTensor> {
        self.gpu.download(b, &self.stats)
    }
    fn prepare(&self, g: &Graph, params: &Params) -> Result<Executable> {
        let p = Prepared::new(g, params, &self.gpu)?;
        Ok(Executable { name: g.name.clone(), inner: Arc::new(p) })
    }
    fn run(&self, exe: &Executable, bindings: &Bindings, args: Args) -> Result<Vec<(String, Buffer)>> {
        let p = exe
            .inner
            .downcast_ref::<Prepared>()
            .ok_or_else(|| RuntimeError::Invalid(format!("program `{}` was prepared by another backend", exe.name)))?;
        p.run(&self.gpu, &self.pipelines, &self.stats, bindings, args, &self.checks)
    }
    fn defer_non_finite(&self, b: &Buffer, what: &str) -> Result<bool> {
        self.checks.defer(&self.gpu, b, what)?;
        Ok(true)
    }
    fn deferred_non_finite(&self, discard: bool) -> Result<Option<String>> {
        if discard {
            self.checks.clear(&self.gpu)?;
            return Ok(None);
        }
        self.checks.finish(&self.gpu, &self.pipelines, &self.stats)
    }
    fn synchronize(&self) -> Result<()> {
        self.gpu.wait()?;
        self.gpu.check("synchronize")
    }
}
