//! A modelled GPU cost for a plan, until `scripts/gpu-check` measures one: each kernel takes
//! `max(bytes ÷ bandwidth, flops ÷ peak) + launch`, where `peak` is the f16/bf16 tensor-core
//! rate for products, convolutions and attention in f16 or bf16 (smelt's wmma kernels;
//! attention's softmax runs on CUDA cores, which this ignores) and the FP32
//! CUDA-core rate for the rest (f32 products run on CUDA cores: smelt uses no TF32, which
//! would round operands to 10-bit mantissas).
//!
//! The constants are stated, not measured here:
//! - H100 SXM: 3.0 TB/s achieved copy bandwidth (the measured figure; 3.35 TB/s
//!   peak), 67 TFLOP/s FP32, 989 TFLOP/s dense f16/bf16 tensor cores, 3 µs per launch
//!   without CUDA graphs (a captured graph replays launches for about 1 µs each).
//! - A100 SXM 80 GB: 1.7 TB/s copy, 19.5 TFLOP/s FP32, 312 TFLOP/s f16/bf16, 3 µs per launch.
//!
//! These are peaks: smelt's own tiled kernels reach a fraction of them, which only a GPU run
//! can say.
//!
//! Replace them with `scripts/gpu-check`'s numbers when a GPU has run it.

use super::Plan;
use crate::ir::DType;
use serde::Serialize;

/// What the model knows about a GPU.
#[derive(Clone, Debug, Serialize)]
pub struct GpuSpec {
    /// Name (`h100`).
    pub name: &'static str,
    /// Achieved device-memory bandwidth, bytes per second.
    pub bandwidth: f64,
    /// FP32 (CUDA core) rate, flop per second.
    pub fp32_flops: f64,
    /// Dense tensor-core rate for f16/bf16 inputs, flop per second.
    pub tensor_flops: f64,
    /// Seconds per kernel launch.
    pub launch: f64,
}

/// The GPUs the model has constants for.
pub const GPUS: &[GpuSpec] = &[
    GpuSpec {
        name: "h100",
        bandwidth: 3.0e12,
        fp32_flops: 67e12,
        tensor_flops: 989e12,
        launch: 3e-6,
    },
    GpuSpec {
        name: "a100",
        bandwidth: 1.7e12,
        fp32_flops: 19.5e12,
        tensor_flops: 312e12,
        launch: 3e-6,
    },
];

/// A GPU by name (case-insensitive).
pub fn gpu(name: &str) -> Option<&'static GpuSpec> {
    GPUS.iter().find(|g| g.name.eq_ignore_ascii_case(name))
}

/// One kernel's modelled time.
#[derive(Clone, Debug, Serialize)]
pub struct KernelEstimate {
    /// Kernel name.
    pub name: String,
    /// Microseconds moving memory.
    pub memory_us: f64,
    /// Microseconds computing.
    pub compute_us: f64,
    /// Microseconds in all: the larger of the two, plus the launch.
    pub total_us: f64,
    /// `memory` or `compute`: which bound it.
    pub bound: &'static str,
}

/// A plan's modelled time on one GPU.
#[derive(Clone, Debug, Serialize)]
pub struct Estimate {
    /// The GPU.
    pub gpu: GpuSpec,
    /// Each kernel, in launch order.
    pub kernels: Vec<KernelEstimate>,
    /// Microseconds for the whole plan.
    pub total_us: f64,
}

/// The modelled time of `plan` on `gpu`.
pub fn estimate(plan: &Plan, gpu: &GpuSpec) -> Estimate {
    let kernels: Vec<KernelEstimate> = plan
        .kernels
        .iter()
        .map(|k| {
            let bytes = (k.bytes_read + k.bytes_written) as f64;
            let halves = matches!(k.dtype, DType::F16 | DType::BF16);
            let peak = match k.kind {
                "gemm" | "conv" | "attention" if halves => gpu.tensor_flops,
                _ => gpu.fp32_flops,
            };
            let memory_us = bytes / gpu.bandwidth * 1e6;
            let compute_us = k.flops as f64 / peak * 1e6;
            KernelEstimate {
                name: k.name.clone(),
                memory_us,
                compute_us,
                total_us: memory_us.max(compute_us) + gpu.launch * 1e6,
                bound: if memory_us >= compute_us {
                    "memory"
                } else {
                    "compute"
                },
            }
        })
        .collect();
    Estimate {
        gpu: gpu.clone(),
        total_us: kernels.iter().map(|k| k.total_us).sum(),
        kernels,
    }
}
