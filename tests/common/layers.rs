//! One graph through every execution layer: the reference interpreter (the oracle), the
//! lowered program in the kernel-IR interpreter (the GPU program as written and with its
//! cuBLASLt calls, and the CPU program), and the C backend. Inputs are seeded and random.
#![allow(dead_code)]

use smelt::kernel::interp::{self as kinterp, Products};
use smelt::kernel::Target;
use smelt::optimize::Options;
use smelt::{interp, Device, Graph, Session, SessionOptions};

fn options(fuse: bool) -> Options {
    Options {
        fuse,
        ..Options::default()
    }
}

/// The kernel-IR runs (GPU kernels, GPU with library calls where kernels have them, CPU)
/// against the reference, within `atol + rtol·|want|`.
pub fn lowered(g: &Graph, fuse: bool, rtol: f64, atol: f64) -> Result<(), String> {
    let gpu = smelt::compile(g, &options(fuse)).map_err(|e| e.to_string())?;
    let cpu = gpu.retarget(Target::Cpu).map_err(|e| e.to_string())?;
    let inputs = g.random_inputs(5);
    let want = interp::run(g, &inputs).map_err(|e| e.to_string())?;
    let runs = [
        (&gpu, Products::Kernels),
        (&gpu, Products::Library),
        (&cpu, Products::Kernels),
    ];
    for (c, products) in runs {
        let program = &c.program;
        if products == Products::Library && program.kernels.iter().all(|k| k.blas.is_none()) {
            continue;
        }
        let got =
            kinterp::run_with(program, &inputs, products).map_err(|e| format!("{e}\n{program}"))?;
        for ((n, w), (_, v)) in want.iter().zip(&got) {
            super::compare(v, w, rtol, atol).map_err(|e| {
                format!(
                    "output {n} (fuse {fuse}, {:?}, {products:?}): {e}\n{}\n{program}",
                    program.target, c.graph
                )
            })?;
        }
    }
    Ok(())
}

/// The C backend against the reference on two seeds.
pub fn c_backend(g: &Graph, fuse: bool, rtol: f64, atol: f64) -> Result<(), String> {
    let opts = SessionOptions {
        optimize: options(fuse),
        ..SessionOptions::default()
    };
    let s = Session::with_options(g.clone(), Device::Cpu, &opts).map_err(|e| e.to_string())?;
    for seed in [1, 2] {
        let inputs = g.random_inputs(seed);
        let want = interp::run(g, &inputs).map_err(|e| e.to_string())?;
        let got = s.run(&inputs).map_err(|e| e.to_string())?;
        for ((n, w), (_, v)) in want.iter().zip(&got) {
            super::compare(v, w, rtol, atol)
                .map_err(|e| format!("output {n} (C backend, fuse {fuse}, seed {seed}): {e}"))?;
        }
    }
    Ok(())
}

/// [`lowered`] and [`c_backend`], fused and unfused, at the dtype tolerance of f32.
pub fn every_layer(g: &Graph) -> Result<(), String> {
    for fuse in [true, false] {
        lowered(g, fuse, 1e-4, 1e-5)?;
        c_backend(g, fuse, 1e-4, 1e-5)?;
    }
    Ok(())
}
