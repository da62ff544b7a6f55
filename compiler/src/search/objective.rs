//! What a search measures: the metrics of a design, the objectives it
//! minimises and the `where` constraints it must satisfy.

use crate::spec::ConstraintSpec;
use ecarc_grammar::ast::CmpOp;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

/// A figure of a design. All are exact integers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Learned parameters of the generator.
    Params,
    /// MACs of one teacher-forced forward (batch 1, no CFG).
    ForwardMacs,
    /// MACs of one whole sample (every stage and step, CFG doubled).
    SampleMacs,
    /// Peak activation memory of the lowered programs (needs lowering each design).
    PeakActivationBytes,
    /// Stages of the schedule.
    Stages,
    /// Token positions over all stages.
    Tokens,
}

impl Metric {
    pub const ALL: [Metric; 6] = [
        Metric::Params,
        Metric::ForwardMacs,
        Metric::SampleMacs,
        Metric::PeakActivationBytes,
        Metric::Stages,
        Metric::Tokens,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Metric::Params => "params",
            Metric::ForwardMacs => "forward_macs",
            Metric::SampleMacs => "sample_macs",
            Metric::PeakActivationBytes => "peak_activation_bytes",
            Metric::Stages => "stages",
            Metric::Tokens => "tokens",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.name() == name)
    }

    fn slot(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A metric to minimise, or with `max:` to maximise (`max:params`: the most
/// capacity for the compute).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Objective {
    pub metric: Metric,
    pub maximise: bool,
}

impl Objective {
    /// The value the front minimises.
    pub fn key(&self, value: i128) -> i128 {
        if self.maximise {
            -value
        } else {
            value
        }
    }
}

impl std::fmt::Display for Objective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.maximise {
            write!(f, "max:{}", self.metric)
        } else {
            write!(f, "{}", self.metric)
        }
    }
}

impl std::str::FromStr for Objective {
    type Err = String;
    fn from_str(s: &str) -> Result<Objective, String> {
        let (maximise, name) = match s.trim() {
            t if t.starts_with("max:") => (true, t["max:".len()..].trim()),
            t if t.starts_with("min:") => (false, t["min:".len()..].trim()),
            t => (false, t),
        };
        let metric = Metric::from_name(name).ok_or_else(|| {
            let names: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
            format!("unknown objective `{name}`; objectives: {} (each may be prefixed `max:`)", names.join(", "))
        })?;
        Ok(Objective { metric, maximise })
    }
}

impl Serialize for Objective {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Objective {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Objective, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// `--objective sample_macs,params`: at least one objective, each metric once.
pub fn parse_objectives(text: &str) -> Result<Vec<Objective>, String> {
    let mut out: Vec<Objective> = Vec::new();
    for part in text.split(',') {
        let o: Objective = part.parse()?;
        if out.iter().any(|x| x.metric == o.metric) {
            return Err(format!("objective `{}` is given twice", o.metric));
        }
        out.push(o);
    }
    Ok(out)
}

/// The figures of one design; `None` where not computed (peak memory unless asked for).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Values(pub [Option<i128>; 6]);

impl Values {
    pub(crate) fn get(&self, m: Metric) -> Option<i128> {
        self.0[m.slot()]
    }
    pub(crate) fn set(&mut self, m: Metric, v: i128) {
        self.0[m.slot()] = Some(v);
    }
}

/// A `where METRIC OP BOUND` constraint of the model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Constraint {
    pub metric: Metric,
    pub op: CmpOp,
    pub bound: f64,
}

impl Constraint {
    /// From the checked constraint (metric and operator were validated by the checker).
    pub fn from_spec(c: &ConstraintSpec) -> Result<Constraint, String> {
        let metric = Metric::from_name(&c.metric).ok_or_else(|| format!("unknown metric `{}`", c.metric))?;
        let op = match c.op.as_str() {
            "<=" => CmpOp::Le,
            ">=" => CmpOp::Ge,
            "<" => CmpOp::Lt,
            ">" => CmpOp::Gt,
            "==" => CmpOp::Eq,
            "!=" => CmpOp::Ne,
            other => return Err(format!("unknown comparison `{other}`")),
        };
        Ok(Constraint { metric, op, bound: c.bound })
    }

    /// Whether the value satisfies the constraint, compared exactly (an
    /// integer against a decimal bound, without rounding the integer).
    pub fn holds(&self, value: i128) -> bool {
        let ord = cmp_int_f64(value, self.bound);
        match self.op {
            CmpOp::Le => ord != Ordering::Greater,
            CmpOp::Ge => ord != Ordering::Less,
            CmpOp::Lt => ord == Ordering::Less,
            CmpOp::Gt => ord == Ordering::Greater,
            CmpOp::Eq => ord == Ordering::Equal,
            CmpOp::Ne => ord != Ordering::Equal,
        }
    }
}

impl std::fmt::Display for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.metric, self.op.as_str(), crate::eval::fmt_f64(self.bound))
    }
}

/// `v` compared with `b`, exactly.
pub(crate) fn cmp_int_f64(v: i128, b: f64) -> Ordering {
    if b.is_nan() {
        // Not produced by the checker; compare as if the bound were unreachable.
        return Ordering::Less;
    }
    // |i128| < 1.8e38: beyond that the bound is above or below every integer.
    if b >= 1.7e38 {
        return Ordering::Less;
    }
    if b <= -1.7e38 {
        return Ordering::Greater;
    }
    let fl = b.floor();
    match v.cmp(&(fl as i128)) {
        Ordering::Equal if b > fl => Ordering::Less,
        o => o,
    }
}
