//! Translation of ONNX nodes into IR nodes: the importer's state and the dispatch by op
//! type; the translations themselves are grouped by topic in the submodules.

mod elementwise;
mod fused;
mod nn;
mod shape;

use elementwise::{binary_op, unary_op};
use shape::{norm_axes, norm_axes_ordered, reshape_target};

use super::attrs::Attrs;
use super::proto::NodeProto;
use super::tensor::{dtype_from_onnx, tensor_from_proto};
use crate::error::Result;
use crate::interp;
use crate::ir::{
    broadcast_shapes, fmt_shape, infer, normalize_axis, BinaryOp, DType, Graph, GraphBuilder, Op,
    ReduceKind, ScatterReduction, Tensor, Value, F64,
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
    "Attention",
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
    "GatherND",
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
    "NonZero",
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
    "RMSNormalization",
    "RotaryEmbedding",
    "Round",
    "ScatterND",
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

    /// Adds a decoded initializer under its name.
    pub fn add_constant(&mut self, name: &str, tensor: crate::ir::Tensor) -> R<()> {
        let v = self
            .b
            .add_named(name, Op::Constant(Arc::new(tensor)), &[])
            .map_err(|e| e.to_string())?;
        self.env.insert(name.to_string(), v);
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

    /// A binary op node.
    fn bin(&mut self, name: &str, b: BinaryOp, x: Value, y: Value) -> R<Value> {
        self.emit(name, Op::Binary(b), &[x, y])
    }

    /// A unary op node.
    fn un(&mut self, name: &str, u: crate::ir::UnaryOp, x: Value) -> R<Value> {
        self.emit(name, Op::Unary(u), &[x])
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

    /// One integer that must be known at import (a single-element integer tensor).
    fn const_int(&self, c: &Ctx, i: usize, what: &str) -> R<i64> {
        match self.const_ints(c, i, what)?.as_slice() {
            &[v] => Ok(v),
            v => Err(format!(
                "input '{}' ({what}) must hold one value, got {}",
                c.input_name(i),
                v.len()
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
                let to = c.attrs.int("to")?.ok_or("missing attribute 'to'")?;
                let code =
                    i32::try_from(to).map_err(|_| format!("unknown ONNX element type {to}"))?;
                let to = dtype_from_onnx(code)?;
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
                if spec.iter().any(|&d| d < 0) {
                    return Err(format!("negative dim in shape {spec:?}"));
                }
                let spec: Vec<usize> = spec.iter().map(|&d| d as usize).collect();
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
            "Attention" => return self.attention(c, &name),
            "RMSNormalization" => self.rms_normalization(c, &name)?,
            "RotaryEmbedding" => self.rotary_embedding(c, &name)?,
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
            "GatherND" => {
                let b = c.attrs.int_or("batch_dims", 0)?;
                let batch_dims =
                    usize::try_from(b).map_err(|_| format!("batch_dims {b} is negative"))?;
                self.emit(&name, Op::GatherND { batch_dims }, &[c.req(0)?, c.req(1)?])?
            }
            "ScatterND" => {
                let reduction = match c.attrs.string_or("reduction", "none")?.as_str() {
                    "none" => ScatterReduction::None,
                    "add" => ScatterReduction::Add,
                    "mul" => ScatterReduction::Mul,
                    "max" => ScatterReduction::Max,
                    "min" => ScatterReduction::Min,
                    other => return Err(format!("unknown reduction '{other}'")),
                };
                let ins = [c.req(0)?, c.req(1)?, c.req(2)?];
                self.emit(&name, Op::ScatterND { reduction }, &ins)?
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
            "NonZero" => {
                let x = c.req(0)?;
                let Some(t) = self.constant(x) else {
                    return Err(format!(
                        "input '{}' is computed at run time, so the output shape depends on tensor data, which would force a host sync; smelt compiles static shapes only (NonZero of a constant folds)",
                        c.input_name(0)
                    ));
                };
                let s = t.shape().to_vec();
                if s.is_empty() {
                    return Err("NonZero of a scalar has no dims to index".into());
                }
                let strides = crate::interp::strides(&s);
                let hits: Vec<usize> = (t.to_f64().iter().enumerate())
                    .filter(|(_, v)| **v != 0.0)
                    .map(|(i, _)| i)
                    .collect();
                let mut coords = Vec::with_capacity(s.len() * hits.len());
                for (d, st) in strides.iter().enumerate() {
                    coords.extend(hits.iter().map(|&f| ((f / st) % s[d]) as i64));
                }
                self.konst(&name, Tensor::i64([s.len(), hits.len()], coords))?
            }
            "Trilu" => {
                let x = c.req(0)?;
                let s = self.shape(x);
                if s.len() < 2 {
                    return Err(format!("input {} needs rank >= 2", fmt_shape(&s)));
                }
                let k = match c.input(1) {
                    Some(_) => self.const_int(c, 1, "k")?,
                    None => 0,
                };
                // Every diagonal offset beyond the matrix keeps all or nothing: clamped, the
                // kernels' index arithmetic stays small whatever k the model gives.
                let (rows, cols) = (s[s.len() - 2] as i64, s[s.len() - 1] as i64);
                let k = k.clamp(-rows, cols);
                let upper = c.attrs.int_or("upper", 1)? != 0;
                self.emit(&name, Op::Trilu { upper, k }, &[x])?
            }
            "CumSum" => {
                let x = c.req(0)?;
                let a = self.const_int(c, 1, "axis")?;
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
}

fn show(tys: &[crate::ir::TensorType]) -> String {
    let v: Vec<String> = tys.iter().map(|t| t.to_string()).collect();
    v.join(", ")
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
