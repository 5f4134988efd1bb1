//! `smelt gpu-check BUNDLE...`: what `scripts/gpu-check` runs on a GPU machine, with no Rust,
//! no NVRTC and no network: each bundle is loaded (timed), its outputs are poisoned, it runs
//! on the inputs its check names and must give the expected outputs, a run must make exactly
//! one host synchronization (when the outputs are read), and then it is timed. Bundles
//! named `NAME.fused.smelt` and `NAME.unfused.smelt` are paired into a fused ÷ unfused ratio.

use crate::{zoo, Error, Tensor};
use smelt_runtime::cuda::bundle::Bundle;
use smelt_runtime::cuda::executor::CudaModel;
use std::collections::HashMap;
use std::path::Path;
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
    /// Host synchronizations per run (must be 1).
    pub syncs_per_run: f64,
    /// `ok`, `no check`, or what differed.
    pub check: String,
}

fn inputs_of(model: &CudaModel, seed: u64) -> HashMap<String, Tensor> {
    model
        .inputs()
        .into_iter()
        .enumerate()
        .map(|(k, (name, dtype, shape))| {
            let t = zoo::random_tensor(dtype, &shape, seed * 1000 + k as u64);
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
            *g == w || (g - w).abs() <= atol + rtol * w.abs()
        };
        if !ok {
            return Err(format!("element {i}: got {g}, expected {w}"));
        }
    }
    Ok(())
}

/// Checks and times one bundle.
pub fn check_bundle(path: &Path, runs: usize) -> Result<BundleResult, Error> {
    let start = Instant::now();
    let bundle = Bundle::read(path)?;
    let model = CudaModel::load(&bundle)?;
    let load_ms = start.elapsed().as_secs_f64() * 1e3;
    let check = bundle.manifest.check.clone();
    let inputs = inputs_of(&model, check.as_ref().map_or(1, |c| c.seed));
    model.poison_outputs()?;
    let t = Instant::now();
    let got = model.run(&inputs)?;
    let first_run_ms = t.elapsed().as_secs_f64() * 1e3;
    let verdict = match &check {
        None => "no check".to_string(),
        Some(c) => {
            let mut v = "ok".to_string();
            if c.expected.len() != got.len() {
                v = format!("{} outputs, expected {}", got.len(), c.expected.len());
            }
            for (name, blob) in &c.expected {
                let Some((_, g)) = got.iter().find(|(n, _)| n == name) else {
                    v = format!("no output named {name}");
                    break;
                };
                let want = Tensor::from_le_bytes(g.dtype(), g.shape().to_vec(), bundle.blob(blob))
                    .ok_or_else(|| {
                        Error::Usage(format!("{name}: expected output has the wrong size"))
                    })?;
                if let Err(e) = compare(g, &want, c.rtol, c.atol) {
                    v = format!("output {name}: {e}");
                    break;
                }
            }
            v
        }
    };
    for _ in 0..3 {
        model.run(&inputs)?;
    }
    let before = model.host_syncs();
    let mut ms = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        std::hint::black_box(model.run(&inputs)?);
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let syncs_per_run = (model.host_syncs() - before) as f64 / ms.len() as f64;
    ms.sort_by(f64::total_cmp);
    Ok(BundleResult {
        bundle: path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default(),
        load_ms,
        first_run_ms,
        median_ms: ms[ms.len() / 2],
        min_ms: ms[0],
        syncs_per_run,
        check: verdict,
    })
}
