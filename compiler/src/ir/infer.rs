//! Shape and dtype inference: one function from an op and its input types to its output type.

use super::dtype::{fmt_shape, DType, TensorType};
use super::op::{BinaryOp, Op, PadMode, PoolKind, ReduceKind};

/// Numpy broadcasting of two shapes; `None` when they are incompatible.
pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i + a.len() >= rank {
            a[i + a.len() - rank]
        } else {
            1
        };
        let db = if i + b.len() >= rank {
            b[i + b.len() - rank]
        } else {
            1
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(out)
}

fn arity(op: &Op, inputs: &[TensorType], lo: usize, hi: usize) -> Result<(), String> {
    if inputs.len() < lo || inputs.len() > hi {
        let want = if lo == hi {
            lo.to_string()
        } else {
            format!("{lo} to {hi}")
        };
        return Err(format!(
            "{} takes {want} inputs, got {}",
            op.name(),
            inputs.len()
        ));
    }
    Ok(())
}

fn bcast(a: &TensorType, b: &TensorType) -> Result<Vec<usize>, String> {
    broadcast_shapes(&a.shape, &b.shape).ok_or_else(|| {
        format!(
            "shapes {} and {} do not broadcast",
            fmt_shape(&a.shape),
            fmt_shape(&b.shape)
        )
    })
}

fn same_dtype(a: &TensorType, b: &TensorType) -> Result<(), String> {
    if a.dtype != b.dtype {
        return Err(format!("dtypes differ: {} and {}", a.dtype, b.dtype));
    }
    Ok(())
}

/// The number of data dims (`m`) one row of GatherND/ScatterND indices addresses, after
/// checking the indices' dtype, rank and shared batch dims.
fn nd_index_depth(x: &TensorType, i: &TensorType, batch_dims: usize) -> Result<usize, String> {
    if !matches!(i.dtype, DType::I64 | DType::I32) {
        return Err(format!("nd indices must be i64 or i32, got {}", i.dtype));
    }
    if i.rank() == 0 || x.rank() == 0 {
        return Err("nd data and indices must have rank 1 or more".into());
    }
    if batch_dims >= i.rank().min(x.rank()) {
        return Err(format!(
            "batch_dims {batch_dims} must be below both ranks (data {}, indices {})",
            x.rank(),
            i.rank()
        ));
    }
    let m = i.shape[i.rank() - 1];
    if m == 0 || m > x.rank() - batch_dims {
        return Err(format!(
            "the indices' last dim ({m}) must be 1..={} for data {} with batch_dims {batch_dims}",
            x.rank() - batch_dims,
            fmt_shape(&x.shape)
        ));
    }
    if x.shape[..batch_dims] != i.shape[..batch_dims] {
        return Err(format!(
            "batch dims differ: data {}, indices {}",
            fmt_shape(&x.shape),
            fmt_shape(&i.shape)
        ));
    }
    Ok(m)
}

fn check_axis(axis: usize, rank: usize) -> Result<(), String> {
    if axis >= rank {
        return Err(format!("axis {axis} out of range for rank {rank}"));
    }
    Ok(())
}

fn float_input(t: &TensorType, what: &str) -> Result<(), String> {
    if !t.dtype.is_float() {
        return Err(format!("{what} needs a float input, got {}", t.dtype));
    }
    Ok(())
}

/// The most elements one tensor may have (2^32: 16 GiB of f32). Larger shapes are
/// rejected with an error rather than overflowing size arithmetic or attempting the
/// allocation.
pub const MAX_ELEMENTS: usize = 1 << 32;

/// The element count of a shape, or an error when it exceeds [`MAX_ELEMENTS`] (or overflows).
pub fn checked_numel(shape: &[usize]) -> Result<usize, String> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= MAX_ELEMENTS)
        .ok_or_else(|| {
            format!(
                "shape {} has more than 2^32 elements (smelt's limit for one tensor)",
                fmt_shape(shape)
            )
        })
}

/// Output type of `op` applied to inputs of these types, or a message saying what is wrong.
/// Every shape it returns has at most [`MAX_ELEMENTS`] elements.
pub fn infer(op: &Op, inputs: &[TensorType]) -> Result<TensorType, String> {
    let t = infer_op(op, inputs)?;
    checked_numel(&t.shape)?;
    Ok(t)
}

/// Output length of a sliding window along one dim: input `n`, padding `lo`/`hi`, window
/// `kernel` with `dilation`, `stride`; with `ceil`, a last partial window that starts inside
/// the input or the left padding counts. All arithmetic is checked.
fn window_len(
    n: usize,
    lo: usize,
    hi: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    ceil: bool,
) -> Result<usize, String> {
    if kernel == 0 || stride == 0 || dilation == 0 {
        return Err(format!(
            "window size {kernel}, stride {stride} and dilation {dilation} must all be positive"
        ));
    }
    let (n, lo, hi) = (n as i128, lo as i128, hi as i128);
    let (kernel, stride, dilation) = (kernel as i128, stride as i128, dilation as i128);
    let padded = n + lo + hi;
    let span = dilation * (kernel - 1) + 1;
    if padded < span {
        return Err(format!("window {span} larger than padded input {padded}"));
    }
    let mut out = if ceil {
        (padded - span + stride - 1) / stride + 1
    } else {
        (padded - span) / stride + 1
    };
    if ceil && (out - 1) * stride >= n + lo {
        out -= 1;
    }
    usize::try_from(out).map_err(|_| format!("window output length {out} is too large"))
}

fn infer_op(op: &Op, inputs: &[TensorType]) -> Result<TensorType, String> {
    match op {
        Op::Input => Err("an input node has no inputs to infer from".into()),
        Op::Constant(t) => {
            arity(op, inputs, 0, 0)?;
            Ok(t.ty())
        }
        Op::Unary(u) => {
            arity(op, inputs, 1, 1)?;
            let x = &inputs[0];
            if !u.accepts(x.dtype) {
                return Err(format!("{} does not accept dtype {}", op.name(), x.dtype));
            }
            Ok(TensorType::new(u.output(x.dtype), x.shape.clone()))
        }
        Op::Binary(b) => {
            arity(op, inputs, 2, 2)?;
            let (x, y) = (&inputs[0], &inputs[1]);
            same_dtype(x, y)?;
            if b.is_logical() && x.dtype != DType::Bool {
                return Err(format!("{} needs bool inputs, got {}", op.name(), x.dtype));
            }
            if !b.is_logical() && x.dtype == DType::Bool && *b != BinaryOp::Equal {
                return Err(format!("{} does not accept bool", op.name()));
            }
            let shape = bcast(x, y)?;
            let dtype = if b.is_predicate() {
                DType::Bool
            } else {
                x.dtype
            };
            Ok(TensorType::new(dtype, shape))
        }
        Op::Where => {
            arity(op, inputs, 3, 3)?;
            if inputs[0].dtype != DType::Bool {
                return Err(format!("condition must be bool, got {}", inputs[0].dtype));
            }
            same_dtype(&inputs[1], &inputs[2])?;
            let s = bcast(&inputs[0], &inputs[1])?;
            let s = bcast(&TensorType::new(DType::Bool, s), &inputs[2])?;
            Ok(TensorType::new(inputs[1].dtype, s))
        }
        Op::Cast(d) => {
            arity(op, inputs, 1, 1)?;
            Ok(TensorType::new(*d, inputs[0].shape.clone()))
        }
        Op::MatMul => {
            arity(op, inputs, 2, 2)?;
            let (a, b) = (&inputs[0], &inputs[1]);
            same_dtype(a, b)?;
            if a.dtype == DType::Bool {
                return Err("matmul does not accept bool".into());
            }
            matmul_shape(&a.shape, &b.shape).map(|s| TensorType::new(a.dtype, s))
        }
        Op::Conv(c) => {
            arity(op, inputs, 2, 3)?;
            let (x, w) = (&inputs[0], &inputs[1]);
            same_dtype(x, w)?;
            float_input(x, "conv")?;
            if x.rank() != 4 || w.rank() != 4 {
                return Err(format!(
                    "conv needs 4-D input and weight, got {} and {}",
                    fmt_shape(&x.shape),
                    fmt_shape(&w.shape)
                ));
            }
            let g = c.group;
            // Checked: a huge group must be refused, not wrap to a matching channel count.
            let channels = w.shape[1].checked_mul(g);
            if g == 0 || channels != Some(x.shape[1]) || w.shape[0] % g != 0 {
                return Err(format!(
                    "conv channels: input {} and weight {} with group {g}",
                    fmt_shape(&x.shape),
                    fmt_shape(&w.shape)
                ));
            }
            if let Some(b) = inputs.get(2) {
                same_dtype(x, b)?;
                if b.shape != [w.shape[0]] {
                    return Err(format!(
                        "conv bias must be [{}], got {}",
                        w.shape[0],
                        fmt_shape(&b.shape)
                    ));
                }
            }
            let mut out = vec![x.shape[0], w.shape[0]];
            for i in 0..2 {
                let n = window_len(
                    x.shape[2 + i],
                    c.pads[i],
                    c.pads[i + 2],
                    w.shape[2 + i],
                    c.strides[i],
                    c.dilations[i],
                    false,
                )
                .map_err(|e| format!("conv dim {}: {e}", 2 + i))?;
                out.push(n);
            }
            Ok(TensorType::new(x.dtype, out))
        }
        Op::Pool(p) => {
            arity(op, inputs, 1, 1)?;
            let x = &inputs[0];
            if matches!(p.kind, PoolKind::Avg { .. }) {
                float_input(x, "avgpool")?;
            }
            if x.rank() != 4 {
                return Err(format!(
                    "pool needs a 4-D input, got {}",
                    fmt_shape(&x.shape)
                ));
            }
            let mut out = vec![x.shape[0], x.shape[1]];
            for i in 0..2 {
                let n = window_len(
                    x.shape[2 + i],
                    p.pads[i],
                    p.pads[i + 2],
                    p.kernel[i],
                    p.strides[i],
                    p.dilations[i],
                    p.ceil_mode,
                )
                .map_err(|e| format!("pool dim {}: {e}", 2 + i))?;
                out.push(n);
            }
            Ok(TensorType::new(x.dtype, out))
        }
        Op::Softmax { axis } | Op::LogSoftmax { axis } => {
            arity(op, inputs, 1, 1)?;
            float_input(&inputs[0], "softmax")?;
            check_axis(*axis, inputs[0].rank())?;
            Ok(inputs[0].clone())
        }
        Op::LayerNorm { axis, .. } => {
            arity(op, inputs, 2, 3)?;
            let x = &inputs[0];
            float_input(x, "layernorm")?;
            check_axis(*axis, x.rank())?;
            for p in &inputs[1..] {
                same_dtype(x, p)?;
                let ok = broadcast_shapes(&x.shape[*axis..], &p.shape)
                    .is_some_and(|s| s == x.shape[*axis..]);
                if !ok {
                    return Err(format!(
                        "layernorm parameter {} does not broadcast to {}",
                        fmt_shape(&p.shape),
                        fmt_shape(&x.shape[*axis..])
                    ));
                }
            }
            Ok(x.clone())
        }
        Op::Reduce {
            kind,
            axes,
            keepdims,
        } => {
            arity(op, inputs, 1, 1)?;
            let x = &inputs[0];
            if x.dtype == DType::Bool && !matches!(kind, ReduceKind::Max | ReduceKind::Min) {
                return Err(format!("{} does not accept bool", op.name()));
            }
            for w in axes.windows(2) {
                if w[0] >= w[1] {
                    return Err(format!("reduce axes {axes:?} must be sorted and distinct"));
                }
            }
            for &a in axes {
                check_axis(a, x.rank())?;
            }
            Ok(TensorType::new(
                x.dtype,
                reduced_shape(&x.shape, axes, *keepdims),
            ))
        }
        Op::ArgReduce { axis, keepdims, .. } => {
            arity(op, inputs, 1, 1)?;
            check_axis(*axis, inputs[0].rank())?;
            if inputs[0].shape[*axis] == 0 {
                return Err("argmax/argmin over an empty axis".into());
            }
            Ok(TensorType::new(
                DType::I64,
                reduced_shape(&inputs[0].shape, &[*axis], *keepdims),
            ))
        }
        Op::Reshape(s) => {
            arity(op, inputs, 1, 1)?;
            let x = &inputs[0];
            let n = s.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
            if n != Some(x.numel()) {
                return Err(format!(
                    "cannot reshape {} ({} elements) to {}",
                    fmt_shape(&x.shape),
                    x.numel(),
                    fmt_shape(s)
                ));
            }
            Ok(TensorType::new(x.dtype, s.clone()))
        }
        Op::Transpose(perm) => {
            arity(op, inputs, 1, 1)?;
            let x = &inputs[0];
            let mut seen = vec![false; x.rank()];
            if perm.len() != x.rank()
                || perm
                    .iter()
                    .any(|&p| p >= x.rank() || std::mem::replace(&mut seen[p], true))
            {
                return Err(format!(
                    "perm {perm:?} is not a permutation of rank {}",
                    x.rank()
                ));
            }
            Ok(TensorType::new(
                x.dtype,
                perm.iter().map(|&p| x.shape[p]).collect::<Vec<_>>(),
            ))
        }
        Op::Broadcast(s) => {
            arity(op, inputs, 1, 1)?;
            let x = &inputs[0];
            match broadcast_shapes(&x.shape, s) {
                Some(b) if &b == s => Ok(TensorType::new(x.dtype, s.clone())),
                _ => Err(format!(
                    "cannot broadcast {} to {}",
                    fmt_shape(&x.shape),
                    fmt_shape(s)
                )),
            }
        }
        Op::Concat { axis } => {
            if inputs.is_empty() {
                return Err("concat needs at least one input".into());
            }
            let first = &inputs[0];
            check_axis(*axis, first.rank())?;
            let mut out = first.shape.clone();
            out[*axis] = 0;
            for t in inputs {
                same_dtype(first, t)?;
                let compatible = t.rank() == first.rank()
                    && (0..t.rank()).all(|d| d == *axis || t.shape[d] == first.shape[d]);
                if !compatible {
                    return Err(format!(
                        "concat on axis {axis}: {} and {} differ off the axis",
                        fmt_shape(&first.shape),
                        fmt_shape(&t.shape)
                    ));
                }
                out[*axis] = out[*axis]
                    .checked_add(t.shape[*axis])
                    .ok_or("concatenated dim overflows")?;
            }
            Ok(TensorType::new(first.dtype, out))
        }
        Op::Slice {
            starts,
            steps,
            lens,
        } => {
            arity(op, inputs, 1, 1)?;
            let x = &inputs[0];
            if starts.len() != x.rank() || steps.len() != x.rank() || lens.len() != x.rank() {
                return Err(format!("slice parameters must have rank {}", x.rank()));
            }
            for d in 0..x.rank() {
                if steps[d] == 0 {
                    return Err("slice step 0".into());
                }
                if lens[d] > 0 {
                    let last = starts[d] as i128 + (lens[d] as i128 - 1) * steps[d] as i128;
                    if starts[d] >= x.shape[d] || last < 0 || last >= x.shape[d] as i128 {
                        return Err(format!(
                            "slice out of bounds on dim {d} of {}",
                            fmt_shape(&x.shape)
                        ));
                    }
                }
            }
            Ok(TensorType::new(x.dtype, lens.clone()))
        }
        Op::Gather { axis } => {
            arity(op, inputs, 2, 2)?;
            let (x, i) = (&inputs[0], &inputs[1]);
            check_axis(*axis, x.rank())?;
            if !matches!(i.dtype, DType::I64 | DType::I32) {
                return Err(format!(
                    "gather indices must be i64 or i32, got {}",
                    i.dtype
                ));
            }
            let mut out = x.shape[..*axis].to_vec();
            out.extend(&i.shape);
            out.extend(&x.shape[axis + 1..]);
            Ok(TensorType::new(x.dtype, out))
        }
        Op::GatherElements { axis } => {
            arity(op, inputs, 2, 2)?;
            let (x, i) = (&inputs[0], &inputs[1]);
            check_axis(*axis, x.rank())?;
            if !matches!(i.dtype, DType::I64 | DType::I32) || i.rank() != x.rank() {
                return Err("gather_elements indices must be i64/i32 of the data's rank".into());
            }
            Ok(TensorType::new(x.dtype, i.shape.clone()))
        }
        Op::GatherND { batch_dims } => {
            arity(op, inputs, 2, 2)?;
            let (x, i) = (&inputs[0], &inputs[1]);
            let m = nd_index_depth(x, i, *batch_dims)?;
            let mut out = i.shape[..i.rank() - 1].to_vec();
            out.extend(&x.shape[batch_dims + m..]);
            Ok(TensorType::new(x.dtype, out))
        }
        Op::ScatterND { reduction } => {
            arity(op, inputs, 3, 3)?;
            let (x, i, u) = (&inputs[0], &inputs[1], &inputs[2]);
            let m = nd_index_depth(x, i, 0)?;
            let mut want = i.shape[..i.rank() - 1].to_vec();
            want.extend(&x.shape[m..]);
            if u.shape != want || u.dtype != x.dtype {
                return Err(format!(
                    "scatter_nd updates must be {} {} (indices {}, data {}), got {} {}",
                    x.dtype,
                    fmt_shape(&want),
                    fmt_shape(&i.shape),
                    fmt_shape(&x.shape),
                    u.dtype,
                    fmt_shape(&u.shape)
                ));
            }
            if *reduction != super::op::ScatterReduction::None && x.dtype == DType::Bool {
                return Err(format!("scatter_nd reduction {reduction:?} on bool data"));
            }
            Ok(x.clone())
        }
        Op::Pad { pads, mode } => {
            arity(op, inputs, 1, 1)?;
            let x = &inputs[0];
            if pads.len() != x.rank() {
                return Err(format!("pad needs {} (before, after) pairs", x.rank()));
            }
            let mut out = Vec::new();
            for (d, &(b, a)) in pads.iter().enumerate() {
                let n = x.shape[d] as i128 + b as i128 + a as i128;
                if n < 0 {
                    return Err(format!("pad crops dim {d} below zero"));
                }
                let edge_mode = !matches!(mode, PadMode::Constant(_));
                if edge_mode && x.shape[d] == 0 && (b != 0 || a != 0) {
                    return Err(format!(
                        "{mode:?} padding of dim {d}, which is empty, has no values to repeat"
                    ));
                }
                out.push(usize::try_from(n).map_err(|_| format!("padded dim {d} is too large"))?);
            }
            Ok(TensorType::new(x.dtype, out))
        }
        Op::Trilu { .. } => {
            arity(op, inputs, 1, 1)?;
            if inputs[0].rank() < 2 {
                return Err("trilu needs rank >= 2".into());
            }
            Ok(inputs[0].clone())
        }
        Op::Fused(k) => {
            let body = &k.body;
            if inputs.len() != body.inputs.len() {
                return Err(format!(
                    "fused kernel takes {} inputs, got {}",
                    body.inputs.len(),
                    inputs.len()
                ));
            }
            for (i, (&b, t)) in body.inputs.iter().zip(inputs).enumerate() {
                if &body.nodes[b].ty != t {
                    return Err(format!(
                        "fused kernel input {i} is {}, got {t}",
                        body.nodes[b].ty
                    ));
                }
            }
            match body.outputs.as_slice() {
                [(_, out)] => Ok(body.nodes[*out].ty.clone()),
                _ => Err("a fused kernel has exactly one output".into()),
            }
        }
        Op::CumSum { axis, .. } => {
            arity(op, inputs, 1, 1)?;
            check_axis(*axis, inputs[0].rank())?;
            if inputs[0].dtype == DType::Bool {
                return Err("cumsum does not accept bool".into());
            }
            Ok(inputs[0].clone())
        }
    }
}

/// Shape after reducing `axes`.
pub fn reduced_shape(shape: &[usize], axes: &[usize], keepdims: bool) -> Vec<usize> {
    let mut out = Vec::new();
    for (d, &n) in shape.iter().enumerate() {
        if axes.contains(&d) {
            if keepdims {
                out.push(1);
            }
        } else {
            out.push(n);
        }
    }
    out
}

/// Output shape of numpy `matmul`.
pub fn matmul_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>, String> {
    if a.is_empty() || b.is_empty() {
        return Err("matmul operands must have rank >= 1".into());
    }
    let a2: Vec<usize> = if a.len() == 1 {
        vec![1, a[0]]
    } else {
        a.to_vec()
    };
    let b2: Vec<usize> = if b.len() == 1 {
        vec![b[0], 1]
    } else {
        b.to_vec()
    };
    let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
    let (k2, n) = (b2[b2.len() - 2], b2[b2.len() - 1]);
    if k != k2 {
        return Err(format!(
            "matmul inner dims differ: {} and {}",
            fmt_shape(a),
            fmt_shape(b)
        ));
    }
    let batch = broadcast_shapes(&a2[..a2.len() - 2], &b2[..b2.len() - 2]).ok_or_else(|| {
        format!(
            "matmul batch dims do not broadcast: {} and {}",
            fmt_shape(a),
            fmt_shape(b)
        )
    })?;
    let mut out = batch;
    if a.len() > 1 {
        out.push(m);
    }
    if b.len() > 1 {
        out.push(n);
    }
    Ok(out)
}
