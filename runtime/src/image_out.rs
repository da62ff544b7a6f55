//! Images out: a float image batch `[N, 3, H, W]` in `[0, 1]` (what the
//! tokenizer decoders produce) as one PNG grid.
//!
//! - **Pixel values**: [`to_u8`] maps `x` to `(x * 255).round().clamp(0, 255)`,
//!   rounding half away from zero (`0.5 -> 128`), so values outside `[0, 1]`
//!   saturate (the decoders already clamp; this clamps anyway), `+inf -> 255`,
//!   `-inf -> 0` and NaN -> 0.
//! - **Layout** ([`grid_shape`]): images in row-major order, `ceil(sqrt(N))`
//!   per row, as many rows as needed; [`GAP`] pixels of [`GAP_VALUE`] (white)
//!   between neighbouring images and in the empty cells of the last row; no
//!   border. One image gives exactly that image.
//! - **Files**: 8-bit RGB PNG, written to a temporary file beside the target
//!   and renamed over it once complete (no partial files).

use crate::error::{Result, RuntimeError};
use crate::tensor::HostTensor;
use image::{ImageEncoder, RgbImage};
use std::io::Write;
use std::path::Path;

/// Pixels between neighbouring images of a grid.
pub const GAP: usize = 2;
/// The value of the gap pixels and of empty cells (white).
pub const GAP_VALUE: u8 = 255;

/// A value in `[0, 1]` as an 8-bit channel: `(x * 255).round().clamp(0, 255)`
/// (half away from zero; NaN gives 0).
pub fn to_u8(x: f32) -> u8 {
    // `as` saturates and maps NaN to 0.
    (x * 255.0).round().clamp(0.0, 255.0) as u8
}

/// `(rows, cols)` of the grid of `n` images: `cols = ceil(sqrt(n))`,
/// `rows = ceil(n / cols)` (`(0, 0)` for none).
pub fn grid_shape(n: usize) -> (usize, usize) {
    if n == 0 {
        return (0, 0);
    }
    let mut cols = (n as f64).sqrt() as usize;
    while cols * cols < n {
        cols += 1;
    }
    while cols > 1 && (cols - 1) * (cols - 1) >= n {
        cols -= 1;
    }
    (n.div_ceil(cols), cols)
}

/// The images of a `[N, 3, H, W]` f32 tensor as one RGB grid (see the module docs).
pub fn to_grid(images: &HostTensor) -> Result<RgbImage> {
    let shape = &images.shape;
    let bad =
        |why: &str| RuntimeError::Invalid(format!("cannot write an image from a tensor of shape {shape:?}: {why}"));
    let data = images.as_f32().ok_or_else(|| bad("it holds integers, expected f32 values in [0, 1]"))?;
    let &[n, c, h, w] = shape.as_slice() else {
        return Err(bad("expected [N, 3, H, W]"));
    };
    if c != 3 {
        return Err(bad("expected 3 (RGB) channels in dimension 1"));
    }
    if n == 0 || h == 0 || w == 0 {
        return Err(bad("no pixels"));
    }
    let (rows, cols) = grid_shape(n);
    let size = |count: usize, each: usize| count.checked_mul(each)?.checked_add((count - 1) * GAP);
    let (gw, gh) = match (size(cols, w), size(rows, h)) {
        (Some(gw), Some(gh)) if u32::try_from(gw).is_ok() && u32::try_from(gh).is_ok() => (gw, gh),
        _ => return Err(bad("the grid is too large for a PNG")),
    };
    let mut buf = vec![GAP_VALUE; gw.checked_mul(gh).and_then(|p| p.checked_mul(3)).ok_or_else(|| bad("too large"))?];
    let plane = h * w;
    for i in 0..n {
        let (y0, x0) = ((i / cols) * (h + GAP), (i % cols) * (w + GAP));
        let img = &data[i * 3 * plane..(i + 1) * 3 * plane];
        for y in 0..h {
            for x in 0..w {
                let at = ((y0 + y) * gw + x0 + x) * 3;
                for ch in 0..3 {
                    buf[at + ch] = to_u8(img[ch * plane + y * w + x]);
                }
            }
        }
    }
    Ok(RgbImage::from_raw(gw as u32, gh as u32, buf).expect("buffer sized to the grid"))
}

/// Encode an RGB image as PNG bytes.
pub fn encode_png(img: &RgbImage) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    write_png_to(&mut out, img).map_err(|why| RuntimeError::Invalid(format!("cannot encode a PNG: {why}")))?;
    Ok(out)
}

/// Write the images of a `[N, 3, H, W]` tensor in `[0, 1]` to `path` as one
/// PNG grid, atomically (through [`crate::output`]).
pub fn write_png(path: &Path, images: &HostTensor) -> Result<()> {
    let img = to_grid(images)?;
    crate::output::write_file(path, |tmp| save_png(tmp, &img))
}

/// Write an image as PNG to `tmp`, a temporary file of an
/// [`crate::output::Outputs`] plan.
pub fn save_png(tmp: &Path, img: &RgbImage) -> std::result::Result<(), String> {
    let file = std::fs::File::create(tmp).map_err(|e| format!("cannot write: {e}"))?;
    let mut w = std::io::BufWriter::new(file);
    write_png_to(&mut w, img)?;
    w.flush().map_err(|e| format!("cannot write: {e}"))
}

fn write_png_to(w: &mut impl Write, img: &RgbImage) -> std::result::Result<(), String> {
    image::codecs::png::PngEncoder::new(w)
        .write_image(img.as_raw(), img.width(), img.height(), image::ExtendedColorType::Rgb8)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` images of `h x w`, image `i` filled with the solid colour `colour(i)`.
    fn solid(n: usize, h: usize, w: usize, colour: impl Fn(usize) -> [f32; 3]) -> HostTensor {
        let mut v = Vec::new();
        for i in 0..n {
            for c in colour(i) {
                v.extend(std::iter::repeat_n(c, h * w));
            }
        }
        HostTensor::f32(vec![n, 3, h, w], v)
    }

    #[test]
    fn channel_rounding() {
        let cases = [
            (0.0, 0),
            (1.0, 255),
            (0.5, 128),
            (0.498, 127),
            (1.0 / 255.0, 1),
            (254.5 / 255.0, 255),
            (-0.1, 0),
            (1.7, 255),
            (f32::NAN, 0),
            (f32::INFINITY, 255),
            (f32::NEG_INFINITY, 0),
        ];
        for (x, want) in cases {
            assert_eq!(to_u8(x), want, "{x}");
        }
    }

    #[test]
    fn grid_shapes() {
        let got: Vec<_> = [0, 1, 2, 3, 4, 5, 9, 10, 16, 17].iter().map(|&n| grid_shape(n)).collect();
        assert_eq!(got, [(0, 0), (1, 1), (1, 2), (2, 2), (2, 2), (2, 3), (3, 3), (3, 4), (4, 4), (4, 5)]);
        for n in 1..2000 {
            let (rows, cols) = grid_shape(n);
            assert!(cols * cols >= n && (cols - 1) * (cols - 1) < n, "{n}");
            assert!(rows * cols >= n && (rows - 1) * cols < n, "{n}");
        }
    }

    #[test]
    fn a_known_2x2_image_to_exact_bytes() {
        // [1, 3, 2, 2]: planes R, G, B; pixels (0,0) (0,1) (1,0) (1,1).
        let t = HostTensor::f32(
            vec![1, 3, 2, 2],
            vec![
                0.0, 1.0, 0.5, -0.2, // R
                0.0, 0.0, 0.25, 1.3, // G
                1.0, 0.0, 0.75, 0.1, // B
            ],
        );
        let want: Vec<u8> = vec![0, 0, 255, 255, 0, 0, 128, 64, 191, 0, 255, 26];
        let img = to_grid(&t).unwrap();
        assert_eq!((img.width(), img.height()), (2, 2));
        assert_eq!(img.as_raw(), &want);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.png");
        write_png(&path, &t).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let back = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png).unwrap();
        assert_eq!(back.color(), image::ColorType::Rgb8);
        assert_eq!(back.to_rgb8().as_raw(), &want);
        assert_eq!(encode_png(&img).unwrap(), bytes);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["x.png"]);
    }

    #[test]
    fn grid_layout() {
        let (h, w) = (3, 2);
        let colour = |i: usize| [i as f32 / 10.0, 0.5, 1.0 - i as f32 / 10.0];
        for (n, rows, cols) in [(1, 1, 1), (3, 2, 2), (4, 2, 2), (5, 2, 3)] {
            let img = to_grid(&solid(n, h, w, colour)).unwrap();
            let (gw, gh) = (cols * w + (cols - 1) * GAP, rows * h + (rows - 1) * GAP);
            assert_eq!((img.width() as usize, img.height() as usize), (gw, gh), "n = {n}");
            for y in 0..gh {
                for x in 0..gw {
                    let (r, c) = (y / (h + GAP), x / (w + GAP));
                    let inside = y % (h + GAP) < h && x % (w + GAP) < w;
                    let i = r * cols + c;
                    let want = if inside && i < n { colour(i).map(to_u8) } else { [GAP_VALUE; 3] };
                    assert_eq!(img.get_pixel(x as u32, y as u32).0, want, "n = {n}, pixel ({x}, {y})");
                }
            }
        }
    }

    #[test]
    fn bad_tensors_are_errors() {
        let f = |shape: Vec<usize>| HostTensor::f32(shape.clone(), vec![0.5; shape.iter().product()]);
        for (t, why) in [
            (f(vec![3, 2, 2]), "expected [N, 3, H, W]"),
            (f(vec![1, 4, 2, 2]), "expected 3 (RGB) channels in dimension 1"),
            (f(vec![0, 3, 2, 2]), "no pixels"),
            (f(vec![1, 3, 0, 2]), "no pixels"),
            (HostTensor::i64(vec![1, 3, 1, 1], vec![0; 3]), "it holds integers, expected f32 values in [0, 1]"),
        ] {
            let e = to_grid(&t).unwrap_err().to_string();
            assert_eq!(e, format!("cannot write an image from a tensor of shape {:?}: {why}", t.shape));
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.png");
        assert!(write_png(&path, &f(vec![2, 2])).is_err());
        assert!(write_png(&dir.path().join("no/dir/x.png"), &f(vec![1, 3, 1, 1])).is_err());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
