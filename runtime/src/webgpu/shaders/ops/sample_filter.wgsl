// SampleTokens, first pass, one workgroup per row: temperature, top-k and
// top-p as reference::generate::filtered_weights, leaving in the row's
// scratch the weight of every token (exp(l / T - max), -1 for a dropped
// token). The pick pass (sample_pick.wgsl) then draws the token.
// The reference's f32 folds whose order decides the result (the total, the
// cumulative sum in descending order) run in one thread, in its order; the
// order-free parts (max, the k-th largest by radix selection, the sort by
// weight) are spread over the workgroup.
// Scratch row: [A: P words (top-p's sort space, P = V rounded up to a power of two),
//               B: V words (l = x / T), C: V words (the weights)].
// info: [rows, V, P, S (scratch words per row), lr, T offset, k offset, p offset,
//        lead shape[lr], logits offset, logits lead strides[lr], logits last stride]
@group(0) @binding(0) var<storage, read> info: array<u32>;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> temp: array<f32>;
@group(0) @binding(3) var<storage, read> topk: array<i32>;
@group(0) @binding(4) var<storage, read> topp: array<f32>;
@group(0) @binding(5) var<storage, read_write> sc: array<f32>;

var<workgroup> red: array<f32, WG>;

// Sort sc[base..base + n] in descending order (bitonic; n a power of two).
fn sort_desc(base: u32, n: u32, lid: u32) {
    for (var size = 2u; size <= n; size <<= 1u) {
        for (var stride = size >> 1u; stride > 0u; stride >>= 1u) {
            for (var i = lid; i < n / 2u; i += WG) {
                let lo = 2u * i - (i & (stride - 1u));
                let hi = lo + stride;
                let a = sc[base + lo];
                let b = sc[base + hi];
                // descending blocks where bit `size` of lo is clear: all of them at the end
                if ((a < b) == ((lo & size) == 0u)) {
                    sc[base + lo] = b;
                    sc[base + hi] = a;
                }
            }
            storageBarrier();
        }
    }
}

var<workgroup> hist: array<atomic<u32>, WG>;
var<workgroup> pick: u32;
var<workgroup> left: u32;
var<workgroup> count: atomic<u32>;

// f32 bits as a u32 in the order of the values (total_cmp's order).
fn key_of(x: f32) -> u32 {
    let u = bitcast<u32>(x);
    return select(u | 0x80000000u, ~u, (u & 0x80000000u) != 0u);
}

fn value_of(key: u32) -> f32 {
    return bitcast<f32>(select(~key, key & 0x7fffffffu, (key & 0x80000000u) != 0u));
}

// The k-th largest of sc[base..base + n] (1 <= k <= n), by radix selection
// on the keys, 8 bits a pass from the top: exact, and no sort.
fn kth_largest(base: u32, n: u32, k: u32, lid: u32) -> f32 {
    var prefix = 0u;
    var mask = 0u;
    var rest = k; // how many of the keys matching `prefix` lie at or above the answer
    for (var shift = 24i; shift >= 0; shift -= 8) {
        atomicStore(&hist[lid], 0u);
        workgroupBarrier();
        for (var j = lid; j < n; j += WG) {
            let key = key_of(sc[base + j]);
            if ((key & mask) == prefix) {
                atomicAdd(&hist[(key >> u32(shift)) & 255u], 1u);
            }
        }
        workgroupBarrier();
        if (lid == 0u) {
            // the digit of the answer: walk the bins from the largest
            var bin = 255u;
            loop {
                let c = atomicLoad(&hist[bin]);
                if (c >= rest || bin == 0u) {
                    break;
                }
                rest -= c;
                bin--;
            }
            pick = bin;
            left = rest;
        }
        let digit = workgroupUniformLoad(&pick);
        rest = workgroupUniformLoad(&left);
        prefix |= digit << u32(shift);
        mask |= 255u << u32(shift);
    }
    return value_of(prefix);
}

// Tokens sorted first by top-p before all of them (see main).
const PRE: u32 = 1024u;

// Where top-p's walk ended (thread 0's): the weight of the last token taken
// (-1 when the prefix never reached top_p), and how many of that weight.
var<private> cut: f32;
var<private> ties: u32;

// Copy the positive weights of sc[w..w + v] at or above `theta` to
// sc[dst..] (in any order: they are sorted next); how many.
fn gather(w: u32, v: u32, dst: u32, theta: f32, lid: u32) -> u32 {
    if (lid == 0u) {
        atomicStore(&count, 0u);
    }
    workgroupBarrier();
    for (var j = lid; j < v; j += WG) {
        let wt = sc[w + j];
        if (wt > 0.0 && wt >= theta) {
            sc[dst + atomicAdd(&count, 1u)] = wt;
        }
    }
    storageBarrier();
    workgroupBarrier();
    if (lid == 0u) {
        left = atomicLoad(&count);
    }
    return workgroupUniformLoad(&left);
}

// Sort sc[a..a + n] descending, padded with -1 to a power of two.
fn sort_padded(a: u32, n: u32, lid: u32) {
    var n2 = 1u;
    if (n > 1u) {
        n2 = 1u << (32u - countLeadingZeros(n - 1u));
    }
    for (var j = n + lid; j < n2; j += WG) {
        sc[a + j] = -1.0;
    }
    storageBarrier();
    sort_desc(a, n2, lid);
}

// Thread 0: the cumulative probabilities down sc[a..a + n] (sorted) in the
// reference's order, until they reach top_p.
fn walk(a: u32, n: u32, total: f32, top_p: f32) {
    var cum = 0.0;
    cut = -1.0;
    ties = 0u;
    for (var r = 0u; r < n; r++) {
        let wt = sc[a + r];
        cum += wt / total;
        if (cum >= top_p) {
            cut = wt;
            var first = r;
            while (first > 0u && sc[a + first - 1u] == wt) {
                first--;
            }
            ties = r - first + 1u;
            return;
        }
    }
}

fn max_all(v: f32, lid: u32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) {
            red[lid] = max(red[lid], red[lid + s]);
        }
        workgroupBarrier();
    }
    let r = workgroupUniformLoad(&red[0]);
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_id) lid3: vec3<u32>) {
    let row = group_row(wid, nwg);
    if (row >= info[0]) {
        return;
    }
    let lid = lid3.x;
    let temperature = temp[info[5]];
    let k = topk[info[6]];
    let top_p = topp[info[7]];
    // Bad settings and greedy rows are the pick pass's alone.
    if (!(temperature > 0.0 && is_finite(temperature)) || k < 0 || !(top_p > 0.0) || k == 1) {
        return;
    }
    let v = info[1];
    let p2 = info[2];
    let a = row * info[3];
    let b = a + p2;
    let c = b + v;
    let lr = info[4];
    let base = strided(row, lr, 8u, 8u + lr);
    let last = info[9u + 2u * lr];
    for (var j = lid; j < v; j += WG) {
        sc[b + j] = logits[base + j * last] / temperature;
    }
    storageBarrier();
    // top-k: keep l >= the k-th largest (ties at it all kept)
    var kth = neg_inf();
    let uk = u32(k);
    if (uk > 0u && uk < v) {
        kth = kth_largest(b, v, uk, lid);
    }
    var m = neg_inf();
    for (var j = lid; j < v; j += WG) {
        let l = sc[b + j];
        if (l >= kth && l > m) {
            m = l;
        }
    }
    m = max_all(m, lid);
    if (lid == 0u) {
        atomicStore(&count, 0u);
    }
    workgroupBarrier();
    for (var j = lid; j < v; j += WG) {
        var wt = -1.0;
        let l = sc[b + j];
        if (l >= kth) {
            wt = exp(l - m);
        }
        sc[c + j] = wt;
        // Only positive weights go to top-p's sort: a zero adds nothing to
        // the cumulative sum, so the prefix never ends on one.
        if (wt > 0.0) {
            sc[a + atomicAdd(&count, 1u)] = wt;
        }
    }
    storageBarrier();
    workgroupBarrier(); // `count` is workgroup memory
    if (!(top_p < 1.0)) {
        return;
    }
    // top-p: the smallest prefix of the kept tokens by descending weight
    // (ties by index) whose probabilities reach top_p. Zero weights are left
    // out, and when more than PRE remain only those at or above the PRE-th
    // largest are sorted first: they precede all others in the descending
    // order, so a prefix that ends among them is the whole walk's. Only when
    // it does not are all of them sorted.
    var total = 0.0;
    if (lid == 0u) {
        for (var j = 0u; j < v; j++) {
            total += max(sc[c + j], 0.0);
        }
        pick = atomicLoad(&count);
    }
    let nk = workgroupUniformLoad(&pick);
    var n = nk;
    if (nk > PRE) {
        let theta = kth_largest(a, nk, PRE, lid);
        n = gather(c, v, a, theta, lid);
    }
    sort_padded(a, n, lid);
    if (lid == 0u) {
        walk(a, n, total, top_p);
        pick = select(0u, 1u, cut >= 0.0);
    }
    let reached = workgroupUniformLoad(&pick) != 0u;
    if (n < nk && !reached) {
        gather(c, v, a, 0.0, lid);
        sort_padded(a, nk, lid);
        if (lid == 0u) {
            walk(a, nk, total, top_p);
        }
    }
    if (lid == 0u) {
        if (cut >= 0.0) {
            var mk = neg_inf();
            for (var j = 0u; j < v; j++) {
                let wt = sc[c + j];
                var keep = wt > cut;
                if (wt == cut && ties > 0u) {
                    keep = true;
                    ties--;
                }
                if (!keep) {
                    sc[c + j] = -1.0;
                } else if (sc[b + j] > mk) {
                    mk = sc[b + j];
                }
            }
            // The reference re-takes the max over the tokens kept; it moves
            // only when the cut falls among tokens whose weight rounds to 1.
            if (mk != m) {
                for (var j = 0u; j < v; j++) {
                    if (sc[c + j] >= 0.0) {
                        sc[c + j] = exp(sc[b + j] - mk);
                    }
                }
            }
        }
    }
}
