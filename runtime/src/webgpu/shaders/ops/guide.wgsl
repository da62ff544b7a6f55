// Classifier-free guidance u + s (c - u) on the first `ch` entries of the
// last axis (all when ch = 0xffffffff), c elsewhere; s a scalar on the device.
// info: [count, rank, d, ch, s offset, 0, 0, 0, shape[rank], c offset, c strides[rank], u offset, u strides[rank]]
@group(0) @binding(0) var<storage, read> info: array<u32>;
@group(0) @binding(1) var<storage, read> c: array<f32>;
@group(0) @binding(2) var<storage, read> u: array<f32>;
@group(0) @binding(3) var<storage, read> s: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let id = item(gid, nwg);
    if (id >= info[0]) {
        return;
    }
    let rank = info[1];
    let cc = c[strided(id, rank, 8u, 8u + rank)];
    if (info[3] != 0xffffffffu && id % info[2] >= info[3]) {
        y[id] = cc;
        return;
    }
    let uu = u[strided(id, rank, 8u, 9u + 2u * rank)];
    y[id] = uu + s[info[4]] * (cc - uu);
}
