// One-operand element-wise maps: Unary, Affine, ClampMax. The op is an info
// word (uniform over the dispatch), so one pipeline serves them all.
// info: [count, rank, op, a, b, 0, 0, 0, shape[rank], x offset, x strides[rank]]
// op: 0 silu, 1 gelu, 2 gelu_tanh, 3 exp, 4 neg, 5 sqrt, 6 tanh,
//     7 affine (x * a + b), 8 clamp_max (a)
@group(0) @binding(0) var<storage, read> info: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

// tanh through exp(-2|x|), which cannot overflow (exp(2x) would give
// inf / inf for large x); the series below 1e-2, where 1 - e cancels.
fn tanh_(v: f32) -> f32 {
    let a = abs(v);
    if (a < 0.01) {
        return v * (1.0 - v * v / 3.0);
    }
    let e = exp(-2.0 * a);
    let t = (1.0 - e) / (1.0 + e);
    return select(t, -t, v < 0.0);
}

// erfc(z) for z >= 0: Abramowitz and Stegun 7.1.26 (absolute error below
// 1.5e-7), written as erfc so that GELU of a negative x keeps its tail.
fn erfc_pos(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.3275911 * z);
    let p = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    return p * exp(-z * z);
}

fn gelu(v: f32) -> f32 {
    let c = erfc_pos(abs(v) * 0.70710678118654752);
    // 1 + erf(v / sqrt 2)
    let one_plus = select(2.0 - c, c, v < 0.0);
    return 0.5 * v * one_plus;
}

fn apply(op: u32, v: f32) -> f32 {
    switch op {
        case 0u: { return v / (1.0 + exp(-v)); }
        case 1u: { return gelu(v); }
        case 2u: { return 0.5 * v * (1.0 + tanh_(0.7978845608028654 * (v + 0.044715 * v * v * v))); }
        case 3u: { return exp(v); }
        case 4u: { return -v; }
        case 5u: { return sqrt(v); }
        case 6u: { return tanh_(v); }
        case 7u: { return v * f32_at(3u) + f32_at(4u); }
        default: { return select(v, f32_at(3u), v > f32_at(3u)); }
    }
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let id = item(gid, nwg);
    if (id >= info[0]) {
        return;
    }
    let rank = info[1];
    y[id] = apply(info[2], x[strided(id, rank, 8u, 8u + rank)]);
}
