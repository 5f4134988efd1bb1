//! GPU matrix products and convolutions: a shared-memory tiled kernel for a product (or a
//! convolution as an implicit product: weights `Co × Ci·KH·KW` times the image's windows
//! `Ci·KH·KW × OH·OW`, gathered on the fly with zero padding) and its fused elementwise
//! epilogue (bias, activation, residual add, …).
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
use super::{rem, unravel, Emitter, Kernel, Launch, R};
use crate::ir::{BinaryOp, Conv2d, Graph, NodeId, Op};
use crate::kernel::ir::{Builtin, Expr, Precision, Stmt};

/// Output tile edge of a block.
const TILE: usize = 64;
/// Reduction elements staged per step.
const STEP: usize = 16;
/// Output rows (and columns) per thread.
const MICRO: usize = 4;
/// Threads per block: (TILE / MICRO)².
const THREADS: usize = (TILE / MICRO) * (TILE / MICRO);

/// The product a tiled kernel computes: `c[batch] = a[batch] × b[batch]`, `m×k` by `k×n`.
enum Operands {
    /// A matrix product of (batched) matrices.
    MatMul {
        a: NodeId,
        b: NodeId,
        sa: Vec<usize>,
        sb: Vec<usize>,
    },
    /// A convolution: `a` the weights, `b` the windows of image `x`, batch the images.
    Conv {
        x: NodeId,
        w: NodeId,
        bias: Option<NodeId>,
        conv: Conv2d,
        xs: Vec<usize>,
        ws: Vec<usize>,
        out_w: usize,
    },
}

impl Operands {
    /// Element (i, c) of `a` for batch `batch`, 0 unless `ok`.
    fn a(&self, e: &mut Emitter, batch: &[Expr], i: Expr, c: Expr, ok: Expr) -> R<Expr> {
        match self {
            Operands::MatMul { a, sa, .. } => {
                let mut idx = broadcast_index(batch, &sa[..sa.len() - 2]);
                idx.extend([i, c]);
                hold(e, *a, &idx, Some(&ok))
            }
            Operands::Conv { w, ws, .. } => {
                let mut idx = vec![i];
                idx.extend(unravel(&c, &ws[1..]));
                hold(e, *w, &idx, Some(&ok))
            }
        }
    }

    /// Element (c, j) of `b` for batch `batch`, 0 unless `ok` (and, for a convolution,
    /// unless the window position is padding).
    fn b(&self, e: &mut Emitter, batch: &[Expr], c: Expr, j: Expr, ok: Expr) -> R<Expr> {
        match self {
            Operands::MatMul { b, sb, .. } => {
                let mut idx = broadcast_index(batch, &sb[..sb.len() - 2]);
                idx.extend([c, j]);
                hold(e, *b, &idx, Some(&ok))
            }
            Operands::Conv {
                x,
                conv,
                xs,
                ws,
                out_w,
                ..
            } => {
                let ck = unravel(&c, &ws[1..]);
                let (oy, ox) = (div(j.clone(), *out_w), rem(j, *out_w));
                let (iy, in_y) = Emitter::window_pos(
                    &oy,
                    &ck[1],
                    conv.strides[0],
                    conv.dilations[0],
                    conv.pads[0],
                    xs[2],
                );
                let (ix, in_x) = Emitter::window_pos(
                    &ox,
                    &ck[2],
                    conv.strides[1],
                    conv.dilations[1],
                    conv.pads[1],
                    xs[3],
                );
                let idx = [batch[0].clone(), ck[0].clone(), iy, ix];
                hold(e, *x, &idx, Some(&and(ok, and(in_y, in_x))))
            }
        }
    }

    /// The output's multi-index of element (i, j) of batch `batch`.
    fn out_index(&self, batch: &[Expr], i: Expr, j: Expr) -> Vec<Expr> {
        let mut idx = batch.to_vec();
        match self {
            Operands::MatMul { .. } => idx.extend([i, j]),
            Operands::Conv { out_w, .. } => idx.extend([i, div(j.clone(), *out_w), rem(j, *out_w)]),
        }
        idx
    }

    /// The product node's value from its accumulator at output index `idx`.
    fn finish(&self, e: &mut Emitter, acc: Expr, idx: &[Expr]) -> R<Expr> {
        Ok(match self {
            Operands::Conv { bias: Some(b), .. } => {
                let bv = e.value(*b, &[idx[1].clone()])?;
                e.bind(Expr::Binary(BinaryOp::Add, Box::new(acc), Box::new(bv)))
            }
            _ => acc,
        })
    }
}

/// The tiled kernel for a body whose one matrix product (2-D or batched operands) or
/// convolution (one group) has an elementwise epilogue of its own shape, when the product
/// is big enough for tiles to pay (else `None`: the pointwise kernel).
pub(super) fn lower_gemm_gpu(
    body: &Graph,
    inputs: &[u32],
    out: u32,
    name: &str,
    precision: Precision,
) -> R<Option<Kernel>> {
    let root = body.outputs[0].1;
    let products: Vec<NodeId> = (0..body.nodes.len())
        .filter(|&i| matches!(body.nodes[i].op, Op::MatMul | Op::Conv(_)))
        .collect();
    let [mm] = products[..] else { return Ok(None) };
    let shape = body.nodes[mm].ty.shape.clone();
    let r = shape.len();
    if body.nodes[root].ty.shape != shape {
        return Ok(None);
    }
    let ins = &body.nodes[mm].inputs;
    let ty = |id: NodeId| body.nodes[id].ty.shape.clone();
    // (operands, m, n, k, the output dims that are batches)
    let (ops, m, n, k, batch_dims) = match &body.nodes[mm].op {
        Op::MatMul => {
            let (sa, sb) = (ty(ins[0]), ty(ins[1]));
            if sa.len() < 2 || sb.len() < 2 {
                return Ok(None);
            }
            let k = sa[sa.len() - 1];
            let (m, n) = (shape[r - 2], shape[r - 1]);
            let ops = Operands::MatMul {
                a: ins[0],
                b: ins[1],
                sa,
                sb,
            };
            (ops, m, n, k, r - 2)
        }
        Op::Conv(c) if c.group == 1 && r == 4 => {
            let (xs, ws) = (ty(ins[0]), ty(ins[1]));
            let k: usize = ws[1..].iter().product();
            let ops = Operands::Conv {
                x: ins[0],
                w: ins[1],
                bias: ins.get(2).copied(),
                conv: c.clone(),
                xs,
                ws,
                out_w: shape[3],
            };
            (ops, shape[1], shape[2] * shape[3], k, 1)
        }
        _ => return Ok(None),
    };
    if m < TILE / 2 || n < TILE / 2 || k < STEP {
        return Ok(None);
    }
    let (tiles_m, tiles_n) = (m.div_ceil(TILE), n.div_ceil(TILE));
    let batches: usize = shape[..batch_dims].iter().product();
    if batches == 0 {
        return Ok(None);
    }
    let mut e = emitter(body, inputs);
    let bid = builtin(Builtin::Block);
    let tn = e.bind(rem(bid.clone(), tiles_n));
    let tm = e.bind(rem(div(bid.clone(), tiles_n), tiles_m));
    let batch_flat = e.bind(div(bid, tiles_n * tiles_m));
    let batch = unravel(&batch_flat, &shape[..batch_dims]);
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
        let v = ops.a(&mut e, &batch, gi, gc, ok)?;
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
        let v = ops.b(&mut e, &batch, gc, gj, ok)?;
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
            let idx = ops.out_index(&batch, gi.clone(), gj.clone());
            e.open();
            let v = ops.finish(&mut e, Expr::Var(acc[i * MICRO + j]), &idx)?;
            e.memo
                .last_mut()
                .expect("a scope is open")
                .insert(key(mm, &idx), v);
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
