//! One teacher-forced forward with tensors named as the reference code names
//! them (`ecarc forward`), for parity checks: the `forward` plan (and a
//! denoiser's `forward.guided`, DiT's `forward_with_cfg`), its inputs and
//! results renamed by the names the model declares (`forward { labels
//! "label_B" ... }` in `models/std`); a port the model does not name keeps
//! its own name.

use super::Generator;
use crate::error::{Result, RuntimeError};
use crate::tensor::HostTensor;
use ecarc_compiler::ir::{Bindings, DType};
use ecarc_compiler::plan::{Keep, Plan};
use std::collections::BTreeMap;

use ecarc_compiler::lower::plans::GUIDANCE_PORT;

impl Generator<'_> {
    fn forward_plan(&self, guided: bool) -> Result<&Plan> {
        let name = if guided { "forward.guided" } else { "forward" };
        self.program.plan(name).ok_or_else(|| {
            RuntimeError::Invalid(if guided {
                format!("`--cfg` applies to a denoiser's guided forward; `{}` has none", self.spec.name)
            } else {
                format!("`{}` has no teacher-forced forward", self.spec.name)
            })
        })
    }

    /// The reference name of `port` in the plan `plan`.
    pub(super) fn reference_name<'a>(&'a self, plan: &str, port: &'a str) -> &'a str {
        self.spec.entry_names.get(plan).and_then(|m| m.get(port)).map_or(port, String::as_str)
    }

    /// The inputs the forward expects for `n` images (`guided`: the guided
    /// forward, whose batch holds both halves): reference name, dtype, shape.
    pub fn forward_signature(&self, n: u64, guided: bool) -> Result<Vec<(String, DType, Vec<usize>)>> {
        let plan = self.forward_plan(guided)?;
        let b = Bindings::new(n, 0, 0);
        Ok(plan
            .inputs
            .iter()
            .filter(|i| i.name != GUIDANCE_PORT)
            .map(|i| {
                let shape = i.ty.shape.iter().map(|d| d.eval(&b) as usize).collect();
                (self.reference_name(&plan.name, &i.name).to_string(), i.ty.dtype, shape)
            })
            .collect())
    }

    /// One teacher-forced forward. `inputs` by reference name (see
    /// [`Generator::forward_signature`]); `cfg`: the guided forward with this
    /// scale. Returns the results, full tensors by reference name.
    pub fn forward(
        &self,
        inputs: &BTreeMap<String, HostTensor>,
        cfg: Option<f64>,
    ) -> Result<Vec<(String, HostTensor)>> {
        let plan = self.forward_plan(cfg.is_some())?;
        let mut given = BTreeMap::new();
        for i in &plan.inputs {
            if i.name == GUIDANCE_PORT {
                given.insert(i.name.clone(), HostTensor::scalar(cfg.unwrap_or(1.0) as f32));
                continue;
            }
            if let Some(t) = inputs.get(self.reference_name(&plan.name, &i.name)) {
                given.insert(i.name.clone(), t.clone());
            }
        }
        // A forward may be given the null class (row `classes`, the unconditional half).
        if let Some(l) = given.get("labels") {
            let classes = self.spec.classes as i64;
            let l = super::interpret::as_dtype(self.reference_name(&plan.name, "labels"), l, DType::I64)?;
            if let Some(bad) = l.as_i64().unwrap_or_default().iter().copied().find(|&c| c < 0 || c > classes) {
                return Err(RuntimeError::Invalid(format!(
                    "class {bad} is out of range: `{}` has classes 0..{} and the null class {classes}",
                    self.spec.name,
                    classes - 1
                )));
            }
        }
        let run = self.run_plan(&plan.name, &given, None, 0, Keep::Nothing, &super::Quiet)?;
        plan.results
            .iter()
            .map(|(r, _)| Ok((self.reference_name(&plan.name, r).to_string(), self.backend.download(&run.results[r])?)))
            .collect()
    }
}
