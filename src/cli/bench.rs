//! `smelt bench`: the model timed fused and unfused on the C backend (the harness in
//! [`super::harness`]).

use super::write_all::{check_destination, write_all};
use super::{harness, outln, profile, Error, ModelArgs};
use smelt::Device;
use std::path::PathBuf;

/// Benchmark a model on the CPU backend: warm-up, then the median and fastest of N runs
/// on fresh random inputs, fused and unfused, and compile time with a cold and a warm
/// cache.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Where to run (cpu only for now).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Timed runs per plan.
    #[arg(long, default_value_t = 50)]
    pub runs: usize,
    /// Untimed runs before timing.
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// Threads (default: $SMELT_THREADS, else every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Also write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Also time each kernel of the fused plan on its own, and say per kernel how far it is
    /// from the machine's peak (bytes, flops, GB/s, GFLOP/s, the bound, % of it), sorted by
    /// time and by layer.
    #[arg(long)]
    pub profile: bool,
    /// Write the cold compile's stages and every profiled run's kernels to FILE in the
    /// Chrome trace-event format (open it in Perfetto or chrome://tracing).
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// Draw every kernel of the fused plan on the machine's roofline, as SVG, to FILE.
    #[arg(long, value_name = "FILE")]
    pub roofline: Option<PathBuf>,
    /// Also print where the cold compile's and the warm load's time went, stage by stage.
    #[arg(long)]
    pub timings: bool,
}

/// Benchmarks and prints (and writes `--json`).
pub fn run(args: Args) -> Result<(), Error> {
    let Args {
        model,
        device,
        runs,
        warmup,
        threads,
        json,
        profile: show_profile,
        trace,
        roofline,
        timings,
    } = args;

    let device: Device = device.parse()?;
    if device != Device::Cpu {
        return Err(Error::Usage(format!(
            "smelt bench runs on --device cpu only (got {device})"
        )));
    }
    if runs == 0 {
        return Err(Error::Usage("--runs must be at least 1".into()));
    }
    for (path, what) in [
        (&json, "--json"),
        (&trace, "--trace"),
        (&roofline, "--roofline"),
    ] {
        if let Some(path) = path {
            check_destination(path, false, what)?;
        }
    }
    let profiling = show_profile || trace.is_some() || roofline.is_some();
    // Read once: the module names (for the profile's layers) come from the file's nodes.
    let proto = smelt::onnx::read_model(&model.model)?;
    let scopes = match profiling {
        true => proto
            .graph
            .as_ref()
            .map(smelt::onnx::scopes::module_scopes)
            .unwrap_or_default(),
        false => Default::default(),
    };
    let graph = model.import(proto)?;
    let opts = harness::BenchOptions {
        runs,
        warmup,
        threads: threads
            .filter(|&t| t > 0)
            .unwrap_or_else(smelt_runtime::default_threads),
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        profile: profiling,
    };
    let r = harness::bench(&graph, &opts)?;
    let profiled = match profiling {
        true => {
            // The same compile as the benchmark's fused session (deterministic): its plan
            // has each kernel's bytes and flops, its graph the nodes' names.
            let compiled = smelt::compile_for(
                &graph,
                &smelt::optimize::Options::default(),
                smelt::kernel::Target::Cpu,
            )?;
            let peak =
                smelt_runtime::cpu::peak::measure(opts.threads, &smelt_runtime::cache::dir())?;
            let layer = |name: &str| scopes.get(name).map(|s| smelt::onnx::scopes::layer_of(s));
            Some(
                profile::build(&r, &compiled, peak, &layer)
                    .map_err(|e| Error::Runtime(smelt_runtime::Error::Codegen(e)))?,
            )
        }
        false => None,
    };
    // The files first: a failure to write them then prints only the error.
    let mut files = Vec::new();
    if let Some(path) = json {
        let mut doc = serde_json::to_value(&r).expect("reports serialize");
        if let (Some(p), Some(map)) = (&profiled, doc.as_object_mut()) {
            map.insert(
                "profile".into(),
                serde_json::to_value(p).expect("profiles serialize"),
            );
        }
        let text = serde_json::to_string_pretty(&doc).expect("reports serialize");
        files.push((path, (text + "\n").into_bytes()));
    }
    if let (Some(path), Some(p)) = (trace, &profiled) {
        files.push((path, profile::trace(&r, p).into_bytes()));
    }
    if let (Some(path), Some(p)) = (roofline, &profiled) {
        files.push((
            path,
            profile::roofline(p)
                .map_err(|e| Error::Runtime(smelt_runtime::Error::Codegen(e)))?
                .into_bytes(),
        ));
    }
    write_all(&files)?;
    outln!(
        "{}: {} runs, {} threads, device {}",
        model.model.display(),
        r.runs,
        r.threads,
        r.device
    );
    for (label, t) in [("fused", &r.fused), ("unfused", &r.unfused)] {
        outln!(
            "  {label:<8} median {:>10.3} ms   min {:>10.3} ms   {:>3} kernels   arena {:.3} MB",
            t.median_ms,
            t.min_ms,
            t.kernels,
            t.arena_bytes as f64 / 1e6
        );
    }
    outln!(
        "  fused / unfused (median): {:.3}",
        r.fused.median_ms / r.unfused.median_ms
    );
    outln!(
        "  compile: cold {:.1} ms, warm cache {:.1} ms",
        r.compile_cold_ms,
        r.compile_warm_ms
    );
    if timings {
        for (label, t) in [
            ("cold", &r.compile_cold_stages),
            ("warm", &r.compile_warm_stages),
        ] {
            outln!("  {label} compile stages:");
            for line in t.lines() {
                outln!("    {line}");
            }
        }
    }
    if let (true, Some(p)) = (show_profile, &profiled) {
        profile::print(p);
    }
    Ok(())
}
