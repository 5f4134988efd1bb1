//! The lowered program, run by the kernel-IR interpreter (every block and thread, the
//! reduction trees as written), gives the reference interpreter's outputs: on the reference
//! models and on random graphs, fused and unfused. Tolerance: rtol 1e-4, atol 1e-5 (the
//! kernels compute in f32 as the GPU does; the reference accumulates in f64).
//!
//! One module per kernel family; `common::layers` runs the same checks for every test crate.

#[path = "../common/mod.rs"]
mod common;

mod attention;
mod cublas;
mod models;
mod pointwise;
mod products;
mod rows;

#[allow(unused_imports)]
use smelt::kernel::interp::{self as kinterp, Products};
#[allow(unused_imports)]
use smelt::kernel::{lower, lower_for, Target};
use smelt::optimize::Options;
use smelt::{compile, interp, Graph, Tensor};
use std::collections::HashMap;

/// Seeded random inputs (never all zero): the benchmark harness's.
fn feeds(g: &Graph, seed: u64) -> HashMap<String, Tensor> {
    g.random_inputs(seed)
}

/// Lowers `g` (fused or not) and compares the kernel-IR runs with the reference.
fn check(g: &Graph, fuse: bool) -> Result<(), String> {
    check_within(g, fuse, 1e-4, 1e-5)
}

/// [`check`] with a tolerance (f16 kernels round once at the end, the reference after
/// every op).
fn check_within(g: &Graph, fuse: bool, rtol: f64, atol: f64) -> Result<(), String> {
    common::layers::lowered(g, fuse, rtol, atol)
}
