// ArgMax over the last axis, one workgroup per row: the first index of the
// largest value, NaN never winning (index 0 when all are NaN), as
// reference::norm::argmax_row. "Better" is a total order (non-NaN first,
// larger value, smaller index), so the tree's result does not depend on its
// shape.
// info: [rows, d, lr, 0, 0, 0, 0, 0, lead shape[lr], x offset, x lead strides[lr], x last stride]
@group(0) @binding(0) var<storage, read> info: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<i32>;

var<workgroup> val: array<f32, WG>;
var<workgroup> idx: array<u32, WG>;

fn better(v: f32, i: u32, bv: f32, bi: u32) -> bool {
    let vn = is_nan(v);
    let bn = is_nan(bv);
    if (vn != bn) {
        return bn;
    }
    if (!vn && v != bv) {
        return v > bv;
    }
    return i < bi;
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
    let base = strided(row, lr, 8u, 8u + lr);
    let last = info[9u + 2u * lr];
    var bv = nan();
    var bi = 0xffffffffu;
    for (var j = lid; j < d; j += WG) {
        let v = x[base + j * last];
        if (better(v, j, bv, bi)) {
            bv = v;
            bi = j;
        }
    }
    val[lid] = bv;
    idx[lid] = bi;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s && better(val[lid + s], idx[lid + s], val[lid], idx[lid])) {
            val[lid] = val[lid + s];
            idx[lid] = idx[lid + s];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        y[row] = i32(idx[0]);
    }
}
