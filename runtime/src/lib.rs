//! ecarc's runtime: backends behind one [`Backend`] trait (the reference
//! interpreter first, the oracle every later backend is tested against),
//! weights, the schedule driver that runs any model's stage schedule, and
//! image output. See docs/runtime.md.

pub mod backend;
pub mod checkpoint;
pub mod cpu;
pub mod driver;
pub mod error;
pub mod image_out;
pub mod machine;
pub mod memory;
pub mod output;
pub mod reference;
pub mod rng;
pub mod tensor;
#[cfg(test)]
mod test_models;
pub mod webgpu;
pub mod weights;

pub use backend::{backend_by_name, Args, Backend, Buffer, Capabilities, Executable};
pub use error::{Result, RuntimeError};
pub use tensor::{Data, HostTensor};
