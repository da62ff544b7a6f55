// Tiled GEMM: a 16x16 workgroup computes a 64x64 tile of one batch's output,
// each thread a 4x4 block held in four vec4 accumulators. A and B pass through
// workgroup memory 16 k-steps at a time, stored k-major as vec4s so the inner
// step is two vec4 loads and four vec4 multiply-adds. Each thread loads one
// vec4 of each tile, consecutive threads along whichever axis of the operand
// is contiguous (info[7]).
const TM: u32 = 64u;
const TN: u32 = 64u;
const TK: u32 = 16u;

// [TK][TM / 4] and [TK][TN / 4].
var<workgroup> sa: array<vec4<f32>, 256>;
var<workgroup> sb: array<vec4<f32>, 256>;

@compute @workgroup_size(16, 16)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let m = info[0];
    let n = info[1];
    let k = info[2];
    let bat = wid.z;
    let base = bases(bat);
    let row0 = wid.y * TM;
    let col0 = wid.x * TN;
    let a_k_inner = (info[7] & 1u) != 0u;
    let b_n_inner = (info[7] & 2u) != 0u;
    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < k; k0 += TK) {
        // Each thread fills one vec4 of each tile: 4 rows (columns) at one k.
        var ka = li % TK;
        var r = (li / TK) * 4u;
        if (!a_k_inner) {
            ka = li / TK;
            r = (li % TK) * 4u;
        }
        var x = vec4<f32>(0.0);
        if (k0 + ka < k) {
            for (var j = 0u; j < 4u; j++) {
                if (row0 + r + j < m) {
                    x[j] = load_a(base.x, row0 + r + j, k0 + ka);
                }
            }
        }
        sa[ka * 16u + r / 4u] = x;
        var kb = li / TK;
        var c = (li % TK) * 4u;
        if (!b_n_inner) {
            kb = li % TK;
            c = (li / TK) * 4u;
        }
        var y = vec4<f32>(0.0);
        if (k0 + kb < k) {
            for (var j = 0u; j < 4u; j++) {
                if (col0 + c + j < n) {
                    y[j] = load_b(base.y, k0 + kb, col0 + c + j);
                }
            }
        }
        sb[kb * 16u + c / 4u] = y;
        workgroupBarrier();
        for (var kk = 0u; kk < TK; kk++) {
            let av = sa[kk * 16u + lid.y];
            let bv = sb[kk * 16u + lid.x];
            acc[0] += av.x * bv;
            acc[1] += av.y * bv;
            acc[2] += av.z * bv;
            acc[3] += av.w * bv;
        }
        workgroupBarrier();
    }
    let o = bat * m * n;
    for (var i = 0u; i < 4u; i++) {
        let row = row0 + lid.y * 4u + i;
        for (var j = 0u; j < 4u; j++) {
            let col = col0 + lid.x * 4u + j;
            if (row < m && col < n) {
                store_out(o + row * n + col, acc[i][j] + bias_at(row, col));
            }
        }
    }
}
