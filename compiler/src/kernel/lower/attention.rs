//! GPU attention kernels: `out = softmax(f(Q·Kᵀ)) · V`, with `f` the fused elementwise
//! chain between the two products (scale, additive or causal mask, …), computed without the
//! score matrix in memory.
//!
//! A group of lanes of a warp owns one query row. Its lanes hold the row's query elements
//! and a share of the output columns in registers, and walk the keys once: each score is a
//! warp-shuffle sum of the lanes' partial dot products, goes through `f`, and updates the
//! online softmax (running max `m`, sum `l`) and the accumulators, rescaled by
//! `exp(m_old - m)` when the max grows. The output is `acc / l`. Every key and value row is
//! read once per query row (from L2 for all but the first), nothing of size S×S is stored.

use super::rows::{both, hold, lane_groups, lt, online_step};
use super::{add, broadcast_index, emitter, mul, unravel, Emitter, Kernel, Launch, R, ROW_BLOCK};
use crate::ir::{BinaryOp, Graph, NodeId, Op};
use crate::kernel::ir::{Combiner, Expr, Precision, ReduceOp, Scope, Stmt};

/// Registers a lane may spend on query elements and accumulators.
const MAX_HELD: usize = 32;

/// The attention kernel of a fused body `softmax(f(mm1)) · V` whose output is the second
/// product, or `None` when the body has another shape (it then lowers as a pointwise
/// kernel).
pub(super) fn lower_attention_gpu(
    body: &Graph,
    inputs: &[u32],
    out: u32,
    name: &str,
    precision: Precision,
) -> R<Option<Kernel>> {
    let root = body.outputs[0].1;
    let node = |id: NodeId| &body.nodes[id];
    if node(root).op != Op::MatMul {
        return Ok(None);
    }
    let (p, v) = (node(root).inputs[0], node(root).inputs[1]);
    if !matches!(node(p).op, Op::Softmax { axis } if axis + 1 == node(p).ty.rank()) {
        return Ok(None);
    }
    let x = node(p).inputs[0];
    let Some(mm1) = (0..body.nodes.len()).find(|&i| i != root && node(i).op == Op::MatMul) else {
        return Ok(None);
    };
    let (q, kt) = (node(mm1).inputs[0], node(mm1).inputs[1]);
    let out_shape = node(root).ty.shape.clone();
    let r = out_shape.len();
    let (sx, sq, sk, sv) = (
        node(x).ty.shape.clone(),
        node(q).ty.shape.clone(),
        node(kt).ty.shape.clone(),
        node(v).ty.shape.clone(),
    );
    let ranked = [&sx, &sq, &sk, &sv].iter().all(|s| s.len() >= 2);
    if !ranked || r < 2 || sx.len() != r || sx[..r - 1] != out_shape[..r - 1] {
        return Ok(None);
    }
    let (d, keys, cols) = (sq[sq.len() - 1], sx[r - 1], out_shape[r - 1]);
    let width = d.max(cols).next_power_of_two().clamp(1, 32);
    let (per_d, per_e) = (d.div_ceil(width), cols.div_ceil(width));
    if per_d + per_e > MAX_HELD {
        return Ok(None);
    }
    let rows: usize = out_shape[..r - 1].iter().product();
    let mut e = emitter(body, inputs);
    if rows == 0 {
        return Ok(Some(kernel(e, inputs, out, name, precision, 1)));
    }
    let (row, lane, live) = lane_groups(&mut e, rows, width);
    let prefix = unravel(&row, &out_shape[..r - 1]);
    let (batch, i) = (&prefix[..r - 2], prefix[r - 2].clone());
    // Lane l holds elements l, l + width, … of the head dim and of the output columns.
    let share = |e: &mut Emitter, n: usize, per: usize| -> Vec<(Expr, Option<Expr>)> {
        (0..per)
            .map(|k| {
                let j = e.bind(add(lane.clone(), Expr::I((k * width) as i64)));
                let valid = ((k + 1) * width > n).then(|| lt(j.clone(), n));
                (j, valid)
            })
            .collect()
    };
    let ds = share(&mut e, d, per_d);
    let es = share(&mut e, cols, per_e);
    let at = |shape: &[usize], tail: [Expr; 2]| {
        let mut idx = broadcast_index(batch, &shape[..shape.len() - 2]);
        idx.extend(tail);
        idx
    };
    let qs: Vec<Expr> = ds
        .iter()
        .map(|(dk, valid)| hold(&mut e, q, &at(&sq, [i.clone(), dk.clone()]), valid.as_ref()))
        .collect::<R<_>>()?;
    let bin = |op, a: Expr, b: Expr| Expr::Binary(op, Box::new(a), Box::new(b));
    let (m, l) = (e.start(f64::NEG_INFINITY), e.start(0.0));
    let accs: Vec<u32> = (0..per_e).map(|_| e.start(0.0)).collect();
    let j = e.var();
    e.open();
    // The score: the lanes' partial dot products, summed across the group.
    let s = e.start(0.0);
    for ((dk, valid), qk) in ds.iter().zip(&qs) {
        e.open();
        let kv = e.value(kt, &at(&sk, [dk.clone(), Expr::Var(j)]))?;
        e.push(Stmt::Let {
            var: s,
            value: bin(
                BinaryOp::Add,
                Expr::Var(s),
                bin(BinaryOp::Mul, qk.clone(), kv),
            ),
        });
        e.close_under(valid.clone());
    }
    e.push(Stmt::Reduce {
        scope: Scope::Warp(width),
        combiner: Combiner::Op(ReduceOp::Sum),
        vars: vec![s],
    });
    // Through the elementwise chain to the softmax input.
    let mut xi = batch.to_vec();
    xi.extend([i.clone(), Expr::Var(j)]);
    e.remember(
        mm1,
        &broadcast_index(&xi, &node(mm1).ty.shape),
        Expr::Var(s),
    );
    let xv = e.value(x, &xi)?;
    let (t, c, pj) = online_step(&mut e, m, xv);
    e.push(Stmt::Let {
        var: l,
        value: bin(
            BinaryOp::Add,
            bin(BinaryOp::Mul, Expr::Var(l), c.clone()),
            pj.clone(),
        ),
    });
    for ((ek, valid), &acc) in es.iter().zip(&accs) {
        e.open();
        let vv = e.value(v, &at(&sv, [Expr::Var(j), ek.clone()]))?;
        e.push(Stmt::Let {
            var: acc,
            value: bin(
                BinaryOp::Add,
                bin(BinaryOp::Mul, Expr::Var(acc), c.clone()),
                bin(BinaryOp::Mul, pj.clone(), vv),
            ),
        });
        e.close_under(valid.clone());
    }
    e.push(Stmt::Let { var: m, value: t });
    let walk = e.close();
    e.push(Stmt::For {
        var: j,
        start: Expr::I(0),
        end: Expr::I(keys as i64),
        step: Expr::I(1),
        uniform: true,
        body: walk,
    });
    for ((ek, valid), &acc) in es.iter().zip(&accs) {
        e.open();
        e.push(Stmt::Store {
            buf: out,
            index: add(mul(row.clone(), Expr::I(cols as i64)), ek.clone()),
            value: bin(BinaryOp::Div, Expr::Var(acc), Expr::Var(l)),
        });
        e.close_under(both(valid.clone(), live.clone()));
    }
    let grid = rows.div_ceil(ROW_BLOCK / width).max(1);
    Ok(Some(kernel(e, inputs, out, name, precision, grid)))
}

fn kernel(
    e: Emitter,
    inputs: &[u32],
    out: u32,
    name: &str,
    precision: Precision,
    grid: usize,
) -> Kernel {
    let launch = Launch {
        grid,
        block: ROW_BLOCK,
    };
    e.finish(name, launch, precision, inputs, out)
}
