// Normalisations over the last axis, one workgroup per row: partial sums
// per thread, then a tree in workgroup memory (a different order of f32
// additions than the reference's sequential loop: within 1e-5 relative for
// the rows we meet, see ops_tests.rs).
// info: [rows, d, lr, kind, eps, has_w, has_b, 0, lead shape[lr],
//        x offset, x lead strides[lr], x last stride, w offset, w stride, b offset, b stride]
// kind: 0 layer_norm, 1 rms_norm, 2 l2_normalize, 3 softmax
// Absent w or b are bound to x and never read.
@group(0) @binding(0) var<storage, read> info: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

var<workgroup> red: array<f32, WG>;

// The sum of every thread's `v`, the same in all of them.
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
    workgroupBarrier(); // before `red` is written again
    return r;
}

// The largest `v`, NaN if any is NaN (as the reference's softmax).
fn max_all(v: f32, lid: u32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            let p = red[lid];
            let q = red[lid + s];
            red[lid] = select(select(p, q, q > p), nan(), is_nan(p) || is_nan(q));
        }
        workgroupBarrier();
    }
    let r = workgroupUniformLoad(&red[0]);
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid3: vec3<u32>) {
    let row = group_row(wid, nwg);
    if (row >= info[0]) {
        return;
    }
    let lid = lid3.x;
    let d = info[1];
    let lr = info[2];
    let kind = info[3];
    let eps = f32_at(4u);
    let base = strided(row, lr, 8u, 8u + lr);
    let last = info[9u + 2u * lr];
    let wat = 10u + 2u * lr;
    let out = row * d;
    let n = f32(d);
    if (kind == 3u) {
        var m = neg_inf();
        for (var j = lid; j < d; j += WG) {
            let v = x[base + j * last];
            m = select(select(m, v, v > m), nan(), is_nan(v) || is_nan(m));
        }
        m = max_all(m, lid);
        var s = 0.0;
        for (var j = lid; j < d; j += WG) {
            let e = exp(x[base + j * last] - m);
            y[out + j] = e;
            s += e;
        }
        s = sum_all(s, lid);
        for (var j = lid; j < d; j += WG) {
            y[out + j] = y[out + j] / s;
        }
        return;
    }
    var mean = 0.0;
    if (kind == 0u) {
        var s = 0.0;
        for (var j = lid; j < d; j += WG) {
            s += x[base + j * last];
        }
        mean = sum_all(s, lid) / n;
    }
    var sq = 0.0;
    for (var j = lid; j < d; j += WG) {
        let v = x[base + j * last] - mean;
        sq += v * v;
    }
    sq = sum_all(sq, lid);
    // layer_norm, rms_norm: 1 / sqrt(var + eps); l2_normalize: 1 / max(norm, eps)
    let scale = 1.0 / sqrt(sq / n + eps);
    let norm = sqrt(sq);
    let denom = select(eps, norm, norm > eps);
    for (var j = lid; j < d; j += WG) {
        let v = x[base + j * last];
        var r: f32;
        if (kind == 2u) {
            r = v / denom;
        } else {
            r = (v - mean) * scale;
        }
        if (info[5] != 0u) {
            r *= w[info[wat] + j * info[wat + 1u]];
        }
        if (info[6] != 0u) {
            r += b[info[wat + 2u] + j * info[wat + 3u]];
        }
        y[out + j] = r;
    }
}
