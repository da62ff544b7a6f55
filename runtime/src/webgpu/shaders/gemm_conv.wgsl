// Conv2d as an implicit GEMM per image: A = the weight [O, C*k*k] (row o,
// column (c, ky, kx)), B = the input's patches [C*k*k, OH*OW] gathered on
// the fly (no im2col buffer); taps in the zero padding read 0.
// info[8..]: [ksize, stride, pad, H, W, OW, w_off, w_s[4], x_off, x_s[4]]

fn bases(bat: u32) -> vec2<u32> {
    return vec2<u32>(info[14], info[19] + bat * info[20]);
}

fn load_a(base: u32, row: u32, kk: u32) -> f32 {
    let ks = info[8];
    let c = kk / (ks * ks);
    let t = kk % (ks * ks);
    return a[base + row * info[15] + c * info[16] + (t / ks) * info[17] + (t % ks) * info[18]];
}

fn load_b(base: u32, kk: u32, col: u32) -> f32 {
    let ks = info[8];
    let c = kk / (ks * ks);
    let t = kk % (ks * ks);
    let iy = i32((col / info[13]) * info[9] + t / ks) - i32(info[10]);
    let ix = i32((col % info[13]) * info[9] + t % ks) - i32(info[10]);
    if (iy < 0 || ix < 0 || iy >= i32(info[11]) || ix >= i32(info[12])) {
        return 0.0;
    }
    return b[base + c * info[21] + u32(iy) * info[22] + u32(ix) * info[23]];
}
