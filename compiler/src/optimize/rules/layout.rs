//! Composing layout ops: a view of a view is one view.

use super::{rule, Build, Ctx};
use crate::ir::Op;
use crate::optimize::analysis::Facts;
use crate::optimize::lang::ENode;
use egg::{Id, Rewrite};

/// The layout rules.
pub fn rules() -> Vec<Rewrite<ENode, Facts>> {
    vec![
        rule("transpose-of-transpose", transpose_of_transpose),
        rule("reshape-of-reshape", reshape_of_reshape),
        rule("broadcast-of-broadcast", broadcast_of_broadcast),
    ]
}

/// `transpose(transpose(x, p), q) → transpose(x, p∘q)`.
pub fn transpose_of_transpose(c: &Ctx, _class: Id, n: &ENode) -> Option<Build> {
    let Op::Transpose(q) = n.ir_op()? else {
        return None;
    };
    let inner = c.find(n.args[0], |op| matches!(op, Op::Transpose(_)))?;
    let Some(Op::Transpose(p)) = inner.ir_op() else {
        return None;
    };
    // Output dim i is inner dim q[i], which is input dim p[q[i]].
    let perm: Vec<usize> = q.iter().map(|&i| p[i]).collect();
    Some(Build::Node(
        Op::Transpose(perm),
        vec![Build::Class(inner.args[0])],
    ))
}

/// `reshape(reshape(x, a), b) → reshape(x, b)`.
pub fn reshape_of_reshape(c: &Ctx, _class: Id, n: &ENode) -> Option<Build> {
    let Op::Reshape(s) = n.ir_op()? else {
        return None;
    };
    let inner = c.find(n.args[0], |op| matches!(op, Op::Reshape(_)))?;
    Some(Build::Node(
        Op::Reshape(s.clone()),
        vec![Build::Class(inner.args[0])],
    ))
}

/// `broadcast(broadcast(x, a), b) → broadcast(x, b)`.
pub fn broadcast_of_broadcast(c: &Ctx, _class: Id, n: &ENode) -> Option<Build> {
    let Op::Broadcast(s) = n.ir_op()? else {
        return None;
    };
    let inner = c.find(n.args[0], |op| matches!(op, Op::Broadcast(_)))?;
    Some(Build::Node(
        Op::Broadcast(s.clone()),
        vec![Build::Class(inner.args[0])],
    ))
}
