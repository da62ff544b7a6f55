//! Small programs the driver runs between the model's own programs: doubling
//! a batch for guidance, averaging two states (Heun), token rows to a map,
//! slicing. They are IR graphs like any other, so they run on the device of
//! whichever backend runs the model and values stay resident there.

use crate::backend::{Args, Backend, Buffer, Executable};
use crate::error::Result;
use ecarc_compiler::ir::op::Binary;
use ecarc_compiler::ir::{Bindings, Dim, Graph, Op, TensorType, F};
use std::cell::RefCell;
use std::collections::HashMap;

/// Glue programs prepared on one backend, cached by what they do and their shapes.
pub struct Glue<'b> {
    backend: &'b dyn Backend,
    cache: RefCell<HashMap<String, Executable>>,
}

fn dims(shape: &[usize]) -> Vec<Dim> {
    shape.iter().map(|&s| Dim::c(s as u64)).collect()
}

impl<'b> Glue<'b> {
    pub fn new(backend: &'b dyn Backend) -> Self {
        Glue { backend, cache: RefCell::new(HashMap::new()) }
    }

    /// Run the glue program `key`, building it with `build` the first time.
    fn run(&self, key: String, inputs: &[(&str, &Buffer)], build: impl FnOnce() -> Graph) -> Result<Buffer> {
        let exe = {
            let mut cache = self.cache.borrow_mut();
            match cache.get(&key) {
                Some(e) => e.clone(),
                None => {
                    let e = self.backend.prepare(&build())?;
                    cache.insert(key, e.clone());
                    e
                }
            }
        };
        let args = Args { inputs: inputs.iter().copied().collect(), ..Default::default() };
        let mut out = self.backend.run(&exe, &Bindings::new(1, 0, 0), &args)?;
        Ok(out.remove(0).1)
    }

    fn source(g: &mut Graph, name: &str, b: &Buffer) -> petgraph::stable_graph::NodeIndex {
        g.source(Op::Input { name: name.into() }, TensorType { dtype: b.dtype, shape: dims(&b.shape) }, None)
    }

    /// `[N, ...]` -> `[2N, ...]`: the batch twice (conditional half, then unconditional).
    pub fn double(&self, x: &Buffer) -> Result<Buffer> {
        let key = format!("double {} {:?}", x.dtype.name(), x.shape);
        self.run(key, &[("x", x)], || {
            let mut g = Graph::new("glue.double");
            let a = Self::source(&mut g, "x", x);
            let c = g.add(Op::Concat { axis: 0 }, &[a, a], None);
            g.output("y", c);
            g
        })
    }

    /// `(a + b) / 2` (Heun's average of the start and the twice-stepped state).
    pub fn mean(&self, a: &Buffer, b: &Buffer) -> Result<Buffer> {
        let key = format!("mean {:?}", a.shape);
        self.run(key, &[("a", a), ("b", b)], || {
            let mut g = Graph::new("glue.mean");
            let x = Self::source(&mut g, "a", a);
            let y = Self::source(&mut g, "b", b);
            let s = g.add(Op::Binary(Binary::Add), &[x, y], None);
            let m = g.add(Op::Affine { scale: F::new(0.5), shift: F::new(0.0) }, &[s], None);
            g.output("y", m);
            g
        })
    }

    /// Token rows `[N, h*w, C]` -> map `[N, C, h, w]`.
    pub fn tokens_to_map(&self, x: &Buffer, h: usize, w: usize) -> Result<Buffer> {
        let key = format!("tokens_to_map {:?} {h}x{w}", x.shape);
        self.run(key, &[("x", x)], || {
            let mut g = Graph::new("glue.tokens_to_map");
            let a = Self::source(&mut g, "x", x);
            let (n, c) = (x.shape[0], x.shape[2]);
            let r = g.add(Op::Reshape { shape: dims(&[n, h, w, c]) }, &[a], None);
            let p = g.add(Op::Permute { perm: vec![0, 3, 1, 2] }, &[r], None);
            g.output("y", p);
            g
        })
    }

    /// `x[.., start..start+len, ..]` along `axis`.
    pub fn slice(&self, x: &Buffer, axis: usize, start: usize, len: usize) -> Result<Buffer> {
        let key = format!("slice {} {:?} {axis} {start} {len}", x.dtype.name(), x.shape);
        self.run(key, &[("x", x)], || {
            let mut g = Graph::new("glue.slice");
            let a = Self::source(&mut g, "x", x);
            let s =
                g.add(Op::Slice { axis: axis as u8, start: Dim::c(start as u64), len: Dim::c(len as u64) }, &[a], None);
            g.output("y", s);
            g
        })
    }

    /// Concatenate along `axis`.
    pub fn concat(&self, parts: &[&Buffer], axis: usize) -> Result<Buffer> {
        if parts.len() == 1 {
            return Ok(parts[0].clone());
        }
        let shapes: Vec<_> = parts.iter().map(|p| p.shape.clone()).collect();
        let key = format!("concat {} {shapes:?} {axis}", parts[0].dtype.name());
        let names: Vec<String> = (0..parts.len()).map(|i| format!("x{i}")).collect();
        let inputs: Vec<(&str, &Buffer)> = names.iter().map(|n| n.as_str()).zip(parts.iter().copied()).collect();
        self.run(key, &inputs, || {
            let mut g = Graph::new("glue.concat");
            let xs: Vec<_> = names.iter().zip(parts).map(|(n, p)| Self::source(&mut g, n, p)).collect();
            let c = g.add(Op::Concat { axis: axis as u8 }, &xs, None);
            g.output("y", c);
            g
        })
    }

    /// Distilled Decoding's final sequence from one forward (all `[N, L, ..]`,
    /// the start position already dropped): positions `< data` were given as
    /// data, positions `< greedy` take a codebook row, the rest the continuous
    /// head's output. Data positions take the input (snapped to its nearest
    /// code where greedy), others the argmax of the logits (greedy) or `x_out`.
    #[allow(clippy::too_many_arguments)]
    pub fn dd_final(
        &self,
        x_in: &Buffer,
        logits: &Buffer,
        x_out: &Buffer,
        codebook: &Buffer,
        l2_norm: bool,
        data: usize,
        greedy: usize,
    ) -> Result<Buffer> {
        let key = format!("dd_final {:?} {:?} {l2_norm} {data} {greedy}", x_in.shape, logits.shape);
        let inputs = [("x_in", x_in), ("logits", logits), ("x_out", x_out), ("codebook", codebook)];
        self.run(key, &inputs, || {
            let mut g = Graph::new("glue.dd_final");
            let xi = Self::source(&mut g, "x_in", x_in);
            let lg = Self::source(&mut g, "logits", logits);
            let xo = Self::source(&mut g, "x_out", x_out);
            let mut book = Self::source(&mut g, "codebook", codebook);
            if l2_norm {
                book = g.add(Op::L2Normalize { eps: F::new(1e-12) }, &[book], None);
            }
            let len = x_in.shape[1];
            let slice = |g: &mut Graph, x, a: usize, b: usize| {
                g.add(Op::Slice { axis: 1, start: Dim::c(a as u64), len: Dim::c((b - a) as u64) }, &[x], None)
            };
            // Boundaries of the four ranges, in order.
            let cuts = {
                let mut c = vec![0, data.min(len), greedy.min(len), len];
                c.sort_unstable();
                c
            };
            let mut parts = Vec::new();
            for w in cuts.windows(2) {
                let (a, b) = (w[0], w[1]);
                if a == b {
                    continue;
                }
                let is_data = a < data;
                let is_greedy = a < greedy;
                let part = match (is_data, is_greedy) {
                    (true, true) => {
                        let x = slice(&mut g, xi, a, b);
                        let idx = g.add(Op::NearestCode, &[x, book], None);
                        g.add(Op::Embedding, &[book, idx], None)
                    }
                    (true, false) => slice(&mut g, xi, a, b),
                    (false, true) => {
                        let l = slice(&mut g, lg, a, b);
                        let idx = g.add(Op::ArgMax, &[l], None);
                        g.add(Op::Embedding, &[book, idx], None)
                    }
                    (false, false) => slice(&mut g, xo, a, b),
                };
                parts.push(part);
            }
            let y = if parts.len() == 1 { parts[0] } else { g.add(Op::Concat { axis: 1 }, &parts, None) };
            g.output("y", y);
            g
        })
    }

    /// Positions `>= from` of `x` replaced by `noise` (DD's re-noising with the same noise).
    pub fn renoise_suffix(&self, x: &Buffer, noise: &Buffer, from: usize) -> Result<Buffer> {
        let len = x.shape[1];
        if from == 0 {
            return Ok(noise.clone());
        }
        if from >= len {
            return Ok(x.clone());
        }
        let head = self.slice(x, 1, 0, from)?;
        let tail = self.slice(noise, 1, from, len - from)?;
        self.concat(&[&head, &tail], 1)
    }
}
