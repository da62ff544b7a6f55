//! What the driver computes for every step from the schedule alone: the stage
//! of each sequence position, attention biases, level indices, 2D RoPE tables
//! and guided labels. Positions count the whole sequence, start tokens first.

use crate::tensor::HostTensor;
use ecarc_compiler::spec::{AttnMask, ModelSpec};

/// The token layout of one model's sequence.
#[derive(Clone, Debug)]
pub struct Positions {
    /// Stage index of every position (start tokens belong to stage 0).
    pub stage: Vec<u64>,
    /// Start tokens that are not part of the schedule's grid (LlamaGen's class token).
    pub extra_prefix: u64,
    /// Width of the final token grid (raster order), for 2D RoPE.
    pub grid_w: u64,
    pub mask: AttnMask,
    pub head_dim: u64,
    pub rope_base: f64,
}

impl Positions {
    /// `extra_prefix`: start tokens the schedule does not list (a raster
    /// schedule's class token); `prefix` of a scale schedule is its first stage.
    pub fn new(spec: &ModelSpec, extra_prefix: u64) -> Self {
        let mut stage = vec![0; extra_prefix as usize];
        let stages = spec.schedule.stages();
        for (k, s) in stages.iter().enumerate() {
            // A raster schedule's stage k is token k, which sits after the start tokens.
            stage.extend(std::iter::repeat_n(k as u64 + u64::from(extra_prefix > 0), s.tokens as usize));
        }
        let grid_w = spec.schedule.final_grid()[1];
        Positions {
            stage,
            extra_prefix,
            grid_w,
            mask: spec.backbone.attn,
            head_dim: spec.backbone.head_dim,
            rope_base: spec.backbone.rope_base,
        }
    }

    fn stage_of(&self, p: u64) -> u64 {
        self.stage.get(p as usize).copied().unwrap_or(u64::MAX)
    }

    /// Additive attention bias `[T, P + T]` for queries at positions `P..P+T`
    /// over keys `0..P+T`: 0 where allowed, -inf elsewhere.
    pub fn attn_bias(&self, past: u64, tokens: u64) -> HostTensor {
        let keys = past + tokens;
        let mut v = Vec::with_capacity((tokens * keys) as usize);
        for i in past..past + tokens {
            for j in 0..keys {
                let ok = match self.mask {
                    AttnMask::Full => true,
                    AttnMask::Causal => j <= i,
                    AttnMask::BlockCausal => self.stage_of(j) <= self.stage_of(i),
                    AttnMask::EarlierPlusSelf => i == j || self.stage_of(j) < self.stage_of(i),
                };
                v.push(if ok { 0.0 } else { f32::NEG_INFINITY });
            }
        }
        HostTensor::f32(vec![tokens as usize, keys as usize], v)
    }

    /// Stage index of each of the positions `P..P+T`.
    pub fn levels(&self, past: u64, tokens: u64) -> HostTensor {
        let v = (past..past + tokens).map(|p| self.stage_of(p) as i64).collect();
        HostTensor::i64(vec![tokens as usize], v)
    }

    /// 2D RoPE tables `[T, head_dim/2]` (cos, sin) for positions `P..P+T`:
    /// the first half of the pairs turn with the token's row, the second with
    /// its column, at frequencies `base^(-2i / (head_dim/2))`; start tokens
    /// get (0, 0), as in LlamaGen.
    pub fn rope(&self, past: u64, tokens: u64) -> (HostTensor, HostTensor) {
        let half = (self.head_dim / 2) as usize;
        let quarter = half / 2;
        // In f32 as the reference: 1 / base^(2i / n) with n = head_dim / 2.
        let n_elem = half as f32;
        let freq: Vec<f32> =
            (0..quarter).map(|i| 1.0 / (self.rope_base as f32).powf((2 * i) as f32 / n_elem)).collect();
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for p in past..past + tokens {
            if p < self.extra_prefix {
                cos.extend(std::iter::repeat_n(0.0, half));
                sin.extend(std::iter::repeat_n(0.0, half));
                continue;
            }
            let j = p - self.extra_prefix;
            let (row, col) = ((j / self.grid_w) as f64, (j % self.grid_w) as f64);
            for pos in [row, col] {
                for f in &freq {
                    // Angles in f32 as the reference computes them.
                    let a = (pos as f32) * *f;
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
            }
        }
        let shape = vec![tokens as usize, half];
        (HostTensor::f32(shape.clone(), cos), HostTensor::f32(shape, sin))
    }
}

/// Labels of a program's batch: the images' classes, then (guided) the null
/// class once per image.
pub fn labels(classes: &[i64], null_class: i64, guided: bool) -> HostTensor {
    let mut v = classes.to_vec();
    if guided {
        v.extend(std::iter::repeat_n(null_class, classes.len()));
    }
    HostTensor::i64(vec![v.len()], v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(mask: AttnMask, stage: Vec<u64>, extra_prefix: u64) -> Positions {
        Positions { stage, extra_prefix, grid_w: 4, mask, head_dim: 8, rope_base: 10000.0 }
    }

    #[test]
    fn rope_turns_rows_then_columns_and_zeroes_the_class_token() {
        let p = layout(AttnMask::Causal, (0..17).collect(), 1);
        let (cos, sin) = p.rope(0, 7);
        assert_eq!(cos.shape, vec![7, 4]);
        let (c, s) = (cos.as_f32().unwrap(), sin.as_f32().unwrap());
        assert_eq!(&c[..4], &[0.0; 4]);
        assert_eq!(&s[..4], &[0.0; 4]);
        // Position 6 is token 5: row 1, column 1 of a 4-wide grid. Frequencies
        // for head_dim 8: 1 and 10000^(-2/4) = 0.01.
        let f = [1.0f64, 0.01];
        let want_c = [(1.0 * f[0]).cos(), (1.0 * f[1]).cos(), (1.0 * f[0]).cos(), (1.0 * f[1]).cos()];
        let want_s = [(1.0 * f[0]).sin(), (1.0 * f[1]).sin(), (1.0 * f[0]).sin(), (1.0 * f[1]).sin()];
        for i in 0..4 {
            assert!((c[24 + i] as f64 - want_c[i]).abs() < 1e-6);
            assert!((s[24 + i] as f64 - want_s[i]).abs() < 1e-6);
        }
        // Position 3 is token 2: row 0, column 2: the row half does not turn.
        assert_eq!(c[12], 1.0);
        assert!((c[14] as f64 - 2f64.cos()).abs() < 1e-6);
    }

    #[test]
    fn masks_follow_their_rules() {
        let stages = vec![0, 1, 1, 2, 2, 2];
        let allowed = |m: AttnMask, past, t| {
            let b = layout(m, stages.clone(), 0).attn_bias(past, t);
            b.as_f32().unwrap().iter().map(|v| *v == 0.0).collect::<Vec<bool>>()
        };
        // Block-causal: a whole scale sees itself and earlier scales.
        let bc = allowed(AttnMask::BlockCausal, 0, 6);
        assert!(bc[6 + 2] && !bc[6 + 3] && bc[3 * 6 + 5]);
        // Earlier + self: not the other tokens of one's own scale.
        let es = allowed(AttnMask::EarlierPlusSelf, 0, 6);
        assert!(es[6 + 1] && !es[6 + 2] && es[2 * 6] && es[2 * 6 + 2]);
        // Causal with a cache: queries at 4, 5 over keys 0..6.
        let c = allowed(AttnMask::Causal, 4, 2);
        assert_eq!(c, vec![true, true, true, true, true, false, true, true, true, true, true, true]);
        assert!(allowed(AttnMask::Full, 0, 6).iter().all(|v| *v));
    }
}
