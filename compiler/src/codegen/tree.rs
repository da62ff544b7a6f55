//! A small typed shader tree: what one stage of a fused kernel computes per
//! thread, independent of the shading language. `wgsl.rs` prints it as WGSL;
//! a CUDA printer can print the same tree. Values are scalars (`f32` data,
//! `u32` indices); every buffer element is read or written through an
//! explicit index expression.

/// A scalar type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ty {
    F32,
    U32,
    Bool,
}

/// A buffer a stage reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Buf {
    /// Input `i` of the kernel (`i32` words when the input is i64).
    Input(u32),
    /// Scratch buffer `i` (dense f32) written by an earlier stage.
    Scratch(u32),
}

/// Arithmetic and comparisons; both operands have one type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op2 {
    Add,
    Sub,
    Mul,
    Div,
    /// Remainder (u32 only).
    Rem,
    Lt,
    Gt,
    Or,
}

/// Functions of f32 values: the language's builtins and the helpers every
/// printer defines with the kernel IR's semantics (NaN rules, GELU forms).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Func {
    Exp,
    Sqrt,
    Tanh,
    Silu,
    Gelu,
    GeluTanh,
    /// `min`/`max` where NaN wins.
    MinNan,
    MaxNan,
    IsNan,
}

/// An expression.
#[derive(Clone, Debug, PartialEq)]
pub enum E {
    F32(f32),
    U32(u32),
    /// A value bound by [`S::Let`], [`S::Var`] or [`S::Loop`].
    Var(u32),
    /// The thread's item (`0..meta[0]`).
    Id,
    /// Word `k` of the stage's meta block.
    Meta(u32),
    /// In a row stage: the thread's index in its workgroup (`0..n`).
    Lane,
    /// In a row stage: element `at` of the workgroup's f32 array of `n`.
    Shared(Box<E>),
    /// Element `at` of a buffer read as f32 (i32 words converted).
    Read(Buf, Box<E>),
    Bin(Op2, Box<E>, Box<E>),
    Neg(Box<E>),
    Call(Func, Vec<E>),
    /// `if cond { t } else { f }`, both evaluated.
    Select {
        cond: Box<E>,
        t: Box<E>,
        f: Box<E>,
    },
}

/// A statement.
#[derive(Clone, Debug, PartialEq)]
pub enum S {
    /// An immutable value.
    Let {
        var: u32,
        ty: Ty,
        value: E,
    },
    /// A mutable variable.
    Var {
        var: u32,
        ty: Ty,
        init: E,
    },
    Assign {
        var: u32,
        value: E,
    },
    /// `for var = 0; var < count; var++ { body }` (u32).
    Loop {
        var: u32,
        count: E,
        body: Vec<S>,
    },
    If {
        cond: E,
        then: Vec<S>,
        otherwise: Vec<S>,
    },
    /// `value` into element `at` of the buffer the stage writes.
    Store {
        at: E,
        value: E,
    },
    /// In a row stage: `value` into element `at` of the workgroup's array.
    SharedStore {
        at: E,
        value: E,
    },
    /// In a row stage: a workgroup barrier (workgroup memory and control),
    /// in uniform control flow.
    Barrier,
}

/// One stage's per-thread program; threads at or past `meta[0]` do nothing.
#[derive(Clone, Debug, PartialEq)]
pub struct Shader {
    /// The buffers read, in binding order (bindings 1..); `true` when the
    /// buffer holds i32 words.
    pub reads: Vec<(Buf, bool)>,
    pub body: Vec<S>,
    /// `None`: one thread per item ([`E::Id`]). `Some(n)`: a row stage, one
    /// workgroup of `n` threads ([`E::Lane`]) per item (row `E::Id`; whole
    /// workgroups at or past `meta[0]` do nothing), with an f32 array of `n`
    /// in workgroup memory.
    pub row_threads: Option<u32>,
}

impl E {
    pub fn bin(op: Op2, a: E, b: E) -> E {
        E::Bin(op, Box::new(a), Box::new(b))
    }

    /// Index arithmetic with the literal cases folded (u32 operands).
    pub fn iadd(a: E, b: E) -> E {
        match (a, b) {
            (E::U32(0), x) | (x, E::U32(0)) => x,
            (E::U32(x), E::U32(y)) if x.checked_add(y).is_some() => E::U32(x + y),
            (a, b) => E::bin(Op2::Add, a, b),
        }
    }
    pub fn imul(a: E, b: E) -> E {
        match (a, b) {
            (E::U32(0), _) | (_, E::U32(0)) => E::U32(0),
            (E::U32(1), x) | (x, E::U32(1)) => x,
            (E::U32(x), E::U32(y)) if x.checked_mul(y).is_some() => E::U32(x * y),
            (a, b) => E::bin(Op2::Mul, a, b),
        }
    }
    pub fn idiv(a: E, b: E) -> E {
        match (a, b) {
            (x, E::U32(1)) => x,
            (E::U32(0), _) => E::U32(0),
            (a, b) => E::bin(Op2::Div, a, b),
        }
    }
    pub fn irem(a: E, b: E) -> E {
        match (a, b) {
            (_, E::U32(1)) | (E::U32(0), _) => E::U32(0),
            (a, b) => E::bin(Op2::Rem, a, b),
        }
    }
    /// `a - b` on u32 (the caller knows `a >= b`).
    pub fn isub(a: E, b: E) -> E {
        match (a, b) {
            (x, E::U32(0)) => x,
            (a, b) => E::bin(Op2::Sub, a, b),
        }
    }

    /// Whether the expression is cheap enough to repeat instead of binding.
    pub fn is_leaf(&self) -> bool {
        matches!(self, E::F32(_) | E::U32(_) | E::Var(_) | E::Id | E::Meta(_) | E::Lane)
    }
}
