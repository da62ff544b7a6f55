// SampleTokens, second pass, one thread per row: the checks of
// reference::generate::sample_tokens, then greedy (top_k = 1: the first
// maximum of the raw logits) or inverse-CDF sampling over the weights the
// filter pass left: the first kept token whose cumulative probability, in
// index order, exceeds the row's uniform u, else the last kept one. The
// reference stops with an error on bad settings, u outside [0, 1], NaN logits
// or a row of -inf; a kernel cannot, so the token is -1 (the embedding of
// which is a NaN row).
// info: [rows, V, S, lr, T offset, k offset, p offset, 0, lead shape[lr],
//        logits offset, logits lead strides[lr], logits last stride, u offset, u strides[lr]]
@group(0) @binding(0) var<storage, read> info: array<u32>;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> uni: array<f32>;
@group(0) @binding(3) var<storage, read> temp: array<f32>;
@group(0) @binding(4) var<storage, read> topk: array<i32>;
@group(0) @binding(5) var<storage, read> topp: array<f32>;
@group(0) @binding(6) var<storage, read> sc: array<f32>;
@group(0) @binding(7) var<storage, read_write> y: array<i32>;

fn pick(row: u32) -> i32 {
    let temperature = temp[info[4]];
    let k = topk[info[5]];
    let top_p = topp[info[6]];
    if (!(temperature > 0.0 && is_finite(temperature)) || k < 0 || !(top_p > 0.0)) {
        return -1;
    }
    let v = info[1];
    let lr = info[3];
    let base = strided(row, lr, 8u, 8u + lr);
    let last = info[9u + 2u * lr];
    let u = uni[strided(row, lr, 8u, 10u + 2u * lr)];
    if (!(u >= 0.0 && u <= 1.0)) {
        return -1;
    }
    var all_neg_inf = true;
    var best = 0u;
    for (var j = 0u; j < v; j++) {
        let x = logits[base + j * last];
        if (is_nan(x)) {
            return -1;
        }
        if (x != neg_inf()) {
            all_neg_inf = false;
        }
        if (x > logits[base + best * last]) {
            best = j;
        }
    }
    if (all_neg_inf) {
        return -1;
    }
    if (k == 1) {
        return i32(best);
    }
    let c = row * info[2] + info[2] - v; // C, the last V words of the row
    var total = 0.0;
    for (var j = 0u; j < v; j++) {
        total += max(sc[c + j], 0.0);
    }
    var cum = 0.0;
    var chosen = 0u;
    for (var j = 0u; j < v; j++) {
        let wt = sc[c + j];
        if (wt > 0.0) {
            cum += wt / total;
            chosen = j;
            if (u < cum) {
                break;
            }
        }
    }
    return i32(chosen);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let id = item(gid, nwg);
    if (id >= info[0]) {
        return;
    }
    y[id] = pick(id);
}
