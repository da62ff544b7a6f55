//! The plan as text (`ecarc graph --plan FILE`). Stages print 1-based, as
//! progress shows them; `i` is a repeat's iteration (from 0).
//!
//! ```text
//! plan "sample" (16 stages, 47 runs)
//!   input labels: i64[B]
//!   zeros cache.k.0 cache.v.0 ...
//!   [stage 1] step.first  T=1 P=0
//!     labels <- labels + null 10
//!     cfg_scale <- guidance
//!     uniform <- uniform "stage.{stage}"
//!     -> tokens: tokens, tokens_all
//!     keep out:tokens as "stage.{stage}.tokens"
//!   repeat 15 {
//!     [stage 2+i] step.next  T=1 P=1+i
//!     ...
//!   }
//!   result image = image
//! ```
//! A port that reads the value of its own name is listed once in a
//! `carried` line (the KV cache: `cache.k.0 cache.v.0 ...`).

use super::{Count, Entry, Item, Keep, Plan, Source, Table};
use std::fmt::Write;

fn count(c: Count, plus_one: bool) -> String {
    let base = c.base + u64::from(plus_one);
    match c.step {
        0 => base.to_string(),
        1 => format!("{base}+i"),
        s => format!("{base}+{s}i"),
    }
}

fn source(s: &Source) -> String {
    match s {
        Source::Value(v) => v.clone(),
        Source::Labels { null_class: None } => "labels".into(),
        Source::Labels { null_class: Some(n) } => format!("labels + null {n}"),
        Source::Normal { stream } => format!("normal {stream:?}"),
        Source::Uniform { stream } => format!("uniform {stream:?}"),
        Source::Zeros => "zeros".into(),
        Source::Scalar(v) if v.0.len() == 1 => format!("{}", v.0[0]),
        Source::Scalar(v) => {
            let shown: Vec<String> = v.0.iter().take(3).map(|x| format!("{x}")).collect();
            format!("series[{}] ({}{})", v.0.len(), shown.join(", "), if v.0.len() > 3 { ", ..." } else { "" })
        }
        Source::Guidance => "guidance".into(),
        Source::Setting(s) => format!("setting {}", s.port()),
        Source::Table(t) => match t {
            Table::Levels => "table levels".into(),
            Table::KeyLevels => "table key_levels".into(),
            Table::RopeCos => "table rope_cos".into(),
            Table::RopeSin => "table rope_sin".into(),
            Table::NoiseData(super::DataLen::Stages(n)) => format!("table noise_data(data stages {n})"),
            Table::NoiseData(super::DataLen::Given(v)) => format!("table noise_data(data stages = {v})"),
        },
    }
}

fn entry(out: &mut String, e: &Entry, indent: &str, stages: u64) {
    let stage = if e.stage.step == 0 && e.stage.base >= stages {
        "finish".to_string()
    } else {
        format!("stage {}", count(e.stage, true))
    };
    let _ = writeln!(out, "{indent}[{stage}] {}  T={} P={}", e.program, e.tokens, count(e.past, false));
    let mut carried = Vec::new();
    for b in &e.inputs {
        match &b.source {
            Source::Value(v) if *v == b.port => carried.push(v.as_str()),
            s => {
                let _ = writeln!(out, "{indent}  {} <- {}", b.port, source(s));
            }
        }
    }
    if !carried.is_empty() {
        let _ = writeln!(out, "{indent}  carried {}", carried.join(" "));
    }
    let mut outs: Vec<(String, Vec<&str>)> = Vec::new();
    for (o, v) in &e.outputs {
        match outs.iter_mut().find(|(n, _)| n == o) {
            Some((_, vs)) => vs.push(v),
            None => outs.push((o.clone(), vec![v])),
        }
    }
    let (same, other): (Vec<_>, Vec<_>) = outs.iter().partition(|(o, vs)| vs.len() == 1 && vs[0] == o);
    if !other.is_empty() {
        let shown: Vec<String> = other.iter().map(|(o, vs)| format!("{o}: {}", vs.join(", "))).collect();
        let _ = writeln!(out, "{indent}  -> {}", shown.join("; "));
    }
    if !same.is_empty() {
        let shown: Vec<&str> = same.iter().map(|(o, _)| o.as_str()).collect();
        let _ = writeln!(out, "{indent}  -> carried {}", shown.join(" "));
    }
    for r in &e.records {
        let keep = match r.keep {
            Keep::Stages => "stages",
            Keep::Debug => "debug",
            Keep::Nothing => "never",
        };
        let _ = writeln!(out, "{indent}  keep {} as {:?} ({keep})", r.port, r.name);
    }
}

/// The text of one plan.
pub fn print(p: &Plan) -> String {
    let mut out = String::new();
    let plural = |n: u64, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    let _ = writeln!(out, "plan {:?} ({}, {})", p.name, plural(p.stages, "stage"), plural(p.total_runs(), "run"));
    for i in &p.inputs {
        let dims: Vec<String> = i.ty.shape.iter().map(|d| d.to_string()).collect();
        let default = i.default.as_ref().map(|s| format!(" = {}", source(s))).unwrap_or_default();
        let _ = writeln!(out, "  input {}: {}[{}]{default}", i.name, i.ty.dtype.name(), dims.join(", "));
    }
    if !p.zeros.is_empty() {
        let _ = writeln!(out, "  zeros {}", p.zeros.join(" "));
    }
    for item in &p.items {
        match item {
            Item::Run(e) => entry(&mut out, e, "  ", p.stages),
            Item::Repeat { times, body } => {
                let _ = writeln!(out, "  repeat {times} {{");
                for e in body {
                    entry(&mut out, e, "    ", p.stages);
                }
                let _ = writeln!(out, "  }}");
            }
        }
    }
    for (name, v) in &p.results {
        let _ = writeln!(out, "  result {name} = {v}");
    }
    out
}
