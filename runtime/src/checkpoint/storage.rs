//! Materialising a tensor from its storage's bytes: a (possibly strided,
//! offset) view of little-endian elements becomes a dense row-major
//! [`HostTensor`]: floats (f32, f16, bf16, f64) as f32, integers and bools
//! as i64. Every index the view can reach is checked against the storage
//! before anything is allocated.

use super::pickle::{StorageType, TensorMeta};
use crate::tensor::HostTensor;

/// The dense tensor `meta` views in `bytes` (a storage of `numel` elements
/// of `ty`; `bytes` holds at least `numel * ty.size()`).
pub fn materialise(meta: &TensorMeta, ty: StorageType, numel: usize, bytes: &[u8]) -> Result<HostTensor, String> {
    let count = meta
        .size
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| format!("size {:?} overflows", meta.size))?;
    if numel.checked_mul(ty.size()).is_none_or(|b| b > bytes.len()) {
        return Err(format!("storage of {numel} elements does not fit its {} bytes", bytes.len()));
    }
    if count > 0 {
        // The largest flat index the view reaches.
        let mut last = meta.offset;
        for (&d, &s) in meta.size.iter().zip(&meta.stride) {
            last = (d - 1).checked_mul(s).and_then(|x| x.checked_add(last)).ok_or("stride overflow")?;
        }
        if last >= numel {
            return Err(format!(
                "a view of size {:?}, stride {:?}, offset {} reaches element {last} of a storage of {numel}",
                meta.size, meta.stride, meta.offset
            ));
        }
    }
    let contiguous = is_contiguous(&meta.size, &meta.stride);
    // Flat storage indices of the view's elements, in row-major order.
    let index = |flat: usize| -> usize {
        if contiguous {
            return meta.offset + flat;
        }
        let mut rem = flat;
        let mut at = meta.offset;
        for (&d, &s) in meta.size.iter().zip(&meta.stride).rev() {
            at += (rem % d) * s;
            rem /= d;
        }
        at
    };
    let elem = |i: usize| &bytes[i * ty.size()..(i + 1) * ty.size()];
    let shape = meta.size.clone();
    Ok(if ty.is_float() {
        let conv: fn(&[u8]) -> f32 = match ty {
            StorageType::F32 => |b| f32::from_le_bytes(b.try_into().unwrap()),
            StorageType::F16 => |b| half::f16::from_le_bytes(b.try_into().unwrap()).to_f32(),
            StorageType::BF16 => |b| half::bf16::from_le_bytes(b.try_into().unwrap()).to_f32(),
            _ => |b| f64::from_le_bytes(b.try_into().unwrap()) as f32,
        };
        HostTensor::f32(shape, (0..count).map(|f| conv(elem(index(f)))).collect())
    } else {
        let conv: fn(&[u8]) -> i64 = match ty {
            StorageType::I64 => |b| i64::from_le_bytes(b.try_into().unwrap()),
            StorageType::I32 => |b| i32::from_le_bytes(b.try_into().unwrap()) as i64,
            StorageType::I16 => |b| i16::from_le_bytes(b.try_into().unwrap()) as i64,
            StorageType::I8 => |b| b[0] as i8 as i64,
            _ => |b| b[0] as i64,
        };
        HostTensor::i64(shape, (0..count).map(|f| conv(elem(index(f)))).collect())
    })
}

/// Whether `stride` is the row-major stride of `size` (dimensions of size 1 may have any stride).
pub fn is_contiguous(size: &[usize], stride: &[usize]) -> bool {
    let mut expect = 1usize;
    for (&d, &s) in size.iter().zip(stride).rev() {
        if d != 1 && s != expect {
            return false;
        }
        expect = expect.saturating_mul(d);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(offset: usize, size: &[usize], stride: &[usize]) -> TensorMeta {
        TensorMeta { storage: 0, offset, size: size.to_vec(), stride: stride.to_vec() }
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn strided_views_are_gathered() {
        let data: Vec<f32> = (0..12).map(|x| x as f32).collect();
        let b = f32_bytes(&data);
        // A [3, 4] matrix transposed: size [4, 3], stride [1, 4].
        let t = materialise(&meta(0, &[4, 3], &[1, 4]), StorageType::F32, 12, &b).unwrap();
        assert_eq!(t.as_f32().unwrap(), &[0., 4., 8., 1., 5., 9., 2., 6., 10., 3., 7., 11.]);
        // Offset and a column slice.
        let t = materialise(&meta(1, &[3, 2], &[4, 1]), StorageType::F32, 12, &b).unwrap();
        assert_eq!(t.as_f32().unwrap(), &[1., 2., 5., 6., 9., 10.]);
        // A scalar and an empty tensor.
        let t = materialise(&meta(7, &[], &[]), StorageType::F32, 12, &b).unwrap();
        assert_eq!(t.as_f32().unwrap(), &[7.]);
        let t = materialise(&meta(99, &[0, 5], &[5, 1]), StorageType::F32, 12, &b).unwrap();
        assert_eq!(t.numel(), 0);
    }

    #[test]
    fn half_types_and_integers() {
        let h: Vec<u8> = [1.5f32, -2.0].iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect();
        let t = materialise(&meta(0, &[2], &[1]), StorageType::F16, 2, &h).unwrap();
        assert_eq!(t.as_f32().unwrap(), &[1.5, -2.0]);
        let bf: Vec<u8> = [0.25f32, 3.0].iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect();
        let t = materialise(&meta(0, &[2], &[1]), StorageType::BF16, 2, &bf).unwrap();
        assert_eq!(t.as_f32().unwrap(), &[0.25, 3.0]);
        let l: Vec<u8> = [5i64, -7].iter().flat_map(|x| x.to_le_bytes()).collect();
        let t = materialise(&meta(0, &[2], &[1]), StorageType::I64, 2, &l).unwrap();
        assert_eq!(t.as_i64().unwrap(), &[5, -7]);
        let t = materialise(&meta(0, &[3], &[1]), StorageType::Bool, 3, &[1, 0, 1]).unwrap();
        assert_eq!(t.as_i64().unwrap(), &[1, 0, 1]);
    }

    #[test]
    fn views_beyond_the_storage_are_errors() {
        let b = f32_bytes(&[0.0; 6]);
        let e = materialise(&meta(0, &[2, 4], &[4, 1]), StorageType::F32, 6, &b).unwrap_err();
        assert!(e.contains("reaches element 7 of a storage of 6"), "{e}");
        assert!(materialise(&meta(6, &[1], &[1]), StorageType::F32, 6, &b).is_err());
        assert!(materialise(&meta(0, &[1], &[1]), StorageType::F32, 7, &b).is_err());
        assert!(materialise(&meta(0, &[usize::MAX, 2], &[1, 1]), StorageType::F32, 6, &b).is_err());
        assert!(materialise(&meta(0, &[2, 2], &[usize::MAX, 1]), StorageType::F32, 6, &b).is_err());
        assert!(materialise(&meta(0, &[1], &[1]), StorageType::F32, usize::MAX, &b).is_err());
    }
}
