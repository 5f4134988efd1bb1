//! The benchmark harness behind `smelt bench` (and `cargo bench --bench cpu`, which includes
//! this file): compile a model, warm up, time runs on fresh random inputs, and compare the
//! fused plan with the unfused one on the same backend; plus compile time with a cold and a
//! warm cache.

use smelt::{Device, Graph, Session, SessionOptions};
use smelt_runtime::Error;
use std::time::Instant;

/// What `smelt bench` measures.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Timed runs per plan.
    pub runs: usize,
    /// Untimed runs before (at least 1).
    pub warmup: usize,
    /// CPU threads.
    pub threads: usize,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// Also time each kernel of the fused plan.
    pub profile: bool,
}

/// Times of one plan, in milliseconds.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Timing {
    /// Median run.
    pub median_ms: f64,
    /// Fastest run.
    pub min_ms: f64,
    /// Kernels launched per run.
    pub kernels: usize,
    /// Arena bytes.
    pub arena_bytes: usize,
}

/// The result, as `--json FILE` writes it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchReport {
    /// The fused plan.
    pub fused: Timing,
    /// The unfused plan (one kernel per op) on the same backend.
    pub unfused: Timing,
    /// Import-to-loaded time with an empty cache (optimize, lower, render, C compile, load).
    pub compile_cold_ms: f64,
    /// The same with the cache warm, as a new process would find it (disk read and verify).
    pub compile_warm_ms: f64,
    /// Where the cold compile's time went, stage by stage.
    pub compile_cold_stages: smelt::timings::Timings,
    /// Where the warm-cache load's time went.
    pub compile_warm_stages: smelt::timings::Timings,
    /// Timed runs per plan.
    pub runs: usize,
    /// CPU threads.
    pub threads: usize,
    /// Device.
    pub device: String,
    /// With `profile`: each kernel of the fused plan and its median milliseconds.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kernels: Vec<(String, f64)>,
    /// With `profile`: every profiled run of the fused plan, kernel by kernel, in
    /// milliseconds since the benchmark began (when its cold compile started).
    #[serde(skip)]
    #[allow(dead_code)] // read by the CLI's profile; `benches/cpu.rs` includes this file too
    pub profiled: Vec<smelt_runtime::cpu::ProfiledRun>,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn session(
    g: &Graph,
    fuse: bool,
    opts: &BenchOptions,
    cache: Option<&std::path::Path>,
) -> Result<Session, Error> {
    let so = SessionOptions {
        optimize: smelt::optimize::Options {
            fuse,
            ..Default::default()
        },
        threads: opts.threads,
        cache_dir: cache.map(|c| c.to_path_buf()),
        reuse_loaded: false,
    };
    Session::with_options(g.clone(), Device::Cpu, &so)
}

/// Times one session: warm-up, then `runs` runs alternating between two sets of random
/// inputs (drawn once, outside the timing), each writing into the previous run's output
/// storage (the steady state of a serving loop; no allocation or page faults are timed).
fn time(s: &Session, label: &str, opts: &BenchOptions) -> Result<Timing, Error> {
    let sets = [s.graph().random_inputs(1), s.graph().random_inputs(2)];
    for i in 0..opts.warmup.max(1) {
        s.run(&sets[i % 2])?;
    }
    let bar = if opts.progress {
        let b = indicatif::ProgressBar::new(opts.runs as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("{msg:>8} [{bar:30}] {pos}/{len} runs")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_message(label.to_string());
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut ms = Vec::with_capacity(opts.runs);
    let mut out = s.run(&sets[0])?;
    for i in 0..opts.runs {
        let t = Instant::now();
        out = s.run_reusing(&sets[i % 2], out)?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        out = std::hint::black_box(out);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let model = s.cpu_model();
    Ok(Timing {
        min_ms: ms.iter().copied().fold(f64::INFINITY, f64::min),
        median_ms: median(&mut ms),
        kernels: model.map_or(0, |m| m.info().kernels),
        arena_bytes: model.map_or(0, |m| m.info().arena_bytes),
    })
}

/// Benchmarks `g` on the CPU backend.
pub fn bench(g: &Graph, opts: &BenchOptions) -> Result<BenchReport, Error> {
    let cold_dir = std::env::temp_dir().join(format!(
        "smelt-bench-cache-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    ));
    let _ = std::fs::remove_dir_all(&cold_dir);
    let t = Instant::now();
    let epoch = t;
    let fused = session(g, true, opts, Some(&cold_dir))?;
    let compile_cold_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let warm = session(g, true, opts, Some(&cold_dir))?;
    let compile_warm_ms = t.elapsed().as_secs_f64() * 1e3;
    let warm_stages = warm.timings().clone();
    drop(warm);
    let unfused = session(g, false, opts, Some(&cold_dir))?;
    let profiled = match (opts.profile, fused.cpu_model()) {
        (true, Some(m)) => m.profile_runs(&g.random_inputs(3), opts.runs.min(20), epoch)?,
        _ => Vec::new(),
    };
    let names = fused.cpu_model().map(|m| &m.program().kernels);
    let kernels = match names {
        Some(ks) if !profiled.is_empty() => ks
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let mut t: Vec<f64> = profiled.iter().map(|r| r.kernels[i].ms).collect();
                (k.name.clone(), median(&mut t))
            })
            .collect(),
        _ => Vec::new(),
    };
    let report = BenchReport {
        kernels,
        profiled,
        fused: time(&fused, "fused", opts)?,
        unfused: time(&unfused, "unfused", opts)?,
        compile_cold_ms,
        compile_warm_ms,
        compile_cold_stages: fused.timings().clone(),
        compile_warm_stages: warm_stages,
        runs: opts.runs,
        threads: opts.threads,
        device: "cpu".into(),
    };
    let _ = std::fs::remove_dir_all(&cold_dir);
    Ok(report)
}
