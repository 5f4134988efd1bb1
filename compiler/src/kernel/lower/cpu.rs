//! Lowering for the CPU: every block is one thread's contiguous share of the work (the C
//! renderer hands blocks to a thread pool), inner loops run along the last dim so the C
//! compiler vectorizes them, and f32 matrix products become library [`Gemm`] calls whose
//! operands are strided views of buffers. A prologue that is not a view is computed into a
//! scratch buffer first; the epilogue runs after the product, in place when it is
//! elementwise over the product's shape.

use super::{
    add, builtin, div, emitter, mul, reads_writes, rem, single_row_axis, strides, unravel, Builtin,
    Expr, IndexOp, Kernel, Launch, Precision, Stmt, R,
};
use crate::ir::{DType, Graph, Node, NodeId, Op};
use crate::kernel::ir::{BufferDecl, Gemm, MatrixView};

/// Elements of work per block: each block is one task of the thread pool.
pub const CPU_CHUNK: usize = 1 << 15;

/// Where a lowered kernel goes and what it may add.
pub(super) struct Sink<'a> {
    /// Buffers of the program (scratch buffers are appended).
    pub buffers: &'a mut Vec<BufferDecl>,
    /// Kernels of the program.
    pub kernels: &'a mut Vec<Kernel>,
    /// The graph node being lowered.
    pub node: &'a str,
    /// Its op's name.
    pub op: &'a str,
}

impl Sink<'_> {
    fn push(&mut self, k: Kernel) {
        self.kernels.push(Kernel {
            node: self.node.to_string(),
            ..k
        });
    }
    fn name(&self, what: &str) -> String {
        format!("k{}_{what}", self.kernels.len())
    }
    fn scratch(&mut self, what: &str, shape: &[usize]) -> u32 {
        self.buffers.push(BufferDecl {
            name: format!("{}.{what}", self.node),
            dtype: DType::F32,
            shape: shape.to_vec(),
            len: shape.iter().product(),
        });
        (self.buffers.len() - 1) as u32
    }
}

fn is_library_matmul(body: &Graph, id: NodeId) -> bool {
    let n = &body.nodes[id];
    matches!(n.op, Op::MatMul)
        && n.ty.dtype == DType::F32
        && n.inputs.iter().all(|&a| {
            let t = &body.nodes[a].ty;
            t.dtype == DType::F32 && t.rank() >= 2
        })
}

fn contiguous(shape: &[usize]) -> Vec<i64> {
    strides(shape).iter().map(|&s| s as i64).collect()
}

fn is_contiguous(shape: &[usize], st: &[i64]) -> bool {
    let want = contiguous(shape);
    shape
        .iter()
        .zip(st.iter().zip(&want))
        .all(|(&n, (a, b))| n == 1 || a == b)
}

/// Node `id` as a strided view of a kernel input: (buffer, shape, strides).
fn view(body: &Graph, id: NodeId, inputs: &[u32]) -> Option<(u32, Vec<usize>, Vec<i64>)> {
    let node = &body.nodes[id];
    match &node.op {
        Op::Input => {
            let k = body.inputs.iter().position(|&i| i == id)?;
            Some((inputs[k], node.ty.shape.clone(), contiguous(&node.ty.shape)))
        }
        Op::Transpose(perm) => {
            let (b, shape, st) = view(body, node.inputs[0], inputs)?;
            Some((
                b,
                perm.iter().map(|&p| shape[p]).collect(),
                perm.iter().map(|&p| st[p]).collect(),
            ))
        }
        Op::Reshape(_) => {
            let (b, shape, st) = view(body, node.inputs[0], inputs)?;
            is_contiguous(&shape, &st)
                .then(|| (b, node.ty.shape.clone(), contiguous(&node.ty.shape)))
        }
        _ => None,
    }
}

/// The nodes reachable from `root`, as a graph of their own, with the kernel inputs they
/// read.
fn pruned(body: &Graph, root: NodeId, inputs: &[u32]) -> (Graph, Vec<u32>) {
    let mut keep = vec![false; body.nodes.len()];
    keep[root] = true;
    for id in (0..body.nodes.len()).rev() {
        if keep[id] {
            for &a in &body.nodes[id].inputs {
                keep[a] = true;
            }
        }
    }
    let mut map = vec![usize::MAX; body.nodes.len()];
    let mut g = Graph::default();
    for (id, n) in body.nodes.iter().enumerate() {
        if keep[id] {
            map[id] = g.nodes.len();
            g.nodes.push(Node {
                inputs: n.inputs.iter().map(|&a| map[a]).collect(),
                ..n.clone()
            });
        }
    }
    let mut ins = Vec::new();
    for (k, &i) in body.inputs.iter().enumerate() {
        if keep[i] {
            g.inputs.push(map[i]);
            ins.push(inputs[k]);
        }
    }
    g.outputs.push(("out".into(), map[root]));
    (g, ins)
}

/// The row axis shared by every row op of a body, if it has row ops and they agree.
fn body_row_axis(body: &Graph) -> Option<usize> {
    let mut axis = None;
    for n in &body.nodes {
        let rank = n.inputs.first().map(|&a| body.nodes[a].ty.rank());
        if let Some(a) = rank.and_then(|r| single_row_axis(&n.op, r)) {
            if axis.is_some_and(|x| x != a) {
                return None;
            }
            axis = Some(a);
        }
    }
    axis
}

/// Lowers the value of `root` in `body` into `out`: a row kernel when the body has row ops,
/// else a pointwise one.
fn lower_value(
    body: &Graph,
    root: NodeId,
    inputs: &[u32],
    out: u32,
    precision: Precision,
    sink: &mut Sink,
) -> R<()> {
    let (g, ins) = pruned(body, root, inputs);
    let name = sink.name(sink.op);
    if let Some(axis) = body_row_axis(&g) {
        if let Ok(k) = super::lower_rows(&g, &ins, out, axis, name.clone(), precision, true) {
            sink.push(k);
            return Ok(());
        }
    }
    let k = pointwise(&g, &ins, out, name, precision)?;
    sink.push(k);
    Ok(())
}

/// True when every node that depends on `mm` is elementwise over `mm`'s shape, so the
/// epilogue can read the product where it writes its result.
fn elementwise_epilogue(body: &Graph, mm: NodeId) -> bool {
    let mut dep = vec![false; body.nodes.len()];
    dep[mm] = true;
    let shape = &body.nodes[mm].ty.shape;
    for (id, n) in body.nodes.iter().enumerate().skip(mm + 1) {
        if n.inputs.iter().any(|&a| dep[a]) {
            dep[id] = true;
            let elementwise = matches!(
                n.op,
                Op::Unary(_) | Op::Binary(_) | Op::Where | Op::Cast(DType::F32)
            );
            if !elementwise || &n.ty.shape != shape {
                return false;
            }
        }
    }
    true
}

fn matrix(buf: u32, shape: &[usize], st: &[i64], batch: &[usize]) -> MatrixView {
    let r = shape.len();
    let nb = batch.len();
    let own = r - 2;
    MatrixView {
        buf,
        batch_strides: (0..nb)
            .map(|i| {
                let j = i as isize - (nb as isize - own as isize);
                if j < 0 || shape[j as usize] == 1 {
                    0
                } else {
                    st[j as usize]
                }
            })
            .collect(),
        row_stride: st[r - 2],
        col_stride: st[r - 1],
    }
}

/// Lowers one graph node (its fused body, or a one-op body) for the CPU.
pub(super) fn lower_node(
    body: &Graph,
    row_axis: Option<usize>,
    inputs: &[u32],
    out: u32,
    precision: Precision,
    sink: &mut Sink,
) -> R<()> {
    let root = body.outputs[0].1;
    let matmuls: Vec<NodeId> = (0..body.nodes.len())
        .filter(|&i| is_library_matmul(body, i))
        .collect();
    if matmuls.is_empty() {
        let name = sink.name(sink.op);
        let k = match row_axis {
            Some(axis) => super::lower_rows(body, inputs, out, axis, name, precision, true)?,
            None => pointwise(body, inputs, out, name, precision)?,
        };
        sink.push(k);
        return Ok(());
    }
    let mut body = body.clone();
    let mut inputs = inputs.to_vec();
    let out_f32 = sink.buffers[out as usize].dtype == DType::F32;
    for mm in matmuls {
        let operand = |body: &Graph, inputs: &[u32], x: NodeId, sink: &mut Sink| -> R<_> {
            if let Some(v) = view(body, x, inputs) {
                return Ok(v);
            }
            let shape = body.nodes[x].ty.shape.clone();
            let what = format!("{}_{}", body.nodes[mm].name, body.nodes[x].name);
            let buf = sink.scratch(&what, &shape);
            lower_value(body, x, inputs, buf, precision, sink)?;
            let st = contiguous(&shape);
            Ok((buf, shape, st))
        };
        let (a, b) = (body.nodes[mm].inputs[0], body.nodes[mm].inputs[1]);
        let (ab, ashape, ast) = operand(&body, &inputs, a, sink)?;
        let (bb, bshape, bst) = operand(&body, &inputs, b, sink)?;
        let shape = body.nodes[mm].ty.shape.clone();
        let r = shape.len();
        let batch = shape[..r - 2].to_vec();
        let dest = if mm == root || (out_f32 && elementwise_epilogue(&body, mm)) {
            out
        } else {
            let what = body.nodes[mm].name.clone();
            sink.scratch(&what, &shape)
        };
        let gemm = Gemm {
            m: shape[r - 2],
            n: shape[r - 1],
            k: ashape[ashape.len() - 1],
            a: matrix(ab, &ashape, &ast, &batch),
            b: matrix(bb, &bshape, &bst, &batch),
            c: matrix(dest, &shape, &contiguous(&shape), &batch),
            batch,
        };
        let (reads, writes) = reads_writes(&[ab, bb], dest);
        let name = sink.name("gemm");
        sink.push(Kernel {
            name,
            node: String::new(),
            launch: Launch { grid: 1, block: 1 },
            precision: Precision::F32,
            reads,
            writes,
            vars: 0,
            body: vec![Stmt::Gemm(Box::new(gemm))],
        });
        body.nodes[mm].op = Op::Input;
        body.nodes[mm].inputs.clear();
        body.inputs.push(mm);
        inputs.push(dest);
    }
    if matches!(body.nodes[root].op, Op::Input) {
        return Ok(());
    }
    lower_value(&body, root, &inputs, out, precision, sink)
}

/// A pointwise kernel for the CPU: blocks of whole rows of the last dim, each row one
/// contiguous inner loop (or, for a short last dim, a contiguous flat range).
pub(super) fn pointwise(
    body: &Graph,
    inputs: &[u32],
    out: u32,
    name: String,
    precision: Precision,
) -> R<Kernel> {
    let root = body.outputs[0].1;
    let shape = body.nodes[root].ty.shape.clone();
    let n = body.nodes[root].ty.numel();
    let inner = shape.last().copied().unwrap_or(1);
    let mut e = emitter(body, inputs);
    if inner > CPU_CHUNK {
        // Long rows: each block is one chunk of one row.
        let rows = n / inner;
        let per_row = inner.div_ceil(CPU_CHUNK);
        let j = e.var();
        let r = div(builtin(Builtin::Block), per_row);
        let mut idx = unravel(&r, &shape[..shape.len() - 1]);
        idx.push(Expr::Var(j));
        e.open();
        let v = e.value(root, &idx)?;
        e.push(Stmt::Store {
            buf: out,
            index: add(mul(r.clone(), Expr::I(inner as i64)), Expr::Var(j)),
            value: v,
        });
        let body_j = e.close();
        let start = mul(
            rem(builtin(Builtin::Block), per_row),
            Expr::I(CPU_CHUNK as i64),
        );
        let end = Expr::Index(
            IndexOp::Min,
            Box::new(Expr::I(inner as i64)),
            Box::new(add(start.clone(), Expr::I(CPU_CHUNK as i64))),
        );
        e.push(Stmt::For {
            var: j,
            start,
            end,
            step: Expr::I(1),
            uniform: true,
            body: body_j,
        });
        let (reads, writes) = reads_writes(inputs, out);
        return Ok(Kernel {
            name,
            node: String::new(),
            launch: Launch {
                grid: (rows * per_row).max(1),
                block: 1,
            },
            precision,
            reads,
            writes,
            vars: e.next_var,
            body: e.close_root(),
        });
    }
    let (grid, outer, per) = if inner >= 8 {
        let rows = n / inner;
        let per = (CPU_CHUNK / inner).max(1);
        let r = e.var();
        let j = e.var();
        e.open();
        let mut idx = unravel(&Expr::Var(r), &shape[..shape.len() - 1]);
        idx.push(Expr::Var(j));
        e.open();
        let v = e.value(root, &idx)?;
        e.push(Stmt::Store {
            buf: out,
            index: add(mul(Expr::Var(r), Expr::I(inner as i64)), Expr::Var(j)),
            value: v,
        });
        let inner_body = e.close();
        e.push(Stmt::For {
            var: j,
            start: Expr::I(0),
            end: Expr::I(inner as i64),
            step: Expr::I(1),
            uniform: false,
            body: inner_body,
        });
        (rows.div_ceil(per).max(1), (r, rows, e.close()), per)
    } else {
        let i = e.var();
        e.open();
        let idx = unravel(&Expr::Var(i), &shape);
        let v = e.value(root, &idx)?;
        e.push(Stmt::Store {
            buf: out,
            index: Expr::Var(i),
            value: v,
        });
        (n.div_ceil(CPU_CHUNK).max(1), (i, n, e.close()), CPU_CHUNK)
    };
    let (var, total, loop_body) = outer;
    e.push(chunk_loop(var, total, per, loop_body));
    let (reads, writes) = reads_writes(inputs, out);
    Ok(Kernel {
        name,
        node: String::new(),
        launch: Launch { grid, block: 1 },
        precision,
        reads,
        writes,
        vars: e.next_var,
        body: e.close_root(),
    })
}

/// `for var in block·per .. min(total, block·per + per)`: block `b`'s contiguous share.
pub(super) fn chunk_loop(var: u32, total: usize, per: usize, body: Vec<Stmt>) -> Stmt {
    let start = mul(builtin(Builtin::Block), Expr::I(per as i64));
    let end = Expr::Index(
        IndexOp::Min,
        Box::new(Expr::I(total as i64)),
        Box::new(add(start.clone(), Expr::I(per as i64))),
    );
    Stmt::For {
        var,
        start,
        end,
        step: Expr::I(1),
        uniform: true,
        body,
    }
}
