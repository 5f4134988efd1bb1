//! `smelt bench`: the model timed fused and unfused on the C backend (the harness in
//! [`super::harness`]).

use super::write_all::{check_destination, write_all};
use super::{harness, outln, Error, ModelArgs};
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
    /// Also time each kernel of the fused plan on its own.
    #[arg(long)]
    pub profile: bool,
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
        profile,
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
    if let Some(path) = &json {
        check_destination(path, false, "--json")?;
    }
    let graph = model.load()?;
    let opts = harness::BenchOptions {
        runs,
        warmup,
        threads: threads
            .filter(|&t| t > 0)
            .unwrap_or_else(smelt_runtime::default_threads),
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        profile,
    };
    let r = harness::bench(&graph, &opts)?;
    // The JSON first: a failure to write it then prints only the error.
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&r).expect("reports serialize");
        write_all(&[(path, (text + "\n").into_bytes())])?;
    }
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
    for (name, ms) in &r.kernels {
        outln!("    {ms:>10.4} ms  {name}");
    }
    Ok(())
}
