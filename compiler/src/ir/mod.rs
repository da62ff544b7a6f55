//! The graph IR: step programs over a closed set of ops with symbolic shapes.
//! See docs/ir.md.

pub mod dim;
pub mod dot;
pub mod graph;
pub mod infer;
pub mod liveness;
pub mod memory;
pub mod op;
pub mod text;
pub mod verify;

pub use dim::{Bindings, Dim, Sym};
pub use graph::{Graph, Node, TensorType};
pub use op::{DType, Op, F};
