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
use super::{add, and, broadcast_index, builtin, div, emitter, mul, ravel};
use super::{rem, unravel, Emitter, Kernel, Launch, R};
use crate::ir::DType;
use crate::ir::{BinaryOp, Conv2d, Graph, NodeId, Op};
use crate::kernel::ir::{Builtin, Expr, FragRole, Fragment, Precision, SharedArray, Stmt};

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

    /// Storage types of the left and right operands.
    fn dtypes(&self, body: &Graph) -> (DType, DType) {
        let d = |id: NodeId| body.nodes[id].ty.dtype;
        match self {
            Operands::MatMul { a, b, .. } => (d(*a), d(*b)),
            Operands::Conv { w, x, .. } => (d(*w), d(*x)),
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
    let batch_shape = shape[..batch_dims].to_vec();
    if batch_shape.iter().product::<usize>() == 0 {
        return Ok(None);
    }
    let g = Geometry {
        m,
        n,
        k,
        tiles_m,
        tiles_n,
        batch_shape,
        out_shape: shape.clone(),
    };
    let dtypes = ops.dtypes(body);
    let halves = dtypes.0 == dtypes.1 && matches!(dtypes.0, DType::F16 | DType::BF16);
    if halves && precision == Precision::F32 {
        return tensor_core(body, inputs, out, name, &ops, mm, dtypes.0, g).map(Some);
    }
    let mut e = emitter(body, inputs);
    let t = Tiles::origin(&mut e, &ops, mm, g);
    let tx = e.bind(rem(builtin(Builtin::Thread), TILE / MICRO));
    let ty = e.bind(div(builtin(Builtin::Thread), TILE / MICRO));
    let acc: Vec<u32> = (0..MICRO * MICRO).map(|_| e.start(0.0)).collect();
    let step = e.var();
    e.open();
    let k0 = e.bind(mul(Expr::Var(step), Expr::I(STEP as i64)));
    t.stage(&mut e, &k0, STEP, THREADS, true)?;
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
    t.walk(&mut e, step, STEP);
    // Epilogue: each output through the fused ops, stored where it exists.
    for i in 0..MICRO {
        for j in 0..MICRO {
            let gi = add(mul(ty.clone(), Expr::I(MICRO as i64)), Expr::I(i as i64));
            let gj = add(mul(tx.clone(), Expr::I(MICRO as i64)), Expr::I(j as i64));
            t.store(&mut e, gi, gj, Expr::Var(acc[i * MICRO + j]), out)?;
        }
    }
    let launch = t.launch(THREADS);
    let array = |len| SharedArray {
        dtype: precision.dtype(),
        len,
    };
    Ok(Some(Kernel {
        shared: vec![array(TILE * STEP), array(STEP * TILE)],
        ..e.finish(name, launch, precision, inputs, out)
    }))
}

/// A block's tile of the output and how it reaches the operands.
struct Tiles<'o> {
    ops: &'o Operands,
    /// The product node (its value is what the epilogue reads).
    mm: NodeId,
    g: Geometry,
    /// The tile's batch index, first row and first column.
    batch: Vec<Expr>,
    row0: Expr,
    col0: Expr,
}

impl<'o> Tiles<'o> {
    /// The tile of this block: blocks run over (batch, tile row, tile column).
    fn origin(e: &mut Emitter, ops: &'o Operands, mm: NodeId, g: Geometry) -> Self {
        let bid = builtin(Builtin::Block);
        let tn = e.bind(rem(bid.clone(), g.tiles_n));
        let tm = e.bind(rem(div(bid.clone(), g.tiles_n), g.tiles_m));
        let batch_flat = e.bind(div(bid, g.tiles_n * g.tiles_m));
        let batch = unravel(&batch_flat, &g.batch_shape);
        let row0 = e.bind(mul(tm, Expr::I(TILE as i64)));
        let col0 = e.bind(mul(tn, Expr::I(TILE as i64)));
        Tiles {
            ops,
            mm,
            g,
            batch,
            row0,
            col0,
        }
    }

    /// Stages the `depth`-deep slices from `k0` of both operands in shared memory (0 past
    /// the edges), `threads` threads sharing the loads: the left one in s0 (`TILE × depth`,
    /// stored transposed as `depth × TILE` when `transposed`), the right one in s1
    /// (`depth × TILE`).
    fn stage(
        &self,
        e: &mut Emitter,
        k0: &Expr,
        depth: usize,
        threads: usize,
        transposed: bool,
    ) -> R<()> {
        let g = &self.g;
        for l in 0..TILE * depth / threads {
            let flat = add(builtin(Builtin::Thread), Expr::I((l * threads) as i64));
            // Left: element (row0 + i, k0 + c).
            let (i, c) = (
                e.bind(div(flat.clone(), depth)),
                e.bind(rem(flat.clone(), depth)),
            );
            let (gi, gc) = (
                e.bind(add(self.row0.clone(), i.clone())),
                e.bind(add(k0.clone(), c.clone())),
            );
            let ok = and(lt(gi.clone(), g.m), lt(gc.clone(), g.k));
            let v = self.ops.a(e, &self.batch, gi, gc, ok)?;
            let index = match transposed {
                true => add(mul(c, Expr::I(TILE as i64)), i),
                false => add(mul(i, Expr::I(depth as i64)), c),
            };
            e.push(Stmt::SharedStore {
                array: 0,
                index,
                value: v,
            });
            // Right: element (k0 + c, col0 + j) at s1[c·TILE + j].
            let (c, j) = (e.bind(div(flat.clone(), TILE)), e.bind(rem(flat, TILE)));
            let (gc, gj) = (
                e.bind(add(k0.clone(), c.clone())),
                e.bind(add(self.col0.clone(), j.clone())),
            );
            let ok = and(lt(gc.clone(), g.k), lt(gj.clone(), g.n));
            let v = self.ops.b(e, &self.batch, gc, gj, ok)?;
            e.push(Stmt::SharedStore {
                array: 1,
                index: add(mul(c, Expr::I(TILE as i64)), j),
                value: v,
            });
        }
        Ok(())
    }

    /// Closes the open step body into the block-uniform loop over the reduction dim.
    fn walk(&self, e: &mut Emitter, step: u32, depth: usize) {
        let body = e.close();
        e.push(Stmt::For {
            var: step,
            start: Expr::I(0),
            end: Expr::I(self.g.k.div_ceil(depth) as i64),
            step: Expr::I(1),
            uniform: true,
            body,
        });
    }

    /// Output (i, j) of the tile, whose product value is `acc`, through the fused epilogue
    /// into `out` where it exists.
    fn store(&self, e: &mut Emitter, i: Expr, j: Expr, acc: Expr, out: u32) -> R<()> {
        let gi = e.bind(add(self.row0.clone(), i));
        let gj = e.bind(add(self.col0.clone(), j));
        let idx = self.ops.out_index(&self.batch, gi.clone(), gj.clone());
        e.open();
        let acc = e.bind(acc);
        let v = self.ops.finish(e, acc, &idx)?;
        e.remember(self.mm, &idx, v);
        let root = e.body.outputs[0].1;
        let v = e.value(root, &idx)?;
        e.push(Stmt::Store {
            buf: out,
            index: ravel(&idx, &self.g.out_shape),
            value: v,
        });
        e.close_under(Some(and(lt(gi, self.g.m), lt(gj, self.g.n))));
        Ok(())
    }

    /// One block per tile.
    fn launch(&self, threads: usize) -> Launch {
        let g = &self.g;
        Launch {
            grid: (g.batch_shape.iter().product::<usize>() * g.tiles_m * g.tiles_n).max(1),
            block: threads,
        }
    }
}

/// Sizes of a tiled product.
struct Geometry {
    m: usize,
    n: usize,
    k: usize,
    tiles_m: usize,
    tiles_n: usize,
    batch_shape: Vec<usize>,
    out_shape: Vec<usize>,
}

/// Reduction elements staged per step of the tensor-core kernel.
const TC_STEP: usize = 16;
/// Threads of the tensor-core kernel: 4 warps, each a 32×32 quarter of the tile.
const TC_THREADS: usize = 128;
/// Fragment edge.
const FRAG: usize = 16;

/// The tensor-core variant, for f16 or bf16 operands: each of 4 warps computes a 32×32
/// quarter of the 64×64 tile as 2×2 fragments of f32 accumulators (`wmma` 16×16×16
/// products), from slices staged in shared memory in the operands' storage type; the
/// accumulators go through shared memory to the threads, which apply the epilogue and store
/// coalesced.
#[allow(clippy::too_many_arguments)]
fn tensor_core(
    body: &Graph,
    inputs: &[u32],
    out: u32,
    name: &str,
    ops: &Operands,
    mm: NodeId,
    dtype: DType,
    g: Geometry,
) -> R<Kernel> {
    let mut e = emitter(body, inputs);
    let t = Tiles::origin(&mut e, ops, mm, g);
    let warp = e.bind(div(builtin(Builtin::Thread), 32));
    let (wm, wn) = (e.bind(div(warp.clone(), 2)), e.bind(rem(warp, 2)));
    // Fragments: a0 a1 (A), b0 b1 (B), c00 c01 c10 c11 (accumulators).
    let (fa, fb, fc) = ([0u32, 1], [2u32, 3], [4u32, 5, 6, 7]);
    for &c in &fc {
        e.push(Stmt::FragFill {
            frag: c,
            value: 0.0,
        });
    }
    let step = e.var();
    e.open();
    let k0 = e.bind(mul(Expr::Var(step), Expr::I(TC_STEP as i64)));
    t.stage(&mut e, &k0, TC_STEP, TC_THREADS, false)?;
    e.push(Stmt::Barrier);
    for ks in 0..TC_STEP / FRAG {
        for (x, &f) in fa.iter().enumerate() {
            // Rows wm·32 + x·16.., columns ks·16.. of the left slice.
            let row = add(mul(wm.clone(), Expr::I(32)), Expr::I((x * FRAG) as i64));
            e.push(Stmt::FragLoad {
                frag: f,
                array: 0,
                offset: add(
                    mul(row, Expr::I(TC_STEP as i64)),
                    Expr::I((ks * FRAG) as i64),
                ),
                ld: TC_STEP,
            });
        }
        for (y, &f) in fb.iter().enumerate() {
            // Rows ks·16.., columns wn·32 + y·16.. of the right slice.
            let col = add(mul(wn.clone(), Expr::I(32)), Expr::I((y * FRAG) as i64));
            e.push(Stmt::FragLoad {
                frag: f,
                array: 1,
                offset: add(Expr::I((ks * FRAG * TILE) as i64), col),
                ld: TILE,
            });
        }
        for (x, &a) in fa.iter().enumerate() {
            for (y, &b) in fb.iter().enumerate() {
                e.push(Stmt::FragMma {
                    acc: fc[x * 2 + y],
                    a,
                    b,
                });
            }
        }
    }
    e.push(Stmt::Barrier);
    t.walk(&mut e, step, TC_STEP);
    // The accumulators to s2 (the tile, row-major), then the epilogue per element.
    for x in 0..2 {
        for y in 0..2 {
            let row = add(mul(wm.clone(), Expr::I(32)), Expr::I((x * FRAG) as i64));
            let col = add(mul(wn.clone(), Expr::I(32)), Expr::I((y * FRAG) as i64));
            e.push(Stmt::FragStore {
                array: 2,
                offset: add(mul(row, Expr::I(TILE as i64)), col),
                ld: TILE,
                frag: fc[x * 2 + y],
            });
        }
    }
    e.push(Stmt::Barrier);
    for l in 0..TILE * TILE / TC_THREADS {
        let flat = e.bind(add(
            builtin(Builtin::Thread),
            Expr::I((l * TC_THREADS) as i64),
        ));
        let acc = Expr::Shared {
            array: 2,
            index: Box::new(flat.clone()),
        };
        t.store(&mut e, div(flat.clone(), TILE), rem(flat, TILE), acc, out)?;
    }
    let launch = t.launch(TC_THREADS);
    let array = |dtype, len| SharedArray { dtype, len };
    let frag = |role, dtype| Fragment { role, dtype };
    Ok(Kernel {
        shared: vec![
            array(dtype, TILE * TC_STEP),
            array(dtype, TC_STEP * TILE),
            array(DType::F32, TILE * TILE),
        ],
        frags: vec![
            frag(FragRole::A, dtype),
            frag(FragRole::A, dtype),
            frag(FragRole::B, dtype),
            frag(FragRole::B, dtype),
            frag(FragRole::Acc, DType::F32),
            frag(FragRole::Acc, DType::F32),
            frag(FragRole::Acc, DType::F32),
            frag(FragRole::Acc, DType::F32),
        ],
        ..e.finish(name, launch, Precision::F32, inputs, out)
    })
}
