//! Finding the state dict inside what a checkpoint's pickle built: the top
//! object itself (a bare state dict), or a dict of tensors nested under
//! string keys (`model`, `state_dict`, `module`, `ema`, `trainer.var_wo_ddp`,
//! ...). A state dict is a non-empty dict whose keys are all strings and
//! whose values are all tensors.
//!
//! Without `--key`, every state dict within [`MAX_DEPTH`] levels is a
//! candidate; one candidate is used as it is, several are ranked by
//! [`PREFERRED`] (the EMA weights first: the official sampling code of DiT
//! and MAR loads them), then by depth and order. With `--key a.b` the path
//! is followed exactly (a key that itself contains dots, `blocks.0`, is
//! matched whole) and must end at a state dict.

use super::pickle::{Obj, Pickle, Value};
use std::collections::BTreeSet;

/// How deep the search for state dicts goes.
pub const MAX_DEPTH: usize = 4;

/// Known nestings, most preferred first, when a file holds several state dicts.
pub const PREFERRED: &[&str] =
    &["", "ema", "model_ema", "state_dict", "model", "module", "trainer.var_wo_ddp", "net", "generator"];

/// A state dict found in the pickle.
#[derive(Debug)]
pub struct Found<'p> {
    /// Dot-joined path of keys ("" for the top level).
    pub path: String,
    /// `(key, tensor value)` in file order; a key set twice keeps its last value.
    pub entries: Vec<(&'p str, &'p Value)>,
}

fn as_state_dict<'p>(p: &'p Pickle, v: &Value) -> Option<Vec<(&'p str, &'p Value)>> {
    let Some(Obj::Dict(d)) = p.obj(v) else { return None };
    if d.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(d.len());
    for (k, v) in d {
        match (k, p.obj(v)) {
            (Value::Str(k), Some(Obj::Tensor(_))) => out.push((&**k, v)),
            _ => return None,
        }
    }
    Some(out)
}

/// Every state dict within [`MAX_DEPTH`] levels of string-keyed dicts, in
/// the order [`PREFERRED`] ranks them.
pub fn candidates(p: &Pickle) -> Vec<Found<'_>> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    let mut queue = vec![(String::new(), &p.root, 0usize)];
    while let Some((path, v, depth)) = queue.pop() {
        if let Value::Obj(i) = v {
            if !seen.insert(*i) {
                continue;
            }
        }
        if let Some(entries) = as_state_dict(p, v) {
            out.push((depth, out.len(), Found { path, entries }));
            continue;
        }
        if depth == MAX_DEPTH {
            continue;
        }
        if let Some(Obj::Dict(d)) = p.obj(v) {
            for (k, child) in d.iter().rev() {
                if let Value::Str(k) = k {
                    let path = if path.is_empty() { k.to_string() } else { format!("{path}.{k}") };
                    queue.push((path, child, depth + 1));
                }
            }
        }
    }
    let rank = |f: &Found| PREFERRED.iter().position(|k| *k == f.path).unwrap_or(PREFERRED.len());
    out.sort_by_key(|(depth, order, f)| (rank(f), *depth, *order));
    out.into_iter().map(|(_, _, f)| f).collect()
}

/// Follow `key` (`a.b`) from the top; the state dict there, or why not.
pub fn at_key<'p>(p: &'p Pickle, key: &str) -> Result<Found<'p>, String> {
    let mut v = &p.root;
    let mut rest = key;
    let mut walked = String::new();
    while !rest.is_empty() {
        let here = if walked.is_empty() { "the top level".to_string() } else { format!("`{walked}`") };
        let Some(Obj::Dict(d)) = p.obj(v) else {
            return Err(format!("--key {key}: {here} is {}, not a dict", describe(p, v)));
        };
        // The longest key that `rest` starts with (keys may contain dots).
        let next = d
            .iter()
            .filter_map(|(k, child)| match k {
                Value::Str(k) if rest == &**k || rest.starts_with(&format!("{k}.")) => Some((&**k, child)),
                _ => None,
            })
            .max_by_key(|(k, _)| k.len());
        let Some((k, child)) = next else {
            let keys: Vec<String> = d.iter().take(12).map(|(k, _)| key_text(k)).collect();
            let more = if d.len() > 12 { ", ..." } else { "" };
            return Err(format!("--key {key}: {here} has no key `{rest}` (its keys: {}{more})", keys.join(", ")));
        };
        walked = if walked.is_empty() { k.to_string() } else { format!("{walked}.{k}") };
        rest = rest[k.len()..].trim_start_matches('.');
        v = child;
    }
    match as_state_dict(p, v) {
        Some(entries) => Ok(Found { path: walked, entries }),
        None => Err(format!("--key {key}: `{walked}` is {}, not a state dict (a dict of tensors)", describe(p, v))),
    }
}

fn key_text(k: &Value) -> String {
    match k {
        Value::Str(s) => format!("`{s}`"),
        Value::Int(i) => i.to_string(),
        _ => "(not a string)".into(),
    }
}

/// A short description of a value for messages.
pub fn describe(p: &Pickle, v: &Value) -> String {
    match v {
        Value::None => "None".into(),
        Value::Bool(_) => "a bool".into(),
        Value::Int(_) => "an integer".into(),
        Value::Float(_) => "a float".into(),
        Value::Str(_) => "a string".into(),
        Value::Bytes(_) => "bytes".into(),
        Value::Global(_) => "a class".into(),
        Value::Obj(_) => match p.obj(v) {
            Some(Obj::Dict(d)) => {
                let tensors = d.iter().filter(|(_, v)| matches!(p.obj(v), Some(Obj::Tensor(_)))).count();
                format!("a dict of {} entries ({tensors} tensors)", d.len())
            }
            Some(Obj::List(l)) => format!("a list of {} items", l.len()),
            Some(Obj::Tuple(t)) => format!("a tuple of {} items", t.len()),
            Some(Obj::Tensor(_)) => "a tensor".into(),
            Some(Obj::Storage { .. }) => "a storage".into(),
            None => "nothing".into(),
        },
    }
}
