//! The final stage's vector loop (`f32x4` along the last axis) of the code
//! generator: every lane computes the scalar code's operations on its own
//! element, so the bits are the scalar path's.

use super::*;

/// Lanes of the final stage's vector loop (cranelift's 128-bit `f32x4`).
pub(super) const LANES: i64 = 4;

/// Unaligned, non-trapping: a vector access.
pub(super) fn vflags() -> MemFlagsData {
    MemFlagsData::new().with_notrap()
}

/// The final stage's vector loop: `f32x4` along the last axis, every lane
/// computing the scalar code's operations on its own element (so the same
/// bits); a node whose lanes' indices are not affine in the lane (a reshape
/// that splits the last axis, a concat along it, a gather) is evaluated
/// lane by lane through the scalar code. The vector path is compiled-in
/// arithmetic only: calls (`exp`, `tanh`...) go lane by lane to the shims.
impl Gen<'_, '_, '_> {
    /// Emit `for j in (0..).step_by(4) while j + 4 <= len`; the first `j`
    /// it leaves for the scalar tail.
    pub(super) fn vector_loop(&mut self, lead: &[Ix], len: usize) -> Result<Value, String> {
        let p = self.p;
        let head = self.b.create_block();
        let body = self.b.create_block();
        let done = self.b.create_block();
        let j = self.b.append_block_param(head, types::I64);
        let rest = self.b.append_block_param(done, types::I64);
        let zero = self.b.ins().iconst(types::I64, 0);
        self.b.ins().jump(head, &[BlockArg::Value(zero)]);
        self.b.switch_to_block(head);
        let more = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, j, len as i64 - LANES + 1);
        self.b.ins().brif(more, body, &[], done, &[BlockArg::Value(j)]);
        self.b.switch_to_block(body);
        let (saved, vsaved) = (self.memo.clone(), self.vmemo.clone());
        self.aligned.insert(j);
        let mut base = lead.to_vec();
        base.push(Ix::V(j));
        let mut step = vec![0; lead.len()];
        step.push(1);
        let v = self.veval(p.result, &base, &step)?;
        let mut off = Ix::C(0);
        for (a, &i) in base.iter().enumerate() {
            let t = self.mul(i, p.out_strides[a] as i64 * 4);
            off = self.add(off, t);
        }
        let out = self.ptrs[p.k.inputs.len()];
        let addr = self.addr(out, off);
        let out_step = *p.out_strides.last().expect("rank >= 1") as i32 * 4;
        if out_step == 4 {
            self.b.ins().store(vflags(), v, addr, 0);
        } else {
            for l in 0..LANES as u8 {
                let x = self.b.ins().extractlane(v, l);
                self.b.ins().store(flags(), x, addr, out_step * l as i32);
            }
        }
        let j4 = self.b.ins().iadd_imm_s(j, LANES);
        self.b.ins().jump(head, &[BlockArg::Value(j4)]);
        self.memo = saved;
        self.vmemo = vsaved;
        self.b.switch_to_block(done);
        Ok(rest)
    }

    /// A reduction's operand 4 lanes at a time, folded lane by lane in
    /// index order (the same sequence of f32 operations as the scalar
    /// loop); the first `j` and the accumulator it leaves for the tail.
    pub(super) fn vector_reduce(
        &mut self,
        lead: &[Ix],
        x: KId,
        op: Reduce,
        len: usize,
        init: Value,
    ) -> Result<(Value, Value), String> {
        let p = self.p;
        let head = self.b.create_block();
        let body = self.b.create_block();
        let done = self.b.create_block();
        let j = self.b.append_block_param(head, types::I64);
        let acc = self.b.append_block_param(head, types::F32);
        let rest = self.b.append_block_param(done, types::I64);
        let out = self.b.append_block_param(done, types::F32);
        let zero = self.b.ins().iconst(types::I64, 0);
        self.b.ins().jump(head, &[BlockArg::Value(zero), BlockArg::Value(init)]);
        self.b.switch_to_block(head);
        let more = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, j, len as i64 - LANES + 1);
        self.b.ins().brif(more, body, &[], done, &[BlockArg::Value(j), BlockArg::Value(acc)]);
        self.b.switch_to_block(body);
        let (saved, vsaved) = (self.memo.clone(), self.vmemo.clone());
        self.aligned.insert(j);
        let mut base = lead.to_vec();
        base.push(Ix::V(j));
        let mut step = vec![0; lead.len()];
        step.push(1);
        let v = self.veval(x, &base, &step)?;
        if let Some((slot, st)) = p.kept_at(x) {
            if st == self.stage {
                let flat = self.ravel(&base, &p.shapes[x as usize]);
                let ptr = self.ptrs[p.k.inputs.len() + 1 + slot];
                let off = self.mul(flat, 4);
                let addr = self.addr(ptr, off);
                self.b.ins().store(vflags(), v, addr, 0);
            }
        }
        let mut a = acc;
        for l in 0..LANES as u8 {
            let e = self.b.ins().extractlane(v, l);
            a = self.fold(op, a, e);
        }
        let j4 = self.b.ins().iadd_imm_s(j, LANES);
        self.b.ins().jump(head, &[BlockArg::Value(j4), BlockArg::Value(a)]);
        self.memo = saved;
        self.vmemo = vsaved;
        self.b.switch_to_block(done);
        Ok((rest, out))
    }

    /// The 16-byte stack slot the 4-lane shims work in, and their signature.
    pub(super) fn lanes_slot(&mut self) -> (StackSlot, SigRef) {
        if self.slot.is_none() {
            let slot = self.b.create_sized_stack_slot(StackSlotData::new(StackSlotKind::ExplicitSlot, 16, 4));
            let mut sig = Signature::new(self.call_conv);
            sig.params.push(AbiParam::new(types::I64));
            let sig = self.b.import_signature(sig);
            self.slot = Some((slot, sig));
        }
        self.slot.expect("just made")
    }

    pub(super) fn splat(&mut self, x: Value) -> Value {
        self.b.ins().splat(types::F32X4, x)
    }

    /// A lane mask as `f32x4` bits, for `bitselect`.
    pub(super) fn mask(&mut self, cc: FloatCC, x: Value, y: Value) -> Value {
        let m = self.b.ins().fcmp(cc, x, y);
        self.b.ins().bitcast(types::F32X4, MemFlagsData::new().with_endianness(Endianness::Little), m)
    }

    /// Node `n`'s 4 values at indices `base + lane * step`.
    pub(super) fn veval(&mut self, n: KId, base: &[Ix], step: &[i64]) -> Result<Value, String> {
        if step.iter().all(|&s| s == 0) {
            let x = self.eval(n, base)?;
            return Ok(self.splat(x));
        }
        let key = (n, base.to_vec(), step.to_vec());
        if let Some(&v) = self.vmemo.get(&key) {
            return Ok(v);
        }
        let v = match self.p.kept_at(n) {
            Some((slot, st)) if st < self.stage => {
                let shape = &self.p.shapes[n as usize];
                let flat_step: i64 = step.iter().zip(super::super::row_major(shape)).map(|(&s, d)| s * d as i64).sum();
                if flat_step == 1 {
                    let r = base.len() - 1;
                    self.note_row(&base[..r], &shape[..r]);
                    if step[..r].iter().any(|&s| s != 0) {
                        self.cross_row = true;
                    }
                    let flat = self.ravel(base, shape);
                    let ptr = self.ptrs[self.p.k.inputs.len() + 1 + slot];
                    let off = self.mul(flat, 4);
                    let addr = self.addr(ptr, off);
                    self.b.ins().load(types::F32X4, vflags(), addr, 0)
                } else {
                    self.lanes(n, base, step)?
                }
            }
            _ => self.vemit(n, base, step)?,
        };
        self.vmemo.insert(key, v);
        Ok(v)
    }

    /// Node `n` lane by lane through the scalar code.
    pub(super) fn lanes(&mut self, n: KId, base: &[Ix], step: &[i64]) -> Result<Value, String> {
        let mut v: Option<Value> = None;
        for l in 0..LANES {
            let mut idx = Vec::with_capacity(base.len());
            for (&b, &s) in base.iter().zip(step) {
                idx.push(self.add(b, Ix::C(s * l)));
            }
            let x = self.eval(n, &idx)?;
            v = Some(match v {
                None => self.splat(x),
                Some(v) => self.b.ins().insertlane(v, x, l as u8),
            });
        }
        Ok(v.expect("4 lanes"))
    }

    pub(super) fn vemit(&mut self, n: KId, base: &[Ix], step: &[i64]) -> Result<Value, String> {
        let p = self.p;
        let node = &p.k.nodes[n as usize];
        Ok(match &node.expr {
            Expr::Load(i) => {
                let i = *i as usize;
                let off_step: i64 = step.iter().zip(&p.strides[i]).map(|(&s, &d)| s * d as i64).sum();
                if p.k.inputs[i].dtype != DType::F32 || off_step != 1 {
                    return self.lanes(n, base, step);
                }
                let mut off = Ix::C(0);
                for (a, &x) in base.iter().enumerate() {
                    let t = self.mul(x, p.strides[i][a] as i64 * 4);
                    off = self.add(off, t);
                }
                let ptr = self.ptrs[i];
                let addr = self.addr(ptr, off);
                self.b.ins().load(types::F32X4, vflags(), addr, 0)
            }
            Expr::Const(_) => return self.lanes(n, base, step),
            Expr::Map { x, map } => {
                let (from, to) = (&p.shapes[*x as usize], &p.shapes[n as usize]);
                match map {
                    Layout::Permute(perm) => {
                        let mut b2 = vec![Ix::C(0); from.len()];
                        let mut s2 = vec![0; from.len()];
                        for (j, &q) in perm.iter().enumerate() {
                            b2[q as usize] = base[j];
                            s2[q as usize] = step[j];
                        }
                        self.veval(*x, &b2, &s2)?
                    }
                    Layout::Slice { axis, .. } => {
                        let mut b2 = base.to_vec();
                        let a = *axis as usize;
                        b2[a] = self.add(b2[a], Ix::C(p.starts[&n] as i64));
                        self.veval(*x, &b2, step)?
                    }
                    Layout::Broadcast => {
                        let lead = to.len() - from.len();
                        let b2: Vec<Ix> = from
                            .iter()
                            .enumerate()
                            .map(|(k, &d)| if d == 1 { Ix::C(0) } else { base[k + lead] })
                            .collect();
                        let s2: Vec<i64> =
                            from.iter().enumerate().map(|(k, &d)| if d == 1 { 0 } else { step[k + lead] }).collect();
                        self.veval(*x, &b2, &s2)?
                    }
                    Layout::Reshape => {
                        // Affine in the lane only when the lanes stay in one
                        // element of every split axis: a pure merge, or a
                        // split whose lanes do not move.
                        let fa: Vec<usize> = (0..from.len()).filter(|&k| from[k] != 1).collect();
                        let ta: Vec<usize> = (0..to.len()).filter(|&k| to[k] != 1).collect();
                        let fe: Vec<usize> = fa.iter().map(|&k| from[k]).collect();
                        let te: Vec<usize> = ta.iter().map(|&k| to[k]).collect();
                        let Some(groups) = reshape_groups(&fe, &te) else { return self.lanes(n, base, step) };
                        if from.iter().product::<usize>() == 0 {
                            return self.lanes(n, base, step);
                        }
                        let mut b2 = vec![Ix::C(0); from.len()];
                        let mut s2 = vec![0i64; from.len()];
                        for (fr, tr) in groups {
                            let t_idx: Vec<Ix> = ta[tr.clone()].iter().map(|&k| base[k]).collect();
                            let t_ext: Vec<usize> = ta[tr.clone()].iter().map(|&k| to[k]).collect();
                            let moving = ta[tr.clone()].iter().any(|&k| step[k] != 0);
                            let flat = self.ravel(&t_idx, &t_ext);
                            if fr.len() == 1 {
                                let flat_step: i64 = ta[tr]
                                    .iter()
                                    .zip(super::super::row_major(&t_ext))
                                    .map(|(&k, d)| step[k] * d as i64)
                                    .sum();
                                b2[fa[fr.start]] = flat;
                                s2[fa[fr.start]] = flat_step;
                            } else if !moving {
                                let f_ext: Vec<usize> = fa[fr.clone()].iter().map(|&k| from[k]).collect();
                                let parts = self.unravel(flat, &f_ext);
                                for (q, &k) in fa[fr].iter().enumerate() {
                                    b2[k] = parts[q];
                                }
                            } else if self.aligned(flat)
                                && fr.end > fr.start
                                && from[fa[fr.end - 1]] as i64 % LANES == 0
                                && ta[tr.clone()]
                                    .iter()
                                    .zip(super::super::row_major(&t_ext))
                                    .map(|(&k, d)| step[k] * d as i64)
                                    .sum::<i64>()
                                    == 1
                            {
                                // A split whose lanes stay in one row of its
                                // innermost axis: `flat` is a multiple of 4
                                // and that axis's extent too.
                                let f_ext: Vec<usize> = fa[fr.clone()].iter().map(|&k| from[k]).collect();
                                let parts = self.unravel(flat, &f_ext);
                                for (q, &k) in fa[fr.clone()].iter().enumerate() {
                                    b2[k] = parts[q];
                                }
                                s2[fa[fr.end - 1]] = 1;
                            } else {
                                return self.lanes(n, base, step);
                            }
                        }
                        self.veval(*x, &b2, &s2)?
                    }
                }
            }
            Expr::Unary(u, x) => {
                let v = self.veval(*x, base, step)?;
                match u {
                    Unary::Neg => self.b.ins().fneg(v),
                    Unary::Sqrt => self.b.ins().sqrt(v),
                    _ => {
                        let f = shim4_of(*u).expect("a shim for every call");
                        let (slot, sig) = self.lanes_slot();
                        self.b.ins().stack_store(types::I64, v, slot, 0);
                        let at = self.b.ins().stack_addr(types::I64, slot, 0);
                        let callee = self.b.ins().iconst(types::I64, f as usize as i64);
                        self.b.ins().call_indirect(sig, callee, &[at]);
                        self.b.ins().stack_load(types::I64, types::F32X4, slot, 0)
                    }
                }
            }
            Expr::Binary(op, a, c) => {
                let a = self.veval(*a, base, step)?;
                let c = self.veval(*c, base, step)?;
                match op {
                    Binary::Add => self.b.ins().fadd(a, c),
                    Binary::Sub => self.b.ins().fsub(a, c),
                    Binary::Mul => self.b.ins().fmul(a, c),
                    Binary::Div => self.b.ins().fdiv(a, c),
                    Binary::Min | Binary::Max => {
                        let cc = if *op == Binary::Min { FloatCC::LessThan } else { FloatCC::GreaterThan };
                        let better = self.mask(cc, c, a);
                        let pick = self.b.ins().bitselect(better, c, a);
                        let nan = self.mask(FloatCC::Unordered, a, c);
                        let q = self.b.ins().f32const(f32::NAN);
                        let q = self.splat(q);
                        self.b.ins().bitselect(nan, q, pick)
                    }
                }
            }
            Expr::Affine { x, scale, shift } => {
                let v = self.veval(*x, base, step)?;
                let s = self.b.ins().f32const(scale.get() as f32);
                let s = self.splat(s);
                let t = self.b.ins().f32const(shift.get() as f32);
                let t = self.splat(t);
                let m = self.b.ins().fmul(v, s);
                self.b.ins().fadd(m, t)
            }
            Expr::ClampMax { x, max } => {
                let v = self.veval(*x, base, step)?;
                let m = self.b.ins().f32const(max.get() as f32);
                let m = self.splat(m);
                let gt = self.mask(FloatCC::GreaterThan, v, m);
                self.b.ins().bitselect(gt, m, v)
            }
            Expr::AtLeast { x, min } => {
                let v = self.veval(*x, base, step)?;
                let m = self.b.ins().f32const(min.get() as f32);
                let m = self.splat(m);
                let gt = self.mask(FloatCC::GreaterThan, v, m);
                self.b.ins().bitselect(gt, v, m)
            }
            // A reduction's lanes read one row only when they do not move
            // along its leading axes (`veval` splats that case).
            Expr::Reduce { .. } => return self.lanes(n, base, step),
            Expr::Concat { axis, parts } => {
                let a = *axis as usize;
                if step[a] != 0 {
                    return self.lanes(n, base, step);
                }
                let at = self.val(base[a]);
                let merge = self.b.create_block();
                let out = self.b.append_block_param(merge, types::F32X4);
                let mut off = 0i64;
                let live: Vec<KId> = parts.iter().copied().filter(|&q| p.shapes[q as usize][a] > 0).collect();
                if live.is_empty() {
                    return self.lanes(n, base, step);
                }
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
                    let (saved, vsaved) = (self.memo.clone(), self.vmemo.clone());
                    let mut sub = base.to_vec();
                    sub[a] = Ix::V(self.b.ins().iadd_imm_s(at, -off));
                    let v = self.veval(part, &sub, step)?;
                    self.b.ins().jump(merge, &[BlockArg::Value(v)]);
                    self.memo = saved;
                    self.vmemo = vsaved;
                    off += len;
                    if let Some(next) = next {
                        self.b.switch_to_block(next);
                    }
                }
                self.b.switch_to_block(merge);
                out
            }
            Expr::WriteSlice { .. } | Expr::Anchor { .. } => return self.lanes(n, base, step),
        })
    }
}
