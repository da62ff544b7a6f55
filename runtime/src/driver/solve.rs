//! Integrators over a stage's time: a flow head's ODE (Euler; Heun as the
//! average of the start and two Euler steps) and a denoiser backbone's solver
//! loop (DDPM/DDIM with the respaced schedule, or flow Euler/Heun).

use super::{diffusion, Generator, Observer, Step, TIME_SCALE};
use crate::backend::Buffer;
use crate::error::{Result, RuntimeError};
use crate::rng::SeededRng;
use crate::tensor::HostTensor;
use ecarc_compiler::ir::{Bindings, DType};
use ecarc_compiler::lower::Run;
use ecarc_compiler::spec::{Solver, StageSpec};
use std::collections::HashMap;

impl Generator<'_> {
    /// A flow head's ODE over stage `s`'s time segment, starting from `x`.
    pub(super) fn flow(
        &self,
        z: &Buffer,
        x: Buffer,
        s: &StageSpec,
        images: u64,
        cfg: f32,
        obs: &dyn Observer,
    ) -> Result<Buffer> {
        let [t0, t1] = s.segment.unwrap_or([1.0, 0.0]);
        let steps = s.steps.max(1);
        let dt = (t1 - t0) / steps as f64;
        let heun = self.spec.sampler.solver == Solver::Heun;
        let batch = if self.program.cfg { 2 * images as usize } else { images as usize };
        let dtb = self.scalar(dt * 1.0)?;
        let mut x = x;
        let euler = |x: &Buffer, t: f64| -> Result<Buffer> {
            let xx = self.maybe_double(x)?;
            let tb = self.batch_of(t * TIME_SCALE, batch)?;
            let mut st = Step { images, tokens: s.tokens, past: 0, labels: &[], cfg_scale: cfg, rng: None };
            let mut out =
                self.call("head.step", &mut st, &[("z", z), ("x", &xx), ("t", &tb), ("dt", &dtb)], &HashMap::new())?;
            obs.step();
            out.remove("x").ok_or_else(|| RuntimeError::Invalid("head.step has no output x".into()))
        };
        for i in 0..steps {
            let t = t0 + dt * i as f64;
            let x1 = euler(&x, t)?;
            x = if heun {
                let x2 = euler(&x1, t + dt)?;
                self.glue.mean(&x, &x2)?
            } else {
                x1
            };
        }
        Ok(x)
    }

    /// A denoiser backbone (DiT) over its stage: diffusion or flow solver steps.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn denoise(
        &self,
        run: &Run,
        s: &StageSpec,
        images: u64,
        labels: &[i64],
        cfg: f32,
        rng: &mut SeededRng,
        initial: Option<&HostTensor>,
        obs: &dyn Observer,
    ) -> Result<Buffer> {
        let bind = Bindings::new(images, run.tokens, 0);
        let shape = self.input_shape("solver.step", "x", &bind)?;
        let mut x = self.initial_noise(initial, rng, shape.clone())?;
        let batch = if self.program.cfg { 2 * images as usize } else { images as usize };
        let sm = &self.spec.sampler;
        let net = |x: &Buffer, t: f64, rng: &mut SeededRng| -> Result<Buffer> {
            let xx = self.maybe_double(x)?;
            let tb = self.batch_of(t, batch)?;
            let mut st = Step { images, tokens: run.tokens, past: 0, labels, cfg_scale: cfg, rng: Some(rng) };
            let mut out = self.call(&run.graph, &mut st, &[("latent", &xx), ("t", &tb)], &HashMap::new())?;
            obs.step();
            out.remove("out").ok_or_else(|| RuntimeError::Invalid("the denoiser has no output `out`".into()))
        };
        let solver = |out: &Buffer, x: &Buffer, scalars: &[(&str, f64)], noise: Option<Buffer>| -> Result<Buffer> {
            let bufs: Vec<(&str, Buffer)> =
                scalars.iter().map(|(k, v)| Ok((*k, self.scalar(*v)?))).collect::<Result<_>>()?;
            let mut given: Vec<(&str, &Buffer)> = vec![("out", out), ("x", x)];
            given.extend(bufs.iter().map(|(k, v)| (*k, v)));
            if let Some(n) = &noise {
                given.push(("noise", n));
            }
            let mut st = Step { images, tokens: run.tokens, past: 0, labels, cfg_scale: cfg, rng: None };
            let mut o = self.call("solver.step", &mut st, &given, &HashMap::new())?;
            obs.step();
            o.remove("x").ok_or_else(|| RuntimeError::Invalid("solver.step has no output x".into()))
        };
        match sm.solver {
            Solver::Ddpm | Solver::Ddim => {
                for c in diffusion::schedule(sm.beta, sm.train_steps, s.steps) {
                    let out = net(&x, c.timestep, rng)?;
                    let ddim = sm.solver == Solver::Ddim;
                    let noise = if c.add_noise && !ddim {
                        self.normal(rng, shape.clone())?
                    } else {
                        self.upload(&HostTensor::zeros(DType::F32, shape.clone()))?
                    };
                    let sigma = if ddim { 0.0 } else { c.sigma };
                    // DDIM (eta 0) uses the same `c1 x0 + c2 x` slots with its own coefficients.
                    let (c1, c2) =
                        if ddim { (c.ddim_coef1, c.ddim_coef2) } else { (c.posterior_coef1, c.posterior_coef2) };
                    x = solver(
                        &out,
                        &x,
                        &[
                            ("sqrt_recip_abar", c.sqrt_recip_abar),
                            ("sqrt_recipm1_abar", c.sqrt_recipm1_abar),
                            ("posterior_coef1", c1),
                            ("posterior_coef2", c2),
                            ("log_beta", c.log_beta),
                            ("log_posterior_var", c.log_posterior_var),
                            ("sigma", sigma),
                        ],
                        Some(noise),
                    )?;
                }
            }
            Solver::Euler | Solver::Heun => {
                let [t0, t1] = s.segment.unwrap_or([1.0, 0.0]);
                let steps = s.steps.max(1);
                let dt = (t1 - t0) / steps as f64;
                for i in 0..steps {
                    let t = t0 + dt * i as f64;
                    let v = net(&x, t * TIME_SCALE, rng)?;
                    let x1 = solver(&v, &x, &[("dt", dt)], None)?;
                    x = if sm.solver == Solver::Heun {
                        let v2 = net(&x1, (t + dt) * TIME_SCALE, rng)?;
                        let x2 = solver(&v2, &x1, &[("dt", dt)], None)?;
                        self.glue.mean(&x, &x2)?
                    } else {
                        x1
                    };
                }
            }
        }
        Ok(x)
    }
}
