//! The plan: what a laid-out program runs, in the terms a user reads (`plan.json`, `smelt
//! inspect`): its kernels in launch order with the graph ops each covers, the bytes each
//! moves and its flops, and every buffer with its place. It is derived from the program
//! ([`Plan::of`]), so it is exactly what the runtimes execute.

pub mod arena;
pub mod gpu_model;

use crate::ir::{DType, Graph, KernelKind, Node, Op};
use crate::kernel::ir::Stmt;
use crate::kernel::{Program, Target};
use serde::Serialize;
use std::collections::HashMap;

/// Where a buffer's contents come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BufferKind {
    /// A graph input.
    Input,
    /// A constant (weights), written once at load.
    Weight,
    /// Written by a kernel.
    Intermediate,
    /// A graph output.
    Output,
    /// Working memory of the lowering's own (a product's gathered operand, im2col columns).
    Scratch,
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
    /// Offset in the arena; none for a buffer the caller passes in place (CPU inputs and
    /// outputs).
    pub offset: Option<usize>,
}

/// A kernel's launch shape.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct LaunchShape {
    /// Blocks.
    pub grid: usize,
    /// Threads per block.
    pub block: usize,
}

/// One kernel launch.
#[derive(Clone, Debug, Serialize)]
pub struct Kernel {
    /// Stable name: `k<index>_<what>`.
    pub name: String,
    /// What the graph node it belongs to is: `fused`, `gemm`, `conv` or `attention`.
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
    /// Blocks and threads.
    pub launch: LaunchShape,
    /// The compiled CUDA kernel's resources, when `smelt compile` built it with NVRTC.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cuda: Option<CudaResources>,
    /// The cuBLASLt call a GPU runtime makes instead of the kernel, when the library covers
    /// the kernel's product and epilogue.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cublas: Option<String>,
}

/// What ptxas reports for a compiled CUDA kernel.
#[derive(Clone, Debug, Serialize)]
pub struct CudaResources {
    /// Target architecture (`sm_90`).
    pub arch: String,
    /// The CUDA function launched: kernels that differ only in their buffers share one.
    pub function: String,
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
    /// What the program was lowered for.
    pub target: Target,
    /// Kernels in launch order.
    pub kernels: Vec<Kernel>,
    /// Every buffer.
    pub buffers: Vec<Buffer>,
    /// Number of kernel launches.
    pub launches: usize,
    /// Bytes read + written by all kernels.
    pub bytes_moved: usize,
    /// Size of the arena (weights included; CPU inputs and outputs stay in the caller's
    /// memory).
    pub arena_bytes: usize,
    /// Size of the weights.
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

impl Plan {
    /// The plan of `program`, lowered from the optimized graph `graph`: its kernels in
    /// launch order, each described by the graph node it computes, and its buffers where the
    /// program's layout puts them.
    pub fn of(graph: &Graph, program: &Program) -> Plan {
        let nodes: HashMap<&str, &Node> =
            graph.nodes.iter().map(|n| (n.name.as_str(), n)).collect();
        let bytes = |b: u32| {
            let d = &program.buffers[b as usize];
            d.len * d.dtype.size()
        };
        let mut buffers: Vec<Buffer> = program
            .buffers
            .iter()
            .enumerate()
            .map(|(i, b)| Buffer {
                name: b.name.clone(),
                ty: crate::ir::TensorType::new(b.dtype, b.shape.clone()).to_string(),
                bytes: bytes(i as u32),
                kind: if nodes.contains_key(b.name.as_str()) {
                    BufferKind::Intermediate
                } else {
                    BufferKind::Scratch
                },
                offset: match program.layout.slots.get(i).copied().flatten() {
                    Some(_) => None,
                    None => program.layout.offsets.get(i).copied(),
                },
            })
            .collect();
        for (b, _) in &program.constants {
            buffers[*b as usize].kind = BufferKind::Weight;
        }
        for (_, b) in &program.outputs {
            buffers[*b as usize].kind = BufferKind::Output;
        }
        for (_, b) in &program.inputs {
            buffers[*b as usize].kind = BufferKind::Input;
        }
        // A node's flops go to its library products (2·m·n·k each) and the rest to its
        // last kernel.
        let mut last_of: HashMap<&str, usize> = HashMap::new();
        for (i, k) in program.kernels.iter().enumerate() {
            last_of.insert(k.node.as_str(), i);
        }
        let mut node_flops: HashMap<&str, u64> = HashMap::new();
        let mut gemm_flops = vec![0u64; program.kernels.len()];
        for (i, k) in program.kernels.iter().enumerate() {
            gemm_flops[i] = product_flops(&k.body);
            let node = nodes.get(k.node.as_str());
            node_flops
                .entry(k.node.as_str())
                .or_insert_with(|| match node {
                    Some(n) => {
                        let tys: Vec<&crate::ir::TensorType> =
                            n.inputs.iter().map(|&i| &graph.nodes[i].ty).collect();
                        flops(&n.op, &tys, &n.ty)
                    }
                    None => 0,
                });
        }
        let mut per_node_gemm: HashMap<&str, u64> = HashMap::new();
        for (i, k) in program.kernels.iter().enumerate() {
            *per_node_gemm.entry(k.node.as_str()).or_insert(0) += gemm_flops[i];
        }
        let kernels: Vec<Kernel> = program
            .kernels
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let node = nodes.get(k.node.as_str()).copied();
                let (kind, fusion, ops) = describe(node);
                let rest =
                    node_flops[k.node.as_str()].saturating_sub(per_node_gemm[k.node.as_str()]);
                let flops = gemm_flops[i]
                    + if last_of[k.node.as_str()] == i {
                        rest
                    } else {
                        0
                    };
                let dtype = k
                    .writes
                    .first()
                    .map(|&b| program.buffers[b as usize].dtype)
                    .unwrap_or(DType::F32);
                Kernel {
                    name: k.name.clone(),
                    kind,
                    fusion,
                    node: k.node.clone(),
                    ops,
                    inputs: k
                        .reads
                        .iter()
                        .map(|&b| program.buffers[b as usize].name.clone())
                        .collect(),
                    outputs: k
                        .writes
                        .iter()
                        .map(|&b| program.buffers[b as usize].name.clone())
                        .collect(),
                    bytes_read: k.reads.iter().map(|&b| bytes(b)).sum(),
                    bytes_written: k.writes.iter().map(|&b| bytes(b)).sum(),
                    flops,
                    dtype,
                    launch: LaunchShape {
                        grid: k.launch.grid,
                        block: k.launch.block,
                    },
                    cuda: None,
                    cublas: k.blas.as_ref().map(|b| b.to_string()),
                }
            })
            .collect();
        let launches = kernels.len();
        let bytes_moved = kernels.iter().map(|k| k.bytes_read + k.bytes_written).sum();
        let weight_bytes = buffers
            .iter()
            .filter(|b| b.kind == BufferKind::Weight)
            .map(|b| b.bytes)
            .sum();
        Plan {
            target: program.target,
            kernels,
            buffers,
            launches,
            bytes_moved,
            arena_bytes: program.layout.size,
            weight_bytes,
        }
    }
}

/// The flops of the library products in `stmts` (2·m·n·k per product and batch).
fn product_flops(stmts: &[Stmt]) -> u64 {
    stmts
        .iter()
        .map(|s| match s {
            Stmt::Gemm(g) => 2 * (g.batch.iter().product::<usize>() * g.m * g.n * g.k) as u64,
            Stmt::For { body, .. } => product_flops(body),
            Stmt::If { then, .. } => product_flops(then),
            _ => 0,
        })
        .sum()
}

/// A kernel's kind, fusion and source ops, from the graph node it computes.
fn describe(node: Option<&Node>) -> (&'static str, Option<&'static str>, Vec<String>) {
    let Some(node) = node else {
        return ("fused", None, Vec::new());
    };
    match &node.op {
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
    }
}
