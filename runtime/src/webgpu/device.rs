//! The wgpu device: adapter selection (`--adapter NAME`, `WGPU_BACKEND`),
//! the device opened with the adapter's own limits, and its errors turned
//! into `RuntimeError`s (wgpu's default handler panics; ours records).

use super::pool::SharedPool;
use super::timing::Timing;
use crate::error::{Result, RuntimeError};
use std::sync::{Arc, Mutex};

pub(crate) const BACKEND: &str = "wgpu";

/// One adapter wgpu found, for `--list-adapters` and error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdapterSummary {
    pub name: String,
    /// `Vulkan`, `Metal`, `Dx12`, `Gl`.
    pub api: String,
    /// `DiscreteGpu`, `IntegratedGpu`, `Cpu` (a software adapter), ...
    pub kind: String,
    pub driver: String,
}

impl std::fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}, {}, {})", self.name, self.api, self.kind, self.driver)
    }
}

fn summary(info: &wgpu::AdapterInfo) -> AdapterSummary {
    AdapterSummary {
        name: info.name.clone(),
        api: format!("{:?}", info.backend),
        kind: format!("{:?}", info.device_type),
        driver: format!("{} {}", info.driver, info.driver_info).trim().to_string(),
    }
}

fn instance() -> wgpu::Instance {
    // `WGPU_BACKEND=vulkan|gl|metal|dx12` picks the API, as in every wgpu program.
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

fn backends() -> wgpu::Backends {
    wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all())
}

/// Every adapter wgpu finds on this machine.
pub fn list_adapters() -> Vec<AdapterSummary> {
    let inst = instance();
    pollster::block_on(inst.enumerate_adapters(backends())).iter().map(|a| summary(&a.get_info())).collect()
}

fn unavailable(why: String) -> RuntimeError {
    RuntimeError::BackendUnavailable { name: BACKEND.into(), why }
}

/// The opened device, its queue and what the backend must respect of it.
pub(crate) struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub adapter: AdapterSummary,
    pub limits: wgpu::Limits,
    /// Errors wgpu reported outside a call that returns them (validation,
    /// out of memory), and a lost device: taken by [`Gpu::check`].
    errors: Arc<Mutex<Vec<String>>>,
    /// Freed buffers kept for reuse (`pool.rs`).
    pub(crate) pool: SharedPool,
    /// Device buffers created (pool misses): a sample's steady state creates none.
    pub(crate) created: std::sync::atomic::AtomicU64,
    /// Timestamp queries of compute passes, when on (`timing.rs`).
    pub(crate) timing: Timing,
}

impl Gpu {
    /// Open the adapter whose name contains `wanted` (case-insensitive), or
    /// the first one, preferring a hardware GPU to a software one.
    pub fn open(wanted: Option<&str>) -> Result<Gpu> {
        let inst = instance();
        let adapters = pollster::block_on(inst.enumerate_adapters(backends()));
        if adapters.is_empty() {
            return Err(unavailable(
                "wgpu found no adapter. On a machine without a GPU install a software Vulkan driver \
                 (Debian: `apt-get install mesa-vulkan-drivers libvulkan1`) and set `WGPU_BACKEND=vulkan`; \
                 `ecarc bench --backend wgpu --list-adapters` lists what is found"
                    .into(),
            ));
        }
        let rank = |a: &wgpu::Adapter| match a.get_info().device_type {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Other => 3,
            wgpu::DeviceType::Cpu => 4,
        };
        let adapter = match wanted {
            Some(w) => {
                let lw = w.to_lowercase();
                adapters.iter().find(|a| a.get_info().name.to_lowercase().contains(&lw)).ok_or_else(|| {
                    let names: Vec<String> = adapters.iter().map(|a| summary(&a.get_info()).to_string()).collect();
                    unavailable(format!("no adapter's name contains `{w}`; found: {}", names.join("; ")))
                })?
            }
            None => adapters.iter().min_by_key(|a| rank(a)).expect("not empty"),
        };
        let info = adapter.get_info();
        let limits = adapter.limits();
        // Timestamp queries where offered: `ecarc bench` reports GPU busy time.
        let features = adapter.features() & wgpu::Features::TIMESTAMP_QUERY;
        let desc = wgpu::DeviceDescriptor {
            label: Some("ecarc"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc))
            .map_err(|e| unavailable(format!("the adapter {} refused a device: {e}", summary(&info))))?;
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut v) = sink.lock() {
                v.push(e.to_string());
            }
        }));
        let sink = errors.clone();
        device.set_device_lost_callback(move |reason, msg| {
            if let Ok(mut v) = sink.lock() {
                v.push(format!("the device was lost ({reason:?}): {msg}"));
            }
        });
        let timing = Timing::new(features.contains(wgpu::Features::TIMESTAMP_QUERY), queue.get_timestamp_period());
        Ok(Gpu {
            timing,
            device,
            queue,
            adapter: summary(&info),
            limits,
            errors,
            pool: SharedPool::default(),
            created: Default::default(),
        })
    }

    /// The errors wgpu reported since the last check, as one error.
    pub fn check(&self, program: &str) -> Result<()> {
        let errs = self.errors.lock().map(|mut v| std::mem::take(&mut *v)).unwrap_or_default();
        if errs.is_empty() {
            return Ok(());
        }
        Err(RuntimeError::Execution { backend: BACKEND.into(), program: program.into(), why: errs.join("; ") })
    }

    /// Wait until the queue is idle.
    pub fn wait(&self) -> Result<()> {
        self.device.poll(wgpu::PollType::wait_indefinitely()).map(|_| ()).map_err(|e| RuntimeError::Execution {
            backend: BACKEND.into(),
            program: String::new(),
            why: e.to_string(),
        })
    }
}
