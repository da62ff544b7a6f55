//! The shader tree as WGSL: bindings per the ABI of `codegen/mod.rs`, the
//! helpers the tree uses (and only those, so equal trees print equal text
//! and share one pipeline), the one-thread-per-item entry point of
//! `runtime/src/webgpu/record.rs` (workgroup size 64 spread over x and y),
//! or a row stage's: a workgroup per row, spread over x and y (`rows.rs`).

use super::tree::{Buf, Func, Op2, Shader, Ty, E, S};
use std::collections::BTreeSet;
use std::fmt::Write as _;

/// Helpers by name, with the helpers they call. WGSL leaves NaN in
/// `min`/`max`/`clamp` unspecified, so the kernel IR's NaN rules are spelled
/// out on the bits.
const HELPERS: &[(&str, &[&str], &str)] = &[
    (
        "is_nan",
        &[],
        "fn is_nan(x: f32) -> bool {\n    return (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u;\n}\n",
    ),
    (
        "from_bits",
        &[],
        "// Non-finite and subnormal constants: a WGSL literal cannot spell them.\n\
         fn from_bits(b: u32) -> f32 {\n    return bitcast<f32>(b);\n}\n",
    ),
    (
        "min_nan",
        &["is_nan"],
        "fn min_nan(a: f32, b: f32) -> f32 {\n    return select(min(a, b), a + b, is_nan(a) || is_nan(b));\n}\n",
    ),
    (
        "max_nan",
        &["is_nan"],
        "fn max_nan(a: f32, b: f32) -> f32 {\n    return select(max(a, b), a + b, is_nan(a) || is_nan(b));\n}\n",
    ),
    (
        "tanh_c",
        &["is_nan"],
        "// tanh is 1 in f32 beyond |x| = 9; the clamp keeps exp-based tanh finite.\n\
         fn tanh_c(x: f32) -> f32 {\n    return select(tanh(clamp(x, -10.0, 10.0)), x, is_nan(x));\n}\n",
    ),
    ("silu", &[], "fn silu(x: f32) -> f32 {\n    return x / (1.0 + exp(-x));\n}\n"),
    (
        "gelu",
        &[],
        "// 0.5 x (1 + erf(x / sqrt 2)), erfc(|x| / sqrt 2) by Abramowitz & Stegun 7.1.26\n\
         // (absolute error < 1.5e-7), so the negative tail keeps its relative accuracy.\n\
         fn gelu(x: f32) -> f32 {\n    \
             let z = abs(x) * 0.70710678;\n    \
             let t = 1.0 / (1.0 + 0.3275911 * z);\n    \
             let p = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));\n    \
             let c = p * exp(-z * z);\n    \
             return 0.5 * x * select(c, 2.0 - c, x >= 0.0);\n}\n",
    ),
    (
        "gelu_tanh",
        &["tanh_c"],
        "fn gelu_tanh(x: f32) -> f32 {\n    \
             let u = 0.7978845608 * (x + 0.044715 * x * x * x);\n    \
             return 0.5 * x * (1.0 + tanh_c(u));\n}\n",
    ),
];

/// The WGSL text of one stage.
pub fn print(s: &Shader) -> String {
    let (body, used) = print_body(s, 1, false);
    let mut w = String::from("// A stage of a fused kernel, generated from the kernel IR (ecarc_compiler::codegen).\n");
    w.push_str("@group(0) @binding(0) var<storage, read> info: array<u32>;\n");
    bindings(&mut w, s, 1);
    helpers(&mut w, &used);
    match s.row_threads {
        None => w.push_str(
            "\n@compute @workgroup_size(64)\n\
             fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {\n    \
                 let id = gid.x + gid.y * nwg.x * 64u;\n    \
                 if (id >= info[0]) {\n        return;\n    }\n",
        ),
        Some(n) => {
            let _ = write!(
                w,
                "\nvar<workgroup> red: array<f32, {n}>;\n\n\
                 // One workgroup per row `id` (spread over x and y), {n} threads (`lane`).\n\
                 @compute @workgroup_size({n})\n\
                 fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, \
                 @builtin(local_invocation_index) lane: u32) {{\n    \
                     let id = wid.x + wid.y * nwg.x;\n    \
                     if (id >= info[0]) {{\n        return;\n    }}\n"
            );
        }
    }
    w.push_str(&body);
    w.push_str("}\n");
    w
}

/// The statements of `s` at `depth`, and the helpers they call; meta words
/// read at `info[em + k]` when `offset` (an epilogue's words follow the
/// anchor's).
pub(super) fn print_body(s: &Shader, depth: usize, offset: bool) -> (String, BTreeSet<&'static str>) {
    let ints = s.reads.iter().filter(|(_, int)| *int).map(|(b, _)| *b).collect();
    let mut p = Printer { out: String::new(), used: BTreeSet::new(), ints, offset };
    for st in &s.body {
        p.stmt(st, depth);
    }
    (p.out, p.used)
}

/// The read bindings from `first`, then the written `y`.
pub(super) fn bindings(w: &mut String, s: &Shader, first: u32) {
    for (i, (b, int)) in s.reads.iter().enumerate() {
        let ty = if *int { "i32" } else { "f32" };
        let _ =
            writeln!(w, "@group(0) @binding({}) var<storage, read> {}: array<{ty}>;", first + i as u32, buf_name(*b));
    }
    let _ = writeln!(w, "@group(0) @binding({}) var<storage, read_write> y: array<f32>;", first + s.reads.len() as u32);
}

/// The helpers in `used` and the helpers they call.
pub(super) fn helpers(w: &mut String, used: &BTreeSet<&'static str>) {
    let mut need: BTreeSet<&str> = BTreeSet::new();
    let mut stack: Vec<&str> = used.iter().copied().collect();
    while let Some(h) = stack.pop() {
        if need.insert(h) {
            if let Some((_, deps, _)) = HELPERS.iter().find(|(n, _, _)| *n == h) {
                stack.extend(deps.iter().copied());
            }
        }
    }
    for (name, _, text) in HELPERS {
        if need.contains(name) {
            w.push('\n');
            w.push_str(text);
        }
    }
}

fn buf_name(b: Buf) -> String {
    match b {
        Buf::Input(i) => format!("x{i}"),
        Buf::Scratch(i) => format!("s{i}"),
    }
}

fn ty_name(t: Ty) -> &'static str {
    match t {
        Ty::F32 => "f32",
        Ty::U32 => "u32",
        Ty::Bool => "bool",
    }
}

struct Printer {
    out: String,
    used: BTreeSet<&'static str>,
    /// The buffers of i32 words (i64 inputs), read as f32.
    ints: Vec<Buf>,
    /// Meta words at `info[em + k]` (an epilogue hook's).
    offset: bool,
}

impl Printer {
    fn line(&mut self, depth: usize, text: &str) {
        for _ in 0..depth {
            self.out.push_str("    ");
        }
        self.out.push_str(text);
        self.out.push('\n');
    }

    fn stmt(&mut self, s: &S, d: usize) {
        match s {
            S::Let { var, ty, value } => {
                let v = self.expr(value);
                self.line(d, &format!("let v{var}: {} = {v};", ty_name(*ty)));
            }
            S::Var { var, ty, init } => {
                let v = self.expr(init);
                self.line(d, &format!("var v{var}: {} = {v};", ty_name(*ty)));
            }
            S::Assign { var, value } => {
                let v = self.expr(value);
                self.line(d, &format!("v{var} = {v};"));
            }
            S::Loop { var, count, body } => {
                let c = self.expr(count);
                self.line(d, &format!("for (var v{var} = 0u; v{var} < {c}; v{var}++) {{"));
                for s in body {
                    self.stmt(s, d + 1);
                }
                self.line(d, "}");
            }
            S::If { cond, then, otherwise } => {
                let c = self.expr(cond);
                self.line(d, &format!("if ({c}) {{"));
                for s in then {
                    self.stmt(s, d + 1);
                }
                if !otherwise.is_empty() {
                    self.line(d, "} else {");
                    for s in otherwise {
                        self.stmt(s, d + 1);
                    }
                }
                self.line(d, "}");
            }
            S::Store { at, value } => {
                let (a, v) = (self.expr(at), self.expr(value));
                self.line(d, &format!("y[{a}] = {v};"));
            }
            S::SharedStore { at, value } => {
                let (a, v) = (self.expr(at), self.expr(value));
                self.line(d, &format!("red[{a}] = {v};"));
            }
            S::Barrier => self.line(d, "workgroupBarrier();"),
        }
    }

    fn expr(&mut self, e: &E) -> String {
        match e {
            E::F32(v) => self.float(*v),
            E::U32(v) => format!("{v}u"),
            E::Var(v) => format!("v{v}"),
            E::Id => "id".into(),
            E::Meta(k) if self.offset => format!("info[em + {k}u]"),
            E::Meta(k) => format!("info[{k}]"),
            E::Lane => "lane".into(),
            E::Shared(at) => format!("red[{}]", self.expr(at)),
            E::Read(b, at) => {
                let a = self.expr(at);
                if self.ints.contains(b) {
                    format!("f32({}[{a}])", buf_name(*b))
                } else {
                    format!("{}[{a}]", buf_name(*b))
                }
            }
            E::Bin(op, a, b) => {
                let (a, b) = (self.expr(a), self.expr(b));
                let o = match op {
                    Op2::Add => "+",
                    Op2::Sub => "-",
                    Op2::Mul => "*",
                    Op2::Div => "/",
                    Op2::Rem => "%",
                    Op2::Lt => "<",
                    Op2::Gt => ">",
                    Op2::Or => "||",
                };
                format!("({a} {o} {b})")
            }
            E::Neg(a) => format!("(-{})", self.expr(a)),
            E::Call(f, args) => {
                let name = match f {
                    Func::Exp => "exp",
                    Func::Sqrt => "sqrt",
                    Func::Tanh => "tanh_c",
                    Func::Silu => "silu",
                    Func::Gelu => "gelu",
                    Func::GeluTanh => "gelu_tanh",
                    Func::MinNan => "min_nan",
                    Func::MaxNan => "max_nan",
                    Func::IsNan => "is_nan",
                };
                if HELPERS.iter().any(|(n, _, _)| *n == name) {
                    self.used.insert(name);
                }
                let args: Vec<String> = args.iter().map(|a| self.expr(a)).collect();
                format!("{name}({})", args.join(", "))
            }
            E::Select { cond, t, f } => {
                let (c, t, f) = (self.expr(cond), self.expr(t), self.expr(f));
                format!("select({f}, {t}, {c})")
            }
        }
    }

    /// A literal when WGSL can spell the value exactly, else its bits.
    fn float(&mut self, v: f32) -> String {
        if !v.is_finite() || (v != 0.0 && v.abs() < f32::MIN_POSITIVE) {
            self.used.insert("from_bits");
            return format!("from_bits({:#010x}u)", v.to_bits());
        }
        let text = format!("{v:?}f");
        if v.is_sign_negative() {
            format!("({text})")
        } else {
            text
        }
    }
}
