// Flash-style attention: one workgroup of 64 threads per query row (all
// batches and heads), an online softmax over tiles of 64 keys, so scores are
// never stored. Each thread scores one key of the tile, the tile's maximum
// rescales the running sums, then each thread accumulates up to 4 output
// channels (c = thread + 64 i, so e <= 256; d <= 256 for the query in
// workgroup memory). q, k, v and levels are read through their views: a KV
// cache in place, only its first `keys` rows.
// info: [rows, T, d, e, keys, first query position, mask (0 full, 1 causal,
//        2 block_causal, 3 earlier_plus_self), scale (f32 bits),
//        q_off, q_ts, q_cs, k_off, k_ss, k_cs, v_off, v_ss, v_cs, lv_off, lv_s,
//        rank, shape[rank], q_bs[rank], k_bs[rank], v_bs[rank]]
@group(0) @binding(0) var<storage, read> info: array<u32>;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
// i64 levels as i32 words; another read operand when the mask needs none.
@group(0) @binding(4) var<storage, read> levels: array<i32>;
// The result goes out through `store_out(flat index, value)`, the store hook
// appended after the kernel (ecarc_compiler::codegen::epilogue; its bindings
// start at 5).

const TILE: u32 = 64u;
// Below every real score: "nothing seen yet" without an infinity literal.
const LOWEST: f32 = -3.402823e38;

var<workgroup> sq: array<f32, 256>;
var<workgroup> ss: array<f32, 64>;
// Weights of the tile's keys; -1 marks a key the mask hides.
var<workgroup> sp: array<f32, 64>;

fn level(p: u32) -> i32 {
    return levels[info[17] + p * info[18]];
}

fn allows(mask: u32, qpos: u32, kpos: u32, lq: i32) -> bool {
    switch mask {
        case 1u: { return kpos <= qpos; }
        case 2u: { return level(kpos) <= lq; }
        case 3u: { return kpos == qpos || level(kpos) < lq; }
        default: { return true; }
    }
}

@compute @workgroup_size(64)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) li: u32,
) {
    let row = wid.x + wid.y * nwg.x;
    // Workgroups past the last row still meet every barrier.
    let live = row < info[0];
    let t = info[1];
    let d = info[2];
    let e = info[3];
    let mask = info[6];
    let bh = row / t;
    let i = row % t;
    let r = info[19];
    var rem = bh;
    var qb = info[8];
    var kb = info[11];
    var vb = info[14];
    for (var x = r; x > 0u; x--) {
        let ax = x - 1u;
        let n = info[20u + ax];
        let j = rem % n;
        rem = rem / n;
        qb += j * info[20u + r + ax];
        kb += j * info[20u + 2u * r + ax];
        vb += j * info[20u + 3u * r + ax];
    }
    let pos = info[5] + i;
    var lq = 0;
    if (live && mask >= 2u) {
        lq = level(pos);
    }
    let scale = bitcast<f32>(info[7]);
    for (var c = li; c < d; c += TILE) {
        if (live) {
            sq[c] = q[qb + i * info[9] + c * info[10]] * scale;
        }
    }
    workgroupBarrier();
    var hi = info[4];
    if (mask == 1u) {
        hi = min(pos + 1u, hi);
    }
    var m = LOWEST;
    var l = 0.0;
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);
    for (var lo = 0u; lo < hi; lo += TILE) {
        let j = lo + li;
        let ok = live && j < hi && allows(mask, pos, j, lq);
        var s = LOWEST;
        if (ok) {
            var dot = 0.0;
            let k0 = kb + j * info[12];
            for (var c = 0u; c < d; c++) {
                dot += sq[c] * k[k0 + c * info[13]];
            }
            s = dot;
        }
        ss[li] = s;
        workgroupBarrier();
        var tmax = LOWEST;
        for (var x = 0u; x < TILE; x++) {
            tmax = max(tmax, ss[x]);
        }
        let m_new = max(m, tmax);
        let corr = exp(m - m_new);
        sp[li] = select(-1.0, exp(s - m_new), ok);
        workgroupBarrier();
        l *= corr;
        for (var y = 0u; y < 4u; y++) {
            acc[y] *= corr;
        }
        let n = min(TILE, hi - lo);
        for (var x = 0u; x < n; x++) {
            let p = sp[x];
            if (p < 0.0) {
                continue;
            }
            l += p;
            let v0 = vb + (lo + x) * info[15];
            for (var y = 0u; y < 4u; y++) {
                let c = li + y * TILE;
                if (c < e) {
                    acc[y] += p * v[v0 + c * info[16]];
                }
            }
        }
        m = m_new;
    }
    if (live) {
        for (var y = 0u; y < 4u; y++) {
            let c = li + y * TILE;
            if (c < e) {
                store_out(row * e + c, select(0.0, acc[y] / l, l > 0.0));
            }
        }
    }
}
