//! Index arithmetic: integer expressions built folded where constant (sums regrouped,
//! multiplications by 0 and 1 dropped), row-major ravel/unravel, broadcasting, negative
//! gather indices.

use super::*;

// Index expressions, folded where constant.
pub(super) fn add(a: Expr, b: Expr) -> Expr {
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
pub(super) fn regroup(hi: &Expr, lo: &Expr) -> Option<Expr> {
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
pub(super) fn mul(a: Expr, b: Expr) -> Expr {
    match (a, b) {
        (Expr::I(0), _) | (_, Expr::I(0)) => Expr::I(0),
        (Expr::I(1), e) | (e, Expr::I(1)) => e,
        (Expr::I(x), Expr::I(y)) => Expr::I(x * y),
        (a, b) => Expr::Index(IndexOp::Mul, Box::new(a), Box::new(b)),
    }
}
pub(super) fn div(a: Expr, d: usize) -> Expr {
    match (a, d) {
        (e, 1) => e,
        (Expr::I(x), d) => Expr::I(x / d as i64),
        (a, d) => Expr::Index(IndexOp::Div, Box::new(a), Box::new(Expr::I(d as i64))),
    }
}
pub(super) fn rem(a: Expr, d: usize) -> Expr {
    match (a, d) {
        (_, 1) => Expr::I(0),
        (Expr::I(x), d) => Expr::I(x % d as i64),
        (a, d) => Expr::Index(IndexOp::Rem, Box::new(a), Box::new(Expr::I(d as i64))),
    }
}

/// `e` with each variable `x` for which `by(x)` is `Some` replaced by it, index arithmetic
/// refolded.
pub(super) fn substitute(e: Expr, by: &dyn Fn(u32) -> Option<Expr>) -> Expr {
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
pub(super) fn substitute_stmt(st: Stmt, by: &dyn Fn(u32) -> Option<Expr>) -> Stmt {
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

pub(super) fn strides(shape: &[usize]) -> Vec<usize> {
    crate::interp::strides(shape)
}

/// Flat row-major index of a multi-index.
pub(super) fn ravel(idx: &[Expr], shape: &[usize]) -> Expr {
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
pub(super) fn unravel(flat: &Expr, shape: &[usize]) -> Vec<Expr> {
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
pub(super) fn broadcast_index(idx: &[Expr], from: &[usize]) -> Vec<Expr> {
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

/// `((a % n) + n) % n`: the remainder in `0..n` for any sign of `a`.
pub(super) fn pos_rem(a: Expr, n: i64) -> Expr {
    let r = Expr::Index(IndexOp::Rem, Box::new(a), Box::new(Expr::I(n)));
    let r = Expr::Index(IndexOp::Add, Box::new(r), Box::new(Expr::I(n)));
    Expr::Index(IndexOp::Rem, Box::new(r), Box::new(Expr::I(n)))
}

/// `lo <= e < hi` as index arithmetic.
pub(super) fn within(e: &Expr, lo: i64, hi: i64) -> Expr {
    and(
        Expr::Index(IndexOp::Ge, Box::new(e.clone()), Box::new(Expr::I(lo))),
        Expr::Index(IndexOp::Lt, Box::new(e.clone()), Box::new(Expr::I(hi))),
    )
}

/// The output columns `[lo, hi)` (clamped to `0..ow`, empty when `lo == hi`) whose input
/// column `ox·stride + offset` lies in `0..n`: the interior of a window tap, where the
/// CPU's direct convolution and pooling loops need no bounds test.
pub(super) fn column_range(offset: i64, stride: i64, n: i64, ow: usize) -> (i64, i64) {
    // ox·stride >= -offset and ox·stride <= n - 1 - offset.
    let lo = (-offset).max(0);
    let lo = (lo + stride - 1) / stride;
    let hi = ((n - 1 - offset).div_euclid(stride) + 1).clamp(0, ow as i64);
    (lo.min(hi), hi)
}

pub(super) fn and(a: Expr, b: Expr) -> Expr {
    match (a, b) {
        (Expr::I(1), e) | (e, Expr::I(1)) => e,
        (a, b) => Expr::Index(IndexOp::And, Box::new(a), Box::new(b)),
    }
}

pub(super) fn builtin(b: Builtin) -> Expr {
    Expr::Builtin(b)
}
