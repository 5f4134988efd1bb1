//! GPU row kernels. A row kernel computes per-row statistics (reductions, softmax max and
//! sum, layernorm mean and variance) and then the row's outputs. Three layouts, by row
//! length (in elements of the iteration space) and how many row ops the kernel fuses:
//!
//! - **lanes per row** (short rows): a group of `width` lanes of a warp (a power of two, at
//!   most 32) owns a row; statistics are warp-shuffle reductions with no shared memory and no
//!   barrier; a block of [`ROW_BLOCK`] threads does `ROW_BLOCK / width` rows;
//! - **block per row, in registers** (rows up to a few thousand elements): the block's
//!   threads share the row and reduce through shared memory;
//! - **block per row, streaming** (longer rows): one pass over the row per row op computes its
//!   statistics with the online-softmax and Welford merges, and a last pass writes the
//!   outputs.
//!
//! In the first two each lane loads its elements of each row op's input once into
//! registers: statistics and outputs are computed from them, so the row is read from memory
//! once, and variance is the exact two-pass `Σ (x - mean)²` over registers.

use super::{
    add, and, broadcast_shapes, builtin, div, div_f, emitter, exp_sub, finish_reduce, identity_of,
    inv_std, mul, reduce_op, rem, single_row_axis, square, unravel, zero_of, Emitter, LowerError,
    MAX_GRID, R, ROW_BLOCK,
};
use crate::ir::{BinaryOp, Graph, NodeId, Op};
use crate::kernel::ir::{
    Builtin, Combiner, Expr, IndexOp, Kernel, Launch, Precision, ReduceOp, Scope, Stmt,
};

/// Code for one element of a row: (emitter, position in the row, index in the space).
type ElementFn<'f> = dyn FnMut(&mut Emitter, &Expr, &[Expr]) -> R<()> + 'f;

/// Threads of a streaming row block.
const STREAM_BLOCK: usize = 512;

/// How a row kernel's threads share its rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// `width` lanes per row, each holding `per_lane` elements of every row op's input.
    Lanes { width: usize, per_lane: usize },
    /// A block of `threads` per row, each holding `per_thread` elements.
    Block { threads: usize, per_thread: usize },
    /// A block per row reading the row once per row op, then once for the outputs.
    Stream,
}

/// Registers a thread may spend on cached row elements at a block size: the register file
/// (64K) leaves 255 registers per thread up to 256 threads, 128 at 512, 64 at 1024.
fn cache_budget(threads: usize) -> usize {
    match threads {
        0..=256 => 32,
        512 => 16,
        _ => 8,
    }
}

/// The layout for rows of `len` with `row_ops` row ops, each cached value taking `words`
/// 32-bit registers.
fn layout(len: usize, row_ops: usize, words: usize) -> Layout {
    let row_ops = row_ops.max(1) * words;
    let width = len.next_power_of_two().clamp(1, 32);
    let per_lane = len.div_ceil(width).max(1);
    if per_lane * row_ops <= cache_budget(ROW_BLOCK) {
        return Layout::Lanes { width, per_lane };
    }
    for threads in [128, 256, 512, 1024] {
        let per_thread = len.div_ceil(threads);
        if per_thread * row_ops <= cache_budget(threads).min(16) {
            return Layout::Block {
                threads,
                per_thread,
            };
        }
    }
    Layout::Stream
}

/// One element a lane holds: its position `j` in the row, its index in the iteration space,
/// and whether it exists (`None`: always).
struct Slot {
    j: Expr,
    idx: Vec<Expr>,
    valid: Option<Expr>,
}

/// What every layout needs to know about the kernel.
struct Rows<'g> {
    body: &'g Graph,
    root: NodeId,
    out: u32,
    axis: usize,
    space: Vec<usize>,
    rows: usize,
    len: usize,
    /// One output per element of the row (else one per row).
    per_element: bool,
    /// The row ops, in body order.
    ops: Vec<NodeId>,
}

pub(super) fn lt(a: Expr, n: usize) -> Expr {
    Expr::Index(IndexOp::Lt, Box::new(a), Box::new(Expr::I(n as i64)))
}

pub(super) fn both(a: Option<Expr>, b: Option<Expr>) -> Option<Expr> {
    match (a, b) {
        (Some(a), Some(b)) => Some(and(a, b)),
        (a, b) => a.or(b),
    }
}

/// The value of body node `x` at `idx`, computed once into a register (under `valid`; 0
/// where it fails) and remembered for the rest of the scope.
pub(super) fn hold(e: &mut Emitter, x: NodeId, idx: &[Expr], valid: Option<&Expr>) -> R<Expr> {
    let Some(valid) = valid else {
        return e.value(x, idx);
    };
    if let Some(v) = e.recall(x, idx) {
        return Ok(v);
    }
    let var = e.var();
    e.push(Stmt::Let {
        var,
        value: zero_of(e.body.nodes[x].ty.dtype),
    });
    e.open();
    let v = e.value(x, idx)?;
    e.push(Stmt::Let { var, value: v });
    e.close_under(Some(valid.clone()));
    e.remember(x, idx, Expr::Var(var));
    Ok(Expr::Var(var))
}

/// The group of `width` lanes (of [`ROW_BLOCK`]-thread blocks) that owns each of `rows`
/// rows: (row, lane, live). Groups past the last row redo it without storing (`live` is
/// false there), so every lane reaches the warp reductions.
pub(super) fn lane_groups(
    e: &mut Emitter,
    rows: usize,
    width: usize,
) -> (Expr, Expr, Option<Expr>) {
    let per_block = ROW_BLOCK / width;
    let g = e.bind(add(
        mul(builtin(Builtin::Block), Expr::I(per_block as i64)),
        div(builtin(Builtin::Thread), width),
    ));
    let row = e.bind(Expr::Index(
        IndexOp::Min,
        Box::new(g.clone()),
        Box::new(Expr::I(rows.saturating_sub(1) as i64)),
    ));
    let lane = e.bind(rem(builtin(Builtin::Thread), width));
    let live = (!rows.is_multiple_of(per_block)).then(|| lt(g, rows));
    (row, lane, live)
}

/// One step of online softmax at a new value `x` with running max `m`: (the new max `t`,
/// the factor `exp(m - t)` rescaling what was summed so far, and `x`'s term `exp(x - t)`),
/// measured from 0 while every value seen is -inf (so an empty or all -inf prefix sums 0).
/// The caller updates its sums, then sets `m = t`.
pub(super) fn online_step(e: &mut Emitter, m: u32, x: Expr) -> (Expr, Expr, Expr) {
    let t = e.bind(Expr::Combine(
        ReduceOp::Max,
        Box::new(Expr::Var(m)),
        Box::new(x.clone()),
    ));
    let base = e.bind(Expr::Select(
        Box::new(Expr::Binary(
            BinaryOp::Equal,
            Box::new(t.clone()),
            Box::new(Expr::F(f64::NEG_INFINITY)),
        )),
        Box::new(Expr::F(0.0)),
        Box::new(t.clone()),
    ));
    let c = e.bind(exp_sub(Expr::Var(m), base.clone()));
    let p = e.bind(exp_sub(x, base));
    (t, c, p)
}

/// Lowers a row kernel along `axis` for the GPU.
pub(super) fn lower_rows_gpu(
    body: &Graph,
    inputs: &[u32],
    out: u32,
    axis: usize,
    name: String,
    precision: Precision,
) -> R<Kernel> {
    let root = body.outputs[0].1;
    let ops = row_ops(body);
    let space = row_space(body, &ops, &name)?;
    let rows: usize = space[..axis].iter().product();
    let len: usize = space[axis..].iter().product();
    let out_shape = &body.nodes[root].ty.shape;
    let out_n = body.nodes[root].ty.numel();
    let per_element =
        out_n == rows * len && broadcast_shapes(out_shape, &space).is_some_and(|b| b == space);
    if !per_element && out_n != rows {
        return Err(LowerError::Unsupported {
            node: name,
            op: format!("row kernel with output {out_shape:?} over rows of {space:?}"),
        });
    }
    let r = Rows {
        body,
        root,
        out,
        axis,
        space,
        rows,
        len,
        per_element,
        ops,
    };
    let mut e = emitter(body, inputs);
    // An f64 value takes two registers, and f64 math (exp, log) many more: f64 rows cache
    // a quarter as many elements.
    let words = match precision {
        Precision::F32 => 1,
        Precision::F64 => 4,
    };
    let launch = match layout(len, r.ops.len(), words) {
        // No rows: nothing to compute.
        _ if rows == 0 => Launch {
            grid: 1,
            block: ROW_BLOCK,
        },
        Layout::Lanes { width, per_lane } => {
            let (row, lane, live) = lane_groups(&mut e, rows, width);
            r.cached(&mut e, row, lane, width, Scope::Warp(width), per_lane, live)?;
            Launch {
                grid: rows.div_ceil(ROW_BLOCK / width).max(1),
                block: ROW_BLOCK,
            }
        }
        Layout::Block {
            threads,
            per_thread,
        } => {
            let row = e.var();
            e.open();
            let lane = builtin(Builtin::Thread);
            r.cached(
                &mut e,
                Expr::Var(row),
                lane,
                threads,
                Scope::Block,
                per_thread,
                None,
            )?;
            r.row_loop(&mut e, row);
            Launch {
                grid: rows.clamp(1, MAX_GRID),
                block: threads,
            }
        }
        Layout::Stream => {
            let row = e.var();
            e.open();
            r.streamed(&mut e, Expr::Var(row))?;
            r.row_loop(&mut e, row);
            Launch {
                grid: rows.clamp(1, MAX_GRID),
                block: STREAM_BLOCK,
            }
        }
    };
    Ok(e.finish(name, launch, precision, inputs, out))
}

impl Rows<'_> {
    /// Closes the open row body into a block-uniform grid-stride loop over the rows.
    fn row_loop(&self, e: &mut Emitter, row: u32) {
        let body = e.close();
        e.push(Stmt::For {
            var: row,
            start: builtin(Builtin::Block),
            end: Expr::I(self.rows as i64),
            step: builtin(Builtin::GridDim),
            uniform: true,
            body,
        });
    }

    fn prefix(&self, row: &Expr) -> Vec<Expr> {
        unravel(row, &self.space[..self.axis])
    }

    fn element(&self, prefix: &[Expr], j: Expr) -> Vec<Expr> {
        let mut idx = prefix.to_vec();
        idx.extend(unravel(&j, &self.space[self.axis..]));
        idx
    }

    /// The row held in registers: lane `lane` of `lanes` holds elements `lane + k·lanes`.
    #[allow(clippy::too_many_arguments)]
    fn cached(
        &self,
        e: &mut Emitter,
        row: Expr,
        lane: Expr,
        lanes: usize,
        scope: Scope,
        per: usize,
        live: Option<Expr>,
    ) -> R<()> {
        let prefix = self.prefix(&row);
        let slots: Vec<Slot> = (0..per)
            .map(|k| {
                let j = e.bind(add(lane.clone(), Expr::I((k * lanes) as i64)));
                Slot {
                    idx: self.element(&prefix, j.clone()),
                    valid: ((k + 1) * lanes > self.len).then(|| lt(j.clone(), self.len)),
                    j,
                }
            })
            .collect();
        let n = self.len as f64;
        for &id in &self.ops {
            let x = self.body.nodes[id].inputs[0];
            let xs: Vec<Expr> = slots
                .iter()
                .map(|s| hold(e, x, &s.idx, s.valid.as_ref()))
                .collect::<R<_>>()?;
            // Integer reductions accumulate in i64 (softmax and layernorm inputs are floats).
            let dtype = self.body.nodes[x].ty.dtype;
            let reduce = |e: &mut Emitter, op: ReduceOp, f: &dyn Fn(&Expr) -> Expr| {
                let acc = e.var();
                let identity = identity_of(op, dtype);
                e.push(Stmt::Let {
                    var: acc,
                    value: identity.clone(),
                });
                for (s, x) in slots.iter().zip(&xs) {
                    let v = f(x);
                    let v = match &s.valid {
                        Some(c) => Expr::Select(
                            Box::new(c.clone()),
                            Box::new(v),
                            Box::new(identity.clone()),
                        ),
                        None => v,
                    };
                    e.push(Stmt::Let {
                        var: acc,
                        value: Expr::Combine(op, Box::new(Expr::Var(acc)), Box::new(v)),
                    });
                }
                e.push(Stmt::Reduce {
                    scope,
                    combiner: Combiner::Op(op),
                    vars: vec![acc],
                });
                Expr::Var(acc)
            };
            match &self.body.nodes[id].op {
                Op::Reduce { kind, .. } => {
                    let acc = reduce(e, reduce_op(*kind), &|x| x.clone());
                    let dtype = self.body.nodes[x].ty.dtype;
                    let v = e.bind(finish_reduce(*kind, acc, self.len, dtype));
                    e.stats.insert((id, "reduce"), v);
                }
                Op::Softmax { .. } | Op::LogSoftmax { .. } => {
                    let m = reduce(e, ReduceOp::Max, &|x| x.clone());
                    let s = reduce(e, ReduceOp::Sum, &|x| exp_sub(x.clone(), m.clone()));
                    e.stats.insert((id, "max"), m);
                    e.stats.insert((id, "sum"), s);
                }
                Op::LayerNorm { epsilon, .. } => {
                    let sum = reduce(e, ReduceOp::Sum, &|x| x.clone());
                    let mean = e.bind(div_f(sum, n));
                    let sq = reduce(e, ReduceOp::Sum, &|x| {
                        square(Expr::Binary(
                            BinaryOp::Sub,
                            Box::new(x.clone()),
                            Box::new(mean.clone()),
                        ))
                    });
                    let inv = e.bind(inv_std(div_f(sq, n), epsilon.0));
                    e.stats.insert((id, "mean"), mean);
                    e.stats.insert((id, "inv"), inv);
                }
                _ => unreachable!("row ops are reductions and normalizations"),
            }
        }
        if self.per_element {
            for s in &slots {
                let cond = both(s.valid.clone(), live.clone());
                self.store(e, &row, s.j.clone(), &s.idx, cond)?;
            }
        } else {
            let first = lt(lane, 1);
            let cond = match live {
                Some(live) => and(first, live),
                None => first,
            };
            self.store_row(e, &row, &prefix, cond)?;
        }
        Ok(())
    }

    /// Stores the root's value at row element `j` (index `idx`), under `cond`.
    fn store(
        &self,
        e: &mut Emitter,
        row: &Expr,
        j: Expr,
        idx: &[Expr],
        cond: Option<Expr>,
    ) -> R<()> {
        e.open();
        let v = e.value(self.root, idx)?;
        e.push(Stmt::Store {
            buf: self.out,
            index: add(mul(row.clone(), Expr::I(self.len as i64)), j),
            value: v,
        });
        e.close_under(cond);
        Ok(())
    }

    /// Stores the root's one value of the row, under `cond`.
    fn store_row(&self, e: &mut Emitter, row: &Expr, prefix: &[Expr], cond: Expr) -> R<()> {
        let rank = self.body.nodes[self.root].ty.rank();
        let mut idx: Vec<Expr> = prefix.to_vec();
        idx.extend(std::iter::repeat_n(
            Expr::I(0),
            rank.saturating_sub(prefix.len()),
        ));
        idx.truncate(rank);
        e.open();
        let v = e.value(self.root, &idx)?;
        e.push(Stmt::Store {
            buf: self.out,
            index: row.clone(),
            value: v,
        });
        e.close_under(Some(cond));
        Ok(())
    }

    /// The row streamed from memory by the block: one pass per row op for its statistics
    /// (one-pass online softmax and Welford), then one pass writing the outputs.
    fn streamed(&self, e: &mut Emitter, row: Expr) -> R<()> {
        let prefix = self.prefix(&row);
        let n = self.len as f64;
        let pass = |e: &mut Emitter, f: &mut ElementFn| {
            let j = e.var();
            e.open();
            let idx = self.element(&prefix, Expr::Var(j));
            f(e, &Expr::Var(j), &idx)?;
            let body = e.close();
            e.push(Stmt::For {
                var: j,
                start: builtin(Builtin::Thread),
                end: Expr::I(self.len as i64),
                step: builtin(Builtin::BlockDim),
                uniform: false,
                body,
            });
            Ok::<_, LowerError>(())
        };
        let bin = |op, a: Expr, b: Expr| Expr::Binary(op, Box::new(a), Box::new(b));
        for &id in &self.ops {
            let x = self.body.nodes[id].inputs[0];
            match &self.body.nodes[id].op {
                Op::Reduce { kind, .. } => {
                    let op = reduce_op(*kind);
                    let acc = e.var();
                    e.push(Stmt::Let {
                        var: acc,
                        value: identity_of(op, self.body.nodes[x].ty.dtype),
                    });
                    pass(e, &mut |e, _, idx| {
                        let v = e.value(x, idx)?;
                        e.push(Stmt::Let {
                            var: acc,
                            value: Expr::Combine(op, Box::new(Expr::Var(acc)), Box::new(v)),
                        });
                        Ok(())
                    })?;
                    e.push(Stmt::Reduce {
                        scope: Scope::Block,
                        combiner: Combiner::Op(op),
                        vars: vec![acc],
                    });
                    let dtype = self.body.nodes[x].ty.dtype;
                    let v = e.bind(finish_reduce(*kind, Expr::Var(acc), self.len, dtype));
                    e.stats.insert((id, "reduce"), v);
                }
                Op::Softmax { .. } | Op::LogSoftmax { .. } => {
                    let (m, s) = (e.start(f64::NEG_INFINITY), e.start(0.0));
                    pass(e, &mut |e, _, idx| {
                        let v = e.value(x, idx)?;
                        let (t, c, p) = online_step(e, m, v);
                        let old = bin(BinaryOp::Mul, Expr::Var(s), c);
                        e.push(Stmt::Let {
                            var: s,
                            value: bin(BinaryOp::Add, old, p),
                        });
                        e.push(Stmt::Let { var: m, value: t });
                        Ok(())
                    })?;
                    e.push(Stmt::Reduce {
                        scope: Scope::Block,
                        combiner: Combiner::MaxSum,
                        vars: vec![m, s],
                    });
                    e.stats.insert((id, "max"), Expr::Var(m));
                    e.stats.insert((id, "sum"), Expr::Var(s));
                }
                Op::LayerNorm { epsilon, .. } => {
                    let (c, mean, m2) = (e.start(0.0), e.start(0.0), e.start(0.0));
                    pass(e, &mut |e, _, idx| {
                        let v = e.value(x, idx)?;
                        e.push(Stmt::Let {
                            var: c,
                            value: bin(BinaryOp::Add, Expr::Var(c), Expr::F(1.0)),
                        });
                        let d = e.bind(bin(BinaryOp::Sub, v.clone(), Expr::Var(mean)));
                        e.push(Stmt::Let {
                            var: mean,
                            value: bin(
                                BinaryOp::Add,
                                Expr::Var(mean),
                                bin(BinaryOp::Div, d.clone(), Expr::Var(c)),
                            ),
                        });
                        e.push(Stmt::Let {
                            var: m2,
                            value: bin(
                                BinaryOp::Add,
                                Expr::Var(m2),
                                bin(BinaryOp::Mul, d, bin(BinaryOp::Sub, v, Expr::Var(mean))),
                            ),
                        });
                        Ok(())
                    })?;
                    e.push(Stmt::Reduce {
                        scope: Scope::Block,
                        combiner: Combiner::Welford,
                        vars: vec![c, mean, m2],
                    });
                    let inv = e.bind(inv_std(div_f(Expr::Var(m2), n), epsilon.0));
                    e.stats.insert((id, "mean"), Expr::Var(mean));
                    e.stats.insert((id, "inv"), inv);
                }
                _ => unreachable!("row ops are reductions and normalizations"),
            }
        }
        if self.per_element {
            pass(e, &mut |e, j, idx| {
                let v = e.value(self.root, idx)?;
                e.push(Stmt::Store {
                    buf: self.out,
                    index: add(mul(row.clone(), Expr::I(self.len as i64)), j.clone()),
                    value: v,
                });
                Ok(())
            })?;
        } else {
            self.store_row(e, &row, &prefix, lt(builtin(Builtin::Thread), 1))?;
        }
        Ok(())
    }
}

/// The row ops of a body (reductions and normalizations along trailing dims), in order.
pub(super) fn row_ops(body: &Graph) -> Vec<NodeId> {
    (0..body.nodes.len())
        .filter(|&id| {
            let n = &body.nodes[id];
            let rank = n.inputs.first().map(|&a| body.nodes[a].ty.rank());
            rank.and_then(|r| single_row_axis(&n.op, r)).is_some()
        })
        .collect()
}

/// A row kernel's iteration space: the input shape of its first row op.
pub(super) fn row_space(body: &Graph, ops: &[NodeId], name: &str) -> R<Vec<usize>> {
    let first = *ops.first().ok_or_else(|| LowerError::Unsupported {
        node: name.to_string(),
        op: "row kernel without a row op".into(),
    })?;
    Ok(body.nodes[body.nodes[first].inputs[0]].ty.shape.clone())
}
