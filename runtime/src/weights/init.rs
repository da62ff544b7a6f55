//! How each declared parameter is initialised at random, by role (the table
//! in `weights/mod.rs`), and DiT's fixed sin-cos position table.

use crate::tensor::HostTensor;

/// How a parameter is initialised: `mean + std * N(0, 1)` (`std == 0`: the constant `mean`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Init {
    pub mean: f32,
    pub std: f32,
}

pub(super) const NORM_GAINS: &[&str] = &[
    "attn_norm",
    "ffn_norm",
    "final_norm",
    "dec_norm1",
    "dec_norm2",
    "dec_attn_norm",
    "dec_norm_out",
    "enc_norm1",
    "enc_norm2",
    "enc_attn_norm",
    "enc_norm_out",
];
pub(super) const TABLES: &[&str] =
    &["token_table", "class_table", "level_table", "pos_start", "pos_table", "codebook", "nd_table"];
pub(super) const LINEARS: &[&str] = &[
    "qkv",
    "attn_out",
    "ffn_up",
    "ffn_gate",
    "ffn_down",
    "ada",
    "head_ada",
    "final_ada",
    "out",
    "final_out",
    "time_in",
    "time_out",
    "cond_in",
    "x_in",
    "token_in",
    "patch_embed",
    "nd_proj",
    "dd_out",
    "quant_conv",
    "post_quant_conv",
    "phi_conv",
    "dec_conv_in",
    "dec_conv1",
    "dec_conv2",
    "dec_shortcut",
    "dec_attn_qkv",
    "dec_attn_q",
    "dec_attn_k",
    "dec_attn_v",
    "dec_attn_out",
    "dec_upsample",
    "dec_conv_out",
    "enc_conv_in",
    "enc_conv1",
    "enc_conv2",
    "enc_shortcut",
    "enc_attn_qkv",
    "enc_attn_q",
    "enc_attn_k",
    "enc_attn_v",
    "enc_attn_out",
    "enc_downsample",
    "enc_conv_out",
];
pub(super) const BIAS_STD: f32 = 0.02;

/// The initialisation of a tensor of `role` and `shape` (the table in the
/// module docs); `None` for a role the table does not name.
pub fn init_for(role: &str, shape: &[usize]) -> Option<Init> {
    let fan_in = || shape.iter().skip(1).product::<usize>().max(1) as f32;
    let init = if NORM_GAINS.contains(&role) {
        Init { mean: 1.0, std: 0.1 }
    } else if role.ends_with("_bias") {
        Init { mean: 0.0, std: BIAS_STD }
    } else if LINEARS.contains(&role) {
        Init { mean: 0.0, std: 1.0 / fan_in().sqrt() }
    } else if TABLES.contains(&role) {
        Init { mean: 0.0, std: 1.0 }
    } else {
        match role {
            "qk_scale" => Init { mean: 4f32.ln(), std: 0.1 },
            "dd_scale_shift" => {
                Init { mean: 0.0, std: 1.0 / (shape.last().copied().unwrap_or(1).max(1) as f32).sqrt() }
            }
            "level_index" | "attn_mask" => Init { mean: 0.0, std: 0.0 },
            _ => return None,
        }
    };
    Some(init)
}

/// [`init_for`], with the fallback for an unknown role: the linear rule for
/// rank ≥ 2, the bias rule otherwise.
pub(super) fn init_or_fallback(role: &str, shape: &[usize]) -> Init {
    init_for(role, shape).unwrap_or_else(|| {
        if shape.len() >= 2 {
            init_for("qkv", shape).expect("qkv has a rule")
        } else {
            Init { mean: 0.0, std: BIAS_STD }
        }
    })
}

/// The fixed 2D sin-cos position table of DiT (MAE's `get_2d_sincos_pos_embed`):
/// for the token at row r, column c, the first half of the width encodes the
/// column and the second half the row, each as `[sin(p w_k), cos(p w_k)]` with
/// `w_k = 10000^(-k / (width/4))`, computed in f64 and stored as f32.
pub fn sincos_2d(width: usize, rows: usize, cols: usize, shape: Vec<usize>) -> HostTensor {
    let quarter = width / 4;
    let omega: Vec<f64> = (0..quarter).map(|k| 1.0 / 10000f64.powf(k as f64 / quarter as f64)).collect();
    let mut v = Vec::with_capacity(rows * cols * width);
    for r in 0..rows {
        for c in 0..cols {
            for pos in [c as f64, r as f64] {
                v.extend(omega.iter().map(|w| (pos * w).sin() as f32));
                v.extend(omega.iter().map(|w| (pos * w).cos() as f32));
            }
        }
    }
    v.resize(shape.iter().product(), 0.0);
    HostTensor::f32(shape, v)
}
