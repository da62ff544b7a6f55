//! `ecarc search` and the pieces under it: memoised point checks equal full
//! checks; the front is exact (against brute force through the IR); sharded
//! and merged runs equal single runs; broken designs are counted and
//! explained; emitted designs check and cost the same; the command line.

use crate::common::root;
use crate::robustness::{cases, runner};
use ecarc_compiler::artifact::compile;
use ecarc_compiler::check::check_model;
use ecarc_compiler::check::memo::{check_point, Memo};
use ecarc_compiler::lower::SpecSpans;
use ecarc_compiler::search::objective::{parse_objectives, Constraint, Metric};
use ecarc_compiler::search::pareto::{brute_force, Front};
use ecarc_compiler::search::{self, emit, merge, Options, SearchResult, Selection, Shard, Space};
use ecarc_compiler::session::{check_paths, check_source, load_models, Outcome};
use ecarc_compiler::space;
use ecarc_grammar::ast::Ident;
use proptest::prelude::*;
use std::path::{Path, PathBuf};
use std::process::Command;

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
        let memo = Memo::for_space(&body, &axes);
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
    let memo = Memo::for_space(&body, &axes);
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

/// Random spaces: each field fixed or given two options, valid or not; every
/// point checked both ways.
#[test]
fn memoised_checks_equal_full_checks_on_random_spaces() {
    // (component, field, options): the first option is valid for the others' first.
    const FIELDS: &[(&str, &str, &[&str])] = &[
        ("backbone", "depth", &["2", "3", "0"]),
        ("backbone", "width", &["64", "96", "60"]),
        ("backbone", "heads", &["4", "5", "8"]),
        ("backbone", "qk_norm", &["l2", "none", "max"]),
        ("head", "depth", &["1", "2"]),
        ("head", "width", &["64", "32", "-1"]),
        ("schedule", "scales", &["[1, 2, 4, 8, 16]", "[4, 16]", "[2, 1, 16]", "[16]"]),
        ("schedule", "steps", &["2", "[1, 2, 3, 4, 5]", "3"]),
        ("sample", "cfg", &["3.0", "1.0", "-1"]),
        ("sample", "solver", &["euler", "heun", "ddpm"]),
    ];
    // About 30 ms a case: `PROPTEST_CASES` may lower the count, not raise it.
    let mut r = runner(cases(64).min(64));
    let strategy = proptest::collection::vec((0usize..3, 0usize..4, 0usize..4), FIELDS.len());
    r.run(&strategy, |picks| {
        let mut by_component: Vec<(&str, Vec<String>)> = Vec::new();
        let mut axes = 0;
        for ((component, field, options), (mode, a, b)) in FIELDS.iter().zip(&picks) {
            let (a, b) = (options[a % options.len()], options[b % options.len()]);
            let entry = match mode {
                0 => continue,
                1 => format!("{field} {a}"),
                _ if a == b => format!("{field} {a}"),
                _ => {
                    axes += 1;
                    if axes > 4 {
                        format!("{field} {a}")
                    } else {
                        format!("{field} in {{ {a}, {b} }}")
                    }
                }
            };
            match by_component.iter_mut().find(|(c, _)| c == component) {
                Some((_, v)) => v.push(entry),
                None => by_component.push((component, vec![entry])),
            }
        }
        let mut src = String::from("import \"std/ecar.ecar\"\nmodel r extends ecar_base {\n");
        for (c, entries) in &by_component {
            let head = if *c == "schedule" && !entries.iter().any(|e| e.starts_with("scales")) {
                // Rows and `steps` do not mix: give scales when only steps vary.
                "scales [1, 2, 4, 8, 16]  segments uniform  ".to_string()
            } else if *c == "schedule" {
                "segments uniform  ".to_string()
            } else {
                String::new()
            };
            src.push_str(&format!("  {c} {{ {head}{} }}\n", entries.join("  ")));
        }
        src.push_str("}\n");
        let s = check_source("random.ecar", &src, &[]);
        let Some(m) = s.models.into_iter().next() else { return Ok(()) };
        let Some(body) = m.body else { return Ok(()) };
        let Ok(axes) = space::axes(&body, &s.program.sources) else { return Ok(()) };
        let name = Ident { name: m.name, span: m.span };
        let memo = Memo::for_space(&body, &axes);
        let mut patched = body.clone();
        for round in 0..2 {
            for i in 0..space::size(&axes) {
                let (point, _) = space::point(&body, &axes, i);
                let choice = space::choice(&axes, i);
                for (a, &c) in axes.iter().zip(&choice) {
                    space::apply(&mut patched, a, c as usize);
                }
                let full = check_model(&name, &point);
                let fast = check_point(&name, &patched, &choice, &memo);
                match (full, fast) {
                    (Ok(spec), Ok(p)) => {
                        prop_assert_eq!(
                            (&p.backbone, &p.head, &p.schedule),
                            (&spec.backbone, &spec.head, &spec.schedule)
                        );
                        prop_assert_eq!(&p.sampler, &spec.sampler);
                        prop_assert_eq!(p.params, spec.param_count());
                    }
                    (Err(a), Err(b)) => prop_assert_eq!(a, b, "{}\npoint {} round {}", src, i, round),
                    (a, b) => {
                        prop_assert!(false, "{}\npoint {}: full {:?}, memoised {:?}", src, i, a.is_ok(), b.is_ok())
                    }
                }
            }
        }
        Ok(())
    })
    .unwrap();
}

/// A loaded space and its sources.
struct Loaded {
    space: Space,
    sources: ecarc_grammar::SourceMap,
    root: ecarc_grammar::FileId,
}

fn load(path: &Path) -> Loaded {
    let l = load_models(&[path], &[]);
    assert!(
        l.diags.iter().all(|d| !d.is_error()),
        "{}",
        ecarc_grammar::diag::render_all_plain(&l.diags, &l.program.sources)
    );
    let (name, body) = l.models.into_iter().next().expect("one model");
    let space = Space::new(name, body, &l.program.sources).expect("valid axes");
    Loaded { space, sources: l.program.sources, root: l.program.roots[0] }
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ecarc-search-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn opts(objectives: &str, selection: Selection, shard: Shard) -> Options {
    Options { objectives: parse_objectives(objectives).unwrap(), selection, shard }
}

fn run(l: &Loaded, o: &Options) -> SearchResult {
    search::run(&l.space, "space.ecar", o, &l.sources, &|_| {}).expect("the search runs").0
}

/// A small space with free and structural axes, broken designs and a
/// constraint that rejects some: 3 x 2 x 2 x 2 x 4 x 2 x 2 = 384 designs.
const SMALL: &str = r#"import "std/ecar.ecar"
model small extends ecar_base {
  backbone { depth in 2..=6 step 2  width in { 64, 96 }  heads in { 4, 5 } }
  head flow_mlp { depth in { 1, 3 }  width 64 }
  schedule { scales in { [1, 2, 4, 8, 16], [1, 4, 16], [16], [4, 8] }  segments uniform  steps in { 2, 5 } }
  sample { solver in { euler, heun } }
  where params <= 300K
}
"#;

/// A design's (index, params, forward MACs, sample MACs, within the constraints,
/// peak activation bytes).
type Figures = (u128, i128, i128, i128, bool, i128);

#[test]
fn the_front_is_exact_against_brute_force_through_the_ir() {
    let dir = temp_dir("exact");
    // With the constraint, and without it (larger fronts).
    let unconstrained = SMALL.replace("  where params <= 300K\n", "");
    assert_ne!(unconstrained, SMALL);
    for (k, text) in [SMALL, unconstrained.as_str()].into_iter().enumerate() {
        exact_on(&load(&write(&dir, &format!("small{k}.ecar"), text)), 384);
    }
    // A shape that is not a polynomial (a leaf named by its text) and depends on
    // the schedule: every axis is part of its formula's class.
    let opaque = r#"import "std/ecar.ecar"
model opaque extends ecar_base {
  backbone {
    depth in { 1, 2 }
    width in { 32, 64 }
    heads 4
    params { k_bias "extra" [min(tokens, 300) * width] }
  }
  head flow_mlp { depth 1  width 32 }
  schedule { scales in { [1, 2, 4, 8, 16], [16], [4, 16] }  segments uniform  steps in { 1, 3 } }
}
"#;
    exact_on(&load(&write(&dir, "opaque.ecar", opaque)), 24);
}

fn exact_on(l: &Loaded, total: u128) {
    assert_eq!(l.space.total, total);
    // Brute force: every design checked on its own, lowered and costed through the IR.
    let mut figures: Vec<Option<Figures>> = Vec::new();
    for i in 0..l.space.total {
        let body = l.space.point(i);
        figures.push(check_model(&l.space.name, &body).ok().map(|spec| {
            let r = compile(&spec, &SpecSpans::from_body(&body), vec![]).expect("lowers").report;
            let within = spec.constraints.iter().all(|c| Constraint::from_spec(c).unwrap().holds(r.params as i128));
            (
                i,
                r.params as i128,
                r.forward_macs as i128,
                r.sample_macs as i128,
                within,
                r.peak_activation_bytes as i128,
            )
        }));
    }
    for objectives in [
        "sample_macs,params",
        "sample_macs,max:params",
        "forward_macs,max:sample_macs,params",
        "params",
        "peak_activation_bytes,max:params",
    ] {
        let o = opts(objectives, Selection::All, Shard::ALL);
        let result = run(l, &o);
        let valid: Vec<_> = figures.iter().flatten().filter(|f| f.4).collect();
        assert_eq!(result.counts.valid as usize, valid.len(), "{objectives}");
        assert_eq!(result.counts.invalid as usize, figures.iter().filter(|f| f.is_none()).count());
        assert_eq!(result.counts.rejected as usize, figures.iter().flatten().filter(|f| !f.4).count());
        let key = |f: &Figures| -> Vec<i128> {
            o.objectives
                .iter()
                .map(|ob| {
                    ob.key(match ob.metric {
                        Metric::Params => f.1,
                        Metric::ForwardMacs => f.2,
                        Metric::SampleMacs => f.3,
                        Metric::PeakActivationBytes => f.5,
                        m => panic!("{m}"),
                    })
                })
                .collect()
        };
        let want = brute_force(&valid.iter().map(|f| (key(f), f.0)).collect::<Vec<_>>());
        let got: Vec<(Vec<i128>, u128, u64)> = result
            .front
            .iter()
            .map(|r| {
                let f = figures[r.index as usize].expect("valid");
                assert_eq!((r.params, r.forward_macs, r.sample_macs), (f.1, f.2, f.3), "design {}", r.index);
                (key(&f), r.index, r.ties)
            })
            .collect();
        assert_eq!(got, want, "{objectives}");
        assert!(!got.is_empty());
        println!("{objectives}: {} designs on the front", got.len());
    }
}

#[test]
fn pareto_front_equals_brute_force_on_random_sets() {
    let mut r = runner(cases(2_000));
    let strategy = (1usize..=4)
        .prop_flat_map(|k| proptest::collection::vec((proptest::collection::vec(0i128..6, k), 0u128..40), 0..40));
    r.run(&strategy, |designs| {
        // Distinct indices, as in a space.
        let mut seen = std::collections::BTreeSet::new();
        let designs: Vec<(Vec<i128>, u128)> = designs.into_iter().filter(|d| seen.insert(d.1)).collect();
        let mut f: Front<()> = Front::new();
        for (o, i) in &designs {
            f.offer(o.clone(), *i, ());
        }
        let got: Vec<_> = f.into_sorted().into_iter().map(|p| (p.objectives, p.index, p.ties)).collect();
        prop_assert_eq!(&got, &brute_force(&designs));
        // Merging fronts of any split of the designs gives the same front.
        let mid = designs.len() / 2;
        let (mut a, mut b): (Front<()>, Front<()>) = (Front::new(), Front::new());
        for (k, (o, i)) in designs.iter().enumerate() {
            if k < mid { &mut a } else { &mut b }.offer(o.clone(), *i, ());
        }
        b.merge(a);
        let merged: Vec<_> = b.into_sorted().into_iter().map(|p| (p.objectives, p.index, p.ties)).collect();
        prop_assert_eq!(&merged, &got);
        Ok(())
    })
    .unwrap();
}

/// The parts of a result that a sharded run must reproduce.
fn essence(r: &SearchResult) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap();
    let o = v.as_object_mut().unwrap();
    o.remove("shards");
    o.remove("shard_count");
    v
}

#[test]
fn sharded_and_merged_runs_equal_a_single_run() {
    let l = load(&root().join("tests/search/ecar_search.ecar"));
    for selection in [Selection::All, Selection::Sample { count: 5_000, seed: 3 }] {
        let single = run(&l, &opts("sample_macs,max:params", selection, Shard::ALL));
        let shards: Vec<SearchResult> = (0..3)
            .map(|i| {
                let r = run(&l, &opts("sample_macs,max:params", selection, Shard { index: i, count: 3 }));
                // Through the file format, as `ecarc search merge` reads them.
                SearchResult::from_json(&r.to_json()).unwrap()
            })
            .rev()
            .collect();
        assert!(shards.iter().all(|s| s.counts.designs > 0));
        let merged = merge::merge(shards.clone(), false).unwrap();
        assert_eq!(merged.shards, vec![0, 1, 2]);
        assert_eq!(essence(&merged), essence(&single), "{selection:?}");
        // Missing or repeated shards are refused.
        let err = merge::merge(shards[..2].to_vec(), false).unwrap_err();
        assert!(err.contains("shards missing: 0/3"), "{err}");
        let err = merge::merge(vec![shards[0].clone(), shards[0].clone()], false).unwrap_err();
        assert!(err.contains("given twice"), "{err}");
        let other = run(&l, &opts("sample_macs,params", selection, Shard { index: 1, count: 3 }));
        assert!(merge::merge(vec![shards[0].clone(), other], true).unwrap_err().contains("different searches"));
    }
}

#[test]
fn broken_designs_are_counted_and_explained() {
    let l = load(&root().join("tests/search/ecar_search.ecar"));
    let r = run(&l, &opts("sample_macs,max:params", Selection::All, Shard::ALL));
    assert_eq!(r.counts.designs, 134_784);
    // The boundary list fits the two four-stage schedules of the nine: half the
    // designs choose it, 7/9 of those break E0422.
    assert_eq!(r.counts.invalid, 134_784 / 2 * 7 / 9);
    assert_eq!(r.counts.valid + r.counts.rejected + r.counts.invalid, r.counts.designs);
    assert_eq!(r.invalid.len(), 1, "{:#?}", r.invalid);
    let g = &r.invalid[0];
    assert_eq!((g.code.as_str(), g.message.as_str()), ("E0422", "segment boundaries do not match the scales"));
    assert_eq!(g.count, r.counts.invalid);
    assert!(g.location.ends_with("ecar_search.ecar:26:28"), "{}", g.location);
    assert!(g.rendered.contains("E0422") && g.rendered.contains("5 boundaries"), "{}", g.rendered);
    // The examples are the smallest broken design indices.
    let smallest: Vec<u128> =
        (0..l.space.total).filter(|&i| check_model(&l.space.name, &l.space.point(i)).is_err()).take(3).collect();
    assert_eq!(g.examples.iter().map(|e| e.index).collect::<Vec<_>>(), smallest);
    assert_eq!(g.examples[0].design, l.space.assignment(smallest[0]));
    // A space whose designs break in several ways: each problem counted apart.
    let dir = temp_dir("broken");
    let l = load(&write(&dir, "b.ecar", SMALL));
    let r = run(&l, &opts("sample_macs", Selection::All, Shard::ALL));
    let codes: Vec<(&str, u128)> = r.invalid.iter().map(|g| (g.code.as_str(), g.count)).collect();
    // heads 5 divides neither 64 nor 96 (E0401, half the designs); [4, 8] does not
    // reach the 16x16 grid (E0405, a quarter); E0401 stops the backbone's check, so
    // E0405 is reported where the heads divide.
    assert_eq!(codes, vec![("E0401", 192), ("E0405", 48)], "{:#?}", r.invalid);
    assert_eq!(r.counts.invalid, 192 + 48);
    assert_eq!(r.rejected.len(), 1);
    assert_eq!(r.rejected[0].constraint, "params <= 300000");
    assert!(r.counts.rejected > 0 && r.counts.valid > 0, "{:?}", r.counts);
}

#[test]
fn emitted_designs_check_and_cost_the_same() {
    let dir = temp_dir("emit");
    let l = load(&root().join("tests/search/ecar_search.ecar"));
    let r = run(&l, &opts("sample_macs,max:params", Selection::Sample { count: 3_000, seed: 5 }, Shard::ALL));
    let out = dir.join("designs");
    std::fs::create_dir_all(&out).unwrap();
    for rec in r.front.iter().take(6) {
        let text = emit::emit(&l.space, rec.index, l.root, &l.sources, &out).unwrap();
        assert_eq!(ecarc_grammar::fmt::format_source(&text).unwrap(), text, "emitted files are formatted");
        assert!(!text.contains(" in {") && !text.contains(".."), "concrete:\n{text}");
        let path = write(&out, &format!("{}.ecar", emit::design_name("ecar_search", rec.index)), &text);
        assert_costs(&path, rec);
    }
    // A space whose axes are written in an imported file: the emitted file imports
    // the space's file and overrides the axes on its model.
    let base = write(&dir, "base.ecar", SMALL);
    let child = write(
        &dir,
        "child.ecar",
        "import \"base.ecar\"\n\nmodel child extends small {\n  head flow_mlp { depth in { 1, 2 }  width 64 }\n}\n",
    );
    let l = load(&child);
    let r = run(&l, &opts("sample_macs,max:params", Selection::All, Shard::ALL));
    assert!(l.space.axes.iter().any(|a| a.span.file != l.root));
    for rec in r.front.iter().take(4) {
        let text = emit::emit(&l.space, rec.index, l.root, &l.sources, &out).unwrap();
        assert!(text.contains("import \"../child.ecar\"") && text.contains("model child_d"), "{text}");
        assert!(text.contains("extends child {"), "{text}");
        let path = write(&out, &format!("{}.ecar", emit::design_name("child", rec.index)), &text);
        assert_costs(&path, rec);
    }
    let _ = base;
}

/// The file checks to one concrete model whose IR figures are the record's.
fn assert_costs(path: &Path, rec: &search::record::DesignRecord) {
    let s = check_paths(&[path], &[]);
    assert!(!s.has_errors(), "{}:\n{}", path.display(), s.render_diags());
    let spec = match &s.models[..] {
        [m] => match &m.outcome {
            Outcome::Model(spec) => spec.clone(),
            o => panic!("{}: not one concrete model: {o:?}", path.display()),
        },
        _ => panic!("{}: one model", path.display()),
    };
    let body = s.models[0].body.as_ref().unwrap();
    let rep = compile(&spec, &SpecSpans::from_body(body), vec![]).unwrap().report;
    assert_eq!(
        (rep.params as i128, rep.forward_macs as i128, rep.sample_macs as i128),
        (rec.params, rec.forward_macs, rec.sample_macs),
        "{}",
        path.display()
    );
}

#[test]
fn ecar_search_front() {
    // The example's front (ECAR stage designs under DiT-XL/2's sample MACs):
    // the most parameters for the sample compute.
    let l = load(&root().join("tests/search/ecar_search.ecar"));
    let r = run(&l, &opts("sample_macs,max:params", Selection::All, Shard::ALL));
    let mut text = format!(
        "{} designs: {} valid, {} rejected, {} broken; {} on the front\n",
        r.counts.designs,
        r.counts.valid,
        r.counts.rejected,
        r.counts.invalid,
        r.front.len()
    );
    for rec in &r.front {
        let d: Vec<String> = rec.design.iter().map(|(_, v)| v.clone()).collect();
        text.push_str(&format!(
            "#{:<6} {:<70} params {:>13} sample {:>17} ties {}\n",
            rec.index,
            d.join(" | "),
            rec.params,
            rec.sample_macs,
            rec.ties
        ));
    }
    insta::assert_snapshot!(text);
}

// ---------------------------------------------------------------------------
// The command line
// ---------------------------------------------------------------------------

fn ecarc() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ecarc"));
    c.arg("--color").arg("never");
    c
}

fn example() -> PathBuf {
    root().join("tests/search/ecar_search.ecar")
}

#[test]
fn cli_search_writes_results_plots_and_designs() {
    let dir = temp_dir("cli");
    let out = ecarc()
        .arg("search")
        .arg(example())
        .args(["--objective", "sample_macs,max:params", "--samples", "3000", "--seed", "1", "--top", "3"])
        .arg("-o")
        .arg(dir.join("r.json"))
        .arg("--plot")
        .arg(dir.join("front.svg"))
        .arg("--emit")
        .arg(dir.join("designs"))
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("search ecar_search: 3000 of 134784 designs visited"), "{stdout}");
    assert!(stdout.contains("Pareto front (sample_macs, max:params)"), "{stdout}");
    assert!(stderr.contains("E0422") && stderr.contains("designs break this"), "{stderr}");
    assert!(stderr.contains("designs/s"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "no progress bar or colour when not a terminal");
    let r = SearchResult::from_json(&std::fs::read_to_string(dir.join("r.json")).unwrap()).unwrap();
    assert_eq!(r.counts.designs, 3000);
    let svg = std::fs::read_to_string(dir.join("front.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("sample_macs"), "{}", &svg[..200.min(svg.len())]);
    let emitted: Vec<_> = std::fs::read_dir(dir.join("designs")).unwrap().collect();
    assert_eq!(emitted.len(), 3);
    for rec in r.front.iter().take(3) {
        assert_costs(&dir.join(format!("designs/ecar_search_d{}.ecar", rec.index)), rec);
    }
    // CSV and PNG, and --json on stdout.
    let out = ecarc()
        .arg("search")
        .arg(example())
        .args(["--samples", "500", "--json"])
        .arg("-o")
        .arg(dir.join("r.csv"))
        .arg("--plot")
        .arg(dir.join("front.png"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r = SearchResult::from_json(&String::from_utf8_lossy(&out.stdout)).unwrap();
    let csv = std::fs::read_to_string(dir.join("r.csv")).unwrap();
    assert!(csv.starts_with("index,backbone.depth,backbone.width,head.depth,head.width,schedule.scales,"), "{csv}");
    assert_eq!(csv.lines().count(), r.front.len() + 1);
    let png = std::fs::read(dir.join("front.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
}

#[test]
fn cli_shards_merge_into_the_single_run() {
    let dir = temp_dir("merge");
    let search = |extra: &[&str], out: &Path| {
        let o = ecarc()
            .arg("search")
            .arg(example())
            .args(["--samples", "4000", "--seed", "9"])
            .args(extra)
            .arg("-o")
            .arg(out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    search(&[], &dir.join("single.json"));
    let mut files = Vec::new();
    for i in 0..4 {
        let f = dir.join(format!("shard{i}.json"));
        search(&["--shard", &format!("{i}/4")], &f);
        files.push(f);
    }
    let o = ecarc().args(["search", "merge"]).args(&files).arg("-o").arg(dir.join("merged.json")).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let read = |p: &str| SearchResult::from_json(&std::fs::read_to_string(dir.join(p)).unwrap()).unwrap();
    assert_eq!(essence(&read("merged.json")), essence(&read("single.json")));
    // A shard of another model (here: --set on one shard only) is refused.
    let other = dir.join("other.json");
    search(&["--shard", "1/4", "--set", "backbone.heads=8"], &other);
    let o = ecarc()
        .args(["search", "merge"])
        .arg(&files[0])
        .arg(&other)
        .args(&files[2..])
        .arg("-o")
        .arg(dir.join("m3.json"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("different searches"));
    // A missing shard is an error.
    let o = ecarc().args(["search", "merge"]).args(&files[1..]).arg("-o").arg(dir.join("m2.json")).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("shards missing: 0/4"));
}

#[test]
fn cli_search_rejects_bad_settings() {
    let run = |args: &[&str]| {
        let o = ecarc().arg("search").arg(example()).args(args).output().unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stderr).to_string())
    };
    let (code, err) = run(&["--shard", "4/4"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("0 <= I < N"), "{err}");
    let (code, err) = run(&["--objective", "latency"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("unknown objective `latency`"), "{err}");
    let (code, err) = run(&["--samples", "10", "--measure", "tpu"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("--measure tpu"), "{err}");
    let (code, err) = run(&["--samples", "10", "--plot", "front.pdf"]);
    assert_eq!(code, Some(1));
    assert!(err.contains(".svg or .png"), "{err}");
    // A file that does not check reports its diagnostics (exit 1).
    let dir = temp_dir("bad");
    let bad =
        write(&dir, "bad.ecar", "import \"std/ecar.ecar\"\nmodel m extends ecar_base { backbone { depth in 4..2 } }\n");
    let o = ecarc().arg("search").arg(&bad).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("E0503"));
}

#[test]
fn cli_measures_the_best_designs_on_the_reference_backend() {
    let dir = temp_dir("measure");
    // A tiny ECAR space (examples/tiny/ecar.ecar with alternatives): the reference
    // interpreter samples a design in a moment.
    let tiny = root().join("examples/tiny/ecar.ecar");
    let space = write(
        &dir,
        "tiny.ecar",
        &format!(
            "import {:?}\nmodel tiny extends tiny_ecar {{\n  backbone {{ depth in {{ 1, 2 }} }}\n}}\n",
            tiny.display().to_string()
        ),
    );
    let o = ecarc()
        .arg("search")
        .arg(&space)
        .args(["--objective", "sample_macs,max:params", "--measure", "reference", "--top", "1"])
        .arg("-o")
        .arg(dir.join("r.json"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let r = SearchResult::from_json(&std::fs::read_to_string(dir.join("r.json")).unwrap()).unwrap();
    assert_eq!(r.measured_on.as_deref(), Some("reference"));
    let s = r.front[0].seconds_per_image;
    assert!(s.is_some_and(|s| s > 0.0), "{:?}\n{stderr}", r.front);
    assert!(r.front[1..].iter().all(|x| x.seconds_per_image.is_none()), "only --top designs");
}
