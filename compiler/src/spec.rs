//! `ModelSpec`: a checked model, fully typed and serde-serialisable. Everything
//! downstream (lowering, cost, runtime) reads this, never the syntax tree.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub name: String,
    /// Image size in pixels, `[height, width]`.
    pub image: [u64; 2],
    pub classes: u64,
    pub tokenizer: TokenizerSpec,
    pub backbone: BackboneSpec,
    pub head: HeadSpec,
    pub schedule: ScheduleSpec,
    pub sampler: SamplerSpec,
    pub distill: Option<DistillSpec>,
    /// The generator's learned tensors (tokenizer's are in `tokenizer.params`).
    pub params: Vec<ParamGroupSpec>,
    pub buffers: Vec<ParamGroupSpec>,
    pub constraints: Vec<ConstraintSpec>,
    /// The reference implementation's tensor names of the entry points, by
    /// plan (`forward`, `forward.guided`) and port (`labels`, `x`, `logits`,
    /// ...); a port not named keeps its own name. Declared in the model file
    /// (`forward { labels "label_B" }`), as checkpoint keys are.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub entry_names: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenizerKind {
    Vae,
    Vq,
    Msvq,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenizerSpec {
    /// The definition it is based on, if any (`kl16`).
    pub name: Option<String>,
    pub kind: TokenizerKind,
    pub channels: u64,
    pub ch_mult: Vec<u64>,
    pub res_blocks: u64,
    pub z_channels: u64,
    /// Channels of one token: latent channels (VAE) or code dimension (VQ).
    pub token_channels: u64,
    pub vocab: Option<u64>,
    pub stride: u64,
    pub l2_norm: bool,
    pub latent_scale: f64,
    pub phi: Option<PhiSpec>,
    pub params: Vec<ParamGroupSpec>,
}

/// VAR's shared phi convs: phi(x) = (1 - mix) x + mix conv3x3(x), conv `map[k]` at scale k.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PhiSpec {
    pub convs: u64,
    pub map: Vec<u64>,
    pub mix: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Conditioning {
    ClassToken,
    AdalnClass,
    AdalnTimeClass,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttnMask {
    Full,
    Causal,
    BlockCausal,
    EarlierPlusSelf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PositionEncoding {
    Learned,
    Sincos2d,
    Rope2d,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QkNorm {
    None,
    L2,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackboneSpec {
    pub name: Option<String>,
    pub depth: u64,
    pub width: u64,
    pub heads: u64,
    pub head_dim: u64,
    pub condition: Conditioning,
    pub cond_tokens: u64,
    pub attn: AttnMask,
    pub positions: PositionEncoding,
    pub rope_base: f64,
    pub qk_norm: QkNorm,
    pub qk_scale_max: f64,
    pub patch: u64,
    /// Sinusoidal frequencies of the timestep embedding (`adaln_time_class`).
    pub time_embed: u64,
    pub block: BlockSpec,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormKind {
    Layernorm,
    Rmsnorm,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Modulation {
    None,
    Adaln,
}

/// One chunk of the adaLN modulation (1 = attention branch, 2 = FFN branch).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdaChunk {
    Shift1,
    Scale1,
    Gate1,
    Shift2,
    Scale2,
    Gate2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FfnKind {
    Gelu,
    GeluTanh,
    Swiglu,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QkvBias {
    None,
    Qv,
    Full,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlockSpec {
    pub name: Option<String>,
    pub norm: NormKind,
    pub norm_eps: f64,
    pub norm_affine: bool,
    pub modulation: Modulation,
    pub adaln_order: Vec<AdaChunk>,
    pub ffn: FfnKind,
    pub mlp_ratio: f64,
    pub ffn_hidden: u64,
    pub qkv_bias: QkvBias,
    pub proj_bias: bool,
    pub ffn_bias: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadKind {
    Categorical,
    FlowMlp,
    FlowTransformer,
    DdContinuous,
    /// The backbone is itself the denoiser; a per-token linear maps it to the
    /// output channels (DiT's final layer).
    Linear,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeadSpec {
    pub name: Option<String>,
    pub kind: HeadKind,
    pub depth: Option<u64>,
    pub width: Option<u64>,
    pub heads: Option<u64>,
    pub time_embed: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    Discrete,
    Continuous,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Upsample {
    Nearest,
    Bilinear,
    Bicubic,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Renoise {
    None,
    Pyramid { gamma: f64 },
}

/// One step of the outer loop: the token grid it produces, its flow-time
/// segment (continuous tokens) and ODE/diffusion steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageSpec {
    pub grid: [u64; 2],
    pub tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub segment: Option<[f64; 2]>,
    pub steps: u64,
}

/// How the stages were given. A raster schedule is kept compact: its
/// `grid[0] * grid[1]` one-token stages are implied.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    Raster { grid: [u64; 2] },
    Stages(Vec<StageSpec>),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleSpec {
    pub tokens: TokenKind,
    pub layout: Layout,
    pub upsample: Upsample,
    pub renoise: Renoise,
}

impl ScheduleSpec {
    pub fn num_stages(&self) -> u64 {
        match &self.layout {
            Layout::Raster { grid } => grid[0] * grid[1],
            Layout::Stages(s) => s.len() as u64,
        }
    }
    /// Token positions over all stages.
    pub fn total_tokens(&self) -> u64 {
        match &self.layout {
            Layout::Raster { grid } => grid[0] * grid[1],
            Layout::Stages(s) => s.iter().map(|s| s.tokens).sum(),
        }
    }
    /// The grid of the last (finest) stage.
    pub fn final_grid(&self) -> [u64; 2] {
        match &self.layout {
            Layout::Raster { grid } => *grid,
            Layout::Stages(s) => s.last().map(|s| s.grid).unwrap_or([0, 0]),
        }
    }
    /// Every stage, a raster layout expanded.
    pub fn stages(&self) -> Vec<StageSpec> {
        match &self.layout {
            Layout::Raster { grid } => {
                (0..grid[0] * grid[1]).map(|_| StageSpec { grid: [1, 1], tokens: 1, segment: None, steps: 1 }).collect()
            }
            Layout::Stages(s) => s.clone(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CfgSchedule {
    Constant,
    Linear,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Solver {
    Euler,
    Heun,
    Ddpm,
    Ddim,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamplerSpec {
    pub name: Option<String>,
    pub cfg: f64,
    pub cfg_schedule: CfgSchedule,
    /// Guide only the first N output channels; `None` = all.
    pub cfg_channels: Option<u64>,
    pub top_k: u64,
    pub top_p: f64,
    pub temperature: f64,
    pub solver: Solver,
    pub learned_variance: bool,
    /// Linear beta schedule `[start, end]` (diffusion solvers).
    pub beta: [f64; 2],
    pub train_steps: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DistillSpec {
    pub name: Option<String>,
    pub steps: u64,
    /// Stages kept from the first step; the second step re-noises the rest
    /// with the same noise (VAR-d16: 5 teacher scales, LlamaGen: 80 tokens).
    pub split: u64,
    /// Stages taken as the argmax of the teacher head's logits; the rest come
    /// from the continuous head (defaults to `split`; LlamaGen-L: 130).
    pub greedy_prefix: u64,
}

/// A `params`/`buffers` group, evaluated: `count` copies (keys with `{var}`
/// replaced by `start..start+count`), each declaring the same tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParamGroupSpec {
    /// Which component declared it: `backbone`, `backbone.block`, `head`, ...
    pub owner: String,
    pub prefix: String,
    /// Values of outer loop variables this group was expanded for (a group
    /// whose shapes depend on a loop variable is expanded copy by copy).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub index: Vec<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub repeat: Option<RepeatSpec>,
    pub tensors: Vec<TensorSpec>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RepeatSpec {
    pub var: String,
    pub start: u64,
    pub count: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TensorSpec {
    /// What the tensor is for (`qkv`, `ffn_up`, ...): the lowering's handle.
    pub role: String,
    /// Key relative to the group's prefix, possibly with `{var}`.
    pub key: String,
    /// Written as text (`"[640, 32, 3, 3]"`) so snapshots show a tensor per line.
    #[serde(with = "shape_text")]
    pub shape: Vec<u64>,
}

mod shape_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(shape: &[u64], s: S) -> Result<S::Ok, S::Error> {
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        s.serialize_str(&format!("[{}]", dims.join(", ")))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
        let text = String::deserialize(d)?;
        let inner = text
            .trim()
            .strip_prefix('[')
            .and_then(|t| t.strip_suffix(']'))
            .ok_or_else(|| serde::de::Error::custom("a shape is written `[d0, d1, ...]`"))?;
        if inner.trim().is_empty() {
            return Ok(vec![]);
        }
        inner.split(',').map(|p| p.trim().parse::<u64>().map_err(serde::de::Error::custom)).collect()
    }
}

impl ParamGroupSpec {
    /// Full checkpoint keys with shapes, loop expanded.
    pub fn expand(&self) -> Vec<(String, Vec<u64>)> {
        let mut out = Vec::new();
        let copies: Vec<Option<u64>> = match &self.repeat {
            Some(r) => (r.start..r.start + r.count).map(Some).collect(),
            None => vec![None],
        };
        for i in copies {
            for t in &self.tensors {
                out.push((self.key(t, i), t.shape.clone()));
            }
        }
        out
    }
    /// The checkpoint key of tensor `t` in copy `copy` of a repeated group:
    /// the prefix, then the key with `{var}` replaced by the copy's index.
    /// The one home of key substitution.
    pub fn key(&self, t: &TensorSpec, copy: Option<u64>) -> String {
        let key = format!("{}{}", self.prefix, t.key);
        match (copy, &self.repeat) {
            (Some(i), Some(r)) => key.replace(&format!("{{{}}}", r.var), &i.to_string()),
            _ => key,
        }
    }
    /// Number of scalars in the group.
    pub fn numel(&self) -> u128 {
        let per: u128 = self.tensors.iter().map(|t| t.shape.iter().map(|&d| d as u128).product::<u128>()).sum();
        per * self.repeat.as_ref().map_or(1, |r| r.count as u128)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConstraintSpec {
    pub metric: String,
    pub op: String,
    pub bound: f64,
}

impl ModelSpec {
    /// Learned parameters of the generator (tokenizer excluded).
    pub fn param_count(&self) -> u128 {
        self.params.iter().map(ParamGroupSpec::numel).sum()
    }
    pub fn tokenizer_param_count(&self) -> u128 {
        self.tokenizer.params.iter().map(ParamGroupSpec::numel).sum()
    }
}
