//! The CPU backend's GEMM anchors against the reference kernel: `linear` at
//! the shapes of a DiT-B/2 step (256 tokens x 768 -> 3072, and its MLP's
//! 3072 -> 768), a batched decode step (2 rows: the weight-streaming GEMV)
//! and one row. The throughput line is in FLOP/s (2 per multiply-add):
//! `elem/s` = FLOP/s. Run: `cargo bench --bench gemm`.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use ecarc_runtime::cpu::kernels;
use ecarc_runtime::tensor::HostTensor;

fn tensor(shape: &[usize], seed: u32) -> HostTensor {
    let n: usize = shape.iter().product();
    let data = (0..n).map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / 16777216.0 - 0.5);
    HostTensor::f32(shape.to_vec(), data.collect())
}

fn gemm(c: &mut Criterion) {
    let mut g = c.benchmark_group("linear");
    g.sample_size(10);
    for (rows, n_in, n_out) in [(256, 768, 3072), (256, 3072, 768), (1024, 1024, 1024), (2, 768, 3072), (1, 3072, 768)]
    {
        let (x, w) = (tensor(&[rows, n_in], 1), tensor(&[n_out, n_in], 2));
        g.throughput(Throughput::Elements(2 * (rows * n_in * n_out) as u64));
        g.bench_function(format!("cpu/{rows}x{n_in}x{n_out}"), |b| {
            b.iter(|| kernels::linear(black_box(&x), black_box(&w), None).unwrap())
        });
    }
    for (rows, n_in, n_out) in [(2, 768, 3072), (1, 3072, 768)] {
        let (x, w) = (tensor(&[rows, n_in], 1), tensor(&[n_out, n_in], 2));
        g.throughput(Throughput::Elements(2 * (rows * n_in * n_out) as u64));
        g.bench_function(format!("cpu-gemm/{rows}x{n_in}x{n_out}"), |b| {
            b.iter(|| kernels::linear_gemm(black_box(&x), black_box(&w), None).unwrap())
        });
    }
    // The same products with the weight pre-transposed to [in, out] (`matmul`:
    // always the GEMM, B row-major): is packing at prepare worth it, and the
    // GEMV against the GEMM for one and two rows.
    for (rows, n_in, n_out) in [(256, 768, 3072), (2, 768, 3072), (1, 3072, 768)] {
        let (x, wt) = (tensor(&[rows, n_in], 1), tensor(&[n_in, n_out], 2));
        g.throughput(Throughput::Elements(2 * (rows * n_in * n_out) as u64));
        g.bench_function(format!("cpu-gemm-packed/{rows}x{n_in}x{n_out}"), |b| {
            b.iter(|| kernels::matmul(black_box(&x), black_box(&wt)).unwrap())
        });
    }
    let (x, w) = (tensor(&[256, 768], 1), tensor(&[3072, 768], 2));
    g.throughput(Throughput::Elements(2 * 256 * 768 * 3072));
    g.bench_function("reference/256x768x3072", |b| {
        b.iter(|| ecarc_runtime::reference::kernels::linear(black_box(&x), black_box(&w), None).unwrap())
    });
    g.finish();
}

criterion_group!(benches, gemm);
criterion_main!(benches);
