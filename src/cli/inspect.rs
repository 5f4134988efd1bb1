//! `smelt inspect`: the kernels of the laid-out GPU program with their costs, the fusions
//! not taken and why, and Graphviz of the graph before and after optimization.

use super::transcript::Transcript;
use super::write_all::{check_destination, write_all};
use super::{compile_gpu, outln, Error, ModelArgs};
use std::path::{Path, PathBuf};

/// Explain a compile: the kernels and their costs, the fusions not taken and why, and
/// (with --dot) Graphviz of the graph before and after optimization.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Write DIR/before.dot and DIR/after.dot (fused kernels drawn as clusters).
    #[arg(long, value_name = "DIR")]
    pub dot: Option<PathBuf>,
    /// The unfused baseline: one kernel per op.
    #[arg(long)]
    pub no_fuse: bool,
}

/// Compiles and explains.
pub fn run(args: Args) -> Result<(), Error> {
    if let Some(dir) = &args.dot {
        check_destination(dir, true, "--dot")?;
    }
    // Read once: the module names come from the file's nodes, the graph from its import.
    let model = smelt::onnx::read_model(&args.model.model)?;
    let scopes = model
        .graph
        .as_ref()
        .map(smelt::onnx::scopes::module_scopes)
        .unwrap_or_default();
    let graph = args.model.import(model)?;
    let mut say = Transcript::default();
    let compiled = compile_gpu(&graph, false, !args.no_fuse, &mut say)?;
    // The Graphviz files first: a failure to write them is the only one left, and then
    // nothing but the error is printed.
    let wrote = match &args.dot {
        Some(dir) => write_dot(&graph, &compiled, dir)?,
        None => Vec::new(),
    };
    say.print();
    inspect(&compiled);
    for path in wrote {
        outln!("wrote {}", path.display());
    }
    by_layer(&compiled, &scopes);
    Ok(())
}

/// The kernels and the fusions not taken, layer by layer (layers as the exporter's module
/// names say); a run of layers like the one before them is printed once.
fn by_layer(c: &smelt::Compiled, scopes: &std::collections::BTreeMap<String, String>) {
    use smelt::onnx::scopes::layer_of;
    if scopes.is_empty() {
        return;
    }
    let layer = |name: &str| scopes.get(name).map(|s| layer_of(s));
    let reports = smelt::optimize::explain::by_layer(&c.graph, &c.plan, &layer);
    outln!();
    outln!("by layer (module names from the exporter):");
    for (i, end) in smelt::optimize::explain::alike_runs(&reports) {
        let r = &reports[i];
        outln!(
            "  {}: {} kernels: {}",
            r.layer,
            r.kernels.len(),
            r.kinds.join(", ")
        );
        for m in &r.missed {
            outln!(
                "    kept apart: {} -> {}: {}",
                m.producer,
                m.consumer,
                m.reason
            );
        }
        if end > i + 1 {
            outln!(
                "  {} .. {}: the same as {} ({} layers of {} kernels)",
                reports[i + 1].layer,
                reports[end - 1].layer,
                r.layer,
                end - i - 1,
                r.kernels.len()
            );
        }
    }
}

fn inspect(c: &smelt::Compiled) {
    use smelt::optimize::explain;
    outln!();
    outln!(
        "{:<4} {:<24} {:<18} {:>10} {:>10} {:>12}  ops",
        "#",
        "kernel",
        "kind",
        "read B",
        "written B",
        "flops"
    );
    for (i, k) in c.plan.kernels.iter().enumerate() {
        outln!(
            "{i:<4} {:<24} {:<18} {:>10} {:>10} {:>12}  {}",
            k.name,
            k.fusion
                .map(|f| format!("{}/{f}", k.kind))
                .unwrap_or(k.kind.to_string()),
            k.bytes_read,
            k.bytes_written,
            k.flops,
            k.ops.join(" ")
        );
    }
    let p = &c.plan;
    outln!(
        "total: {} launches, {} bytes moved, arena {} bytes, weights {} bytes",
        p.launches,
        p.bytes_moved,
        p.arena_bytes,
        p.weight_bytes
    );
    let missed = explain::missed_fusions(&c.graph);
    if !missed.is_empty() {
        outln!();
        outln!("fusions not taken:");
        for m in &missed {
            outln!("  {} -> {}: {}", m.producer, m.consumer, m.reason);
        }
    }
}

/// Writes DIR/before.dot and DIR/after.dot, all or nothing; returns their paths.
fn write_dot(
    before: &smelt::Graph,
    c: &smelt::Compiled,
    dir: &Path,
) -> Result<Vec<PathBuf>, Error> {
    use smelt::optimize::explain;
    let files: Vec<(PathBuf, Vec<u8>)> = [("before.dot", before), ("after.dot", &c.graph)]
        .into_iter()
        .map(|(file, g)| (dir.join(file), explain::dot(g, file).into_bytes()))
        .collect();
    write_all(&files)?;
    Ok(files.into_iter().map(|(path, _)| path).collect())
}
