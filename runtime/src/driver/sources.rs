//! Sources that are not plan values: the labels (and the null class), seeded
//! noise and uniforms, scalars, the guidance scale, and the position tables,
//! which are computed from the plan's layout and uploaded once, when the
//! generator is prepared.

use super::settings::Settings;
use super::Generator;
use crate::backend::Buffer;
use crate::error::{Result, RuntimeError};
use crate::rng::SeededRng;
use crate::tensor::HostTensor;
use ecarc_compiler::ir::{Bindings, DType, TensorType};
use ecarc_compiler::plan::layout::TableData;
use ecarc_compiler::plan::{expand, DataLen, Source, Table};
use std::collections::HashMap;

/// A position table for positions `P..P+T` (and the given number it reads, if any).
pub(crate) type TableKey = (Table, u64, u64, Option<i64>);

/// The concrete shape of `ty` under `b`.
pub(crate) fn shape_of(ty: &TensorType, b: &Bindings) -> Vec<usize> {
    ty.shape.iter().map(|d| d.eval(b) as usize).collect()
}

fn host(t: TableData) -> HostTensor {
    match t {
        TableData::F32(s, v) => HostTensor::f32(s, v),
        TableData::I64(s, v) => HostTensor::i64(s, v),
    }
}

/// The seeded streams of one run, each forked from the seed by its name
/// (`stage.3`, `dd.noise`) when first drawn from.
pub(crate) struct Streams {
    root: SeededRng,
    forks: HashMap<String, SeededRng>,
}

impl Streams {
    pub fn new(seed: u64) -> Self {
        Streams { root: SeededRng::new(seed), forks: HashMap::new() }
    }
    fn get(&mut self, name: &str) -> &mut SeededRng {
        let root = &self.root;
        self.forks.entry(name.to_string()).or_insert_with(|| root.fork(name))
    }
}

/// What a source needs from the run it is resolved in.
pub(crate) struct RunCtx<'r> {
    pub labels: Option<&'r [i64]>,
    pub streams: &'r mut Streams,
    pub settings: &'r Settings,
    /// Integer plan inputs (for tables that read one).
    pub given_ints: &'r HashMap<String, i64>,
}

impl Generator<'_> {
    /// Compute and upload every position table any plan reads (except those
    /// that depend on an input given at run time).
    pub(super) fn prepare_tables(&self) -> Result<()> {
        let other = self.other_guidance.iter().flat_map(|(p, _)| &p.plans);
        for plan in self.program.plans.iter().chain(other) {
            for (e, i) in plan.runs() {
                for b in &e.inputs {
                    if let Source::Table(t) = &b.source {
                        if matches!(t, Table::NoiseData(DataLen::Given(_))) {
                            continue;
                        }
                        self.table(t, e.past.eval(i), e.tokens, &HashMap::new())?;
                    }
                }
            }
        }
        Ok(())
    }

    fn table(&self, t: &Table, past: u64, tokens: u64, ints: &HashMap<String, i64>) -> Result<Buffer> {
        let given = match t {
            Table::NoiseData(DataLen::Given(n)) => ints.get(n).copied(),
            _ => None,
        };
        let key = (t.clone(), past, tokens, given);
        if let Some(b) = self.tables.borrow().get(&key) {
            return Ok(b.clone());
        }
        let data =
            self.program.layout.table(t, past, tokens, &|n| ints.get(n).copied()).map_err(RuntimeError::Invalid)?;
        let b = self.backend.upload(&host(data))?;
        self.tables.borrow_mut().insert(key, b.clone());
        Ok(b)
    }

    /// The buffer for a non-value source bound to a port of type `ty`, at
    /// iteration `i` of an entry of stage `stage` with bindings `b`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn source(
        &self,
        program: &str,
        src: &Source,
        ty: &TensorType,
        b: &Bindings,
        stage: u64,
        i: u64,
        rc: &mut RunCtx,
    ) -> Result<Buffer> {
        let shape = shape_of(ty, b);
        let n: usize = shape.iter().product();
        let t = match src {
            Source::Value(_) => unreachable!("values are resolved by the interpreter"),
            Source::Labels { null_class } => {
                let labels = rc.labels.ok_or_else(|| RuntimeError::MissingSource {
                    program: program.into(),
                    what: "input",
                    name: "labels".into(),
                })?;
                let mut v = labels.to_vec();
                if let Some(null) = null_class {
                    v.extend(std::iter::repeat_n(*null as i64, labels.len()));
                }
                HostTensor::i64(vec![v.len()], v)
            }
            Source::Normal { stream } => HostTensor::f32(shape, rc.streams.get(&expand(stream, stage)).normal(n)),
            Source::Uniform { stream } => HostTensor::f32(shape, rc.streams.get(&expand(stream, stage)).uniform(n)),
            Source::Zeros => HostTensor::zeros(ty.dtype, shape),
            Source::Scalar(series) => {
                let v = series.at(i);
                match ty.dtype {
                    DType::F32 => HostTensor::f32(shape, vec![v as f32; n]),
                    DType::I64 => HostTensor::i64(shape, vec![v as i64; n]),
                }
            }
            Source::Guidance => HostTensor::f32(shape, vec![rc.settings.guidance(stage) as f32; n]),
            Source::Setting(s) => {
                let v = rc.settings.value(*s);
                match ty.dtype {
                    DType::F32 => HostTensor::f32(shape, vec![v as f32; n]),
                    DType::I64 => HostTensor::i64(shape, vec![v as i64; n]),
                }
            }
            Source::Table(t) => return self.table(t, b.p, b.t, rc.given_ints),
        };
        self.backend.upload(&t)
    }
}
