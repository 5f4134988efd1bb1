//! Inexact rules, on only with `--fast-math`: they change results beyond rounding
//! (`x*0` is NaN for infinite x; reassociation changes rounding).

use super::{rule, Build, Ctx};
use crate::ir::{BinaryOp, Op, Tensor};
use crate::optimize::analysis::Facts;
use crate::optimize::lang::ENode;
use egg::{Id, Rewrite};

/// The fast-math rules.
pub fn rules() -> Vec<Rewrite<ENode, Facts>> {
    vec![
        rule("mul-by-zero", mul_by_zero),
        rule("sub-self", sub_self),
        rule("reassociate-add", reassociate_add),
        rule("reassociate-mul", reassociate_mul),
    ]
}

fn zeros_like(c: &Ctx, class: Id) -> Build {
    let ty = c.ty(class);
    Build::Node(
        Op::Broadcast(ty.shape.clone()),
        vec![Build::Const(Tensor::scalar(ty.dtype, 0.0))],
    )
}

/// `x * 0 → 0` (wrong for infinite or NaN x).
pub fn mul_by_zero(c: &Ctx, class: Id, n: &ENode) -> Option<Build> {
    let Op::Binary(BinaryOp::Mul) = n.ir_op()? else {
        return None;
    };
    if !c.ty(class).dtype.is_float() {
        return None;
    }
    (c.is_const(n.args[0], 0.0) || c.is_const(n.args[1], 0.0)).then(|| zeros_like(c, class))
}

/// `x - x → 0` (wrong for infinite or NaN x).
pub fn sub_self(c: &Ctx, class: Id, n: &ENode) -> Option<Build> {
    let Op::Binary(BinaryOp::Sub) = n.ir_op()? else {
        return None;
    };
    let same = c.canon(n.args[0]) == c.canon(n.args[1]);
    (same && c.ty(class).dtype.is_float()).then(|| zeros_like(c, class))
}

fn reassociate(c: &Ctx, n: &ENode, op: BinaryOp) -> Option<Build> {
    let Op::Binary(b) = n.ir_op()? else {
        return None;
    };
    if *b != op {
        return None;
    }
    let inner = c.find(n.args[0], |o| o == &Op::Binary(op))?;
    let (a, b2, c3) = (inner.args[0], inner.args[1], n.args[1]);
    // (a ∘ b) ∘ c → a ∘ (b ∘ c); the builder rejects it if b ∘ c does not broadcast.
    Some(Build::Node(
        Op::Binary(op),
        vec![
            Build::Class(a),
            Build::Node(Op::Binary(op), vec![Build::Class(b2), Build::Class(c3)]),
        ],
    ))
}

/// `(a + b) + c → a + (b + c)`.
pub fn reassociate_add(c: &Ctx, _class: Id, n: &ENode) -> Option<Build> {
    reassociate(c, n, BinaryOp::Add)
}

/// `(a * b) * c → a * (b * c)`.
pub fn reassociate_mul(c: &Ctx, _class: Id, n: &ENode) -> Option<Build> {
    reassociate(c, n, BinaryOp::Mul)
}
