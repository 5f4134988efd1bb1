//! Neural-network ops: Gemm, Conv and pooling (1-D lifted to 2-D), BatchNormalization,
//! LayerNormalization statistics, Softmax, the Reduce family and masked reductions.

use super::shape::norm_axes;
use super::{Ctx, Importer, R};
use crate::ir::{
    fmt_shape, normalize_axis, BinaryOp, Conv2d, DType, Op, Pool2d, PoolKind, ReduceKind, UnaryOp,
    Value,
};

/// Upper bound for window attributes (kernel, strides, pads, dilations): keeps all window
/// arithmetic far from overflow; real models use small values.
const MAX_WINDOW_ATTR: i64 = i32::MAX as i64;

impl Importer {
    /// `sqrt(var + eps)`, the denominator of the normalizations.
    pub(super) fn std_dev(&mut self, var: Value, eps: f64, name: &str) -> R<Value> {
        let e = self.scalar_like(&format!("{name}/eps"), var, eps)?;
        let ve = self.bin(&format!("{name}/var_eps"), BinaryOp::Add, var, e)?;
        self.un(&format!("{name}/std"), UnaryOp::Sqrt, ve)
    }

    /// `reduce(x[mask])` as `reduce(where(mask, x, identity))` over all elements.
    pub(super) fn masked_reduce(&mut self, c: &Ctx, name: &str) -> R<Value> {
        let (x, m) = (c.req(0)?, c.req(1)?);
        let (xs, ms) = (self.shape(x), self.shape(m));
        if xs != ms || self.dtype(m) != DType::Bool {
            return Err(format!(
                "reduction of x[mask] with mask {} {} over x {}: only a bool mask of x's full shape has a static form; a mask over leading dims selects a data-dependent number of rows",
                self.dtype(m),
                fmt_shape(&ms),
                fmt_shape(&xs)
            ));
        }
        let kind = c.attrs.string_or("kind", "sum")?;
        let keepdims = c.attrs.int_or("keepdims", 1)? != 0;
        let (fill, rk) = match kind.as_str() {
            "sum" | "mean" => (0.0, ReduceKind::Sum),
            "max" => (f64::NEG_INFINITY, ReduceKind::Max),
            "min" => (f64::INFINITY, ReduceKind::Min),
            k => return Err(format!("unknown masked reduction '{k}'")),
        };
        let f = self.scalar_like(&format!("{name}/fill"), x, fill)?;
        let sel = self.emit(&format!("{name}/select"), Op::Where, &[m, x, f])?;
        let all: Vec<usize> = (0..xs.len()).collect();
        let reduce = Op::Reduce {
            kind: rk,
            axes: all.clone(),
            keepdims: false,
        };
        let mut v = self.emit(&format!("{name}/reduce"), reduce.clone(), &[sel])?;
        if kind == "mean" {
            let d = self.dtype(x);
            let ones = self.emit(&format!("{name}/count_each"), Op::Cast(d), &[m])?;
            let count = self.emit(&format!("{name}/count"), reduce, &[ones])?;
            v = self.bin(&format!("{name}/mean"), BinaryOp::Div, v, count)?;
        }
        // The selection is 1-D: keepdims leaves one dim of size 1.
        let shape = if keepdims { vec![1] } else { vec![] };
        self.emit(name, Op::Reshape(shape), &[v])
    }

    pub(super) fn gemm(&mut self, c: &Ctx, name: &str) -> R<Value> {
        let (mut a, mut b) = (c.req(0)?, c.req(1)?);
        let (sa, sb) = (self.shape(a), self.shape(b));
        if sa.len() != 2 || sb.len() != 2 {
            return Err(format!(
                "Gemm needs 2-D A and B, got {} and {}",
                fmt_shape(&sa),
                fmt_shape(&sb)
            ));
        }
        if c.attrs.int_or("transA", 0)? != 0 {
            a = self.emit(&format!("{name}/a_t"), Op::Transpose(vec![1, 0]), &[a])?;
        }
        if c.attrs.int_or("transB", 0)? != 0 {
            b = self.emit(&format!("{name}/b_t"), Op::Transpose(vec![1, 0]), &[b])?;
        }
        let alpha = c.attrs.float_or("alpha", 1.0)?;
        let beta = c.attrs.float_or("beta", 1.0)?;
        let bias = c.input(2);
        let last_mm = bias.is_none() && alpha == 1.0;
        let mm_name = if last_mm {
            name.to_string()
        } else {
            format!("{name}/matmul")
        };
        let mut y = self.emit(&mm_name, Op::MatMul, &[a, b])?;
        if alpha != 1.0 {
            let k = self.scalar_like(&format!("{name}/alpha"), y, alpha)?;
            let n = if bias.is_none() {
                name.to_string()
            } else {
                format!("{name}/scaled")
            };
            y = self.emit(&n, Op::Binary(BinaryOp::Mul), &[y, k])?;
        }
        if let Some(mut cb) = bias {
            if beta != 1.0 {
                let k = self.scalar_like(&format!("{name}/beta"), cb, beta)?;
                cb = self.bin(&format!("{name}/bias_scaled"), BinaryOp::Mul, cb, k)?;
            }
            y = self.emit(name, Op::Binary(BinaryOp::Add), &[y, cb])?;
        }
        Ok(y)
    }

    /// Resolves `auto_pad`/`pads` for a 2-D window; returns [top, left, bottom, right].
    pub(super) fn window_pads(
        &self,
        c: &Ctx,
        input: &[usize],
        kernel: &[usize; 2],
        strides: &[usize; 2],
        dilations: &[usize; 2],
    ) -> R<[usize; 4]> {
        let auto = c.attrs.string_or("auto_pad", "NOTSET")?;
        match auto.as_str() {
            "NOTSET" => {
                let p = c.attrs.ints("pads")?.unwrap_or(vec![0; 4]);
                if p.len() != 4 || p.iter().any(|&v| !(0..=MAX_WINDOW_ATTR).contains(&v)) {
                    return Err(format!("pads {p:?} must be 4 values in 0..=2^31-1"));
                }
                Ok([p[0] as usize, p[1] as usize, p[2] as usize, p[3] as usize])
            }
            "VALID" => Ok([0; 4]),
            "SAME_UPPER" | "SAME_LOWER" => {
                let mut pads = [0; 4];
                for i in 0..2 {
                    if input[i] == 0 || kernel[i] == 0 {
                        return Err(format!(
                            "{auto} padding of an empty input or window (dim {}: input {}, window {})",
                            2 + i,
                            input[i],
                            kernel[i]
                        ));
                    }
                    let out = input[i].div_ceil(strides[i]);
                    let span = dilations[i]
                        .checked_mul(kernel[i] - 1)
                        .and_then(|s| s.checked_add(1));
                    let total = span
                        .and_then(|k| ((out - 1) * strides[i]).checked_add(k))
                        .ok_or_else(|| {
                            format!(
                                "{auto} padding of dim {}: window {} with dilation {} overflows",
                                2 + i,
                                kernel[i],
                                dilations[i]
                            )
                        })?
                        .saturating_sub(input[i]);
                    let small = total / 2;
                    let (begin, end) = if auto == "SAME_UPPER" {
                        (small, total - small)
                    } else {
                        (total - small, small)
                    };
                    pads[i] = begin;
                    pads[i + 2] = end;
                }
                Ok(pads)
            }
            other => Err(format!("unknown auto_pad '{other}'")),
        }
    }

    pub(super) fn pair(&self, c: &Ctx, attr: &str, rank: usize) -> R<[usize; 2]> {
        match c.attrs.ints(attr)? {
            None => Ok([1, 1]),
            Some(v) if v.len() == rank && v.iter().all(|&x| (1..=MAX_WINDOW_ATTR).contains(&x)) => {
                Ok(if rank == 1 {
                    [1, v[0] as usize]
                } else {
                    [v[0] as usize, v[1] as usize]
                })
            }
            Some(v) => Err(format!(
                "attribute '{attr}' {v:?} must have {rank} values in 1..=2^31-1"
            )),
        }
    }

    /// 1-D windows (N, C, L) are lifted to 2-D (N, C, 1, L); returns (input, lifted).
    pub(super) fn lift_1d(&mut self, name: &str, x: Value) -> R<(Value, bool)> {
        let s = self.shape(x);
        if s.len() == 3 {
            let v = self.emit(
                &format!("{name}/as2d"),
                Op::Reshape(vec![s[0], s[1], 1, s[2]]),
                &[x],
            )?;
            return Ok((v, true));
        }
        if s.len() != 4 {
            return Err(format!(
                "only 1-D and 2-D windows are supported, input is {}",
                fmt_shape(&s)
            ));
        }
        Ok((x, false))
    }

    pub(super) fn lift_pads(&self, c: &Ctx, lifted: bool) -> R<Option<Vec<i64>>> {
        Ok(match c.attrs.ints("pads")? {
            Some(p) if lifted && p.len() == 2 => Some(vec![0, p[0], 0, p[1]]),
            p => p,
        })
    }

    pub(super) fn conv(&mut self, c: &Ctx, name: &str) -> R<Value> {
        let (x, lifted) = self.lift_1d(name, c.req(0)?)?;
        let mut w = c.req(1)?;
        if lifted {
            let s = self.shape(w);
            if s.len() != 3 {
                return Err(format!(
                    "1-D conv weight must be 3-D, got {}",
                    fmt_shape(&s)
                ));
            }
            w = self.emit(
                &format!("{name}/w2d"),
                Op::Reshape(vec![s[0], s[1], 1, s[2]]),
                &[w],
            )?;
        }
        let rank = if lifted { 1 } else { 2 };
        let ws = self.shape(w);
        if ws.len() != 4 || ws[2] == 0 || ws[3] == 0 {
            return Err(format!(
                "conv weight must be [out, in/group, kh, kw] with a non-empty window, got {}",
                fmt_shape(&ws)
            ));
        }
        let kernel = [ws[2], ws[3]];
        let strides = self.pair(c, "strides", rank)?;
        let dilations = self.pair(c, "dilations", rank)?;
        let xs = self.shape(x);
        let pads = self.pads_for(c, lifted, &xs[2..], &kernel, &strides, &dilations)?;
        let group = c.attrs.int_or("group", 1)?;
        if group < 1 {
            return Err(format!("group {group} must be positive"));
        }
        let op = Op::Conv(Conv2d {
            strides,
            pads,
            dilations,
            group: group as usize,
        });
        let mut ins = vec![x, w];
        ins.extend(c.input(2));
        self.finish_window(name, op, &ins, lifted)
    }

    pub(super) fn pads_for(
        &self,
        c: &Ctx,
        lifted: bool,
        spatial: &[usize],
        kernel: &[usize; 2],
        strides: &[usize; 2],
        dilations: &[usize; 2],
    ) -> R<[usize; 4]> {
        if lifted && c.attrs.string_or("auto_pad", "NOTSET")? == "NOTSET" {
            let p = self.lift_pads(c, lifted)?.unwrap_or(vec![0; 4]);
            if p.len() != 4 || p.iter().any(|&v| !(0..=MAX_WINDOW_ATTR).contains(&v)) {
                return Err(format!("pads {p:?} must be 2 values in 0..=2^31-1"));
            }
            return Ok([p[0] as usize, p[1] as usize, p[2] as usize, p[3] as usize]);
        }
        self.window_pads(c, spatial, kernel, strides, dilations)
    }

    pub(super) fn finish_window(
        &mut self,
        name: &str,
        op: Op,
        ins: &[Value],
        lifted: bool,
    ) -> R<Value> {
        if !lifted {
            return self.emit(name, op, ins);
        }
        let y = self.emit(&format!("{name}/2d"), op, ins)?;
        let s = self.shape(y);
        self.emit(name, Op::Reshape(vec![s[0], s[1], s[3]]), &[y])
    }

    pub(super) fn pool(&mut self, c: &Ctx, name: &str) -> R<Value> {
        if c.node.output.len() > 1 && !c.node.output[1].is_empty() {
            return Err("the Indices output of MaxPool is not supported".into());
        }
        let (x, lifted) = self.lift_1d(name, c.req(0)?)?;
        let rank = if lifted { 1 } else { 2 };
        let k = c
            .attrs
            .ints("kernel_shape")?
            .ok_or("missing attribute 'kernel_shape'")?;
        if k.len() != rank || k.iter().any(|&v| !(1..=MAX_WINDOW_ATTR).contains(&v)) {
            return Err(format!(
                "kernel_shape {k:?} must have {rank} values in 1..=2^31-1"
            ));
        }
        let kernel = if lifted {
            [1, k[0] as usize]
        } else {
            [k[0] as usize, k[1] as usize]
        };
        let strides = self.pair(c, "strides", rank)?;
        let dilations = self.pair(c, "dilations", rank)?;
        let xs = self.shape(x);
        let pads = self.pads_for(c, lifted, &xs[2..], &kernel, &strides, &dilations)?;
        let kind = if c.node.op_type() == "MaxPool" {
            PoolKind::Max
        } else {
            PoolKind::Avg {
                count_include_pad: c.attrs.int_or("count_include_pad", 0)? != 0,
            }
        };
        let op = Op::Pool(Pool2d {
            kind,
            kernel,
            strides,
            pads,
            dilations,
            ceil_mode: c.attrs.int_or("ceil_mode", 0)? != 0,
        });
        self.finish_window(name, op, &[x], lifted)
    }

    pub(super) fn batch_norm(&mut self, c: &Ctx, name: &str) -> R<Value> {
        if c.attrs.int_or("training_mode", 0)? != 0 || c.node.output.len() > 1 {
            return Err("training mode is not supported (inference only)".into());
        }
        let x = c.req(0)?;
        let (scale, bias, mean, var) = (c.req(1)?, c.req(2)?, c.req(3)?, c.req(4)?);
        let eps = c.attrs.float_or("epsilon", 1e-5)?;
        let xs = self.shape(x);
        if xs.len() < 2 {
            return Err(format!("input must have rank >= 2, got {}", fmt_shape(&xs)));
        }
        // Parameters are [C]; view them as [C, 1, ..., 1] to broadcast over the spatial dims.
        let mut pshape = vec![xs[1]];
        pshape.extend(std::iter::repeat_n(1, xs.len() - 2));
        let view = |me: &mut Self, v: Value, tag: &str| {
            me.emit(&format!("{name}/{tag}"), Op::Reshape(pshape.clone()), &[v])
        };
        let (scale, bias, mean, var) = (
            view(self, scale, "scale")?,
            view(self, bias, "bias")?,
            view(self, mean, "mean")?,
            view(self, var, "var")?,
        );
        let sd = self.std_dev(var, eps, name)?;
        let k = self.bin(&format!("{name}/factor"), BinaryOp::Div, scale, sd)?;
        let centered = self.bin(&format!("{name}/centered"), BinaryOp::Sub, x, mean)?;
        let scaled = self.bin(&format!("{name}/scaled"), BinaryOp::Mul, centered, k)?;
        self.bin(name, BinaryOp::Add, scaled, bias)
    }

    /// The optional LayerNormalization outputs: mean and 1/sqrt(var + eps) over dims `axis..`
    /// (kept as size-1 dims).
    pub(super) fn layer_norm_stats(
        &mut self,
        x: Value,
        axis: usize,
        eps: f64,
        name: &str,
    ) -> R<(Value, Value)> {
        let axes: Vec<usize> = (axis..self.ty(x).rank()).collect();
        let mean_op = Op::Reduce {
            kind: ReduceKind::Mean,
            axes,
            keepdims: true,
        };
        let mean = self.emit(&format!("{name}/mean"), mean_op.clone(), &[x])?;
        let d = self.bin(&format!("{name}/centered"), BinaryOp::Sub, x, mean)?;
        let sq = self.bin(&format!("{name}/square"), BinaryOp::Mul, d, d)?;
        let var = self.emit(&format!("{name}/var"), mean_op, &[sq])?;
        let sd = self.std_dev(var, eps, name)?;
        let inv = self.un(&format!("{name}/inv_std"), UnaryOp::Reciprocal, sd)?;
        Ok((mean, inv))
    }

    pub(super) fn softmax(&mut self, c: &Ctx, name: &str) -> R<Value> {
        let x = c.req(0)?;
        let s = self.shape(x);
        let log = c.node.op_type() == "LogSoftmax";
        let make = |axis| {
            if log {
                Op::LogSoftmax { axis }
            } else {
                Op::Softmax { axis }
            }
        };
        if self.opset >= 13 {
            let axis = normalize_axis(c.attrs.int_or("axis", -1)?, s.len())?;
            return self.emit(name, make(axis), &[x]);
        }
        // Before opset 13 the input is coerced to 2-D at `axis` (default 1).
        let axis = normalize_axis(c.attrs.int_or("axis", 1)?, s.len())?;
        let flat = vec![s[..axis].iter().product(), s[axis..].iter().product()];
        let f = self.emit(&format!("{name}/2d"), Op::Reshape(flat), &[x])?;
        let y = self.emit(&format!("{name}/rows"), make(1), &[f])?;
        self.emit(name, Op::Reshape(s), &[y])
    }

    pub(super) fn reduce(&mut self, c: &Ctx, name: &str) -> R<Value> {
        let op_type = c.node.op_type();
        let x = c.req(0)?;
        let rank = self.ty(x).rank();
        let keepdims = c.attrs.int_or("keepdims", 1)? != 0;
        let noop = c.attrs.int_or("noop_with_empty_axes", 0)? != 0;
        let axes = match self.axes_from(c, 1)? {
            Some(a) if !a.is_empty() => norm_axes(&a, rank)?,
            _ if noop => return Ok(x),
            _ => (0..rank).collect(),
        };
        // Pre-transform, reduction, post-transform.
        let (pre, kind, post) = match op_type {
            "ReduceSum" => (None, ReduceKind::Sum, None),
            "ReduceMean" => (None, ReduceKind::Mean, None),
            "ReduceMax" => (None, ReduceKind::Max, None),
            "ReduceMin" => (None, ReduceKind::Min, None),
            "ReduceProd" => (None, ReduceKind::Prod, None),
            "ReduceL1" => (Some(Pre::Abs), ReduceKind::Sum, None),
            "ReduceL2" => (Some(Pre::Square), ReduceKind::Sum, Some(UnaryOp::Sqrt)),
            "ReduceSumSquare" => (Some(Pre::Square), ReduceKind::Sum, None),
            "ReduceLogSum" => (None, ReduceKind::Sum, Some(UnaryOp::Log)),
            _ => (Some(Pre::Exp), ReduceKind::Sum, Some(UnaryOp::Log)),
        };
        let v = match pre {
            None => x,
            Some(Pre::Square) => self.bin(&format!("{name}/square"), BinaryOp::Mul, x, x)?,
            Some(Pre::Abs) => self.un(&format!("{name}/abs"), UnaryOp::Abs, x)?,
            Some(Pre::Exp) => self.un(&format!("{name}/exp"), UnaryOp::Exp, x)?,
        };
        let op = Op::Reduce {
            kind,
            axes,
            keepdims,
        };
        match post {
            None => self.emit(name, op, &[v]),
            Some(u) => {
                let r = self.emit(&format!("{name}/sum"), op, &[v])?;
                self.emit(name, Op::Unary(u), &[r])
            }
        }
    }
}

/// Elementwise step before a composite reduction (L1, L2, SumSquare, LogSumExp).
pub(super) enum Pre {
    Abs,
    Square,
    Exp,
}
