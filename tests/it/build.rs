//! `ecarc build` as a library: every reference model lowers to verified
//! programs whose text form round-trips, the cost model reproduces the
//! published figures, and each model's report and last-stage IR are pinned.

use crate::common::{model_files, root, spec_of};
use ecarc_compiler::artifact::{compile, Artifact};
use ecarc_compiler::cost::CostReport;
use ecarc_compiler::ir::{text, verify::verify};
use ecarc_compiler::lower::SpecSpans;
use ecarc_compiler::snapshot::snapshot;

pub fn build(model: &str, sets: &[&str]) -> Artifact {
    let spec = spec_of(&root().join(format!("models/{model}.ecar")), sets);
    let a = compile(&spec, &SpecSpans::default(), vec![]).unwrap_or_else(|d| panic!("{model}: {}", d.message));
    for g in &a.program.graphs {
        if let Err(e) = verify(g) {
            panic!("{model}: graph `{}` does not verify:\n{}", g.name, e.join("\n"));
        }
    }
    a
}

fn cost(model: &str, sets: &[&str]) -> CostReport {
    build(model, sets).report
}

fn gmac(v: u128) -> f64 {
    v as f64 / 1e9
}

#[test]
fn published_forward_macs() {
    // docs/families.md: VAR-d16 155.0 GMAC over 680 tokens; DiT-XL/2 118.6 GMAC (the paper's "Gflops").
    let var = cost("var_d16", &[]);
    assert_eq!(var.forward_macs, 155_031_142_400);
    assert!((gmac(var.forward_macs) - 155.0).abs() < 0.05);
    let dit = cost("dit_xl2", &[]);
    assert!((gmac(dit.forward_macs) - 118.6).abs() < 0.05, "{}", gmac(dit.forward_macs));
}

/// Closed forms of the same conventions, computed independently of the IR.
#[test]
fn forward_macs_match_closed_forms() {
    // VAR: per block 12 C^2 L + 2 L^2 C; adaLN 6 C^2 per block once; word_embed (L-1) 32 C;
    // head_nm 2 C^2 once; head L C V.
    for depth in [16u128, 20, 24, 30] {
        let (c, l, v) = (64 * depth, 680u128, 4096u128);
        let want = depth * (12 * c * c * l + 2 * l * l * c + 6 * c * c) + (l - 1) * 32 * c + 2 * c * c + l * c * v;
        assert_eq!(cost(&format!("var_d{depth}"), &[]).forward_macs, want, "var_d{depth}");
    }
    // LlamaGen: per layer (3+1) d^2 S + 3 d h S + 2 S^2 d; output S d V.
    for (m, dim, h, layers) in [("llamagen_b", 768u128, 2048u128, 12u128), ("llamagen_l", 1024, 2816, 24)] {
        let s = 256u128;
        let want = layers * (4 * dim * dim * s + 3 * dim * h * s + 2 * s * s * dim) + s * dim * 16384;
        assert_eq!(cost(m, &[]).forward_macs, want, "{m}");
    }
}

#[test]
fn sample_macs_ratios_are_reported() {
    let ecar = cost("ecar_l", &[]);
    let dit = cost("dit_xl2", &[]);
    // DiT-XL/2's 250-step CFG sample is 2 x 250 forwards.
    assert_eq!(dit.sample_macs, 2 * 250 * dit.forward_macs);
    let ratio = dit.sample_macs as f64 / ecar.sample_macs as f64;
    assert!(ratio > 10.0, "ECAR-L should cost well under DiT-XL/2 per sample, ratio {ratio}");

    let teacher = cost("var_d16", &[]);
    let one = cost("var_d16_dd", &["distill.steps=1"]);
    let two = cost("var_d16_dd", &["distill.steps=2"]);
    // Each DD step is one forward; the scale-by-scale accumulation of the codes runs once.
    assert_eq!(two.sample_macs - one.sample_macs, one.forward_macs);
    assert!(one.sample_macs > one.forward_macs);
    assert!(teacher.sample_macs > one.sample_macs);
    let lteacher = cost("llamagen_l", &[]);
    let lone = cost("llamagen_l_dd", &["distill.steps=1"]);
    assert!(lteacher.sample_macs > lone.sample_macs);
}

#[test]
fn every_model_builds_verifies_and_round_trips() {
    for path in model_files() {
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let a = build(&name, &[]);
        for g in &a.program.graphs {
            let t = text::print(g, None);
            let back = text::parse(&t).unwrap_or_else(|e| panic!("{name}/{}: {e}", g.name));
            assert_eq!(text::print(&back, None), t, "{name}/{}", g.name);
        }
        // Artifacts round-trip through JSON.
        let again = Artifact::from_json(&a.to_json()).unwrap();
        assert_eq!(again.report, a.report);
        insta::with_settings!({snapshot_suffix => name.clone(), omit_expression => true, prepend_module_to_snapshot => false}, {
            insta::assert_snapshot!("build", snapshot(&a));
        });
    }
}

#[test]
fn raster_models_have_one_decode_program() {
    let a = build("llamagen_b", &[]);
    let next: Vec<_> =
        a.program.graphs.iter().filter(|g| g.name.starts_with("step.")).map(|g| g.name.clone()).collect();
    assert_eq!(next, ["step.first", "step.next"]);
    let plan = a.program.sample_plan().expect("a sample plan");
    assert_eq!(plan.runs().filter(|(e, _)| e.program == "step.next").count(), 255);
}

/// A model that does not declare a tensor its architecture needs is refused by
/// `build` with a diagnostic naming the role, pointing at the component.
#[test]
fn missing_tensor_role_is_a_spanned_diagnostic() {
    let s = ecarc_compiler::session::check_paths(&[root().join("tests/data/tiny.ecar")], &[]);
    assert!(!s.has_errors(), "{}", s.render_diags());
    let m = &s.models[0];
    let (ecarc_compiler::session::Outcome::Model(spec), Some(body)) = (&m.outcome, &m.body) else { panic!("a model") };
    let d = compile(spec, &SpecSpans::from_body(body), vec![]).expect_err("tiny_vq_model declares no token_in");
    assert_eq!(d.code, "E0601");
    assert!(d.message.contains("token_in"), "{}", d.message);
    assert!(d.primary_span().is_some() && d.help.is_some());
}

/// A first stage wider than the start tokens: a flow head feeds the stage's own
/// starting noise at the other positions (and runs); a head that samples tokens
/// has nothing to feed there, which `build` says with the schedule's span.
#[test]
fn a_first_stage_wider_than_the_start_needs_a_flow_head() {
    let ecar = spec_of(
        &root().join("examples/tiny/ecar.ecar"),
        &["schedule={ stage 2x2 1.0 -> 0.5 steps 2  stage 4x4 0.5 -> 0.0 steps 2 }"],
    );
    let a = compile(&ecar, &SpecSpans::default(), vec![]).expect("a flow head feeds its starting noise");
    let plan = a.program.sample_plan().expect("a sample plan");
    assert_eq!(plan.inputs.iter().find(|i| i.name == "x").map(|i| i.ty.shape.len()), Some(3));
    let w = ecarc_runtime::weights::Weights::random(&ecar, 0);
    let backend = ecarc_runtime::reference::Reference::new();
    let g = ecarc_runtime::driver::Generator::from_spec(ecar, &backend, &w).expect("generator");
    let opts =
        ecarc_runtime::driver::SampleOptions { labels: vec![1], seed: 0, keep: ecarc_compiler::plan::Keep::Stages };
    let out = g.sample(&opts, &ecarc_runtime::driver::Quiet).expect("it samples");
    assert!(out.image.as_f32().unwrap().iter().all(|v| v.is_finite()));

    let path = root().join("examples/tiny/var.ecar");
    let sets: Vec<ecarc_compiler::session::Override> =
        ["schedule={ stage 2x2 stage 4x4 }", "tokenizer.phi={ convs 4 map [0, 2] mix 0.5 }"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
    let s = ecarc_compiler::session::check_paths(&[path], &sets);
    assert!(!s.has_errors(), "{}", s.render_diags());
    let m = &s.models[0];
    let (ecarc_compiler::session::Outcome::Model(spec), Some(body)) = (&m.outcome, &m.body) else { panic!("a model") };
    let d = compile(spec, &SpecSpans::from_body(body), vec![]).expect_err("VAR's first stage holds its start token");
    assert_eq!(d.code, "E0602");
    assert!(d.message.contains("first stage has 4 tokens"), "{}", d.message);
    assert!(d.primary_span().is_some() && d.help.is_some());
}
