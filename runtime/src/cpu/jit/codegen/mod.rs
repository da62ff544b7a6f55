//! Cranelift code generation for one anchor-free kernel, specialised on its
//! concrete shapes and input strides (docs/backends.md, "CPU: kernel IR ->
//! cranelift").
//!
//! A kernel becomes one function per stage, each
//! `extern "C" fn(ptrs: *const *mut u8, row_begin: i64, row_end: i64)`:
//! a stage per reachable `Reduce` node (in node order) writing the row's
//! fold into a scratch buffer, then the final stage writing the result. The
//! pointer table is `[inputs.., out, scratch..]` (scratch: one buffer per
//! reduction, then one per kept operand, [`Plan::kept`]). Every stage loops
//! over its rows (all axes but the last, flattened) and, innermost, along
//! the last axis, 4 lanes at a time (`f32x4`) then a scalar tail; at each
//! index the expression DAG is emitted with its index maps composed into
//! index arithmetic at compile time ([`Ix`] folds constants). The vector
//! path evaluates a node at `base + lane * step`, and falls back lane by
//! lane to the scalar code where the lanes' indices are not affine.

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::{
    types, AbiParam, BlockArg, Endianness, InstBuilder, MemFlagsData, SigRef, Signature, StackSlot, StackSlotData,
    StackSlotKind, Value,
};
use cranelift_codegen::isa::CallConv;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use ecarc_compiler::ir::op::{Binary, Unary};
use ecarc_compiler::ir::DType;
use ecarc_compiler::kernel::{Expr, KId, Kernel, Layout, Reduce};
use std::collections::HashMap;

mod vector;
use vector::*;

/// The concrete facts a kernel's code is specialised on.
pub(super) struct Plan<'a> {
    pub k: &'a Kernel,
    /// Concrete shape of every node.
    pub shapes: Vec<Vec<usize>>,
    /// Element strides of every input's view.
    pub strides: &'a [Vec<usize>],
    /// Concrete `Slice`/`WriteSlice` starts, by node.
    pub starts: HashMap<KId, usize>,
    /// The node written out (the result, or a store kernel's `src`).
    pub result: KId,
    /// Element strides of the output.
    pub out_strides: Vec<usize>,
    /// Reachable reductions in node order; scratch `s` holds `reduces[s]`.
    pub reduces: Vec<KId>,
    /// Operands of reductions that later stages read again and that cost
    /// enough to store rather than recompute, with the stage that stores
    /// them (their reduction's); scratch `reduces.len() + k` holds `kept[k]`.
    pub kept: Vec<(KId, usize)>,
    /// Whether the final stage runs 4 lanes at a time along the last axis.
    pub simd: bool,
}

impl Plan<'_> {
    pub fn scratch_index(&self, n: KId) -> usize {
        self.reduces.iter().position(|&r| r == n).expect("a planned reduction")
    }
    /// Where a kept node is stored: its scratch index and storing stage.
    fn kept_at(&self, n: KId) -> Option<(usize, usize)> {
        self.kept.iter().position(|&(k, _)| k == n).map(|i| (self.reduces.len() + i, self.kept[i].1))
    }
    /// The rows and the row length of a stage's index space.
    pub fn stage_space(&self, stage: usize) -> (Vec<usize>, usize) {
        let shape = match self.reduces.get(stage) {
            Some(&r) => self.shapes[r as usize].clone(),
            None => self.shapes[self.result as usize].clone(),
        };
        if shape.is_empty() {
            return (vec![], 1);
        }
        let (lead, last) = shape.split_at(shape.len() - 1);
        (lead.to_vec(), last[0])
    }
}

/// An index: a compile-time constant or a run-time `i64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Ix {
    C(i64),
    V(Value),
}

struct Gen<'p, 'a, 'b> {
    p: &'p Plan<'a>,
    b: FunctionBuilder<'b>,
    /// Base pointers of the inputs, the output and the scratch buffers.
    ptrs: Vec<Value>,
    /// Node values already emitted at an index, valid at the current point.
    memo: HashMap<(KId, Vec<Ix>), Value>,
    unary_sig: Option<cranelift_codegen::ir::SigRef>,
    stage: usize,
    /// Node vectors emitted at a (base index, step per lane), valid here.
    vmemo: HashMap<(KId, Vec<Ix>, Vec<i64>), Value>,
    /// Index values known to be multiples of [`LANES`].
    aligned: std::collections::HashSet<Value>,
    /// The stage's row (its leading index) and the rows' shape.
    lead: Vec<Ix>,
    lead_shape: Vec<usize>,
    /// Whether the stage reads scratch at a row other than its own.
    cross_row: bool,
    call_conv: CallConv,
    /// The 4-lane shims' stack slot and signature, once made.
    slot: Option<(StackSlot, SigRef)>,
}

fn flags() -> MemFlagsData {
    MemFlagsData::trusted()
}

/// The shim each non-instruction unary function calls: `Unary::apply`, so
/// the bits are the interpreter's.
macro_rules! shim {
    ($name:ident, $u:expr) => {
        extern "C" fn $name(x: f32) -> f32 {
            $u.apply(x)
        }
    };
}
shim!(shim_silu, Unary::Silu);
shim!(shim_gelu, Unary::Gelu);
shim!(shim_gelu_tanh, Unary::GeluTanh);
shim!(shim_exp, Unary::Exp);
shim!(shim_tanh, Unary::Tanh);

/// The shims 4 lanes a call, in place: one call (and one save of the
/// live vector registers) per vector instead of four.
macro_rules! shim4 {
    ($name:ident, $u:expr) => {
        /// # Safety
        /// `p` points at 4 writable f32.
        unsafe extern "C" fn $name(p: *mut f32) {
            for l in 0..4 {
                // SAFETY: the generated code passes a 16-byte stack slot.
                unsafe { *p.add(l) = $u.apply(*p.add(l)) };
            }
        }
    };
}
shim4!(shim4_silu, Unary::Silu);
shim4!(shim4_gelu, Unary::Gelu);
shim4!(shim4_gelu_tanh, Unary::GeluTanh);
shim4!(shim4_exp, Unary::Exp);
shim4!(shim4_tanh, Unary::Tanh);

fn shim4_of(u: Unary) -> Option<unsafe extern "C" fn(*mut f32)> {
    match u {
        Unary::Silu => Some(shim4_silu),
        Unary::Gelu => Some(shim4_gelu),
        Unary::GeluTanh => Some(shim4_gelu_tanh),
        Unary::Exp => Some(shim4_exp),
        Unary::Tanh => Some(shim4_tanh),
        Unary::Neg | Unary::Sqrt => None,
    }
}

fn shim_of(u: Unary) -> Option<extern "C" fn(f32) -> f32> {
    match u {
        Unary::Silu => Some(shim_silu),
        Unary::Gelu => Some(shim_gelu),
        Unary::GeluTanh => Some(shim_gelu_tanh),
        Unary::Exp => Some(shim_exp),
        Unary::Tanh => Some(shim_tanh),
        Unary::Neg | Unary::Sqrt => None,
    }
}

/// The stage function's signature.
pub(super) fn stage_signature(call_conv: CallConv) -> Signature {
    let mut sig = Signature::new(call_conv);
    sig.params.push(AbiParam::new(types::I64));
    sig.params.push(AbiParam::new(types::I64));
    sig.params.push(AbiParam::new(types::I64));
    sig
}

/// Emit stage `stage` (a reduction's, or the final one when `stage ==
/// reduces.len()`) into `func`.
pub(super) fn emit_stage(
    p: &Plan,
    stage: usize,
    func: &mut cranelift_codegen::ir::Function,
    fctx: &mut FunctionBuilderContext,
    call_conv: CallConv,
    config: cranelift_codegen::isa::TargetFrontendConfig,
) -> Result<bool, String> {
    let b = FunctionBuilder::new(func, fctx);
    let mut g = Gen {
        p,
        b,
        ptrs: vec![],
        memo: HashMap::new(),
        unary_sig: None,
        stage,
        vmemo: HashMap::new(),
        aligned: Default::default(),
        lead: vec![],
        lead_shape: vec![],
        cross_row: false,
        call_conv,
        slot: None,
    };
    let entry = g.b.create_block();
    g.b.append_block_params_for_function_params(entry);
    g.b.switch_to_block(entry);
    let params = g.b.block_params(entry).to_vec();
    let (table, begin, end) = (params[0], params[1], params[2]);
    let slots = p.k.inputs.len() + 1 + p.reduces.len() + p.kept.len();
    for s in 0..slots {
        let v = g.b.ins().load(types::I64, flags(), table, (s * 8) as i32);
        g.ptrs.push(v);
    }
    let mut sig = Signature::new(call_conv);
    sig.params.push(AbiParam::new(types::F32));
    sig.returns.push(AbiParam::new(types::F32));
    g.unary_sig = Some(g.b.import_signature(sig));

    let (lead, len) = p.stage_space(stage);
    // for row in begin..end
    let row_head = g.b.create_block();
    let row_body = g.b.create_block();
    let exit = g.b.create_block();
    let row = g.b.append_block_param(row_head, types::I64);
    g.b.ins().jump(row_head, &[BlockArg::Value(begin)]);
    g.b.switch_to_block(row_head);
    let more = g.b.ins().icmp(IntCC::SignedLessThan, row, end);
    g.b.ins().brif(more, row_body, &[], exit, &[]);
    g.b.switch_to_block(row_body);
    g.memo.clear();
    // The row's leading index, unravelled.
    let mut lead_ix = vec![Ix::C(0); lead.len()];
    let mut rest = Ix::V(row);
    for (a, &d) in lead.iter().enumerate().rev() {
        if a == 0 {
            lead_ix[a] = rest;
        } else {
            lead_ix[a] = g.urem(rest, d as i64);
            rest = g.udiv(rest, d as i64);
        }
    }
    g.lead = lead_ix.clone();
    g.lead_shape = lead.clone();
    let next_row = g.b.ins().iadd_imm_s(row, 1);
    match p.reduces.get(stage) {
        Some(&r) => {
            let Expr::Reduce { x, op } = &p.k.nodes[r as usize].expr else { unreachable!("a reduce stage") };
            let x_len = *p.shapes[*x as usize].last().ok_or("the reduction of a scalar")?;
            let init = match op {
                Reduce::Sum => g.b.ins().f32const(0f32),
                Reduce::Max => g.b.ins().f32const(f32::NEG_INFINITY),
            };
            let head = g.b.create_block();
            let body = g.b.create_block();
            let done = g.b.create_block();
            let j = g.b.append_block_param(head, types::I64);
            let acc = g.b.append_block_param(head, types::F32);
            let zero = g.b.ins().iconst(types::I64, 0);
            let (start, init) = if p.simd && x_len >= LANES as usize {
                g.vector_reduce(&lead_ix, *x, *op, x_len, init)?
            } else {
                (zero, init)
            };
            g.b.ins().jump(head, &[BlockArg::Value(start), BlockArg::Value(init)]);
            g.b.switch_to_block(head);
            let more = g.b.ins().icmp_imm_s(IntCC::SignedLessThan, j, x_len as i64);
            g.b.ins().brif(more, body, &[], done, &[]);
            g.b.switch_to_block(body);
            let saved = g.memo.clone();
            let mut idx = lead_ix.clone();
            idx.push(Ix::V(j));
            let v = g.eval(*x, &idx)?;
            if let Some((slot, st)) = p.kept_at(*x) {
                if st == stage {
                    let flat = g.ravel(&idx, &p.shapes[*x as usize]);
                    let base = g.ptrs[p.k.inputs.len() + 1 + slot];
                    let off = g.mul(flat, 4);
                    let addr = g.addr(base, off);
                    g.b.ins().store(flags(), v, addr, 0);
                }
            }
            let next = g.fold(*op, acc, v);
            let j1 = g.b.ins().iadd_imm_s(j, 1);
            g.b.ins().jump(head, &[BlockArg::Value(j1), BlockArg::Value(next)]);
            g.memo = saved;
            g.b.switch_to_block(done);
            // scratch[row] = acc
            let ptr = g.ptrs[p.k.inputs.len() + 1 + stage];
            let off = g.b.ins().imul_imm_s(row, 4);
            let addr = g.b.ins().iadd(ptr, off);
            g.b.ins().store(flags(), acc, addr, 0);
        }
        None => {
            let head = g.b.create_block();
            let body = g.b.create_block();
            let done = g.b.create_block();
            let j = g.b.append_block_param(head, types::I64);
            let rank = p.shapes[p.result as usize].len();
            let zero = g.b.ins().iconst(types::I64, 0);
            let start = if p.simd && rank > 0 && len >= LANES as usize { g.vector_loop(&lead_ix, len)? } else { zero };
            g.b.ins().jump(head, &[BlockArg::Value(start)]);
            g.b.switch_to_block(head);
            let more = g.b.ins().icmp_imm_s(IntCC::SignedLessThan, j, len as i64);
            g.b.ins().brif(more, body, &[], done, &[]);
            g.b.switch_to_block(body);
            let saved = g.memo.clone();
            let mut idx = lead_ix.clone();
            if rank > 0 {
                idx.push(Ix::V(j));
            }
            let v = g.eval(p.result, &idx)?;
            let mut off = Ix::C(0);
            for (a, &i) in idx.iter().enumerate() {
                let t = g.mul(i, p.out_strides[a] as i64 * 4);
                off = g.add(off, t);
            }
            let out = g.ptrs[p.k.inputs.len()];
            let addr = g.addr(out, off);
            g.b.ins().store(flags(), v, addr, 0);
            let j1 = g.b.ins().iadd_imm_s(j, 1);
            g.b.ins().jump(head, &[BlockArg::Value(j1)]);
            g.memo = saved;
            g.b.switch_to_block(done);
        }
    }
    g.b.ins().jump(row_head, &[BlockArg::Value(next_row)]);
    g.b.switch_to_block(exit);
    g.b.ins().return_(&[]);
    g.b.seal_all_blocks();
    let row_local = !g.cross_row;
    g.b.finalize(config);
    Ok(row_local)
}

impl Gen<'_, '_, '_> {
    /// Note a scratch read at row `idx` of `shape` (both without the last
    /// axis): whether it is the stage's own row.
    fn note_row(&mut self, idx: &[Ix], shape: &[usize]) {
        if idx != self.lead.as_slice() || shape != self.lead_shape.as_slice() {
            self.cross_row = true;
        }
    }

    /// One step of a reduction's fold, as the interpreter's.
    fn fold(&mut self, op: Reduce, acc: Value, v: Value) -> Value {
        match op {
            Reduce::Sum => self.b.ins().fadd(acc, v),
            Reduce::Max => {
                let gt = self.b.ins().fcmp(FloatCC::GreaterThan, v, acc);
                let nan = self.b.ins().fcmp(FloatCC::Unordered, v, v);
                let take = self.b.ins().bor(gt, nan);
                self.b.ins().select(take, v, acc)
            }
        }
    }

    fn val(&mut self, i: Ix) -> Value {
        match i {
            Ix::C(c) => self.b.ins().iconst(types::I64, c),
            Ix::V(v) => v,
        }
    }
    /// Whether an index is known to be a multiple of [`LANES`] (the vector
    /// loop's `j`, and sums and products that keep it so).
    fn aligned(&self, i: Ix) -> bool {
        match i {
            Ix::C(c) => c % LANES == 0,
            Ix::V(v) => self.aligned.contains(&v),
        }
    }
    fn mark(&mut self, i: Ix, aligned: bool) -> Ix {
        if let (Ix::V(v), true) = (i, aligned) {
            self.aligned.insert(v);
        }
        i
    }
    fn add(&mut self, a: Ix, c: Ix) -> Ix {
        let al = self.aligned(a) && self.aligned(c);
        let r = match (a, c) {
            (Ix::C(x), Ix::C(y)) => Ix::C(x + y),
            (Ix::C(0), v) | (v, Ix::C(0)) => v,
            (Ix::V(v), Ix::C(y)) | (Ix::C(y), Ix::V(v)) => Ix::V(self.b.ins().iadd_imm_s(v, y)),
            (Ix::V(x), Ix::V(y)) => Ix::V(self.b.ins().iadd(x, y)),
        };
        self.mark(r, al)
    }
    fn mul(&mut self, a: Ix, c: i64) -> Ix {
        let al = self.aligned(a) || c % LANES == 0;
        let r = match a {
            Ix::C(x) => Ix::C(x * c),
            _ if c == 0 => Ix::C(0),
            v if c == 1 => v,
            Ix::V(v) => Ix::V(self.b.ins().imul_imm_s(v, c)),
        };
        self.mark(r, al)
    }
    fn udiv(&mut self, a: Ix, c: i64) -> Ix {
        match a {
            Ix::C(x) => Ix::C(x / c.max(1)),
            v if c <= 1 => v,
            Ix::V(v) => Ix::V(self.b.ins().udiv_imm_s(v, c)),
        }
    }
    fn urem(&mut self, a: Ix, c: i64) -> Ix {
        let al = self.aligned(a) && c % LANES == 0;
        let r = match a {
            Ix::C(x) => Ix::C(x % c.max(1)),
            _ if c <= 1 => Ix::C(0),
            Ix::V(v) => Ix::V(self.b.ins().urem_imm_s(v, c)),
        };
        self.mark(r, al)
    }
    fn addr(&mut self, base: Value, byte_off: Ix) -> Value {
        match byte_off {
            Ix::C(0) => base,
            Ix::C(c) => self.b.ins().iadd_imm_s(base, c),
            Ix::V(v) => self.b.ins().iadd(base, v),
        }
    }
    fn ravel(&mut self, idx: &[Ix], shape: &[usize]) -> Ix {
        let mut acc = Ix::C(0);
        for (&i, &d) in idx.iter().zip(shape) {
            let t = self.mul(acc, d as i64);
            acc = self.add(t, i);
        }
        acc
    }
    fn unravel(&mut self, flat: Ix, shape: &[usize]) -> Vec<Ix> {
        let mut out = vec![Ix::C(0); shape.len()];
        let mut rest = flat;
        for (a, &d) in shape.iter().enumerate().rev() {
            if a == 0 {
                out[a] = rest;
            } else {
                out[a] = self.urem(rest, d as i64);
                rest = self.udiv(rest, d as i64);
            }
        }
        out
    }

    /// Node `n`'s value at `idx`.
    fn eval(&mut self, n: KId, idx: &[Ix]) -> Result<Value, String> {
        let key = (n, idx.to_vec());
        if let Some(&v) = self.memo.get(&key) {
            return Ok(v);
        }
        let v = match self.p.kept_at(n) {
            Some((slot, st)) if st < self.stage => {
                let r = idx.len() - 1;
                self.note_row(&idx[..r], &self.p.shapes[n as usize][..r]);
                let flat = self.ravel(idx, &self.p.shapes[n as usize]);
                let base = self.ptrs[self.p.k.inputs.len() + 1 + slot];
                let off = self.mul(flat, 4);
                let addr = self.addr(base, off);
                self.b.ins().load(types::F32, flags(), addr, 0)
            }
            _ => self.emit(n, idx)?,
        };
        self.memo.insert(key, v);
        Ok(v)
    }

    fn emit(&mut self, n: KId, idx: &[Ix]) -> Result<Value, String> {
        let p = self.p;
        let node = &p.k.nodes[n as usize];
        Ok(match &node.expr {
            Expr::Load(i) => {
                let i = *i as usize;
                let esize = p.k.inputs[i].dtype.bytes() as i64;
                let mut off = Ix::C(0);
                for (a, &x) in idx.iter().enumerate() {
                    let t = self.mul(x, p.strides[i][a] as i64 * esize);
                    off = self.add(off, t);
                }
                let base = self.ptrs[i];
                let addr = self.addr(base, off);
                match p.k.inputs[i].dtype {
                    DType::F32 => self.b.ins().load(types::F32, flags(), addr, 0),
                    DType::I64 => {
                        let v = self.b.ins().load(types::I64, flags(), addr, 0);
                        self.b.ins().fcvt_from_sint(types::F32, v)
                    }
                }
            }
            Expr::Const(c) => self.b.ins().f32const(c.get() as f32),
            Expr::Map { x, map } => {
                let src = self.map_index(*x, n, map, idx)?;
                self.eval(*x, &src)?
            }
            Expr::Unary(u, x) => {
                let v = self.eval(*x, idx)?;
                match u {
                    Unary::Neg => self.b.ins().fneg(v),
                    Unary::Sqrt => self.b.ins().sqrt(v),
                    _ => {
                        let f = shim_of(*u).expect("a shim for every call");
                        let callee = self.b.ins().iconst(types::I64, f as usize as i64);
                        let sig = self.unary_sig.expect("declared at entry");
                        let call = self.b.ins().call_indirect(sig, callee, &[v]);
                        self.b.inst_results(call)[0]
                    }
                }
            }
            Expr::Binary(op, a, c) => {
                let a = self.eval(*a, idx)?;
                let c = self.eval(*c, idx)?;
                match op {
                    Binary::Add => self.b.ins().fadd(a, c),
                    Binary::Sub => self.b.ins().fsub(a, c),
                    Binary::Mul => self.b.ins().fmul(a, c),
                    Binary::Div => self.b.ins().fdiv(a, c),
                    // `Binary::apply`: NaN if either is; else `a.min(b)`,
                    // which on equal values (signed zeros) returns `a`.
                    Binary::Min | Binary::Max => {
                        let cc = if *op == Binary::Min { FloatCC::LessThan } else { FloatCC::GreaterThan };
                        let better = self.b.ins().fcmp(cc, c, a);
                        let pick = self.b.ins().select(better, c, a);
                        let nan = self.b.ins().fcmp(FloatCC::Unordered, a, c);
                        let q = self.b.ins().f32const(f32::NAN);
                        self.b.ins().select(nan, q, pick)
                    }
                }
            }
            Expr::Affine { x, scale, shift } => {
                let v = self.eval(*x, idx)?;
                let s = self.b.ins().f32const(scale.get() as f32);
                let t = self.b.ins().f32const(shift.get() as f32);
                let m = self.b.ins().fmul(v, s);
                self.b.ins().fadd(m, t)
            }
            Expr::ClampMax { x, max } => {
                let v = self.eval(*x, idx)?;
                let m = self.b.ins().f32const(max.get() as f32);
                let gt = self.b.ins().fcmp(FloatCC::GreaterThan, v, m);
                self.b.ins().select(gt, m, v)
            }
            Expr::AtLeast { x, min } => {
                let v = self.eval(*x, idx)?;
                let m = self.b.ins().f32const(min.get() as f32);
                let gt = self.b.ins().fcmp(FloatCC::GreaterThan, v, m);
                self.b.ins().select(gt, v, m)
            }
            Expr::Reduce { .. } => {
                let shape = &p.shapes[n as usize];
                let r = shape.len() - 1;
                self.note_row(&idx[..r], &shape[..r]);
                let row = self.ravel(&idx[..r], &shape[..r]);
                let s = self.p.scratch_index(n);
                let base = self.ptrs[p.k.inputs.len() + 1 + s];
                let off = self.mul(row, 4);
                let addr = self.addr(base, off);
                self.b.ins().load(types::F32, flags(), addr, 0)
            }
            Expr::Concat { axis, parts } => {
                let a = *axis as usize;
                let at = idx[a];
                if let Ix::C(c) = at {
                    let mut c = c;
                    for &part in parts {
                        let len = p.shapes[part as usize][a] as i64;
                        if c < len {
                            let mut sub = idx.to_vec();
                            sub[a] = Ix::C(c);
                            return self.eval(part, &sub);
                        }
                        c -= len;
                    }
                    return Err(format!("index {c} beyond the concatenation"));
                }
                let at = self.val(at);
                let merge = self.b.create_block();
                let out = self.b.append_block_param(merge, types::F32);
                let mut off = 0i64;
                let live: Vec<KId> = parts.iter().copied().filter(|&q| p.shapes[q as usize][a] > 0).collect();
                for (k, &part) in live.iter().enumerate() {
                    let len = p.shapes[part as usize][a] as i64;
                    let this = self.b.create_block();
                    let next = if k + 1 < live.len() {
                        let next = self.b.create_block();
                        let inside = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, at, off + len);
                        self.b.ins().brif(inside, this, &[], next, &[]);
                        Some(next)
                    } else {
                        self.b.ins().jump(this, &[]);
                        None
                    };
                    self.b.switch_to_block(this);
                    let saved = self.memo.clone();
                    let mut sub = idx.to_vec();
                    sub[a] = Ix::V(self.b.ins().iadd_imm_s(at, -off));
                    let v = self.eval(part, &sub)?;
                    self.b.ins().jump(merge, &[BlockArg::Value(v)]);
                    self.memo = saved;
                    off += len;
                    if let Some(next) = next {
                        self.b.switch_to_block(next);
                    }
                }
                if live.is_empty() {
                    let z = self.b.ins().f32const(0f32);
                    self.b.ins().jump(merge, &[BlockArg::Value(z)]);
                }
                self.b.switch_to_block(merge);
                out
            }
            Expr::WriteSlice { .. } => return Err("a write_slice read as a value".into()),
            Expr::Anchor { op, .. } => {
                return Err(format!("the anchor `{}` (the JIT takes anchor-free kernels)", op.name()))
            }
        })
    }

    /// The index of `x` that node `n` reads at `idx` through `map`.
    fn map_index(&mut self, x: KId, n: KId, map: &Layout, idx: &[Ix]) -> Result<Vec<Ix>, String> {
        let p = self.p;
        let (from, to) = (&p.shapes[x as usize], &p.shapes[n as usize]);
        Ok(match map {
            Layout::Permute(perm) => {
                let mut src = vec![Ix::C(0); from.len()];
                for (j, &q) in perm.iter().enumerate() {
                    src[q as usize] = idx[j];
                }
                src
            }
            Layout::Slice { .. } => {
                let Layout::Slice { axis, .. } = map else { unreachable!() };
                let start = p.starts[&n] as i64;
                let mut src = idx.to_vec();
                let a = *axis as usize;
                src[a] = self.add(src[a], Ix::C(start));
                src
            }
            Layout::Broadcast => {
                let lead = to.len() - from.len();
                from.iter().enumerate().map(|(k, &d)| if d == 1 { Ix::C(0) } else { idx[k + lead] }).collect()
            }
            Layout::Reshape => self.reshape_index(from, to, idx),
        })
    }

    /// Reshape as groups of axes with equal products (a merge reads one
    /// raveled index, a split unravels one): only a group that both splits
    /// and merges pays a ravel and an unravel.
    fn reshape_index(&mut self, from: &[usize], to: &[usize], idx: &[Ix]) -> Vec<Ix> {
        let mut src = vec![Ix::C(0); from.len()];
        if from.iter().product::<usize>() == 0 {
            return src;
        }
        let fa: Vec<usize> = (0..from.len()).filter(|&k| from[k] != 1).collect();
        let ta: Vec<usize> = (0..to.len()).filter(|&k| to[k] != 1).collect();
        let Some(groups) = reshape_groups(
            &fa.iter().map(|&k| from[k]).collect::<Vec<_>>(),
            &ta.iter().map(|&k| to[k]).collect::<Vec<_>>(),
        ) else {
            let flat = self.ravel(idx, to);
            return self.unravel(flat, from);
        };
        for (fr, tr) in groups {
            let t_idx: Vec<Ix> = ta[tr.clone()].iter().map(|&k| idx[k]).collect();
            let t_ext: Vec<usize> = ta[tr].iter().map(|&k| to[k]).collect();
            let flat = self.ravel(&t_idx, &t_ext);
            let f_ext: Vec<usize> = fa[fr.clone()].iter().map(|&k| from[k]).collect();
            let parts = self.unravel(flat, &f_ext);
            for (q, &k) in fa[fr].iter().enumerate() {
                src[k] = parts[q];
            }
        }
        src
    }
}

/// The groups of axes (ranges of `from`, ranges of `to`) with equal
/// products, both lists without extents of 1; `None` if they do not pair up.
fn reshape_groups(from: &[usize], to: &[usize]) -> Option<Vec<(std::ops::Range<usize>, std::ops::Range<usize>)>> {
    let (mut i, mut j) = (0, 0);
    let mut groups = vec![];
    while i < from.len() && j < to.len() {
        let (gi, gj) = (i, j);
        let (mut pf, mut pt) = (from[i], to[j]);
        i += 1;
        j += 1;
        while pf != pt {
            if pf < pt {
                pf = pf.checked_mul(*from.get(i)?)?;
                i += 1;
            } else {
                pt = pt.checked_mul(*to.get(j)?)?;
                j += 1;
            }
        }
        groups.push((gi..i, gj..j));
    }
    (i == from.len() && j == to.len()).then_some(groups)
}
