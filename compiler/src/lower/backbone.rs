//! The backbone step: embed this step's tokens, run the transformer layers over
//! them while attending to the KV cache of earlier steps, and produce what the
//! head needs. Everything that differs between families comes from the spec
//! (conditioning kind, positions, mask, block structure) and from which tensor
//! roles the model declares; there is no family switch.

use super::ctx::{d, Ctx, Res, N};
use crate::ir::op::{Binary, Mask, Unary};
use crate::ir::{Dim, Op, Sym, TensorType, F};
use crate::spec::*;

/// What the step's token sequence holds. `D` counts the body tokens: a [`Dim`]
/// here, a polynomial in the model's fields in the cost formulas
/// (`cost/formula/macs.rs`), which walk the same sequences.
#[derive(Clone, Debug, PartialEq)]
pub enum Seq<D = Dim> {
    /// Only the start token(s) (class token / start position): the first step.
    Prefix,
    /// Only `T` embedded tokens: later steps.
    Body,
    /// The start token(s) then `body` embedded tokens: a whole teacher-forced pass.
    ///
    /// `skip`: the body input holds `skip` more tokens first, whose positions
    /// the start tokens take. A first stage with more tokens than start tokens
    /// feeds its own starting state there (position `j` takes token `j`, as
    /// every later stage does), so the start tokens replace its first `skip`.
    PrefixAndBody { body: D, skip: u64 },
}

/// How the per-image inputs (tokens, `x`, the latent, `t`) become the
/// program's batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Doubling {
    /// They are the batch.
    None,
    /// Classifier-free guidance: `B` images run twice (conditional half,
    /// then the null class), doubled inside the program.
    Guided,
    /// DiT's `forward_with_cfg`: of a given `2B` batch only the first half's
    /// sequence input is used, twice; `t` and the labels are taken whole.
    FirstHalf,
}

/// Shape of one backbone step.
#[derive(Clone, Debug)]
pub struct BackboneStep {
    pub seq: Seq,
    /// Batch of the program (`B`, or `2*B` under classifier-free guidance).
    pub batch: Dim,
    pub doubling: Doubling,
    /// Tokens this step (`T`, or a constant).
    pub tokens: Dim,
    /// Positions already cached (`P`, or 0 for a pass without cache).
    pub past: Dim,
    /// A whole teacher-forced pass over several stages (needs the full mask).
    pub teacher_forced: bool,
    /// The KV cache's capacity in positions when this step attends to earlier
    /// steps or keeps its keys and values for later ones: each layer's cache
    /// is a state of that many positions, written in place at `past`.
    pub cache: Option<u64>,
}

/// What the backbone hands to the head.
pub struct BackboneOut {
    /// Last hidden states `[batch, T, width]` (before any output norm).
    pub hidden: N,
    /// The per-image condition vector `[batch, width]` (adaLN kinds).
    pub cond: Option<N>,
    /// The class embedding `[batch, width]`.
    pub class_emb: N,
}

/// What the sequence begins with, before the body tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SeqStart {
    /// `cond_tokens` class tokens.
    ClassTokens,
    /// One learned start position (a declared `pos_start`).
    StartPosition,
    Nothing,
}

pub(crate) fn seq_start(spec: &ModelSpec, has_pos_start: bool) -> SeqStart {
    match spec.backbone.condition {
        Conditioning::ClassToken => SeqStart::ClassTokens,
        _ if has_pos_start => SeqStart::StartPosition,
        _ => SeqStart::Nothing,
    }
}

/// Number of start tokens the sequence begins with (0 when none).
pub(crate) fn prefix_len(spec: &ModelSpec, has_pos_start: bool) -> u64 {
    match seq_start(spec, has_pos_start) {
        SeqStart::ClassTokens => spec.backbone.cond_tokens,
        SeqStart::StartPosition => 1,
        SeqStart::Nothing => 0,
    }
}

/// The sequence of a whole teacher-forced pass: the `prefix` start tokens, if
/// any, then `body` tokens.
pub(crate) fn forward_seq<D>(prefix: u64, body: D) -> Seq<D> {
    if prefix > 0 {
        Seq::PrefixAndBody { body, skip: 0 }
    } else {
        Seq::Body
    }
}

/// The sequence of the first stage's own step (`step.first`), `None` without
/// start tokens (`step.next` runs it): only the start tokens when they are the
/// whole stage, else the start tokens then `body()` (the stage's other tokens),
/// whose positions the start tokens take first.
pub(crate) fn first_seq<D>(prefix: u64, first_tokens: u64, body: impl FnOnce() -> D) -> Option<Seq<D>> {
    match prefix {
        0 => None,
        p if p == first_tokens => Some(Seq::Prefix),
        p => Some(Seq::PrefixAndBody { body: body(), skip: p.min(first_tokens) }),
    }
}

/// A per-image input of `ty` (its first axis the images), as the program's batch.
fn per_image(c: &mut Ctx, name: &str, ty: TensorType, doubling: Doubling) -> N {
    match doubling {
        Doubling::None => c.input(name, ty),
        Doubling::Guided => {
            let x = c.input(name, ty);
            c.op(Op::Concat { axis: 0 }, &[x, x])
        }
        Doubling::FirstHalf => {
            let b = ty.shape[0].clone();
            let mut given = ty;
            given.shape[0] = b.mul_c(2);
            let x = c.input(name, given);
            let half = c.slice(x, 0, d(0), b);
            c.op(Op::Concat { axis: 0 }, &[half, half])
        }
    }
}

/// The batch of the per-image inputs of a step.
fn image_batch(step: &BackboneStep) -> Dim {
    match step.doubling {
        Doubling::None => step.batch.clone(),
        Doubling::Guided | Doubling::FirstHalf => step.batch.div_c(2).expect("a doubled batch is even"),
    }
}

pub fn lower_backbone(c: &mut Ctx, spec: &ModelSpec, step: &BackboneStep) -> Res<BackboneOut> {
    let bb = &spec.backbone;
    let bt = step.batch.clone();
    let t = step.tokens.clone();

    // ---- conditioning --------------------------------------------------------
    let labels = c.input("labels", TensorType::i64(vec![bt.clone()]));
    let class_table = c.p("class_table", None)?;
    let class_emb = c.op(Op::Embedding, &[class_table, labels]);
    let cond = match bb.condition {
        Conditioning::ClassToken => None,
        Conditioning::AdalnClass => Some(class_emb),
        Conditioning::AdalnTimeClass => {
            // `forward_with_cfg` takes every row's timestep as given.
            let time = match step.doubling {
                Doubling::FirstHalf => c.input("t", TensorType::f32(vec![bt.clone()])),
                dbl => per_image(c, "t", TensorType::f32(vec![image_batch(step)]), dbl),
            };
            let freqs = c.op(Op::Sinusoid { dim: bb.time_embed as u32, max_period: F::new(10000.0) }, &[time]);
            let h = c.linear(freqs, "time_in", None)?;
            let h = c.unary(Unary::Silu, h);
            let temb = c.linear(h, "time_out", None)?;
            Some(c.add(temb, class_emb))
        }
    };

    // ---- the token sequence ------------------------------------------------
    let has_pos_start = c.has("pos_start", None);
    let body_tokens = match &step.seq {
        Seq::Prefix => None,
        Seq::Body => Some(t.clone()),
        Seq::PrefixAndBody { body, .. } => Some(body.clone()),
    };
    let mut parts = Vec::new();
    if step.seq != Seq::Body {
        let start = c.per_token(class_emb);
        let start = if has_pos_start {
            let ps = c.p("pos_start", None)?;
            c.add(start, ps)
        } else {
            start
        };
        parts.push(start);
    }
    if let Some(n) = body_tokens {
        parts.push(embed_tokens(c, spec, step, &n)?);
    }
    let mut x = if parts.len() == 1 { parts[0] } else { c.op(Op::Concat { axis: 1 }, &parts) };

    // Distilled Decoding: noise-vs-data marker per position.
    let nd_emb = if spec.distill.is_some() && c.has("nd_table", None) {
        // One marker per position, the same for every image.
        let nd = c.input("nd", TensorType::i64(vec![t.clone()]));
        let table = c.p("nd_table", None)?;
        let e = c.op(Op::Embedding, &[table, nd]);
        x = c.add(x, e);
        Some(e)
    } else {
        None
    };

    // ---- positions -------------------------------------------------------
    if let Some(table) = c.opt("pos_table", None) {
        let rows = c.slice(table, 1, step.past.clone(), t.clone());
        x = c.add(x, rows);
    }
    if let Some(levels_table) = c.opt("level_table", None) {
        let levels = c.input("levels", TensorType::i64(vec![t.clone()]));
        let lv = c.op(Op::Embedding, &[levels_table, levels]);
        x = c.add(x, lv);
    }
    let rope = if bb.positions == PositionEncoding::Rope2d {
        let ty = TensorType::f32(vec![t.clone(), d(bb.head_dim / 2)]);
        Some((c.input("rope_cos", ty.clone()), c.input("rope_sin", ty)))
    } else {
        None
    };
    let attn = attention_of(c, spec, step);
    // ---- layers ------------------------------------------------------------
    for layer in 0..bb.depth {
        x = block(c, spec, x, cond, layer, &bt, &t, rope, &attn, nd_emb)?;
    }
    if let (Some(e), true) = (nd_emb, c.has("nd_proj", Some(bb.depth))) {
        let p = c.linear(e, "nd_proj", Some(bb.depth))?;
        x = c.add(x, p);
    }
    Ok(BackboneOut { hidden: x, cond, class_emb })
}

/// Embed `n` body tokens: by table (discrete indices), by a linear map of
/// continuous tokens / code vectors, or by patchifying a latent map.
fn embed_tokens(c: &mut Ctx, spec: &ModelSpec, step: &BackboneStep, n: &Dim) -> Res<N> {
    let bb = &spec.backbone;
    let (bt, b) = (&step.batch, image_batch(step));
    if c.has("token_table", None) {
        let tokens = per_image(c, "tokens", TensorType::i64(vec![b, n.clone()]), step.doubling);
        let table = c.p("token_table", None)?;
        return Ok(c.op(Op::Embedding, &[table, tokens]));
    }
    if c.has("patch_embed", None) {
        let grid = spec.schedule.final_grid();
        let p = bb.patch;
        let ch = spec.tokenizer.token_channels;
        let ty = TensorType::f32(vec![b, d(ch), d(grid[0] * p), d(grid[1] * p)]);
        let latent = per_image(c, "latent", ty, step.doubling);
        let w = c.p("patch_embed", None)?;
        let b = c.p("patch_embed_bias", None)?;
        let y = c.op(Op::Conv2d { stride: p as u32, pad: 0 }, &[latent, w, b]);
        let y = c.reshape(y, vec![bt.clone(), d(bb.width), d(grid[0] * grid[1])]);
        return Ok(c.permute(y, &[0, 2, 1]));
    }
    let skip = match step.seq {
        Seq::PrefixAndBody { skip, .. } => skip,
        _ => 0,
    };
    let ty = TensorType::f32(vec![b, n.add(&d(skip)), d(spec.tokenizer.token_channels)]);
    let mut x = per_image(c, "x", ty, step.doubling);
    if skip > 0 {
        x = c.slice(x, 1, d(skip), n.clone());
    }
    c.linear(x, "token_in", None)
}

/// How one step's layers attend: the mask, the levels it reads, and the KV
/// cache (its capacity, and the positions already in it).
#[derive(Clone)]
struct Attend {
    mask: Mask,
    levels: Option<N>,
    cache: Option<u64>,
    past: Dim,
}

fn attention_of(c: &mut Ctx, spec: &ModelSpec, step: &BackboneStep) -> Attend {
    // A cached block-causal step holds one whole stage and sees every cached
    // position: no mask. A teacher-forced pass needs the levels.
    let mask = match spec.backbone.attn {
        AttnMask::Full => Mask::Full,
        AttnMask::BlockCausal if step.teacher_forced => Mask::BlockCausal,
        AttnMask::BlockCausal => Mask::Full,
        AttnMask::Causal => Mask::Causal,
        AttnMask::EarlierPlusSelf => Mask::EarlierPlusSelf,
    };
    let keys = step.past.add(&step.tokens);
    // Levels of every key: this step's own (`levels`) when nothing is cached.
    let levels = mask.needs_levels().then(|| {
        let name = if step.past.as_const() == Some(0) { "levels" } else { "key_levels" };
        c.input(name, TensorType::i64(vec![keys]))
    });
    assert!(
        step.cache.is_some() || step.past.as_const() == Some(0),
        "lowering bug: a step over cached positions has no cache"
    );
    Attend { mask, levels, cache: step.cache, past: step.past.clone() }
}

fn norm(c: &mut Ctx, spec: &ModelSpec, x: N, role: &str, layer: Option<u64>) -> Res<N> {
    let blk = &spec.backbone.block;
    let eps = F::new(blk.norm_eps);
    Ok(match blk.norm {
        NormKind::Layernorm if blk.norm_affine => {
            let w = c.p(role, layer)?;
            match c.opt(&format!("{role}_bias"), layer) {
                Some(b) => c.op(Op::LayerNorm { eps }, &[x, w, b]),
                None => c.op(Op::LayerNorm { eps }, &[x, w]),
            }
        }
        NormKind::Layernorm => c.op(Op::LayerNorm { eps }, &[x]),
        NormKind::Rmsnorm => {
            let w = c.p(role, layer)?;
            c.op(Op::RmsNorm { eps }, &[x, w])
        }
    })
}

#[allow(clippy::too_many_arguments)]
fn block(
    c: &mut Ctx,
    spec: &ModelSpec,
    x: N,
    cond: Option<N>,
    layer: u64,
    bt: &Dim,
    t: &Dim,
    rope: Option<(N, N)>,
    attn: &Attend,
    nd_emb: Option<N>,
) -> Res<N> {
    let bb = &spec.backbone;
    let blk = &bb.block;
    let l = Some(layer);
    let (h, hd, w) = (d(bb.heads), d(bb.head_dim), d(bb.width));

    // adaLN chunks, each [bt, 1, C], named by their role in the block.
    let mut chunk = std::collections::HashMap::new();
    if blk.modulation == Modulation::Adaln {
        let cond = cond.expect("adaLN modulation needs an adaLN condition (checked)");
        let s = c.unary(Unary::Silu, cond);
        let ada = c.linear(s, "ada", l)?;
        let parts = c.chunks(ada, 6);
        for (name, part) in blk.adaln_order.iter().zip(parts) {
            let v = c.per_token(part);
            chunk.insert(*name, v);
        }
    }

    // ---- attention -------------------------------------------------------
    let mut a = norm(c, spec, x, "attn_norm", l)?;
    if let (Some(&sc), Some(&sh)) = (chunk.get(&AdaChunk::Scale1), chunk.get(&AdaChunk::Shift1)) {
        a = c.modulate(a, sc, sh);
    }
    let qkv = c.linear(a, "qkv", l)?;
    let mut qkv_parts = c.chunks(qkv, 3);
    if blk.qkv_bias == QkvBias::Qv {
        let qb = c.p("q_bias", l)?;
        qkv_parts[0] = c.add(qkv_parts[0], qb);
        let vb = c.p("v_bias", l)?;
        qkv_parts[2] = c.add(qkv_parts[2], vb);
    }
    let heads = |c: &mut Ctx, v: N| {
        let r = c.reshape(v, vec![bt.clone(), t.clone(), h.clone(), hd.clone()]);
        c.permute(r, &[0, 2, 1, 3])
    };
    let mut q = heads(c, qkv_parts[0]);
    let mut k = heads(c, qkv_parts[1]);
    let v = heads(c, qkv_parts[2]);
    match bb.qk_norm {
        QkNorm::L2 => {
            q = c.op(Op::L2Normalize { eps: F::new(1e-12) }, &[q]);
            k = c.op(Op::L2Normalize { eps: F::new(1e-12) }, &[k]);
            let s = c.p("qk_scale", l)?;
            let s = c.op(Op::ClampMax { max: F::new(bb.qk_scale_max.ln()) }, &[s]);
            let s = c.unary(Unary::Exp, s);
            q = c.mul(q, s);
        }
        QkNorm::None => {}
    }
    // The L2 kind scales the queries by its learned factor instead.
    let scale = match bb.qk_norm {
        QkNorm::L2 => 1.0,
        QkNorm::None => 1.0 / (bb.head_dim as f64).sqrt(),
    };
    if let Some((cos, sin)) = rope {
        q = c.op(Op::Rope, &[q, cos, sin]);
        k = c.op(Op::Rope, &[k, cos, sin]);
    }
    // This step's keys and values go into the cache in place, at `past`;
    // attention reads the cache's first `past + T` positions.
    let (k_all, v_all) = match attn.cache {
        None => (k, v),
        Some(capacity) => {
            let cache_ty = TensorType::f32(vec![bt.clone(), h.clone(), d(capacity), hd.clone()]);
            let write = |c: &mut Ctx, which: &str, new: N| {
                let name = format!("cache.{which}.{layer}");
                let state = c.state(&name, cache_ty.clone());
                let all = c.op(Op::WriteSlice { axis: 2, start: attn.past.clone() }, &[state, new]);
                c.g.update(name, all);
                all
            };
            (write(c, "k", k), write(c, "v", v))
        }
    };
    let keys = attn.past.add(t);
    let mut operands = vec![q, k_all, v_all];
    operands.extend(attn.levels);
    let o = c.op(Op::Attention { mask: attn.mask, scale: F::new(scale), keys }, &operands);
    let o = c.permute(o, &[0, 2, 1, 3]);
    let o = c.reshape(o, vec![bt.clone(), t.clone(), w.clone()]);
    let mut o = c.linear(o, "attn_out", l)?;
    if let Some(&g) = chunk.get(&AdaChunk::Gate1) {
        o = c.mul(o, g);
    }
    let mut x = c.add(x, o);

    // Distilled Decoding (VAR): the marker again, between attention and FFN.
    if let (Some(e), true) = (nd_emb, c.has("nd_proj", l)) {
        let p = c.linear(e, "nd_proj", l)?;
        x = c.add(x, p);
    }

    // ---- feed-forward ----------------------------------------------------
    let mut f = norm(c, spec, x, "ffn_norm", l)?;
    if let (Some(&sc), Some(&sh)) = (chunk.get(&AdaChunk::Scale2), chunk.get(&AdaChunk::Shift2)) {
        f = c.modulate(f, sc, sh);
    }
    let mut y = match blk.ffn {
        FfnKind::Swiglu => {
            let gate = c.linear(f, "ffn_gate", l)?;
            let gate = c.unary(Unary::Silu, gate);
            let up = c.linear(f, "ffn_up", l)?;
            let hmul = c.op(Op::Binary(Binary::Mul), &[gate, up]);
            c.linear(hmul, "ffn_down", l)?
        }
        FfnKind::Gelu | FfnKind::GeluTanh => {
            let up = c.linear(f, "ffn_up", l)?;
            let act = c.unary(if blk.ffn == FfnKind::Gelu { Unary::Gelu } else { Unary::GeluTanh }, up);
            c.linear(act, "ffn_down", l)?
        }
    };
    if let Some(&g) = chunk.get(&AdaChunk::Gate2) {
        y = c.mul(y, g);
    }
    Ok(c.add(x, y))
}

/// The symbolic step used for KV-cached generation, with a cache of
/// `capacity` positions.
pub fn cached_step(seq: Seq, cfg: bool, capacity: u64) -> BackboneStep {
    let b = Dim::sym(Sym::B);
    BackboneStep {
        seq,
        batch: if cfg { b.mul_c(2) } else { b },
        doubling: if cfg { Doubling::Guided } else { Doubling::None },
        tokens: Dim::sym(Sym::T),
        past: Dim::sym(Sym::P),
        teacher_forced: false,
        cache: Some(capacity),
    }
}
