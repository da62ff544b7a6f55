// GEMV for one or two rows (decode steps, bandwidth-bound): a workgroup of 64
// threads computes 4 output columns of both rows; the threads stride over k,
// so they read each of the 4 weight rows once and together (coalesced when
// B's k is contiguous), then 8 threads add the 64 partial sums.
const COLS: u32 = 4u;

// [row][thread]: partial sums of the 4 columns.
var<workgroup> part: array<vec4<f32>, 128>;

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let m = info[0];
    let n = info[1];
    let k = info[2];
    let bat = wid.z;
    let col0 = (wid.x + wid.y * nwg.x) * COLS;
    let base = bases(bat);
    var s0 = vec4<f32>(0.0);
    var s1 = vec4<f32>(0.0);
    if (col0 < n) {
        for (var kk = li; kk < k; kk += 64u) {
            var w = vec4<f32>(0.0);
            for (var j = 0u; j < COLS; j++) {
                if (col0 + j < n) {
                    w[j] = load_b(base.y, kk, col0 + j);
                }
            }
            s0 += load_a(base.x, 0u, kk) * w;
            if (m > 1u) {
                s1 += load_a(base.x, 1u, kk) * w;
            }
        }
    }
    part[li] = s0;
    part[64u + li] = s1;
    workgroupBarrier();
    // One barrier, then 8 threads add 64 partial sums each: a tree's 6 more
    // barriers cost more than these reads (on software adapters above all).
    let row = li / COLS;
    let j = li % COLS;
    let col = col0 + j;
    if (li < 2u * COLS && row < m && col < n) {
        var sum = 0.0;
        for (var x = 0u; x < 64u; x++) {
            sum += part[row * 64u + x][j];
        }
        store_out(bat * m * n + row * n + col, sum + bias_at(row, col));
    }
}
