//! Tests of the text form: every op round-trips, errors are spanned.

use super::*;
use crate::ir::dim::Sym;
use ecarc_grammar::Span;

fn d(s: &str) -> Dim {
    Dim::parse(s).unwrap()
}
fn f32t(dims: &str) -> TensorType {
    TensorType::f32(dims.split(',').map(|s| d(s.trim())).collect())
}

/// A graph using every op variant (and every nested variant), with awkward
/// names and floats, that type-checks. Shared with the verifier and DOT tests.
pub(crate) fn every_op_graph() -> Graph {
    let mut g = Graph::new("every.op \"quoted\"");
    let x = g.source(Op::Input { name: "x".into() }, f32t("B, T, 32"), None);
    let w = g.source(Op::Param { key: "lin.weight".into() }, f32t("64, 32"), None);
    let b = g.source(Op::Param { key: "lin.bias".into() }, f32t("64"), None);
    let odd = g.source(Op::Input { name: "we\"ird\\ // name\n\u{e9}".into() }, f32t("B, T, 32"), None);
    let kv = g.source(Op::State { name: "kv".into() }, f32t("B, P, 32"), None);
    let tok = g.source(Op::Input { name: "tokens".into() }, TensorType::i64(vec![d("B"), d("T")]), None);
    let table = g.source(Op::Param { key: "embed".into() }, f32t("1024, 32"), None);
    let img = g.source(Op::Input { name: "img".into() }, f32t("B, 3, 8, 8"), None);
    let cw = g.source(Op::Param { key: "conv.w".into() }, f32t("16, 3, 3, 3"), None);
    let cb = g.source(Op::Param { key: "conv.b".into() }, f32t("16"), None);
    let nw = g.source(Op::Param { key: "norm.w".into() }, f32t("32"), None);
    let nb = g.source(Op::Param { key: "norm.b".into() }, f32t("32"), None);
    let gw = g.source(Op::Param { key: "gn.w".into() }, f32t("16"), None);
    let gb = g.source(Op::Param { key: "gn.b".into() }, f32t("16"), None);
    let cos = g.source(Op::Input { name: "cos".into() }, f32t("T, 4"), None);
    let sin = g.source(Op::Input { name: "sin".into() }, f32t("T, 4"), None);
    let noise = g.source(Op::Input { name: "noise".into() }, f32t("B, T"), None);
    let t = g.source(Op::Input { name: "t".into() }, f32t("B"), None);
    let codes = g.source(Op::Param { key: "codes".into() }, f32t("512, 32"), None);
    let flow_noise = g.source(Op::Input { name: "flow_noise".into() }, f32t("B, T, 8"), None);
    let vocab_codes = g.source(Op::Param { key: "vocab_codes".into() }, f32t("64, 8"), None);
    let temperature = g.source(Op::Input { name: "temperature".into() }, TensorType::f32(vec![]), None);
    let top_k = g.source(Op::Input { name: "top_k".into() }, TensorType::i64(vec![]), None);
    let top_p = g.source(Op::Input { name: "top_p".into() }, TensorType::f32(vec![]), None);
    let cache = g.source(Op::State { name: "cache".into() }, f32t("B, 4, 16, 8"), None);
    let levels = g.source(Op::Input { name: "levels".into() }, TensorType::i64(vec![d("P + T")]), None);

    let mut add = |op: Op, operands: &[NodeIndex]| g.try_add(op, operands, None).unwrap();
    let scale = add(Op::Const { value: F::new(7.5) }, &[]);
    add(Op::Const { value: F::new(f64::NAN) }, &[]);
    add(Op::Const { value: F(f64::to_bits(-0.0)) }, &[]);
    add(Op::Const { value: F::new(5e-324) }, &[]);
    let lin = add(Op::Linear, &[x, w, b]);
    let lin2 = add(Op::Linear, &[odd, w]);
    let xt = add(Op::Permute { perm: vec![0, 2, 1] }, &[x]);
    add(Op::MatMul, &[x, xt]);
    let conv = add(Op::Conv2d { stride: 1, pad: 1 }, &[img, cw, cb]);
    let emb = add(Op::Embedding, &[table, tok]);
    for u in UNARIES {
        add(Op::Unary(u), &[x]);
    }
    for bin in BINARIES {
        add(Op::Binary(bin), &[x, emb]);
    }
    add(Op::Affine { scale: F::new(1e-6), shift: F::new(f64::NEG_INFINITY) }, &[x]);
    add(Op::ClampMax { max: F::new(f64::MAX) }, &[x]);
    add(Op::LayerNorm { eps: F::new(1e-5) }, &[x, nw, nb]);
    add(Op::RmsNorm { eps: F::new(1e-6) }, &[x, nw]);
    add(Op::GroupNorm { groups: 4, eps: F::new(1e-6) }, &[conv, gw, gb]);
    add(Op::L2Normalize { eps: F::new(1e-12) }, &[x]);
    add(Op::Softmax, &[lin]);
    add(Op::ArgMax, &[lin]);
    let heads = add(Op::Reshape { shape: vec![d("B"), d("T"), d("4"), d("8")] }, &[x]);
    let heads = add(Op::Permute { perm: vec![0, 2, 1, 3] }, &[heads]);
    let cat = add(Op::Concat { axis: 1 }, &[kv, x]);
    let last = add(Op::Slice { axis: 1, start: d("P"), len: d("T") }, &[cat]);
    add(Op::Slice { axis: 1, start: d("0"), len: d("2*B*T + P - 1") }, &[cat]);
    for mode in RESAMPLES {
        add(Op::Resize { mode, h: d("16"), w: d("4") }, &[img]);
    }
    let roped = add(Op::Rope, &[heads, cos, sin]);
    let temb = add(Op::Sinusoid { dim: 16, max_period: F::new(10000.0) }, &[t]);
    let guided = add(Op::Guide { channels: Some(16) }, &[lin, lin2, scale]);
    add(Op::Guide { channels: None }, &[lin, lin2, scale]);
    let toks = add(Op::SampleTokens, &[guided, noise, temperature, top_k, top_p]);
    let code = add(Op::NearestCode, &[last, codes]);
    let chosen = add(Op::FlowMapTokens { steps: 16 }, &[guided, flow_noise, vocab_codes, temperature, top_k, top_p]);
    let written = add(Op::WriteSlice { axis: 2, start: d("P") }, &[cache, heads]);
    let mut attended = vec![];
    for mask in MASKS {
        let keys = d("P + T");
        let mut ops = vec![roped, written, written];
        if mask.needs_levels() {
            ops.push(levels);
        }
        attended.push(add(Op::Attention { mask, scale: F::new(0.125), keys }, &ops));
    }
    add(Op::Attention { mask: Mask::Full, scale: F::new(1.0), keys: d("T") }, &[heads, heads, roped]);
    g.output("chosen", chosen);
    g.output("logits", guided);
    g.output("tokens", toks);
    g.output("code", code);
    g.output("q \"rot\"", roped);
    g.output("temb", temb);
    g.output("attended", attended[2]);
    g.update("cache", written);
    g
}

/// One number per top-level variant; exhaustive, so a new variant fails
/// to compile here until it is given a number (and the graph covers it).
fn variant(op: &Op) -> usize {
    use Op::*;
    match op {
        Input { .. } => 0,
        Param { .. } => 1,
        State { .. } => 2,
        Const { .. } => 3,
        Linear => 4,
        MatMul => 5,
        Conv2d { .. } => 6,
        Embedding => 7,
        Unary(_) => 8,
        Binary(_) => 9,
        Affine { .. } => 10,
        ClampMax { .. } => 11,
        LayerNorm { .. } => 12,
        RmsNorm { .. } => 13,
        GroupNorm { .. } => 14,
        L2Normalize { .. } => 15,
        Softmax => 16,
        ArgMax => 17,
        Reshape { .. } => 18,
        Permute { .. } => 19,
        Slice { .. } => 20,
        Concat { .. } => 21,
        Resize { .. } => 22,
        Rope => 23,
        Guide { .. } => 24,
        SampleTokens => 25,
        NearestCode => 26,
        Sinusoid { .. } => 27,
        FlowMapTokens { .. } => 28,
        WriteSlice { .. } => 29,
        Attention { .. } => 30,
        // Printed with its kernel, not parsed back (docs/passes.md): outside
        // the round trip, so beyond `VARIANTS`.
        Fused(_) => 31,
    }
}
const VARIANTS: usize = 31;

/// Ops, types and operands in printed order, and outputs by position:
/// what "structurally equal" means across a round trip.
#[allow(clippy::type_complexity)]
fn structure(g: &Graph) -> (Vec<(Op, TensorType, Vec<usize>)>, Vec<(String, usize)>) {
    let order = order(g);
    let pos: HashMap<NodeIndex, usize> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let nodes = order
        .iter()
        .map(|&n| (g.g[n].op.clone(), g.g[n].ty.clone(), g.operands(n).iter().map(|o| pos[o]).collect()))
        .collect();
    let outputs =
        g.outputs.iter().map(|(s, n)| (format!("{s}{}", if g.is_update(s) { " (update)" } else { "" }), pos[n]));
    (nodes, outputs.collect())
}

fn assert_round_trips(g: &Graph) {
    let text = print(g, None);
    let back = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(print(&back, None), text);
    assert_eq!(structure(&back), structure(g));
    assert_eq!(back.name, g.name);
}

#[test]
fn every_op_round_trips() {
    let g = every_op_graph();
    let mut seen: Vec<usize> = g.g.node_weights().map(|n| variant(&n.op)).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen, (0..VARIANTS).collect::<Vec<_>>(), "the test graph misses a variant");
    assert_round_trips(&g);
    // -0.0 keeps its sign bit through the text.
    assert!(print(&g, None).contains("const {value = -0.0} : f32[]"));
}

#[test]
fn prints_the_documented_form() {
    let mut g = Graph::new("backbone.next");
    let x = g.source(Op::Input { name: "x".into() }, f32t("B, T, 32"), None);
    let w = g.source(Op::Param { key: "word_embed.weight".into() }, f32t("1024, 32"), None);
    let l = g.add(Op::Linear, &[x, w], None);
    let s = g.add(Op::Slice { axis: 1, start: Dim::c(0), len: Dim::sym(Sym::T) }, &[l], None);
    let a = g.add(Op::Affine { scale: F::new(0.5), shift: F::new(0.0) }, &[s], None);
    g.output("logits", a);
    let want = r#"graph "backbone.next" {
  %0 = input "x" : f32[B, T, 32]
  %1 = param "word_embed.weight" : f32[1024, 32]
  %2 = linear(%0, %1) : f32[B, T, 1024]
  %3 = slice(%2) {axis = 1, start = 0, len = T} : f32[B, T, 1024]
  %4 = affine(%3) {scale = 0.5, shift = 0.0} : f32[B, T, 1024]
  out "logits" = %4
}
"#;
    assert_eq!(print(&g, None), want);
    assert_round_trips(&g);
}

#[test]
fn order_puts_sources_first_then_smallest_index() {
    let mut g = Graph::new("o");
    let x = g.source(Op::Input { name: "x".into() }, f32t("4"), None);
    let a = g.add(Op::Unary(Unary::Exp), &[x], None);
    let b = g.add(Op::Unary(Unary::Neg), &[x], None);
    // A source added after the ops still prints before them.
    let y = g.source(Op::Param { key: "y".into() }, f32t("4"), None);
    let c = g.add(Op::Binary(Binary::Add), &[b, y], None);
    let a2 = g.add(Op::Binary(Binary::Mul), &[c, a], None);
    assert_eq!(order(&g), vec![x, y, a, b, c, a2]);
    // Removing a node leaves a hole in the indices; printing is unaffected.
    let mut h = g.clone();
    h.g.remove_node(a2);
    assert_round_trips(&h);
    assert_round_trips(&g);
}

#[test]
fn spans_print_as_comments_and_parse_ignores_them() {
    let mut sm = SourceMap::new();
    let file = sm.add("models/t.ecar", None, "model t {\n    linear 64\n}\n");
    let mut g = Graph::new("s");
    let x = g.source(Op::Input { name: "x // not a comment".into() }, f32t("B, 32"), Some(Span::new(file, 0, 5)));
    let w = g.source(Op::Param { key: "w".into() }, f32t("64, 32"), None);
    let l = g.add(Op::Linear, &[x, w], Some(Span::new(file, 14, 23)));
    g.output("y", l);
    let text = print(&g, Some(&sm));
    let want = r#"graph "s" {
  %0 = input "x // not a comment" : f32[B, 32]  // models/t.ecar:1:1
  %1 = param "w" : f32[64, 32]
  %2 = linear(%0, %1) : f32[B, 64]              // models/t.ecar:2:5
  out "y" = %2
}
"#;
    assert_eq!(text, want);
    let back = parse(&text).unwrap();
    assert!(back.g.node_weights().all(|n| n.span.is_none()));
    assert_eq!(print(&back, None), print(&g, None));
}

#[test]
fn parse_accepts_comments_blank_lines_and_loose_spacing() {
    let text = "// a header\n\ngraph \"g\"{\n  // a note\n%7=input \"x\":f32[B,T]\n %2 = exp( %7 ) : f32[B, T] // c\n\n out \"y\"=%2\n}\n// trailer\n";
    let g = parse(text).unwrap();
    assert_eq!(
        print(&g, None),
        "graph \"g\" {\n  %0 = input \"x\" : f32[B, T]\n  %1 = exp(%0) : f32[B, T]\n  out \"y\" = %1\n}\n"
    );
}

#[test]
fn parse_errors_name_the_line() {
    let head = "graph \"g\" {\n  %0 = input \"x\" : f32[B, 8]\n";
    let cases = [
        ("  %1 = exp(%0) : f32[B, 9]\n}\n", "line 3: type f32[B, 9] does not match the inferred f32[B, 8]"),
        ("  %1 = exp(%5) : f32[B, 8]\n}\n", "line 3: `%5` is not defined above"),
        ("  %0 = exp(%0) : f32[B, 8]\n}\n", "line 3: `%0` is defined twice"),
        ("  %1 = frob(%0) : f32[B, 8]\n}\n", "line 3: unknown op `frob`"),
        ("  %1 = affine(%0) {scale = 1.0} : f32[B, 8]\n}\n", "line 3: missing attribute `shift`"),
        ("  %1 = exp(%0) {axis = 1} : f32[B, 8]\n}\n", "line 3: `exp` has no attribute `axis`"),
        ("  %1 = clamp_max(%0) {max = big} : f32[B, 8]\n}\n", "line 3: `max = big`: not a number"),
        ("  %1 = slice(%0) {axis = 1, start = Q, len = 1} : f32[B, 1]\n}\n", "line 3: `start = Q`"),
        ("  %1 = exp : f32[B, 8]\n}\n", "line 3: expected `(` and the operands of `exp`"),
        ("  %1 = input(%0) \"y\" : f32[8]\n}\n", "line 3: expected `:`"),
        ("  %1 = param \"w\"(%0) : f32[8]\n}\n", "line 3: `param` takes no operands"),
        ("  %1 = exp(%0) : f16[B, 8]\n}\n", "line 3: unknown dtype `f16`"),
        ("  %1 = exp(%0) : f32[B, 8] extra\n}\n", "line 3: unexpected `extra`"),
        ("  %1 = linear(%0) : f32[B, 8]\n}\n", "line 3: linear: takes 2..=3 operands, got 1"),
        ("  out \"y\" = %0\n  out \"y\" = %0\n}\n", "line 4: output \"y\" is named twice"),
        ("  out \"y = %0\n}\n", "line 3: unterminated string"),
        ("  bogus\n}\n", "line 3: expected `%N = ...`, `out`, `update` or `}`"),
        ("  out \"y\" = %0\n", "line 4: missing the graph's closing `}`"),
        ("}\n%1 = exp(%0) : f32[B, 8]\n", "line 4: text after the graph's closing `}`"),
    ];
    for (tail, want) in cases {
        let err = parse(&format!("{head}{tail}")).unwrap_err();
        assert!(err.starts_with(want), "for {tail:?}: got {err:?}, want {want:?}");
    }
    assert!(parse("").unwrap_err().starts_with("line 1:"));
    assert!(parse("graf \"g\" {\n}\n").unwrap_err().starts_with("line 1: expected `graph`"));
}

mod random {
    use super::*;
    use proptest::prelude::*;

    /// A random polynomial over B, T, P, negative coefficients included.
    fn dim() -> impl Strategy<Value = Dim> {
        poly(-3..5)
    }

    /// Slice bounds stay non-negative: `Dim::as_const` wraps a negative
    /// constant to a huge u64 and slice inference then overflows.
    fn bound() -> impl Strategy<Value = Dim> {
        poly(0..5)
    }

    fn poly(coefs: std::ops::Range<i64>) -> impl Strategy<Value = Dim> {
        prop::collection::vec((0usize..7, coefs), 0..4).prop_map(|terms| {
            let monos = ["1", "B", "T", "P", "B*T", "T*T", "B*P"];
            let text: Vec<String> = terms.iter().map(|(m, c)| format!("{c}*{}", monos[*m])).collect();
            Dim::parse(&text.join(" + ")).unwrap_or_else(|_| Dim::c(0))
        })
    }

    fn float() -> impl Strategy<Value = F> {
        prop_oneof![
            any::<f64>().prop_map(|v| if v.is_nan() { F::new(v) } else { F(v.to_bits()) }),
            Just(F::new(f64::INFINITY)),
            Just(F(f64::to_bits(-0.0))),
            (-1e3f64..1e3).prop_map(F::new),
        ]
    }

    /// One building step, applied to earlier nodes picked by the indices.
    #[derive(Clone, Debug)]
    enum Step {
        Source(u8, String, Vec<Dim>),
        Unary(usize, usize),
        Binary(usize, usize, usize),
        Affine(usize, F, F),
        Slice(usize, u8, Dim, Dim),
        Reshape(usize, Vec<Dim>),
        Concat(Vec<usize>, u8),
        Output(String, usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        let idx = any::<usize>();
        prop_oneof![
            (0u8..3, ".*", prop::collection::vec(dim(), 0..4)).prop_map(|(k, s, sh)| Step::Source(k, s, sh)),
            (0usize..UNARIES.len(), idx).prop_map(|(u, a)| Step::Unary(u, a)),
            (0usize..BINARIES.len(), idx, idx).prop_map(|(b, x, y)| Step::Binary(b, x, y)),
            (idx, float(), float()).prop_map(|(a, s, t)| Step::Affine(a, s, t)),
            (idx, 0u8..4, bound(), bound()).prop_map(|(a, ax, s, l)| Step::Slice(a, ax, s, l)),
            (idx, prop::collection::vec(dim(), 0..3)).prop_map(|(a, sh)| Step::Reshape(a, sh)),
            (prop::collection::vec(idx, 1..4), 0u8..3).prop_map(|(xs, ax)| Step::Concat(xs, ax)),
            (".*", idx).prop_map(|(s, a)| Step::Output(s, a)),
        ]
    }

    /// Apply the steps, skipping those that do not type-check.
    fn build(name: String, steps: Vec<Step>) -> Graph {
        let mut g = Graph::new(name);
        let mut nodes: Vec<NodeIndex> = vec![];
        for s in steps {
            let pick = |i: usize| nodes[i % nodes.len()];
            let added = match s {
                Step::Source(k, name, shape) => {
                    let op = match k {
                        0 => Op::Input { name },
                        1 => Op::Param { key: name },
                        _ => Op::State { name },
                    };
                    // One declaration per source (the verifier rejects two types for one name).
                    if g.g.node_weights().any(|n| n.op == op) {
                        continue;
                    }
                    Ok(g.source(op, TensorType::f32(shape), None))
                }
                _ if nodes.is_empty() => continue,
                Step::Unary(u, a) => g.try_add(Op::Unary(UNARIES[u]), &[pick(a)], None),
                Step::Binary(b, x, y) => g.try_add(Op::Binary(BINARIES[b]), &[pick(x), pick(y)], None),
                Step::Affine(a, scale, shift) => g.try_add(Op::Affine { scale, shift }, &[pick(a)], None),
                Step::Slice(a, axis, start, len) => g.try_add(Op::Slice { axis, start, len }, &[pick(a)], None),
                Step::Reshape(a, shape) => g.try_add(Op::Reshape { shape }, &[pick(a)], None),
                Step::Concat(xs, axis) => {
                    let xs: Vec<NodeIndex> = xs.into_iter().map(pick).collect();
                    g.try_add(Op::Concat { axis }, &xs, None)
                }
                Step::Output(name, a) => {
                    if !g.outputs.iter().any(|(o, _)| *o == name) {
                        g.output(name, pick(a));
                    }
                    continue;
                }
            };
            if let Ok(n) = added {
                nodes.push(n);
            }
        }
        g
    }

    proptest! {
        #[test]
        fn random_graphs_round_trip(name in ".*", steps in prop::collection::vec(step(), 0..60)) {
            let g = build(name, steps);
            // Builders only make well-formed graphs; the verifier agrees.
            prop_assert_eq!(crate::ir::verify::verify(&g), Ok(()));
            assert_round_trips(&g);
        }
    }
}
