//! The `Backend` trait: device-resident buffers, programs prepared once and
//! run many times, explicit read-back and synchronisation. The reference
//! interpreter implements it in plain Rust; the fast backends (CPU, wgpu,
//! CUDA) implement the same calls, so the schedule driver is written once.

use crate::error::Result;
use crate::tensor::HostTensor;
use ecarc_compiler::ir::{Bindings, DType, Graph};
use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

/// Backend-owned memory behind a [`Buffer`]. Each backend downcasts to its
/// own type; memory is released when the last `Buffer` referring to it drops.
pub trait Storage: Any + Send + Sync {
    fn as_any(&self) -> &dyn Any;
    /// The storage as `Any`, owned, so that a backend given the last
    /// reference can take its memory over (write a state in place).
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
}

/// A tensor resident on a backend: a view of its storage, element `i` of
/// the view at `offset + sum(index[k] * strides[k])`. A dense buffer has
/// offset 0 and row-major strides; a slice, permutation or head split of one
/// is a view of the same storage, not a copy. Cloning shares the storage.
#[derive(Clone)]
pub struct Buffer {
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// In elements.
    pub offset: usize,
    /// In elements, one per axis.
    pub strides: Vec<usize>,
    pub storage: Arc<dyn Storage>,
}

impl Buffer {
    /// A dense row-major buffer over the whole of `storage`.
    pub fn dense(dtype: DType, shape: Vec<usize>, storage: Arc<dyn Storage>) -> Buffer {
        let strides = row_major(&shape);
        Buffer { dtype, shape, offset: 0, strides, storage }
    }

    /// Whether element `i` of the view is element `offset + i` of the storage.
    pub fn is_row_major(&self) -> bool {
        self.shape.iter().zip(&self.strides).zip(row_major(&self.shape)).all(|((&d, &s), r)| d <= 1 || s == r)
    }
}

/// Row-major strides of a shape.
pub fn row_major(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Buffer({}{:?}", self.dtype.name(), self.shape)?;
        if self.offset != 0 || !self.is_row_major() {
            write!(f, " at {} strides {:?}", self.offset, self.strides)?;
        }
        write!(f, ")")
    }
}

/// The checkpoint tensors a backend is given, by key.
pub type Params = HashMap<String, Buffer>;

/// A program prepared for one backend (kernels compiled, order planned).
#[derive(Clone)]
pub struct Executable {
    /// The program's name (`step.next`, `decode`, ...).
    pub name: String,
    pub inner: Arc<dyn Any + Send + Sync>,
}

/// What a backend can do, for the driver and for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Runs every op of the IR (the reference does; fast backends may fall back).
    pub all_ops: bool,
    /// Bytes of device memory, when known.
    pub memory_bytes: Option<u64>,
    /// Human-readable device description.
    pub device: String,
}

/// The sources of one program run: per-run inputs by name, and the carried
/// state, handed over. A program that declares an in-place update of a state
/// (`Graph::updates`) returns that state as its output of the same name; when
/// the caller kept no other reference to it, the backend writes into its
/// memory instead of copying it.
#[derive(Default)]
pub struct Args<'a> {
    pub inputs: HashMap<&'a str, &'a Buffer>,
    pub states: HashMap<&'a str, Buffer>,
}

pub trait Backend {
    /// `reference`, `cpu`, `wgpu`, `cuda`.
    fn name(&self) -> &'static str;
    fn capabilities(&self) -> Capabilities;
    /// Copy a host tensor to the device.
    fn upload(&self, t: &HostTensor) -> Result<Buffer>;
    /// Copy a device buffer back (waits for pending work on it).
    fn download(&self, b: &Buffer) -> Result<HostTensor>;
    /// Prepare a program once (compile kernels, plan memory) with the
    /// checkpoint tensors it reads bound: a backend may re-lay them out or
    /// convert them here, once. `params` may lack tensors of programs that
    /// never run; running a program whose tensor is missing is an error.
    fn prepare(&self, g: &Graph, params: &Params) -> Result<Executable>;
    /// Run a prepared program with its symbolic dimensions bound. Returns the
    /// program's named outputs in its declared order. Sources are checked
    /// against the program's declared types; a mismatch is an error, not a panic.
    fn run(&self, exe: &Executable, bindings: &Bindings, args: Args) -> Result<Vec<(String, Buffer)>>;
    /// Wait until all submitted work is done.
    fn synchronize(&self) -> Result<()>;
    /// `None` when every value of `b` is finite (or it holds integers), else
    /// what is wrong (see [`HostTensor::non_finite`]). The default reads the
    /// buffer back; a backend may check on the device.
    fn non_finite(&self, b: &Buffer) -> Result<Option<String>> {
        if b.dtype != ecarc_compiler::ir::DType::F32 {
            return Ok(None);
        }
        Ok(self.download(b)?.non_finite())
    }
    /// Check `b` for NaN and infinities without waiting for it: a device
    /// backend records the check on the device and answers when the plan
    /// ends ([`Backend::deferred_non_finite`]), so a sample need not read
    /// every output back. `false` (the default): the caller checks now with
    /// [`Backend::non_finite`]. `what` names the value in the answer.
    fn defer_non_finite(&self, _b: &Buffer, _what: &str) -> Result<bool> {
        Ok(false)
    }
    /// The `what` of the first deferred check that found a non-finite value
    /// since the last call (which clears them); `discard` forgets them unread
    /// (a plan that stopped midway).
    fn deferred_non_finite(&self, _discard: bool) -> Result<Option<String>> {
        Ok(None)
    }
}

/// The backends `--backend` accepts, in the order they are tried.
pub const BACKEND_NAMES: [&str; 4] = ["reference", "cpu", "wgpu", "cuda"];

/// The backend called `name`, or why it cannot be used. `adapter` picks the
/// wgpu adapter whose name contains it (`--adapter`); other backends have
/// no adapters, so it is an error there rather than silently ignored.
pub fn backend_by_name(name: &str, adapter: Option<&str>) -> Result<Box<dyn Backend>> {
    use crate::error::RuntimeError;
    if let (Some(a), false) = (adapter, name == "wgpu") {
        return Err(RuntimeError::BackendUnavailable {
            name: name.into(),
            why: format!("`--adapter {a}` picks a wgpu adapter; use it with `--backend wgpu`"),
        });
    }
    match name {
        "reference" => Ok(Box::new(crate::reference::Reference::new())),
        "cpu" => Ok(Box::new(crate::cpu::Cpu::new())),
        "wgpu" => Ok(Box::new(crate::webgpu::Wgpu::new(adapter)?)),
        "cuda" => Err(RuntimeError::BackendUnavailable {
            name: name.into(),
            why:
                "it is not built yet; use `--backend reference` (the plain interpreter every backend is tested against)"
                    .into(),
        }),
        _ => Err(RuntimeError::BackendUnavailable {
            name: name.into(),
            why: format!("unknown backend; choose one of {}", BACKEND_NAMES.join(", ")),
        }),
    }
}
