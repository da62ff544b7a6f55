//! Every file in `models/` checks clean, its ModelSpec is pinned by a snapshot,
//! and every published parameter figure is reproduced exactly from the
//! checkpoint names and shapes the standard library declares.

use crate::common::{model_files, root, spec_of};
use ecarc_compiler::spec::{Layout, TokenKind};

#[test]
fn every_model_file_checks_clean_and_matches_its_snapshot() {
    let files = model_files();
    assert!(files.len() >= 21, "expected the 21 reference models, found {}", files.len());
    for path in files {
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let spec = spec_of(&path, &[]);
        assert_eq!(spec.name, name, "a model file holds the model of its name");
        insta::with_settings!({snapshot_suffix => name.clone(), omit_expression => true, prepend_module_to_snapshot => false}, {
            insta::assert_yaml_snapshot!("model_spec", spec);
        });
    }
}

fn params(model: &str) -> u128 {
    spec_of(&root().join(format!("models/{model}.ecar")), &[]).param_count()
}

/// The figures of docs/families.md (and their instantiated reference modules).
#[test]
fn published_parameter_counts() {
    // docs/families.md
    assert_eq!(params("var_d16"), 310_283_520);
    assert_eq!(params("llamagen_b"), 110_888_448);
    assert_eq!(params("dit_xl2"), 675_129_632);
    // The other released sizes, counted from the reference modules' state dicts.
    assert_eq!(params("var_d20"), 600_917_136);
    assert_eq!(params("var_d24"), 1_033_399_360);
    assert_eq!(params("var_d30"), 2_010_020_356);
    assert_eq!(params("llamagen_l"), 342_910_976);
    assert_eq!(params("llamagen_xl"), 774_699_520);
    assert_eq!(params("llamagen_xxl"), 1_410_972_672);
    assert_eq!(params("llamagen_3b"), 3_096_659_200);
    assert_eq!(params("dit_l2"), 458_102_816);
    assert_eq!(params("dit_b2"), 130_512_416);
    assert_eq!(params("dit_s2"), 32_963_360);
}

/// DD's exact parameter deltas (docs/families.md, "Distilled Decoding").
#[test]
fn distilled_decoding_parameter_deltas() {
    for (depth, teacher, student) in
        [(16u128, "var_d16", "var_d16_dd"), (20, "var_d20", "var_d20_dd"), (24, "var_d24", "var_d24_dd")]
    {
        let c = 64 * depth;
        // n_d_embed [2,C]; depth+1 Linear(C,C) with bias; head Linear(C,32)+bias;
        // scale_shift_table [2,C]; one more row in pos_1LC and lvl_embed.
        let delta = 2 * c + (depth + 1) * (c * c + c) + (c * 32 + 32) + 2 * c + c + c;
        assert_eq!(params(student), params(teacher) + delta, "{student}");
    }
    assert_eq!(params("var_d16_dd"), 328_165_664);
    assert_eq!(params("var_d20_dd"), 635_399_088);
    assert_eq!(params("var_d24_dd"), 1_092_478_560);
    for (dim, teacher, student) in [(768u128, "llamagen_b", "llamagen_b_dd"), (1024, "llamagen_l", "llamagen_l_dd")] {
        // minus Embedding(16384, dim); plus Linear(8, dim)+bias, n_d_embed [2,dim],
        // head Linear(dim, 8)+bias, scale_shift_table [2,dim].
        let delta_plus = (8 * dim + dim) + 2 * dim + (dim * 8 + 8) + 2 * dim;
        assert_eq!(params(student) + 16384 * dim, params(teacher) + delta_plus, "{student}");
    }
    assert_eq!(params("llamagen_b_dd"), 98_321_672);
    assert_eq!(params("llamagen_l_dd"), 326_155_272);
}

#[test]
fn families_are_stage_schedules() {
    let var = spec_of(&root().join("models/var_d16.ecar"), &[]);
    let scales: Vec<u64> = var.schedule.stages().iter().map(|s| s.grid[0]).collect();
    assert_eq!(scales, [1, 2, 3, 4, 5, 6, 8, 10, 13, 16]);
    assert_eq!(var.schedule.total_tokens(), 680);
    assert_eq!(var.tokenizer.phi.as_ref().unwrap().map, [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]);

    let dd = spec_of(&root().join("models/var_d16_dd.ecar"), &[]);
    assert_eq!(dd.schedule.total_tokens(), 681);

    let lg = spec_of(&root().join("models/llamagen_b.ecar"), &[]);
    assert!(matches!(lg.schedule.layout, Layout::Raster { grid: [16, 16] }));
    assert_eq!(lg.schedule.num_stages(), 256);
    assert_eq!(lg.backbone.block.ffn_hidden, 2048);

    let xl = spec_of(&root().join("models/llamagen_xl.ecar"), &[]);
    assert_eq!(xl.image, [384, 384]);
    assert_eq!(xl.schedule.num_stages(), 576);

    let ecar = spec_of(&root().join("models/ecar_l.ecar"), &[]);
    assert_eq!(ecar.schedule.tokens, TokenKind::Continuous);
    let stages = ecar.schedule.stages();
    assert!(stages.len() > 1);
    assert_eq!(stages[0].segment.unwrap()[0], 1.0);
    assert_eq!(stages.last().unwrap().segment.unwrap()[1], 0.0);

    let dit = spec_of(&root().join("models/dit_xl2.ecar"), &[]);
    assert_eq!(dit.schedule.num_stages(), 1);
    assert_eq!(dit.schedule.total_tokens(), 256);
}

#[test]
fn set_overrides_apply_after_extends() {
    let d16 = root().join("models/var_d16.ecar");
    // `--set backbone.depth=20` turns VAR-d16 into VAR-d20 (width and heads follow depth).
    assert_eq!(spec_of(&d16, &["backbone.depth=20"]).param_count(), params("var_d20"));
    let s = spec_of(&d16, &["sample.cfg=3.5", "sample.top_k=1"]);
    assert_eq!((s.sampler.cfg, s.sampler.top_k), (3.5, 1));
}

/// The tokenizers declare every parameter of the reference modules with its key: the
/// totals are those of the reference modules, instantiated, encoder included (VAR's
/// VQVAE, LlamaGen's VQ-16, MAR's KL-16, diffusers' AutoencoderKL with the SD-1 VAE config).
#[test]
fn tokenizer_parameter_counts() {
    use ecarc_runtime::weights::declared_tensors;
    let spec = |m: &str| spec_of(&root().join(format!("models/{m}.ecar")), &[]);
    // (model, total, encoder total, encoder tensors)
    let cases = [
        // VAR VQVAE: encoder 44,107,872 + decoder 64,653,923 + quantize 168,064 + quant_conv 9,248
        // + post_quant_conv 9,248.
        ("var_d16", 108_948_355u128, 44_107_872u128, 132),
        // VQ-16: encoder 29,298,176 + decoder 42,449,795 + quantize 131,072 + 2,056 + 2,304.
        ("llamagen_b", 71_883_403, 29_298_176, 144),
        // KL-16: encoder 28,265,760 + decoder 38,188,931 + 1,056 + 272.
        ("ecar_l", 66_456_019, 28_265_760, 144),
        // SD VAE: encoder 34,163,592 + decoder 49,490,179 + 72 + 20.
        ("dit_xl2", 83_653_863, 34_163_592, 106),
    ];
    for (m, total, encoder, tensors) in cases {
        let s = spec(m);
        assert_eq!(s.tokenizer_param_count(), total, "{m}");
        let enc: Vec<_> = declared_tensors(&s).into_iter().filter(|d| d.is_encoder()).collect();
        let numel: u128 = enc.iter().map(|d| d.shape.iter().product::<usize>() as u128).sum();
        assert_eq!((numel, enc.len()), (encoder, tensors), "{m}: encoder");
        assert!(enc.iter().all(|d| d.key.starts_with("encoder.")), "{m}");
    }
    // The other members of each family share the tokenizer.
    for (m, total) in
        [("var_d30", 108_948_355u128), ("llamagen_3b", 71_883_403), ("ecar_b", 66_456_019), ("dit_s2", 83_653_863)]
    {
        assert_eq!(spec(m).tokenizer_param_count(), total, "{m}");
    }
}

/// The encoders follow the reference modules' widths at any configuration: with
/// `res_blocks 0` (the tiny models) a level has no blocks (an empty loop declares
/// nothing) and keeps the width it reads; with blocks, the widths follow `ch_mult`
/// and a 1x1 shortcut appears where they change.
#[test]
fn tokenizer_encoders_at_small_configurations() {
    use ecarc_runtime::weights::declared_tensors;
    use std::collections::BTreeMap;
    let encoder = |sets: &[&str]| -> BTreeMap<String, Vec<usize>> {
        declared_tensors(&spec_of(&root().join("examples/tiny/var.ecar"), sets))
            .into_iter()
            .filter(|d| d.is_encoder())
            .map(|d| (d.key, d.shape))
            .collect()
    };
    // ch_mult [1, 1, 1, 2], 32 channels, z_channels 32.
    let none = encoder(&[]);
    assert!(!none.keys().any(|k| k.contains(".block.") || k.contains(".attn.0.")), "{:?}", none.keys());
    assert_eq!(none["encoder.down.2.downsample.conv.weight"], [32, 32, 3, 3]);
    assert_eq!(none["encoder.mid.block_1.conv1.weight"], [32, 32, 3, 3]);
    assert_eq!(none["encoder.conv_out.weight"], [32, 32, 3, 3]);
    assert_eq!(none.len(), 34);
    let one = encoder(&["tokenizer.res_blocks=1"]);
    assert_eq!(one["encoder.down.3.block.0.conv1.weight"], [64, 32, 3, 3]);
    assert_eq!(one["encoder.down.3.block.0.nin_shortcut.weight"], [64, 32, 1, 1]);
    assert!(!one.contains_key("encoder.down.2.block.0.nin_shortcut.weight"));
    assert_eq!(one["encoder.down.3.attn.0.qkv.weight"], [192, 64, 1, 1]);
    assert_eq!(one["encoder.mid.block_1.conv1.weight"], [64, 64, 3, 3]);
    assert_eq!(one["encoder.conv_out.weight"], [32, 64, 3, 3]);
}
