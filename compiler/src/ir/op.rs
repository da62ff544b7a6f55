//! The closed set of operations. Ops are plain data with structural equality
//! and hashing (floats compare by bit pattern), so common-subexpression
//! elimination is exact and the text form can print and parse every field.

use super::dim::Dim;
use serde::{Deserialize, Serialize};

/// An `f64` attribute with bitwise equality and hashing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct F(pub u64);

impl F {
    pub fn new(v: f64) -> F {
        // One NaN and one zero, so structural equality means numeric equality.
        let v = if v.is_nan() {
            f64::NAN
        } else if v == 0.0 {
            0.0
        } else {
            v
        };
        F(v.to_bits())
    }
    pub fn get(self) -> f64 {
        f64::from_bits(self.0)
    }
}

impl std::fmt::Display for F {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `{:?}` of f64 is the shortest text that parses back to the same bits.
        write!(f, "{:?}", self.get())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DType {
    F32,
    I64,
}

impl DType {
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::I64 => "i64",
        }
    }
    pub fn bytes(self) -> u64 {
        match self {
            DType::F32 => 4,
            DType::I64 => 8,
        }
    }
}

/// Element-wise functions of one operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Unary {
    Silu,
    Gelu,
    GeluTanh,
    Exp,
    Neg,
    Sqrt,
    Tanh,
}

/// `sqrt(2 / pi)`, the constant of the tanh approximation of GELU.
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;

impl Unary {
    /// One element, as every backend must compute it: GELU (exact, through
    /// libm's `erf`) and its tanh approximation in f64 rounded once to f32,
    /// the rest in f32. The one home of these semantics: the reference
    /// backend and the kernel-IR interpreter both call it.
    pub fn apply(self, x: f32) -> f32 {
        match self {
            // PyTorch: x / (1 + exp(-x)).
            Unary::Silu => x / (1.0 + (-x).exp()),
            // 0.5 x (1 + erf(x / sqrt 2)).
            Unary::Gelu => {
                let x = x as f64;
                (0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))) as f32
            }
            // PyTorch's approximate='tanh': 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
            Unary::GeluTanh => {
                let x = x as f64;
                (0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh())) as f32
            }
            Unary::Exp => x.exp(),
            Unary::Neg => -x,
            Unary::Sqrt => x.sqrt(),
            Unary::Tanh => x.tanh(),
        }
    }
}

/// Element-wise functions of two operands (numpy broadcasting).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Binary {
    Add,
    Sub,
    Mul,
    Div,
    Min,
    Max,
}

impl Binary {
    /// One element, in f32; `min`/`max` keep NaN (as PyTorch's
    /// `minimum`/`maximum`). The one home of these semantics.
    pub fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            Binary::Add => a + b,
            Binary::Sub => a - b,
            Binary::Mul => a * b,
            Binary::Div => a / b,
            Binary::Min => {
                if a.is_nan() || b.is_nan() {
                    f32::NAN
                } else {
                    a.min(b)
                }
            }
            Binary::Max => {
                if a.is_nan() || b.is_nan() {
                    f32::NAN
                } else {
                    a.max(b)
                }
            }
        }
    }
}

/// Resampling of an `[N, C, H, W]` map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Resample {
    Nearest,
    Bilinear,
    Bicubic,
    /// Average over equal areas (downsampling).
    Area,
}

/// Which keys a query may attend to. Positions count the whole sequence;
/// levels (the stage of each position) come from an operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Mask {
    /// Every key.
    Full,
    /// Keys at or before the query's position (raster AR).
    Causal,
    /// Keys of the query's level or an earlier one (next-scale prediction).
    BlockCausal,
    /// Keys of earlier levels, and the query's own position (Distilled Decoding).
    EarlierPlusSelf,
}

impl Mask {
    pub fn name(self) -> &'static str {
        match self {
            Mask::Full => "full",
            Mask::Causal => "causal",
            Mask::BlockCausal => "block_causal",
            Mask::EarlierPlusSelf => "earlier_plus_self",
        }
    }
    /// Whether the mask reads the levels of the keys.
    pub fn needs_levels(self) -> bool {
        matches!(self, Mask::BlockCausal | Mask::EarlierPlusSelf)
    }
    /// Whether the query at position `q` (level `lq`) sees the key at `k` (level `lk`).
    pub fn allows(self, q: u64, k: u64, lq: i64, lk: i64) -> bool {
        match self {
            Mask::Full => true,
            Mask::Causal => k <= q,
            Mask::BlockCausal => lk <= lq,
            Mask::EarlierPlusSelf => k == q || lk < lq,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Op {
    // ---- sources -------------------------------------------------------
    /// A per-step input supplied by the schedule driver (tokens, noise, t, labels, masks).
    Input {
        name: String,
    },
    /// A checkpoint tensor, by its declared key.
    Param {
        key: String,
    },
    /// State carried from earlier steps (KV cache, accumulated latents).
    State {
        name: String,
    },
    /// A scalar constant.
    Const {
        value: F,
    },

    // ---- linear algebra: the ops that count as MACs ----------------------
    /// `x[..., in] . w[out, in]^T (+ b[out])`.
    Linear,
    /// `a[..., m, k] @ b[..., k, n]`, batch dims broadcast.
    MatMul,
    /// `x[N, C, H, W] * w[O, C, k, k] (+ b[O])`.
    Conv2d {
        stride: u32,
        pad: u32,
    },
    /// Rows of `table[V, D]` at `idx[...]` (i64): `[..., D]`.
    Embedding,

    // ---- element-wise ---------------------------------------------------
    Unary(Unary),
    Binary(Binary),
    /// `x * scale + shift` with constant scalars.
    Affine {
        scale: F,
        shift: F,
    },
    /// `x.min(max)`: clamps from above.
    ClampMax {
        max: F,
    },

    // ---- normalisation and reductions (last axis unless said) ------------
    /// LayerNorm over the last axis; operands `x [, w, b]`.
    LayerNorm {
        eps: F,
    },
    /// RMSNorm over the last axis, computed in f32; operands `x, w`.
    RmsNorm {
        eps: F,
    },
    /// GroupNorm of `[N, C, H, W]`; operands `x, w, b`.
    GroupNorm {
        groups: u32,
        eps: F,
    },
    /// `x / max(|x|, eps)` over the last axis.
    L2Normalize {
        eps: F,
    },
    Softmax,
    /// Index of the largest value (i64).
    ArgMax,

    // ---- layout ---------------------------------------------------------
    Reshape {
        shape: Vec<Dim>,
    },
    Permute {
        perm: Vec<u8>,
    },
    Slice {
        axis: u8,
        start: Dim,
        len: Dim,
    },
    Concat {
        axis: u8,
    },
    /// The first operand with its rows `start..start + len` along `axis`
    /// replaced by the second operand (`len` its extent there). When the first
    /// operand is a state and the program declares the result as that state's
    /// update, a backend writes in place (`Graph::updates`).
    WriteSlice {
        axis: u8,
        start: Dim,
    },
    /// Resample `[N, C, H, W]` to `[N, C, h, w]`.
    Resize {
        mode: Resample,
        h: Dim,
        w: Dim,
    },

    // ---- positions and time ---------------------------------------------
    /// Sinusoidal embedding of `t[N]`: `[N, dim]`, `[cos, sin]` halves,
    /// frequencies `exp(-ln(max_period) * k / (dim/2))` (DiT/MAR timestep embedding).
    Sinusoid {
        dim: u32,
        max_period: F,
    },
    /// Rotate interleaved pairs of `x[..., T, d]` by the angles of `cos, sin [T, d/2]`.
    Rope,

    // ---- attention --------------------------------------------------------
    /// Scaled dot-product attention of `T` queries at positions
    /// `keys - T .. keys` over the keys at positions `0..keys`: operands
    /// `q[..., T, d]`, `k[..., S, d]`, `v[..., S, e]` with `S >= keys` (a
    /// cache of capacity `S` whose first `keys` rows are filled), and for the
    /// level masks `levels: i64[keys]`. Result `[..., T, e]`:
    /// `softmax(scale * q k^T + mask) v` over the allowed keys only.
    Attention {
        mask: Mask,
        scale: F,
        keys: Dim,
    },

    // ---- generation -----------------------------------------------------
    /// Classifier-free guidance: `u + s (c - u)` on the first `channels`
    /// channels (all when `None`), `c` elsewhere; operands `c, u, s`.
    Guide {
        channels: Option<u32>,
    },
    /// Sample token indices from logits: operands `logits, uniform noise`,
    /// then the run's settings `temperature: f32[]`, `top_k: i64[]` (0 = off)
    /// and `top_p: f32[]` (1 = off), so changing them never re-lowers.
    SampleTokens,
    /// Index of the nearest codebook row (L2): operands `x[..., D], codes[V, D]`.
    NearestCode,
    /// Distilled Decoding's teacher flow map (docs/runtime.md): each token's
    /// distribution (logits filtered by temperature, top-k, top-p as
    /// `SampleTokens` does) is a mixture of point masses at the codes; the
    /// straight-path flow from a Gaussian noise token lands on one code, the
    /// chosen token. Integrated with `steps` Heun steps. Operands
    /// `logits[..., V], noise[..., D], codes[V, D]` and the settings as for
    /// `SampleTokens`; result `i64[...]`.
    FlowMapTokens {
        steps: u32,
    },

    // ---- after fusion -----------------------------------------------------
    /// A group of ops fused into one kernel (`pass::fuse`): its operands are
    /// the kernel's inputs, its value the kernel's result.
    Fused(Box<crate::kernel::Kernel>),
}

impl Op {
    /// Short lower-case name used by the text form and DOT.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Param { .. } => "param",
            Op::State { .. } => "state",
            Op::Const { .. } => "const",
            Op::Linear => "linear",
            Op::MatMul => "matmul",
            Op::Conv2d { .. } => "conv2d",
            Op::Embedding => "embedding",
            Op::Unary(u) => match u {
                Unary::Silu => "silu",
                Unary::Gelu => "gelu",
                Unary::GeluTanh => "gelu_tanh",
                Unary::Exp => "exp",
                Unary::Neg => "neg",
                Unary::Sqrt => "sqrt",
                Unary::Tanh => "tanh",
            },
            Op::Binary(b) => match b {
                Binary::Add => "add",
                Binary::Sub => "sub",
                Binary::Mul => "mul",
                Binary::Div => "div",
                Binary::Min => "min",
                Binary::Max => "max",
            },
            Op::Affine { .. } => "affine",
            Op::ClampMax { .. } => "clamp_max",
            Op::LayerNorm { .. } => "layer_norm",
            Op::RmsNorm { .. } => "rms_norm",
            Op::GroupNorm { .. } => "group_norm",
            Op::L2Normalize { .. } => "l2_normalize",
            Op::Softmax => "softmax",
            Op::ArgMax => "argmax",
            Op::Reshape { .. } => "reshape",
            Op::Permute { .. } => "permute",
            Op::Slice { .. } => "slice",
            Op::Concat { .. } => "concat",
            Op::WriteSlice { .. } => "write_slice",
            Op::Attention { .. } => "attention",
            Op::Resize { .. } => "resize",
            Op::Rope => "rope",
            Op::Sinusoid { .. } => "sinusoid",
            Op::Guide { .. } => "guide",
            Op::SampleTokens => "sample_tokens",
            Op::NearestCode => "nearest_code",
            Op::FlowMapTokens { .. } => "flow_map_tokens",
            Op::Fused(_) => "fused",
        }
    }

    /// Sources have no operands and define the program's inputs.
    pub fn is_source(&self) -> bool {
        matches!(self, Op::Input { .. } | Op::Param { .. } | Op::State { .. } | Op::Const { .. })
    }
}
