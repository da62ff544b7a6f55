//! How much memory a run needs, estimated before anything is allocated, and
//! whether this machine has it. Every command that runs a model (and
//! `init-weights`) calls [`check_run`] before it loads or draws weights, so an
//! impossible run (`--set tokenizer.vocab=4294967296`: a 512 GiB codebook)
//! is refused with the figures instead of aborting in the allocator.
//!
//! The estimate ([`estimate`]), from the cost model and the spec:
//! - **weights**: every declared parameter of the generator and the tokenizer
//!   and every buffer, as f32;
//! - **activations**: the largest live set of any program (the cost report's
//!   `peak_activation_bytes`, and the tokenizer decoder's), per image, times
//!   the images;
//! - **KV cache**: a key and a value of `width` f32 per layer and per token of
//!   the whole schedule (class tokens included), per image row (two rows per
//!   image with classifier-free guidance), for the backbones that attend to
//!   earlier tokens (every mask except `full`).
//!
//! Since the KV cache became carried state of the whole sequence's capacity,
//! a step program's live set (and so the activations figure) already holds
//! it: the estimate counts the cache twice and errs on the safe side by about
//! its size. (Taking the states out of the live set per program is left for
//! the memory-planning pass, which owns these figures.)
//!
//! It counts what the reference runtime holds at its peak; allocator overhead
//! and the program text are left out, so a run near the limit may still fail.
//! The limit ([`machine_memory`]) is the machine's total memory (`MemTotal` in
//! `/proc/meminfo`), or `ECARC_MEMORY_LIMIT` (bytes) when set, e.g. in a
//! container whose cgroup allows less than the host has.

use crate::error::{Result, RuntimeError};
use ecarc_compiler::artifact::Artifact;
use ecarc_compiler::ir::dim::Bindings;
use ecarc_compiler::spec::AttnMask;

/// The memory a run needs, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryNeed {
    pub weights: u128,
    pub activations: u128,
    pub kv_cache: u128,
}

impl MemoryNeed {
    pub fn total(&self) -> u128 {
        self.weights + self.activations + self.kv_cache
    }
}

/// The memory limit and where it comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    pub bytes: u128,
    pub source: String,
}

/// The memory of a run of `art` on `images` images (0: the weights alone, as
/// `init-weights` holds them).
pub fn estimate(art: &Artifact, images: u64) -> MemoryNeed {
    let spec = &art.spec;
    let weights =
        (spec.param_count() + spec.tokenizer_param_count() + spec.buffers.iter().map(|g| g.numel()).sum::<u128>())
            .saturating_mul(4);
    let decode = art
        .program
        .graph("decode")
        .map_or(0, |g| ecarc_compiler::cost::peak_activation_bytes(g, &Bindings::new(1, 0, 0)));
    let per_image = u128::from(art.report.peak_activation_bytes.max(decode));
    let rows = u128::from(images) * if art.report.cfg { 2 } else { 1 };
    let kv_cache = if spec.backbone.attn == AttnMask::Full {
        0
    } else {
        let tokens = u128::from(spec.schedule.total_tokens()) + u128::from(spec.backbone.cond_tokens);
        2u128
            .saturating_mul(u128::from(spec.backbone.depth))
            .saturating_mul(tokens)
            .saturating_mul(u128::from(spec.backbone.width))
            .saturating_mul(4)
            .saturating_mul(rows)
    };
    MemoryNeed { weights, activations: per_image.saturating_mul(u128::from(images)), kv_cache }
}

/// This machine's memory: `ECARC_MEMORY_LIMIT` (bytes) when set, else
/// `MemTotal` of `/proc/meminfo`; `None` when neither is known.
pub fn machine_memory() -> Option<Limit> {
    if let Some(v) = std::env::var("ECARC_MEMORY_LIMIT").ok().and_then(|v| v.trim().parse::<u128>().ok()) {
        return Some(Limit { bytes: v, source: "ECARC_MEMORY_LIMIT".into() });
    }
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = mem_total_kib(&text)?;
    Some(Limit { bytes: kib * 1024, source: "MemTotal in /proc/meminfo".into() })
}

/// `MemTotal:  131072000 kB` -> 131072000.
fn mem_total_kib(meminfo: &str) -> Option<u128> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Refuse a run whose estimate exceeds `limit`, with the figures.
pub fn check(name: &str, need: &MemoryNeed, images: u64, limit: &Limit) -> Result<()> {
    if need.total() <= limit.bytes {
        return Ok(());
    }
    let what = if images == 0 { "its weights".to_string() } else { format!("{images} image(s)") };
    Err(RuntimeError::Invalid(format!(
        "`{name}` needs about {} of memory for {what} (weights {}, activations {}, KV cache {}); this machine has {} ({}): refused before allocating",
        bytes(need.total()),
        bytes(need.weights),
        bytes(need.activations),
        bytes(need.kv_cache),
        bytes(limit.bytes),
        limit.source
    )))
}

/// [`estimate`] and [`check`] against [`machine_memory`] (no check when the
/// machine's memory is unknown).
pub fn check_run(art: &Artifact, images: u64) -> Result<()> {
    match machine_memory() {
        Some(limit) => check(&art.spec.name, &estimate(art, images), images, &limit),
        None => Ok(()),
    }
}

/// Bytes in binary units: `1.50 GiB`.
pub fn bytes(n: u128) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ecarc_compiler::session::{check_paths, Outcome, Override};

    fn artifact(file: &str, sets: &[&str]) -> Artifact {
        let sets: Vec<Override> = sets.iter().map(|s| s.parse().unwrap()).collect();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(file);
        let s = check_paths(&[path], &sets);
        assert!(!s.has_errors(), "{}", s.render_diags());
        let Some(Outcome::Model(spec)) = s.models.into_iter().next().map(|m| m.outcome) else { panic!("one model") };
        ecarc_compiler::artifact::compile(&spec, &Default::default(), vec![]).unwrap()
    }

    #[test]
    fn the_estimate_adds_weights_activations_and_cache() {
        let art = artifact("examples/tiny/var.ecar", &[]);
        let spec = &art.spec;
        let one = estimate(&art, 1);
        let weights = (spec.param_count() + spec.tokenizer_param_count()) * 4
            + spec.buffers.iter().map(|g| g.numel()).sum::<u128>() * 4;
        assert_eq!(one.weights, weights);
        assert!(one.activations >= u128::from(art.report.peak_activation_bytes));
        // tiny_var: causal over 21 tokens and the class token, CFG doubled.
        let tokens = u128::from(spec.schedule.total_tokens() + spec.backbone.cond_tokens);
        let rows = if art.report.cfg { 2 } else { 1 };
        assert_eq!(one.kv_cache, 2 * u128::from(spec.backbone.depth * spec.backbone.width) * tokens * 4 * rows);
        // Activations and cache grow with the images, the weights do not.
        let four = estimate(&art, 4);
        assert_eq!(four.weights, one.weights);
        assert_eq!(four.activations, 4 * one.activations);
        assert_eq!(four.kv_cache, 4 * one.kv_cache);
        assert_eq!(estimate(&art, 0).total(), one.weights);
        // DiT attends to all tokens at once: no cache.
        assert_eq!(estimate(&artifact("examples/tiny/dit.ecar", &[]), 1).kv_cache, 0);
    }

    #[test]
    fn a_huge_codebook_is_refused_with_the_figures() {
        let art = artifact("examples/tiny/var.ecar", &["tokenizer.vocab=4294967296"]);
        let need = estimate(&art, 1);
        assert!(need.weights > 4294967296 * 4, "{need:?}");
        let limit = Limit { bytes: 64 << 30, source: "MemTotal in /proc/meminfo".into() };
        let e = check("tiny_var", &need, 1, &limit).unwrap_err().to_string();
        assert!(e.starts_with("`tiny_var` needs about "), "{e}");
        assert!(e.contains("this machine has 64.00 GiB (MemTotal in /proc/meminfo)"), "{e}");
        let small = artifact("examples/tiny/var.ecar", &[]);
        check("tiny_var", &estimate(&small, 16), 16, &limit).unwrap();
    }

    #[test]
    fn meminfo_and_units() {
        assert_eq!(mem_total_kib("MemTotal:       131072000 kB\nMemFree: 1 kB\n"), Some(131072000));
        assert_eq!(mem_total_kib("MemFree: 1 kB\n"), None);
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 29), "1.50 GiB");
    }
}
