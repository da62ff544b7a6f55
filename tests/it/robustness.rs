//! Robustness: no input makes the compiler or the formatter panic, overflow the
//! stack, hang or read without bound, and every rejected input gets a spanned
//! diagnostic.
//!
//! Three kinds of tests:
//! - explicit hostile inputs (deep nesting, 5 MB lines, huge numbers, invalid
//!   UTF-8, `/dev/zero`, huge files, import and `extends` cycles, 100k-term
//!   expressions, empty files);
//! - property tests over random inputs: token soup from the grammar's vocabulary,
//!   arbitrary text, generated plausible models (see `format::gen`), and real model
//!   files (`models/`, `models/std/`, `tests/data/`, `tests/bad/`) with random byte
//!   and token edits (extreme numbers included);
//! - each case runs the whole `check_source` pipeline and the formatter.
//!
//! Case counts ([`budget`]): the defaults add up to more than 100,000 cases in an
//! optimised build; an unoptimised debug build runs a tenth of them.
//! `PROPTEST_CASES=N` sets every property test to N cases instead (the two that
//! take tens of milliseconds a case, `format::generated_models_...` and
//! `search::memoised_checks_...`, only go down); `.ci/run` sets
//! `PROPTEST_CASES=10000`: about 80,000 cases, in about the time of the defaults
//! (more of the costly mutated-file cases, fewer of the cheap token soup).
//! `ECARC_FUZZ_RANDOM=1` draws new cases instead of the fixed seed's.

use crate::common::root;
use ecarc_compiler::session::{check_paths, check_source, Outcome, Override, Session};
use ecarc_grammar::diag::Sev;
use ecarc_grammar::fmt::format_source;
use ecarc_grammar::parser::parse_set_value;
use ecarc_grammar::{Diag, FileId};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Default cases of the property tests that feed random input to the whole
/// pipeline (each also formats its input). Together more than 100,000.
pub(crate) mod budget {
    pub const TOKEN_SOUP: u32 = 40_000;
    pub const RANDOM_TEXT: u32 = 25_000;
    pub const SOUP_IN_MODELS: u32 = 10_000;
    /// Twice: the reference models with `tests/data/` and `tests/bad/`, and the
    /// standard library.
    pub const MUTATED_FILES: u32 = 10_000;
    pub const MUTATED_GENERATED: u32 = 8_000;
    pub const RANDOM_BYTES: u32 = 1_000;
    /// `format::generated_models_format_idempotently_and_keep_their_meaning`.
    pub const FORMAT_GENERATED: u32 = 1_000;
    pub const TOTAL: u32 = TOKEN_SOUP
        + RANDOM_TEXT
        + SOUP_IN_MODELS
        + 2 * MUTATED_FILES
        + MUTATED_GENERATED
        + RANDOM_BYTES
        + FORMAT_GENERATED;
}

#[test]
fn default_case_counts_add_up_to_100k() {
    const { assert!(budget::TOTAL >= 100_000) };
}

/// Cases for one property test: `PROPTEST_CASES` if set; else `default` in an
/// optimised build (`--profile ci`, `--release`), a tenth of it in an unoptimised
/// `target/debug` build, where the pipeline is about ten times slower. (The CI
/// profile keeps debug assertions, so `cfg!(debug_assertions)` cannot tell.)
pub(crate) fn cases(default: u32) -> u32 {
    if let Some(n) = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.trim().parse().ok()) {
        return n;
    }
    if debug_build() {
        (default / 10).max(1)
    } else {
        default
    }
}

/// Whether this is an unoptimised build (the test binary lives in `target/debug`).
fn debug_build() -> bool {
    std::env::current_exe().map(|p| p.components().any(|c| c.as_os_str() == "debug")).unwrap_or(false)
}

/// A time limit for work that takes `secs` at most in an optimised build (ten
/// times that in a debug build).
pub(crate) fn limit(secs: u64) -> Duration {
    Duration::from_secs(if debug_build() { secs * 10 } else { secs })
}

/// A proptest runner with a fixed seed, so that CI sees the same cases on every
/// run (a failure reproduces); `ECARC_FUZZ_RANDOM=1` draws fresh cases instead.
/// It writes no regression files into the tree and does not spend long on
/// shrinking (inputs are printed in full on failure).
pub(crate) fn runner(cases: u32) -> TestRunner {
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 2_000,
        max_shrink_time: 60_000,
        ..Config::default()
    };
    if std::env::var_os("ECARC_FUZZ_RANDOM").is_some() {
        TestRunner::new(config)
    } else {
        let rng = proptest::test_runner::TestRng::deterministic_rng(config.rng_algorithm);
        TestRunner::new_with_rng(config, rng)
    }
}

/// Every real `.ecar` file that should parse: `models/`, `models/std/`, `tests/data/`.
pub(crate) fn corpus() -> Vec<(String, String)> {
    let out = files_in(&["models", "models/std", "tests/data"]);
    assert!(out.len() >= 20, "expected the reference models and the standard library, found {}", out.len());
    out
}

/// Every `.ecar` file to mutate: [`corpus`] and the diagnostics corpus `tests/bad/`.
pub(crate) fn mutation_corpus() -> Vec<(String, String)> {
    let mut out = corpus();
    out.extend(files_in(&["tests/bad"]));
    out
}

fn files_in(dirs: &[&str]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for dir in dirs {
        let Ok(rd) = std::fs::read_dir(root().join(dir)) else { continue };
        let mut paths: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "ecar"))
            .collect();
        paths.sort();
        for p in paths {
            // Not UTF-8 (tests/bad has one): not text to edit.
            if let Ok(text) = std::fs::read_to_string(&p) {
                out.push((p.strip_prefix(root()).unwrap_or(&p).display().to_string(), text));
            }
        }
    }
    out
}

/// Every label of every diagnostic points into its file, on char boundaries; every
/// error has a primary label; a failed model comes with an error; rendering works.
pub(crate) fn assert_diags_sound(s: &Session, what: &str) {
    for d in &s.diags {
        if d.is_error() {
            assert!(d.primary_span().is_some(), "{what}: error {} has no label: {d:?}", d.code);
        }
        for l in &d.labels {
            let file = s.program.sources.files().find(|(id, _)| *id == l.span.file);
            let Some((_, f)) = file else { panic!("{what}: {} labels an unknown file {:?}", d.code, l.span.file) };
            let (a, b) = (l.span.start as usize, l.span.end as usize);
            assert!(
                a <= b && b <= f.text.len() && f.text.is_char_boundary(a) && f.text.is_char_boundary(b),
                "{what}: {} label {a}..{b} is not a char range of {} ({} bytes): {d:?}",
                d.code,
                f.name,
                f.text.len()
            );
        }
    }
    let failed = s.models.iter().any(|m| matches!(m.outcome, Outcome::Failed));
    if failed {
        assert!(s.has_errors(), "{what}: a model failed without an error");
    }
    if s.has_errors() {
        // Rendering walks the spans again (miette): it must not panic either.
        let r = s.render_diags();
        assert!(!r.is_empty());
    }
}

/// Check a source text, then format it: no panic, sound diagnostics, and when the
/// text parses the formatter is idempotent and keeps the syntax tree.
pub(crate) fn check_and_format(text: &str, what: &str) -> Session {
    let t0 = Instant::now();
    let s = check_source("fuzz.ecar", text, &[]);
    // No input may make `check` hang: small inputs check in milliseconds.
    assert!(t0.elapsed() < limit(30), "{what}: check took {:?}\n--- input\n{text}", t0.elapsed());
    assert_diags_sound(&s, what);
    match format_source(text) {
        Ok(f1) => {
            let f2 = format_source(&f1).unwrap_or_else(|d| {
                panic!("{what}: formatted text does not parse: {d:?}\n--- input\n{text}\n--- formatted\n{f1}")
            });
            assert_eq!(f1, f2, "{what}: formatting is not idempotent\n--- input\n{text}");
            assert_eq!(
                crate::format::comments(text),
                crate::format::comments(&f1),
                "{what}: comments lost or reordered\n--- input\n{text}\n--- formatted\n{f1}"
            );
            assert_eq!(
                crate::format::ast_without_spans(text),
                crate::format::ast_without_spans(&f1),
                "{what}: formatting changed the syntax tree\n--- input\n{text}\n--- formatted\n{f1}"
            );
        }
        Err(d) => {
            assert!(d.iter().all(Diag::is_error) && !d.is_empty());
            assert!(s.has_errors(), "{what}: the formatter rejects the text but check accepts it");
            // The root file's parse errors are the session's first diagnostics.
            let codes: Vec<&str> = d.iter().map(|d| d.code).collect();
            assert!(s.diags.iter().any(|x| codes.contains(&x.code)), "{what}: {codes:?} vs {:?}", s.diags);
        }
    }
    s
}

/// For huge inputs: check, and format once (the full [`check_and_format`] parses
/// the text five times).
fn check_and_format_once(text: &str, what: &str) -> Session {
    let s = check_source("huge.ecar", text, &[]);
    assert_diags_sound(&s, what);
    if let Ok(f) = format_source(text) {
        assert!(f.len() <= text.len() + text.len() / 2 + 64, "{what}: formatting grew the text");
    }
    s
}

fn codes(s: &Session) -> Vec<&'static str> {
    s.diags.iter().filter(|d| d.severity == Sev::Error).map(|d| d.code).collect()
}

fn assert_code(s: &Session, code: &str, what: &str) {
    if !codes(s).contains(&code) {
        let r = s.render_diags();
        let shown = if r.len() > 4000 { format!("{:?}", codes(s)) } else { r };
        panic!("{what}: expected {code}, got:\n{shown}");
    }
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("ecarc-robust-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("create temp dir");
        TempDir(d)
    }
    fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).expect("write temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn check_file(path: &Path) -> Session {
    let s = check_paths(&[path], &[]);
    assert_diags_sound(&s, &path.display().to_string());
    s
}

/// A model that checks clean, to embed hostile parts into.
const GOOD: &str = "import \"std/var.ecar\"\nmodel m extends var_base {\n  backbone {\n    depth 16\n  }\n}\n";

// ---------------------------------------------------------------------------
// Explicit hostile inputs
// ---------------------------------------------------------------------------

#[test]
fn baseline_model_checks() {
    let s = check_and_format(GOOD, "GOOD");
    assert!(!s.has_errors(), "{}", s.render_diags());
    assert!(matches!(s.models[0].outcome, Outcome::Model(_)));
}

#[test]
fn deep_bracket_nesting_is_a_diagnostic_not_a_stack_overflow() {
    for open in ["{", "[", "(", "{[(", "([{"] {
        let deep = open.repeat(100_000);
        for text in [
            deep.clone(),
            format!("model m {{ a {deep} }}"),
            format!("model m {{\n  a {deep}\n"),
            format!("model m {{ stage {deep} }}"),
            format!("model m {{ params {{ w \"k\" [{deep}] }} }}"),
            format!("model m {{ a in {{ {deep} }} }}"),
        ] {
            let what = format!("100k x {open:?}");
            let s = check_and_format(&text, &what);
            assert_code(&s, "E0102", &what);
        }
    }
    // Deep but closed, and deep inside a comment or a string: only real brackets count.
    let closed = format!("model m {{ a {}1{} }}", "(".repeat(100_000), ")".repeat(100_000));
    assert_code(&check_and_format(&closed, "closed parens"), "E0102", "closed parens");
    let in_comment = format!("// {}\n{GOOD}", "{[(".repeat(100_000));
    assert!(!check_and_format(&in_comment, "comment").has_errors());
    let in_string = format!("{GOOD}block b {{ params \"{}\" {{}} }}\n", "{[(".repeat(100_000));
    assert!(!codes(&check_and_format(&in_string, "string")).contains(&"E0102"));
    // 64 levels are allowed.
    let ok = format!("model m {{ a {}1{} }}", "(".repeat(60), ")".repeat(60));
    assert!(!codes(&check_and_format(&ok, "60 parens")).contains(&"E0102"));
    // Closing brackets alone.
    let closing = "}])".repeat(100_000);
    assert_code(&check_and_format(&closing, "closing"), "E0101", "closing");
}

#[test]
fn deep_expressions_are_a_diagnostic_not_a_stack_overflow() {
    let n = 100_000;
    let sum = vec!["1"; n].join("+");
    let product = vec!["2"; n].join(" * ");
    let mixed: String = (0..n).map(|i| if i % 2 == 0 { "1 + " } else { "2 * " }).collect::<String>() + "3";
    let negs = "- ".repeat(n) + "1";
    let negs_tight = "-".repeat(n) + "1";
    for (name, e) in
        [("sum", &sum), ("product", &product), ("mixed", &mixed), ("negs", &negs), ("negs_tight", &negs_tight)]
    {
        // One expression per line (a label 100k columns into a line is another test).
        for text in [
            format!("import \"std/var.ecar\"\nmodel m extends var_base {{ backbone {{ depth {e} }} }}\n"),
            format!("model m {{ a [\n{e},\n{e}] }}"),
            format!("model m {{ stage {e}\n({e})\n -> {e}\n steps {e} }}"),
            format!("block b {{ params for i in {e}\n..{e} {{ w \"k\" [\n{e}] }} }}"),
            format!("model m {{ a in {e}\n..={e}\n step {e} }}"),
            format!("model m {{ a f(\n{e}, x = \n{e}) }}"),
        ] {
            let s = check_and_format_once(&text, name);
            assert_code(&s, "E0102", name);
        }
    }
    // Moderately long expressions are fine and evaluate.
    let ok = vec!["1"; 16].join(" + ");
    let s = check_and_format(
        &format!("import \"std/var.ecar\"\nmodel m extends var_base {{ backbone {{ depth {ok} }} }}\n"),
        "16 terms",
    );
    assert!(!s.has_errors(), "{}", s.render_diags());
}

#[test]
fn labels_far_into_a_long_line_render() {
    // miette takes the label's column as a format width, which must fit in u16.
    for text in [
        format!("{}model m {{", " ".repeat(70_000)),
        format!("model m {{ a [{}99999999999999999999] }}", "1, ".repeat(30_000)),
        format!("model m {{ a [{}, {}] }}", "1+".repeat(300), "1+".repeat(40_000) + "1"),
        format!("model x {{}}{}model x {{}}", " ".repeat(70_000)),
        format!("model m {{ image 256 {}image 256 }}", " ".repeat(70_000)),
    ] {
        let s = check_and_format_once(&text, "label at a far column");
        assert!(s.has_errors());
    }
}

#[test]
fn five_megabyte_lines() {
    let big = 5 << 20;
    let word = "a".repeat(big);
    let digits = "7".repeat(big);
    let cases: Vec<(String, Option<&str>)> = vec![
        (format!("// {word}\n{GOOD}"), None),
        (format!("{GOOD}// {word}"), None),
        (format!("{GOOD}{}", " ".repeat(big)), None),
        (format!("model {word} {{}}\n"), None),
        (format!("model m {{ {word} 1 }}\n"), None),
        (format!("model m {{ tokenizer {word} }}\n"), Some("E0205")),
        (format!("model m {{ a \"{word}\" }}\n"), None),
        (format!("import \"{word}\"\n"), Some("E0201")),
        (format!("import \"std/{word}\"\n"), Some("E0201")),
        (format!("model m {{ a {digits} }}\n"), Some("E0103")),
        (format!("model m {{ a \"{word}\n}}\n"), Some("E0101")),
        (format!("model m {{ a 1 {word}"), Some("E0101")),
    ];
    for (text, code) in cases {
        let what = format!("5 MB line: {}", &text[..40.min(text.len())]);
        let t0 = Instant::now();
        let s = check_and_format_once(&text, &what);
        if let Some(c) = code {
            assert_code(&s, c, &what);
        }
        assert!(t0.elapsed() < limit(60), "{what}: took {:?}", t0.elapsed());
    }
    // A 5 MB comment survives formatting.
    let text = format!("{GOOD}// {word}\n");
    assert!(format_source(&text).unwrap().contains(&word));
}

#[test]
fn huge_numbers() {
    let d5000 = "9".repeat(5000);
    for (v, code) in [
        (d5000.clone(), "E0103"),
        (format!("{d5000}K"), "E0103"),
        (format!("{d5000}x16"), "E0103"),
        (format!("16x{d5000}"), "E0103"),
        (format!("1e{d5000}"), "E0103"),
        ("1e999".to_string(), "E0103"),
        ("1.0e309".to_string(), "E0103"),
        ("99999999999999999999".to_string(), "E0103"),
        ("9223372036854775808".to_string(), "E0103"),
        ("9223372036854775807T".to_string(), "E0103"),
        ("18446744073709551616x1".to_string(), "E0103"),
        ("9999999999999T".to_string(), "E0103"),
    ] {
        let s = check_and_format(&format!("model m {{\n  image {v}\n}}\n"), &v[..v.len().min(30)]);
        assert_code(&s, code, &v[..v.len().min(30)]);
    }
    // Representable but extreme values are checked, not wrapped.
    for v in [
        format!("0.{d5000}"),
        format!("1e-{d5000}"),
        "9223372036854775807".to_string(),
        "-9223372036854775807 - 1".to_string(),
        "9223372036854775807 + 1".to_string(),
        "-(-9223372036854775807 - 1)".to_string(),
        "9223372036854775807 * 9223372036854775807".to_string(),
        "(-9223372036854775807 - 1) / -1".to_string(),
        "1 / 0".to_string(),
        "1.0 / 0.0".to_string(),
        "1e308 * 10".to_string(),
        "9223372036854775807x9223372036854775807".to_string(),
        "4294967296".to_string(),
    ] {
        let text = format!(
            "import \"std/var.ecar\"\nmodel m extends var_base {{\n  image {v}\n  classes {v}\n  backbone {{ depth {v}  width {v}  heads {v} }}\n  sample {{ cfg {v}  top_k {v}  top_p {v} }}\n  schedule {{ scales [{v}, {v}] }}\n}}\n"
        );
        let s = check_and_format(&text, &v[..v.len().min(30)]);
        assert!(s.has_errors(), "{v}: accepted");
    }
}

#[test]
fn invalid_utf8_files() {
    let dir = TempDir::new("utf8");
    let mut cases: Vec<Vec<u8>> = vec![
        b"\xff".to_vec(),
        b"model m { a 1 }\xff\xfe".to_vec(),
        b"\xc3".to_vec(),
        b"model m { a \"\xe2\x82\" }".to_vec(),
        b"// \xf0\x9f\x92\n".to_vec(),
        b"\xef\xbb\xbfmodel m {}".to_vec(),
        b"model \xc0\x80 {}".to_vec(),
    ];
    let mut garbage = Vec::new();
    let mut x: u32 = 0x1234_5678;
    for _ in 0..100_000 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        garbage.push(x as u8);
    }
    cases.push(garbage.clone());
    for (i, bytes) in cases.iter().enumerate() {
        let p = dir.write(&format!("bad{i}.ecar"), bytes);
        let s = check_file(&p);
        if std::str::from_utf8(bytes).is_err() {
            assert_code(&s, "E0202", &format!("case {i}"));
        }
        // The same file imported.
        let imp = dir.write(&format!("imp{i}.ecar"), format!("import \"bad{i}.ecar\"\n{GOOD}"));
        let s = check_file(&imp);
        if std::str::from_utf8(bytes).is_err() {
            assert_code(&s, "E0202", &format!("import of case {i}"));
        }
    }
    // Binary garbage as a string (lossy) goes through the parser.
    check_and_format(&String::from_utf8_lossy(&garbage), "garbage");
}

#[test]
fn unbounded_and_huge_files_are_refused_quickly() {
    let max = ecarc_grammar::resolve::MAX_FILE_BYTES;
    let dir = TempDir::new("huge");
    let huge = dir.0.join("huge.ecar");
    let f = std::fs::File::create(&huge).unwrap();
    f.set_len(max + 1).unwrap(); // sparse: no disk, no time
    drop(f);
    for target in [Path::new("/dev/zero"), huge.as_path(), Path::new("/dev/urandom")] {
        if !target.exists() {
            continue;
        }
        let t0 = Instant::now();
        let main = dir.write("main.ecar", format!("import \"{}\"\n{GOOD}", target.display()));
        let s = check_file(&main);
        assert_code(&s, "E0201", &target.display().to_string());
        let s = check_paths(&[target], &[]);
        assert_code(&s, "E0201", &target.display().to_string());
        assert!(t0.elapsed() < Duration::from_secs(20), "{}: took {:?}", target.display(), t0.elapsed());
    }
    // A directory, a missing file, an empty path.
    for spec in [".", "..", "", "missing.ecar", "/"] {
        let main = dir.write("main.ecar", format!("import \"{spec}\"\n{GOOD}"));
        assert_code(&check_file(&main), "E0201", spec);
    }
    // A file of exactly the limit is read (whitespace, then a model).
    let mut text = vec![b' '; max as usize - GOOD.len()];
    text.extend_from_slice(GOOD.as_bytes());
    let p = dir.write("at_limit.ecar", &text);
    let s = check_file(&p);
    assert!(!s.has_errors(), "{}", s.render_diags());
}

#[test]
fn import_cycles() {
    let dir = TempDir::new("cycles");
    dir.write("a.ecar", "import \"b.ecar\"\nblock ba {}\n");
    dir.write("b.ecar", "import \"c.ecar\"\nblock bb {}\n");
    dir.write("c.ecar", "import \"a.ecar\"\nblock bc {}\n");
    dir.write("self.ecar", "import \"self.ecar\"\nblock s {}\n");
    dir.write("dot.ecar", "import \"./sub/../dot.ecar\"\nblock d {}\n");
    std::fs::create_dir_all(dir.0.join("sub")).unwrap();
    for f in ["a.ecar", "self.ecar", "dot.ecar"] {
        let s = check_file(&dir.0.join(f));
        assert_code(&s, "E0203", f);
    }
    // Importing the same file twice (a diamond) is not a cycle.
    dir.write("x.ecar", "block bx {}\n");
    dir.write("y.ecar", "import \"x.ecar\"\n");
    let d = dir.write("diamond.ecar", "import \"x.ecar\"\nimport \"y.ecar\"\nimport \"x.ecar\"\n");
    assert!(!check_file(&d).has_errors());
    // A long import chain and a wide fan-out stay bounded by MAX_FILES.
    for i in 0..1100 {
        dir.write(&format!("chain{i}.ecar"), format!("import \"chain{}.ecar\"\nblock c{i} {{}}\n", i + 1));
    }
    let s = check_file(&dir.0.join("chain0.ecar"));
    assert!(s.has_errors());
}

#[test]
fn extends_and_reference_cycles() {
    let cases = [
        "model m extends m {}",
        "model m extends m { image 256 }",
        "backbone a extends b {}\nbackbone b extends a {}\nmodel m { backbone a }",
        "backbone a extends b {}\nbackbone b extends c {}\nbackbone c extends a {}\nmodel m { backbone b { depth 1 } }",
        "block x { block x }\nbackbone b { block x }\nmodel m { backbone b }",
        "block x extends x { block x }\nmodel m { backbone { block x } }",
        "model a extends b {}\nmodel b extends a {}",
        "backbone a { block b }\nblock b extends c {}\nblock c extends b {}\nmodel m { backbone a }",
    ];
    for text in cases {
        let s = check_and_format(text, text);
        assert_code(&s, "E0206", text);
    }
    // A field defined in terms of itself.
    let s = check_and_format(
        "import \"std/var.ecar\"\nmodel m extends var_base { backbone { depth width / 64 } }",
        "width <-> depth",
    );
    assert_code(&s, "E0313", "width <-> depth");
}

#[test]
fn empty_and_comment_only_files() {
    for text in ["", "\n", "   \n\t\r\n", "// only a comment", "// one\n// two\n\n// three\n", "//", "//\n//"] {
        let s = check_and_format(text, &format!("{text:?}"));
        assert!(!s.has_errors(), "{text:?}: {}", s.render_diags());
        assert!(s.models.is_empty());
    }
    assert_eq!(format_source("").unwrap(), "");
    assert_eq!(format_source("// only a comment").unwrap(), "// only a comment\n");
}

#[test]
fn odd_characters() {
    for text in [
        "\0",
        "model m { a \0 }",
        "model m { a \"\0\" }",
        "model \u{feff}m {}",
        "\u{feff}model m {}",
        "model m { a 1 } \u{2028}",
        "model é {}",
        "model m { é 1 }",
        "model m { a \"é\\",
        "model m { a \"\\",
        "model m { a \"",
        "\"",
        "model m { a 1 // é",
        "import \"std/\u{1F600}.ecar\"",
        "model m { a \r }",
        "model m { a 1\r\r\r }",
        "model m {\u{a0}a 1 }",
        "model m { a 1 }\u{85}",
    ] {
        check_and_format(text, &format!("{text:?}"));
    }
}

#[test]
fn many_entries_do_not_hang() {
    // 5k fields in one body, 5k definitions, 5k duplicate keys, 5k params. (Each
    // error is rendered against the whole file, so 20k errors take a while.)
    let n = 5_000;
    let fields: String = (0..n).map(|i| format!("  f{i} {i}\n")).collect();
    let dups: String = (0..n).map(|_| "  a 1\n".to_string()).collect();
    let defs: String = (0..n).map(|i| format!("block b{i} {{ norm layernorm }}\n")).collect();
    let params: String = (0..n).map(|i| format!("    w{i} \"k{i}\" [1]\n")).collect();
    let cases = [
        format!("model m {{\n{fields}}}\n"),
        format!("model m {{\n{dups}}}\n"),
        format!("{defs}model m {{ backbone {{ block b{} }} }}\n", n - 1),
        format!("import \"std/var.ecar\"\nmodel m extends var_base {{ backbone {{\n  params {{\n{params}  }}\n}} }}\n"),
    ];
    for (i, text) in cases.iter().enumerate() {
        let t0 = Instant::now();
        check_and_format(text, "many entries");
        eprintln!("many entries case {i}: {:?}", t0.elapsed());
        assert!(t0.elapsed() < limit(30), "many entries case {i}: {:?}", t0.elapsed());
    }
}

/// Sources with a chain of `n` definitions or field references.
fn chain_source(kind: &str, n: usize) -> String {
    match kind {
        "extends" => {
            let chain: String =
                (1..n).map(|i| format!("backbone b{i} extends b{} {{ depth {i} }}\n", i - 1)).collect::<String>();
            format!("backbone b0 {{ depth 1 }}\n{chain}model m {{ backbone b{} }}\n", n - 1)
        }
        "component" => {
            // `block` references: each block's `block` field names the next one.
            let chain: String = (1..n).map(|i| format!("block k{i} {{ block k{} }}\n", i - 1)).collect::<String>();
            format!("block k0 {{}}\n{chain}model m {{ backbone {{ block k{} }} }}\n", n - 1)
        }
        _ => {
            let refs: String = (1..n).map(|i| format!("  f{i} f{}\n", i - 1)).collect();
            format!(
                "import \"std/var.ecar\"\nmodel m extends var_base {{ backbone {{\n  f0 16\n{refs}  depth f{} }} }}\n",
                n - 1
            )
        }
    }
}

/// Run the test `name` of this binary in a child process with `env` set: a stack
/// overflow aborts the process and must not take the other tests with it, and a
/// check that runs too long is stopped at `within` instead of holding up the run.
fn run_child(name: &str, env: (&str, &str), within: Duration, what: &str) {
    let exe = std::env::current_exe().expect("test binary");
    let dir = TempDir::new("child");
    let log = dir.0.join("out.txt");
    let out = std::fs::File::create(&log).expect("child log");
    let err = out.try_clone().expect("child log");
    let t0 = Instant::now();
    let mut child = std::process::Command::new(exe)
        .args(["--exact", name, "--nocapture", "--test-threads", "1"])
        .env(env.0, env.1)
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("run the test binary");
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break status;
        }
        if t0.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let tail = &text[text.floor_char_boundary(text.len().saturating_sub(2000))..];
    assert!(status.success(), "{what}: the child failed ({status}):\n{tail}");
    assert!(text.contains("1 passed"), "{what}: the child test did not run:\n{tail}");
}

/// Run `chain_child` on a chain of `n` links in a child process.
fn run_chain_child(kind: &str, n: usize) {
    let what = format!("a chain of {n} `{kind}` links");
    run_child("robustness::chain_child", ("ECARC_TEST_CHAIN", &format!("{kind}:{n}")), limit(60), &what);
}

/// One chain, checked in this process. `long_definition_chains_do_not_overflow`
/// runs it in a child process with long chains (`ECARC_TEST_CHAIN=kind:n`); on
/// its own it checks a short chain of each kind.
#[test]
fn chain_child() {
    let spec = std::env::var("ECARC_TEST_CHAIN").unwrap_or_else(|_| "extends:100".to_string());
    let (kind, n) = spec.split_once(':').expect("kind:n");
    let text = chain_source(kind, n.parse().expect("n"));
    // Checking and formatting; no rendering (thousands of diagnostics).
    let s = check_source("chain.ecar", &text, &[]);
    for d in s.diags.iter().filter(|d| d.is_error()) {
        assert!(d.primary_span().is_some(), "{d:?}");
    }
    let f = format_source(&text).expect("chains parse");
    assert_eq!(format_source(&f).expect("formatted chains parse"), f);
}

#[test]
fn long_definition_chains_do_not_overflow() {
    // Short chains in process, with every check.
    for kind in ["extends", "component", "refs"] {
        check_and_format(&chain_source(kind, 40), kind);
    }
    // `extends` chains, component references and field references far longer than
    // any real model (each runs its own process: see run_chain_child).
    run_chain_child("extends", 20_000);
    run_chain_child("component", 20_000);
    run_chain_child("refs", 5_000);
}

const HUGE_SPACES: &[&str] =
    &["depth in 10..=1000000 step 1", "depth in 1..=1000000 step 7", "depth in { 16, 1000000 }"];

fn space_source(space: &str) -> String {
    format!("import \"std/var.ecar\"\nmodel m extends var_base {{ backbone {{ {space} }} }}\n")
}

/// One huge search space, checked in this process: `ECARC_TEST_SPACE=k` picks
/// [`HUGE_SPACES`]`[k]` (run so by `huge_search_spaces_check_quickly`); on its own
/// it checks a small space.
#[test]
fn space_child() {
    let space = match std::env::var("ECARC_TEST_SPACE").ok().and_then(|v| v.parse::<usize>().ok()) {
        Some(k) => HUGE_SPACES[k],
        None => "depth in 10..=20",
    };
    let s = check_source("space.ecar", &space_source(space), &[]);
    assert_diags_sound(&s, space);
}

#[test]
fn huge_search_spaces_check_quickly() {
    // `check` samples a bounded amount of work from a search space, also when the
    // points grow (here: up to a million layers, each with copies of the layer's
    // tensors). Each runs in a child process, stopped if it takes too long.
    for (k, space) in HUGE_SPACES.iter().enumerate() {
        run_child("robustness::space_child", ("ECARC_TEST_SPACE", &k.to_string()), limit(10), space);
    }
}

#[test]
fn set_values_never_panic() {
    for v in ["", "(", "1 +", "{", "in {", "in 1..", "[1,", "\"", "- - -", "a -> ", "b { c", "in { 1 }", "x y"] {
        if let Err(ds) = parse_set_value(FileId(0), v) {
            assert!(ds.iter().all(|d| d.primary_span().is_some_and(|s| s.end as usize <= v.len())), "{v}: {ds:?}");
        }
        let sets: Vec<Override> = vec![format!("backbone.depth={v}").parse().unwrap()];
        let s = check_source("set.ecar", GOOD, &sets);
        assert_diags_sound(&s, v);
    }
}

// ---------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------

/// The grammar's vocabulary and the words of real models, for token soup and
/// token insertions.
#[rustfmt::skip]
pub(crate) const VOCAB: &[&str] = &[
    "{", "}", "[", "]", "(", ")", "->", "..", "..=", "in", "step", "steps", "stage", "params", "buffers", "for",
    "when", "where", "import", "extends", "\"", "\"std/var.ecar\"", "\"x\"", "\"{i}.\"", "x", "1e999",
    "99999999999999999999", "-", "+", "*", "/", ",", "=", "!", "<=", ">=", "==", "!=", "<", ">", "//", "// c\n",
    "\n", " ", "\t", "\r\n", "0", "1", "16", "1.5", "0.18215", "1e-6", "700M", "1.5G", "3K", "2T", "16x16", "1x1",
    "0x0", "model", "backbone", "block", "head", "tokenizer", "schedule", "sample", "sampler", "distill", "depth",
    "width", "heads", "image", "classes", "kind", "scales", "raster", "segments", "ch_mult", "var_base",
    "var_transformer", "kl16", "ln", "pyramid", "gamma", "linear", "i", "l", "tokens", "stages", "vocab",
    "distilled", "none", "true", "false", "é", "\0", "🦀",
];

/// Numbers that parse but stress the checker's arithmetic (products, squares,
/// powers of two, sums over stages).
#[rustfmt::skip]
pub(crate) const EXTREME_NUMBERS: &[&str] = &[
    "0", "1", "2", "3", "7", "0.0", "0.5", "1.0", "255", "256", "4096", "65535", "65536", "1000000", "4294967295",
    "4294967296", "3037000500", "9223372036854775807", "9223372036854775806", "1e308", "1e-308", "5e-324", "1e18",
    "9e15", "9T", "8000000T", "1.5", "0.999999", "1x1", "0x0", "1x65536", "65536x65536", "4294967296x4294967296",
    "3037000500x3037000500",
];

/// Token soup: random sequences of grammar tokens. Cheap; most are syntax errors,
/// many get deep into the parser.
#[test]
fn random_token_soup_never_panics() {
    let token = prop::sample::select(VOCAB);
    let sep = prop::sample::select(&[" ", "", "\n", " // c\n"][..]);
    let strategy = prop::collection::vec((token, sep), 0..64).prop_map(|v| {
        let mut s = String::new();
        for (t, sep) in v {
            s.push_str(t);
            s.push_str(sep);
        }
        s
    });
    runner(cases(budget::TOKEN_SOUP))
        .run(&strategy, |text| {
            check_and_format(&text, "token soup");
            let _ = parse_set_value(FileId(0), &text);
            Ok(())
        })
        .unwrap();
}

/// Token soup inside a valid model: the soup is one field's value or a body's
/// entries, so that resolution and checking see it too.
#[test]
fn token_soup_in_models_never_panics() {
    let token = prop::sample::select(VOCAB);
    let soup = prop::collection::vec(token, 0..16).prop_map(|v| v.join(" "));
    let place = 0..6usize;
    let strategy = (soup, place).prop_map(|(s, place)| match place {
        0 => format!("import \"std/var.ecar\"\nmodel m extends var_base {{ backbone {{ depth {s} }} }}\n"),
        1 => format!("import \"std/var.ecar\"\nmodel m extends var_base {{ {s} }}\n"),
        2 => format!("import \"std/ecar.ecar\"\nmodel m extends ecar_base {{ schedule {{ {s} }} }}\n"),
        3 => format!("import \"std/var.ecar\"\nmodel m extends var_base {{ sample {{ {s} }} }}\n"),
        4 => format!("import \"std/var.ecar\"\nmodel m extends var_base {{ backbone {{ params {s} }} }}\n"),
        _ => format!("import \"std/llamagen.ecar\"\nmodel m extends llamagen_base {{ tokenizer {{ {s} }} }}\n"),
    });
    runner(cases(budget::SOUP_IN_MODELS))
        .run(&strategy, |text| {
            check_and_format(&text, "soup in model");
            Ok(())
        })
        .unwrap();
}

/// Arbitrary text, ASCII-heavy and any Unicode.
#[test]
fn random_text_never_panics() {
    let strategy = prop_oneof![
        "[ -~\n\t]{0,200}",
        "[{}\\[\\]()\"/\\\\x0-9a-z .=<>!,+*-]{0,200}",
        any::<String>(),
        prop::collection::vec(any::<u8>(), 0..300).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ];
    runner(cases(budget::RANDOM_TEXT))
        .run(&strategy, |text| {
            check_and_format(&text, "random text");
            Ok(())
        })
        .unwrap();
}

/// One edit of a source text.
#[derive(Clone, Debug)]
pub(crate) enum Edit {
    DeleteToken(prop::sample::Index),
    DuplicateToken(prop::sample::Index),
    SwapTokens(prop::sample::Index, prop::sample::Index),
    InsertToken(prop::sample::Index, &'static str),
    ReplaceToken(prop::sample::Index, &'static str),
    /// Replace a number (a token starting with a digit) by a valid but extreme one.
    ReplaceNumber(prop::sample::Index, &'static str),
    DeleteChars(prop::sample::Index, usize),
    DuplicateChars(prop::sample::Index, usize),
    InsertChar(prop::sample::Index, char),
    Truncate(prop::sample::Index),
}

pub(crate) fn edit() -> impl Strategy<Value = Edit> {
    use prop::sample::{select, Index};
    let tok = select(VOCAB);
    prop_oneof![
        1 => any::<Index>().prop_map(Edit::DeleteToken),
        1 => any::<Index>().prop_map(Edit::DuplicateToken),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::SwapTokens(a, b)),
        3 => (any::<Index>(), tok.clone()).prop_map(|(a, t)| Edit::InsertToken(a, t)),
        2 => (any::<Index>(), tok).prop_map(|(a, t)| Edit::ReplaceToken(a, t)),
        3 => (any::<Index>(), select(EXTREME_NUMBERS)).prop_map(|(a, t)| Edit::ReplaceNumber(a, t)),
        1 => (any::<Index>(), 1..40usize).prop_map(|(a, n)| Edit::DeleteChars(a, n)),
        1 => (any::<Index>(), 1..40usize).prop_map(|(a, n)| Edit::DuplicateChars(a, n)),
        1 => (any::<Index>(), any::<char>()).prop_map(|(a, c)| Edit::InsertChar(a, c)),
        1 => (any::<Index>(), prop::sample::select(&['{', '}', '"', '/', '\n', '-', '.', 'x', '0', '\r'][..]))
            .prop_map(|(a, c)| Edit::InsertChar(a, c)),
        1 => any::<Index>().prop_map(Edit::Truncate),
    ]
}

/// Split into rough tokens (words, numbers, strings, comments, punctuation runs,
/// whitespace), so that token edits keep the rest of the text intact.
pub(crate) fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let cs: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < cs.len() {
        let c = cs[i];
        let start = i;
        if c == '"' {
            i += 1;
            while i < cs.len() && cs[i] != '"' && cs[i] != '\n' {
                i += if cs[i] == '\\' { 2 } else { 1 };
            }
            i = (i + 1).min(cs.len());
        } else if c == '/' && cs.get(i + 1) == Some(&'/') {
            while i < cs.len() && cs[i] != '\n' {
                i += 1;
            }
        } else if c.is_alphanumeric() || c == '_' || c == '.' {
            while i < cs.len() && (cs[i].is_alphanumeric() || cs[i] == '_' || cs[i] == '.') {
                i += 1;
            }
        } else if c.is_whitespace() {
            while i < cs.len() && cs[i].is_whitespace() {
                i += 1;
            }
        } else {
            i += 1;
            if c == '-' && cs.get(i) == Some(&'>') {
                i += 1;
            }
        }
        out.push(cs[start..i.min(cs.len())].iter().collect());
    }
    out
}

pub(crate) fn apply(text: &str, edits: &[Edit]) -> String {
    let mut text = text.to_string();
    for e in edits {
        let mut toks = tokens(&text);
        let chars: Vec<char> = text.chars().collect();
        let n = toks.len();
        text = match e {
            Edit::DeleteToken(i) if n > 0 => {
                toks.remove(i.index(n));
                toks.concat()
            }
            Edit::DuplicateToken(i) if n > 0 => {
                let k = i.index(n);
                toks.insert(k, toks[k].clone());
                toks.concat()
            }
            Edit::SwapTokens(a, b) if n > 0 => {
                toks.swap(a.index(n), b.index(n));
                toks.concat()
            }
            Edit::InsertToken(i, t) => {
                let k = i.index(n + 1);
                toks.insert(k, format!(" {t} "));
                toks.concat()
            }
            Edit::ReplaceToken(i, t) if n > 0 => {
                let k = i.index(n);
                toks[k] = t.to_string();
                toks.concat()
            }
            Edit::ReplaceNumber(i, t) => {
                let numbers: Vec<usize> =
                    (0..n).filter(|&k| toks[k].starts_with(|c: char| c.is_ascii_digit())).collect();
                if !numbers.is_empty() {
                    toks[numbers[i.index(numbers.len())]] = t.to_string();
                }
                toks.concat()
            }
            Edit::DeleteChars(i, len) if !chars.is_empty() => {
                let a = i.index(chars.len());
                let b = (a + len).min(chars.len());
                chars[..a].iter().chain(&chars[b..]).collect()
            }
            Edit::DuplicateChars(i, len) if !chars.is_empty() => {
                let a = i.index(chars.len());
                let b = (a + len).min(chars.len());
                chars[..b].iter().chain(&chars[a..]).collect()
            }
            Edit::InsertChar(i, c) => {
                let a = i.index(chars.len() + 1);
                chars[..a].iter().chain(std::iter::once(c)).chain(&chars[a..]).collect()
            }
            Edit::Truncate(i) if !chars.is_empty() => chars[..i.index(chars.len())].iter().collect(),
            _ => text,
        };
    }
    text
}

/// Real files with random edits: most stay close to valid, so they reach
/// resolution and the checker. A group is picked first, then a file in it, so
/// that the 100-odd files of `tests/bad/` do not crowd out the rest. (`import
/// "x.ecar"` resolves from the current directory here, the repository root: such
/// imports mostly fail, which is fine.)
fn mutate_corpus(groups: Vec<Vec<(String, String)>>) {
    let groups: Vec<Vec<(String, String)>> = groups.into_iter().filter(|g| !g.is_empty()).collect();
    let strategy = (0..groups.len(), any::<prop::sample::Index>(), prop::collection::vec(edit(), 1..5));
    runner(cases(budget::MUTATED_FILES))
        .run(&strategy, |(g, k, edits)| {
            let (name, text) = k.get(&groups[g]);
            let text = apply(text, &edits);
            check_and_format(&text, &format!("{name} with {edits:?}"));
            Ok(())
        })
        .unwrap();
}

#[test]
fn mutated_reference_models_never_panic() {
    let (bad, good): (Vec<_>, Vec<_>) = mutation_corpus()
        .into_iter()
        .filter(|(n, _)| !n.starts_with("models/std/"))
        .partition(|(n, _)| n.starts_with("tests/bad/"));
    mutate_corpus(vec![good, bad]);
}

#[test]
fn mutated_standard_library_never_panics() {
    mutate_corpus(vec![corpus().into_iter().filter(|(n, _)| n.starts_with("models/std/")).collect()]);
}

/// Generated plausible models (the formatter tests' generator), then edited.
#[test]
fn mutated_generated_models_never_panic() {
    let strategy = (crate::format::gen::source(), prop::collection::vec(edit(), 0..4));
    runner(cases(budget::MUTATED_GENERATED))
        .run(&strategy, |(src, edits)| {
            let text = apply(&src, &edits);
            check_and_format(&text, &format!("generated with {edits:?}"));
            Ok(())
        })
        .unwrap();
}

/// Random bytes (invalid UTF-8 included) through files and `check_paths`.
#[test]
fn random_bytes_through_files_never_panic() {
    let dir = TempDir::new("bytes");
    let files = corpus();
    let strategy = (0..files.len(), any::<prop::sample::Index>(), prop::collection::vec(any::<u8>(), 0..8));
    let n = std::sync::atomic::AtomicUsize::new(0);
    runner(cases(budget::RANDOM_BYTES))
        .run(&strategy, |(k, at, bytes)| {
            let mut b = files[k].1.clone().into_bytes();
            let at = at.index(b.len() + 1);
            b.splice(at..at, bytes.iter().copied());
            let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let p = dir.write(&format!("f{}.ecar", i % 8), &b);
            let s = check_file(&p);
            if std::str::from_utf8(&b).is_err() {
                assert_code(&s, "E0202", "invalid UTF-8");
            }
            Ok(())
        })
        .unwrap();
}
