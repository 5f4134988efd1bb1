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
pub mod parallel;
pub mod schedule;
pub mod timings;

pub use error::{Error, Result};

/// The result of compiling a graph for a target: the optimized graph and what the optimizer
/// did, the program lowered from it and laid out in memory (the one hand-off to a runtime),
/// and the plan derived from that program (`plan.json`).
#[derive(Debug)]
pub struct Compiled {
    /// The optimized graph (fused kernels are `Op::Fused` nodes).
    pub graph: ir::Graph,
    /// Pass timings, rule counts, stop reason.
    pub report: optimize::Report,
    /// The lowered program, with every buffer's place: what the runtime executes.
    pub program: kernel::Program,
    /// Kernels, buffers, bytes and flops of that program, as a user reads them.
    pub plan: schedule::Plan,
    /// How long each stage took: the optimizer's passes, then lowering for the target.
    pub timings: timings::Timings,
}

impl Compiled {
    /// The same optimized graph lowered and laid out for another target (the optimizer
    /// does not run again).
    pub fn retarget(&self, target: kernel::Target) -> Result<Compiled> {
        lay_out(
            self.graph.clone(),
            self.report.clone(),
            target,
            Default::default(),
        )
    }
}

/// Optimizes a graph, lowers it for the GPU and lays it out: [`compile_for`] with
/// [`Target::Gpu`](kernel::Target::Gpu), whose plan is the one `smelt compile` writes.
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
    compile_for(graph, opts, kernel::Target::Gpu)
}

/// The pipeline: optimizes `graph`, lowers the optimized graph for `target` and plans its
/// memory, once each.
///
/// ```
/// use smelt_compiler::ir::{DType, GraphBuilder};
/// use smelt_compiler::kernel::Target;
/// use smelt_compiler::{compile_for, optimize::Options};
/// let mut g = GraphBuilder::new();
/// let x = g.input("x", DType::F32, &[4, 8])?;
/// let y = g.softmax(x, -1)?;
/// g.output("y", y)?;
/// let c = compile_for(&g.build()?, &Options::default(), Target::Cpu)?;
/// assert_eq!(c.program.kernels.len(), 1);
/// // The input and the output stay in the caller's memory on the CPU: both have a slot.
/// assert!(c.program.layout.slots.iter().all(|s| s.is_some()));
/// assert!(c.plan.buffers.iter().all(|b| b.offset.is_none()));
/// # Ok::<(), smelt_compiler::Error>(())
/// ```
pub fn compile_for(
    graph: &ir::Graph,
    opts: &optimize::Options,
    target: kernel::Target,
) -> Result<Compiled> {
    let t = std::time::Instant::now();
    let (graph, report) = optimize::optimize(graph, opts)?;
    let total = t.elapsed().as_secs_f64() * 1e3;
    let mut timings = timings::Timings::default();
    let mut passes = 0.0;
    for p in &report.passes {
        let ms = p.time.as_secs_f64() * 1e3;
        timings.add(&format!("optimize {}", p.name), ms);
        passes += ms;
    }
    // Validation and the graph conversions around the passes.
    timings.add("optimize (rest)", (total - passes).max(0.0));
    lay_out(graph, report, target, timings)
}

fn lay_out(
    graph: ir::Graph,
    report: optimize::Report,
    target: kernel::Target,
    mut timings: timings::Timings,
) -> Result<Compiled> {
    let name = match target {
        kernel::Target::Gpu => "lower gpu",
        kernel::Target::Cpu => "lower cpu",
    };
    let program = timings.time(name, || kernel::lower_for(&graph, target))?;
    let plan = timings.time("plan", || schedule::Plan::of(&graph, &program));
    Ok(Compiled {
        graph,
        report,
        program,
        plan,
        timings,
    })
}
