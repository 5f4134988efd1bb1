//! GPU pointwise kernels: a grid-stride loop over the output elements.

use super::*;

/// A grid-stride loop over the output elements.
pub(super) fn lower_pointwise(
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
