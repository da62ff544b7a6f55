//! `examples/tiny/`: one miniature model per family, small enough for the plain-Rust
//! reference interpreter to sample an image in about a second. Every file checks,
//! is formatted canonically, lowers to programs that verify, keeps its family's
//! structure (compared with the family's reference model), and stays cheap: its whole
//! sample plus the tokenizer decode must stay under `BUDGET_MACS`, so nobody makes
//! the runtime tests slow by accident.

use crate::common::{root, spec_of};
use ecarc_compiler::artifact::{compile, Artifact};
use ecarc_compiler::ir::verify::verify;
use ecarc_compiler::lower::SpecSpans;
use ecarc_compiler::session::{check_paths, Outcome};
use ecarc_compiler::ModelSpec;
use ecarc_grammar::fmt::format_source;
use std::collections::BTreeSet;
use std::path::PathBuf;

/// Whole sample (every stage and step, CFG doubled) + tokenizer decode, one image.
const BUDGET_MACS: u128 = 100_000_000;

/// Each tiny file and the reference model whose structure it must keep.
const FAMILIES: [(&str, &str); 6] = [
    ("dit", "dit_s2"),
    ("ecar", "ecar_b"),
    ("llamagen", "llamagen_b"),
    ("llamagen_dd", "llamagen_b_dd"),
    ("var", "var_d16"),
    ("var_dd", "var_d16_dd"),
];

/// Every `examples/tiny/*.ecar`, sorted.
fn tiny_files() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("examples/tiny"))
        .expect("examples/tiny/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "ecar"))
        .collect();
    v.sort();
    v
}

fn stem(p: &std::path::Path) -> String {
    p.file_stem().unwrap().to_string_lossy().into_owned()
}

/// Check one file (one model), lower it with spans, verify every program.
fn build(path: &std::path::Path) -> (ModelSpec, Artifact) {
    let name = stem(path);
    let s = check_paths(&[path], &[]);
    assert!(!s.has_errors(), "{name} does not check:\n{}", s.render_diags());
    assert_eq!(s.models.len(), 1, "{name}: one model per file");
    let sources: Vec<String> = s.program.sources.files().map(|(_, f)| f.name.clone()).collect();
    let m = &s.models[0];
    let (Outcome::Model(spec), Some(body)) = (&m.outcome, &m.body) else {
        panic!("{name}: `{}` is not a single design", m.name)
    };
    let a = compile(spec, &SpecSpans::from_body(body), sources)
        .unwrap_or_else(|d| panic!("{name}: does not lower: {} {}", d.code, d.message));
    assert!(!a.program.graphs.is_empty(), "{name}: no programs");
    for g in &a.program.graphs {
        if let Err(e) = verify(g) {
            panic!("{name}: program `{}` does not verify:\n{}", g.name, e.join("\n"));
        }
    }
    ((**spec).clone(), a)
}

#[test]
fn every_family_has_a_tiny_example() {
    let have: BTreeSet<String> = tiny_files().iter().map(|p| stem(p)).collect();
    for (file, _) in FAMILIES {
        assert!(have.contains(file), "examples/tiny/{file}.ecar is missing");
    }
}

#[test]
fn tiny_examples_are_formatted_canonically() {
    for path in tiny_files() {
        let text = std::fs::read_to_string(&path).unwrap();
        let formatted = format_source(&text).unwrap_or_else(|_| panic!("{} does not parse", path.display()));
        assert_eq!(formatted, text, "{} is not canonical: run `ecarc fmt` on it", path.display());
    }
}

#[test]
fn tiny_examples_lower_verify_and_stay_under_budget() {
    for path in tiny_files() {
        let name = stem(&path);
        let (_, a) = build(&path);
        let r = &a.report;
        assert!(r.sample_macs > 0 && r.decode_macs > 0, "{name}: sample {} decode {}", r.sample_macs, r.decode_macs);
        let total = r.sample_macs + r.decode_macs;
        assert!(
            total <= BUDGET_MACS,
            "{name}: sample {} + decode {} = {total} MACs is over the {BUDGET_MACS} budget of the tiny examples",
            r.sample_macs,
            r.decode_macs
        );
        assert!(
            r.params < 1_000_000 && r.tokenizer_params < 1_000_000,
            "{name}: {} / {} params",
            r.params,
            r.tokenizer_params
        );
    }
}

/// Sizes shrink; what makes the family stays: tokenizer kind, conditioning, mask,
/// positions, block, head, schedule form, sampler, distillation, and the same tensor
/// roles as the family's reference model.
#[test]
fn tiny_examples_keep_their_family_structure() {
    fn roles(spec: &ModelSpec) -> BTreeSet<String> {
        spec.params.iter().chain(&spec.buffers).flat_map(|g| g.tensors.iter().map(|t| t.role.clone())).collect()
    }
    for (file, reference) in FAMILIES {
        let (t, _) = build(&root().join(format!("examples/tiny/{file}.ecar")));
        let r = spec_of(&root().join(format!("models/{reference}.ecar")), &[]);
        let (tk, rk) = (&t.tokenizer, &r.tokenizer);
        assert_eq!(tk.name, rk.name, "{file}: tokenizer");
        assert_eq!(tk.kind, rk.kind, "{file}: tokenizer kind");
        assert_eq!((tk.l2_norm, tk.latent_scale), (rk.l2_norm, rk.latent_scale), "{file}: tokenizer");
        assert_eq!(tk.phi.as_ref().map(|p| (p.convs, p.mix)), rk.phi.as_ref().map(|p| (p.convs, p.mix)), "{file}: phi");
        assert!(tk.token_channels <= rk.token_channels, "{file}: token channels grew");
        let (tb, rb) = (&t.backbone, &r.backbone);
        assert_eq!(tb.name, rb.name, "{file}: backbone");
        assert_eq!(
            (tb.condition, tb.cond_tokens, tb.attn, tb.positions, tb.qk_norm, tb.patch),
            (rb.condition, rb.cond_tokens, rb.attn, rb.positions, rb.qk_norm, rb.patch),
            "{file}: backbone structure"
        );
        let (tl, rl) = (&tb.block, &rb.block);
        assert_eq!(tl.name, rl.name, "{file}: block");
        assert_eq!(
            (tl.norm, tl.norm_affine, tl.modulation, &tl.adaln_order, tl.ffn, tl.qkv_bias, tl.proj_bias, tl.ffn_bias),
            (rl.norm, rl.norm_affine, rl.modulation, &rl.adaln_order, rl.ffn, rl.qkv_bias, rl.proj_bias, rl.ffn_bias),
            "{file}: block structure"
        );
        assert_eq!((&t.head.name, t.head.kind), (&r.head.name, r.head.kind), "{file}: head");
        let (ts, rs) = (&t.schedule, &r.schedule);
        assert_eq!(ts.tokens, rs.tokens, "{file}: token kind");
        assert_eq!(
            std::mem::discriminant(&ts.layout),
            std::mem::discriminant(&rs.layout),
            "{file}: schedule form (raster or stages)"
        );
        assert_eq!((ts.upsample, &ts.renoise), (rs.upsample, &rs.renoise), "{file}: between stages");
        assert!(ts.num_stages() > 1 || rs.num_stages() == 1, "{file}: the schedule collapsed to one stage");
        let (tp, rp) = (&t.sampler, &r.sampler);
        assert_eq!(
            (
                &tp.name,
                tp.cfg,
                tp.cfg_schedule,
                tp.cfg_channels,
                tp.top_p,
                tp.temperature,
                tp.solver,
                tp.learned_variance
            ),
            (
                &rp.name,
                rp.cfg,
                rp.cfg_schedule,
                rp.cfg_channels,
                rp.top_p,
                rp.temperature,
                rp.solver,
                rp.learned_variance
            ),
            "{file}: sampler"
        );
        assert_eq!((tp.beta, tp.train_steps), (rp.beta, rp.train_steps), "{file}: diffusion schedule");
        assert_eq!(tp.top_k > 0, rp.top_k > 0, "{file}: top-k on or off");
        assert_eq!(t.distill.as_ref().map(|d| d.steps), r.distill.as_ref().map(|d| d.steps), "{file}: distillation");
        if let Some(d) = &t.distill {
            assert!(
                d.split >= 1 && d.split < t.schedule.num_stages(),
                "{file}: split {} outside the schedule",
                d.split
            );
        }
        assert_eq!(roles(&t), roles(&r), "{file}: tensor roles differ from {reference}");
    }
}
