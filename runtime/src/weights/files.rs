//! Named-tensor files (safetensors): atomic writes, memory-mapped reads, and
//! the dtype conversions of what is stored.

use crate::error::{Result, RuntimeError};
use crate::tensor::{Data, HostTensor};
use safetensors::{Dtype, SafeTensors, View};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

/// Write named tensors to a safetensors file atomically (through
/// [`crate::output`]): f32 as F32, i64 as I64. Names must be distinct.
pub fn write_tensors(path: &Path, tensors: &[(&str, &HostTensor)]) -> Result<()> {
    crate::output::write_file(path, |tmp| save_tensors(tmp, tensors))
}

/// Write named tensors as safetensors to `tmp`, a temporary file of an
/// [`crate::output::Outputs`] plan (the CLI's `--save-tensors`, `forward -o`,
/// `dd-pairs`, `init-weights`). Names must be distinct.
pub fn save_tensors(tmp: &Path, tensors: &[(&str, &HostTensor)]) -> std::result::Result<(), String> {
    let mut seen = BTreeSet::new();
    for (name, _) in tensors {
        if !seen.insert(*name) {
            return Err(format!("tensor `{name}` is given twice"));
        }
    }
    let views = tensors.iter().map(|(name, t)| (*name, TensorRef(t)));
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(meta), tmp).map_err(|e| format!("cannot write safetensors: {e}"))
}

/// Read every tensor of a safetensors file (`--inputs`, `--tokens`): float
/// dtypes (F32, F16, BF16, F64) become f32, integer ones (I64, I32, I16, I8,
/// U32, U16, U8, BOOL; U64 when it fits) i64. Any other dtype, or a file that
/// is not valid safetensors, is a [`RuntimeError::File`].
pub fn read_tensors(path: &Path) -> Result<BTreeMap<String, HostTensor>> {
    let map = map_file(path)?;
    read_tensors_from_bytes(&path.display().to_string(), &map)
}

/// [`read_tensors`] for a run's input file (`decode --tokens`, `forward
/// --inputs`, `sample --noise`): a float tensor holding NaN or an infinity is
/// refused, naming the tensor, how many values and the first one's index.
pub fn read_input_tensors(path: &Path) -> Result<BTreeMap<String, HostTensor>> {
    let tensors = read_tensors(path)?;
    for (key, t) in &tensors {
        if let Some(why) = t.non_finite() {
            return Err(RuntimeError::File { path: path.display().to_string(), why: format!("tensor `{key}` {why}") });
        }
    }
    Ok(tensors)
}

/// [`read_tensors`] on a file already in memory (`name` is for messages).
pub fn read_tensors_from_bytes(name: &str, bytes: &[u8]) -> Result<BTreeMap<String, HostTensor>> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| invalid_file(name, e))?;
    let mut out = BTreeMap::new();
    for (key, view) in st.iter() {
        let shape = view.shape().to_vec();
        let t = if let Some(v) = to_f32(view.dtype(), view.data()) {
            HostTensor::f32(shape, v)
        } else if let Some(v) = to_i64(view.dtype(), view.data()) {
            let v = v.map_err(|why| RuntimeError::File { path: name.into(), why: format!("tensor `{key}`: {why}") })?;
            HostTensor::i64(shape, v)
        } else {
            return Err(RuntimeError::File {
                path: name.into(),
                why: format!(
                    "tensor `{key}` has dtype {:?}; expected a float (F32, F16, BF16, F64) or integer (I64, I32, ...) type",
                    view.dtype()
                ),
            });
        };
        out.insert(key.to_string(), t);
    }
    Ok(out)
}

pub(super) fn map_file(path: &Path) -> Result<memmap2::Mmap> {
    let err = |why: String| RuntimeError::File { path: path.display().to_string(), why };
    let file = std::fs::File::open(path).map_err(|e| err(format!("cannot open: {e}")))?;
    let meta = file.metadata().map_err(|e| err(format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(err("not a regular file".into()));
    }
    // SAFETY: the map is read-only and dropped before returning to the caller
    // (the tensors are copied out); as with any mapped file, another process
    // truncating it meanwhile is outside what we can guard against.
    unsafe { memmap2::Mmap::map(&file) }.map_err(|e| err(format!("cannot map: {e}")))
}

pub(super) fn invalid_file(name: &str, e: safetensors::SafeTensorError) -> RuntimeError {
    RuntimeError::File { path: name.into(), why: format!("not a valid safetensors file: {e}") }
}

pub(super) fn is_float(d: Dtype) -> bool {
    matches!(d, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64)
}

/// Little-endian float data as f32; `None` for a non-float dtype. The byte
/// length was checked against the shape by the safetensors parser.
pub(super) fn to_f32(dtype: Dtype, b: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
        Dtype::F16 => b.chunks_exact(2).map(|c| half::f16::from_le_bytes(c.try_into().unwrap()).to_f32()).collect(),
        Dtype::BF16 => b.chunks_exact(2).map(|c| half::bf16::from_le_bytes(c.try_into().unwrap()).to_f32()).collect(),
        Dtype::F64 => b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
        _ => return None,
    })
}

/// Little-endian integer data as i64; `None` for a non-integer dtype.
pub(super) fn to_i64(dtype: Dtype, b: &[u8]) -> Option<std::result::Result<Vec<i64>, String>> {
    Some(Ok(match dtype {
        Dtype::I64 => b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect(),
        Dtype::I32 => b.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64).collect(),
        Dtype::I16 => b.chunks_exact(2).map(|c| i16::from_le_bytes(c.try_into().unwrap()) as i64).collect(),
        Dtype::I8 => b.iter().map(|&x| x as i8 as i64).collect(),
        Dtype::U32 => b.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap()) as i64).collect(),
        Dtype::U16 => b.chunks_exact(2).map(|c| u16::from_le_bytes(c.try_into().unwrap()) as i64).collect(),
        Dtype::U8 | Dtype::BOOL => b.iter().map(|&x| x as i64).collect(),
        Dtype::U64 => {
            let v: std::result::Result<Vec<i64>, _> =
                b.chunks_exact(8).map(|c| i64::try_from(u64::from_le_bytes(c.try_into().unwrap()))).collect();
            return Some(v.map_err(|_| "a U64 value does not fit in i64".to_string()));
        }
        _ => return None,
    }))
}

/// A tensor found in a source, before matching: a safetensors view (not yet
/// converted) or a host tensor (from a PyTorch checkpoint).
pub(super) enum Stored<'a> {
    View(safetensors::tensor::TensorView<'a>),
    Host(&'a HostTensor),
}

impl Stored<'_> {
    pub(super) fn shape(&self) -> &[usize] {
        match self {
            Stored::View(v) => v.shape(),
            Stored::Host(t) => &t.shape,
        }
    }
    pub(super) fn is_float(&self) -> bool {
        match self {
            Stored::View(v) => is_float(v.dtype()),
            Stored::Host(t) => t.as_f32().is_some(),
        }
    }
    /// The dtype as safetensors names it (`F32`, `I64`, ...).
    pub(super) fn dtype_name(&self) -> String {
        match self {
            Stored::View(v) => format!("{:?}", v.dtype()),
            Stored::Host(t) => format!("{:?}", TensorRef(t).dtype()),
        }
    }
    /// The values as f32; `None` for an integer tensor.
    pub(super) fn to_f32(&self) -> Option<Vec<f32>> {
        match self {
            Stored::View(v) => to_f32(v.dtype(), v.data()),
            Stored::Host(t) => t.as_f32().map(<[f32]>::to_vec),
        }
    }
}

/// A host tensor as a safetensors view (little-endian bytes, made on demand).
pub(super) struct TensorRef<'a>(pub(super) &'a HostTensor);

impl View for TensorRef<'_> {
    fn dtype(&self) -> Dtype {
        match self.0.data {
            Data::F32(_) => Dtype::F32,
            Data::I64(_) => Dtype::I64,
        }
    }
    fn shape(&self) -> &[usize] {
        &self.0.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(match &self.0.data {
            Data::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        })
    }
    fn data_len(&self) -> usize {
        self.0.bytes()
    }
}
