//! Optimizer time on a pre-LN GPT-2 block (batch 2, seq 32, d 64, 4 heads; and batch 8,
//! seq 128, d 256): import-free, Rust API graphs. Target: under 200 ms on a 2-core machine.
//! Warm-up first, then the median of N runs.
//!
//! `cargo bench --bench optimizer`

use smelt::compile;
use smelt::optimize::Options;

#[path = "../tests/common/graphs.rs"]
mod zoo;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!(
        "{:<34} {:>10} {:>9} {:>9}",
        "graph", "median ms", "launches", "unfused"
    );
    for (name, (b, s, d, h)) in [
        ("gpt2 block b2 s32 d64 h4", (2, 32, 64, 4)),
        ("gpt2 block b8 s128 d256 h4", (8, 128, 256, 4)),
    ] {
        let g = zoo::gpt2_block(b, s, d, h)?;
        let unfused = compile(
            &g,
            &Options {
                fuse: false,
                ..Options::default()
            },
        )?
        .plan
        .launches;
        let mut times = Vec::new();
        let mut launches = 0;
        for i in 0..12 {
            let t = Instant::now();
            let c = compile(&g, &Options::default())?;
            if i > 0 {
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            launches = c.plan.launches;
        }
        times.sort_by(f64::total_cmp);
        println!(
            "{name:<34} {:>10.2} {launches:>9} {unfused:>9}",
            times[times.len() / 2]
        );
    }
    Ok(())
}
