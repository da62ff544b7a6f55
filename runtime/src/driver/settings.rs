//! What a run may change without lowering again: the guidance scale and its
//! schedule over the stages, and the sampling settings. Programs read them as
//! inputs (`cfg_scale`, `temperature`, `top_k`, `top_p`); guidance on or off
//! picks between two lowerings prepared together (see `Generator::new`).

use ecarc_compiler::plan::Setting;
use ecarc_compiler::spec::{CfgSchedule, ModelSpec};

#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub cfg: f64,
    pub cfg_schedule: CfgSchedule,
    /// Stages of the schedule (the linear ramp's length).
    pub stages: u64,
    pub temperature: f64,
    /// 0: off.
    pub top_k: u64,
    /// 1: off.
    pub top_p: f64,
}

impl Settings {
    /// The model's own settings (its `sample` block).
    pub fn of(spec: &ModelSpec) -> Settings {
        let s = &spec.sampler;
        Settings {
            cfg: s.cfg,
            cfg_schedule: s.cfg_schedule,
            stages: spec.schedule.num_stages(),
            temperature: s.temperature,
            top_k: s.top_k,
            top_p: s.top_p,
        }
    }

    /// Whether these settings guide (run the doubled batch): the same rule as
    /// the lowering's `uses_cfg`.
    pub fn guided(&self) -> bool {
        self.cfg != 1.0 || self.cfg_schedule == CfgSchedule::Linear
    }

    /// Guidance scale at stage `k`: constant, or VAR's linear ramp
    /// `1 + cfg * k / (n - 1)` (its logits are `(1 + t) c - t u`, `t = cfg k/(n-1)`).
    pub fn guidance(&self, k: u64) -> f64 {
        match self.cfg_schedule {
            CfgSchedule::Constant => self.cfg,
            CfgSchedule::Linear => {
                let n = self.stages;
                let r = if n > 1 { k as f64 / (n - 1) as f64 } else { 1.0 };
                1.0 + self.cfg * r
            }
        }
    }

    /// A sampling setting's value.
    pub fn value(&self, s: Setting) -> f64 {
        match s {
            Setting::Temperature => self.temperature,
            Setting::TopK => self.top_k as f64,
            Setting::TopP => self.top_p,
        }
    }
}
