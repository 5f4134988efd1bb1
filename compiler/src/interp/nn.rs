//! Compute-heavy ops with f64 accumulation: matmul, conv, pooling, normalizations, reductions.

use super::{broadcast_map, strides};
use crate::ir::{Conv2d, Pool2d, PoolKind, ReduceKind, Tensor, TensorType};

/// numpy `matmul`, accumulating in f64 (i64 for integers).
pub fn matmul(a: &Tensor, b: &Tensor, out: &TensorType) -> Tensor {
    let a_shape: Vec<usize> = if a.shape().len() == 1 {
        vec![1, a.shape()[0]]
    } else {
        a.shape().to_vec()
    };
    let b_shape: Vec<usize> = if b.shape().len() == 1 {
        vec![b.shape()[0], 1]
    } else {
        b.shape().to_vec()
    };
    let (m, k) = (a_shape[a_shape.len() - 2], a_shape[a_shape.len() - 1]);
    let n = b_shape[b_shape.len() - 1];
    let batch: Vec<usize> =
        crate::ir::broadcast_shapes(&a_shape[..a_shape.len() - 2], &b_shape[..b_shape.len() - 2])
            .expect("checked by shape inference");
    let ba = broadcast_map(&a_shape[..a_shape.len() - 2], &batch);
    let bb = broadcast_map(&b_shape[..b_shape.len() - 2], &batch);
    let nb = ba.len();
    let int = !a.dtype().is_float();
    let (av, bv) = (a.to_f64(), b.to_f64());
    let (ai, bi) = if int {
        (a.to_i64(), b.to_i64())
    } else {
        (vec![], vec![])
    };
    let mut of = vec![0f64; nb * m * n];
    let mut oi = vec![0i64; if int { nb * m * n } else { 0 }];
    for bt in 0..nb {
        let (ao, bo) = (ba[bt] * m * k, bb[bt] * k * n);
        for i in 0..m {
            for j in 0..n {
                let o = (bt * m + i) * n + j;
                if int {
                    let mut acc = 0i64;
                    for p in 0..k {
                        acc = acc.wrapping_add(ai[ao + i * k + p].wrapping_mul(bi[bo + p * n + j]));
                    }
                    oi[o] = acc;
                } else {
                    let mut acc = 0f64;
                    for p in 0..k {
                        acc += av[ao + i * k + p] * bv[bo + p * n + j];
                    }
                    of[o] = acc;
                }
            }
        }
    }
    if int {
        Tensor::from_i64(out.dtype, out.shape.clone(), &oi)
    } else {
        Tensor::from_f64(out.dtype, out.shape.clone(), &of)
    }
}

/// Direct 2-D convolution with groups, dilation, stride and zero padding.
pub fn conv(c: &Conv2d, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, out: &TensorType) -> Tensor {
    let (xv, wv) = (x.to_f64(), w.to_f64());
    let bv = bias.map(|b| b.to_f64());
    let [n, ci, h, wd] = [x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]];
    let [co, cig, kh, kw] = [w.shape()[0], w.shape()[1], w.shape()[2], w.shape()[3]];
    let [oh, ow] = [out.shape[2], out.shape[3]];
    let cog = co / c.group;
    let mut o = vec![0f64; n * co * oh * ow];
    for b in 0..n {
        for oc in 0..co {
            let g = oc / cog;
            for y in 0..oh {
                for xo in 0..ow {
                    let mut acc = bv.as_ref().map_or(0.0, |b| b[oc]);
                    for icg in 0..cig {
                        let ic = g * cig + icg;
                        for ky in 0..kh {
                            let iy =
                                (y * c.strides[0] + ky * c.dilations[0]) as i64 - c.pads[0] as i64;
                            if iy < 0 || iy >= h as i64 {
                                continue;
                            }
                            for kx in 0..kw {
                                let ix = (xo * c.strides[1] + kx * c.dilations[1]) as i64
                                    - c.pads[1] as i64;
                                if ix < 0 || ix >= wd as i64 {
                                    continue;
                                }
                                acc += xv[((b * ci + ic) * h + iy as usize) * wd + ix as usize]
                                    * wv[((oc * cig + icg) * kh + ky) * kw + kx];
                            }
                        }
                    }
                    o[((b * co + oc) * oh + y) * ow + xo] = acc;
                }
            }
        }
    }
    Tensor::from_f64(out.dtype, out.shape.clone(), &o)
}

/// Max or average pooling.
pub fn pool(p: &Pool2d, x: &Tensor, out: &TensorType) -> Tensor {
    let xv = x.to_f64();
    let [n, c, h, w] = [x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]];
    let [oh, ow] = [out.shape[2], out.shape[3]];
    let mut o = vec![0f64; n * c * oh * ow];
    for nc in 0..n * c {
        for y in 0..oh {
            for xo in 0..ow {
                let mut best = f64::NEG_INFINITY;
                let (mut sum, mut count, mut padded_count) = (0.0, 0usize, 0usize);
                for ky in 0..p.kernel[0] {
                    let iy = (y * p.strides[0] + ky * p.dilations[0]) as i64 - p.pads[0] as i64;
                    for kx in 0..p.kernel[1] {
                        let ix =
                            (xo * p.strides[1] + kx * p.dilations[1]) as i64 - p.pads[1] as i64;
                        // Positions in the explicit padding count for count_include_pad;
                        // positions past it (ceil mode overhang) never do.
                        let in_pad_y = iy < (h + p.pads[2]) as i64;
                        let in_pad_x = ix < (w + p.pads[3]) as i64;
                        if in_pad_y && in_pad_x {
                            padded_count += 1;
                        }
                        if iy < 0 || iy >= h as i64 || ix < 0 || ix >= w as i64 {
                            continue;
                        }
                        let v = xv[(nc * h + iy as usize) * w + ix as usize];
                        if v > best || v.is_nan() {
                            best = v;
                        }
                        sum += v;
                        count += 1;
                    }
                }
                o[(nc * oh + y) * ow + xo] = match p.kind {
                    PoolKind::Max => best,
                    PoolKind::Avg { count_include_pad } => {
                        sum / if count_include_pad {
                            padded_count
                        } else {
                            count
                        } as f64
                    }
                };
            }
        }
    }
    Tensor::from_f64(out.dtype, out.shape.clone(), &o)
}

/// Splits a shape around `axis` into (outer, len, inner) extents.
fn around(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    )
}

/// Softmax (or log-softmax) along `axis`, max-subtracted.
pub fn softmax(x: &Tensor, axis: usize, log: bool) -> Tensor {
    let v = x.to_f64();
    let (outer, len, inner) = around(x.shape(), axis);
    let mut o = vec![0f64; v.len()];
    for a in 0..outer {
        for c in 0..inner {
            let at = |i: usize| (a * len + i) * inner + c;
            let m = (0..len).map(|i| v[at(i)]).fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = (0..len).map(|i| (v[at(i)] - m).exp()).sum();
            for i in 0..len {
                o[at(i)] = if log {
                    v[at(i)] - m - s.ln()
                } else {
                    (v[at(i)] - m).exp() / s
                };
            }
        }
    }
    Tensor::from_f64(x.dtype(), x.shape().to_vec(), &o)
}

/// Layer normalization over dims `axis..` with broadcast scale and bias.
pub fn layer_norm(
    x: &Tensor,
    scale: &Tensor,
    bias: Option<&Tensor>,
    axis: usize,
    eps: f64,
) -> Tensor {
    let v = x.to_f64();
    let inner = &x.shape()[axis..];
    let row: usize = inner.iter().product();
    let sv: Vec<f64> = {
        let s = scale.to_f64();
        broadcast_map(scale.shape(), inner)
            .into_iter()
            .map(|i| s[i])
            .collect()
    };
    let bv: Vec<f64> = match bias {
        Some(b) => {
            let bb = b.to_f64();
            broadcast_map(b.shape(), inner)
                .into_iter()
                .map(|i| bb[i])
                .collect()
        }
        None => vec![0.0; row],
    };
    let mut o = vec![0f64; v.len()];
    for (r, chunk) in v.chunks(row.max(1)).enumerate() {
        let mean = chunk.iter().sum::<f64>() / row as f64;
        let var = chunk.iter().map(|a| (a - mean) * (a - mean)).sum::<f64>() / row as f64;
        let inv = 1.0 / (var + eps).sqrt();
        for (i, a) in chunk.iter().enumerate() {
            o[r * row + i] = (a - mean) * inv * sv[i] + bv[i];
        }
    }
    Tensor::from_f64(x.dtype(), x.shape().to_vec(), &o)
}

/// Output flat index for each input element when reducing `axes`.
fn reduce_map(shape: &[usize], axes: &[usize]) -> (Vec<usize>, usize) {
    let kept: Vec<usize> = shape
        .iter()
        .enumerate()
        .map(|(d, &n)| if axes.contains(&d) { 1 } else { n })
        .collect();
    let ks = strides(&kept);
    let eff: Vec<usize> = (0..shape.len())
        .map(|d| if axes.contains(&d) { 0 } else { ks[d] })
        .collect();
    let n: usize = shape.iter().product();
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0usize; shape.len()];
    for _ in 0..n {
        out.push(idx.iter().zip(&eff).map(|(i, e)| i * e).sum());
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    (out, kept.iter().product())
}

/// Sum, mean, max, min or product over `axes`.
pub fn reduce(
    kind: ReduceKind,
    x: &Tensor,
    axes: &[usize],
    _keepdims: bool,
    out: &TensorType,
) -> Tensor {
    let (map, n_out) = reduce_map(x.shape(), axes);
    let count: usize = axes.iter().map(|&a| x.shape()[a]).product();
    let init = match kind {
        ReduceKind::Sum | ReduceKind::Mean => 0.0,
        ReduceKind::Prod => 1.0,
        ReduceKind::Max => f64::NEG_INFINITY,
        ReduceKind::Min => f64::INFINITY,
    };
    let mut acc = vec![init; n_out];
    if x.dtype().is_float() {
        for (v, &o) in x.to_f64().into_iter().zip(&map) {
            let a = &mut acc[o];
            *a = match kind {
                ReduceKind::Sum | ReduceKind::Mean => *a + v,
                ReduceKind::Prod => *a * v,
                // NaN anywhere makes the result NaN (once the accumulator is NaN it stays).
                ReduceKind::Max | ReduceKind::Min if a.is_nan() || v.is_nan() => f64::NAN,
                ReduceKind::Max => a.max(v),
                ReduceKind::Min => a.min(v),
            };
        }
        if kind == ReduceKind::Mean {
            acc.iter_mut().for_each(|a| *a /= count as f64);
        }
        return Tensor::from_f64(out.dtype, out.shape.clone(), &acc);
    }
    let bool_out = out.dtype == crate::ir::DType::Bool;
    let init_i = match kind {
        ReduceKind::Sum | ReduceKind::Mean => 0,
        ReduceKind::Prod => 1,
        ReduceKind::Max if bool_out => 0,
        ReduceKind::Min if bool_out => 1,
        ReduceKind::Max => i64::MIN,
        ReduceKind::Min => i64::MAX,
    };
    let mut acc = vec![init_i; n_out];
    for (v, &o) in x.to_i64().into_iter().zip(&map) {
        let a = &mut acc[o];
        *a = match kind {
            ReduceKind::Sum | ReduceKind::Mean => a.wrapping_add(v),
            ReduceKind::Prod => a.wrapping_mul(v),
            ReduceKind::Max => (*a).max(v),
            ReduceKind::Min => (*a).min(v),
        };
    }
    if kind == ReduceKind::Mean && count > 0 {
        acc.iter_mut().for_each(|a| *a /= count as i64);
    }
    Tensor::from_i64(out.dtype, out.shape.clone(), &acc)
}

/// Index of the max (or min) along `axis`; first index among ties unless `select_last`.
pub fn arg_reduce(
    x: &Tensor,
    max: bool,
    axis: usize,
    select_last: bool,
    out: &TensorType,
) -> Tensor {
    let v = x.to_f64();
    let (outer, len, inner) = around(x.shape(), axis);
    let mut o = Vec::with_capacity(outer * inner);
    for a in 0..outer {
        for c in 0..inner {
            let mut best = 0usize;
            for i in 1..len {
                let (cur, b) = (
                    v[(a * len + i) * inner + c],
                    v[(a * len + best) * inner + c],
                );
                let better = if max { cur > b } else { cur < b };
                if better || (select_last && cur == b) {
                    best = i;
                }
            }
            o.push(best as i64);
        }
    }
    Tensor::from_i64(out.dtype, out.shape.clone(), &o)
}

/// Cumulative sum along `axis`.
pub fn cumsum(x: &Tensor, axis: usize, exclusive: bool, reverse: bool) -> Tensor {
    let (outer, len, inner) = around(x.shape(), axis);
    let float = x.dtype().is_float();
    let (fv, iv) = (x.to_f64(), x.to_i64());
    let mut of = vec![0f64; fv.len()];
    let mut oi = vec![0i64; iv.len()];
    for a in 0..outer {
        for c in 0..inner {
            let (mut sf, mut si) = (0f64, 0i64);
            for step in 0..len {
                let i = if reverse { len - 1 - step } else { step };
                let at = (a * len + i) * inner + c;
                if exclusive {
                    of[at] = sf;
                    oi[at] = si;
                }
                sf += fv[at];
                si = si.wrapping_add(iv[at]);
                if !exclusive {
                    of[at] = sf;
                    oi[at] = si;
                }
            }
        }
    }
    if float {
        Tensor::from_f64(x.dtype(), x.shape().to_vec(), &of)
    } else {
        Tensor::from_i64(x.dtype(), x.shape().to_vec(), &oi)
    }
}
