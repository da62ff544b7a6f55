//! `--shard I/N`: a deterministic share of the designs for one of N machines.
//!
//! Shard `I` (0-based) of `N` takes the designs at positions `I, I + N,
//! I + 2N, ...` of the run's sequence of designs ([`super::design::Designs`]):
//! every design belongs to exactly one shard, and neighbouring designs (which
//! cost about the same) are spread over the shards, so shards take about the
//! same time.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// The whole run as one shard.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Positions of `0..n` this shard takes.
    pub fn len(&self, n: u128) -> u128 {
        let (i, c) = (self.index as u128, self.count as u128);
        if n <= i {
            0
        } else {
            (n - i).div_ceil(c)
        }
    }

    /// The `k`-th position this shard takes.
    pub(crate) fn position(&self, k: u128) -> u128 {
        self.index as u128 + k * self.count as u128
    }
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Shard, String> {
        let bad = || {
            format!("`{s}` is not a shard: write I/N with 0 <= I < N, e.g. `--shard 0/4` (Slurm: `--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT`)")
        };
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (u32, u32) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}
