//! The load report's helpers: shape hints, whole groups under an extra or a
//! missing key prefix, and likely renames of missing keys.

use super::Declared;
use std::collections::{BTreeMap, BTreeSet};

/// A hint after a shape mismatch: a transposed matrix, or the same elements in another shape.
pub(super) fn shape_hint(actual: &[usize], expected: &[usize]) -> &'static str {
    if actual.len() == 2 && expected.len() == 2 && actual[0] == expected[1] && actual[1] == expected[0] {
        " (transposed?)"
    } else if actual.iter().product::<usize>() == expected.iter().product::<usize>() {
        " (the same number of elements: reshape it when converting)"
    } else {
        ""
    }
}

/// Pairs at least this large of (missing `k`, unexpected `P + k`) (or the
/// reverse) are reported as one prefix problem.
pub(super) const MIN_PREFIX_GROUP: usize = 3;

/// Find groups of missing keys stored under an extra prefix (`model.head.weight`
/// for `head.weight`) or without theirs, remove them from both lists and
/// return one problem per group.
pub(super) fn collapse_prefixes(missing: &mut Vec<&Declared>, unexpected: &mut Vec<&str>) -> Vec<String> {
    let mut problems = Vec::new();
    loop {
        let miss: BTreeSet<&str> = missing.iter().map(|d| d.key.as_str()).collect();
        let unex: BTreeSet<&str> = unexpected.iter().copied().collect();
        // (prefix, extra?) -> [(missing, unexpected)]
        let mut groups: BTreeMap<(String, bool), Vec<(String, String)>> = BTreeMap::new();
        for &u in &unex {
            for (p, rest) in dot_prefixes(u) {
                if miss.contains(rest) {
                    groups.entry((p.to_string(), true)).or_default().push((rest.to_string(), u.to_string()));
                }
            }
        }
        for &m in &miss {
            for (p, rest) in dot_prefixes(m) {
                if unex.contains(rest) {
                    groups.entry((p.to_string(), false)).or_default().push((m.to_string(), rest.to_string()));
                }
            }
        }
        let Some(((prefix, extra), pairs)) =
            groups.into_iter().filter(|(_, v)| v.len() >= MIN_PREFIX_GROUP).max_by_key(|(_, v)| v.len())
        else {
            return problems;
        };
        let (m0, u0) = &pairs[0];
        problems.push(if extra {
            format!(
                "{} tensors are stored under an extra prefix `{prefix}` (e.g. `{u0}` for `{m0}`): strip it when converting the checkpoint",
                pairs.len()
            )
        } else {
            format!(
                "{} tensors are stored without their prefix `{prefix}` (e.g. `{u0}` for `{m0}`): add it when converting the checkpoint",
                pairs.len()
            )
        });
        let gone_m: BTreeSet<&str> = pairs.iter().map(|(m, _)| m.as_str()).collect();
        let gone_u: BTreeSet<&str> = pairs.iter().map(|(_, u)| u.as_str()).collect();
        missing.retain(|d| !gone_m.contains(d.key.as_str()));
        unexpected.retain(|u| !gone_u.contains(u));
    }
}

/// `(prefix, rest)` for every split of `key` just after a `.`.
pub(super) fn dot_prefixes(key: &str) -> impl Iterator<Item = (&str, &str)> {
    key.match_indices('.').map(move |(i, _)| key.split_at(i + 1)).filter(|(_, rest)| !rest.is_empty())
}

/// Above this many (missing x unexpected) candidate pairs, a file is too far
/// from the model for rename suggestions to mean anything.
pub(super) const MAX_RENAME_PAIRS: usize = 250_000;

/// Likely renames `(missing, unexpected)`: each unexpected key paired with at
/// most one missing key at a small edit distance (optimal string alignment,
/// at most a fifth of the longer key), closest first, equal shapes preferred.
pub(super) fn pair_renames<'a>(
    missing: &[&'a Declared],
    unexpected: &[&'a str],
    shape_of: &dyn Fn(&str) -> Vec<usize>,
) -> Vec<(&'a str, &'a str)> {
    if missing.is_empty() || unexpected.is_empty() || missing.len() * unexpected.len() > MAX_RENAME_PAIRS {
        return vec![];
    }
    let mut candidates = Vec::new();
    for &u in unexpected {
        let ushape = shape_of(u);
        for m in missing {
            let longest = u.len().max(m.key.len());
            let limit = (longest / 5).max(1);
            if u.len().abs_diff(m.key.len()) > limit {
                continue;
            }
            let d = strsim::osa_distance(u, &m.key);
            if d <= limit {
                candidates.push((d, ushape != m.shape, m.key.as_str(), u));
            }
        }
    }
    candidates.sort();
    let (mut used_m, mut used_u) = (BTreeSet::new(), BTreeSet::new());
    let mut out = Vec::new();
    for (_, _, m, u) in candidates {
        if !used_m.contains(m) && !used_u.contains(u) {
            used_m.insert(m);
            used_u.insert(u);
            out.push((m, u));
        }
    }
    out
}
