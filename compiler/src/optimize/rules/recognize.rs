//! Recognizers: decomposed patterns, as exporters write them, rewritten to the fused op they
//! compute (the decomposed form stays in the e-graph; extraction chooses by cost).

use super::{rule, Build, Ctx};
use crate::ir::{BinaryOp, Op, ReduceKind, Tensor, UnaryOp, F64};
use crate::optimize::analysis::Facts;
use crate::optimize::lang::ENode;
use egg::{Id, Rewrite};

/// The recognizers.
pub fn rules() -> Vec<Rewrite<ENode, Facts>> {
    vec![
        rule("gelu-erf", gelu_erf),
        rule("gelu-tanh", gelu_tanh),
        rule("layernorm-decomposed", layernorm_decomposed),
        rule("layernorm-scale", layernorm_scale),
        rule("layernorm-bias", layernorm_bias),
    ]
}

/// Relative tolerance for matching constants an exporter wrote in f32 (√2, √(2/π), ...).
const CONST_TOL: f64 = 1e-6;

fn is_binary(op: &Op, b: BinaryOp) -> bool {
    op == &Op::Binary(b)
}

/// The factors of a product tree (through nested `Mul` nodes, a few levels deep).
fn factors(c: &Ctx, id: Id, depth: usize, out: &mut Vec<Id>) {
    match c.find(id, |op| is_binary(op, BinaryOp::Mul)) {
        Some(m) if depth > 0 => {
            factors(c, m.args[0], depth - 1, out);
            factors(c, m.args[1], depth - 1, out);
        }
        _ => out.push(c.canon(id)),
    }
}

/// Splits `a + b` into (the term that is the constant `v`, the other term).
fn plus_const(c: &Ctx, id: Id, v: f64) -> Option<Id> {
    let add = c.find(id, |op| is_binary(op, BinaryOp::Add))?;
    let (a, b) = (add.args[0], add.args[1]);
    if c.is_near(a, v, CONST_TOL) {
        Some(b)
    } else if c.is_near(b, v, CONST_TOL) {
        Some(a)
    } else {
        None
    }
}

/// Among product factors, picks the constant 0.5, a factor `(1 + inner)` and `x`, and
/// returns (x, inner).
fn half_x_one_plus(c: &Ctx, n: &ENode) -> Option<(Id, Id)> {
    if !is_binary(n.ir_op()?, BinaryOp::Mul) {
        return None;
    }
    let mut fs = Vec::new();
    factors(c, n.args[0], 2, &mut fs);
    factors(c, n.args[1], 2, &mut fs);
    if fs.len() != 3 {
        return None;
    }
    let half = fs.iter().position(|&f| c.is_const(f, 0.5))?;
    fs.remove(half);
    for (i, j) in [(0, 1), (1, 0)] {
        if let Some(inner) = plus_const(c, fs[i], 1.0) {
            return Some((fs[j], inner));
        }
    }
    None
}

/// `x` from `x / √2` or `x * (1/√2)`.
fn over_sqrt2(c: &Ctx, id: Id) -> Option<Id> {
    let s2 = std::f64::consts::SQRT_2;
    if let Some(d) = c.find(id, |op| is_binary(op, BinaryOp::Div)) {
        if c.is_near(d.args[1], s2, CONST_TOL) {
            return Some(c.canon(d.args[0]));
        }
    }
    let m = c.find(id, |op| is_binary(op, BinaryOp::Mul))?;
    for (x, k) in [(m.args[0], m.args[1]), (m.args[1], m.args[0])] {
        if c.is_near(k, 1.0 / s2, CONST_TOL) {
            return Some(c.canon(x));
        }
    }
    None
}

/// `0.5 · x · (1 + erf(x / √2)) → gelu(x)`.
pub fn gelu_erf(c: &Ctx, _class: Id, n: &ENode) -> Option<Build> {
    let (x, inner) = half_x_one_plus(c, n)?;
    let erf = c.find(inner, |op| op == &Op::Unary(UnaryOp::Erf))?;
    (over_sqrt2(c, erf.args[0])? == x)
        .then(|| Build::Node(Op::Unary(UnaryOp::Gelu), vec![Build::Class(x)]))
}

/// True when `id` is `x³` (as `x^3` or a product of three `x`).
fn is_cube(c: &Ctx, id: Id, x: Id) -> bool {
    if let Some(p) = c.find(id, |op| is_binary(op, BinaryOp::Pow)) {
        if c.canon(p.args[0]) == x && c.is_const(p.args[1], 3.0) {
            return true;
        }
    }
    let mut fs = Vec::new();
    factors(c, id, 2, &mut fs);
    fs.len() == 3 && fs.iter().all(|&f| f == x)
}

/// `0.5 · x · (1 + tanh(√(2/π) · (x + 0.044715 · x³))) → gelu_tanh(x)`.
pub fn gelu_tanh(c: &Ctx, _class: Id, n: &ENode) -> Option<Build> {
    let (x, inner) = half_x_one_plus(c, n)?;
    let tanh = c.find(inner, |op| op == &Op::Unary(UnaryOp::Tanh))?;
    let scaled = c.find(tanh.args[0], |op| is_binary(op, BinaryOp::Mul))?;
    let k = (2.0 / std::f64::consts::PI).sqrt();
    let poly = [
        (scaled.args[0], scaled.args[1]),
        (scaled.args[1], scaled.args[0]),
    ]
    .into_iter()
    .find(|&(kk, _)| c.is_near(kk, k, CONST_TOL))?
    .1;
    let sum = c.find(poly, |op| is_binary(op, BinaryOp::Add))?;
    let (a, b) = (c.canon(sum.args[0]), c.canon(sum.args[1]));
    let cubic = if a == x {
        b
    } else if b == x {
        a
    } else {
        return None;
    };
    let m = c.find(cubic, |op| is_binary(op, BinaryOp::Mul))?;
    let ok = [(m.args[0], m.args[1]), (m.args[1], m.args[0])]
        .into_iter()
        .any(|(kk, cube)| c.is_near(kk, 0.044715, CONST_TOL) && is_cube(c, cube, x));
    ok.then(|| Build::Node(Op::Unary(UnaryOp::GeluTanh), vec![Build::Class(x)]))
}

/// The trailing axes `axis..rank` of a keepdims mean over x, if `id` is one.
fn tail_mean(c: &Ctx, id: Id) -> Option<(Id, usize)> {
    let m = c.find(id, |op| {
        matches!(
            op,
            Op::Reduce {
                kind: ReduceKind::Mean,
                keepdims: true,
                ..
            }
        )
    })?;
    let Some(Op::Reduce { axes, .. }) = m.ir_op() else {
        return None;
    };
    let x = m.args[0];
    let rank = c.ty(x).rank();
    let axis = *axes.first()?;
    (axes.iter().copied().eq(axis..rank)).then(|| (c.canon(x), axis))
}

/// `(x - mean(x)) / sqrt(mean((x - mean(x))²) + eps) → layernorm(x, 1)` over trailing axes.
pub fn layernorm_decomposed(c: &Ctx, class: Id, n: &ENode) -> Option<Build> {
    if !is_binary(n.ir_op()?, BinaryOp::Div) {
        return None;
    }
    let (d, s) = (c.canon(n.args[0]), n.args[1]);
    let sub = c.find(d, |op| is_binary(op, BinaryOp::Sub))?;
    let x = c.canon(sub.args[0]);
    let (mx, axis) = tail_mean(c, sub.args[1])?;
    if mx != x {
        return None;
    }
    let sqrt = c.find(s, |op| op == &Op::Unary(UnaryOp::Sqrt))?;
    let add = c.find(sqrt.args[0], |op| is_binary(op, BinaryOp::Add))?;
    let (var, eps) = [(add.args[0], add.args[1]), (add.args[1], add.args[0])]
        .into_iter()
        .find(|&(_, e)| c.value(e).is_some_and(|t| t.numel() == 1))?;
    let eps = c.value(eps)?.to_f64()[0];
    let (sq, vaxis) = tail_mean(c, var)?;
    if vaxis != axis {
        return None;
    }
    let squares_d = c
        .find(sq, |op| is_binary(op, BinaryOp::Pow))
        .is_some_and(|p| c.canon(p.args[0]) == d && c.is_const(p.args[1], 2.0))
        || c.find(sq, |op| is_binary(op, BinaryOp::Mul))
            .is_some_and(|m| c.canon(m.args[0]) == d && c.canon(m.args[1]) == d);
    if !squares_d {
        return None;
    }
    let ty = c.ty(class);
    let tail = ty.shape[axis..].to_vec();
    let ones = Tensor::from_f64(ty.dtype, tail.clone(), &vec![1.0; tail.iter().product()]);
    Some(Build::Node(
        Op::LayerNorm {
            axis,
            epsilon: F64(eps),
        },
        vec![Build::Class(x), Build::Const(ones)],
    ))
}

/// A layernorm node in class `id` with scale all ones and no bias: (x, axis, eps).
fn plain_layernorm(c: &Ctx, id: Id, want_bias: bool) -> Option<(Vec<Id>, usize, F64)> {
    let ln = c.find(id, |op| matches!(op, Op::LayerNorm { .. }))?;
    let Some(Op::LayerNorm { axis, epsilon }) = ln.ir_op() else {
        return None;
    };
    let ok = if want_bias {
        ln.args.len() == 2
    } else {
        ln.args.len() == 2 && c.is_const(ln.args[1], 1.0)
    };
    ok.then(|| (ln.args.clone(), *axis, *epsilon))
}

/// `layernorm(x, 1) * g → layernorm(x, g)` when g fits the normalized dims.
pub fn layernorm_scale(c: &Ctx, _class: Id, n: &ENode) -> Option<Build> {
    if !is_binary(n.ir_op()?, BinaryOp::Mul) {
        return None;
    }
    for (l, g) in [(n.args[0], n.args[1]), (n.args[1], n.args[0])] {
        if let Some((args, axis, epsilon)) = plain_layernorm(c, l, false) {
            return Some(Build::Node(
                Op::LayerNorm { axis, epsilon },
                vec![Build::Class(args[0]), Build::Class(g)],
            ));
        }
    }
    None
}

/// `layernorm(x, g) + b → layernorm(x, g, b)` when b fits the normalized dims.
pub fn layernorm_bias(c: &Ctx, _class: Id, n: &ENode) -> Option<Build> {
    if !is_binary(n.ir_op()?, BinaryOp::Add) {
        return None;
    }
    for (l, b) in [(n.args[0], n.args[1]), (n.args[1], n.args[0])] {
        if let Some((args, axis, epsilon)) = plain_layernorm(c, l, true) {
            return Some(Build::Node(
                Op::LayerNorm { axis, epsilon },
                vec![
                    Build::Class(args[0]),
                    Build::Class(args[1]),
                    Build::Class(b),
                ],
            ));
        }
    }
    None
}
