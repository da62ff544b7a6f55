//! Device buffers are recycled, not re-created: a storage dropped by a
//! program run (an intermediate whose last reader ran, a step's output the
//! driver let go) returns its `wgpu::Buffer` here, and the next allocation of
//! the same size takes it back. An autoregressive sample runs the same
//! programs at the same shapes step after step, so after the first step a
//! sample allocates nothing: each size class is created once per sample
//! (WebGPU engines that re-create buffers per token lose much of their speed
//! to it). Reuse inside one submission is safe: wgpu orders the dispatches
//! of a compute pass that touch the same buffer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Pooled bytes above this are freed instead (a sample that changed shapes
/// must not keep every old size alive).
const MAX_POOLED_BYTES: u64 = 1 << 30;

#[derive(Default)]
pub(crate) struct Pool {
    inner: Mutex<Free>,
}

#[derive(Default)]
struct Free {
    /// Free buffers by size in bytes.
    by_size: HashMap<u64, Vec<wgpu::Buffer>>,
    bytes: u64,
}

impl Pool {
    /// A free buffer of exactly `bytes`, if one was returned.
    pub fn take(&self, bytes: u64) -> Option<wgpu::Buffer> {
        let mut f = self.inner.lock().ok()?;
        let buf = f.by_size.get_mut(&bytes)?.pop()?;
        f.bytes -= bytes;
        Some(buf)
    }

    /// Keep `buf` for a later allocation of its size (or free it when the
    /// pool is full).
    pub fn give(&self, buf: wgpu::Buffer) {
        let bytes = buf.size();
        if let Ok(mut f) = self.inner.lock() {
            if f.bytes + bytes <= MAX_POOLED_BYTES {
                f.bytes += bytes;
                f.by_size.entry(bytes).or_default().push(buf);
            }
        }
    }

    /// Bytes held for reuse.
    pub fn pooled_bytes(&self) -> u64 {
        self.inner.lock().map(|f| f.bytes).unwrap_or(0)
    }
}

/// Where a dropped storage's buffer goes: shared by the device and every
/// storage it made.
pub(crate) type SharedPool = Arc<Pool>;
