//! Distilled Decoding: few-step generation from noise with a distilled
//! network, and the teacher's flow map that makes its training pairs.
//!
//! Generation (both DD families): noise tokens `[N, L, D]`; for each step `t`
//! in `[0]` (one step) or `[0, split]` (two steps) the positions after the
//! data prefix are re-noised with the *same* noise, one forward predicts every
//! token, and the final sequence takes a codebook row for the first
//! `greedy_prefix` stages (argmax of the logits, or the nearest code of a
//! data position) and the continuous head's output for the rest.

use super::{Generator, Observer, SampleOptions, SampleOutput, Step, Timing};
use crate::backend::Buffer;
use crate::error::{Result, RuntimeError};
use crate::rng::SeededRng;
use crate::tensor::HostTensor;
use ecarc_compiler::ir::Bindings;
use ecarc_compiler::lower::params::{ParamIndex, Scope};
use std::collections::HashMap;
use std::time::Instant;

/// Token counts of the stages that hold tokens (a DD scale schedule's
/// leading stage is the class position, which holds none).
pub fn body_stages(g: &Generator, tokens: usize) -> Vec<u64> {
    let all: Vec<u64> = g.spec.schedule.stages().iter().map(|s| s.tokens).collect();
    if all.iter().sum::<u64>() as usize == tokens {
        all
    } else {
        all[1..].to_vec()
    }
}

/// Tokens in the first `stages` body stages.
pub fn data_len(body: &[u64], stages: u64) -> usize {
    body.iter().take(stages as usize).sum::<u64>() as usize
}

/// The codebook rows the tokens live on (L2-normalised where the tokenizer is).
pub fn codebook(g: &Generator) -> Result<Buffer> {
    let idx = ParamIndex::new(&g.spec);
    let key = idx
        .get(Scope::Tokenizer, "codebook", None)
        .map(|d| d.key.clone())
        .ok_or_else(|| RuntimeError::Invalid("the tokenizer declares no codebook (role `codebook`)".into()))?;
    g.params.get(&key).cloned().ok_or_else(|| RuntimeError::Invalid(format!("weights lack the codebook `{key}`")))
}

pub fn sample(
    g: &Generator,
    opts: &SampleOptions,
    initial: Option<&HostTensor>,
    obs: &dyn Observer,
) -> Result<SampleOutput> {
    let d = g.spec.distill.clone().ok_or_else(|| RuntimeError::Invalid("not a distilled model".into()))?;
    let started = Instant::now();
    let images = opts.labels.len() as u64;
    let run = g
        .program
        .plan
        .iter()
        .find(|r| r.graph == "forward")
        .cloned()
        .ok_or_else(|| RuntimeError::Invalid("a distilled model without a forward program".into()))?;
    let bind = Bindings::new(images, run.tokens, 0);
    let shape = g.input_shape("forward", "x", &bind)?;
    let n_tok = shape[1];
    let body = body_stages(g, n_tok);
    let t_list: Vec<u64> = match d.steps {
        1 => vec![0],
        2 => vec![0, d.split],
        s => return Err(RuntimeError::Invalid(format!("Distilled Decoding runs 1 or 2 steps, not {s}"))),
    };
    obs.stage(0, 1, t_list.len() as u64);
    let mut rng = SeededRng::new(opts.seed).fork("dd.noise");
    let noise = g.initial_noise(initial, &mut rng, shape.clone())?;
    let book = codebook(g)?;
    let greedy = data_len(&body, d.greedy_prefix);
    let mut x = noise.clone();
    let mut stages = Vec::new();
    for (i, &t) in t_list.iter().enumerate() {
        let dl = data_len(&body, t);
        let x_in = g.glue.renoise_suffix(&x, &noise, dl)?;
        let out = forward_raw(g, &opts.labels, &x_in, dl)?;
        obs.step();
        let logits = g.glue.slice(&out["logits"], 1, 1, n_tok)?;
        let x_out = g.glue.slice(&out["x_out"], 1, 1, n_tok)?;
        x = g.glue.dd_final(&x_in, &logits, &x_out, &book, g.spec.tokenizer.l2_norm, dl, greedy)?;
        stages.push((format!("step.{i}.x"), g.backend.download(&x)?));
    }
    g.backend.synchronize()?;
    let mut timings = vec![Timing {
        what: "distilled steps".into(),
        runs: t_list.len() as u64,
        seconds: started.elapsed().as_secs_f64(),
    }];

    // A multi-scale tokenizer accumulates the codes scale by scale first.
    let started = Instant::now();
    let mut states: HashMap<String, Buffer> = HashMap::new();
    let mut offset = 0usize;
    for r in g.program.plan.iter().filter(|r| r.graph.starts_with("transition.")) {
        let codes = g.glue.slice(&x, 1, offset, r.tokens as usize)?;
        offset += r.tokens as usize;
        let mut st = Step { images, tokens: r.tokens, past: 0, labels: &opts.labels, cfg_scale: 1.0, rng: None };
        let mut out = g.call(&r.graph, &mut st, &[("codes", &codes)], &states)?;
        if let Some(f) = out.remove("f_hat") {
            states.insert("f_hat".into(), f);
        }
    }
    obs.decoding();
    let (name, value) = match states.remove("f_hat") {
        Some(f) => ("f_hat", f),
        None => ("codes", x),
    };
    let latent = (name.to_string(), g.backend.download(&value)?);
    let image = g.decode_buffer(name, &value, images)?;
    timings.push(Timing { what: "decode".into(), runs: 1, seconds: started.elapsed().as_secs_f64() });
    Ok(SampleOutput { image, latent, stages, timings })
}

/// One DD forward over every position; `data` tokens are marked as data.
pub fn forward_raw(g: &Generator, labels: &[i64], x: &Buffer, data: usize) -> Result<HashMap<String, Buffer>> {
    let images = labels.len() as u64;
    let run = g
        .program
        .plan
        .iter()
        .find(|r| r.graph == "forward")
        .ok_or_else(|| RuntimeError::Invalid("no forward program".into()))?;
    let bind = Bindings::new(images, run.tokens, 0);
    let mut given: Vec<(&str, Buffer)> = Vec::new();
    if g.has_input("forward", "nd") {
        let shape = g.input_shape("forward", "nd", &bind)?;
        let per: Vec<i64> = (0..shape[1]).map(|p| i64::from(p < 1 + data)).collect();
        let v: Vec<i64> = (0..shape[0]).flat_map(|_| per.iter().copied()).collect();
        given.push(("nd", g.upload(&HostTensor::i64(shape, v))?));
    }
    given.push(("x", x.clone()));
    let refs: Vec<(&str, &Buffer)> = given.iter().map(|(k, v)| (*k, v)).collect();
    let mut st = Step { images, tokens: run.tokens, past: 0, labels, cfg_scale: 1.0, rng: None };
    g.call("forward", &mut st, &refs, &HashMap::new())
}

// ---- the teacher's flow map -------------------------------------------------

/// The distribution a categorical sampler draws from: temperature, then top-k
/// (keep logits >= the k-th largest), then top-p (the smallest prefix of the
/// sorted probabilities reaching `p`, the largest always kept).
pub fn filtered_probs(logits: &[f32], temperature: f64, top_k: u64, top_p: f64) -> Vec<f64> {
    let t = if temperature > 0.0 { temperature } else { 1.0 };
    let l: Vec<f64> = logits.iter().map(|&v| v as f64 / t).collect();
    let mut keep = vec![true; l.len()];
    if top_k > 0 && (top_k as usize) < l.len() {
        let mut sorted = l.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let kth = sorted[top_k as usize - 1];
        for (k, v) in keep.iter_mut().zip(&l) {
            *k = *v >= kth;
        }
    }
    let softmax = |keep: &[bool]| {
        let m = l.iter().zip(keep).filter(|(_, k)| **k).map(|(v, _)| *v).fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = l.iter().zip(keep).map(|(v, k)| if *k { (v - m).exp() } else { 0.0 }).collect();
        let s: f64 = e.iter().sum();
        e.into_iter().map(|v| v / s).collect::<Vec<f64>>()
    };
    let mut p = softmax(&keep);
    if top_p < 1.0 {
        let mut order: Vec<usize> = (0..p.len()).filter(|&i| keep[i]).collect();
        order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
        let mut acc = 0.0;
        let mut kept = vec![false; p.len()];
        for &i in &order {
            kept[i] = true;
            acc += p[i];
            if acc >= top_p {
                break;
            }
        }
        p = softmax(&kept);
    }
    p
}

/// The teacher flow map for one token (families.md): straight paths
/// `x_t = (1 - t) x_0 + t eps` towards point masses `p_k` at codes `c_k`;
/// posterior weights `w_k = softmax(log p_k - |x - (1-t) c_k|^2 / (2 t^2))`,
/// velocity `(x - m) / t` with `m = sum w_k c_k`. Integrated from `x(1) = eps`
/// with `steps` Heun steps uniform in t (the last one an Euler step onto the
/// mean); the token is the code the posterior picks at the last step.
pub fn flow_map(probs: &[f64], codes: &[f32], dim: usize, eps: &[f32], steps: usize) -> usize {
    let v = probs.len();
    let posterior = |x: &[f64], t: f64| -> Vec<f64> {
        let mut lw: Vec<f64> = (0..v)
            .map(|k| {
                if probs[k] <= 0.0 {
                    return f64::NEG_INFINITY;
                }
                let d2: f64 = (0..dim)
                    .map(|j| {
                        let diff = x[j] - (1.0 - t) * codes[k * dim + j] as f64;
                        diff * diff
                    })
                    .sum();
                probs[k].ln() - d2 / (2.0 * t * t)
            })
            .collect();
        let m = lw.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut s = 0.0;
        for w in lw.iter_mut() {
            *w = (*w - m).exp();
            s += *w;
        }
        lw.iter_mut().for_each(|w| *w /= s);
        lw
    };
    let velocity = |x: &[f64], t: f64| -> Vec<f64> {
        let w = posterior(x, t);
        (0..dim)
            .map(|j| {
                let m: f64 = (0..v).map(|k| w[k] * codes[k * dim + j] as f64).sum();
                (x[j] - m) / t
            })
            .collect()
    };
    let steps = steps.max(2);
    let h = 1.0 / steps as f64;
    let mut x: Vec<f64> = eps.iter().map(|&e| e as f64).collect();
    for i in 0..steps - 1 {
        let t = 1.0 - i as f64 * h;
        let v1 = velocity(&x, t);
        let xe: Vec<f64> = x.iter().zip(&v1).map(|(a, b)| a - h * b).collect();
        let v2 = velocity(&xe, t - h);
        x = x.iter().zip(v1.iter().zip(&v2)).map(|(a, (b, c))| a - 0.5 * h * (b + c)).collect();
    }
    let w = posterior(&x, h);
    (0..v).max_by(|&a, &b| w[a].total_cmp(&w[b]).then(b.cmp(&a))).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauss(rng: &mut SeededRng, n: usize) -> Vec<f32> {
        rng.normal(n)
    }

    #[test]
    fn one_point_of_mass_takes_every_noise_token() {
        let codes = [0.5f32, -1.0, 2.0, 0.25, -0.3, 0.1];
        let probs = [0.0, 1.0, 0.0];
        let mut rng = SeededRng::new(1);
        for _ in 0..200 {
            let eps = gauss(&mut rng, 2);
            assert_eq!(flow_map(&probs, &codes, 2, &eps, 32), 1);
        }
    }

    #[test]
    fn two_points_split_by_their_weights() {
        // Two codes in 1D; the noise mass splits in the ratio of the weights.
        let codes = [-1.0f32, 1.0];
        for p in [0.5, 0.2, 0.8] {
            let probs = [p, 1.0 - p];
            let mut rng = SeededRng::new(7);
            let n = 4000;
            let first = (0..n).filter(|_| flow_map(&probs, &codes, 1, &gauss(&mut rng, 1), 48) == 0).count();
            let frac = first as f64 / n as f64;
            // Binomial standard deviation at n = 4000 is <= 0.008.
            assert!((frac - p).abs() <= 0.03, "p = {p}: fraction {frac}");
        }
    }

    #[test]
    fn the_map_is_monotone_in_one_dimension() {
        // A flow in 1D preserves order: the split point is the p-quantile of N(0, 1).
        let codes = [-1.0f32, 1.0];
        let probs = [0.3, 0.7];
        let xs: Vec<usize> = (-30..=30).map(|i| flow_map(&probs, &codes, 1, &[i as f32 / 10.0], 48)).collect();
        let switches = xs.windows(2).filter(|w| w[0] != w[1]).count();
        assert_eq!(switches, 1, "{xs:?}");
        assert_eq!(xs[0], 0);
        // Phi^-1(0.3) = -0.5244: the switch lies near it.
        let at = xs.iter().position(|&k| k == 1).unwrap_or(0) as f64 / 10.0 - 3.0;
        assert!((at - -0.5244).abs() <= 0.15, "switch at {at}");
    }

    #[test]
    fn filtered_probs_follow_top_k_and_top_p() {
        let l = [1.0f32, 3.0, 2.0, 0.0];
        let p = filtered_probs(&l, 1.0, 2, 1.0);
        assert_eq!(p[0], 0.0);
        assert_eq!(p[3], 0.0);
        assert!((p[1] + p[2] - 1.0).abs() < 1e-12);
        // top_p below the largest probability keeps only the largest.
        let p = filtered_probs(&l, 1.0, 0, 0.1);
        assert_eq!(p, vec![0.0, 1.0, 0.0, 0.0]);
    }
}

/// Distilled Decoding's training pairs from a teacher: each image's tokens
/// chosen by the teacher flow map from Gaussian noise tokens, stage by stage
/// (each token with the teacher's distribution given the tokens before it).
/// Returns `noise [N, L, D]` and `tokens [N, L]` (L = all tokens, in order).
pub fn pairs(g: &Generator, labels: &[i64], seed: u64) -> Result<(HostTensor, HostTensor)> {
    if g.spec.distill.is_some() {
        return Err(RuntimeError::Invalid(
            "dd-pairs runs the teacher: give the teacher's model file (e.g. var_d16.ecar), not the distilled one"
                .into(),
        ));
    }
    let out =
        g.sample(&SampleOptions { labels: labels.to_vec(), seed, flow_map: true, record: false }, &super::Quiet)?;
    let pick = |suffix: &str| -> Vec<&HostTensor> {
        out.stages.iter().filter(|(n, _)| n.ends_with(suffix)).map(|(_, t)| t).collect()
    };
    let (noise, tokens) = (pick(".noise"), pick(".tokens"));
    if tokens.is_empty() || noise.len() != tokens.len() {
        return Err(RuntimeError::Invalid("dd-pairs needs a teacher with a categorical head (VAR, LlamaGen)".into()));
    }
    let n = labels.len();
    let dim = *noise[0].shape.last().unwrap_or(&1);
    let (mut nv, mut tv) = (vec![Vec::new(); n], vec![Vec::new(); n]);
    for (nz, tk) in noise.iter().zip(&tokens) {
        let per = tk.numel() / n.max(1);
        let (nzv, tkv) = (nz.as_f32().unwrap_or(&[]), tk.as_i64().unwrap_or(&[]));
        for i in 0..n {
            nv[i].extend_from_slice(&nzv[i * per * dim..(i + 1) * per * dim]);
            tv[i].extend_from_slice(&tkv[i * per..(i + 1) * per]);
        }
    }
    let len = tv[0].len();
    Ok((HostTensor::f32(vec![n, len, dim], nv.concat()), HostTensor::i64(vec![n, len], tv.concat())))
}
