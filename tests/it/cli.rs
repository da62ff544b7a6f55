//! The `ecarc` binary: exit codes, `--set`, `fmt`, and the embedded standard
//! library for a binary run outside the repository.

use crate::common::{model_files, root};
use std::process::Command;

fn ecarc() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ecarc"));
    c.arg("--color").arg("never");
    c
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ecarc-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn check_all_models_exits_zero() {
    let out = ecarc().arg("check").args(model_files()).output().unwrap();
    assert!(out.status.success(), "stderr:\n{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ok     var_d16"), "{stdout}");
}

#[test]
fn check_reports_errors_with_exit_one() {
    let dir = temp_dir("bad");
    let f = dir.join("bad.ecar");
    std::fs::write(&f, "import \"std/var.ecar\"\nmodel m extends var_base { backbone { depth 16 heads 7 } }\n")
        .unwrap();
    let out = ecarc().arg("check").arg(&f).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("E0401"), "{stderr}");
    assert!(stderr.contains("width is not divisible by heads"), "{stderr}");
}

#[test]
fn set_override_errors_point_into_the_override() {
    let out = ecarc()
        .args(["check", "--set", "backbone.depth=[1,"])
        .arg(root().join("models/var_d16.ecar"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--set backbone.depth"), "{stderr}");
    // A malformed --set is a usage error: exit 1, as every error.
    let out = ecarc().args(["check", "--set", "nonsense"]).arg(root().join("models/var_d16.ecar")).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn check_json_prints_model_specs() {
    let out = ecarc()
        .args(["check", "--json", "--set", "backbone.depth=20"])
        .arg(root().join("models/var_d16.ecar"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["backbone"]["depth"], 20);
    assert_eq!(v["backbone"]["width"], 1280);
}

#[test]
fn std_library_is_embedded_for_a_binary_run_anywhere() {
    let dir = temp_dir("std");
    std::fs::write(
        dir.join("mine.ecar"),
        "import \"std/var.ecar\"\nmodel mine extends var_base { backbone { depth 12 } }\n",
    )
    .unwrap();
    let out = ecarc().current_dir(&dir).env_remove("ECARC_STD").args(["check", "mine.ecar"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn fmt_check_passes_on_the_shipped_models() {
    let mut files = model_files();
    for e in std::fs::read_dir(root().join("models/std")).unwrap() {
        files.push(e.unwrap().path());
    }
    let out = ecarc().arg("fmt").arg("--check").args(&files).output().unwrap();
    assert!(out.status.success(), "not formatted:\n{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn fmt_rewrites_in_place_and_is_idempotent() {
    let dir = temp_dir("fmt");
    let f = dir.join("m.ecar");
    let messy = "// a model\nmodel   m{image 64 classes 10 // ten\n  backbone {depth 2 width 64*depth}}\n";
    std::fs::write(&f, messy).unwrap();
    let out = ecarc().arg("fmt").arg(&f).output().unwrap();
    assert!(out.status.success());
    let once = std::fs::read_to_string(&f).unwrap();
    assert_eq!(once, ecarc_grammar::fmt::format_source(messy).unwrap());
    assert!(once.contains("// ten") && once.contains("// a model"));
    let out = ecarc().arg("fmt").arg("--check").arg(&f).output().unwrap();
    assert!(out.status.success());
    // No temporary files are left behind.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
}

#[test]
fn fmt_leaves_unparsable_files_untouched() {
    let dir = temp_dir("fmt-bad");
    let f = dir.join("m.ecar");
    std::fs::write(&f, "model m { image 64 ").unwrap();
    let out = ecarc().arg("fmt").arg(&f).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "model m { image 64 ");
    assert!(String::from_utf8_lossy(&out.stderr).contains("E0101"));
}

#[test]
fn build_writes_an_artifact_and_compares() {
    let dir = temp_dir("build");
    let out = ecarc()
        .args(["build", "--compare"])
        .arg(root().join("models/dit_xl2.ecar"))
        .arg(root().join("models/ecar_l.ecar"))
        .arg("-o")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ecar_l vs dit_xl2: whole-sample MACs"), "{stdout}");
    let artifact = dir.join("ecar_l.ecarc.json");
    assert!(artifact.exists());
    // The artifact stands in for the .ecar file.
    let out = ecarc().args(["graph", "--program", "head.step"]).arg(&artifact).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("graph \"head.step\""));
    // --json has the documented keys.
    let out =
        ecarc().args(["build", "--json"]).arg(root().join("models/var_d16.ecar")).arg("-o").arg(&dir).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["params", "forward_macs", "sample_macs", "peak_activation_bytes", "stages"] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
    assert_eq!(v["forward_macs"], 155_031_142_400u64);
    assert!(v["stages"][0].get("tokens").is_some() && v["stages"][0].get("macs").is_some());
}

#[test]
fn graph_prints_dot_and_rejects_a_bad_stage() {
    let out = ecarc()
        .args(["graph", "--stage", "9", "--format", "dot"])
        .arg(root().join("models/var_d16.ecar"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("digraph"));
    for bad in ["0", "11"] {
        let out = ecarc().args(["graph", "--stage", bad]).arg(root().join("models/var_d16.ecar")).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("has 10 stages (1..=10)"));
    }
}

/// `ecarc graph FILE --plan` prints every plan; `--plan=NAME` one; an unknown
/// name is refused with the names there are.
#[test]
fn graph_prints_the_plans() {
    let var = root().join("examples/tiny/var.ecar");
    let out = ecarc().args(["graph", "--plan"]).arg(&var).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s = String::from_utf8_lossy(&out.stdout);
    for want in [
        "plan \"sample\" (3 stages, 7 runs)",
        "[stage 1] step.first  T=1 P=0",
        "[stage 3] step.next  T=16 P=5",
        "[finish] decode",
        "plan \"forward\"",
        "plan \"decode.stages\"",
        "input stage.2.tokens: i64[B, 16]",
    ] {
        assert!(s.contains(want), "missing `{want}` in:\n{s}");
    }
    let out = ecarc().args(["graph", "--plan=forward"]).arg(&var).output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("plan \"forward\"") && !s.contains("plan \"sample\""), "{s}");
    let out = ecarc().args(["graph", "--plan=xyz"]).arg(&var).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("has no plan `xyz`; it has: sample, forward, decode"), "{err}");
    // Heun's two evaluations per step are two entries of the plan.
    let ecar = root().join("examples/tiny/ecar.ecar");
    let out = ecarc().args(["graph", "--plan=sample", "--set", "sample.solver=heun"]).arg(&ecar).output().unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("heun.mean") && s.matches("head.step").count() >= 6, "{s}");
}
