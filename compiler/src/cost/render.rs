//! The human-readable cost report (torchinfo style): per stage, totals,
//! parameters by component, memory and time estimates.

use super::CostReport;
use std::fmt::Write;

/// `1234567` -> `1,234,567`.
pub(crate) fn grouped(v: u128) -> String {
    let s = v.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// MACs in the most readable unit (`155.03 GMAC`).
pub fn macs(v: u128) -> String {
    let f = v as f64;
    if f >= 1e12 {
        format!("{:.2} TMAC", f / 1e12)
    } else if f >= 1e9 {
        format!("{:.2} GMAC", f / 1e9)
    } else if f >= 1e6 {
        format!("{:.2} MMAC", f / 1e6)
    } else {
        format!("{v} MAC")
    }
}

pub fn bytes(v: u128) -> String {
    let f = v as f64;
    if f >= 1e9 {
        format!("{:.2} GB", f / 1e9)
    } else if f >= 1e6 {
        format!("{:.1} MB", f / 1e6)
    } else {
        format!("{:.1} KB", f / 1e3)
    }
}

pub fn render(r: &CostReport) -> String {
    let mut s = String::new();
    let rule = "=".repeat(78);
    let _ = writeln!(s, "{rule}\nModel: {}\n{rule}", r.model);
    if let Some(steps) = r.distill_steps {
        let _ = writeln!(
            s,
            "Distilled Decoding: {steps} forward{} over every position replace the {} stages below.",
            if steps == 1 { "" } else { "s" },
            r.stages.len()
        );
    }
    let _ = writeln!(s, "{:<7} {:>9} {:>8} {:>6} {:>16} {:>8}", "stage", "grid", "tokens", "steps", "MACs", "share");
    let _ = writeln!(s, "{}", "-".repeat(78));
    // Long raster schedules are summarised: the first and last few stages.
    let n = r.stages.len();
    for (i, st) in r.stages.iter().enumerate() {
        if n > 12 && (6..n - 3).contains(&i) {
            if i == 6 {
                let hidden: u128 = r.stages[6..n - 3].iter().map(|s| s.macs).sum();
                let _ = writeln!(
                    s,
                    "{:<7} {:>9} {:>8} {:>6} {:>16} {:>7.1}%",
                    format!("({})", n - 9),
                    "...",
                    "",
                    "",
                    macs(hidden),
                    100.0 * hidden as f64 / r.sample_macs.max(1) as f64
                );
            }
            continue;
        }
        let _ = writeln!(
            s,
            "{:<7} {:>9} {:>8} {:>6} {:>16} {:>7.1}%",
            // 1-based, as progress and `graph --stage` count (`index` stays 0-based, as `stage.K` tensors).
            st.index + 1,
            format!("{}x{}", st.grid[0], st.grid[1]),
            st.tokens,
            st.steps,
            macs(st.macs),
            100.0 * st.share
        );
    }
    let _ = writeln!(s, "{}", "-".repeat(78));
    let _ = writeln!(
        s,
        "Forward (teacher-forced, batch 1, no CFG): {} ({})",
        macs(r.forward_macs),
        grouped(r.forward_macs)
    );
    let _ = writeln!(
        s,
        "Sample (one image, all stages and steps{}): {} ({})",
        if r.cfg { ", CFG doubled" } else { "" },
        macs(r.sample_macs),
        grouped(r.sample_macs)
    );
    let _ = writeln!(s, "Sequential network passes per sample: {}", r.sequential_passes);
    if r.decode_macs > 0 {
        let _ =
            writeln!(s, "Tokenizer decode (one image, separate): {} ({})", macs(r.decode_macs), grouped(r.decode_macs));
    }
    let _ = writeln!(s, "{rule}");
    let _ = writeln!(s, "Parameters: {}", grouped(r.params));
    for (c, v) in &r.params_by_component {
        let _ = writeln!(s, "  {:<12} {:>16}", c, grouped(*v));
    }
    let _ = writeln!(s, "Buffers (not parameters): {} elements", grouped(r.buffer_elements));
    let _ = writeln!(s, "Tokenizer parameters (separate): {}", grouped(r.tokenizer_params));
    let _ = writeln!(s, "Weights (f32): {}", bytes(r.weight_bytes));
    let _ =
        writeln!(s, "Peak activations (one image, freed after last use): {}", bytes(r.peak_activation_bytes as u128));
    let _ = writeln!(s, "{rule}");
    if let Some(o) = &r.optimiser {
        optimiser(&mut s, o);
        let _ = writeln!(s, "{rule}");
    }
    for e in &r.estimates {
        let _ = writeln!(
            s,
            "Roofline on {}: {:.3} s per image ({:.0}% compute-bound)",
            e.device,
            e.seconds,
            100.0 * e.compute_bound_fraction
        );
    }
    let _ = write!(s, "{rule}");
    s
}

fn ratio(b: super::optimiser::BeforeAfter) -> String {
    format!("{:.2}x", b.before as f64 / b.after.max(1) as f64)
}

fn fewer(b: super::optimiser::BeforeAfter) -> String {
    format!("{:.0}% fewer", 100.0 * (1.0 - b.after as f64 / b.before.max(1) as f64))
}

/// The optimiser's section: kernels and bytes per stage and per sample,
/// kernels and peak activations per program.
fn optimiser(s: &mut String, o: &super::optimiser::OptimiserReport) {
    let kb = |b: super::optimiser::BeforeAfter| format!("{} -> {}", grouped(b.before.into()), grouped(b.after.into()));
    let mb = |b: super::optimiser::BeforeAfter| format!("{} -> {}", bytes(b.before.into()), bytes(b.after.into()));
    let _ = writeln!(s, "Optimiser (fuse, mem; one image; `-O0` runs without it)");
    let _ = writeln!(s, "{:<7} {:>34} {:>35}", "stage", "kernels unfused -> fused", "activation bytes moved");
    let line = |s: &mut String, label: &str, k, b| {
        let _ = writeln!(s, "{label:<7} {:>25} {:>8} {:>23} {:>11}", kb(k), ratio(k), mb(b), fewer(b));
    };
    let n = o.stages.len();
    for (i, st) in o.stages.iter().enumerate() {
        if n > 12 && (6..n - 3).contains(&i) {
            if i == 6 {
                let sum = |f: fn(&super::optimiser::StageFusion) -> super::optimiser::BeforeAfter| {
                    o.stages[6..n - 3].iter().map(f).fold(Default::default(), |a: super::optimiser::BeforeAfter, b| {
                        super::optimiser::BeforeAfter { before: a.before + b.before, after: a.after + b.after }
                    })
                };
                line(s, &format!("({})", n - 9), sum(|x| x.kernels), sum(|x| x.bytes));
            }
            continue;
        }
        line(s, &(st.index + 1).to_string(), st.kernels, st.bytes);
    }
    line(s, "sample", o.sample_kernels, o.sample_bytes);
    let _ = writeln!(s, "{:<20} {:>6} {:>18} {:>31}", "program", "runs", "kernels per run", "peak: unplanned -> arena");
    for p in &o.programs {
        let _ = writeln!(s, "{:<20} {:>6} {:>18} {:>31}", p.name, p.runs, kb(p.kernels_per_run), mb(p.peak));
    }
}

/// One line comparing two models: whole-sample MACs and which side is
/// cheaper by what factor, forward MACs, and the sequential network passes
/// that bound latency.
pub fn compare(model: &CostReport, baseline: &CostReport) -> String {
    format!(
        "{} vs {}: whole-sample MACs {} vs {}: {}; forward {} vs {}; sequential passes {} vs {}",
        model.model,
        baseline.model,
        macs(model.sample_macs),
        macs(baseline.sample_macs),
        cheaper(&model.model, model.sample_macs, &baseline.model, baseline.sample_macs),
        macs(model.forward_macs),
        macs(baseline.forward_macs),
        model.sequential_passes,
        baseline.sequential_passes,
    )
}

/// `a is 18.46x cheaper than b (94.6% fewer MACs)`, or `the same`.
fn cheaper(a: &str, a_macs: u128, b: &str, b_macs: u128) -> String {
    let ((lo, lo_macs), (hi, hi_macs)) =
        if a_macs <= b_macs { ((a, a_macs), (b, b_macs)) } else { ((b, b_macs), (a, a_macs)) };
    if lo_macs == hi_macs {
        return "the same whole-sample MACs".into();
    }
    let fewer = 100.0 * (hi_macs - lo_macs) as f64 / hi_macs as f64;
    if lo_macs == 0 {
        return format!("{lo} needs no MACs, {hi} {}", macs(hi_macs));
    }
    format!("{lo} is {:.2}x cheaper than {hi} ({fewer:.1}% fewer MACs)", hi_macs as f64 / lo_macs as f64)
}

#[cfg(test)]
mod compare_tests {
    #[test]
    fn the_cheaper_side_is_named_with_its_factor() {
        assert_eq!(super::cheaper("a", 100, "b", 400), "a is 4.00x cheaper than b (75.0% fewer MACs)");
        assert_eq!(super::cheaper("a", 400, "b", 100), "b is 4.00x cheaper than a (75.0% fewer MACs)");
        assert_eq!(super::cheaper("a", 7, "b", 7), "the same whole-sample MACs");
        assert_eq!(super::cheaper("a", 0, "b", 2_000_000), "a needs no MACs, b 2.00 MMAC");
    }
}
