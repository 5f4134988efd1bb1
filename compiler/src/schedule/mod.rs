//! The schedule: the optimized graph as an ordered list of kernels over named buffers, with
//! the bytes and flops of each and an arena placement — the value lowering consumes and
//! `smelt compile` writes as `plan.json`.

pub mod arena;
pub mod gpu_model;

use crate::ir::{DType, Graph, KernelKind, NodeId, Op};
use serde::Serialize;
use std::collections::HashMap;

/// Where a buffer's contents come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BufferKind {
    /// A graph input, copied in before a run.
    Input,
    /// A constant (weights), uploaded once at load; not in the arena.
    Weight,
    /// Written by a kernel.
    Intermediate,
    /// A graph output.
    Output,
}

/// A tensor in memory.
#[derive(Clone, Debug, Serialize)]
pub struct Buffer {
    /// Name (the producing node's name).
    pub name: String,
    /// Type, as text (`f32[2,3]`).
    pub ty: String,
    /// Size in bytes.
    pub bytes: usize,
    /// Where its contents come from.
    pub kind: BufferKind,
    /// Offset in the arena (weights: none).
    pub offset: Option<usize>,
    /// Another buffer this one is a view of (a reshape), sharing its memory.
    pub alias_of: Option<String>,
}

/// One kernel launch.
#[derive(Clone, Debug, Serialize)]
pub struct Kernel {
    /// Stable name: `k<index>_<op>`.
    pub name: String,
    /// `fused`, `gemm`, `conv` or `attention`.
    pub kind: &'static str,
    /// For `fused` kernels: `elementwise` or `row`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fusion: Option<&'static str>,
    /// The IR node it computes.
    pub node: String,
    /// The source ops it covers.
    pub ops: Vec<String>,
    /// Buffers read.
    pub inputs: Vec<String>,
    /// Buffers written.
    pub outputs: Vec<String>,
    /// Bytes read (each input once).
    pub bytes_read: usize,
    /// Bytes written.
    pub bytes_written: usize,
    /// Floating-point operations.
    pub flops: u64,
    /// The element type it writes.
    pub dtype: DType,
    /// The compiled CUDA kernel's resources, when `smelt compile` built it with NVRTC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cuda: Option<CudaResources>,
    /// The cuBLASLt call a GPU runtime makes instead of the kernel, when the library covers
    /// the kernel's product and epilogue (written by `smelt compile`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cublas: Option<String>,
}

/// What ptxas reports for a compiled CUDA kernel.
#[derive(Clone, Debug, Serialize)]
pub struct CudaResources {
    /// Target architecture (`sm_90`).
    pub arch: String,
    /// Source file, relative to the output directory.
    pub source: String,
    /// Registers per thread.
    pub registers: u32,
    /// Stack frame bytes.
    pub stack_bytes: u32,
    /// Bytes spilled (stores + loads).
    pub spill_bytes: u32,
}

/// The whole plan.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    /// Kernels in launch order.
    pub kernels: Vec<Kernel>,
    /// Every buffer.
    pub buffers: Vec<Buffer>,
    /// Number of kernel launches.
    pub launches: usize,
    /// Bytes read + written by all kernels.
    pub bytes_moved: usize,
    /// Size of the arena holding inputs, intermediates and outputs.
    pub arena_bytes: usize,
    /// Size of the weights (outside the arena).
    pub weight_bytes: usize,
}

impl Plan {
    /// Pretty JSON (deterministic: fields in declaration order, lists in launch order).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("plans serialize")
    }
}

/// Floating-point operations of one op producing `out` from `ins`.
pub fn flops(op: &Op, ins: &[&crate::ir::TensorType], out: &crate::ir::TensorType) -> u64 {
    let n = out.numel() as u64;
    match op {
        Op::Input | Op::Constant(_) => 0,
        Op::Reshape(_)
        | Op::Transpose(_)
        | Op::Broadcast(_)
        | Op::Slice { .. }
        | Op::Concat { .. } => 0,
        Op::Gather { .. }
        | Op::GatherElements { .. }
        | Op::GatherND { .. }
        | Op::Pad { .. }
        | Op::Trilu { .. }
        | Op::Cast(_) => 0,
        Op::Unary(_) | Op::Binary(_) | Op::Where => n,
        Op::MatMul => {
            let a = &ins[0].shape;
            let k = if a.len() == 1 { a[0] } else { a[a.len() - 1] };
            2 * n * k as u64
        }
        Op::Conv(_) => {
            // Each output element sums (input channels per group) × kernel window products.
            let w = &ins[1].shape;
            2 * n * (w[1] * w[2] * w[3]) as u64
        }
        Op::Pool(p) => n * (p.kernel[0] * p.kernel[1]) as u64,
        Op::Reduce { .. } | Op::ArgReduce { .. } | Op::CumSum { .. } => ins[0].numel() as u64,
        // Each output element compares its position with every update's.
        Op::ScatterND { .. } => n * ins[1].numel() as u64,
        Op::Softmax { .. } | Op::LogSoftmax { .. } => 5 * n,
        Op::LayerNorm { .. } => 8 * n,
        Op::Fused(k) => k
            .body
            .nodes
            .iter()
            .map(|node| {
                let tys: Vec<&crate::ir::TensorType> =
                    node.inputs.iter().map(|&i| &k.body.nodes[i].ty).collect();
                flops(&node.op, &tys, &node.ty)
            })
            .sum(),
    }
}

/// Schedules an (optimized) graph: one kernel per compute node in graph order; reshapes
/// are views of their input's buffer, not kernels.
pub fn schedule(g: &Graph) -> Plan {
    let outputs: HashMap<NodeId, &str> =
        g.outputs.iter().map(|(n, id)| (*id, n.as_str())).collect();
    // Buffer of each node (reshapes share their source's).
    let mut buffer_of: Vec<usize> = vec![usize::MAX; g.nodes.len()];
    let mut buffers: Vec<Buffer> = Vec::new();
    let mut kernels: Vec<Kernel> = Vec::new();
    let mut step_of_buffer_write: Vec<usize> = Vec::new();
    for (id, node) in g.nodes.iter().enumerate() {
        let kind = match &node.op {
            Op::Input => BufferKind::Input,
            Op::Constant(_) => BufferKind::Weight,
            _ if outputs.contains_key(&id) => BufferKind::Output,
            _ => BufferKind::Intermediate,
        };
        let alias = match (&node.op, kind) {
            (Op::Reshape(_), BufferKind::Intermediate) => Some(buffer_of[node.inputs[0]]),
            _ => None,
        };
        buffers.push(Buffer {
            name: node.name.clone(),
            ty: node.ty.to_string(),
            bytes: node.ty.bytes(),
            kind,
            offset: None,
            alias_of: alias.map(|src| buffers[src].name.clone()),
        });
        if let Some(src) = alias {
            buffer_of[id] = src;
            step_of_buffer_write.push(usize::MAX);
            continue;
        }
        buffer_of[id] = buffers.len() - 1;
        step_of_buffer_write.push(kernels.len());
        if matches!(node.op, Op::Input | Op::Constant(_)) {
            continue;
        }
        let mut ins: Vec<NodeId> = Vec::new();
        for &i in &node.inputs {
            if !ins.iter().any(|&j| buffer_of[j] == buffer_of[i]) {
                ins.push(i);
            }
        }
        let tys: Vec<&crate::ir::TensorType> =
            node.inputs.iter().map(|&i| &g.nodes[i].ty).collect();
        let (kind, fusion, ops) = match &node.op {
            Op::Fused(k) => (
                match k.kind {
                    KernelKind::Elementwise | KernelKind::Row { .. } => "fused",
                    KernelKind::Gemm => "gemm",
                    KernelKind::Conv => "conv",
                    KernelKind::Attention => "attention",
                },
                match k.kind {
                    KernelKind::Elementwise => Some("elementwise"),
                    KernelKind::Row { .. } => Some("row"),
                    _ => None,
                },
                k.body
                    .nodes
                    .iter()
                    .filter(|n| n.op != Op::Input)
                    .map(|n| n.op.name())
                    .collect(),
            ),
            Op::MatMul => ("gemm", None, vec![node.op.name()]),
            Op::Conv(_) => ("conv", None, vec![node.op.name()]),
            op => ("fused", None, vec![op.name()]),
        };
        kernels.push(Kernel {
            name: format!("k{}_{}", kernels.len(), node.op.name()),
            kind,
            fusion,
            node: node.name.clone(),
            ops,
            inputs: ins.iter().map(|&i| g.nodes[i].name.clone()).collect(),
            outputs: vec![node.name.clone()],
            bytes_read: ins.iter().map(|&i| g.nodes[i].ty.bytes()).sum(),
            bytes_written: node.ty.bytes(),
            flops: flops(&node.op, &tys, &node.ty),
            dtype: node.ty.dtype,
            cuda: None,
            cublas: None,
        });
    }
    // A reshape that is a graph output was given its own buffer above (kind Output) but no
    // kernel: it is a copy of its source at the end. Count it as a view as well.
    for (id, node) in g.nodes.iter().enumerate() {
        if let (Op::Reshape(_), true) = (&node.op, outputs.contains_key(&id)) {
            let src = buffer_of[node.inputs[0]];
            buffers[buffer_of[id]].alias_of = Some(buffers[src].name.clone());
        }
    }
    place(g, &buffer_of, &mut buffers, &kernels, &step_of_buffer_write);
    let launches = kernels.len();
    let bytes_moved = kernels.iter().map(|k| k.bytes_read + k.bytes_written).sum();
    let weight_bytes = buffers
        .iter()
        .filter(|b| b.kind == BufferKind::Weight)
        .map(|b| b.bytes)
        .sum();
    let arena_bytes = buffers
        .iter()
        .filter_map(|b| b.offset.map(|o| o + b.bytes))
        .max()
        .map(|end| end.div_ceil(arena::ALIGN) * arena::ALIGN)
        .unwrap_or(0);
    Plan {
        kernels,
        buffers,
        launches,
        bytes_moved,
        arena_bytes,
        weight_bytes,
    }
}

/// Gives every non-weight, non-alias buffer an arena offset from its lifetime.
fn place(
    g: &Graph,
    buffer_of: &[usize],
    buffers: &mut [Buffer],
    kernels: &[Kernel],
    written: &[usize],
) {
    let end = kernels.len();
    let index: HashMap<String, usize> = buffers
        .iter()
        .enumerate()
        .map(|(i, b)| (b.name.clone(), i))
        .collect();
    let mut last = vec![0usize; buffers.len()];
    for (step, k) in kernels.iter().enumerate() {
        for name in &k.inputs {
            let b = root(buffers, &index, index[name]);
            last[b] = last[b].max(step);
        }
    }
    for (_, id) in &g.outputs {
        let b = root(buffers, &index, buffer_of[*id]);
        last[b] = end;
    }
    let placeable: Vec<usize> = (0..buffers.len())
        .filter(|&i| buffers[i].kind != BufferKind::Weight && buffers[i].alias_of.is_none())
        .collect();
    let lifetimes: Vec<arena::Lifetime> = placeable
        .iter()
        .map(|&i| {
            let first = if buffers[i].kind == BufferKind::Input {
                0
            } else {
                written[i]
            };
            arena::Lifetime {
                bytes: buffers[i].bytes,
                first,
                last: last[i].max(first),
            }
        })
        .collect();
    let plan = arena::plan(&lifetimes);
    for (k, &i) in placeable.iter().enumerate() {
        buffers[i].offset = Some(plan.offsets[k]);
    }
    for i in 0..buffers.len() {
        if buffers[i].alias_of.is_some() {
            let r = root(buffers, &index, i);
            buffers[i].offset = buffers[r].offset;
        }
    }
}

fn root(buffers: &[Buffer], index: &HashMap<String, usize>, mut i: usize) -> usize {
    while let Some(src) = &buffers[i].alias_of {
        i = index[src];
    }
    i
}
