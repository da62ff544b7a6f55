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

mod declared;
mod files;
mod init;
mod report;
#[cfg(test)]
mod tests;

pub use declared::{declared_tensors, Declared, TensorKind};
use files::{invalid_file, map_file, Stored};
pub use files::{read_input_tensors, read_tensors, read_tensors_from_bytes, save_tensors, write_tensors};
use init::init_or_fallback;
pub use init::{init_for, sincos_2d, Init};
use report::{collapse_prefixes, pair_renames, shape_hint};

use crate::backend::{Backend, Buffer};
use crate::error::{Result, RuntimeError};
use crate::rng::SeededRng;
use crate::tensor::HostTensor;
use ecarc_compiler::spec::PositionEncoding;
use ecarc_compiler::ModelSpec;
use rayon::prelude::*;
use safetensors::SafeTensors;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

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
                if d.role == "pos_table" && spec.backbone.positions == PositionEncoding::Sincos2d {
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
