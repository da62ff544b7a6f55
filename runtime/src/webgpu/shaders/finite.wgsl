// Non-finite check of a strided f32 view, recorded on the device: a thread
// that finds a NaN or an infinity (all exponent bits set: tested on the bits,
// since WGSL lets a compiler assume floats are finite) lowers `flag` to this
// check's id, so the host reads one word at the end of a plan to learn the
// first check that failed.
// info: [count, rank, offset, id, shape[rank], strides[rank]]
@group(0) @binding(0) var<storage, read> info: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<u32>;
@group(0) @binding(2) var<storage, read_write> flag: array<atomic<u32>>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let id = gid.x + gid.y * nwg.x * 64u;
    if (id >= info[0]) {
        return;
    }
    let rank = info[1];
    var rem = id;
    var at = info[2];
    for (var k = rank; k > 0u; k--) {
        let a = k - 1u;
        let n = info[4u + a];
        at += (rem % n) * info[4u + rank + a];
        rem = rem / n;
    }
    if ((x[at] & 0x7f800000u) == 0x7f800000u) {
        atomicMin(&flag[0], info[3]);
    }
}
