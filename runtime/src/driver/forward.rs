//! One teacher-forced forward with tensors named as the reference code names
//! them, for parity checks (`ecarc forward`). See docs/runtime.md for the
//! names and shapes per family.

use super::{dd, Generator, Step};
use crate::backend::Buffer;
use crate::error::{Result, RuntimeError};
use crate::tensor::HostTensor;
use ecarc_compiler::ir::{Bindings, DType};
use std::collections::{BTreeMap, HashMap};

/// Reference names of the labels per family, tried in order.
const LABEL_NAMES: [&str; 4] = ["label_B", "cond_idx", "y", "labels"];

/// Which family's names a model's forward uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Naming {
    /// VAR: `label_B`, `x_BLCv_wo_first_l` -> `logits_BLV`.
    Var,
    /// LlamaGen: `cond_idx`, `idx` -> `logits`.
    LlamaGen,
    /// DiT: `x`, `t`, `y` -> `out` (and `cfg_x`, `cfg_t`, `cfg_y` -> `cfg_out`).
    Dit,
    /// Distilled Decoding: labels, `x`, `t` -> `x_out`, `logits`.
    Dd,
    /// Our own continuous families (ECAR): `labels`, `x` -> `z`.
    Flow,
}

impl Generator<'_> {
    pub fn naming(&self) -> Naming {
        if self.has_input("forward", "latent") {
            Naming::Dit
        } else if self.spec.distill.is_some() {
            Naming::Dd
        } else if self.has_input("forward", "tokens") {
            Naming::LlamaGen
        } else if self.program.graph("forward").is_some_and(|g| g.outputs.iter().any(|(n, _)| n == "z")) {
            Naming::Flow
        } else {
            Naming::Var
        }
    }

    /// The inputs `forward` expects, by reference name, with their shapes for
    /// `n` images (`B` = n).
    pub fn forward_signature(&self, n: u64) -> Result<Vec<(String, DType, Vec<usize>)>> {
        let run = self.forward_run()?;
        let bind = Bindings::new(n, run, 0);
        let shape = |i: &str| self.input_shape("forward", i, &bind);
        let labels = match self.naming() {
            Naming::Var => "label_B",
            Naming::LlamaGen => "cond_idx",
            Naming::Dit => "y",
            Naming::Dd => {
                if self.has_input("forward", "rope_cos") {
                    "cond_idx"
                } else {
                    "label_B"
                }
            }
            Naming::Flow => "labels",
        };
        let mut v = vec![(labels.to_string(), DType::I64, vec![n as usize])];
        match self.naming() {
            Naming::Var => v.push(("x_BLCv_wo_first_l".into(), DType::F32, shape("x")?)),
            Naming::LlamaGen => v.push(("idx".into(), DType::I64, shape("tokens")?)),
            Naming::Dit => {
                v.push(("x".into(), DType::F32, shape("latent")?));
                v.push(("t".into(), DType::F32, vec![n as usize]));
            }
            Naming::Dd => {
                v.push(("x".into(), DType::F32, shape("x")?));
                v.push(("t".into(), DType::I64, vec![]));
            }
            Naming::Flow => v.push(("x".into(), DType::F32, shape("x")?)),
        }
        Ok(v)
    }

    fn forward_run(&self) -> Result<u64> {
        // Positions of one forward: its run in the plan (DD), or the teacher-forced
        // sequence (every token but the last, after the start tokens).
        self.graph("forward")?;
        if let Some(r) = self.program.plan.iter().find(|r| r.graph == "forward") {
            return Ok(r.tokens);
        }
        let total = self.spec.schedule.total_tokens();
        let raster = matches!(self.spec.schedule.layout, ecarc_compiler::spec::Layout::Raster { .. });
        let prefix = self.positions.extra_prefix;
        Ok(if raster { total.saturating_sub(1) + prefix } else { total })
    }

    /// One teacher-forced forward. `inputs` by reference name (see
    /// [`Generator::forward_signature`]); `cfg`: DiT's guided forward on the
    /// `cfg_*` inputs with this scale. Returns full tensors by reference name.
    pub fn forward(
        &self,
        inputs: &BTreeMap<String, HostTensor>,
        cfg: Option<f64>,
    ) -> Result<Vec<(String, HostTensor)>> {
        let naming = self.naming();
        fn get<'a>(inputs: &'a BTreeMap<String, HostTensor>, names: &[&'a str]) -> Option<(&'a str, &'a HostTensor)> {
            names.iter().find_map(|n| inputs.get(*n).map(|t| (*n, t)))
        }
        let (prefix, guided) = match (naming, cfg) {
            (Naming::Dit, Some(_)) => ("cfg_", true),
            (_, Some(_)) => return Err(RuntimeError::Invalid("`--cfg` applies to DiT's guided forward only".into())),
            _ => ("", false),
        };
        let label_names: Vec<String> =
            if guided { vec!["cfg_y".into()] } else { LABEL_NAMES.iter().map(|s| s.to_string()).collect() };
        let label_refs: Vec<&str> = label_names.iter().map(|s| s.as_str()).collect();
        let (lname, labels) = get(inputs, &label_refs).ok_or_else(|| {
            RuntimeError::Invalid(format!("missing the class labels: give one of {}", label_names.join(", ")))
        })?;
        let labels: Vec<i64> = labels
            .as_i64()
            .ok_or_else(|| RuntimeError::Invalid(format!("`{lname}` must hold integers (i64)")))?
            .to_vec();
        let n = labels.len() as u64;
        let signature = self.forward_signature(n)?;
        let mut given: Vec<(&str, Buffer)> = Vec::new();
        let mut dd_t = None;
        for (name, dtype, shape) in signature.iter().skip(1) {
            let key = format!("{prefix}{name}");
            let t = inputs
                .get(&key)
                .ok_or_else(|| RuntimeError::Invalid(format!("missing input `{key}`: {}{shape:?}", dtype.name())))?;
            let ok_dtype = t.dtype() == *dtype || (*dtype == DType::I64 && name == "t");
            if t.shape != *shape || !ok_dtype {
                return Err(RuntimeError::Invalid(format!(
                    "input `{key}` is {}{:?}; the model expects {}{shape:?}",
                    t.dtype().name(),
                    t.shape,
                    dtype.name()
                )));
            }
            let internal = match (naming, name.as_str()) {
                (Naming::Var, _) => "x",
                (Naming::LlamaGen, _) => "tokens",
                (Naming::Dit, "x") => "latent",
                (Naming::Dit, "t") => "t",
                (Naming::Dd, "t") => {
                    let v = match &t.data {
                        crate::tensor::Data::I64(v) => v.first().copied().unwrap_or(0),
                        crate::tensor::Data::F32(v) => v.first().copied().unwrap_or(0.0) as i64,
                    };
                    dd_t = Some(v.max(0) as u64);
                    continue;
                }
                _ => "x",
            };
            given.push((internal, self.upload(t)?));
        }
        let mut out = if naming == Naming::Dd {
            let x = given.iter().find(|(k, _)| *k == "x").map(|(_, b)| b.clone()).expect("x is in the signature");
            let body = dd::body_stages(self, x.shape[1]);
            dd::forward_raw(self, &labels, &x, dd::data_len(&body, dd_t.unwrap_or(0)))?
        } else {
            let refs: Vec<(&str, &Buffer)> = given.iter().map(|(k, v)| (*k, v)).collect();
            let mut st =
                Step { images: n, tokens: self.forward_run()?, past: 0, labels: &labels, cfg_scale: 1.0, rng: None };
            self.call("forward", &mut st, &refs, &HashMap::new())?
        };
        let mut result = Vec::new();
        match naming {
            Naming::Var => result.push(("logits_BLV".to_string(), self.take(&mut out, "logits")?)),
            Naming::LlamaGen => result.push(("logits".to_string(), self.take(&mut out, "logits")?)),
            Naming::Flow => result.push(("z".to_string(), self.take(&mut out, "z")?)),
            Naming::Dit => {
                let o = self.take(&mut out, "out")?;
                if guided {
                    let lat = self.spec.tokenizer.token_channels as usize;
                    let ch = self.spec.sampler.cfg_channels.map_or(lat, |c| c as usize);
                    result.push(("cfg_out".to_string(), guide_halves(&o, ch, cfg.unwrap_or(1.0) as f32)?));
                } else {
                    result.push(("out".to_string(), o));
                }
            }
            Naming::Dd => {
                for name in ["x_out", "logits"] {
                    let b = out.remove(name).ok_or_else(|| RuntimeError::Invalid(format!("no output `{name}`")))?;
                    let len = b.shape[1] - 1;
                    let s = self.glue.slice(&b, 1, 1, len)?;
                    result.push((name.to_string(), self.backend.download(&s)?));
                }
            }
        }
        Ok(result)
    }

    fn take(&self, out: &mut HashMap<String, Buffer>, name: &str) -> Result<HostTensor> {
        let b = out.remove(name).ok_or_else(|| RuntimeError::Invalid(format!("the forward has no output `{name}`")))?;
        self.backend.download(&b)
    }
}

/// DiT's `forward_with_cfg` on an output `[2N, C, H, W]` (conditional half
/// first): the first `channels` channels of both halves become
/// `u + s (c - u)`; the others stay as each half computed them.
pub fn guide_halves(out: &HostTensor, channels: usize, scale: f32) -> Result<HostTensor> {
    let v = out.as_f32().ok_or_else(|| RuntimeError::Invalid("guidance on a non-float output".into()))?;
    let n2 = out.shape[0];
    if n2 % 2 != 0 || out.shape.len() != 4 {
        return Err(RuntimeError::Invalid(format!("guidance needs [2N, C, H, W], got {:?}", out.shape)));
    }
    let (n, c, hw) = (n2 / 2, out.shape[1], out.shape[2] * out.shape[3]);
    let mut r = v.to_vec();
    for i in 0..n {
        for ch in 0..channels.min(c) {
            for p in 0..hw {
                let ci = (i * c + ch) * hw + p;
                let ui = ((i + n) * c + ch) * hw + p;
                let g = v[ui] + scale * (v[ci] - v[ui]);
                r[ci] = g;
                r[ui] = g;
            }
        }
    }
    Ok(HostTensor::f32(out.shape.clone(), r))
}
