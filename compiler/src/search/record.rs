//! What a search writes: one record per design on the front, and the whole
//! result (space, settings, counts, front, broken designs) as JSON, which
//! `ecarc search merge` reads back; the front alone as CSV.

use super::design::Selection;
use super::invalid::InvalidGroup;
use super::objective::{Metric, Objective};
use serde::{Deserialize, Serialize};

/// Bumped when the file's structure changes.
pub(crate) const FORMAT: &str = "ecarc-search/1";

/// One design on the front.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DesignRecord {
    /// The design's index in the space (mixed radix over the axes, last fastest).
    pub index: u128,
    /// The option of each axis, `(path, option)`, in axis order.
    pub design: Vec<(String, String)>,
    pub params: i128,
    pub forward_macs: i128,
    pub sample_macs: i128,
    pub stages: i128,
    pub tokens: i128,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_activation_bytes: Option<i128>,
    /// Measured on a backend (`--measure`), for the best designs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds_per_image: Option<f64>,
    /// Designs with exactly these objectives (this one has the smallest index).
    pub ties: u64,
}

impl DesignRecord {
    pub(crate) fn value(&self, m: Metric) -> Option<i128> {
        match m {
            Metric::Params => Some(self.params),
            Metric::ForwardMacs => Some(self.forward_macs),
            Metric::SampleMacs => Some(self.sample_macs),
            Metric::Stages => Some(self.stages),
            Metric::Tokens => Some(self.tokens),
            Metric::PeakActivationBytes => self.peak_activation_bytes,
        }
    }
}

/// How many designs were visited and what became of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Designs visited.
    pub designs: u128,
    /// Checked, costed and within the constraints.
    pub valid: u128,
    /// Checked and costed, outside a constraint.
    pub rejected: u128,
    /// Broken (see `invalid`).
    pub invalid: u128,
}

impl Counts {
    pub(crate) fn add(&mut self, o: &Counts) {
        self.designs += o.designs;
        self.valid += o.valid;
        self.rejected += o.rejected;
        self.invalid += o.invalid;
    }
}

/// An axis of the space, for readers of the result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AxisInfo {
    pub path: String,
    pub options: usize,
    /// Option labels (a long axis: its first and last few).
    pub labels: Vec<String>,
}

/// Designs outside one constraint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedCount {
    pub constraint: String,
    pub count: u128,
}

/// A search's result, for one shard or the whole run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchResult {
    pub format: String,
    /// The model searched and the file it is in.
    pub model: String,
    pub file: String,
    /// Identifies the space and settings: shards merge only when it is equal.
    pub fingerprint: String,
    pub total: u128,
    pub axes: Vec<AxisInfo>,
    pub objectives: Vec<Objective>,
    pub constraints: Vec<String>,
    pub selection: Selection,
    /// The shard count and the shards this result covers.
    pub shard_count: u32,
    pub shards: Vec<u32>,
    pub counts: Counts,
    pub rejected: Vec<RejectedCount>,
    /// The Pareto front, sorted by the objectives (first objective first).
    pub front: Vec<DesignRecord>,
    /// Broken designs by problem, most frequent first.
    pub invalid: Vec<InvalidGroup>,
    /// The backend that measured `seconds_per_image`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_on: Option<String>,
}

impl SearchResult {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a search result serialises")
    }

    pub fn from_json(text: &str) -> Result<SearchResult, String> {
        #[derive(Deserialize)]
        struct Head {
            format: Option<String>,
        }
        let head: Head = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        match head.format.as_deref() {
            Some(FORMAT) => {}
            Some(other) => return Err(format!("format `{other}`, this ecarc reads `{FORMAT}`")),
            None => return Err("not an `ecarc search` result (no `format`)".into()),
        }
        // Straight from the text: `serde_json::Value` cannot hold 128-bit integers.
        serde_json::from_str(text).map_err(|e| format!("malformed search result: {e}"))
    }

    /// Whether every shard of the run is in this result.
    pub(crate) fn complete(&self) -> bool {
        self.shards.len() == self.shard_count as usize
    }

    /// The front as CSV: the design index, one column per axis, the figures.
    pub fn to_csv(&self) -> String {
        let mut header: Vec<String> = vec!["index".into()];
        header.extend(self.axes.iter().map(|a| a.path.clone()));
        header.extend(["params", "forward_macs", "sample_macs", "stages", "tokens"].map(String::from));
        let peak = self.front.iter().any(|r| r.peak_activation_bytes.is_some());
        let measured = self.front.iter().any(|r| r.seconds_per_image.is_some());
        if peak {
            header.push("peak_activation_bytes".into());
        }
        if measured {
            header.push("seconds_per_image".into());
        }
        header.push("ties".into());
        let mut out = csv_line(&header);
        for r in &self.front {
            let mut row = vec![r.index.to_string()];
            row.extend(r.design.iter().map(|(_, v)| v.clone()));
            row.extend([r.params, r.forward_macs, r.sample_macs, r.stages, r.tokens].map(|v| v.to_string()));
            if peak {
                row.push(r.peak_activation_bytes.map_or(String::new(), |v| v.to_string()));
            }
            if measured {
                row.push(r.seconds_per_image.map_or(String::new(), |v| format!("{v}")));
            }
            row.push(r.ties.to_string());
            out.push_str(&csv_line(&row));
        }
        out
    }
}

/// One CSV line (RFC 4180 quoting).
fn csv_line(fields: &[String]) -> String {
    let quoted: Vec<String> = fields
        .iter()
        .map(|f| if f.contains([',', '"', '\n', '\r']) { format!("\"{}\"", f.replace('"', "\"\"")) } else { f.clone() })
        .collect();
    format!("{}\n", quoted.join(","))
}

/// A stable 64-bit FNV-1a hash, hex.
pub(crate) fn fingerprint(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0xff]) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}
