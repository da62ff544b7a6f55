// Sinusoid: [N, dim] of cos(t f_k) then sin(t f_k), k < half, a zero column
// when dim is odd. The frequencies f_k come from the host, computed as the
// reference does (in f32), so t f_k is the reference's argument bit for bit;
// cos and sin then use our own range reduction, since WGSL's are only
// specified on [-pi, pi] and timesteps reach 1000 radians.
// info: [count, dim, half, t offset, t stride, 0, 0, 0, f[half] (f32 bits)]
@group(0) @binding(0) var<storage, read> info: array<u32>;
@group(0) @binding(1) var<storage, read> t: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

// (cos a, sin a): a = q pi/2 + r with pi/2 split in three parts (the first
// two short enough that q * part is exact for q < 2^15, i.e. |a| < 5e4),
// then Taylor polynomials on |r| <= pi/4 (truncation below 2e-9).
fn cos_sin(a: f32) -> vec2<f32> {
    let q = round(a * 0.63661977236758134);
    let r = ((a - q * 1.5703125) - q * 0.00048351287841796875) - q * 3.1391647326017846e-07;
    let z = r * r;
    let s = r * (1.0 + z * (-1.0 / 6.0 + z * (1.0 / 120.0 + z * (-1.0 / 5040.0 + z * (1.0 / 362880.0)))));
    let c = 1.0 + z * (-0.5 + z * (1.0 / 24.0 + z * (-1.0 / 720.0 + z * (1.0 / 40320.0 + z * (-1.0 / 3628800.0)))));
    // the quadrant: q mod 4, also for negative q
    let n = u32(i32(q) & 3);
    switch n {
        case 0u: { return vec2<f32>(c, s); }
        case 1u: { return vec2<f32>(-s, c); }
        case 2u: { return vec2<f32>(-c, -s); }
        default: { return vec2<f32>(s, -c); }
    }
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let id = item(gid, nwg);
    if (id >= info[0]) {
        return;
    }
    let dim = info[1];
    let half = info[2];
    let n = id / dim;
    let j = id % dim;
    if (j >= 2u * half) {
        y[id] = 0.0;
        return;
    }
    let k = j % half;
    let a = t[info[3] + n * info[4]] * f32_at(8u + k);
    if (!is_finite(a)) {
        y[id] = nan(); // cos and sin of inf or NaN
        return;
    }
    let cs = cos_sin(a);
    y[id] = select(cs.y, cs.x, j < half);
}
