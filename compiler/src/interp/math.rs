//! Elementwise ops: unary functions, broadcasting binary ops, select and cast.

use super::broadcast_map;
use crate::ir::{BinaryOp, DType, Tensor, TensorType, UnaryOp};

/// Applies a unary op: floats in f64, integers in i64, bool for `Not`.
pub fn unary(u: UnaryOp, x: &Tensor, out: &TensorType) -> Tensor {
    let shape = out.shape.clone();
    if x.dtype().is_float() {
        let v: Vec<f64> = x.to_f64().into_iter().map(|a| unary_f(u, a)).collect();
        return Tensor::from_f64(out.dtype, shape, &v);
    }
    let v: Vec<i64> = x
        .to_i64()
        .into_iter()
        .map(|a| match u {
            UnaryOp::Neg => a.wrapping_neg(),
            UnaryOp::Abs => a.wrapping_abs(),
            UnaryOp::Sign => a.signum(),
            UnaryOp::Relu => a.max(0),
            UnaryOp::Not => (a == 0) as i64,
            _ => unreachable!("shape inference admits only these unary ops on integers"),
        })
        .collect();
    Tensor::from_i64(out.dtype, shape, &v)
}

pub(crate) fn unary_f(u: UnaryOp, x: f64) -> f64 {
    use std::f64::consts::{FRAC_1_SQRT_2, PI};
    match u {
        UnaryOp::Neg => -x,
        UnaryOp::Abs => x.abs(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Sigmoid => 1.0 / (1.0 + (-x).exp()),
        UnaryOp::Relu => {
            if x < 0.0 {
                0.0
            } else {
                x
            }
        }
        UnaryOp::Erf => libm::erf(x),
        UnaryOp::Reciprocal => 1.0 / x,
        UnaryOp::Floor => x.floor(),
        UnaryOp::Ceil => x.ceil(),
        UnaryOp::Round => x.round_ties_even(),
        UnaryOp::Sign => {
            if x.is_nan() {
                x
            } else if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                0.0
            }
        }
        UnaryOp::Not => (x == 0.0) as u8 as f64,
        UnaryOp::Sin => x.sin(),
        UnaryOp::Cos => x.cos(),
        UnaryOp::Tan => x.tan(),
        UnaryOp::Asin => x.asin(),
        UnaryOp::Acos => x.acos(),
        UnaryOp::Atan => x.atan(),
        UnaryOp::Sinh => x.sinh(),
        UnaryOp::Cosh => x.cosh(),
        UnaryOp::Asinh => x.asinh(),
        UnaryOp::Acosh => x.acosh(),
        UnaryOp::Atanh => x.atanh(),
        UnaryOp::Softplus => {
            // log(1 + e^x) without overflow for large x.
            if x > 30.0 {
                x
            } else {
                x.exp().ln_1p()
            }
        }
        UnaryOp::Softsign => x / (1.0 + x.abs()),
        UnaryOp::IsNaN => x.is_nan() as u8 as f64,
        UnaryOp::IsInf(pos, neg) => {
            ((x == f64::INFINITY && pos) || (x == f64::NEG_INFINITY && neg)) as u8 as f64
        }
        UnaryOp::HardSwish => x * (x / 6.0 + 0.5).clamp(0.0, 1.0),
        UnaryOp::Gelu => 0.5 * x * (1.0 + libm::erf(x * FRAC_1_SQRT_2)),
        UnaryOp::GeluTanh => {
            let c = (2.0 / PI).sqrt();
            0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
        }
        UnaryOp::LeakyRelu(a) => {
            if x < 0.0 {
                a.0 * x
            } else {
                x
            }
        }
        UnaryOp::Elu(a) => {
            if x < 0.0 {
                a.0 * (x.exp() - 1.0)
            } else {
                x
            }
        }
        UnaryOp::Celu(a) => x.max(0.0) + (a.0 * ((x / a.0).exp() - 1.0)).min(0.0),
        UnaryOp::ThresholdedRelu(a) => {
            if x > a.0 {
                x
            } else {
                0.0
            }
        }
        UnaryOp::Selu(a, g) => {
            if x > 0.0 {
                g.0 * x
            } else {
                g.0 * (a.0 * x.exp() - a.0)
            }
        }
        UnaryOp::HardSigmoid(a, b) => (a.0 * x + b.0).clamp(0.0, 1.0),
    }
}

/// Applies a broadcasting binary op.
pub fn binary(b: BinaryOp, x: &Tensor, y: &Tensor, out: &TensorType) -> Result<Tensor, String> {
    let mx = broadcast_map(x.shape(), &out.shape);
    let my = broadcast_map(y.shape(), &out.shape);
    let shape = out.shape.clone();
    if x.dtype().is_float() {
        let (xv, yv) = (x.to_f64(), y.to_f64());
        let v: Vec<f64> = mx
            .iter()
            .zip(&my)
            .map(|(&i, &j)| binary_f(b, xv[i], yv[j]))
            .collect();
        return Ok(Tensor::from_f64(out.dtype, shape, &v));
    }
    let (xv, yv) = (x.to_i64(), y.to_i64());
    let mut v = Vec::with_capacity(mx.len());
    for (&i, &j) in mx.iter().zip(&my) {
        v.push(binary_i(b, xv[i], yv[j], x.dtype())?);
    }
    Ok(Tensor::from_i64(out.dtype, shape, &v))
}

fn nan_aware(a: f64, b: f64, pick: fn(f64, f64) -> f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        pick(a, b)
    }
}

pub(crate) fn binary_f(b: BinaryOp, x: f64, y: f64) -> f64 {
    let t = |c: bool| c as u8 as f64;
    match b {
        BinaryOp::Add => x + y,
        BinaryOp::Sub => x - y,
        BinaryOp::Mul => x * y,
        BinaryOp::Div => x / y,
        BinaryOp::Pow => x.powf(y),
        BinaryOp::Min => nan_aware(x, y, f64::min),
        BinaryOp::Max => nan_aware(x, y, f64::max),
        BinaryOp::Mod => {
            let r = x % y;
            if r != 0.0 && (r < 0.0) != (y < 0.0) {
                r + y
            } else {
                r
            }
        }
        BinaryOp::FMod => x % y,
        BinaryOp::PRelu => {
            if x < 0.0 {
                y * x
            } else {
                x
            }
        }
        BinaryOp::Equal => t(x == y),
        BinaryOp::Less => t(x < y),
        BinaryOp::Greater => t(x > y),
        BinaryOp::LessOrEqual => t(x <= y),
        BinaryOp::GreaterOrEqual => t(x >= y),
        BinaryOp::And => t(x != 0.0 && y != 0.0),
        BinaryOp::Or => t(x != 0.0 || y != 0.0),
        BinaryOp::Xor => t((x != 0.0) != (y != 0.0)),
    }
}

pub(crate) fn binary_i(b: BinaryOp, x: i64, y: i64, dtype: DType) -> Result<i64, String> {
    let t = |c: bool| c as i64;
    Ok(match b {
        BinaryOp::Add => x.wrapping_add(y),
        BinaryOp::Sub => x.wrapping_sub(y),
        BinaryOp::Mul => x.wrapping_mul(y),
        BinaryOp::Div | BinaryOp::Mod | BinaryOp::FMod if y == 0 => {
            return Err(format!("integer division by zero ({dtype})"))
        }
        BinaryOp::Div => x.wrapping_div(y),
        BinaryOp::Mod => {
            let r = x.wrapping_rem(y);
            if r != 0 && (r < 0) != (y < 0) {
                r + y
            } else {
                r
            }
        }
        BinaryOp::FMod => x.wrapping_rem(y),
        BinaryOp::Pow => {
            if y < 0 {
                (x as f64).powf(y as f64) as i64
            } else {
                x.wrapping_pow(y.min(u32::MAX as i64) as u32)
            }
        }
        BinaryOp::Min => x.min(y),
        BinaryOp::Max => x.max(y),
        BinaryOp::PRelu => {
            if x < 0 {
                y.wrapping_mul(x)
            } else {
                x
            }
        }
        BinaryOp::Equal => t(x == y),
        BinaryOp::Less => t(x < y),
        BinaryOp::Greater => t(x > y),
        BinaryOp::LessOrEqual => t(x <= y),
        BinaryOp::GreaterOrEqual => t(x >= y),
        BinaryOp::And => t(x != 0 && y != 0),
        BinaryOp::Or => t(x != 0 || y != 0),
        BinaryOp::Xor => t((x != 0) != (y != 0)),
    })
}

/// `cond ? a : b` with broadcasting; picks elements without converting them.
pub fn select(cond: &Tensor, a: &Tensor, b: &Tensor, out: &TensorType) -> Tensor {
    let mc = broadcast_map(cond.shape(), &out.shape);
    let ma = broadcast_map(a.shape(), &out.shape);
    let mb = broadcast_map(b.shape(), &out.shape);
    let c = cond.to_i64();
    // Concatenate a and b, then pick flat indices from the joined storage.
    let joined = super::layout::concat_flat(&[a, b]);
    let idx: Vec<usize> = (0..mc.len())
        .map(|k| {
            if c[mc[k]] != 0 {
                ma[k]
            } else {
                a.numel() + mb[k]
            }
        })
        .collect();
    joined.gather_flat(out.shape.clone(), &idx)
}

/// Converts to `to`: float→int truncates toward zero, anything→bool is `x != 0`.
pub fn cast(x: &Tensor, to: DType) -> Tensor {
    let shape = x.shape().to_vec();
    if x.dtype().is_float() {
        Tensor::from_f64(to, shape, &x.to_f64())
    } else {
        Tensor::from_i64(to, shape, &x.to_i64())
    }
}
