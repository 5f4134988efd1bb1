//! Exact algebraic identities. Each keeps the result bit-for-bit (up to NaN payloads), and
//! fires only when the replacement has the same type as the class (no hidden broadcast).

use super::{rule, Build, Ctx};
use crate::ir::{BinaryOp, Op, UnaryOp};
use crate::optimize::analysis::Facts;
use crate::optimize::lang::ENode;
use egg::{Id, Rewrite};

/// The exact simplification rules.
pub fn rules() -> Vec<Rewrite<ENode, Facts>> {
    vec![
        rule("mul-by-one", mul_by_one),
        rule("add-zero", add_zero),
        rule("sub-zero", sub_zero),
        rule("div-by-one", div_by_one),
        rule("pow-one", pow_one),
        rule("neg-neg", neg_neg),
        rule("cast-to-same-type", cast_to_same_type),
        rule("identity-view", identity_view),
    ]
}

fn binary(n: &ENode, want: BinaryOp) -> Option<(Id, Id)> {
    match n.ir_op()? {
        Op::Binary(b) if *b == want => Some((n.args[0], n.args[1])),
        _ => None,
    }
}

/// `x` when it already has the class's type.
fn keep(c: &Ctx, class: Id, x: Id) -> Option<Build> {
    (c.ty(x) == c.ty(class)).then_some(Build::Class(x))
}

/// `x * 1 → x`, `1 * x → x`.
pub fn mul_by_one(c: &Ctx, class: Id, n: &ENode) -> Option<Build> {
    let (a, b) = binary(n, BinaryOp::Mul)?;
    if c.is_const(b, 1.0) {
        keep(c, class, a)
    } else if c.is_const(a, 1.0) {
        keep(c, class, b)
    } else {
        None
    }
}

/// True when the class is a known constant of zeros (either sign).
fn zeros(c: &Ctx, id: Id) -> bool {
    c.is_const(id, 0.0)
}

/// `x + 0 → x`, `0 + x → x`. Exact in value; the one bit that can differ is the sign of a
/// zero result (`-0 + +0 = +0`), which compares equal.
pub fn add_zero(c: &Ctx, class: Id, n: &ENode) -> Option<Build> {
    let (a, b) = binary(n, BinaryOp::Add)?;
    if zeros(c, b) {
        keep(c, class, a)
    } else if zeros(c, a) {
        keep(c, class, b)
    } else {
        None
    }
}

/// `x - 0 → x`.
pub fn sub_zero(c: &Ctx, class: Id, n: &ENode) -> Option<Build> {
    let (a, b) = binary(n, BinaryOp::Sub)?;
    zeros(c, b).then(|| keep(c, class, a)).flatten()
}

/// `x / 1 → x`.
pub fn div_by_one(c: &Ctx, class: Id, n: &ENode) -> Option<Build> {
    let (a, b) = binary(n, BinaryOp::Div)?;
    c.is_const(b, 1.0).then(|| keep(c, class, a)).flatten()
}

/// `x ^ 1 → x`.
pub fn pow_one(c: &Ctx, class: Id, n: &ENode) -> Option<Build> {
    let (a, b) = binary(n, BinaryOp::Pow)?;
    c.is_const(b, 1.0).then(|| keep(c, class, a)).flatten()
}

/// `-(-x) → x`.
pub fn neg_neg(c: &Ctx, class: Id, n: &ENode) -> Option<Build> {
    if n.ir_op()? != &Op::Unary(UnaryOp::Neg) {
        return None;
    }
    let inner = c.find(n.args[0], |op| op == &Op::Unary(UnaryOp::Neg))?;
    keep(c, class, inner.args[0])
}

/// `cast(x, T) → x` when x is already T.
pub fn cast_to_same_type(c: &Ctx, class: Id, n: &ENode) -> Option<Build> {
    match n.ir_op()? {
        Op::Cast(d) if c.ty(n.args[0]).dtype == *d => keep(c, class, n.args[0]),
        _ => None,
    }
}

/// Views that change nothing: identity transpose, reshape or broadcast to the same shape,
/// a slice of everything.
pub fn identity_view(c: &Ctx, class: Id, n: &ENode) -> Option<Build> {
    let x = *n.args.first()?;
    let same_shape = c.ty(x).shape == c.ty(class).shape;
    let noop = match n.ir_op()? {
        Op::Transpose(p) => p.iter().enumerate().all(|(i, &d)| i == d),
        Op::Reshape(_) | Op::Broadcast(_) => same_shape,
        Op::Slice { starts, steps, .. } => {
            same_shape && starts.iter().all(|&s| s == 0) && steps.iter().all(|&s| s == 1)
        }
        _ => false,
    };
    noop.then(|| keep(c, class, x)).flatten()
}
