//! The plan verifier: a plan is well formed when every entry runs a program
//! that exists, binds each of the program's inputs and states exactly once and
//! nothing else, reads only values that exist by then (a plan input, an earlier
//! output, a zero-initialised state, or a value carried round a repeat from
//! before it), maps only outputs the program has, and every value keeps one
//! type (checked at two batch sizes, so `B` and `2*B` are told apart). Run on
//! every plan of every model in tests, and after lowering in debug builds.

use super::{Plan, Source};
use crate::ir::{Bindings, DType, Graph, Op};
use std::collections::HashMap;

/// A concrete type: dtype and shape.
type Concrete = (DType, Vec<u64>);

fn concrete(ty: &crate::ir::TensorType, b: &Bindings) -> Concrete {
    (ty.dtype, ty.shape.iter().map(|d| d.eval(b)).collect())
}

/// Problems with `plan` over `graphs`, or `Ok`.
pub fn verify(plan: &Plan, graphs: &[Graph]) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    for images in [1u64, 3] {
        check_at(plan, graphs, images, &mut problems);
        if !problems.is_empty() {
            break;
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

fn check_at(plan: &Plan, graphs: &[Graph], images: u64, problems: &mut Vec<String>) {
    let by_name: HashMap<&str, &Graph> = graphs.iter().map(|g| (g.name.as_str(), g)).collect();
    // The current type of every value (None: a zero state not written yet,
    // which takes the type of whatever reads it).
    let mut values: HashMap<String, Option<Concrete>> = HashMap::new();
    let plain = Bindings::new(images, 0, 0);
    for i in &plan.inputs {
        let ty = (i.ty.dtype, i.ty.shape.iter().map(|d| d.eval(&plain)).collect());
        values.insert(i.name.clone(), Some(ty));
    }
    for z in &plan.zeros {
        values.insert(z.clone(), None);
    }
    let has_labels = plan.input("labels").is_some();
    // Problems are reported once per entry, not once per iteration.
    let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut report = |p: String| {
        if seen.insert(p.clone()) {
            problems.push(p);
        }
    };
    let runs = plan
        .items
        .iter()
        .flat_map(|it| (0..it.times()).flat_map(move |i| it.entries().iter().map(move |e| (e, i, it.times()))));
    for (e, i, times) in runs {
        let at = format!("plan `{}`, `{}` at stage {}", plan.name, e.program, e.stage.eval(i) + 1);
        let Some(g) = by_name.get(e.program.as_str()) else {
            report(format!("{at}: no program `{}`", e.program));
            continue;
        };
        let b = e.bindings(images, i);
        let mut ports: HashMap<&str, Concrete> = HashMap::new();
        for n in g.g.node_weights() {
            if let Op::Input { name } | Op::State { name } = &n.op {
                ports.insert(name.as_str(), concrete(&n.ty, &b));
            }
        }
        let mut bound: Vec<&str> = Vec::new();
        for bind in &e.inputs {
            let Some(want) = ports.get(bind.port.as_str()) else {
                report(format!("{at}: binds `{}`, which the program does not read", bind.port));
                continue;
            };
            if bound.contains(&bind.port.as_str()) {
                report(format!("{at}: `{}` is bound twice", bind.port));
            }
            bound.push(&bind.port);
            match &bind.source {
                Source::Value(v) => match values.get(v) {
                    None => report(format!("{at}: `{}` reads the value `{v}` before it exists", bind.port)),
                    Some(Some(have)) if have != want => report(format!(
                        "{at}: `{}` wants {want:?}, the value `{v}` is {have:?} (B = {images})",
                        bind.port
                    )),
                    Some(_) => {}
                },
                Source::Labels { null_class } => {
                    if !has_labels {
                        report(format!("{at}: `{}` reads labels; the plan has no `labels` input", bind.port));
                    }
                    let n = if null_class.is_some() { 2 * images } else { images };
                    if *want != (DType::I64, vec![n]) {
                        report(format!("{at}: labels for `{}` are i64[{n}], it wants {want:?}", bind.port));
                    }
                }
                Source::Table(super::Table::NoiseData(super::DataLen::Given(name))) if plan.input(name).is_none() => {
                    report(format!("{at}: the marker reads the plan input `{name}`, which is not one"));
                }
                Source::Scalar(s) if s.0.len() != 1 && s.0.len() as u64 != times => {
                    report(format!("{at}: `{}` has {} values for {times} iterations", bind.port, s.0.len()));
                }
                _ => {}
            }
        }
        for port in ports.keys() {
            if !bound.contains(port) {
                report(format!("{at}: the program's `{port}` is not bound"));
            }
        }
        for (out, v) in &e.outputs {
            match g.outputs.iter().find(|(name, _)| name == out) {
                Some(&(_, n)) => {
                    values.insert(v.clone(), Some(concrete(&g.g[n].ty, &b)));
                }
                None => report(format!("{at}: the program has no output `{out}`")),
            }
        }
        for r in &e.records {
            let ok = match r.port.split_once(':') {
                Some(("in", p)) => e.inputs.iter().any(|b| b.port == p),
                Some(("out", p)) => g.outputs.iter().any(|(n, _)| n == p),
                _ => false,
            };
            if !ok {
                report(format!("{at}: records `{}`, which the entry neither reads nor writes", r.port));
            }
        }
    }
    for (name, v) in &plan.results {
        if !values.contains_key(v) {
            report(format!("plan `{}`: result `{name}` is the value `{v}`, which nothing writes", plan.name));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Dim, TensorType};
    use crate::plan::{Bind, Count, Entry, Item, PlanInput};

    /// `y = x` for `x: f32[B, T]`.
    fn copy_program() -> Graph {
        let mut g = Graph::new("copy");
        let ty = TensorType::f32(vec![Dim::sym(crate::ir::Sym::B), Dim::sym(crate::ir::Sym::T)]);
        let x = g.source(Op::Input { name: "x".into() }, ty, None);
        let y = g.add(Op::Affine { scale: crate::ir::F::new(1.0), shift: crate::ir::F::new(0.0) }, &[x], None);
        g.output("y", y);
        g
    }

    fn run(tokens: u64, from: &str, to: &str) -> Entry {
        Entry {
            program: "copy".into(),
            stage: Count::at(0),
            tokens,
            past: Count::at(0),
            inputs: vec![Bind { port: "x".into(), source: Source::Value(from.into()) }],
            outputs: vec![("y".into(), to.into())],
            records: vec![],
        }
    }

    fn plan(items: Vec<Item>) -> Plan {
        let ty = |n| TensorType::f32(vec![Dim::sym(crate::ir::Sym::B), Dim::c(n)]);
        Plan {
            name: "p".into(),
            stages: 1,
            inputs: vec![
                PlanInput { name: "a".into(), ty: ty(2), default: None },
                PlanInput { name: "a3".into(), ty: ty(3), default: None },
            ],
            zeros: vec![],
            items,
            results: vec![("r".into(), "b".into())],
        }
    }

    #[test]
    fn a_value_may_change_type_when_written_again() {
        // `a` [B, 2] -> `b` [B, 2]; then `b` is rewritten at T = 3 and read at T = 3.
        let p = plan(vec![Item::Run(run(2, "a", "b")), Item::Run(run(3, "a3", "b")), Item::Run(run(3, "b", "c"))]);
        assert_eq!(verify(&p, &[copy_program()]), Ok(()));
    }

    #[test]
    fn wrong_types_unknown_values_and_missing_results_are_found() {
        let p = plan(vec![Item::Run(run(3, "a", "x")), Item::Repeat { times: 2, body: vec![run(2, "later", "z")] }]);
        let e = verify(&p, &[copy_program()]).unwrap_err().join("\n");
        assert!(e.contains("wants (F32, [1, 3]), the value `a` is (F32, [1, 2])"), "{e}");
        assert!(e.contains("reads the value `later` before it exists"), "{e}");
        assert!(e.contains("result `r` is the value `b`, which nothing writes"), "{e}");
        let mut unbound = plan(vec![Item::Run(run(2, "a", "b"))]);
        if let Item::Run(en) = &mut unbound.items[0] {
            en.inputs.clear();
            en.outputs.push(("nothing".into(), "z".into()));
        }
        let e = verify(&unbound, &[copy_program()]).unwrap_err().join("\n");
        assert!(e.contains("the program's `x` is not bound"), "{e}");
        assert!(e.contains("has no output `nothing`"), "{e}");
    }
}
