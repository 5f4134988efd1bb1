//! The Rust API for building graphs.

use super::dtype::{DType, TensorType};
use super::graph::{Graph, Node, NodeId};
use super::infer::infer;
use super::op::{BinaryOp, Op, ReduceKind, UnaryOp, F64};
use super::tensor::Tensor;
use crate::error::{Error, Result};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// A handle to a tensor produced by a node of the graph being built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Value(pub NodeId);

/// Builds a [`Graph`] node by node, inferring and checking every type as it goes.
///
/// ```
/// use smelt_compiler::ir::{DType, GraphBuilder, Tensor};
/// let mut g = GraphBuilder::new();
/// let x = g.input("x", DType::F32, &[2, 3])?;
/// let w = g.constant(Tensor::f32([3, 4], vec![0.5; 12]));
/// let h = g.matmul(x, w)?;
/// let y = g.gelu(h)?;
/// g.output("y", y)?;
/// let graph = g.build()?;
/// assert_eq!(graph.nodes[graph.outputs[0].1].ty.shape, vec![2, 4]);
/// # Ok::<(), smelt_compiler::Error>(())
/// ```
#[derive(Debug, Default)]
pub struct GraphBuilder {
    graph: Graph,
    names: HashSet<String>,
    counters: HashMap<String, usize>,
}

impl GraphBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Type of a built value.
    pub fn ty(&self, v: Value) -> &TensorType {
        &self.graph.nodes[v.0].ty
    }

    /// The node behind a value.
    pub fn node(&self, v: Value) -> &Node {
        &self.graph.nodes[v.0]
    }

    /// The constant behind a value, if it is one.
    pub fn constant_value(&self, v: Value) -> Option<&Arc<Tensor>> {
        match &self.graph.nodes[v.0].op {
            Op::Constant(t) => Some(t),
            _ => None,
        }
    }

    /// The graph built so far (not yet validated).
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    fn fresh_name(&mut self, base: &str) -> String {
        loop {
            let n = self.counters.entry(base.to_string()).or_insert(0);
            let name = format!("{base}_{n}");
            *n += 1;
            if !self.names.contains(&name) {
                return name;
            }
        }
    }

    /// Declares a graph input.
    pub fn input(&mut self, name: &str, dtype: DType, shape: &[usize]) -> Result<Value> {
        super::infer::checked_numel(shape)
            .map_err(|e| Error::Invalid(vec![format!("input '{name}': {e}")]))?;
        if !self.names.insert(name.to_string()) {
            return Err(Error::Invalid(vec![format!(
                "input name '{name}' is already used"
            )]));
        }
        let id = self.graph.nodes.len();
        self.graph.nodes.push(Node {
            name: name.to_string(),
            op: Op::Input,
            inputs: vec![],
            ty: TensorType::new(dtype, shape.to_vec()),
        });
        self.graph.inputs.push(id);
        Ok(Value(id))
    }

    /// Adds a constant.
    pub fn constant(&mut self, t: Tensor) -> Value {
        self.add_unchecked(None, Op::Constant(Arc::new(t)), &[])
    }

    /// A scalar constant of the given dtype.
    pub fn scalar(&mut self, dtype: DType, v: f64) -> Value {
        self.constant(Tensor::scalar(dtype, v))
    }

    fn add_unchecked(&mut self, name: Option<&str>, op: Op, inputs: &[Value]) -> Value {
        let tys: Vec<TensorType> = inputs.iter().map(|v| self.ty(*v).clone()).collect();
        let ty = infer(&op, &tys).expect("add_unchecked is only used for ops that cannot fail");
        self.push(name, op, inputs, ty)
    }

    fn push(&mut self, name: Option<&str>, op: Op, inputs: &[Value], ty: TensorType) -> Value {
        let name = match name {
            Some(n) if !self.names.contains(n) => n.to_string(),
            Some(n) => self.fresh_name(n),
            None => self.fresh_name(&op.name()),
        };
        self.names.insert(name.clone());
        let id = self.graph.nodes.len();
        self.graph.nodes.push(Node {
            name,
            op,
            inputs: inputs.iter().map(|v| v.0).collect(),
            ty,
        });
        Value(id)
    }

    /// Adds any op, naming the node `name` (made unique if taken). Errors name the node, the
    /// op and the input shapes.
    pub fn add_named(&mut self, name: &str, op: Op, inputs: &[Value]) -> Result<Value> {
        self.add_op(Some(name), op, inputs)
    }

    /// Adds any op with a generated name.
    pub fn op(&mut self, op: Op, inputs: &[Value]) -> Result<Value> {
        self.add_op(None, op, inputs)
    }

    fn add_op(&mut self, name: Option<&str>, op: Op, inputs: &[Value]) -> Result<Value> {
        if let Some(bad) = inputs.iter().find(|v| v.0 >= self.graph.nodes.len()) {
            return Err(Error::Invalid(vec![format!(
                "value #{} does not exist",
                bad.0
            )]));
        }
        let tys: Vec<TensorType> = inputs.iter().map(|v| self.ty(*v).clone()).collect();
        match infer(&op, &tys) {
            Ok(ty) => Ok(self.push(name, op, inputs, ty)),
            Err(message) => {
                let shown: Vec<String> = tys.iter().map(|t| t.to_string()).collect();
                Err(Error::Node {
                    node: name.map(str::to_string).unwrap_or_else(|| op.name()),
                    op: op.name(),
                    message: format!("{message} (inputs: {})", shown.join(", ")),
                })
            }
        }
    }

    /// Marks a value as a named graph output.
    pub fn output(&mut self, name: &str, v: Value) -> Result<()> {
        if self.graph.outputs.iter().any(|(n, _)| n == name) {
            return Err(Error::Invalid(vec![format!(
                "output '{name}' is listed twice"
            )]));
        }
        self.graph.outputs.push((name.to_string(), v.0));
        Ok(())
    }

    /// Finishes and validates the graph.
    pub fn build(self) -> Result<Graph> {
        self.graph.validate()?;
        Ok(self.graph)
    }

    /// Applies a unary op.
    pub fn unary(&mut self, u: UnaryOp, x: Value) -> Result<Value> {
        self.op(Op::Unary(u), &[x])
    }

    /// Applies a broadcasting binary op.
    pub fn binary(&mut self, b: BinaryOp, x: Value, y: Value) -> Result<Value> {
        self.op(Op::Binary(b), &[x, y])
    }

    /// `x + y`.
    pub fn add(&mut self, x: Value, y: Value) -> Result<Value> {
        self.binary(BinaryOp::Add, x, y)
    }
    /// `x - y`.
    pub fn sub(&mut self, x: Value, y: Value) -> Result<Value> {
        self.binary(BinaryOp::Sub, x, y)
    }
    /// `x * y`.
    pub fn mul(&mut self, x: Value, y: Value) -> Result<Value> {
        self.binary(BinaryOp::Mul, x, y)
    }
    /// `x / y`.
    pub fn div(&mut self, x: Value, y: Value) -> Result<Value> {
        self.binary(BinaryOp::Div, x, y)
    }
    /// `x ^ y`.
    pub fn pow(&mut self, x: Value, y: Value) -> Result<Value> {
        self.binary(BinaryOp::Pow, x, y)
    }
    /// Elementwise maximum.
    pub fn max(&mut self, x: Value, y: Value) -> Result<Value> {
        self.binary(BinaryOp::Max, x, y)
    }
    /// Elementwise minimum.
    pub fn min(&mut self, x: Value, y: Value) -> Result<Value> {
        self.binary(BinaryOp::Min, x, y)
    }
    /// `max(x, 0)`.
    pub fn relu(&mut self, x: Value) -> Result<Value> {
        self.unary(UnaryOp::Relu, x)
    }
    /// Exact (erf) GELU.
    pub fn gelu(&mut self, x: Value) -> Result<Value> {
        self.unary(UnaryOp::Gelu, x)
    }
    /// `e^x`.
    pub fn exp(&mut self, x: Value) -> Result<Value> {
        self.unary(UnaryOp::Exp, x)
    }
    /// `tanh x`.
    pub fn tanh(&mut self, x: Value) -> Result<Value> {
        self.unary(UnaryOp::Tanh, x)
    }
    /// `sqrt x`.
    pub fn sqrt(&mut self, x: Value) -> Result<Value> {
        self.unary(UnaryOp::Sqrt, x)
    }
    /// `-x`.
    pub fn neg(&mut self, x: Value) -> Result<Value> {
        self.unary(UnaryOp::Neg, x)
    }
    /// `1 / (1 + e^-x)`.
    pub fn sigmoid(&mut self, x: Value) -> Result<Value> {
        self.unary(UnaryOp::Sigmoid, x)
    }
    /// Numpy-style matrix product.
    pub fn matmul(&mut self, a: Value, b: Value) -> Result<Value> {
        self.op(Op::MatMul, &[a, b])
    }
    /// Converts to another dtype.
    pub fn cast(&mut self, x: Value, to: DType) -> Result<Value> {
        self.op(Op::Cast(to), &[x])
    }
    /// `cond ? a : b`, broadcast.
    pub fn where_(&mut self, cond: Value, a: Value, b: Value) -> Result<Value> {
        self.op(Op::Where, &[cond, a, b])
    }

    fn axis(&self, x: Value, axis: i64) -> Result<usize> {
        normalize_axis(axis, self.ty(x).rank()).map_err(|message| Error::Node {
            node: "axis".into(),
            op: "axis".into(),
            message,
        })
    }

    /// Softmax along `axis` (negative counts from the end).
    pub fn softmax(&mut self, x: Value, axis: i64) -> Result<Value> {
        let axis = self.axis(x, axis)?;
        self.op(Op::Softmax { axis }, &[x])
    }

    /// Log of the softmax along `axis` (negative counts from the end).
    pub fn log_softmax(&mut self, x: Value, axis: i64) -> Result<Value> {
        let axis = self.axis(x, axis)?;
        self.op(Op::LogSoftmax { axis }, &[x])
    }

    /// Layer normalization over the dims from `axis` on, with scale and optional bias.
    pub fn layer_norm(
        &mut self,
        x: Value,
        scale: Value,
        bias: Option<Value>,
        axis: i64,
        epsilon: f64,
    ) -> Result<Value> {
        let axis = self.axis(x, axis)?;
        let mut ins = vec![x, scale];
        ins.extend(bias);
        self.op(
            Op::LayerNorm {
                axis,
                epsilon: F64(epsilon),
            },
            &ins,
        )
    }

    /// Reduction over `axes` (negative count from the end).
    pub fn reduce(
        &mut self,
        kind: ReduceKind,
        x: Value,
        axes: &[i64],
        keepdims: bool,
    ) -> Result<Value> {
        let mut ax = axes
            .iter()
            .map(|&a| self.axis(x, a))
            .collect::<Result<Vec<_>>>()?;
        ax.sort_unstable();
        ax.dedup();
        self.op(
            Op::Reduce {
                kind,
                axes: ax,
                keepdims,
            },
            &[x],
        )
    }

    /// Views `x` with another shape of the same size.
    pub fn reshape(&mut self, x: Value, shape: &[usize]) -> Result<Value> {
        self.op(Op::Reshape(shape.to_vec()), &[x])
    }

    /// Permutes dims.
    pub fn transpose(&mut self, x: Value, perm: &[usize]) -> Result<Value> {
        self.op(Op::Transpose(perm.to_vec()), &[x])
    }

    /// Joins along `axis`.
    pub fn concat(&mut self, xs: &[Value], axis: i64) -> Result<Value> {
        let first = *xs.first().ok_or_else(|| Error::Node {
            node: "concat".into(),
            op: "concat".into(),
            message: "needs at least one input".into(),
        })?;
        let axis = self.axis(first, axis)?;
        self.op(Op::Concat { axis }, xs)
    }
}

/// Maps a possibly negative axis into `0..rank`.
pub fn normalize_axis(axis: i64, rank: usize) -> std::result::Result<usize, String> {
    let r = rank as i64;
    if axis < -r || axis >= r {
        return Err(format!("axis {axis} out of range for rank {rank}"));
    }
    Ok(if axis < 0 { axis + r } else { axis } as usize)
}
