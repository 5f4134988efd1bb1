//! Compile time against model size: a GPT-2 stack of 1, 4, 12 and 24 layers (batch 1, seq 128,
//! width 256, 4 heads) through a CPU session, with an empty cache (cold: optimize, lower,
//! render, the C compiler, load) and with a warm one (as a new process finds it), stage by
//! stage; then every model of the real-model corpus. Compile time per layer must stay flat
//! (linear or better in layers).
//!
//! `cargo bench --bench compile [-- --json FILE]`

use smelt::onnx::{import_file, ImportOptions};
use smelt::{Device, Graph, Session, SessionOptions};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[path = "../tests/common/graphs.rs"]
mod zoo;

fn session(
    g: &Graph,
    cache: &Path,
) -> Result<(f64, smelt::timings::Timings), Box<dyn std::error::Error>> {
    let opts = SessionOptions {
        cache_dir: Some(cache.to_path_buf()),
        reuse_loaded: false,
        ..SessionOptions::default()
    };
    let t = Instant::now();
    let s = Session::with_options(g.clone(), Device::Cpu, &opts)?;
    Ok((t.elapsed().as_secs_f64() * 1e3, s.timings().clone()))
}

/// (cold ms, warm ms, cold stages) with a fresh cache directory.
fn measure(
    g: &Graph,
    tag: &str,
) -> Result<(f64, f64, smelt::timings::Timings), Box<dyn std::error::Error>> {
    let cache =
        std::env::temp_dir().join(format!("smelt-compile-bench-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let (cold, stages) = session(g, &cache)?;
    let (warm, _) = session(g, &cache)?;
    let _ = std::fs::remove_dir_all(&cache);
    Ok((cold, warm, stages))
}

fn shapes(dir: &Path) -> ImportOptions {
    let mut opts = ImportOptions::default();
    if let Ok(s) = std::fs::read_to_string(dir.join("shapes.txt")) {
        for spec in s.split_whitespace() {
            if let Some((n, dims)) = spec.split_once('=') {
                let dims: Vec<usize> = dims.split('x').filter_map(|d| d.parse().ok()).collect();
                opts.shapes.insert(n.into(), dims);
            }
        }
    }
    opts
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let json = std::env::args()
        .skip_while(|a| a != "--json")
        .nth(1)
        .map(PathBuf::from);
    let mut rows = Vec::new();
    println!(
        "{:<28} {:>10} {:>10} {:>12} {:>10}",
        "model", "cold ms", "warm ms", "cold/layer", "cc ms"
    );
    let mut per_layer = Vec::new();
    for layers in [1, 4, 12, 24] {
        let g = zoo::gpt2_stack(layers, 1, 128, 256, 4)?;
        let (cold, warm, stages) = measure(&g, &format!("stack{layers}"))?;
        let cc = stages
            .stages
            .iter()
            .find(|s| s.name == "cc")
            .map_or(0.0, |s| s.ms);
        let name = format!("gpt2 stack {layers} layers");
        println!(
            "{name:<28} {cold:>10.1} {warm:>10.1} {:>12.1} {cc:>10.1}",
            cold / layers as f64
        );
        per_layer.push((layers, cold / layers as f64));
        if std::env::var_os("SMELT_BENCH_STAGES").is_some() {
            for line in stages.lines() {
                println!("    {line}");
            }
        }
        rows.push(serde_json::json!({"model": name, "layers": layers, "cold_ms": cold, "warm_ms": warm, "cold_stages": stages}));
    }
    let at = |l: usize| {
        per_layer
            .iter()
            .find(|p| p.0 == l)
            .map_or(f64::NAN, |p| p.1)
    };
    println!(
        "cold per layer, 24 layers / 4 layers: {:.2} (target <= 1.3)",
        at(24) / at(4)
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/models/real");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("model.onnx").exists())
        .collect();
    dirs.sort();
    for d in dirs {
        let name = d
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        let t = Instant::now();
        let g = import_file(&d.join("model.onnx"), &shapes(&d))?;
        let import_ms = t.elapsed().as_secs_f64() * 1e3;
        let (cold, warm, stages) = measure(&g, &name)?;
        let cc = stages
            .stages
            .iter()
            .find(|s| s.name == "cc")
            .map_or(0.0, |s| s.ms);
        println!("{name:<28} {cold:>10.1} {warm:>10.1} {:>12} {cc:>10.1}", "");
        rows.push(serde_json::json!({"model": name, "import_ms": import_ms, "cold_ms": cold, "warm_ms": warm, "cold_stages": stages}));
    }
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_string_pretty(&rows)? + "\n")?;
    }
    Ok(())
}
