//! Translation of ONNX nodes into IR nodes.

use super::attrs::Attrs;
use super::proto::{NodeProto, TensorProto};
use super::tensor::{dtype_from_onnx, tensor_from_proto};
use crate::error::Result;
use crate::interp;
use crate::ir::{
    broadcast_shapes, fmt_shape, infer, normalize_axis, BinaryOp, Conv2d, DType, Graph,
    GraphBuilder, Op, PadMode, Pool2d, PoolKind, ReduceKind, Tensor, UnaryOp, Value, F64,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Op types (default domain) that [`Importer::import_node`] translates.
pub const SUPPORTED: &[&str] = &[
    "Abs",
    "Acos",
    "Acosh",
    "Add",
    "And",
    "ArgMax",
    "ArgMin",
    "Asin",
    "Asinh",
    "Atan",
    "Atanh",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "CastLike",
    "Ceil",
    "Celu",
    "Clip",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Conv",
    "Cos",
    "Cosh",
    "CumSum",
    "Div",
    "Dropout",
    "Elu",
    "Equal",
    "Erf",
    "Exp",
    "Expand",
    "Flatten",
    "Floor",
    "Gather",
    "GatherElements",
    "Gelu",
    "Gemm",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "Greater",
    "GreaterOrEqual",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "IsInf",
    "IsNaN",
    "LayerNormalization",
    "LeakyRelu",
    "Less",
    "LessOrEqual",
    "Log",
    "LogSoftmax",
    "MatMul",
    "Max",
    "MaxPool",
    "Mean",
    "Min",
    "Mod",
    "Mul",
    "Neg",
    "Not",
    "Or",
    "Pad",
    "Pow",
    "PRelu",
    "Range",
    "Reciprocal",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceSum",
    "ReduceSumSquare",
    "Relu",
    "Reshape",
    "Round",
    "Selu",
    "Shape",
    "Sigmoid",
    "Sign",
    "Sin",
    "Sinh",
    "Size",
    "Slice",
    "Softmax",
    "Softplus",
    "Softsign",
    "Split",
    "Sqrt",
    "Squeeze",
    "Sub",
    "Sum",
    "Tan",
    "Tanh",
    "ThresholdedRelu",
    "Tile",
    "Transpose",
    "Trilu",
    "Unsqueeze",
    "Where",
    "Xor",
];

/// Constants up to this many elements are computed at import when all their inputs are known.
const FOLD_LIMIT: usize = 1 << 20;

type R<T> = std::result::Result<T, String>;

/// Import state: the graph being built and the ONNX name of every value so far.
pub struct Importer {
    b: GraphBuilder,
    env: HashMap<String, Value>,
    opset: i64,
    base_dir: Option<PathBuf>,
}

/// One node being translated: its inputs and attributes, and where its outputs go.
struct Ctx<'a> {
    node: &'a NodeProto,
    attrs: Attrs<'a>,
    inputs: Vec<Option<Value>>,
}

impl Ctx<'_> {
    fn input(&self, i: usize) -> Option<Value> {
        self.inputs.get(i).copied().flatten()
    }
    fn req(&self, i: usize) -> R<Value> {
        self.input(i)
            .ok_or_else(|| format!("missing required input #{i}"))
    }
    fn input_name(&self, i: usize) -> &str {
        self.node.input.get(i).map(String::as_str).unwrap_or("?")
    }
    fn out(&self) -> &str {
        self.node.output.first().map(String::as_str).unwrap_or("")
    }
}

impl Importer {
    pub fn new(opset: i64, base_dir: Option<&Path>) -> Self {
        Importer {
            b: GraphBuilder::new(),
            env: HashMap::new(),
            opset,
            base_dir: base_dir.map(Path::to_path_buf),
        }
    }

    pub fn add_initializer(&mut self, t: &TensorProto) -> R<()> {
        let tensor = tensor_from_proto(t, self.base_dir.as_deref())?;
        let v = self
            .b
            .add_named(t.name(), Op::Constant(Arc::new(tensor)), &[])
            .map_err(|e| e.to_string())?;
        self.env.insert(t.name().to_string(), v);
        Ok(())
    }

    pub fn add_input(&mut self, name: &str, dtype: DType, shape: &[usize]) -> R<()> {
        let v = self
            .b
            .input(name, dtype, shape)
            .map_err(|e| e.to_string())?;
        self.env.insert(name.to_string(), v);
        Ok(())
    }

    pub fn add_constant_input(&mut self, name: &str, t: Tensor) -> R<()> {
        let v = self.konst(name, t)?;
        self.env.insert(name.to_string(), v);
        Ok(())
    }

    pub fn add_output(&mut self, name: &str) -> R<()> {
        let v = *self
            .env
            .get(name)
            .ok_or_else(|| format!("graph output '{name}' is never produced"))?;
        self.b.output(name, v).map_err(|e| e.to_string())
    }

    /// Removes nodes that no output needs, then validates.
    pub fn finish(self) -> Result<Graph> {
        let g = self.b.graph().clone();
        let g = prune(g);
        g.validate()?;
        Ok(g)
    }

    fn ty(&self, v: Value) -> &crate::ir::TensorType {
        self.b.ty(v)
    }

    fn shape(&self, v: Value) -> Vec<usize> {
        self.ty(v).shape.clone()
    }

    fn dtype(&self, v: Value) -> DType {
        self.ty(v).dtype
    }

    fn constant(&self, v: Value) -> Option<Arc<Tensor>> {
        self.b.constant_value(v).cloned()
    }

    /// Adds `op`, computing it now when all inputs are constants and the result is small.
    fn emit(&mut self, name: &str, op: Op, inputs: &[Value]) -> R<Value> {
        let consts: Option<Vec<Arc<Tensor>>> = inputs.iter().map(|&v| self.constant(v)).collect();
        if let Some(consts) = consts {
            let tys: Vec<_> = consts.iter().map(|t| t.ty()).collect();
            let ty = infer(&op, &tys).map_err(|e| format!("{e} (inputs: {})", show(&tys)))?;
            if ty.numel() <= FOLD_LIMIT {
                let refs: Vec<&Tensor> = consts.iter().map(|t| t.as_ref()).collect();
                let value = interp::eval(&op, &refs, &ty)?;
                return self.konst(name, value);
            }
        }
        self.b.add_named(name, op, inputs).map_err(|e| match e {
            crate::Error::Node { message, .. } => message,
            other => other.to_string(),
        })
    }

    fn konst(&mut self, name: &str, t: Tensor) -> R<Value> {
        self.b
            .add_named(name, Op::Constant(Arc::new(t)), &[])
            .map_err(|e| e.to_string())
    }

    fn scalar_like(&mut self, name: &str, v: Value, x: f64) -> R<Value> {
        let d = self.dtype(v);
        self.konst(name, Tensor::scalar(d, x))
    }

    /// The integer values of an input that must be known at import (a shape, axes, ...).
    fn const_ints(&self, c: &Ctx, i: usize, what: &str) -> R<Vec<i64>> {
        let v = c.req(i)?;
        match self.constant(v) {
            Some(t) if !t.dtype().is_float() => Ok(t.to_i64()),
            Some(_) => Err(format!("input '{}' ({what}) must be an integer tensor", c.input_name(i))),
            None => Err(format!(
                "input '{}' ({what}) is computed from tensor data at run time, so the output shape depends on data, which would force a host sync; smelt compiles static shapes only",
                c.input_name(i)
            )),
        }
    }

    fn const_scalar(&self, c: &Ctx, i: usize, what: &str) -> R<Option<f64>> {
        match c.input(i) {
            None => Ok(None),
            Some(v) => match self.constant(v) {
                Some(t) if t.numel() == 1 => Ok(Some(t.to_f64()[0])),
                Some(_) => Err(format!(
                    "input '{}' ({what}) must be a scalar",
                    c.input_name(i)
                )),
                None => Err(format!(
                    "input '{}' ({what}) must be a constant known at import",
                    c.input_name(i)
                )),
            },
        }
    }

    fn axes_from(&self, c: &Ctx, input: usize) -> R<Option<Vec<i64>>> {
        if let Some(a) = c.attrs.ints("axes")? {
            return Ok(Some(a));
        }
        if c.input(input).is_some() {
            return Ok(Some(self.const_ints(c, input, "axes")?));
        }
        Ok(None)
    }

    pub fn import_node(&mut self, node: &NodeProto) -> R<()> {
        let mut inputs = Vec::new();
        for name in &node.input {
            if name.is_empty() {
                inputs.push(None);
            } else {
                let v = *self
                    .env
                    .get(name)
                    .ok_or_else(|| format!("input '{name}' is not defined before this node"))?;
                inputs.push(Some(v));
            }
        }
        let c = Ctx {
            node,
            attrs: Attrs::of(node),
            inputs,
        };
        let outs = self.translate(&c)?;
        for (name, v) in node.output.iter().zip(outs) {
            if !name.is_empty() {
                self.env.insert(name.clone(), v);
            }
        }
        Ok(())
    }

    fn translate(&mut self, c: &Ctx) -> R<Vec<Value>> {
        let name = c.out().to_string();
        let op_type = c.node.op_type();
        if let Some(u) = unary_op(op_type, &c.attrs)? {
            return Ok(vec![self.emit(&name, Op::Unary(u), &[c.req(0)?])?]);
        }
        if let Some(b) = binary_op(op_type, &c.attrs)? {
            let (x, mut y) = (c.req(0)?, c.req(1)?);
            if b == BinaryOp::Pow && self.dtype(x) != self.dtype(y) {
                let d = self.dtype(x);
                y = self.emit(&format!("{name}/exponent"), Op::Cast(d), &[y])?;
            }
            return Ok(vec![self.emit(&name, Op::Binary(b), &[x, y])?]);
        }
        let v = match op_type {
            super::static_forms::MASKED_REDUCE
                if c.node.domain() == super::static_forms::DOMAIN =>
            {
                self.masked_reduce(c, &name)?
            }
            "Identity" => c.req(0)?,
            "Dropout" => {
                let x = c.req(0)?;
                if c.attrs.int_or("training_mode", 0)? != 0 {
                    return Err("training mode is not supported (inference only)".into());
                }
                if c.input(2).is_some() && self.const_scalar(c, 2, "training_mode")? != Some(0.0) {
                    return Err("training mode is not supported (inference only)".into());
                }
                let mut outs = vec![x];
                if c.node.output.len() > 1 && !c.node.output[1].is_empty() {
                    let shape = self.shape(x);
                    let t = Tensor::from_f64(DType::Bool, vec![], &[1.0]);
                    let one = self.konst(&format!("{name}/true"), t)?;
                    outs.push(self.emit(&c.node.output[1], Op::Broadcast(shape), &[one])?);
                }
                return Ok(outs);
            }
            "Where" => self.emit(&name, Op::Where, &[c.req(0)?, c.req(1)?, c.req(2)?])?,
            "Cast" => {
                let to =
                    dtype_from_onnx(c.attrs.int("to")?.ok_or("missing attribute 'to'")? as i32)?;
                self.emit(&name, Op::Cast(to), &[c.req(0)?])?
            }
            "CastLike" => {
                let to = self.dtype(c.req(1)?);
                self.emit(&name, Op::Cast(to), &[c.req(0)?])?
            }
            "Clip" => self.clip(c, &name)?,
            "Min" | "Max" | "Sum" | "Mean" => self.variadic(c, &name)?,
            "MatMul" => self.emit(&name, Op::MatMul, &[c.req(0)?, c.req(1)?])?,
            "Gemm" => self.gemm(c, &name)?,
            "Conv" => self.conv(c, &name)?,
            "MaxPool" | "AveragePool" => self.pool(c, &name)?,
            "GlobalAveragePool" | "GlobalMaxPool" => {
                let x = c.req(0)?;
                let axes: Vec<usize> = (2..self.ty(x).rank()).collect();
                let kind = if op_type == "GlobalMaxPool" {
                    ReduceKind::Max
                } else {
                    ReduceKind::Mean
                };
                let op = Op::Reduce {
                    kind,
                    axes,
                    keepdims: true,
                };
                self.emit(&name, op, &[x])?
            }
            "BatchNormalization" => self.batch_norm(c, &name)?,
            "Softmax" | "LogSoftmax" => self.softmax(c, &name)?,
            "LayerNormalization" => {
                let x = c.req(0)?;
                let axis = normalize_axis(c.attrs.int_or("axis", -1)?, self.ty(x).rank())?;
                let epsilon = F64(c.attrs.float_or("epsilon", 1e-5)?);
                let mut ins = vec![x, c.req(1)?];
                ins.extend(c.input(2));
                let y = self.emit(&name, Op::LayerNorm { axis, epsilon }, &ins)?;
                if c.node.output.iter().skip(1).all(|o| o.is_empty()) {
                    return Ok(vec![y]);
                }
                let (mean, inv_std) = self.layer_norm_stats(x, axis, epsilon.0, &name)?;
                return Ok(vec![y, mean, inv_std]);
            }
            "ReduceSum" | "ReduceMean" | "ReduceMax" | "ReduceMin" | "ReduceProd" | "ReduceL1"
            | "ReduceL2" | "ReduceSumSquare" | "ReduceLogSum" | "ReduceLogSumExp" => {
                self.reduce(c, &name)?
            }
            "ArgMax" | "ArgMin" => {
                let x = c.req(0)?;
                let axis = normalize_axis(c.attrs.int_or("axis", 0)?, self.ty(x).rank())?;
                let op = Op::ArgReduce {
                    max: op_type == "ArgMax",
                    axis,
                    keepdims: c.attrs.int_or("keepdims", 1)? != 0,
                    select_last: c.attrs.int_or("select_last_index", 0)? != 0,
                };
                self.emit(&name, op, &[x])?
            }
            "Reshape" => {
                let x = c.req(0)?;
                let spec = match c.attrs.ints("shape")? {
                    Some(s) => s,
                    None => self.const_ints(c, 1, "shape")?,
                };
                let allowzero = c.attrs.int_or("allowzero", 0)? != 0;
                let shape = reshape_target(&self.shape(x), &spec, allowzero)?;
                self.emit(&name, Op::Reshape(shape), &[x])?
            }
            "Flatten" => {
                let x = c.req(0)?;
                let s = self.shape(x);
                let r = s.len() as i64;
                let mut axis = c.attrs.int_or("axis", 1)?;
                if axis < 0 {
                    axis += r;
                }
                if axis < 0 || axis > r {
                    return Err(format!("axis {axis} out of range for rank {r}"));
                }
                let a = axis as usize;
                let shape = vec![s[..a].iter().product(), s[a..].iter().product()];
                self.emit(&name, Op::Reshape(shape), &[x])?
            }
            "Squeeze" => {
                let x = c.req(0)?;
                let s = self.shape(x);
                let axes = match self.axes_from(c, 1)? {
                    Some(a) => norm_axes(&a, s.len())?,
                    None => (0..s.len()).filter(|&d| s[d] == 1).collect(),
                };
                if let Some(&a) = axes.iter().find(|&&a| s[a] != 1) {
                    return Err(format!(
                        "cannot squeeze dim {a} of size {} in {}",
                        s[a],
                        fmt_shape(&s)
                    ));
                }
                let shape: Vec<usize> = (0..s.len())
                    .filter(|d| !axes.contains(d))
                    .map(|d| s[d])
                    .collect();
                self.emit(&name, Op::Reshape(shape), &[x])?
            }
            "Unsqueeze" => {
                let x = c.req(0)?;
                let s = self.shape(x);
                let a = self.axes_from(c, 1)?.ok_or("missing axes")?;
                let out_rank = s.len() + a.len();
                let axes = norm_axes(&a, out_rank)?;
                let mut shape = Vec::with_capacity(out_rank);
                let mut it = s.iter();
                for d in 0..out_rank {
                    if axes.contains(&d) {
                        shape.push(1);
                    } else {
                        shape.push(*it.next().ok_or("bad unsqueeze axes")?);
                    }
                }
                self.emit(&name, Op::Reshape(shape), &[x])?
            }
            "Transpose" => {
                let x = c.req(0)?;
                let r = self.ty(x).rank();
                let perm = match c.attrs.ints("perm")? {
                    Some(p) => norm_axes_ordered(&p, r)?,
                    None => (0..r).rev().collect(),
                };
                self.emit(&name, Op::Transpose(perm), &[x])?
            }
            "Expand" => {
                let x = c.req(0)?;
                let spec = self.const_ints(c, 1, "shape")?;
                let spec: Vec<usize> = spec.iter().map(|&d| d.max(0) as usize).collect();
                let s = self.shape(x);
                let shape = broadcast_shapes(&s, &spec).ok_or_else(|| {
                    format!("cannot expand {} to {}", fmt_shape(&s), fmt_shape(&spec))
                })?;
                self.emit(&name, Op::Broadcast(shape), &[x])?
            }
            "Tile" => self.tile(c, &name)?,
            "Concat" => {
                let xs: Vec<Value> = c.inputs.iter().flatten().copied().collect();
                let first = *xs.first().ok_or("concat needs inputs")?;
                let axis = normalize_axis(
                    c.attrs.int("axis")?.ok_or("missing attribute 'axis'")?,
                    self.ty(first).rank(),
                )?;
                self.emit(&name, Op::Concat { axis }, &xs)?
            }
            "Split" => return self.split(c),
            "Slice" => self.slice(c, &name)?,
            "Gather" => {
                let x = c.req(0)?;
                let axis = normalize_axis(c.attrs.int_or("axis", 0)?, self.ty(x).rank())?;
                self.emit(&name, Op::Gather { axis }, &[x, c.req(1)?])?
            }
            "GatherElements" => {
                let x = c.req(0)?;
                let axis = normalize_axis(c.attrs.int_or("axis", 0)?, self.ty(x).rank())?;
                self.emit(&name, Op::GatherElements { axis }, &[x, c.req(1)?])?
            }
            "Pad" => self.pad(c, &name)?,
            "Constant" => {
                let t = self.constant_attr(c)?;
                self.konst(&name, t)?
            }
            "ConstantOfShape" => {
                let spec = self.const_ints(c, 0, "shape")?;
                if spec.iter().any(|&d| d < 0) {
                    return Err(format!("negative dim in shape {spec:?}"));
                }
                let shape: Vec<usize> = spec.iter().map(|&d| d as usize).collect();
                let value = match c.attrs.get("value").and_then(|a| a.t.as_ref()) {
                    Some(t) => tensor_from_proto(t, self.base_dir.as_deref())?,
                    None => Tensor::scalar(DType::F32, 0.0),
                };
                if value.numel() != 1 {
                    return Err("attribute 'value' must hold one element".into());
                }
                let scalar = value.reshaped(vec![]).expect("one element");
                let s = self.konst(&format!("{name}/value"), scalar)?;
                self.emit(&name, Op::Broadcast(shape), &[s])?
            }
            "Shape" => {
                let s = self.shape(c.req(0)?);
                let r = s.len() as i64;
                let clampi = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
                let start = clampi(c.attrs.int_or("start", 0)?);
                let end = clampi(c.attrs.int_or("end", r)?);
                let dims: Vec<i64> = s[start..end.max(start)].iter().map(|&d| d as i64).collect();
                let n = dims.len();
                self.konst(&name, Tensor::i64([n], dims))?
            }
            "Size" => {
                let n = self.ty(c.req(0)?).numel() as i64;
                self.konst(&name, Tensor::i64([], vec![n]))?
            }
            "Range" => self.range(c, &name)?,
            "Trilu" => {
                let k = self.const_scalar(c, 1, "k")?.unwrap_or(0.0) as i64;
                let upper = c.attrs.int_or("upper", 1)? != 0;
                self.emit(&name, Op::Trilu { upper, k }, &[c.req(0)?])?
            }
            "CumSum" => {
                let x = c.req(0)?;
                let a = self.const_scalar(c, 1, "axis")?.ok_or("missing axis")? as i64;
                let op = Op::CumSum {
                    axis: normalize_axis(a, self.ty(x).rank())?,
                    exclusive: c.attrs.int_or("exclusive", 0)? != 0,
                    reverse: c.attrs.int_or("reverse", 0)? != 0,
                };
                self.emit(&name, op, &[x])?
            }
            other => return Err(format!("op {other} is not supported")),
        };
        Ok(vec![v])
    }

    /// `reduce(x[mask])` as `reduce(where(mask, x, identity))` over all elements.
    fn masked_reduce(&mut self, c: &Ctx, name: &str) -> R<Value> {
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
            v = self.emit(
                &format!("{name}/mean"),
                Op::Binary(BinaryOp::Div),
                &[v, count],
            )?;
        }
        // The selection is 1-D: keepdims leaves one dim of size 1.
        let shape = if keepdims { vec![1] } else { vec![] };
        self.emit(name, Op::Reshape(shape), &[v])
    }

    fn constant_attr(&self, c: &Ctx) -> R<Tensor> {
        let a = &c.attrs;
        if let Some(t) = a.get("value").and_then(|a| a.t.as_ref()) {
            return tensor_from_proto(t, self.base_dir.as_deref());
        }
        if let Some(f) = a.get("value_float") {
            return Ok(Tensor::scalar(DType::F32, f.f() as f64));
        }
        if let Some(v) = a.floats("value_floats")? {
            return Ok(Tensor::f32([v.len()], v));
        }
        if let Some(i) = a.int("value_int")? {
            return Ok(Tensor::i64([], vec![i]));
        }
        if let Some(v) = a.ints("value_ints")? {
            return Ok(Tensor::i64([v.len()], v));
        }
        Err("Constant needs a 'value', 'value_float(s)' or 'value_int(s)' attribute (sparse and string constants are not supported)".into())
    }

    fn clip(&mut self, c: &Ctx, name: &str) -> R<Value> {
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

    fn variadic(&mut self, c: &Ctx, name: &str) -> R<Value> {
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

    fn gemm(&mut self, c: &Ctx, name: &str) -> R<Value> {
        let (mut a, mut b) = (c.req(0)?, c.req(1)?);
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
                cb = self.emit(
                    &format!("{name}/bias_scaled"),
                    Op::Binary(BinaryOp::Mul),
                    &[cb, k],
                )?;
            }
            y = self.emit(name, Op::Binary(BinaryOp::Add), &[y, cb])?;
        }
        Ok(y)
    }

    /// Resolves `auto_pad`/`pads` for a 2-D window; returns [top, left, bottom, right].
    fn window_pads(
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
                if p.len() != 4 || p.iter().any(|&v| v < 0) {
                    return Err(format!("pads {p:?} must be 4 non-negative values"));
                }
                Ok([p[0] as usize, p[1] as usize, p[2] as usize, p[3] as usize])
            }
            "VALID" => Ok([0; 4]),
            "SAME_UPPER" | "SAME_LOWER" => {
                let mut pads = [0; 4];
                for i in 0..2 {
                    let out = input[i].div_ceil(strides[i]);
                    let k = dilations[i] * (kernel[i] - 1) + 1;
                    let total = ((out - 1) * strides[i] + k).saturating_sub(input[i]);
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

    fn pair(&self, c: &Ctx, attr: &str, rank: usize) -> R<[usize; 2]> {
        match c.attrs.ints(attr)? {
            None => Ok([1, 1]),
            Some(v) if v.len() == rank && v.iter().all(|&x| x > 0) => Ok(if rank == 1 {
                [1, v[0] as usize]
            } else {
                [v[0] as usize, v[1] as usize]
            }),
            Some(v) => Err(format!(
                "attribute '{attr}' {v:?} must have {rank} positive values"
            )),
        }
    }

    /// 1-D windows (N, C, L) are lifted to 2-D (N, C, 1, L); returns (input, lifted).
    fn lift_1d(&mut self, name: &str, x: Value) -> R<(Value, bool)> {
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

    fn lift_pads(&self, c: &Ctx, lifted: bool) -> R<Option<Vec<i64>>> {
        Ok(match c.attrs.ints("pads")? {
            Some(p) if lifted && p.len() == 2 => Some(vec![0, p[0], 0, p[1]]),
            p => p,
        })
    }

    fn conv(&mut self, c: &Ctx, name: &str) -> R<Value> {
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

    fn pads_for(
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
            if p.len() != 4 || p.iter().any(|&v| v < 0) {
                return Err(format!("pads {p:?} must be 2 non-negative values"));
            }
            return Ok([p[0] as usize, p[1] as usize, p[2] as usize, p[3] as usize]);
        }
        self.window_pads(c, spatial, kernel, strides, dilations)
    }

    fn finish_window(&mut self, name: &str, op: Op, ins: &[Value], lifted: bool) -> R<Value> {
        if !lifted {
            return self.emit(name, op, ins);
        }
        let y = self.emit(&format!("{name}/2d"), op, ins)?;
        let s = self.shape(y);
        self.emit(name, Op::Reshape(vec![s[0], s[1], s[3]]), &[y])
    }

    fn pool(&mut self, c: &Ctx, name: &str) -> R<Value> {
        if c.node.output.len() > 1 && !c.node.output[1].is_empty() {
            return Err("the Indices output of MaxPool is not supported".into());
        }
        let (x, lifted) = self.lift_1d(name, c.req(0)?)?;
        let rank = if lifted { 1 } else { 2 };
        let k = c
            .attrs
            .ints("kernel_shape")?
            .ok_or("missing attribute 'kernel_shape'")?;
        if k.len() != rank || k.iter().any(|&v| v <= 0) {
            return Err(format!(
                "kernel_shape {k:?} must have {rank} positive values"
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

    fn batch_norm(&mut self, c: &Ctx, name: &str) -> R<Value> {
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
        let e = self.scalar_like(&format!("{name}/eps"), var, eps)?;
        let ve = self.emit(
            &format!("{name}/var_eps"),
            Op::Binary(BinaryOp::Add),
            &[var, e],
        )?;
        let sd = self.emit(&format!("{name}/std"), Op::Unary(UnaryOp::Sqrt), &[ve])?;
        let k = self.emit(
            &format!("{name}/factor"),
            Op::Binary(BinaryOp::Div),
            &[scale, sd],
        )?;
        let centered = self.emit(
            &format!("{name}/centered"),
            Op::Binary(BinaryOp::Sub),
            &[x, mean],
        )?;
        let scaled = self.emit(
            &format!("{name}/scaled"),
            Op::Binary(BinaryOp::Mul),
            &[centered, k],
        )?;
        self.emit(name, Op::Binary(BinaryOp::Add), &[scaled, bias])
    }

    /// The optional LayerNormalization outputs: mean and 1/sqrt(var + eps) over dims `axis..`
    /// (kept as size-1 dims).
    fn layer_norm_stats(
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
        let d = self.emit(
            &format!("{name}/centered"),
            Op::Binary(BinaryOp::Sub),
            &[x, mean],
        )?;
        let sq = self.emit(
            &format!("{name}/square"),
            Op::Binary(BinaryOp::Mul),
            &[d, d],
        )?;
        let var = self.emit(&format!("{name}/var"), mean_op, &[sq])?;
        let e = self.scalar_like(&format!("{name}/eps"), x, eps)?;
        let ve = self.emit(
            &format!("{name}/var_eps"),
            Op::Binary(BinaryOp::Add),
            &[var, e],
        )?;
        let sd = self.emit(&format!("{name}/std"), Op::Unary(UnaryOp::Sqrt), &[ve])?;
        let inv = self.emit(
            &format!("{name}/inv_std"),
            Op::Unary(UnaryOp::Reciprocal),
            &[sd],
        )?;
        Ok((mean, inv))
    }

    fn softmax(&mut self, c: &Ctx, name: &str) -> R<Value> {
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

    fn reduce(&mut self, c: &Ctx, name: &str) -> R<Value> {
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
            Some(Pre::Square) => self.emit(
                &format!("{name}/square"),
                Op::Binary(BinaryOp::Mul),
                &[x, x],
            )?,
            Some(Pre::Abs) => self.emit(&format!("{name}/abs"), Op::Unary(UnaryOp::Abs), &[x])?,
            Some(Pre::Exp) => self.emit(&format!("{name}/exp"), Op::Unary(UnaryOp::Exp), &[x])?,
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

    fn tile(&mut self, c: &Ctx, name: &str) -> R<Value> {
        let x = c.req(0)?;
        let s = self.shape(x);
        let reps = self.const_ints(c, 1, "repeats")?;
        if reps.len() != s.len() || reps.iter().any(|&r| r < 0) {
            return Err(format!(
                "repeats {reps:?} must have {} non-negative values",
                s.len()
            ));
        }
        // [a, b] tiled by [r, s] = reshape(broadcast([1, a, 1, b] → [r, a, s, b]), [r*a, s*b]).
        let mut inter = Vec::new();
        let mut big = Vec::new();
        let mut out = Vec::new();
        for (d, &r) in s.iter().zip(&reps) {
            inter.extend([1, *d]);
            big.extend([r as usize, *d]);
            out.push(r as usize * d);
        }
        let v = self.emit(&format!("{name}/interleave"), Op::Reshape(inter), &[x])?;
        let v = self.emit(&format!("{name}/repeat"), Op::Broadcast(big), &[v])?;
        self.emit(name, Op::Reshape(out), &[v])
    }

    fn split(&mut self, c: &Ctx) -> R<Vec<Value>> {
        let x = c.req(0)?;
        let s = self.shape(x);
        let axis = normalize_axis(c.attrs.int_or("axis", 0)?, s.len())?;
        let n_out = c.node.output.len();
        let sizes: Vec<usize> = if let Some(v) = c.attrs.ints("split")? {
            v.iter().map(|&d| d.max(0) as usize).collect()
        } else if c.input(1).is_some() {
            self.const_ints(c, 1, "split")?
                .iter()
                .map(|&d| d.max(0) as usize)
                .collect()
        } else {
            let parts = c
                .attrs
                .int("num_outputs")?
                .map(|n| n as usize)
                .unwrap_or(n_out);
            if parts == 0 {
                return Err("split into 0 parts".into());
            }
            let chunk = s[axis].div_ceil(parts);
            (0..parts)
                .map(|i| chunk.min(s[axis].saturating_sub(i * chunk)))
                .collect()
        };
        if sizes.len() != n_out || sizes.iter().sum::<usize>() != s[axis] {
            return Err(format!(
                "split sizes {sizes:?} do not cover dim {axis} of {} in {n_out} outputs",
                fmt_shape(&s)
            ));
        }
        let mut outs = Vec::new();
        let mut start = 0;
        for (k, &len) in sizes.iter().enumerate() {
            let mut starts = vec![0; s.len()];
            let mut lens = s.clone();
            starts[axis] = start;
            lens[axis] = len;
            let op = Op::Slice {
                starts,
                steps: vec![1; s.len()],
                lens,
            };
            let out_name = c.node.output[k].clone();
            let n = if out_name.is_empty() {
                format!("{}/split{k}", c.out())
            } else {
                out_name
            };
            outs.push(self.emit(&n, op, &[x])?);
            start += len;
        }
        Ok(outs)
    }

    fn slice(&mut self, c: &Ctx, name: &str) -> R<Value> {
        let x = c.req(0)?;
        let s = self.shape(x);
        let r = s.len();
        let (starts, ends, axes, steps) = if self.opset < 10 {
            let starts = c.attrs.ints("starts")?.ok_or("missing 'starts'")?;
            let ends = c.attrs.ints("ends")?.ok_or("missing 'ends'")?;
            let axes = c.attrs.ints("axes")?;
            (starts, ends, axes, None)
        } else {
            let starts = self.const_ints(c, 1, "starts")?;
            let ends = self.const_ints(c, 2, "ends")?;
            let axes = match c.input(3) {
                Some(_) => Some(self.const_ints(c, 3, "axes")?),
                None => None,
            };
            let steps = match c.input(4) {
                Some(_) => Some(self.const_ints(c, 4, "steps")?),
                None => None,
            };
            (starts, ends, axes, steps)
        };
        let axes = match axes {
            Some(a) => norm_axes_ordered(&a, r)?,
            None => (0..starts.len()).collect(),
        };
        let steps = steps.unwrap_or(vec![1; starts.len()]);
        if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
            return Err("starts, ends, axes and steps must have the same length".into());
        }
        let mut st = vec![0usize; r];
        let mut sp = vec![1i64; r];
        let mut lens = s.clone();
        for k in 0..starts.len() {
            let d = axes[k];
            let n = s[d] as i64;
            let step = steps[k];
            if step == 0 {
                return Err("slice step 0".into());
            }
            let clampv = |v: i64, lo: i64, hi: i64| v.clamp(lo, hi);
            let adj = |v: i64| if v < 0 { v.saturating_add(n) } else { v };
            let (b, e) = if step > 0 {
                (clampv(adj(starts[k]), 0, n), clampv(adj(ends[k]), 0, n))
            } else {
                (
                    clampv(adj(starts[k]), -1, n - 1),
                    clampv(adj(ends[k]), -1, n - 1),
                )
            };
            let len = if step > 0 {
                if e > b {
                    (e - b + step - 1) / step
                } else {
                    0
                }
            } else if b > e {
                (b - e + (-step) - 1) / (-step)
            } else {
                0
            };
            st[d] = if len > 0 { b as usize } else { 0 };
            sp[d] = step;
            lens[d] = len as usize;
        }
        let op = Op::Slice {
            starts: st,
            steps: sp,
            lens,
        };
        self.emit(name, op, &[x])
    }

    fn pad(&mut self, c: &Ctx, name: &str) -> R<Value> {
        let x = c.req(0)?;
        let r = self.ty(x).rank();
        let (raw, value) = if self.opset < 11 {
            let p = c.attrs.ints("pads")?.ok_or("missing 'pads'")?;
            (p, c.attrs.float_or("value", 0.0)?)
        } else {
            let p = self.const_ints(c, 1, "pads")?;
            let v = self.const_scalar(c, 2, "constant_value")?.unwrap_or(0.0);
            (p, v)
        };
        let axes = match c.input(3) {
            Some(_) => norm_axes_ordered(&self.const_ints(c, 3, "axes")?, r)?,
            None => (0..r).collect(),
        };
        if raw.len() != 2 * axes.len() {
            return Err(format!(
                "pads has {} values, expected {}",
                raw.len(),
                2 * axes.len()
            ));
        }
        let mut pads = vec![(0i64, 0i64); r];
        for (k, &d) in axes.iter().enumerate() {
            pads[d] = (raw[k], raw[k + axes.len()]);
        }
        let mode = match c.attrs.string_or("mode", "constant")?.as_str() {
            "constant" => PadMode::Constant(F64(value)),
            "reflect" => PadMode::Reflect,
            "edge" => PadMode::Edge,
            "wrap" => PadMode::Wrap,
            m => return Err(format!("unknown pad mode '{m}'")),
        };
        self.emit(name, Op::Pad { pads, mode }, &[x])
    }

    fn range(&mut self, c: &Ctx, name: &str) -> R<Value> {
        let mut vals = Vec::new();
        for (i, what) in ["start", "limit", "delta"].iter().enumerate() {
            let v = c.req(i)?;
            let t = self.constant(v).ok_or_else(|| {
                format!(
                    "input '{}' ({what}) is computed from tensor data at run time, so the output shape depends on data, which would force a host sync; smelt compiles static shapes only",
                    c.input_name(i)
                )
            })?;
            vals.push(t);
        }
        let dtype = vals[0].dtype();
        let out = if dtype.is_float() {
            let (s, l, d) = (
                vals[0].to_f64()[0],
                vals[1].to_f64()[0],
                vals[2].to_f64()[0],
            );
            if d == 0.0 {
                return Err("delta is 0".into());
            }
            let n = ((l - s) / d).ceil().max(0.0) as usize;
            let v: Vec<f64> = (0..n).map(|i| s + i as f64 * d).collect();
            Tensor::from_f64(dtype, [n], &v)
        } else {
            let (s, l, d) = (
                vals[0].to_i64()[0],
                vals[1].to_i64()[0],
                vals[2].to_i64()[0],
            );
            if d == 0 {
                return Err("delta is 0".into());
            }
            let n = ((l - s) as f64 / d as f64).ceil().max(0.0) as usize;
            let v: Vec<i64> = (0..n as i64).map(|i| s + i * d).collect();
            Tensor::from_i64(dtype, [n], &v)
        };
        self.konst(name, out)
    }
}

/// Elementwise step before a composite reduction (L1, L2, SumSquare, LogSumExp).
enum Pre {
    Abs,
    Square,
    Exp,
}

fn show(tys: &[crate::ir::TensorType]) -> String {
    let v: Vec<String> = tys.iter().map(|t| t.to_string()).collect();
    v.join(", ")
}

fn unary_op(op: &str, a: &Attrs) -> R<Option<UnaryOp>> {
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

fn binary_op(op: &str, a: &Attrs) -> R<Option<BinaryOp>> {
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

/// Normalizes axes (negative from the end), sorted and distinct.
fn norm_axes(a: &[i64], rank: usize) -> R<Vec<usize>> {
    let mut v = norm_axes_ordered(a, rank)?;
    v.sort_unstable();
    let n = v.len();
    v.dedup();
    if v.len() != n {
        return Err(format!("axes {a:?} repeat an axis"));
    }
    Ok(v)
}

/// Normalizes axes, keeping their order.
fn norm_axes_ordered(a: &[i64], rank: usize) -> R<Vec<usize>> {
    a.iter().map(|&x| normalize_axis(x, rank)).collect()
}

/// Resolves an ONNX Reshape spec (`0` copies a dim unless `allowzero`, `-1` infers one).
fn reshape_target(input: &[usize], spec: &[i64], allowzero: bool) -> R<Vec<usize>> {
    let total: usize = input.iter().product();
    let mut out = Vec::with_capacity(spec.len());
    let mut infer_at = None;
    for (i, &d) in spec.iter().enumerate() {
        match d {
            -1 if infer_at.is_none() => {
                infer_at = Some(i);
                out.push(1);
            }
            -1 => return Err(format!("shape {spec:?} has more than one -1")),
            0 if !allowzero => {
                out.push(*input.get(i).ok_or_else(|| {
                    format!("shape {spec:?} copies dim {i}, which the input lacks")
                })?)
            }
            d if d >= 0 => out.push(d as usize),
            d => return Err(format!("invalid dim {d} in shape {spec:?}")),
        }
    }
    if let Some(i) = infer_at {
        let known: usize = out.iter().product();
        if known == 0 || !total.is_multiple_of(known) {
            return Err(format!("cannot reshape {} to {spec:?}", fmt_shape(input)));
        }
        out[i] = total / known;
    }
    if out.iter().product::<usize>() != total {
        return Err(format!(
            "cannot reshape {} ({total} elements) to {spec:?}",
            fmt_shape(input)
        ));
    }
    Ok(out)
}

/// Keeps the graph inputs and the nodes some output needs; renumbers them in order.
pub fn prune(g: Graph) -> Graph {
    let mut live = vec![false; g.nodes.len()];
    for (_, id) in &g.outputs {
        live[*id] = true;
    }
    for &i in &g.inputs {
        live[i] = true;
    }
    for id in (0..g.nodes.len()).rev() {
        if live[id] {
            for &i in &g.nodes[id].inputs {
                live[i] = true;
            }
        }
    }
    let mut remap = vec![usize::MAX; g.nodes.len()];
    let mut nodes = Vec::new();
    for (id, mut node) in g.nodes.into_iter().enumerate() {
        if live[id] {
            node.inputs = node.inputs.iter().map(|&i| remap[i]).collect();
            remap[id] = nodes.len();
            nodes.push(node);
        }
    }
    Graph {
        nodes,
        inputs: g.inputs.iter().map(|&i| remap[i]).collect(),
        outputs: g.outputs.into_iter().map(|(n, i)| (n, remap[i])).collect(),
    }
}
