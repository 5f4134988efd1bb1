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
        rule("gather-constant-range", gather_constant_range),
    ]
}

/// `gather(x, k)` with constant indices `k, k+1, …, k+n-1` (or one scalar index) is a slice of
/// `x` (then a reshape that drops the axis, for a scalar): a view instead of a gather kernel.
pub fn gather_constant_range(c: &Ctx, class: Id, n: &ENode) -> Option<Build> {
    let Op::Gather { axis } = n.ir_op()? else {
        return None;
    };
    let (x, idx) = (n.args[0], n.args[1]);
    let shape = &c.ty(x).shape;
    let dim = shape[*axis] as i64;
    let ind = c.value(idx)?;
    let vals: Vec<i64> = ind
        .to_i64()
        .into_iter()
        .map(|i| if i < 0 { i + dim } else { i })
        .collect();
    let first = *vals.first()?;
    let contiguous = vals.iter().enumerate().all(|(j, &v)| v == first + j as i64);
    if !contiguous || ind.shape().len() > 1 || first < 0 || first + vals.len() as i64 > dim {
        return None;
    }
    let mut starts = vec![0; shape.len()];
    let mut lens = shape.clone();
    starts[*axis] = first as usize;
    lens[*axis] = vals.len();
    let slice = Build::Node(
        Op::Slice {
            starts,
            steps: vec![1; shape.len()],
            lens,
        },
        vec![Build::Class(x)],
    );
    Some(Build::Node(
        Op::Reshape(c.ty(class).shape.clone()),
        vec![slice],
    ))
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
