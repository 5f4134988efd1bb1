//! The typed tensor graph: dtypes, tensors, ops, shape inference, the graph and its builder.

mod builder;
mod dtype;
mod graph;
mod infer;
mod op;
mod storage;
mod tensor;

pub use builder::{normalize_axis, GraphBuilder, Value};
pub use dtype::{fmt_shape, DType, TensorType};
pub(crate) use graph::dense_strides;
pub use graph::{Graph, Node, NodeId};
pub use infer::{
    broadcast_shapes, checked_numel, infer, matmul_shape, reduced_shape, MAX_ELEMENTS,
};
pub use op::{
    BinaryOp, Conv2d, FusedKernel, KernelKind, Op, PadMode, Pool2d, PoolKind, ReduceKind,
    ScatterReduction, UnaryOp, F64,
};
pub use storage::with_storage;
pub use tensor::{Data, Tensor};
