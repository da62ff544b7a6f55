//! The formatter (`ecarc_grammar::fmt::format_source`): idempotent, keeps every
//! comment in order, and preserves meaning — the formatted text parses to the same
//! syntax tree (spans aside) and checks to exactly the same `ModelSpec`s and error
//! codes. Checked on every real model file, on tricky layouts (snapshots), and on
//! generated models (`gen`: random but plausible sources with comments and odd
//! whitespace everywhere). `PROPTEST_CASES=N` sets the generated-model cases.

use crate::common::root;
use crate::robustness::{cases, corpus, runner};
use ecarc_compiler::session::{check_paths, check_source, Outcome, Session};
use ecarc_grammar::fmt::format_source;
use ecarc_grammar::parser::parse_file;
use ecarc_grammar::FileId;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};

// ---------------------------------------------------------------------------
// What "the same" means
// ---------------------------------------------------------------------------

/// The syntax tree as JSON with every span removed, or the parse error codes.
pub(crate) fn ast_without_spans(text: &str) -> Result<Value, Vec<&'static str>> {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.remove("span");
                for x in m.values_mut() {
                    strip(x);
                }
            }
            Value::Array(a) => {
                // `StageRow::segment` is a tuple `(from, to, span)`.
                a.retain(|x| !is_span(x));
                a.iter_mut().for_each(strip);
            }
            _ => {}
        }
    }
    fn is_span(v: &Value) -> bool {
        v.as_object().is_some_and(|m| m.len() == 3 && m.contains_key("file") && m.contains_key("start"))
    }
    match parse_file(FileId(0), text) {
        Ok(f) => {
            let mut v = serde_json::to_value(&f).expect("AST serialises");
            strip(&mut v);
            Ok(v)
        }
        Err(d) => Err(d.iter().map(|d| d.code).collect()),
    }
}

/// Search-space axes compared without their labels' text: the checker labels
/// alternatives with their source text (whitespace collapsed), so spacing, trailing
/// commas and comments inside an alternative show in its label. Same paths, same
/// number of options; the options' meaning is compared through the specs.
fn same_axes(a: &Value, b: &Value) -> bool {
    let (Some(a), Some(b)) = (a.as_array(), b.as_array()) else { return a == b };
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            let (x, y) = (x.as_array().expect("axis"), y.as_array().expect("axis"));
            let (lx, ly) = (x[1].as_array().expect("labels"), y[1].as_array().expect("labels"));
            x[0] == y[0] && lx.len() == ly.len()
        })
}

/// Assert two sessions mean the same (see [`meaning`] and [`same_axes`]).
pub(crate) fn assert_same_meaning(a: &Session, b: &Session, what: &str) {
    let (mut ma, ca) = meaning(a);
    let (mut mb, cb) = meaning(b);
    assert_eq!(ca, cb, "{what}: different diagnostic codes");
    assert_eq!(ma.len(), mb.len(), "{what}: different models");
    for ((na, va), (nb, vb)) in ma.iter_mut().zip(mb.iter_mut()) {
        assert_eq!(na, nb, "{what}: different models");
        if let (Some(xa), Some(xb)) = (va.get_mut("axes").map(std::mem::take), vb.get_mut("axes").map(std::mem::take)) {
            assert!(same_axes(&xa, &xb), "{what}: model {na}: different search axes:\n{xa}\n{xb}");
        }
        assert_eq!(va, vb, "{what}: model {na} checks differently");
    }
}

/// What checking gives, without spans: each root model's outcome (its spec as
/// JSON, or its search-space summary, or "failed") and the set of diagnostic codes.
pub(crate) fn meaning(s: &Session) -> (Vec<(String, Value)>, BTreeSet<&'static str>) {
    let models = s
        .models
        .iter()
        .map(|m| {
            let v = match &m.outcome {
                Outcome::Model(spec) => serde_json::to_value(spec).expect("spec serialises"),
                Outcome::Space(sp) => json!({
                    "axes": sp.axes,
                    "total": sp.total.to_string(),
                    "checked": sp.checked.to_string(),
                    "valid": sp.valid.to_string(),
                    "first_valid": sp.first_valid.as_ref().map(|x| serde_json::to_value(x).expect("spec")),
                }),
                Outcome::Failed => json!("failed"),
            };
            (m.name.clone(), v)
        })
        .collect();
    let codes = s.diags.iter().map(|d| d.code).collect();
    (models, codes)
}

/// `//` comments outside strings, as the grammar sees them (trailing whitespace,
/// including a CR of a CRLF line end, is not part of what must survive).
pub(crate) fn comments(text: &str) -> Vec<String> {
    ecarc_grammar::lex::comments(text.as_bytes()).into_iter().map(|r| text[r].trim_end().to_string()).collect()
}

/// Format `text` (named `name` for checking) and assert every property. Returns
/// the formatted text, or `None` when `text` does not parse.
pub(crate) fn assert_format_ok(name: &str, text: &str) -> Option<String> {
    let f1 = match format_source(text) {
        Ok(f) => f,
        Err(d) => {
            // Unparsable input: the checker rejects it with the same codes.
            let s = check_source(name, text, &[]);
            let codes: Vec<&str> = d.iter().map(|d| d.code).collect();
            assert!(s.diags.iter().any(|x| codes.contains(&x.code)), "{name}: {codes:?} vs {:?}", s.diags);
            return None;
        }
    };
    let f2 = format_source(&f1).unwrap_or_else(|d| {
        panic!("{name}: formatted text does not parse: {d:?}\n--- input\n{text}\n--- formatted\n{f1}")
    });
    assert_eq!(f2, f1, "{name}: formatting is not idempotent\n--- input\n{text}\n--- formatted once\n{f1}");
    assert_eq!(
        comments(&f1),
        comments(text),
        "{name}: comments lost or reordered\n--- input\n{text}\n--- formatted\n{f1}"
    );
    assert_eq!(
        ast_without_spans(&f1),
        ast_without_spans(text),
        "{name}: the syntax tree changed\n--- input\n{text}\n--- formatted\n{f1}"
    );
    assert!(f1.is_empty() || f1.ends_with('\n'), "{name}: no final newline");
    assert!(!f1.contains('\r') || text.contains('\r'), "{name}: CR introduced");
    for line in f1.lines() {
        // Comments are kept verbatim; code lines have no trailing blanks.
        if !line.contains("//") {
            assert_eq!(line, line.trim_end(), "{name}: trailing whitespace in {line:?}\n{f1}");
        }
    }
    let (a, b) = (check_source(name, text, &[]), check_source(name, &f1, &[]));
    assert_same_meaning(&a, &b, &format!("{name}\n--- input\n{text}\n--- formatted\n{f1}\n---"));
    Some(f1)
}

// ---------------------------------------------------------------------------
// Real files
// ---------------------------------------------------------------------------

#[test]
fn real_models_format_idempotently_and_keep_their_meaning() {
    let mut checked_models = 0;
    for (name, text) in corpus() {
        let f1 = assert_format_ok(&name, &text).unwrap_or_else(|| panic!("{name} does not parse"));
        // CRLF line ends and tab indentation format to the same text.
        let crlf = text.replace('\n', "\r\n");
        assert_eq!(format_source(&crlf).unwrap(), f1, "{name}: CRLF formats differently");
        let tabs = text.replace("  ", "\t");
        assert_eq!(format_source(&tabs).unwrap(), f1, "{name}: tab indentation formats differently");
        // With relative imports resolved from the file's own directory: a copy of
        // that directory, checked before and after formatting the file in place.
        let path = root().join(&name);
        let dir = copy_dir(path.parent().expect("parent"));
        let copy = dir.0.join(path.file_name().expect("file name"));
        let before = check_paths(&[&copy], &[]);
        std::fs::write(&copy, &f1).unwrap();
        let after = check_paths(&[&copy], &[]);
        assert_same_meaning(&before, &after, &name);
        if name.starts_with("models") {
            assert!(!before.has_errors(), "{name}:\n{}", before.render_diags());
        }
        checked_models += before.models.iter().filter(|m| matches!(m.outcome, Outcome::Model(_))).count();
    }
    assert!(checked_models >= 21, "only {checked_models} models checked");
}

/// A temporary copy of a directory's `.ecar` files, removed on drop.
struct TempCopy(std::path::PathBuf);

fn copy_dir(from: &std::path::Path) -> TempCopy {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("ecarc-format-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "ecar") {
            std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
        }
    }
    TempCopy(d)
}

impl Drop for TempCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------
// Tricky layouts (snapshots)
// ---------------------------------------------------------------------------

const TRICKY: &[(&str, &str)] = &[
    ("comment_after_open_brace", "model m { // after the brace\n  image 256\n}\n"),
    ("comment_before_close_brace", "model m {\n  image 256\n  // before the brace\n}\n"),
    ("comment_in_empty_body", "model m { // only this\n}\nblock b {\n  // inside\n}\n"),
    ("comment_in_empty_nested_body", "model m {\n  backbone { // nothing yet\n  }\n  head {}\n}\n"),
    (
        "comments_between_params",
        "block b {\n  params \"x.\" { // header\n    // before w\n    w \"w\" [1, 2] // after w\n\n    // before b\n    b \"bias\" [2]\n    // last\n  }\n  params {} // empty group\n  buffers { // only a comment\n  }\n}\n",
    ),
    (
        "trailing_comments_after_stage_rows",
        "schedule s {\n  stage 1x1 1.0 -> 0.5 steps 4 // first\n  stage 16x16 0.5 -> 0.0 // second\n  // between\n  stage 2x2 steps 2 // third\n  stage 4x4\n}\n",
    ),
    ("eof_comment_without_newline", "model m {\n  image 256\n}\n// the end"),
    ("eof_comment_after_trailing", "model m {} // trailing\n// the end\n\n\n// really"),
    ("crlf", "import \"std/var.ecar\"\r\n\r\n// VAR\r\nmodel m extends var_base { // c\r\n  backbone {\r\n    depth 16 // d\r\n  }\r\n}\r\n"),
    ("tabs", "model m {\n\tbackbone {\n\t\tdepth\t16\t// tab\n\t}\n\t//\ttabbed comment\n}\n"),
    (
        "comments_inside_values",
        "model m {\n  a [1, // one\n     2] // two\n  b 1 + // plus\n    2\n  c f( // call\n    x = 1)\n  d in { // set\n    1, 2 }\n  e 1.0 // seg\n    -> 0.5\n}\n",
    ),
    (
        "comments_in_headers",
        "model // kind\n  m // name\n  extends // ext\n  base // base\n{\n  backbone // key\n    b // base\n    { depth 1 }\n}\n",
    ),
    ("blank_lines", "\n\n// lead\n\n\nimport \"std/var.ecar\"\n\n\nimport \"std/ecar.ecar\"\nimport \"std/dit.ecar\"\n\n\n\nmodel m {\n\n\n  image 256\n\n\n\n  classes 10\n\n}\n\n\n"),
    ("one_line", "model m { image 256 classes 10 backbone { depth 1 width 2 } stage 1x1 1.0 -> 0.0 where params <= 700M }"),
    (
        "expressions",
        "model m {\n  a -1\n  b - - 1\n  c (1+2)*3/-(4)\n  d [ ]\n  e [1,2,]\n  f g()\n  h pyramid(gamma=1/3,)\n  i 1.5e-3K\n  j 16x16\n  k \"q\\\"\\\\\\n\\t\"\n  l 1->-0.5\n  m in 1..=4 step 2\n  n in 1..x\n  o in {a{p 1},b,}\n}\n",
    ),
    (
        "params_headers",
        "block b {\n  params\"p.{i}.\"for i in 0..depth+1 when!distilled{w\"k\"[width,2*width]}\n  buffers when x {}\n}\n",
    ),
    ("comments_only", "// a\n\n// b\n   // c   \n"),
    (
        // `x [1,]` after a stage row is a field (a one-element list formats as `[1]`),
        // `x[1]` right after the grid is the row's segment start.
        "stage_row_then_list_field",
        "schedule s {\n  stage 4x4\n  scales [16,]\n  stage 8x8\n  x [ 1 , ] -> 0\n  stage 2x2 x[1] -> 0\n}\n",
    ),
    (
        "params_loops_and_guards",
        "block b {\n  params \"up.{l}.{j}.\" for l in 0..levels-1 , j in 0..1 when ch_mult[l]!=ch_mult[l+1] { // g\n    w \"w\" [ch_mult[l], 3]\n  }\n  where params<=700M\n}\n",
    ),
    ("comment_with_quotes_and_braces", "model m { // \"{ [ ( // \n  a \"//not a comment\" // real \"one\"\n}\n"),
];

#[test]
fn tricky_layouts_keep_comments_and_are_idempotent() {
    for (name, text) in TRICKY {
        let f = assert_format_ok(name, text).unwrap_or_else(|| panic!("{name} does not parse"));
        insta::assert_snapshot!(*name, f, text);
    }
}

// ---------------------------------------------------------------------------
// Generated models
// ---------------------------------------------------------------------------

/// A proptest generator of random but plausible `.ecar` sources.
///
/// A source is first built as lexemes (`Lx::T`) with entry boundaries (`Lx::Brk`);
/// [`render`] then joins them with a random layout: spaces, tabs, newlines, CRLF,
/// blank lines, and comments (trailing, on their own line, inside values), and
/// sometimes a comment at the end of the file without a final newline.
pub(crate) mod gen {
    use proptest::prelude::*;
    use proptest::sample::select;

    #[derive(Clone, Debug)]
    pub enum Lx {
        T(String),
        /// Between entries or definitions: newlines are likely here.
        Brk,
    }

    fn t(s: impl Into<String>) -> Lx {
        Lx::T(s.into())
    }

    type S = BoxedStrategy<Vec<Lx>>;

    fn cat(parts: Vec<Vec<Lx>>) -> Vec<Lx> {
        parts.into_iter().flatten().collect()
    }

    const KEYWORDS: &[&str] =
        &["import", "extends", "in", "step", "stage", "params", "buffers", "for", "when", "where"];

    const KEYS: &[&str] = &[
        "image",
        "classes",
        "tokenizer",
        "backbone",
        "block",
        "head",
        "schedule",
        "sample",
        "distill",
        "kind",
        "channels",
        "ch_mult",
        "res_blocks",
        "z_channels",
        "latent_channels",
        "code_dim",
        "vocab",
        "stride",
        "l2_norm",
        "latent_scale",
        "phi",
        "depth",
        "width",
        "heads",
        "condition",
        "cond_tokens",
        "attn",
        "positions",
        "rope_base",
        "qk_norm",
        "qk_scale_max",
        "patch",
        "norm",
        "norm_eps",
        "norm_affine",
        "modulation",
        "adaln_order",
        "ffn",
        "mlp_ratio",
        "ffn_multiple",
        "qkv_bias",
        "proj_bias",
        "ffn_bias",
        "time_embed",
        "raster",
        "scales",
        "segments",
        "steps",
        "upsample",
        "renoise",
        "cfg",
        "cfg_schedule",
        "cfg_channels",
        "top_k",
        "top_p",
        "temperature",
        "solver",
        "learned_variance",
        "beta",
        "train_steps",
        "split",
        "convs",
        "map",
        "mix",
    ];

    const WORDS: &[&str] = &[
        "vae",
        "vq",
        "msvq",
        "class_token",
        "adaln_class",
        "adaln_time_class",
        "full",
        "causal",
        "block_causal",
        "earlier_plus_self",
        "learned",
        "sincos_2d",
        "rope_2d",
        "none",
        "l2",
        "layernorm",
        "rmsnorm",
        "adaln",
        "gelu",
        "gelu_tanh",
        "swiglu",
        "qv",
        "true",
        "false",
        "categorical",
        "flow_mlp",
        "flow_transformer",
        "dd_continuous",
        "linear",
        "uniform",
        "nearest",
        "bilinear",
        "bicubic",
        "constant",
        "euler",
        "heun",
        "ddpm",
        "ddim",
        "all",
        "tokens",
        "stages",
        "grid",
        "head_dim",
        "cond_dim",
        "ffn_hidden",
        "depth",
        "width",
        "distilled",
        "steps",
        "shift1",
        "scale1",
        "gate1",
        "var_msvq",
        "kl16",
        "vq16",
        "sd_vae",
        "var_transformer",
        "var_adaln",
    ];

    const CMP: &[&str] = &["<=", ">=", "<", ">", "==", "!="];

    pub const KINDS: &[&str] =
        &["model", "tokenizer", "backbone", "block", "head", "sampler", "schedule", "distill", "modle"];

    pub fn ident() -> BoxedStrategy<String> {
        prop_oneof![
            3 => select(KEYS).prop_map(String::from),
            2 => select(WORDS).prop_map(String::from),
            1 => "[a-zA-Z_][a-zA-Z0-9_]{0,7}".prop_filter("keyword", |s| !KEYWORDS.contains(&s.as_str())),
        ]
        .boxed()
    }

    pub fn number() -> BoxedStrategy<String> {
        prop_oneof![
            4 => (0u32..5000).prop_map(|n| n.to_string()),
            1 => select(&["0", "1", "16", "256", "1000", "4096", "9223372036854775807", "99999999999999999999"][..])
                .prop_map(String::from),
            2 => (0u32..100, 0u32..100000).prop_map(|(a, b)| format!("{a}.{b}")),
            1 => select(&["1.0", "0.5", "0.18215", "1.5", "0.96", "10000.0", "0.0"][..]).prop_map(String::from),
            1 => (1u32..10, select(&["e", "E"][..]), select(&["", "+", "-"][..]), 0u32..12)
                .prop_map(|(a, e, s, x)| format!("{a}{e}{s}{x}")),
            1 => (1u32..1000, select(&["K", "M", "G", "T"][..])).prop_map(|(a, u)| format!("{a}{u}")),
            1 => (1u32..10, 1u32..10, select(&["K", "M", "G"][..])).prop_map(|(a, b, u)| format!("{a}.{b}{u}")),
            2 => (1u32..64, 1u32..64).prop_map(|(a, b)| format!("{a}x{b}")),
            1 => select(&["16x16", "1x1", "256x256", "24x24"][..]).prop_map(String::from),
        ]
        .boxed()
    }

    pub fn string() -> BoxedStrategy<String> {
        prop_oneof![
            select(&["\"blocks.{i}.\"", "\"weight\"", "\"std/var.ecar\"", "\"\"", "\"a b\"", "\"é✓\""][..])
                .prop_map(String::from),
            "[a-z_.{}0-9]{0,12}".prop_map(|s| format!("\"{s}\"")),
            select(&["\"q\\\"uote\"", "\"back\\\\slash\"", "\"new\\nline\"", "\"tab\\tx\"", "\"c // not\""][..])
                .prop_map(String::from),
        ]
        .boxed()
    }

    /// A numeric or word expression.
    pub fn expr() -> S {
        let leaf = prop_oneof![
            4 => number().prop_map(|n| vec![t(n)]),
            3 => ident().prop_map(|n| vec![t(n)]),
            1 => string().prop_map(|s| vec![t(s)]),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                3 => (inner.clone(), select(&["+", "-", "*", "/"][..]), inner.clone())
                    .prop_map(|(a, op, b)| cat(vec![a, vec![t(op)], b])),
                1 => inner.clone().prop_map(|a| cat(vec![vec![t("-")], a])),
                1 => inner.clone().prop_map(|a| cat(vec![vec![t("(")], a, vec![t(")")]])),
                1 => (select(&["ch_mult", "scales", "map", "x"][..]), inner.clone())
                    .prop_map(|(n, i)| cat(vec![vec![t(n), t("[")], i, vec![t("]")]])),
                1 => (prop::collection::vec(inner.clone(), 0..4), any::<bool>()).prop_map(|(v, trailing)| {
                    list("[", v, trailing, "]")
                }),
                1 => (
                    ident(),
                    prop::collection::vec((prop::option::of(ident()), inner), 0..3),
                    any::<bool>()
                )
                    .prop_map(|(f, args, trailing)| {
                        let args = args
                            .into_iter()
                            .map(|(n, v)| match n {
                                Some(n) => cat(vec![vec![t(n), t("=")], v]),
                                None => v,
                            })
                            .collect();
                        let mut out = vec![t(f)];
                        out.extend(list("(", args, trailing, ")"));
                        out
                    }),
            ]
        })
        .boxed()
    }

    fn list(open: &str, items: Vec<Vec<Lx>>, trailing: bool, close: &str) -> Vec<Lx> {
        let mut out = vec![t(open)];
        let n = items.len();
        for (i, it) in items.into_iter().enumerate() {
            out.extend(it);
            if i + 1 < n || trailing {
                out.push(t(","));
            }
        }
        out.push(t(close));
        out
    }

    fn segment() -> S {
        prop_oneof![
            (0u32..=10, 0u32..=10).prop_map(|(a, b)| vec![
                t(format!("{}.{}", a / 10, a % 10)),
                t("->"),
                t(format!("0.{b}"))
            ]),
            (expr(), expr()).prop_map(|(a, b)| cat(vec![a, vec![t("->")], b])),
        ]
        .boxed()
    }

    /// Entries of a body; `depth` bounds nested components.
    pub fn entries(depth: u32) -> S {
        prop::collection::vec(entry(depth), 0..7)
            .prop_map(|v| v.into_iter().flat_map(|e| std::iter::once(Lx::Brk).chain(e)).chain([Lx::Brk]).collect())
            .boxed()
    }

    fn body(depth: u32) -> S {
        entries(depth).prop_map(|e| cat(vec![vec![t("{")], e, vec![t("}")]])).boxed()
    }

    fn value(depth: u32) -> S {
        if depth == 0 {
            prop_oneof![4 => expr(), 1 => segment()].boxed()
        } else {
            prop_oneof![
                4 => expr(),
                1 => segment(),
                2 => (prop::option::of(ident()), body(depth - 1)).prop_map(|(b, body)| {
                    let mut out: Vec<Lx> = b.into_iter().map(t).collect();
                    out.extend(body);
                    out
                }),
            ]
            .boxed()
        }
    }

    fn entry(depth: u32) -> S {
        let field = (ident(), value(depth)).prop_map(|(k, v)| cat(vec![vec![t(k)], v]));
        let set = (ident(), prop::collection::vec(value(depth.saturating_sub(1)), 1..4), any::<bool>())
            .prop_map(|(k, items, trailing)| cat(vec![vec![t(k), t("in")], list("{", items, trailing, "}")]));
        let range = (ident(), 0u32..20, 0u32..12, any::<bool>(), prop::option::of(1u32..5)).prop_map(
            |(k, lo, n, incl, step)| {
                let mut out =
                    vec![t(k), t("in"), t(lo.to_string()), t(if incl { "..=" } else { ".." }), t((lo + n).to_string())];
                if let Some(s) = step {
                    out.extend([t("step"), t(s.to_string())]);
                }
                out
            },
        );
        let stage = (number(), prop::option::of(segment()), prop::option::of(1u32..300)).prop_map(|(g, seg, steps)| {
            let mut out = vec![t("stage"), t(g)];
            out.extend(seg.unwrap_or_default());
            if let Some(s) = steps {
                out.extend([t("steps"), t(s.to_string())]);
            }
            out
        });
        let params = (
            select(&["params", "buffers"][..]),
            prop::option::of(string()),
            prop::option::of((
                (select(&["i", "l", "layer"][..]), expr(), expr()),
                prop::option::weighted(0.3, (select(&["j", "k"][..]), expr(), expr())),
            )),
            prop::option::of(prop_oneof![
                (any::<bool>(), select(&["distilled", "x"][..])).prop_map(|(neg, flag)| {
                    let mut out = vec![t("when")];
                    if neg {
                        out.push(t("!"));
                    }
                    out.push(t(flag));
                    out
                }),
                (expr(), select(CMP), expr()).prop_map(|(a, op, b)| cat(vec![vec![t("when")], a, vec![t(op)], b])),
            ]),
            prop::collection::vec((ident(), string(), prop::collection::vec(expr(), 0..4), any::<bool>()), 0..4),
        )
            .prop_map(|(kind, prefix, repeat, cond, decls)| {
                let mut out = vec![t(kind)];
                out.extend(prefix.map(t));
                if let Some(((v, lo, hi), inner)) = repeat {
                    out.extend([t("for"), t(v), t("in")]);
                    out.extend(lo);
                    out.push(t(".."));
                    out.extend(hi);
                    if let Some((v, lo, hi)) = inner {
                        out.extend([t(","), t(v), t("in")]);
                        out.extend(lo);
                        out.push(t(".."));
                        out.extend(hi);
                    }
                }
                out.extend(cond.unwrap_or_default());
                out.push(t("{"));
                for (role, key, dims, trailing) in decls {
                    out.extend([Lx::Brk, t(role), t(key)]);
                    out.extend(list("[", dims, trailing, "]"));
                }
                out.extend([Lx::Brk, t("}")]);
                out
            });
        let constraint =
            (select(&["params", "forward_macs", "tokens", "stages", "bogus", "in"][..]), select(CMP), expr())
                .prop_map(|(m, op, e)| cat(vec![vec![t("where"), t(m), t(op)], e]));
        prop_oneof![6 => field, 1 => set, 1 => range, 2 => stage, 1 => params, 1 => constraint].boxed()
    }

    fn definition() -> S {
        (select(KINDS), ident(), prop::option::of(ident()), body(2))
            .prop_map(|(k, n, base, body)| {
                let mut out = vec![Lx::Brk, t(k), t(n)];
                if let Some(b) = base {
                    out.extend([t("extends"), t(b)]);
                }
                out.extend(body);
                out
            })
            .boxed()
    }

    const STD: &[(&str, &str)] = &[
        ("std/var.ecar", "var_base"),
        ("std/var.ecar", "var_dd"),
        ("std/ecar.ecar", "ecar_base"),
        ("std/llamagen.ecar", "llamagen_base"),
        ("std/dit.ecar", "dit_base"),
    ];

    /// Overrides that keep a standard model mostly valid (`ecarc check` then gives
    /// real specs and small search spaces to compare).
    fn override_() -> S {
        let n = |lo: u32, hi: u32| (lo..hi).prop_map(|v| v.to_string());
        prop_oneof![
            n(1, 40).prop_map(|d| vec![t("backbone"), t("{"), Lx::Brk, t("depth"), t(d), Lx::Brk, t("}")]),
            (n(1, 40), n(1, 40)).prop_map(|(a, b)| vec![
                t("backbone"),
                t("{"),
                Lx::Brk,
                t("depth"),
                t("in"),
                t("{"),
                t(a),
                t(","),
                t(b),
                t("}"),
                Lx::Brk,
                t("}")
            ]),
            (n(8, 16), n(1, 3)).prop_map(|(a, s)| vec![
                t("backbone"),
                t("{"),
                t("depth"),
                t("in"),
                t(a),
                t("..="),
                t("20"),
                t("step"),
                t(s),
                t("}")
            ]),
            (1u32..8).prop_map(|k| vec![
                t("backbone"),
                t("{"),
                Lx::Brk,
                t("width"),
                t(format!("{k}")),
                t("*"),
                t("64"),
                t("*"),
                t("heads"),
                Lx::Brk,
                t("heads"),
                t("8"),
                Lx::Brk,
                t("}")
            ]),
            (number(), number()).prop_map(|(a, b)| vec![
                t("sample"),
                t("{"),
                Lx::Brk,
                t("cfg"),
                t(a),
                Lx::Brk,
                t("temperature"),
                t(b),
                Lx::Brk,
                t("}")
            ]),
            (0u32..2000, 0u32..=100).prop_map(|(k, p)| vec![
                t("sample"),
                t("{"),
                t("top_k"),
                t(k.to_string()),
                Lx::Brk,
                t("top_p"),
                t(format!("{}.{:02}", p / 100, p % 100)),
                t("}")
            ]),
            select(&["256", "384", "512", "256x256", "1"][..]).prop_map(|v| vec![t("image"), t(v)]),
            select(&["1000", "10", "0"][..]).prop_map(|v| vec![t("classes"), t(v)]),
            select(&["700M", "1G", "1.5G", "10K"][..]).prop_map(|v| vec![t("where"), t("params"), t("<="), t(v)]),
            Just(vec![
                t("schedule"),
                t("{"),
                Lx::Brk,
                t("stage"),
                t("1x1"),
                t("1.0"),
                t("->"),
                t("0.5"),
                t("steps"),
                t("4"),
                Lx::Brk,
                t("stage"),
                t("16x16"),
                t("0.5"),
                t("->"),
                t("0.0"),
                t("steps"),
                t("4"),
                Lx::Brk,
                t("renoise"),
                t("pyramid"),
                t("("),
                t("gamma"),
                t("="),
                t("1"),
                t("/"),
                t("3"),
                t(")"),
                Lx::Brk,
                t("}")
            ]),
            Just(vec![
                t("schedule"),
                t("{"),
                t("scales"),
                t("["),
                t("1"),
                t(","),
                t("2"),
                t(","),
                t("4"),
                t(","),
                t("8"),
                t(","),
                t("16"),
                t("]"),
                t("}")
            ]),
            Just(vec![t("distill"), t("dd"), t("{"), t("steps"), t("2"), Lx::Brk, t("split"), t("5"), t("}")]),
            Just(vec![t("head"), t("flow_mlp"), t("{"), t("depth"), t("6"), t("width"), t("1024"), t("}")]),
            Just(vec![
                t("backbone"),
                t("{"),
                Lx::Brk,
                t("params"),
                t("\"extra.\""),
                t("for"),
                t("i"),
                t("in"),
                t("0"),
                t(".."),
                t("depth"),
                t("{"),
                Lx::Brk,
                t("w"),
                t("\"w\""),
                t("["),
                t("width"),
                t(","),
                t("width"),
                t("]"),
                Lx::Brk,
                t("}"),
                Lx::Brk,
                t("}")
            ]),
            entry(1),
        ]
        .boxed()
    }

    /// A file: either a model derived from the standard library with a few
    /// overrides, or random definitions (mostly not valid models).
    pub fn lexemes() -> S {
        let std_model = (select(STD), "[a-z][a-z0-9_]{0,6}", prop::collection::vec(override_(), 0..5)).prop_map(
            |((file, base), name, overrides)| {
                let mut out = vec![Lx::Brk, t("import"), t(format!("\"{file}\"")), Lx::Brk, t("model"), t(name)];
                out.extend([t("extends"), t(base), t("{")]);
                for o in overrides {
                    out.push(Lx::Brk);
                    out.extend(o);
                }
                out.extend([Lx::Brk, t("}")]);
                out
            },
        );
        let random = (
            prop::collection::vec(select(&["\"std/var.ecar\"", "\"std/blocks.ecar\"", "\"std/nope.ecar\""][..]), 0..3),
            prop::collection::vec(definition(), 0..4),
        )
            .prop_map(|(imports, defs)| {
                let mut out = Vec::new();
                for i in imports {
                    out.extend([Lx::Brk, t("import"), t(i)]);
                }
                out.extend(defs.into_iter().flatten());
                out
            });
        prop_oneof![3 => std_model, 2 => random].boxed()
    }

    /// How to lay a file out: choices consumed one per gap (cycled), plus whole-file
    /// options.
    #[derive(Clone, Debug)]
    pub struct Layout {
        pub gaps: Vec<u8>,
        pub crlf: bool,
        pub final_newline: bool,
        pub eof_comment: Option<String>,
        pub lead_comment: bool,
    }

    pub fn layout() -> impl Strategy<Value = Layout> {
        (
            prop::collection::vec(any::<u8>(), 1..64),
            prop::bool::weighted(0.15),
            prop::bool::weighted(0.8),
            prop::option::weighted(0.3, comment_text()),
            any::<bool>(),
        )
            .prop_map(|(gaps, crlf, final_newline, eof_comment, lead_comment)| Layout {
                gaps,
                crlf,
                final_newline,
                eof_comment,
                lead_comment,
            })
    }

    fn comment_text() -> impl Strategy<Value = String> {
        select(
            &[
                "",
                "note",
                "{ [ ( unbalanced",
                "\"quoted",
                "// nested",
                "é ünïcode ✓",
                "trailing spaces   ",
                "\ttab",
                "-> .. ..= in step",
                "}",
                "/* not a block */",
            ][..],
        )
        .prop_map(String::from)
    }

    const FRAGMENTS: &[&str] = &["", " note", " { [ (", " \"q", " // again", " é✓", " trailing   ", "\tt", " }"];

    fn word_like(s: &str, end: bool) -> bool {
        let c = if end { s.chars().last() } else { s.chars().next() };
        c.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '"' || c == '.')
    }

    /// Join lexemes with the layout. Every comment is numbered (`// c<n>...`).
    pub fn render(lx: &[Lx], l: &Layout) -> String {
        let mut out = String::new();
        let mut n_comment = 0;
        let mut k = 0;
        let mut comment = |out: &mut String, extra: u8| {
            n_comment += 1;
            out.push_str(&format!("// c{n_comment}{}", FRAGMENTS[extra as usize % FRAGMENTS.len()]));
        };
        if l.lead_comment {
            comment(&mut out, l.gaps[0]);
            out.push_str("\n\n");
        }
        let mut pending_brk = false;
        let mut prev: Option<&str> = None;
        for x in lx {
            let tok = match x {
                Lx::Brk => {
                    pending_brk = true;
                    continue;
                }
                Lx::T(s) => s.as_str(),
            };
            if let Some(p) = prev {
                let g = l.gaps[k % l.gaps.len()] as u32 * 100 / 256;
                let g2 = l.gaps[(k * 7 + 3) % l.gaps.len()];
                k += 1;
                let must_space = word_like(p, true) && word_like(tok, false)
                    || (p == "-" && tok.starts_with('>'))
                    || (p == "/" && tok.starts_with('/'))
                    || (p.ends_with('.') && tok.starts_with('.'));
                let indent = ["", "  ", "    ", "\t", " \t "][g2 as usize % 5];
                if pending_brk {
                    match g {
                        0..=54 => {
                            out.push('\n');
                            out.push_str(indent);
                        }
                        55..=64 => {
                            out.push_str("\n\n");
                            out.push_str(indent);
                        }
                        65..=74 => {
                            out.push_str("  ");
                            comment(&mut out, g2);
                            out.push('\n');
                            out.push_str(indent);
                        }
                        75..=84 => {
                            out.push('\n');
                            out.push_str(indent);
                            comment(&mut out, g2);
                            out.push('\n');
                            if g2.is_multiple_of(2) {
                                out.push('\n');
                            }
                            out.push_str(indent);
                        }
                        85..=92 => out.push(' '),
                        93..=96 => out.push_str("\r\n"),
                        _ => out.push_str("\n\t"),
                    }
                } else {
                    match g {
                        0..=71 => out.push(' '),
                        72..=81 => {
                            if must_space {
                                out.push(' ');
                            }
                        }
                        82..=86 => {
                            out.push('\n');
                            out.push_str(indent);
                        }
                        87..=89 => out.push('\t'),
                        90..=94 => {
                            out.push(' ');
                            comment(&mut out, g2);
                            out.push('\n');
                            out.push_str(indent);
                        }
                        95..=97 => {
                            out.push('\n');
                            comment(&mut out, g2);
                            out.push_str("\n\n");
                        }
                        _ => out.push_str("  "),
                    }
                }
            }
            pending_brk = false;
            out.push_str(tok);
            prev = Some(tok);
        }
        if let Some(c) = &l.eof_comment {
            out.push_str(if l.gaps[0].is_multiple_of(2) { "\n" } else { " " });
            n_comment += 1;
            out.push_str(&format!("// eof{n_comment} {c}"));
        }
        if l.final_newline {
            out.push('\n');
        }
        if l.crlf {
            out = out.replace('\n', "\r\n");
        }
        out
    }

    /// A rendered source.
    pub fn source() -> BoxedStrategy<String> {
        (lexemes(), layout()).prop_map(|(lx, l)| render(&lx, &l)).boxed()
    }
}

#[test]
fn generated_models_format_idempotently_and_keep_their_meaning() {
    let parsed = AtomicUsize::new(0);
    let clean = AtomicUsize::new(0);
    let total = AtomicUsize::new(0);
    // About 40 ms a case: `PROPTEST_CASES` may lower the count, not raise it.
    let n = cases(crate::robustness::budget::FORMAT_GENERATED).min(crate::robustness::budget::FORMAT_GENERATED);
    runner(n)
        .run(&gen::source(), |src| {
            total.fetch_add(1, Ordering::Relaxed);
            if assert_format_ok("gen.ecar", &src).is_some() {
                parsed.fetch_add(1, Ordering::Relaxed);
                let s = check_source("gen.ecar", &src, &[]);
                if !s.has_errors() && !s.models.is_empty() {
                    clean.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        })
        .unwrap();
    // The generator must mostly produce parsable files, and some valid models,
    // or the properties above say little.
    let (t, p, c) = (total.load(Ordering::Relaxed), parsed.load(Ordering::Relaxed), clean.load(Ordering::Relaxed));
    eprintln!("generated {t} sources: {p} parse, {c} check clean");
    if t >= 200 {
        assert!(p * 10 >= t * 7, "only {p} of {t} generated sources parse");
        assert!(c * 20 >= t, "only {c} of {t} generated sources check clean");
    }
}

#[test]
fn generated_comments_are_all_found() {
    // The comment scanner used above sees every comment the generator writes.
    runner(cases(500).min(2_000))
        .run(&gen::source(), |src| {
            let found = comments(&src);
            let expected = src.matches("// c").count() + src.matches("// eof").count();
            proptest::prop_assert!(found.len() >= expected, "{found:?}\n{src}");
            Ok(())
        })
        .unwrap();
}
