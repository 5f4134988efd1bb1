//! Laying a lowered program out in memory, once, as the last step of lowering: every buffer
//! gets an arena offset from its lifetime (the shared planner, [`crate::schedule::arena`]);
//! on the CPU the graph's inputs and outputs stay in the caller's memory and the weights in
//! their tensors (pointer slots), and take no arena space: loading a model copies no
//! weights.

use super::ir::{Layout, Program, Target};
use crate::schedule::arena;

/// The layout of `program` for its target.
pub fn lay_out(program: &Program) -> Layout {
    let slots = match program.target {
        Target::Cpu => io_slots(program),
        Target::Gpu => vec![None; program.buffers.len()],
    };
    let mut lifetimes = arena::program_lifetimes(program);
    for (l, slot) in lifetimes.iter_mut().zip(&slots) {
        if slot.is_some() {
            l.bytes = 0;
        }
    }
    let plan = arena::plan(&lifetimes);
    Layout {
        offsets: plan.offsets,
        slots,
        size: plan.size,
    }
}

/// The pointer slot of each buffer, if it has one: graph inputs first (in order), then each
/// output buffer that a kernel writes (in order, once), then each constant that is not a
/// graph output (the runtime points it at the tensor's own storage). Every other buffer lives
/// in the arena.
fn io_slots(program: &Program) -> Vec<Option<usize>> {
    let mut slots = vec![None; program.buffers.len()];
    let mut n = 0;
    for (_, b) in &program.inputs {
        if slots[*b as usize].is_none() {
            slots[*b as usize] = Some(n);
            n += 1;
        }
    }
    let written = |b: u32| program.kernels.iter().any(|k| k.writes.contains(&b));
    for (_, b) in &program.outputs {
        if slots[*b as usize].is_none() && written(*b) {
            slots[*b as usize] = Some(n);
            n += 1;
        }
    }
    for (b, _) in &program.constants {
        let output = program.outputs.iter().any(|(_, o)| o == b);
        if slots[*b as usize].is_none() && !output {
            slots[*b as usize] = Some(n);
            n += 1;
        }
    }
    slots
}
