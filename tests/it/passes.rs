//! The optimiser's passes against the reference backend: every `cse` and
//! `fold` filetest computes the same bits before and after its passes; random
//! small programs of element-wise and layout ops compute the same values
//! after the whole standard pipeline; and the memory plans of the reference
//! models fit in no more than the unplanned peak.

use crate::common::{root, spec_of};
use crate::ir_files::{read, run_reference, run_reference_from};
use ecarc_compiler::ir::liveness::Liveness;
use ecarc_compiler::ir::memory::ALIGN;
use ecarc_compiler::ir::op::{Binary, Unary, F};
use ecarc_compiler::ir::text::{parse, print};
use ecarc_compiler::ir::{Bindings, Dim, Graph, Op, Sym, TensorType};
use ecarc_compiler::pass::{Pipeline, PASS_NAMES};
use ecarc_runtime::tensor::HostTensor;
use petgraph::stable_graph::NodeIndex;
use proptest::prelude::*;
use std::collections::HashMap;

/// Whether two results are the same bits (any NaN equals any NaN).
fn same_bits(a: &[(String, HostTensor)], b: &[(String, HostTensor)]) -> Result<(), String> {
    if a.len() != b.len() {
        return Err(format!("{} outputs, then {}", a.len(), b.len()));
    }
    for ((na, ta), (nb, tb)) in a.iter().zip(b) {
        if na != nb || ta.shape != tb.shape || ta.dtype() != tb.dtype() {
            return Err(format!("output {na} {:?} became {nb} {:?}", ta.shape, tb.shape));
        }
        match (ta.as_f32(), tb.as_f32(), ta.as_i64(), tb.as_i64()) {
            (Some(x), Some(y), ..) => {
                for (k, (u, v)) in x.iter().zip(y).enumerate() {
                    if u.to_bits() != v.to_bits() && !(u.is_nan() && v.is_nan()) {
                        return Err(format!(
                            "output {na}[{k}]: {u:e} ({:#x}) became {v:e} ({:#x})",
                            u.to_bits(),
                            v.to_bits()
                        ));
                    }
                }
            }
            (.., Some(x), Some(y)) if x == y => {}
            _ => return Err(format!("output {na} differs")),
        }
    }
    Ok(())
}

#[test]
fn rewrite_filetests_compute_the_same_bits() {
    let mut files: Vec<_> = std::fs::read_dir(root().join("tests/ir"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name.starts_with("cse_") || name.starts_with("fold_")) && name.ends_with(".ir")
        })
        .collect();
    files.sort();
    assert!(files.len() >= 6, "{files:?}");
    let b = Bindings::new(2, 2, 1);
    for f in files {
        let test = read(&f);
        let passes: Vec<&str> = test.directive.strip_prefix("run:").unwrap().split(',').map(str::trim).collect();
        let before = parse(&test.program).unwrap();
        let mut after = before.clone();
        Pipeline::named(&passes).unwrap().checked().run(&mut after).unwrap();
        assert_ne!(print(&before, None), print(&after, None), "{}: the passes change nothing", f.display());
        match (run_reference(&before, &b, &test.inputs), run_reference(&after, &b, &test.inputs)) {
            (Ok(x), Ok(y)) => {
                if let Err(e) = same_bits(&x, &y) {
                    panic!("{}: {e}", f.display());
                }
            }
            // A program the reference cannot run (two nodes of one state)
            // must fail the same way after.
            (Err(x), Err(y)) => assert_eq!(x, y, "{}", f.display()),
            (x, y) => panic!("{}: {x:?} became {y:?}", f.display()),
        }
    }
}

/// A random small program of element-wise, layout, norm and GEMM ops over a
/// few inputs, weights and constants (0, 1 and -1e-300 among them, so that
/// the fold rules find work), some ops repeated (for `cse`), linears sharing
/// an input (for the merge in `fuse`), ill-typed picks skipped.
fn random_program(steps: &[(u8, usize, usize)], outs: &[usize]) -> Graph {
    let mut g = Graph::new("random");
    let (b, t) = (Dim::sym(Sym::B), Dim::sym(Sym::T));
    let mut vals = vec![
        g.source(Op::Input { name: "x".into() }, TensorType::f32(vec![b.clone(), Dim::c(4)]), None),
        g.source(Op::Input { name: "y".into() }, TensorType::f32(vec![b.clone(), Dim::c(4)]), None),
        g.source(Op::Input { name: "v".into() }, TensorType::f32(vec![Dim::c(4)]), None),
        g.source(Op::Input { name: "m".into() }, TensorType::f32(vec![b.clone(), t, Dim::c(2)]), None),
        g.source(Op::Input { name: "x".into() }, TensorType::f32(vec![b.clone(), Dim::c(4)]), None),
    ];
    for c in [1.0, 0.0, -1e-300, 0.5, 2.0] {
        vals.push(g.add(Op::Const { value: F::new(c) }, &[], None));
    }
    let square = TensorType::f32(vec![Dim::c(4), Dim::c(4)]);
    let w1 = g.source(Op::Param { key: "w1".into() }, square.clone(), None);
    let w2 = g.source(Op::Param { key: "w2".into() }, square, None);
    let bias = g.source(Op::Param { key: "bias".into() }, TensorType::f32(vec![Dim::c(4)]), None);
    let v = vals[2];
    for &(k, i, j) in steps {
        let (x, y) = (vals[i % vals.len()], vals[j % vals.len()]);
        let shape = g.ty(x).shape.clone();
        let rank = shape.len() as u8;
        let four = shape.last() == Some(&Dim::c(4));
        let (op, operands): (Op, Vec<NodeIndex>) = match k % 26 {
            0 => (Op::Unary(Unary::Neg), vec![x]),
            1 => (Op::Unary(Unary::Tanh), vec![x]),
            2 => (Op::Unary(Unary::Exp), vec![x]),
            3 => (Op::Binary(Binary::Add), vec![x, y]),
            4 => (Op::Binary(Binary::Sub), vec![x, y]),
            5 => (Op::Binary(Binary::Mul), vec![x, y]),
            6 => (Op::Binary(Binary::Div), vec![x, y]),
            7 => (Op::Binary(Binary::Max), vec![x, y]),
            8 => (Op::Affine { scale: F::new(if j % 2 == 0 { 1.0 } else { 0.5 }), shift: F::new(-1e-300) }, vec![x]),
            9 => (Op::ClampMax { max: F::new(0.75) }, vec![x]),
            10 => (Op::Reshape { shape: vec![ecarc_compiler::ir::dim::product(&shape)] }, vec![x]),
            11 => (Op::Reshape { shape: shape.clone() }, vec![x]),
            12 if shape.len() == 2 && shape[1] == Dim::c(4) => {
                (Op::Reshape { shape: vec![shape[0].clone(), Dim::c(2), Dim::c(2)] }, vec![x])
            }
            13 => (Op::Permute { perm: (0..rank).rev().collect() }, vec![x]),
            14 if rank == 3 => (Op::Permute { perm: vec![1, 2, 0] }, vec![x]),
            15 if rank > 0 => {
                let a = (j % rank as usize) as u8;
                match shape[a as usize].as_const() {
                    Some(n) if n > 1 => (Op::Slice { axis: a, start: Dim::c(1), len: Dim::c(n - 1) }, vec![x]),
                    _ => (Op::Slice { axis: a, start: Dim::c(0), len: shape[a as usize].clone() }, vec![x]),
                }
            }
            16 => (Op::Concat { axis: 0 }, vec![x, y]),
            17 if rank > 0 => (Op::Softmax, vec![x]),
            // Repeat an earlier op on the same operands.
            18 | 19 if !g.g[x].op.is_source() => (g.g[x].op.clone(), g.operands(x)),
            20 if four => (Op::Linear, vec![x, w1]),
            // Two linears of one input (SwiGLU's shape): merged by `fuse`.
            21 if four => {
                let a = g.add(Op::Linear, &[x, w1], None);
                let c = g.add(Op::Linear, &[x, w2], None);
                let a = g.add(Op::Unary(Unary::Silu), &[a], None);
                vals.push(a);
                (Op::Binary(Binary::Mul), vec![a, c])
            }
            22 if four => (Op::Linear, vec![x, w2, bias]),
            23 if four => (Op::LayerNorm { eps: F::new(1e-5) }, if j % 2 == 0 { vec![x] } else { vec![x, v, v] }),
            24 if four => (Op::RmsNorm { eps: F::new(1e-6) }, vec![x, v]),
            25 if four && rank >= 2 => (Op::MatMul, vec![x, w1]),
            _ => continue,
        };
        if let Ok(n) = g.try_add(op, &operands, None) {
            vals.push(n);
        }
    }
    g.output("last", *vals.last().unwrap());
    for (k, &o) in outs.iter().enumerate() {
        g.output(format!("o{k}"), vals[o % vals.len()]);
    }
    g
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn the_pipeline_keeps_what_random_programs_compute(
        steps in prop::collection::vec((0u8..26, 0usize..64, 0usize..64), 1..24),
        outs in prop::collection::vec(0usize..64, 0..3),
        values in prop::collection::vec(-3.0f64..3.0, 8..9),
    ) {
        let before = random_program(&steps, &outs);
        let mut after = before.clone();
        Pipeline::named(PASS_NAMES).unwrap().checked().run(&mut after).unwrap();
        prop_assert_eq!(after.memory.as_ref().unwrap().check(&after), Ok(()));
        let b = Bindings::new(2, 3, 0);
        // Each input's values cycle through `values` (with a -0.0).
        let mut given: HashMap<String, Vec<f64>> = HashMap::new();
        for n in before.g.node_weights() {
            if let Op::Input { name } = &n.op {
                let len = n.ty.numel().eval(&b) as usize;
                let v = (0..len).map(|k| if k == 3 { -0.0 } else { values[(k + name.len()) % values.len()] }).collect();
                given.insert(name.clone(), v);
            }
        }
        let x = run_reference(&before, &b, &given).unwrap();
        let y = run_reference_from(&before, &after, &b, &given).unwrap();
        // Stricter than |a - b| <= 1e-5 + 1e-5 |b|: every rewrite is exact.
        if let Err(e) = same_bits(&x, &y) {
            prop_assert!(false, "{e}\nbefore:\n{}after:\n{}", print(&before, None), print(&after, None));
        }
    }
}

/// Planned arena against the unplanned peak (`cost::peak_activation_bytes`)
/// for each program a sample runs, at the largest bindings it runs with (as
/// the cost report takes them), one image: never above the peak plus the
/// alignment of each slot to 64 bytes (the peak counts exact bytes), never
/// below the bytes of the slots alive at once. Run with `--nocapture` for the
/// figures.
#[test]
fn model_arenas_fit_in_the_unplanned_peak() {
    for model in ["ecar_l", "var_d16", "llamagen_l", "dit_xl2"] {
        let spec = spec_of(&root().join(format!("models/{model}.ecar")), &[]);
        let prog = ecarc_compiler::lower::lower(&spec, &Default::default()).unwrap();
        let mut largest: HashMap<&str, Bindings> = HashMap::new();
        for (e, i) in prog.sample_plan().unwrap().runs().filter(|(e, _)| e.program != "decode") {
            let b = largest.entry(e.program.as_str()).or_insert(Bindings::new(1, 0, 0));
            b.t = b.t.max(e.tokens);
            b.p = b.p.max(e.past.eval(i));
        }
        let (mut arena_max, mut peak_max, mut slots) = (0u64, 0u64, 0u32);
        let mut names: Vec<_> = largest.keys().copied().collect();
        names.sort();
        for name in names {
            let (unfused, b) = (prog.graph(name).unwrap(), largest[name]);
            let mut fused = unfused.clone();
            Pipeline::kernels().checked().run(&mut fused).unwrap();
            let g = &fused;
            let plan = g.memory.as_ref().unwrap_or_else(|| panic!("{model} {name}: no memory plan"));
            assert_eq!(plan.check(g), Ok(()), "{model} {name}");
            let arena = plan.layout(g, &b).total;
            let peak = ecarc_compiler::cost::peak_activation_bytes(unfused, &b);
            let largest_value =
                plan.values.iter().map(|v| Liveness::bytes(g, NodeIndex::new(v.node as usize), &b)).max().unwrap_or(0);
            let bound = plan.live_bound(g, &b);
            println!(
                "{model} {name} {b:?}: arena {arena} bytes in {} slots, live bound {bound}, unplanned peak {peak}",
                plan.slots
            );
            assert!(arena >= bound);
            // The plan only removes memory (in place, aliases); what the
            // arena adds is at most the rounding of each slot to 64 bytes.
            let slack = ALIGN * plan.slots as u64;
            assert!(arena <= peak + slack, "{model} {name}: arena {arena} > peak {peak} + alignment {slack}");
            assert!(arena >= largest_value, "{model} {name}");
            arena_max = arena_max.max(arena);
            peak_max = peak_max.max(peak);
            slots = slots.max(plan.slots);
        }
        println!(
            "{model}: largest arena {arena_max} bytes ({:.1} MiB), peak_activation_bytes {peak_max} ({:.1} MiB), {:.0}%",
            arena_max as f64 / 1048576.0,
            peak_max as f64 / 1048576.0,
            100.0 * arena_max as f64 / peak_max as f64
        );
    }
}
