// NearestCode: for each row x[..., D] the index of the row of codes[V, D]
// at the smallest squared L2 distance, the first on ties, as
// reference::generate::nearest_code: each distance is summed in one thread
// in index order (the reference's order), codes are spread over the
// workgroup, and a NaN or infinite distance never wins (index 0 when none
// is finite, as the reference's `dist < best` from infinity).
// info: [rows, D, V, lr, codes offset, codes stride 0, codes stride 1, 0,
//        lead shape[lr], x offset, x lead strides[lr], x last stride]
@group(0) @binding(0) var<storage, read> info: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> codes: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<i32>;

var<workgroup> dist: array<f32, WG>;
var<workgroup> idx: array<u32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid3: vec3<u32>) {
    let row = group_row(wid, nwg);
    if (row >= info[0]) {
        return;
    }
    let lid = lid3.x;
    let d = info[1];
    let v = info[2];
    let lr = info[3];
    let base = strided(row, lr, 8u, 8u + lr);
    let last = info[9u + 2u * lr];
    var best = 0.0;
    var bi = 0xffffffffu;
    for (var k = lid; k < v; k += WG) {
        var s = 0.0;
        let c = info[4] + k * info[5];
        for (var j = 0u; j < d; j++) {
            let diff = x[base + j * last] - codes[c + j * info[6]];
            s += diff * diff;
        }
        // `best` is only compared once an index is held.
        if (is_finite(s) && (bi == 0xffffffffu || s < best)) {
            best = s;
            bi = k;
        }
    }
    dist[lid] = best;
    idx[lid] = bi;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            let oi = idx[lid + s];
            let od = dist[lid + s];
            let mi = idx[lid];
            if (oi != 0xffffffffu && (mi == 0xffffffffu || od < dist[lid] || (od == dist[lid] && oi < mi))) {
                dist[lid] = od;
                idx[lid] = oi;
            }
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        y[row] = select(i32(idx[0]), 0, idx[0] == 0xffffffffu);
    }
}
