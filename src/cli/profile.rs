//! What `smelt bench --profile` says about each kernel of the fused plan: its time and share
//! of the run, the bytes it moves and the flops it does (the plan's own counts), the rates it
//! achieves, which of the machine's peaks bounds it (the roofline) and what fraction of that
//! peak it reaches; kernels sorted by time, then the same by layer (the exporter's module
//! names, as `smelt inspect` groups them). `--trace FILE` writes the compile stages and every
//! profiled run's kernels in the Chrome trace-event format (Perfetto, chrome://tracing), and
//! `--roofline FILE` draws every kernel on the machine's roofline as SVG.

use super::harness::BenchReport;
use super::outln;
use smelt_runtime::cpu::peak::{Bound, Peak};
use std::collections::BTreeMap;

/// One kernel of the profile.
#[derive(Clone, Debug, serde::Serialize)]
pub struct KernelRow {
    /// The plan's kernel name (`k12_gemm`).
    pub name: String,
    /// The layer it belongs to (`(unattributed)` without module names).
    pub layer: String,
    /// What it is: the plan's kind and the ops it covers.
    pub what: String,
    /// Median milliseconds.
    pub ms: f64,
    /// Fraction of the sum of all kernels' medians.
    pub share: f64,
    /// Bytes read + written.
    pub bytes: u64,
    /// Floating-point operations.
    pub flops: u64,
    /// Achieved GB/s.
    pub gbps: f64,
    /// Achieved GFLOP/s.
    pub gflops: f64,
    /// The peak that bounds it.
    pub bound: Bound,
    /// Its roofline time over its measured time, in percent.
    pub peak_pct: f64,
}

/// The whole profile.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Profile {
    /// The machine's peaks it is measured against.
    pub peak: Peak,
    /// Profiled runs (each kernel's time is its median over them).
    pub runs: usize,
    /// Every kernel, in launch order.
    pub kernels: Vec<KernelRow>,
}

/// The profile of `report`'s profiled runs of `compiled` (the fused plan the benchmark ran:
/// the same kernels in the same order), each kernel in the layer `layer` names for its
/// original nodes.
pub fn build(
    report: &BenchReport,
    compiled: &smelt::Compiled,
    peak: Peak,
    layer: &dyn Fn(&str) -> Option<String>,
) -> Result<Profile, String> {
    let plan = &compiled.plan;
    if plan.kernels.len() != report.kernels.len()
        || plan
            .kernels
            .iter()
            .zip(&report.kernels)
            .any(|(k, (n, _))| &k.name != n)
    {
        return Err("the profiled plan differs from the compiled one".into());
    }
    let mut layer_of: BTreeMap<String, String> = BTreeMap::new();
    for r in smelt::optimize::explain::by_layer(&compiled.graph, plan, layer) {
        for k in r.kernels {
            layer_of.insert(k, r.layer.clone());
        }
    }
    let total: f64 = report.kernels.iter().map(|(_, ms)| ms).sum();
    let kernels = plan
        .kernels
        .iter()
        .zip(&report.kernels)
        .map(|(k, &(_, ms))| {
            let bytes = (k.bytes_read + k.bytes_written) as u64;
            let (bound, best_ms) = peak.bound(bytes, k.flops);
            let kind = k
                .fusion
                .map_or(k.kind.to_string(), |f| format!("{}/{f}", k.kind));
            KernelRow {
                name: k.name.clone(),
                layer: layer_of
                    .get(&k.name)
                    .cloned()
                    .unwrap_or_else(|| "(unattributed)".into()),
                what: format!("{kind}[{}]", k.ops.join(" ")),
                ms,
                share: if total > 0.0 { ms / total } else { 0.0 },
                bytes,
                flops: k.flops,
                gbps: rate(bytes, ms),
                gflops: rate(k.flops, ms),
                bound,
                peak_pct: if ms > 0.0 { 100.0 * best_ms / ms } else { 0.0 },
            }
        })
        .collect();
    Ok(Profile {
        peak,
        runs: report.profiled.len(),
        kernels,
    })
}

/// Units per nanosecond: GB/s for bytes, GFLOP/s for flops.
fn rate(units: u64, ms: f64) -> f64 {
    if ms > 0.0 {
        units as f64 / (ms * 1e6)
    } else {
        0.0
    }
}

/// Prints the kernels by time, then the layers by time.
pub fn print(p: &Profile) {
    outln!(
        "  profile: fused plan, median of {} runs per kernel; peaks on {} threads: copy {:.1} GB/s, f32 FMA {:.1} GFLOP/s",
        p.runs,
        p.peak.threads,
        p.peak.copy_gbps,
        p.peak.fma_gflops
    );
    outln!(
        "  {:>10} {:>6} {:>9} {:>10} {:>8} {:>8} {:>7} {:>6}  kernel  [layer]  what",
        "ms",
        "share",
        "MB",
        "MFLOP",
        "GB/s",
        "GFLOP/s",
        "bound",
        "%peak"
    );
    let mut order: Vec<&KernelRow> = p.kernels.iter().collect();
    order.sort_by(|a, b| b.ms.total_cmp(&a.ms));
    for k in order {
        outln!(
            "  {:>10.4} {:>5.1}% {:>9.3} {:>10.3} {:>8.2} {:>8.2} {:>7} {:>5.1}%  {}  [{}]  {}",
            k.ms,
            100.0 * k.share,
            k.bytes as f64 / 1e6,
            k.flops as f64 / 1e6,
            k.gbps,
            k.gflops,
            k.bound,
            k.peak_pct,
            k.name,
            k.layer,
            k.what
        );
    }
    // Layers in the order of their first kernel, then sorted by their time.
    let mut layers: Vec<(&str, f64, usize)> = Vec::new();
    for k in &p.kernels {
        match layers.iter_mut().find(|(l, _, _)| *l == k.layer) {
            Some(l) => {
                l.1 += k.ms;
                l.2 += 1;
            }
            None => layers.push((&k.layer, k.ms, 1)),
        }
    }
    layers.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total: f64 = p.kernels.iter().map(|k| k.ms).sum();
    outln!("  by layer:");
    for (l, ms, n) in layers {
        outln!(
            "  {ms:>10.4} {:>5.1}%  {n:>3} kernels  {l}",
            if total > 0.0 { 100.0 * ms / total } else { 0.0 }
        );
    }
}

/// The Chrome trace-event JSON of a benchmark: the cold compile's stages on one track (from
/// the benchmark's start, one after another), then every profiled run with its kernels
/// nested in it on another, each kernel carrying its ops, bytes, flops, bound and share of
/// peak. Times in microseconds.
pub fn trace(report: &BenchReport, p: &Profile) -> String {
    use serde_json::json;
    let us = |ms: f64| ms * 1e3;
    let mut events = vec![
        json!({"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "compile (cold)"}}),
        json!({"ph": "M", "pid": 1, "tid": 1, "name": "thread_name", "args": {"name": "stages"}}),
        json!({"ph": "M", "pid": 2, "name": "process_name", "args": {"name": format!("runs (cpu, {} threads)", report.threads)}}),
        json!({"ph": "M", "pid": 2, "tid": 1, "name": "thread_name", "args": {"name": "kernels (timed from the host)"}}),
    ];
    let mut at = 0.0;
    for s in &report.compile_cold_stages.stages {
        events.push(json!({
            "name": s.name, "cat": "compile", "ph": "X", "pid": 1, "tid": 1,
            "ts": us(at), "dur": us(s.ms),
        }));
        at += s.ms;
    }
    for (r, run) in report.profiled.iter().enumerate() {
        events.push(json!({
            "name": format!("run {r}"), "cat": "run", "ph": "X", "pid": 2, "tid": 1,
            "ts": us(run.run.start_ms), "dur": us(run.run.ms),
        }));
        for (k, span) in p.kernels.iter().zip(&run.kernels) {
            events.push(json!({
                "name": k.name, "cat": "kernel", "ph": "X", "pid": 2, "tid": 1,
                "ts": us(span.start_ms), "dur": us(span.ms),
                "args": {
                    "what": k.what, "layer": k.layer, "bytes": k.bytes, "flops": k.flops,
                    "bound": k.bound, "peak_pct_median": k.peak_pct,
                },
            }));
        }
    }
    let doc = json!({
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {
            "peak_copy_gbps": p.peak.copy_gbps,
            "peak_fma_gflops": p.peak.fma_gflops,
            "threads": p.peak.threads,
        },
    });
    serde_json::to_string(&doc).expect("traces serialize")
}

/// Every kernel on the machine's roofline, as SVG: arithmetic intensity (flops per byte)
/// against achieved GFLOP/s on log axes, the memory roof (copy bandwidth × intensity) and the
/// compute roof (FMA peak); each kernel a dot, its area by its share of the run, the ten
/// costliest labelled.
pub fn roofline(p: &Profile) -> Result<String, String> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| format!("drawing the roofline: {e}");
    // Kernels without flops (copies, gathers) sit on the left edge at a tenth of the lowest
    // intensity shown.
    let points: Vec<(f64, f64, &KernelRow)> = p
        .kernels
        .iter()
        .filter(|k| k.bytes > 0 && k.ms > 0.0)
        .map(|k| {
            let intensity = k.flops as f64 / k.bytes as f64;
            (intensity, k.gflops, k)
        })
        .collect();
    let positive = |v: f64| v > 0.0 && v.is_finite();
    let lo_x = points
        .iter()
        .map(|p| p.0)
        .filter(|&v| positive(v))
        .fold(p.peak.balance() / 100.0, f64::min)
        / 10.0;
    let hi_x = points
        .iter()
        .map(|p| p.0)
        .fold(p.peak.balance() * 100.0, f64::max)
        * 2.0;
    let lo_y = points
        .iter()
        .map(|p| p.1)
        .filter(|&v| positive(v))
        .fold(p.peak.copy_gbps * lo_x, f64::min)
        / 2.0;
    let hi_y = p.peak.fma_gflops * 3.0;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 640)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "roofline: copy {:.1} GB/s, f32 FMA {:.1} GFLOP/s ({} threads)",
                    p.peak.copy_gbps, p.peak.fma_gflops, p.peak.threads
                ),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d((lo_x..hi_x).log_scale(), (lo_y..hi_y).log_scale())
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("arithmetic intensity (flops / byte)")
            .y_desc("achieved GFLOP/s")
            .draw()
            .map_err(|e| err(&e))?;
        let knee = p.peak.balance();
        chart
            .draw_series(LineSeries::new(
                vec![
                    (lo_x, p.peak.copy_gbps * lo_x),
                    (knee, p.peak.fma_gflops),
                    (hi_x, p.peak.fma_gflops),
                ],
                BLUE.stroke_width(2),
            ))
            .map_err(|e| err(&e))?;
        let mut by_time: Vec<&(f64, f64, &KernelRow)> = points.iter().collect();
        by_time.sort_by(|a, b| b.2.ms.total_cmp(&a.2.ms));
        for (rank, (x, y, k)) in by_time.into_iter().enumerate() {
            let at = (x.max(lo_x), y.max(lo_y));
            let size = (3.0 + 40.0 * k.share.sqrt()) as i32;
            let label = if rank < 10 {
                k.name.clone()
            } else {
                String::new()
            };
            chart
                .draw_series(std::iter::once(
                    EmptyElement::at(at)
                        + Circle::new((0, 0), size, RED.mix(0.5).filled())
                        + Text::new(label, (size + 2, -6), ("sans-serif", 11)),
                ))
                .map_err(|e| err(&e))?;
        }
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}
