// Embedding: rows of table[V, D] at ids[...] (i64 held as i32 words). An id
// outside 0..V gives a row of NaN: the reference stops with an error, which a
// kernel cannot do without a read-back mid-sample; NaN reaches the image and
// the driver's non-finite check names it.
// info: [count, r, V, D, table offset, table stride 0, table stride 1, 0,
//        ids shape[r], ids offset, ids strides[r]]
@group(0) @binding(0) var<storage, read> info: array<u32>;
@group(0) @binding(1) var<storage, read> table: array<f32>;
@group(0) @binding(2) var<storage, read> ids: array<i32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let id = item(gid, nwg);
    if (id >= info[0]) {
        return;
    }
    let r = info[1];
    let pos = id / info[3];
    let j = id % info[3];
    let t = ids[strided(pos, r, 8u, 8u + r)];
    if (t < 0 || u32(t) >= info[2]) {
        y[id] = nan();
        return;
    }
    y[id] = table[info[4] + u32(t) * info[5] + j * info[6]];
}
