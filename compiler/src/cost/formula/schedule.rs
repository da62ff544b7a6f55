//! The schedule enters the formulas through aggregates over its stages.

use super::macs::{P, T};
use super::Poly;
use crate::spec::{Layout, ScheduleSpec};

/// [`schedule_values`] (`T_s` tokens, `P_s` earlier positions, `n_s` steps of
/// stage `s`; `r_s` backbone runs: `n_s` when the backbone is the denoiser, else 1):
/// - `tokens` = sum T_s, `stages` = number of stages, `grid` / `grid_w` = the last grid;
/// - `sum_t2` = sum T_s^2, `sum_tp` = sum T_s P_s (backbone once per stage);
/// - `sum_steps` = sum n_s, `sum_steps_t` = sum n_s T_s, `sum_steps_t2` = sum n_s T_s^2,
///   `sum_steps_tp` = sum n_s T_s P_s (flow-head steps, or per-step backbone runs;
///   a Heun solver's two evaluations per step are a factor 2 in the coefficients);
/// - `steps_first` = n_0, `t_first` = T_0 (corrections for the first step's program).
pub const SCHEDULE_SYMBOLS: [&str; 12] = [
    "tokens",
    "stages",
    "grid",
    "grid_w",
    "sum_t2",
    "sum_tp",
    "sum_steps",
    "sum_steps_t",
    "sum_steps_t2",
    "sum_steps_tp",
    "steps_first",
    "t_first",
];

/// Values of [`SCHEDULE_SYMBOLS`] (in that order) for a schedule. Allocation-free.
pub fn schedule_values(schedule: &ScheduleSpec) -> [i128; 12] {
    let mut v = [0i128; 12];
    let mut add = |t: i128, n: i128, p: i128, first: bool| {
        v[0] += t;
        v[1] += 1;
        v[4] += t * t;
        v[5] += t * p;
        v[6] += n;
        v[7] += n * t;
        v[8] += n * t * t;
        v[9] += n * t * p;
        if first {
            v[10] = n;
            v[11] = t;
        }
    };
    match &schedule.layout {
        Layout::Raster { grid } => {
            for i in 0..(grid[0] * grid[1]) as i128 {
                add(1, 1, i, i == 0);
            }
        }
        Layout::Stages(stages) => {
            let mut past = 0i128;
            for (i, s) in stages.iter().enumerate() {
                add(s.tokens as i128, s.steps as i128, past, i == 0);
                past += s.tokens as i128;
            }
        }
    }
    let g = schedule.final_grid();
    v[2] = g[0] as i128;
    v[3] = g[1] as i128;
    v
}

/// Sum a step polynomial in `$T`, `$P` over runs: each `T^a P^b` becomes the
/// schedule aggregate weighted like the runs.
pub(super) fn aggregate(p: &Poly, weighted_by_steps: bool) -> Result<Poly, String> {
    let mut out = Poly::zero();
    for (pw, coef) in p.split(&[T, P]) {
        let name = match (weighted_by_steps, pw[0], pw[1]) {
            (false, 0, 0) => "stages",
            (false, 1, 0) => "tokens",
            (false, 2, 0) => "sum_t2",
            (false, 1, 1) => "sum_tp",
            (true, 0, 0) => "sum_steps",
            (true, 1, 0) => "sum_steps_t",
            (true, 2, 0) => "sum_steps_t2",
            (true, 1, 1) => "sum_steps_tp",
            (_, a, b) => return Err(format!("no schedule aggregate for T^{a} P^{b}")),
        };
        out = out.add(&coef.mul(&Poly::var(name)));
    }
    Ok(out)
}
