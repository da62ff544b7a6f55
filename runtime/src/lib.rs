//! ecarc's runtime: the `Backend` trait, the reference interpreter, the fast
//! backends and the schedule driver (issue 5 onwards). It is an empty crate
//! for now; the workspace layout of DESIGN.md reserves its place so that the
//! compiler never depends on it and tests that execute graphs live in `tests/`.
