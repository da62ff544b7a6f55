pub mod jit;
