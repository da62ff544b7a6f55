//! The CPU backend against the reference interpreter: every tiny model's
//! whole sample (every recorded value and the image) agrees to
//! |a - e| <= 1e-4 + 1e-4 |e|, tokens identical; the same seed gives the same
//! bits twice; KV-cached steps equal the teacher-forced pass on cpu; state
//! updates are written in place; the kernels that ran are counted.

use crate::common::{root, spec_of};
use ecarc_compiler::plan::Keep;
use ecarc_compiler::ModelSpec;
use ecarc_runtime::backend::Backend;
use ecarc_runtime::cpu::{Cpu, Impl};
use ecarc_runtime::driver::{Generator, Quiet, SampleOptions, SampleOutput};
use ecarc_runtime::reference::Reference;
use ecarc_runtime::tensor::{Data, HostTensor};
use ecarc_runtime::weights::Weights;
use std::collections::BTreeMap;

const FAMILIES: [&str; 6] = ["var", "llamagen", "ecar", "dit", "var_dd", "llamagen_dd"];

fn tiny(name: &str, sets: &[&str]) -> ModelSpec {
    spec_of(&root().join(format!("examples/tiny/{name}.ecar")), sets)
}

fn sample_on(backend: &dyn Backend, name: &str, seed: u64) -> SampleOutput {
    let spec = tiny(name, &[]);
    let w = Weights::random(&spec, 0);
    let g = Generator::from_spec(spec, backend, &w).expect("generator");
    g.sample(&SampleOptions { labels: vec![1, 3], seed, keep: Keep::Debug }, &Quiet).expect("sample")
}

/// Floats within 1e-4 + 1e-4 |e|; integers (tokens) equal.
fn assert_agrees(a: &HostTensor, e: &HostTensor, what: &str) {
    assert_eq!(a.shape, e.shape, "{what}: shapes");
    match (&a.data, &e.data) {
        (Data::F32(x), Data::F32(y)) => {
            for (i, (x, y)) in x.iter().zip(y).enumerate() {
                assert!((x - y).abs() <= 1e-4 + 1e-4 * y.abs(), "{what}: element {i}: cpu {x} vs reference {y}");
            }
        }
        (Data::I64(x), Data::I64(y)) => assert_eq!(x, y, "{what}: integers differ"),
        _ => panic!("{what}: dtypes differ"),
    }
}

#[test]
fn every_tiny_sample_on_cpu_agrees_with_the_reference() {
    for name in FAMILIES {
        let cpu = Cpu::new();
        let got = sample_on(&cpu, name, 11);
        let want = sample_on(&Reference::new(), name, 11);
        assert_eq!(got.stages.len(), want.stages.len(), "{name}");
        for ((na, ta), (nb, tb)) in got.stages.iter().zip(&want.stages) {
            assert_eq!(na, nb, "{name}");
            assert_agrees(ta, tb, &format!("{name}: `{na}`"));
        }
        assert_agrees(&got.image, &want.image, &format!("{name}: image"));
        let stats = cpu.kernel_stats();
        assert!(stats.total(Impl::Native) > 0, "{name}: no native kernel ran:\n{}", stats.render());
        // Every state update of a sample writes into the state's own memory.
        let t = cpu.traffic();
        assert_eq!(t.updates_copied, 0, "{name}: {t:?}");
        eprintln!("{name}: {t:?}\n{}", stats.render());
    }
}

#[test]
fn the_jit_and_both_interpreter_engines_give_the_same_bits() {
    // The JIT (the default engine), the node-by-node interpreter and the
    // per-element one compute every fused element-wise part bit for bit alike,
    // through whole samples; the JIT compiled every part (none fell back).
    use ecarc_runtime::cpu::fused::Interpreter;
    use std::sync::Arc;
    for name in FAMILIES {
        let jit = Cpu::new();
        let a = sample_on(&jit, name, 5);
        let b = sample_on(&Cpu::interpreted(), name, 5);
        let c = sample_on(&Cpu::with_engine(Arc::new(Interpreter::per_element())), name, 5);
        assert_eq!(a.stages, b.stages, "{name}: jit vs node by node");
        assert_eq!(a.image, b.image, "{name}");
        assert_eq!(b.stages, c.stages, "{name}: node by node vs per element");
        assert_eq!(b.image, c.image, "{name}");
        let stats = jit.kernel_stats();
        assert_eq!(stats.total(Impl::Interpreter), 0, "{name}: a part fell back:\n{}", stats.render());
        assert!(stats.snapshot().contains_key(&("fused.elementwise", Impl::Native)), "{name}:\n{}", stats.render());
    }
}

#[test]
fn the_same_seed_gives_the_same_bits_on_cpu() {
    for name in FAMILIES {
        let a = sample_on(&Cpu::new(), name, 5);
        let b = sample_on(&Cpu::new(), name, 5);
        assert_eq!(a.stages, b.stages, "{name}");
        assert_eq!(a.image, b.image, "{name}");
    }
}

#[test]
fn kv_cached_steps_equal_the_teacher_forced_pass_on_cpu() {
    crate::runtime::assert_kv_cached_steps_equal_the_teacher_forced_pass(&Cpu::new(), 1e-4);
}

#[test]
fn cpu_is_selectable_by_name_and_refuses_foreign_programs() {
    let cpu = ecarc_runtime::backend_by_name("cpu", None).expect("cpu is built");
    assert_eq!(cpu.name(), "cpu");
    let spec = tiny("llamagen", &[]);
    let program = ecarc_compiler::lower::lower(&spec, &Default::default()).expect("lowers");
    let reference = Reference::new();
    let exe = reference.prepare(&program.graphs[0], &Default::default()).unwrap();
    let err = cpu.run(&exe, &Default::default(), Default::default()).expect_err("a foreign program is refused");
    assert!(err.to_string().contains("another backend"), "{err}");
}

/// The element-wise parts the cpu backend runs for fused kernel `k`: the
/// whole kernel, or its prologue parts and epilogue (after a store kernel's
/// slice is taken), as `PreparedFused` splits it.
fn parts(k: &ecarc_compiler::kernel::Kernel) -> Vec<ecarc_compiler::kernel::Kernel> {
    use ecarc_compiler::kernel::split::{split_at_anchor, stored, whole, Operand};
    let k = stored(k).map_or_else(|| k.clone(), |(part, _, _)| part);
    match split_at_anchor(&k) {
        None => vec![whole(&k).kernel],
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

#[test]
fn every_fused_part_of_every_model_compiles_natively() {
    // Native, not interpreted: every element-wise part of every fused kernel
    // of every model in `models/` (each program at the bindings of its first
    // run in the sample plan, one image) compiles with the JIT; none would
    // fall back to the kernel IR's interpreter.
    use ecarc_compiler::ir::{Bindings, Op};
    use ecarc_compiler::pass::Pipeline;
    use ecarc_runtime::backend::row_major;
    use ecarc_runtime::cpu::jit::JitKernel;
    let mut total = 0;
    for path in crate::common::model_files() {
        let spec = spec_of(&path, &[]);
        let p = ecarc_compiler::lower::lower(&spec, &Default::default()).expect("lowers");
        let mut first: BTreeMap<&str, Bindings> = BTreeMap::new();
        for (e, i) in p.sample_plan().expect("a sample plan").runs() {
            first.entry(e.program.as_str()).or_insert_with(|| e.bindings(1, i));
        }
        for g in &p.graphs {
            let Some(b) = first.get(g.name.as_str()) else { continue };
            let mut f = g.clone();
            Pipeline::kernels().run(&mut f).unwrap();
            for n in f.g.node_weights() {
                let Op::Fused(k) = &n.op else { continue };
                for part in parts(k) {
                    let strides: Vec<Vec<usize>> = part
                        .inputs
                        .iter()
                        .map(|t| row_major(&t.shape.iter().map(|d| d.eval(b) as usize).collect::<Vec<_>>()))
                        .collect();
                    if let Err(e) = JitKernel::compile(&part, b, &strides) {
                        panic!("{}: `{}`: a part the JIT refuses: {e}", path.display(), g.name);
                    }
                    total += 1;
                }
            }
        }
    }
    assert!(total > 1000, "{total} parts");
    eprintln!("{total} element-wise parts compiled");
}
