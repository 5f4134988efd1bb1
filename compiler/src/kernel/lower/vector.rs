//! Vectorized GPU pointwise kernels: each thread computes `width` consecutive outputs (16
//! bytes of the output type) and stores them with one 128-bit access; every input that
//! those outputs read contiguously is loaded with one vector access, and inputs they read at
//! one position (broadcast along the last dim) with one scalar load.
//!
//! The body is emitted once per lane with the last index `q + L`, `L` a marker variable;
//! a load whose flat index is `base + L` with `base` provably a multiple of `width` becomes
//! a [`Stmt::LoadVec`] shared by the lanes; everything else keeps `L`, which is then
//! replaced by the lane number (so a transposed or gathered read is a correct scalar load).
//! Bodies with loops (reductions, convolutions, matrix products) are not vectorized.

use super::{
    add, builtin, emitter, mul, substitute, substitute_stmt, unravel, Emitter, Kernel, Launch,
    MAX_GRID, POINTWISE_BLOCK, R,
};
use crate::ir::{DType, Graph};
use crate::kernel::ir::{Builtin, Expr, IndexOp, Precision, Stmt};
use std::collections::HashMap;

/// The lanes being emitted.
pub(super) struct Lanes {
    /// The marker variable standing for the lane number.
    marker: u32,
    /// Lanes per thread.
    width: usize,
    /// The variable holding lane 0's flat output index (a multiple of `width`).
    base: u32,
    /// The lane being emitted.
    current: usize,
    /// Scope depth of a lane's statements: loads deeper than that (in loops or branches)
    /// stay scalar.
    depth: usize,
    /// Loads shared by the lanes: text of (buffer, index) → the lanes' variables.
    shared: HashMap<String, Vec<u32>>,
}

/// Lanes per thread for an output of `dtype`: 16 bytes, at most 8 elements. 8-byte types
/// (f64, i64) stay scalar: ptxas puts a pair of them in a stack frame.
fn width(dtype: DType) -> usize {
    match dtype.size() {
        8 => 1,
        s => (16 / s).min(8),
    }
}

/// How an index depends on the lane marker.
enum Lin {
    /// Not at all.
    Uniform,
    /// `base + L`.
    Linear(Expr),
    /// Some other way.
    Other,
}

fn mentions(e: &Expr, v: u32) -> bool {
    match e {
        Expr::Var(x) => *x == v,
        Expr::F(_) | Expr::I(_) | Expr::Builtin(_) => false,
        Expr::Load { index, .. } | Expr::Shared { index, .. } => mentions(index, v),
        Expr::Unary(_, a) | Expr::Cast(_, a) => mentions(a, v),
        Expr::Binary(_, a, b) | Expr::Combine(_, a, b) | Expr::Index(_, a, b) => {
            mentions(a, v) || mentions(b, v)
        }
        Expr::Select(c, a, b) => mentions(c, v) || mentions(a, v) || mentions(b, v),
    }
}

fn linear(e: &Expr, marker: u32) -> Lin {
    if !mentions(e, marker) {
        return Lin::Uniform;
    }
    match e {
        Expr::Var(_) => Lin::Linear(Expr::I(0)),
        Expr::Index(IndexOp::Add, a, b) => {
            let (with, without) = match (mentions(a, marker), mentions(b, marker)) {
                (true, false) => (a, b),
                (false, true) => (b, a),
                _ => return Lin::Other,
            };
            match linear(with, marker) {
                Lin::Linear(base) => Lin::Linear(add(base, (**without).clone())),
                _ => Lin::Other,
            }
        }
        _ => Lin::Other,
    }
}

/// True when `e` is a multiple of `w` for every value of the variables (`base` is one).
fn multiple_of(e: &Expr, w: i64, base: u32) -> bool {
    match e {
        Expr::I(c) => c % w == 0,
        Expr::Var(v) => *v == base,
        Expr::Index(IndexOp::Add | IndexOp::Sub, a, b) => {
            multiple_of(a, w, base) && multiple_of(b, w, base)
        }
        Expr::Index(IndexOp::Mul, a, b) => multiple_of(a, w, base) || multiple_of(b, w, base),
        Expr::Index(IndexOp::Rem, a, n) => {
            matches!(**n, Expr::I(n) if n % w == 0) && multiple_of(a, w, base)
        }
        _ => false,
    }
}

impl Emitter<'_> {
    /// The lanes' shared load of `buf[index]`, when lanes are being emitted and it is one:
    /// a vector load for `base + L` with `base` aligned, a scalar load for an index without
    /// `L`. Emitted in the first lane that reads it, at lane scope.
    pub(super) fn lane_load(&mut self, buf: u32, index: &Expr) -> Option<Expr> {
        let depth = self.blocks.len();
        let lanes = self.lanes.as_ref()?;
        if depth != lanes.depth {
            return None;
        }
        let (key, index, n) = match linear(index, lanes.marker) {
            Lin::Uniform => (format!("b{buf}[{index}]"), index.clone(), 1),
            Lin::Linear(base) if multiple_of(&base, lanes.width as i64, lanes.base) => (
                format!("b{buf}[{base} +: {}]", lanes.width),
                base,
                lanes.width,
            ),
            _ => return None,
        };
        let current = lanes.current;
        if let Some(vars) = lanes.shared.get(&key) {
            return Some(Expr::Var(vars[current.min(vars.len() - 1)]));
        }
        let vars: Vec<u32> = (0..n).map(|_| self.var()).collect();
        if n == 1 {
            self.push(Stmt::Let {
                var: vars[0],
                value: Expr::Load {
                    buf,
                    index: Box::new(index),
                },
            });
        } else {
            self.push(Stmt::LoadVec {
                vars: vars.clone(),
                buf,
                index,
            });
        }
        let v = vars[current.min(n - 1)];
        self.lanes.as_mut().expect("lanes").shared.insert(key, vars);
        Some(Expr::Var(v))
    }
}

/// The vectorized grid-stride loop over the output, when the output's last dim is a
/// multiple of the lane count (else `None`: the scalar loop).
pub(super) fn lower_pointwise_vector(
    body: &Graph,
    inputs: &[u32],
    out: u32,
    name: &str,
    precision: Precision,
) -> R<Option<Kernel>> {
    let root = body.outputs[0].1;
    let ty = &body.nodes[root].ty;
    let (shape, n, w) = (ty.shape.clone(), ty.numel(), width(ty.dtype));
    match shape.last() {
        Some(&last) if w > 1 && last % w == 0 && n > 0 => {}
        _ => return Ok(None),
    }
    // A concatenation of computed parts evaluates every part per output (at a clamped
    // position); per lane that is `width` times the registers (ptxas spilled a rotary
    // embedding's at sm_80): such kernels keep one output per thread.
    let computed_concat = body.nodes.iter().any(|x| {
        matches!(x.op, crate::ir::Op::Concat { .. })
            && x.inputs.iter().any(|&i| {
                !body.inputs.contains(&i) && !matches!(body.nodes[i].op, crate::ir::Op::Constant(_))
            })
    });
    if computed_concat {
        return Ok(None);
    }
    let mut e = emitter(body, inputs);
    let base = e.var();
    let marker = e.var();
    e.open();
    let mut idx = unravel(&Expr::Var(base), &shape);
    let last = idx.len() - 1;
    idx[last] = add(idx[last].clone(), Expr::Var(marker));
    e.lanes = Some(Lanes {
        marker,
        width: w,
        base,
        current: 0,
        depth: e.blocks.len() + 1,
        shared: HashMap::new(),
    });
    let mut values = Vec::with_capacity(w);
    for lane in 0..w {
        e.lanes.as_mut().expect("lanes").current = lane;
        e.open();
        let v = e.value(root, &idx)?;
        let v = match v {
            Expr::Var(_) | Expr::F(_) | Expr::I(_) => v,
            v => {
                let o = e.var();
                e.push(Stmt::Let { var: o, value: v });
                Expr::Var(o)
            }
        };
        let stmts = e.close();
        if Stmt::any(&stmts, &|s| matches!(s, Stmt::For { .. })) {
            // Loops in the body (reductions, convolutions, products) would be repeated per
            // lane: such kernels keep one output per thread.
            return Ok(None);
        }
        for s in stmts {
            let lane = Expr::I(lane as i64);
            e.push(substitute_stmt(s, &|x| (x == marker).then(|| lane.clone())));
        }
        values.push(substitute(v, &|x| {
            (x == marker).then_some(Expr::I(lane as i64))
        }));
    }
    e.lanes = None;
    e.push(Stmt::StoreVec {
        buf: out,
        index: Expr::Var(base),
        values,
    });
    let loop_body = e.close();
    let threads = n / w;
    let start = mul(
        add(
            mul(builtin(Builtin::Block), builtin(Builtin::BlockDim)),
            builtin(Builtin::Thread),
        ),
        Expr::I(w as i64),
    );
    let step = mul(
        mul(builtin(Builtin::GridDim), builtin(Builtin::BlockDim)),
        Expr::I(w as i64),
    );
    e.push(Stmt::For {
        var: base,
        start,
        end: Expr::I(n as i64),
        step,
        uniform: false,
        body: loop_body,
    });
    let launch = Launch {
        grid: threads.div_ceil(POINTWISE_BLOCK).clamp(1, MAX_GRID),
        block: POINTWISE_BLOCK,
    };
    Ok(Some(e.finish(name, launch, precision, inputs, out)))
}
