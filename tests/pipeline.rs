//! One pipeline ending in one laid-out program: a compile lowers and lays out once per
//! target, the runtimes run that program as it is (they never lower or plan memory
//! themselves), and the plan a user reads (`plan.json`) is the program they run.

mod common;

use smelt::kernel::{lowerings, Target};
use smelt::optimize::Options;
use smelt_runtime::cpu::CpuModel;
use smelt_runtime::cuda::bundle::Bundle;

/// What `smelt compile --bundle` does: optimize once, lay out for the GPU (plan.json, CUDA
/// sources, the bundle) and for the CPU (model.c); then what a CPU session loads.
#[test]
fn a_compile_lowers_once_per_target() {
    let g = common::graphs::gpt2_block(1, 8, 16, 2).unwrap();
    let before = lowerings();
    let gpu = smelt::compile(&g, &Options::default()).unwrap();
    let cpu = gpu.retarget(Target::Cpu).unwrap();
    let archs = vec!["sm_90".to_string()];
    let bundle = Bundle::build(&gpu, &archs, &smelt_runtime::cache::dir()).unwrap();
    smelt::codegen::c::render(&cpu.program).unwrap();
    smelt::codegen::cuda::render(&gpu.program).unwrap();
    let model = CpuModel::new(&cpu.program, 2).unwrap();
    assert_eq!(
        lowerings() - before,
        2,
        "one lowering (and layout) per target"
    );
    assert_eq!(model.program(), &cpu.program);
    assert_eq!(bundle.manifest.launches.len(), gpu.program.kernels.len());
    // A session compiles for its device once.
    let before = lowerings();
    smelt::Session::new(g, smelt::Device::Cpu).unwrap();
    assert_eq!(lowerings() - before, 1);
}

/// `plan.json` describes exactly what the executor runs: the bundle's launches are the
/// plan's kernels (name, grid, block, buffers), every buffer sits at the plan's offset, the
/// arena is the plan's size, and the cuBLASLt calls are the plan's. On the CPU the plan's
/// kernels are the C backend's, buffers in the caller's memory have no offset.
#[test]
fn the_plan_is_the_program_that_runs() {
    for (name, g) in [
        ("gpt2", common::graphs::gpt2_block(2, 8, 16, 2).unwrap()),
        ("conv", common::graphs::conv_relu_stack(2, 1, 4, 9).unwrap()),
    ] {
        for fuse in [true, false] {
            let opts = Options {
                fuse,
                ..Options::default()
            };
            let gpu = smelt::compile(&g, &opts).unwrap();
            let plan: serde_json::Value = serde_json::from_str(&gpu.plan.to_json()).unwrap();
            let b =
                Bundle::build(&gpu, &["sm_90".to_string()], &smelt_runtime::cache::dir()).unwrap();
            let m = &b.manifest;
            assert_eq!(m.plan, plan, "{name}: the bundle carries the plan");
            assert_eq!(m.arena_bytes, gpu.plan.arena_bytes, "{name}");
            assert_eq!(m.launches.len(), gpu.plan.kernels.len(), "{name}");
            for (l, k) in m.launches.iter().zip(&gpu.plan.kernels) {
                assert_eq!(l.name, k.name);
                assert_eq!(
                    (l.grid, l.block),
                    (k.launch.grid, k.launch.block),
                    "{}",
                    k.name
                );
                // The same buffers, in the order the (shared) function takes them.
                let mut names: Vec<&str> = l
                    .params
                    .iter()
                    .map(|&p| m.buffers[p as usize].name.as_str())
                    .collect();
                let mut planned: Vec<&str> = k
                    .inputs
                    .iter()
                    .chain(&k.outputs)
                    .map(String::as_str)
                    .collect();
                names.sort_unstable();
                planned.sort_unstable();
                assert_eq!(names, planned, "{name} {}", k.name);
                assert_eq!(
                    l.blas.as_ref().map(|c| c.to_string()),
                    k.cublas,
                    "{}",
                    k.name
                );
            }
            assert_eq!(m.buffers.len(), gpu.plan.buffers.len());
            for (s, p) in m.buffers.iter().zip(&gpu.plan.buffers) {
                assert_eq!(
                    (&s.name, Some(s.offset), s.bytes),
                    (&p.name, p.offset, p.bytes)
                );
            }
            let cpu = gpu.retarget(Target::Cpu).unwrap();
            let model = CpuModel::new(&cpu.program, 1).unwrap();
            assert_eq!(model.info().arena_bytes, cpu.plan.arena_bytes, "{name}");
            let run: Vec<&str> = model
                .program()
                .kernels
                .iter()
                .map(|k| k.name.as_str())
                .collect();
            let planned: Vec<&str> = cpu.plan.kernels.iter().map(|k| k.name.as_str()).collect();
            assert_eq!(run, planned, "{name}");
            for (i, p) in cpu.plan.buffers.iter().enumerate() {
                let slot = cpu.program.layout.slots[i];
                assert_eq!(p.offset.is_none(), slot.is_some(), "{name} {}", p.name);
            }
        }
    }
}
