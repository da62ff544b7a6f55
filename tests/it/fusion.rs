//! The optimiser's fusion: fused programs compute what the unfused ones do
//! (bit for bit on the reference backend, whose fused nodes run on the kernel
//! IR's interpreter), and the published models dispatch fewer kernels and
//! move fewer bytes per sample.

use crate::common::{model_files, root, spec_of};
use ecarc_compiler::ir::{Graph, Op};
use ecarc_compiler::kernel::traffic::{self, Counter, Dispatches};
use ecarc_compiler::kernel::Expr;
use ecarc_compiler::lower::{lower, lower_with, LowerOptions, Program};
use ecarc_compiler::pass::Pipeline;
use ecarc_compiler::plan::Keep;
use ecarc_runtime::driver::{Generator, Quiet, SampleOptions, SampleOutput};
use ecarc_runtime::reference::Reference;
use ecarc_runtime::weights::Weights;
use std::collections::HashMap;

const TINY: [&str; 6] = ["var", "llamagen", "ecar", "dit", "var_dd", "llamagen_dd"];

fn fused(p: &Program) -> Vec<Graph> {
    let pipeline = Pipeline::kernels().checked();
    p.graphs
        .iter()
        .map(|g| {
            let mut f = g.clone();
            pipeline.run(&mut f).unwrap_or_else(|e| panic!("{e}"));
            f
        })
        .collect()
}

fn sample(name: &str, sets: &[&str], unoptimised: bool) -> SampleOutput {
    let spec = spec_of(&root().join(format!("examples/tiny/{name}.ecar")), sets);
    let w = Weights::random(&spec, 0);
    let backend = Reference::new();
    let opts = LowerOptions { unoptimised, ..LowerOptions::default() };
    let program = lower_with(&spec, &Default::default(), opts).expect("lowers");
    assert_eq!(program.optimise, !unoptimised);
    let params = w.upload(&backend).unwrap();
    let g = Generator::new(spec, program, &backend, params).expect("generator");
    g.sample(&SampleOptions { labels: vec![1, 3], seed: 11, keep: Keep::Debug }, &Quiet).expect("sample")
}

#[test]
fn optimised_equals_unoptimised_through_every_tiny_sample() {
    // Every kept value of the sample (tokens of each stage, latents, the
    // debug records of every step) and the image: bit for bit, so greedy
    // tokens are identical too.
    for name in TINY {
        let a = sample(name, &[], false);
        let b = sample(name, &[], true);
        assert_eq!(a.stages.len(), b.stages.len(), "{name}");
        for ((na, ta), (nb, tb)) in a.stages.iter().zip(&b.stages) {
            assert_eq!(na, nb, "{name}");
            assert_eq!(ta, tb, "{name}: `{na}` differs fused vs unfused");
        }
        assert_eq!(a.image, b.image, "{name}: the image differs fused vs unfused");
    }
}

/// Kernels and bytes per sample of one image, unfused and fused.
fn per_sample(path: &std::path::Path) -> (Dispatches, Dispatches, Vec<Graph>) {
    let spec = spec_of(path, &[]);
    let p = lower(&spec, &Default::default()).expect("lowers");
    let f = fused(&p);
    let plan = p.sample_plan().expect("a sample plan");
    let before: HashMap<&str, &Graph> = p.graphs.iter().map(|g| (g.name.as_str(), g)).collect();
    let after: HashMap<&str, &Graph> = f.iter().map(|g| (g.name.as_str(), g)).collect();
    let u = traffic::of_plan(plan, &before, 1, Counter::unfused);
    let d = traffic::of_plan(plan, &after, 1, Counter::dispatched);
    (u, d, f)
}

#[test]
fn published_models_dispatch_fewer_kernels_and_move_fewer_bytes() {
    for m in ["ecar_l", "var_d16", "llamagen_l", "dit_xl2"] {
        let (u, d, graphs) = per_sample(&root().join(format!("models/{m}.ecar")));
        let fewer = |a: u64, b: u64| 1.0 - b as f64 / a as f64;
        let (ub, db) = (u.bytes - u.cache_bytes, d.bytes - d.cache_bytes);
        eprintln!(
            "{m}: kernels {} -> {} ({:.2}x fewer), activation bytes {} -> {} ({:.0}% fewer; KV-cache reads {} of them; the rest {:.0}% fewer)",
            u.kernels,
            d.kernels,
            u.kernels as f64 / d.kernels as f64,
            u.bytes,
            d.bytes,
            100.0 * fewer(u.bytes, d.bytes),
            d.cache_bytes,
            100.0 * fewer(ub, db),
        );
        // The targets: 3x fewer kernels, 40% fewer bytes. Attention
        // reads the same KV-cache rows fused or not; in LlamaGen's 256 raster
        // steps those reads are most of the bytes, so there the 40% is asserted
        // of the bytes fusion can change (docs/passes.md).
        assert!(u.kernels >= 3 * d.kernels, "{m}: {} -> {} kernels is less than 3x fewer", u.kernels, d.kernels);
        assert!(fewer(ub, db) >= 0.4, "{m}: {ub} -> {db} bytes besides the KV cache");
        if m != "llamagen_l" {
            assert!(fewer(u.bytes, d.bytes) >= 0.4, "{m}: {} -> {} bytes", u.bytes, d.bytes);
        }
        // No kernel with two anchors (the verifier's rule, asserted here too).
        for g in &graphs {
            for n in g.g.node_weights() {
                if let Op::Fused(k) = &n.op {
                    let anchors = k.nodes.iter().filter(|x| matches!(x.expr, Expr::Anchor { .. })).count();
                    assert!(anchors <= 1, "{m}/{}: a kernel with {anchors} anchors", g.name);
                }
            }
        }
    }
}

#[test]
fn every_model_fuses_and_verifies() {
    for path in model_files() {
        let spec = spec_of(&path, &[]);
        let p = lower(&spec, &Default::default()).expect("lowers");
        fused(&p);
    }
}

/// The backbone step (`step.next`) of a published model with `depth`
/// blocks, after the kernel passes.
fn fused_step(model: &str, depth: u32) -> Graph {
    let set = format!("backbone.depth={depth}");
    let spec = spec_of(&root().join(format!("models/{model}.ecar")), &[set.as_str()]);
    let p = lower(&spec, &Default::default()).expect("lowers");
    let mut g = p.graph("step.next").expect("a step.next program").clone();
    Pipeline::kernels().checked().run(&mut g).unwrap_or_else(|e| panic!("{e}"));
    g
}

/// Kernels one transformer block adds to a backbone step: the step program
/// fused at depth 2 minus at depth 1, split into kernels over the step's
/// tokens (`[B, T, C]` or a KV cache written in place) and the conditioning
/// projection (adaLN, `[B, C]`: once per image or per step), which the issue
/// counts on its own line.
fn kernels_per_block(model: &str) -> (usize, usize) {
    let count = |depth: u32| {
        let g = fused_step(model, depth);
        let mut token = 0;
        let mut cond = 0;
        for n in g.g.node_weights() {
            if n.op.is_source() || matches!(n.op, Op::Reshape { .. } | Op::Permute { .. } | Op::Slice { .. }) {
                continue;
            }
            let store = matches!(&n.op, Op::WriteSlice { .. }) || matches!(&n.op, Op::Fused(k) if k.store().is_some());
            if store || n.ty.rank() > 2 {
                token += 1;
            } else {
                cond += 1;
            }
        }
        (token, cond)
    };
    let (t1, c1) = count(1);
    let (t2, c2) = count(2);
    (t2 - t1, c2 - c1)
}

#[test]
fn a_transformer_block_is_a_few_kernels_per_step() {
    // (model, kernels over the tokens per block, at most): the target
    // is 7. LlamaGen's SwiGLU runs w1 and w3 as two GEMMs (matmuls sharing an
    // input are not merged yet), so its block is 9: docs/passes.md.
    for (m, most) in [("ecar_l", 7), ("var_d16", 7), ("dit_xl2", 7), ("llamagen_l", 9)] {
        let (token, cond) = kernels_per_block(m);
        eprintln!("{m}: {token} kernels per block per step, plus {cond} conditioning (adaLN) projection(s)");
        assert!(token <= most, "{m}: a block is {token} kernels per step (at most {most})");
        assert!(cond <= 1, "{m}: {cond} conditioning kernels per block");
    }
}

#[test]
fn fused_and_kernel_ir_of_one_block_per_family() {
    // The backbone step of each family with one block, after `fuse` and
    // `mem`: the fused graph with every kernel's IR under its `fused` node.
    for m in ["ecar_l", "var_d16", "llamagen_l", "dit_xl2"] {
        let text = ecarc_compiler::ir::text::print(&fused_step(m, 1), None);
        insta::with_settings!({snapshot_suffix => m, omit_expression => true, prepend_module_to_snapshot => false}, {
            insta::assert_snapshot!("fused_block", text);
        });
    }
}
