//! Every part of every fused kernel of every model emits WGSL that naga
//! validates; hand-written kernels cover what the models may not (concat,
//! i64 inputs, non-finite constants); what the emitter refuses is an error.
//! Whether the WGSL computes the right values is checked on an adapter
//! (`runtime/src/webgpu/fused_tests.rs`).

use super::{emit, MetaWord, Program, Read, Write};
use crate::ir::dim::{Dim, Sym};
use crate::ir::graph::TensorType;
use crate::ir::op::{Binary, Op, Unary, F};
use crate::kernel::split::{self, Operand};
use crate::kernel::{Expr, KNode, Kernel, Layout, Reduce};
use std::collections::HashSet;

fn validate(wgsl: &str) -> Result<(), String> {
    let module = naga::front::wgsl::parse_str(wgsl).map_err(|e| e.emit_to_string(wgsl))?;
    naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::empty())
        .validate(&module)
        .map_err(|e| e.emit_to_string(wgsl))?;
    Ok(())
}

fn repo() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every fused kernel of a model's programs after the kernel passes.
fn fused_kernels(path: &std::path::Path) -> Vec<Kernel> {
    use crate::session::{check_paths, Outcome};
    let s = check_paths(&[path], &[]);
    assert!(!s.has_errors(), "{} does not check", path.display());
    let Some(Outcome::Model(spec)) = s.models.into_iter().next().map(|m| m.outcome) else {
        panic!("{}: one model expected", path.display())
    };
    let program = crate::lower::lower(&spec, &Default::default()).expect("lowers");
    let pipeline = crate::pass::Pipeline::kernels();
    let mut out = vec![];
    for g in &program.graphs {
        let mut f = g.clone();
        pipeline.run(&mut f).unwrap_or_else(|e| panic!("{e}"));
        for n in f.g.node_weights() {
            if let Op::Fused(k) = &n.op {
                out.push((**k).clone());
            }
        }
    }
    out
}

/// The anchor-free parts a backend emits for `k`, as the runtime splits it.
pub(crate) fn parts(k: &Kernel) -> Vec<Kernel> {
    let k = split::stored(k).map_or_else(|| k.clone(), |(p, _, _)| p);
    match split::split_at_anchor(&k) {
        None => vec![split::whole(&k).kernel],
        Some(s) => s
            .operands
            .into_iter()
            .filter_map(|o| match o {
                Operand::Computed(p) => Some(p.kernel),
                Operand::Input(_) => None,
            })
            .chain(s.epilogue.map(|p| p.kernel))
            .collect(),
    }
}

fn model_files() -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = ["var", "llamagen", "ecar", "dit", "var_dd", "llamagen_dd"]
        .iter()
        .map(|n| repo().join(format!("examples/tiny/{n}.ecar")))
        .collect();
    let mut big: Vec<_> = std::fs::read_dir(repo().join("models"))
        .expect("models/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "ecar"))
        .collect();
    big.sort();
    files.extend(big);
    files
}

#[test]
fn every_fused_part_of_every_model_emits_valid_wgsl() {
    let mut seen: HashSet<Kernel> = HashSet::new();
    let mut shaders: HashSet<String> = HashSet::new();
    let (mut stages, mut row_stages, mut fails) = (0, 0, vec![]);
    let files = model_files();
    for f in &files {
        for k in fused_kernels(f) {
            for part in parts(&k) {
                if !seen.insert(part.clone()) {
                    continue;
                }
                match emit(&part) {
                    Err(e) => fails.push(format!("{}: refused: {e}", f.display())),
                    Ok(p) => {
                        for s in p.stages {
                            stages += 1;
                            row_stages += usize::from(s.row_threads.is_some());
                            if shaders.insert(s.wgsl.clone()) {
                                if let Err(e) = validate(&s.wgsl) {
                                    fails.push(format!("{}: invalid WGSL: {e}\n{}", f.display(), s.wgsl));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    eprintln!(
        "{} models: {} distinct anchor-free parts, {stages} stages ({row_stages} row stages), {} distinct shaders \
         validated",
        files.len(),
        seen.len(),
        shaders.len()
    );
    assert!(fails.is_empty(), "{} failed:\n{}", fails.len(), fails.join("\n"));
    assert!(seen.len() > 20 && shaders.len() > 20, "{} parts, {} shaders", seen.len(), shaders.len());
    assert!(row_stages > 20, "{row_stages} row stages");
}

fn t(shape: Vec<Dim>) -> TensorType {
    TensorType::f32(shape)
}
fn c(d: &[u64]) -> Vec<Dim> {
    d.iter().map(|&x| Dim::c(x)).collect()
}
fn n(shape: Vec<Dim>, expr: Expr) -> KNode {
    KNode { ty: t(shape), expr }
}

/// Every expression and map, symbolic dims, a concat, non-finite constants.
/// (An i64 input is read only by an anchor: kernel nodes other than loads are
/// f32, so no element-wise part reads one.)
fn everything() -> Kernel {
    let tt = Dim::sym(Sym::T);
    let k = Kernel {
        inputs: vec![t(vec![Dim::c(2), tt.clone(), Dim::c(3)]), t(vec![tt.clone()]), t(c(&[3]))],
        nodes: vec![
            n(vec![Dim::c(2), tt.clone(), Dim::c(3)], Expr::Load(0)), // 0
            n(vec![tt.clone(), Dim::c(2), Dim::c(3)], Expr::Map { x: 0, map: Layout::Permute(vec![1, 0, 2]) }), // 1
            n(vec![tt.clone(), Dim::c(6)], Expr::Map { x: 1, map: Layout::Reshape }), // 2
            n(vec![tt.clone(), Dim::c(1)], Expr::Reduce { x: 2, op: Reduce::Max }), // 3
            n(vec![tt.clone(), Dim::c(6)], Expr::Map { x: 3, map: Layout::Broadcast }), // 4
            n(vec![tt.clone(), Dim::c(6)], Expr::Binary(Binary::Sub, 2, 4)), // 5
            n(vec![tt.clone(), Dim::c(6)], Expr::Unary(Unary::Exp, 5)), // 6
            n(vec![tt.clone(), Dim::c(1)], Expr::Reduce { x: 6, op: Reduce::Sum }), // 7
            n(vec![tt.clone(), Dim::c(6)], Expr::Map { x: 7, map: Layout::Broadcast }), // 8
            n(vec![tt.clone(), Dim::c(6)], Expr::Binary(Binary::Div, 6, 8)), // 9
            n(vec![tt.clone()], Expr::Load(1)),                       // 10
            n(vec![tt.clone(), Dim::c(1)], Expr::Map { x: 10, map: Layout::Reshape }), // 11
            n(vec![tt.clone(), Dim::c(1)], Expr::Affine { x: 11, scale: F::new(0.5), shift: F::new(-1.0) }), // 12
            n(c(&[3]), Expr::Load(2)),                                // 13
            n(vec![tt.clone(), Dim::c(3)], Expr::Map { x: 13, map: Layout::Broadcast }), // 14
            n(vec![tt.clone(), Dim::c(10)], Expr::Concat { axis: 1, parts: vec![9, 12, 14] }), // 15
            n(vec![tt.clone(), Dim::c(8)], Expr::Map { x: 15, map: Layout::Slice { axis: 1, start: Dim::c(2) } }), // 16
            n(vec![], Expr::Const(F::new(f64::NEG_INFINITY))),        // 17
            n(vec![tt.clone(), Dim::c(8)], Expr::Map { x: 17, map: Layout::Broadcast }), // 18
            n(vec![tt.clone(), Dim::c(8)], Expr::Binary(Binary::Max, 16, 18)), // 19
            n(vec![tt.clone(), Dim::c(8)], Expr::Binary(Binary::Min, 19, 16)), // 20
            n(vec![tt.clone(), Dim::c(8)], Expr::Unary(Unary::Gelu, 20)), // 21
            n(vec![tt.clone(), Dim::c(8)], Expr::Unary(Unary::GeluTanh, 21)), // 22
            n(vec![tt.clone(), Dim::c(8)], Expr::Unary(Unary::Silu, 22)), // 23
            n(vec![tt.clone(), Dim::c(8)], Expr::Unary(Unary::Tanh, 23)), // 24
            n(vec![tt.clone(), Dim::c(8)], Expr::Unary(Unary::Sqrt, 24)), // 25
            n(vec![tt.clone(), Dim::c(8)], Expr::Unary(Unary::Neg, 25)), // 26
            n(vec![tt.clone(), Dim::c(8)], Expr::ClampMax { x: 26, max: F::new(0.25) }), // 27
            n(vec![tt.clone(), Dim::c(8)], Expr::AtLeast { x: 27, min: F::new(1e-40) }), // 28
        ],
    };
    k.verify(&k.inputs.iter().collect::<Vec<_>>()).unwrap();
    k
}

#[test]
fn every_expression_emits_valid_wgsl_with_its_abi() {
    // The max and the sum fold the rows of the result: one row stage.
    let r: Program = emit(&everything()).unwrap();
    assert_eq!(r.stages.len(), 1);
    assert!(r.scratch.is_empty());
    let s = &r.stages[0];
    assert_eq!((s.row_threads, &s.threads, s.write), (Some(64), &Dim::sym(Sym::T), Write::Output));
    assert_eq!(s.meta[0], MetaWord::Threads);
    validate(&s.wgsl).unwrap_or_else(|e| panic!("{e}"));
    for want in ["var<workgroup> red: array<f32, 64>;", "@workgroup_size(64)", "workgroupBarrier();"] {
        assert!(s.wgsl.contains(want), "{want} not in\n{}", s.wgsl);
    }
    let p: Program = super::emit_without_row_stage(&everything()).unwrap();
    assert!(p.stages.iter().all(|s| s.row_threads.is_none()));
    // The max and the sum fold the same rows: one stage (the sum reads the
    // max of its own row from a register), then the result.
    assert_eq!(p.stages.len(), 2);
    assert_eq!(p.scratch, vec![Dim::sym(Sym::T).mul_c(2)]);
    assert_eq!(p.stages[0].write, Write::Scratch(0));
    assert_eq!(p.stages[0].reads, vec![Read::Input(0)]);
    assert_eq!(p.stages[1].write, Write::Output);
    assert_eq!(p.stages[1].threads, Dim::sym(Sym::T).mul_c(8));
    for s in &p.stages {
        assert_eq!(s.meta[0], MetaWord::Threads);
        validate(&s.wgsl).unwrap_or_else(|e| panic!("{e}"));
    }
    let last = &p.stages[1];
    assert!(last.reads.contains(&Read::Input(1)) && last.reads.contains(&Read::Input(2)), "{:?}", last.reads);
    // A reshape splitting a symbolic extent divides by it: a meta word.
    let tt = Dim::sym(Sym::T);
    let r = Kernel {
        inputs: vec![t(vec![Dim::c(2), tt.clone()])],
        nodes: vec![
            n(vec![Dim::c(2), tt.clone()], Expr::Load(0)),
            n(vec![tt.mul_c(2)], Expr::Map { x: 0, map: Layout::Reshape }),
        ],
    };
    let s = &emit(&r).unwrap().stages[0];
    assert!(s.meta.contains(&MetaWord::Dim(tt.clone())), "{:?}", s.meta);
    validate(&s.wgsl).unwrap_or_else(|e| panic!("{e}"));
    assert!(last.meta.contains(&MetaWord::OutputStride(1)) && last.meta.contains(&MetaWord::InputStride(0, 1)));
    // -inf and a subnormal are spelled by their bits.
    assert!(last.wgsl.contains("from_bits(0xff800000u)"), "{}", last.wgsl);
}

/// A fold that reads an earlier fold at another row cannot share its
/// stage: each reduction gets a stage of its own.
#[test]
fn a_reduction_read_across_rows_gets_its_own_stage() {
    let k = Kernel {
        inputs: vec![t(c(&[3, 3]))],
        nodes: vec![
            n(c(&[3, 3]), Expr::Load(0)),
            n(c(&[3, 1]), Expr::Reduce { x: 0, op: Reduce::Max }),
            n(c(&[3]), Expr::Map { x: 1, map: Layout::Reshape }),
            // Element (i, j) reads the max of row j.
            n(c(&[3, 3]), Expr::Map { x: 2, map: Layout::Broadcast }),
            n(c(&[3, 3]), Expr::Binary(Binary::Sub, 0, 3)),
            n(c(&[3, 1]), Expr::Reduce { x: 4, op: Reduce::Sum }),
        ],
    };
    k.verify(&k.inputs.iter().collect::<Vec<_>>()).unwrap();
    let p = emit(&k).unwrap();
    assert_eq!(p.stages.len(), 3);
    assert_eq!(p.scratch, c(&[3, 3]));
    assert_eq!(p.stages[1].reads, vec![Read::Input(0), Read::Scratch(0)]);
    for s in &p.stages {
        validate(&s.wgsl).unwrap_or_else(|e| panic!("{e}"));
    }
}

/// The legality rule of a row stage (`rows.rs`): every reduction folds the
/// rows of the result, read only at the reader's own row.
#[test]
fn row_stages_only_where_the_folds_line_up_with_the_result_rows() {
    let tt = Dim::sym(Sym::T);
    // A layer norm over [T, 2, 5]: rows [T, 2], a symbolic row count.
    let norm = |out: Option<Vec<Dim>>| {
        let sh = vec![tt.clone(), Dim::c(2), Dim::c(5)];
        let rows = vec![tt.clone(), Dim::c(2), Dim::c(1)];
        let mut nodes = vec![
            n(sh.clone(), Expr::Load(0)),
            n(rows.clone(), Expr::Reduce { x: 0, op: Reduce::Sum }),
            n(sh.clone(), Expr::Map { x: 1, map: Layout::Broadcast }),
            n(sh.clone(), Expr::Binary(Binary::Sub, 0, 2)),
            n(sh.clone(), Expr::Binary(Binary::Mul, 3, 3)),
            n(rows.clone(), Expr::Reduce { x: 4, op: Reduce::Sum }),
            n(sh.clone(), Expr::Map { x: 5, map: Layout::Broadcast }),
            n(sh.clone(), Expr::Binary(Binary::Div, 3, 6)),
        ];
        if let Some(o) = out {
            nodes.push(n(o, Expr::Map { x: 7, map: Layout::Reshape }));
        }
        let k = Kernel { inputs: vec![t(sh)], nodes };
        k.verify(&k.inputs.iter().collect::<Vec<_>>()).unwrap();
        emit(&k).unwrap()
    };
    let p = norm(None);
    assert_eq!(p.stages.len(), 1);
    let s = &p.stages[0];
    assert_eq!((s.row_threads, &s.threads), (Some(64), &tt.mul_c(2)));
    validate(&s.wgsl).unwrap_or_else(|e| panic!("{e}"));
    // The result's rows are not the folds' rows [T, 2] (a trailing axis of
    // 1, rows merged, everything flat): the fold stage, then the result's.
    for out in [vec![tt.clone(), Dim::c(2), Dim::c(5), Dim::c(1)], vec![tt.clone(), Dim::c(10)], vec![tt.mul_c(10)]] {
        let p = norm(Some(out.clone()));
        assert_eq!(p.stages.len(), 2, "{out:?}");
        assert!(p.stages.iter().all(|s| s.row_threads.is_none()), "{out:?}");
    }
    // A long or symbolic row: 256 threads.
    let long = Kernel {
        inputs: vec![t(vec![Dim::c(3), tt.clone()])],
        nodes: vec![
            n(vec![Dim::c(3), tt.clone()], Expr::Load(0)),
            n(c(&[3, 1]), Expr::Reduce { x: 0, op: Reduce::Max }),
            n(vec![Dim::c(3), tt.clone()], Expr::Map { x: 1, map: Layout::Broadcast }),
            n(vec![Dim::c(3), tt.clone()], Expr::Binary(Binary::Sub, 0, 2)),
        ],
    };
    long.verify(&long.inputs.iter().collect::<Vec<_>>()).unwrap();
    let s = &emit(&long).unwrap().stages[0];
    assert_eq!(s.row_threads, Some(super::rows::MAX_ROW_THREADS));
    validate(&s.wgsl).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn anchors_and_write_slices_are_refused() {
    let k = Kernel {
        inputs: vec![t(c(&[2, 3])), t(c(&[3, 4]))],
        nodes: vec![
            n(c(&[2, 3]), Expr::Load(0)),
            n(c(&[3, 4]), Expr::Load(1)),
            n(c(&[2, 4]), Expr::Anchor { op: Op::MatMul, operands: vec![0, 1] }),
        ],
    };
    assert!(emit(&k).unwrap_err().contains("matmul"));
    let w = Kernel {
        inputs: vec![t(c(&[1, 8, 2])), t(c(&[1, 2, 2]))],
        nodes: vec![
            n(c(&[1, 8, 2]), Expr::Load(0)),
            n(c(&[1, 2, 2]), Expr::Load(1)),
            n(c(&[1, 8, 2]), Expr::WriteSlice { dst: 0, src: 1, axis: 1, start: Dim::c(3) }),
        ],
    };
    assert!(emit(&w).unwrap_err().contains("write_slice"));
    // An ill-typed kernel is an error too, not a panic.
    let bad = Kernel { inputs: vec![t(c(&[2]))], nodes: vec![n(c(&[3]), Expr::Load(0))] };
    assert!(emit(&bad).is_err());
    let huge = Kernel { inputs: vec![t(c(&[1 << 33]))], nodes: vec![n(c(&[1 << 33]), Expr::Load(0))] };
    assert!(emit(&huge).unwrap_err().contains("32-bit"));
}

/// The WGSL of DiT's adaLN prologue (layer norm without affine, then
/// `x * (1 + scale) + shift`) from `examples/tiny/dit.ecar`: the first
/// anchor-free part with two sums whose inputs include the modulation.
#[test]
fn layernorm_modulate_wgsl_snapshot() {
    let sums = |k: &Kernel| k.nodes.iter().filter(|n| matches!(n.expr, Expr::Reduce { op: Reduce::Sum, .. })).count();
    let part = fused_kernels(&repo().join("examples/tiny/dit.ecar"))
        .iter()
        .flat_map(parts)
        .find(|p| {
            sums(p) == 2 && p.inputs.len() >= 3 && matches!(p.nodes.last().unwrap().expr, Expr::Binary(Binary::Add, ..))
        })
        .expect("dit has a layer norm + modulate part");
    let p = emit(&part).unwrap();
    let mut text = format!("{}\n", part.lines().join("\n"));
    for (i, s) in p.stages.iter().enumerate() {
        text.push_str(&format!(
            "// ---- stage {i}: {} threads, reads {:?}, writes {:?}, meta {:?}\n{}",
            s.threads, s.reads, s.write, s.meta, s.wgsl
        ));
    }
    insta::assert_snapshot!("layernorm_modulate_wgsl", text);
}

/// The printer on a hand-built tree: an i32 buffer (an i64 input) read as
/// f32, literals WGSL cannot spell, a loop and a branch.
#[test]
fn the_printer_spells_i32_reads_and_odd_literals_validly() {
    use super::tree::{Buf, Op2, Shader, Ty, E, S};
    let read = |b: Buf, at: E| E::Read(b, Box::new(at));
    let shader = Shader {
        reads: vec![(Buf::Input(0), true), (Buf::Input(1), false)],
        row_threads: None,
        body: vec![
            S::Var { var: 0, ty: Ty::F32, init: E::F32(-0.0) },
            S::Loop {
                var: 1,
                count: E::Meta(1),
                body: vec![S::Assign {
                    var: 0,
                    value: E::bin(Op2::Add, E::Var(0), read(Buf::Input(0), E::iadd(E::Var(1), E::Meta(2)))),
                }],
            },
            S::If {
                cond: E::bin(Op2::Lt, E::Id, E::U32(3)),
                then: vec![S::Assign { var: 0, value: E::F32(f32::from_bits(1)) }],
                otherwise: vec![S::Assign { var: 0, value: E::F32(f32::NAN) }],
            },
            S::Store { at: E::Id, value: E::bin(Op2::Mul, E::Var(0), read(Buf::Input(1), E::Id)) },
        ],
    };
    let w = super::wgsl::print(&shader);
    validate(&w).unwrap_or_else(|e| panic!("{e}\n{w}"));
    for want in ["array<i32>", "f32(x0[", "from_bits(0x00000001u)", "(-0.0f)", "from_bits(0x7fc00000u)"] {
        assert!(w.contains(want), "{want} not in\n{w}");
    }
}
