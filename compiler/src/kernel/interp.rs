//! The kernel-IR interpreter: runs a lowered program on the CPU exactly as written — every
//! block and thread, their index arithmetic, loops, and the block reductions as the same
//! warp-shuffle tree the GPU runs — so lowering bugs are caught without a GPU.

use super::ir::{
    BlasActivation, BlasGemm, BlasMatrix, Builtin, Combiner, Expr, FragRole, Gemm, IndexOp, Kernel,
    MatrixView, Precision, Program, ReduceOp, Scope, SharedArray, Stmt,
};
use crate::error::{Error, Result};
use crate::interp::math::{binary_f, binary_i, unary_f};
use crate::ir::{DType, Tensor, UnaryOp};
use std::collections::HashMap;

/// A value: float (rounded to the kernel's precision) or integer. Bools are floats 0/1.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Val {
    F(f64),
    I(i64),
}

impl Val {
    fn f(self) -> f64 {
        match self {
            Val::F(x) => x,
            Val::I(i) => i as f64,
        }
    }
    fn i(self) -> i64 {
        match self {
            Val::I(i) => i,
            Val::F(x) => x as i64,
        }
    }
}

/// A block's shared memory, with the accesses since the last barrier: an access to an
/// element that another thread wrote since then, or a write to one another thread read since
/// then, is a race (the GPU does not order them).
struct SharedMem {
    arrays: Vec<Vec<f64>>,
    /// Per element: (barrier interval, thread) of the last write (interval 0: never).
    written: Vec<Vec<(u64, i64)>>,
    /// Per element: (barrier interval, thread) of the last read (thread -1: several).
    read: Vec<Vec<(u64, i64)>>,
    interval: u64,
}

impl SharedMem {
    fn new(arrays: &[SharedArray]) -> Self {
        SharedMem {
            arrays: arrays.iter().map(|a| vec![f64::NAN; a.len]).collect(),
            written: arrays.iter().map(|a| vec![(0, 0); a.len]).collect(),
            read: arrays.iter().map(|a| vec![(0, 0); a.len]).collect(),
            interval: 1,
        }
    }

    fn slot(&self, a: u32, i: i64) -> std::result::Result<(usize, usize), String> {
        let arr = self
            .arrays
            .get(a as usize)
            .ok_or_else(|| format!("no shared array s{a}"))?;
        let i = usize::try_from(i)
            .ok()
            .filter(|&i| i < arr.len())
            .ok_or_else(|| format!("s{a}[{i}] out of bounds (len {})", arr.len()))?;
        Ok((a as usize, i))
    }

    fn load(&mut self, a: u32, i: i64, t: i64) -> std::result::Result<f64, String> {
        let (a, i) = self.slot(a, i)?;
        let (wi, wt) = self.written[a][i];
        if wi == 0 {
            return Err(format!(
                "thread {t} reads s{a}[{i}] before any thread writes it"
            ));
        }
        if wi == self.interval && wt != t {
            return Err(format!(
                "thread {t} reads s{a}[{i}], written by thread {wt} with no barrier between"
            ));
        }
        let (ri, rt) = self.read[a][i];
        self.read[a][i] = if ri == self.interval && rt != t {
            (ri, -1)
        } else {
            (self.interval, t)
        };
        Ok(self.arrays[a][i])
    }

    fn store(&mut self, a: u32, i: i64, t: i64, v: f64) -> std::result::Result<(), String> {
        let (a, i) = self.slot(a, i)?;
        let (wi, wt) = self.written[a][i];
        let (ri, rt) = self.read[a][i];
        if (wi == self.interval && wt != t) || (ri == self.interval && rt != t) {
            return Err(format!(
                "thread {t} writes s{a}[{i}], which another thread accessed with no barrier between"
            ));
        }
        self.written[a][i] = (self.interval, t);
        self.arrays[a][i] = v;
        Ok(())
    }
}

struct Ctx<'a> {
    shared: std::cell::RefCell<SharedMem>,
    /// Per warp, per fragment: its 16×16 values (row-major; empty until set).
    frags: Vec<Vec<Vec<f64>>>,
    buffers: &'a mut [Vec<f64>],
    dtypes: &'a [DType],
    precision: Precision,
    block: i64,
    grid: i64,
    block_dim: i64,
}

fn round(p: Precision, x: f64) -> f64 {
    match p {
        Precision::F32 => x as f32 as f64,
        Precision::F64 => x,
    }
}

/// Rounds a value as storing it in `dtype` would.
fn to_dtype(d: DType, x: f64) -> f64 {
    Tensor::from_f64(d, vec![], &[x]).to_f64()[0]
}

/// A thread's variables, by number.
type Env = Vec<Option<Val>>;

fn err(k: &Kernel, msg: String) -> Error {
    Error::Node {
        node: k.name.clone(),
        op: "kernel".into(),
        message: msg,
    }
}

fn eval(e: &Expr, env: &Env, t: i64, cx: &Ctx, k: &Kernel) -> Result<Val> {
    let p = cx.precision;
    Ok(match e {
        Expr::F(x) => Val::F(round(p, *x)),
        Expr::I(i) => Val::I(*i),
        Expr::Var(v) => env
            .get(*v as usize)
            .copied()
            .flatten()
            .ok_or_else(|| err(k, format!("v{v} read before it is set")))?,
        Expr::Builtin(b) => Val::I(match b {
            Builtin::Block => cx.block,
            Builtin::Thread => t,
            Builtin::BlockDim => cx.block_dim,
            Builtin::GridDim => cx.grid,
        }),
        Expr::Load { buf, index } => {
            let i = eval(index, env, t, cx, k)?.i();
            load(cx, *buf, i, k)?
        }
        Expr::Shared { array, index } => {
            let i = eval(index, env, t, cx, k)?.i();
            let x = cx
                .shared
                .borrow_mut()
                .load(*array, i, t)
                .map_err(|m| err(k, m))?;
            Val::F(x)
        }
        Expr::Unary(u, a) => match eval(a, env, t, cx, k)? {
            Val::F(x) => Val::F(round(p, unary_f(*u, x))),
            Val::I(i) => Val::I(match u {
                crate::ir::UnaryOp::Neg => i.wrapping_neg(),
                crate::ir::UnaryOp::Abs => i.wrapping_abs(),
                crate::ir::UnaryOp::Sign => i.signum(),
                crate::ir::UnaryOp::Relu => i.max(0),
                crate::ir::UnaryOp::Not => (i == 0) as i64,
                _ => return Ok(Val::F(round(p, unary_f(*u, i as f64)))),
            }),
        },
        Expr::Binary(b, x, y) => match (eval(x, env, t, cx, k)?, eval(y, env, t, cx, k)?) {
            (Val::I(a), Val::I(c)) => {
                Val::I(binary_i(*b, a, c, DType::I64).map_err(|m| err(k, m))?)
            }
            (a, c) => Val::F(round(p, binary_f(*b, a.f(), c.f()))),
        },
        Expr::Select(c, a, b) => {
            if eval(c, env, t, cx, k)?.f() != 0.0 {
                eval(a, env, t, cx, k)?
            } else {
                eval(b, env, t, cx, k)?
            }
        }
        Expr::Cast(d, a) => {
            let v = eval(a, env, t, cx, k)?;
            if d.is_int() {
                Val::I(Tensor::from_f64(*d, vec![], &[v.f()]).to_i64()[0])
            } else {
                Val::F(to_dtype(*d, v.f()))
            }
        }
        Expr::Combine(op, a, b) => match (eval(a, env, t, cx, k)?, eval(b, env, t, cx, k)?) {
            (Val::I(x), Val::I(y)) => Val::I(combine_int(*op, x, y)),
            (x, y) => Val::F(round(p, combine(*op, x.f(), y.f()))),
        },
        Expr::Index(op, a, b) => {
            let (x, y) = (eval(a, env, t, cx, k)?.i(), eval(b, env, t, cx, k)?.i());
            Val::I(match op {
                IndexOp::Add => x.wrapping_add(y),
                IndexOp::Sub => x.wrapping_sub(y),
                IndexOp::Mul => x.wrapping_mul(y),
                IndexOp::Div | IndexOp::Rem if y == 0 => {
                    return Err(err(k, "index division by zero".into()))
                }
                IndexOp::Div => x / y,
                IndexOp::Rem => x % y,
                IndexOp::Lt => (x < y) as i64,
                IndexOp::Ge => (x >= y) as i64,
                IndexOp::Eq => (x == y) as i64,
                IndexOp::And => (x != 0 && y != 0) as i64,
                IndexOp::Min => x.min(y),
                IndexOp::Check(site) => {
                    let j = if x < 0 { x.wrapping_add(y) } else { x };
                    if !(0..y).contains(&j) {
                        return Err(match k.checks.get(*site as usize) {
                            Some(c) => c.error(x),
                            None => err(k, format!("index check {site} has no site")),
                        });
                    }
                    j
                }
            })
        }
    })
}

/// Element `i` of buffer `buf`, converted to the compute type.
fn load(cx: &Ctx, buf: u32, i: i64, k: &Kernel) -> Result<Val> {
    let b = &cx.buffers[buf as usize];
    let x = *usize::try_from(i)
        .ok()
        .and_then(|i| b.get(i))
        .ok_or_else(|| {
            err(
                k,
                format!("load b{buf}[{i}] out of bounds (len {})", b.len()),
            )
        })?;
    Ok(if cx.dtypes[buf as usize].is_int() {
        Val::I(x as i64)
    } else {
        Val::F(round(cx.precision, x))
    })
}

/// Stores `v` into element `i` of buffer `buf`, rounded to its dtype.
fn store(cx: &mut Ctx, buf: u32, i: i64, v: Val, k: &Kernel) -> Result<()> {
    let d = cx.dtypes[buf as usize];
    let b = &mut cx.buffers[buf as usize];
    let len = b.len();
    let slot = usize::try_from(i)
        .ok()
        .and_then(|i| b.get_mut(i))
        .ok_or_else(|| err(k, format!("store b{buf}[{i}] out of bounds (len {len})")))?;
    *slot = to_dtype(d, v.f());
    Ok(())
}

/// The first element of a vector access of `lanes` elements, checked to be aligned.
fn vector_start(
    index: &Expr,
    lanes: usize,
    env: &Env,
    t: i64,
    cx: &Ctx,
    k: &Kernel,
) -> Result<i64> {
    let i = eval(index, env, t, cx, k)?.i();
    if lanes == 0 || i.rem_euclid(lanes as i64) != 0 {
        return Err(err(
            k,
            format!("vector access of {lanes} elements at {i} is misaligned"),
        ));
    }
    Ok(i)
}

/// An integer reduction step (wrapping, as the C and CUDA arithmetic).
fn combine_int(op: ReduceOp, x: i64, y: i64) -> i64 {
    match op {
        ReduceOp::Sum => x.wrapping_add(y),
        ReduceOp::Prod => x.wrapping_mul(y),
        ReduceOp::Max => x.max(y),
        ReduceOp::Min => x.min(y),
    }
}

fn combine(op: ReduceOp, x: f64, y: f64) -> f64 {
    match op {
        ReduceOp::Sum => x + y,
        ReduceOp::Prod => x * y,
        ReduceOp::Max => {
            if x.is_nan() || y.is_nan() {
                f64::NAN
            } else {
                x.max(y)
            }
        }
        ReduceOp::Min => {
            if x.is_nan() || y.is_nan() {
                f64::NAN
            } else {
                x.min(y)
            }
        }
    }
}

/// Runs one thread through statements that contain no collective.
fn exec_thread(stmts: &[Stmt], env: &mut Env, t: i64, cx: &mut Ctx, k: &Kernel) -> Result<()> {
    for s in stmts {
        match s {
            Stmt::Let { var, value } => {
                let v = eval(value, env, t, cx, k)?;
                env[*var as usize] = Some(v);
            }
            Stmt::Store { buf, index, value } => {
                let i = eval(index, env, t, cx, k)?.i();
                let v = eval(value, env, t, cx, k)?;
                store(cx, *buf, i, v, k)?;
            }
            Stmt::SharedStore {
                array,
                index,
                value,
            } => {
                let i = eval(index, env, t, cx, k)?.i();
                let d = k
                    .shared
                    .get(*array as usize)
                    .ok_or_else(|| err(k, format!("no shared array s{array}")))?
                    .dtype;
                let v = to_dtype(d, eval(value, env, t, cx, k)?.f());
                cx.shared
                    .borrow_mut()
                    .store(*array, i, t, v)
                    .map_err(|m| err(k, m))?;
            }
            Stmt::LoadVec { vars, buf, index } => {
                let i = vector_start(index, vars.len(), env, t, cx, k)?;
                for (l, var) in vars.iter().enumerate() {
                    env[*var as usize] = Some(load(cx, *buf, i + l as i64, k)?);
                }
            }
            Stmt::StoreVec { buf, index, values } => {
                let i = vector_start(index, values.len(), env, t, cx, k)?;
                let vs: Vec<Val> = values
                    .iter()
                    .map(|v| eval(v, env, t, cx, k))
                    .collect::<Result<_>>()?;
                for (l, v) in vs.into_iter().enumerate() {
                    store(cx, *buf, i + l as i64, v, k)?;
                }
            }
            Stmt::For {
                var,
                start,
                end,
                step,
                body,
                ..
            } => {
                let (mut i, e, st) = (
                    eval(start, env, t, cx, k)?.i(),
                    eval(end, env, t, cx, k)?.i(),
                    eval(step, env, t, cx, k)?.i(),
                );
                if st <= 0 {
                    return Err(err(k, format!("loop step {st}")));
                }
                while i < e {
                    env[*var as usize] = Some(Val::I(i));
                    exec_thread(body, env, t, cx, k)?;
                    i += st;
                }
            }
            Stmt::If { cond, then } => {
                if eval(cond, env, t, cx, k)?.f() != 0.0 {
                    exec_thread(then, env, t, cx, k)?;
                }
            }
            Stmt::Gemm(g) => gemm(g, cx, k)?,
            Stmt::Reduce { .. }
            | Stmt::Barrier
            | Stmt::FragFill { .. }
            | Stmt::FragLoad { .. }
            | Stmt::FragMma { .. }
            | Stmt::FragStore { .. } => unreachable!("collectives run in lockstep"),
        }
    }
    Ok(())
}

/// A library matrix product: sums in f64, each result rounded to its buffer's dtype.
fn gemm(g: &Gemm, cx: &mut Ctx, k: &Kernel) -> Result<()> {
    let batches: usize = g.batch.iter().product();
    let at = |v: &MatrixView, b: usize, r: usize, c: usize| -> i64 {
        let mut off = v.offset;
        let mut rest = b;
        for (d, &n) in g.batch.iter().enumerate().rev() {
            off += (rest % n) as i64 * v.batch_strides[d];
            rest /= n;
        }
        off + r as i64 * v.row_stride + c as i64 * v.col_stride
    };
    let get = |cx: &Ctx, v: &MatrixView, i: i64| -> Result<f64> {
        usize::try_from(i)
            .ok()
            .and_then(|i| cx.buffers[v.buf as usize].get(i).copied())
            .ok_or_else(|| err(k, format!("gemm reads b{}[{i}] out of bounds", v.buf)))
    };
    let d = cx.dtypes[g.c.buf as usize];
    for b in 0..batches {
        for r in 0..g.m {
            for c in 0..g.n {
                let mut acc = 0.0;
                for j in 0..g.k {
                    let bi = match g.b_panels {
                        Some(w) => ((c / w) * g.k * w + j * w + c % w) as i64,
                        None => at(&g.b, b, j, c),
                    };
                    acc += get(cx, &g.a, at(&g.a, b, r, j))? * get(cx, &g.b, bi)?;
                }
                let i = at(&g.c, b, r, c);
                let out = &mut cx.buffers[g.c.buf as usize];
                let len = out.len();
                *usize::try_from(i)
                    .ok()
                    .and_then(|i| out.get_mut(i))
                    .ok_or_else(|| err(k, format!("gemm writes b{}[{i}] of {len}", g.c.buf)))? =
                    to_dtype(d, acc);
            }
        }
    }
    Ok(())
}

/// Runs a [`BlasGemm`] as cuBLASLt defines it (column-major operands, the epilogue, one
/// rounding to the result's type).
fn blas_gemm(g: &BlasGemm, buffers: &mut [Vec<f64>], dtypes: &[DType], k: &Kernel) -> Result<()> {
    let at = |x: &BlasMatrix, t: usize, r: usize, c: usize| {
        let (r, c) = if x.trans { (c, r) } else { (r, c) };
        x.offset + t * x.batch_stride + r + c * x.ld
    };
    let get = |buffers: &[Vec<f64>], buf: u32, i: usize| -> Result<f64> {
        buffers[buf as usize]
            .get(i)
            .copied()
            .ok_or_else(|| err(k, format!("cublasLt reads b{buf}[{i}] out of bounds")))
    };
    let d = dtypes[g.d.buf as usize];
    for t in 0..g.batch {
        for j in 0..g.n {
            for i in 0..g.m {
                let mut acc = 0.0;
                for p in 0..g.k {
                    acc += get(buffers, g.a.buf, at(&g.a, t, i, p))?
                        * get(buffers, g.b.buf, at(&g.b, t, p, j))?;
                }
                let mut x = g.alpha * acc;
                if let Some(b) = g.bias {
                    x += get(buffers, b, i)?;
                }
                let o = at(&g.d, t, i, j);
                if let Some(r) = g.residual {
                    x += get(buffers, r, o)?;
                }
                x = match g.activation {
                    Some(BlasActivation::Relu) => unary_f(UnaryOp::Relu, x),
                    Some(BlasActivation::GeluTanh) => unary_f(UnaryOp::GeluTanh, x),
                    None => x,
                };
                let out = &mut buffers[g.d.buf as usize];
                let len = out.len();
                *out.get_mut(o).ok_or_else(|| {
                    err(k, format!("cublasLt writes b{}[{o}] of {len}", g.d.buf))
                })? = to_dtype(d, x);
            }
        }
    }
    Ok(())
}

/// Runs every thread of a block through statements, in lockstep at collectives.
fn exec_block(stmts: &[Stmt], envs: &mut [Env], cx: &mut Ctx, k: &Kernel) -> Result<()> {
    for s in stmts {
        match s {
            Stmt::Reduce {
                scope,
                combiner,
                vars,
            } => {
                reduce(envs, *scope, *combiner, vars, cx.precision, k)?;
                if *scope == Scope::Block {
                    cx.shared.get_mut().interval += 1;
                }
            }
            Stmt::Barrier => cx.shared.get_mut().interval += 1,
            Stmt::FragFill { .. }
            | Stmt::FragLoad { .. }
            | Stmt::FragMma { .. }
            | Stmt::FragStore { .. } => {
                for (w, lanes) in envs.chunks(32).enumerate() {
                    warp_matrix(s, w, lanes, cx, k)?;
                }
            }
            Stmt::For {
                var,
                start,
                end,
                step,
                uniform,
                body,
            } if Stmt::has_collective(body) => {
                if !uniform {
                    return Err(err(
                        k,
                        "a collective inside a loop whose bounds vary by thread".into(),
                    ));
                }
                let b = |e: &Expr, envs: &[Env], cx: &Ctx| -> Result<Vec<i64>> {
                    envs.iter()
                        .enumerate()
                        .map(|(t, env)| Ok(eval(e, env, t as i64, cx, k)?.i()))
                        .collect()
                };
                let (s0, e0, st0) = (b(start, envs, cx)?, b(end, envs, cx)?, b(step, envs, cx)?);
                let same = |v: &[i64]| v.windows(2).all(|w| w[0] == w[1]);
                if !(same(&s0) && same(&e0) && same(&st0)) || st0[0] <= 0 {
                    return Err(err(
                        k,
                        "a loop marked uniform has bounds that vary by thread".into(),
                    ));
                }
                let mut i = s0[0];
                while i < e0[0] {
                    for env in envs.iter_mut() {
                        env[*var as usize] = Some(Val::I(i));
                    }
                    exec_block(body, envs, cx, k)?;
                    i += st0[0];
                }
            }
            Stmt::If { then, .. } if Stmt::has_collective(then) => {
                return Err(err(k, "a collective inside a conditional".into()));
            }
            other => {
                for (t, env) in envs.iter_mut().enumerate() {
                    exec_thread(std::slice::from_ref(other), env, t as i64, cx, k)?;
                }
            }
        }
    }
    Ok(())
}

/// One tensor-core fragment operation of warp `w` (whose lanes' variables are `lanes`): the
/// operands' shared offsets must agree across the lanes and be aligned as `wmma` requires.
fn warp_matrix(s: &Stmt, w: usize, lanes: &[Env], cx: &mut Ctx, k: &Kernel) -> Result<()> {
    let t0 = (w * 32) as i64;
    // The warp's lanes together access shared memory: an accessor distinct from every
    // single thread (a lane's own access to the same elements needs a barrier between).
    let who = -2 - w as i64;
    let frag = |f: u32| {
        k.frags
            .get(f as usize)
            .copied()
            .ok_or_else(|| err(k, format!("no fragment f{f}")))
    };
    // The 16×16 elements of a fragment access at `offset` with row stride `ld`.
    let place = |cx: &Ctx, array: u32, offset: &Expr, ld: usize| -> Result<(i64, usize)> {
        let offs: Vec<i64> = lanes
            .iter()
            .enumerate()
            .map(|(l, env)| Ok(eval(offset, env, t0 + l as i64, cx, k)?.i()))
            .collect::<Result<_>>()?;
        if offs.windows(2).any(|p| p[0] != p[1]) {
            return Err(err(
                k,
                "a fragment offset that differs across the warp".into(),
            ));
        }
        let a = k
            .shared
            .get(array as usize)
            .ok_or_else(|| err(k, format!("no shared array s{array}")))?;
        let size = a.dtype.size() as i64;
        if lanes.len() != 32 || (offs[0] * size) % 32 != 0 || (ld as i64 * size) % 16 != 0 {
            return Err(err(
                k,
                format!("misaligned fragment access s{array}[{} ld {ld}]", offs[0]),
            ));
        }
        Ok((offs[0], ld))
    };
    let warp = &mut cx.frags[w];
    match s {
        Stmt::FragFill { frag: f, value } => {
            frag(*f)?;
            warp[*f as usize] = vec![*value; 256];
        }
        Stmt::FragLoad {
            frag: f,
            array,
            offset,
            ld,
        } => {
            frag(*f)?;
            let (o, ld) = place(cx, *array, offset, *ld)?;
            let mut m = vec![0.0; 256];
            for (e, v) in m.iter_mut().enumerate() {
                let i = o + ((e / 16) * ld + e % 16) as i64;
                *v = cx
                    .shared
                    .borrow_mut()
                    .load(*array, i, who)
                    .map_err(|m| err(k, m))?;
            }
            cx.frags[w][*f as usize] = m;
        }
        Stmt::FragMma { acc, a, b } => {
            let roles = (frag(*acc)?.role, frag(*a)?.role, frag(*b)?.role);
            if roles != (FragRole::Acc, FragRole::A, FragRole::B) {
                return Err(err(k, format!("fragment roles {roles:?} in a product")));
            }
            let (fa, fb) = (warp[*a as usize].clone(), warp[*b as usize].clone());
            let c = &mut warp[*acc as usize];
            if fa.len() != 256 || fb.len() != 256 || c.len() != 256 {
                return Err(err(k, "a product of unset fragments".into()));
            }
            for i in 0..16 {
                for j in 0..16 {
                    let dot: f64 = (0..16).map(|x| fa[i * 16 + x] * fb[x * 16 + j]).sum();
                    c[i * 16 + j] = (c[i * 16 + j] + dot) as f32 as f64;
                }
            }
        }
        Stmt::FragStore {
            array,
            offset,
            ld,
            frag: f,
        } => {
            frag(*f)?;
            let m = warp[*f as usize].clone();
            if m.len() != 256 {
                return Err(err(k, format!("f{f} stored before it is set")));
            }
            let (o, ld) = place(cx, *array, offset, *ld)?;
            let d = k.shared[*array as usize].dtype;
            for (e, v) in m.iter().enumerate() {
                let i = o + ((e / 16) * ld + e % 16) as i64;
                cx.shared
                    .borrow_mut()
                    .store(*array, i, who, to_dtype(d, *v))
                    .map_err(|m| err(k, m))?;
            }
        }
        _ => unreachable!("fragment operations"),
    }
    Ok(())
}

/// Merges two partial results of a combiner, rounding every operation to the kernel's
/// precision as the GPU's `smelt/reduce.cuh` does.
fn merge(c: Combiner, p: Precision, a: &[f64], b: &[f64]) -> Vec<f64> {
    let r = |x: f64| round(p, x);
    match c {
        Combiner::Op(op) => vec![r(combine(op, a[0], b[0]))],
        Combiner::MaxSum => {
            let m = combine(ReduceOp::Max, a[0], b[0]);
            let base = if m == f64::NEG_INFINITY { 0.0 } else { m };
            let sa = r(a[1] * r(r(a[0] - base).exp()));
            let sb = r(b[1] * r(r(b[0] - base).exp()));
            vec![m, r(sa + sb)]
        }
        Combiner::Welford => {
            let n = r(a[0] + b[0]);
            if n == 0.0 {
                return a.to_vec();
            }
            let d = r(b[1] - a[1]);
            let fb = r(b[0] / n);
            let mean = r(a[1] + r(d * fb));
            let m2 = r(r(a[2] + b[2]) + r(r(r(d * d) * a[0]) * fb));
            vec![n, mean, m2]
        }
    }
}

/// The identity partial of a combiner.
fn identity(c: Combiner) -> Vec<f64> {
    match c {
        Combiner::Op(op) => vec![op.identity()],
        Combiner::MaxSum => vec![f64::NEG_INFINITY, 0.0],
        Combiner::Welford => vec![0.0; 3],
    }
}

/// The GPU's reduction trees over the block's values `v` (one per thread). A warp scope of
/// width `w`: a butterfly over each group of `w` lanes (offsets w/2, …, 1). The block scope:
/// a butterfly over each warp's 32 lanes, warp results through shared memory, and a
/// butterfly over those in every warp. With `broadcast`, each group ends with its lane 0's
/// result everywhere (as `reduce.cuh` does after merges that are not symmetric).
fn tree<T: Clone>(
    v: &mut [T],
    scope: Scope,
    identity: &T,
    merge: &dyn Fn(&T, &T) -> T,
    broadcast: bool,
) -> std::result::Result<(), String> {
    let butterfly = |v: &mut [T], width: usize| {
        for group in v.chunks_mut(width) {
            let mut offset = width / 2;
            while offset > 0 {
                let prev = group.to_vec();
                for lane in 0..group.len() {
                    let other = prev.get(lane ^ offset).unwrap_or(identity);
                    group[lane] = merge(&prev[lane], other);
                }
                offset >>= 1;
            }
            if broadcast {
                let first = group[0].clone();
                for lane in group.iter_mut() {
                    lane.clone_from(&first);
                }
            }
        }
    };
    match scope {
        Scope::Warp(w) => {
            if !(w.is_power_of_two() && w <= 32 && v.len().is_multiple_of(w)) {
                return Err(format!(
                    "warp reduction over {w} lanes in a block of {}",
                    v.len()
                ));
            }
            butterfly(v, w);
        }
        Scope::Block => {
            butterfly(v, 32);
            let warps = v.len().div_ceil(32);
            let shared: Vec<T> = (0..warps).map(|w| v[w * 32].clone()).collect();
            for (t, x) in v.iter_mut().enumerate() {
                *x = shared.get(t % 32).unwrap_or(identity).clone();
            }
            butterfly(v, 32);
        }
    }
    Ok(())
}

/// A [`Stmt::Reduce`]: the block's threads combine the partials in `vars` by [`tree`];
/// integer values (one-value combiners only) exactly, floats rounded as the kernel computes.
fn reduce(
    envs: &mut [Env],
    scope: Scope,
    c: Combiner,
    vars: &[u32],
    p: Precision,
    k: &Kernel,
) -> Result<()> {
    if vars.len() != c.arity() {
        return Err(err(k, format!("{c:?} reduces {} variables", c.arity())));
    }
    if let Combiner::Op(op) = c {
        let ints: Option<Vec<i64>> = envs
            .iter()
            .map(|e| match e.get(vars[0] as usize).copied().flatten() {
                Some(Val::I(i)) => Some(i),
                _ => None,
            })
            .collect();
        if let Some(mut v) = ints {
            let merge = |a: &i64, b: &i64| combine_int(op, *a, *b);
            tree(&mut v, scope, &op.identity_int(), &merge, false).map_err(|m| err(k, m))?;
            for (env, x) in envs.iter_mut().zip(v) {
                env[vars[0] as usize] = Some(Val::I(x));
            }
            return Ok(());
        }
    }
    let mut v: Vec<Vec<f64>> = envs
        .iter()
        .map(|e| {
            vars.iter()
                .map(|&var| {
                    e.get(var as usize)
                        .copied()
                        .flatten()
                        .map(|x| x.f())
                        .ok_or_else(|| err(k, format!("v{var} reduced before it is set")))
                })
                .collect()
        })
        .collect::<Result<_>>()?;
    let merge = |a: &Vec<f64>, b: &Vec<f64>| merge(c, p, a, b);
    let symmetric = matches!(c, Combiner::Op(_));
    tree(&mut v, scope, &identity(c), &merge, !symmetric).map_err(|m| err(k, m))?;
    for (env, x) in envs.iter_mut().zip(v) {
        for (&var, x) in vars.iter().zip(x) {
            env[var as usize] = Some(Val::F(x));
        }
    }
    Ok(())
}

/// How [`run_with`] computes a kernel that has a library form ([`Kernel::blas`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Products {
    /// Runs the kernel as written.
    Kernels,
    /// Makes the library call instead, as a runtime with cuBLASLt does.
    Library,
}

/// Runs a lowered program on named inputs; returns the outputs in order.
pub fn run(p: &Program, inputs: &HashMap<String, Tensor>) -> Result<Vec<(String, Tensor)>> {
    run_with(p, inputs, Products::Kernels)
}

/// [`run`], with the kernels that have a library form computed the way `products` says.
pub fn run_with(
    p: &Program,
    inputs: &HashMap<String, Tensor>,
    products: Products,
) -> Result<Vec<(String, Tensor)>> {
    let dtypes: Vec<DType> = p.buffers.iter().map(|b| b.dtype).collect();
    let mut buffers: Vec<Vec<f64>> = p.buffers.iter().map(|b| vec![f64::NAN; b.len]).collect();
    for (b, t) in &p.constants {
        buffers[*b as usize] = t.to_f64();
    }
    for (name, b) in &p.inputs {
        let t = inputs.get(name).ok_or_else(|| Error::Input {
            name: name.clone(),
            message: "missing".into(),
        })?;
        let decl = &p.buffers[*b as usize];
        if t.dtype() != decl.dtype || t.numel() != decl.len {
            return Err(Error::Input {
                name: name.clone(),
                message: format!(
                    "expected {} elements of {}, got {}",
                    decl.len,
                    decl.dtype,
                    t.ty()
                ),
            });
        }
        buffers[*b as usize] = t.to_f64();
    }
    for k in &p.kernels {
        if let (Some(g), Products::Library) = (&k.blas, products) {
            blas_gemm(g, &mut buffers, &dtypes, k)?;
            continue;
        }
        for block in 0..k.launch.grid {
            let mut envs: Vec<Env> = vec![vec![None; k.vars as usize]; k.launch.block];
            let mut cx = Ctx {
                shared: std::cell::RefCell::new(SharedMem::new(&k.shared)),
                frags: vec![vec![Vec::new(); k.frags.len()]; k.launch.block.div_ceil(32)],
                buffers: &mut buffers,
                dtypes: &dtypes,
                precision: k.precision,
                block: block as i64,
                grid: k.launch.grid as i64,
                block_dim: k.launch.block as i64,
            };
            exec_block(&k.body, &mut envs, &mut cx, k)?;
        }
    }
    Ok(p.outputs
        .iter()
        .map(|(name, b)| {
            let d = &p.buffers[*b as usize];
            (
                name.clone(),
                Tensor::from_f64(d.dtype, d.shape.clone(), &buffers[*b as usize]),
            )
        })
        .collect())
}
