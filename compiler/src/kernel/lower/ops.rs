//! Body emission per op: the value of each IR op at an output index, as loads and
//! index arithmetic over its inputs (convolution and pooling windows, gathers, scatters,
//! concatenation, padding, reductions, normalizations, matrix products).

use super::*;

impl Emitter<'_> {
    pub(super) fn compute(&mut self, id: NodeId, idx: &[Expr]) -> R<Expr> {
        let node = self.node(id);
        let shape = &node.ty.shape;
        Ok(match &node.op {
            Op::Constant(t) if t.numel() == 1 => immediate(t),
            Op::Input => {
                let k = self
                    .body
                    .inputs
                    .iter()
                    .position(|&i| i == id)
                    .expect("listed input");
                let (buf, index) = (self.inputs[k], ravel(idx, shape));
                match self.lane_load(buf, &index) {
                    Some(v) => v,
                    None => Expr::Load {
                        buf,
                        index: Box::new(index),
                    },
                }
            }
            Op::Unary(u) => Expr::Unary(*u, Box::new(self.arg(id, 0, idx)?)),
            Op::Binary(b) => {
                let (x, y) = (self.arg(id, 0, idx)?, self.arg(id, 1, idx)?);
                Expr::Binary(*b, Box::new(x), Box::new(y))
            }
            Op::Where => {
                let (c, a, b) = (
                    self.arg(id, 0, idx)?,
                    self.arg(id, 1, idx)?,
                    self.arg(id, 2, idx)?,
                );
                Expr::Select(Box::new(c), Box::new(a), Box::new(b))
            }
            Op::Cast(d) => Expr::Cast(*d, Box::new(self.arg(id, 0, idx)?)),
            Op::Broadcast(_) => self.arg(id, 0, idx)?,
            Op::Transpose(perm) => {
                let mut inner = vec![Expr::I(0); perm.len()];
                for (i, &p) in perm.iter().enumerate() {
                    inner[p] = idx[i].clone();
                }
                self.value(node.inputs[0], &inner)?
            }
            Op::Reshape(_) => {
                let x = node.inputs[0];
                let flat = ravel(idx, shape);
                let inner = unravel(&flat, &self.node(x).ty.shape);
                self.value(x, &inner)?
            }
            Op::Slice { starts, steps, .. } => {
                let inner: Vec<Expr> = idx
                    .iter()
                    .enumerate()
                    .map(|(d, i)| add(Expr::I(starts[d] as i64), mul(i.clone(), Expr::I(steps[d]))))
                    .collect();
                self.value(node.inputs[0], &inner)?
            }
            Op::Reduce {
                kind,
                axes,
                keepdims,
            } => self.reduce(id, *kind, axes, *keepdims, idx)?,
            Op::Softmax { axis } | Op::LogSoftmax { axis } => {
                let log = matches!(node.op, Op::LogSoftmax { .. });
                let (m, s) = self.softmax_stats(id, *axis, idx)?;
                let x = self.value(node.inputs[0], idx)?;
                let shifted = Expr::Binary(crate::ir::BinaryOp::Sub, Box::new(x), Box::new(m));
                if log {
                    let ls = Expr::Unary(UnaryOp::Log, Box::new(s));
                    Expr::Binary(crate::ir::BinaryOp::Sub, Box::new(shifted), Box::new(ls))
                } else {
                    let e = Expr::Unary(UnaryOp::Exp, Box::new(shifted));
                    Expr::Binary(crate::ir::BinaryOp::Div, Box::new(e), Box::new(s))
                }
            }
            Op::LayerNorm { axis, .. } => {
                let (mean, inv) = self.layernorm_stats(id, *axis, idx)?;
                let x = self.value(node.inputs[0], idx)?;
                let tail = &idx[*axis..];
                use crate::ir::BinaryOp as B;
                let c = Expr::Binary(B::Sub, Box::new(x), Box::new(mean));
                let n = Expr::Binary(B::Mul, Box::new(c), Box::new(inv));
                let scale = self.param(node.inputs[1], tail)?;
                let mut y = Expr::Binary(B::Mul, Box::new(n), Box::new(scale));
                if let Some(&b) = node.inputs.get(2) {
                    let bias = self.param(b, tail)?;
                    y = Expr::Binary(B::Add, Box::new(y), Box::new(bias));
                }
                y
            }
            Op::MatMul => self.matmul(id, idx)?,
            Op::Conv(c) => self.conv(id, c, idx)?,
            Op::Pool(p) => self.pool(id, p, idx)?,
            Op::Gather { axis } => self.gather(id, *axis, idx)?,
            Op::GatherElements { axis } => {
                let (x, ind) = (node.inputs[0], node.inputs[1]);
                let n = self.node(x).ty.shape[*axis];
                let i = self.value(ind, idx)?;
                let mut inner = idx.to_vec();
                inner[*axis] = self.checked_index(id, *axis, n, i);
                self.load(x, &inner)?
            }
            Op::GatherND { batch_dims } => self.gather_nd(id, *batch_dims, idx)?,
            Op::ScatterND { reduction } => self.scatter_nd(id, *reduction, idx)?,
            Op::Concat { axis } => self.concat(id, *axis, idx)?,
            Op::Pad { pads, mode } => self.pad(id, pads, *mode, idx)?,
            Op::Trilu { upper, k } => {
                let r = idx.len();
                let diff = Expr::Index(
                    IndexOp::Sub,
                    Box::new(idx[r - 1].clone()),
                    Box::new(idx[r - 2].clone()),
                );
                let keep = if *upper {
                    Expr::Index(IndexOp::Ge, Box::new(diff), Box::new(Expr::I(*k)))
                } else {
                    Expr::Index(IndexOp::Ge, Box::new(Expr::I(*k)), Box::new(diff))
                };
                let x = self.value(node.inputs[0], idx)?;
                Expr::Select(
                    Box::new(keep),
                    Box::new(x),
                    Box::new(zero_of(node.ty.dtype)),
                )
            }
            Op::ArgReduce {
                max,
                axis,
                keepdims,
                select_last,
            } => self.arg_reduce(id, *max, *axis, *keepdims, *select_last, idx)?,
            Op::CumSum {
                axis,
                exclusive,
                reverse,
            } => {
                let x = node.inputs[0];
                let n = shape[*axis];
                let i = idx[*axis].clone();
                let (excl, rev) = (*exclusive, *reverse);
                let idx = idx.to_vec();
                let dtype = node.ty.dtype;
                self.serial_reduce(&[], &[n], (ReduceOp::Sum, dtype), &mut |me, j| {
                    let j = j[0].clone();
                    // Included: j <= i (j < i exclusive), or j >= i (j > i) in reverse.
                    let take = match (rev, excl) {
                        (false, false) => {
                            Expr::Index(IndexOp::Ge, Box::new(i.clone()), Box::new(j.clone()))
                        }
                        (false, true) => {
                            Expr::Index(IndexOp::Lt, Box::new(j.clone()), Box::new(i.clone()))
                        }
                        (true, false) => {
                            Expr::Index(IndexOp::Ge, Box::new(j.clone()), Box::new(i.clone()))
                        }
                        (true, true) => {
                            Expr::Index(IndexOp::Lt, Box::new(i.clone()), Box::new(j.clone()))
                        }
                    };
                    let mut at = idx.clone();
                    at[*axis] = j;
                    let v = me.value(x, &at)?;
                    Ok(Expr::Select(
                        Box::new(take),
                        Box::new(v),
                        Box::new(zero_of(dtype)),
                    ))
                })?
            }
            _ => return Err(self.unsupported(id)),
        })
    }

    pub(super) fn conv(&mut self, id: NodeId, c: &crate::ir::Conv2d, idx: &[Expr]) -> R<Expr> {
        let node = self.node(id);
        let (x, w) = (node.inputs[0], node.inputs[1]);
        let bias = node.inputs.get(2).copied();
        let xs = self.node(x).ty.shape.clone();
        let ws = self.node(w).ty.shape.clone();
        let (cig, kh, kw) = (ws[1], ws[2], ws[3]);
        let cog = ws[0] / c.group;
        let group = div(idx[1].clone(), cog);
        let idx = idx.to_vec();
        let c = c.clone();
        let acc = self.serial_reduce(
            &[],
            &[cig, kh, kw],
            (ReduceOp::Sum, DType::F32),
            &mut |me, j| {
                let ic = add(mul(group.clone(), Expr::I(cig as i64)), j[0].clone());
                let (iy, in_y) = Self::window_pos(
                    &idx[2],
                    &j[1],
                    c.strides[0],
                    c.dilations[0],
                    c.pads[0],
                    xs[2],
                );
                let (ix, in_x) = Self::window_pos(
                    &idx[3],
                    &j[2],
                    c.strides[1],
                    c.dilations[1],
                    c.pads[1],
                    xs[3],
                );
                let xv = me.guarded(
                    and(in_y, in_x),
                    x,
                    &[idx[0].clone(), ic, iy, ix],
                    Expr::F(0.0),
                )?;
                let wv = me.value(
                    w,
                    &[idx[1].clone(), j[0].clone(), j[1].clone(), j[2].clone()],
                )?;
                Ok(Expr::Binary(
                    crate::ir::BinaryOp::Mul,
                    Box::new(xv),
                    Box::new(wv),
                ))
            },
        )?;
        Ok(match bias {
            Some(b) => {
                let bv = self.value(b, &[idx[1].clone()])?;
                Expr::Binary(crate::ir::BinaryOp::Add, Box::new(acc), Box::new(bv))
            }
            None => acc,
        })
    }

    pub(super) fn pool(&mut self, id: NodeId, p: &crate::ir::Pool2d, idx: &[Expr]) -> R<Expr> {
        use crate::ir::PoolKind;
        let x = self.node(id).inputs[0];
        let xs = self.node(x).ty.shape.clone();
        let idx = idx.to_vec();
        let p = p.clone();
        let at = |j: &[Expr]| {
            let (iy, in_y) = Self::window_pos(
                &idx[2],
                &j[0],
                p.strides[0],
                p.dilations[0],
                p.pads[0],
                xs[2],
            );
            let (ix, in_x) = Self::window_pos(
                &idx[3],
                &j[1],
                p.strides[1],
                p.dilations[1],
                p.pads[1],
                xs[3],
            );
            (vec![idx[0].clone(), idx[1].clone(), iy, ix], in_y, in_x)
        };
        Ok(match p.kind {
            PoolKind::Max => {
                self.serial_reduce(&[], &p.kernel, (ReduceOp::Max, DType::F32), &mut |me, j| {
                    let (i, in_y, in_x) = at(j);
                    me.guarded(and(in_y, in_x), x, &i, Expr::F(f64::NEG_INFINITY))
                })?
            }
            PoolKind::Avg { count_include_pad } => {
                let sum = self.serial_reduce(
                    &[],
                    &p.kernel,
                    (ReduceOp::Sum, DType::F32),
                    &mut |me, j| {
                        let (i, in_y, in_x) = at(j);
                        me.guarded(and(in_y, in_x), x, &i, Expr::F(0.0))
                    },
                )?;
                // Positions counted: inside the input, or (count_include_pad) inside the
                // explicit padding, never the ceil-mode overhang.
                let count = self.serial_reduce(
                    &[],
                    &p.kernel,
                    (ReduceOp::Sum, DType::F32),
                    &mut |_, j| {
                        let (i, in_y, in_x) = at(j);
                        let cond = if count_include_pad {
                            and(
                                Expr::Index(
                                    IndexOp::Lt,
                                    Box::new(i[2].clone()),
                                    Box::new(Expr::I((xs[2] + p.pads[2]) as i64)),
                                ),
                                Expr::Index(
                                    IndexOp::Lt,
                                    Box::new(i[3].clone()),
                                    Box::new(Expr::I((xs[3] + p.pads[3]) as i64)),
                                ),
                            )
                        } else {
                            and(in_y, in_x)
                        };
                        Ok(Expr::Select(
                            Box::new(cond),
                            Box::new(Expr::F(1.0)),
                            Box::new(Expr::F(0.0)),
                        ))
                    },
                )?;
                Expr::Binary(crate::ir::BinaryOp::Div, Box::new(sum), Box::new(count))
            }
        })
    }

    pub(super) fn gather(&mut self, id: NodeId, axis: usize, idx: &[Expr]) -> R<Expr> {
        let node = self.node(id);
        let (x, ind) = (node.inputs[0], node.inputs[1]);
        let n = self.node(x).ty.shape[axis];
        let ir = self.node(ind).ty.rank();
        let i = self.value(ind, &idx[axis..axis + ir])?;
        let mut inner = idx[..axis].to_vec();
        inner.push(self.checked_index(id, axis, n, i));
        inner.extend_from_slice(&idx[axis + ir..]);
        self.load(x, &inner)
    }

    /// The data dims that row `lead` of node `id`'s ND indices `ind` addresses (its last dim
    /// read at every coordinate, checked against `dims`, data dims `first..`; negative ones
    /// counted from the end).
    pub(super) fn nd_coords(
        &mut self,
        id: NodeId,
        ind: NodeId,
        lead: &[Expr],
        first: usize,
        dims: &[usize],
    ) -> R<Vec<Expr>> {
        let mut coords = Vec::with_capacity(dims.len());
        for (k, &n) in dims.iter().enumerate() {
            let mut at = lead.to_vec();
            at.push(Expr::I(k as i64));
            let c = self.value(ind, &at)?;
            coords.push(self.checked_index(id, first + k, n, c));
        }
        Ok(coords)
    }

    pub(super) fn gather_nd(&mut self, id: NodeId, batch: usize, idx: &[Expr]) -> R<Expr> {
        let node = self.node(id);
        let (x, ind) = (node.inputs[0], node.inputs[1]);
        let xs = self.node(x).ty.shape.clone();
        let q = self.node(ind).ty.rank();
        let m = self.node(ind).ty.shape[q - 1];
        let mut inner = idx[..batch].to_vec();
        inner.extend(self.nd_coords(id, ind, &idx[..q - 1], batch, &xs[batch..batch + m])?);
        inner.extend_from_slice(&idx[q - 1..]);
        self.load(x, &inner)
    }

    /// `acc = data[p]; for each update row u (in order): if indices[u] addresses p:
    /// acc = combine(acc, updates[u, ...])`, serially in this thread.
    pub(super) fn scatter_nd(
        &mut self,
        id: NodeId,
        reduction: ScatterReduction,
        idx: &[Expr],
    ) -> R<Expr> {
        use crate::ir::BinaryOp as B;
        let node = self.node(id);
        let (x, ind, upd) = (node.inputs[0], node.inputs[1], node.inputs[2]);
        let xs = self.node(x).ty.shape.clone();
        let is = self.node(ind).ty.shape.clone();
        let (lead, m) = (&is[..is.len() - 1], is[is.len() - 1]);
        let start = self.value(x, idx)?;
        let acc = self.var();
        self.push(Stmt::Let {
            var: acc,
            value: start,
        });
        let j = self.var();
        self.open();
        let row = unravel(&Expr::Var(j), lead);
        let coords = self.nd_coords(id, ind, &row, 0, &xs[..m])?;
        let hit = coords
            .into_iter()
            .zip(idx)
            .map(|(c, i)| Expr::Index(IndexOp::Eq, Box::new(c), Box::new(i.clone())))
            .reduce(|a, b| Expr::Index(IndexOp::And, Box::new(a), Box::new(b)))
            .expect("m >= 1");
        let mut at = row;
        at.extend_from_slice(&idx[m..]);
        let u = self.value(upd, &at)?;
        let old = Box::new(Expr::Var(acc));
        let new = match reduction {
            ScatterReduction::None => u,
            ScatterReduction::Add => Expr::Binary(B::Add, old.clone(), Box::new(u)),
            ScatterReduction::Mul => Expr::Binary(B::Mul, old.clone(), Box::new(u)),
            ScatterReduction::Max => Expr::Binary(B::Max, old.clone(), Box::new(u)),
            ScatterReduction::Min => Expr::Binary(B::Min, old.clone(), Box::new(u)),
        };
        self.push(Stmt::Let {
            var: acc,
            value: Expr::Select(Box::new(hit), Box::new(new), old),
        });
        let body = self.close();
        self.push(Stmt::For {
            var: j,
            start: Expr::I(0),
            end: Expr::I(lead.iter().product::<usize>() as i64),
            step: Expr::I(1),
            uniform: false,
            body,
        });
        Ok(Expr::Var(acc))
    }

    pub(super) fn concat(&mut self, id: NodeId, axis: usize, idx: &[Expr]) -> R<Expr> {
        let inputs = self.node(id).inputs.clone();
        // Last input first: each earlier one takes over below its end offset.
        let mut offsets = Vec::new();
        let mut off = 0;
        for &i in &inputs {
            offsets.push(off);
            off += self.node(i).ty.shape[axis];
        }
        let total = off;
        let mut e: Option<Expr> = None;
        for (k, &i) in inputs.iter().enumerate().rev() {
            let n = self.node(i).ty.shape[axis];
            if n == 0 {
                // An empty part holds no element (and has no position to compute at).
                continue;
            }
            let mut at = idx.to_vec();
            at[axis] = Expr::Index(
                IndexOp::Sub,
                Box::new(idx[axis].clone()),
                Box::new(Expr::I(offsets[k] as i64)),
            );
            // A kernel input is loaded in its branch only; a computed part (a fused
            // concatenation of computed values: rotary embedding's rotate-half) is computed
            // at its position clamped into range (every part is evaluated; the select keeps
            // the one whose range holds the index).
            let l = if self.body.inputs.contains(&i) || matches!(self.node(i).op, Op::Constant(_)) {
                self.load(i, &at)?
            } else {
                let mut a = at[axis].clone();
                if offsets[k] > 0 {
                    let low = Expr::Index(IndexOp::Min, Box::new(a.clone()), Box::new(Expr::I(0)));
                    a = Expr::Index(IndexOp::Sub, Box::new(a), Box::new(low));
                }
                if offsets[k] + n < total {
                    a = Expr::Index(IndexOp::Min, Box::new(a), Box::new(Expr::I(n as i64 - 1)));
                }
                at[axis] = a;
                self.value(i, &at)?
            };
            e = Some(match e {
                None => l,
                Some(rest) => {
                    let end = offsets[k] + self.node(i).ty.shape[axis];
                    let here = Expr::Index(
                        IndexOp::Lt,
                        Box::new(idx[axis].clone()),
                        Box::new(Expr::I(end as i64)),
                    );
                    Expr::Select(Box::new(here), Box::new(l), Box::new(rest))
                }
            });
        }
        e.ok_or_else(|| self.unsupported(id))
    }

    pub(super) fn pad(
        &mut self,
        id: NodeId,
        pads: &[(i64, i64)],
        mode: crate::ir::PadMode,
        idx: &[Expr],
    ) -> R<Expr> {
        use crate::ir::PadMode;
        let x = self.node(id).inputs[0];
        let xs = self.node(x).ty.shape.clone();
        let mut inner = Vec::new();
        let mut inside = Expr::I(1);
        for (d, i) in idx.iter().enumerate() {
            let p = Expr::Index(
                IndexOp::Sub,
                Box::new(i.clone()),
                Box::new(Expr::I(pads[d].0)),
            );
            let n = xs[d] as i64;
            match mode {
                PadMode::Constant(_) => {
                    inside = and(
                        inside,
                        and(
                            Expr::Index(IndexOp::Ge, Box::new(p.clone()), Box::new(Expr::I(0))),
                            Expr::Index(IndexOp::Lt, Box::new(p.clone()), Box::new(Expr::I(n))),
                        ),
                    );
                    inner.push(p);
                }
                PadMode::Edge => {
                    // clamp(p, 0, n - 1)
                    let lo = Expr::Select(
                        Box::new(Expr::Index(
                            IndexOp::Lt,
                            Box::new(p.clone()),
                            Box::new(Expr::I(0)),
                        )),
                        Box::new(Expr::I(0)),
                        Box::new(p),
                    );
                    inner.push(Expr::Select(
                        Box::new(Expr::Index(
                            IndexOp::Ge,
                            Box::new(lo.clone()),
                            Box::new(Expr::I(n)),
                        )),
                        Box::new(Expr::I(n - 1)),
                        Box::new(lo),
                    ));
                }
                PadMode::Wrap => inner.push(pos_rem(p, n)),
                PadMode::Reflect if n == 1 => inner.push(Expr::I(0)),
                PadMode::Reflect => {
                    // q = p mod 2(n-1); q < n ? q : 2(n-1) - q
                    let period = 2 * (n - 1);
                    let q = pos_rem(p, period);
                    let back =
                        Expr::Index(IndexOp::Sub, Box::new(Expr::I(period)), Box::new(q.clone()));
                    inner.push(Expr::Select(
                        Box::new(Expr::Index(
                            IndexOp::Lt,
                            Box::new(q.clone()),
                            Box::new(Expr::I(n)),
                        )),
                        Box::new(q),
                        Box::new(back),
                    ));
                }
            }
        }
        match mode {
            PadMode::Constant(v) => self.guarded(inside, x, &inner, Expr::F(v.0)),
            _ => self.load(x, &inner),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn arg_reduce(
        &mut self,
        id: NodeId,
        max: bool,
        axis: usize,
        keepdims: bool,
        last: bool,
        idx: &[Expr],
    ) -> R<Expr> {
        let x = self.node(id).inputs[0];
        let n = self.node(x).ty.shape[axis];
        let mut at: Vec<Expr> = idx.to_vec();
        if keepdims {
            at[axis] = Expr::I(0);
        } else {
            at.insert(axis, Expr::I(0));
        }
        let first = self.value(x, &at)?;
        let (best, arg) = (self.var(), self.var());
        self.push(Stmt::Let {
            var: best,
            value: first,
        });
        self.push(Stmt::Let {
            var: arg,
            value: Expr::I(0),
        });
        self.serial_loop(n, &mut |me, j| {
            let mut a = at.clone();
            a[axis] = j.clone();
            let v = me.value(x, &a)?;
            use crate::ir::BinaryOp as B;
            let cmp = if max { B::Greater } else { B::Less };
            let better = Expr::Binary(cmp, Box::new(v.clone()), Box::new(Expr::Var(best)));
            let better = if last {
                let tie = Expr::Binary(B::Equal, Box::new(v.clone()), Box::new(Expr::Var(best)));
                Expr::Binary(B::Or, Box::new(better), Box::new(tie))
            } else {
                better
            };
            let b = me.bind(better);
            me.push(Stmt::Let {
                var: best,
                value: Expr::Select(Box::new(b.clone()), Box::new(v), Box::new(Expr::Var(best))),
            });
            me.push(Stmt::Let {
                var: arg,
                value: Expr::Select(Box::new(b), Box::new(j), Box::new(Expr::Var(arg))),
            });
            Ok(())
        })?;
        Ok(Expr::Var(arg))
    }

    /// A layernorm parameter broadcast over the normalized dims.
    pub(super) fn param(&mut self, p: NodeId, tail: &[Expr]) -> R<Expr> {
        let bidx = broadcast_index(tail, &self.node(p).ty.shape);
        self.value(p, &bidx)
    }

    pub(super) fn row_prefix(idx: &[Expr], axis: usize) -> Vec<Expr> {
        idx[..axis].to_vec()
    }

    pub(super) fn reduce(
        &mut self,
        id: NodeId,
        kind: ReduceKind,
        axes: &[usize],
        keepdims: bool,
        idx: &[Expr],
    ) -> R<Expr> {
        if let Some(e) = self.stats.get(&(id, "reduce")) {
            return Ok(e.clone());
        }
        let node = self.node(id);
        let x = node.inputs[0];
        let xs = self.node(x).ty.shape.clone();
        // The input index: kept dims from idx, reduced dims from the loop.
        let mut kept = Vec::new();
        let mut it = idx.iter();
        for d in 0..xs.len() {
            if axes.contains(&d) {
                if keepdims {
                    it.next();
                }
                kept.push(None);
            } else {
                kept.push(it.next().cloned());
            }
        }
        let reduced: Vec<usize> = axes.iter().map(|&a| xs[a]).collect();
        let count: usize = reduced.iter().product();
        let op = (reduce_op(kind), self.node(x).ty.dtype);
        let acc = self.serial_reduce(&[], &reduced, op, &mut |me, j| {
            let mut jt = j.iter();
            let full: Vec<Expr> = kept
                .iter()
                .map(|k| {
                    k.clone()
                        .unwrap_or_else(|| jt.next().cloned().unwrap_or(Expr::I(0)))
                })
                .collect();
            me.value(x, &full)
        })?;
        Ok(finish_reduce(kind, acc, count, self.node(x).ty.dtype))
    }

    pub(super) fn softmax_stats(
        &mut self,
        id: NodeId,
        axis: usize,
        idx: &[Expr],
    ) -> R<(Expr, Expr)> {
        if let (Some(m), Some(s)) = (self.stats.get(&(id, "max")), self.stats.get(&(id, "sum"))) {
            return Ok((m.clone(), s.clone()));
        }
        // Softmax runs along `axis` alone: vary that dim, keep the others.
        let x = self.node(id).inputs[0];
        let n = self.node(x).ty.shape[axis];
        let at = |j: &[Expr]| {
            let mut i = idx.to_vec();
            i[axis] = j[0].clone();
            i
        };
        let m = self.serial_reduce(&[], &[n], (ReduceOp::Max, DType::F32), &mut |me, j| {
            me.value(x, &at(j))
        })?;
        let s = self.serial_reduce(&[], &[n], (ReduceOp::Sum, DType::F32), &mut |me, j| {
            let v = me.value(x, &at(j))?;
            Ok(exp_sub(v, m.clone()))
        })?;
        Ok((m, s))
    }

    pub(super) fn layernorm_stats(
        &mut self,
        id: NodeId,
        axis: usize,
        idx: &[Expr],
    ) -> R<(Expr, Expr)> {
        if let (Some(m), Some(s)) = (self.stats.get(&(id, "mean")), self.stats.get(&(id, "inv"))) {
            return Ok((m.clone(), s.clone()));
        }
        let Op::LayerNorm { epsilon, .. } = self.node(id).op else {
            unreachable!("layernorm")
        };
        let x = self.node(id).inputs[0];
        let shape = self.node(x).ty.shape.clone();
        let prefix = Self::row_prefix(idx, axis);
        let tail = shape[axis..].to_vec();
        let n = tail.iter().product::<usize>() as f64;
        let sum =
            self.serial_reduce(&prefix, &tail, (ReduceOp::Sum, DType::F32), &mut |me, i| {
                me.value(x, i)
            })?;
        let mean = self.bind(div_f(sum, n));
        let sq =
            self.serial_reduce(&prefix, &tail, (ReduceOp::Sum, DType::F32), &mut |me, i| {
                let v = me.value(x, i)?;
                Ok(square(Expr::Binary(
                    crate::ir::BinaryOp::Sub,
                    Box::new(v),
                    Box::new(mean.clone()),
                )))
            })?;
        let inv = self.bind(inv_std(div_f(sq, n), epsilon.0));
        Ok((mean, inv))
    }

    pub(super) fn matmul(&mut self, id: NodeId, idx: &[Expr]) -> R<Expr> {
        let node = self.node(id);
        let (a, b) = (node.inputs[0], node.inputs[1]);
        let (sa, sb) = (self.node(a).ty.shape.clone(), self.node(b).ty.shape.clone());
        let r = idx.len();
        // Output index: [batch.., m, n], with m or n absent for 1-D operands.
        let (m_i, n_i) = match (sa.len(), sb.len()) {
            (1, 1) => (None, None),
            (1, _) => (None, Some(r - 1)),
            (_, 1) => (Some(r - 1), None),
            _ => (Some(r - 2), Some(r - 1)),
        };
        let batch_len = r - m_i.is_some() as usize - n_i.is_some() as usize;
        let batch = &idx[..batch_len];
        let k = sa[sa.len() - 1];
        let op = (ReduceOp::Sum, self.node(a).ty.dtype);
        let acc = self.serial_reduce(&[], &[k], op, &mut |me, kk| {
            let kk = kk[0].clone();
            let ia: Vec<Expr> = if sa.len() == 1 {
                vec![kk.clone()]
            } else {
                let mut v = broadcast_index(batch, &sa[..sa.len() - 2]);
                v.push(m_i.map(|i| idx[i].clone()).unwrap_or(Expr::I(0)));
                v.push(kk.clone());
                v
            };
            let ib: Vec<Expr> = if sb.len() == 1 {
                vec![kk.clone()]
            } else {
                let mut v = broadcast_index(batch, &sb[..sb.len() - 2]);
                v.push(kk.clone());
                v.push(n_i.map(|i| idx[i].clone()).unwrap_or(Expr::I(0)));
                v
            };
            let (x, y) = (me.value(a, &ia)?, me.value(b, &ib)?);
            Ok(Expr::Binary(
                crate::ir::BinaryOp::Mul,
                Box::new(x),
                Box::new(y),
            ))
        })?;
        Ok(acc)
    }
}
