//! ecarc's compiler: the typed, checked [`spec::ModelSpec`] (this crate's first
//! layer), then the graph IR, passes and cost model built on it.

pub mod check;
pub(crate) mod eval;
pub(crate) mod reader;
pub mod spec;

pub use spec::ModelSpec;
pub mod artifact;
pub mod codegen;
pub mod cost;
pub mod ir;
pub mod kernel;
pub mod lower;
pub mod pass;
pub mod plan;
pub mod roles;
pub mod search;
pub mod session;
pub mod snapshot;
pub mod space;
