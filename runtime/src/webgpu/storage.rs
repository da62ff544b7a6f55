//! Device memory behind a wgpu [`Buffer`]: one storage buffer of 32-bit
//! words. `f32` tensors are `f32` words; `i64` tensors (token indices,
//! levels) live on the device as `i32` (WGSL has no 64-bit integers), checked
//! on upload and widened on download.

use super::device::{Gpu, BACKEND};
use super::pool::SharedPool;
use super::record::Stats;
use crate::backend::{Buffer, Storage};
use crate::error::{Result, RuntimeError};
use crate::tensor::{Data, HostTensor};
use ecarc_compiler::ir::DType;
use std::any::Any;
use std::sync::Arc;

pub(crate) struct GpuStorage {
    pub buf: wgpu::Buffer,
    /// 32-bit words the tensor data may use (the buffer may be larger).
    pub words: u64,
    /// Where the buffer goes when the storage is dropped (`pool.rs`).
    pool: SharedPool,
}

impl Drop for GpuStorage {
    fn drop(&mut self) {
        // `wgpu::Buffer` is a shared handle: the pool's clone keeps it alive.
        self.pool.give(self.buf.clone());
    }
}

impl Storage for GpuStorage {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
}

/// Bytes of `words` words, at least 16 (a binding may not be empty).
fn bytes_of(words: u64) -> u64 {
    (words * 4).max(16).next_multiple_of(16)
}

pub(crate) fn storage_of(b: &Buffer) -> Result<&GpuStorage> {
    b.storage.as_any().downcast_ref::<GpuStorage>().ok_or_else(|| {
        RuntimeError::Invalid(format!(
            "a {}{:?} buffer from another backend was given to the wgpu backend; download and upload it",
            b.dtype.name(),
            b.shape
        ))
    })
}

/// Elements the view spans from its storage's start (largest index + 1).
pub(crate) fn span(b: &Buffer) -> u64 {
    if b.shape.contains(&0) {
        return 0;
    }
    (b.offset + b.shape.iter().zip(&b.strides).map(|(&d, &s)| (d - 1) * s).sum::<usize>() + 1) as u64
}

impl Gpu {
    /// A new dense buffer of `shape` (contents unspecified).
    pub fn alloc(&self, dtype: DType, shape: &[usize]) -> Result<Buffer> {
        let words = shape.iter().product::<usize>() as u64;
        let bytes = bytes_of(words);
        if bytes > self.limits.max_storage_buffer_binding_size.min(self.limits.max_buffer_size) {
            return Err(RuntimeError::Execution {
                backend: BACKEND.into(),
                program: String::new(),
                why: format!(
                    "a {}{shape:?} tensor needs {bytes} bytes, more than the adapter's largest storage binding \
                     ({} bytes; {})",
                    dtype.name(),
                    self.limits.max_storage_buffer_binding_size,
                    self.adapter
                ),
            });
        }
        let buf = self.raw_buffer(bytes);
        Ok(Buffer::dense(dtype, shape.to_vec(), Arc::new(GpuStorage { buf, words, pool: self.pool.clone() })))
    }

    /// A storage buffer of `bytes` from the pool, or a new one; give it back
    /// to `self.pool` when done.
    pub fn raw_buffer(&self, bytes: u64) -> wgpu::Buffer {
        match self.pool.take(bytes) {
            Some(buf) => buf,
            None => {
                self.created.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.device.create_buffer(&wgpu::BufferDescriptor {
                    label: None,
                    size: bytes,
                    usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            }
        }
    }

    pub fn upload(&self, t: &HostTensor) -> Result<Buffer> {
        let b = self.alloc(t.dtype(), &t.shape)?;
        let bytes: Vec<u8> = match &t.data {
            Data::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::I64(v) => {
                let mut out = Vec::with_capacity(v.len() * 4);
                for &x in v {
                    let w = i32::try_from(x).map_err(|_| {
                        RuntimeError::Invalid(format!(
                            "the integer {x} does not fit the wgpu backend's 32-bit integers (tensor {:?})",
                            t.shape
                        ))
                    })?;
                    out.extend_from_slice(&w.to_le_bytes());
                }
                out
            }
        };
        if !bytes.is_empty() {
            self.queue.write_buffer(&storage_of(&b)?.buf, 0, &bytes);
        }
        Ok(b)
    }

    /// Read words `[from, to)` of a storage back (waits for the queue).
    pub fn read_words(&self, s: &GpuStorage, from: u64, to: u64, stats: &Stats) -> Result<Vec<u32>> {
        if to <= from {
            return Ok(vec![]);
        }
        let size = (to - from) * 4;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("read-back"),
            size: size.next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("read-back") });
        enc.copy_buffer_to_buffer(&s.buf, from * 4, &staging, 0, size);
        self.queue.submit([enc.finish()]);
        stats.read_back(size);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        let mapped = rx.recv().map_err(|e| exec(e.to_string()))?;
        mapped.map_err(|e| exec(format!("reading a buffer back failed: {e}")))?;
        let view = staging.slice(..).get_mapped_range().map_err(|e| exec(format!("{e:?}")))?;
        let words: Vec<u32> =
            view[..size as usize].chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        drop(view);
        staging.unmap();
        self.check("read-back")?;
        Ok(words)
    }

    /// A buffer's view as a host tensor.
    pub fn download(&self, b: &Buffer, stats: &Stats) -> Result<HostTensor> {
        let s = storage_of(b)?;
        let end = span(b);
        if end > s.words {
            return Err(RuntimeError::Invalid(format!("a view {b:?} does not fit its storage of {} words", s.words)));
        }
        let n: usize = b.shape.iter().product();
        let lo = if n == 0 { 0 } else { b.offset as u64 };
        let words = self.read_words(s, lo, end, stats)?;
        let mut idx = vec![0usize; b.shape.len()];
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let at: usize = idx.iter().zip(&b.strides).map(|(i, s)| i * s).sum::<usize>() + b.offset - lo as usize;
            out.push(words[at]);
            for k in (0..idx.len()).rev() {
                idx[k] += 1;
                if idx[k] < b.shape[k] {
                    break;
                }
                idx[k] = 0;
            }
        }
        Ok(match b.dtype {
            DType::F32 => HostTensor::f32(b.shape.clone(), out.into_iter().map(f32::from_bits).collect()),
            DType::I64 => HostTensor::i64(b.shape.clone(), out.into_iter().map(|w| w as i32 as i64).collect()),
        })
    }
}

fn exec(why: String) -> RuntimeError {
    RuntimeError::Execution { backend: BACKEND.into(), program: String::new(), why }
}
