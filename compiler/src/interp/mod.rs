//! The reference interpreter: evaluates any valid graph on the CPU, one node at a time,
//! computing in f64 (integers in i64) and storing each result in its node's dtype.
//!
//! It is the oracle for every later stage, so it favours plain loops over speed.

mod layout;
pub(crate) mod math;
mod nn;

use crate::error::{Error, Result};
use crate::ir::{fmt_shape, Graph, Op, Tensor, TensorType};
use std::collections::HashMap;
use std::sync::Arc;

/// Runs `graph` on named inputs and returns its outputs in declaration order.
///
/// Every graph input must be given once, with its exact dtype and shape; extra names are errors.
pub fn run(graph: &Graph, inputs: &HashMap<String, Tensor>) -> Result<Vec<(String, Tensor)>> {
    check_inputs(graph, inputs)?;
    let mut values: Vec<Option<Arc<Tensor>>> = vec![None; graph.nodes.len()];
    let mut remaining_uses = vec![0usize; graph.nodes.len()];
    for node in &graph.nodes {
        for &i in &node.inputs {
            remaining_uses[i] += 1;
        }
    }
    for (_, id) in &graph.outputs {
        remaining_uses[*id] += 1;
    }
    for (id, node) in graph.nodes.iter().enumerate() {
        let value = match &node.op {
            Op::Input => Arc::new(inputs[&node.name].clone()),
            Op::Constant(t) => t.clone(),
            op => {
                let args: Vec<&Tensor> = node
                    .inputs
                    .iter()
                    .map(|&i| values[i].as_deref().expect("topological order"))
                    .collect();
                let out = eval(op, &args, &node.ty).map_err(|message| Error::Node {
                    node: node.name.clone(),
                    op: op.name(),
                    message,
                })?;
                Arc::new(out)
            }
        };
        values[id] = Some(value);
        for &i in &node.inputs {
            remaining_uses[i] -= 1;
            if remaining_uses[i] == 0 {
                values[i] = None;
            }
        }
    }
    Ok(graph
        .outputs
        .iter()
        .map(|(name, id)| {
            let t = values[*id]
                .as_deref()
                .expect("outputs are kept alive")
                .clone();
            (name.clone(), t)
        })
        .collect())
}

/// Checks that `inputs` names every graph input exactly, with the right dtype and shape.
pub fn check_inputs(graph: &Graph, inputs: &HashMap<String, Tensor>) -> Result<()> {
    let mut expected = Vec::new();
    for &i in &graph.inputs {
        let node = &graph.nodes[i];
        expected.push(node.name.as_str());
        let Some(t) = inputs.get(&node.name) else {
            return Err(Error::Input {
                name: node.name.clone(),
                message: format!("missing; expected {}", node.ty),
            });
        };
        if t.dtype() != node.ty.dtype {
            return Err(Error::Input {
                name: node.name.clone(),
                message: format!("expected dtype {}, got {}", node.ty.dtype, t.dtype()),
            });
        }
        if t.shape() != node.ty.shape.as_slice() {
            return Err(Error::Input {
                name: node.name.clone(),
                message: format!(
                    "expected shape {}, got {}",
                    fmt_shape(&node.ty.shape),
                    fmt_shape(t.shape())
                ),
            });
        }
    }
    let mut extra: Vec<&String> = inputs
        .keys()
        .filter(|k| !expected.contains(&k.as_str()))
        .collect();
    extra.sort();
    if let Some(name) = extra.first() {
        return Err(Error::Input {
            name: name.to_string(),
            message: format!(
                "not an input of the graph (inputs: {})",
                expected.join(", ")
            ),
        });
    }
    Ok(())
}

/// Evaluates one op on concrete inputs; `out` is the node's inferred type.
pub fn eval(op: &Op, x: &[&Tensor], out: &TensorType) -> std::result::Result<Tensor, String> {
    let t = match op {
        Op::Input => return Err("inputs are not evaluated".into()),
        Op::Constant(t) => (**t).clone(),
        Op::Unary(u) => math::unary(*u, x[0], out),
        Op::Binary(b) => math::binary(*b, x[0], x[1], out)?,
        Op::Where => math::select(x[0], x[1], x[2], out),
        Op::Cast(_) => math::cast(x[0], out.dtype),
        Op::MatMul => nn::matmul(x[0], x[1], out),
        Op::Conv(c) => nn::conv(c, x[0], x[1], x.get(2).copied(), out),
        Op::Pool(p) => nn::pool(p, x[0], out),
        Op::Softmax { axis } => nn::softmax(x[0], *axis, false),
        Op::LogSoftmax { axis } => nn::softmax(x[0], *axis, true),
        Op::LayerNorm { axis, epsilon } => {
            nn::layer_norm(x[0], x[1], x.get(2).copied(), *axis, epsilon.0)
        }
        Op::Reduce {
            kind,
            axes,
            keepdims,
        } => nn::reduce(*kind, x[0], axes, *keepdims, out),
        Op::ArgReduce {
            max,
            axis,
            select_last,
            ..
        } => nn::arg_reduce(x[0], *max, *axis, *select_last, out),
        Op::Reshape(s) => x[0]
            .clone()
            .reshaped(s.clone())
            .ok_or("reshape changes the element count")?,
        Op::Transpose(perm) => layout::transpose(x[0], perm),
        Op::Broadcast(s) => layout::broadcast(x[0], s),
        Op::Concat { axis } => layout::concat(x, *axis, out),
        Op::Slice { starts, steps, .. } => layout::slice(x[0], starts, steps, &out.shape),
        Op::Gather { axis } => layout::gather(x[0], x[1], *axis, out)?,
        Op::GatherElements { axis } => layout::gather_elements(x[0], x[1], *axis)?,
        Op::GatherND { batch_dims } => layout::gather_nd(x[0], x[1], *batch_dims, out)?,
        Op::ScatterND { reduction } => layout::scatter_nd(x[0], x[1], x[2], *reduction)?,
        Op::Pad { pads, mode } => layout::pad(x[0], pads, *mode, out),
        Op::Trilu { upper, k } => layout::trilu(x[0], *upper, *k),
        Op::CumSum {
            axis,
            exclusive,
            reverse,
        } => nn::cumsum(x[0], *axis, *exclusive, *reverse),
        Op::Fused(k) => {
            let feeds: HashMap<String, Tensor> = k
                .body
                .inputs
                .iter()
                .zip(x)
                .map(|(&i, t)| (k.body.nodes[i].name.clone(), (*t).clone()))
                .collect();
            let mut outs = run(&k.body, &feeds).map_err(|e| e.to_string())?;
            outs.pop().ok_or("fused kernel without output")?.1
        }
    };
    debug_assert_eq!(&t.ty(), out, "interpreter result type for {}", op.name());
    Ok(t)
}

/// Row-major strides of a shape.
pub(crate) fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

/// For each element of `out_shape`, the flat index of the element of `in_shape` that numpy
/// broadcasting reads.
pub(crate) fn broadcast_map(in_shape: &[usize], out_shape: &[usize]) -> Vec<usize> {
    let n: usize = out_shape.iter().product();
    let rank = out_shape.len();
    let off = rank - in_shape.len();
    let in_strides = strides(in_shape);
    let mut eff = vec![0usize; rank];
    for d in 0..in_shape.len() {
        eff[d + off] = if in_shape[d] == 1 { 0 } else { in_strides[d] };
    }
    let mut idx = vec![0usize; rank];
    let mut out = Vec::with_capacity(n);
    let mut flat = 0usize;
    for _ in 0..n {
        out.push(flat);
        for d in (0..rank).rev() {
            idx[d] += 1;
            flat += eff[d];
            if idx[d] < out_shape[d] {
                break;
            }
            flat -= eff[d] * idx[d];
            idx[d] = 0;
        }
    }
    out
}
