//! GPU busy time from timestamp queries (`ecarc bench`). Where the adapter
//! offers `TIMESTAMP_QUERY` and profiling is on, every submitted compute pass
//! writes a begin and an end timestamp, resolved in the same command buffer
//! into a device buffer: nothing is read back while a sample runs.
//! [`Timing::take`] reads them all at once, when the benchmark asks (after
//! its timed runs), and starts over.

use super::device::{Gpu, BACKEND};
use crate::error::{Result, RuntimeError};
use std::sync::{Arc, Mutex};

/// Passes per query set (two queries each; wgpu allows 4096 per set).
const PASSES: u32 = 1024;
/// Bytes between two passes' resolved pairs (the resolve offset alignment).
const STRIDE: u64 = wgpu::QUERY_RESOLVE_BUFFER_ALIGNMENT;

/// One query set and the buffer its pairs resolve into.
pub(crate) struct Chunk {
    pub set: wgpu::QuerySet,
    pub resolve: wgpu::Buffer,
}

#[derive(Default)]
struct State {
    on: bool,
    chunks: Vec<Arc<Chunk>>,
    /// Passes recorded since the last take.
    used: u32,
}

/// The timestamp queries of one device.
pub(crate) struct Timing {
    /// Whether the device was opened with `TIMESTAMP_QUERY`.
    pub supported: bool,
    /// Nanoseconds per timestamp tick.
    period_ns: f64,
    state: Mutex<State>,
}

/// Where one pass writes its timestamps: queries `2 i` and `2 i + 1` of
/// `chunk.set`, resolved at `i * STRIDE` of `chunk.resolve`.
pub(crate) struct Slot {
    pub chunk: Arc<Chunk>,
    pub index: u32,
}

impl Slot {
    pub fn writes(&self) -> wgpu::ComputePassTimestampWrites<'_> {
        wgpu::ComputePassTimestampWrites {
            query_set: &self.chunk.set,
            beginning_of_pass_write_index: Some(2 * self.index),
            end_of_pass_write_index: Some(2 * self.index + 1),
        }
    }
    /// Resolve this pass's pair (after the pass ends, same encoder).
    pub fn resolve(&self, enc: &mut wgpu::CommandEncoder) {
        let i = self.index;
        enc.resolve_query_set(&self.chunk.set, 2 * i..2 * i + 2, &self.chunk.resolve, i as u64 * STRIDE);
    }
}

/// GPU time summed over the compute passes since the last take.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GpuTime {
    pub seconds: f64,
    /// Compute passes timed (one per program run, plus checks and host-fallback splits).
    pub passes: u64,
}

fn exec(why: String) -> RuntimeError {
    RuntimeError::Execution { backend: BACKEND.into(), program: "timestamps".into(), why }
}

impl Timing {
    pub fn new(supported: bool, period_ns: f32) -> Timing {
        Timing { supported, period_ns: period_ns as f64, state: Mutex::default() }
    }

    /// Turn timing on or off (off by default: a sample then records no query).
    pub fn set(&self, on: bool) -> bool {
        if let Ok(mut s) = self.state.lock() {
            s.on = on && self.supported;
            s.on
        } else {
            false
        }
    }

    /// The slot of the next pass, when timing is on.
    pub fn next(&self, device: &wgpu::Device) -> Option<Slot> {
        let mut s = self.state.lock().ok()?;
        if !s.on {
            return None;
        }
        let (c, index) = (s.used / PASSES, s.used % PASSES);
        if c as usize == s.chunks.len() {
            let set = device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: 2 * PASSES,
            });
            let resolve = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("timestamps"),
                size: PASSES as u64 * STRIDE,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            s.chunks.push(Arc::new(Chunk { set, resolve }));
        }
        s.used += 1;
        Some(Slot { chunk: s.chunks[c as usize].clone(), index })
    }

    /// Read every pass's timestamps recorded since the last take (one copy,
    /// one read-back, after waiting for the queue) and start over. `None`
    /// where the device has no timestamp queries.
    pub fn take(&self, gpu: &Gpu) -> Result<Option<GpuTime>> {
        if !self.supported {
            return Ok(None);
        }
        let (chunks, used) = {
            let mut s = self.state.lock().map_err(|e| exec(e.to_string()))?;
            let used = std::mem::take(&mut s.used);
            (s.chunks.clone(), used)
        };
        if used == 0 {
            return Ok(Some(GpuTime::default()));
        }
        let size = used as u64 * STRIDE;
        let staging = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("timestamps read-back"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("timestamps") });
        let mut left = used as u64;
        for (i, c) in chunks.iter().enumerate() {
            if left == 0 {
                break;
            }
            let n = left.min(PASSES as u64);
            enc.copy_buffer_to_buffer(&c.resolve, 0, &staging, i as u64 * PASSES as u64 * STRIDE, n * STRIDE);
            left -= n;
        }
        gpu.queue.submit([enc.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        gpu.wait()?;
        rx.recv().map_err(|e| exec(e.to_string()))?.map_err(|e| exec(e.to_string()))?;
        let view = staging.slice(..).get_mapped_range().map_err(|e| exec(format!("{e:?}")))?;
        let word = |at: usize| u64::from_le_bytes(view[at..at + 8].try_into().expect("8 bytes"));
        let mut ticks = 0u64;
        for p in 0..used as usize {
            let at = p * STRIDE as usize;
            ticks += word(at + 8).saturating_sub(word(at));
        }
        drop(view);
        staging.unmap();
        gpu.check("timestamps")?;
        Ok(Some(GpuTime { seconds: ticks as f64 * self.period_ns * 1e-9, passes: used as u64 }))
    }
}
