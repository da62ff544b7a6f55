//! Recording dispatches for one submission. Every kernel follows one binding
//! rule: binding 0 is `meta: array<u32>` (sizes, offsets, strides: what the
//! kernel needs at run time, so one pipeline serves every `T`), then the
//! buffers it reads, then the one it writes. A [`Recorder`] collects the
//! dispatches of a program run, and [`Recorder::submit`] packs every meta
//! block into one buffer and encodes them all into one command buffer: one
//! queue submission per run, nothing read back.

use super::device::{Gpu, BACKEND};
use super::storage::{storage_of, GpuStorage};
use crate::backend::Buffer;
use crate::error::{Result, RuntimeError};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Threads per workgroup of every one-thread-per-item kernel.
pub(crate) const WORKGROUP: u32 = 64;

/// What the backend did, for tests and `ecarc bench`. Clones share counts.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    inner: Arc<StatsInner>,
}

#[derive(Debug, Default)]
struct StatsInner {
    dispatches: AtomicU64,
    checks: AtomicU64,
    submissions: AtomicU64,
    read_backs: AtomicU64,
    read_back_bytes: AtomicU64,
    pipelines: AtomicU64,
    host_ops: Mutex<HashMap<&'static str, u64>>,
}

/// A snapshot of [`Stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub dispatches: u64,
    /// Of the dispatches: the driver's non-finite checks of outputs (`finite.rs`).
    pub checks: u64,
    pub submissions: u64,
    /// Copies from the device to the host (downloads and host fallbacks).
    pub read_backs: u64,
    pub read_back_bytes: u64,
    /// Pipelines compiled (the cache's misses).
    pub pipelines: u64,
    /// Ops run on the host by kind (each costs a read-back and an upload).
    pub host_ops: Vec<(&'static str, u64)>,
}

impl Stats {
    pub fn counts(&self) -> Counts {
        let i = &self.inner;
        let mut host_ops: Vec<_> =
            i.host_ops.lock().map(|m| m.iter().map(|(k, v)| (*k, *v)).collect()).unwrap_or_default();
        host_ops.sort();
        Counts {
            dispatches: i.dispatches.load(Ordering::Relaxed),
            checks: i.checks.load(Ordering::Relaxed),
            submissions: i.submissions.load(Ordering::Relaxed),
            read_backs: i.read_backs.load(Ordering::Relaxed),
            read_back_bytes: i.read_back_bytes.load(Ordering::Relaxed),
            pipelines: i.pipelines.load(Ordering::Relaxed),
            host_ops,
        }
    }
    pub(crate) fn read_back(&self, bytes: u64) {
        self.inner.read_backs.fetch_add(1, Ordering::Relaxed);
        self.inner.read_back_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    pub(crate) fn check(&self) {
        self.inner.checks.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn host_op(&self, kind: &'static str) {
        if let Ok(mut m) = self.inner.host_ops.lock() {
            *m.entry(kind).or_insert(0) += 1;
        }
    }
}

/// Compiled pipelines by the hash of their WGSL.
#[derive(Default)]
pub(crate) struct Pipelines {
    cache: Mutex<HashMap<u64, Arc<wgpu::ComputePipeline>>>,
}

/// The cache key of a shader: the hash of its text and entry point.
pub(crate) fn shader_key(wgsl: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    wgsl.hash(&mut h);
    h.finish()
}

impl Pipelines {
    /// The pipeline of `wgsl` (entry point `main`), compiled once per device.
    pub fn get(&self, gpu: &Gpu, label: &str, wgsl: &str, stats: &Stats) -> Result<Arc<wgpu::ComputePipeline>> {
        let key = shader_key(wgsl);
        if let Some(p) = self.cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
            return Ok(p);
        }
        let module = gpu.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(label),
            source: wgpu::ShaderSource::Wgsl(wgsl.into()),
        });
        let pipeline = gpu.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(label),
            layout: None,
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        gpu.check(label).map_err(|e| match e {
            RuntimeError::Execution { why, .. } => RuntimeError::Execution {
                backend: BACKEND.into(),
                program: label.into(),
                why: format!("the shader did not compile: {why}"),
            },
            e => e,
        })?;
        stats.inner.pipelines.fetch_add(1, Ordering::Relaxed);
        let p = Arc::new(pipeline);
        if let Ok(mut c) = self.cache.lock() {
            c.insert(key, p.clone());
        }
        Ok(p)
    }
}

/// How many workgroups to launch.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Grid {
    /// One thread per item, [`WORKGROUP`] per group, spread over x and y
    /// beyond the device's per-dimension limit (the kernel computes
    /// `gid.x + gid.y * nwg.x * WORKGROUP` and returns past `meta[0]`).
    Items(u64),
    /// Exactly these workgroups (a tiled kernel with its own mapping).
    Groups(u32, u32, u32),
}

struct Dispatch {
    pipeline: Arc<wgpu::ComputePipeline>,
    /// Read buffers, then the written one.
    buffers: Vec<Arc<dyn crate::backend::Storage>>,
    meta: std::ops::Range<u64>,
    groups: (u32, u32, u32),
}

/// The dispatches of one program run, submitted together.
pub(crate) struct Recorder<'g> {
    gpu: &'g Gpu,
    stats: &'g Stats,
    metas: Vec<u32>,
    dispatches: Vec<Dispatch>,
    /// Meta blocks start at multiples of this many words (the device's
    /// storage offset alignment).
    align: u64,
}

impl<'g> Recorder<'g> {
    pub fn new(gpu: &'g Gpu, stats: &'g Stats) -> Recorder<'g> {
        let align = (gpu.limits.min_storage_buffer_offset_alignment as u64 / 4).max(1);
        Recorder { gpu, stats, metas: Vec::new(), dispatches: Vec::new(), align }
    }

    /// Record one dispatch of `pipeline` reading `reads`, writing `write`.
    pub fn dispatch(
        &mut self,
        pipeline: Arc<wgpu::ComputePipeline>,
        reads: &[&Buffer],
        write: &Buffer,
        meta: &[u32],
        grid: Grid,
    ) -> Result<()> {
        let max = self.gpu.limits.max_compute_workgroups_per_dimension.max(1);
        let groups = match grid {
            Grid::Items(0) => return Ok(()),
            Grid::Items(n) => {
                let g = n.div_ceil(WORKGROUP as u64);
                let x = g.min(max as u64);
                let y = g.div_ceil(x);
                if y > max as u64 {
                    return Err(self.too_big(format!("{n} threads")));
                }
                (x as u32, y as u32, 1)
            }
            Grid::Groups(x, y, z) => {
                if x > max || y > max || z > max {
                    return Err(self.too_big(format!("{x}x{y}x{z} workgroups")));
                }
                if x == 0 || y == 0 || z == 0 {
                    return Ok(());
                }
                (x, y, z)
            }
        };
        let bindings = reads.len() as u32 + 2;
        if bindings > self.gpu.limits.max_storage_buffers_per_shader_stage {
            return Err(self.too_big(format!(
                "{bindings} storage buffers in one kernel (the adapter allows {})",
                self.gpu.limits.max_storage_buffers_per_shader_stage
            )));
        }
        let start = (self.metas.len() as u64).next_multiple_of(self.align);
        self.metas.resize(start as usize, 0);
        self.metas.extend_from_slice(meta);
        if meta.is_empty() {
            self.metas.push(0);
        }
        let end = self.metas.len() as u64;
        let mut buffers = Vec::with_capacity(reads.len() + 1);
        for b in reads.iter().copied().chain([write]) {
            storage_of(b)?;
            buffers.push(b.storage.clone());
        }
        self.dispatches.push(Dispatch { pipeline, buffers, meta: start..end, groups });
        Ok(())
    }

    fn too_big(&self, what: String) -> RuntimeError {
        RuntimeError::Execution {
            backend: BACKEND.into(),
            program: String::new(),
            why: format!("{what} exceed the adapter's limits ({})", self.gpu.adapter),
        }
    }

    /// Encode every recorded dispatch into one command buffer and submit it.
    pub fn submit(self, program: &str) -> Result<()> {
        if self.dispatches.is_empty() {
            return Ok(());
        }
        let gpu = self.gpu;
        let bytes: Vec<u8> = self.metas.iter().flat_map(|w| w.to_le_bytes()).collect();
        // Pooled like every buffer: the next run of the same program takes it
        // back (queue order puts its new contents after this submission).
        let meta = gpu.raw_buffer((bytes.len() as u64).max(16).next_multiple_of(256));
        gpu.queue.write_buffer(&meta, 0, &bytes);
        let mut groups = Vec::with_capacity(self.dispatches.len());
        for d in &self.dispatches {
            let layout = d.pipeline.get_bind_group_layout(0);
            let mut entries = vec![wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &meta,
                    offset: d.meta.start * 4,
                    size: std::num::NonZeroU64::new((d.meta.end - d.meta.start) * 4),
                }),
            }];
            for (i, s) in d.buffers.iter().enumerate() {
                let s = s.as_any().downcast_ref::<GpuStorage>().expect("checked when recorded");
                entries.push(wgpu::BindGroupEntry { binding: i as u32 + 1, resource: s.buf.as_entire_binding() });
            }
            groups.push(gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &layout,
                entries: &entries,
            }));
        }
        let mut enc = gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(program) });
        // Only when `ecarc bench` turned timing on: begin/end timestamps,
        // resolved on the device (read when the benchmark asks).
        let slot = gpu.timing.next(&gpu.device);
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(program),
                timestamp_writes: slot.as_ref().map(|s| s.writes()),
            });
            for (d, g) in self.dispatches.iter().zip(&groups) {
                pass.set_pipeline(&d.pipeline);
                pass.set_bind_group(0, g, &[]);
                pass.dispatch_workgroups(d.groups.0, d.groups.1, d.groups.2);
            }
        }
        if let Some(s) = &slot {
            s.resolve(&mut enc);
        }
        gpu.queue.submit([enc.finish()]);
        gpu.pool.give(meta);
        self.stats.inner.dispatches.fetch_add(self.dispatches.len() as u64, Ordering::Relaxed);
        self.stats.inner.submissions.fetch_add(1, Ordering::Relaxed);
        gpu.check(program)
    }
}
