//! The limits of the machine a benchmark runs on, measured: the f32 FMA peak
//! of all its cores and the bandwidth of reading memory, so `ecarc bench`
//! can say how close a run comes to them. Measured once and cached
//! (`ecarc bench --machine` measures again).

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// The CPU's name (`/proc/cpuinfo`).
    pub cpu: String,
    pub threads: usize,
    /// f32 multiply-adds as FLOP/s (2 per FMA), all threads, widest vectors.
    pub fma_flops: f64,
    /// Which instructions reached it (`avx512f`, `avx2+fma`, `scalar`).
    pub fma_isa: String,
    /// Bytes/s of reading a buffer much larger than the caches, all threads.
    pub read_bytes_per_s: f64,
}

/// The CPU's model name, or `unknown CPU`.
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name").map(|r| r.trim_start_matches([' ', '\t', ':']).to_string()))
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// Where the measured limits are kept: `$XDG_CACHE_HOME/ecarc/machine.json`
/// or `~/.cache/ecarc/machine.json`.
pub fn cache_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("ecarc").join("machine.json"))
}

impl Machine {
    /// Measure now (about a second).
    pub fn measure() -> Machine {
        let threads = rayon::current_num_threads();
        let (fma_flops, fma_isa) = fma_peak(threads);
        Machine { cpu: cpu_name(), threads, fma_flops, fma_isa: fma_isa.into(), read_bytes_per_s: read_bandwidth() }
    }

    /// The cached limits when they were measured on this CPU with this many
    /// threads, else measured now and cached.
    pub fn cached_or_measure() -> Machine {
        if let Some(m) = Machine::cached() {
            return m;
        }
        let m = Machine::measure();
        m.save();
        m
    }

    pub fn cached() -> Option<Machine> {
        let m: Machine = serde_json::from_str(&std::fs::read_to_string(cache_path()?).ok()?).ok()?;
        (m.cpu == cpu_name() && m.threads == rayon::current_num_threads()).then_some(m)
    }

    /// Keep the limits for later runs (a cache: failing to write is not an error).
    pub fn save(&self) {
        if let Some(p) = cache_path() {
            let _ = p.parent().map(std::fs::create_dir_all);
            if let Ok(text) = serde_json::to_string_pretty(self) {
                let tmp = p.with_extension("json.tmp");
                if std::fs::write(&tmp, text).is_ok() {
                    let _ = std::fs::rename(&tmp, &p);
                }
            }
        }
    }
}

/// Independent FMA chains per thread: enough to cover the FMA latency on
/// both ports of a core.
const CHAINS: usize = 12;

/// The best of a few timed rounds of FMA chains on every thread.
fn fma_peak(threads: usize) -> (f64, &'static str) {
    let iters: u64 = 4_000_000;
    let (per_call, isa) = fma_kernel();
    let mut best = 0.0f64;
    for _ in 0..3 {
        let t = Instant::now();
        let sink: f32 = (0..threads).into_par_iter().map(|i| per_call.run(iters, i as f32)).sum();
        let s = t.elapsed().as_secs_f64();
        std::hint::black_box(sink);
        best = best.max(per_call.flops(iters) * threads as f64 / s);
    }
    (best, isa)
}

#[derive(Clone, Copy)]
enum Fma {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Scalar,
}

impl Fma {
    fn lanes(self) -> f64 {
        match self {
            #[cfg(target_arch = "x86_64")]
            Fma::Avx512 => 16.0,
            #[cfg(target_arch = "x86_64")]
            Fma::Avx2 => 8.0,
            Fma::Scalar => 1.0,
        }
    }
    fn flops(self, iters: u64) -> f64 {
        2.0 * self.lanes() * CHAINS as f64 * iters as f64
    }
    fn run(self, iters: u64, seed: f32) -> f32 {
        match self {
            // SAFETY: chosen only when the CPU reports the features (`fma_kernel`).
            #[cfg(target_arch = "x86_64")]
            Fma::Avx512 => unsafe { fma_avx512(iters, seed) },
            #[cfg(target_arch = "x86_64")]
            Fma::Avx2 => unsafe { fma_avx2(iters, seed) },
            Fma::Scalar => fma_scalar(iters, seed),
        }
    }
}

fn fma_kernel() -> (Fma, &'static str) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") {
            return (Fma::Avx512, "avx512f");
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return (Fma::Avx2, "avx2+fma");
        }
    }
    (Fma::Scalar, "scalar")
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_avx512(iters: u64, seed: f32) -> f32 {
    use std::arch::x86_64::*;
    let a = _mm512_set1_ps(0.999_999);
    let b = _mm512_set1_ps(1e-7);
    let mut acc = [_mm512_set1_ps(seed); CHAINS];
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm512_fmadd_ps(*x, a, b);
        }
    }
    let mut s = _mm512_setzero_ps();
    for x in acc {
        s = _mm512_add_ps(s, x);
    }
    _mm512_reduce_add_ps(s)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_avx2(iters: u64, seed: f32) -> f32 {
    use std::arch::x86_64::*;
    let a = _mm256_set1_ps(0.999_999);
    let b = _mm256_set1_ps(1e-7);
    let mut acc = [_mm256_set1_ps(seed); CHAINS];
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = _mm256_fmadd_ps(*x, a, b);
        }
    }
    let mut out = [0.0f32; 8];
    let mut s = _mm256_setzero_ps();
    for x in acc {
        s = _mm256_add_ps(s, x);
    }
    _mm256_storeu_ps(out.as_mut_ptr(), s);
    out.iter().sum()
}

fn fma_scalar(iters: u64, seed: f32) -> f32 {
    let mut acc = [seed; CHAINS];
    for _ in 0..iters {
        for x in acc.iter_mut() {
            *x = x.mul_add(0.999_999, 1e-7);
        }
    }
    acc.iter().sum()
}

/// Bytes/s of reading 512 MiB on every thread (the best of three passes);
/// integer sums, so the loop vectorises and the bound is memory.
fn read_bandwidth() -> f64 {
    const BYTES: usize = 512 << 20;
    let buf: Vec<u64> = (0..BYTES / 8).into_par_iter().map(|i| i as u64).collect();
    let mut best = 0.0f64;
    for _ in 0..3 {
        let t = Instant::now();
        let sum: u64 = buf
            .par_chunks(1 << 16)
            .map(|c| c.iter().fold(0u64, |a, &x| a.wrapping_add(x)))
            .reduce(|| 0, u64::wrapping_add);
        let s = t.elapsed().as_secs_f64();
        std::hint::black_box(sum);
        best = best.max(BYTES as f64 / s);
    }
    best
}
