//! cuBLASLt forms of GPU product kernels. A product kernel whose whole body is
//! `act(alpha · A×B + bias + residual)` (each part optional; `act` ReLU or tanh-GELU; `bias`
//! a vector along the last dim; `residual` a tensor of the output's shape) over operands
//! that are strided views of its inputs (transposes and reshapes cost nothing) is exactly
//! one cuBLASLt matmul with an epilogue. Lowering attaches that call to the kernel
//! ([`Kernel::blas`](crate::kernel::ir::Kernel)); the runtime makes it where the library is
//! present and launches the kernel otherwise.
//!
//! cuBLASLt is column-major, smelt row-major: a row-major `C = A×B` (m×n) is the
//! column-major `Cᵀ = Bᵀ×Aᵀ` (n×m), so the library's left operand is `Bᵀ`, its right one
//! `Aᵀ`, and the bias (one value per column of `C`) is its per-row bias.

use super::cpu::{matrix, view};
use crate::ir::{BinaryOp, DType, Graph, NodeId, Op, UnaryOp};
use crate::kernel::ir::{BlasActivation, BlasGemm, BlasMatrix};

/// The cuBLASLt call computing `body` (the kernel writing buffer `out` of type `out_dtype`
/// from `inputs`), if there is one.
pub(super) fn blas_form(
    body: &Graph,
    inputs: &[u32],
    out: u32,
    out_dtype: DType,
) -> Option<BlasGemm> {
    let root = body.outputs.first()?.1;
    let dtype = body.nodes[root].ty.dtype;
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) || out_dtype != dtype {
        return None;
    }
    let shape = body.nodes[root].ty.shape.clone();
    let mut used = vec![false; body.nodes.len()];
    let (sum, activation) = match body.nodes[root].op {
        Op::Unary(UnaryOp::Relu) => (body.nodes[root].inputs[0], Some(BlasActivation::Relu)),
        Op::Unary(UnaryOp::GeluTanh) => {
            (body.nodes[root].inputs[0], Some(BlasActivation::GeluTanh))
        }
        _ => (root, None),
    };
    used[root] = true;
    let mut terms = Vec::new();
    let mut stack = vec![sum];
    while let Some(t) = stack.pop() {
        let n = &body.nodes[t];
        used[t] = true;
        if matches!(n.op, Op::Binary(BinaryOp::Add)) && n.ty.dtype == dtype {
            stack.extend(n.inputs.iter().rev());
        } else {
            terms.push(t);
        }
    }
    let input_buf = |id: NodeId| {
        let k = body.inputs.iter().position(|&i| i == id)?;
        Some(inputs[k])
    };
    let (mut product, mut bias, mut residual) = (None, None, None);
    for t in terms {
        let n = &body.nodes[t];
        match &n.op {
            Op::MatMul if product.is_none() => product = Some((t, 1.0)),
            Op::Binary(BinaryOp::Mul) if product.is_none() => {
                let [x, y] = n.inputs[..] else { return None };
                let (mm, c) = if matches!(body.nodes[x].op, Op::MatMul) {
                    (x, y)
                } else {
                    (y, x)
                };
                let Op::Constant(alpha) = &body.nodes[c].op else {
                    return None;
                };
                if !matches!(body.nodes[mm].op, Op::MatMul) || alpha.numel() != 1 {
                    return None;
                }
                used[c] = true;
                product = Some((mm, alpha.to_f64()[0]));
            }
            Op::Input if n.ty.dtype == dtype => {
                let s = &n.ty.shape;
                let along_last = s.len() <= shape.len()
                    && s.last() == shape.last()
                    && s[..s.len() - 1].iter().all(|&d| d == 1);
                if *s == shape && residual.is_none() {
                    residual = Some(input_buf(t)?);
                } else if along_last && bias.is_none() {
                    bias = Some(input_buf(t)?);
                } else {
                    return None;
                }
            }
            _ => return None,
        }
    }
    let (mm, alpha) = product?;
    used[mm] = true;
    if body.nodes[mm].ty.shape != shape {
        return None;
    }
    let (a, b) = (body.nodes[mm].inputs[0], body.nodes[mm].inputs[1]);
    let operand = |x: NodeId, used: &mut Vec<bool>| {
        if body.nodes[x].ty.dtype != dtype || body.nodes[x].ty.rank() < 2 {
            return None;
        }
        let v = view(body, x, inputs)?;
        let mut id = x;
        while !matches!(body.nodes[id].op, Op::Input) {
            used[id] = true;
            id = body.nodes[id].inputs[0];
        }
        Some(v)
    };
    let av = operand(a, &mut used)?;
    let bv = operand(b, &mut used)?;
    if !body
        .nodes
        .iter()
        .enumerate()
        .all(|(i, n)| used[i] || matches!(n.op, Op::Input))
    {
        return None;
    }
    let r = shape.len();
    let (m, n, k) = (shape[r - 2], shape[r - 1], av.shape[av.shape.len() - 1]);
    let batch = &shape[..r - 2];
    let count: usize = batch.iter().product();
    let int = |v: usize| i32::try_from(v).is_ok();
    if ![m, n, k, count].into_iter().all(|v| v > 0 && int(v)) {
        return None;
    }
    let (av, bv) = (matrix(&av, batch), matrix(&bv, batch));
    let d_stride = if count > 1 { m * n } else { 0 };
    let call = BlasGemm {
        dtype,
        m: n,
        n: m,
        k,
        batch: count,
        // Bᵀ (n×k): element (j, p) of B at p·row_stride + j·col_stride.
        a: column_major(
            (bv.buf, usize::try_from(bv.offset).ok()?),
            (n, k),
            (bv.col_stride, bv.row_stride),
            batch_stride(batch, &bv.batch_strides)?,
        )?,
        // Aᵀ (k×m): element (p, i) of A at i·row_stride + p·col_stride.
        b: column_major(
            (av.buf, usize::try_from(av.offset).ok()?),
            (k, m),
            (av.col_stride, av.row_stride),
            batch_stride(batch, &av.batch_strides)?,
        )?,
        d: BlasMatrix {
            buf: out,
            trans: false,
            ld: n,
            batch_stride: d_stride,
            offset: 0,
        },
        alpha,
        bias,
        residual,
        activation,
    };
    Some(fold_batch(call))
}

/// A batch of products sharing their left operand (a weight: `Bᵀ` is cuBLASLt's `a`) whose
/// right operands and results are consecutive is one product with the batch's columns side
/// by side: `[b, s, d] × [d, e]` is one `(b·s) × d` by `d × e` product.
fn fold_batch(g: BlasGemm) -> BlasGemm {
    let consecutive = |x: &BlasMatrix| !x.trans && x.batch_stride == g.n * x.ld;
    if g.batch > 1 && g.a.batch_stride == 0 && consecutive(&g.b) && consecutive(&g.d) {
        let flat = |x: BlasMatrix| BlasMatrix {
            batch_stride: 0,
            ..x
        };
        let n = g.n * g.batch;
        if i32::try_from(n).is_ok() {
            return BlasGemm {
                n,
                batch: 1,
                b: flat(g.b),
                d: flat(g.d),
                a: g.a,
                ..g
            };
        }
    }
    g
}

/// The column-major operand of a `rows × cols` matrix whose element (r, c) is at
/// `offset + r·strides.0 + c·strides.1` of `buf`: stored as is when its rows are
/// contiguous, transposed when its columns are; `None` when neither.
fn column_major(
    (buf, offset): (u32, usize),
    (rows, cols): (usize, usize),
    (sr, sc): (i64, i64),
    batch_stride: usize,
) -> Option<BlasMatrix> {
    let ld = |stride: i64, other: usize, min: usize| {
        let ld = if other == 1 {
            min
        } else {
            stride.try_into().ok()?
        };
        (ld >= min.max(1) && i32::try_from(ld).is_ok()).then_some(ld)
    };
    let (trans, ld) = if sr == 1 || rows == 1 {
        (false, ld(sc, cols, rows)?)
    } else if sc == 1 || cols == 1 {
        (true, ld(sr, rows, cols)?)
    } else {
        return None;
    };
    Some(BlasMatrix {
        buf,
        trans,
        ld,
        batch_stride,
        offset,
    })
}

/// The one stride between consecutive products of the flattened `batch`, given an operand's
/// stride along each batch dim (0 where it is broadcast): 0 when every product reads the same
/// matrix; `None` when the products are not evenly spaced.
fn batch_stride(batch: &[usize], strides: &[i64]) -> Option<usize> {
    let mut per = None::<i64>;
    let mut later = 1i64;
    let mut broadcast = 0;
    for (&extent, &stride) in batch.iter().zip(strides).rev() {
        if extent > 1 {
            if stride == 0 {
                broadcast += 1;
            } else {
                let s = per.get_or_insert(stride / later);
                if *s * later != stride {
                    return None;
                }
            }
        }
        later *= extent as i64;
    }
    match per {
        None => Some(0),
        Some(_) if broadcast > 0 => None,
        Some(s) => s.try_into().ok().filter(|&s: &usize| s > 0),
    }
}

#[cfg(test)]
mod tests {
    use super::{batch_stride, column_major};

    #[test]
    fn batch_strides_flatten_only_when_evenly_spaced() {
        // [2, 3] batches of contiguous 4×5 matrices.
        assert_eq!(batch_stride(&[2, 3], &[60, 20]), Some(20));
        // A matrix shared by the whole batch.
        assert_eq!(batch_stride(&[2, 3], &[0, 0]), Some(0));
        // Shared along one batch dim only: not one stride.
        assert_eq!(batch_stride(&[2, 3], &[0, 20]), None);
        // Heads transposed out of order: batch (h, b) over a [b, h, …] buffer.
        assert_eq!(batch_stride(&[2, 3], &[20, 40]), None);
        // Extent-1 dims do not matter; an empty batch is one product.
        assert_eq!(batch_stride(&[2, 1, 3], &[60, 7, 20]), Some(20));
        assert_eq!(batch_stride(&[], &[]), Some(0));
    }

    #[test]
    fn operands_are_stored_or_transposed() {
        // Rows contiguous (column-major as is).
        let x = column_major((0, 0), (4, 5), (1, 4), 0).unwrap();
        assert_eq!((x.trans, x.ld), (false, 4));
        // Columns contiguous: the stored 5×4 matrix, read transposed.
        let x = column_major((0, 0), (4, 5), (5, 1), 0).unwrap();
        assert_eq!((x.trans, x.ld), (true, 5));
        // Padded rows: a leading dim past the row count.
        let x = column_major((0, 0), (4, 5), (1, 8), 0).unwrap();
        assert_eq!((x.trans, x.ld), (false, 8));
        // Neither dim contiguous.
        assert!(column_major((0, 0), (4, 5), (2, 8), 0).is_none());
        // One column: any stride is fine, the leading dim is the row count.
        let x = column_major((0, 0), (4, 1), (1, 99), 0).unwrap();
        assert_eq!((x.trans, x.ld), (false, 4));
    }
}
