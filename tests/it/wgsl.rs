//! The WGSL the wgpu backend runs for one fused block of each family, pinned
//! as insta snapshots: the kernel (its kernel-IR text) and every stage the
//! emitter gives each of its anchor-free parts. The block is the largest
//! fused kernel (most nodes) of the programs the family's sample runs, so a
//! change of fusion or of the emitter shows here as a reviewed diff.

use crate::common::{root, spec_of};
use ecarc_compiler::codegen::emit;
use ecarc_compiler::ir::Op;
use ecarc_compiler::kernel::split::{self, Operand};
use ecarc_compiler::kernel::Kernel;
use ecarc_compiler::pass::Pipeline;

/// The anchor-free parts the wgpu backend emits for `k`, named.
fn parts(k: &Kernel) -> Vec<(String, Kernel)> {
    let (k, stored) = match split::stored(k) {
        Some((part, axis, start)) => (part, Some(format!("stored into axis {axis} from row {start}"))),
        None => (k.clone(), None),
    };
    let mut out = Vec::new();
    match split::split_at_anchor(&k) {
        None => out.push(("element-wise kernel".to_string(), split::whole(&k).kernel)),
        Some(s) => {
            for (i, o) in s.operands.iter().enumerate() {
                if let Operand::Computed(p) = o {
                    out.push((format!("prologue of {} operand {i}", s.anchor.name()), p.kernel.clone()));
                }
            }
            if let Some(e) = s.epilogue {
                out.push((format!("epilogue of {}", s.anchor.name()), e.kernel));
            }
        }
    }
    if let Some(how) = stored {
        for p in &mut out {
            p.0 = format!("{} ({how})", p.0);
        }
    }
    out
}

fn block_of(family: &str) -> String {
    let spec = spec_of(&root().join(format!("examples/tiny/{family}.ecar")), &[]);
    let program = ecarc_compiler::lower::lower(&spec, &Default::default()).expect("lowers");
    let sampled = program.sample_plan().expect("a sample plan").programs();
    let mut best: Option<(String, Kernel)> = None;
    for g in program.graphs.iter().filter(|g| sampled.contains(&g.name.as_str())) {
        let mut f = g.clone();
        Pipeline::kernels().run(&mut f).expect("optimises");
        for n in f.g.node_weights() {
            if let Op::Fused(k) = &n.op {
                if best.as_ref().is_none_or(|(_, b)| k.nodes.len() > b.nodes.len()) {
                    best = Some((g.name.clone(), (**k).clone()));
                }
            }
        }
    }
    let (program, k) = best.expect("a fused kernel");
    let mut text = format!("// the largest fused kernel of `{program}` ({} nodes)\n", k.nodes.len());
    text.push_str(&k.lines().join("\n"));
    text.push('\n');
    for (what, part) in parts(&k) {
        let p = emit(&part).unwrap_or_else(|e| panic!("{family}: {what}: {e}"));
        text.push_str(&format!("\n// ==== {what}: {} stage(s), scratch {:?}\n", p.stages.len(), p.scratch));
        for (i, s) in p.stages.iter().enumerate() {
            text.push_str(&format!(
                "// ---- stage {i}: {} threads, reads {:?}, writes {:?}, meta {:?}\n{}",
                s.threads, s.reads, s.write, s.meta, s.wgsl
            ));
        }
    }
    text
}

#[test]
fn one_fused_block_per_family_as_wgsl() {
    for family in ["var", "llamagen", "ecar", "dit", "var_dd", "llamagen_dd"] {
        insta::assert_snapshot!(format!("wgsl_block_{family}"), block_of(family));
    }
}
