//! Row stages: a kernel whose reductions all fold the rows of its result
//! runs as ONE stage, one workgroup per row (`Stage::row_threads`), instead
//! of a fold stage (one thread per row, into scratch) then the result's stage.
//!
//! **Legality.** Let the result have shape `[rows.., len]` (rank >= 1). A
//! row stage is emitted when
//! 1. every needed `Reduce` folds an operand of shape `[rows.., L]` (the
//!    result's leading extents, any row length `L`), and
//! 2. every read of a reduction, by a later fold or by the result, is at the
//!    reader's own row: its index is `[row.., 0]` with `row` the very index
//!    expressions of the reading element's leading axes (what `Broadcast`
//!    of a `[rows.., 1]` fold gives; maps that keep the leading axes, such as
//!    a slice or concat along the last axis or a reshape of the last axes,
//!    keep it; checked while emitting, as the fold stages check it).
//!
//! Otherwise (a fold read at another row, rows that do not line up with the
//! result's, a scalar result) `build.rs` emits the fold stages and the
//! result's stage as before.
//!
//! **The stage.** Workgroup `id` (spread over x and y) is row `id`; its
//! `n` threads (`lane`) fold each reduction in node order: a thread folds
//! elements `lane, lane + n, ..` of the row in index order, then the partials
//! are combined by a tree over workgroup memory (`red[lane] op= red[lane +
//! s]`, `s = n/2 .. 1`, a barrier after each step), every thread reads the
//! row's value from `red[0]` (a barrier before the next fold reuses `red`).
//! A later fold and the result read an earlier fold from that register.
//! Then every thread computes and writes elements `lane, lane + n, ..` of the
//! row through the output view. Sums are thus in tree order, not the dense
//! evaluator's sequential order: equal to rounding.

use super::build::{Builder, BuiltStage, CROSS_ROW};
use super::tree::{Func, Op2, Ty, E, S};
use super::{MetaWord, Write};
use crate::ir::dim::{product, Dim};
use crate::kernel::{Expr, KId, Kernel, Reduce};

/// The most threads of a row stage's workgroup (WebGPU's guaranteed
/// `maxComputeInvocationsPerWorkgroup`); rows known to be short get fewer
/// (at least 64).
pub const MAX_ROW_THREADS: u32 = 256;

/// The row stage of `k` (whose needed nodes are `needed`), or `None` when
/// the kernel has no reduction or its reductions do not fold its rows.
pub(super) fn row_stage(k: &Kernel, needed: &[bool]) -> Result<Option<BuiltStage>, String> {
    let shape = &k.nodes[k.nodes.len() - 1].ty.shape;
    let Some((len, rows)) = shape.split_last() else { return Ok(None) };
    let mut folds = vec![];
    let mut longest = len.as_const();
    for (i, n) in k.nodes.iter().enumerate() {
        if let (true, Expr::Reduce { x, op }) = (needed[i], &n.expr) {
            let xs = &k.nodes[*x as usize].ty.shape;
            if xs.len() != shape.len() || xs[..rows.len()] != rows[..] {
                return Ok(None);
            }
            longest = longest.zip(xs[rows.len()].as_const()).map(|(a, b)| a.max(b));
            folds.push((i as KId, *x, *op));
        }
    }
    if folds.is_empty() {
        return Ok(None);
    }
    // Short rows (a tiny model's 32 channels) would leave most of 256
    // threads idle at every barrier.
    let threads = match longest {
        Some(l) => (l.next_power_of_two().clamp(64, MAX_ROW_THREADS as u64)) as u32,
        None => MAX_ROW_THREADS,
    };
    match emit(k, rows, len, &folds, threads) {
        Ok(st) => Ok(Some(st)),
        Err(e) if e == CROSS_ROW => Ok(None),
        Err(e) => Err(e),
    }
}

fn emit(k: &Kernel, rows: &[Dim], len: &Dim, folds: &[(KId, KId, Reduce)], threads: u32) -> Result<BuiltStage, String> {
    let no_scratch = vec![None; k.nodes.len()];
    let mut b = Builder::new(k, &no_scratch);
    let mut out = vec![];
    let mut row = b.unravel(&mut out, E::Id, rows)?;
    // An axis of extent 1 is index 0, as `Broadcast` reads it.
    for (r, d) in row.iter_mut().zip(rows) {
        if *d == Dim::c(1) {
            *r = E::U32(0);
        }
    }
    b.row = row.clone();
    for (f, &(n, x, op)) in folds.iter().enumerate() {
        let acc = b.fresh();
        out.push(S::Var { var: acc, ty: Ty::F32, init: E::F32(init(op)) });
        let xlen = b.dim(k.nodes[x as usize].ty.shape.last().ok_or("the reduction of a scalar")?)?;
        strided(&mut b, &mut out, xlen, threads, |b, body, j| {
            let idx: Vec<E> = row.iter().cloned().chain([j]).collect();
            let v = b.value(body, x, &idx)?;
            body.push(S::Assign { var: acc, value: fold(op, E::Var(acc), v) });
            Ok(())
        })?;
        out.push(S::SharedStore { at: E::Lane, value: E::Var(acc) });
        out.push(S::Barrier);
        let mut s = threads / 2;
        while s > 0 {
            let (a, c) = (b.fresh(), b.fresh());
            let then = vec![
                S::Let { var: a, ty: Ty::F32, value: E::Shared(Box::new(E::Lane)) },
                S::Let { var: c, ty: Ty::F32, value: E::Shared(Box::new(E::iadd(E::Lane, E::U32(s)))) },
                S::SharedStore { at: E::Lane, value: fold(op, E::Var(a), E::Var(c)) },
            ];
            out.push(S::If { cond: E::bin(Op2::Lt, E::Lane, E::U32(s)), then, otherwise: vec![] });
            out.push(S::Barrier);
            s /= 2;
        }
        let r = b.fresh();
        out.push(S::Let { var: r, ty: Ty::F32, value: E::Shared(Box::new(E::U32(0))) });
        if f + 1 < folds.len() {
            // Every thread has read `red[0]` before the next fold stores.
            out.push(S::Barrier);
        }
        b.local.push((n, r));
    }
    let last = (k.nodes.len() - 1) as KId;
    let len = b.dim(len)?;
    strided(&mut b, &mut out, len, threads, |b, body, j| {
        let idx: Vec<E> = row.iter().cloned().chain([j]).collect();
        let v = b.value(body, last, &idx)?;
        let mut at = b.meta(MetaWord::OutputOffset);
        for (a, i) in idx.iter().enumerate() {
            let stride = b.meta(MetaWord::OutputStride(a as u8));
            at = E::iadd(at, E::imul(i.clone(), stride));
        }
        body.push(S::Store { at, value: v });
        Ok(())
    })?;
    let mut st = b.finish(out, Write::Output, product(rows));
    st.shader.row_threads = Some(threads);
    Ok(st)
}

/// `for j in lane, lane + threads, .. < len { f(j) }`, as a counted loop
/// (values bound in the body stay in it).
fn strided<'k>(
    b: &mut Builder<'k>,
    out: &mut Vec<S>,
    len: E,
    threads: u32,
    f: impl FnOnce(&mut Builder<'k>, &mut Vec<S>, E) -> Result<(), String>,
) -> Result<(), String> {
    let t = b.fresh();
    // ceil((len - lane) / threads), without going below 0 (lane < threads).
    let count = E::idiv(E::isub(E::iadd(len, E::U32(threads - 1)), E::Lane), E::U32(threads));
    let saved = b.cache.clone();
    let mut body = vec![];
    let j = b.bind(&mut body, Ty::U32, E::iadd(E::Lane, E::imul(E::Var(t), E::U32(threads))));
    f(b, &mut body, j)?;
    b.cache = saved;
    out.push(S::Loop { var: t, count, body });
    Ok(())
}

fn init(op: Reduce) -> f32 {
    match op {
        Reduce::Sum => 0.0,
        Reduce::Max => f32::NEG_INFINITY,
    }
}

/// `acc` combined with `v` (`v` may be read twice: a leaf or a bound name).
fn fold(op: Reduce, acc: E, v: E) -> E {
    match op {
        Reduce::Sum => E::bin(Op2::Add, acc, v),
        // NaN wins and stays (a later `v > NaN` is false), on either side.
        Reduce::Max => E::Select {
            cond: Box::new(E::bin(
                Op2::Or,
                E::bin(Op2::Gt, v.clone(), acc.clone()),
                E::Call(Func::IsNan, vec![v.clone()]),
            )),
            t: Box::new(v),
            f: Box::new(acc),
        },
    }
}
