//! Constant folding. It is not a rewrite rule but the e-class analysis
//! ([`crate::optimize::analysis`]): when every child of a node is a known constant, the node
//! is evaluated here with the reference interpreter, and its class gains a constant leaf.

use crate::interp;
use crate::ir::{Op, Tensor, TensorType};
use std::sync::Arc;

/// Folded tensors larger than this (in elements) are not materialized, so that folding never
/// duplicates weights: a transposed or rescaled copy of a large weight stays a computation.
pub const FOLD_LIMIT: usize = 1 << 16;

/// The value of `op` on constant arguments, if small enough to keep and defined (an integer
/// division by zero, say, is left to run time).
pub fn fold(op: &Op, args: &[Arc<Tensor>], ty: &TensorType) -> Option<Arc<Tensor>> {
    if ty.numel() > FOLD_LIMIT {
        return None;
    }
    let refs: Vec<&Tensor> = args.iter().map(|v| v.as_ref()).collect();
    interp::eval(op, &refs, ty).ok().map(Arc::new)
}
