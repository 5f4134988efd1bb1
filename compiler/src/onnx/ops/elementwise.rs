//! Elementwise ops: the unary and binary tables, Clip, and the variadic Min/Max/Sum/Mean.

use super::super::attrs::Attrs;
use super::{Ctx, Importer, R};
use crate::ir::{BinaryOp, Op, UnaryOp, Value, F64};

impl Importer {
    pub(super) fn clip(&mut self, c: &Ctx, name: &str) -> R<Value> {
        let mut x = c.req(0)?;
        let (lo, hi) = if self.opset < 11 {
            let lo = c.attrs.get("min").map(|a| a.f() as f64);
            let hi = c.attrs.get("max").map(|a| a.f() as f64);
            let lo = match lo {
                Some(v) => Some(self.scalar_like(&format!("{name}/min"), x, v)?),
                None => None,
            };
            let hi = match hi {
                Some(v) => Some(self.scalar_like(&format!("{name}/max"), x, v)?),
                None => None,
            };
            (lo, hi)
        } else {
            (c.input(1), c.input(2))
        };
        if let Some(lo) = lo {
            let n = if hi.is_some() {
                format!("{name}/lower")
            } else {
                name.to_string()
            };
            x = self.emit(&n, Op::Binary(BinaryOp::Max), &[x, lo])?;
        }
        if let Some(hi) = hi {
            x = self.emit(name, Op::Binary(BinaryOp::Min), &[x, hi])?;
        }
        Ok(x)
    }

    pub(super) fn variadic(&mut self, c: &Ctx, name: &str) -> R<Value> {
        let xs: Vec<Value> = c.inputs.iter().flatten().copied().collect();
        let op = match c.node.op_type() {
            "Min" => BinaryOp::Min,
            "Max" => BinaryOp::Max,
            _ => BinaryOp::Add,
        };
        let mean = c.node.op_type() == "Mean";
        let mut acc = *xs.first().ok_or("needs at least one input")?;
        for (i, &x) in xs.iter().enumerate().skip(1) {
            let last = i + 1 == xs.len() && !mean;
            let n = if last {
                name.to_string()
            } else {
                format!("{name}/{i}")
            };
            acc = self.emit(&n, Op::Binary(op), &[acc, x])?;
        }
        if mean && xs.len() > 1 {
            let k = self.scalar_like(&format!("{name}/count"), acc, xs.len() as f64)?;
            acc = self.emit(name, Op::Binary(BinaryOp::Div), &[acc, k])?;
        }
        Ok(acc)
    }
}

pub(super) fn unary_op(op: &str, a: &Attrs) -> R<Option<UnaryOp>> {
    use UnaryOp as U;
    Ok(Some(match op {
        "Neg" => U::Neg,
        "Abs" => U::Abs,
        "Sqrt" => U::Sqrt,
        "Exp" => U::Exp,
        "Log" => U::Log,
        "Tanh" => U::Tanh,
        "Sigmoid" => U::Sigmoid,
        "Relu" => U::Relu,
        "Erf" => U::Erf,
        "Reciprocal" => U::Reciprocal,
        "Floor" => U::Floor,
        "Ceil" => U::Ceil,
        "Round" => U::Round,
        "Sign" => U::Sign,
        "Not" => U::Not,
        "Sin" => U::Sin,
        "Cos" => U::Cos,
        "Tan" => U::Tan,
        "Asin" => U::Asin,
        "Acos" => U::Acos,
        "Atan" => U::Atan,
        "Sinh" => U::Sinh,
        "Cosh" => U::Cosh,
        "Asinh" => U::Asinh,
        "Acosh" => U::Acosh,
        "Atanh" => U::Atanh,
        "Softplus" => U::Softplus,
        "Softsign" => U::Softsign,
        "IsNaN" => U::IsNaN,
        "HardSwish" => U::HardSwish,
        "IsInf" => U::IsInf(
            a.int_or("detect_positive", 1)? != 0,
            a.int_or("detect_negative", 1)? != 0,
        ),
        "Gelu" => match a.string_or("approximate", "none")?.as_str() {
            "none" => U::Gelu,
            "tanh" => U::GeluTanh,
            other => return Err(format!("unknown approximate '{other}'")),
        },
        "LeakyRelu" => U::LeakyRelu(F64(a.float_or("alpha", 0.01)?)),
        "Elu" => U::Elu(F64(a.float_or("alpha", 1.0)?)),
        "Celu" => U::Celu(F64(a.float_or("alpha", 1.0)?)),
        "ThresholdedRelu" => U::ThresholdedRelu(F64(a.float_or("alpha", 1.0)?)),
        "Selu" => U::Selu(
            F64(a.float_or("alpha", 1.673_263_192_176_818_8)?),
            F64(a.float_or("gamma", 1.050_701_022_148_132_3)?),
        ),
        "HardSigmoid" => U::HardSigmoid(
            F64(a.float_or("alpha", 0.2)?),
            F64(a.float_or("beta", 0.5)?),
        ),
        _ => return Ok(None),
    }))
}

pub(super) fn binary_op(op: &str, a: &Attrs) -> R<Option<BinaryOp>> {
    use BinaryOp as B;
    Ok(Some(match op {
        "Add" => B::Add,
        "Sub" => B::Sub,
        "Mul" => B::Mul,
        "Div" => B::Div,
        "Pow" => B::Pow,
        "PRelu" => B::PRelu,
        "Mod" => {
            if a.int_or("fmod", 0)? != 0 {
                B::FMod
            } else {
                B::Mod
            }
        }
        "Equal" => B::Equal,
        "Less" => B::Less,
        "Greater" => B::Greater,
        "LessOrEqual" => B::LessOrEqual,
        "GreaterOrEqual" => B::GreaterOrEqual,
        "And" => B::And,
        "Or" => B::Or,
        "Xor" => B::Xor,
        _ => return Ok(None),
    }))
}
