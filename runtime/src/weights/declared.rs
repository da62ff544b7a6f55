//! The tensors a model declares, by checkpoint key, in state-dict order.

use ecarc_compiler::ModelSpec;

/// Which list of the spec a declared tensor comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TensorKind {
    /// `spec.params`: a learned tensor of the generator.
    Param,
    /// `spec.tokenizer.params`: a learned tensor of the tokenizer.
    TokenizerParam,
    /// `spec.buffers`: allowed in a file, not required, never loaded.
    Buffer,
}

impl TensorKind {
    pub fn is_param(self) -> bool {
        self != TensorKind::Buffer
    }
}

impl Declared {
    /// A parameter of the tokenizer's encoder (a role `enc_*`): declared, imported
    /// and counted, but read by no program yet, so optional as a whole when loading.
    pub fn is_encoder(&self) -> bool {
        self.kind == TensorKind::TokenizerParam && self.role.starts_with("enc_")
    }
}

/// One tensor a model declares, loops expanded.
#[derive(Clone, Debug, PartialEq)]
pub struct Declared {
    /// Full checkpoint key.
    pub key: String,
    pub shape: Vec<usize>,
    /// What the tensor is for (see `compiler/src/roles.rs`).
    pub role: String,
    /// Which component declared it (`backbone.block`, `head`, ...).
    pub owner: String,
    pub kind: TensorKind,
}

/// Every tensor `spec` declares, in declaration order: generator params,
/// tokenizer params, then buffers.
pub fn declared_tensors(spec: &ModelSpec) -> Vec<Declared> {
    let lists = [
        (&spec.params, TensorKind::Param),
        (&spec.tokenizer.params, TensorKind::TokenizerParam),
        (&spec.buffers, TensorKind::Buffer),
    ];
    let mut out = Vec::new();
    for (groups, kind) in lists {
        for g in groups {
            // `expand` yields the group's tensors copy after copy, in declaration order.
            for ((key, shape), t) in g.expand().into_iter().zip(g.tensors.iter().cycle()) {
                out.push(Declared {
                    key,
                    shape: shape.iter().map(|&d| d as usize).collect(),
                    role: t.role.clone(),
                    owner: g.owner.clone(),
                    kind,
                });
            }
        }
    }
    out
}
