//! The driver checks every float output of every program run for NaN and
//! infinities. Reading each output back would stall the queue once per run;
//! instead each check is a small kernel recorded into the next run's
//! submission, lowering a one-word flag to the id of a failing check, and
//! the flag is read once when the plan ends ([`Backend::deferred_non_finite`]):
//! a sample reads back nothing but its flag and its image.
//!
//! [`Backend::deferred_non_finite`]: crate::backend::Backend::deferred_non_finite

use super::device::Gpu;
use super::kernels::{count, shape_words, word, Ctx};
use super::record::{Grid, Pipelines, Recorder, Stats};
use super::storage::storage_of;
use crate::backend::Buffer;
use crate::error::Result;
use crate::tensor::HostTensor;
use ecarc_compiler::ir::DType;
use std::sync::Mutex;

const WGSL: &str = include_str!("shaders/finite.wgsl");

/// No check failed.
const CLEAR: u32 = u32::MAX;

#[derive(Default)]
pub(crate) struct FiniteChecks {
    inner: Mutex<Checks>,
}

#[derive(Default)]
struct Checks {
    /// What each check looks at, by id (in the driver's words).
    labels: Vec<String>,
    /// Checks not recorded yet: the output and its id.
    pending: Vec<(Buffer, u32)>,
    /// One u32 on the device: the smallest failing id, or [`CLEAR`].
    flag: Option<Buffer>,
}

impl FiniteChecks {
    /// Check `b` later; `what` names it in the error.
    pub fn defer(&self, gpu: &Gpu, b: &Buffer, what: &str) -> Result<()> {
        if b.dtype != DType::F32 || b.shape.contains(&0) {
            return Ok(());
        }
        storage_of(b)?;
        let mut c = self.lock();
        if c.flag.is_none() {
            c.flag = Some(gpu.upload(&HostTensor::i64(vec![1], vec![-1]))?);
        }
        let id = word(c.labels.len(), "a finite check's id")?;
        c.labels.push(what.to_string());
        c.pending.push((b.clone(), id));
        Ok(())
    }

    /// Record the pending checks into `cx`'s submission.
    pub fn record(&self, cx: &mut Ctx) -> Result<()> {
        let (pending, flag) = {
            let mut c = self.lock();
            (std::mem::take(&mut c.pending), c.flag.clone())
        };
        let Some(flag) = flag else { return Ok(()) };
        for (b, id) in pending {
            let n = count(&b.shape)?;
            let mut info = vec![n, word(b.shape.len(), "a rank")?, word(b.offset, "an offset")?, id];
            info.extend(shape_words(&b.shape)?);
            info.extend(shape_words(&b.strides)?);
            cx.run("finite", WGSL, &[&b], &flag, &info, Grid::Items(n as u64))?;
            cx.stats.check();
        }
        Ok(())
    }

    /// Run what is pending (one submission), read the flag, clear every
    /// check: the label of the first check that failed. Nothing is submitted
    /// or read when nothing was checked.
    pub fn finish(&self, gpu: &Gpu, pipelines: &Pipelines, stats: &Stats) -> Result<Option<String>> {
        if self.lock().labels.is_empty() {
            return Ok(None);
        }
        let mut rec = Recorder::new(gpu, stats);
        self.record(&mut Ctx { gpu, pipelines, stats, rec: &mut rec })?;
        rec.submit("finite checks")?;
        let (labels, flag) = {
            let mut c = self.lock();
            (std::mem::take(&mut c.labels), c.flag.clone())
        };
        let Some(flag) = flag else { return Ok(None) };
        let first = gpu.download(&flag, stats)?.as_i64().map_or(-1, |v| v[0]) as i32 as u32;
        gpu.queue.write_buffer(&storage_of(&flag)?.buf, 0, &CLEAR.to_le_bytes());
        Ok((first != CLEAR).then(|| labels.get(first as usize).cloned().unwrap_or_default()))
    }

    /// Forget every check and clear the flag (a plan that failed midway).
    pub fn clear(&self, gpu: &Gpu) -> Result<()> {
        let mut c = self.lock();
        c.labels.clear();
        c.pending.clear();
        if let Some(flag) = &c.flag {
            gpu.queue.write_buffer(&storage_of(flag)?.buf, 0, &CLEAR.to_le_bytes());
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Checks> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}
