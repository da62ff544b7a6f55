//! Packed parameters: the `fuse` pass merges linears that share an input
//! into one GEMM over their weights stacked along axis 0, a parameter named
//! by a packed key (`ecarc_compiler::pass::merge`). The stacked tensors are
//! built here once, from the checkpoint tensors the key lists, before a
//! backend prepares the program: no kernel copies weights at run time.

use crate::backend::{Backend, Params};
use crate::error::{Result, RuntimeError};
use crate::tensor::{Data, HostTensor};
use ecarc_compiler::ir::{Graph, Op};
use ecarc_compiler::pass::merge::packed_parts;

/// Add to `params` every packed parameter `g` reads that it lacks, when all
/// of its parts are there (a missing part stays missing: running a program
/// that reads it is the backend's error, as for any missing tensor).
pub fn bind_packed_params(g: &Graph, backend: &dyn Backend, params: &mut Params) -> Result<()> {
    for n in g.g.node_weights() {
        let Op::Param { key } = &n.op else { continue };
        if params.contains_key(key) {
            continue;
        }
        let Some(parts) = packed_parts(key) else { continue };
        if !parts.iter().all(|p| params.contains_key(p)) {
            continue;
        }
        let mut shape: Option<Vec<usize>> = None;
        let mut data = Vec::new();
        for p in &parts {
            let t = backend.download(&params[p])?;
            let rest = t.shape.get(1..).map(<[usize]>::to_vec);
            let (Data::F32(v), Some(rest)) = (t.data, rest) else {
                return Err(RuntimeError::Invalid(format!(
                    "`{p}` cannot be stacked: it is not an f32 tensor of rank >= 1"
                )));
            };
            match &mut shape {
                None => shape = Some(t.shape.clone()),
                Some(s) if s[1..] == rest[..] => s[0] += t.shape[0],
                Some(s) => {
                    return Err(RuntimeError::Invalid(format!(
                        "`{p}` of shape {:?} cannot be stacked under tensors of shape {s:?}",
                        t.shape
                    )))
                }
            }
            data.extend(v);
        }
        let shape = shape.unwrap_or_default();
        params.insert(key.clone(), backend.upload(&HostTensor::f32(shape, data))?);
    }
    Ok(())
}
