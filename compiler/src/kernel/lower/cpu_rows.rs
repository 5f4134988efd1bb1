//! CPU row kernels: each block a contiguous run of whole rows on one thread.

use super::*;

impl Emitter<'_> {
    /// Computes every row op's statistics for the row `prefix`, as block reductions.
    pub(super) fn row_stats(&mut self, prefix: &[Expr], space: &[usize], axis: usize) -> R<()> {
        let tail = space[axis..].to_vec();
        let n = tail.iter().product::<usize>() as f64;
        for id in 0..self.body.nodes.len() {
            let node = self.node(id);
            let x = match node.inputs.first() {
                Some(&x) => x,
                None => continue,
            };
            match &node.op {
                Op::Reduce { kind, .. } => {
                    let kind = *kind;
                    let op = (reduce_op(kind), self.node(x).ty.dtype);
                    let acc = self.block_reduce(prefix, &tail, op, &mut |me, i| me.value(x, i))?;
                    let dtype = self.node(x).ty.dtype;
                    let v = self.bind(finish_reduce(kind, acc, n as usize, dtype));
                    self.stats.insert((id, "reduce"), v);
                }
                Op::Softmax { .. } | Op::LogSoftmax { .. } => {
                    let m = self.block_reduce(
                        prefix,
                        &tail,
                        (ReduceOp::Max, DType::F32),
                        &mut |me, i| me.value(x, i),
                    )?;
                    let s = self.block_reduce(
                        prefix,
                        &tail,
                        (ReduceOp::Sum, DType::F32),
                        &mut |me, i| {
                            let v = me.value(x, i)?;
                            Ok(exp_sub(v, m.clone()))
                        },
                    )?;
                    self.stats.insert((id, "max"), m);
                    self.stats.insert((id, "sum"), s);
                }
                Op::LayerNorm { epsilon, .. } => {
                    let eps = epsilon.0;
                    let sum = self.block_reduce(
                        prefix,
                        &tail,
                        (ReduceOp::Sum, DType::F32),
                        &mut |me, i| me.value(x, i),
                    )?;
                    let mean = self.bind(div_f(sum, n));
                    let sq = self.block_reduce(
                        prefix,
                        &tail,
                        (ReduceOp::Sum, DType::F32),
                        &mut |me, i| {
                            let v = me.value(x, i)?;
                            Ok(square(Expr::Binary(
                                crate::ir::BinaryOp::Sub,
                                Box::new(v),
                                Box::new(mean.clone()),
                            )))
                        },
                    )?;
                    let inv = self.bind(inv_std(div_f(sq, n), eps));
                    self.stats.insert((id, "mean"), mean);
                    self.stats.insert((id, "inv"), inv);
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// A CPU row kernel: each block a contiguous run of whole rows (one thread), statistics by
/// serial passes over the row, then the row's outputs. (GPU row kernels: [`super::rows`].)
pub(super) fn lower_rows(
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
    let out_shape = body.nodes[root].ty.shape.clone();
    let out_n = body.nodes[root].ty.numel();
    let mut e = emitter(body, inputs);
    let row = e.var();
    e.open();
    let prefix = unravel(&Expr::Var(row), &space[..axis]);
    // (Stored exp values are rounded to the output's dtype: only exact for f32 and f64.)
    let softmax_root = matches!(body.nodes[root].op, Op::Softmax { axis: a } if a == axis)
        && matches!(body.nodes[root].ty.dtype, DType::F32 | DType::F64)
        && axis + 1 == space.len()
        && out_shape == space
        && ops.len() == 1;
    if softmax_root {
        // Softmax is the kernel's one row op and its output: exp once per element. Pass 1
        // the max; pass 2 stores exp(x - max) and sums it; pass 3 divides in place.
        let x = body.nodes[root].inputs[0];
        let tail = [len];
        let m = e.block_reduce(&prefix, &tail, (ReduceOp::Max, DType::F32), &mut |me, i| {
            me.value(x, i)
        })?;
        let base = mul(Expr::Var(row), Expr::I(len as i64));
        let sum = e.block_reduce(&prefix, &tail, (ReduceOp::Sum, DType::F32), &mut |me, i| {
            let v = me.value(x, i)?;
            let ex = me.bind(exp_sub(v, m.clone()));
            me.push(Stmt::Store {
                buf: out,
                index: add(base.clone(), i[axis].clone()),
                value: ex.clone(),
            });
            Ok(ex)
        })?;
        let j = e.var();
        let at = add(base.clone(), Expr::Var(j));
        let body_j = vec![Stmt::Store {
            buf: out,
            index: at.clone(),
            value: Expr::Binary(
                crate::ir::BinaryOp::Div,
                Box::new(Expr::Load {
                    buf: out,
                    index: Box::new(at),
                }),
                Box::new(sum),
            ),
        }];
        e.push(Stmt::For {
            var: j,
            start: builtin(Builtin::Thread),
            end: Expr::I(len as i64),
            step: builtin(Builtin::BlockDim),
            uniform: false,
            body: body_j,
        });
    } else {
        e.row_stats(&prefix, &space, axis)?;
    }
    if softmax_root {
        // Written above.
    } else if out_n == rows * len
        && broadcast_shapes(&out_shape, &space).is_some_and(|b| b == space)
    {
        // One output per element of the row: the block's threads share the row.
        let j = e.var();
        e.open();
        let mut idx = prefix.clone();
        idx.extend(unravel(&Expr::Var(j), &space[axis..]));
        let v = e.value(root, &idx)?;
        e.push(Stmt::Store {
            buf: out,
            index: add(mul(Expr::Var(row), Expr::I(len as i64)), Expr::Var(j)),
            value: v,
        });
        let body_j = e.close();
        e.push(Stmt::For {
            var: j,
            start: builtin(Builtin::Thread),
            end: Expr::I(len as i64),
            step: builtin(Builtin::BlockDim),
            uniform: false,
            body: body_j,
        });
    } else if out_n == rows {
        // One output per row (a reduction): thread 0 writes it.
        e.open();
        let mut idx: Vec<Expr> = prefix.clone();
        idx.extend(std::iter::repeat_n(
            Expr::I(0),
            out_shape.len().saturating_sub(prefix.len()),
        ));
        idx.truncate(out_shape.len());
        let v = e.value(root, &idx)?;
        e.push(Stmt::Store {
            buf: out,
            index: Expr::Var(row),
            value: v,
        });
        let then = e.close();
        e.push(Stmt::If {
            cond: Expr::Index(
                IndexOp::Lt,
                Box::new(builtin(Builtin::Thread)),
                Box::new(Expr::I(1)),
            ),
            then,
        });
    } else {
        return Err(LowerError::Unsupported {
            node: name,
            op: format!("row kernel with output {out_shape:?} over rows of {space:?}"),
        });
    }
    let row_body = e.close();
    // Contiguous runs of whole rows, about CPU_CHUNK elements per block.
    let per = (CPU_CHUNK / len.max(1)).max(1);
    e.push(cpu::chunk_loop(row, rows, per, row_body));
    let launch = Launch {
        grid: rows.div_ceil(per).max(1),
        block: 1,
    };
    Ok(e.finish(name, launch, precision, inputs, out))
}
