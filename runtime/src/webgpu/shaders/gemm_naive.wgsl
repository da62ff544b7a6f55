// The baseline: one thread per output element, the sum over k in order.
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let id = gid.x + gid.y * nwg.x * 64u;
    let m = info[0];
    let n = info[1];
    if (id >= m * n * info[3]) {
        return;
    }
    let col = id % n;
    let row = (id / n) % m;
    let base = bases(id / (m * n));
    var acc = 0.0;
    for (var kk = 0u; kk < info[2]; kk++) {
        acc += load_a(base.x, row, kk) * load_b(base.y, kk, col);
    }
    store_out(id, acc + bias_at(row, col));
}
