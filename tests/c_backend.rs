//! The C backend (generated C, the system compiler, the arena, the `gemm` crate) gives the
//! reference interpreter's outputs on the zoo's graphs and edge cases, fused
//! and unfused (the reference models: `kernel_ir`'s every-layer test). Tolerance: rtol 1e-4,
//! atol 1e-5 (f32 kernels; the reference accumulates in f64).

mod common;

use smelt::optimize::Options;
use smelt::{interp, Device, Graph, Session, Tensor};
use smelt_runtime::SessionOptions;
use std::collections::HashMap;

/// Seeded random inputs (never all zero): the benchmark harness's.
fn feeds(g: &Graph, seed: u64) -> HashMap<String, Tensor> {
    g.random_inputs(seed)
}

fn session(g: &Graph, fuse: bool) -> Session {
    let opts = SessionOptions {
        optimize: Options {
            fuse,
            ..Options::default()
        },
        ..SessionOptions::default()
    };
    Session::with_options(g.clone(), Device::Cpu, &opts).unwrap()
}

fn check(g: &Graph, fuse: bool) {
    common::layers::c_backend(g, fuse, 1e-4, 1e-5).unwrap();
}

#[test]
fn zoo_graphs_match_reference() {
    let graphs = [
        common::graphs::elementwise_chain(70_001).unwrap(),
        common::graphs::softmax(33, 300).unwrap(),
        // Rows of 301: the interleaved row loops' tails run too.
        common::graphs::softmax(7, 301).unwrap(),
        common::graphs::layernorm(40, 96).unwrap(),
        common::graphs::gelu_mlp(8, 32, 128).unwrap(),
        common::graphs::conv_relu_stack(3, 2, 4, 9).unwrap(),
    ];
    for g in &graphs {
        check(g, true);
        check(g, false);
    }
}

/// The chain's loop (tanh, sqrt, sigmoid: latency-bound) runs as interleaved streams plus a
/// tail (70 001 elements: chunks of 32 768 and 4 465, so the tail runs too; the zoo test
/// above checks the values), and so do softmax's sum of exponentials (one accumulator per
/// stream) and its division; LayerNorm's cheap loops do not.
#[test]
fn latency_bound_loops_are_interleaved() {
    use smelt::kernel::ir::{Expr, Stmt};
    let streams = |g: &Graph| -> Vec<usize> {
        let s = session(g, true);
        let p = s.cpu_model().unwrap().program().clone();
        let mut found = Vec::new();
        fn walk(stmts: &[Stmt], found: &mut Vec<usize>) {
            for st in stmts {
                match st {
                    Stmt::For { body, .. } => {
                        let stores = body
                            .iter()
                            .filter(|s| matches!(s, Stmt::Store { .. }))
                            .count();
                        let folds = body
                            .iter()
                            .filter(|s| matches!(s, Stmt::Let { var, value: Expr::Combine(_, a, _) } if **a == Expr::Var(*var)))
                            .count();
                        let inner = !body.iter().any(|s| matches!(s, Stmt::For { .. }));
                        if inner && stores.max(folds) > 1 {
                            found.push(stores.max(folds));
                        }
                        walk(body, found);
                    }
                    Stmt::If { then, .. } => walk(then, found),
                    _ => {}
                }
            }
        }
        for k in &p.kernels {
            walk(&k.body, &mut found);
        }
        found
    };
    let chain = common::graphs::elementwise_chain(70_001).unwrap();
    assert_eq!(streams(&chain), vec![4]);
    // exp-and-sum (4 stores, 4 folds), then the division.
    assert_eq!(
        streams(&common::graphs::softmax(7, 301).unwrap()),
        vec![4, 4]
    );
    assert!(streams(&common::graphs::layernorm(40, 96).unwrap()).is_empty());
}

/// Products read slices (heads split out of a fused QKV projection, a reversed slice) in
/// place: the library call gets an offset and strides, negative ones included, and no
/// kernel copies the operand out first.
#[test]
fn products_read_sliced_views_in_place() {
    use smelt::ir::Op;
    use smelt::kernel::ir::Stmt;
    let mut b = smelt::GraphBuilder::new();
    let (bs, s, h, dh) = (2, 8, 2, 8);
    let d = h * dh;
    let qkv = b.input("qkv", smelt::DType::F32, &[bs, s, 3 * d]).unwrap();
    let head = |b: &mut smelt::GraphBuilder, i: usize| {
        let op = Op::Slice {
            starts: vec![0, 0, i * d],
            steps: vec![1, 1, 1],
            lens: vec![bs, s, d],
        };
        let x = b.op(op, &[qkv]).unwrap();
        let x = b.reshape(x, &[bs, s, h, dh]).unwrap();
        b.transpose(x, &[0, 2, 1, 3]).unwrap()
    };
    let (q, k, v) = (head(&mut b, 0), head(&mut b, 1), head(&mut b, 2));
    let kt = b.transpose(k, &[0, 1, 3, 2]).unwrap();
    let scores = b.matmul(q, kt).unwrap();
    let p = b.softmax(scores, -1).unwrap();
    let o = b.matmul(p, v).unwrap();
    b.output("o", o).unwrap();
    // Rows and columns of the input walked backward, every other column.
    let rev = Op::Slice {
        starts: vec![bs - 1, s - 1, 3 * d - 1],
        steps: vec![-1, -1, -2],
        lens: vec![bs, s, 3 * d / 2],
    };
    let r = b.op(rev, &[qkv]).unwrap();
    let w = b.input("w", smelt::DType::F32, &[3 * d / 2, 5]).unwrap();
    let y = b.matmul(r, w).unwrap();
    b.output("y", y).unwrap();
    let g = b.build().unwrap();
    check(&g, true);
    let s = session(&g, true);
    let p = s.cpu_model().unwrap().program().clone();
    let gemms: Vec<_> = p
        .kernels
        .iter()
        .filter_map(|k| match k.body.as_slice() {
            [Stmt::Gemm(g)] => Some(g.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(gemms.len(), 3, "{p}");
    assert!(gemms
        .iter()
        .any(|g| g.a.offset == 0 && g.b.offset == d as i64));
    assert!(gemms.iter().any(|g| g.b.offset == 2 * d as i64));
    assert!(gemms
        .iter()
        .any(|g| g.a.col_stride == -2 && g.a.row_stride < 0));
    // Besides the three products: the softmax, and nothing that copies an operand.
    assert_eq!(p.kernels.len(), 4, "{p}");
}

#[test]
fn matrix_products_are_library_calls() {
    let g = common::graphs::gpt2_block(2, 8, 16, 2).unwrap();
    let s = session(&g, true);
    let p = s.cpu_model().unwrap().program();
    let gemms = p
        .kernels
        .iter()
        .filter(|k| matches!(k.body.as_slice(), [smelt::kernel::ir::Stmt::Gemm(_)]))
        .count();
    // q·kᵀ, p·v, and the four projections (qkv, out, fc1, fc2).
    assert!(gemms >= 6, "{gemms} library products in\n{p}");
}

/// The C backend's own f32 exp, tanh, erf and sigmoid (branch-free, so loops vectorize)
/// against the reference's f64 libm, rounded: over a dense sweep and the special values.
/// Bound: 4e-7 relative + 1e-37 absolute for exp, 1e-6 relative + 2e-7 absolute for tanh and
/// erf, 5e-7 relative + 6.1e-39 absolute for sigmoid (which stops decaying at x = -88).
#[test]
fn vectorized_math_is_accurate() {
    let mut xs: Vec<f32> = (-200_000..=200_000).map(|i| i as f32 * 5e-4).collect();
    xs.extend([
        0.0,
        -0.0,
        1e-30,
        -1e-30,
        1e-40,
        88.5,
        88.7,
        88.8,
        -87.5,
        -103.0,
        -104.5,
        -88.0,
        -88.5,
        -90.0,
        87.5,
        1e10,
        -1e10,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
    ]);
    let n = xs.len();
    for (op, rtol, atol) in [
        (smelt::ir::UnaryOp::Exp, 4e-7, 1e-37),
        (smelt::ir::UnaryOp::Tanh, 1e-6, 2e-7),
        (smelt::ir::UnaryOp::Erf, 1e-6, 2e-7),
        (smelt::ir::UnaryOp::Sigmoid, 5e-7, 6.1e-39),
    ] {
        let mut b = smelt::GraphBuilder::new();
        let x = b.input("x", smelt::DType::F32, &[n]).unwrap();
        let y = b.op(smelt::ir::Op::Unary(op), &[x]).unwrap();
        b.output("y", y).unwrap();
        let g = b.build().unwrap();
        let inputs = HashMap::from([("x".to_string(), Tensor::f32([n], xs.clone()))]);
        let want = interp::run(&g, &inputs).unwrap()[0].1.to_f64();
        let got = session(&g, true).run(&inputs).unwrap()[0].1.to_f64();
        for ((x, w), v) in xs.iter().zip(&want).zip(&got) {
            let ok = if w.is_nan() {
                v.is_nan()
            } else if w.is_infinite() {
                v == w
            } else {
                (v - w).abs() <= atol + rtol * w.abs()
            };
            assert!(ok, "{op:?}({x:e}) = {v:e}, want {w:e}");
        }
    }
}

/// A second compile of the same model hits the disk cache (asserted by the outcome and the
/// process counters, not by time); a corrupted entry is detected and rebuilt, never loaded.
#[test]
fn compiled_code_is_cached_and_verified() {
    use smelt_runtime::cache::{self, Outcome};
    let dir = std::env::temp_dir().join(format!("smelt-c-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let g = common::graphs::gelu_mlp(4, 8, 16).unwrap();
    let open = || {
        let opts = SessionOptions {
            cache_dir: Some(dir.clone()),
            reuse_loaded: false,
            ..SessionOptions::default()
        };
        Session::with_options(g.clone(), Device::Cpu, &opts).unwrap()
    };
    let info = |s: &Session| s.cpu_model().unwrap().info().clone();
    let first = open();
    assert_eq!(info(&first).outcome, Outcome::Built);
    let (hits, _, _) = cache::counters();
    let second = open();
    assert_eq!(info(&second).outcome, Outcome::Disk);
    assert!(cache::counters().0 > hits);
    // Corrupt the entry: flip a byte in the middle of the shared object. (Into a new file
    // renamed over it, as a damaged disk would look to a new process: rewriting the file in
    // place would change the pages this process has mapped.)
    let path = info(&second).path;
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    let tmp = path.with_extension("corrupt");
    std::fs::write(&tmp, &bytes).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let third = open();
    assert_eq!(info(&third).outcome, Outcome::Rebuilt);
    assert!(cache::verify(&std::fs::read(&path).unwrap()));
    // Every session still computes the right thing.
    let inputs = feeds(&g, 9);
    let want = interp::run(&g, &inputs).unwrap();
    for s in [&first, &second, &third] {
        let got = s.run(&inputs).unwrap();
        common::compare(&got[0].1, &want[0].1, 1e-4, 1e-5).unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The arena holds only intermediates and constants, reuses dead buffers (smaller than the
/// sum of what it holds on a model with reuse), and no two buffers live at once overlap.
#[test]
fn the_arena_reuses_dead_buffers() {
    let g = common::graphs::gpt2_block(2, 8, 16, 2).unwrap();
    let c = smelt::compile_for(
        &g,
        &Options {
            fuse: false,
            ..Options::default()
        },
        smelt::kernel::Target::Cpu,
    )
    .unwrap();
    let (program, plan) = (&c.program, &c.program.layout);
    let life = smelt::schedule::arena::program_lifetimes(program);
    let slots = &plan.slots;
    let held: usize = life
        .iter()
        .zip(slots)
        .filter(|(_, s)| s.is_none())
        .map(|(l, _)| l.bytes.div_ceil(64) * 64)
        .sum();
    assert!(plan.size < held, "arena {} of {held}", plan.size);
    for i in 0..life.len() {
        for j in i + 1..life.len() {
            if slots[i].is_some() || slots[j].is_some() {
                continue;
            }
            let live = life[i].first <= life[j].last && life[j].first <= life[i].last;
            let (a0, a1) = (plan.offsets[i], plan.offsets[i] + life[i].bytes);
            let (b0, b1) = (plan.offsets[j], plan.offsets[j] + life[j].bytes);
            assert!(!(live && a0 < b1 && b0 < a1), "buffers {i} and {j} overlap");
        }
    }
}

/// The same model compiles to byte-identical C and CUDA sources (the cache keys and the
/// snapshots rely on it): names come from the IR, nothing iterates a hash map.
#[test]
fn sources_are_deterministic() {
    let sources = || {
        let g = common::graphs::gpt2_block(2, 8, 16, 2).unwrap();
        let c = smelt::compile(&g, &Options::default()).unwrap();
        let cpu = c.retarget(smelt::kernel::Target::Cpu).unwrap();
        let c_src = smelt::codegen::c::render(&cpu.program).unwrap();
        let cuda = smelt::codegen::cuda::render(&c.program).unwrap();
        (c_src, cuda)
    };
    assert_eq!(sources(), sources());
}

/// Kernels that differ only in their buffers share one C body, however the buffers are
/// numbered: a 12-layer GPT-2 stack has no more bodies than a 2-layer one (whose second
/// layer fuses one transpose differently, the graph's end being nearer), and it still
/// gives the reference's outputs.
#[test]
fn layers_share_bodies_at_every_depth() {
    let bodies = |layers: usize| {
        let g = common::graphs::gpt2_stack(layers, 1, 16, 32, 2).unwrap();
        let c = smelt::compile(&g, &Options::default()).unwrap();
        let cpu = c.retarget(smelt::kernel::Target::Cpu).unwrap();
        let src = smelt::codegen::c::render(&cpu.program).unwrap();
        let n = src.matches("// body ").count();
        (cpu.program.kernels.len(), n, g)
    };
    let (k2, b2, _) = bodies(2);
    let (k12, b12, g12) = bodies(12);
    assert!(k12 >= 5 * k2, "{k12} kernels for 12 layers, {k2} for 2");
    assert!(b12 <= b2, "12 layers: {b12} bodies, 2 layers: {b2}");
    check(&g12, true);
}

/// Edge cases an outside review found: empty tensors with long rows write nothing; an integer
/// division by zero is an error (as in the reference), not a trap; f16 softmax rounds once.
#[test]
fn edge_cases_are_errors_or_exact() {
    use smelt::DType;
    // Empty, with rows longer than a block's chunk.
    let mut b = smelt::GraphBuilder::new();
    let x = b.input("x", DType::F32, &[0, 40_000]).unwrap();
    let y = b.relu(x).unwrap();
    b.output("y", y).unwrap();
    let g = b.build().unwrap();
    let inputs = HashMap::from([("x".to_string(), Tensor::f32([0, 40_000], vec![]))]);
    let out = session(&g, true).run(&inputs).unwrap();
    assert_eq!(out[0].1.shape(), &[0, 40_000]);
    // Integer division by zero.
    let mut b = smelt::GraphBuilder::new();
    let x = b.input("x", DType::I64, &[4]).unwrap();
    let d = b.input("d", DType::I64, &[4]).unwrap();
    let q = b.div(x, d).unwrap();
    b.output("q", q).unwrap();
    let g = b.build().unwrap();
    let s = session(&g, true);
    let div_feeds = |den: Vec<i64>| {
        HashMap::from([
            ("x".to_string(), Tensor::i64([4], vec![7, -7, i64::MIN, 9])),
            ("d".to_string(), Tensor::i64([4], den)),
        ])
    };
    let ok = s.run(&div_feeds(vec![2, 2, -1, 3])).unwrap();
    assert_eq!(
        ok[0].1.to_i64(),
        interp::run(&g, &div_feeds(vec![2, 2, -1, 3])).unwrap()[0]
            .1
            .to_i64()
    );
    let err = s.run(&div_feeds(vec![2, 0, 1, 3])).unwrap_err().to_string();
    assert!(err.contains("division by zero"), "{err}");
    assert!(interp::run(&g, &div_feeds(vec![2, 0, 1, 3])).is_err());
    // f16 softmax.
    let mut b = smelt::GraphBuilder::new();
    let x = b.input("x", DType::F16, &[5, 300]).unwrap();
    let y = b.softmax(x, -1).unwrap();
    b.output("y", y).unwrap();
    let g = b.build().unwrap();
    let inputs = feeds(&g, 4);
    let want = interp::run(&g, &inputs).unwrap();
    let got = session(&g, true).run(&inputs).unwrap();
    let (rtol, atol) = common::tolerance(DType::F16);
    common::compare(&got[0].1, &want[0].1, rtol, atol).unwrap();
}

/// `--dtype f16|bf16`: the graph with f32 storage replaced keeps the f32 graph's interface,
/// and every way of running it (the reference interpreter, the C backend, the kernel IR on
/// both targets; fused and unfused) stays close to the f32 result: 2e-2 relative + 1e-2
/// absolute for f16, 6e-2 + 5e-2 for bf16 (8 mantissa bits, a whole block of ops). A fused
/// kernel rounds to the storage type once where the reference rounds after every op, so they
/// are compared with the f32 result rather than with each other.
#[test]
fn reduced_precision_storage() {
    use smelt::kernel::{interp as kinterp, lower_for, Target};
    use smelt::DType;
    let g = common::graphs::gpt2_block(2, 8, 16, 2).unwrap();
    let inputs = feeds(&g, 3);
    let exact = interp::run(&g, &inputs).unwrap();
    for (d, rtol, atol) in [(DType::F16, 2e-2, 1e-2), (DType::BF16, 6e-2, 5e-2)] {
        let h = smelt::ir::with_storage(&g, d).unwrap();
        assert_eq!(h.nodes[h.inputs[0]].ty, g.nodes[g.inputs[0]].ty);
        assert_eq!(h.nodes[h.outputs[0].1].ty, g.nodes[g.outputs[0].1].ty);
        assert!(h.nodes.iter().any(|n| n.ty.dtype == d));
        let close = |label: &str, got: &[(String, Tensor)]| {
            common::compare(&got[0].1, &exact[0].1, rtol, atol)
                .unwrap_or_else(|e| panic!("{label}, {d}: {e}"));
        };
        close("reference", &interp::run(&h, &inputs).unwrap());
        for fuse in [true, false] {
            close(
                &format!("C backend, fuse {fuse}"),
                &session(&h, fuse).run(&inputs).unwrap(),
            );
            let c = smelt::compile(
                &h,
                &Options {
                    fuse,
                    ..Options::default()
                },
            )
            .unwrap();
            for target in [Target::Gpu, Target::Cpu] {
                let p = lower_for(&c.graph, target).unwrap();
                close(
                    &format!("kernel IR {target:?}, fuse {fuse}"),
                    &kinterp::run(&p, &inputs).unwrap(),
                );
            }
        }
    }
}

/// Integer graph with values far past 2^24 (where f32 accumulation would round) and sums
/// under 2^53 (the kernel-IR interpreter keeps buffers in f64): row and column sums, max,
/// min, a cumulative sum and an integer matrix product.
fn big_integers() -> (Graph, HashMap<String, Tensor>) {
    use smelt::ir::{Op, ReduceKind};
    use smelt::DType;
    let mut b = smelt::GraphBuilder::new();
    let x = b.input("x", DType::I64, &[4, 300]).unwrap();
    let w = b.input("w", DType::I64, &[300, 3]).unwrap();
    for (name, kind, axis) in [
        ("row_sum", ReduceKind::Sum, 1),
        ("col_sum", ReduceKind::Sum, 0),
        ("row_max", ReduceKind::Max, 1),
        ("row_min", ReduceKind::Min, 1),
    ] {
        let r = b.reduce(kind, x, &[axis], false).unwrap();
        b.output(name, r).unwrap();
    }
    let c = b
        .op(
            Op::CumSum {
                axis: 1,
                exclusive: false,
                reverse: false,
            },
            &[x],
        )
        .unwrap();
    b.output("cumsum", c).unwrap();
    let p = b.matmul(x, w).unwrap();
    b.output("product", p).unwrap();
    let g = b.build().unwrap();
    let xs: Vec<i64> = (0..1200i64)
        .map(|i| (i - 600) * (1 << 30) + 12345 * i)
        .collect();
    let ws: Vec<i64> = (0..900i64).map(|i| (i % 7) - 3).collect();
    let inputs = HashMap::from([
        ("x".to_string(), Tensor::i64([4, 300], xs)),
        ("w".to_string(), Tensor::i64([300, 3], ws)),
    ]);
    (g, inputs)
}

/// Integer reductions, cumulative sums and products are exact (they accumulate in i64, not
/// in the float type) on the C backend and in the GPU lowering, fused and unfused.
#[test]
fn integer_accumulation_is_exact() {
    let (g, inputs) = big_integers();
    let want = interp::run(&g, &inputs).unwrap();
    for fuse in [true, false] {
        let got = session(&g, fuse).run(&inputs).unwrap();
        let c = smelt::compile(
            &g,
            &Options {
                fuse,
                ..Options::default()
            },
        )
        .unwrap();
        let program = smelt::kernel::lower(&c.graph).unwrap();
        let lowered = smelt::kernel::interp::run(&program, &inputs).unwrap();
        for (((n, w), (_, v)), (_, l)) in want.iter().zip(&got).zip(&lowered) {
            assert_eq!(v.to_i64(), w.to_i64(), "C backend {n} (fuse {fuse})");
            assert_eq!(l.to_i64(), w.to_i64(), "GPU lowering {n} (fuse {fuse})");
        }
    }
}

/// Float max/min folds vectorize with OpenMP's plain max/min and keep NaN in a flag beside
/// them: a row with a NaN anywhere (first, middle, last) reduces to NaN and softmaxes to
/// NaN, in f32 and f64, like the reference; rows of infinities stay exact.
#[test]
fn max_and_min_folds_propagate_nan() {
    let cols = 37;
    let nan = f32::NAN;
    let mut rows: Vec<Vec<f32>> = Vec::new();
    for at in [0, 18, cols - 1] {
        let mut r: Vec<f32> = (0..cols).map(|i| (i as f32 * 0.37).sin()).collect();
        r[at] = nan;
        rows.push(r);
    }
    rows.push(vec![f32::NEG_INFINITY; cols]);
    rows.push(
        (0..cols)
            .map(|i| if i == 5 { f32::INFINITY } else { -(i as f32) })
            .collect(),
    );
    rows.push((0..cols).map(|i| (i as f32 * 1.3).cos() * 3.0).collect());
    let n = rows.len();
    let x: Vec<f32> = rows.concat();
    for dtype in [smelt::DType::F32, smelt::DType::F64] {
        let mut b = smelt::GraphBuilder::new();
        let x0 = b.input("x", smelt::DType::F32, &[n, cols]).unwrap();
        let xv = if dtype == smelt::DType::F64 {
            b.cast(x0, dtype).unwrap()
        } else {
            x0
        };
        for (name, kind) in [
            ("max", smelt::ir::ReduceKind::Max),
            ("min", smelt::ir::ReduceKind::Min),
        ] {
            let r = b.reduce(kind, xv, &[-1], false).unwrap();
            b.output(name, r).unwrap();
        }
        let s = b.softmax(xv, -1).unwrap();
        b.output("softmax", s).unwrap();
        let g = b.build().unwrap();
        let inputs = HashMap::from([("x".to_string(), Tensor::f32([n, cols], x.clone()))]);
        let want = interp::run(&g, &inputs).unwrap();
        for fuse in [true, false] {
            let got = session(&g, fuse).run(&inputs).unwrap();
            for ((name, w), (_, v)) in want.iter().zip(&got) {
                let (w, v) = (w.to_f64(), v.to_f64());
                for (i, (w, v)) in w.iter().zip(&v).enumerate() {
                    let ok = if w.is_nan() {
                        v.is_nan()
                    } else {
                        v == w || (w.is_finite() && (v - w).abs() <= 1e-6 + 1e-5 * w.abs())
                    };
                    assert!(ok, "{dtype:?} {name}[{i}] (fuse {fuse}) = {v}, want {w}");
                }
                assert!(w.iter().any(|w| w.is_nan()), "{name}: no NaN tested");
            }
        }
    }
}

/// f32 weights that are the right operand of one product are stored packed in column
/// panels at compile time, and the packed product gives the reference's results: row
/// counts that are not a multiple of the tile's (13), column counts that are not a multiple
/// of the panel (70, 33), a transposed weight (packed through its strides), a weight
/// broadcast over a batch, a weight two products share and one a product reads as both
/// operands (both left unpacked).
#[test]
fn packed_weight_products_match_reference() {
    use smelt::DType;
    // Scaled by 1/√rows, so four chained products stay well conditioned for the tolerance.
    let w = |r: usize, c: usize, seed: u64| {
        let t = smelt::Tensor::random(DType::F32, &[r, c], seed);
        let s = 1.0 / (r as f64).sqrt();
        Tensor::f32([r, c], t.to_f64().iter().map(|v| (v * s) as f32).collect())
    };
    let mut b = smelt::GraphBuilder::new();
    let x = b.input("x", DType::F32, &[2, 13, 37]).unwrap();
    let w1 = b.constant(w(37, 70, 1));
    let y1 = b.matmul(x, w1).unwrap();
    let w2t = b.constant(w(33, 70, 2));
    let w2 = b.transpose(w2t, &[1, 0]).unwrap();
    let y2 = b.matmul(y1, w2).unwrap();
    let y2 = b.relu(y2).unwrap();
    let shared = b.constant(w(33, 33, 3));
    let y3 = b.matmul(y2, shared).unwrap();
    let y4 = b.matmul(y3, shared).unwrap();
    b.output("y", y4).unwrap();
    // W·W with W a constant (too big to fold): one product reads W as both operands, so
    // it stays unpacked.
    let wsq = b.constant(w(300, 300, 4));
    let gram = b.matmul(wsq, wsq).unwrap();
    let x2 = b.input("x2", DType::F32, &[300, 300]).unwrap();
    let z = b.add(gram, x2).unwrap();
    b.output("z", z).unwrap();
    let g = b.build().unwrap();
    for fuse in [true, false] {
        let s = session(&g, fuse);
        let text = s.cpu_model().unwrap().program().to_string();
        assert_eq!(text.matches("in panels of 32").count(), 2, "{text}");
        check(&g, fuse);
    }
}

/// `Session::warm_up` runs the plan once on zeros (the thread pool starts, the arena's pages
/// are touched; on a GPU the CUDA graph is captured) and the runs after it give the
/// reference's outputs, on every reference model; on the reference interpreter it does
/// nothing.
#[test]
fn warm_up_then_run() {
    for (name, g) in common::reference_models() {
        let s = session(&g, true);
        s.warm_up()
            .unwrap_or_else(|e| panic!("{}: {e}", name.display()));
        let inputs = feeds(&g, 3);
        let want = interp::run(&g, &inputs).unwrap();
        let got = s.run(&inputs).unwrap();
        for ((n, w), (_, v)) in want.iter().zip(&got) {
            common::compare(v, w, 1e-4, 1e-5)
                .unwrap_or_else(|e| panic!("{} {n}: {e}", name.display()));
        }
    }
    let g = common::graphs::gpt2_block(1, 4, 8, 2).unwrap();
    Session::new(g, Device::Interp).unwrap().warm_up().unwrap();
}

/// Grouped convolutions run as the direct kernel (each tap adds a contiguous run of an input
/// row over the columns it sees): depthwise and two channels per group, strides, dilations,
/// padding wider than the window on one side only, a window wider than the image, a bias, a
/// weight that is computed rather than stored, and a fused epilogue.
#[test]
fn grouped_convolutions_match_reference() {
    use smelt::ir::{Conv2d, Op};
    use smelt::DType;
    // channels, group, out channels, image h×w, kernel, strides, pads, dilations
    struct Case(
        usize,
        usize,
        usize,
        [usize; 2],
        [usize; 2],
        [usize; 2],
        [usize; 4],
        [usize; 2],
    );
    let cases = [
        Case(8, 8, 8, [9, 11], [7, 7], [1, 1], [3, 3, 3, 3], [1, 1]),
        Case(6, 3, 6, [10, 10], [3, 3], [2, 2], [1, 1, 1, 1], [1, 1]),
        Case(4, 2, 8, [8, 9], [3, 2], [1, 2], [0, 4, 2, 0], [2, 1]),
        Case(3, 3, 6, [5, 5], [3, 3], [1, 1], [0, 0, 0, 0], [1, 1]),
        Case(2, 2, 2, [3, 4], [5, 7], [1, 1], [2, 3, 2, 3], [1, 1]),
        Case(4, 4, 4, [6, 7], [3, 3], [3, 2], [1, 0, 1, 2], [2, 2]),
    ];
    for (k, Case(c, group, oc, [h, w], [kh, kw], strides, pads, dilations)) in
        cases.into_iter().enumerate()
    {
        let mut b = smelt::GraphBuilder::new();
        let x = b.input("x", DType::F32, &[2, c, h, w]).unwrap();
        let wt = b.constant(smelt::Tensor::random(
            DType::F32,
            &[oc, c / group, kh, kw],
            40 + k as u64,
        ));
        // Every other case computes its weight (scaled by an input) and skips the bias.
        let (wt, bias) = if k % 2 == 1 {
            let s = b.input("s", DType::F32, &[1]).unwrap();
            (b.mul(wt, s).unwrap(), None)
        } else {
            (
                wt,
                Some(b.constant(smelt::Tensor::random(DType::F32, &[oc], 50 + k as u64))),
            )
        };
        let conv = Op::Conv(Conv2d {
            strides,
            pads,
            dilations,
            group,
        });
        let mut ins = vec![x, wt];
        ins.extend(bias);
        let y = b.op(conv, &ins).unwrap();
        let y = b.relu(y).unwrap();
        b.output("y", y).unwrap();
        let g = b.build().unwrap();
        for fuse in [true, false] {
            let s = session(&g, fuse);
            let p = s.cpu_model().unwrap().program().clone();
            assert!(
                p.kernels.iter().any(|k| k.name.ends_with("grouped_conv")),
                "case {k}: no direct kernel\n{p}"
            );
        }
        check(&g, true);
        check(&g, false);
    }
}

/// A 2-D pool over an `[2, 3, h, w]` input, then (`epilogue`) an add of a second input
/// and a ReLU over the pooled result.
fn pool_graph(p: smelt::ir::Pool2d, [h, w]: [usize; 2], epilogue: bool) -> Graph {
    use smelt::DType;
    let mut b = smelt::GraphBuilder::new();
    let x = b.input("x", DType::F32, &[2, 3, h, w]).unwrap();
    let mut y = b.op(smelt::ir::Op::Pool(p), &[x]).unwrap();
    if epilogue {
        let shape = b.graph().nodes[y.0].ty.shape.clone();
        let r = b.input("r", DType::F32, &shape).unwrap();
        y = b.add(y, r).unwrap();
        y = b.relu(y).unwrap();
    }
    b.output("y", y).unwrap();
    b.build().unwrap()
}

/// The CPU program of `g` (fused or not) computes its pools with the direct kernel.
fn assert_direct_pool(g: &Graph, what: &str) {
    for fuse in [true, false] {
        let p = session(g, fuse).cpu_model().unwrap().program().clone();
        assert!(
            p.kernels.iter().any(|k| k.name.contains("direct_")),
            "{what} (fuse {fuse}): no direct pool kernel\n{p}"
        );
    }
}

/// Pools run as the direct kernel (per output row, each window tap folds a contiguous run
/// of an input row into the row, over the columns it sees) in every layer: max and average
/// (padding counted or not), strides 1 and 2, symmetric and asymmetric pads, dilation 2,
/// ceil mode (windows hanging past the padding), 3×3, 2×2, 1×K and ten-column windows, a
/// window as wide as the padded image, batch 2, alone and followed by an add and a ReLU
/// (kernels of their own: the optimizer does not fuse pools; see
/// `pools_in_fused_bodies_match_reference` for fused bodies).
#[test]
fn pools_match_reference() {
    use smelt::ir::{Pool2d, PoolKind};
    let max = PoolKind::Max;
    let avg = PoolKind::Avg {
        count_include_pad: false,
    };
    // Padding counted.
    let avgp = PoolKind::Avg {
        count_include_pad: true,
    };
    // kind, image h×w, kernel, strides, pads [top, left, bottom, right], dilations, ceil
    let case = |kind, hw, kernel, strides, pads, dilations, ceil_mode| {
        let p = Pool2d {
            kind,
            kernel,
            strides,
            pads,
            dilations,
            ceil_mode,
        };
        (p, hw)
    };
    let cases = [
        case(max, [12, 12], [3, 3], [2, 2], [1, 1, 1, 1], [1, 1], false),
        case(max, [9, 11], [3, 3], [1, 1], [1, 1, 1, 1], [1, 1], false),
        case(max, [8, 9], [2, 2], [2, 2], [0, 0, 0, 0], [1, 1], false),
        case(max, [9, 10], [3, 2], [2, 1], [0, 1, 2, 0], [1, 1], false),
        case(max, [10, 11], [3, 3], [1, 2], [2, 2, 1, 2], [2, 2], false),
        case(max, [8, 9], [3, 3], [2, 2], [0, 0, 0, 0], [1, 1], true),
        case(max, [7, 10], [2, 3], [3, 2], [1, 0, 0, 2], [1, 2], true),
        case(max, [5, 13], [1, 5], [1, 3], [0, 2, 0, 2], [1, 1], false),
        case(max, [4, 4], [3, 5], [1, 1], [1, 2, 1, 2], [1, 1], false),
        case(avg, [9, 10], [3, 3], [2, 2], [1, 1, 1, 1], [1, 1], true),
        case(avgp, [9, 10], [3, 3], [2, 2], [1, 0, 2, 1], [1, 1], true),
        case(avgp, [6, 11], [2, 4], [1, 3], [0, 1, 1, 2], [2, 1], false),
        // Ten window columns: the interior folds them in two loops.
        case(max, [6, 23], [2, 10], [1, 1], [1, 4, 0, 5], [1, 1], false),
        case(avg, [5, 20], [1, 9], [1, 2], [0, 3, 0, 3], [1, 1], true),
    ];
    for (k, (p, hw)) in cases.into_iter().enumerate() {
        for epilogue in [false, true] {
            let g = pool_graph(p.clone(), hw, epilogue);
            let what = format!("case {k} (epilogue {epilogue})");
            assert_direct_pool(&g, &what);
            common::layers::every_layer(&g).unwrap_or_else(|e| panic!("{what}: {e}"));
        }
    }
}

/// A window wider than the direct kernel takes (65 columns) keeps the generic kernel, and
/// gives the reference's results.
#[test]
fn wide_pool_windows_keep_the_generic_kernel() {
    use smelt::ir::{Pool2d, PoolKind};
    for kind in [
        PoolKind::Max,
        PoolKind::Avg {
            count_include_pad: false,
        },
    ] {
        let p = Pool2d {
            kind,
            kernel: [2, 65],
            strides: [1, 4],
            pads: [0, 3, 0, 3],
            dilations: [1, 1],
            ceil_mode: false,
        };
        let g = pool_graph(p, [3, 80], false);
        let program = session(&g, true).cpu_model().unwrap().program().clone();
        assert!(
            !program.kernels.iter().any(|k| k.name.contains("direct_")),
            "{kind:?}: a direct kernel\n{program}"
        );
        common::layers::every_layer(&g).unwrap();
    }
}

/// ResNet's stem: a 7×7 stride-2 convolution with a bias, ReLU, then a 3×3 stride-2 max
/// pool (padding 1), batch 2: the pool reads the activation through the fused body.
#[test]
fn conv_relu_max_pool_stem_matches_reference() {
    use smelt::ir::{Conv2d, Op, Pool2d, PoolKind};
    use smelt::DType;
    let mut b = smelt::GraphBuilder::new();
    let x = b.input("x", DType::F32, &[2, 3, 20, 22]).unwrap();
    let w = b.constant(smelt::Tensor::random(DType::F32, &[8, 3, 7, 7], 61));
    let bias = b.constant(smelt::Tensor::random(DType::F32, &[8], 62));
    let conv = Op::Conv(Conv2d {
        strides: [2, 2],
        pads: [3, 3, 3, 3],
        dilations: [1, 1],
        group: 1,
    });
    let y = b.op(conv, &[x, w, bias]).unwrap();
    let y = b.relu(y).unwrap();
    let pool = Op::Pool(Pool2d {
        kind: PoolKind::Max,
        kernel: [3, 3],
        strides: [2, 2],
        pads: [1, 1, 1, 1],
        dilations: [1, 1],
        ceil_mode: false,
    });
    let y = b.op(pool, &[y]).unwrap();
    b.output("y", y).unwrap();
    let g = b.build().unwrap();
    assert_direct_pool(&g, "stem");
    common::layers::every_layer(&g).unwrap();
}

/// A NaN in a max pool's window makes its output NaN wherever it lies in the window (first
/// tap, middle, last, next to the padding), in every layer, like the reference; windows
/// without one stay exact.
#[test]
fn max_pools_propagate_nan() {
    use smelt::ir::{Pool2d, PoolKind};
    use smelt::kernel::interp::{self as kinterp, Products};
    use smelt::kernel::Target;
    let (h, w) = (9, 10);
    for (strides, pads, ceil_mode) in [([2, 2], [1, 1, 1, 1], false), ([1, 1], [0, 1, 2, 0], true)]
    {
        let p = Pool2d {
            kind: PoolKind::Max,
            kernel: [3, 3],
            strides,
            pads,
            dilations: [1, 1],
            ceil_mode,
        };
        for epilogue in [false, true] {
            let g = pool_graph(p.clone(), [h, w], epilogue);
            let mut inputs = g.random_inputs(3);
            let mut xv = inputs["x"].to_f64();
            for at in [
                0,
                4,
                w - 1,
                2 * w + 5,
                5 * w + 9,
                (h - 1) * w + 3,
                h * w + 17,
            ] {
                xv[at] = f64::NAN;
            }
            let shape = inputs["x"].shape().to_vec();
            let xt = Tensor::f32(
                [shape[0], shape[1], shape[2], shape[3]],
                xv.iter().map(|&v| v as f32).collect(),
            );
            inputs.insert("x".into(), xt);
            let want = interp::run(&g, &inputs).unwrap();
            let ws = want[0].1.to_f64();
            assert!(ws.iter().any(|v| v.is_nan()) && ws.iter().any(|v| !v.is_nan()));
            for fuse in [true, false] {
                let c = session(&g, fuse).run(&inputs).unwrap();
                let opts = Options {
                    fuse,
                    ..Options::default()
                };
                let cpu = smelt::compile(&g, &opts)
                    .unwrap()
                    .retarget(Target::Cpu)
                    .unwrap();
                let k = kinterp::run_with(&cpu.program, &inputs, Products::Kernels).unwrap();
                for (layer, got) in [("C backend", &c), ("kernel IR", &k)] {
                    common::compare(&got[0].1, &want[0].1, 1e-5, 1e-6).unwrap_or_else(|e| {
                        panic!("{layer} (fuse {fuse}, epilogue {epilogue}, {p:?}): {e}")
                    });
                }
            }
        }
    }
}

/// Pools inside fused bodies (the optimizer keeps pools in kernels of their own today; the
/// CPU lowering takes any body, as it does products): the pool reads its input through the
/// body's prologue (an activation, a convolution's bias and ReLU, a transpose) or, when
/// that is not elementwise (a softmax), from a scratch copy, and the rest of the body runs
/// as an epilogue over the pooled result, in place when elementwise, else from a scratch
/// buffer (a softmax after the pool). Checked in the kernel-IR interpreter and the C backend.
#[test]
fn pools_in_fused_bodies_match_reference() {
    use smelt::ir::{Conv2d, FusedKernel, KernelKind, Op, Pool2d, PoolKind};
    use smelt::kernel::Target;
    use smelt::{DType, GraphBuilder, Value};
    let pool = |kind, kernel, strides, pads, ceil_mode| {
        Op::Pool(Pool2d {
            kind,
            kernel,
            strides,
            pads,
            dilations: [1, 1],
            ceil_mode,
        })
    };
    let max3 = pool(PoolKind::Max, [3, 3], [2, 2], [1, 1, 1, 1], false);
    let max2 = pool(PoolKind::Max, [2, 2], [2, 2], [0, 0, 0, 0], false);
    let avg = pool(
        PoolKind::Avg {
            count_include_pad: true,
        },
        [3, 3],
        [2, 2],
        [1, 0, 1, 1],
        true,
    );
    type Body = Box<dyn Fn(&mut GraphBuilder, &[Value]) -> Value>;
    let x = [2, 3, 9, 10];
    // name, kind, input shapes, body
    let cases: Vec<(&str, KernelKind, Vec<Vec<usize>>, Body)> = vec![
        (
            "relu, pool, add, relu",
            KernelKind::Elementwise,
            vec![x.to_vec(), vec![2, 3, 5, 5]],
            Box::new(move |b, v| {
                let t = b.relu(v[0]).unwrap();
                let p = b.op(max3.clone(), &[t]).unwrap();
                let s = b.add(p, v[1]).unwrap();
                b.relu(s).unwrap()
            }),
        ),
        (
            "conv, relu, pool, add",
            KernelKind::Conv,
            vec![x.to_vec(), vec![4, 3, 3, 3], vec![4], vec![2, 4, 5, 5]],
            Box::new({
                let max3 = pool(PoolKind::Max, [3, 3], [2, 2], [1, 1, 1, 1], false);
                move |b, v| {
                    let conv = Op::Conv(Conv2d {
                        strides: [1, 1],
                        pads: [1, 1, 1, 1],
                        dilations: [1, 1],
                        group: 1,
                    });
                    let c = b.op(conv, &[v[0], v[1], v[2]]).unwrap();
                    let t = b.relu(c).unwrap();
                    let p = b.op(max3.clone(), &[t]).unwrap();
                    b.add(p, v[3]).unwrap()
                }
            }),
        ),
        (
            "softmax, pool, add",
            KernelKind::Row { axis: 3 },
            vec![x.to_vec(), vec![2, 3, 4, 5]],
            Box::new(move |b, v| {
                let s = b.softmax(v[0], -1).unwrap();
                let p = b.op(max2.clone(), &[s]).unwrap();
                b.add(p, v[1]).unwrap()
            }),
        ),
        (
            "transpose, average pool, mul",
            KernelKind::Elementwise,
            vec![vec![2, 9, 10, 3], vec![1, 3, 1, 1]],
            Box::new(move |b, v| {
                let t = b.transpose(v[0], &[0, 3, 1, 2]).unwrap();
                let p = b.op(avg.clone(), &[t]).unwrap();
                b.mul(p, v[1]).unwrap()
            }),
        ),
        (
            "pool, softmax",
            KernelKind::Row { axis: 3 },
            vec![x.to_vec()],
            Box::new({
                let max3 = pool(PoolKind::Max, [3, 3], [2, 2], [1, 1, 1, 1], false);
                move |b, v| {
                    let p = b.op(max3.clone(), &[v[0]]).unwrap();
                    b.softmax(p, -1).unwrap()
                }
            }),
        ),
    ];
    for (what, kind, shapes, build) in cases {
        let mut bb = GraphBuilder::new();
        let ins: Vec<Value> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| bb.input(&format!("in{i}"), DType::F32, s).unwrap())
            .collect();
        let y = build(&mut bb, &ins);
        bb.output("out", y).unwrap();
        let body = bb.build().unwrap();
        let mut b = GraphBuilder::new();
        let ins: Vec<Value> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| b.input(&format!("x{i}"), DType::F32, s).unwrap())
            .collect();
        let fused = Op::Fused(std::sync::Arc::new(FusedKernel { kind, body }));
        let y = b.op(fused, &ins).unwrap();
        b.output("y", y).unwrap();
        let g = b.build().unwrap();
        let program = smelt::kernel::lower_for(&g, Target::Cpu).unwrap();
        assert!(
            program.kernels.iter().any(|k| k.name.contains("direct_")),
            "{what}: no direct pool kernel\n{program}"
        );
        let model = smelt_runtime::cpu::CpuModel::new(&program, 2).unwrap();
        for seed in [1, 2] {
            let inputs = g.random_inputs(seed);
            let want = interp::run(&g, &inputs).unwrap();
            let lowered = smelt::kernel::interp::run(&program, &inputs).unwrap();
            let compiled = model.run(&inputs).unwrap();
            for (layer, got) in [("kernel IR", &lowered), ("C backend", &compiled)] {
                common::compare(&got[0].1, &want[0].1, 1e-4, 1e-5)
                    .unwrap_or_else(|e| panic!("{what}, {layer}, seed {seed}: {e}\n{program}"));
            }
        }
    }
}
