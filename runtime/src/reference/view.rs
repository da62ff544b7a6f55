//! The reference backend's values: a strided view of shared host data. A
//! reshape of a row-major view, a permutation and a slice are new views of
//! the same data; a kernel that needs dense operands gets a copy only when a
//! view is not already its whole base in row-major order, and every such copy
//! is counted (see [`super::Counters`]).

use super::strides;
use crate::tensor::{numel, Data, HostTensor};
use ecarc_compiler::ir::DType;
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct View {
    pub base: Arc<HostTensor>,
    /// In elements.
    pub offset: usize,
    pub shape: Vec<usize>,
    /// In elements, one per axis.
    pub strides: Vec<usize>,
}

impl View {
    /// All of `t`, row-major.
    pub fn whole(t: Arc<HostTensor>) -> View {
        let shape = t.shape.clone();
        View { strides: strides(&shape), shape, offset: 0, base: t }
    }

    pub fn dtype(&self) -> DType {
        self.base.dtype()
    }

    pub fn numel(&self) -> usize {
        numel(&self.shape)
    }

    /// Element `i` of the view is element `offset + i` of the base.
    pub fn is_row_major(&self) -> bool {
        let rm = strides(&self.shape);
        self.shape.iter().zip(&self.strides).zip(rm).all(|((&d, &s), r)| d <= 1 || s == r)
    }

    /// The view is its whole base, in order.
    pub fn is_whole(&self) -> bool {
        self.offset == 0 && self.is_row_major() && self.numel() == self.base.numel()
    }

    /// The largest flat index the view reaches, plus one (0 when empty).
    pub fn extent(&self) -> usize {
        if self.numel() == 0 {
            return 0;
        }
        self.offset + self.shape.iter().zip(&self.strides).map(|(&d, &s)| (d - 1) * s).sum::<usize>() + 1
    }

    /// The same elements under `shape` as a view, when strides exist for it
    /// (always for a row-major view; for a strided one when each group of
    /// axes that merges is itself contiguous, as numpy decides); `None` when
    /// only a copy can have that shape.
    pub fn reshape(&self, shape: &[usize]) -> Option<View> {
        if numel(shape) != self.numel() {
            return None;
        }
        let strides = if self.is_row_major() || self.numel() == 0 {
            strides(shape)
        } else {
            reshaped_strides(&self.shape, &self.strides, shape)?
        };
        Some(View { base: self.base.clone(), offset: self.offset, shape: shape.to_vec(), strides })
    }

    /// Output axis `i` is axis `perm[i]`.
    pub fn permute(&self, perm: &[usize]) -> View {
        View {
            base: self.base.clone(),
            offset: self.offset,
            shape: perm.iter().map(|&p| self.shape[p]).collect(),
            strides: perm.iter().map(|&p| self.strides[p]).collect(),
        }
    }

    /// `len` rows from `start` along `axis` (bounds checked by the caller).
    pub fn slice(&self, axis: usize, start: usize, len: usize) -> View {
        let mut shape = self.shape.clone();
        shape[axis] = len;
        View {
            base: self.base.clone(),
            offset: self.offset + start * self.strides[axis],
            shape,
            strides: self.strides.clone(),
        }
    }

    /// Flat base index of every element, in the view's row-major order.
    pub fn indices(&self) -> Vec<usize> {
        let n = self.numel();
        let mut out = Vec::with_capacity(n);
        if n == 0 {
            return out;
        }
        let r = self.shape.len();
        let mut idx = vec![0usize; r];
        let mut at = self.offset;
        for _ in 0..n {
            out.push(at);
            for a in (0..r).rev() {
                idx[a] += 1;
                at += self.strides[a];
                if idx[a] < self.shape[a] {
                    break;
                }
                at -= self.strides[a] * self.shape[a];
                idx[a] = 0;
            }
        }
        out
    }

    /// Base offset of each index of the leading `batch` axes, row-major.
    pub fn batch_offsets(&self, batch: usize) -> Vec<usize> {
        let sub = View {
            base: self.base.clone(),
            offset: self.offset,
            shape: self.shape[..batch].to_vec(),
            strides: self.strides[..batch].to_vec(),
        };
        sub.indices()
    }

    /// A dense copy of the view.
    pub fn to_tensor(&self) -> HostTensor {
        let idx = self.indices();
        match &self.base.data {
            Data::F32(v) => HostTensor::f32(self.shape.clone(), idx.iter().map(|&i| v[i]).collect()),
            Data::I64(v) => HostTensor::i64(self.shape.clone(), idx.iter().map(|&i| v[i]).collect()),
        }
    }
}

/// Strides that walk the elements of a `(old, strides)` view in the same
/// order under `new` (same element count, none zero), if there are any.
fn reshaped_strides(old: &[usize], strides: &[usize], new: &[usize]) -> Option<Vec<usize>> {
    // Axes of length 1 have no say in the order.
    let (od, os): (Vec<usize>, Vec<usize>) =
        old.iter().zip(strides).filter(|(&d, _)| d != 1).map(|(&d, &s)| (d, s)).unzip();
    let mut ns = vec![1usize; new.len()];
    let (mut oi, mut ni) = (0, 0);
    while oi < od.len() && ni < new.len() {
        // The smallest groups old[oi..oj] and new[ni..nj] of equal size.
        let (mut oj, mut nj) = (oi + 1, ni + 1);
        let (mut op, mut np) = (od[oi], new[ni]);
        while op != np {
            if np < op {
                np *= *new.get(nj)?;
                nj += 1;
            } else {
                op *= *od.get(oj)?;
                oj += 1;
            }
        }
        // The old group must be one contiguous run to be re-split.
        if (oi..oj - 1).any(|k| os[k] != od[k + 1] * os[k + 1]) {
            return None;
        }
        ns[nj - 1] = os[oj - 1];
        for k in (ni + 1..nj).rev() {
            ns[k - 1] = ns[k] * new[k];
        }
        oi = oj;
        ni = nj;
    }
    Some(ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_split_is_a_view_whose_elements_are_the_permuted_ones() {
        // [B=1, T=2, H=2, D=3] -> [B, H, T, D].
        let t = Arc::new(HostTensor::f32(vec![1, 2, 6], (0..12).map(|x| x as f32).collect()));
        let heads = View::whole(t).reshape(&[1, 2, 2, 3]).unwrap().permute(&[0, 2, 1, 3]);
        assert!(!heads.is_row_major());
        let d = heads.to_tensor();
        assert_eq!(d.as_f32().unwrap(), &[0., 1., 2., 6., 7., 8., 3., 4., 5., 9., 10., 11.]);
        // A slice of the key part: rows T 1..2 of every head.
        let s = heads.slice(2, 1, 1);
        assert_eq!(s.to_tensor().as_f32().unwrap(), &[6., 7., 8., 9., 10., 11.]);
        assert_eq!(s.extent(), 12);
        assert!(heads.reshape(&[1, 12]).is_none(), "a permuted view cannot be reshaped without a copy");
    }

    #[test]
    fn splitting_an_axis_of_a_strided_slice_is_a_view() {
        // Columns 4..8 of a [3, 12] matrix, split into [3, 2, 2].
        let t = Arc::new(HostTensor::f32(vec![3, 12], (0..36).map(|x| x as f32).collect()));
        let cols = View::whole(t).slice(1, 4, 4);
        let split = cols.reshape(&[3, 2, 2]).expect("a view");
        assert_eq!(split.strides, vec![12, 2, 1]);
        assert_eq!(split.to_tensor().as_f32().unwrap(), cols.to_tensor().as_f32().unwrap());
        // Merging the rows of the slice would need a copy.
        assert!(cols.reshape(&[12]).is_none());
        // Axes of length 1 come and go freely.
        let one = cols.reshape(&[3, 1, 4, 1]).expect("a view");
        assert_eq!(one.to_tensor().as_f32().unwrap(), cols.to_tensor().as_f32().unwrap());
    }
}
