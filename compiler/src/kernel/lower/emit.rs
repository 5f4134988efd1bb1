//! The emitter: statements that compute a fused body's values at given indices, with
//! memoized values per scope, serial loops and folds, and the scalar expressions shared by
//! every kernel form.

use super::*;

pub(super) fn key(node: NodeId, idx: &[Expr]) -> String {
    let parts: Vec<String> = idx.iter().map(|e| e.to_string()).collect();
    format!("{node}@{}", parts.join(","))
}

/// Emits the statements that compute body values at given indices.
pub(super) struct Emitter<'a> {
    pub(super) body: &'a Graph,
    pub(super) inputs: &'a [u32],
    pub(super) next_var: u32,
    pub(super) blocks: Vec<Vec<Stmt>>,
    pub(super) memo: Vec<HashMap<String, Expr>>,
    /// Per-row statistics of row ops, computed once per row (row kernels only).
    pub(super) stats: HashMap<(NodeId, &'static str), Expr>,
    /// The lanes of a vectorized pointwise kernel being emitted.
    pub(super) lanes: Option<vector::Lanes>,
    /// The run-time index checks emitted so far, by site.
    pub(super) checks: Vec<IndexCheck>,
}

impl<'a> Emitter<'a> {
    pub(super) fn var(&mut self) -> u32 {
        self.next_var += 1;
        self.next_var - 1
    }
    /// Index `i` (negative ones counted from the end) into dim `axis` of size `size` of
    /// node `id`'s data, checked at run time ([`IndexOp::Check`]).
    pub(super) fn checked_index(&mut self, id: NodeId, axis: usize, size: usize, i: Expr) -> Expr {
        if let Expr::I(v) = i {
            // A constant index (validated at import) needs no run-time check.
            let j = if v < 0 { v + size as i64 } else { v };
            if (0..size as i64).contains(&j) {
                return Expr::I(j);
            }
        }
        let node = self.node(id);
        let check = IndexCheck {
            node: node.name.clone(),
            op: node.op.name(),
            axis,
            size,
        };
        let site = match self.checks.iter().position(|c| *c == check) {
            Some(s) => s,
            None => {
                self.checks.push(check);
                self.checks.len() - 1
            }
        };
        Expr::Index(
            IndexOp::Check(site as u32),
            Box::new(i),
            Box::new(Expr::I(size as i64)),
        )
    }
    pub(super) fn push(&mut self, s: Stmt) {
        self.blocks.last_mut().expect("a block is open").push(s);
    }
    pub(super) fn open(&mut self) {
        self.blocks.push(Vec::new());
        self.memo.push(HashMap::new());
    }
    pub(super) fn close(&mut self) -> Vec<Stmt> {
        self.memo.pop();
        self.blocks.pop().expect("a block is open")
    }
    pub(super) fn bind(&mut self, value: Expr) -> Expr {
        match value {
            Expr::Var(_) | Expr::F(_) | Expr::I(_) => value,
            value => {
                let v = self.var();
                self.push(Stmt::Let { var: v, value });
                Expr::Var(v)
            }
        }
    }
    pub(super) fn node(&self, id: NodeId) -> &'a Node {
        &self.body.nodes[id]
    }
    pub(super) fn unsupported(&self, id: NodeId) -> LowerError {
        LowerError::Unsupported {
            node: self.node(id).name.clone(),
            op: self.node(id).op.name(),
        }
    }

    /// A loop `for var in 0..n` (serial, in every thread), its body built by `f`.
    pub(super) fn serial_loop(
        &mut self,
        n: usize,
        f: &mut dyn FnMut(&mut Self, Expr) -> R<()>,
    ) -> R<()> {
        let v = self.var();
        self.open();
        f(self, Expr::Var(v))?;
        let body = self.close();
        self.push(Stmt::For {
            var: v,
            start: Expr::I(0),
            end: Expr::I(n as i64),
            step: Expr::I(1),
            uniform: false,
            body,
        });
        Ok(())
    }

    /// `acc = identity; for j in (start..len(tail)).step_by(step) { acc = op(acc, f(prefix ⊕
    /// unravel(j))) }` over values of `dtype`; returns the accumulator variable.
    pub(super) fn fold(
        &mut self,
        prefix: &[Expr],
        tail: &[usize],
        (op, dtype): (ReduceOp, DType),
        (start, step): (Expr, Expr),
        f: &mut dyn FnMut(&mut Self, &[Expr]) -> R<Expr>,
    ) -> R<u32> {
        let acc = self.var();
        self.push(Stmt::Let {
            var: acc,
            value: identity_of(op, dtype),
        });
        let j = self.var();
        self.open();
        let mut idx = prefix.to_vec();
        idx.extend(unravel(&Expr::Var(j), tail));
        let v = f(self, &idx)?;
        self.push(Stmt::Let {
            var: acc,
            value: Expr::Combine(op, Box::new(Expr::Var(acc)), Box::new(v)),
        });
        let body = self.close();
        let n: usize = tail.iter().product();
        self.push(Stmt::For {
            var: j,
            start,
            end: Expr::I(n as i64),
            step,
            uniform: false,
            body,
        });
        Ok(acc)
    }

    /// Reduces `f(element index)` over the dims `tail` after the index `prefix`, serially in
    /// this thread.
    pub(super) fn serial_reduce(
        &mut self,
        prefix: &[Expr],
        tail: &[usize],
        op: (ReduceOp, DType),
        f: &mut dyn FnMut(&mut Self, &[Expr]) -> R<Expr>,
    ) -> R<Expr> {
        let acc = self.fold(prefix, tail, op, (Expr::I(0), Expr::I(1)), f)?;
        Ok(Expr::Var(acc))
    }

    /// The value of body node `id` at `idx` if this scope or an enclosing one has it.
    pub(super) fn recall(&self, id: NodeId, idx: &[Expr]) -> Option<Expr> {
        let k = key(id, idx);
        self.memo.iter().rev().find_map(|m| m.get(&k)).cloned()
    }

    /// Remembers `value` as body node `id`'s value at `idx` for the rest of this scope.
    pub(super) fn remember(&mut self, id: NodeId, idx: &[Expr], value: Expr) {
        self.memo
            .last_mut()
            .expect("a scope is open")
            .insert(key(id, idx), value);
    }

    /// Closes the open scope and emits its statements under `cond` (as they are for
    /// `None`).
    pub(super) fn close_under(&mut self, cond: Option<Expr>) {
        let then = self.close();
        match cond {
            Some(cond) => self.push(Stmt::If { cond, then }),
            None => {
                for s in then {
                    self.push(s);
                }
            }
        }
    }

    /// The value of body node `id` at multi-index `idx` (of that node's shape).
    pub(super) fn value(&mut self, id: NodeId, idx: &[Expr]) -> R<Expr> {
        if let Some(e) = self.recall(id, idx) {
            return Ok(e);
        }
        let e = self.compute(id, idx)?;
        let e = self.bind(e);
        self.remember(id, idx, e.clone());
        Ok(e)
    }

    pub(super) fn arg(&mut self, id: NodeId, i: usize, idx: &[Expr]) -> R<Expr> {
        let a = self.node(id).inputs[i];
        let bidx = broadcast_index(idx, &self.node(a).ty.shape);
        self.value(a, &bidx)
    }

    /// A load from a kernel input, left unbound so it can sit in a guarded branch (a
    /// padded or out-of-range position must not be read).
    pub(super) fn load(&mut self, id: NodeId, idx: &[Expr]) -> R<Expr> {
        if let Op::Constant(t) = &self.node(id).op {
            if t.numel() == 1 {
                return Ok(immediate(t));
            }
        }
        let k = self
            .body
            .inputs
            .iter()
            .position(|&i| i == id)
            .ok_or_else(|| self.unsupported(id))?;
        Ok(Expr::Load {
            buf: self.inputs[k],
            index: Box::new(ravel(idx, &self.node(id).ty.shape)),
        })
    }

    /// `cond ? load(x, idx) : fill`.
    pub(super) fn guarded(&mut self, cond: Expr, x: NodeId, idx: &[Expr], fill: Expr) -> R<Expr> {
        let l = self.load(x, idx)?;
        Ok(Expr::Select(Box::new(cond), Box::new(l), Box::new(fill)))
    }

    /// Input position `o*stride + k*dilation - pad` along one window dim, and whether it is
    /// inside `0..n`.
    pub(super) fn window_pos(
        o: &Expr,
        k: &Expr,
        stride: usize,
        dilation: usize,
        pad: usize,
        n: usize,
    ) -> (Expr, Expr) {
        let p = Expr::Index(
            IndexOp::Sub,
            Box::new(add(
                mul(o.clone(), Expr::I(stride as i64)),
                mul(k.clone(), Expr::I(dilation as i64)),
            )),
            Box::new(Expr::I(pad as i64)),
        );
        let inside = and(
            Expr::Index(IndexOp::Ge, Box::new(p.clone()), Box::new(Expr::I(0))),
            Expr::Index(
                IndexOp::Lt,
                Box::new(p.clone()),
                Box::new(Expr::I(n as i64)),
            ),
        );
        (p, inside)
    }
}

/// Zero of a dtype's compute type: an integer for integer dtypes (a variable's first
/// assignment decides its type in the rendered code).
pub(super) fn zero_of(d: DType) -> Expr {
    if d.is_int() {
        Expr::I(0)
    } else {
        Expr::F(0.0)
    }
}

pub(super) fn div_f(a: Expr, n: f64) -> Expr {
    Expr::Binary(crate::ir::BinaryOp::Div, Box::new(a), Box::new(Expr::F(n)))
}
/// `exp(v - m)`: a softmax numerator.
pub(super) fn exp_sub(v: Expr, m: Expr) -> Expr {
    Expr::Unary(
        UnaryOp::Exp,
        Box::new(Expr::Binary(
            crate::ir::BinaryOp::Sub,
            Box::new(v),
            Box::new(m),
        )),
    )
}

pub(super) fn square(a: Expr) -> Expr {
    Expr::Binary(crate::ir::BinaryOp::Mul, Box::new(a.clone()), Box::new(a))
}
pub(super) fn inv_std(var: Expr, eps: f64) -> Expr {
    let ve = Expr::Binary(
        crate::ir::BinaryOp::Add,
        Box::new(var),
        Box::new(Expr::F(eps)),
    );
    Expr::Unary(
        UnaryOp::Reciprocal,
        Box::new(Expr::Unary(UnaryOp::Sqrt, Box::new(ve))),
    )
}

/// The result of a reduction from its accumulator over `count` elements: a mean divides,
/// and over bools the empty max is false and the empty min true.
pub(super) fn finish_reduce(kind: ReduceKind, acc: Expr, count: usize, dtype: DType) -> Expr {
    match kind {
        ReduceKind::Mean => div_f(acc, count as f64),
        ReduceKind::Max if dtype == DType::Bool => {
            Expr::Combine(ReduceOp::Max, Box::new(acc), Box::new(Expr::F(0.0)))
        }
        ReduceKind::Min if dtype == DType::Bool => {
            Expr::Combine(ReduceOp::Min, Box::new(acc), Box::new(Expr::F(1.0)))
        }
        _ => acc,
    }
}

/// The identity of `op` over values of `dtype`, in their compute type: integer reductions
/// accumulate exactly in i64, float ones in the kernel's float type.
pub(super) fn identity_of(op: ReduceOp, dtype: DType) -> Expr {
    if dtype.is_int() {
        Expr::I(op.identity_int())
    } else {
        Expr::F(op.identity())
    }
}

pub(super) fn reduce_op(kind: ReduceKind) -> ReduceOp {
    match kind {
        ReduceKind::Sum | ReduceKind::Mean => ReduceOp::Sum,
        ReduceKind::Max => ReduceOp::Max,
        ReduceKind::Min => ReduceOp::Min,
        ReduceKind::Prod => ReduceOp::Prod,
    }
}

pub(super) fn emitter<'a>(body: &'a Graph, inputs: &'a [u32]) -> Emitter<'a> {
    Emitter {
        body,
        inputs,
        next_var: 0,
        blocks: vec![Vec::new()],
        memo: vec![HashMap::new()],
        stats: HashMap::new(),
        lanes: None,
        checks: Vec::new(),
    }
}

pub(super) fn reads_writes(inputs: &[u32], out: u32) -> (Vec<u32>, Vec<u32>) {
    let mut r = inputs.to_vec();
    r.sort_unstable();
    r.dedup();
    (r, vec![out])
}

impl Emitter<'_> {
    pub(super) fn close_root(mut self) -> Vec<Stmt> {
        self.blocks.pop().expect("root block")
    }

    /// The kernel of the emitted statements, reading `inputs` and writing `out` (no shared
    /// memory or fragments: kernels with them set those fields).
    pub(super) fn finish(
        self,
        name: impl Into<String>,
        launch: Launch,
        precision: Precision,
        inputs: &[u32],
        out: u32,
    ) -> Kernel {
        let (reads, writes) = reads_writes(inputs, out);
        Kernel {
            name: name.into(),
            node: String::new(),
            launch,
            precision,
            reads,
            writes,
            vars: self.next_var,
            shared: Vec::new(),
            frags: Vec::new(),
            checks: self.checks.clone(),
            body: self.close_root(),
            blas: None,
        }
    }

    /// A new variable set to the float `v`.
    pub(super) fn start(&mut self, v: f64) -> u32 {
        let var = self.var();
        self.push(Stmt::Let {
            var,
            value: Expr::F(v),
        });
        var
    }

    /// Block-level reduction over the row: each thread folds a strided share of the
    /// elements, then the block combines.
    pub(super) fn block_reduce(
        &mut self,
        prefix: &[Expr],
        tail: &[usize],
        op: (ReduceOp, DType),
        f: &mut dyn FnMut(&mut Self, &[Expr]) -> R<Expr>,
    ) -> R<Expr> {
        let strided = (builtin(Builtin::Thread), builtin(Builtin::BlockDim));
        let acc = self.fold(prefix, tail, op, strided, f)?;
        self.push(Stmt::Reduce {
            scope: Scope::Block,
            combiner: Combiner::Op(op.0),
            vars: vec![acc],
        });
        Ok(Expr::Var(acc))
    }
}
