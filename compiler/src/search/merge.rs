//! `ecarc search merge`: the shard results of one run combined into the
//! result a single run gives (same front, same counts, same broken-design
//! groups). Shards must come from the same space and settings (equal
//! fingerprints and shard counts) and each shard may appear once.

use super::invalid::merge_reported;
use super::pareto::{Front, Point};
use super::record::{DesignRecord, RejectedCount, SearchResult};
use std::collections::BTreeMap;

/// Merge results; `allow_partial` accepts a set that misses shards.
pub fn merge(results: Vec<SearchResult>, allow_partial: bool) -> Result<SearchResult, String> {
    let mut it = results.into_iter();
    let mut out = it.next().ok_or("nothing to merge")?;
    let mut front: Front<DesignRecord> = out.front.drain(..).map(|r| point(&out.objectives, r)).collect();
    for r in it {
        if r.fingerprint != out.fingerprint || r.shard_count != out.shard_count {
            return Err(format!(
                "the results come from different searches: `{}` ({} shards, fingerprint {}) and `{}` ({} shards, fingerprint {})",
                out.model, out.shard_count, out.fingerprint, r.model, r.shard_count, r.fingerprint
            ));
        }
        if let Some(s) = r.shards.iter().find(|s| out.shards.contains(s)) {
            return Err(format!("shard {s}/{} is given twice", out.shard_count));
        }
        out.shards.extend(r.shards.iter().copied());
        out.counts.add(&r.counts);
        let mut rejected: BTreeMap<String, u128> = out.rejected.drain(..).map(|r| (r.constraint, r.count)).collect();
        for x in r.rejected {
            *rejected.entry(x.constraint).or_default() += x.count;
        }
        out.rejected = rejected.into_iter().map(|(constraint, count)| RejectedCount { constraint, count }).collect();
        merge_reported(&mut out.invalid, r.invalid);
        for rec in r.front {
            front.insert(point(&out.objectives, rec));
        }
        if out.measured_on != r.measured_on {
            out.measured_on = None;
        }
    }
    out.shards.sort();
    if !allow_partial && !out.complete() {
        let missing: Vec<String> = (0..out.shard_count)
            .filter(|s| !out.shards.contains(s))
            .map(|s| format!("{s}/{}", out.shard_count))
            .collect();
        return Err(format!(
            "shards missing: {} (merge all {} shards of the run)",
            missing.join(", "),
            out.shard_count
        ));
    }
    out.front = front.into_sorted().into_iter().map(|p| DesignRecord { ties: p.ties, ..p.data }).collect();
    Ok(out)
}

fn point(objectives: &[super::objective::Objective], r: DesignRecord) -> Point<DesignRecord> {
    Point {
        objectives: objectives.iter().map(|o| o.key(r.value(o.metric).unwrap_or(i128::MAX))).collect(),
        index: r.index,
        ties: r.ties,
        data: r,
    }
}
