// Rope: rotate the interleaved pairs (x[.., t, 2i], x[.., t, 2i+1]) of
// x[..., T, d] by cos[t, i], sin[t, i]: (x0 c - x1 s, x1 c + x0 s). One
// thread per pair.
// info: [pairs, r, T, half, 0, 0, 0, 0, x shape[r - 1] (the last axis left out),
//        x offset, x strides[r - 1], x last stride,
//        cos offset, cos strides[2], sin offset, sin strides[2]]
@group(0) @binding(0) var<storage, read> info: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> cs: array<f32>;
@group(0) @binding(3) var<storage, read> sn: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let id = item(gid, nwg);
    if (id >= info[0]) {
        return;
    }
    let lr = info[1] - 1u; // the axes before the last
    let half = info[3];
    let i = id % half;
    let rest = id / half; // row of x over the axes before the last
    let t = rest % info[2];
    let base = strided(rest, lr, 8u, 8u + lr);
    let last = info[9u + 2u * lr];
    let x0 = x[base + 2u * i * last];
    let x1 = x[base + (2u * i + 1u) * last];
    let at = 10u + 2u * lr;
    let c = cs[info[at] + t * info[at + 1u] + i * info[at + 2u]];
    let s = sn[info[at + 3u] + t * info[at + 4u] + i * info[at + 5u]];
    let o = rest * 2u * half + 2u * i;
    y[o] = x0 * c - x1 * s;
    y[o + 1u] = x1 * c + x0 * s;
}
