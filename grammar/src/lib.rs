//! The `.ecar` language: grammar, AST with spans, parser, import/extends
//! resolution, formatter and diagnostics. See `docs/language.md`.

pub mod ast;
pub mod diag;
pub mod lex;
pub mod parser;
pub mod source;

pub use diag::Diag;
pub use source::{FileId, SourceMap, Span};
pub mod merged;
pub mod resolve;

pub use resolve::Program;
pub mod fmt;
