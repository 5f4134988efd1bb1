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
    /// Checks every invariant and reports every problem found, each naming its node, op and
    /// shapes: inputs defined before use, types that agree with shape inference, unique names,
    /// inputs listed exactly once, outputs that exist.
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
                        Ok(ty) if ty == node.ty => {}
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

    /// Node `id` read as a strided view of an input of the graph: that input and the
    /// element strides of `id`'s dims in it (a transpose permutes them; a reshape keeps the
    /// view only when its operand is dense). `None` for a computed value, or for a reshape of
    /// a transposed, non-contiguous view.
    pub fn strided_view(&self, id: NodeId) -> Option<(NodeId, Vec<usize>)> {
        let n = &self.nodes[id];
        let dense = crate::interp::strides;
        match &n.op {
            Op::Input => Some((id, dense(&n.ty.shape))),
            Op::Transpose(perm) => {
                let (input, st) = self.strided_view(n.inputs[0])?;
                Some((input, perm.iter().map(|&p| st[p]).collect()))
            }
            Op::Reshape(_) => {
                let x = &self.nodes[n.inputs[0]].ty.shape;
                let (input, st) = self.strided_view(n.inputs[0])?;
                let want = dense(x);
                let packed = (0..st.len()).all(|i| x[i] == 1 || st[i] == want[i]);
                packed.then(|| (input, dense(&n.ty.shape)))
            }
            _ => None,
        }
    }
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
