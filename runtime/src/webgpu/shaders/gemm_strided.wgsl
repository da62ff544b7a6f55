// GEMM operands as strided views (Linear, MatMul): A(r, k) = a[base + r * rs + k * ks],
// B(k, c) = b[base + k * ks + c * cs]; batch indices broadcast through zero strides.
// info[8..]: [a_off, a_rs, a_ks, b_off, b_ks, b_cs, rank, shape[rank], a_bs[rank], b_bs[rank]]

// The first elements of batch `bat` in A and in B.
fn bases(bat: u32) -> vec2<u32> {
    let r = info[14];
    var rem = bat;
    var pa = info[8];
    var pb = info[11];
    for (var i = r; i > 0u; i--) {
        let ax = i - 1u;
        let d = info[15u + ax];
        let j = rem % d;
        rem = rem / d;
        pa += j * info[15u + r + ax];
        pb += j * info[15u + 2u * r + ax];
    }
    return vec2<u32>(pa, pb);
}

fn load_a(base: u32, row: u32, kk: u32) -> f32 {
    return a[base + row * info[9] + kk * info[10]];
}

fn load_b(base: u32, kk: u32, col: u32) -> f32 {
    return b[base + kk * info[12] + col * info[13]];
}
