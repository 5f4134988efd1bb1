//! Direct 2-D pooling for the CPU (f32, NCHW), shaped like the direct grouped convolution
//! in [`cpu`](super::cpu): blocks of output rows `(b, c, oy)`; per row, the row is set to
//! the fold's identity, then each window row `ky` whose input row is inside the image folds,
//! for each window column `kx`, a contiguous run of output columns into the row: the columns
//! whose input column is inside the image, a range known when lowering, so the inner loop
//! has no test and vectorizes. Where every window column's run covers a column (all but
//! the borders), one loop folds all of them, so the row is read and written once per window
//! row.
//!
//! Max pooling folds with the NaN-propagating max (a window with a NaN gives NaN, one with
//! no tap inside the image -inf, as the reference does). Average pooling sums, then divides
//! by the window's count, which is separable: the window rows counted (a running count
//! beside the sum) times the window columns counted (constant between the ends of the
//! columns' runs, so one division loop per stretch); padding is counted when the op says
//! so, the ceil-mode overhang never.
//!
//! The pooled value is read through the body's elementwise prologue (an activation or an
//! index map before the pool is computed per tap, as the fused kernel did); any other
//! prologue is computed into a scratch buffer first.

use super::cpu::{chunk_loop, dense_operand, destination, pruned, replace_node, Sink};
use super::{
    add, column_range, emitter, mul, unravel, within, Emitter, Expr, IndexOp, Kernel, Launch,
    Precision, Stmt, CPU_CHUNK, R,
};
use crate::ir::{BinaryOp, DType, Graph, Node, NodeId, Op, Pool2d, PoolKind, TensorType};

/// Most window columns the direct kernel takes: it emits a loop per window column (wider
/// windows, rare, keep the generic kernel's loop over the window).
const MAX_WINDOW_COLUMNS: usize = 64;

/// Most taps one loop of the direct kernel folds (so its expression stays small).
const TAPS_PER_LOOP: usize = 8;

/// True when body node `id` is a pool the direct kernel computes: f32 in and out, 4-D, at
/// most [`MAX_WINDOW_COLUMNS`] window columns, and window attributes small enough (below
/// 2^31) that the column ranges computed here and the kernel's index arithmetic cannot
/// overflow.
pub(super) fn is_direct_pool(body: &Graph, id: NodeId) -> bool {
    let n = &body.nodes[id];
    let Op::Pool(p) = &n.op else {
        return false;
    };
    let small = |v: &[usize]| v.iter().all(|&a| a <= i32::MAX as usize);
    p.kernel[1] <= MAX_WINDOW_COLUMNS
        && small(&p.kernel)
        && small(&p.strides)
        && small(&p.pads)
        && small(&p.dilations)
        && n.ty.dtype == DType::F32
        && n.ty.rank() == 4
        && n.inputs.iter().all(|&a| {
            let t = &body.nodes[a].ty;
            t.dtype == DType::F32 && t.rank() == 4
        })
}

/// True when every node body node `x` depends on is an input, a constant, an elementwise op
/// or an index map: cheap enough to compute at every tap that reads it.
fn elementwise_prologue(body: &Graph, x: NodeId) -> bool {
    let mut need = vec![false; body.nodes.len()];
    need[x] = true;
    for id in (0..=x).rev() {
        if !need[id] {
            continue;
        }
        let n = &body.nodes[id];
        let cheap = matches!(
            n.op,
            Op::Input
                | Op::Constant(_)
                | Op::Unary(_)
                | Op::Binary(_)
                | Op::Where
                | Op::Cast(_)
                | Op::Reshape(_)
                | Op::Transpose(_)
                | Op::Broadcast(_)
                | Op::Slice { .. }
        );
        if !cheap {
            return false;
        }
        for &a in &n.inputs {
            need[a] = true;
        }
    }
    true
}

/// Lowers pool `id` of `body` to the direct kernel (see the module doc); returns the body
/// with the pool replaced by its result, and the inputs that body reads.
pub(super) fn pool_product(
    body: &Graph,
    inputs: &[u32],
    id: NodeId,
    (out, out_f32): (u32, bool),
    precision: Precision,
    sink: &mut Sink,
) -> R<(Graph, Vec<u32>)> {
    let node = body.nodes[id].clone();
    let Op::Pool(p) = &node.op else {
        unreachable!("a pool")
    };
    let x = node.inputs[0];
    let (g, ins) = if elementwise_prologue(body, x) {
        pruned(body, x, inputs)
    } else {
        let (buf, shape) = dense_operand(body, inputs, x, &node.name, precision, sink)?;
        let mut g = Graph::default();
        g.nodes.push(Node {
            name: "x".into(),
            op: Op::Input,
            inputs: vec![],
            ty: TensorType::new(DType::F32, shape),
        });
        g.inputs.push(0);
        g.outputs.push(("out".into(), 0));
        (g, vec![buf])
    };
    let dest = destination(body, id, (out, inputs.contains(&out)), out_f32, sink);
    let name = sink.name(match p.kind {
        PoolKind::Max => "direct_maxpool",
        PoolKind::Avg { .. } => "direct_avgpool",
    });
    let kern = direct_pool(p, (&g, &ins), (dest, &node.ty.shape), name, precision)?;
    sink.push(kern);
    let g = replace_node(body, id, &mut |_, _, _| None);
    let mut ins = inputs.to_vec();
    ins.push(dest);
    Ok((g, ins))
}

/// `a - b` as index arithmetic.
fn sub(a: Expr, b: i64) -> Expr {
    if b == 0 {
        return a;
    }
    Expr::Index(IndexOp::Sub, Box::new(a), Box::new(Expr::I(b)))
}

/// The direct pooling kernel: `y[b, c, oy, ox]` = the fold of the value of `g`'s output
/// (the pooled tensor, read from buffers `ins`) over the window of `(oy, ox)`.
fn direct_pool(
    p: &Pool2d,
    (g, ins): (&Graph, &[u32]),
    (y, ys): (u32, &[usize]),
    name: String,
    precision: Precision,
) -> R<Kernel> {
    let x = g.outputs[0].1;
    let xs = g.nodes[x].ty.shape.clone();
    let (h, wd) = (xs[2] as i64, xs[3] as i64);
    let (oh, ow) = (ys[2], ys[3]);
    let [kh, kw] = p.kernel;
    let rows = ys[0] * ys[1] * oh;
    let work = ow.saturating_mul(kh).saturating_mul(kw);
    let per = (CPU_CHUNK / work.max(1)).max(1);
    let [sy, sx] = p.strides.map(|s| s as i64);
    let [dy, dx] = p.dilations.map(|d| d as i64);
    let (pt, pl) = (p.pads[0] as i64, p.pads[1] as i64);
    let (identity, fold) = match p.kind {
        PoolKind::Max => (f64::NEG_INFINITY, BinaryOp::Max),
        PoolKind::Avg { .. } => (0.0, BinaryOp::Add),
    };
    let mut e = emitter(g, ins);
    let (r, ox, ky, iy) = (e.var(), e.var(), e.var(), e.var());
    let row = Expr::Var(r);
    let lead = unravel(&row, &ys[..3]);
    let (b, c, oy) = (lead[0].clone(), lead[1].clone(), lead[2].clone());
    let at = |col: Expr| add(mul(row.clone(), Expr::I(ow as i64)), col);
    let range = |lo: i64, hi: i64, body: Vec<Stmt>| Stmt::For {
        var: ox,
        start: Expr::I(lo),
        end: Expr::I(hi),
        step: Expr::I(1),
        uniform: false,
        body,
    };
    let load_y = || Expr::Load {
        buf: y,
        index: Box::new(at(Expr::Var(ox))),
    };
    // The window's first input row.
    let top = sub(mul(oy.clone(), Expr::I(sy)), pt);
    e.open();
    e.push(range(
        0,
        ow as i64,
        vec![Stmt::Store {
            buf: y,
            index: at(Expr::Var(ox)),
            value: Expr::F(identity),
        }],
    ));
    // Per window row: iy = oy·sy + ky·dy - pt, then the taps if it is inside.
    e.open();
    e.push(Stmt::Let {
        var: iy,
        value: add(top.clone(), mul(Expr::Var(ky), Expr::I(dy))),
    });
    e.open();
    // Each window column's run of output columns; where they all overlap, one loop folds
    // every tap (one read and write of the row per window row), the ends one tap each.
    let runs: Vec<(i64, i64, i64)> = (0..kw as i64)
        .map(|kx| {
            let offset = kx * dx - pl;
            let (lo, hi) = column_range(offset, sx, wd, ow);
            (offset, lo, hi)
        })
        .collect();
    let inner_lo = runs.iter().map(|r| r.1).max().unwrap_or(0);
    let inner_hi = runs.iter().map(|r| r.2).min().unwrap_or(0);
    let taps = |e: &mut Emitter, offsets: &[i64], lo: i64, hi: i64| -> R<()> {
        if hi <= lo || offsets.is_empty() {
            return Ok(());
        }
        e.open();
        let mut acc = load_y();
        for &offset in offsets {
            let ix = add(mul(Expr::Var(ox), Expr::I(sx)), Expr::I(offset));
            let v = e.value(x, &[b.clone(), c.clone(), Expr::Var(iy), ix])?;
            acc = Expr::Binary(fold, Box::new(acc), Box::new(v));
        }
        e.push(Stmt::Store {
            buf: y,
            index: at(Expr::Var(ox)),
            value: acc,
        });
        let body = e.close();
        e.push(range(lo, hi, body));
        Ok(())
    };
    if kw > 1 && inner_lo < inner_hi {
        for &(offset, lo, hi) in &runs {
            taps(&mut e, &[offset], lo, inner_lo)?;
            taps(&mut e, &[offset], inner_hi, hi)?;
        }
        let offsets: Vec<i64> = runs.iter().map(|r| r.0).collect();
        for group in offsets.chunks(TAPS_PER_LOOP) {
            taps(&mut e, group, inner_lo, inner_hi)?;
        }
    } else {
        for &(offset, lo, hi) in &runs {
            taps(&mut e, &[offset], lo, hi)?;
        }
    }
    // Average pooling counts the window rows it sums (or, padding counted, those before the
    // end of the bottom padding: a window never starts above the top padding).
    let rows_counted = match p.kind {
        PoolKind::Max => None,
        PoolKind::Avg { .. } => Some(e.var()),
    };
    // `n += 1` (where `cond` holds, if given).
    let count_row = |n: u32, cond: Option<Expr>| {
        let one = match cond {
            Some(cond) => Expr::Select(
                Box::new(cond),
                Box::new(Expr::F(1.0)),
                Box::new(Expr::F(0.0)),
            ),
            None => Expr::F(1.0),
        };
        Stmt::Let {
            var: n,
            value: Expr::Binary(BinaryOp::Add, Box::new(Expr::Var(n)), Box::new(one)),
        }
    };
    let include_pad = matches!(
        p.kind,
        PoolKind::Avg {
            count_include_pad: true
        }
    );
    let mut then = e.close();
    if let (Some(n), false) = (rows_counted, include_pad) {
        then.push(count_row(n, None));
    }
    e.push(Stmt::If {
        cond: within(&Expr::Var(iy), 0, h),
        then,
    });
    if let (Some(n), true) = (rows_counted, include_pad) {
        let end = Expr::I(h + p.pads[2] as i64);
        let before_end = Expr::Index(IndexOp::Lt, Box::new(Expr::Var(iy)), Box::new(end));
        e.push(count_row(n, Some(before_end)));
    }
    let per_ky = e.close();
    if let Some(n) = rows_counted {
        e.push(Stmt::Let {
            var: n,
            value: Expr::F(0.0),
        });
    }
    e.push(Stmt::For {
        var: ky,
        start: Expr::I(0),
        end: Expr::I(kh as i64),
        step: Expr::I(1),
        uniform: false,
        body: per_ky,
    });
    if let Some(n) = rows_counted {
        // Columns counted: per window column, the run of output columns that sees it
        // inside the input (or the right padding); the count is constant between the
        // runs' ends, a loop per stretch divides by it.
        let end_x = if include_pad {
            wd + p.pads[3] as i64
        } else {
            wd
        };
        let seen: Vec<(i64, i64)> = runs
            .iter()
            .map(|&(offset, lo, _)| {
                let (_, hi) = column_range(offset, sx, end_x, ow);
                (if include_pad { 0 } else { lo }, hi)
            })
            .collect();
        let mut cuts: Vec<i64> = seen.iter().flat_map(|&(lo, hi)| [lo, hi]).collect();
        cuts.extend([0, ow as i64]);
        cuts.sort_unstable();
        cuts.dedup();
        for w in cuts.windows(2) {
            let (lo, hi) = (w[0], w[1]);
            if hi <= lo || hi > ow as i64 {
                continue;
            }
            let cols = seen.iter().filter(|&&(a, b)| a <= lo && lo < b).count();
            let divisor = Expr::Binary(
                BinaryOp::Mul,
                Box::new(Expr::Var(n)),
                Box::new(Expr::F(cols as f64)),
            );
            e.push(range(
                lo,
                hi,
                vec![Stmt::Store {
                    buf: y,
                    index: at(Expr::Var(ox)),
                    value: Expr::Binary(BinaryOp::Div, Box::new(load_y()), Box::new(divisor)),
                }],
            ));
        }
    }
    let per_row = e.close();
    e.push(chunk_loop(r, rows, per, per_row));
    let launch = Launch {
        grid: rows.div_ceil(per).max(1),
        block: 1,
    };
    Ok(e.finish(name, launch, precision, ins, y))
}
