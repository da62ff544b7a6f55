// GEMV for one or two rows (decode steps, bandwidth-bound): a workgroup of 64
// threads computes 4 output columns of both rows; the threads stride over k,
// so they read each of the 4 weight rows once and together (coalesced when
// B's k is contiguous), then the 64 partial sums are added as a tree.
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
    for (var s = 32u; s > 0u; s = s / 2u) {
        if (li < s) {
            part[li] += part[li + s];
            part[64u + li] += part[64u + li + s];
        }
        workgroupBarrier();
    }
    let row = li / COLS;
    let col = col0 + li % COLS;
    if (li < 2u * COLS && row < m && col < n) {
        out[bat * m * n + row * n + col] = part[row * 64u][li % COLS] + bias_at(row, col);
    }
}
