//! The `smelt` command-line tool.

use clap::{Parser, Subcommand};
use smelt::onnx::{import_file, ImportOptions};
use smelt::{npy, Device, Error, Session, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `println!` that ends the process quietly when stdout is closed (`smelt inspect | head`)
/// instead of panicking on the broken pipe.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("error: writing to stdout: {e}");
            std::process::exit(1);
        }
    }};
}

#[derive(Parser)]
#[command(
    name = "smelt",
    version,
    about = "Compile and run deep-learning inference graphs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The model and the input shapes that fix its symbolic dims.
#[derive(clap::Args)]
struct ModelArgs {
    /// The ONNX model.
    model: PathBuf,
    /// Fix an input's shape, e.g. x=1x128 (needed for symbolic dims).
    #[arg(long = "shape", value_name = "NAME=AxB")]
    shapes: Vec<String>,
    /// Store f32 tensors as f16 or bf16 (kernels still compute in f32; inputs and outputs
    /// keep their declared types).
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16"])]
    dtype: String,
}

impl ModelArgs {
    /// Imports the model with the given shapes.
    fn load(&self) -> Result<smelt::Graph, Error> {
        let opts = ImportOptions {
            shapes: parse_shapes(&self.shapes)?,
            ..Default::default()
        };
        let graph = import_file(&self.model, &opts)?;
        let dtype = match self.dtype.as_str() {
            "f16" => smelt::DType::F16,
            "bf16" => smelt::DType::BF16,
            _ => return Ok(graph),
        };
        Ok(smelt::ir::with_storage(&graph, dtype)?)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run an ONNX model on .npy inputs and write each output to DIR/<name>.npy.
    Run {
        #[command(flatten)]
        model: ModelArgs,
        /// An input as NAME=FILE.npy (repeat for each input).
        #[arg(long = "input", value_name = "NAME=FILE.npy")]
        inputs: Vec<String>,
        /// Directory for the outputs ('/' in output names becomes '_').
        #[arg(long, value_name = "DIR")]
        output_dir: PathBuf,
        /// Where to run: cpu (default), interp (the reference interpreter) or cuda.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Run the unfused plan (one kernel per op).
        #[arg(long)]
        no_fuse: bool,
    },
    /// Compile an ONNX model and write DIR/plan.json (kernels, bytes, flops, arena).
    Compile {
        #[command(flatten)]
        model: ModelArgs,
        /// Directory for the outputs.
        #[arg(long, value_name = "DIR")]
        out_dir: PathBuf,
        /// The unfused baseline: one kernel per op.
        #[arg(long)]
        no_fuse: bool,
        /// Allow rewrites that change results beyond rounding (x*0 -> 0, reassociation).
        #[arg(long)]
        fast_math: bool,
        /// CUDA architectures of the cubins, comma-separated (NVRTC compiles each kernel for
        /// each when it is installed; plan.json reports the first's resources).
        #[arg(long, default_value = "sm_90")]
        arch: String,
        /// Also write an ahead-of-time bundle (plan, launches, weights, cubins for every
        /// --arch) that loads with no NVRTC.
        #[arg(long, value_name = "FILE")]
        bundle: Option<PathBuf>,
        /// Put a correctness check in the bundle: the reference interpreter's outputs on
        /// seeded random inputs, for `smelt gpu-check`.
        #[arg(long, requires = "bundle")]
        bundle_check: bool,
        /// Print (and write DIR/report.json) each kernel's modelled time on --gpu, and the
        /// plan's against the unfused plan's.
        #[arg(long)]
        report: bool,
        /// The GPU the report models (h100, a100).
        #[arg(long, default_value = "h100")]
        gpu: String,
    },
    /// Explain a compile: the kernels and their costs, the fusions not taken and why, and
    /// (with --dot) Graphviz of the graph before and after optimization.
    Inspect {
        #[command(flatten)]
        model: ModelArgs,
        /// Write DIR/before.dot and DIR/after.dot (fused kernels drawn as clusters).
        #[arg(long, value_name = "DIR")]
        dot: Option<PathBuf>,
        /// The unfused baseline: one kernel per op.
        #[arg(long)]
        no_fuse: bool,
    },
    /// Benchmark a model on the CPU backend: warm-up, then the median and fastest of N runs
    /// on fresh random inputs, fused and unfused, and compile time with a cold and a warm
    /// cache.
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        /// Where to run (cpu only for now).
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Timed runs per plan.
        #[arg(long, default_value_t = 50)]
        runs: usize,
        /// Untimed runs before timing.
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        /// Threads (default: $SMELT_THREADS, else every core).
        #[arg(long)]
        threads: Option<usize>,
        /// Also write the results as JSON to FILE.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Also time each kernel of the fused plan on its own.
        #[arg(long)]
        profile: bool,
    },
    /// On a GPU: load each bundle (no NVRTC), check its outputs against the ones it carries,
    /// audit host synchronizations, and time it (what scripts/gpu-check runs).
    GpuCheck {
        /// Bundles written by `smelt compile --bundle` (NAME.fused.smelt and NAME.unfused.smelt
        /// are paired into a fused / unfused ratio).
        #[arg(required = true)]
        bundles: Vec<PathBuf>,
        /// Timed runs per bundle.
        #[arg(long, default_value_t = 100)]
        runs: usize,
        /// Write the raw results as JSON to FILE.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// Import an ONNX model and print its IR in text form.
    Show {
        #[command(flatten)]
        model: ModelArgs,
        /// Print the graph after the optimizer (one line per pass goes to stderr).
        #[arg(long)]
        optimize: bool,
        /// Allow rewrites that change results beyond rounding (x*0 -> 0, reassociation).
        #[arg(long)]
        fast_math: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = e.to_string().replace('\n', " ");
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), Error> {
    match cli.command {
        Command::Run {
            model,
            inputs,
            output_dir,
            device,
            no_fuse,
        } => run_model(&model, &inputs, &output_dir, &device, !no_fuse),
        Command::Compile {
            model,
            out_dir,
            no_fuse,
            fast_math,
            arch,
            report,
            gpu,
            bundle,
            bundle_check,
        } => {
            let archs: Vec<String> = arch
                .split(',')
                .map(|a| a.trim().to_string())
                .filter(|a| !a.is_empty())
                .collect();
            if archs.is_empty() || archs.iter().any(|a| !a.starts_with("sm_")) {
                return Err(Error::Usage(format!(
                    "--arch {arch}: expected architectures like sm_80,sm_90"
                )));
            }
            let spec = smelt::schedule::gpu_model::gpu(&gpu).ok_or_else(|| {
                let known: Vec<&str> = smelt::schedule::gpu_model::GPUS
                    .iter()
                    .map(|g| g.name)
                    .collect();
                Error::Usage(format!(
                    "--gpu {gpu}: no model for it (known: {})",
                    known.join(", ")
                ))
            })?;
            let graph = model.load()?;
            // Optimized once; lowered and laid out once per target.
            let mut compiled = compile(&graph, fast_math, !no_fuse)?;
            let cpu = compiled.retarget(smelt::kernel::Target::Cpu)?;
            std::fs::create_dir_all(&out_dir).map_err(|e| io_error(&out_dir, e))?;
            let target = smelt::codegen::cuda::Cuda { fast_math };
            write_kernels(&mut compiled, &cpu, &out_dir, &archs, &target)?;
            if let Some(path) = &bundle {
                let b = smelt_runtime::cuda::bundle::Bundle::build_for(
                    &compiled,
                    &archs,
                    &smelt_runtime::cache::dir(),
                    &target,
                )?;
                let b = if bundle_check {
                    // gpu-check draws inputs by position in the bundle's input list.
                    let names = |g: &smelt::Graph| -> Vec<String> {
                        g.inputs.iter().map(|&i| g.nodes[i].name.clone()).collect()
                    };
                    if names(&graph) != names(&compiled.graph) {
                        return Err(Error::Usage(
                            "--bundle-check: optimizing changed the inputs; cannot attach a check"
                                .into(),
                        ));
                    }
                    let seed = 7;
                    let inputs = smelt::bench::random_inputs(&graph, seed);
                    let expected = smelt::interp::run(&graph, &inputs)?;
                    let reduced = graph
                        .nodes
                        .iter()
                        .any(|n| matches!(n.ty.dtype, smelt::DType::F16 | smelt::DType::BF16));
                    let (rtol, atol) = if reduced { (2e-2, 1e-2) } else { (1e-4, 1e-5) };
                    b.with_check(seed, &expected, rtol, atol)
                } else {
                    b
                };
                b.write(path)?;
                outln!(
                    "bundle: {} launches, cubins for {}, {:.3} MB -> {}",
                    b.manifest.launches.len(),
                    archs.join(","),
                    b.to_bytes().len() as f64 / 1e6,
                    path.display()
                );
            }
            let path = out_dir.join("plan.json");
            std::fs::write(&path, compiled.plan.to_json() + "\n")
                .map_err(|e| io_error(&path, e))?;
            let p = &compiled.plan;
            outln!(
                "{} kernels, {:.3} MB moved, arena {:.3} MB, weights {:.3} MB -> {}",
                p.launches,
                p.bytes_moved as f64 / 1e6,
                p.arena_bytes as f64 / 1e6,
                p.weight_bytes as f64 / 1e6,
                path.display()
            );
            if report {
                use smelt::schedule::gpu_model::estimate;
                let unfused = compile(&graph, fast_math, false)?;
                let (e, u) = (
                    estimate(&compiled.plan, spec),
                    estimate(&unfused.plan, spec),
                );
                outln!(
                    "modelled on {} ({:.1} TB/s, {:.0} TFLOP/s FP32, {:.0} TFLOP/s f16/bf16 tensor cores, {:.1} us/launch):",
                    spec.name,
                    spec.bandwidth / 1e12,
                    spec.fp32_flops / 1e12,
                    spec.tensor_flops / 1e12,
                    spec.launch * 1e6
                );
                for k in &e.kernels {
                    outln!("  {:>10.2} us  {:<8} {}", k.total_us, k.bound, k.name);
                }
                outln!(
                    "  total {:.2} us ({} launches); unfused {:.2} us ({} launches); fused / unfused {:.3}",
                    e.total_us,
                    e.kernels.len(),
                    u.total_us,
                    u.kernels.len(),
                    e.total_us / u.total_us
                );
                let json = serde_json::json!({
                    "model": "max(bytes / bandwidth, flops / peak) + launch (constants in compiler/src/schedule/gpu_model.rs, not measured)",
                    "plan": e,
                    "unfused": u,
                    "fused_over_unfused": e.total_us / u.total_us,
                });
                let rp = out_dir.join("report.json");
                let text =
                    serde_json::to_string_pretty(&json).map_err(|e| Error::Usage(e.to_string()))?;
                std::fs::write(&rp, text + "\n").map_err(|e| io_error(&rp, e))?;
            }
            Ok(())
        }
        Command::Inspect {
            model,
            dot,
            no_fuse,
        } => {
            let graph = model.load()?;
            let compiled = compile(&graph, false, !no_fuse)?;
            inspect(&graph, &compiled, dot.as_deref())
        }
        Command::Bench {
            model,
            device,
            runs,
            warmup,
            threads,
            json,
            profile,
        } => {
            let device: Device = device.parse()?;
            if device != Device::Cpu {
                return Err(Error::Usage(format!(
                    "smelt bench runs on --device cpu only (got {device})"
                )));
            }
            if runs == 0 {
                return Err(Error::Usage("--runs must be at least 1".into()));
            }
            let graph = model.load()?;
            let opts = smelt::bench::BenchOptions {
                runs,
                warmup,
                threads: threads
                    .filter(|&t| t > 0)
                    .unwrap_or_else(smelt_runtime::default_threads),
                progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
                profile,
            };
            let r = smelt::bench::bench(&graph, &opts)?;
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
            for (name, ms) in &r.kernels {
                outln!("    {ms:>10.4} ms  {name}");
            }
            if let Some(path) = json {
                let text =
                    serde_json::to_string_pretty(&r).map_err(|e| Error::Usage(e.to_string()))?;
                std::fs::write(&path, text + "\n").map_err(|e| io_error(&path, e))?;
            }
            Ok(())
        }
        Command::GpuCheck {
            bundles,
            runs,
            json,
        } => gpu_check(&bundles, runs, json.as_deref()),
        Command::Show {
            model,
            optimize,
            fast_math,
        } => {
            let graph = model.load()?;
            if optimize {
                outln!("{}", compile(&graph, fast_math, true)?.graph);
            } else {
                outln!("{graph}");
            }
            Ok(())
        }
    }
}

/// Writes `DIR/model.c` (the C backend's source: `cpu`'s program), `DIR/kernels/<kernel>.cu`
/// (the GPU program's), and, where NVRTC is installed, each kernel's PTX and cubin per
/// architecture in `archs`, recording the first architecture's registers and spills in the
/// plan (its kernels are the program's, in order).
fn write_kernels(
    compiled: &mut smelt::Compiled,
    cpu: &smelt::Compiled,
    out_dir: &Path,
    archs: &[String],
    target: &smelt::codegen::cuda::Cuda,
) -> Result<(), Error> {
    use smelt::schedule::CudaResources;
    let sources = smelt::codegen::cuda::render_for(target, &compiled.program)
        .map_err(|e| Error::Compiler(e.into()))?;
    let dir = out_dir.join("kernels");
    std::fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
    // The C backend's translation unit, as `--device cpu` compiles it.
    let c_src = smelt::codegen::c::render(&cpu.program).map_err(|e| Error::Compiler(e.into()))?;
    let c_path = out_dir.join("model.c");
    std::fs::write(&c_path, c_src).map_err(|e| io_error(&c_path, e))?;
    let nvrtc = smelt_runtime::cuda::nvrtc::version();
    if let Err(e) = &nvrtc {
        eprintln!("warning: CUDA sources written, no cubins: {e}");
    }
    for (planned, (name, src)) in compiled.plan.kernels.iter_mut().zip(&sources) {
        let path = dir.join(format!("{name}.cu"));
        std::fs::write(&path, src).map_err(|e| io_error(&path, e))?;
        if nvrtc.is_err() {
            continue;
        }
        for (i, arch) in archs.iter().enumerate() {
            let (out, _) = smelt_runtime::cuda::nvrtc::compile_cached(
                &format!("{name}.cu"),
                src,
                arch,
                &smelt_runtime::cache::dir(),
            )
            .map_err(|e| Error::Usage(e.to_string()))?;
            let cubin = dir.join(format!("{name}.{arch}.cubin"));
            std::fs::write(&cubin, &out.cubin).map_err(|e| io_error(&cubin, e))?;
            let ptx = smelt_runtime::cuda::nvrtc::compile_ptx(&format!("{name}.cu"), src, arch)
                .map_err(|e| Error::Usage(e.to_string()))?;
            let ptx_path = dir.join(format!("{name}.{arch}.ptx"));
            std::fs::write(&ptx_path, ptx).map_err(|e| io_error(&ptx_path, e))?;
            if i > 0 {
                continue;
            }
            let r = out
                .resources
                .first()
                .map(|(_, r)| r.clone())
                .unwrap_or_default();
            planned.cuda = Some(CudaResources {
                arch: arch.to_string(),
                source: format!("kernels/{name}.cu"),
                registers: r.registers,
                stack_bytes: r.stack_bytes,
                spill_bytes: r.spill_stores + r.spill_loads,
            });
        }
    }
    Ok(())
}

/// Optimizes and schedules, printing one line per optimizer pass to stderr.
fn compile(graph: &smelt::Graph, fast_math: bool, fuse: bool) -> Result<smelt::Compiled, Error> {
    let opts = smelt::optimize::Options {
        fast_math,
        fuse,
        ..Default::default()
    };
    let compiled = smelt::compile(graph, &opts)?;
    for line in compiled.report.lines() {
        eprintln!("{line}");
    }
    Ok(compiled)
}

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}

fn inspect(before: &smelt::Graph, c: &smelt::Compiled, dot: Option<&Path>) -> Result<(), Error> {
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
    if let Some(dir) = dot {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Usage(format!("{}: {e}", dir.display())))?;
        for (file, g) in [("before.dot", before), ("after.dot", &c.graph)] {
            let path = dir.join(file);
            std::fs::write(&path, explain::dot(g, file)).map_err(|e| io_error(&path, e))?;
            outln!("wrote {}", path.display());
        }
    }
    Ok(())
}

fn parse_shapes(args: &[String]) -> Result<BTreeMap<String, Vec<usize>>, Error> {
    let mut out = BTreeMap::new();
    for a in args {
        let (name, dims) = a
            .split_once('=')
            .ok_or_else(|| Error::Usage(format!("--shape '{a}': expected NAME=AxBxC")))?;
        let shape = if dims.is_empty() {
            vec![]
        } else {
            dims.split(['x', ','])
                .map(|d| d.trim().parse::<usize>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| {
                    Error::Usage(format!(
                        "--shape '{a}': dims must be non-negative integers like 2x32x64"
                    ))
                })?
        };
        if out.insert(name.to_string(), shape).is_some() {
            return Err(Error::Usage(format!("--shape names '{name}' twice")));
        }
    }
    Ok(out)
}

fn run_model(
    model: &ModelArgs,
    inputs: &[String],
    output_dir: &Path,
    device: &str,
    fuse: bool,
) -> Result<(), Error> {
    let device: Device = device.parse()?;
    let graph = model.load()?;
    let names: Vec<String> = graph
        .inputs
        .iter()
        .map(|&i| graph.nodes[i].name.clone())
        .collect();
    let mut feeds: HashMap<String, Tensor> = HashMap::new();
    for a in inputs {
        let (name, file) = a
            .split_once('=')
            .ok_or_else(|| Error::Usage(format!("--input '{a}': expected NAME=FILE.npy")))?;
        let Some(&id) = graph.inputs.iter().find(|&&i| graph.nodes[i].name == name) else {
            return Err(Error::Usage(format!(
                "--input '{name}': the model has no input of that name (inputs: {})",
                names.join(", ")
            )));
        };
        let t = npy::read(Path::new(file))?;
        let want = &graph.nodes[id].ty;
        if t.dtype() != want.dtype || t.shape() != want.shape.as_slice() {
            return Err(Error::Usage(format!(
                "--input {name}={file}: expected {want}, got {}",
                t.ty()
            )));
        }
        if feeds.insert(name.to_string(), t).is_some() {
            return Err(Error::Usage(format!("--input names '{name}' twice")));
        }
    }
    if let Some(missing) = names.iter().find(|n| !feeds.contains_key(*n)) {
        let id = graph.inputs[names.iter().position(|n| n == missing).expect("listed")];
        return Err(Error::Usage(format!(
            "missing --input {missing}=FILE.npy (expected {})",
            graph.nodes[id].ty
        )));
    }
    let opts = smelt_runtime::SessionOptions {
        optimize: smelt::optimize::Options {
            fuse,
            ..Default::default()
        },
        ..Default::default()
    };
    let session = Session::with_options(graph, device, &opts)?;
    let outputs = session.run(&feeds)?;
    std::fs::create_dir_all(output_dir).map_err(|e| io_error(output_dir, e))?;
    for (name, t) in &outputs {
        let path = output_dir.join(format!("{}.npy", name.replace('/', "_")));
        npy::write(&path, t)?;
        outln!("{} = {} -> {}", name, t.ty(), path.display());
    }
    Ok(())
}

/// `smelt gpu-check`: every bundle checked and timed on the GPU; fails when any check does.
fn gpu_check(bundles: &[PathBuf], runs: usize, json: Option<&Path>) -> Result<(), Error> {
    let dev = smelt_runtime::cuda::device::probe()
        .map_err(|why| Error::Runtime(smelt_runtime::Error::NoCudaDevice(why)))?;
    outln!(
        "{} ({}), {} bundles, {runs} runs each",
        dev.name,
        dev.arch(),
        bundles.len()
    );
    let mut results = Vec::new();
    let mut failed = Vec::new();
    for b in bundles {
        let r = smelt::gpu_check::check_bundle(b, runs)?;
        outln!(
            "  {:<44} load {:>8.2} ms  first {:>8.3} ms  median {:>9.4} ms  min {:>9.4} ms  device median {:>9.4} ms  syncs/run {:.2}  check {}",
            r.bundle,
            r.load_ms,
            r.first_run_ms,
            r.median_ms,
            r.min_ms,
            r.device_median_ms,
            r.syncs_per_run,
            r.check
        );
        match &r.first_request {
            Some(f) => outln!(
                "    first request: cold {:.1} ms (NVRTC {:.1}), warm cache {:.1} ms (cache {:.1}), bundle {:.1} ms",
                f.cold_ms,
                f.cold_compile_ms,
                f.warm_ms,
                f.warm_compile_ms,
                f.bundle_ms
            ),
            None if r.first_request_note != "fused bundles only" => {
                outln!("    first request without the bundle: not measured ({})", r.first_request_note)
            }
            None => {}
        }
        match r.kernels_only_device_ms {
            Some(k) => outln!(
                "    {} cuBLASLt calls; own kernels instead {k:.4} ms on the device; with cuBLASLt / own kernels {:.3}",
                r.library_calls,
                r.device_median_ms / k
            ),
            None if !r.library_note.is_empty() => {
                outln!("    cuBLASLt not used: {}", r.library_note)
            }
            None => {}
        }
        match r.cublas_ms {
            Some(c) => outln!(
                "    cuBLAS {c:.4} ms on the device; smelt / cuBLAS {:.3}",
                r.device_median_ms / c
            ),
            None if !r.cublas_note.is_empty() => {
                outln!("    cuBLAS: not measured ({})", r.cublas_note)
            }
            None => {}
        }
        if (r.check != "ok" && r.check != "no check") || r.syncs_per_run != 1.0 {
            failed.push(r.bundle.clone());
        }
        results.push(r);
    }
    let mut ratios = Vec::new();
    for r in &results {
        if let Some(stem) = r.bundle.strip_suffix(".fused.smelt") {
            let unfused = format!("{stem}.unfused.smelt");
            if let Some(u) = results.iter().find(|x| x.bundle == unfused) {
                let (wall, device) = (
                    r.median_ms / u.median_ms,
                    r.device_median_ms / u.device_median_ms,
                );
                outln!("  {stem}: fused / unfused {wall:.3} (run), {device:.3} (device)");
                ratios.push(serde_json::json!({"model": stem, "run": wall, "device": device}));
            }
        }
    }
    if let Some(path) = json {
        let v = serde_json::json!({
            "device": dev.name,
            "arch": dev.arch(),
            "commit": std::env::var("SMELT_COMMIT").unwrap_or_else(|_| "unknown".into()),
            "runs": runs,
            "timing": "median_ms/min_ms: host wall clock per run (inputs staged and copied in, CUDA graph replayed, outputs read back, one sync); device_*: CUDA events around the graph replay",
            "results": results,
            "fused_over_unfused": ratios,
        });
        let text = serde_json::to_string_pretty(&v).map_err(|e| Error::Usage(e.to_string()))?;
        std::fs::write(path, text + "\n").map_err(|e| io_error(path, e))?;
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "gpu-check failed for {}",
            failed.join(", ")
        )))
    }
}
