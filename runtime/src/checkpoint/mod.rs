//! Reading released checkpoints: PyTorch `.pth`/`.pt`/`.bin` files (the zip
//! format of `torch.save`) and safetensors, through one front door,
//! [`open`], giving named tensors (floats as f32, integers as i64) and which
//! nesting of the file held them. See docs/checkpoints.md.
//!
//! PyTorch files are never unpickled by Python's rules: [`pickle`] is a
//! small machine that knows only what `torch.save` writes for state dicts
//! and refuses every other global by name, so a malicious file cannot run
//! code. [`nesting`] finds the state dict (`{"model": sd}`, `{"ema": sd}`,
//! `{"trainer": {"var_wo_ddp": sd}}`, a bare state dict, ...), or follows
//! `--key a.b`. [`storage`] turns views of storages (offsets, strides,
//! f32/f16/bf16/f64 and integer types) into dense tensors.
//!
//! # Bounds
//! Files are memory-mapped and read in place. Nothing is allocated on the
//! word of a length field alone: string and storage sizes are checked
//! against the bytes present, a tensor's view against its storage, and the
//! tensors of one state dict may hold at most
//! [`torch_zip::VIEWS_PER_ELEMENT`] times the elements of the storages they
//! view (so a file's tensors take at most `8 * 4 = 32` bytes per byte of
//! the file, f32 from bool storage being the worst case; from safetensors,
//! at most 4 bytes per stored byte).

pub mod nesting;
pub mod pickle;
pub mod storage;
pub mod torch_zip;

use crate::error::{Result, RuntimeError};
use crate::tensor::HostTensor;
use std::collections::BTreeMap;
use std::path::Path;

/// Which reader a file went through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The zip format of `torch.save` (`.pth`, `.pt`, `.bin`, `.ckpt`).
    PyTorch,
    Safetensors,
}

/// The tensors of one checkpoint file.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// The file, as messages name it.
    pub source: String,
    pub format: Format,
    /// Where the state dict was: `""` for the top level, `model`,
    /// `trainer.var_wo_ddp`, ... (for safetensors, the `--key` prefix
    /// stripped, if any).
    pub nesting: String,
    /// Other state dicts the file holds (not read), most preferred first.
    pub others: Vec<String>,
    /// Tensors by key: floats as f32, integers and bools as i64.
    pub tensors: BTreeMap<String, HostTensor>,
}

/// Read `path`: a PyTorch zip checkpoint or a safetensors file (told apart
/// by content, not by name). `key` picks the state dict (`a.b`) instead of
/// the automatic search; for safetensors it is a key prefix to select and
/// strip (`model` keeps `model.x` as `x`).
pub fn open(path: &Path, key: Option<&str>) -> Result<Checkpoint> {
    let err = |why: String| RuntimeError::File { path: path.display().to_string(), why };
    let file = std::fs::File::open(path).map_err(|e| err(format!("cannot open: {e}")))?;
    let meta = file.metadata().map_err(|e| err(format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(err("not a regular file".into()));
    }
    if meta.len() == 0 {
        return from_bytes(&path.display().to_string(), &[], key);
    }
    // SAFETY: read-only; the tensors are copied out before the map is dropped.
    // As with any mapped file, another process truncating it meanwhile is
    // outside what we can guard against.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| err(format!("cannot map: {e}")))?;
    from_bytes(&path.display().to_string(), &map, key)
}

/// [`open`] on a file already in memory (`name` is for messages).
pub fn from_bytes(name: &str, bytes: &[u8], key: Option<&str>) -> Result<Checkpoint> {
    let err = |why: String| RuntimeError::File { path: name.to_string(), why };
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        let (tensors, nesting, others) = torch_zip::read(bytes, key).map_err(err)?;
        let tensors = tensors.into_iter().collect();
        return Ok(Checkpoint { source: name.into(), format: Format::PyTorch, nesting, others, tensors });
    }
    if bytes.first() == Some(&0x80) && bytes.get(1).is_some_and(|&p| p <= 5) {
        return Err(err("a legacy PyTorch file (saved before torch 1.6, or with \
                        _use_new_zipfile_serialization=False): re-save it with torch.save(torch.load(path), path)"
            .into()));
    }
    let tensors = crate::weights::read_tensors_from_bytes(name, bytes).map_err(|e| match e {
        RuntimeError::File { path, why } if why.starts_with("not a valid safetensors") => {
            RuntimeError::File { path, why: format!("neither a PyTorch zip checkpoint nor a safetensors file ({why})") }
        }
        e => e,
    })?;
    let (tensors, nesting) = match key {
        None => (tensors, String::new()),
        Some(k) => {
            let prefix = format!("{k}.");
            let kept: BTreeMap<String, HostTensor> = tensors
                .iter()
                .filter_map(|(n, t)| n.strip_prefix(&prefix).map(|rest| (rest.to_string(), t.clone())))
                .collect();
            if kept.is_empty() {
                return Err(err(format!("--key {k}: no tensor name starts with `{prefix}`")));
            }
            (kept, k.to_string())
        }
    };
    Ok(Checkpoint { source: name.into(), format: Format::Safetensors, nesting, others: vec![], tensors })
}
