//! Research variants pinned by snapshots: the pattern a researcher copies to
//! keep their own designs under review.
//!
//! Every model of `examples/variants.ecar` is built through the library, the
//! same calls `ecarc build` makes (check, lower, cost), and its snapshot text
//! (`ecarc build --snapshot`: the cost report, then the IR of the programs
//! that run the last stage) is compared with the reviewed file
//! `tests/it/snapshots/variants__MODEL.snap`. A change to the language, the
//! lowering or the cost model that alters what a variant computes, or what it
//! costs, fails here and shows as a diff in `cargo insta review`.
//!
//! To pin your own variants: write them in a `.ecar` file, copy this file,
//! point `FILE` at yours, run `cargo test` once, then `cargo insta review`
//! and read each new snapshot before accepting it.

use crate::common::root;
use ecarc_compiler::artifact::{compile, Artifact};
use ecarc_compiler::ir::verify::verify;
use ecarc_compiler::lower::SpecSpans;
use ecarc_compiler::session::{check_paths, Outcome};
use ecarc_compiler::snapshot::snapshot;

/// The file of variants, relative to the repository root.
const FILE: &str = "examples/variants.ecar";

/// Check the file and build each of its models, in file order.
fn build_all() -> Vec<(String, Artifact)> {
    let session = check_paths(&[root().join(FILE)], &[]);
    assert!(!session.has_errors(), "{FILE} does not check:\n{}", session.render_diags());
    let sources: Vec<String> = session.program.sources.files().map(|(_, f)| f.name.clone()).collect();
    session
        .models
        .iter()
        .map(|m| {
            let (Outcome::Model(spec), Some(body)) = (&m.outcome, &m.body) else {
                panic!("`{}` is not a single design (a search space or a failed model)", m.name)
            };
            let a = compile(spec, &SpecSpans::from_body(body), sources.clone())
                .unwrap_or_else(|d| panic!("`{}` does not lower: {}", m.name, d.message));
            for g in &a.program.graphs {
                if let Err(e) = verify(g) {
                    panic!("`{}`: program `{}` does not verify:\n{}", m.name, g.name, e.join("\n"));
                }
            }
            (m.name.clone(), a)
        })
        .collect()
}

#[test]
fn variants_are_pinned() {
    let built = build_all();
    let names: Vec<&str> = built.iter().map(|(n, _)| n.as_str()).collect();
    // A model added to or removed from the file should be a conscious change.
    assert_eq!(names, ["ecar_s3", "ecar_s3_ft", "var_deep_narrow", "var_5scales"]);
    for (name, a) in &built {
        insta::with_settings!({
            prepend_module_to_snapshot => false,
            omit_expression => true,
            description => format!("{FILE}: model {name}"),
        }, {
            insta::assert_snapshot!(format!("variants__{name}"), snapshot(a));
        });
    }
}

/// Facts about the designs that a snapshot shows but does not state: checked
/// next to the snapshots so that a reviewer sees them fail by name.
#[test]
fn variant_relations() {
    let built = build_all();
    let get = |n: &str| &built.iter().find(|(m, _)| m == n).expect("model in the file").1.report;
    let (mlp, ft) = (get("ecar_s3"), get("ecar_s3_ft"));
    // Only the head differs: the backbone's teacher-forced pass is the same.
    assert_eq!(mlp.forward_macs, ft.forward_macs);
    assert_ne!(mlp.sample_macs, ft.sample_macs);
    assert_eq!(mlp.stages.iter().map(|s| s.tokens).collect::<Vec<_>>(), [1, 16, 256]);
    assert_eq!(mlp.stages.iter().map(|s| s.steps).collect::<Vec<_>>(), [4, 6, 12]);

    let (narrow, short) = (get("var_deep_narrow"), get("var_5scales"));
    assert_eq!(narrow.stages.len(), 10);
    assert_eq!(short.stages.iter().map(|s| s.tokens).sum::<u64>(), 341);
    // Both sample with VAR's guidance schedule, so on a doubled batch.
    assert!(narrow.cfg && short.cfg);
}
