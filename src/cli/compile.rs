//! `smelt compile`: the optimized graph laid out once per target, written as `plan.json`
//! (the GPU program) and `model.c` (the CPU program); with `--cuda` (or `--arch`, or
//! `--bundle`) also the CUDA sources, their PTX and cubins (NVRTC on every core), and
//! optionally a bundle; `--report` models the plan on a GPU; `--timings` says where the
//! time went.

use super::transcript::Transcript;
use super::write_all::{check_destination, write_all};
use super::{compile_gpu, Error, ModelArgs};
use std::path::{Path, PathBuf};

/// Compile an ONNX model and write DIR/plan.json (kernels, bytes, flops, arena).
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Directory for the outputs.
    #[arg(long, value_name = "DIR")]
    pub out_dir: PathBuf,
    /// The unfused baseline: one kernel per op.
    #[arg(long)]
    pub no_fuse: bool,
    /// Allow rewrites that change results beyond rounding (x*0 -> 0, reassociation).
    #[arg(long)]
    pub fast_math: bool,
    /// Also write the CUDA sources and, where NVRTC is installed, each kernel's PTX and
    /// cubin (for --arch, default sm_90; plan.json then reports the first's registers).
    #[arg(long)]
    pub cuda: bool,
    /// CUDA architectures of the cubins, comma-separated (implies --cuda).
    #[arg(long)]
    pub arch: Option<String>,
    /// Print where the time went, stage by stage, to stderr.
    #[arg(long)]
    pub timings: bool,
    /// Also write an ahead-of-time bundle (plan, launches, weights, cubins for every
    /// --arch) that loads with no NVRTC.
    #[arg(long, value_name = "FILE")]
    pub bundle: Option<PathBuf>,
    /// Put a correctness check in the bundle: the reference interpreter's outputs on
    /// seeded random inputs, for `smelt gpu-check`.
    #[arg(long, requires = "bundle")]
    pub bundle_check: bool,
    /// Print (and write DIR/report.json) each kernel's modelled time on --gpu, and the
    /// plan's against the unfused plan's.
    #[arg(long)]
    pub report: bool,
    /// The GPU the report models (h100, a100).
    #[arg(long, default_value = "h100")]
    pub gpu: String,
}

/// Compiles and writes every artifact.
pub fn run(args: Args) -> Result<(), Error> {
    let Args {
        model,
        out_dir,
        no_fuse,
        fast_math,
        cuda,
        arch,
        timings,
        report,
        gpu,
        bundle,
        bundle_check,
    } = args;
    let cuda = cuda || arch.is_some() || bundle.is_some();
    let arch = arch.unwrap_or_else(|| "sm_90".into());
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
    // Refuse unwritable destinations now, not after the compile.
    check_destination(&out_dir, true, "--out-dir")?;
    if let Some(path) = &bundle {
        check_destination(path, false, "--bundle")?;
    }
    // Everything is computed first and written at the end, all or nothing; what the
    // command says is printed only once it has succeeded.
    let mut say = Transcript::default();
    let mut files: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    let mut times = smelt::timings::Timings::default();
    let graph = times.time("import", || model.load())?;
    // Optimized once; lowered and laid out once per target.
    let mut compiled = compile_gpu(&graph, fast_math, !no_fuse, &mut say)?;
    times.extend(&compiled.timings);
    let cpu = compiled.retarget(smelt::kernel::Target::Cpu)?;
    times.extend(&cpu.timings);
    let c_src = times
        .time("render c", || smelt::codegen::c::render(&cpu.program))
        .map_err(|e| Error::Compiler(e.into()))?;
    files.push((out_dir.join("model.c"), c_src.into_bytes()));
    let target = smelt::codegen::cuda::Cuda { fast_math };
    if cuda {
        files.extend(cuda_files(
            &mut compiled,
            &out_dir,
            &archs,
            &target,
            &mut times,
            &mut say,
        )?);
    }
    if let Some(path) = &bundle {
        let b = times.time("bundle", || {
            smelt_runtime::cuda::bundle::Bundle::build_for(
                &compiled,
                &archs,
                &smelt_runtime::cache::dir(),
                &target,
            )
        })?;
        let b = if bundle_check {
            // gpu-check draws inputs by position in the bundle's input list.
            let names = |g: &smelt::Graph| -> Vec<String> {
                g.inputs.iter().map(|&i| g.nodes[i].name.clone()).collect()
            };
            if names(&graph) != names(&compiled.graph) {
                return Err(Error::Usage(
                    "--bundle-check: optimizing changed the inputs; cannot attach a check".into(),
                ));
            }
            let seed = 7;
            let inputs = graph.random_inputs(seed);
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
        let bytes = b.to_bytes();
        say.out(format!(
            "bundle: {} launches, cubins for {}, {:.3} MB -> {}",
            b.manifest.launches.len(),
            archs.join(","),
            bytes.len() as f64 / 1e6,
            path.display()
        ));
        files.push((path.clone(), bytes));
    }
    let path = out_dir.join("plan.json");
    files.push((path.clone(), (compiled.plan.to_json() + "\n").into_bytes()));
    let p = &compiled.plan;
    say.out(format!(
        "{} kernels, {:.3} MB moved, arena {:.3} MB, weights {:.3} MB -> {}",
        p.launches,
        p.bytes_moved as f64 / 1e6,
        p.arena_bytes as f64 / 1e6,
        p.weight_bytes as f64 / 1e6,
        path.display()
    ));
    if timings {
        for line in times.lines() {
            say.err(line);
        }
    }
    if report {
        use smelt::schedule::gpu_model::estimate;
        let unfused = compile_gpu(&graph, fast_math, false, &mut say)?;
        let (e, u) = (
            estimate(&compiled.plan, spec),
            estimate(&unfused.plan, spec),
        );
        say.out(format!(
            "modelled on {} ({:.1} TB/s, {:.0} TFLOP/s FP32, {:.0} TFLOP/s f16/bf16 tensor cores, {:.1} us/launch):",
            spec.name,
            spec.bandwidth / 1e12,
            spec.fp32_flops / 1e12,
            spec.tensor_flops / 1e12,
            spec.launch * 1e6
        ));
        for k in &e.kernels {
            say.out(format!(
                "  {:>10.2} us  {:<8} {}",
                k.total_us, k.bound, k.name
            ));
        }
        say.out(format!(
            "  total {:.2} us ({} launches); unfused {:.2} us ({} launches); fused / unfused {:.3}",
            e.total_us,
            e.kernels.len(),
            u.total_us,
            u.kernels.len(),
            e.total_us / u.total_us
        ));
        let json = serde_json::json!({
            "model": "max(bytes / bandwidth, flops / peak) + launch (constants in compiler/src/schedule/gpu_model.rs, not measured)",
            "plan": e,
            "unfused": u,
            "fused_over_unfused": e.total_us / u.total_us,
        });
        let text = serde_json::to_string_pretty(&json).expect("reports serialize");
        files.push((out_dir.join("report.json"), (text + "\n").into_bytes()));
    }
    write_all(&files)?;
    say.print();
    Ok(())
}

/// The files `DIR/kernels/<function>.cu` (the GPU program's distinct functions: kernels
/// that differ only in their buffers share one) and, where NVRTC is installed, each
/// function's PTX and cubin per architecture in `archs` (every function on every core,
/// through the cache), recording in each planned kernel its function and the first
/// architecture's registers and spills.
fn cuda_files(
    compiled: &mut smelt::Compiled,
    out_dir: &Path,
    archs: &[String],
    target: &smelt::codegen::cuda::Cuda,
    times: &mut smelt::timings::Timings,
    say: &mut Transcript,
) -> Result<Vec<(PathBuf, Vec<u8>)>, Error> {
    use smelt::schedule::CudaResources;
    use smelt_runtime::cuda::nvrtc;
    let module = times
        .time("render cuda", || {
            smelt::codegen::cuda::render_module(target, &compiled.program)
        })
        .map_err(|e| Error::Compiler(e.into()))?;
    let dir = out_dir.join("kernels");
    let mut files: Vec<(PathBuf, Vec<u8>)> = module
        .functions
        .iter()
        .map(|f| {
            let path = dir.join(format!("{}.cu", f.name));
            (path, f.source.clone().into_bytes())
        })
        .collect();
    if let Err(e) = nvrtc::version() {
        say.err(format!("warning: CUDA sources written, no cubins: {e}"));
        return Ok(files);
    }
    let cache = smelt_runtime::cache::dir();
    let jobs: Vec<(&smelt::codegen::cuda::Function, &str)> = module
        .functions
        .iter()
        .flat_map(|f| archs.iter().map(move |a| (f, a.as_str())))
        .collect();
    let built = times.time("nvrtc", || {
        smelt_compiler::parallel::map(&jobs, |&(f, arch)| {
            let file = format!("{}.cu", f.name);
            let cubin = nvrtc::compile_cached(&file, &f.source, arch, &cache)?;
            let ptx = nvrtc::compile_ptx_cached(&file, &f.source, arch, &cache)?;
            Ok::<_, nvrtc::NvrtcError>((cubin.0, ptx))
        })
    });
    let mut resources = vec![None; module.functions.len()];
    for (j, (&(f, arch), result)) in jobs.iter().zip(built).enumerate() {
        let (out, ptx) = result?;
        let name = &f.name;
        files.push((dir.join(format!("{name}.{arch}.cubin")), out.cubin.to_vec()));
        files.push((dir.join(format!("{name}.{arch}.ptx")), ptx.into_bytes()));
        if arch == archs[0] {
            let r = out
                .resources
                .first()
                .map(|(_, r)| r.clone())
                .unwrap_or_default();
            // Job j is function j / archs.len() for architecture j % archs.len().
            resources[j / archs.len()] = Some(CudaResources {
                arch: arch.to_string(),
                function: name.clone(),
                source: format!("kernels/{name}.cu"),
                registers: r.registers,
                stack_bytes: r.stack_bytes,
                spill_bytes: r.spill_stores + r.spill_loads,
            });
        }
    }
    let of: std::collections::HashMap<&str, usize> = compiled
        .program
        .kernels
        .iter()
        .zip(&module.of)
        .map(|(k, &fi)| (k.name.as_str(), fi))
        .collect();
    for k in &mut compiled.plan.kernels {
        k.cuda = of
            .get(k.name.as_str())
            .and_then(|&fi| resources[fi].clone());
    }
    Ok(files)
}
