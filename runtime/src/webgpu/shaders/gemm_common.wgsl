// Shared by every GEMM kernel: out[bat, m, n] (dense) = A[bat] . B[bat] + bias,
// A and B read through `bases`/`load_a`/`load_b` (a prelude: strided views or
// a convolution's patches).
// info[0..8]: [m, n, k, batches, bias mode (0 none, 1 per column, 2 per row),
//              bias offset, bias stride, flags (1: A's k is contiguous, 2: B's n is)]
@group(0) @binding(0) var<storage, read> info: array<u32>;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
// Without a bias some read operand is bound here, never read.
@group(0) @binding(3) var<storage, read> bias: array<f32>;
// The result goes out through `store_out(flat index, value)`, the store hook
// appended after the kernel (ecarc_compiler::codegen::epilogue; its bindings
// start at 4): the result as it is, or a fused epilogue applied to it.

fn bias_at(row: u32, col: u32) -> f32 {
    switch info[4] {
        case 1u: { return bias[info[5] + col * info[6]]; }
        case 2u: { return bias[info[5] + row * info[6]]; }
        default: { return 0.0; }
    }
}
