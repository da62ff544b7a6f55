//! The token layout of a model's sequence, and the host tables computed from
//! it for a run over positions `P..P+T`: the stage (level) of each position,
//! the levels of every key (for the attention masks), 2D RoPE tables and Distilled Decoding's noise/data
//! marker. Positions count the whole sequence, start tokens first. The runtime
//! computes each table once per distinct `(table, P, T)` when it prepares a plan.

use super::{DataLen, Table};
use crate::spec::{AttnMask, Layout, ModelSpec};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeqLayout {
    /// Tokens of each schedule stage, in order.
    pub stage_tokens: Vec<u64>,
    /// Start tokens the schedule does not list (a raster schedule's class
    /// token); they belong to stage 0 and push stage `k` to level `k + 1`.
    pub extra_prefix: u64,
    /// Positions before the body (start tokens): DD marks them as data.
    pub start: u64,
    /// Width of the final token grid (raster order), for 2D RoPE.
    pub grid_w: u64,
    pub mask: AttnMask,
    pub head_dim: u64,
    pub rope_base: f64,
}

/// A computed table: its shape and values.
#[derive(Clone, Debug, PartialEq)]
pub enum TableData {
    F32(Vec<usize>, Vec<f32>),
    I64(Vec<usize>, Vec<i64>),
}

impl SeqLayout {
    /// `start`: the start positions of the model's sequence (the lowering's `prefix_len`).
    pub fn new(spec: &ModelSpec, start: u64) -> SeqLayout {
        let raster = matches!(spec.schedule.layout, Layout::Raster { .. });
        SeqLayout {
            stage_tokens: spec.schedule.stages().iter().map(|s| s.tokens).collect(),
            extra_prefix: if raster { start } else { 0 },
            start,
            grid_w: spec.schedule.final_grid()[1],
            mask: spec.backbone.attn,
            head_dim: spec.backbone.head_dim,
            rope_base: spec.backbone.rope_base,
        }
    }

    /// Positions of the whole sequence: what a KV cache must hold.
    pub fn positions(&self) -> u64 {
        self.extra_prefix + self.stage_tokens.iter().sum::<u64>()
    }

    /// The level of every position `0..P+T` (and no further).
    fn levels_upto(&self, end: u64) -> Vec<u64> {
        let shift = u64::from(self.extra_prefix > 0);
        let mut v = vec![0u64; self.extra_prefix.min(end) as usize];
        'stages: for (k, &n) in self.stage_tokens.iter().enumerate() {
            for _ in 0..n {
                if v.len() as u64 >= end {
                    break 'stages;
                }
                v.push(k as u64 + shift);
            }
        }
        // Positions past the schedule (never asked for by a lowered plan).
        v.resize(end as usize, u64::MAX);
        v
    }

    /// Tokens of the first `stages` body stages (the stages after the start
    /// positions: a scale schedule whose first stage is the start token skips it).
    pub fn data_len(&self, stages: u64) -> u64 {
        let total: u64 = self.stage_tokens.iter().sum();
        let body: &[u64] = if self.extra_prefix == 0 && self.start > 0 && total > 0 {
            // The start token is the schedule's first stage.
            &self.stage_tokens[1.min(self.stage_tokens.len())..]
        } else {
            &self.stage_tokens
        };
        body.iter().take(stages as usize).sum()
    }

    /// The table for positions `past..past+tokens`; `given` reads an integer
    /// plan input (for [`DataLen::Given`]).
    pub fn table(
        &self,
        t: &Table,
        past: u64,
        tokens: u64,
        given: &dyn Fn(&str) -> Option<i64>,
    ) -> Result<TableData, String> {
        let (p, n) = (past, tokens);
        Ok(match t {
            Table::Levels => {
                let lv = self.levels_upto(p + n);
                TableData::I64(vec![n as usize], lv[p as usize..].iter().map(|&l| l as i64).collect())
            }
            Table::KeyLevels => {
                let lv = self.levels_upto(p + n);
                TableData::I64(vec![(p + n) as usize], lv.iter().map(|&l| l as i64).collect())
            }
            Table::RopeCos => self.rope(p, n).0,
            Table::RopeSin => self.rope(p, n).1,
            Table::NoiseData(len) => {
                let stages = match len {
                    DataLen::Stages(s) => *s,
                    DataLen::Given(name) => {
                        let v =
                            given(name).ok_or_else(|| format!("the plan input `{name}` (an integer) is missing"))?;
                        u64::try_from(v).map_err(|_| format!("`{name}` = {v}: a number of stages is not negative"))?
                    }
                };
                let data = self.start + self.data_len(stages);
                TableData::I64(vec![n as usize], (p..p + n).map(|q| i64::from(q < data)).collect())
            }
        })
    }

    /// 2D RoPE tables `[T, head_dim/2]` (cos, sin) for positions `P..P+T`:
    /// the first half of the pairs turn with the token's row, the second with
    /// its column, at frequencies `base^(-2i / (head_dim/2))`, in f32 as the
    /// reference computes them; start tokens get (0, 0), as in LlamaGen.
    fn rope(&self, past: u64, tokens: u64) -> (TableData, TableData) {
        let half = (self.head_dim / 2) as usize;
        let quarter = half / 2;
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
            let (row, col) = ((j / self.grid_w.max(1)) as f32, (j % self.grid_w.max(1)) as f32);
            for pos in [row, col] {
                for f in &freq {
                    let a = pos * *f;
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
            }
        }
        let shape = vec![tokens as usize, half];
        (TableData::F32(shape.clone(), cos), TableData::F32(shape, sin))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(mask: AttnMask, stage_tokens: Vec<u64>, extra_prefix: u64) -> SeqLayout {
        SeqLayout { stage_tokens, extra_prefix, start: extra_prefix, grid_w: 4, mask, head_dim: 8, rope_base: 10000.0 }
    }

    fn f32s(t: TableData) -> (Vec<usize>, Vec<f32>) {
        match t {
            TableData::F32(s, v) => (s, v),
            TableData::I64(..) => panic!("an f32 table"),
        }
    }

    fn i64s(t: TableData) -> Vec<i64> {
        match t {
            TableData::I64(_, v) => v,
            TableData::F32(..) => panic!("an i64 table"),
        }
    }

    fn none(_: &str) -> Option<i64> {
        None
    }

    #[test]
    fn rope_turns_rows_then_columns_and_zeroes_the_class_token() {
        let p = layout(AttnMask::Causal, vec![1; 16], 1);
        let (shape, c) = f32s(p.table(&Table::RopeCos, 0, 7, &none).unwrap());
        let (_, s) = f32s(p.table(&Table::RopeSin, 0, 7, &none).unwrap());
        assert_eq!(shape, vec![7, 4]);
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
    fn key_levels_cover_every_position_up_to_the_last_query() {
        let s = layout(AttnMask::BlockCausal, vec![1, 2, 3], 0);
        assert_eq!(i64s(s.table(&Table::KeyLevels, 3, 3, &none).unwrap()), vec![0, 1, 1, 2, 2, 2]);
        assert_eq!(s.positions(), 6);
        assert_eq!(layout(AttnMask::Causal, vec![1; 16], 1).positions(), 17);
    }

    #[test]
    fn levels_count_the_class_token_as_stage_zero() {
        // Raster with a class token: token k is level k + 1.
        let r = layout(AttnMask::Causal, vec![1; 4], 1);
        assert_eq!(i64s(r.table(&Table::Levels, 0, 5, &none).unwrap()), vec![0, 1, 2, 3, 4]);
        // Scales: the first stage is the start token itself.
        let s = SeqLayout { start: 1, ..layout(AttnMask::BlockCausal, vec![1, 4, 16], 0) };
        assert_eq!(i64s(s.table(&Table::Levels, 1, 4, &none).unwrap()), vec![1; 4]);
    }

    #[test]
    fn the_dd_marker_counts_body_stages_after_the_start_positions() {
        // VAR-DD: a leading class stage, then scales 1, 4: two body stages = 1 + 4 tokens.
        let v = SeqLayout { start: 1, ..layout(AttnMask::EarlierPlusSelf, vec![1, 1, 4, 16], 0) };
        let m = i64s(v.table(&Table::NoiseData(DataLen::Stages(2)), 0, 22, &none).unwrap());
        assert_eq!(m.iter().sum::<i64>(), 1 + 5);
        assert_eq!(&m[..7], &[1, 1, 1, 1, 1, 1, 0]);
        // LlamaGen-DD: a class token outside the raster schedule; t given by the caller.
        let l = layout(AttnMask::Causal, vec![1; 16], 1);
        let given = |n: &str| (n == "t").then_some(5);
        let m = i64s(l.table(&Table::NoiseData(DataLen::Given("t".into())), 0, 17, &given).unwrap());
        assert_eq!(m.iter().sum::<i64>(), 6);
        assert!(l.table(&Table::NoiseData(DataLen::Given("t".into())), 0, 17, &none).is_err());
    }
}
