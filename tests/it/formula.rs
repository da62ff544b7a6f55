//! Symbolic parameter and MAC formulas (`cost::formula`): evaluated at a model's
//! own values they reproduce the IR-based cost report and the declared
//! parameter count exactly, for every reference model and for variants; and
//! they are genuinely symbolic: one model's formula, re-evaluated with other
//! values, gives the figures of the other design without lowering it.

use crate::common::{model_files, root};
use ecarc_compiler::artifact::compile;
use ecarc_compiler::cost::formula::{formula, schedule_values, Cost, Formula, SCHEDULE_SYMBOLS};
use ecarc_compiler::cost::CostReport;
use ecarc_compiler::lower::SpecSpans;
use ecarc_compiler::session::{check_paths, Outcome, Override};
use ecarc_compiler::ModelSpec;
use ecarc_grammar::merged::MBody;
use std::collections::HashMap;

/// The checked spec and merged body of `models/{model}.ecar` with overrides.
fn checked(model: &str, sets: &[&str]) -> (ModelSpec, MBody) {
    let path = root().join(format!("models/{model}.ecar"));
    let sets: Vec<Override> = sets.iter().map(|s| s.parse().expect("valid --set")).collect();
    let s = check_paths(&[&path], &sets);
    assert!(!s.has_errors(), "{model} {sets:?} does not check:\n{}", s.render_diags());
    let m = s.models.into_iter().next().expect("one model");
    match (m.outcome, m.body) {
        (Outcome::Model(spec), Some(body)) => (*spec, body),
        (other, _) => panic!("{model}: expected one model, got {other:?}"),
    }
}

fn report(spec: &ModelSpec) -> CostReport {
    compile(spec, &SpecSpans::default(), vec![]).unwrap_or_else(|d| panic!("{}: {}", spec.name, d.message)).report
}

fn figures(r: &CostReport) -> Cost {
    Cost { params: r.params as i128, forward_macs: r.forward_macs as i128, sample_macs: r.sample_macs as i128 }
}

/// Formula at the model's own values == cost report == declared params, through
/// both the map evaluation and the compiled form.
fn assert_matches(model: &str, sets: &[&str]) -> (Formula, HashMap<String, i128>) {
    let (spec, body) = checked(model, sets);
    let f = formula(&spec, &body).unwrap_or_else(|e| panic!("{model} {sets:?}: {e}"));
    let values = Formula::values(&spec, &body).unwrap();
    let got = f.eval(&values).unwrap();
    let want = figures(&report(&spec));
    assert_eq!(
        got, want,
        "{model} {sets:?}\nparams = {}\nforward = {}\nsample = {}",
        f.params, f.forward_macs, f.sample_macs
    );
    assert_eq!(got.params, spec.param_count() as i128, "{model} {sets:?}");
    let compiled = f.compile();
    assert_eq!(compiled.eval(&compiled.slots(&values).unwrap()), Some(want), "{model} {sets:?} compiled");
    let mut names: Vec<&String> = values.keys().collect();
    names.sort();
    assert_eq!(names, f.symbols.iter().collect::<Vec<_>>(), "{model}: one value per symbol");
    (f, values)
}

#[test]
fn every_model_matches_the_cost_report() {
    for path in model_files() {
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        assert_matches(&name, &[]);
    }
}

const VARIANTS: &[(&str, &[&str])] = &[
    ("var_d16", &["backbone.depth=20"]),
    ("var_d16", &["backbone.depth=24"]),
    ("var_d16", &["schedule.scales=[1, 2, 4, 8, 16]", "tokenizer.phi.map=[0, 1, 2, 3, 3]"]),
    (
        "var_d16",
        &[
            "backbone.depth=12",
            "schedule.scales=[1, 4, 16]",
            "tokenizer.phi.map=[0, 2, 3]",
            "sample.cfg=1.0",
            "sample.cfg_schedule=constant",
        ],
    ),
    ("var_d16", &["backbone.width=768"]),
    ("var_d16_dd", &["distill.steps=1"]),
    ("var_d20_dd", &["backbone.depth=8"]),
    ("ecar_l", &["head.depth=4", "head.width=1024"]),
    ("ecar_l", &["schedule={ scales [1, 4, 16]  segments uniform  steps 8 }"]),
    ("ecar_l", &["schedule={ scales [1, 2, 4, 8, 16]  segments uniform  steps [2, 4, 6, 8, 10] }"]),
    ("ecar_l", &["head=flow_transformer { depth 4  width 512  heads 8 }"]),
    ("ecar_l", &["sample.cfg=1.0", "sample.cfg_schedule=constant"]),
    ("ecar_l", &["sample.solver=heun"]),
    ("ecar_b", &["schedule={ stage 2x2 1.0 -> 0.5 steps 3  stage 16x16 0.5 -> 0.0 steps 5 }"]),
    ("llamagen_b", &["backbone.depth=6"]),
    ("llamagen_b", &["image=128", "schedule={ raster 8x8 }"]),
    ("llamagen_b", &["sample.cfg=1.0"]),
    ("llamagen_l_dd", &["distill.steps=1"]),
    ("dit_xl2", &["backbone.patch=4", "schedule={ stage 8x8 1.0 -> 0.0 steps 250 }"]),
    ("dit_xl2", &["schedule={ stage 16x16 1.0 -> 0.0 steps 50 }", "sample.cfg=1.0"]),
    ("dit_s2", &["backbone.depth=6"]),
    ("dit_s2", &["sample.solver=heun"]),
    ("dit_s2", &["sample=flow_euler { solver heun }", "schedule={ stage 16x16 1.0 -> 0.0 steps 20 }"]),
];

#[test]
fn variants_match_the_cost_report() {
    for (model, sets) in VARIANTS {
        assert_matches(model, sets);
    }
}

/// Evaluate `f` (built from `values`' design) at another design's values of `symbols`.
fn eval_with(f: &Formula, values: &HashMap<String, i128>, changes: &[(&str, i128)]) -> Cost {
    let mut v = values.clone();
    for (k, x) in changes {
        assert!(f.symbols.iter().any(|s| s == k), "`{k}` is not a symbol of the formula: {:?}", f.symbols);
        v.insert(k.to_string(), *x);
    }
    f.eval(&v).unwrap()
}

#[test]
fn var_params_are_a_polynomial_in_depth() {
    let (f, values) = assert_matches("var_d16", &[]);
    println!("VAR-d16 params       = {}", f.params);
    println!("VAR-d16 forward_macs = {}", f.forward_macs);
    println!("VAR-d16 sample_macs  = {}", f.sample_macs);
    println!("symbols: {:?}", f.symbols);
    // Only the depth and derived values: width = 64 depth, heads = depth, ffn_hidden = 4 width.
    let derived = ["tokens", "stages", "classes", "vocab", "code_dim", "grid"];
    for s in f.params.symbols() {
        assert!(s == "backbone.depth" || derived.contains(&s.as_str()), "params mention `{s}`: {}", f.params);
    }
    assert!(f.params.symbols().contains("backbone.depth"));
    // depth x width^2 = 64^2 depth^3.
    assert_eq!(f.params.degree(), 3, "{}", f.params);
    // 310,283,520 (docs/families.md), and the other depths from the same formula.
    assert_eq!(f.eval(&values).unwrap().params, 310_283_520);
    for (depth, want) in [(20, 600_917_136), (24, 1_033_399_360), (30, 2_010_020_356)] {
        let got = eval_with(&f, &values, &[("backbone.depth", depth)]);
        assert_eq!(got.params, want, "VAR-d{depth}");
        assert_eq!(got, figures(&report(&checked(&format!("var_d{depth}"), &[]).0)), "VAR-d{depth}");
    }
}

/// A formula, re-evaluated at another design's symbols (schedule symbols from
/// that design's schedule), gives its cost report.
fn assert_transfers(model: &str, changes: &[(&str, i128)], sets: &[&str]) {
    let (spec, body) = checked(model, &[]);
    let f = formula(&spec, &body).unwrap();
    let mut v = Formula::values(&spec, &body).unwrap();
    let (other, _) = checked(model, sets);
    let sv = schedule_values(&other.schedule);
    for (name, x) in SCHEDULE_SYMBOLS.iter().zip(sv) {
        if v.contains_key(*name) {
            v.insert(name.to_string(), x);
        }
    }
    let got = eval_with(&f, &v, changes);
    assert_eq!(got, figures(&report(&other)), "{model} formula at {changes:?} {sets:?}");
    // The same through the compiled form and its schedule setter.
    let c = f.compile();
    let mut slots = c.slots(&Formula::values(&spec, &body).unwrap()).unwrap();
    c.set_schedule(&mut slots, &other.schedule);
    for (k, x) in changes {
        slots[c.slot(k).unwrap()] = *x;
    }
    assert_eq!(c.eval(&slots), Some(got));
}

#[test]
fn formulas_transfer_to_other_designs() {
    assert_transfers("var_d16", &[("backbone.depth", 20)], &["backbone.depth=20"]);
    assert_transfers("var_d16", &[], &["schedule.scales=[1, 2, 4, 8, 16]", "tokenizer.phi.map=[0, 1, 2, 3, 3]"]);
    assert_transfers(
        "var_d16",
        &[("backbone.depth", 12)],
        &[
            "backbone.depth=12",
            "schedule.scales=[1, 2, 3, 4, 6, 8, 12, 16]",
            "tokenizer.phi.map=[0, 0, 1, 1, 2, 2, 3, 3]",
        ],
    );
    assert_transfers(
        "var_d16_dd",
        &[("backbone.depth", 24), ("distill.steps", 1)],
        &["backbone.depth=24", "distill.steps=1"],
    );
    assert_transfers("ecar_l", &[("head.depth", 4), ("head.width", 1024)], &["head.depth=4", "head.width=1024"]);
    assert_transfers(
        "ecar_l",
        &[("backbone.depth", 24), ("backbone.width", 768), ("backbone.heads", 12)],
        &["backbone.depth=24", "backbone.width=768", "backbone.heads=12"],
    );
    assert_transfers("ecar_l", &[], &["schedule={ scales [1, 4, 16]  segments uniform  steps 8 }"]);
    assert_transfers(
        "ecar_l",
        &[],
        &["schedule={ scales [1, 2, 4, 8, 16]  segments uniform  steps [2, 4, 6, 8, 10] }"],
    );
    // DiT's heads change no tensor and no MAC (heads x head_dim = width): not a symbol.
    assert_transfers(
        "dit_xl2",
        &[("backbone.depth", 12), ("backbone.width", 768)],
        &["backbone.depth=12", "backbone.width=768", "backbone.heads=12"],
    );
    assert_transfers("dit_xl2", &[], &["schedule={ stage 16x16 1.0 -> 0.0 steps 50 }"]);
    // LlamaGen's SwiGLU hidden width is rounded: a leaf to set alongside the width.
    assert_transfers("llamagen_b", &[("backbone.depth", 6)], &["backbone.depth=6"]);
    assert_transfers("llamagen_b", &[], &["image=128", "schedule={ raster 8x8 }"]);
}

#[test]
fn polynomials_print_canonically() {
    use ecarc_compiler::cost::formula::Poly;
    let (d, w) = (Poly::var("depth"), Poly::var("width"));
    let p = d.mul(&w).mul(&w).scale(18).add(&d.mul(&w).scale(14)).add(&Poly::constant(-3)).add(&w);
    assert_eq!(p.to_string(), "18*depth*width^2 + 14*depth*width + width - 3");
    assert_eq!(p.sub(&p), Poly::zero());
    assert_eq!(p.add(&Poly::constant(3)).sub(&w).div_exact(&d.mul(&w).scale(2)).unwrap().to_string(), "9*width + 7");
    assert!(w.div_exact(&d).is_none());
    let values: HashMap<String, i128> = [("depth".to_string(), 2), ("width".to_string(), 10)].into();
    assert_eq!(p.eval(&values).unwrap(), 18 * 2 * 100 + 14 * 20 + 10 - 3);
}

/// Constructs the reference models do not use: an exact division, a function
/// call (a leaf named by its text), `when` on a boolean field, a loop with
/// symbolic bounds, nested loops with a guard and the loop variable in a shape.
#[test]
fn expressions_become_polynomials_or_named_leaves() {
    let src = r#"
import "std/var.ecar"
model custom extends var_base {
  backbone {
    depth 4
    width 48 * depth
    block {
      ffn_hidden min(width * 3, 1000)
      params "extra.{j}." for j in 1..depth - 1 when ffn_bias {
        k_bias  "a"  [width * 5 / 2, heads * 3 / 2]
      }
      params "nested.{l}.{j}." for l in 0..2, j in 0..depth when j != l {
        k_bias  "c"  [width * (l + 1)]
      }
      params "never." when !ffn_bias {
        k_bias  "b"  [width]
      }
    }
  }
}
"#;
    let s = ecarc_compiler::session::check_source("custom.ecar", src, &[]);
    assert!(!s.has_errors(), "{}", s.render_diags());
    let m = s.models.into_iter().next().unwrap();
    let (Outcome::Model(spec), Some(body)) = (m.outcome, m.body) else { panic!("one model") };
    let f = formula(&spec, &body).unwrap();
    let values = Formula::values(&spec, &body).unwrap();
    assert_eq!(f.eval(&values).unwrap(), figures(&report(&spec)));
    println!("custom params = {}", f.params);
    // width * 5 / 2 = 120 depth exactly; heads * 3 / 2 is not a polynomial.
    let leaf = "backbone.block:(heads * 3 / 2)";
    assert_eq!(values[leaf], 6);
    assert_eq!(values["backbone.block:(min(width * 3, 1000))"], 576);
    assert!(f.params.symbols().contains(leaf), "{}", f.params);
    assert!(f.params.to_string().contains(&format!("120*{leaf}*backbone.depth^2 ")), "{}", f.params);
}
