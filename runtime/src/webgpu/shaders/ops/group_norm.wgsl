// GroupNorm of x[N, C, H, W], one workgroup per (sample, group): mean, then
// the biased variance around it (two passes, as the reference), eps inside
// the square root, then the per-channel affine. Tree sums: see rows.wgsl.
// info: [N * G, G, C / G, H, W, eps, C, 0, x offset, x strides[4], w offset, w stride, b offset, b stride]
@group(0) @binding(0) var<storage, read> info: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

var<workgroup> red: array<f32, WG>;

fn sum_all(v: f32, lid: u32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red[lid] += red[lid + s];
        }
        workgroupBarrier();
    }
    let r = workgroupUniformLoad(&red[0]);
    workgroupBarrier();
    return r;
}

// Storage index of element `e` of the group's block (channel-major).
fn at(n: u32, c0: u32, e: u32, hw: u32) -> u32 {
    let c = c0 + e / hw;
    let p = e % hw;
    return info[8] + n * info[9] + c * info[10] + (p / info[4]) * info[11] + (p % info[4]) * info[12];
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid3: vec3<u32>) {
    let gi = group_row(wid, nwg);
    if (gi >= info[0]) {
        return;
    }
    let lid = lid3.x;
    let n = gi / info[1];
    let c0 = (gi % info[1]) * info[2];
    let hw = info[3] * info[4];
    let len = info[2] * hw;
    let cnt = f32(len);
    var s = 0.0;
    for (var e = lid; e < len; e += WG) {
        s += x[at(n, c0, e, hw)];
    }
    let mean = sum_all(s, lid) / cnt;
    var sq = 0.0;
    for (var e = lid; e < len; e += WG) {
        let v = x[at(n, c0, e, hw)] - mean;
        sq += v * v;
    }
    let inv = 1.0 / sqrt(sum_all(sq, lid) / cnt + f32_at(5u));
    let out = (n * info[6] + c0) * hw;
    for (var e = lid; e < len; e += WG) {
        let c = c0 + e / hw;
        let v = (x[at(n, c0, e, hw)] - mean) * inv * w[info[13] + c * info[14]] + b[info[15] + c * info[16]];
        y[out + e] = v;
    }
}
