//! Dead-code elimination: removes every node the outputs do not need (by the
//! one liveness analysis), sources included, so a program declares only the
//! inputs, states and parameters it reads.

use super::Pass;
use crate::ir::liveness::Liveness;
use crate::ir::Graph;

pub struct Dce;

impl Pass for Dce {
    fn name(&self) -> &'static str {
        "dce"
    }
    fn run(&self, g: &mut Graph) -> bool {
        // A cyclic graph is left for the verifier to report.
        let Some(l) = Liveness::of(g) else { return false };
        let dead: Vec<_> = l.dead().collect();
        for n in &dead {
            g.g.remove_node(*n);
        }
        if !dead.is_empty() {
            g.memory = None;
        }
        !dead.is_empty()
    }
}
