//! Short human-readable counts for tables and one-line summaries
//! (`680.1M`, `72.23G`); the exact figure is always printed elsewhere.

/// `v` with a K/M/G/T suffix; `giga` names the 1e9 step (`G` for MACs, `B` for
/// parameter counts, as the papers write them).
pub fn short(v: i128, giga: &str) -> String {
    let f = v as f64;
    if f.abs() >= 1e12 {
        format!("{:.2}T", f / 1e12)
    } else if f.abs() >= 1e9 {
        format!("{:.2}{giga}", f / 1e9)
    } else if f.abs() >= 1e6 {
        format!("{:.1}M", f / 1e6)
    } else if f.abs() >= 1e3 {
        format!("{:.1}K", f / 1e3)
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::short;

    #[test]
    fn suffixes() {
        assert_eq!(short(680_123_456, "B"), "680.1M");
        assert_eq!(short(1_234_567_890, "B"), "1.23B");
        assert_eq!(short(72_230_000_000, "G"), "72.23G");
        assert_eq!(short(59_310_710_784_000, "G"), "59.31T");
        assert_eq!(short(999, "G"), "999");
        assert_eq!(short(1_500, "G"), "1.5K");
    }
}
