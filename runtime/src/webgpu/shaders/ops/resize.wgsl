// Resize x[N, C, H, W] to [N, C, h, w]. The taps of every output row and
// column come from the host (kernels/resize.rs, through the reference's own
// tap functions), so indices and weights are the reference's bit for bit;
// the kernel sums them in the reference's order.
// info: [count, C, h, w, mode, x offset, x strides[4], ytab, xtab, 0, 0, tables...]
// a tap entry is 8 words: nearest [i], bilinear [i0, i1, w0, w1],
// bicubic [i0..i3, w0..w3], area [start, end]
// mode: 0 nearest, 1 bilinear, 2 bicubic, 3 area
@group(0) @binding(0) var<storage, read> info: array<u32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

var<private> plane: u32;

fn at(r: u32, c: u32) -> f32 {
    return x[plane + r * info[8] + c * info[9]];
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let id = item(gid, nwg);
    if (id >= info[0]) {
        return;
    }
    let h = info[2];
    let w = info[3];
    let ox = id % w;
    let oy = (id / w) % h;
    let p = id / (w * h);
    plane = info[5] + (p / info[1]) * info[6] + (p % info[1]) * info[7];
    let ty = info[10] + oy * 8u;
    let tx = info[11] + ox * 8u;
    switch info[4] {
        case 0u: {
            y[id] = at(info[ty], info[tx]);
        }
        case 1u: {
            let wy0 = f32_at(ty + 2u);
            let wy1 = f32_at(ty + 3u);
            let wx0 = f32_at(tx + 2u);
            let wx1 = f32_at(tx + 3u);
            let y0 = info[ty];
            let y1 = info[ty + 1u];
            let x0 = info[tx];
            let x1 = info[tx + 1u];
            y[id] = wy0 * (wx0 * at(y0, x0) + wx1 * at(y0, x1)) + wy1 * (wx0 * at(y1, x0) + wx1 * at(y1, x1));
        }
        case 2u: {
            var acc = 0.0;
            for (var k = 0u; k < 4u; k++) {
                var row = 0.0;
                for (var j = 0u; j < 4u; j++) {
                    row += at(info[ty + k], info[tx + j]) * f32_at(tx + 4u + j);
                }
                acc += row * f32_at(ty + 4u + k);
            }
            y[id] = acc;
        }
        default: {
            let y0 = info[ty];
            let y1 = info[ty + 1u];
            let x0 = info[tx];
            let x1 = info[tx + 1u];
            var s = 0.0;
            for (var r = y0; r < y1; r++) {
                for (var c = x0; c < x1; c++) {
                    s += at(r, c);
                }
            }
            y[id] = s / f32(y1 - y0) / f32(x1 - x0);
        }
    }
}
