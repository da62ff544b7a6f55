//! `ecarc search` and the pieces under it: memoised point checks equal full
//! checks.

use crate::common::root;
use ecarc_compiler::check::check_model;
use ecarc_compiler::check::memo::{check_point, Memo};
use ecarc_compiler::session::{check_source, Outcome};
use ecarc_compiler::space;
use ecarc_grammar::ast::Ident;

/// Spaces with valid and broken points of many kinds: component, schedule and
/// sampler axes; points failing unit rules, cross-field rules, group rules
/// (E0434 too many tensors, E0430 a key declared twice across owners).
const SPACES: &[&str] = &[
    // ECAR stage designs.
    r#"import "std/ecar.ecar"
model s extends ecar_base {
  backbone { depth in { 2, 3 }  width in { 64, 96 }  heads in { 4, 5 } }
  head flow_mlp { depth in 1..=2  width 64 }
  schedule { scales in { [1, 2, 4, 8, 16], [1, 4, 16], [16], [4, 8] }  segments uniform  steps in { 2, 3 } }
  where params <= 700M
}"#,
    // VAR: width is 64 * depth; heads must divide it; the phi map must match the scales.
    r#"import "std/var.ecar"
model v extends var_base {
  backbone { depth in { 2, 4, 6 }  heads in { 2, 3, 4 } }
  schedule { scales in { [1, 2, 3, 4, 5, 6, 8, 10, 13, 16], [1, 2, 4, 8, 16] } }
  sample { top_k in { 0, 900, 5000 } }
}"#,
    // Heads of different kinds; a flow transformer whose width the heads must divide.
    r#"import "std/ecar.ecar"
model h extends ecar_base {
  backbone { depth 2  width 64  heads 4 }
  head in { flow_mlp { depth 2  width 64 }, flow_transformer { depth 1  width 60  heads 8 }, flow_transformer { depth 1  width 64  heads 8 } }
  sample { solver in { euler, heun, ddpm }  cfg in { 1.0, 3.0 } }
}"#,
    // DiT: patch and the last stage's grid must agree.
    r#"import "std/dit.ecar"
model d extends dit_base {
  backbone { depth in { 1, 2 }  width 96  heads 4  patch in { 2, 4 } }
  schedule { stage 16x16 1.0 -> 0.0 steps 10 }
}"#,
    // Groups: too many tensors for some depths (E0434), a key declared by two
    // owners for some depths (E0430 across owners), a guard with a loop.
    r#"import "std/ecar.ecar"
model g extends ecar_base {
  backbone {
    depth in { 2, 30000 }
    width 64
    heads 4
    params "extra.{i}." for i in 0..depth when i != 1 { k_bias "x" [width] }
  }
  head flow_mlp { depth in { 1, 2 }  width 64  params "extra.{i}." for i in 1..depth + 1 { k_bias "x" [width] } }
}"#,
];

fn space_of(src: &str) -> (Ident, ecarc_grammar::merged::MBody, Vec<space::Axis>) {
    let s = check_source("space.ecar", src, &[]);
    let m = s.models.into_iter().next().expect("one model");
    assert!(matches!(m.outcome, Outcome::Space(_) | Outcome::Failed), "{src}: not a space: {:?}", m.outcome);
    let body = m.body.expect("resolved");
    let axes = space::axes(&body, &s.program.sources).expect("valid axes");
    (Ident { name: m.name, span: m.span }, body, axes)
}

#[test]
fn memoised_point_checks_equal_full_checks() {
    for src in SPACES {
        let (name, body, axes) = space_of(src);
        let total = space::size(&axes);
        let memo = Memo::new(&axes);
        let mut patched = body.clone();
        let (mut valid, mut invalid) = (0, 0);
        // Twice over: the second round is served from the caches.
        for round in 0..2 {
            for i in 0..total {
                let (point, assignment) = space::point(&body, &axes, i);
                let choice = space::choice(&axes, i);
                for (a, &c) in axes.iter().zip(&choice) {
                    space::apply(&mut patched, a, c as usize);
                }
                assert_eq!(patched, point, "apply builds the same point as `point`");
                let full = check_model(&name, &point);
                let fast = check_point(&name, &patched, &choice, &memo);
                let what = format!("{src}\npoint {i} {assignment:?} (round {round})");
                match (full, fast) {
                    (Ok(spec), Ok(p)) => {
                        valid += 1;
                        let mut tokenizer = spec.tokenizer.clone();
                        tokenizer.params = vec![];
                        assert_eq!(p.tokenizer, tokenizer, "{what}");
                        assert_eq!(
                            (&p.backbone, &p.head, &p.schedule, &p.sampler, &p.distill),
                            (&spec.backbone, &spec.head, &spec.schedule, &spec.sampler, &spec.distill),
                            "{what}"
                        );
                        assert_eq!((p.image, p.classes, &p.constraints), (spec.image, spec.classes, &spec.constraints));
                        assert_eq!(p.params, spec.param_count(), "{what}");
                        assert_eq!(p.tokenizer_params, spec.tokenizer_param_count(), "{what}");
                    }
                    (Err(a), Err(b)) => {
                        invalid += 1;
                        assert_eq!(a, b, "{what}: the same diagnostics in the same order");
                    }
                    (full, fast) => panic!("{what}: full check {:?}, memoised {:?}", full.is_ok(), fast.is_ok()),
                }
            }
        }
        let stats = memo.stats();
        println!("{name:?}: {total} points, {valid} valid, {invalid} invalid; {stats:?}", name = name.name);
        assert!(stats.unit_hits > stats.unit_misses, "{}: the caches are used: {stats:?}", name.name);
    }
    // The spaces do exercise broken points and the one-pass fallback.
    let (name, body, axes) = space_of(SPACES[4]);
    let memo = Memo::new(&axes);
    let mut codes = std::collections::BTreeSet::new();
    for i in 0..space::size(&axes) {
        let (point, _) = space::point(&body, &axes, i);
        if let Err(d) = check_point(&name, &point, &space::choice(&axes, i), &memo) {
            codes.extend(d.iter().map(|d| d.code.to_string()));
        }
    }
    assert!(codes.contains("E0434") && codes.contains("E0430"), "{codes:?}");
    assert!(memo.stats().one_pass > 0);
    let _ = root();
}
