//! Reduced-precision storage (`--dtype f16|bf16`): every f32 tensor of a graph stored as f16
//! or bf16, while kernels keep computing in f32 (they load, widen, compute, and round once
//! on store). The graph's interface does not change: f32 inputs are converted on entry and
//! outputs back to f32 on exit, so callers feed and read what the model declares.

use super::{infer, DType, Graph, Node, Op, Tensor, TensorType};
use crate::error::{Error, Result};

/// `g` with f32 storage replaced by `dtype` (f16 or bf16; f32 returns `g` unchanged).
pub fn with_storage(g: &Graph, dtype: DType) -> Result<Graph> {
    match dtype {
        DType::F32 => return Ok(g.clone()),
        DType::F16 | DType::BF16 => {}
        other => {
            return Err(Error::Invalid(vec![format!(
                "storage dtype {other}: expected f32, f16 or bf16"
            )]))
        }
    }
    let mut out = Graph::default();
    let mut map = vec![usize::MAX; g.nodes.len()];
    let push = |out: &mut Graph, n: Node| {
        out.nodes.push(n);
        out.nodes.len() - 1
    };
    for (id, n) in g.nodes.iter().enumerate() {
        let f32 = n.ty.dtype == DType::F32;
        map[id] = match &n.op {
            Op::Input => {
                let input = push(&mut out, n.clone());
                out.inputs.push(input);
                if f32 {
                    push(
                        &mut out,
                        Node {
                            name: format!("{}.{dtype}", n.name),
                            op: Op::Cast(dtype),
                            inputs: vec![input],
                            ty: TensorType::new(dtype, n.ty.shape.clone()),
                        },
                    )
                } else {
                    input
                }
            }
            Op::Constant(t) if f32 => {
                let t = Tensor::from_f64(dtype, t.shape().to_vec(), &t.to_f64());
                push(
                    &mut out,
                    Node {
                        name: n.name.clone(),
                        ty: t.ty(),
                        op: Op::Constant(std::sync::Arc::new(t)),
                        inputs: vec![],
                    },
                )
            }
            op => {
                let op = match op {
                    Op::Cast(DType::F32) => Op::Cast(dtype),
                    op => op.clone(),
                };
                let inputs: Vec<usize> = n.inputs.iter().map(|&a| map[a]).collect();
                let tys: Vec<TensorType> =
                    inputs.iter().map(|&a| out.nodes[a].ty.clone()).collect();
                let ty = infer(&op, &tys).map_err(|e| Error::Node {
                    node: n.name.clone(),
                    op: n.op.name(),
                    message: format!("in {dtype} storage: {e}"),
                })?;
                push(
                    &mut out,
                    Node {
                        name: n.name.clone(),
                        op,
                        inputs,
                        ty,
                    },
                )
            }
        };
    }
    for (name, o) in &g.outputs {
        let id = map[*o];
        let id = if g.nodes[*o].ty.dtype == DType::F32 && out.nodes[id].ty.dtype != DType::F32 {
            let node = Node {
                name: format!("{}.f32", out.nodes[id].name),
                op: Op::Cast(DType::F32),
                inputs: vec![id],
                ty: TensorType::new(DType::F32, out.nodes[id].ty.shape.clone()),
            };
            push(&mut out, node)
        } else {
            id
        };
        out.outputs.push((name.clone(), id));
    }
    out.validate()?;
    Ok(out)
}
