// Helpers shared by the op kernels (kernels/ops.rs prepends this file to
// each of them). Every kernel declares `info: array<u32>` at binding 0; a
// view is described in `info` by its offset and strides next to a shape.

const WG: u32 = 256u; // threads of a row kernel's workgroup

// The storage index of the element at row-major position `id` of a view of
// shape `info[shape_at..shape_at + rank]` whose offset and strides are
// `info[view_at]`, `info[view_at + 1..view_at + 1 + rank]`.
fn strided(id: u32, rank: u32, shape_at: u32, view_at: u32) -> u32 {
    var rem = id;
    var s = info[view_at];
    for (var k = rank; k > 0u; k--) {
        let a = k - 1u;
        let n = info[shape_at + a];
        s += (rem % n) * info[view_at + 1u + a];
        rem = rem / n;
    }
    return s;
}

// The item of a one-thread-per-item dispatch (record.rs: Grid::Items).
fn item(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 64u;
}

// The row of a workgroup-per-row dispatch spread over x and y.
fn group_row(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.x + wid.y * nwg.x;
}

// By the bits: a compiler may assume `x != x` is false.
fn is_nan(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;
}

fn is_finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7fffffffu) < 0x7f800000u;
}

// NaN and -inf are not constant expressions in WGSL: made at run time.
fn nan() -> f32 {
    var b = 0x7fc00000u;
    return bitcast<f32>(b);
}

fn neg_inf() -> f32 {
    var b = 0xff800000u;
    return bitcast<f32>(b);
}

fn f32_at(i: u32) -> f32 {
    return bitcast<f32>(info[i]);
}
