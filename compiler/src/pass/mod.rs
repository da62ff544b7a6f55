//! Graph passes: rewrites of a program that keep what it computes. Each pass
//! is a [`Pass`]; a [`Pipeline`] runs them in order and, in tests and debug
//! builds, runs the verifier after every pass, so a pass that breaks a graph
//! is caught at the pass that did it. `ecarc graph --after PASS` prints a
//! program after the pipeline up to that pass, and `tests/ir/` holds filetests
//! (a program in the text form, a directive, the expected result).

pub mod cse;
pub mod dce;
pub mod fold;
pub mod fuse;
pub mod mem;
pub mod merge;
mod rewrite;

use crate::ir::Graph;

/// One rewrite of a program.
pub trait Pass {
    /// The name `--after` and the filetests' `; run:` use.
    fn name(&self) -> &'static str;
    /// Rewrite `g` in place; true when anything changed.
    fn run(&self, g: &mut Graph) -> bool;
}

/// Every pass by name, in the order the standard pipeline runs them.
pub fn by_name(name: &str) -> Option<Box<dyn Pass>> {
    match name {
        "cse" => Some(Box::new(cse::Cse)),
        "dce" => Some(Box::new(dce::Dce)),
        "fold" => Some(Box::new(fold::Fold)),
        "fuse" => Some(Box::new(fuse::Fuse)),
        "mem" => Some(Box::new(mem::Mem)),
        _ => None,
    }
}

/// The names [`by_name`] knows, in pipeline order.
pub const PASS_NAMES: &[&str] = &["cse", "dce", "fold", "fuse", "mem"];

/// The passes lowering runs on every program: rewrites within the graph IR,
/// whose result the cost model, `ecarc graph` and the snapshots read.
pub const LOWERING_PASSES: &[&str] = &["cse", "dce", "fold"];

/// The passes a backend's program goes through before `prepare` (unless
/// `-O0`): fusion into kernels, then memory planning.
pub const KERNEL_PASSES: &[&str] = &["fuse", "mem"];

/// Passes run in order, with the verifier after each when `checked`.
pub struct Pipeline {
    passes: Vec<Box<dyn Pass>>,
    checked: bool,
}

impl Pipeline {
    /// What lowering runs on every program ([`LOWERING_PASSES`]); verified after each pass in
    /// debug builds (and in `cargo test --profile ci`, which keeps debug
    /// assertions).
    pub fn standard() -> Pipeline {
        Pipeline::named(LOWERING_PASSES).expect("the lowering passes exist")
    }

    /// What `-O0` runs in lowering: only dead-code elimination (a program
    /// must declare only the sources it reads).
    pub fn minimal() -> Pipeline {
        Pipeline::named(&["dce"]).expect("dce exists")
    }

    /// The kernel passes ([`KERNEL_PASSES`]), verified after each in debug builds.
    pub fn kernels() -> Pipeline {
        Pipeline::named(KERNEL_PASSES).expect("the kernel passes exist")
    }

    /// The passes called `names`, in that order, or the first unknown name.
    pub fn named(names: &[&str]) -> Result<Pipeline, String> {
        let passes = names
            .iter()
            .map(|n| by_name(n).ok_or_else(|| format!("no pass `{n}`: the passes are {}", PASS_NAMES.join(", "))))
            .collect::<Result<_, _>>()?;
        Ok(Pipeline { passes, checked: cfg!(debug_assertions) })
    }

    /// The standard pipeline up to and including `last`.
    pub fn until(last: &str) -> Result<Pipeline, String> {
        let i = PASS_NAMES
            .iter()
            .position(|n| *n == last)
            .ok_or_else(|| format!("no pass `{last}`: the passes are {}", PASS_NAMES.join(", ")))?;
        Pipeline::named(&PASS_NAMES[..=i])
    }

    /// Verify after every pass whatever the build.
    pub fn checked(mut self) -> Pipeline {
        self.checked = true;
        self
    }

    /// Run every pass on `g`; an error names the pass after which `g` no
    /// longer verifies (a bug in that pass).
    pub fn run(&self, g: &mut Graph) -> Result<(), String> {
        for p in &self.passes {
            p.run(g);
            if self.checked {
                crate::ir::verify::verify(g).map_err(|errs| {
                    format!("after the `{}` pass, `{}` does not verify:\n{}", p.name(), g.name, errs.join("\n"))
                })?;
            }
        }
        Ok(())
    }
}
