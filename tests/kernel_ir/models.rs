//! Whole models through every layer (reference, kernel-IR interpreter for both targets, C
//! backend): the GPT-2 block and every reference model, fused and unfused.

use super::*;

#[test]
fn gpt2_block_runs_on_every_layer() {
    let g = common::graphs::gpt2_block(1, 8, 16, 2).unwrap();
    common::layers::every_layer(&g).unwrap();
}

#[test]
fn reference_models_run_on_every_layer() {
    for (dir, g) in common::reference_models() {
        common::layers::every_layer(&g).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    }
}
