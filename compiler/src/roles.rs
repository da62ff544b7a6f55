//! The closed vocabulary of tensor roles. A `params` declaration names the
//! checkpoint key (which differs per family) and the role (what the tensor is
//! for, which the lowering needs); a role outside this list is an error, so a
//! typo cannot silently leave a tensor unused.

/// `(role, meaning)`. `_bias` variants are the biases of the matching weight.
pub const ROLES: &[(&str, &str)] = &[
    // embeddings and conditioning
    ("token_table", "embedding table of discrete tokens (vocab x width)"),
    ("token_in", "linear projection of continuous tokens or code vectors into the width"),
    ("token_in_bias", ""),
    ("patch_embed", "patchify convolution (DiT x_embedder)"),
    ("patch_embed_bias", ""),
    ("class_table", "class embedding table; the last row is the null class"),
    ("pos_start", "learned start-of-sequence position (VAR pos_start)"),
    ("pos_table", "position table, learned or fixed sin-cos"),
    ("level_table", "per-stage (level) embedding (VAR lvl_embed)"),
    ("level_index", "buffer: stage index of each position"),
    ("attn_mask", "buffer: additive attention mask"),
    ("time_in", "timestep-embedding MLP, first linear"),
    ("time_in_bias", ""),
    ("time_out", "timestep-embedding MLP, second linear"),
    ("time_out_bias", ""),
    ("cond_in", "projection of the condition vector into a head"),
    ("cond_in_bias", ""),
    ("x_in", "projection of the noisy token into a flow head"),
    ("x_in_bias", ""),
    // attention
    ("attn_norm", "pre-attention norm weight"),
    ("attn_norm_bias", ""),
    ("qkv", "fused q, k, v projection"),
    ("qkv_bias", "bias of the fused projection"),
    ("q_bias", "bias of q alone (VAR)"),
    ("k_bias", "buffer or bias of k alone (VAR zero_k_bias)"),
    ("v_bias", "bias of v alone (VAR)"),
    ("qk_scale", "per-head log-scale of L2-normalised attention (VAR scale_mul_1H11)"),
    ("attn_out", "attention output projection"),
    ("attn_out_bias", ""),
    // feed-forward
    ("ffn_norm", "pre-FFN norm weight"),
    ("ffn_norm_bias", ""),
    ("ffn_up", "FFN first linear; in SwiGLU the linear branch (w3, up_proj)"),
    ("ffn_up_bias", ""),
    ("ffn_gate", "SwiGLU: the branch that goes through SiLU (w1, gate_proj)"),
    ("ffn_gate_bias", ""),
    ("ffn_down", "FFN second linear"),
    ("ffn_down_bias", ""),
    // modulation and outputs
    ("ada", "adaLN modulation linear (6 chunks per block)"),
    ("ada_bias", ""),
    ("final_norm", "final norm before the output projection (LlamaGen norm.weight)"),
    ("final_norm_bias", ""),
    ("head_ada", "adaLN (scale, shift) before the output head"),
    ("head_ada_bias", ""),
    ("final_ada", "adaLN (shift, scale) of a final layer"),
    ("final_ada_bias", ""),
    ("out", "output projection to logits"),
    ("out_bias", ""),
    ("final_out", "output projection of a final layer / flow head"),
    ("final_out_bias", ""),
    // tokenizers
    ("codebook", "VQ codebook [vocab, code_dim]"),
    ("phi_conv", "VAR's shared phi 3x3 conv of the residual quantiser"),
    ("phi_conv_bias", ""),
    ("quant_conv", "conv from the encoder output to the latent / code space"),
    ("quant_conv_bias", ""),
    ("post_quant_conv", "conv from the latent / code space into the decoder"),
    ("post_quant_conv_bias", ""),
    // Distilled Decoding
    ("nd_table", "noise-vs-data marker embedding [2, width]"),
    ("nd_proj", "per-layer projection of the marker (VAR-DD)"),
    ("nd_proj_bias", ""),
    ("dd_scale_shift", "learned shift/scale table of DD's continuous head"),
    ("dd_out", "DD's continuous output linear"),
    ("dd_out_bias", ""),
];

pub fn is_role(name: &str) -> bool {
    ROLES.iter().any(|(r, _)| *r == name)
}
