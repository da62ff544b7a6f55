// Two-operand element-wise ops with numpy broadcasting: a broadcast axis of
// an operand has stride 0 in its view (kernels/elementwise.rs).
// info: [count, rank, op, 0, 0, 0, 0, 0, shape[rank], a offset, a strides[rank], b offset, b strides[rank]]
// op: 0 add, 1 sub, 2 mul, 3 div, 4 min, 5 max (NaN wins, as PyTorch)
@group(0) @binding(0) var<storage, read> info: array<u32>;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

fn apply(op: u32, p: f32, q: f32) -> f32 {
    switch op {
        case 0u: { return p + q; }
        case 1u: { return p - q; }
        case 2u: { return p * q; }
        case 3u: { return p / q; }
        // WGSL's min/max leave NaN unspecified: compare explicitly.
        case 4u: { return select(select(p, q, q < p), nan(), is_nan(p) || is_nan(q)); }
        default: { return select(select(p, q, q > p), nan(), is_nan(p) || is_nan(q)); }
    }
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let id = item(gid, nwg);
    if (id >= info[0]) {
        return;
    }
    let rank = info[1];
    let p = a[strided(id, rank, 8u, 8u + rank)];
    let q = b[strided(id, rank, 8u, 9u + 2u * rank)];
    y[id] = apply(info[2], p, q);
}
