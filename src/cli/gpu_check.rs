//! `smelt gpu-check BUNDLE...`: what `scripts/gpu-check` runs on a GPU machine, with no Rust,
//! no NVRTC and no network: each bundle is loaded (timed), its outputs are poisoned, it runs
//! on the inputs its check names and must give the expected outputs, a run must make exactly
//! one host synchronization (when the outputs are read), and then it is timed: host wall
//! clock per run, and the kernels alone between CUDA events. Bundles named
//! `NAME.fused.smelt` and `NAME.unfused.smelt` are paired into a fused ÷ unfused ratio. For
//! fused bundles, where the machine has NVRTC after all, a first request is also timed from
//! the carried sources (cold and warm cubin cache) against the bundle's load.

use super::{io_error, outln, Error};
use smelt::Tensor;
use smelt_runtime::cuda::bundle::Bundle;
use smelt_runtime::cuda::executor::{CudaModel, Products};
use std::collections::HashMap;
use std::path::Path;
use std::path::PathBuf;
use std::time::Instant;

/// One bundle's results.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BundleResult {
    /// File name.
    pub bundle: String,
    /// Milliseconds to read the bundle and load it onto the GPU (no NVRTC).
    pub load_ms: f64,
    /// Milliseconds of the first run (graph capture included).
    pub first_run_ms: f64,
    /// Median milliseconds of a run (inputs copied in, graph replayed, outputs read).
    pub median_ms: f64,
    /// Fastest run.
    pub min_ms: f64,
    /// Median milliseconds of the kernels on the device (CUDA events around the graph
    /// replay): the run without its copies and host overhead.
    pub device_median_ms: f64,
    /// Fastest device time.
    pub device_min_ms: f64,
    /// Host synchronizations per run (must be 1).
    pub syncs_per_run: f64,
    /// `ok`, `no check`, or what differed (also checked: the plan with its own kernels in
    /// place of cuBLASLt calls).
    pub check: String,
    /// Launches made as cuBLASLt calls.
    pub library_calls: usize,
    /// Why launches with a cuBLASLt form ran their kernel instead (empty if none did).
    pub library_note: String,
    /// With cuBLASLt calls: the median device milliseconds of the same plan running its own
    /// kernels instead.
    pub kernels_only_device_ms: Option<f64>,
    /// First-request latency without the bundle's cubins (fused bundles only), when NVRTC
    /// is on this machine.
    pub first_request: Option<FirstRequest>,
    /// Why `first_request` is missing, if it is.
    pub first_request_note: String,
    /// For a plain product bundle (`gemm_MxKxN[_f16].fused.smelt`): cuBLAS's median device
    /// milliseconds on the same shape and dtype.
    pub cublas_ms: Option<f64>,
    /// Why `cublas_ms` is missing, if the bundle is a plain product.
    pub cublas_note: String,
}

/// The (m, k, n, dtype) of a plain product bundle's name: `gemm_64x1024x4096_f16.fused.smelt`.
pub fn gemm_shape(bundle: &str) -> Option<(usize, usize, usize, smelt::DType)> {
    let stem = bundle.strip_suffix(".fused.smelt")?.strip_prefix("gemm_")?;
    let (dims, dtype) = match stem.strip_suffix("_f16") {
        Some(d) => (d, smelt::DType::F16),
        None => (stem, smelt::DType::F32),
    };
    let v: Vec<usize> = dims
        .split('x')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    match v[..] {
        [m, k, n] => Some((m, k, n, dtype)),
        _ => None,
    }
}

/// What a first request costs, from the bundle's plan to the first outputs, in
/// milliseconds, each measured with the CUDA context already alive: compiling the carried
/// sources with NVRTC through an empty cubin cache (cold) and through the filled one
/// (warm), against reading and loading the bundle's cubins (no NVRTC at all). Each includes
/// loading the modules, uploading the weights and the first run (graph capture included).
#[derive(Clone, Debug, serde::Serialize)]
pub struct FirstRequest {
    /// Cold: NVRTC compiles every kernel.
    pub cold_ms: f64,
    /// Of which compiling.
    pub cold_compile_ms: f64,
    /// Warm: every cubin from the disk cache.
    pub warm_ms: f64,
    /// Of which reading the cache.
    pub warm_compile_ms: f64,
    /// The bundle file: read, load, first run.
    pub bundle_ms: f64,
}

/// Times a first request through NVRTC, cold then warm (see [`FirstRequest`]).
fn first_request(
    path: &Path,
    bundle: &Bundle,
    arch: &str,
    inputs: &HashMap<String, Tensor>,
) -> Result<FirstRequest, String> {
    // The bundle the same way (context alive), for a like-for-like comparison.
    let t = Instant::now();
    let model = Bundle::read(path)
        .and_then(|b| CudaModel::load(&b))
        .map_err(|e| e.to_string())?;
    model.run(inputs).map_err(|e| e.to_string())?;
    let bundle_ms = t.elapsed().as_secs_f64() * 1e3;
    drop(model);
    let dir = std::env::temp_dir().join(format!("smelt-gpu-check-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let pass = || -> Result<(f64, f64), String> {
        let t = Instant::now();
        let (b, _) = bundle.recompiled(arch, &dir).map_err(|e| e.to_string())?;
        let compile_ms = t.elapsed().as_secs_f64() * 1e3;
        let model = CudaModel::load(&b).map_err(|e| e.to_string())?;
        model.run(inputs).map_err(|e| e.to_string())?;
        Ok((t.elapsed().as_secs_f64() * 1e3, compile_ms))
    };
    let cold = pass();
    let warm = cold.as_ref().map_err(Clone::clone).and_then(|_| pass());
    let _ = std::fs::remove_dir_all(&dir);
    let ((cold_ms, cold_compile_ms), (warm_ms, warm_compile_ms)) = (cold?, warm?);
    Ok(FirstRequest {
        cold_ms,
        cold_compile_ms,
        warm_ms,
        warm_compile_ms,
        bundle_ms,
    })
}

fn inputs_of(model: &CudaModel, seed: u64) -> HashMap<String, Tensor> {
    model
        .inputs()
        .into_iter()
        .enumerate()
        .map(|(k, (name, dtype, shape))| {
            let t = Tensor::random(dtype, &shape, seed * 1000 + k as u64);
            (name, t)
        })
        .collect()
}

fn compare(got: &Tensor, want: &Tensor, rtol: f64, atol: f64) -> Result<(), String> {
    if got.shape() != want.shape() || got.dtype() != want.dtype() {
        return Err(format!("got {}, expected {}", got.ty(), want.ty()));
    }
    for (i, (g, w)) in got.to_f64().iter().zip(want.to_f64()).enumerate() {
        let ok = if w.is_nan() {
            g.is_nan()
        } else {
            // An infinity must match exactly (|g - inf| <= rtol·inf would pass anything).
            *g == w || (w.is_finite() && (g - w).abs() <= atol + rtol * w.abs())
        };
        if !ok {
            return Err(format!("element {i}: got {g}, expected {w}"));
        }
    }
    Ok(())
}

/// One run with the outputs poisoned first: the outputs and the run's milliseconds.
fn poisoned_run(
    model: &CudaModel,
    inputs: &HashMap<String, Tensor>,
) -> Result<(Vec<(String, Tensor)>, f64), Error> {
    model.poison_outputs()?;
    let t = Instant::now();
    let got = model.run(inputs)?;
    Ok((got, t.elapsed().as_secs_f64() * 1e3))
}

/// A run's outputs against the bundle's expected ones: `ok`, `no check`, or what differed.
fn verdict(bundle: &Bundle, got: &[(String, Tensor)]) -> Result<String, Error> {
    let Some(c) = &bundle.manifest.check else {
        return Ok("no check".to_string());
    };
    if c.expected.len() != got.len() {
        return Ok(format!(
            "{} outputs, expected {}",
            got.len(),
            c.expected.len()
        ));
    }
    for (name, blob) in &c.expected {
        let Some((_, g)) = got.iter().find(|(n, _)| n == name) else {
            return Ok(format!("no output named {name}"));
        };
        let want = Tensor::from_le_bytes(g.dtype(), g.shape().to_vec(), bundle.blob(blob))
            .ok_or_else(|| Error::Usage(format!("{name}: expected output has the wrong size")))?;
        if let Err(e) = compare(g, &want, c.rtol, c.atol) {
            return Ok(format!("output {name}: {e}"));
        }
    }
    Ok("ok".to_string())
}

/// Sorted host and device milliseconds of `runs` runs after 3 untimed ones, and host
/// synchronizations per run.
fn time_runs(
    model: &CudaModel,
    inputs: &HashMap<String, Tensor>,
    runs: usize,
) -> Result<(Vec<f64>, Vec<f64>, f64), Error> {
    for _ in 0..3 {
        model.run(inputs)?;
    }
    let before = model.host_syncs();
    let mut ms = Vec::with_capacity(runs);
    let mut device_ms = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        std::hint::black_box(model.run(inputs)?);
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        device_ms.push(model.last_device_ms());
    }
    let syncs_per_run = (model.host_syncs() - before) as f64 / ms.len() as f64;
    ms.sort_by(f64::total_cmp);
    device_ms.sort_by(f64::total_cmp);
    Ok((ms, device_ms, syncs_per_run))
}

/// Checks and times one bundle.
pub fn check_bundle(path: &Path, runs: usize) -> Result<BundleResult, Error> {
    let start = Instant::now();
    let bundle = Bundle::read(path)?;
    let model = CudaModel::load(&bundle)?;
    let load_ms = start.elapsed().as_secs_f64() * 1e3;
    let seed = bundle.manifest.check.as_ref().map_or(1, |c| c.seed);
    let inputs = inputs_of(&model, seed);
    let (got, first_run_ms) = poisoned_run(&model, &inputs)?;
    let mut check = verdict(&bundle, &got)?;
    let (ms, device_ms, syncs_per_run) = time_runs(&model, &inputs, runs)?;
    let library_calls = model.cublas_calls();
    let mut library_note = model.cublas_note().to_string();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let (first_request, first_request_note) = if !name.ends_with(".fused.smelt") {
        (None, "fused bundles only".to_string())
    } else {
        let arch = model.device().arch();
        match first_request(path, &bundle, &arch, &inputs) {
            Ok(f) => (Some(f), "ok".to_string()),
            Err(why) => (None, why),
        }
    };
    // cuBLAS on the operands smelt's product just ran on.
    let (cublas_ms, cublas_note) = match gemm_shape(&name) {
        Some((m, k, n, d)) => match (inputs.get("a"), inputs.get("b")) {
            (Some(a), Some(b)) if a.shape() == [m, k] && b.shape() == [k, n] && a.dtype() == d => {
                match smelt_runtime::cuda::cublas::time_gemm(a, b, runs) {
                    Ok(ms) => (Some(ms), "ok".to_string()),
                    Err(why) => (None, why),
                }
            }
            _ => (
                None,
                format!("its inputs are not a: {m}x{k} and b: {k}x{n} of {d}"),
            ),
        },
        None => (None, String::new()),
    };
    // Launches made as cuBLASLt calls: the same plan with its own kernels instead, checked
    // and timed the same way (the first model's memory freed first).
    drop(model);
    let mut kernels_only = None;
    if library_calls > 0 {
        let own = (|| -> Result<(String, f64), Error> {
            let k = CudaModel::load_with(&bundle, Products::Kernels)?;
            let (got, _) = poisoned_run(&k, &inputs)?;
            let v = verdict(&bundle, &got)?;
            let (_, kd, _) = time_runs(&k, &inputs, runs)?;
            Ok((v, kd[kd.len() / 2]))
        })();
        match own {
            Ok((v, ms)) => {
                if v != "ok" && v != "no check" && check == "ok" {
                    check = format!("own kernels: {v}");
                }
                kernels_only = Some(ms);
            }
            Err(e) => library_note = format!("own kernels not measured: {e}"),
        }
    }
    Ok(BundleResult {
        bundle: name,
        load_ms,
        first_run_ms,
        median_ms: ms[ms.len() / 2],
        min_ms: ms[0],
        device_median_ms: device_ms[device_ms.len() / 2],
        device_min_ms: device_ms[0],
        syncs_per_run,
        check,
        library_calls,
        library_note,
        kernels_only_device_ms: kernels_only,
        first_request,
        first_request_note,
        cublas_ms,
        cublas_note,
    })
}

/// On a GPU: load each bundle (no NVRTC), check its outputs against the ones it carries,
/// audit host synchronizations, and time it (what scripts/gpu-check runs).
#[derive(clap::Args)]
pub struct Args {
    /// Bundles written by `smelt compile --bundle` (NAME.fused.smelt and NAME.unfused.smelt
    /// are paired into a fused / unfused ratio).
    #[arg(required = true)]
    pub bundles: Vec<PathBuf>,
    /// Timed runs per bundle.
    #[arg(long, default_value_t = 100)]
    pub runs: usize,
    /// Write the raw results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

/// `smelt gpu-check`: every bundle checked and timed on the GPU; fails when any check does.
pub fn run(args: Args) -> Result<(), Error> {
    let (bundles, runs, json) = (&args.bundles, args.runs, args.json.as_deref());
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
        let r = check_bundle(b, runs)?;
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
        let text = serde_json::to_string_pretty(&v).expect("reports serialize");
        std::fs::write(path, text + "\n").map_err(|e| io_error(path, e))?;
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::Failed(format!(
            "gpu-check failed for {}",
            failed.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::gemm_shape;
    use smelt::DType;

    /// gpu-check reads a plain product's shape and dtype from its bundle's name (fused ones
    /// only).
    #[test]
    fn gemm_bundle_names() {
        assert_eq!(
            gemm_shape("gemm_64x1024x4096_f16.fused.smelt"),
            Some((64, 1024, 4096, DType::F16))
        );
        assert_eq!(
            gemm_shape("gemm_8x16x32.fused.smelt"),
            Some((8, 16, 32, DType::F32))
        );
        for other in [
            "gemm_8x16x32.unfused.smelt",
            "gemm_8x16.fused.smelt",
            "gemm_8xAx32.fused.smelt",
            "mlp_gelu.fused.smelt",
        ] {
            assert_eq!(gemm_shape(other), None, "{other}");
        }
    }
}
