//! Which designs a run visits: every design of the space in index order, or
//! `--samples N` distinct designs drawn with `--seed S` (for spaces too large
//! to enumerate), then the run's shard of them.
//!
//! A design is a mixed-radix index into the space (`crate::space::point`:
//! last axis fastest). Sampling takes the first N indices of a seeded
//! pseudo-random permutation of `0..total` (a Feistel network over the next
//! power of four, walked until it lands inside the space), so the samples are
//! distinct, the same for the same seed on every machine, and any shard of
//! them is computed without drawing the others.

use super::shard::Shard;
use serde::{Deserialize, Serialize};

/// How the designs of a space are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum Selection {
    /// Every design.
    All,
    /// `count` distinct designs drawn with `seed`.
    Sample { count: u64, seed: u64 },
}

/// The designs one run (one shard) visits, in order.
#[derive(Clone, Debug)]
pub struct Designs {
    /// Positions in the whole run's sequence.
    n: u128,
    shard: Shard,
    perm: Option<Permutation>,
}

impl Designs {
    pub fn new(total: u128, selection: Selection, shard: Shard) -> Designs {
        match selection {
            Selection::All => Designs { n: total, shard, perm: None },
            Selection::Sample { count, seed } => {
                Designs { n: (count as u128).min(total), shard, perm: Some(Permutation::new(total, seed)) }
            }
        }
    }

    /// Designs this shard visits.
    pub fn len(&self) -> u128 {
        self.shard.len(self.n)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The design index of this shard's `k`-th design.
    pub(crate) fn index(&self, k: u128) -> u128 {
        let pos = self.shard.position(k);
        match &self.perm {
            None => pos,
            Some(p) => p.apply(pos),
        }
    }
}

/// A seeded bijection of `0..n`.
#[derive(Clone, Debug)]
struct Permutation {
    n: u128,
    /// Bits of each half of the Feistel domain `0..2^(2 half)`.
    half: u32,
    keys: [u64; 4],
}

impl Permutation {
    fn new(n: u128, seed: u64) -> Permutation {
        let bits = 128 - n.saturating_sub(1).leading_zeros();
        let half = bits.div_ceil(2).max(1);
        let mut s = seed;
        let keys = [0; 4].map(|_| {
            s = splitmix64(s);
            s
        });
        Permutation { n, half, keys }
    }

    fn round(&self, x: u128, k: u64) -> u128 {
        let mask = (1u128 << self.half) - 1;
        let lo = (x & mask) as u64 ^ ((x >> 64) as u64);
        (splitmix64(lo ^ k) as u128 | ((splitmix64(lo.rotate_left(17) ^ !k) as u128) << 64)) & mask
    }

    fn feistel(&self, x: u128) -> u128 {
        let mask = (1u128 << self.half) - 1;
        let (mut l, mut r) = (x >> self.half, x & mask);
        for &k in &self.keys {
            let next = l ^ self.round(r, k);
            l = r;
            r = next;
        }
        (l << self.half) | r
    }

    fn apply(&self, i: u128) -> u128 {
        // Cycle-walking: the domain is at most 4 n, so a few steps on average.
        let mut x = self.feistel(i);
        while x >= self.n {
            x = self.feistel(x);
        }
        x
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_distinct_and_inside() {
        for n in [1u128, 2, 3, 7, 100, 1000, 4097] {
            let p = Permutation::new(n, 42);
            let mut seen: Vec<u128> = (0..n).map(|i| p.apply(i)).collect();
            seen.sort();
            assert_eq!(seen, (0..n).collect::<Vec<_>>(), "a permutation of 0..{n}");
        }
    }

    #[test]
    fn shards_partition_the_run() {
        let all = Designs::new(1000, Selection::Sample { count: 300, seed: 7 }, Shard::ALL);
        let mut whole: Vec<u128> = (0..all.len()).map(|k| all.index(k)).collect();
        let mut parts = Vec::new();
        for i in 0..7 {
            let d = Designs::new(1000, Selection::Sample { count: 300, seed: 7 }, Shard { index: i, count: 7 });
            parts.extend((0..d.len()).map(|k| d.index(k)));
        }
        whole.sort();
        parts.sort();
        assert_eq!(whole, parts);
        assert_eq!(whole.len(), 300);
        let other = Designs::new(1000, Selection::Sample { count: 300, seed: 8 }, Shard::ALL);
        assert_ne!(
            (0..300).map(|k| all.index(k)).collect::<Vec<_>>(),
            (0..300).map(|k| other.index(k)).collect::<Vec<_>>()
        );
    }
}
