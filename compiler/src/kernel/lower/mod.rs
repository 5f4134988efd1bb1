//! Lowering: each scheduled kernel of an optimized graph becomes a [`Kernel`] of the kernel IR.
//!
//! Two shapes of kernel:
//! - pointwise: a grid-stride loop over the output elements, each computed by following the
//!   body graph back to loads (index maps for broadcast, transpose, reshape and slice;
//!   reductions, normalizations and matrix products as serial loops);
//! - rows: the row statistics (reductions, softmax max/sum, layernorm mean/variance) are
//!   computed once per row of a row kernel's iteration space, then the row's outputs are
//!   written. On the GPU ([`rows`]) a group of warp lanes or a block shares each row, held in
//!   registers or streamed with one-pass merges; on the CPU ([`cpu_rows`]) one thread runs
//!   whole rows.
//!
//! One file per concern: this one drives the lowering (buffers, reshape views, one kernel
//! per scheduled node); [`index`] builds index arithmetic, [`emit`] the statements that
//! compute body values and [`ops`] each op's value at an index; the GPU forms are
//! [`pointwise`], [`vector`], [`rows`], [`gemm`], [`attention`] and the cuBLASLt forms
//! [`blas`]; the CPU forms are [`cpu`] (library products, im2col, grouped convolutions,
//! pointwise), [`cpu_pool`] (direct pooling) and [`cpu_rows`], rewritten after lowering by
//! [`interleave`].

use super::ir::{
    BufferDecl, Builtin, Combiner, Expr, IndexCheck, IndexOp, Kernel, Launch, Precision, Program,
    ReduceOp, Scope, Stmt,
};
use crate::ir::{
    broadcast_shapes, DType, Graph, KernelKind, Node, NodeId, Op, ReduceKind, ScatterReduction,
    UnaryOp,
};
use std::collections::HashMap;
use thiserror::Error;

/// Why a graph cannot be lowered (yet).
#[derive(Debug, Error)]
pub enum LowerError {
    /// An op the lowering does not handle.
    #[error("node '{node}': lowering does not support {op} yet")]
    Unsupported {
        /// Node name.
        node: String,
        /// Op name.
        op: String,
    },
}

type R<T> = Result<T, LowerError>;

mod attention;
mod blas;
mod cpu;
mod cpu_pool;
mod cpu_rows;
mod emit;
mod gemm;
mod index;
mod interleave;
mod ops;
mod pointwise;
mod rows;
mod vector;

pub use cpu::CPU_CHUNK;
use cpu_rows::lower_rows;
use emit::*;
use index::*;
use pointwise::lower_pointwise;
use rows::{row_ops, row_space};

pub use super::ir::Target;

/// Threads per block of pointwise kernels.
pub const POINTWISE_BLOCK: usize = 256;
/// Threads per block of row kernels.
pub const ROW_BLOCK: usize = 128;
/// Most blocks of one launch (loops stride over the rest).
pub const MAX_GRID: usize = 1024;

/// A one-op body for a node that is not a fused kernel.
fn single_op_body(g: &Graph, id: NodeId) -> Graph {
    let node = &g.nodes[id];
    let mut body = Graph::default();
    let mut seen: Vec<NodeId> = Vec::new();
    let mut args = Vec::new();
    for &a in &node.inputs {
        let k = seen.iter().position(|&s| s == a).unwrap_or_else(|| {
            seen.push(a);
            body.inputs.push(body.nodes.len());
            body.nodes.push(Node {
                name: format!("in{}", seen.len() - 1),
                op: Op::Input,
                inputs: vec![],
                ty: g.nodes[a].ty.clone(),
            });
            seen.len() - 1
        });
        args.push(body.inputs[k]);
    }
    body.nodes.push(Node {
        name: node.name.clone(),
        op: node.op.clone(),
        inputs: args,
        ty: node.ty.clone(),
    });
    body.outputs.push(("out".into(), body.nodes.len() - 1));
    body
}

/// The distinct inputs of a node, in order (a fused body has one input per distinct value).
fn distinct_inputs(node: &Node) -> Vec<NodeId> {
    let mut v: Vec<NodeId> = Vec::new();
    for &a in &node.inputs {
        if !v.contains(&a) {
            v.push(a);
        }
    }
    v
}

/// Row structure of a one-op body, if it is a row op over trailing dims.
fn single_row_axis(op: &Op, rank: usize) -> Option<usize> {
    match op {
        Op::Softmax { axis } | Op::LogSoftmax { axis } if axis + 1 == rank => Some(*axis),
        Op::LayerNorm { axis, .. } => Some(*axis),
        Op::Reduce { axes, .. } => {
            let a = *axes.first()?;
            axes.iter().copied().eq(a..rank).then_some(a)
        }
        _ => None,
    }
}

/// Body inputs that are one-element constants become constants of the body: kernels use
/// them as immediates instead of loading them.
fn inline_scalars(
    body: &Graph,
    ins: &[u32],
    constants: &[(u32, std::sync::Arc<crate::ir::Tensor>)],
) -> (Graph, Vec<u32>) {
    let mut g = body.clone();
    let (mut inputs, mut bufs) = (Vec::new(), Vec::new());
    for (k, &i) in body.inputs.iter().enumerate() {
        match constants
            .iter()
            .find(|(b, t)| *b == ins[k] && t.numel() == 1)
        {
            Some((_, t)) => g.nodes[i].op = Op::Constant(t.clone()),
            None => {
                inputs.push(i);
                bufs.push(ins[k]);
            }
        }
    }
    g.inputs = inputs;
    (g, bufs)
}

/// The immediate of a one-element constant.
fn immediate(t: &crate::ir::Tensor) -> Expr {
    if t.dtype().is_int() {
        Expr::I(t.to_i64()[0])
    } else {
        Expr::F(t.to_f64()[0])
    }
}

/// Lowers an optimized graph to the kernel IR for a GPU.
pub fn lower(g: &Graph) -> R<Program> {
    lower_for(g, Target::Gpu)
}

thread_local! {
    static LOWERINGS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// How many programs this thread has lowered (each [`lower_for`] lowers and lays out one):
/// lets a test prove that a compile lowers once per target.
pub fn lowerings() -> usize {
    LOWERINGS.with(|n| n.get())
}

/// Lowers an optimized graph to the kernel IR for a target and lays it out in memory.
pub fn lower_for(g: &Graph, target: Target) -> R<Program> {
    let mut buffers: Vec<BufferDecl> = Vec::new();
    let mut buf_of: Vec<u32> = vec![u32::MAX; g.nodes.len()];
    let mut constants = Vec::new();
    let mut kernels = Vec::new();
    let outputs: Vec<NodeId> = g.outputs.iter().map(|(_, i)| *i).collect();
    // A kernel whose only use is a reshape that is a graph output writes straight into that
    // output (declared with its name and shape), which the reshape then views: no copy.
    let mut uses = vec![0usize; g.nodes.len()];
    for n in &g.nodes {
        for &i in &n.inputs {
            uses[i] += 1;
        }
    }
    for &o in &outputs {
        uses[o] += 1;
    }
    let mut written_as: Vec<Option<NodeId>> = vec![None; g.nodes.len()];
    for (id, node) in g.nodes.iter().enumerate() {
        if let (Op::Reshape(_), Some(&x)) = (&node.op, node.inputs.first()) {
            let kernel = !matches!(g.nodes[x].op, Op::Input | Op::Constant(_) | Op::Reshape(_));
            if outputs.contains(&id) && uses[id] == 1 && uses[x] == 1 && kernel {
                written_as[x] = Some(id);
            }
        }
    }
    for (id, node) in g.nodes.iter().enumerate() {
        // A reshape that no output names is a view of its input's buffer; so is one whose
        // input was written into it.
        let viewed = written_as.get(node.inputs.first().copied().unwrap_or(usize::MAX));
        if matches!(node.op, Op::Reshape(_))
            && (!outputs.contains(&id) || viewed == Some(&Some(id)))
        {
            buf_of[id] = buf_of[node.inputs[0]];
            continue;
        }
        let decl = &g.nodes[written_as[id].unwrap_or(id)];
        buf_of[id] = buffers.len() as u32;
        buffers.push(BufferDecl {
            name: decl.name.clone(),
            dtype: node.ty.dtype,
            shape: decl.ty.shape.clone(),
            len: node.ty.numel(),
        });
        match &node.op {
            Op::Input => continue,
            Op::Constant(t) => {
                constants.push((buf_of[id], t.clone()));
                continue;
            }
            _ => {}
        }
        let attention = matches!(&node.op, Op::Fused(k) if k.kind == KernelKind::Attention);
        let product = match &node.op {
            Op::Fused(k) => matches!(k.kind, KernelKind::Gemm | KernelKind::Conv),
            op => matches!(op, Op::MatMul | Op::Conv(_)),
        };
        let (body, row_axis) = match &node.op {
            Op::Fused(k) => (
                k.body.clone(),
                match k.kind {
                    KernelKind::Row { axis } => Some(axis),
                    _ => None,
                },
            ),
            op => {
                let body = single_op_body(g, id);
                let rank = node
                    .inputs
                    .first()
                    .map(|&a| g.nodes[a].ty.rank())
                    .unwrap_or(0);
                (body, single_row_axis(op, rank))
            }
        };
        let ins: Vec<u32> = distinct_inputs(node).iter().map(|&a| buf_of[a]).collect();
        let out = buf_of[id];
        let op_name = node.op.name();
        let name = format!("k{}_{op_name}", kernels.len());
        let precision = if ins
            .iter()
            .chain([&out])
            .any(|&b| buffers[b as usize].dtype == DType::F64)
        {
            Precision::F64
        } else {
            Precision::F32
        };
        let (body, ins) = inline_scalars(&body, &ins, &constants);
        if target == Target::Cpu {
            let mut sink = cpu::Sink {
                buffers: &mut buffers,
                kernels: &mut kernels,
                node: &node.name,
                op: &op_name,
            };
            cpu::lower_node(&body, row_axis, &ins, out, precision, &mut sink)?;
            continue;
        }
        let kernel = match row_axis {
            Some(axis) => rows::lower_rows_gpu(&body, &ins, out, axis, name, precision)?,
            None => {
                let special = if attention {
                    let constant = |b: u32| {
                        constants
                            .iter()
                            .find(|(c, _)| *c == b)
                            .map(|(_, t)| t.clone())
                    };
                    attention::lower_attention_gpu(&body, &ins, out, &name, precision, &constant)?
                } else if product {
                    gemm::lower_gemm_gpu(&body, &ins, out, &name, precision)?
                } else {
                    vector::lower_pointwise_vector(&body, &ins, out, &name, precision)?
                };
                match special {
                    Some(k) => k,
                    None => lower_pointwise(&body, &ins, out, name, precision)?,
                }
            }
        };
        if kernel.launch.grid > i32::MAX as usize {
            return Err(LowerError::Unsupported {
                node: node.name.clone(),
                op: format!(
                    "a launch of {} blocks (CUDA allows 2^31 - 1)",
                    kernel.launch.grid
                ),
            });
        }
        let blas = if product {
            blas::blas_form(&body, &ins, out, buffers[out as usize].dtype).map(Box::new)
        } else {
            None
        };
        kernels.push(Kernel {
            node: node.name.clone(),
            blas,
            ..kernel
        });
    }
    let mut program = Program {
        target,
        buffers,
        inputs: g
            .inputs
            .iter()
            .map(|&i| (g.nodes[i].name.clone(), buf_of[i]))
            .collect(),
        constants,
        outputs: g
            .outputs
            .iter()
            .map(|(n, i)| (n.clone(), buf_of[*i]))
            .collect(),
        kernels,
        layout: Default::default(),
    };
    if target == Target::Cpu {
        cpu::pack_weights(&mut program);
        interleave::interleave(&mut program);
    }
    program.layout = super::layout::lay_out(&program);
    LOWERINGS.with(|n| n.set(n.get() + 1));
    Ok(program)
}
