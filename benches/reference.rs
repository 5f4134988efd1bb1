//! Import and reference-interpreter time on the reference models: the baseline that the
//! compiled backends are measured against. Warm-up first, then the median of N runs.
//!
//! `cargo bench --bench reference`

use smelt::interp;
use smelt::onnx::{import_file, ImportOptions};

#[path = "../src/cli/npy.rs"]
#[allow(dead_code)]
mod npy;
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

fn median_ms(mut f: impl FnMut(), runs: usize) -> f64 {
    f();
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[runs / 2]
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/models");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .expect("tests/models")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("model.onnx").exists())
        .collect();
    dirs.sort();
    println!("{:<28} {:>12} {:>14}", "model", "import ms", "interpret ms");
    for dir in dirs {
        let model = dir.join("model.onnx");
        let opts = ImportOptions::default();
        let Ok(graph) = import_file(&model, &opts) else {
            continue;
        };
        let mut inputs = HashMap::new();
        for e in std::fs::read_dir(dir.join("inputs"))
            .expect("inputs")
            .flatten()
        {
            let name = e.path().file_stem().unwrap().to_string_lossy().to_string();
            inputs.insert(name, npy::read(&e.path()).expect("input npy"));
        }
        let import = median_ms(|| drop(import_file(&model, &opts)), 11);
        let run = median_ms(|| drop(interp::run(&graph, &inputs)), 11);
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        println!("{name:<28} {import:>12.3} {run:>14.3}");
    }
}
