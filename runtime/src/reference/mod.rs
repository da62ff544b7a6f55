//! The reference interpreter (being written).
use crate::backend::*;
use crate::error::Result;
use crate::tensor::HostTensor;
use ecarc_compiler::ir::{Bindings, Graph};

pub struct Reference;
impl Reference {
    pub fn new() -> Self {
        Reference
    }
}
impl Backend for Reference {
    fn name(&self) -> &'static str {
        "reference"
    }
    fn capabilities(&self) -> Capabilities {
        todo!()
    }
    fn upload(&self, _t: &HostTensor) -> Result<Buffer> {
        todo!()
    }
    fn download(&self, _b: &Buffer) -> Result<HostTensor> {
        todo!()
    }
    fn prepare(&self, _g: &Graph) -> Result<Executable> {
        todo!()
    }
    fn run(&self, _e: &Executable, _b: &Bindings, _a: &Args) -> Result<Vec<(String, Buffer)>> {
        todo!()
    }
    fn synchronize(&self) -> Result<()> {
        todo!()
    }
}
