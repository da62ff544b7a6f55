// Strided copy of 32-bit words (f32 or i32 alike): element i of the view
// `src` goes to element i of the view `dst` (same shape).
// info: [count, rank, src_offset, dst_offset, shape[rank], src_strides[rank], dst_strides[rank]]
@group(0) @binding(0) var<storage, read> info: array<u32>;
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let id = gid.x + gid.y * nwg.x * 64u;
    if (id >= info[0]) {
        return;
    }
    let rank = info[1];
    var rem = id;
    var s = info[2];
    var d = info[3];
    for (var k = rank; k > 0u; k--) {
        let a = k - 1u;
        let n = info[4u + a];
        let i = rem % n;
        rem = rem / n;
        s += i * info[4u + rank + a];
        d += i * info[4u + 2u * rank + a];
    }
    dst[d] = src[s];
}
