//! The stable text form of a compiled model, for snapshot tests of model
//! variants (`ecarc build --snapshot`, and `examples/snapshot_variants.rs`):
//! the cost report, then the IR of the programs that run the last stage.
//! Spans are left out so that editing comments in a `.ecar` file does not
//! churn snapshots; everything that changes what the model computes shows.

use crate::artifact::Artifact;
use crate::cost::render::render;
use crate::ir::text;

pub fn snapshot(a: &Artifact) -> String {
    let mut out = render(&a.report);
    out.push('\n');
    let last = a.spec.schedule.num_stages().saturating_sub(1);
    let names = a.program.sample_plan().map(|p| p.programs_of_stage(last)).unwrap_or_default();
    for name in names {
        if let Some(g) = a.program.graph(name) {
            out.push('\n');
            out.push_str(&text::print(g, None));
        }
    }
    out
}
