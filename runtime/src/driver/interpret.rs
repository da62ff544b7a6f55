//! The plan interpreter: every run of a plan in order, each program's sources
//! bound as the plan says, its outputs stored under the plan's value names.
//! It knows no family: what differs between families is all in the plan.
//!
//! Every float output is checked for NaN and infinities as it is produced, so
//! a setting or an input that breaks the numerics is reported with the stage,
//! program and tensor where it first shows, never written out as an image.

use super::sources::{shape_of, RunCtx, Streams};
use super::{Generator, Observer, Outline, Timing};
use crate::backend::{Args, Buffer};
use crate::error::{Result, RuntimeError};
use crate::tensor::{Data, HostTensor};
use ecarc_compiler::ir::{Bindings, DType, Dim, TensorType};
use ecarc_compiler::plan::{expand, Keep, Plan, Source};
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

/// What a plan run produced.
pub struct PlanRun {
    /// The plan's results, by result name.
    pub results: HashMap<String, Buffer>,
    /// Recorded values kept at the level asked for, in the order recorded.
    pub records: Vec<(String, HostTensor)>,
    pub timings: Vec<Timing>,
}

/// The number of images `B` for which `ty` has the first axis `len`.
fn images_for(ty: &TensorType, len: usize) -> Option<u64> {
    let first = ty.shape.first()?;
    let per = first.eval(&Bindings::new(1, 0, 0));
    if per == 0 || first.as_const().is_some() || first.eval(&Bindings::new(2, 0, 0)) != 2 * per {
        return None;
    }
    (len as u64).is_multiple_of(per).then_some(len as u64 / per)
}

/// `t` as `dtype`: integers given for a float input (timesteps) and integral
/// floats for an integer one are converted exactly; anything else is refused.
pub(super) fn as_dtype(name: &str, t: &HostTensor, dtype: DType) -> Result<HostTensor> {
    if t.dtype() == dtype {
        return Ok(t.clone());
    }
    match (&t.data, dtype) {
        (Data::I64(v), DType::F32) if v.iter().all(|&x| (x as f32) as i64 == x) => {
            Ok(HostTensor::f32(t.shape.clone(), v.iter().map(|&x| x as f32).collect()))
        }
        (Data::F32(v), DType::I64) if v.iter().all(|x| x.fract() == 0.0 && x.is_finite()) => {
            Ok(HostTensor::i64(t.shape.clone(), v.iter().map(|&x| x as i64).collect()))
        }
        _ => Err(RuntimeError::Invalid(format!(
            "`{name}` holds {} values that are not exactly {}",
            t.dtype().name(),
            dtype.name()
        ))),
    }
}

fn type_text(ty: &TensorType, b: Option<&Bindings>) -> String {
    let dims: Vec<String> = match b {
        Some(b) => ty.shape.iter().map(|d| d.eval(b).to_string()).collect(),
        None => ty.shape.iter().map(Dim::to_string).collect(),
    };
    format!("{}[{}]", ty.dtype.name(), dims.join(", "))
}

/// Where a value came from, for messages: `stage 3 (step.next)`.
/// A float output that is not finite: the run stops here.
fn non_finite(what: &str, why: &str) -> RuntimeError {
    RuntimeError::Invalid(format!(
        "{what} {why}; check the inputs and the sampler settings (guidance scale, temperature)"
    ))
}

fn place(plan: &Plan, stage: u64, program: &str) -> String {
    if stage >= plan.stages {
        format!("`{program}` after the stages")
    } else {
        format!("stage {} (`{program}`)", stage + 1)
    }
}

impl Generator<'_> {
    /// The number of images a run is for: the labels', or what the given
    /// inputs' first axes say.
    fn images(&self, plan: &Plan, given: &BTreeMap<String, HostTensor>, labels: Option<&[i64]>) -> Result<u64> {
        if let Some(l) = labels {
            return Ok(l.len() as u64);
        }
        for i in &plan.inputs {
            if let Some(t) = given.get(&i.name) {
                if let Some(n) = t.shape.first().and_then(|&len| images_for(&i.ty, len)) {
                    return Ok(n);
                }
            }
        }
        Err(RuntimeError::Invalid(format!("the `{}` plan cannot tell how many images its inputs hold", plan.name)))
    }

    /// Run the plan `name`: `given` plan inputs (others take their defaults),
    /// `labels` one per image, randomness from `seed`, records kept up to `keep`.
    pub fn run_plan(
        &self,
        name: &str,
        given: &BTreeMap<String, HostTensor>,
        labels: Option<&[i64]>,
        seed: u64,
        keep: Keep,
        observer: &dyn Observer,
    ) -> Result<PlanRun> {
        // Checks left by a plan that stopped midway are not this plan's.
        self.backend.deferred_non_finite(true)?;
        let plan = self.plan(name)?;
        let prepared = self.lowering(name).1;
        let images = self.images(plan, given, labels)?;
        let mut streams = Streams::new(seed);
        let mut values: HashMap<String, Buffer> = HashMap::new();
        let mut ints: HashMap<String, i64> = HashMap::new();
        let plain = Bindings::new(images, 0, 0);

        // ---- plan inputs: given, or their defaults --------------------------------
        for input in &plan.inputs {
            let want = shape_of(&input.ty, &plain);
            let t = match (given.get(&input.name), &input.default, labels) {
                (Some(t), _, _) => {
                    let t = as_dtype(self.reference_name(name, &input.name), t, input.ty.dtype)?;
                    if t.shape != want {
                        return Err(RuntimeError::Invalid(format!(
                            "input `{}` is {}{:?}; `{}` takes {} here ({images} image(s))",
                            self.reference_name(name, &input.name),
                            t.dtype().name(),
                            t.shape,
                            self.spec.name,
                            type_text(&input.ty, Some(&plain))
                        )));
                    }
                    t
                }
                (None, _, Some(l)) if input.name == "labels" => HostTensor::i64(vec![l.len()], l.to_vec()),
                (None, Some(src), _) => {
                    let mut rc = RunCtx { labels, streams: &mut streams, settings: &self.settings, given_ints: &ints };
                    let b = self.source(name, src, &input.ty, &plain, 0, 0, &mut rc)?;
                    values.insert(input.name.clone(), b);
                    continue;
                }
                (None, None, _) => {
                    return Err(RuntimeError::Invalid(format!(
                        "missing input `{}`: {}",
                        self.reference_name(name, &input.name),
                        type_text(&input.ty, Some(&plain))
                    )))
                }
            };
            if t.dtype() == DType::I64 && t.shape.is_empty() {
                ints.insert(input.name.clone(), t.as_i64().map_or(0, |v| v[0]));
            }
            values.insert(input.name.clone(), self.backend.upload(&t)?);
        }
        let labels_vec: Option<Vec<i64>> = match labels {
            Some(l) => Some(l.to_vec()),
            None => given
                .get("labels")
                .and_then(|t| as_dtype("labels", t, DType::I64).ok())
                .map(|t| t.as_i64().unwrap_or(&[]).to_vec()),
        };

        // ---- the runs ---------------------------------------------------------------
        let estimate = super::estimate::plan_seconds(self, plan, images);
        observer.begin(&Outline {
            plan: plan.name.clone(),
            stages: plan.stages,
            runs_per_stage: plan.runs_per_stage(),
            total_runs: plan.total_runs(),
            estimate,
        });
        let mut records = Vec::new();
        let mut timings: Vec<Timing> = Vec::new();
        let mut current: Option<(u64, Instant, u64)> = None;
        let close = |cur: Option<(u64, Instant, u64)>, timings: &mut Vec<Timing>| -> Result<()> {
            if let Some((stage, started, runs)) = cur {
                self.backend.synchronize()?;
                let what = if stage >= plan.stages { "decode".to_string() } else { format!("stage {}", stage + 1) };
                timings.push(Timing { what, runs, seconds: started.elapsed().as_secs_f64() });
            }
            Ok(())
        };
        for (e, i) in plan.runs() {
            let stage = e.stage.eval(i);
            if current.map(|c| c.0) != Some(stage) {
                close(current.take(), &mut timings)?;
                observer.stage(stage);
                current = Some((stage, Instant::now(), 0));
            }
            let b = e.bindings(images, i);
            let ports = &prepared.ports[&e.program];
            // (port, the plan value it reads, whether a state, the buffer)
            let mut bound: Vec<(&str, Option<&str>, bool, Buffer)> = Vec::with_capacity(e.inputs.len());
            for bind in &e.inputs {
                let port = ports.iter().find(|p| p.name == bind.port).ok_or_else(|| {
                    RuntimeError::Invalid(format!("program `{}` has no source `{}`", e.program, bind.port))
                })?;
                let buf = match &bind.source {
                    Source::Value(v) => match values.get(v) {
                        Some(b) => b.clone(),
                        None if plan.zeros.contains(v) => {
                            self.backend.upload(&HostTensor::zeros(port.ty.dtype, shape_of(&port.ty, &b)))?
                        }
                        None => {
                            return Err(RuntimeError::Invalid(format!(
                                "{}: the value `{v}` is read before it is written",
                                place(plan, stage, &e.program)
                            )))
                        }
                    },
                    src => {
                        let mut rc = RunCtx {
                            labels: labels_vec.as_deref(),
                            streams: &mut streams,
                            settings: &self.settings,
                            given_ints: &ints,
                        };
                        self.source(&e.program, src, &port.ty, &b, stage, i, &mut rc)?
                    }
                };
                let value = match &bind.source {
                    Source::Value(v) => Some(v.as_str()),
                    _ => None,
                };
                bound.push((bind.port.as_str(), value, port.state, buf));
            }
            // Records of what the entry was given, taken before the run
            // (carried state is handed over to it).
            for r in e.records.iter().filter(|r| r.keep <= keep) {
                if let Some(("in", p)) = r.port.split_once(':') {
                    if let Some((.., buf)) = bound.iter().find(|(n, ..)| *n == p) {
                        records.push((expand(&r.name, stage), self.backend.download(buf)?));
                    }
                }
            }
            let (states, inputs): (Vec<_>, Vec<_>) = bound.into_iter().partition(|(.., state, _)| *state);
            let mut args = Args::default();
            for (port, .., buf) in &inputs {
                args.inputs.insert(port, buf);
            }
            // A state the entry writes back under its own name is handed
            // over: with no other reference, the backend updates it in place.
            for (port, value, _, buf) in states {
                if let Some(v) = value.filter(|v| e.outputs.iter().any(|(o, w)| o == port && w == v)) {
                    values.remove(v);
                }
                args.states.insert(port, buf);
            }
            let outputs: HashMap<String, Buffer> =
                self.backend.run(&prepared.exes[&e.program], &b, args)?.into_iter().collect();
            for (name, buf) in &outputs {
                let what = || format!("{}: its output `{name}`", place(plan, stage, &e.program));
                if self.backend.defer_non_finite(buf, &what())? {
                    continue;
                }
                if let Some(why) = self.backend.non_finite(buf)? {
                    return Err(non_finite(&what(), &why));
                }
            }
            for r in e.records.iter().filter(|r| r.keep <= keep) {
                if let Some(("out", p)) = r.port.split_once(':') {
                    if let Some(buf) = outputs.get(p) {
                        records.push((expand(&r.name, stage), self.backend.download(buf)?));
                    }
                }
            }
            for (out, v) in &e.outputs {
                let buf = outputs
                    .get(out)
                    .ok_or_else(|| RuntimeError::Invalid(format!("program `{}` has no output `{out}`", e.program)))?;
                values.insert(v.clone(), buf.clone());
            }
            if let Some(c) = current.as_mut() {
                c.2 += 1;
            }
            observer.ran();
        }
        close(current.take(), &mut timings)?;
        if let Some(what) = self.backend.deferred_non_finite(false)? {
            return Err(non_finite(&what, "holds NaN or infinite values"));
        }
        let mut results = HashMap::new();
        for (r, v) in &plan.results {
            let b = values.get(v).cloned().ok_or_else(|| RuntimeError::Invalid(format!("the plan left no `{v}`")))?;
            results.insert(r.clone(), b);
        }
        Ok(PlanRun { results, records, timings })
    }
}
