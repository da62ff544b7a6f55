//! The PyTorch zip format (`torch.save` since 1.6): one top folder holding
//! `data.pkl` (the pickle), `data/KEY` (one stored entry per storage),
//! `version` and, in newer files, `byteorder`. Entries are read in place
//! from the (memory-mapped) file: only stored (uncompressed), unencrypted
//! entries are accepted, which is what torch writes.

use super::nesting::{self, Found};
use super::pickle::{self, Obj, Pickle};
use super::storage::materialise;
use crate::tensor::HostTensor;
use std::collections::HashMap;
use std::io::Cursor;

/// How many elements the tensors of a state dict may have in all, per
/// element of the storages they view (views of one storage, tied weights):
/// the output of a file is bounded by the file.
pub const VIEWS_PER_ELEMENT: usize = 4;

/// The state dict a PyTorch zip file holds: `(tensors in file order, path used, other candidates)`.
pub type StateDict = (Vec<(String, HostTensor)>, String, Vec<String>);

pub fn read(bytes: &[u8], key: Option<&str>) -> Result<StateDict, String> {
    let mut zip =
        zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| format!("not a valid PyTorch zip checkpoint: {e}"))?;
    let names: Vec<String> = zip.file_names().filter_map(|n| n.ok().map(|n| n.to_string())).collect();
    let pkls: Vec<&String> = names.iter().filter(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1).collect();
    let prefix = match pkls.as_slice() {
        [one] => one.trim_end_matches("data.pkl").to_string(),
        [] if names.iter().any(|n| n.ends_with("/constants.pkl") || n.contains("/code/")) => {
            return Err("a TorchScript archive (torch.jit.save), not a torch.save checkpoint: \
                        save the state dict with torch.save(model.state_dict(), path)"
                .into())
        }
        [] => return Err("a zip file without `data.pkl`: not a PyTorch checkpoint".into()),
        _ => return Err(format!("a zip file with {} `data.pkl` entries: not a PyTorch checkpoint", pkls.len())),
    };
    let entry = |zip: &mut zip::ZipArchive<Cursor<&[u8]>>, name: &str| -> Result<Option<&[u8]>, String> {
        let Some(i) = zip.index_for_name(name) else { return Ok(None) };
        let f = zip.by_index_raw(i).map_err(|e| format!("entry `{name}`: {e}"))?;
        if f.compression() != zip::CompressionMethod::Stored || f.encrypted() {
            return Err(format!("entry `{name}` is compressed or encrypted; torch.save stores entries uncompressed"));
        }
        let start = f.data_start().ok_or_else(|| format!("entry `{name}` has no data"))?;
        let (size, csize) = (f.size(), f.compressed_size());
        if size != csize {
            return Err(format!("entry `{name}` claims {size} bytes but stores {csize}"));
        }
        let range = usize::try_from(start)
            .ok()
            .zip(usize::try_from(size).ok())
            .and_then(|(s, n)| Some(s..s.checked_add(n)?))
            .filter(|r| r.end <= bytes.len())
            .ok_or_else(|| format!("entry `{name}` extends past the end of the file"))?;
        Ok(Some(&bytes[range]))
    };
    if let Some(order) = entry(&mut zip, &format!("{prefix}byteorder"))? {
        if order != b"little" {
            return Err(format!(
                "byte order `{}`: only little-endian checkpoints are supported",
                String::from_utf8_lossy(&order[..order.len().min(16)])
            ));
        }
    }
    let pkl = entry(&mut zip, &format!("{prefix}data.pkl"))?.expect("listed above");
    let pickle = pickle::load(pkl).map_err(|e| format!("{prefix}data.pkl: {e}"))?;

    let (found, others) = match key {
        Some(k) => (nesting::at_key(&pickle, k)?, vec![]),
        None => {
            let mut all = nesting::candidates(&pickle);
            if all.is_empty() {
                return Err(format!(
                    "no state dict (a dict of tensors) in the checkpoint: the top level is {}{}",
                    nesting::describe(&pickle, &pickle.root),
                    top_keys(&pickle)
                ));
            }
            let first = all.remove(0);
            (first, all.into_iter().map(|f| f.path).collect())
        }
    };
    let tensors = tensors_of(&pickle, &found, &mut |key| entry(&mut zip, &format!("{prefix}data/{key}")))?;
    Ok((tensors, found.path, others))
}

fn top_keys(p: &Pickle) -> String {
    match p.obj(&p.root) {
        Some(Obj::Dict(d)) if !d.is_empty() => {
            let keys: Vec<String> = d
                .iter()
                .take(12)
                .map(|(k, v)| match k {
                    pickle::Value::Str(s) => format!("`{s}`: {}", nesting::describe(p, v)),
                    _ => nesting::describe(p, k),
                })
                .collect();
            format!(" ({})", keys.join(", "))
        }
        _ => String::new(),
    }
}

/// Materialise the tensors of `found`, reading each storage once.
/// Reads one archive entry by storage key: its bytes, or `None` when absent.
type EntryReader<'e, 'b> = dyn FnMut(&str) -> Result<Option<&'b [u8]>, String> + 'e;

fn tensors_of<'b>(
    p: &Pickle,
    found: &Found<'_>,
    entry: &mut EntryReader<'_, 'b>,
) -> Result<Vec<(String, HostTensor)>, String> {
    let mut storages: HashMap<usize, &'b [u8]> = HashMap::new();
    let mut storage_elements = 0usize;
    let mut out_elements = 0usize;
    let mut out: Vec<(String, HostTensor)> = Vec::with_capacity(found.entries.len());
    let mut index: HashMap<&str, usize> = HashMap::new();
    for &(key, v) in &found.entries {
        let Some(Obj::Tensor(meta)) = p.obj(v) else { unreachable!("a state dict holds tensors") };
        let Some(Obj::Storage { ty, key: skey, numel }) = p.arena.get(meta.storage) else {
            unreachable!("tensors view storages")
        };
        let bytes = match storages.get(&meta.storage) {
            Some(b) => *b,
            None => {
                let b = entry(skey)?
                    .ok_or_else(|| format!("tensor `{key}`: storage `data/{skey}` is not in the archive"))?;
                let need = numel.checked_mul(ty.size()).filter(|&n| n <= b.len()).ok_or_else(|| {
                    format!(
                        "tensor `{key}`: storage `data/{skey}` claims {numel} {} elements but holds {} bytes",
                        ty.class(),
                        b.len()
                    )
                })?;
                storage_elements += numel;
                storages.insert(meta.storage, &b[..need]);
                &b[..need]
            }
        };
        let count = meta.size.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).unwrap_or(usize::MAX);
        out_elements = out_elements.saturating_add(count);
        if out_elements > storage_elements.saturating_mul(VIEWS_PER_ELEMENT).saturating_add(1024) {
            return Err(format!(
                "tensor `{key}`: the state dict's tensors would hold {out_elements} elements, more than \
                 {VIEWS_PER_ELEMENT} views of the {storage_elements} elements its storages hold"
            ));
        }
        let t = materialise(meta, *ty, *numel, bytes).map_err(|e| format!("tensor `{key}`: {e}"))?;
        match index.get(key) {
            Some(&i) => out[i].1 = t,
            None => {
                index.insert(key, out.len());
                out.push((key.to_string(), t));
            }
        }
    }
    Ok(out)
}
