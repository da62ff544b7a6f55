//! `ecarc bench --backend wgpu`: the adapter and GPU busy time reported,
//! `--gemm` on every kernel, `--list-adapters`, bad `--gemm` values refused.
//! Tests that need an adapter skip (saying so) without one, and fail when
//! `ECARC_REQUIRE_WGPU` is set (as `device()` in `wgpu.rs`).

use crate::common::root;
use std::process::{Command, Output};

fn ecarc() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ecarc"));
    c.arg("--color").arg("never");
    // The machine's limits into this test's own cache (measured at most once).
    c.env("XDG_CACHE_HOME", std::env::temp_dir().join(format!("ecarc-bench-wgpu-{}", std::process::id())));
    c
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// Whether wgpu opens an adapter here.
fn adapter() -> bool {
    crate::wgpu::device().is_some()
}

#[test]
fn bench_on_wgpu_names_the_adapter_and_the_gpu_time() {
    if !adapter() {
        return;
    }
    let model = root().join("examples/tiny/llamagen.ecar");
    let o = ecarc().args(["bench", "--backend", "wgpu", "--runs", "1", "--warmup", "0"]).arg(&model).output().unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.contains("adapter: "), "{out}");
    assert!(out.contains("GPU busy per image: "), "{out}");
    let o = ecarc()
        .args(["bench", "--backend", "wgpu", "--runs", "1", "--warmup", "0", "--json"])
        .arg(&model)
        .output()
        .unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let m = &v["model"];
    assert!(m["adapter"].as_str().is_some_and(|s| !s.is_empty()), "{m}");
    if let Some(g) = m["gpu_seconds_per_image"].as_f64() {
        // Busy time is part of the wall time (which adds host work and waits).
        assert!(g > 0.0 && g <= m["seconds_per_image"].as_f64().unwrap() * 1.05, "{m}");
        assert!(m["gpu_passes_per_image"].as_u64().unwrap() > 0, "{m}");
    }
}

#[test]
fn gemm_times_every_kernel_on_wgpu_and_the_cpu_linear() {
    let o = ecarc().args(["bench", "--backend", "cpu", "--gemm", "16,32,8", "--runs", "1", "--json"]).output().unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["kernels"][0]["kernel"], "linear", "{v}");
    assert!(v["kernels"][0]["gflops"].as_f64().unwrap() > 0.0);
    if !adapter() {
        return;
    }
    let o = ecarc().args(["bench", "--backend", "wgpu", "--gemm", "64,64,64", "--runs", "2"]).output().unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    for k in ["tiled", "naive", "best", "GFLOP/s", "tiled speed-up over naive"] {
        assert!(out.contains(k), "{k}: {out}");
    }
    let o =
        ecarc().args(["bench", "--backend", "wgpu", "--gemm", "2,64,64", "--runs", "1", "--json"]).output().unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let kernels: Vec<&str> = v["kernels"].as_array().unwrap().iter().map(|k| k["kernel"].as_str().unwrap()).collect();
    assert_eq!(kernels, ["tiled", "naive", "gemv (best)"]);
    assert!(v["gemv_speedup_over_tiled"].as_f64().unwrap() > 0.0);
}

#[test]
fn list_adapters_names_what_wgpu_finds() {
    if !adapter() {
        return;
    }
    let o = ecarc().args(["bench", "--backend", "wgpu", "--list-adapters"]).output().unwrap();
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("`--backend wgpu` opens: "), "{out}");
    // The software Vulkan driver CI installs.
    if std::env::var_os("ECARC_REQUIRE_WGPU").is_some() && std::env::var("WGPU_BACKEND").is_ok_and(|b| b == "vulkan") {
        assert!(out.to_lowercase().contains("llvmpipe"), "{out}");
    }
}

#[test]
fn bad_gemm_sizes_are_a_clear_error() {
    for bad in ["64,64", "64,x,64", "0,64,64", "-1,2,3", "65536,65536,65536", ""] {
        let o = ecarc().args(["bench", &format!("--gemm={bad}")]).output().unwrap();
        let (_, err) = text(&o);
        assert!(matches!(o.status.code(), Some(1 | 2)), "{bad}: {err}");
        assert!(err.contains("--gemm") && !err.contains("panicked"), "{bad}: {err}");
    }
    // A model and `--gemm` together: refused, not one silently ignored.
    let o = ecarc().args(["bench", "examples/tiny/var.ecar", "--gemm", "2,2,2"]).current_dir(root()).output().unwrap();
    assert!(matches!(o.status.code(), Some(1 | 2)), "{}", text(&o).1);
}
