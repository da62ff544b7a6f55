//! Weights: the tensors a model declares, by checkpoint key, as f32 host
//! tensors; seeded random initialisation, safetensors loading with a report
//! of every mismatch, atomic saving, and plain named-tensor files for the
//! CLI's inputs and outputs.
//!
//! # What a model declares
//! [`declared_tensors`] lists a [`ModelSpec`]'s tensors in declaration
//! (state-dict) order: the generator's `params`, the tokenizer's `params`
//! and the `buffers`. Parameters are required; buffers (masks, level indices,
//! zero biases) are allowed in a file but not required and never loaded: the
//! lowering computes them and the driver passes them as inputs.
//!
//! The tokenizer's encoder (the roles `enc_*`) is declared so that a released
//! tokenizer checkpoint is checked whole, but no program reads it yet (there is
//! no encode program): a checkpoint may leave the encoder out *as a whole*
//! ([`Weights::absent_encoder`] lists it, for a note). Once any encoder tensor
//! is in the file(s), every one is required, as any other parameter.
//!
//! # Random initialisation
//! [`Weights::random`] draws every declared parameter (generator and
//! tokenizer) so that a tiny random model gives varied, finite,
//! non-degenerate outputs through deep stacks. Each tensor is drawn from its
//! own stream, `SeededRng::new(seed).fork("weights").fork(key)`, so adding,
//! removing or reshaping one tensor leaves every other unchanged, and the
//! result does not depend on thread scheduling. By role ([`init_for`]):
//!
//! | roles | values | why |
//! |---|---|---|
//! | norm gains: `attn_norm`, `ffn_norm`, `final_norm`, `dec_norm1`, `dec_norm2`, `dec_attn_norm`, `dec_norm_out`, and the encoder's `enc_norm1`, `enc_norm2`, `enc_attn_norm`, `enc_norm_out` | 1 + 0.1·N(0,1) | near the identity (PyTorch's ones), yet not all equal |
//! | biases: every `*_bias` role, `q_bias`, `v_bias`, `k_bias` | 0.02·N(0,1) | small (PyTorch's zeros), yet visible in differential tests |
//! | linear and conv weights: `qkv`, `attn_out`, `ffn_up`, `ffn_gate`, `ffn_down`, `ada`, `head_ada`, `final_ada`, `out`, `final_out`, `time_in`, `time_out`, `cond_in`, `x_in`, `token_in`, `patch_embed`, `nd_proj`, `dd_out`, `quant_conv`, `post_quant_conv`, `phi_conv`, every `dec_*` and `enc_*` conv and attention projection | N(0, 1/fan_in), fan_in = product of all dims but the first (in features × kernel) | keeps activations at unit scale layer after layer (LeCun normal) |
//! | tables: `token_table`, `class_table`, `level_table`, `pos_start`, `pos_table`, `codebook`, `nd_table` | N(0,1) | unit-scale inputs; distinct classes, tokens and positions give clearly different activations (adaLN reads SiLU(class row)) |
//! | `qk_scale` (VAR `scale_mul_1H11`) | ln 4 + 0.1·N(0,1) | VAR initialises the log-scale to ln 4; the noise varies the heads |
//! | `dd_scale_shift` (DD's `scale_shift_table`) | N(0, 1/width), width = last dim | DD's (DiT's) `randn(2, C) / sqrt(C)` |
//! | buffer-only roles (`level_index`, `attn_mask`), should one be declared as a param | 0 | the neutral value |
//!
//! A role outside this table (impossible for a checked spec: roles are a
//! closed list) falls back to the linear rule for rank ≥ 2 and the bias rule
//! otherwise; a test keeps every role of [`ecarc_compiler::roles::ROLES`]
//! explicit. Values are `mean + std·z` in f32 with `z` from
//! [`SeededRng::normal`], identical on every platform.
//!
//! # Files
//! safetensors, memory-mapped. Parameters may be stored as F32, F16, BF16 or
//! F64 and are converted to f32. [`Weights::load`] reports every problem at
//! once in one [`RuntimeError::Weights`]: missing, unexpected (with the
//! missing declared key it most likely renames), mis-shaped, wrongly typed or
//! non-finite tensors, mis-shaped buffers, and whole groups stored under an
//! extra or a missing key prefix (one line for the group). A file that is
//! not valid safetensors gives [`RuntimeError::File`], never a panic. (As
//! with every memory-mapped reader, the file must not be truncated by another
//! process while it is being loaded.)
//!
//! Writes ([`Weights::save`], [`write_tensors`]) go to a temporary file in
//! the target's directory that is renamed over the target once complete: an
//! error or a crash leaves the old file (or none), never a partial one. They
//! are not fsynced (outputs can be regenerated).

use crate::backend::{Backend, Buffer};
use crate::error::{Result, RuntimeError};
use crate::rng::SeededRng;
use crate::tensor::{Data, HostTensor};
use ecarc_compiler::spec::Positions;
use ecarc_compiler::ModelSpec;
use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors, View};
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

/// Which list of the spec a declared tensor comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TensorKind {
    /// `spec.params`: a learned tensor of the generator.
    Param,
    /// `spec.tokenizer.params`: a learned tensor of the tokenizer.
    TokenizerParam,
    /// `spec.buffers`: allowed in a file, not required, never loaded.
    Buffer,
}

impl TensorKind {
    pub fn is_param(self) -> bool {
        self != TensorKind::Buffer
    }
}

impl Declared {
    /// A parameter of the tokenizer's encoder (a role `enc_*`): declared, imported
    /// and counted, but read by no program yet, so optional as a whole when loading.
    pub fn is_encoder(&self) -> bool {
        self.kind == TensorKind::TokenizerParam && self.role.starts_with("enc_")
    }
}

/// One tensor a model declares, loops expanded.
#[derive(Clone, Debug, PartialEq)]
pub struct Declared {
    /// Full checkpoint key.
    pub key: String,
    pub shape: Vec<usize>,
    /// What the tensor is for (see `compiler/src/roles.rs`).
    pub role: String,
    /// Which component declared it (`backbone.block`, `head`, ...).
    pub owner: String,
    pub kind: TensorKind,
}

/// Every tensor `spec` declares, in declaration order: generator params,
/// tokenizer params, then buffers.
pub fn declared_tensors(spec: &ModelSpec) -> Vec<Declared> {
    let lists = [
        (&spec.params, TensorKind::Param),
        (&spec.tokenizer.params, TensorKind::TokenizerParam),
        (&spec.buffers, TensorKind::Buffer),
    ];
    let mut out = Vec::new();
    for (groups, kind) in lists {
        for g in groups {
            // `expand` yields the group's tensors copy after copy, in declaration order.
            for ((key, shape), t) in g.expand().into_iter().zip(g.tensors.iter().cycle()) {
                out.push(Declared {
                    key,
                    shape: shape.iter().map(|&d| d as usize).collect(),
                    role: t.role.clone(),
                    owner: g.owner.clone(),
                    kind,
                });
            }
        }
    }
    out
}

/// How a parameter is initialised: `mean + std * N(0, 1)` (`std == 0`: the constant `mean`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Init {
    pub mean: f32,
    pub std: f32,
}

const NORM_GAINS: &[&str] = &[
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
const TABLES: &[&str] =
    &["token_table", "class_table", "level_table", "pos_start", "pos_table", "codebook", "nd_table"];
const LINEARS: &[&str] = &[
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
const BIAS_STD: f32 = 0.02;

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
fn init_or_fallback(role: &str, shape: &[usize]) -> Init {
    init_for(role, shape).unwrap_or_else(|| {
        if shape.len() >= 2 {
            init_for("qkv", shape).expect("qkv has a rule")
        } else {
            Init { mean: 0.0, std: BIAS_STD }
        }
    })
}

/// A model's parameters by checkpoint key (f32 host tensors), and where they came from.
#[derive(Clone)]
pub struct Weights {
    tensors: BTreeMap<String, HostTensor>,
    buffers_in_file: BTreeSet<String>,
    absent_encoder: Vec<String>,
    /// Declared parameters absent because no program of the run reads them.
    absent_unused: Vec<String>,
    source: String,
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Weights({}: {} tensors, {} values)", self.source, self.len(), self.numel())
    }
}

impl Weights {
    /// Seeded random values for every declared parameter of `spec` (generator
    /// and tokenizer; not the buffers), by role as in the module docs.
    /// Allocates 4 bytes per parameter (`spec.param_count()` plus
    /// `spec.tokenizer_param_count()`).
    pub fn random(spec: &ModelSpec, seed: u64) -> Weights {
        let root = SeededRng::new(seed).fork("weights");
        let params: Vec<Declared> = declared_tensors(spec).into_iter().filter(|d| d.kind.is_param()).collect();
        let tensors = params
            .par_iter()
            .map(|d| {
                // A fixed sin-cos position table is not learned: it is the table.
                if d.role == "pos_table" && spec.backbone.positions == Positions::Sincos2d {
                    let grid = spec.schedule.final_grid();
                    let width = *d.shape.last().unwrap_or(&0);
                    return (d.key.clone(), sincos_2d(width, grid[0] as usize, grid[1] as usize, d.shape.clone()));
                }
                let init = init_or_fallback(&d.role, &d.shape);
                let n: usize = d.shape.iter().product();
                let data = if init.std == 0.0 {
                    vec![init.mean; n]
                } else {
                    let mut v = root.fork(&d.key).normal(n);
                    v.iter_mut().for_each(|x| *x = init.mean + init.std * *x);
                    v
                };
                (d.key.clone(), HostTensor::f32(d.shape.clone(), data))
            })
            .collect();
        Weights {
            tensors,
            buffers_in_file: BTreeSet::new(),
            absent_encoder: Vec::new(),
            absent_unused: Vec::new(),
            source: format!("random (seed {seed})"),
        }
    }

    /// Load `path` (safetensors) and match it against `spec`'s declared
    /// tensors; see [`Weights::load_files`].
    pub fn load(path: &Path, spec: &ModelSpec) -> Result<Weights> {
        Weights::load_files(&[path], spec)
    }

    /// Load several safetensors files as one checkpoint (e.g. a generator
    /// and its tokenizer, released separately). Every declared parameter
    /// must be in exactly one file with its declared shape and a float dtype
    /// and finite values, except that the tokenizer's encoder (roles `enc_*`)
    /// may be absent as a whole ([`Weights::absent_encoder`]); declared
    /// buffers may be present (with their declared shape) or absent; any
    /// other key is unexpected. All problems
    /// come back together in one [`RuntimeError::Weights`]; an unreadable or
    /// malformed file gives [`RuntimeError::File`].
    pub fn load_files(paths: &[&Path], spec: &ModelSpec) -> Result<Weights> {
        Weights::load_files_for(paths, spec, None)
    }

    /// [`Weights::load_files`] for a run that reads only the parameters in
    /// `needed` (the programs of its plans): any other declared parameter may
    /// be absent (listed by [`Weights::absent_unused`]), so a generator
    /// checkpoint alone runs a forward, and a tokenizer alone decodes.
    pub fn load_files_for(paths: &[&Path], spec: &ModelSpec, needed: Option<&BTreeSet<String>>) -> Result<Weights> {
        let maps: Vec<memmap2::Mmap> = paths.iter().map(|p| map_file(p)).collect::<Result<_>>()?;
        let files: Vec<(String, &[u8])> =
            paths.iter().zip(&maps).map(|(p, m)| (p.display().to_string(), &m[..])).collect();
        Weights::from_bytes_for(&files, spec, needed)
    }

    /// [`Weights::load_files`] on files already in memory: `(name, bytes)`.
    pub fn from_bytes(files: &[(String, &[u8])], spec: &ModelSpec) -> Result<Weights> {
        Weights::from_bytes_for(files, spec, None)
    }

    fn from_bytes_for(
        files: &[(String, &[u8])],
        spec: &ModelSpec,
        needed: Option<&BTreeSet<String>>,
    ) -> Result<Weights> {
        let label = files.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(" + ");
        let mut parsed = Vec::with_capacity(files.len());
        for (name, bytes) in files {
            parsed.push(SafeTensors::deserialize(bytes).map_err(|e| invalid_file(name, e))?);
        }
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        let stored = parsed.iter().map(|st| st.iter().map(|(k, v)| (k.to_string(), Stored::View(v))));
        Weights::from_stored(label, &names, stored, spec, needed)
    }

    /// Match named tensors from any source (a PyTorch checkpoint read by
    /// [`crate::checkpoint`], several of them combined) against `spec`'s
    /// declared tensors, with exactly the checks and messages of
    /// [`Weights::load_files`]: `sources` are `(name, tensors)`, where a
    /// name is what messages call the source (a file name).
    pub fn from_tensors(sources: &[(String, BTreeMap<String, HostTensor>)], spec: &ModelSpec) -> Result<Weights> {
        let label = sources.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(" + ");
        let names: Vec<&str> = sources.iter().map(|(n, _)| n.as_str()).collect();
        let stored = sources.iter().map(|(_, m)| m.iter().map(|(k, t)| (k.clone(), Stored::Host(t))));
        Weights::from_stored(label, &names, stored, spec, None)
    }

    /// The matching behind [`Weights::from_bytes`] and [`Weights::from_tensors`].
    fn from_stored<'a, S, I>(
        label: String,
        names: &[&str],
        sources: S,
        spec: &ModelSpec,
        needed: Option<&BTreeSet<String>>,
    ) -> Result<Weights>
    where
        S: Iterator<Item = I>,
        I: Iterator<Item = (String, Stored<'a>)>,
    {
        // Every stored tensor, by key; a key in two files is a problem.
        let mut problems = Vec::new();
        let mut found: BTreeMap<String, (usize, Stored<'a>)> = BTreeMap::new();
        for (i, source) in sources.enumerate() {
            for (key, view) in source {
                if let Some((j, _)) = found.get(&key) {
                    problems.push(format!("`{key}` is stored in both {} and {}", names[*j], names[i]));
                } else {
                    found.insert(key, (i, view));
                }
            }
        }
        let declared = declared_tensors(spec);
        let by_key: HashMap<&str, &Declared> = declared.iter().map(|d| (d.key.as_str(), d)).collect();
        // The encoder is optional as a whole: absent when none of its tensors is stored.
        let encoder_absent = !declared.iter().any(|d| d.is_encoder() && found.contains_key(&d.key));
        // A parameter no program of the run reads may be absent.
        let unused = |d: &Declared| needed.is_some_and(|n| !n.contains(&d.key));
        let mut missing: Vec<&Declared> =
            declared.iter().filter(|d| d.kind.is_param() && !found.contains_key(&d.key) && !unused(d)).collect();
        let mut unexpected: Vec<&str> = found.keys().map(String::as_str).filter(|k| !by_key.contains_key(k)).collect();
        let shape_of = |k: &str| found[k].1.shape().to_vec();
        let in_file = |k: &str| if names.len() > 1 { format!(" (in {})", names[found[k].0]) } else { String::new() };

        // Whole groups under a wrong prefix: one line each.
        problems.extend(collapse_prefixes(&mut missing, &mut unexpected));
        // Renames: an unexpected key close to a missing one.
        let renames = pair_renames(&missing, &unexpected, &shape_of);
        let renamed: BTreeMap<&str, &str> = renames.iter().map(|&(m, u)| (m, u)).collect();
        let renamed_to: BTreeSet<&str> = renames.iter().map(|&(_, u)| u).collect();
        let missing_keys: BTreeSet<&str> = missing.iter().map(|d| d.key.as_str()).collect();

        let mut loadable = Vec::new();
        let mut buffers_in_file = BTreeSet::new();
        let mut absent_encoder = Vec::new();
        let mut absent_unused = Vec::new();
        for d in &declared {
            let key = d.key.as_str();
            let Some((_, view)) = found.get(key) else {
                if d.kind.is_param() && unused(d) {
                    absent_unused.push(d.key.clone());
                    continue;
                }
                if !missing_keys.contains(key) {
                    continue; // an absent buffer, or part of a collapsed prefix group
                }
                if encoder_absent && d.is_encoder() && !renamed.contains_key(key) {
                    absent_encoder.push(d.key.clone());
                    continue;
                }
                problems.push(match renamed.get(key) {
                    Some(u) => format!(
                        "unexpected `{u}` {:?}{}: did you mean `{key}` {:?}, which is missing?",
                        shape_of(u),
                        in_file(u),
                        d.shape
                    ),
                    None => format!("missing `{key}` {:?} ({} of {})", d.shape, d.role, d.owner),
                });
                continue;
            };
            let shape_ok = view.shape() == d.shape.as_slice();
            if !shape_ok {
                let what = if d.kind.is_param() { "" } else { "buffer " };
                let hint = shape_hint(view.shape(), &d.shape);
                let buffer_note =
                    if d.kind.is_param() { "" } else { " (buffers may be left out, but must match when present)" };
                problems.push(format!(
                    "{what}`{key}` has shape {:?}, expected {:?}{hint}{buffer_note}",
                    view.shape(),
                    d.shape
                ));
            }
            if !d.kind.is_param() {
                buffers_in_file.insert(d.key.clone());
                continue;
            }
            if !view.is_float() {
                problems.push(format!(
                    "`{key}` has dtype {}, expected a float type (F32, F16, BF16 or F64)",
                    view.dtype_name()
                ));
            } else if shape_ok {
                loadable.push((d, view));
            }
        }
        for u in unexpected.iter().filter(|u| !renamed_to.contains(*u)) {
            problems.push(format!(
                "unexpected `{u}` {:?}{}: the model declares no such tensor",
                shape_of(u),
                in_file(u)
            ));
        }
        if !problems.is_empty() {
            return Err(RuntimeError::Weights { file: label, problems });
        }

        // Convert (in parallel) and check that every value is finite.
        let converted: Vec<(String, Result<HostTensor, String>)> = loadable
            .par_iter()
            .map(|(d, view)| {
                let data = view.to_f32().expect("float dtype checked above");
                let bad = data.iter().filter(|x| !x.is_finite()).count();
                let result = if bad == 0 {
                    Ok(HostTensor::f32(d.shape.clone(), data))
                } else {
                    let first = data.iter().position(|x| !x.is_finite()).unwrap_or(0);
                    Err(format!("`{}` has {bad} non-finite value(s) (the first at flat index {first})", d.key))
                };
                (d.key.clone(), result)
            })
            .collect();
        let mut tensors = BTreeMap::new();
        for (key, r) in converted {
            match r {
                Ok(t) => {
                    tensors.insert(key, t);
                }
                Err(p) => problems.push(p),
            }
        }
        if !problems.is_empty() {
            return Err(RuntimeError::Weights { file: label, problems });
        }
        Ok(Weights { tensors, buffers_in_file, absent_encoder, absent_unused, source: label })
    }

    /// Write every tensor as F32 safetensors, keys sorted, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::output::write_file(path, |tmp| self.save_to(tmp))
    }

    /// [`Weights::save`] into the temporary file of an [`crate::output::Outputs`] plan.
    pub fn save_to(&self, tmp: &Path) -> std::result::Result<(), String> {
        let named: Vec<(&str, &HostTensor)> = self.tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
        save_tensors(tmp, &named)
    }

    /// Upload every tensor to `backend`, by key (what [`crate::Args::params`] takes).
    pub fn upload(&self, backend: &dyn Backend) -> Result<HashMap<String, Buffer>> {
        self.tensors.iter().map(|(k, t)| Ok((k.clone(), backend.upload(t)?))).collect()
    }

    pub fn get(&self, key: &str) -> Option<&HostTensor> {
        self.tensors.get(key)
    }
    pub fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }
    /// Keys and tensors, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &HostTensor)> {
        self.tensors.iter().map(|(k, t)| (k.as_str(), t))
    }
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }
    pub fn len(&self) -> usize {
        self.tensors.len()
    }
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
    /// Number of scalars held.
    pub fn numel(&self) -> usize {
        self.tensors.values().map(HostTensor::numel).sum()
    }
    /// Declared buffers that the loaded file(s) held (checked, not loaded).
    pub fn buffers_in_file(&self) -> impl Iterator<Item = &str> {
        self.buffers_in_file.iter().map(String::as_str)
    }
    /// Declared parameters the checkpoint leaves out that the run does not read.
    pub fn absent_unused(&self) -> &[String] {
        &self.absent_unused
    }
    /// The tokenizer encoder's declared tensors (roles `enc_*`), in
    /// declaration order, when the loaded file(s) held none of them: no
    /// program reads the encoder, so a checkpoint of the decoder alone loads
    /// (callers say so in a note). Empty when the encoder was loaded, for
    /// random weights, and for a model that declares no encoder.
    pub fn absent_encoder(&self) -> &[String] {
        &self.absent_encoder
    }
    /// `random (seed S)` or the file name(s) the weights were loaded from.
    pub fn source(&self) -> &str {
        &self.source
    }
    /// Replace or add one tensor (tests, hand-made weights). Panics if it is
    /// not f32: the weights hold f32 only.
    pub fn insert(&mut self, key: impl Into<String>, t: HostTensor) -> Option<HostTensor> {
        assert!(t.as_f32().is_some(), "weights are f32 tensors");
        self.tensors.insert(key.into(), t)
    }
    /// Remove one tensor.
    pub fn remove(&mut self, key: &str) -> Option<HostTensor> {
        self.tensors.remove(key)
    }
}

/// Write named tensors to a safetensors file atomically (through
/// [`crate::output`]): f32 as F32, i64 as I64. Names must be distinct.
pub fn write_tensors(path: &Path, tensors: &[(&str, &HostTensor)]) -> Result<()> {
    crate::output::write_file(path, |tmp| save_tensors(tmp, tensors))
}

/// Write named tensors as safetensors to `tmp`, a temporary file of an
/// [`crate::output::Outputs`] plan (the CLI's `--save-tensors`, `forward -o`,
/// `dd-pairs`, `init-weights`). Names must be distinct.
pub fn save_tensors(tmp: &Path, tensors: &[(&str, &HostTensor)]) -> std::result::Result<(), String> {
    let mut seen = BTreeSet::new();
    for (name, _) in tensors {
        if !seen.insert(*name) {
            return Err(format!("tensor `{name}` is given twice"));
        }
    }
    let views = tensors.iter().map(|(name, t)| (*name, TensorRef(t)));
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(meta), tmp).map_err(|e| format!("cannot write safetensors: {e}"))
}

/// Read every tensor of a safetensors file (`--inputs`, `--tokens`): float
/// dtypes (F32, F16, BF16, F64) become f32, integer ones (I64, I32, I16, I8,
/// U32, U16, U8, BOOL; U64 when it fits) i64. Any other dtype, or a file that
/// is not valid safetensors, is a [`RuntimeError::File`].
pub fn read_tensors(path: &Path) -> Result<BTreeMap<String, HostTensor>> {
    let map = map_file(path)?;
    read_tensors_from_bytes(&path.display().to_string(), &map)
}

/// [`read_tensors`] for a run's input file (`decode --tokens`, `forward
/// --inputs`, `sample --noise`): a float tensor holding NaN or an infinity is
/// refused, naming the tensor, how many values and the first one's index.
pub fn read_input_tensors(path: &Path) -> Result<BTreeMap<String, HostTensor>> {
    let tensors = read_tensors(path)?;
    for (key, t) in &tensors {
        if let Some(why) = t.non_finite() {
            return Err(RuntimeError::File { path: path.display().to_string(), why: format!("tensor `{key}` {why}") });
        }
    }
    Ok(tensors)
}

/// [`read_tensors`] on a file already in memory (`name` is for messages).
pub fn read_tensors_from_bytes(name: &str, bytes: &[u8]) -> Result<BTreeMap<String, HostTensor>> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| invalid_file(name, e))?;
    let mut out = BTreeMap::new();
    for (key, view) in st.iter() {
        let shape = view.shape().to_vec();
        let t = if let Some(v) = to_f32(view.dtype(), view.data()) {
            HostTensor::f32(shape, v)
        } else if let Some(v) = to_i64(view.dtype(), view.data()) {
            let v = v.map_err(|why| RuntimeError::File { path: name.into(), why: format!("tensor `{key}`: {why}") })?;
            HostTensor::i64(shape, v)
        } else {
            return Err(RuntimeError::File {
                path: name.into(),
                why: format!(
                    "tensor `{key}` has dtype {:?}; expected a float (F32, F16, BF16, F64) or integer (I64, I32, ...) type",
                    view.dtype()
                ),
            });
        };
        out.insert(key.to_string(), t);
    }
    Ok(out)
}

fn map_file(path: &Path) -> Result<memmap2::Mmap> {
    let err = |why: String| RuntimeError::File { path: path.display().to_string(), why };
    let file = std::fs::File::open(path).map_err(|e| err(format!("cannot open: {e}")))?;
    let meta = file.metadata().map_err(|e| err(format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(err("not a regular file".into()));
    }
    // SAFETY: the map is read-only and dropped before returning to the caller
    // (the tensors are copied out); as with any mapped file, another process
    // truncating it meanwhile is outside what we can guard against.
    unsafe { memmap2::Mmap::map(&file) }.map_err(|e| err(format!("cannot map: {e}")))
}

fn invalid_file(name: &str, e: safetensors::SafeTensorError) -> RuntimeError {
    RuntimeError::File { path: name.into(), why: format!("not a valid safetensors file: {e}") }
}

fn is_float(d: Dtype) -> bool {
    matches!(d, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64)
}

/// Little-endian float data as f32; `None` for a non-float dtype. The byte
/// length was checked against the shape by the safetensors parser.
fn to_f32(dtype: Dtype, b: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(),
        Dtype::F16 => b.chunks_exact(2).map(|c| half::f16::from_le_bytes(c.try_into().unwrap()).to_f32()).collect(),
        Dtype::BF16 => b.chunks_exact(2).map(|c| half::bf16::from_le_bytes(c.try_into().unwrap()).to_f32()).collect(),
        Dtype::F64 => b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect(),
        _ => return None,
    })
}

/// Little-endian integer data as i64; `None` for a non-integer dtype.
fn to_i64(dtype: Dtype, b: &[u8]) -> Option<std::result::Result<Vec<i64>, String>> {
    Some(Ok(match dtype {
        Dtype::I64 => b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect(),
        Dtype::I32 => b.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64).collect(),
        Dtype::I16 => b.chunks_exact(2).map(|c| i16::from_le_bytes(c.try_into().unwrap()) as i64).collect(),
        Dtype::I8 => b.iter().map(|&x| x as i8 as i64).collect(),
        Dtype::U32 => b.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap()) as i64).collect(),
        Dtype::U16 => b.chunks_exact(2).map(|c| u16::from_le_bytes(c.try_into().unwrap()) as i64).collect(),
        Dtype::U8 | Dtype::BOOL => b.iter().map(|&x| x as i64).collect(),
        Dtype::U64 => {
            let v: std::result::Result<Vec<i64>, _> =
                b.chunks_exact(8).map(|c| i64::try_from(u64::from_le_bytes(c.try_into().unwrap()))).collect();
            return Some(v.map_err(|_| "a U64 value does not fit in i64".to_string()));
        }
        _ => return None,
    }))
}

/// A hint after a shape mismatch: a transposed matrix, or the same elements in another shape.
fn shape_hint(actual: &[usize], expected: &[usize]) -> &'static str {
    if actual.len() == 2 && expected.len() == 2 && actual[0] == expected[1] && actual[1] == expected[0] {
        " (transposed?)"
    } else if actual.iter().product::<usize>() == expected.iter().product::<usize>() {
        " (the same number of elements: reshape it when converting)"
    } else {
        ""
    }
}

/// Pairs at least this large of (missing `k`, unexpected `P + k`) (or the
/// reverse) are reported as one prefix problem.
const MIN_PREFIX_GROUP: usize = 3;

/// Find groups of missing keys stored under an extra prefix (`model.head.weight`
/// for `head.weight`) or without theirs, remove them from both lists and
/// return one problem per group.
fn collapse_prefixes(missing: &mut Vec<&Declared>, unexpected: &mut Vec<&str>) -> Vec<String> {
    let mut problems = Vec::new();
    loop {
        let miss: BTreeSet<&str> = missing.iter().map(|d| d.key.as_str()).collect();
        let unex: BTreeSet<&str> = unexpected.iter().copied().collect();
        // (prefix, extra?) -> [(missing, unexpected)]
        let mut groups: BTreeMap<(String, bool), Vec<(String, String)>> = BTreeMap::new();
        for &u in &unex {
            for (p, rest) in dot_prefixes(u) {
                if miss.contains(rest) {
                    groups.entry((p.to_string(), true)).or_default().push((rest.to_string(), u.to_string()));
                }
            }
        }
        for &m in &miss {
            for (p, rest) in dot_prefixes(m) {
                if unex.contains(rest) {
                    groups.entry((p.to_string(), false)).or_default().push((m.to_string(), rest.to_string()));
                }
            }
        }
        let Some(((prefix, extra), pairs)) =
            groups.into_iter().filter(|(_, v)| v.len() >= MIN_PREFIX_GROUP).max_by_key(|(_, v)| v.len())
        else {
            return problems;
        };
        let (m0, u0) = &pairs[0];
        problems.push(if extra {
            format!(
                "{} tensors are stored under an extra prefix `{prefix}` (e.g. `{u0}` for `{m0}`): strip it when converting the checkpoint",
                pairs.len()
            )
        } else {
            format!(
                "{} tensors are stored without their prefix `{prefix}` (e.g. `{u0}` for `{m0}`): add it when converting the checkpoint",
                pairs.len()
            )
        });
        let gone_m: BTreeSet<&str> = pairs.iter().map(|(m, _)| m.as_str()).collect();
        let gone_u: BTreeSet<&str> = pairs.iter().map(|(_, u)| u.as_str()).collect();
        missing.retain(|d| !gone_m.contains(d.key.as_str()));
        unexpected.retain(|u| !gone_u.contains(u));
    }
}

/// `(prefix, rest)` for every split of `key` just after a `.`.
fn dot_prefixes(key: &str) -> impl Iterator<Item = (&str, &str)> {
    key.match_indices('.').map(move |(i, _)| key.split_at(i + 1)).filter(|(_, rest)| !rest.is_empty())
}

/// Above this many (missing x unexpected) candidate pairs, a file is too far
/// from the model for rename suggestions to mean anything.
const MAX_RENAME_PAIRS: usize = 250_000;

/// Likely renames `(missing, unexpected)`: each unexpected key paired with at
/// most one missing key at a small edit distance (optimal string alignment,
/// at most a fifth of the longer key), closest first, equal shapes preferred.
fn pair_renames<'a>(
    missing: &[&'a Declared],
    unexpected: &[&'a str],
    shape_of: &dyn Fn(&str) -> Vec<usize>,
) -> Vec<(&'a str, &'a str)> {
    if missing.is_empty() || unexpected.is_empty() || missing.len() * unexpected.len() > MAX_RENAME_PAIRS {
        return vec![];
    }
    let mut candidates = Vec::new();
    for &u in unexpected {
        let ushape = shape_of(u);
        for m in missing {
            let longest = u.len().max(m.key.len());
            let limit = (longest / 5).max(1);
            if u.len().abs_diff(m.key.len()) > limit {
                continue;
            }
            let d = strsim::osa_distance(u, &m.key);
            if d <= limit {
                candidates.push((d, ushape != m.shape, m.key.as_str(), u));
            }
        }
    }
    candidates.sort();
    let (mut used_m, mut used_u) = (BTreeSet::new(), BTreeSet::new());
    let mut out = Vec::new();
    for (_, _, m, u) in candidates {
        if !used_m.contains(m) && !used_u.contains(u) {
            used_m.insert(m);
            used_u.insert(u);
            out.push((m, u));
        }
    }
    out
}

/// A tensor found in a source, before matching: a safetensors view (not yet
/// converted) or a host tensor (from a PyTorch checkpoint).
enum Stored<'a> {
    View(safetensors::tensor::TensorView<'a>),
    Host(&'a HostTensor),
}

impl Stored<'_> {
    fn shape(&self) -> &[usize] {
        match self {
            Stored::View(v) => v.shape(),
            Stored::Host(t) => &t.shape,
        }
    }
    fn is_float(&self) -> bool {
        match self {
            Stored::View(v) => is_float(v.dtype()),
            Stored::Host(t) => t.as_f32().is_some(),
        }
    }
    /// The dtype as safetensors names it (`F32`, `I64`, ...).
    fn dtype_name(&self) -> String {
        match self {
            Stored::View(v) => format!("{:?}", v.dtype()),
            Stored::Host(t) => format!("{:?}", TensorRef(t).dtype()),
        }
    }
    /// The values as f32; `None` for an integer tensor.
    fn to_f32(&self) -> Option<Vec<f32>> {
        match self {
            Stored::View(v) => to_f32(v.dtype(), v.data()),
            Stored::Host(t) => t.as_f32().map(<[f32]>::to_vec),
        }
    }
}

/// A host tensor as a safetensors view (little-endian bytes, made on demand).
struct TensorRef<'a>(&'a HostTensor);

impl View for TensorRef<'_> {
    fn dtype(&self) -> Dtype {
        match self.0.data {
            Data::F32(_) => Dtype::F32,
            Data::I64(_) => Dtype::I64,
        }
    }
    fn shape(&self) -> &[usize] {
        &self.0.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(match &self.0.data {
            Data::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        })
    }
    fn data_len(&self) -> usize {
        self.0.bytes()
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use ecarc_compiler::session::{check_paths, Outcome, Override};
    use ecarc_compiler::spec::{ParamGroupSpec, RepeatSpec, TensorSpec};
    use std::path::PathBuf;

    const TOKENIZER: [&str; 2] = ["tokenizer.channels=32", "tokenizer.z_channels=8"];
    const SMALL: [&str; 3] = ["backbone.depth=1", "backbone.width=64", "backbone.heads=4"];

    fn spec_of(model: &str, sets: &[&str]) -> ModelSpec {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models").join(format!("{model}.ecar"));
        let sets: Vec<Override> = sets.iter().chain(&TOKENIZER).map(|s| s.parse().expect("valid --set")).collect();
        let s = check_paths(&[&path], &sets);
        assert!(!s.has_errors(), "{model} does not check:\n{}", s.render_diags());
        match s.models.into_iter().next().map(|m| m.outcome) {
            Some(Outcome::Model(spec)) => *spec,
            other => panic!("{model}: expected one model, got {other:?}"),
        }
    }

    /// Tiny variants of real models (well under a million values each).
    fn tiny_models() -> Vec<(&'static str, ModelSpec)> {
        let small = |extra: &[&'static str]| [&SMALL[..], extra].concat();
        vec![
            ("var_d16", spec_of("var_d16", &["backbone.depth=1"])),
            ("var_d16_dd", spec_of("var_d16_dd", &["backbone.depth=1"])),
            ("llamagen_b", spec_of("llamagen_b", &small(&["tokenizer.vocab=256"]))),
            ("llamagen_b_dd", spec_of("llamagen_b_dd", &small(&["tokenizer.vocab=256"]))),
            ("dit_s2", spec_of("dit_s2", &small(&[]))),
            ("ecar_b", spec_of("ecar_b", &small(&["head.width=64", "head.depth=1"]))),
        ]
    }

    fn tiny_var() -> ModelSpec {
        spec_of("var_d16", &["backbone.depth=1"])
    }

    /// Serialise named tensors as `write_tensors` does, in memory.
    fn bytes_of(tensors: &[(&str, &HostTensor)]) -> Vec<u8> {
        safetensors::serialize(tensors.iter().map(|(n, t)| (*n, TensorRef(t))), None).unwrap()
    }

    fn bytes_of_weights(w: &Weights) -> Vec<u8> {
        bytes_of(&w.iter().collect::<Vec<_>>())
    }

    fn load_bytes(bytes: &[u8], spec: &ModelSpec) -> Result<Weights> {
        Weights::from_bytes(&[("w.safetensors".to_string(), bytes)], spec)
    }

    fn problems(r: Result<Weights>) -> Vec<String> {
        match r {
            Err(RuntimeError::Weights { file, problems }) => {
                assert_eq!(file, "w.safetensors");
                problems
            }
            other => panic!("expected a weights error, got {other:?}"),
        }
    }

    fn assert_same(a: &Weights, b: &Weights) {
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (k, t) in a.iter() {
            assert!(b.get(k) == Some(t), "`{k}` differs");
        }
    }

    #[test]
    fn every_role_has_an_init_rule() {
        for (role, _) in ecarc_compiler::roles::ROLES {
            assert!(init_for(role, &[8, 4]).is_some(), "role `{role}` has no initialisation rule: add it to the table");
        }
    }

    #[test]
    fn random_covers_exactly_the_declared_params() {
        for (name, spec) in tiny_models() {
            let w = Weights::random(&spec, 0);
            let declared = declared_tensors(&spec);
            let params: BTreeMap<&str, &Vec<usize>> =
                declared.iter().filter(|d| d.kind.is_param()).map(|d| (d.key.as_str(), &d.shape)).collect();
            assert_eq!(w.keys().collect::<Vec<_>>(), params.keys().copied().collect::<Vec<_>>(), "{name}");
            for (k, t) in w.iter() {
                assert_eq!(&t.shape, params[k], "{name}: `{k}`");
            }
            assert!(declared.iter().filter(|d| !d.kind.is_param()).all(|d| !w.contains(&d.key)), "{name}: a buffer");
            assert_eq!(w.numel() as u128, spec.param_count() + spec.tokenizer_param_count(), "{name}");
            // Keys are unique across generator, tokenizer and buffers.
            let keys: BTreeSet<&str> = declared.iter().map(|d| d.key.as_str()).collect();
            assert_eq!(keys.len(), declared.len(), "{name}: a key declared twice");
        }
    }

    #[test]
    fn random_is_deterministic_and_keyed() {
        let spec = tiny_var();
        let (a, b, c) = (Weights::random(&spec, 5), Weights::random(&spec, 5), Weights::random(&spec, 6));
        assert_same(&a, &b);
        assert_eq!(a.source(), "random (seed 5)");
        for (k, t) in a.iter() {
            let varies = init_for(&declared_role(&spec, k), &t.shape).unwrap().std > 0.0;
            assert_eq!(c.get(k) != Some(t), varies, "`{k}`: another seed should give other values");
        }
        // Each tensor has its own stream: one more layer changes no existing tensor.
        let one = Weights::random(&spec_of("llamagen_b", &[&SMALL[..], &["tokenizer.vocab=256"]].concat()), 1);
        let two = Weights::random(
            &spec_of(
                "llamagen_b",
                &["backbone.depth=2", "backbone.width=64", "backbone.heads=4", "tokenizer.vocab=256"],
            ),
            1,
        );
        assert!(two.len() > one.len());
        for (k, t) in one.iter() {
            assert!(two.get(k) == Some(t), "`{k}` changed when a layer was added");
        }
    }

    fn declared_role(spec: &ModelSpec, key: &str) -> String {
        declared_tensors(spec).into_iter().find(|d| d.key == key).unwrap().role
    }

    #[test]
    fn random_values_follow_the_table() {
        for (name, spec) in tiny_models() {
            let w = Weights::random(&spec, 11);
            for d in declared_tensors(&spec).iter().filter(|d| d.kind.is_param()) {
                let v = w.get(&d.key).unwrap().as_f32().unwrap();
                assert!(v.iter().all(|x| x.is_finite()), "{name}: `{}` not finite", d.key);
                if d.role == "pos_table" && spec.backbone.positions == Positions::Sincos2d {
                    // The fixed table itself, not a random draw.
                    let g = spec.schedule.final_grid();
                    let want = sincos_2d(d.shape[2], g[0] as usize, g[1] as usize, d.shape.clone());
                    assert_eq!(w.get(&d.key), Some(&want), "{name}");
                    continue;
                }
                let init = init_for(&d.role, &d.shape).unwrap();
                let n = v.len() as f64;
                let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
                let std = (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
                if init.std == 0.0 {
                    assert!(v.iter().all(|&x| x == init.mean), "{name}: `{}`", d.key);
                    continue;
                }
                if v.len() > 1 {
                    assert!(std > 0.0, "{name}: `{}` is constant", d.key);
                }
                if v.len() >= 1000 {
                    let (want_mean, want_std) = (init.mean as f64, init.std as f64);
                    assert!((std / want_std - 1.0).abs() < 0.1, "{name}: `{}` std {std}, want {want_std}", d.key);
                    assert!((mean - want_mean).abs() < 5.0 * want_std / n.sqrt(), "{name}: `{}` mean {mean}", d.key);
                }
            }
        }
    }

    #[test]
    fn init_table_examples() {
        let shape = [6144, 1024];
        assert_eq!(init_for("ada", &shape), Some(Init { mean: 0.0, std: 1.0 / 32.0 }));
        assert_eq!(init_for("dec_conv1", &[128, 64, 3, 3]), Some(Init { mean: 0.0, std: 1.0 / 24.0 }));
        assert_eq!(init_for("enc_downsample", &[64, 64, 3, 3]), Some(Init { mean: 0.0, std: 1.0 / 24.0 }));
        assert_eq!(init_for("enc_attn_norm", &[64]), Some(Init { mean: 1.0, std: 0.1 }));
        assert_eq!(init_for("enc_conv_out_bias", &[32]), Some(Init { mean: 0.0, std: 0.02 }));
        assert_eq!(init_for("ffn_norm", &[64]), Some(Init { mean: 1.0, std: 0.1 }));
        assert_eq!(init_for("q_bias", &[64]), Some(Init { mean: 0.0, std: 0.02 }));
        assert_eq!(init_for("class_table", &[1001, 64]), Some(Init { mean: 0.0, std: 1.0 }));
        assert_eq!(init_for("qk_scale", &[1, 16, 1, 1]), Some(Init { mean: 4f32.ln(), std: 0.1 }));
        assert_eq!(init_for("dd_scale_shift", &[2, 64]), Some(Init { mean: 0.0, std: 0.125 }));
        assert_eq!(init_for("no_such_role", &[2, 64]), None);
        assert_eq!(init_or_fallback("no_such_role", &[2, 64]), Init { mean: 0.0, std: 0.125 });
        assert_eq!(init_or_fallback("no_such_role", &[64]), Init { mean: 0.0, std: 0.02 });
    }

    #[test]
    fn save_then_load_is_identical() {
        let spec = tiny_var();
        let w = Weights::random(&spec, 3);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.safetensors");
        w.save(&path).unwrap();
        let back = Weights::load(&path, &spec).unwrap();
        assert_same(&w, &back);
        assert_eq!(back.source(), path.display().to_string());
        assert_eq!(back.buffers_in_file().count(), 0);
        // Keys are stored sorted, and the temporary file is gone.
        let bytes = std::fs::read(&path).unwrap();
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        let order = meta.offset_keys();
        assert!(order.windows(2).all(|p| p[0] < p[1]));
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["tiny.safetensors"]);
        // Saving again replaces the file.
        Weights::random(&spec, 4).save(&path).unwrap();
        assert_same(&Weights::load(&path, &spec).unwrap(), &Weights::random(&spec, 4));
    }

    #[test]
    fn one_problem_per_mistake() {
        let spec = tiny_var();
        let w = Weights::random(&spec, 0);
        let check = |edit: &dyn Fn(&mut Weights), want: &[&str]| {
            let mut v = w.clone();
            edit(&mut v);
            assert_eq!(problems(load_bytes(&bytes_of_weights(&v), &spec)), want);
        };
        let proj = "blocks.0.attn.proj.weight";
        check(
            &|v| drop(v.remove(proj)),
            &["missing `blocks.0.attn.proj.weight` [64, 64] (attn_out of backbone.block)"],
        );
        check(
            &|v| {
                let t = v.remove(proj).unwrap();
                v.insert("blocks.0.attn.proj.weigth", t);
            },
            &["unexpected `blocks.0.attn.proj.weigth` [64, 64]: did you mean `blocks.0.attn.proj.weight` [64, 64], which is missing?"],
        );
        check(
            &|v| drop(v.insert("head.weight", HostTensor::zeros(ecarc_compiler::ir::DType::F32, vec![4096, 32]))),
            &["`head.weight` has shape [4096, 32], expected [4096, 64]"],
        );
        check(
            &|v| drop(v.insert("head.weight", HostTensor::zeros(ecarc_compiler::ir::DType::F32, vec![64, 4096]))),
            &["`head.weight` has shape [64, 4096], expected [4096, 64] (transposed?)"],
        );
        check(
            &|v| drop(v.insert("pos_start", HostTensor::zeros(ecarc_compiler::ir::DType::F32, vec![64]))),
            &["`pos_start` has shape [64], expected [1, 1, 64] (the same number of elements: reshape it when converting)"],
        );
        check(
            &|v| drop(v.insert("blocks.1.attn.proj.weight", v.get(proj).unwrap().clone())),
            &["unexpected `blocks.1.attn.proj.weight` [64, 64]: the model declares no such tensor"],
        );
        check(
            &|v| v.tensors.get_mut("head.bias").unwrap().as_f32_mut().unwrap()[7] = f32::NAN,
            &["`head.bias` has 1 non-finite value(s) (the first at flat index 7)"],
        );
        // Several mistakes at once: every one, in declaration order, then the unexpected ones.
        check(
            &|v| {
                v.remove("pos_start");
                let t = v.remove(proj).unwrap();
                v.insert("blocks.0.attn.proj.weigth", t);
                v.insert("head.bias", HostTensor::zeros(ecarc_compiler::ir::DType::F32, vec![4095]));
                v.insert("extra", HostTensor::scalar(1.0));
            },
            &[
                "missing `pos_start` [1, 1, 64] (pos_start of backbone)",
                "`head.bias` has shape [4095], expected [4096]",
                "unexpected `blocks.0.attn.proj.weigth` [64, 64]: did you mean `blocks.0.attn.proj.weight` [64, 64], which is missing?",
                "unexpected `extra` []: the model declares no such tensor",
            ],
        );
    }

    #[test]
    fn dtypes_and_buffers() {
        let spec = tiny_var();
        let w = Weights::random(&spec, 0);
        let mut named: Vec<(&str, &HostTensor)> = w.iter().collect();
        // A param stored as integers.
        let ints = HostTensor::i64(vec![4096], vec![0; 4096]);
        let mut bad = named.clone();
        bad.retain(|(k, _)| *k != "head.bias");
        bad.push(("head.bias", &ints));
        assert_eq!(
            problems(load_bytes(&bytes_of(&bad), &spec)),
            ["`head.bias` has dtype I64, expected a float type (F32, F16, BF16 or F64)"]
        );
        // Buffers may be present (any dtype), checked by shape, and are not loaded.
        let levels = HostTensor::i64(vec![1, 680], vec![0; 680]);
        let zero_k = HostTensor::f32(vec![64], vec![0.0; 64]);
        named.push(("lvl_1L", &levels));
        named.push(("blocks.0.attn.zero_k_bias", &zero_k));
        let loaded = load_bytes(&bytes_of(&named), &spec).unwrap();
        assert_same(&loaded, &w);
        assert_eq!(loaded.buffers_in_file().collect::<Vec<_>>(), ["blocks.0.attn.zero_k_bias", "lvl_1L"]);
        let short = HostTensor::i64(vec![1, 600], vec![0; 600]);
        named.retain(|(k, _)| *k != "lvl_1L");
        named.push(("lvl_1L", &short));
        assert_eq!(
            problems(load_bytes(&bytes_of(&named), &spec)),
            ["buffer `lvl_1L` has shape [1, 600], expected [1, 680] (buffers may be left out, but must match when present)"]
        );
    }

    /// A stored tensor of any dtype.
    struct Raw {
        dtype: Dtype,
        shape: Vec<usize>,
        bytes: Vec<u8>,
    }
    impl View for &Raw {
        fn dtype(&self) -> Dtype {
            self.dtype
        }
        fn shape(&self) -> &[usize] {
            &self.shape
        }
        fn data(&self) -> Cow<'_, [u8]> {
            Cow::Borrowed(&self.bytes)
        }
        fn data_len(&self) -> usize {
            self.bytes.len()
        }
    }

    #[test]
    fn half_precision_files_load_as_f32() {
        let spec = tiny_var();
        let w = Weights::random(&spec, 2);
        for dtype in [Dtype::F16, Dtype::BF16, Dtype::F64] {
            let raw: Vec<(String, Raw)> = w
                .iter()
                .map(|(k, t)| {
                    let v = t.as_f32().unwrap();
                    let bytes = match dtype {
                        Dtype::F16 => v.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect(),
                        Dtype::BF16 => v.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect(),
                        _ => v.iter().flat_map(|&x| (x as f64).to_le_bytes()).collect(),
                    };
                    (k.to_string(), Raw { dtype, shape: t.shape.clone(), bytes })
                })
                .collect();
            let bytes = safetensors::serialize(raw.iter().map(|(k, r)| (k.as_str(), r)), None).unwrap();
            let back = load_bytes(&bytes, &spec).unwrap();
            for (k, t) in w.iter() {
                let want: Vec<f32> = match dtype {
                    Dtype::F16 => t.as_f32().unwrap().iter().map(|&x| half::f16::from_f32(x).to_f32()).collect(),
                    Dtype::BF16 => t.as_f32().unwrap().iter().map(|&x| half::bf16::from_f32(x).to_f32()).collect(),
                    _ => t.as_f32().unwrap().to_vec(),
                };
                assert_eq!(back.get(k).unwrap().as_f32().unwrap(), want, "{dtype:?} `{k}`");
            }
        }
    }

    #[test]
    fn a_wrapped_checkpoint_is_one_problem() {
        let spec = tiny_var();
        let w = Weights::random(&spec, 0);
        let wrapped: Vec<(String, &HostTensor)> = w.iter().map(|(k, t)| (format!("model.{k}"), t)).collect();
        let named: Vec<(&str, &HostTensor)> = wrapped.iter().map(|(k, t)| (k.as_str(), *t)).collect();
        assert_eq!(
            problems(load_bytes(&bytes_of(&named), &spec)),
            [format!(
                "{} tensors are stored under an extra prefix `model.` (e.g. `model.blocks.0.ada_lin.1.bias` for `blocks.0.ada_lin.1.bias`): strip it when converting the checkpoint",
                w.len()
            )]
        );
    }

    #[test]
    fn generator_and_tokenizer_in_two_files() {
        let spec = tiny_var();
        let w = Weights::random(&spec, 9);
        let tok: BTreeSet<String> = declared_tensors(&spec)
            .into_iter()
            .filter(|d| d.kind == TensorKind::TokenizerParam)
            .map(|d| d.key)
            .collect();
        let (t, g): (Vec<_>, Vec<_>) = w.iter().partition(|(k, _)| tok.contains(*k));
        let (gb, tb) = (bytes_of(&g), bytes_of(&t));
        let both = Weights::from_bytes(&[("gen".into(), &gb), ("tok".into(), &tb)], &spec).unwrap();
        assert_same(&both, &w);
        assert_eq!(both.source(), "gen + tok");
        // Only the generator: every tokenizer tensor is missing, but the encoder (optional as a whole).
        let encoder = declared_tensors(&spec).iter().filter(|d| d.is_encoder()).count();
        assert!(encoder > 0);
        assert_eq!(problems(load_bytes(&gb, &spec)).len(), tok.len() - encoder);
        // A tensor in both files.
        let mut t2 = t.clone();
        t2.push(g[0]);
        let tb2 = bytes_of(&t2);
        match Weights::from_bytes(&[("gen".into(), &gb), ("tok".into(), &tb2)], &spec) {
            Err(RuntimeError::Weights { file, problems }) => {
                assert_eq!(file, "gen + tok");
                assert_eq!(problems, [format!("`{}` is stored in both gen and tok", g[0].0)]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_tokenizer_encoder_is_optional_as_a_whole() {
        let spec = tiny_var();
        let w = Weights::random(&spec, 3);
        assert!(w.absent_encoder().is_empty());
        let encoder: Vec<String> =
            declared_tensors(&spec).into_iter().filter(|d| d.is_encoder()).map(|d| d.key).collect();
        // The reference VQVAE's encoder: conv_in, 5 levels, the middle, norm_out and conv_out.
        assert_eq!(encoder.len(), 132);
        assert!(encoder.iter().all(|k| k.starts_with("encoder.")));
        let without = |keep: &[&str]| {
            let mut v = w.clone();
            encoder.iter().filter(|k| !keep.contains(&k.as_str())).for_each(|k| drop(v.remove(k)));
            v
        };
        // Complete: loaded, nothing absent.
        let all = load_bytes(&bytes_of_weights(&w), &spec).unwrap();
        assert_same(&all, &w);
        assert!(all.absent_encoder().is_empty());
        // No encoder at all (a decoder-only tokenizer file): loads, and says which tensors are absent.
        let decoder_only = without(&[]);
        let loaded = load_bytes(&bytes_of_weights(&decoder_only), &spec).unwrap();
        assert_same(&loaded, &decoder_only);
        assert_eq!(loaded.absent_encoder(), encoder.as_slice());
        assert_eq!(loaded.len() + encoder.len(), w.len());
        // Once any encoder tensor is stored, all are required, as every other parameter.
        let mut one_missing = w.clone();
        one_missing.remove("encoder.conv_in.weight");
        assert_eq!(
            problems(load_bytes(&bytes_of_weights(&one_missing), &spec)),
            ["missing `encoder.conv_in.weight` [32, 3, 3, 3] (enc_conv_in of tokenizer)"]
        );
        let one_present = without(&["encoder.norm_out.bias"]);
        let p = problems(load_bytes(&bytes_of_weights(&one_present), &spec));
        assert_eq!(p.len(), encoder.len() - 1);
        assert!(p.iter().all(|m| m.starts_with("missing `encoder.")), "{p:?}");
        // An encoder tensor under a near-miss name is a rename, not an absent encoder.
        let mut renamed = without(&[]);
        renamed.insert("encoder.conv_in.weigth", w.get("encoder.conv_in.weight").unwrap().clone());
        assert_eq!(
            problems(load_bytes(&bytes_of_weights(&renamed), &spec)),
            ["unexpected `encoder.conv_in.weigth` [32, 3, 3, 3]: did you mean `encoder.conv_in.weight` [32, 3, 3, 3], which is missing?"]
        );
        // A decoder tensor is never optional.
        let mut no_decoder_in = decoder_only.clone();
        no_decoder_in.remove("decoder.conv_in.weight");
        assert_eq!(
            problems(load_bytes(&bytes_of_weights(&no_decoder_in), &spec)),
            ["missing `decoder.conv_in.weight` [128, 8, 3, 3] (dec_conv_in of tokenizer)"]
        );
    }

    #[test]
    fn named_tensor_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let x = HostTensor::f32(vec![2, 3], vec![0.5, -1.0, 2.0, 3.25, f32::MAX, -0.0]);
        let tokens = HostTensor::i64(vec![4], vec![0, 16383, -1, i64::MAX]);
        let s = HostTensor::scalar(7.0);
        write_tensors(&path, &[("x", &x), ("tokens", &tokens), ("s", &s)]).unwrap();
        let back = read_tensors(&path).unwrap();
        assert_eq!(back.keys().collect::<Vec<_>>(), ["s", "tokens", "x"]);
        assert_eq!((&back["x"], &back["tokens"], &back["s"]), (&x, &tokens, &s));
        // Integer and float files of other dtypes.
        let raw = [
            (
                "a",
                Raw { dtype: Dtype::I32, shape: vec![2], bytes: [5i32.to_le_bytes(), (-3i32).to_le_bytes()].concat() },
            ),
            ("b", Raw { dtype: Dtype::U8, shape: vec![3], bytes: vec![0, 1, 255] }),
            ("c", Raw { dtype: Dtype::F16, shape: vec![1], bytes: half::f16::from_f32(1.5).to_le_bytes().to_vec() }),
        ];
        let bytes = safetensors::serialize(raw.iter().map(|(k, r)| (*k, r)), None).unwrap();
        let back = read_tensors_from_bytes("r", &bytes).unwrap();
        assert_eq!(back["a"], HostTensor::i64(vec![2], vec![5, -3]));
        assert_eq!(back["b"], HostTensor::i64(vec![3], vec![0, 1, 255]));
        assert_eq!(back["c"], HostTensor::f32(vec![1], vec![1.5]));
        let f8 = [("q", Raw { dtype: Dtype::F8_E4M3, shape: vec![1], bytes: vec![0] })];
        let bytes = safetensors::serialize(f8.iter().map(|(k, r)| (*k, r)), None).unwrap();
        assert_eq!(
            read_tensors_from_bytes("r", &bytes).unwrap_err().to_string(),
            "r: tensor `q` has dtype F8_E4M3; expected a float (F32, F16, BF16, F64) or integer (I64, I32, ...) type"
        );
        // Duplicate names are refused and nothing is written.
        let other = dir.path().join("dup.safetensors");
        assert!(write_tensors(&other, &[("x", &x), ("x", &s)]).is_err());
        assert!(!other.exists());
    }

    #[test]
    fn failed_writes_leave_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let w = Weights::random(&tiny_var(), 0);
        // The target is a directory: the rename fails.
        std::fs::create_dir(dir.path().join("out")).unwrap();
        std::fs::write(dir.path().join("out/keep"), b"x").unwrap();
        let e = w.save(&dir.path().join("out")).unwrap_err();
        assert!(matches!(e, RuntimeError::File { .. }), "{e}");
        // A directory that does not exist.
        assert!(w.save(&dir.path().join("no/such/dir/w.safetensors")).is_err());
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["out"]);
    }

    #[test]
    fn unreadable_files_are_file_errors() {
        let spec = tiny_var();
        let dir = tempfile::tempdir().unwrap();
        let good = bytes_of_weights(&Weights::random(&spec, 0));
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("garbage", b"this is not a safetensors file at all".to_vec()),
            ("truncated", good[..good.len() / 2].to_vec()),
            ("huge-header", [u64::MAX.to_le_bytes().to_vec(), good[8..].to_vec()].concat()),
        ];
        for (name, bytes) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, &bytes).unwrap();
            for r in [Weights::load(&path, &spec).map(|_| ()), read_tensors(&path).map(|_| ())] {
                match r {
                    Err(RuntimeError::File { path: p, why }) => {
                        assert_eq!(p, path.display().to_string());
                        assert!(why.starts_with("not a valid safetensors file"), "{name}: {why}");
                    }
                    other => panic!("{name}: {other:?}"),
                }
            }
        }
        for path in [dir.path().join("absent"), dir.path().to_path_buf()] {
            assert!(matches!(Weights::load(&path, &spec), Err(RuntimeError::File { .. })));
            assert!(matches!(read_tensors(&path), Err(RuntimeError::File { .. })));
        }
    }

    #[test]
    fn upload_sends_every_tensor_by_key() {
        let w = Weights::random(&tiny_var(), 0);
        let backend = crate::reference::Reference::new();
        let up = w.upload(&backend).unwrap();
        assert_eq!(up.len(), w.len());
        for (k, t) in w.iter() {
            assert_eq!(&backend.download(&up[k]).unwrap(), t, "`{k}`");
        }
    }

    /// A spec declaring a few small tensors (and a buffer), for fuzzing.
    fn small_spec() -> ModelSpec {
        let mut spec = tiny_var();
        let t = |role: &str, key: &str, shape: &[u64]| TensorSpec {
            role: role.into(),
            key: key.into(),
            shape: shape.to_vec(),
        };
        spec.params = vec![
            ParamGroupSpec {
                owner: "backbone".into(),
                prefix: "".into(),
                index: vec![],
                repeat: None,
                tensors: vec![t("class_table", "class_emb.weight", &[3, 4]), t("out_bias", "head.bias", &[5])],
            },
            ParamGroupSpec {
                owner: "backbone.block".into(),
                prefix: "blocks.{i}.".into(),
                index: vec![],
                repeat: Some(RepeatSpec { var: "i".into(), start: 0, count: 2 }),
                tensors: vec![t("attn_norm", "norm.weight", &[4])],
            },
        ];
        spec.tokenizer.params = vec![];
        spec.buffers = vec![ParamGroupSpec {
            owner: "backbone".into(),
            prefix: "".into(),
            index: vec![],
            repeat: None,
            tensors: vec![t("level_index", "lvl_1L", &[1, 2])],
        }];
        spec
    }

    #[test]
    fn corrupted_files_never_panic() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRng, TestRunner};
        let spec = small_spec();
        let w = Weights::random(&spec, 0);
        assert_eq!(w.len(), 4);
        let levels = HostTensor::i64(vec![1, 2], vec![0, 1]);
        let mut named: Vec<(&str, &HostTensor)> = w.iter().collect();
        named.push(("lvl_1L", &levels));
        let good = bytes_of(&named);
        assert_same(&load_bytes(&good, &spec).unwrap(), &w);

        let config = Config { cases: 4000, failure_persistence: None, ..Config::default() };
        let mut runner = TestRunner::new_with_rng(config.clone(), TestRng::deterministic_rng(config.rng_algorithm));
        let len = good.len();
        // Digits of the JSON header (shapes, offsets): changing one keeps the header parseable.
        let digits: Vec<usize> = (8..len).filter(|&i| good[i].is_ascii_digit()).collect();
        let digit_at = digits.clone();
        let edit = prop_oneof![
            (0..len).prop_map(|n| (Some(n), vec![], vec![])),
            proptest::collection::vec((0..len, any::<u8>()), 1..8).prop_map(|f| (None, f, vec![])),
            proptest::collection::vec(any::<u8>(), 1..64).prop_map(|g| (None, vec![], g)),
            (0..len, proptest::collection::vec((0..16usize, any::<u8>()), 1..4)).prop_map(|(n, f)| (
                Some(n),
                f.into_iter().map(|(i, b)| (i % 16, b)).collect(),
                vec![]
            )),
            proptest::collection::vec((0..digits.len(), b'0'..=b'9'), 1..3).prop_map(move |f| (
                None,
                f.into_iter().map(|(i, d)| (digit_at[i], d)).collect(),
                vec![]
            )),
        ];
        runner
            .run(&edit, |(truncate, flips, garbage)| {
                let mut bytes = good.clone();
                for (i, b) in flips {
                    if i < bytes.len() {
                        bytes[i] = b;
                    }
                }
                if let Some(n) = truncate {
                    bytes.truncate(n);
                }
                bytes.extend(garbage);
                match load_bytes(&bytes, &spec) {
                    Ok(_) | Err(RuntimeError::File { .. }) | Err(RuntimeError::Weights { .. }) => {}
                    Err(e) => panic!("unexpected error kind: {e}"),
                }
                let _ = read_tensors_from_bytes("f", &bytes);
                Ok(())
            })
            .unwrap();
    }
}
