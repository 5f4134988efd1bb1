//! Lowering: each scheduled kernel of an optimized graph becomes a [`Kernel`] of the kernel IR.
//!
//! Two shapes of kernel:
//! - pointwise: a grid-stride loop over the output elements, each computed by following the
//!   body graph back to loads (index maps for broadcast, transpose, reshape and slice;
//!   reductions, normalizations and matrix products as serial loops);
//! - rows: the row statistics (reductions, softmax max/sum, layernorm mean/variance) are
//!   computed once per row of a row kernel's iteration space, then the row's outputs are
//!   written. On the GPU ([`rows`]) a group of warp lanes or a block shares each row, held in
//!   registers or streamed with one-pass merges; on the CPU ([`cpu`]) one thread runs whole
//!   rows.

use super::ir::{
    BufferDecl, Builtin, Combiner, Expr, IndexOp, Kernel, Launch, Precision, Program, ReduceOp,
    Scope, Stmt,
};
use crate::ir::{
    broadcast_shapes, DType, Graph, KernelKind, Node, NodeId, Op, ReduceKind, ScatterReduction,
    UnaryOp,
};
use std::collections::HashMap;
use thiserror::Error;

/// Why a graph cannot be lowered (yet).
#[derive(Debug, Error)]
pub enum LowerError {
    /// An op the lowering does not handle.
    #[error("node '{node}': lowering does not support {op} yet")]
    Unsupported {
        /// Node name.
        node: String,
        /// Op name.
        op: String,
    },
}

type R<T> = Result<T, LowerError>;

mod attention;
mod blas;
mod cpu;
mod gemm;
mod interleave;
mod rows;
mod vector;
pub use cpu::CPU_CHUNK;

/// What a program is lowered for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Target {
    /// A GPU: blocks of many threads, block reductions, matrix products as loops.
    #[default]
    Gpu,
    /// The CPU: one thread per block, each block a contiguous share of the work (the C
    /// renderer runs blocks on a thread pool), f32 matrix products as library [`Gemm`]
    /// calls.
    ///
    /// [`Gemm`]: super::ir::Gemm
    Cpu,
}

/// Threads per block of pointwise kernels.
pub const POINTWISE_BLOCK: usize = 256;
/// Threads per block of row kernels.
pub const ROW_BLOCK: usize = 128;
/// Most blocks of one launch (loops stride over the rest).
pub const MAX_GRID: usize = 1024;

// Index expressions, folded where constant.
fn add(a: Expr, b: Expr) -> Expr {
    match (a, b) {
        (Expr::I(0), e) | (e, Expr::I(0)) => e,
        (Expr::I(x), Expr::I(y)) => Expr::I(x + y),
        (a, b) => match regroup(&a, &b).or_else(|| regroup(&b, &a)) {
            Some(e) => e,
            None => Expr::Index(IndexOp::Add, Box::new(a), Box::new(b)),
        },
    }
}

/// `(a / mn)·(n·c) + ((a / m) % n)·c = (a / m)·c` (for any sign of `a`: truncating
/// division nests): ravelling an unravelled index gives back the flat index.
fn regroup(hi: &Expr, lo: &Expr) -> Option<Expr> {
    fn scaled(e: &Expr) -> (&Expr, i64) {
        match e {
            Expr::Index(IndexOp::Mul, x, c) => match **c {
                Expr::I(c) => (x, c),
                _ => (e, 1),
            },
            e => (e, 1),
        }
    }
    fn quotient(e: &Expr) -> (&Expr, i64) {
        match e {
            Expr::Index(IndexOp::Div, a, q) => match **q {
                Expr::I(q) => (a, q),
                _ => (e, 1),
            },
            e => (e, 1),
        }
    }
    let (x, c1) = scaled(hi);
    let (a1, q) = quotient(x);
    let (y, c2) = scaled(lo);
    let Expr::Index(IndexOp::Rem, r, n) = y else {
        return None;
    };
    let Expr::I(n) = **n else { return None };
    let (a2, m) = quotient(r);
    (a1 == a2 && m > 0 && n > 0 && q == m * n && c1 == n * c2)
        .then(|| mul(div(a1.clone(), m as usize), Expr::I(c2)))
}
fn mul(a: Expr, b: Expr) -> Expr {
    match (a, b) {
        (Expr::I(0), _) | (_, Expr::I(0)) => Expr::I(0),
        (Expr::I(1), e) | (e, Expr::I(1)) => e,
        (Expr::I(x), Expr::I(y)) => Expr::I(x * y),
        (a, b) => Expr::Index(IndexOp::Mul, Box::new(a), Box::new(b)),
    }
}
fn div(a: Expr, d: usize) -> Expr {
    match (a, d) {
        (e, 1) => e,
        (Expr::I(x), d) => Expr::I(x / d as i64),
        (a, d) => Expr::Index(IndexOp::Div, Box::new(a), Box::new(Expr::I(d as i64))),
    }
}
fn rem(a: Expr, d: usize) -> Expr {
    match (a, d) {
        (_, 1) => Expr::I(0),
        (Expr::I(x), d) => Expr::I(x % d as i64),
        (a, d) => Expr::Index(IndexOp::Rem, Box::new(a), Box::new(Expr::I(d as i64))),
    }
}

/// `e` with each variable `x` for which `by(x)` is `Some` replaced by it, index arithmetic
/// refolded.
fn substitute(e: Expr, by: &dyn Fn(u32) -> Option<Expr>) -> Expr {
    let s = |x: Box<Expr>| Box::new(substitute(*x, by));
    match e {
        Expr::Var(x) => by(x).unwrap_or(e),
        Expr::F(_) | Expr::I(_) | Expr::Builtin(_) => e,
        Expr::Load { buf, index } => Expr::Load {
            buf,
            index: s(index),
        },
        Expr::Shared { array, index } => Expr::Shared {
            array,
            index: s(index),
        },
        Expr::Unary(u, a) => Expr::Unary(u, s(a)),
        Expr::Cast(d, a) => Expr::Cast(d, s(a)),
        Expr::Binary(o, a, b) => Expr::Binary(o, s(a), s(b)),
        Expr::Combine(o, a, b) => Expr::Combine(o, s(a), s(b)),
        Expr::Select(c, a, b) => Expr::Select(s(c), s(a), s(b)),
        Expr::Index(IndexOp::Add, a, b) => add(substitute(*a, by), substitute(*b, by)),
        Expr::Index(IndexOp::Mul, a, b) => mul(substitute(*a, by), substitute(*b, by)),
        Expr::Index(o, a, b) => match (o, substitute(*a, by), substitute(*b, by)) {
            (IndexOp::Div, a, Expr::I(d)) if d > 0 => div(a, d as usize),
            (IndexOp::Rem, a, Expr::I(d)) if d > 0 => rem(a, d as usize),
            (o, a, b) => Expr::Index(o, Box::new(a), Box::new(b)),
        },
    }
}

/// [`substitute`] in every expression of `st` (variables it sets keep their names).
fn substitute_stmt(st: Stmt, by: &dyn Fn(u32) -> Option<Expr>) -> Stmt {
    let e = |x: Expr| substitute(x, by);
    let all = |b: Vec<Stmt>| b.into_iter().map(|s| substitute_stmt(s, by)).collect();
    match st {
        Stmt::Let { var, value } => Stmt::Let {
            var,
            value: e(value),
        },
        Stmt::Store { buf, index, value } => Stmt::Store {
            buf,
            index: e(index),
            value: e(value),
        },
        Stmt::SharedStore {
            array,
            index,
            value,
        } => Stmt::SharedStore {
            array,
            index: e(index),
            value: e(value),
        },
        Stmt::LoadVec { vars, buf, index } => Stmt::LoadVec {
            vars,
            buf,
            index: e(index),
        },
        Stmt::StoreVec { buf, index, values } => Stmt::StoreVec {
            buf,
            index: e(index),
            values: values.into_iter().map(e).collect(),
        },
        Stmt::For {
            var,
            start,
            end,
            step,
            uniform,
            body,
        } => Stmt::For {
            var,
            start: e(start),
            end: e(end),
            step: e(step),
            uniform,
            body: all(body),
        },
        Stmt::If { cond, then } => Stmt::If {
            cond: e(cond),
            then: all(then),
        },
        other => other,
    }
}

fn strides(shape: &[usize]) -> Vec<usize> {
    crate::interp::strides(shape)
}

/// Flat row-major index of a multi-index.
fn ravel(idx: &[Expr], shape: &[usize]) -> Expr {
    let s = strides(shape);
    idx.iter()
        .zip(&s)
        .zip(shape)
        .fold(Expr::I(0), |acc, ((i, &st), &n)| {
            if n == 1 {
                acc
            } else {
                add(acc, mul(i.clone(), Expr::I(st as i64)))
            }
        })
}

/// Multi-index of a flat index.
fn unravel(flat: &Expr, shape: &[usize]) -> Vec<Expr> {
    let s = strides(shape);
    let total: usize = shape.iter().product();
    shape
        .iter()
        .zip(&s)
        .map(|(&n, &st)| {
            if n == 1 {
                Expr::I(0)
            } else if st * n == total {
                div(flat.clone(), st)
            } else {
                rem(div(flat.clone(), st), n)
            }
        })
        .collect()
}

/// The index into an input of shape `from` that numpy broadcasting reads for `idx`.
fn broadcast_index(idx: &[Expr], from: &[usize]) -> Vec<Expr> {
    let off = idx.len() - from.len();
    from.iter()
        .enumerate()
        .map(|(d, &n)| {
            if n == 1 {
                Expr::I(0)
            } else {
                idx[d + off].clone()
            }
        })
        .collect()
}

fn key(node: NodeId, idx: &[Expr]) -> String {
    let parts: Vec<String> = idx.iter().map(|e| e.to_string()).collect();
    format!("{node}@{}", parts.join(","))
}

/// Emits the statements that compute body values at given indices.
struct Emitter<'a> {
    body: &'a Graph,
    inputs: &'a [u32],
    next_var: u32,
    blocks: Vec<Vec<Stmt>>,
    memo: Vec<HashMap<String, Expr>>,
    /// Per-row statistics of row ops, computed once per row (row kernels only).
    stats: HashMap<(NodeId, &'static str), Expr>,
    /// The lanes of a vectorized pointwise kernel being emitted.
    lanes: Option<vector::Lanes>,
}

impl<'a> Emitter<'a> {
    fn var(&mut self) -> u32 {
        self.next_var += 1;
        self.next_var - 1
    }
    fn push(&mut self, s: Stmt) {
        self.blocks.last_mut().expect("a block is open").push(s);
    }
    fn open(&mut self) {
        self.blocks.push(Vec::new());
        self.memo.push(HashMap::new());
    }
    fn close(&mut self) -> Vec<Stmt> {
        self.memo.pop();
        self.blocks.pop().expect("a block is open")
    }
    fn bind(&mut self, value: Expr) -> Expr {
        match value {
            Expr::Var(_) | Expr::F(_) | Expr::I(_) => value,
            value => {
                let v = self.var();
                self.push(Stmt::Let { var: v, value });
                Expr::Var(v)
            }
        }
    }
    fn node(&self, id: NodeId) -> &'a Node {
        &self.body.nodes[id]
    }
    fn unsupported(&self, id: NodeId) -> LowerError {
        LowerError::Unsupported {
            node: self.node(id).name.clone(),
            op: self.node(id).op.name(),
        }
    }

    /// A loop `for var in 0..n` (serial, in every thread), its body built by `f`.
    fn serial_loop(&mut self, n: usize, f: &mut dyn FnMut(&mut Self, Expr) -> R<()>) -> R<()> {
        let v = self.var();
        self.open();
        f(self, Expr::Var(v))?;
        let body = self.close();
        self.push(Stmt::For {
            var: v,
            start: Expr::I(0),
            end: Expr::I(n as i64),
            step: Expr::I(1),
            uniform: false,
            body,
        });
        Ok(())
    }

    /// `acc = identity; for j in (start..len(tail)).step_by(step) { acc = op(acc, f(prefix ⊕
    /// unravel(j))) }` over values of `dtype`; returns the accumulator variable.
    fn fold(
        &mut self,
        prefix: &[Expr],
        tail: &[usize],
        (op, dtype): (ReduceOp, DType),
        (start, step): (Expr, Expr),
        f: &mut dyn FnMut(&mut Self, &[Expr]) -> R<Expr>,
    ) -> R<u32> {
        let acc = self.var();
        self.push(Stmt::Let {
            var: acc,
            value: identity_of(op, dtype),
        });
        let j = self.var();
        self.open();
        let mut idx = prefix.to_vec();
        idx.extend(unravel(&Expr::Var(j), tail));
        let v = f(self, &idx)?;
        self.push(Stmt::Let {
            var: acc,
            value: Expr::Combine(op, Box::new(Expr::Var(acc)), Box::new(v)),
        });
        let body = self.close();
        let n: usize = tail.iter().product();
        self.push(Stmt::For {
            var: j,
            start,
            end: Expr::I(n as i64),
            step,
            uniform: false,
            body,
        });
        Ok(acc)
    }

    /// Reduces `f(element index)` over the dims `tail` after the index `prefix`, serially in
    /// this thread.
    fn serial_reduce(
        &mut self,
        prefix: &[Expr],
        tail: &[usize],
        op: (ReduceOp, DType),
        f: &mut dyn FnMut(&mut Self, &[Expr]) -> R<Expr>,
    ) -> R<Expr> {
        let acc = self.fold(prefix, tail, op, (Expr::I(0), Expr::I(1)), f)?;
        Ok(Expr::Var(acc))
    }

    /// The value of body node `id` at `idx` if this scope or an enclosing one has it.
    fn recall(&self, id: NodeId, idx: &[Expr]) -> Option<Expr> {
        let k = key(id, idx);
        self.memo.iter().rev().find_map(|m| m.get(&k)).cloned()
    }

    /// Remembers `value` as body node `id`'s value at `idx` for the rest of this scope.
    fn remember(&mut self, id: NodeId, idx: &[Expr], value: Expr) {
        self.memo
            .last_mut()
            .expect("a scope is open")
            .insert(key(id, idx), value);
    }

    /// Closes the open scope and emits its statements under `cond` (as they are for
    /// `None`).
    fn close_under(&mut self, cond: Option<Expr>) {
        let then = self.close();
        match cond {
            Some(cond) => self.push(Stmt::If { cond, then }),
            None => {
                for s in then {
                    self.push(s);
                }
            }
        }
    }

    /// The value of body node `id` at multi-index `idx` (of that node's shape).
    fn value(&mut self, id: NodeId, idx: &[Expr]) -> R<Expr> {
        if let Some(e) = self.recall(id, idx) {
            return Ok(e);
        }
        let e = self.compute(id, idx)?;
        let e = self.bind(e);
        self.remember(id, idx, e.clone());
        Ok(e)
    }

    fn arg(&mut self, id: NodeId, i: usize, idx: &[Expr]) -> R<Expr> {
        let a = self.node(id).inputs[i];
        let bidx = broadcast_index(idx, &self.node(a).ty.shape);
        self.value(a, &bidx)
    }

    fn compute(&mut self, id: NodeId, idx: &[Expr]) -> R<Expr> {
        let node = self.node(id);
        let shape = &node.ty.shape;
        Ok(match &node.op {
            Op::Constant(t) if t.numel() == 1 => immediate(t),
            Op::Input => {
                let k = self
                    .body
                    .inputs
                    .iter()
                    .position(|&i| i == id)
                    .expect("listed input");
                let (buf, index) = (self.inputs[k], ravel(idx, shape));
                match self.lane_load(buf, &index) {
                    Some(v) => v,
                    None => Expr::Load {
                        buf,
                        index: Box::new(index),
                    },
                }
            }
            Op::Unary(u) => Expr::Unary(*u, Box::new(self.arg(id, 0, idx)?)),
            Op::Binary(b) => {
                let (x, y) = (self.arg(id, 0, idx)?, self.arg(id, 1, idx)?);
                Expr::Binary(*b, Box::new(x), Box::new(y))
            }
            Op::Where => {
                let (c, a, b) = (
                    self.arg(id, 0, idx)?,
                    self.arg(id, 1, idx)?,
                    self.arg(id, 2, idx)?,
                );
                Expr::Select(Box::new(c), Box::new(a), Box::new(b))
            }
            Op::Cast(d) => Expr::Cast(*d, Box::new(self.arg(id, 0, idx)?)),
            Op::Broadcast(_) => self.arg(id, 0, idx)?,
            Op::Transpose(perm) => {
                let mut inner = vec![Expr::I(0); perm.len()];
                for (i, &p) in perm.iter().enumerate() {
                    inner[p] = idx[i].clone();
                }
                self.value(node.inputs[0], &inner)?
            }
            Op::Reshape(_) => {
                let x = node.inputs[0];
                let flat = ravel(idx, shape);
                let inner = unravel(&flat, &self.node(x).ty.shape);
                self.value(x, &inner)?
            }
            Op::Slice { starts, steps, .. } => {
                let inner: Vec<Expr> = idx
                    .iter()
                    .enumerate()
                    .map(|(d, i)| add(Expr::I(starts[d] as i64), mul(i.clone(), Expr::I(steps[d]))))
                    .collect();
                self.value(node.inputs[0], &inner)?
            }
            Op::Reduce {
                kind,
                axes,
                keepdims,
            } => self.reduce(id, *kind, axes, *keepdims, idx)?,
            Op::Softmax { axis } | Op::LogSoftmax { axis } => {
                let log = matches!(node.op, Op::LogSoftmax { .. });
                let (m, s) = self.softmax_stats(id, *axis, idx)?;
                let x = self.value(node.inputs[0], idx)?;
                let shifted = Expr::Binary(crate::ir::BinaryOp::Sub, Box::new(x), Box::new(m));
                if log {
                    let ls = Expr::Unary(UnaryOp::Log, Box::new(s));
                    Expr::Binary(crate::ir::BinaryOp::Sub, Box::new(shifted), Box::new(ls))
                } else {
                    let e = Expr::Unary(UnaryOp::Exp, Box::new(shifted));
                    Expr::Binary(crate::ir::BinaryOp::Div, Box::new(e), Box::new(s))
                }
            }
            Op::LayerNorm { axis, .. } => {
                let (mean, inv) = self.layernorm_stats(id, *axis, idx)?;
                let x = self.value(node.inputs[0], idx)?;
                let tail = &idx[*axis..];
                use crate::ir::BinaryOp as B;
                let c = Expr::Binary(B::Sub, Box::new(x), Box::new(mean));
                let n = Expr::Binary(B::Mul, Box::new(c), Box::new(inv));
                let scale = self.param(node.inputs[1], tail)?;
                let mut y = Expr::Binary(B::Mul, Box::new(n), Box::new(scale));
                if let Some(&b) = node.inputs.get(2) {
                    let bias = self.param(b, tail)?;
                    y = Expr::Binary(B::Add, Box::new(y), Box::new(bias));
                }
                y
            }
            Op::MatMul => self.matmul(id, idx)?,
            Op::Conv(c) => self.conv(id, c, idx)?,
            Op::Pool(p) => self.pool(id, p, idx)?,
            Op::Gather { axis } => self.gather(id, *axis, idx)?,
            Op::GatherElements { axis } => {
                let (x, ind) = (node.inputs[0], node.inputs[1]);
                let n = self.node(x).ty.shape[*axis];
                let i = self.value(ind, idx)?;
                let mut inner = idx.to_vec();
                inner[*axis] = wrap_negative(i, n);
                self.load(x, &inner)?
            }
            Op::GatherND { batch_dims } => self.gather_nd(id, *batch_dims, idx)?,
            Op::ScatterND { reduction } => self.scatter_nd(id, *reduction, idx)?,
            Op::Concat { axis } => self.concat(id, *axis, idx)?,
            Op::Pad { pads, mode } => self.pad(id, pads, *mode, idx)?,
            Op::Trilu { upper, k } => {
                let r = idx.len();
                let diff = Expr::Index(
                    IndexOp::Sub,
                    Box::new(idx[r - 1].clone()),
                    Box::new(idx[r - 2].clone()),
                );
                let keep = if *upper {
                    Expr::Index(IndexOp::Ge, Box::new(diff), Box::new(Expr::I(*k)))
                } else {
                    Expr::Index(IndexOp::Ge, Box::new(Expr::I(*k)), Box::new(diff))
                };
                let x = self.value(node.inputs[0], idx)?;
                Expr::Select(
                    Box::new(keep),
                    Box::new(x),
                    Box::new(zero_of(node.ty.dtype)),
                )
            }
            Op::ArgReduce {
                max,
                axis,
                keepdims,
                select_last,
            } => self.arg_reduce(id, *max, *axis, *keepdims, *select_last, idx)?,
            Op::CumSum {
                axis,
                exclusive,
                reverse,
            } => {
                let x = node.inputs[0];
                let n = shape[*axis];
                let i = idx[*axis].clone();
                let (excl, rev) = (*exclusive, *reverse);
                let idx = idx.to_vec();
                let dtype = node.ty.dtype;
                self.serial_reduce(&[], &[n], (ReduceOp::Sum, dtype), &mut |me, j| {
                    let j = j[0].clone();
                    // Included: j <= i (j < i exclusive), or j >= i (j > i) in reverse.
                    let take = match (rev, excl) {
                        (false, false) => {
                            Expr::Index(IndexOp::Ge, Box::new(i.clone()), Box::new(j.clone()))
                        }
                        (false, true) => {
                            Expr::Index(IndexOp::Lt, Box::new(j.clone()), Box::new(i.clone()))
                        }
                        (true, false) => {
                            Expr::Index(IndexOp::Ge, Box::new(j.clone()), Box::new(i.clone()))
                        }
                        (true, true) => {
                            Expr::Index(IndexOp::Lt, Box::new(i.clone()), Box::new(j.clone()))
                        }
                    };
                    let mut at = idx.clone();
                    at[*axis] = j;
                    let v = me.value(x, &at)?;
                    Ok(Expr::Select(
                        Box::new(take),
                        Box::new(v),
                        Box::new(zero_of(dtype)),
                    ))
                })?
            }
            _ => return Err(self.unsupported(id)),
        })
    }

    /// A load from a kernel input, left unbound so it can sit in a guarded branch (a
    /// padded or out-of-range position must not be read).
    fn load(&mut self, id: NodeId, idx: &[Expr]) -> R<Expr> {
        if let Op::Constant(t) = &self.node(id).op {
            if t.numel() == 1 {
                return Ok(immediate(t));
            }
        }
        let k = self
            .body
            .inputs
            .iter()
            .position(|&i| i == id)
            .ok_or_else(|| self.unsupported(id))?;
        Ok(Expr::Load {
            buf: self.inputs[k],
            index: Box::new(ravel(idx, &self.node(id).ty.shape)),
        })
    }

    /// `cond ? load(x, idx) : fill`.
    fn guarded(&mut self, cond: Expr, x: NodeId, idx: &[Expr], fill: Expr) -> R<Expr> {
        let l = self.load(x, idx)?;
        Ok(Expr::Select(Box::new(cond), Box::new(l), Box::new(fill)))
    }

    /// Input position `o*stride + k*dilation - pad` along one window dim, and whether it is
    /// inside `0..n`.
    fn window_pos(
        o: &Expr,
        k: &Expr,
        stride: usize,
        dilation: usize,
        pad: usize,
        n: usize,
    ) -> (Expr, Expr) {
        let p = Expr::Index(
            IndexOp::Sub,
            Box::new(add(
                mul(o.clone(), Expr::I(stride as i64)),
                mul(k.clone(), Expr::I(dilation as i64)),
            )),
            Box::new(Expr::I(pad as i64)),
        );
        let inside = and(
            Expr::Index(IndexOp::Ge, Box::new(p.clone()), Box::new(Expr::I(0))),
            Expr::Index(
                IndexOp::Lt,
                Box::new(p.clone()),
                Box::new(Expr::I(n as i64)),
            ),
        );
        (p, inside)
    }

    fn conv(&mut self, id: NodeId, c: &crate::ir::Conv2d, idx: &[Expr]) -> R<Expr> {
        let node = self.node(id);
        let (x, w) = (node.inputs[0], node.inputs[1]);
        let bias = node.inputs.get(2).copied();
        let xs = self.node(x).ty.shape.clone();
        let ws = self.node(w).ty.shape.clone();
        let (cig, kh, kw) = (ws[1], ws[2], ws[3]);
        let cog = ws[0] / c.group;
        let group = div(idx[1].clone(), cog);
        let idx = idx.to_vec();
        let c = c.clone();
        let acc = self.serial_reduce(
            &[],
            &[cig, kh, kw],
            (ReduceOp::Sum, DType::F32),
            &mut |me, j| {
                let ic = add(mul(group.clone(), Expr::I(cig as i64)), j[0].clone());
                let (iy, in_y) = Self::window_pos(
                    &idx[2],
                    &j[1],
                    c.strides[0],
                    c.dilations[0],
                    c.pads[0],
                    xs[2],
                );
                let (ix, in_x) = Self::window_pos(
                    &idx[3],
                    &j[2],
                    c.strides[1],
                    c.dilations[1],
                    c.pads[1],
                    xs[3],
                );
                let xv = me.guarded(
                    and(in_y, in_x),
                    x,
                    &[idx[0].clone(), ic, iy, ix],
                    Expr::F(0.0),
                )?;
                let wv = me.value(
                    w,
                    &[idx[1].clone(), j[0].clone(), j[1].clone(), j[2].clone()],
                )?;
                Ok(Expr::Binary(
                    crate::ir::BinaryOp::Mul,
                    Box::new(xv),
                    Box::new(wv),
                ))
            },
        )?;
        Ok(match bias {
            Some(b) => {
                let bv = self.value(b, &[idx[1].clone()])?;
                Expr::Binary(crate::ir::BinaryOp::Add, Box::new(acc), Box::new(bv))
            }
            None => acc,
        })
    }

    fn pool(&mut self, id: NodeId, p: &crate::ir::Pool2d, idx: &[Expr]) -> R<Expr> {
        use crate::ir::PoolKind;
        let x = self.node(id).inputs[0];
        let xs = self.node(x).ty.shape.clone();
        let idx = idx.to_vec();
        let p = p.clone();
        let at = |j: &[Expr]| {
            let (iy, in_y) = Self::window_pos(
                &idx[2],
                &j[0],
                p.strides[0],
                p.dilations[0],
                p.pads[0],
                xs[2],
            );
            let (ix, in_x) = Self::window_pos(
                &idx[3],
                &j[1],
                p.strides[1],
                p.dilations[1],
                p.pads[1],
                xs[3],
            );
            (vec![idx[0].clone(), idx[1].clone(), iy, ix], in_y, in_x)
        };
        Ok(match p.kind {
            PoolKind::Max => {
                self.serial_reduce(&[], &p.kernel, (ReduceOp::Max, DType::F32), &mut |me, j| {
                    let (i, in_y, in_x) = at(j);
                    me.guarded(and(in_y, in_x), x, &i, Expr::F(f64::NEG_INFINITY))
                })?
            }
            PoolKind::Avg { count_include_pad } => {
                let sum = self.serial_reduce(
                    &[],
                    &p.kernel,
                    (ReduceOp::Sum, DType::F32),
                    &mut |me, j| {
                        let (i, in_y, in_x) = at(j);
                        me.guarded(and(in_y, in_x), x, &i, Expr::F(0.0))
                    },
                )?;
                // Positions counted: inside the input, or (count_include_pad) inside the
                // explicit padding, never the ceil-mode overhang.
                let count = self.serial_reduce(
                    &[],
                    &p.kernel,
                    (ReduceOp::Sum, DType::F32),
                    &mut |_, j| {
                        let (i, in_y, in_x) = at(j);
                        let cond = if count_include_pad {
                            and(
                                Expr::Index(
                                    IndexOp::Lt,
                                    Box::new(i[2].clone()),
                                    Box::new(Expr::I((xs[2] + p.pads[2]) as i64)),
                                ),
                                Expr::Index(
                                    IndexOp::Lt,
                                    Box::new(i[3].clone()),
                                    Box::new(Expr::I((xs[3] + p.pads[3]) as i64)),
                                ),
                            )
                        } else {
                            and(in_y, in_x)
                        };
                        Ok(Expr::Select(
                            Box::new(cond),
                            Box::new(Expr::F(1.0)),
                            Box::new(Expr::F(0.0)),
                        ))
                    },
                )?;
                Expr::Binary(crate::ir::BinaryOp::Div, Box::new(sum), Box::new(count))
            }
        })
    }

    fn gather(&mut self, id: NodeId, axis: usize, idx: &[Expr]) -> R<Expr> {
        let node = self.node(id);
        let (x, ind) = (node.inputs[0], node.inputs[1]);
        let n = self.node(x).ty.shape[axis];
        let ir = self.node(ind).ty.rank();
        let i = self.value(ind, &idx[axis..axis + ir])?;
        let mut inner = idx[..axis].to_vec();
        inner.push(wrap_negative(i, n));
        inner.extend_from_slice(&idx[axis + ir..]);
        self.load(x, &inner)
    }

    /// The data dims that row `lead` of ND indices `ind` addresses (its last dim read at
    /// every coordinate, negative ones wrapped against `dims`).
    fn nd_coords(&mut self, ind: NodeId, lead: &[Expr], dims: &[usize]) -> R<Vec<Expr>> {
        let mut coords = Vec::with_capacity(dims.len());
        for (k, &n) in dims.iter().enumerate() {
            let mut at = lead.to_vec();
            at.push(Expr::I(k as i64));
            let c = self.value(ind, &at)?;
            coords.push(wrap_negative(c, n));
        }
        Ok(coords)
    }

    fn gather_nd(&mut self, id: NodeId, batch: usize, idx: &[Expr]) -> R<Expr> {
        let node = self.node(id);
        let (x, ind) = (node.inputs[0], node.inputs[1]);
        let xs = self.node(x).ty.shape.clone();
        let q = self.node(ind).ty.rank();
        let m = self.node(ind).ty.shape[q - 1];
        let mut inner = idx[..batch].to_vec();
        inner.extend(self.nd_coords(ind, &idx[..q - 1], &xs[batch..batch + m])?);
        inner.extend_from_slice(&idx[q - 1..]);
        self.load(x, &inner)
    }

    /// `acc = data[p]; for each update row u (in order): if indices[u] addresses p:
    /// acc = combine(acc, updates[u, ...])`, serially in this thread.
    fn scatter_nd(&mut self, id: NodeId, reduction: ScatterReduction, idx: &[Expr]) -> R<Expr> {
        use crate::ir::BinaryOp as B;
        let node = self.node(id);
        let (x, ind, upd) = (node.inputs[0], node.inputs[1], node.inputs[2]);
        let xs = self.node(x).ty.shape.clone();
        let is = self.node(ind).ty.shape.clone();
        let (lead, m) = (&is[..is.len() - 1], is[is.len() - 1]);
        let start = self.value(x, idx)?;
        let acc = self.var();
        self.push(Stmt::Let {
            var: acc,
            value: start,
        });
        let j = self.var();
        self.open();
        let row = unravel(&Expr::Var(j), lead);
        let coords = self.nd_coords(ind, &row, &xs[..m])?;
        let hit = coords
            .into_iter()
            .zip(idx)
            .map(|(c, i)| Expr::Index(IndexOp::Eq, Box::new(c), Box::new(i.clone())))
            .reduce(|a, b| Expr::Index(IndexOp::And, Box::new(a), Box::new(b)))
            .expect("m >= 1");
        let mut at = row;
        at.extend_from_slice(&idx[m..]);
        let u = self.value(upd, &at)?;
        let old = Box::new(Expr::Var(acc));
        let new = match reduction {
            ScatterReduction::None => u,
            ScatterReduction::Add => Expr::Binary(B::Add, old.clone(), Box::new(u)),
            ScatterReduction::Mul => Expr::Binary(B::Mul, old.clone(), Box::new(u)),
            ScatterReduction::Max => Expr::Binary(B::Max, old.clone(), Box::new(u)),
            ScatterReduction::Min => Expr::Binary(B::Min, old.clone(), Box::new(u)),
        };
        self.push(Stmt::Let {
            var: acc,
            value: Expr::Select(Box::new(hit), Box::new(new), old),
        });
        let body = self.close();
        self.push(Stmt::For {
            var: j,
            start: Expr::I(0),
            end: Expr::I(lead.iter().product::<usize>() as i64),
            step: Expr::I(1),
            uniform: false,
            body,
        });
        Ok(Expr::Var(acc))
    }

    fn concat(&mut self, id: NodeId, axis: usize, idx: &[Expr]) -> R<Expr> {
        let inputs = self.node(id).inputs.clone();
        // Last input first: each earlier one takes over below its end offset.
        let mut offsets = Vec::new();
        let mut off = 0;
        for &i in &inputs {
            offsets.push(off);
            off += self.node(i).ty.shape[axis];
        }
        let mut e: Option<Expr> = None;
        for (k, &i) in inputs.iter().enumerate().rev() {
            let mut at = idx.to_vec();
            at[axis] = Expr::Index(
                IndexOp::Sub,
                Box::new(idx[axis].clone()),
                Box::new(Expr::I(offsets[k] as i64)),
            );
            let l = self.load(i, &at)?;
            e = Some(match e {
                None => l,
                Some(rest) => {
                    let end = offsets[k] + self.node(i).ty.shape[axis];
                    let here = Expr::Index(
                        IndexOp::Lt,
                        Box::new(idx[axis].clone()),
                        Box::new(Expr::I(end as i64)),
                    );
                    Expr::Select(Box::new(here), Box::new(l), Box::new(rest))
                }
            });
        }
        e.ok_or_else(|| self.unsupported(id))
    }

    fn pad(
        &mut self,
        id: NodeId,
        pads: &[(i64, i64)],
        mode: crate::ir::PadMode,
        idx: &[Expr],
    ) -> R<Expr> {
        use crate::ir::PadMode;
        let x = self.node(id).inputs[0];
        let xs = self.node(x).ty.shape.clone();
        let mut inner = Vec::new();
        let mut inside = Expr::I(1);
        for (d, i) in idx.iter().enumerate() {
            let p = Expr::Index(
                IndexOp::Sub,
                Box::new(i.clone()),
                Box::new(Expr::I(pads[d].0)),
            );
            let n = xs[d] as i64;
            match mode {
                PadMode::Constant(_) => {
                    inside = and(
                        inside,
                        and(
                            Expr::Index(IndexOp::Ge, Box::new(p.clone()), Box::new(Expr::I(0))),
                            Expr::Index(IndexOp::Lt, Box::new(p.clone()), Box::new(Expr::I(n))),
                        ),
                    );
                    inner.push(p);
                }
                PadMode::Edge => {
                    // clamp(p, 0, n - 1)
                    let lo = Expr::Select(
                        Box::new(Expr::Index(
                            IndexOp::Lt,
                            Box::new(p.clone()),
                            Box::new(Expr::I(0)),
                        )),
                        Box::new(Expr::I(0)),
                        Box::new(p),
                    );
                    inner.push(Expr::Select(
                        Box::new(Expr::Index(
                            IndexOp::Ge,
                            Box::new(lo.clone()),
                            Box::new(Expr::I(n)),
                        )),
                        Box::new(Expr::I(n - 1)),
                        Box::new(lo),
                    ));
                }
                PadMode::Wrap => inner.push(pos_rem(p, n)),
                PadMode::Reflect if n == 1 => inner.push(Expr::I(0)),
                PadMode::Reflect => {
                    // q = p mod 2(n-1); q < n ? q : 2(n-1) - q
                    let period = 2 * (n - 1);
                    let q = pos_rem(p, period);
                    let back =
                        Expr::Index(IndexOp::Sub, Box::new(Expr::I(period)), Box::new(q.clone()));
                    inner.push(Expr::Select(
                        Box::new(Expr::Index(
                            IndexOp::Lt,
                            Box::new(q.clone()),
                            Box::new(Expr::I(n)),
                        )),
                        Box::new(q),
                        Box::new(back),
                    ));
                }
            }
        }
        match mode {
            PadMode::Constant(v) => self.guarded(inside, x, &inner, Expr::F(v.0)),
            _ => self.load(x, &inner),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn arg_reduce(
        &mut self,
        id: NodeId,
        max: bool,
        axis: usize,
        keepdims: bool,
        last: bool,
        idx: &[Expr],
    ) -> R<Expr> {
        let x = self.node(id).inputs[0];
        let n = self.node(x).ty.shape[axis];
        let mut at: Vec<Expr> = idx.to_vec();
        if keepdims {
            at[axis] = Expr::I(0);
        } else {
            at.insert(axis, Expr::I(0));
        }
        let first = self.value(x, &at)?;
        let (best, arg) = (self.var(), self.var());
        self.push(Stmt::Let {
            var: best,
            value: first,
        });
        self.push(Stmt::Let {
            var: arg,
            value: Expr::I(0),
        });
        self.serial_loop(n, &mut |me, j| {
            let mut a = at.clone();
            a[axis] = j.clone();
            let v = me.value(x, &a)?;
            use crate::ir::BinaryOp as B;
            let cmp = if max { B::Greater } else { B::Less };
            let better = Expr::Binary(cmp, Box::new(v.clone()), Box::new(Expr::Var(best)));
            let better = if last {
                let tie = Expr::Binary(B::Equal, Box::new(v.clone()), Box::new(Expr::Var(best)));
                Expr::Binary(B::Or, Box::new(better), Box::new(tie))
            } else {
                better
            };
            let b = me.bind(better);
            me.push(Stmt::Let {
                var: best,
                value: Expr::Select(Box::new(b.clone()), Box::new(v), Box::new(Expr::Var(best))),
            });
            me.push(Stmt::Let {
                var: arg,
                value: Expr::Select(Box::new(b), Box::new(j), Box::new(Expr::Var(arg))),
            });
            Ok(())
        })?;
        Ok(Expr::Var(arg))
    }

    /// A layernorm parameter broadcast over the normalized dims.
    fn param(&mut self, p: NodeId, tail: &[Expr]) -> R<Expr> {
        let bidx = broadcast_index(tail, &self.node(p).ty.shape);
        self.value(p, &bidx)
    }

    fn row_prefix(idx: &[Expr], axis: usize) -> Vec<Expr> {
        idx[..axis].to_vec()
    }

    fn reduce(
        &mut self,
        id: NodeId,
        kind: ReduceKind,
        axes: &[usize],
        keepdims: bool,
        idx: &[Expr],
    ) -> R<Expr> {
        if let Some(e) = self.stats.get(&(id, "reduce")) {
            return Ok(e.clone());
        }
        let node = self.node(id);
        let x = node.inputs[0];
        let xs = self.node(x).ty.shape.clone();
        // The input index: kept dims from idx, reduced dims from the loop.
        let mut kept = Vec::new();
        let mut it = idx.iter();
        for d in 0..xs.len() {
            if axes.contains(&d) {
                if keepdims {
                    it.next();
                }
                kept.push(None);
            } else {
                kept.push(it.next().cloned());
            }
        }
        let reduced: Vec<usize> = axes.iter().map(|&a| xs[a]).collect();
        let count: usize = reduced.iter().product();
        let op = (reduce_op(kind), self.node(x).ty.dtype);
        let acc = self.serial_reduce(&[], &reduced, op, &mut |me, j| {
            let mut jt = j.iter();
            let full: Vec<Expr> = kept
                .iter()
                .map(|k| {
                    k.clone()
                        .unwrap_or_else(|| jt.next().cloned().unwrap_or(Expr::I(0)))
                })
                .collect();
            me.value(x, &full)
        })?;
        Ok(finish_reduce(kind, acc, count, self.node(x).ty.dtype))
    }

    fn softmax_stats(&mut self, id: NodeId, axis: usize, idx: &[Expr]) -> R<(Expr, Expr)> {
        if let (Some(m), Some(s)) = (self.stats.get(&(id, "max")), self.stats.get(&(id, "sum"))) {
            return Ok((m.clone(), s.clone()));
        }
        // Softmax runs along `axis` alone: vary that dim, keep the others.
        let x = self.node(id).inputs[0];
        let n = self.node(x).ty.shape[axis];
        let at = |j: &[Expr]| {
            let mut i = idx.to_vec();
            i[axis] = j[0].clone();
            i
        };
        let m = self.serial_reduce(&[], &[n], (ReduceOp::Max, DType::F32), &mut |me, j| {
            me.value(x, &at(j))
        })?;
        let s = self.serial_reduce(&[], &[n], (ReduceOp::Sum, DType::F32), &mut |me, j| {
            let v = me.value(x, &at(j))?;
            Ok(exp_sub(v, m.clone()))
        })?;
        Ok((m, s))
    }

    fn layernorm_stats(&mut self, id: NodeId, axis: usize, idx: &[Expr]) -> R<(Expr, Expr)> {
        if let (Some(m), Some(s)) = (self.stats.get(&(id, "mean")), self.stats.get(&(id, "inv"))) {
            return Ok((m.clone(), s.clone()));
        }
        let Op::LayerNorm { epsilon, .. } = self.node(id).op else {
            unreachable!("layernorm")
        };
        let x = self.node(id).inputs[0];
        let shape = self.node(x).ty.shape.clone();
        let prefix = Self::row_prefix(idx, axis);
        let tail = shape[axis..].to_vec();
        let n = tail.iter().product::<usize>() as f64;
        let sum =
            self.serial_reduce(&prefix, &tail, (ReduceOp::Sum, DType::F32), &mut |me, i| {
                me.value(x, i)
            })?;
        let mean = self.bind(div_f(sum, n));
        let sq =
            self.serial_reduce(&prefix, &tail, (ReduceOp::Sum, DType::F32), &mut |me, i| {
                let v = me.value(x, i)?;
                Ok(square(Expr::Binary(
                    crate::ir::BinaryOp::Sub,
                    Box::new(v),
                    Box::new(mean.clone()),
                )))
            })?;
        let inv = self.bind(inv_std(div_f(sq, n), epsilon.0));
        Ok((mean, inv))
    }

    fn matmul(&mut self, id: NodeId, idx: &[Expr]) -> R<Expr> {
        let node = self.node(id);
        let (a, b) = (node.inputs[0], node.inputs[1]);
        let (sa, sb) = (self.node(a).ty.shape.clone(), self.node(b).ty.shape.clone());
        let r = idx.len();
        // Output index: [batch.., m, n], with m or n absent for 1-D operands.
        let (m_i, n_i) = match (sa.len(), sb.len()) {
            (1, 1) => (None, None),
            (1, _) => (None, Some(r - 1)),
            (_, 1) => (Some(r - 1), None),
            _ => (Some(r - 2), Some(r - 1)),
        };
        let batch_len = r - m_i.is_some() as usize - n_i.is_some() as usize;
        let batch = &idx[..batch_len];
        let k = sa[sa.len() - 1];
        let op = (ReduceOp::Sum, self.node(a).ty.dtype);
        let acc = self.serial_reduce(&[], &[k], op, &mut |me, kk| {
            let kk = kk[0].clone();
            let ia: Vec<Expr> = if sa.len() == 1 {
                vec![kk.clone()]
            } else {
                let mut v = broadcast_index(batch, &sa[..sa.len() - 2]);
                v.push(m_i.map(|i| idx[i].clone()).unwrap_or(Expr::I(0)));
                v.push(kk.clone());
                v
            };
            let ib: Vec<Expr> = if sb.len() == 1 {
                vec![kk.clone()]
            } else {
                let mut v = broadcast_index(batch, &sb[..sb.len() - 2]);
                v.push(kk.clone());
                v.push(n_i.map(|i| idx[i].clone()).unwrap_or(Expr::I(0)));
                v
            };
            let (x, y) = (me.value(a, &ia)?, me.value(b, &ib)?);
            Ok(Expr::Binary(
                crate::ir::BinaryOp::Mul,
                Box::new(x),
                Box::new(y),
            ))
        })?;
        Ok(acc)
    }
}

/// `((a % n) + n) % n`: the remainder in `0..n` for any sign of `a`.
fn pos_rem(a: Expr, n: i64) -> Expr {
    let r = Expr::Index(IndexOp::Rem, Box::new(a), Box::new(Expr::I(n)));
    let r = Expr::Index(IndexOp::Add, Box::new(r), Box::new(Expr::I(n)));
    Expr::Index(IndexOp::Rem, Box::new(r), Box::new(Expr::I(n)))
}

fn and(a: Expr, b: Expr) -> Expr {
    match (a, b) {
        (Expr::I(1), e) | (e, Expr::I(1)) => e,
        (a, b) => Expr::Index(IndexOp::And, Box::new(a), Box::new(b)),
    }
}

/// `i < 0 ? i + n : i`: a negative gather index counts from the end.
fn wrap_negative(i: Expr, n: usize) -> Expr {
    Expr::Select(
        Box::new(Expr::Index(
            IndexOp::Lt,
            Box::new(i.clone()),
            Box::new(Expr::I(0)),
        )),
        Box::new(Expr::Index(
            IndexOp::Add,
            Box::new(i.clone()),
            Box::new(Expr::I(n as i64)),
        )),
        Box::new(i),
    )
}

/// Zero of a dtype's compute type: an integer for integer dtypes (a variable's first
/// assignment decides its type in the rendered code).
fn zero_of(d: DType) -> Expr {
    if d.is_int() {
        Expr::I(0)
    } else {
        Expr::F(0.0)
    }
}

fn div_f(a: Expr, n: f64) -> Expr {
    Expr::Binary(crate::ir::BinaryOp::Div, Box::new(a), Box::new(Expr::F(n)))
}
/// `exp(v - m)`: a softmax numerator.
fn exp_sub(v: Expr, m: Expr) -> Expr {
    Expr::Unary(
        UnaryOp::Exp,
        Box::new(Expr::Binary(
            crate::ir::BinaryOp::Sub,
            Box::new(v),
            Box::new(m),
        )),
    )
}

fn square(a: Expr) -> Expr {
    Expr::Binary(crate::ir::BinaryOp::Mul, Box::new(a.clone()), Box::new(a))
}
fn inv_std(var: Expr, eps: f64) -> Expr {
    let ve = Expr::Binary(
        crate::ir::BinaryOp::Add,
        Box::new(var),
        Box::new(Expr::F(eps)),
    );
    Expr::Unary(
        UnaryOp::Reciprocal,
        Box::new(Expr::Unary(UnaryOp::Sqrt, Box::new(ve))),
    )
}

/// The result of a reduction from its accumulator over `count` elements: a mean divides,
/// and over bools the empty max is false and the empty min true.
fn finish_reduce(kind: ReduceKind, acc: Expr, count: usize, dtype: DType) -> Expr {
    match kind {
        ReduceKind::Mean => div_f(acc, count as f64),
        ReduceKind::Max if dtype == DType::Bool => {
            Expr::Combine(ReduceOp::Max, Box::new(acc), Box::new(Expr::F(0.0)))
        }
        ReduceKind::Min if dtype == DType::Bool => {
            Expr::Combine(ReduceOp::Min, Box::new(acc), Box::new(Expr::F(1.0)))
        }
        _ => acc,
    }
}

/// The identity of `op` over values of `dtype`, in their compute type: integer reductions
/// accumulate exactly in i64, float ones in the kernel's float type.
fn identity_of(op: ReduceOp, dtype: DType) -> Expr {
    if dtype.is_int() {
        Expr::I(op.identity_int())
    } else {
        Expr::F(op.identity())
    }
}

fn reduce_op(kind: ReduceKind) -> ReduceOp {
    match kind {
        ReduceKind::Sum | ReduceKind::Mean => ReduceOp::Sum,
        ReduceKind::Max => ReduceOp::Max,
        ReduceKind::Min => ReduceOp::Min,
        ReduceKind::Prod => ReduceOp::Prod,
    }
}

fn builtin(b: Builtin) -> Expr {
    Expr::Builtin(b)
}

/// A one-op body for a node that is not a fused kernel.
fn single_op_body(g: &Graph, id: NodeId) -> Graph {
    let node = &g.nodes[id];
    let mut body = Graph::default();
    let mut seen: Vec<NodeId> = Vec::new();
    let mut args = Vec::new();
    for &a in &node.inputs {
        let k = seen.iter().position(|&s| s == a).unwrap_or_else(|| {
            seen.push(a);
            body.inputs.push(body.nodes.len());
            body.nodes.push(Node {
                name: format!("in{}", seen.len() - 1),
                op: Op::Input,
                inputs: vec![],
                ty: g.nodes[a].ty.clone(),
            });
            seen.len() - 1
        });
        args.push(body.inputs[k]);
    }
    body.nodes.push(Node {
        name: node.name.clone(),
        op: node.op.clone(),
        inputs: args,
        ty: node.ty.clone(),
    });
    body.outputs.push(("out".into(), body.nodes.len() - 1));
    body
}

/// The distinct inputs of a node, in order (a fused body has one input per distinct value).
fn distinct_inputs(node: &Node) -> Vec<NodeId> {
    let mut v: Vec<NodeId> = Vec::new();
    for &a in &node.inputs {
        if !v.contains(&a) {
            v.push(a);
        }
    }
    v
}

/// Row structure of a one-op body, if it is a row op over trailing dims.
fn single_row_axis(op: &Op, rank: usize) -> Option<usize> {
    match op {
        Op::Softmax { axis } | Op::LogSoftmax { axis } if axis + 1 == rank => Some(*axis),
        Op::LayerNorm { axis, .. } => Some(*axis),
        Op::Reduce { axes, .. } => {
            let a = *axes.first()?;
            axes.iter().copied().eq(a..rank).then_some(a)
        }
        _ => None,
    }
}

/// Body inputs that are one-element constants become constants of the body: kernels use
/// them as immediates instead of loading them.
fn inline_scalars(
    body: &Graph,
    ins: &[u32],
    constants: &[(u32, std::sync::Arc<crate::ir::Tensor>)],
) -> (Graph, Vec<u32>) {
    let mut g = body.clone();
    let (mut inputs, mut bufs) = (Vec::new(), Vec::new());
    for (k, &i) in body.inputs.iter().enumerate() {
        match constants
            .iter()
            .find(|(b, t)| *b == ins[k] && t.numel() == 1)
        {
            Some((_, t)) => g.nodes[i].op = Op::Constant(t.clone()),
            None => {
                inputs.push(i);
                bufs.push(ins[k]);
            }
        }
    }
    g.inputs = inputs;
    (g, bufs)
}

/// The immediate of a one-element constant.
fn immediate(t: &crate::ir::Tensor) -> Expr {
    if t.dtype().is_int() {
        Expr::I(t.to_i64()[0])
    } else {
        Expr::F(t.to_f64()[0])
    }
}

/// Lowers an optimized graph to the kernel IR for a GPU.
pub fn lower(g: &Graph) -> R<Program> {
    lower_for(g, Target::Gpu)
}

/// Lowers an optimized graph to the kernel IR for a target.
pub fn lower_for(g: &Graph, target: Target) -> R<Program> {
    let mut buffers: Vec<BufferDecl> = Vec::new();
    let mut buf_of: Vec<u32> = vec![u32::MAX; g.nodes.len()];
    let mut constants = Vec::new();
    let mut kernels = Vec::new();
    let outputs: Vec<NodeId> = g.outputs.iter().map(|(_, i)| *i).collect();
    // A kernel whose only use is a reshape that is a graph output writes straight into that
    // output (declared with its name and shape), which the reshape then views: no copy.
    let mut uses = vec![0usize; g.nodes.len()];
    for n in &g.nodes {
        for &i in &n.inputs {
            uses[i] += 1;
        }
    }
    for &o in &outputs {
        uses[o] += 1;
    }
    let mut written_as: Vec<Option<NodeId>> = vec![None; g.nodes.len()];
    for (id, node) in g.nodes.iter().enumerate() {
        if let (Op::Reshape(_), Some(&x)) = (&node.op, node.inputs.first()) {
            let kernel = !matches!(g.nodes[x].op, Op::Input | Op::Constant(_) | Op::Reshape(_));
            if outputs.contains(&id) && uses[id] == 1 && uses[x] == 1 && kernel {
                written_as[x] = Some(id);
            }
        }
    }
    for (id, node) in g.nodes.iter().enumerate() {
        // A reshape that no output names is a view of its input's buffer; so is one whose
        // input was written into it.
        let viewed = written_as.get(node.inputs.first().copied().unwrap_or(usize::MAX));
        if matches!(node.op, Op::Reshape(_))
            && (!outputs.contains(&id) || viewed == Some(&Some(id)))
        {
            buf_of[id] = buf_of[node.inputs[0]];
            continue;
        }
        let decl = &g.nodes[written_as[id].unwrap_or(id)];
        buf_of[id] = buffers.len() as u32;
        buffers.push(BufferDecl {
            name: decl.name.clone(),
            dtype: node.ty.dtype,
            shape: decl.ty.shape.clone(),
            len: node.ty.numel(),
        });
        match &node.op {
            Op::Input => continue,
            Op::Constant(t) => {
                constants.push((buf_of[id], t.clone()));
                continue;
            }
            _ => {}
        }
        let attention = matches!(&node.op, Op::Fused(k) if k.kind == KernelKind::Attention);
        let product = match &node.op {
            Op::Fused(k) => matches!(k.kind, KernelKind::Gemm | KernelKind::Conv),
            op => matches!(op, Op::MatMul | Op::Conv(_)),
        };
        let (body, row_axis) = match &node.op {
            Op::Fused(k) => (
                k.body.clone(),
                match k.kind {
                    KernelKind::Row { axis } => Some(axis),
                    _ => None,
                },
            ),
            op => {
                let body = single_op_body(g, id);
                let rank = node
                    .inputs
                    .first()
                    .map(|&a| g.nodes[a].ty.rank())
                    .unwrap_or(0);
                (body, single_row_axis(op, rank))
            }
        };
        let ins: Vec<u32> = distinct_inputs(node).iter().map(|&a| buf_of[a]).collect();
        let out = buf_of[id];
        let op_name = node.op.name();
        let name = format!("k{}_{op_name}", kernels.len());
        let precision = if ins
            .iter()
            .chain([&out])
            .any(|&b| buffers[b as usize].dtype == DType::F64)
        {
            Precision::F64
        } else {
            Precision::F32
        };
        let (body, ins) = inline_scalars(&body, &ins, &constants);
        if target == Target::Cpu {
            let mut sink = cpu::Sink {
                buffers: &mut buffers,
                kernels: &mut kernels,
                node: &node.name,
                op: &op_name,
            };
            cpu::lower_node(&body, row_axis, &ins, out, precision, &mut sink)?;
            continue;
        }
        let kernel = match row_axis {
            Some(axis) => rows::lower_rows_gpu(&body, &ins, out, axis, name, precision)?,
            None => {
                let special = if attention {
                    let constant = |b: u32| {
                        constants
                            .iter()
                            .find(|(c, _)| *c == b)
                            .map(|(_, t)| t.clone())
                    };
                    attention::lower_attention_gpu(&body, &ins, out, &name, precision, &constant)?
                } else if product {
                    gemm::lower_gemm_gpu(&body, &ins, out, &name, precision)?
                } else {
                    vector::lower_pointwise_vector(&body, &ins, out, &name, precision)?
                };
                match special {
                    Some(k) => k,
                    None => lower_pointwise(&body, &ins, out, name, precision)?,
                }
            }
        };
        if kernel.launch.grid > i32::MAX as usize {
            return Err(LowerError::Unsupported {
                node: node.name.clone(),
                op: format!(
                    "a launch of {} blocks (CUDA allows 2^31 - 1)",
                    kernel.launch.grid
                ),
            });
        }
        let blas = if product {
            blas::blas_form(&body, &ins, out, buffers[out as usize].dtype).map(Box::new)
        } else {
            None
        };
        kernels.push(Kernel {
            node: node.name.clone(),
            blas,
            ..kernel
        });
    }
    let mut program = Program {
        buffers,
        inputs: g
            .inputs
            .iter()
            .map(|&i| (g.nodes[i].name.clone(), buf_of[i]))
            .collect(),
        constants,
        outputs: g
            .outputs
            .iter()
            .map(|(n, i)| (n.clone(), buf_of[*i]))
            .collect(),
        kernels,
    };
    if target == Target::Cpu {
        cpu::pack_weights(&mut program);
        interleave::interleave(&mut program);
    }
    Ok(program)
}

fn emitter<'a>(body: &'a Graph, inputs: &'a [u32]) -> Emitter<'a> {
    Emitter {
        body,
        inputs,
        next_var: 0,
        blocks: vec![Vec::new()],
        memo: vec![HashMap::new()],
        stats: HashMap::new(),
        lanes: None,
    }
}

fn reads_writes(inputs: &[u32], out: u32) -> (Vec<u32>, Vec<u32>) {
    let mut r = inputs.to_vec();
    r.sort_unstable();
    r.dedup();
    (r, vec![out])
}

/// A grid-stride loop over the output elements.
fn lower_pointwise(
    body: &Graph,
    inputs: &[u32],
    out: u32,
    name: String,
    precision: Precision,
) -> R<Kernel> {
    let root = body.outputs[0].1;
    let shape = body.nodes[root].ty.shape.clone();
    let n = body.nodes[root].ty.numel();
    let mut e = emitter(body, inputs);
    let i = e.var();
    e.open();
    let idx = unravel(&Expr::Var(i), &shape);
    let v = e.value(root, &idx)?;
    e.push(Stmt::Store {
        buf: out,
        index: Expr::Var(i),
        value: v,
    });
    let loop_body = e.close();
    let start = add(
        mul(builtin(Builtin::Block), builtin(Builtin::BlockDim)),
        builtin(Builtin::Thread),
    );
    let step = mul(builtin(Builtin::GridDim), builtin(Builtin::BlockDim));
    e.push(Stmt::For {
        var: i,
        start,
        end: Expr::I(n as i64),
        step,
        uniform: false,
        body: loop_body,
    });
    Ok(e.finish(
        name,
        Launch {
            grid: n.div_ceil(POINTWISE_BLOCK).clamp(1, MAX_GRID),
            block: POINTWISE_BLOCK,
        },
        precision,
        inputs,
        out,
    ))
}

impl Emitter<'_> {
    fn close_root(mut self) -> Vec<Stmt> {
        self.blocks.pop().expect("root block")
    }

    /// The kernel of the emitted statements, reading `inputs` and writing `out` (no shared
    /// memory or fragments: kernels with them set those fields).
    fn finish(
        self,
        name: impl Into<String>,
        launch: Launch,
        precision: Precision,
        inputs: &[u32],
        out: u32,
    ) -> Kernel {
        let (reads, writes) = reads_writes(inputs, out);
        Kernel {
            name: name.into(),
            node: String::new(),
            launch,
            precision,
            reads,
            writes,
            vars: self.next_var,
            shared: Vec::new(),
            frags: Vec::new(),
            body: self.close_root(),
            blas: None,
        }
    }

    /// A new variable set to the float `v`.
    fn start(&mut self, v: f64) -> u32 {
        let var = self.var();
        self.push(Stmt::Let {
            var,
            value: Expr::F(v),
        });
        var
    }

    /// Block-level reduction over the row: each thread folds a strided share of the
    /// elements, then the block combines.
    fn block_reduce(
        &mut self,
        prefix: &[Expr],
        tail: &[usize],
        op: (ReduceOp, DType),
        f: &mut dyn FnMut(&mut Self, &[Expr]) -> R<Expr>,
    ) -> R<Expr> {
        let strided = (builtin(Builtin::Thread), builtin(Builtin::BlockDim));
        let acc = self.fold(prefix, tail, op, strided, f)?;
        self.push(Stmt::Reduce {
            scope: Scope::Block,
            combiner: Combiner::Op(op.0),
            vars: vec![acc],
        });
        Ok(Expr::Var(acc))
    }

    /// Computes every row op's statistics for the row `prefix`, as block reductions.
    fn row_stats(&mut self, prefix: &[Expr], space: &[usize], axis: usize) -> R<()> {
        let tail = space[axis..].to_vec();
        let n = tail.iter().product::<usize>() as f64;
        for id in 0..self.body.nodes.len() {
            let node = self.node(id);
            let x = match node.inputs.first() {
                Some(&x) => x,
                None => continue,
            };
            match &node.op {
                Op::Reduce { kind, .. } => {
                    let kind = *kind;
                    let op = (reduce_op(kind), self.node(x).ty.dtype);
                    let acc = self.block_reduce(prefix, &tail, op, &mut |me, i| me.value(x, i))?;
                    let dtype = self.node(x).ty.dtype;
                    let v = self.bind(finish_reduce(kind, acc, n as usize, dtype));
                    self.stats.insert((id, "reduce"), v);
                }
                Op::Softmax { .. } | Op::LogSoftmax { .. } => {
                    let m = self.block_reduce(
                        prefix,
                        &tail,
                        (ReduceOp::Max, DType::F32),
                        &mut |me, i| me.value(x, i),
                    )?;
                    let s = self.block_reduce(
                        prefix,
                        &tail,
                        (ReduceOp::Sum, DType::F32),
                        &mut |me, i| {
                            let v = me.value(x, i)?;
                            Ok(exp_sub(v, m.clone()))
                        },
                    )?;
                    self.stats.insert((id, "max"), m);
                    self.stats.insert((id, "sum"), s);
                }
                Op::LayerNorm { epsilon, .. } => {
                    let eps = epsilon.0;
                    let sum = self.block_reduce(
                        prefix,
                        &tail,
                        (ReduceOp::Sum, DType::F32),
                        &mut |me, i| me.value(x, i),
                    )?;
                    let mean = self.bind(div_f(sum, n));
                    let sq = self.block_reduce(
                        prefix,
                        &tail,
                        (ReduceOp::Sum, DType::F32),
                        &mut |me, i| {
                            let v = me.value(x, i)?;
                            Ok(square(Expr::Binary(
                                crate::ir::BinaryOp::Sub,
                                Box::new(v),
                                Box::new(mean.clone()),
                            )))
                        },
                    )?;
                    let inv = self.bind(inv_std(div_f(sq, n), eps));
                    self.stats.insert((id, "mean"), mean);
                    self.stats.insert((id, "inv"), inv);
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// The row ops of a body (reductions and normalizations along trailing dims), in order.
fn row_ops(body: &Graph) -> Vec<NodeId> {
    (0..body.nodes.len())
        .filter(|&id| {
            let n = &body.nodes[id];
            let rank = n.inputs.first().map(|&a| body.nodes[a].ty.rank());
            rank.and_then(|r| single_row_axis(&n.op, r)).is_some()
        })
        .collect()
}

/// A row kernel's iteration space: the input shape of its first row op.
fn row_space(body: &Graph, ops: &[NodeId], name: &str) -> R<Vec<usize>> {
    let first = *ops.first().ok_or_else(|| LowerError::Unsupported {
        node: name.to_string(),
        op: "row kernel without a row op".into(),
    })?;
    Ok(body.nodes[body.nodes[first].inputs[0]].ty.shape.clone())
}

/// A CPU row kernel: each block a contiguous run of whole rows (one thread), statistics by
/// serial passes over the row, then the row's outputs. (GPU row kernels: [`rows`].)
fn lower_rows(
    body: &Graph,
    inputs: &[u32],
    out: u32,
    axis: usize,
    name: String,
    precision: Precision,
) -> R<Kernel> {
    let root = body.outputs[0].1;
    let ops = row_ops(body);
    let space = row_space(body, &ops, &name)?;
    let rows: usize = space[..axis].iter().product();
    let len: usize = space[axis..].iter().product();
    let out_shape = body.nodes[root].ty.shape.clone();
    let out_n = body.nodes[root].ty.numel();
    let mut e = emitter(body, inputs);
    let row = e.var();
    e.open();
    let prefix = unravel(&Expr::Var(row), &space[..axis]);
    // (Stored exp values are rounded to the output's dtype: only exact for f32 and f64.)
    let softmax_root = matches!(body.nodes[root].op, Op::Softmax { axis: a } if a == axis)
        && matches!(body.nodes[root].ty.dtype, DType::F32 | DType::F64)
        && axis + 1 == space.len()
        && out_shape == space
        && ops.len() == 1;
    if softmax_root {
        // Softmax is the kernel's one row op and its output: exp once per element. Pass 1
        // the max; pass 2 stores exp(x - max) and sums it; pass 3 divides in place.
        let x = body.nodes[root].inputs[0];
        let tail = [len];
        let m = e.block_reduce(&prefix, &tail, (ReduceOp::Max, DType::F32), &mut |me, i| {
            me.value(x, i)
        })?;
        let base = mul(Expr::Var(row), Expr::I(len as i64));
        let sum = e.block_reduce(&prefix, &tail, (ReduceOp::Sum, DType::F32), &mut |me, i| {
            let v = me.value(x, i)?;
            let ex = me.bind(exp_sub(v, m.clone()));
            me.push(Stmt::Store {
                buf: out,
                index: add(base.clone(), i[axis].clone()),
                value: ex.clone(),
            });
            Ok(ex)
        })?;
        let j = e.var();
        let at = add(base.clone(), Expr::Var(j));
        let body_j = vec![Stmt::Store {
            buf: out,
            index: at.clone(),
            value: Expr::Binary(
                crate::ir::BinaryOp::Div,
                Box::new(Expr::Load {
                    buf: out,
                    index: Box::new(at),
                }),
                Box::new(sum),
            ),
        }];
        e.push(Stmt::For {
            var: j,
            start: builtin(Builtin::Thread),
            end: Expr::I(len as i64),
            step: builtin(Builtin::BlockDim),
            uniform: false,
            body: body_j,
        });
    } else {
        e.row_stats(&prefix, &space, axis)?;
    }
    if softmax_root {
        // Written above.
    } else if out_n == rows * len
        && broadcast_shapes(&out_shape, &space).is_some_and(|b| b == space)
    {
        // One output per element of the row: the block's threads share the row.
        let j = e.var();
        e.open();
        let mut idx = prefix.clone();
        idx.extend(unravel(&Expr::Var(j), &space[axis..]));
        let v = e.value(root, &idx)?;
        e.push(Stmt::Store {
            buf: out,
            index: add(mul(Expr::Var(row), Expr::I(len as i64)), Expr::Var(j)),
            value: v,
        });
        let body_j = e.close();
        e.push(Stmt::For {
            var: j,
            start: builtin(Builtin::Thread),
            end: Expr::I(len as i64),
            step: builtin(Builtin::BlockDim),
            uniform: false,
            body: body_j,
        });
    } else if out_n == rows {
        // One output per row (a reduction): thread 0 writes it.
        e.open();
        let mut idx: Vec<Expr> = prefix.clone();
        idx.extend(std::iter::repeat_n(
            Expr::I(0),
            out_shape.len().saturating_sub(prefix.len()),
        ));
        idx.truncate(out_shape.len());
        let v = e.value(root, &idx)?;
        e.push(Stmt::Store {
            buf: out,
            index: Expr::Var(row),
            value: v,
        });
        let then = e.close();
        e.push(Stmt::If {
            cond: Expr::Index(
                IndexOp::Lt,
                Box::new(builtin(Builtin::Thread)),
                Box::new(Expr::I(1)),
            ),
            then,
        });
    } else {
        return Err(LowerError::Unsupported {
            node: name,
            op: format!("row kernel with output {out_shape:?} over rows of {space:?}"),
        });
    }
    let row_body = e.close();
    // Contiguous runs of whole rows, about CPU_CHUNK elements per block.
    let per = (CPU_CHUNK / len.max(1)).max(1);
    e.push(cpu::chunk_loop(row, rows, per, row_body));
    let launch = Launch {
        grid: rows.div_ceil(per).max(1),
        block: 1,
    };
    Ok(e.finish(name, launch, precision, inputs, out))
}
