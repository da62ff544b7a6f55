//! The execution plan: what runs, as typed dataflow. A [`Plan`] is a list of
//! program runs ([`Entry`]) and repeats of them ([`Item::Repeat`]); each entry
//! says which program runs with which `T` and `P`, where every source of the
//! program comes from ([`Source`]), and which plan value each output becomes.
//! Values are named registers: an entry reads the values it names and its
//! outputs overwrite theirs, so a loop carries its state by name (the KV cache,
//! `f_hat`, the latent being integrated).
//!
//! Every family is a plan from the one lowering (`lower/plans.rs`); the runtime
//! interprets plans and knows no family. Progress, timings and the cost model's
//! sample figures all read the same plan. `ecarc graph --plan FILE` prints it
//! ([`text`]); [`verify`] checks that it is well formed.

pub mod layout;
pub mod text;
pub mod verify;

pub use layout::SeqLayout;

use crate::ir::{Bindings, TensorType};
use serde::{Deserialize, Serialize};

/// `base + step * i` for iteration `i` of a repeat (`step` is 0 outside one).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Count {
    pub base: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub step: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl Count {
    pub const fn at(base: u64) -> Count {
        Count { base, step: 0 }
    }
    pub const fn every(base: u64, step: u64) -> Count {
        Count { base, step }
    }
    pub fn eval(&self, i: u64) -> u64 {
        self.base + self.step * i
    }
}

/// The value of a scalar input: one for every run, or one per iteration of
/// the repeat the entry is in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Series(pub Vec<f64>);

impl Series {
    pub fn one(v: f64) -> Series {
        Series(vec![v])
    }
    pub fn at(&self, i: u64) -> f64 {
        let v = &self.0;
        if v.len() == 1 {
            v[0]
        } else {
            v.get(i as usize).copied().unwrap_or(f64::NAN)
        }
    }
}

/// A host table computed once from the plan's [`SeqLayout`] for an entry's
/// positions `P..P+T` (see `layout.rs`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    /// Stage index of each position: `i64[T]`.
    Levels,
    /// Stage index of every key position `0..P+T`: `i64[P + T]` (what the
    /// level masks of a cached step read).
    KeyLevels,
    /// 2D RoPE tables: `f32[T, head_dim / 2]`.
    RopeCos,
    RopeSin,
    /// Distilled Decoding's noise (0) / data (1) marker of each position: `i64[T]`.
    NoiseData(DataLen),
}

/// The run's sampling settings that programs read as inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Setting {
    Temperature,
    TopK,
    TopP,
}

impl Setting {
    /// The program input (and `ecarc graph --plan` name) of the setting.
    pub fn port(self) -> &'static str {
        match self {
            Setting::Temperature => "temperature",
            Setting::TopK => "top_k",
            Setting::TopP => "top_p",
        }
    }
}

/// How many body stages a DD forward is given as data.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataLen {
    /// A fixed number of stages.
    Stages(u64),
    /// The number held by the plan input of this name (an integer scalar).
    Given(String),
}

/// Where one source of a program comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// A plan value: a plan input, an earlier output, or a zero-initialised state.
    Value(String),
    /// The plan input `labels` (`i64[B]`); with a null class, followed by the
    /// null class once per image (the guided batch `i64[2B]`).
    Labels { null_class: Option<u64> },
    /// Standard normal noise of the source's shape from the seeded stream
    /// `stream` (`{stage}` in the name is the entry's stage).
    Normal { stream: String },
    /// Uniform numbers in `[0, 1)` of the source's shape, likewise.
    Uniform { stream: String },
    /// Zeros of the source's shape.
    Zeros,
    /// The source's shape filled with a value (per iteration, or constant).
    Scalar(Series),
    /// The guidance scale at the entry's stage, from the run's settings.
    Guidance,
    /// A sampling setting of the run (`temperature`, `top_k`, `top_p`): a
    /// scalar input, so that changing it never lowers again.
    Setting(Setting),
    /// A position table.
    Table(Table),
}

/// One program source and where it comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bind {
    /// The program's `input` or `state` name.
    pub port: String,
    pub source: Source,
}

/// Which values a record keeps: [`Keep::Stages`] records are what
/// `--save-tensors` writes; [`Keep::Debug`] records serve checks (a step's
/// inputs and raw results).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Keep {
    Nothing,
    Stages,
    Debug,
}

/// A value an entry reads or writes, kept under a name for the caller.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// `in:PORT` (a source the entry was given) or `out:NAME` (an output).
    pub port: String,
    /// The name it is kept under; `{stage}` is the entry's stage.
    pub name: String,
    pub keep: Keep,
}

/// One program run (per iteration, inside a repeat).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub program: String,
    /// The stage it belongs to (0-based; `stages` of the plan = finishing work
    /// after the schedule, such as decoding).
    pub stage: Count,
    /// The value of `T`.
    pub tokens: u64,
    /// The value of `P`.
    pub past: Count,
    /// Every `input` and `state` of the program.
    pub inputs: Vec<Bind>,
    /// Program output -> plan value (an output may feed several values).
    pub outputs: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<Record>,
}

impl Entry {
    /// The bindings of iteration `i` for `images` images.
    pub fn bindings(&self, images: u64, i: u64) -> Bindings {
        Bindings::new(images, self.tokens, self.past.eval(i))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Item {
    Run(Entry),
    /// The body `times` times, in order; iteration `i` evaluates every
    /// [`Count`] and [`Series`] at `i`.
    Repeat {
        times: u64,
        body: Vec<Entry>,
    },
}

impl Item {
    pub fn times(&self) -> u64 {
        match self {
            Item::Run(_) => 1,
            Item::Repeat { times, .. } => *times,
        }
    }
    pub fn entries(&self) -> &[Entry] {
        match self {
            Item::Run(e) => std::slice::from_ref(e),
            Item::Repeat { body, .. } => body,
        }
    }
}

/// A value the caller gives (or that is drawn when not given).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanInput {
    pub name: String,
    /// Its type; `B` is the number of images.
    pub ty: TensorType,
    /// What it is when the caller does not give it (`None`: required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Source>,
}

/// One entry point: a sample, a teacher-forced forward, a decode from one
/// kind of tokens, Distilled Decoding's training pairs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub name: String,
    /// Stages of the schedule this plan walks (for progress; 0 when none).
    pub stages: u64,
    pub inputs: Vec<PlanInput>,
    /// Values that start as zeros of the reading source's shape (carried
    /// state such as `f_hat` or the KV cache).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zeros: Vec<String>,
    pub items: Vec<Item>,
    /// Result name -> the value it is at the end.
    pub results: Vec<(String, String)>,
}

/// Every run of a plan, in order: `(entry, iteration)`.
pub struct Runs<'a> {
    items: &'a [Item],
    item: usize,
    iteration: u64,
    entry: usize,
}

impl<'a> Iterator for Runs<'a> {
    type Item = (&'a Entry, u64);
    fn next(&mut self) -> Option<(&'a Entry, u64)> {
        loop {
            let item = self.items.get(self.item)?;
            let entries = item.entries();
            if self.iteration >= item.times() || entries.is_empty() {
                self.item += 1;
                self.iteration = 0;
                self.entry = 0;
                continue;
            }
            let e = &entries[self.entry];
            let i = self.iteration;
            self.entry += 1;
            if self.entry == entries.len() {
                self.entry = 0;
                self.iteration += 1;
            }
            return Some((e, i));
        }
    }
}

impl Plan {
    /// Every program run in execution order, with its iteration index.
    pub fn runs(&self) -> Runs<'_> {
        Runs { items: &self.items, item: 0, iteration: 0, entry: 0 }
    }

    /// Every entry once (a repeat's body once).
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.items.iter().flat_map(|i| i.entries())
    }

    /// Program runs in all.
    pub fn total_runs(&self) -> u64 {
        self.items.iter().map(|i| i.times() * i.entries().len() as u64).sum()
    }

    /// Program runs per stage (index `stages` holds the finishing work).
    pub fn runs_per_stage(&self) -> Vec<u64> {
        let mut v = vec![0u64; self.stages as usize + 1];
        for (e, i) in self.runs() {
            let s = (e.stage.eval(i) as usize).min(self.stages as usize);
            v[s] += 1;
        }
        v
    }

    /// Programs that run for stage `stage`, each once, in order.
    pub fn programs_of_stage(&self, stage: u64) -> Vec<&str> {
        let mut v: Vec<&str> = Vec::new();
        for (e, i) in self.runs() {
            if e.stage.eval(i) == stage && !v.contains(&e.program.as_str()) {
                v.push(&e.program);
            }
        }
        v
    }

    pub fn input(&self, name: &str) -> Option<&PlanInput> {
        self.inputs.iter().find(|i| i.name == name)
    }

    /// Programs this plan runs, each once, in order of first use.
    pub fn programs(&self) -> Vec<&str> {
        let mut v: Vec<&str> = Vec::new();
        for e in self.entries() {
            if !v.contains(&e.program.as_str()) {
                v.push(&e.program);
            }
        }
        v
    }
}

/// `{stage}` in `template` replaced by `stage`.
pub fn expand(template: &str, stage: u64) -> String {
    template.replace("{stage}", &stage.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(program: &str, stage: Count) -> Entry {
        Entry {
            program: program.into(),
            stage,
            tokens: 1,
            past: Count::at(0),
            inputs: vec![],
            outputs: vec![],
            records: vec![],
        }
    }

    #[test]
    fn runs_walk_repeats_in_order() {
        let plan = Plan {
            name: "p".into(),
            stages: 3,
            inputs: vec![],
            zeros: vec![],
            items: vec![
                Item::Run(entry("a", Count::at(0))),
                Item::Repeat { times: 2, body: vec![entry("b", Count::every(1, 1)), entry("c", Count::every(1, 1))] },
                Item::Repeat { times: 0, body: vec![entry("never", Count::at(0))] },
                Item::Run(entry("d", Count::at(3))),
            ],
            results: vec![],
        };
        let order: Vec<(String, u64)> = plan.runs().map(|(e, i)| (e.program.clone(), i)).collect();
        let want = [("a", 0), ("b", 0), ("c", 0), ("b", 1), ("c", 1), ("d", 0)];
        assert_eq!(order, want.map(|(p, i)| (p.to_string(), i)).to_vec());
        assert_eq!(plan.total_runs(), 6);
        assert_eq!(plan.runs_per_stage(), vec![1, 2, 2, 1]);
        assert_eq!(plan.programs(), vec!["a", "b", "c", "never", "d"]);
    }

    #[test]
    fn series_and_counts_evaluate_per_iteration() {
        assert_eq!(Count::every(5, 2).eval(3), 11);
        assert_eq!(Series::one(0.5).at(7), 0.5);
        assert_eq!(Series(vec![1.0, 2.0]).at(1), 2.0);
        assert_eq!(expand("stage.{stage}.tokens", 4), "stage.4.tokens");
    }
}
