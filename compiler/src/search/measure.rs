//! `--measure BACKEND`: real latency of the best designs, measured on a
//! backend. Search only needs a callback; the runtime (`ecarc-runtime`)
//! provides the backends, so that this crate does not depend on it.

use super::evaluate::Space;
use super::record::SearchResult;
use crate::check::check_model;
use crate::spec::ModelSpec;

/// Something that can time a model.
pub trait Measure {
    /// The backend's name, recorded in the result (`reference`, `cpu`, ...).
    fn name(&self) -> &str;
    /// Seconds to generate one image with `spec` (its weights may be random:
    /// the time does not depend on them).
    fn seconds_per_image(&self, spec: &ModelSpec) -> Result<f64, String>;
}

/// Measure the first `top` designs of the front (in the front's order), in
/// place. Returns the errors as `(design index, message)`: a design that
/// cannot be measured keeps no figure.
pub fn measure_front(
    space: &Space,
    result: &mut SearchResult,
    top: usize,
    backend: &dyn Measure,
) -> Vec<(u128, String)> {
    let mut errors = Vec::new();
    for r in result.front.iter_mut().take(top) {
        let spec = match check_model(&space.name, &space.point(r.index)) {
            Ok(s) => s,
            Err(_) => {
                errors.push((r.index, "the design does not check".into()));
                continue;
            }
        };
        match backend.seconds_per_image(&spec) {
            Ok(s) => r.seconds_per_image = Some(s),
            Err(e) => errors.push((r.index, e)),
        }
    }
    result.measured_on = Some(backend.name().to_string());
    errors
}
