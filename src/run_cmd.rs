//! The commands that run a model on a backend: `sample`, `decode`, `forward`,
//! `dd-pairs`, and `init-weights` (a random checkpoint to test loaders with).
//! Each is a thin call into `ecarc_runtime`: load the model (a `.ecar` file or
//! an artifact from `ecarc build`), its weights, a backend, run, write files.
//!
//! Conventions shared by the commands:
//! - Every failure is one `error: ...` line on stderr (plus `help:` lines
//!   where there is a fix to suggest) and exit status 1; model diagnostics are
//!   rendered as by `ecarc check`.
//! - Output files go through `ecarc_runtime::output`: checked before any
//!   compute (not an input of the run, a regular writable file, the right
//!   extension), written to temporary files and renamed together only after
//!   the run succeeded; a run that fails or is interrupted leaves no output
//!   and no temporary file behind.
//! - Input tensors (`--tokens`, `--inputs`, `--noise`) must be finite.
//! - The run's memory is estimated and checked against the machine's before
//!   any weight is loaded or drawn (`ecarc_runtime::memory`).
//! - Without `--weights` a model runs on seeded random weights (seed 0), and
//!   says so on stderr.
//! - Labels (`sample`, `dd-pairs`): `--class A B ...` gives `-n` images of each
//!   class (in the order given); without `--class`, `-n` images in all, their
//!   classes drawn uniformly from the seed (the same seed, the same classes).

use crate::progress::Progress;
use clap::{Args, Subcommand, ValueEnum};
use ecarc_compiler::artifact::Artifact;
use ecarc_compiler::plan::Keep;
use ecarc_compiler::session::Override;
use ecarc_compiler::ModelSpec;
use ecarc_runtime::driver::{Generator, SampleOptions};
use ecarc_runtime::output::Outputs;
use ecarc_runtime::rng::SeededRng;
use ecarc_runtime::weights::{read_input_tensors, save_tensors, Weights};
use ecarc_runtime::{image_out, Backend, HostTensor, RuntimeError};
use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// The most images one command makes (a guard against typos such as `-n 1e9`).
const MAX_IMAGES: u64 = 1 << 16;

/// The seed of the random weights used when no `--weights` is given.
const RANDOM_WEIGHTS_SEED: u64 = 0;

#[derive(Subcommand)]
pub enum RunCommand {
    /// Generate images: run the model's stage schedule and its tokenizer decoder,
    /// write a PNG grid.
    Sample(SampleArgs),
    /// Run the tokenizer decoder alone: token indices, codes or a latent in,
    /// the float image `[N, 3, H, W]` (tensor `image`) out.
    Decode(DecodeArgs),
    /// One teacher-forced forward with tensors named as in the reference code
    /// (VAR `label_B`, `x_BLCv_wo_first_l` -> `logits_BLV`; LlamaGen `cond_idx`, `idx` ->
    /// `logits`; DiT `x`, `t`, `y` -> `out`; DD `x`, `t` -> `x_out`, `logits`), for parity checks.
    Forward(ForwardArgs),
    /// Distilled Decoding training pairs from a teacher: `noise` [N, L, D] and the
    /// `tokens` [N, L] the teacher flow map sends it to (and `labels` [N]).
    #[command(name = "dd-pairs")]
    DdPairs(DdPairsArgs),
    /// Write seeded random weights for every parameter the model declares, keyed by
    /// its checkpoint names (safetensors, F32): a checkpoint to test loaders with.
    #[command(name = "init-weights")]
    InitWeights(InitWeightsArgs),
}

/// `--backend`: `reference` (the oracle), `cpu` and `wgpu` are built; `cuda` is not yet.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum BackendName {
    Reference,
    Cpu,
    Wgpu,
    Cuda,
}

impl BackendName {
    fn name(self) -> &'static str {
        match self {
            BackendName::Reference => "reference",
            BackendName::Cpu => "cpu",
            BackendName::Wgpu => "wgpu",
            BackendName::Cuda => "cuda",
        }
    }
}

/// The model to run and what to run it on.
#[derive(Args)]
pub struct ModelArgs {
    /// A `.ecar` file or an artifact (`NAME.ecarc.json`) from `ecarc build`.
    file: PathBuf,
    /// Which model of FILE, when it defines several.
    #[arg(long, value_name = "NAME")]
    model: Option<String>,
    /// The backend that runs the programs.
    #[arg(long, value_enum, default_value_t = BackendName::Cpu)]
    backend: BackendName,
    /// With `--backend wgpu`: the adapter whose name contains NAME (case-insensitive);
    /// default: a hardware GPU before a software one. `WGPU_BACKEND` picks the API.
    #[arg(long, value_name = "NAME")]
    adapter: Option<String>,
    /// Safetensors checkpoint(s), by the model's declared keys; several files
    /// (e.g. generator and tokenizer) form one checkpoint. Default: random weights (seed 0).
    #[arg(long = "weights", value_name = "W.safetensors")]
    weights: Vec<PathBuf>,
}

/// Class labels and how many images.
#[derive(Args)]
pub struct LabelArgs {
    /// Class labels (repeat the flag or give several values: `--class 1 3` or `--class 1,3`).
    /// Default: classes drawn from the seed.
    #[arg(long = "class", value_name = "N", num_args = 1.., value_delimiter = ',', allow_negative_numbers = true)]
    classes: Vec<i64>,
    /// Images per class with `--class`; images in all without it.
    #[arg(short = 'n', value_name = "K", default_value_t = 1)]
    n: u64,
    /// The seed of all sampling randomness (and of the default classes).
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Args)]
pub struct SampleArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    labels: LabelArgs,
    /// Classifier-free guidance scale (overrides the model's `sample { cfg }`; 1 turns it off).
    #[arg(long, value_name = "X", allow_negative_numbers = true)]
    cfg: Option<f64>,
    /// Keep the K most likely tokens (0 = all); discrete tokens only.
    #[arg(long = "top-k", value_name = "K")]
    top_k: Option<u64>,
    /// Nucleus sampling: keep the most likely tokens up to this probability, in (0, 1].
    #[arg(long = "top-p", value_name = "P", allow_negative_numbers = true)]
    top_p: Option<f64>,
    /// Softmax temperature, > 0.
    #[arg(long, value_name = "T", allow_negative_numbers = true)]
    temperature: Option<f64>,
    /// The PNG to write (one grid of all images).
    #[arg(short = 'o', long = "out", value_name = "OUT.png")]
    out: PathBuf,
    /// Also write each stage's chosen tokens (`stage.K.tokens`) or continuous tokens
    /// (`stage.K.x`), the decoder's input (`latent.NAME`), the float image (`image`)
    /// and the labels (`labels`) as safetensors.
    #[arg(long = "save-tensors", value_name = "OUT.safetensors")]
    save_tensors: Option<PathBuf>,
    /// Start from this noise instead of drawing it (parity with other code): a
    /// safetensors file whose only tensor (or the one named `noise`) is DD's noise
    /// tokens [N, L, D], the first flow stage's x, or a denoiser's initial latent.
    #[arg(long, value_name = "IN.safetensors")]
    noise: Option<PathBuf>,
    /// Print the timings per stage, image path, seed and labels as JSON on stdout (no progress bars).
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct DecodeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Safetensors with the decoder's input: its only tensor, or the one named like the
    /// decoder's input (`tokens`, `codes`, `f_hat`, `latent`), or `latent.NAME` as
    /// `sample --save-tensors` writes it.
    #[arg(long, value_name = "IN.safetensors")]
    tokens: PathBuf,
    /// Where to write the float image (tensor `image`, [N, 3, H, W] in [0, 1]).
    #[arg(short = 'o', long = "out", value_name = "OUT.safetensors")]
    out: PathBuf,
    /// Also write the images as a PNG grid.
    #[arg(long, value_name = "OUT.png")]
    png: Option<PathBuf>,
}

#[derive(Args)]
pub struct ForwardArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Safetensors with the inputs by reference name (see `--signature`).
    #[arg(long, value_name = "IN.safetensors", required_unless_present = "signature")]
    inputs: Option<PathBuf>,
    /// Where to write the outputs (full tensors, by reference name).
    #[arg(short = 'o', long = "out", value_name = "OUT.safetensors", required_unless_present = "signature")]
    out: Option<PathBuf>,
    /// DiT's guided forward (`forward_with_cfg`) on `cfg_x`, `cfg_t`, `cfg_y` with this scale.
    #[arg(long, value_name = "S", allow_negative_numbers = true)]
    cfg: Option<f64>,
    /// Print the inputs the forward expects (names, dtypes, shapes for `-n` images) and exit.
    #[arg(long)]
    signature: bool,
    /// Images for `--signature`.
    #[arg(short = 'n', value_name = "B", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=MAX_IMAGES))]
    n: u64,
}

#[derive(Args)]
pub struct DdPairsArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    labels: LabelArgs,
    /// Where to write `noise`, `tokens` and `labels`.
    #[arg(short = 'o', long = "out", value_name = "pairs.safetensors")]
    out: PathBuf,
}

#[derive(Args)]
pub struct InitWeightsArgs {
    /// A `.ecar` file or an artifact from `ecarc build`.
    file: PathBuf,
    /// Which model of FILE, when it defines several.
    #[arg(long, value_name = "NAME")]
    model: Option<String>,
    /// Seed of the random values.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(short = 'o', long = "out", value_name = "W.safetensors")]
    out: PathBuf,
}

/// Why a command stopped.
pub(crate) enum Fail {
    /// Already reported (model diagnostics): just the exit status.
    Reported(ExitCode),
    /// An error line and `help:` lines.
    Msg(String, Vec<String>),
}

impl From<RuntimeError> for Fail {
    fn from(e: RuntimeError) -> Self {
        // A multi-line error (every problem with a weights file) lists its lines
        // indented under the `error:` line.
        let text = e.to_string();
        let mut lines = text.lines();
        let first = lines.next().unwrap_or_default().to_string();
        let rest: Vec<String> = lines.map(|l| format!("  {l}")).collect();
        Fail::Msg(if rest.is_empty() { first } else { format!("{first}\n{}", rest.join("\n")) }, Vec::new())
    }
}

impl From<String> for Fail {
    fn from(e: String) -> Self {
        Fail::Msg(e, Vec::new())
    }
}

fn fail<T>(msg: impl Into<String>) -> Result<T, Fail> {
    Err(Fail::Msg(msg.into(), Vec::new()))
}

/// Run one of the commands; every failure is reported here (exit status 1).
pub fn run(cmd: RunCommand, sets: &[Override], color: bool) -> Result<ExitCode, String> {
    let result = match cmd {
        RunCommand::Sample(a) => sample(a, sets, color),
        RunCommand::Decode(a) => decode(a, sets, color),
        RunCommand::Forward(a) => forward(a, sets, color),
        RunCommand::DdPairs(a) => dd_pairs(a, sets, color),
        RunCommand::InitWeights(a) => init_weights(a, sets, color),
    };
    Ok(report(result))
}

/// The exit status of a command's result, its error reported on stderr.
pub(crate) fn report(result: Result<(), Fail>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail::Reported(code)) => code,
        Err(Fail::Msg(msg, help)) => {
            eprintln!("error: {msg}");
            for h in help {
                // Continuation lines of one help entry line up under its text.
                eprintln!("  help: {}", h.replace('\n', "\n        "));
            }
            ExitCode::from(1)
        }
    }
}

// ---- loading ------------------------------------------------------------------

/// The one model of `file` (or the one named `model`), checked and lowered.
pub(crate) fn load_model(file: &Path, model: Option<&str>, sets: &[Override], color: bool) -> Result<Artifact, Fail> {
    let mut all = crate::compile_all(file, sets, color).map_err(Fail::Reported)?;
    let names = || all.iter().map(|a| format!("`{}`", a.spec.name)).collect::<Vec<_>>().join(", ");
    match model {
        // With `--set`, models are named as variants (`NAME+KEY=VALUE`).
        Some(m) => match all.iter().position(|a| a.spec.name == m || a.spec.name.starts_with(&format!("{m}+"))) {
            Some(i) => Ok(all.swap_remove(i)),
            None => fail(format!("`{}` defines no model `{m}`; it defines {}", file.display(), names())),
        },
        None if all.len() == 1 => Ok(all.remove(0)),
        None => Err(Fail::Msg(
            format!("`{}` defines {} models ({})", file.display(), all.len(), names()),
            vec!["choose one with `--model NAME`".into()],
        )),
    }
}

pub(crate) fn backend(name: BackendName, adapter: Option<&str>) -> Result<Box<dyn Backend>, Fail> {
    Ok(ecarc_runtime::backend_by_name(name.name(), adapter)?)
}

/// The checkpoint files, or random weights (said on stderr). `needed`: the
/// parameters the command's plans read; the files may leave out the others.
pub(crate) fn load_weights(spec: &ModelSpec, paths: &[PathBuf], needed: &BTreeSet<String>) -> Result<Weights, Fail> {
    if paths.is_empty() {
        eprintln!(
            "note: no --weights given: `{}` runs on random weights (seed {RANDOM_WEIGHTS_SEED}); its images are noise",
            spec.name
        );
        return Ok(Weights::random(spec, RANDOM_WEIGHTS_SEED));
    }
    let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    let weights = Weights::load_files_for(&refs, spec, Some(needed))?;
    let absent = weights.absent_encoder().len();
    if absent > 0 {
        eprintln!(
            "note: the weights hold no tokenizer encoder (its {absent} declared tensors are absent); nothing here reads it"
        );
    }
    let unused = weights.absent_unused().len();
    if unused > 0 {
        eprintln!("note: the weights leave out {unused} declared tensor(s) that this command does not read");
    }
    Ok(weights)
}

/// A generator for `art` on `backend` with the settings of `spec` (the
/// artifact's, with the command's sampler options applied): the artifact's
/// own programs, whatever the settings (they are inputs of the programs).
fn generator<'b>(
    art: Artifact,
    spec: ModelSpec,
    backend: &'b dyn Backend,
    weights: &Weights,
) -> Result<Generator<'b>, Fail> {
    let params = weights.upload(backend)?;
    Ok(Generator::new(spec, art.program, backend, params)?)
}

/// The outputs of a run, planned before any compute: the model's files, its
/// weights and `inputs` are the run's inputs, which no output may be.
fn plan_outputs(art: &Artifact, model: &ModelArgs, inputs: &[&Path]) -> Outputs {
    let mut outs = Outputs::new();
    outs.input(&model.file).inputs(model.weights.iter().map(PathBuf::as_path)).inputs(inputs.iter().copied());
    outs.inputs(art.sources.iter().map(Path::new));
    outs
}

/// Refuse a run of `art` on `images` images that needs more memory than the machine has.
fn check_memory(art: &Artifact, images: u64) -> Result<(), Fail> {
    ecarc_runtime::memory::check_run(art, images).map_err(|e| {
        Fail::Msg(
            e.to_string(),
            vec!["fewer images (-n), a smaller model, or ECARC_MEMORY_LIMIT=BYTES where the machine's total is not what the run may use".into()],
        )
    })
}

/// The first dimension of the first tensor (the batch) of an input file.
fn batch_of(tensors: &BTreeMap<String, HostTensor>) -> u64 {
    tensors.values().filter_map(|t| t.shape.first()).copied().max().unwrap_or(1) as u64
}

// ---- labels and sampler options -------------------------------------------------

/// `--class`/`-n`/`--seed` as one label per image (see the module docs).
fn labels_for(spec: &ModelSpec, a: &LabelArgs) -> Result<Vec<i64>, Fail> {
    let classes = spec.classes;
    if a.n == 0 {
        return fail("-n must be at least 1");
    }
    if classes == 0 {
        return fail(format!("`{}` declares no classes to sample", spec.name));
    }
    for &c in &a.classes {
        if c < 0 || c as u64 >= classes {
            return Err(Fail::Msg(
                format!("class {c} is out of range: `{}` has {classes} classes", spec.name),
                vec![format!("give classes in 0..={}", classes - 1)],
            ));
        }
    }
    let total = if a.classes.is_empty() { Some(a.n) } else { (a.classes.len() as u64).checked_mul(a.n) };
    match total {
        Some(t) if t <= MAX_IMAGES => {}
        _ => return fail(format!("too many images: at most {MAX_IMAGES} per run")),
    }
    if a.classes.is_empty() {
        let u = SeededRng::new(a.seed).fork("labels").uniform(a.n as usize);
        Ok(u.iter().map(|&u| ((u as f64 * classes as f64) as u64).min(classes - 1) as i64).collect())
    } else {
        Ok(a.classes.iter().flat_map(|&c| std::iter::repeat_n(c, a.n as usize)).collect())
    }
}

/// Apply `--cfg/--top-k/--top-p/--temperature` to the spec with the checker's
/// rules (the generator runs with the spec's settings, see [`generator`]).
fn apply_sampler(spec: &mut ModelSpec, a: &SampleArgs) -> Result<(), Fail> {
    use ecarc_compiler::check::sampler_rules;
    // The checker's own rule for each value, reported for the flag.
    let rule = |flag: &str, v: f64, r: Result<(), sampler_rules::Broken>| {
        r.map_err(|b| {
            let v = sampler_rules::shown(v);
            Fail::Msg(format!("{flag} {v} is out of range: {} ({})", b.message, b.code), vec![b.help])
        })
    };
    let name = spec.name.clone();
    let vocab = spec.tokenizer.vocab;
    let s = &mut spec.sampler;
    if let Some(x) = a.cfg {
        rule("--cfg", x, sampler_rules::cfg(x))?;
        if spec.distill.is_some() {
            eprintln!("warning: --cfg has no effect on `{name}`: Distilled Decoding samples without guidance");
        }
        s.cfg = x;
    }
    if let Some(k) = a.top_k {
        match vocab {
            None if k > 0 => {
                return Err(Fail::Msg(
                    format!("--top-k needs discrete tokens; `{name}`'s tokens are continuous"),
                    vec!["continuous tokens are integrated by the flow or diffusion solver: leave out --top-k".into()],
                ))
            }
            Some(v) if k > v => {
                return Err(Fail::Msg(
                    format!("--top-k {k} is larger than the vocabulary of `{name}` ({v} codes)"),
                    vec![format!("use a top-k of at most {v}, or 0 to turn it off")],
                ))
            }
            _ => {}
        }
        s.top_k = k;
    }
    if let Some(p) = a.top_p {
        rule("--top-p", p, sampler_rules::top_p(p))?;
        if vocab.is_none() && p < 1.0 {
            return fail(format!("--top-p needs discrete tokens; `{name}`'s tokens are continuous"));
        }
        s.top_p = p;
    }
    if let Some(t) = a.temperature {
        rule("--temperature", t, sampler_rules::temperature(t))?;
        s.temperature = t;
    }
    Ok(())
}

// ---- sample -------------------------------------------------------------------------

fn sample(a: SampleArgs, sets: &[Override], color: bool) -> Result<(), Fail> {
    let art = load_model(&a.model.file, a.model.model.as_deref(), sets, color)?;
    let mut spec = art.spec.clone();
    apply_sampler(&mut spec, &a)?;
    let labels = labels_for(&spec, &a.labels)?;
    let backend = backend(a.model.backend, a.model.adapter.as_deref())?;
    let noise_path: Vec<&Path> = a.noise.iter().map(PathBuf::as_path).collect();
    let mut outs = plan_outputs(&art, &a.model, &noise_path);
    let png_slot = outs.add("-o", &a.out, &["png"])?;
    let tensors_slot = match &a.save_tensors {
        Some(p) => Some(outs.add("--save-tensors", p, &["safetensors"])?),
        None => None,
    };
    let noise = match &a.noise {
        Some(p) => {
            let mut t = read_input_tensors(p)?;
            let one = if t.len() == 1 { t.pop_first().map(|(_, v)| v) } else { t.remove("noise") };
            Some(one.ok_or_else(|| {
                Fail::Msg(
                    format!("{}: give one tensor, or one named `noise` (the file holds {})", p.display(), t.len()),
                    vec![],
                )
            })?)
        }
        None => None,
    };
    check_memory(&art, labels.len() as u64)?;
    let needed = Generator::params_read(&art.program, Some(&["sample"]));
    let weights = load_weights(&spec, &a.model.weights, &needed)?;
    let g = generator(art, spec, backend.as_ref(), &weights)?;

    let progress = Progress::new(!a.json, std::io::stderr().is_terminal());
    let started = Instant::now();
    let keep = if a.save_tensors.is_some() { Keep::Stages } else { Keep::Nothing };
    let opts = SampleOptions { labels: labels.clone(), seed: a.labels.seed, keep };
    let result = g.sample_from(&opts, noise.as_ref(), &progress);
    progress.finish();
    let out = result?;
    let wall = started.elapsed().as_secs_f64();

    let labels_t = HostTensor::i64(vec![labels.len()], labels.clone());
    let latent_name = out.latent.as_ref().map(|(n, _)| format!("latent.{n}"));
    if let Some(slot) = tensors_slot {
        let mut named: Vec<(&str, &HostTensor)> = out.stages.iter().map(|(n, t)| (n.as_str(), t)).collect();
        if let (Some(n), Some((_, t))) = (&latent_name, &out.latent) {
            named.push((n.as_str(), t));
        }
        named.push(("image", &out.image));
        named.push(("labels", &labels_t));
        outs.write_with(slot, |tmp| save_tensors(tmp, &named))?;
    }
    let grid = image_out::to_grid(&out.image)?;
    outs.write_with(png_slot, |tmp| image_out::save_png(tmp, &grid))?;
    outs.commit()?;

    let size = [out.image.shape.get(2).copied().unwrap_or(0), out.image.shape.get(3).copied().unwrap_or(0)];
    if a.json {
        let total: f64 = out.timings.iter().map(|t| t.seconds).sum();
        let sm = &g.spec.sampler;
        let v = serde_json::json!({
            "model": g.spec.name,
            "backend": g.backend().name(),
            "weights": weights.source(),
            "image": a.out.display().to_string(),
            "tensors": a.save_tensors.as_ref().map(|p| p.display().to_string()),
            "seed": a.labels.seed,
            "labels": labels,
            "size": size,
            "sampler": {
                "cfg": sm.cfg,
                "top_k": sm.top_k,
                "top_p": sm.top_p,
                "temperature": sm.temperature,
            },
            "timings": out.timings,
            "total_seconds": total,
            "wall_seconds": wall,
        });
        println!("{}", serde_json::to_string_pretty(&v).map_err(|e| e.to_string())?);
    } else {
        eprintln!(
            "wrote {} ({} image{} of {}x{}, `{}`, seed {}, classes {:?}) in {:.2} s",
            a.out.display(),
            labels.len(),
            if labels.len() == 1 { "" } else { "s" },
            size[0],
            size[1],
            g.spec.name,
            a.labels.seed,
            labels,
            wall
        );
        if let Some(p) = &a.save_tensors {
            eprintln!("wrote {}", p.display());
        }
    }
    Ok(())
}

// ---- decode ---------------------------------------------------------------------------

fn decode(a: DecodeArgs, sets: &[Override], color: bool) -> Result<(), Fail> {
    let art = load_model(&a.model.file, a.model.model.as_deref(), sets, color)?;
    let spec = art.spec.clone();
    let backend = backend(a.model.backend, a.model.adapter.as_deref())?;
    let mut outs = plan_outputs(&art, &a.model, &[&a.tokens]);
    let out_slot = outs.add("-o", &a.out, &["safetensors"])?;
    let png_slot = match &a.png {
        Some(p) => Some(outs.add("--png", p, &["png"])?),
        None => None,
    };
    let tensors = read_input_tensors(&a.tokens)?;
    check_memory(&art, batch_of(&tensors))?;
    let plans: Vec<&str> = art.program.decode_plans().map(|p| p.name.as_str()).collect();
    let needed = Generator::params_read(&art.program, Some(&plans));
    let weights = load_weights(&spec, &a.model.weights, &needed)?;
    let g = generator(art, spec, backend.as_ref(), &weights)?;
    let (image, _) = g.decode(&tensors).map_err(|e| {
        Fail::Msg(
            format!("{}: {e}", a.tokens.display()),
            vec!["`ecarc sample --save-tensors` writes a file `ecarc decode` takes".into()],
        )
    })?;
    outs.write_with(out_slot, |tmp| save_tensors(tmp, &[("image", &image)]))?;
    if let Some(slot) = png_slot {
        let grid = image_out::to_grid(&image)?;
        outs.write_with(slot, |tmp| image_out::save_png(tmp, &grid))?;
    }
    outs.commit()?;
    eprintln!("wrote {} (`image` {:?})", a.out.display(), image.shape);
    Ok(())
}

// ---- forward --------------------------------------------------------------------------

fn signature_lines(g: &Generator, n: u64, guided: bool) -> Result<Vec<String>, Fail> {
    Ok(g.forward_signature(n, guided)?
        .into_iter()
        .map(|(name, dtype, shape)| format!("{name}: {}{shape:?}", dtype.name()))
        .collect())
}

fn forward(a: ForwardArgs, sets: &[Override], color: bool) -> Result<(), Fail> {
    let art = load_model(&a.model.file, a.model.model.as_deref(), sets, color)?;
    let spec = art.spec.clone();
    let backend = backend(a.model.backend, a.model.adapter.as_deref())?;
    let guided = a.cfg.is_some();
    let plan = if guided { "forward.guided" } else { "forward" };
    if a.signature {
        // The signature depends on the programs only: no need for real weights.
        let weights = if a.model.weights.is_empty() {
            Weights::random(&spec, RANDOM_WEIGHTS_SEED)
        } else {
            load_weights(&spec, &a.model.weights, &Generator::params_read(&art.program, Some(&[plan])))?
        };
        let g = generator(art, spec, backend.as_ref(), &weights)?;
        println!("forward of `{}` for B = {} image(s), inputs:", g.spec.name, a.n);
        if a.cfg.is_some() {
            println!(
                "  (guided: 2B rows, the conditional ones first, then the same with the null class {})",
                g.spec.classes
            );
        }
        for l in signature_lines(&g, a.n, guided)? {
            println!("  {l}");
        }
        return Ok(());
    }
    let (Some(inputs_path), Some(out_path)) = (&a.inputs, &a.out) else {
        return fail("give --inputs IN.safetensors and -o OUT.safetensors (or --signature)");
    };
    let mut outs = plan_outputs(&art, &a.model, &[inputs_path]);
    let out_slot = outs.add("-o", out_path, &["safetensors"])?;
    let inputs: BTreeMap<String, HostTensor> = read_input_tensors(inputs_path)?;
    check_memory(&art, batch_of(&inputs))?;
    let needed = Generator::params_read(&art.program, Some(&[plan]));
    let weights = load_weights(&spec, &a.model.weights, &needed)?;
    let g = generator(art, spec, backend.as_ref(), &weights)?;
    let outputs = match g.forward(&inputs, a.cfg) {
        Ok(o) => o,
        Err(e) => {
            // The images the file meant, from its labels, for the expected signature.
            let label = g.forward_signature(1, guided)?.first().map(|(n, ..)| n.clone()).unwrap_or_default();
            let rows = inputs.get(&label).and_then(|t| t.shape.first().copied()).unwrap_or(1) as u64;
            let n = if guided { (rows / 2).max(1) } else { rows };
            let mut sig = format!("`{}` takes, for B = {n}:", g.spec.name);
            for l in signature_lines(&g, n, guided)? {
                sig.push_str(&format!("\n  {l}"));
            }
            let cfg = if a.cfg.is_some() { " --cfg S" } else { "" };
            let again = format!("`ecarc forward {} --signature -n B{cfg}` prints this", a.model.file.display());
            return Err(Fail::Msg(e.to_string(), vec![sig, again]));
        }
    };
    let named: Vec<(&str, &HostTensor)> = outputs.iter().map(|(n, t)| (n.as_str(), t)).collect();
    outs.write_with(out_slot, |tmp| save_tensors(tmp, &named))?;
    outs.commit()?;
    let summary: Vec<String> = outputs.iter().map(|(n, t)| format!("`{n}` {:?}", t.shape)).collect();
    eprintln!("wrote {} ({})", out_path.display(), summary.join(", "));
    Ok(())
}

// ---- dd-pairs -------------------------------------------------------------------------

fn dd_pairs(a: DdPairsArgs, sets: &[Override], color: bool) -> Result<(), Fail> {
    let art = load_model(&a.model.file, a.model.model.as_deref(), sets, color)?;
    let spec = art.spec.clone();
    let labels = labels_for(&spec, &a.labels)?;
    let backend = backend(a.model.backend, a.model.adapter.as_deref())?;
    let mut outs = plan_outputs(&art, &a.model, &[]);
    let out_slot = outs.add("-o", &a.out, &["safetensors"])?;
    check_memory(&art, labels.len() as u64)?;
    // The teacher's steps and transitions with the flow map's token choice; its decoder is not read.
    let program = ecarc_runtime::driver::pairs_program(&spec)?;
    let weights = load_weights(&spec, &a.model.weights, &Generator::params_read(&program, Some(&["pairs"])))?;
    let (noise, tokens) =
        ecarc_runtime::driver::pairs(spec, program, backend.as_ref(), &weights, &labels, a.labels.seed)?;
    let labels_t = HostTensor::i64(vec![labels.len()], labels);
    outs.write_with(out_slot, |tmp| {
        save_tensors(tmp, &[("noise", &noise), ("tokens", &tokens), ("labels", &labels_t)])
    })?;
    outs.commit()?;
    eprintln!(
        "wrote {} (`noise` {:?}, `tokens` {:?}, `labels` {:?})",
        a.out.display(),
        noise.shape,
        tokens.shape,
        labels_t.shape
    );
    Ok(())
}

// ---- init-weights ---------------------------------------------------------------------

fn init_weights(a: InitWeightsArgs, sets: &[Override], color: bool) -> Result<(), Fail> {
    let art = load_model(&a.file, a.model.as_deref(), sets, color)?;
    let mut outs = Outputs::new();
    outs.input(&a.file).inputs(art.sources.iter().map(Path::new));
    let out_slot = outs.add("-o", &a.out, &["safetensors"])?;
    check_memory(&art, 0)?;
    let w = Weights::random(&art.spec, a.seed);
    outs.write_with(out_slot, |tmp| w.save_to(tmp))?;
    outs.commit()?;
    eprintln!(
        "wrote {} ({} tensors, {} values, random seed {}, for `{}`)",
        a.out.display(),
        w.len(),
        w.numel(),
        a.seed,
        art.spec.name
    );
    Ok(())
}
