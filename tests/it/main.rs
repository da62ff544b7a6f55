//! The one integration-test binary (each test binary links every crate, so
//! there is one). Modules own one concern each.

mod bench_wgpu;
mod build;
mod checkpoints;
mod cli;
mod cli_run;
mod common;
mod contract;
mod cpu;
mod diagnostics;
mod format;
mod formula;
mod fusion;
mod hostile;
mod ir_files;
mod models;
mod parity;
mod passes;
mod plan;
mod readme;
mod robustness;
mod runtime;
mod search;
mod tiny;
mod variants;
mod wgpu;
mod wgsl;
