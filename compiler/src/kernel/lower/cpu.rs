//! Lowering for the CPU: every block is one thread's contiguous share of the work (the C
//! renderer hands blocks to a thread pool), inner loops run along the last dim so the C
//! compiler vectorizes them, and f32 matrix products become library [`Gemm`] calls whose
//! operands are strided views of buffers. A prologue that is not a view is computed into a
//! scratch buffer first; the epilogue runs after the product, in place when it is
//! elementwise over the product's shape. A 2-D convolution (one group) is the same product:
//! weights [oc, c·kh·kw] × columns [c·kh·kw, oh·ow] per image, the columns gathered by an
//! im2col kernel (for a 1×1, stride-1, unpadded convolution, the image itself), the bias
//! added in the epilogue. A grouped convolution (a depthwise one above all) is a direct loop
//! instead: per output row, each window tap adds its weight times a contiguous run of the
//! input row to the output row, over the range of columns the tap sees inside the image.
//! Pools take the same direct form ([`cpu_pool`](super::cpu_pool)).

use super::cpu_pool::{is_direct_pool, pool_product};
use super::{
    add, and, builtin, column_range, div, emitter, mul, reads_writes, rem, single_row_axis,
    unravel, within, Builtin, Emitter, Expr, IndexOp, Kernel, Launch, Precision, Stmt, R,
};
use crate::ir::{dense_strides, DType, Graph, Node, NodeId, Op};
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
    pub(super) fn push(&mut self, k: Kernel) {
        self.kernels.push(Kernel {
            node: self.node.to_string(),
            ..k
        });
    }
    pub(super) fn name(&self, what: &str) -> String {
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

/// f32 products go to the library directly; f16/bf16 ones through f32 copies of their
/// operands, the result rounded to the product's dtype where it is read.
fn is_library_matmul(body: &Graph, id: NodeId) -> bool {
    let n = &body.nodes[id];
    let float = |d: DType| matches!(d, DType::F32 | DType::F16 | DType::BF16);
    matches!(n.op, Op::MatMul)
        && float(n.ty.dtype)
        && n.inputs.iter().all(|&a| {
            let t = &body.nodes[a].ty;
            t.dtype == n.ty.dtype && t.rank() >= 2
        })
}

/// Elements of a buffer read as a tensor: `shape` from element `offset`, dim `d` stepping
/// `strides[d]` elements.
#[derive(Clone, Debug)]
pub(super) struct View {
    pub buf: u32,
    pub offset: i64,
    pub shape: Vec<usize>,
    pub strides: Vec<i64>,
}

impl View {
    /// The whole of `buf`, laid out densely as `shape`.
    fn dense(buf: u32, shape: &[usize]) -> View {
        View {
            buf,
            offset: 0,
            shape: shape.to_vec(),
            strides: dense_strides(shape),
        }
    }

    /// True when the view is its buffer's start laid out densely.
    fn is_dense(&self) -> bool {
        let want = dense_strides(&self.shape);
        self.offset == 0
            && self
                .shape
                .iter()
                .zip(self.strides.iter().zip(&want))
                .all(|(&n, (a, b))| n == 1 || a == b)
    }
}

/// Node `id` as a strided view of a kernel input.
pub(super) fn view(body: &Graph, id: NodeId, inputs: &[u32]) -> Option<View> {
    let (input, offset, strides) = body.strided_view(id)?;
    let k = body.inputs.iter().position(|&i| i == input)?;
    Some(View {
        buf: inputs[k],
        offset,
        shape: body.nodes[id].ty.shape.clone(),
        strides,
    })
}

/// The nodes reachable from `root`, as a graph of their own, with the kernel inputs they
/// read.
pub(super) fn pruned(body: &Graph, root: NodeId, inputs: &[u32]) -> (Graph, Vec<u32>) {
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
        if let Ok(k) = super::lower_rows(&g, &ins, out, axis, name.clone(), precision) {
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

/// Buffer `buf` read as a matrix operand of shape `shape` and strides `st` in a product over
/// `batch`: its leading dims right-aligned with the batch (stride 0 where broadcast).
pub(super) fn matrix(v: &View, batch: &[usize]) -> MatrixView {
    let (shape, st) = (&v.shape, &v.strides);
    let r = shape.len();
    let nb = batch.len();
    let own = r - 2;
    MatrixView {
        buf: v.buf,
        offset: v.offset,
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
    let is_product = |b: &Graph, i: NodeId| {
        is_library_matmul(b, i)
            || is_library_conv(b, i)
            || is_grouped_conv(b, i)
            || is_direct_pool(b, i)
    };
    if !(0..body.nodes.len()).any(|i| is_product(body, i)) {
        let name = sink.name(sink.op);
        let k = match row_axis {
            Some(axis) => super::lower_rows(body, inputs, out, axis, name, precision)?,
            None => pointwise(body, inputs, out, name, precision)?,
        };
        sink.push(k);
        return Ok(());
    }
    let mut body = body.clone();
    let mut inputs = inputs.to_vec();
    let out_f32 = sink.buffers[out as usize].dtype == DType::F32;
    // Each product in body order becomes a library call and an input of the rest.
    while let Some(p) = (0..body.nodes.len()).find(|&i| is_product(&body, i)) {
        let (b, i) = if is_library_conv(&body, p) {
            conv_product(&body, &inputs, p, out, out_f32, precision, sink)?
        } else if is_grouped_conv(&body, p) {
            grouped_conv_product(&body, &inputs, p, out, out_f32, precision, sink)?
        } else if is_direct_pool(&body, p) {
            pool_product(&body, &inputs, p, (out, out_f32), precision, sink)?
        } else {
            matmul_product(&body, &inputs, p, out, out_f32, precision, sink)?
        };
        body = b;
        inputs = i;
    }
    let root = body.outputs[0].1;
    if matches!(body.nodes[root].op, Op::Input) {
        return Ok(());
    }
    lower_value(&body, root, &inputs, out, precision, sink)
}

/// A view of body node `x`, or the node computed into a scratch buffer first.
fn operand(
    body: &Graph,
    inputs: &[u32],
    x: NodeId,
    what: &str,
    precision: Precision,
    sink: &mut Sink,
) -> R<View> {
    if body.nodes[x].ty.dtype == DType::F32 {
        if let Some(v) = view(body, x, inputs) {
            return Ok(v);
        }
    }
    let shape = body.nodes[x].ty.shape.clone();
    let buf = sink.scratch(&format!("{what}_{}", body.nodes[x].name), &shape);
    lower_value(body, x, inputs, buf, precision, sink)?;
    Ok(View::dense(buf, &shape))
}

fn push_gemm(sink: &mut Sink, gemm: Gemm) {
    let (reads, writes) = reads_writes(&[gemm.a.buf, gemm.b.buf], gemm.c.buf);
    let name = sink.name("gemm");
    sink.push(Kernel {
        name,
        node: String::new(),
        launch: Launch { grid: 1, block: 1 },
        precision: Precision::F32,
        reads,
        writes,
        vars: 0,
        shared: Vec::new(),
        frags: Vec::new(),
        body: vec![Stmt::Gemm(Box::new(gemm))],
        blas: None,
        checks: Vec::new(),
    });
}

/// Where a product's result goes: the kernel's output when everything after it is
/// elementwise over its shape (the epilogue then runs in place), else a scratch buffer.
/// `taken`: an earlier product already lives in `out`.
pub(super) fn destination(
    body: &Graph,
    p: NodeId,
    (out, taken): (u32, bool),
    out_f32: bool,
    sink: &mut Sink,
) -> u32 {
    let root = body.outputs[0].1;
    let same_shape = body.nodes[root].ty.shape == body.nodes[p].ty.shape;
    let f32 = body.nodes[p].ty.dtype == DType::F32;
    if !taken && f32 && out_f32 && (p == root || (same_shape && elementwise_epilogue(body, p))) {
        out
    } else {
        let what = format!("{}.product", body.nodes[p].name);
        let shape = body.nodes[p].ty.shape.clone();
        sink.scratch(&what, &shape)
    }
}

/// Lowers matrix product `mm` of `body` to a library product; returns the body with the
/// product replaced by an input, and the inputs that body reads.
fn matmul_product(
    body: &Graph,
    inputs: &[u32],
    mm: NodeId,
    out: u32,
    out_f32: bool,
    precision: Precision,
    sink: &mut Sink,
) -> R<(Graph, Vec<u32>)> {
    let what = body.nodes[mm].name.clone();
    let (a, b) = (body.nodes[mm].inputs[0], body.nodes[mm].inputs[1]);
    let av = operand(body, inputs, a, &what, precision, sink)?;
    let bv = operand(body, inputs, b, &what, precision, sink)?;
    let shape = body.nodes[mm].ty.shape.clone();
    let r = shape.len();
    let batch = shape[..r - 2].to_vec();
    let dest = destination(body, mm, (out, inputs.contains(&out)), out_f32, sink);
    push_gemm(
        sink,
        Gemm {
            m: shape[r - 2],
            n: shape[r - 1],
            k: av.shape[av.shape.len() - 1],
            a: matrix(&av, &batch),
            b: matrix(&bv, &batch),
            c: matrix(&View::dense(dest, &shape), &batch),
            batch,
            b_panels: None,
        },
    );
    let dtype = body.nodes[mm].ty.dtype;
    let g = replace_node(body, mm, &mut |_, product, _| {
        // An f16/bf16 product is computed in f32: round it as the reference does.
        (dtype != DType::F32).then(|| Node {
            op: Op::Cast(dtype),
            inputs: vec![product],
            ..body.nodes[mm].clone()
        })
    });
    let mut ins = inputs.to_vec();
    ins.push(dest);
    Ok((g, ins))
}

/// Lowers convolution `cv` of `body` to im2col and a library product; returns the body with
/// the convolution replaced by the product plus its bias, and the inputs that body reads.
fn conv_product(
    body: &Graph,
    inputs: &[u32],
    cv: NodeId,
    out: u32,
    out_f32: bool,
    precision: Precision,
    sink: &mut Sink,
) -> R<(Graph, Vec<u32>)> {
    let node = body.nodes[cv].clone();
    let Op::Conv(c) = &node.op else {
        unreachable!("a convolution")
    };
    let (x, w) = (node.inputs[0], node.inputs[1]);
    let bias = node.inputs.get(2).copied();
    let what = node.name.clone();
    let xv = operand(body, inputs, x, &what, precision, sink)?;
    let (mut xb, xs) = (xv.buf, xv.shape.clone());
    if !xv.is_dense() {
        // A transposed or sliced view: gather from a contiguous copy.
        xb = sink.scratch(&format!("{what}.input"), &xs);
        lower_value(body, x, inputs, xb, precision, sink)?;
    }
    let wv = operand(body, inputs, w, &what, precision, sink)?;
    let (mut wb, ws) = (wv.buf, wv.shape.clone());
    if !wv.is_dense() {
        wb = sink.scratch(&format!("{what}.weights"), &ws);
        lower_value(body, w, inputs, wb, precision, sink)?;
    }
    let (oc, kh, kw) = (ws[0], ws[2], ws[3]);
    let (n, oh, ow) = (node.ty.shape[0], node.ty.shape[2], node.ty.shape[3]);
    let k = xs[1] * kh * kw;
    let p = oh * ow;
    let one_by_one =
        kh == 1 && kw == 1 && c.strides == [1, 1] && c.pads == [0; 4] && c.dilations == [1, 1];
    let cols = if one_by_one {
        xb
    } else {
        let cols = sink.scratch(&format!("{what}.columns"), &[n, k, p]);
        let mut g = Graph::default();
        g.nodes.push(Node {
            name: "x".into(),
            op: Op::Input,
            inputs: vec![],
            ty: crate::ir::TensorType::new(DType::F32, xs.clone()),
        });
        g.inputs.push(0);
        let name = sink.name("im2col");
        let kern = im2col(&g, &[xb], c, (kh, kw), (oh, ow), cols, name)?;
        sink.push(kern);
        cols
    };
    let dest = destination(body, cv, (out, inputs.contains(&out)), out_f32, sink);
    push_gemm(
        sink,
        Gemm {
            batch: vec![n],
            m: oc,
            n: p,
            k,
            a: MatrixView {
                buf: wb,
                offset: 0,
                batch_strides: vec![0],
                row_stride: k as i64,
                col_stride: 1,
            },
            b: MatrixView {
                buf: cols,
                offset: 0,
                batch_strides: vec![(k * p) as i64],
                row_stride: p as i64,
                col_stride: 1,
            },
            c: MatrixView {
                buf: dest,
                offset: 0,
                batch_strides: vec![(oc * p) as i64],
                row_stride: p as i64,
                col_stride: 1,
            },
            b_panels: None,
        },
    );
    let g = replace_node(body, cv, &mut |g, product, map| match bias {
        None => None,
        Some(b) => {
            let rb = g.nodes.len();
            g.nodes.push(Node {
                name: format!("{}.bias", node.name),
                op: Op::Reshape(vec![oc, 1, 1]),
                inputs: vec![map(b)],
                ty: crate::ir::TensorType::new(DType::F32, vec![oc, 1, 1]),
            });
            Some(Node {
                op: Op::Binary(crate::ir::BinaryOp::Add),
                inputs: vec![product, rb],
                ..node.clone()
            })
        }
    });
    let mut ins = inputs.to_vec();
    ins.push(dest);
    Ok((g, ins))
}

fn is_library_conv(body: &Graph, id: NodeId) -> bool {
    is_f32_conv(body, id, |group| group == 1)
}

fn is_grouped_conv(body: &Graph, id: NodeId) -> bool {
    is_f32_conv(body, id, |group| group > 1)
}

fn is_f32_conv(body: &Graph, id: NodeId, group: impl Fn(usize) -> bool) -> bool {
    let n = &body.nodes[id];
    matches!(&n.op, Op::Conv(c) if group(c.group))
        && n.ty.dtype == DType::F32
        && n.ty.rank() == 4
        && n.inputs
            .iter()
            .all(|&a| body.nodes[a].ty.dtype == DType::F32)
}

/// A dense f32 copy of body node `x` (a view of it when it is one already).
pub(super) fn dense_operand(
    body: &Graph,
    inputs: &[u32],
    x: NodeId,
    what: &str,
    precision: Precision,
    sink: &mut Sink,
) -> R<(u32, Vec<usize>)> {
    let v = operand(body, inputs, x, what, precision, sink)?;
    if v.is_dense() {
        return Ok((v.buf, v.shape));
    }
    let buf = sink.scratch(&format!("{what}.dense_{}", body.nodes[x].name), &v.shape);
    lower_value(body, x, inputs, buf, precision, sink)?;
    Ok((buf, v.shape))
}

/// Lowers grouped convolution `cv` of `body` to a direct kernel (see the module doc);
/// returns the body with the convolution replaced by its result plus its bias, and the
/// inputs that body reads.
fn grouped_conv_product(
    body: &Graph,
    inputs: &[u32],
    cv: NodeId,
    out: u32,
    out_f32: bool,
    precision: Precision,
    sink: &mut Sink,
) -> R<(Graph, Vec<u32>)> {
    let node = body.nodes[cv].clone();
    let Op::Conv(c) = &node.op else {
        unreachable!("a convolution")
    };
    let what = node.name.clone();
    let (xb, xs) = dense_operand(body, inputs, node.inputs[0], &what, precision, sink)?;
    let (wb, ws) = dense_operand(body, inputs, node.inputs[1], &what, precision, sink)?;
    let dest = destination(body, cv, (out, inputs.contains(&out)), out_f32, sink);
    let name = sink.name("grouped_conv");
    let kern = grouped_conv(c, (xb, &xs), (wb, &ws), (dest, &node.ty.shape), name);
    sink.push(kern);
    let oc = ws[0];
    let bias = node.inputs.get(2).copied();
    let g = replace_node(body, cv, &mut |g, product, map| {
        let b = bias?;
        let rb = g.nodes.len();
        g.nodes.push(Node {
            name: format!("{}.bias", node.name),
            op: Op::Reshape(vec![oc, 1, 1]),
            inputs: vec![map(b)],
            ty: crate::ir::TensorType::new(DType::F32, vec![oc, 1, 1]),
        });
        Some(Node {
            op: Op::Binary(crate::ir::BinaryOp::Add),
            inputs: vec![product, rb],
            ..node.clone()
        })
    });
    let mut ins = inputs.to_vec();
    ins.push(dest);
    Ok((g, ins))
}

/// The direct grouped convolution `y[b, o, oy, :] = sum over (ci, ky, kx) of w[o, ci, ky, kx]
/// × x[b, group(o)·cpg + ci, iy, ix(:)]`: blocks of output rows; per row, the row is zeroed,
/// then each tap whose input row is inside the image adds along the output columns whose
/// input column is (a range known when lowering, so the inner loop has no test).
fn grouped_conv(
    c: &crate::ir::Conv2d,
    (x, xs): (u32, &[usize]),
    (w, ws): (u32, &[usize]),
    (y, ys): (u32, &[usize]),
    name: String,
) -> Kernel {
    let (channels, h, wd) = (xs[1], xs[2] as i64, xs[3] as i64);
    let (oc, cpg, kh, kw) = (ws[0], ws[1], ws[2], ws[3]);
    let (oh, ow) = (ys[2], ys[3]);
    let ocpg = oc / c.group;
    let rows = ys[0] * oc * oh;
    let per = (CPU_CHUNK / (ow * cpg * kh * kw).max(1)).max(1);
    let [sy, sx] = c.strides.map(|s| s as i64);
    let [dy, dx] = c.dilations.map(|d| d as i64);
    let (pt, pl) = (c.pads[0] as i64, c.pads[1] as i64);
    let g = Graph::default();
    let mut e = emitter(&g, &[]);
    let (r, ox, ci, ky, wv) = (e.var(), e.var(), e.var(), e.var(), e.var());
    let row = Expr::Var(r);
    let (b, o, oy) = (
        div(row.clone(), oc * oh),
        rem(div(row.clone(), oh), oc),
        rem(row.clone(), oh),
    );
    let at = |col: Expr| add(mul(row.clone(), Expr::I(ow as i64)), col);
    let range = |var: u32, lo: i64, hi: i64, body: Vec<Stmt>| Stmt::For {
        var,
        start: Expr::I(lo),
        end: Expr::I(hi),
        step: Expr::I(1),
        uniform: false,
        body,
    };
    let load = |buf: u32, index: Expr| Expr::Load {
        buf,
        index: Box::new(index),
    };
    let zero = range(
        ox,
        0,
        ow as i64,
        vec![Stmt::Store {
            buf: y,
            index: at(Expr::Var(ox)),
            value: Expr::F(0.0),
        }],
    );
    // Input row iy = oy·sy + ky·dy - pt of channel group(o)·cpg + ci.
    let iy = Expr::Index(
        IndexOp::Sub,
        Box::new(add(mul(oy, Expr::I(sy)), mul(Expr::Var(ky), Expr::I(dy)))),
        Box::new(Expr::I(pt)),
    );
    let inside = within(&iy, 0, h);
    let channel = add(
        mul(div(o.clone(), ocpg), Expr::I(cpg as i64)),
        Expr::Var(ci),
    );
    let in_row = mul(
        add(
            mul(add(mul(b, Expr::I(channels as i64)), channel), Expr::I(h)),
            iy,
        ),
        Expr::I(wd),
    );
    let mut taps = Vec::new();
    for kx in 0..kw as i64 {
        // Columns ox with 0 <= ox·sx + kx·dx - pl < wd.
        let (lo, hi) = column_range(kx * dx - pl, sx, wd, ow);
        if hi <= lo {
            continue;
        }
        let weight = add(
            mul(
                add(
                    mul(
                        add(mul(o.clone(), Expr::I(cpg as i64)), Expr::Var(ci)),
                        Expr::I(kh as i64),
                    ),
                    Expr::Var(ky),
                ),
                Expr::I(kw as i64),
            ),
            Expr::I(kx),
        );
        taps.push(Stmt::Let {
            var: wv,
            value: load(w, weight),
        });
        let col = Expr::Index(
            IndexOp::Sub,
            Box::new(add(mul(Expr::Var(ox), Expr::I(sx)), Expr::I(kx * dx))),
            Box::new(Expr::I(pl)),
        );
        let sum = Expr::Binary(
            crate::ir::BinaryOp::Add,
            Box::new(load(y, at(Expr::Var(ox)))),
            Box::new(Expr::Binary(
                crate::ir::BinaryOp::Mul,
                Box::new(Expr::Var(wv)),
                Box::new(load(x, add(in_row.clone(), col))),
            )),
        );
        taps.push(range(
            ox,
            lo,
            hi,
            vec![Stmt::Store {
                buf: y,
                index: at(Expr::Var(ox)),
                value: sum,
            }],
        ));
    }
    let per_ky = vec![Stmt::If {
        cond: inside,
        then: taps,
    }];
    let per_ci = vec![range(ky, 0, kh as i64, per_ky)];
    let per_row = vec![zero, range(ci, 0, cpg as i64, per_ci)];
    e.push(chunk_loop(r, rows, per, per_row));
    let launch = Launch {
        grid: rows.div_ceil(per).max(1),
        block: 1,
    };
    e.finish(name, launch, Precision::F32, &[x, w], y)
}

/// Builds the node that replaces a product (see [`replace_node`]).
type Replacement<'a> =
    dyn FnMut(&mut Graph, NodeId, &dyn Fn(NodeId) -> NodeId) -> Option<Node> + 'a;

/// `body` with node `id` replaced: `make(g, input, map)` gets the graph built so far, a new
/// input node of `id`'s type (the product, listed last in the inputs) and the id map of the
/// nodes before `id`; it may push nodes and returns the node that stands for `id` (`None`:
/// the input itself). Node order stays topological.
pub(super) fn replace_node(body: &Graph, id: NodeId, make: &mut Replacement) -> Graph {
    let mut g = Graph::default();
    let mut map = vec![usize::MAX; body.nodes.len()];
    let mut product = None;
    for (i, n) in body.nodes.iter().enumerate() {
        if i == id {
            let input = g.nodes.len();
            g.nodes.push(Node {
                name: format!("{}.product", n.name),
                op: Op::Input,
                inputs: vec![],
                ty: crate::ir::TensorType::new(DType::F32, n.ty.shape.clone()),
            });
            let before = map.clone();
            map[i] = match make(&mut g, input, &|a| before[a]) {
                Some(node) => {
                    g.nodes.push(node);
                    g.nodes.len() - 1
                }
                None => input,
            };
            product = Some(input);
        } else {
            map[i] = g.nodes.len();
            g.nodes.push(Node {
                inputs: n.inputs.iter().map(|&a| map[a]).collect(),
                ..n.clone()
            });
        }
    }
    g.inputs = body.inputs.iter().map(|&i| map[i]).collect();
    g.inputs.extend(product);
    g.outputs = body
        .outputs
        .iter()
        .map(|(n, o)| (n.clone(), map[*o]))
        .collect();
    g
}

/// An im2col kernel: `cols[n, (c, ky, kx), (oy, ox)]` = the input under that window
/// position, 0 in the padding. `g` has one input: the image, in buffer `inputs[0]`.
fn im2col(
    g: &Graph,
    inputs: &[u32],
    c: &crate::ir::Conv2d,
    (kh, kw): (usize, usize),
    (oh, ow): (usize, usize),
    cols: u32,
    name: String,
) -> R<Kernel> {
    let xs = g.nodes[0].ty.shape.clone();
    let k = xs[1] * kh * kw;
    let p = oh * ow;
    let rows = xs[0] * k;
    let per = (CPU_CHUNK / p.max(1)).max(1);
    let mut e = emitter(g, inputs);
    let r = e.var();
    let oy = e.var();
    let ox = e.var();
    e.open();
    let (n, kk) = (div(Expr::Var(r), k), rem(Expr::Var(r), k));
    let ch = div(kk.clone(), kh * kw);
    let ky = rem(div(kk.clone(), kw), kh);
    let kx = rem(kk, kw);
    e.open();
    let (iy, in_y) = Emitter::window_pos(
        &Expr::Var(oy),
        &ky,
        c.strides[0],
        c.dilations[0],
        c.pads[0],
        xs[2],
    );
    e.open();
    let (ix, in_x) = Emitter::window_pos(
        &Expr::Var(ox),
        &kx,
        c.strides[1],
        c.dilations[1],
        c.pads[1],
        xs[3],
    );
    let v = e.guarded(and(in_y, in_x), 0, &[n, ch, iy, ix], Expr::F(0.0))?;
    let at = add(
        mul(Expr::Var(r), Expr::I(p as i64)),
        add(mul(Expr::Var(oy), Expr::I(ow as i64)), Expr::Var(ox)),
    );
    e.push(Stmt::Store {
        buf: cols,
        index: at,
        value: v,
    });
    let body_x = e.close();
    e.push(Stmt::For {
        var: ox,
        start: Expr::I(0),
        end: Expr::I(ow as i64),
        step: Expr::I(1),
        uniform: false,
        body: body_x,
    });
    let body_y = e.close();
    e.push(Stmt::For {
        var: oy,
        start: Expr::I(0),
        end: Expr::I(oh as i64),
        step: Expr::I(1),
        uniform: false,
        body: body_y,
    });
    let row_body = e.close();
    e.push(chunk_loop(r, rows, per, row_body));
    let launch = Launch {
        grid: rows.div_ceil(per).max(1),
        block: 1,
    };
    Ok(e.finish(name, launch, Precision::F32, inputs, cols))
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
    if inner > CPU_CHUNK && n > 0 {
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
        let launch = Launch {
            grid: (rows * per_row).max(1),
            block: 1,
        };
        return Ok(e.finish(name, launch, precision, inputs, out));
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
    Ok(e.finish(name, Launch { grid, block: 1 }, precision, inputs, out))
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

/// Column-panel width of packed weights (`SMELT_PANEL` in `smelt/cpu.h`).
pub const PANEL: usize = 32;

/// Stores each f32 weight that is the right operand of exactly one library product (the
/// same for every batch, read by nothing else, not an output) in that product's packed
/// layout: column panels of [`PANEL`] (see [`Gemm::b_panels`]). Packing at compile time
/// means a run reads each weight once, in order, and never repacks it.
pub(super) fn pack_weights(p: &mut crate::kernel::ir::Program) {
    // (kernel, constant) of every product whose weight can be packed.
    let mut jobs: Vec<(usize, usize)> = Vec::new();
    for ki in 0..p.kernels.len() {
        let [Stmt::Gemm(g)] = p.kernels[ki].body.as_slice() else {
            continue;
        };
        let b = g.b.buf;
        let Some(ci) = p.constants.iter().position(|(buf, _)| *buf == b) else {
            continue;
        };
        let readers = p.kernels.iter().filter(|k| k.reads.contains(&b)).count();
        let shared = g.b.batch_strides.iter().all(|&s| s == 0);
        let output = p.outputs.iter().any(|(_, o)| *o == b);
        let is_f32 = matches!(p.constants[ci].1.data(), crate::ir::Data::F32(_));
        // `a` reading the same weight (W·W) would read it packed.
        if readers != 1 || !shared || output || !is_f32 || g.b_panels.is_some() || g.a.buf == b {
            continue;
        }
        jobs.push((ki, ci));
    }
    // The weights are packed on every core: a large model's are hundreds of MB.
    let packed: Vec<Vec<f32>> = crate::parallel::map(&jobs, |&(ki, ci)| {
        let [Stmt::Gemm(g)] = p.kernels[ki].body.as_slice() else {
            unreachable!("a product kernel")
        };
        let crate::ir::Data::F32(values) = p.constants[ci].1.data() else {
            unreachable!("an f32 weight")
        };
        pack(values, &g.b, g.k, g.n)
    });
    for (&(ki, ci), values) in jobs.iter().zip(packed) {
        let b = p.constants[ci].0;
        let len = values.len();
        p.constants[ci].1 = std::sync::Arc::new(crate::ir::Tensor::f32([len], values));
        let decl = &mut p.buffers[b as usize];
        decl.shape = vec![len];
        decl.len = len;
        if let [Stmt::Gemm(g)] = p.kernels[ki].body.as_mut_slice() {
            g.b_panels = Some(PANEL);
        }
    }
}

/// The k×n matrix `m` of `values` in column panels of [`PANEL`]: panel `j / PANEL` holds rows
/// `0..k` of its columns, each row's PANEL elements contiguous (zeros past `n`).
fn pack(values: &[f32], m: &MatrixView, k: usize, n: usize) -> Vec<f32> {
    let panels = n.div_ceil(PANEL);
    let mut packed = vec![0f32; panels * k * PANEL];
    for (pi, panel) in packed.chunks_mut(k * PANEL).enumerate() {
        let j0 = pi * PANEL;
        let w = PANEL.min(n - j0);
        if m.row_stride == 1 {
            // A transposed weight (`x·Wᵀ`): each column is contiguous; read it in order.
            for j in 0..w {
                let at = (m.offset + (j0 + j) as i64 * m.col_stride) as usize;
                for (q, &v) in values[at..at + k].iter().enumerate() {
                    panel[q * PANEL + j] = v;
                }
            }
            continue;
        }
        for q in 0..k {
            let row = &mut panel[q * PANEL..q * PANEL + w];
            let at = m.offset + q as i64 * m.row_stride + j0 as i64 * m.col_stride;
            if m.col_stride == 1 {
                row.copy_from_slice(&values[at as usize..at as usize + w]);
            } else {
                for (j, x) in row.iter_mut().enumerate() {
                    *x = values[(at + j as i64 * m.col_stride) as usize];
                }
            }
        }
    }
    packed
}
