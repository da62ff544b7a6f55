//! `ecarc import CHECKPOINT... --model FILE.ecar -o weights.safetensors`:
//! read released checkpoints (PyTorch zip or safetensors, any nesting the
//! releases use), match their tensors against the checkpoint keys the model
//! declares, and write them as one F32 safetensors file that `--weights`
//! loads. Every missing, unexpected or mis-shaped tensor is reported by key
//! (expected and actual shape) and nothing is written then; the output is
//! written atomically. See docs/checkpoints.md.

use clap::{Args, ValueEnum};
use ecarc_compiler::session::{check_paths, Outcome, Override};
use ecarc_compiler::ModelSpec;
use ecarc_runtime::checkpoint::{self, Checkpoint, Format};
use ecarc_runtime::weights::{declared_tensors, TensorKind, Weights};
use ecarc_runtime::RuntimeError;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct ImportArgs {
    /// Checkpoint files (`.pth`/`.pt`/`.bin` from torch.save, or `.safetensors`); several
    /// are combined (e.g. a generator and its tokenizer, released separately).
    #[arg(required = true, value_name = "CHECKPOINT")]
    checkpoints: Vec<PathBuf>,
    /// The model whose declared checkpoint keys the tensors must match.
    #[arg(long, value_name = "FILE.ecar")]
    model: PathBuf,
    /// The safetensors file to write.
    #[arg(short, long, value_name = "OUT.safetensors")]
    output: PathBuf,
    /// Where the state dict is inside a PyTorch checkpoint (`model`, `trainer.var_wo_ddp`);
    /// for safetensors a key prefix to select and strip. Once for every checkpoint, or once
    /// per checkpoint in order. Default: found automatically.
    #[arg(long, value_name = "PATH")]
    key: Vec<String>,
    /// Which of the model's tensors the checkpoints hold. Default: inferred from the
    /// declared keys present.
    #[arg(long, value_enum)]
    part: Option<Part>,
    /// Leave out every tensor whose key starts with PREFIX (repeatable), e.g. a training
    /// statistic the model does not declare (`quantize.ema_vocab_hit_SV`).
    #[arg(long, value_name = "PREFIX")]
    ignore: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Part {
    /// The generator (backbone, head): `var_d16.pth`.
    Generator,
    /// The tokenizer (VQ-VAE, VAE): `vae_ch160v4096z32.pth`.
    Tokenizer,
    /// Both.
    All,
}

impl Part {
    fn name(self) -> &'static str {
        match self {
            Part::Generator => "generator",
            Part::Tokenizer => "tokenizer",
            Part::All => "all",
        }
    }
}

pub fn run(args: ImportArgs, sets: &[Override], color: bool) -> Result<ExitCode, String> {
    let session = check_paths(&[&args.model], sets);
    if session.has_errors() {
        crate::print_diags(&session, color);
        return Ok(ExitCode::from(1));
    }
    let mut specs: Vec<ModelSpec> = session
        .models
        .into_iter()
        .filter_map(|m| match m.outcome {
            Outcome::Model(s) => Some(*s),
            _ => None,
        })
        .collect();
    if specs.len() != 1 {
        return fail(format!(
            "`{}` defines {} models; import needs a file with exactly one model",
            args.model.display(),
            specs.len()
        ));
    }
    let spec = specs.remove(0);
    // The output is checked (not one of the checkpoints, a writable regular
    // `.safetensors` file) before anything is read.
    let mut outs = ecarc_runtime::output::Outputs::new();
    outs.input(&args.model).inputs(args.checkpoints.iter().map(PathBuf::as_path));
    let slot = match outs.add("-o", &args.output, &["safetensors"]) {
        Ok(s) => s,
        Err(e) => return fail(e.to_string()),
    };
    let keys: Vec<Option<&str>> = match args.key.len() {
        0 => vec![None; args.checkpoints.len()],
        1 => vec![Some(args.key[0].as_str()); args.checkpoints.len()],
        n if n == args.checkpoints.len() => args.key.iter().map(|k| Some(k.as_str())).collect(),
        n => {
            return fail(format!(
                "{n} --key values for {} checkpoints: give one, or one per checkpoint",
                args.checkpoints.len()
            ))
        }
    };
    let mut read = Vec::new();
    for (path, key) in args.checkpoints.iter().zip(keys) {
        let mut ck = match checkpoint::open(path, key) {
            Ok(c) => c,
            Err(e) => return fail(e.to_string()),
        };
        eprintln!("{}", describe(&ck));
        let before = ck.tensors.len();
        ck.tensors.retain(|k, _| !args.ignore.iter().any(|p| k.starts_with(p.as_str())));
        if ck.tensors.len() < before {
            let prefixes: Vec<String> = args.ignore.iter().map(|p| format!("`{p}`")).collect();
            eprintln!("ignored {} tensor(s) under {}", before - ck.tensors.len(), prefixes.join(", "));
        }
        read.push(ck);
    }
    let (part, why) = match args.part {
        Some(p) => (p, "given".to_string()),
        None => infer_part(&spec, &read),
    };
    eprintln!("part: {} ({why})", part.name());
    let spec = only(spec, part);
    let sources: Vec<(String, BTreeMap<String, _>)> = read.into_iter().map(|c| (c.source, c.tensors)).collect();
    let weights = match Weights::from_tensors(&sources, &spec) {
        Ok(w) => w,
        Err(RuntimeError::Weights { file, problems }) => {
            eprintln!("error: {} problem(s) with the tensors of {file} for `{}`:", problems.len(), spec.name);
            for p in &problems {
                eprintln!("  {p}");
            }
            eprintln!("nothing was written");
            return Ok(ExitCode::from(1));
        }
        Err(e) => return fail(e.to_string()),
    };
    if let Err(e) = outs.write_with(slot, |tmp| weights.save_to(tmp)).and_then(|_| outs.commit()) {
        return fail(e.to_string());
    }
    let absent = weights.absent_encoder().len();
    if absent > 0 {
        eprintln!(
            "note: no tokenizer encoder in the checkpoint(s): its {absent} declared tensors are left out (generation does not read them)"
        );
    }
    let buffers = weights.buffers_in_file().count();
    let buffer_note =
        if buffers > 0 { format!(" ({buffers} declared buffer(s) checked, not written)") } else { String::new() };
    println!(
        "wrote {}: {} tensors, {} values of `{}`{buffer_note}",
        args.output.display(),
        weights.len(),
        weights.numel(),
        spec.name
    );
    Ok(ExitCode::SUCCESS)
}

fn fail(msg: String) -> Result<ExitCode, String> {
    eprintln!("error: {msg}");
    Ok(ExitCode::from(1))
}

/// One line about what was read from a checkpoint.
fn describe(c: &Checkpoint) -> String {
    let format = match c.format {
        Format::PyTorch => "PyTorch",
        Format::Safetensors => "safetensors",
    };
    let at = match (c.format, c.nesting.is_empty()) {
        (_, true) => "at the top level".to_string(),
        (Format::PyTorch, false) => format!("under `{}`", c.nesting),
        (Format::Safetensors, false) => format!("with the prefix `{}.` stripped", c.nesting),
    };
    let others = if c.others.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = c.others.iter().map(|o| format!("`{o}`")).collect();
        format!("; it also holds {} (choose with --key)", list.join(", "))
    };
    format!("read {} ({format}): {} tensors {at}{others}", c.source, c.tensors.len())
}

/// The part whose declared parameters the checkpoints hold, and why.
fn infer_part(spec: &ModelSpec, read: &[Checkpoint]) -> (Part, String) {
    let present: BTreeSet<&str> = read.iter().flat_map(|c| c.tensors.keys().map(String::as_str)).collect();
    let declared = declared_tensors(spec);
    let count = |kind: TensorKind| {
        let of: Vec<_> = declared.iter().filter(|d| d.kind == kind).collect();
        (of.iter().filter(|d| present.contains(d.key.as_str())).count(), of.len())
    };
    let (g, gn) = count(TensorKind::Param);
    let (t, tn) = count(TensorKind::TokenizerParam);
    let part = match (g > 0, t > 0) {
        (true, false) => Part::Generator,
        (false, true) => Part::Tokenizer,
        _ => Part::All,
    };
    (part, format!("inferred: {g} of {gn} generator and {t} of {tn} tokenizer tensors present; override with --part"))
}

/// `spec` declaring only the parameters of `part` (buffers are optional anyway).
fn only(mut spec: ModelSpec, part: Part) -> ModelSpec {
    match part {
        Part::Generator => spec.tokenizer.params.clear(),
        Part::Tokenizer => spec.params.clear(),
        Part::All => {}
    }
    spec
}
