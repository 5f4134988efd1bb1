//! GPU matrix products: a shared-memory tiled kernel for a product and its fused
//! elementwise epilogue (bias, activation, residual add, …).
//!
//! Each block computes a [`TILE`]×[`TILE`] tile of one batch's output with 256 threads, each
//! holding a 4×4 block of accumulators in registers. The reduction dim is walked in steps of
//! [`STEP`]: the block stages a `TILE×STEP` slice of the left operand (transposed) and a
//! `STEP×TILE` slice of the right one in shared memory (zero past the edges), waits, and
//! every thread multiplies its 4 rows by its 4 columns from there; a second barrier keeps
//! the next step's stores off the slices still being read. Operands are read through their
//! index maps (transposes and reshapes cost nothing). Finally each thread applies the
//! epilogue to its outputs and stores them.

use super::rows::{hold, lt};
use super::{add, and, broadcast_index, builtin, div, emitter, key, mul, ravel, reads_writes};
use super::{rem, unravel, Kernel, Launch, R};
use crate::ir::{BinaryOp, Graph, NodeId, Op};
use crate::kernel::ir::{Builtin, Expr, Precision, Stmt};

/// Output tile edge of a block.
const TILE: usize = 64;
/// Reduction elements staged per step.
const STEP: usize = 16;
/// Output rows (and columns) per thread.
const MICRO: usize = 4;
/// Threads per block: (TILE / MICRO)².
const THREADS: usize = (TILE / MICRO) * (TILE / MICRO);

/// The tiled kernel for a body whose one matrix product (2-D or batched operands) has an
/// elementwise epilogue of its own shape, when the product is big enough for tiles to pay
/// (else `None`: the pointwise kernel).
pub(super) fn lower_gemm_gpu(
    body: &Graph,
    inputs: &[u32],
    out: u32,
    name: &str,
    precision: Precision,
) -> R<Option<Kernel>> {
    let root = body.outputs[0].1;
    let mms: Vec<NodeId> = (0..body.nodes.len())
        .filter(|&i| body.nodes[i].op == Op::MatMul)
        .collect();
    let [mm] = mms[..] else { return Ok(None) };
    let (a, b) = (body.nodes[mm].inputs[0], body.nodes[mm].inputs[1]);
    let (sa, sb) = (
        body.nodes[a].ty.shape.clone(),
        body.nodes[b].ty.shape.clone(),
    );
    let shape = body.nodes[mm].ty.shape.clone();
    let r = shape.len();
    if sa.len() < 2 || sb.len() < 2 || body.nodes[root].ty.shape != shape {
        return Ok(None);
    }
    let (m, n, k) = (shape[r - 2], shape[r - 1], sa[sa.len() - 1]);
    if m < TILE / 2 || n < TILE / 2 || k < STEP {
        return Ok(None);
    }
    let (tiles_m, tiles_n) = (m.div_ceil(TILE), n.div_ceil(TILE));
    let batches: usize = shape[..r - 2].iter().product();
    if batches == 0 {
        return Ok(None);
    }
    let mut e = emitter(body, inputs);
    let bid = builtin(Builtin::Block);
    let tn = e.bind(rem(bid.clone(), tiles_n));
    let tm = e.bind(rem(div(bid.clone(), tiles_n), tiles_m));
    let batch_flat = e.bind(div(bid, tiles_n * tiles_m));
    let batch = unravel(&batch_flat, &shape[..r - 2]);
    let tx = e.bind(rem(builtin(Builtin::Thread), TILE / MICRO));
    let ty = e.bind(div(builtin(Builtin::Thread), TILE / MICRO));
    let row0 = e.bind(mul(tm, Expr::I(TILE as i64)));
    let col0 = e.bind(mul(tn, Expr::I(TILE as i64)));
    let zero = |e: &mut super::Emitter| {
        let v = e.var();
        e.push(Stmt::Let {
            var: v,
            value: Expr::F(0.0),
        });
        v
    };
    let acc: Vec<u32> = (0..MICRO * MICRO).map(|_| zero(&mut e)).collect();
    let operand = |shape: &[usize], i: Expr, j: Expr| {
        let mut idx = broadcast_index(&batch, &shape[..shape.len() - 2]);
        idx.extend([i, j]);
        idx
    };
    let step = e.var();
    e.open();
    let k0 = e.bind(mul(Expr::Var(step), Expr::I(STEP as i64)));
    // Stage the slices: each thread loads TILE·STEP / THREADS elements of each.
    for l in 0..TILE * STEP / THREADS {
        let flat = add(builtin(Builtin::Thread), Expr::I((l * THREADS) as i64));
        // Left: element (row0 + i, k0 + c) at s0[c·TILE + i].
        let (i, c) = (
            e.bind(div(flat.clone(), STEP)),
            e.bind(rem(flat.clone(), STEP)),
        );
        let (gi, gc) = (
            e.bind(add(row0.clone(), i.clone())),
            e.bind(add(k0.clone(), c.clone())),
        );
        let ok = and(lt(gi.clone(), m), lt(gc.clone(), k));
        let v = hold(&mut e, a, &operand(&sa, gi, gc), Some(&ok))?;
        e.push(Stmt::SharedStore {
            array: 0,
            index: add(mul(c, Expr::I(TILE as i64)), i),
            value: v,
        });
        // Right: element (k0 + c, col0 + j) at s1[c·TILE + j].
        let (c, j) = (e.bind(div(flat.clone(), TILE)), e.bind(rem(flat, TILE)));
        let (gc, gj) = (
            e.bind(add(k0.clone(), c.clone())),
            e.bind(add(col0.clone(), j.clone())),
        );
        let ok = and(lt(gc.clone(), k), lt(gj.clone(), n));
        let v = hold(&mut e, b, &operand(&sb, gc, gj), Some(&ok))?;
        e.push(Stmt::SharedStore {
            array: 1,
            index: add(mul(c, Expr::I(TILE as i64)), j),
            value: v,
        });
    }
    e.push(Stmt::Barrier);
    // Multiply: rows ty·4.., columns tx·4.. of the tile.
    let kk = e.var();
    e.open();
    let at = |arr: u32, base: &Expr, x: usize| Expr::Shared {
        array: arr,
        index: Box::new(add(
            add(
                mul(Expr::Var(kk), Expr::I(TILE as i64)),
                mul(base.clone(), Expr::I(MICRO as i64)),
            ),
            Expr::I(x as i64),
        )),
    };
    let av: Vec<Expr> = (0..MICRO).map(|x| e.bind(at(0, &ty, x))).collect();
    let bv: Vec<Expr> = (0..MICRO).map(|x| e.bind(at(1, &tx, x))).collect();
    for (i, ai) in av.iter().enumerate() {
        for (j, bj) in bv.iter().enumerate() {
            let c = acc[i * MICRO + j];
            e.push(Stmt::Let {
                var: c,
                value: Expr::Binary(
                    BinaryOp::Add,
                    Box::new(Expr::Var(c)),
                    Box::new(Expr::Binary(
                        BinaryOp::Mul,
                        Box::new(ai.clone()),
                        Box::new(bj.clone()),
                    )),
                ),
            });
        }
    }
    let inner = e.close();
    e.push(Stmt::For {
        var: kk,
        start: Expr::I(0),
        end: Expr::I(STEP as i64),
        step: Expr::I(1),
        uniform: false,
        body: inner,
    });
    e.push(Stmt::Barrier);
    let walk = e.close();
    e.push(Stmt::For {
        var: step,
        start: Expr::I(0),
        end: Expr::I(k.div_ceil(STEP) as i64),
        step: Expr::I(1),
        uniform: true,
        body: walk,
    });
    // Epilogue: each output through the fused ops, stored where it exists.
    for i in 0..MICRO {
        for j in 0..MICRO {
            let gi = e.bind(add(
                row0.clone(),
                add(mul(ty.clone(), Expr::I(MICRO as i64)), Expr::I(i as i64)),
            ));
            let gj = e.bind(add(
                col0.clone(),
                add(mul(tx.clone(), Expr::I(MICRO as i64)), Expr::I(j as i64)),
            ));
            let mut idx = batch.clone();
            idx.extend([gi.clone(), gj.clone()]);
            e.open();
            e.memo
                .last_mut()
                .expect("a scope is open")
                .insert(key(mm, &idx), Expr::Var(acc[i * MICRO + j]));
            let v = e.value(root, &idx)?;
            e.push(Stmt::Store {
                buf: out,
                index: ravel(&idx, &shape),
                value: v,
            });
            let then = e.close();
            e.push(Stmt::If {
                cond: and(lt(gi, m), lt(gj, n)),
                then,
            });
        }
    }
    let (reads, writes) = reads_writes(inputs, out);
    Ok(Some(Kernel {
        name: name.to_string(),
        node: String::new(),
        launch: Launch {
            grid: (batches * tiles_m * tiles_n).max(1),
            block: THREADS,
        },
        precision,
        reads,
        writes,
        vars: e.next_var,
        shared: vec![TILE * STEP, STEP * TILE],
        body: e.close_root(),
    }))
}
