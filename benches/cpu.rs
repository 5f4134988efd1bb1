//! The CPU backend's suite on Rust API graphs (the same graphs `bench/make_models.py` writes
//! as ONNX for the ONNX Runtime comparison, `scripts/bench`): fused vs unfused on the C
//! backend, medians after warm-up, compile time cold and with a warm cache.
//!
//! `cargo bench --bench cpu` (set `SMELT_BENCH_RUNS`, default 20)

#[path = "../src/cli/harness.rs"]
mod harness;
#[path = "../tests/common/graphs.rs"]
mod zoo;

use harness::{bench, BenchOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runs = std::env::var("SMELT_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let opts = BenchOptions {
        runs,
        warmup: 3,
        threads: smelt_runtime::default_threads(),
        progress: false,
        profile: false,
    };
    let suite: Vec<(&str, smelt::Graph)> = vec![
        (
            "elementwise chain 16M x 10",
            zoo::elementwise_chain(1 << 24)?,
        ),
        ("softmax 4096x4096", zoo::softmax(4096, 4096)?),
        ("layernorm 8192x1024", zoo::layernorm(8192, 1024)?),
        (
            "gelu mlp b64 1024-4096-1024",
            zoo::gelu_mlp(64, 1024, 4096)?,
        ),
        ("gpt2 block b2 s32 d64 h4", zoo::gpt2_block(2, 32, 64, 4)?),
        (
            "gpt2 block b8 s128 d256 h4",
            zoo::gpt2_block(8, 128, 256, 4)?,
        ),
        (
            "conv+relu x12 b1 c32 56x56",
            zoo::conv_relu_stack(12, 1, 32, 56)?,
        ),
    ];
    println!(
        "{:<30} {:>12} {:>12} {:>8} {:>10} {:>10}   ({} threads, {runs} runs)",
        "graph", "fused ms", "unfused ms", "ratio", "cold ms", "warm ms", opts.threads
    );
    for (name, g) in suite {
        let r = bench(&g, &opts)?;
        println!(
            "{name:<30} {:>12.3} {:>12.3} {:>8.2} {:>10.1} {:>10.1}",
            r.fused.median_ms,
            r.unfused.median_ms,
            r.fused.median_ms / r.unfused.median_ms,
            r.compile_cold_ms,
            r.compile_warm_ms
        );
    }
    Ok(())
}
