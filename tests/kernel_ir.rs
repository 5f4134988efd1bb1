//! The lowered program, run by the kernel-IR interpreter (every block and thread, the
//! reduction trees as written), gives the reference interpreter's outputs: on the reference
//! models and on random graphs, fused and unfused. Tolerance: rtol 1e-4, atol 1e-5 (the
//! kernels compute in f32 as the GPU does; the reference accumulates in f64).

mod common;

use smelt::kernel::{interp as kinterp, lower, lower_for, Target};
use smelt::optimize::Options;
use smelt::{compile, interp, Graph, Tensor};
use std::collections::HashMap;

/// Seeded random inputs (never all zero): the benchmark harness's.
fn feeds(g: &Graph, seed: u64) -> HashMap<String, Tensor> {
    smelt::bench::random_inputs(g, seed)
}

/// Lowers `g` (fused or not) and compares the kernel-IR run with the reference.
fn check(g: &Graph, fuse: bool) -> Result<(), String> {
    let c = compile(
        g,
        &Options {
            fuse,
            ..Options::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let inputs = feeds(g, 5);
    let want = interp::run(g, &inputs).map_err(|e| e.to_string())?;
    for target in [Target::Gpu, Target::Cpu] {
        let program = lower_for(&c.graph, target).map_err(|e| e.to_string())?;
        let got = kinterp::run(&program, &inputs).map_err(|e| format!("{e}\n{program}"))?;
        for ((n, w), (_, v)) in want.iter().zip(&got) {
            common::compare(v, w, 1e-4, 1e-5).map_err(|e| {
                format!(
                    "output {n} (fuse {fuse}, {target:?}): {e}\n{}\n{program}",
                    c.graph
                )
            })?;
        }
    }
    Ok(())
}

#[test]
fn gpt2_block_runs_lowered() {
    let g = common::graphs::gpt2_block(1, 8, 16, 2).unwrap();
    check(&g, true).unwrap();
    check(&g, false).unwrap();
}

#[test]
fn lowered_row_kernels_use_block_reductions() {
    let mut b = smelt::GraphBuilder::new();
    let x = b.input("x", smelt::DType::F32, &[3, 300]).unwrap();
    let y = b.softmax(x, -1).unwrap();
    b.output("y", y).unwrap();
    let g = b.build().unwrap();
    let c = compile(&g, &Options::default()).unwrap();
    let p = lower(&c.graph).unwrap();
    let text = p.to_string();
    assert!(
        text.contains("block_reduce_Max") && text.contains("block_reduce_Sum"),
        "{text}"
    );
    assert!(text.contains("for uniform"), "{text}");
    check(&g, true).unwrap();
}

#[test]
fn reference_models_run_lowered() {
    for (dir, g) in common::reference_models() {
        for fuse in [true, false] {
            check(&g, fuse).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        }
    }
}
