//! Architecture search over a space of designs (`ecarc search`).
//!
//! A search space is a model file with alternatives (`depth in 16..=32 step
//! 8`, `scales in { [...], [...] }`) and `where` constraints. A search visits
//! its designs ([`design`]: all of them, or a seeded sample; [`shard`]: a
//! deterministic share for one machine), checks and costs each one
//! ([`evaluate`]: the checker's rules with memoised parts, the symbolic cost
//! formulas), keeps the designs within the constraints on the exact Pareto
//! front of the objectives ([`objective`], [`pareto`]), counts and explains
//! the broken designs ([`invalid`]), in parallel ([`run`]). Results are
//! records in JSON or CSV ([`record`]); shard results merge into the single
//! run's ([`merge`]); a design is written back as a concrete model file
//! ([`emit`]); the front can be plotted ([`plot`]) and its best designs
//! measured on a backend ([`measure`]). See docs/search.md.

pub mod design;
pub mod emit;
pub mod evaluate;
pub mod invalid;
pub mod measure;
pub mod merge;
pub mod objective;
pub mod pareto;
pub mod plot;
pub mod record;
pub mod run;
pub mod shard;

pub use design::Selection;
pub use evaluate::Space;
pub use objective::Metric;
pub use record::SearchResult;
pub use run::{run, Options, RunStats};
pub use shard::Shard;
