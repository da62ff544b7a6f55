//! IR filetests, in the manner of cranelift's: each `tests/ir/NAME.ir` is a
//! program in the text form (`docs/ir.md`) headed by `;` directives, and
//! `tests/ir/NAME.expected` beside it holds what the directive gives:
//!
//! - `; run: PASS[, PASS...]`: the program after those passes (verified after
//!   each), printed; after `mem`, its memory plan follows, with the arena laid
//!   out at B=1 T=1 P=1 (`ir::memory::render`);
//! - `; verify`: what the verifier says of the program, one problem a line;
//! - `; interpret B=1 T=2 P=0`: the program's outputs on the reference backend
//!   under those bindings. After a `; run:` directive, the outputs of the
//!   program before and after the passes follow the printed program: once
//!   when the two are bit for bit equal, else both (each fused group checked
//!   on the kernel IR's interpreter against the ops it replaced). `; input "NAME" = [v, ...]` gives a source's
//!   values (inputs, states and params alike); the others are filled with
//!   `(k * 7 mod 11 - 5) / 4` (f32) or `k mod 3` (i64) for element `k`.
//!
//! A mismatch fails with both texts. `ECARC_BLESS_IR=1` writes the
//! `.expected` files instead: review them as you would any snapshot.

use crate::common::root;
use ecarc_compiler::ir::memory::render;
use ecarc_compiler::ir::text::{parse, print};
use ecarc_compiler::ir::verify::verify;
use ecarc_compiler::ir::{Bindings, DType, Graph, Op};
use ecarc_compiler::pass::Pipeline;
use ecarc_runtime::backend::{Args, Backend, Buffer};
use ecarc_runtime::reference::Reference;
use ecarc_runtime::tensor::HostTensor;
use std::collections::HashMap;
use std::fmt::Write;
use std::path::Path;

/// The directives and the program text of a filetest.
pub(crate) struct FileTest {
    pub directive: String,
    /// An `interpret` directive after a `run:` one: its bindings.
    pub interpret_after: Option<String>,
    pub inputs: HashMap<String, Vec<f64>>,
    pub program: String,
}

pub(crate) fn read(path: &Path) -> FileTest {
    let text = std::fs::read_to_string(path).unwrap();
    let (mut directive, mut inputs, mut program) = (String::new(), HashMap::new(), String::new());
    let mut interpret_after = None;
    for line in text.lines() {
        let Some(d) = line.trim_start().strip_prefix(';') else {
            program.push_str(line);
            program.push('\n');
            continue;
        };
        let d = d.trim();
        if let Some(rest) = d.strip_prefix("input ") {
            let (name, values) = rest.split_once('=').expect("; input \"NAME\" = [...]");
            let name: String = serde_json::from_str(name.trim()).expect("a quoted name");
            let values: Vec<f64> = serde_json::from_str(values.trim()).expect("a list of numbers");
            inputs.insert(name, values);
        } else if !d.is_empty() && directive.is_empty() {
            directive = d.to_string();
        } else if let (Some(words), true) = (d.strip_prefix("interpret"), directive.starts_with("run:")) {
            interpret_after = Some(words.to_string());
        }
    }
    FileTest { directive, interpret_after, inputs, program }
}

fn bindings(words: &str) -> Bindings {
    let mut b = Bindings::new(1, 1, 0);
    for w in words.split_whitespace() {
        let (k, v) = w.split_once('=').expect("B=.. T=.. P=..");
        let v: u64 = v.parse().unwrap();
        match k {
            "B" => b.b = v,
            "T" => b.t = v,
            "P" => b.p = v,
            other => panic!("unknown binding {other}"),
        }
    }
    b
}

/// The outputs of `g` on the reference backend under `b`, each source filled
/// from `given` or else as the module docs say; an error as its text.
pub(crate) fn run_reference(
    g: &Graph,
    b: &Bindings,
    given: &HashMap<String, Vec<f64>>,
) -> Result<Vec<(String, HostTensor)>, String> {
    run_reference_from(g, g, b, given)
}

/// [`run_reference`] of `g`, a rewrite of `original`: the sources filled are
/// the original's, and the packed parameters of merged linears are stacked
/// from them as the driver does.
pub(crate) fn run_reference_from(
    original: &Graph,
    g: &Graph,
    b: &Bindings,
    given: &HashMap<String, Vec<f64>>,
) -> Result<Vec<(String, HostTensor)>, String> {
    let r = Reference::new();
    let mut inputs: HashMap<String, Buffer> = HashMap::new();
    let mut states: HashMap<String, Buffer> = HashMap::new();
    let mut params: HashMap<String, Buffer> = HashMap::new();
    for n in original.g.node_weights() {
        let (name, to) = match &n.op {
            Op::Input { name } => (name, &mut inputs),
            Op::State { name } => (name, &mut states),
            Op::Param { key } => (key, &mut params),
            _ => continue,
        };
        let shape: Vec<usize> = n.ty.shape.iter().map(|d| d.eval(b) as usize).collect();
        let len: usize = shape.iter().product();
        let values: Vec<f64> = match given.get(name) {
            Some(v) => {
                assert_eq!(v.len(), len, "`{name}` takes {len} values");
                v.clone()
            }
            None if n.ty.dtype == DType::F32 => (0..len).map(|k| ((k * 7 % 11) as f64 - 5.0) / 4.0).collect(),
            None => (0..len).map(|k| (k % 3) as f64).collect(),
        };
        let t = match n.ty.dtype {
            DType::F32 => HostTensor::f32(shape, values.iter().map(|&v| v as f32).collect()),
            DType::I64 => HostTensor::i64(shape, values.iter().map(|&v| v as i64).collect()),
        };
        to.insert(name.clone(), r.upload(&t).unwrap());
    }
    ecarc_runtime::driver::bind_packed_params(g, &r, &mut params).map_err(|e| e.to_string())?;
    let exe = r.prepare(g, &params).map_err(|e| e.to_string())?;
    let args = Args {
        inputs: inputs.iter().map(|(k, v)| (k.as_str(), v)).collect(),
        states: states.iter().map(|(k, v)| (k.as_str(), v.clone())).collect(),
    };
    let outs = r.run(&exe, b, args).map_err(|e| e.to_string())?;
    Ok(outs.into_iter().map(|(name, buf)| (name, r.download(&buf).unwrap())).collect())
}

/// The outputs of `g` on the reference backend, as text.
fn interpret(g: &Graph, b: &Bindings, given: &HashMap<String, Vec<f64>>) -> String {
    outputs_text(run_reference(g, b, given))
}

fn outputs_text(outs: Result<Vec<(String, HostTensor)>, String>) -> String {
    let mut out = String::new();
    match outs {
        Err(e) => writeln!(out, "error: {e}").unwrap(),
        Ok(outs) => {
            for (name, t) in outs {
                let values: Vec<String> = match (t.as_f32(), t.as_i64()) {
                    (Some(v), _) => v.iter().map(|x| format!("{x:.5}")).collect(),
                    (_, Some(v)) => v.iter().map(|x| x.to_string()).collect(),
                    _ => unreachable!(),
                };
                writeln!(out, "{name:?} {}{:?} = [{}]", t.dtype().name(), t.shape, values.join(", ")).unwrap();
            }
        }
    }
    out
}

fn outcome(test: &FileTest) -> String {
    let parsed = parse(&test.program);
    let d = test.directive.as_str();
    if let Some(passes) = d.strip_prefix("run:") {
        let original = parsed.unwrap_or_else(|e| panic!("the program does not parse: {e}"));
        let mut g = original.clone();
        let names: Vec<&str> = passes.split(',').map(str::trim).collect();
        Pipeline::named(&names).unwrap().checked().run(&mut g).unwrap();
        let mut out = print(&g, None);
        if let Some(plan) = &g.memory {
            plan.check(&g).unwrap_or_else(|e| panic!("the memory plan does not fit:\n{}", e.join("\n")));
            out.push_str(&render(&g, &Bindings::new(1, 1, 1)));
        }
        if let Some(words) = &test.interpret_after {
            let b = bindings(words);
            let before = run_reference(&original, &b, &test.inputs);
            let after = run_reference_from(&original, &g, &b, &test.inputs);
            let same = matches!((&before, &after), (Ok(x), Ok(y)) if x == y);
            let (before, after) = (outputs_text(before), outputs_text(after));
            if same {
                writeln!(out, "; interpret{words}: bit for bit equal before and after").unwrap();
                out.push_str(&after);
            } else {
                writeln!(out, "; interpret{words}: before\n{before}; after\n{after}").unwrap();
            }
        }
        out
    } else if d == "verify" {
        match parsed.map(|g| verify(&g)) {
            Err(e) => format!("parse: {e}\n"),
            Ok(Ok(())) => "ok\n".into(),
            Ok(Err(problems)) => problems.iter().map(|p| format!("{p}\n")).collect(),
        }
    } else if let Some(words) = d.strip_prefix("interpret") {
        let g = parsed.unwrap_or_else(|e| panic!("the program does not parse: {e}"));
        interpret(&g, &bindings(words), &test.inputs)
    } else {
        panic!("unknown directive `{d}`")
    }
}

#[test]
fn ir_filetests() {
    let dir = root().join("tests/ir");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "ir"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "{} filetests", files.len());
    let bless = std::env::var_os("ECARC_BLESS_IR").is_some();
    let mut failed = vec![];
    for f in &files {
        let got = outcome(&read(f));
        let expected_path = f.with_extension("expected");
        if bless {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|_| panic!("{} has no {}", f.display(), expected_path.display()));
        if got != want {
            failed.push(format!("{}:\n--- expected\n{want}--- got\n{got}", f.display()));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    // Every pass is covered by a filetest.
    for pass in ecarc_compiler::pass::PASS_NAMES {
        let covered = files.iter().any(|f| read(f).directive.strip_prefix("run:").is_some_and(|p| p.contains(pass)));
        assert!(covered, "no filetest runs the `{pass}` pass");
    }
}
