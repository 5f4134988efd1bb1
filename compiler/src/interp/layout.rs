//! Ops that move elements without computing on them. Each builds a list of flat source
//! indices and picks them, so values keep their exact dtype.

use super::strides;
use crate::ir::{Data, PadMode, ScatterReduction, Tensor, TensorType};

/// Visits every multi-index of `shape` in row-major order.
fn for_each_index(shape: &[usize], mut f: impl FnMut(&[usize])) {
    let n: usize = shape.iter().product();
    let mut idx = vec![0usize; shape.len()];
    for _ in 0..n {
        f(&idx);
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

fn flat(idx: &[usize], strides: &[usize]) -> usize {
    idx.iter().zip(strides).map(|(i, s)| i * s).sum()
}

/// Permutes dims.
pub fn transpose(x: &Tensor, perm: &[usize]) -> Tensor {
    let out_shape: Vec<usize> = perm.iter().map(|&p| x.shape()[p]).collect();
    let s = strides(x.shape());
    let ps: Vec<usize> = perm.iter().map(|&p| s[p]).collect();
    let mut idx = Vec::with_capacity(x.numel());
    for_each_index(&out_shape, |i| idx.push(flat(i, &ps)));
    x.gather_flat(out_shape, &idx)
}

/// Broadcasts to `shape`.
pub fn broadcast(x: &Tensor, shape: &[usize]) -> Tensor {
    x.gather_flat(shape.to_vec(), &super::broadcast_map(x.shape(), shape))
}

/// Joins the storage of same-dtype tensors into one flat tensor.
pub fn concat_flat(xs: &[&Tensor]) -> Tensor {
    macro_rules! join {
        ($variant:ident) => {{
            let mut v = Vec::new();
            for x in xs {
                match x.data() {
                    Data::$variant(d) => v.extend_from_slice(d),
                    _ => unreachable!("concat_flat of mixed dtypes"),
                }
            }
            let n = v.len();
            Tensor::new(vec![n], Data::$variant(v)).expect("flat length matches")
        }};
    }
    match xs[0].data() {
        Data::F32(_) => join!(F32),
        Data::F16(_) => join!(F16),
        Data::BF16(_) => join!(BF16),
        Data::F64(_) => join!(F64),
        Data::I64(_) => join!(I64),
        Data::I32(_) => join!(I32),
        Data::I8(_) => join!(I8),
        Data::U8(_) => join!(U8),
        Data::Bool(_) => join!(Bool),
    }
}

/// Concatenates along `axis`: for each index of the dims before `axis`, each input's
/// contiguous block of the dims from `axis` on, in turn (a run copy, not a per-element index
/// computation: compile-time folds concatenate whole weight matrices).
pub fn concat(xs: &[&Tensor], axis: usize, out: &TensorType) -> Tensor {
    let joined = concat_flat(xs);
    let outer: usize = out.shape[..axis].iter().product();
    let inner: Vec<usize> = xs
        .iter()
        .map(|x| x.shape()[axis..].iter().product())
        .collect();
    let mut base = 0;
    let mut offsets = Vec::new();
    for x in xs {
        offsets.push(base);
        base += x.numel();
    }
    let mut idx = Vec::with_capacity(out.numel());
    for o in 0..outer {
        for (k, &n) in inner.iter().enumerate() {
            let start = offsets[k] + o * n;
            idx.extend(start..start + n);
        }
    }
    joined.gather_flat(out.shape.clone(), &idx)
}

/// Strided slice: element i of dim d comes from `starts[d] + i * steps[d]`.
pub fn slice(x: &Tensor, starts: &[usize], steps: &[i64], lens: &[usize]) -> Tensor {
    let s = strides(x.shape());
    let mut idx = Vec::with_capacity(lens.iter().product());
    for_each_index(lens, |i| {
        let f: i64 = (0..i.len())
            .map(|d| (starts[d] as i64 + i[d] as i64 * steps[d]) * s[d] as i64)
            .sum();
        idx.push(f as usize);
    });
    x.gather_flat(lens.to_vec(), &idx)
}

fn norm_index(i: i64, n: usize, axis: usize) -> Result<usize, String> {
    let j = if i < 0 { i + n as i64 } else { i };
    if j < 0 || j >= n as i64 {
        return Err(crate::kernel::ir::out_of_range(i, axis, n));
    }
    Ok(j as usize)
}

/// numpy `take` along `axis`.
pub fn gather(x: &Tensor, ind: &Tensor, axis: usize, out: &TensorType) -> Result<Tensor, String> {
    let iv = ind.to_i64();
    let xs = x.shape();
    let outer: usize = xs[..axis].iter().product();
    let inner: usize = xs[axis + 1..].iter().product();
    let n = xs[axis];
    let mut idx = Vec::with_capacity(out.numel());
    for o in 0..outer {
        for &i in &iv {
            let j = norm_index(i, n, axis)?;
            for k in 0..inner {
                idx.push((o * n + j) * inner + k);
            }
        }
    }
    Ok(x.gather_flat(out.shape.clone(), &idx))
}

/// ONNX GatherElements.
pub fn gather_elements(x: &Tensor, ind: &Tensor, axis: usize) -> Result<Tensor, String> {
    let iv = ind.to_i64();
    let s = strides(x.shape());
    let mut idx = Vec::with_capacity(ind.numel());
    let mut err = None;
    let mut k = 0;
    for_each_index(ind.shape(), |i| {
        let mut f = 0;
        for d in 0..i.len() {
            let v = if d == axis {
                match norm_index(iv[k], x.shape()[d], d) {
                    Ok(v) => v,
                    Err(e) => {
                        err = Some(e);
                        0
                    }
                }
            } else {
                i[d]
            };
            f += v * s[d];
        }
        idx.push(f);
        k += 1;
    });
    if let Some(e) = err {
        return Err(e);
    }
    Ok(x.gather_flat(ind.shape().to_vec(), &idx))
}

/// The flat offset in `data` of the slice that row `row` of GatherND/ScatterND `indices`
/// (its last dim, `m` coordinates) addresses, the `batch` leading dims taken from `lead`.
fn nd_offset(
    data: &[usize],
    lead: &[usize],
    batch: usize,
    coords: &[i64],
) -> Result<usize, String> {
    let s = strides(data);
    let mut f = 0;
    for (d, &b) in lead[..batch].iter().enumerate() {
        f += b * s[d];
    }
    for (k, &c) in coords.iter().enumerate() {
        f += norm_index(c, data[batch + k], batch + k)? * s[batch + k];
    }
    Ok(f)
}

/// ONNX GatherND.
pub fn gather_nd(
    x: &Tensor,
    ind: &Tensor,
    batch_dims: usize,
    out: &TensorType,
) -> Result<Tensor, String> {
    let iv = ind.to_i64();
    let is = ind.shape();
    let m = is[is.len() - 1];
    let slice: usize = x.shape()[batch_dims + m..].iter().product();
    let mut idx = Vec::with_capacity(out.numel());
    let mut err = None;
    let mut row = 0;
    for_each_index(&is[..is.len() - 1], |lead| {
        match nd_offset(x.shape(), lead, batch_dims, &iv[row * m..(row + 1) * m]) {
            Ok(f) => idx.extend(f..f + slice),
            Err(e) => err = err.take().or(Some(e)),
        }
        row += 1;
    });
    match err {
        Some(e) => Err(e),
        None => Ok(x.gather_flat(out.shape.clone(), &idx)),
    }
}

/// ONNX ScatterND: updates apply in row-major order of `indices`' leading dims.
pub fn scatter_nd(
    x: &Tensor,
    ind: &Tensor,
    upd: &Tensor,
    reduction: ScatterReduction,
) -> Result<Tensor, String> {
    let iv = ind.to_i64();
    let is = ind.shape();
    let m = is[is.len() - 1];
    let slice: usize = x.shape()[m..].iter().product();
    let rows = iv.len() / m.max(1);
    let mut targets = Vec::with_capacity(rows);
    for r in 0..rows {
        targets.push(nd_offset(x.shape(), &[], 0, &iv[r * m..(r + 1) * m])?);
    }
    if reduction == ScatterReduction::None {
        // Pick each element from data or from the last update landing on it: exact in
        // every dtype.
        let joined = concat_flat(&[x, upd]);
        let mut idx: Vec<usize> = (0..x.numel()).collect();
        for (r, &t) in targets.iter().enumerate() {
            for e in 0..slice {
                idx[t + e] = x.numel() + r * slice + e;
            }
        }
        return Ok(joined.gather_flat(x.shape().to_vec(), &idx));
    }
    if x.dtype().is_float() {
        let (mut v, u) = (x.to_f64(), upd.to_f64());
        for (r, &t) in targets.iter().enumerate() {
            for e in 0..slice {
                let (a, b) = (v[t + e], u[r * slice + e]);
                v[t + e] = match reduction {
                    ScatterReduction::Add => a + b,
                    ScatterReduction::Mul => a * b,
                    ScatterReduction::Max => a.max(b),
                    ScatterReduction::Min => a.min(b),
                    ScatterReduction::None => b,
                };
            }
        }
        Ok(Tensor::from_f64(x.dtype(), x.shape().to_vec(), &v))
    } else {
        let (mut v, u) = (x.to_i64(), upd.to_i64());
        for (r, &t) in targets.iter().enumerate() {
            for e in 0..slice {
                let (a, b) = (v[t + e], u[r * slice + e]);
                v[t + e] = match reduction {
                    ScatterReduction::Add => a.wrapping_add(b),
                    ScatterReduction::Mul => a.wrapping_mul(b),
                    ScatterReduction::Max => a.max(b),
                    ScatterReduction::Min => a.min(b),
                    ScatterReduction::None => b,
                };
            }
        }
        Ok(Tensor::from_i64(x.dtype(), x.shape().to_vec(), &v))
    }
}

/// Pads (or crops, for negative amounts) each dim.
pub fn pad(x: &Tensor, pads: &[(i64, i64)], mode: PadMode, out: &TensorType) -> Tensor {
    let s = strides(x.shape());
    let xs = x.shape();
    // Source index per output element, or None for the constant fill.
    let mut src: Vec<Option<usize>> = Vec::with_capacity(out.numel());
    for_each_index(&out.shape, |i| {
        let mut f = 0usize;
        for d in 0..i.len() {
            let n = xs[d] as i64;
            let mut p = i[d] as i64 - pads[d].0;
            if p < 0 || p >= n {
                p = match mode {
                    PadMode::Constant(_) => {
                        src.push(None);
                        return;
                    }
                    PadMode::Edge => p.clamp(0, n - 1),
                    PadMode::Wrap => p.rem_euclid(n),
                    PadMode::Reflect => {
                        if n == 1 {
                            0
                        } else {
                            let period = 2 * (n - 1);
                            let q = p.rem_euclid(period);
                            if q < n {
                                q
                            } else {
                                period - q
                            }
                        }
                    }
                };
            }
            f += p as usize * s[d];
        }
        src.push(Some(f));
    });
    let fill = match mode {
        PadMode::Constant(v) => v.0,
        _ => 0.0,
    };
    let fill_t = Tensor::from_f64(x.dtype(), vec![1], &[fill]);
    let joined = concat_flat(&[x, &fill_t]);
    let idx: Vec<usize> = src.into_iter().map(|s| s.unwrap_or(x.numel())).collect();
    joined.gather_flat(out.shape.clone(), &idx)
}

/// Keeps the upper or lower triangle of the last two dims (others become zero).
pub fn trilu(x: &Tensor, upper: bool, k: i64) -> Tensor {
    let r = x.shape().len();
    let zero = Tensor::from_f64(x.dtype(), vec![1], &[0.0]);
    let joined = concat_flat(&[x, &zero]);
    let mut idx = Vec::with_capacity(x.numel());
    let mut f = 0;
    for_each_index(x.shape(), |i| {
        let (row, col) = (i[r - 2] as i64, i[r - 1] as i64);
        let keep = if upper {
            col - row >= k
        } else {
            col - row <= k
        };
        idx.push(if keep { f } else { x.numel() });
        f += 1;
    });
    joined.gather_flat(x.shape().to_vec(), &idx)
}
