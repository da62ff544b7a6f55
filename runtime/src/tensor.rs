//! Host tensors: the values the driver, weights and files deal in. Backends
//! hold their own device-resident copies ([`crate::Buffer`]).

use ecarc_compiler::ir::DType;

/// Element storage of a host tensor (row-major, contiguous).
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// A dense row-major tensor in host memory.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Data,
}

impl HostTensor {
    /// A f32 tensor; panics if `data.len()` is not the product of `shape`
    /// (a programming error, never user input).
    pub fn f32(shape: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(numel(&shape), data.len(), "f32 tensor of shape {shape:?} with {} elements", data.len());
        HostTensor { shape, data: Data::F32(data) }
    }
    pub fn i64(shape: Vec<usize>, data: Vec<i64>) -> Self {
        assert_eq!(numel(&shape), data.len(), "i64 tensor of shape {shape:?} with {} elements", data.len());
        HostTensor { shape, data: Data::I64(data) }
    }
    pub fn zeros(dtype: DType, shape: Vec<usize>) -> Self {
        let n = numel(&shape);
        match dtype {
            DType::F32 => HostTensor::f32(shape, vec![0.0; n]),
            DType::I64 => HostTensor::i64(shape, vec![0; n]),
        }
    }
    /// A rank-0 f32 tensor.
    pub fn scalar(v: f32) -> Self {
        HostTensor::f32(vec![], vec![v])
    }
    pub fn dtype(&self) -> DType {
        match self.data {
            Data::F32(_) => DType::F32,
            Data::I64(_) => DType::I64,
        }
    }
    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            Data::F32(v) => Some(v),
            Data::I64(_) => None,
        }
    }
    pub fn as_i64(&self) -> Option<&[i64]> {
        match &self.data {
            Data::I64(v) => Some(v),
            Data::F32(_) => None,
        }
    }
    pub fn as_f32_mut(&mut self) -> Option<&mut [f32]> {
        match &mut self.data {
            Data::F32(v) => Some(v),
            Data::I64(_) => None,
        }
    }
    /// `None` when every value is finite (or the tensor holds integers), else
    /// what is wrong: `has 3 non-finite value(s) (the first, NaN, at index [0, 1, 2])`.
    pub fn non_finite(&self) -> Option<String> {
        let v = self.as_f32()?;
        let first = v.iter().position(|x| !x.is_finite())?;
        let count = v.iter().filter(|x| !x.is_finite()).count();
        let mut index = vec![0usize; self.shape.len()];
        let mut rest = first;
        for (i, &d) in self.shape.iter().enumerate().rev() {
            if d > 0 {
                index[i] = rest % d;
                rest /= d;
            }
        }
        Some(format!("has {count} non-finite value(s) (the first, {}, at index {index:?})", v[first]))
    }

    /// Size in bytes of the elements.
    pub fn bytes(&self) -> usize {
        self.numel() * self.dtype().bytes() as usize
    }
}

/// Product of a shape (1 for a scalar).
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}
