//! smelt's compiler: the typed tensor IR, its reference interpreter and the ONNX importer.
//!
//! Everything here is pure Rust with no CUDA or C-compiler dependency.

#![warn(missing_docs)]

pub mod codegen;
pub mod error;
pub mod interp;
pub mod ir;
pub mod kernel;
pub mod onnx;
pub mod optimize;
pub mod schedule;

pub use error::{Error, Result};

/// The result of compiling a graph: the optimized graph, its schedule, and what the
/// optimizer did.
#[derive(Debug)]
pub struct Compiled {
    /// The optimized graph (fused kernels are `Op::Fused` nodes).
    pub graph: ir::Graph,
    /// Kernels, buffers, bytes and flops: what lowering consumes.
    pub plan: schedule::Plan,
    /// Pass timings, rule counts, stop reason.
    pub report: optimize::Report,
}

/// Optimizes and schedules a graph.
///
/// ```
/// use smelt_compiler::ir::{DType, GraphBuilder};
/// use smelt_compiler::{compile, optimize::Options};
/// let mut g = GraphBuilder::new();
/// let x = g.input("x", DType::F32, &[1024])?;
/// let mut v = x;
/// for _ in 0..10 {
///     v = g.tanh(v)?;
/// }
/// g.output("y", v)?;
/// let compiled = compile(&g.build()?, &Options::default())?;
/// assert_eq!(compiled.plan.launches, 1);
/// # Ok::<(), smelt_compiler::Error>(())
/// ```
pub fn compile(graph: &ir::Graph, opts: &optimize::Options) -> Result<Compiled> {
    let (graph, report) = optimize::optimize(graph, opts)?;
    let plan = schedule::schedule(&graph);
    Ok(Compiled {
        graph,
        plan,
        report,
    })
}
