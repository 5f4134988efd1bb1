//! The graph: nodes in topological order, each producing one typed tensor.

use super::dtype::TensorType;
use super::infer::infer;
use super::op::Op;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt;

/// Index of a node in [`Graph::nodes`]; also names the tensor the node produces.
pub type NodeId = usize;

/// One operation and the tensor it produces.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Node {
    /// Unique name (for inputs: the input name).
    pub name: String,
    /// What it computes.
    pub op: Op,
    /// Producers of its inputs, all earlier in the graph.
    pub inputs: Vec<NodeId>,
    /// Type of the produced tensor.
    pub ty: TensorType,
}

/// A typed tensor graph with static shapes. Nodes are kept in topological order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Graph {
    /// All nodes, producers before consumers.
    pub nodes: Vec<Node>,
    /// Graph inputs (nodes whose op is [`Op::Input`]), in declaration order.
    pub inputs: Vec<NodeId>,
    /// Named graph outputs.
    pub outputs: Vec<(String, NodeId)>,
}

impl Graph {
    /// Seeded random inputs ([`Tensor::random`]): input k drawn with seed `seed·1000 + k`.
    pub fn random_inputs(&self, seed: u64) -> std::collections::HashMap<String, super::Tensor> {
        self.inputs
            .iter()
            .enumerate()
            .map(|(k, &i)| {
                let n = &self.nodes[i];
                let t = super::Tensor::random(n.ty.dtype, &n.ty.shape, seed * 1000 + k as u64);
                (n.name.clone(), t)
            })
            .collect()
    }

    /// The indices of a Gather, GatherElements, GatherND or ScatterND node against the dims
    /// they address, where they are known now: constant indices must each be in range (a
    /// run-time index is checked by the kernel that reads it), and run-time indices must
    /// not address a dim of size 0 (none could be in range).
    fn index_bounds(&self, node: &Node) -> std::result::Result<(), String> {
        let (batch, axes): (usize, Option<usize>) = match &node.op {
            Op::Gather { axis } | Op::GatherElements { axis } => (0, Some(*axis)),
            Op::GatherND { batch_dims } => (*batch_dims, None),
            Op::ScatterND { .. } => (0, None),
            _ => return Ok(()),
        };
        let (data, ind) = (&self.nodes[node.inputs[0]], &self.nodes[node.inputs[1]]);
        let dims = &data.ty.shape;
        // The data dim each index element addresses: one axis, or the position in an ND row.
        let m = ind.ty.shape.last().copied().unwrap_or(0);
        let dim_of = |k: usize| match axes {
            Some(a) => a,
            None => batch + k % m.max(1),
        };
        let Op::Constant(t) = &ind.op else {
            let empty = match axes {
                Some(a) => dims[a] == 0,
                None => dims[batch..batch + m].contains(&0),
            };
            if empty && ind.ty.numel() > 0 && node.ty.numel() > 0 {
                return Err("indexes a dim of size 0".into());
            }
            return Ok(());
        };
        for (k, &v) in t.to_i64().iter().enumerate() {
            let (d, n) = (dim_of(k), dims[dim_of(k)] as i64);
            if v < -n || v >= n {
                return Err(crate::kernel::ir::out_of_range(v, d, n as usize));
            }
        }
        Ok(())
    }

    /// Checks every invariant and reports every problem found, each naming its node, op and
    /// shapes: inputs defined before use, types that agree with shape inference, unique names,
    /// inputs listed exactly once, outputs that exist, constant indices in range.
    pub fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        let mut names = HashSet::new();
        for (id, node) in self.nodes.iter().enumerate() {
            let at = format!("node '{}' ({})", node.name, node.op.name());
            if !names.insert(node.name.as_str()) {
                problems.push(format!("{at}: duplicate name"));
            }
            if let Some(&bad) = node.inputs.iter().find(|&&i| i >= id) {
                problems.push(format!("{at}: input #{bad} is not defined before the node"));
                continue;
            }
            match &node.op {
                Op::Input => {
                    if !node.inputs.is_empty() {
                        problems.push(format!("{at}: an input node takes no inputs"));
                    }
                    if !self.inputs.contains(&id) {
                        problems.push(format!("{at}: not listed in graph inputs"));
                    }
                }
                op => {
                    let tys: Vec<TensorType> = node
                        .inputs
                        .iter()
                        .map(|&i| self.nodes[i].ty.clone())
                        .collect();
                    match infer(op, &tys) {
                        Ok(ty) if ty == node.ty => {
                            if let Err(e) = self.index_bounds(node) {
                                problems.push(format!("{at}: {e}"));
                            }
                        }
                        Ok(ty) => problems.push(format!(
                            "{at}: declared type {} but inputs give {ty}",
                            node.ty
                        )),
                        Err(e) => {
                            let shown: Vec<String> = tys.iter().map(|t| t.to_string()).collect();
                            problems.push(format!("{at}: {e} (inputs: {})", shown.join(", ")))
                        }
                    }
                }
            }
        }
        for &i in &self.inputs {
            if !matches!(self.nodes.get(i).map(|n| &n.op), Some(Op::Input)) {
                problems.push(format!("graph input #{i} is not an input node"));
            }
        }
        let mut out_names = HashSet::new();
        for (name, id) in &self.outputs {
            if *id >= self.nodes.len() {
                problems.push(format!("output '{name}' refers to missing node #{id}"));
            }
            if !out_names.insert(name) {
                problems.push(format!("output '{name}' is listed twice"));
            }
        }
        if self.outputs.is_empty() {
            problems.push("graph has no outputs".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(problems))
        }
    }

    /// The node named `name`.
    pub fn find(&self, name: &str) -> Option<NodeId> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Node `id` read as a strided view of an input of the graph: that input, the element
    /// offset of `id`'s first element in it and the element strides of `id`'s dims (a
    /// transpose permutes them, a slice moves the offset and scales them, a reshape regroups
    /// them when the dims it merges are laid out one inside the other). `None` for a
    /// computed value, or for a reshape that merges dims a transpose or slice separated.
    pub fn strided_view(&self, id: NodeId) -> Option<(NodeId, i64, Vec<i64>)> {
        let n = &self.nodes[id];
        match &n.op {
            Op::Input => Some((id, 0, dense_strides(&n.ty.shape))),
            Op::Transpose(perm) => {
                let (input, off, st) = self.strided_view(n.inputs[0])?;
                Some((input, off, perm.iter().map(|&p| st[p]).collect()))
            }
            Op::Slice { starts, steps, .. } => {
                let (input, mut off, mut st) = self.strided_view(n.inputs[0])?;
                for (d, s) in st.iter_mut().enumerate() {
                    off = off.checked_add(i64::try_from(starts[d]).ok()?.checked_mul(*s)?)?;
                    // A dim of one element is never stepped (its step may be anything).
                    *s = if n.ty.shape[d] <= 1 {
                        *s
                    } else {
                        s.checked_mul(steps[d])?
                    };
                }
                Some((input, off, st))
            }
            Op::Reshape(_) => {
                let x = &self.nodes[n.inputs[0]].ty.shape;
                let (input, off, st) = self.strided_view(n.inputs[0])?;
                let st = regroup_strides(x, &st, &n.ty.shape)?;
                Some((input, off, st))
            }
            _ => None,
        }
    }
}

/// Element strides of a dense row-major layout of `shape`.
pub(crate) fn dense_strides(shape: &[usize]) -> Vec<i64> {
    crate::interp::strides(shape)
        .iter()
        .map(|&s| s as i64)
        .collect()
}

/// The strides of shape `to` reading the same elements, in the same order, as shape
/// `from` with strides `st`, if one set of strides can: every group of `from` dims that
/// `to` merges or splits must be laid out one inside the other. Size-1 dims get the stride
/// a dense layout would give them (they are never stepped), so a dense `from` gives dense
/// strides.
fn regroup_strides(from: &[usize], st: &[i64], to: &[usize]) -> Option<Vec<i64>> {
    if from.contains(&0) {
        return Some(dense_strides(to));
    }
    // Dims of size > 1, with their strides.
    let xs: Vec<(usize, i64)> = from
        .iter()
        .zip(st)
        .filter(|(&n, _)| n > 1)
        .map(|(&n, &s)| (n, s))
        .collect();
    let ys: Vec<usize> = (0..to.len()).filter(|&j| to[j] > 1).collect();
    let mut out: Vec<Option<i64>> = vec![None; to.len()];
    let (mut i, mut j) = (0, 0);
    while i < xs.len() && j < ys.len() {
        // The smallest run of dims on each side with equal products.
        let (mut i2, mut j2) = (i + 1, j + 1);
        let (mut px, mut py) = (xs[i].0, to[ys[j]]);
        while px != py {
            if px < py {
                px *= xs.get(i2)?.0;
                i2 += 1;
            } else {
                py *= to[*ys.get(j2)?];
                j2 += 1;
            }
        }
        // The merged `from` dims must nest: each one's stride its inner neighbour's span.
        if (i..i2 - 1).any(|k| xs[k].1 != xs[k + 1].1 * xs[k + 1].0 as i64) {
            return None;
        }
        let mut s = xs[i2 - 1].1;
        for &y in ys[j..j2].iter().rev() {
            out[y] = Some(s);
            s *= to[y] as i64;
        }
        (i, j) = (i2, j2);
    }
    if i != xs.len() || j != ys.len() {
        return None;
    }
    // Size-1 dims: never stepped; give them a dense-looking stride.
    let mut inner = 1i64;
    let mut st_out = vec![0i64; to.len()];
    for d in (0..to.len()).rev() {
        st_out[d] = out[d].unwrap_or(inner);
        inner = st_out[d] * to[d] as i64;
    }
    Some(st_out)
}

/// Compact, deterministic text form:
/// ```text
/// graph(%x: f32[2,3]) {
///   %h = relu(%x) : f32[2,3]
///   return %h as "y"
/// }
/// ```
impl fmt::Display for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ins: Vec<String> = self
            .inputs
            .iter()
            .map(|&i| format!("%{}: {}", self.nodes[i].name, self.nodes[i].ty))
            .collect();
        writeln!(f, "graph({}) {{", ins.join(", "))?;
        for node in &self.nodes {
            if node.op == Op::Input {
                continue;
            }
            let args: Vec<String> = node
                .inputs
                .iter()
                .map(|&i| format!("%{}", self.nodes[i].name))
                .collect();
            let attrs = node.op.attrs();
            let attrs = if attrs.is_empty() {
                String::new()
            } else {
                format!("[{attrs}]")
            };
            writeln!(
                f,
                "  %{} = {}{}({}) : {}",
                node.name,
                node.op.name(),
                attrs,
                args.join(", "),
                node.ty
            )?;
        }
        let outs: Vec<String> = self
            .outputs
            .iter()
            .map(|(name, id)| format!("%{} as {name:?}", self.nodes[*id].name))
            .collect();
        writeln!(f, "  return {}", outs.join(", "))?;
        write!(f, "}}")
    }
}

#[cfg(test)]
mod tests {
    use crate::ir::{DType, GraphBuilder, Op};

    fn slice(starts: &[usize], steps: &[i64], lens: &[usize]) -> Op {
        Op::Slice {
            starts: starts.to_vec(),
            steps: steps.to_vec(),
            lens: lens.to_vec(),
        }
    }

    #[test]
    fn strided_views_follow_slices_reshapes_and_transposes() {
        let mut b = GraphBuilder::new();
        let qkv = b.input("qkv", DType::F32, &[2, 8, 48]).unwrap();
        // k: the middle third, heads split and moved before the sequence.
        let k = b
            .op(slice(&[0, 0, 16], &[1, 1, 1], &[2, 8, 16]), &[qkv])
            .unwrap();
        let heads = b.reshape(k, &[2, 8, 2, 8]).unwrap();
        let kt = b.transpose(heads, &[0, 2, 1, 3]).unwrap();
        // Merging batch and sequence again: they still nest (stride 384 = 8 · 48).
        let rows = b.reshape(k, &[16, 1, 16]).unwrap();
        // Merging the two heads' halves of a slice: not one stride.
        let cols = b
            .op(slice(&[0, 0, 0], &[1, 1, 1], &[2, 8, 16]), &[qkv])
            .unwrap();
        let half = b.reshape(cols, &[2, 8, 2, 8]).unwrap();
        let swapped = b.transpose(half, &[0, 1, 3, 2]).unwrap();
        let bad = b.reshape(swapped, &[2, 8, 16]).unwrap();
        let merged = b.reshape(cols, &[2, 128]).unwrap();
        // A reversed slice walks backward from its start.
        let rev = b
            .op(slice(&[1, 7, 47], &[-1, -2, -3], &[2, 4, 16]), &[qkv])
            .unwrap();
        // Reversing the last two dims keeps them nested: flattened, one backward walk.
        let back = b
            .op(slice(&[0, 7, 47], &[1, -1, -1], &[2, 8, 48]), &[qkv])
            .unwrap();
        let flat = b.reshape(back, &[2, 384]).unwrap();
        // A one-element dim may have any step (it is never taken).
        let one = b
            .op(slice(&[0, 3, 0], &[1, 1 << 60, 1], &[2, 1, 48]), &[qkv])
            .unwrap();
        b.output("y", rev).unwrap();
        let g = b.build().unwrap();
        let input = g.inputs[0];
        let at = |v: crate::ir::Value| g.strided_view(v.0);
        assert_eq!(at(kt), Some((input, 16, vec![384, 8, 48, 1])));
        assert_eq!(at(heads), Some((input, 16, vec![384, 48, 8, 1])));
        assert_eq!(at(rows), Some((input, 16, vec![48, 16, 1])));
        assert_eq!(at(bad), None);
        assert_eq!(at(merged), None);
        assert_eq!(
            at(rev),
            Some((input, 384 + 7 * 48 + 47, vec![-384, -96, -3]))
        );
        assert_eq!(at(flat), Some((input, 7 * 48 + 47, vec![384, -1])));
        assert_eq!(at(one), Some((input, 3 * 48, vec![384, 48, 1])));
    }
}
