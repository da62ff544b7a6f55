//! Errors of the runtime: every one names what it is about (a tensor key, a
//! program, a backend) so that the CLI can print it as it is.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum RuntimeError {
    /// The backend named on the command line does not exist or is not built yet.
    #[error("backend `{name}` is not available: {why}")]
    BackendUnavailable { name: String, why: String },
    /// A program asked for a source the caller did not supply.
    #[error("program `{program}` needs {what} `{name}`, which was not supplied")]
    MissingSource { program: String, what: &'static str, name: String },
    /// A supplied tensor does not have the shape or dtype the program declares.
    #[error("program `{program}`: {what} `{name}` has {actual}, expected {expected}")]
    Mismatch { program: String, what: &'static str, name: String, expected: String, actual: String },
    /// Weights that do not match the model's declared tensors; one line per problem.
    #[error("{} problem(s) with the weights in {file}:\n{}", .problems.len(), .problems.join("\n"))]
    Weights { file: String, problems: Vec<String> },
    /// A file could not be read, parsed or written.
    #[error("{path}: {why}")]
    File { path: String, why: String },
    /// A value the driver computed is outside what the model allows (a label
    /// out of range, a bad option).
    #[error("{0}")]
    Invalid(String),
    /// A backend failed while running a program.
    #[error("backend `{backend}` failed in program `{program}`: {why}")]
    Execution { backend: String, program: String, why: String },
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;
