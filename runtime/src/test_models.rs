//! What the backends' unit tests share: the fused kernels of the models in
//! the repository, as the driver runs them.

use ecarc_compiler::ir::{Bindings, Op};
use ecarc_compiler::kernel::Kernel;

/// Every fused kernel of a model's programs (after `Pipeline::kernels()`),
/// each with the bindings its plans run it under (first and second
/// iteration, `images` images), deduplicated.
pub(crate) fn model_kernels(path: &std::path::Path, images: u64) -> Vec<(Kernel, Bindings)> {
    use ecarc_compiler::session::{check_paths, Outcome};
    let s = check_paths(&[path], &[]);
    assert!(!s.has_errors(), "{} does not check", path.display());
    let Some(Outcome::Model(spec)) = s.models.into_iter().next().map(|m| m.outcome) else {
        panic!("{}: one model expected", path.display())
    };
    let program = ecarc_compiler::lower::lower(&spec, &Default::default()).expect("lowers");
    let mut binds: std::collections::HashMap<&str, Vec<Bindings>> = Default::default();
    for plan in &program.plans {
        for item in &plan.items {
            for e in item.entries() {
                for i in 0..item.times().min(2) {
                    let b = e.bindings(images, i);
                    let v = binds.entry(e.program.as_str()).or_default();
                    if !v.contains(&b) {
                        v.push(b);
                    }
                }
            }
        }
    }
    let pipeline = ecarc_compiler::pass::Pipeline::kernels();
    let mut out: Vec<(Kernel, Bindings)> = vec![];
    for g in &program.graphs {
        let mut f = g.clone();
        pipeline.run(&mut f).unwrap_or_else(|e| panic!("{e}"));
        for n in f.g.node_weights() {
            if let Op::Fused(k) = &n.op {
                for b in binds.get(g.name.as_str()).into_iter().flatten() {
                    if !out.iter().any(|(k2, b2)| **k == *k2 && b == b2) {
                        out.push(((**k).clone(), *b));
                    }
                }
            }
        }
    }
    out
}
