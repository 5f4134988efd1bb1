//! Every kernel that lowering emits for the reference models (fused and unfused) and a
//! GPT-2-sized block renders to CUDA C that NVRTC compiles for sm_80 and sm_90 with no
//! register spills. Fails (never skips) without NVRTC.

use smelt_compiler::codegen::cuda;
use smelt_compiler::ir::{DType, GraphBuilder};
use smelt_compiler::kernel::lower;
use smelt_compiler::onnx::{import_file, ImportOptions};
use smelt_compiler::optimize::Options;
use smelt_compiler::{compile, ir::Graph};
use smelt_runtime::cuda::nvrtc;
use std::path::Path;

fn models() -> Vec<(String, Graph)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/models");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("model.onnx").exists())
        .collect();
    dirs.sort();
    dirs.into_iter()
        .map(|d| {
            let mut opts = ImportOptions::default();
            if let Ok(s) = std::fs::read_to_string(d.join("shapes.txt")) {
                for spec in s.split_whitespace() {
                    let (n, dims) = spec.split_once('=').unwrap();
                    opts.shapes.insert(
                        n.into(),
                        dims.split('x').map(|x| x.parse().unwrap()).collect(),
                    );
                }
            }
            let name = d.file_name().unwrap().to_string_lossy().to_string();
            (name, import_file(&d.join("model.onnx"), &opts).unwrap())
        })
        .collect()
}

fn compile_all(label: &str, g: &Graph) -> usize {
    let mut n = 0;
    for fuse in [true, false] {
        let c = compile(
            g,
            &Options {
                fuse,
                ..Options::default()
            },
        )
        .unwrap();
        let program = lower(&c.graph).unwrap();
        for (name, src) in cuda::render(&program).unwrap_or_else(|e| panic!("{label}: {e}")) {
            for arch in ["sm_80", "sm_90"] {
                let out = nvrtc::compile(&format!("{name}.cu"), &src, arch)
                    .unwrap_or_else(|e| panic!("{label} (fuse {fuse}): {e}\n{src}"));
                for (f, r) in &out.resources {
                    assert_eq!(
                        (r.spill_stores, r.spill_loads),
                        (0, 0),
                        "{label} {f} {arch} spills\n{src}\n{}",
                        out.log
                    );
                }
                n += 1;
            }
        }
    }
    n
}

#[test]
fn every_lowered_kernel_compiles_without_spills() {
    let mut total = 0;
    for (name, g) in models() {
        total += compile_all(&name, &g);
    }
    // An f16 softmax with scale and mask, and an f16 LayerNorm.
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F16, &[4, 64]).unwrap();
    let m = b.input("mask", DType::F16, &[1, 64]).unwrap();
    let k = b.scalar(DType::F16, 0.125);
    let s = b.mul(x, k).unwrap();
    let s = b.add(s, m).unwrap();
    let y = b.softmax(s, -1).unwrap();
    let scale = b.constant(smelt_compiler::ir::Tensor::from_f64(
        DType::F16,
        vec![64],
        &[1.5; 64],
    ));
    let z = b.layer_norm(x, scale, None, -1, 1e-5).unwrap();
    b.output("y", y).unwrap();
    b.output("z", z).unwrap();
    total += compile_all("f16 softmax+layernorm", &b.build().unwrap());
    // Every reference model in f16 and bf16 storage (--dtype).
    for (name, g) in models() {
        for d in [DType::F16, DType::BF16] {
            let g = smelt_compiler::ir::with_storage(&g, d).unwrap();
            total += compile_all(&format!("{name} in {d}"), &g);
        }
    }
    assert!(total > 300, "compiled {total} kernels");
}

/// Softmax, layernorm after a residual add, a mean and a log-softmax over rows of `len`.
fn rows(dtype: DType, rows: usize, len: usize) -> Graph {
    use smelt_compiler::ir::{ReduceKind, Tensor};
    let mut b = GraphBuilder::new();
    let x = b.input("x", dtype, &[rows, len]).unwrap();
    let r = b.input("r", dtype, &[len]).unwrap();
    let s = b.softmax(x, -1).unwrap();
    b.output("softmax", s).unwrap();
    let h = b.add(x, r).unwrap();
    let gamma = b.constant(Tensor::from_f64(dtype, vec![len], &vec![1.5; len]));
    let ln = b.layer_norm(h, gamma, None, -1, 1e-5).unwrap();
    b.output("layernorm", ln).unwrap();
    let m = b.reduce(ReduceKind::Mean, x, &[1], false).unwrap();
    b.output("mean", m).unwrap();
    let ls = b.log_softmax(h, -1).unwrap();
    b.output("log_softmax", ls).unwrap();
    b.build().unwrap()
}

/// Each GPU row layout (lanes per row, block per row in registers, streaming block with the
/// online-softmax and Welford merges) in f32, f16 and f64 compiles without spills: the
/// register budget of the cached layouts holds at every block size.
#[test]
fn row_layouts_compile_without_spills() {
    for d in [DType::F32, DType::F16, DType::F64] {
        for (r, len) in [
            (5, 6),
            (7, 300),
            (3, 1100),
            (3, 3000),
            (2, 8192),
            (2, 20000),
        ] {
            compile_all(&format!("rows {r}x{len} {d}"), &rows(d, r, len));
        }
    }
}

/// Vectorized pointwise kernels (vector loads of contiguous inputs, scalar loads of
/// broadcast, permuted and misaligned ones, one vector store) for every storage type,
/// including a bool output (8 bytes per access) and f64 (2 lanes).
#[test]
fn vectorized_pointwise_kernels_compile_without_spills() {
    use smelt_compiler::ir::{BinaryOp, Op};
    for d in [DType::F32, DType::F16, DType::BF16, DType::F64] {
        let mut b = GraphBuilder::new();
        let x = b.input("x", d, &[16, 64]).unwrap();
        let row = b.input("row", d, &[64]).unwrap();
        let col = b.input("col", d, &[16, 1]).unwrap();
        let t = b.input("t", d, &[64, 16]).unwrap();
        let wide = b.input("wide", d, &[16, 65]).unwrap();
        let tt = b.transpose(t, &[1, 0]).unwrap();
        let mut v = b.add(x, row).unwrap();
        v = b.mul(v, col).unwrap();
        v = b.sub(v, tt).unwrap();
        let s = b
            .op(
                Op::Slice {
                    starts: vec![0, 1],
                    steps: vec![1, 1],
                    lens: vec![16, 64],
                },
                &[wide],
            )
            .unwrap();
        v = b.add(v, s).unwrap();
        let mask = b.binary(BinaryOp::Greater, x, row).unwrap();
        b.output("mask", mask).unwrap();
        v = b.where_(mask, v, x).unwrap();
        v = b.gelu(v).unwrap();
        b.output("y", v).unwrap();
        compile_all(&format!("vectorized {d}"), &b.build().unwrap());
    }
}

/// The attention kernels (causal mask, scale) at head dims up to 128 (at 64 with the heads
/// merged back after): the K/V-tiled kernel in f32, the tiled tensor-core kernel in f16 and
/// bf16.
#[test]
fn attention_kernels_compile_without_spills() {
    use smelt_compiler::ir::Tensor;
    for d in [DType::F32, DType::F16, DType::BF16] {
        for (s, h) in [(16, 8), (64, 64), (128, 128)] {
            let mut b = GraphBuilder::new();
            let q = b.input("q", d, &[2, 4, s, h]).unwrap();
            let k = b.input("k", d, &[2, 4, s, h]).unwrap();
            let v = b.input("v", d, &[2, 4, s, h]).unwrap();
            let kt = b.transpose(k, &[0, 1, 3, 2]).unwrap();
            let scores = b.matmul(q, kt).unwrap();
            let scale = b.scalar(d, 1.0 / (h as f64).sqrt());
            let scores = b.mul(scores, scale).unwrap();
            let causal: Vec<f64> = (0..s * s)
                .map(|i| {
                    if i % s > i / s {
                        f64::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
                .collect();
            let m = b.constant(Tensor::from_f64(d, vec![s, s], &causal));
            let scores = b.add(scores, m).unwrap();
            let p = b.softmax(scores, -1).unwrap();
            let mut o = b.matmul(p, v).unwrap();
            if h == 64 {
                // Heads merged back: the kernel stores through the transpose and reshape.
                o = b.transpose(o, &[0, 2, 1, 3]).unwrap();
                o = b.reshape(o, &[2, s, 4 * h]).unwrap();
            }
            b.output("o", o).unwrap();
            let g = b.build().unwrap();
            let c = compile(&g, &Options::default()).unwrap();
            let program = lower(&c.graph).unwrap();
            let k = program
                .kernels
                .iter()
                .find(|k| k.name.contains("attention"))
                .unwrap_or_else(|| panic!("{d} {s}x{h}: {program}"));
            // f16/bf16 with at least a fragment of rows and keys: the tensor-core kernel.
            assert_eq!(!k.frags.is_empty(), d != DType::F32 && s >= 16, "{k}");
            compile_all(&format!("attention {d} {s}x{h}"), &g);
        }
    }
}

/// The shared-memory tiled product with a bias + GELU + residual epilogue, plain, batched
/// and with a transposed operand, in f32, f16 and bf16.
#[test]
fn tiled_products_compile_without_spills() {
    for d in [DType::F32, DType::F16, DType::BF16] {
        for (batch, m, k, n) in [(&[][..], 128, 256, 512), (&[4][..], 70, 45, 33)] {
            let mut b = GraphBuilder::new();
            let mut sa = batch.to_vec();
            sa.extend([m, k]);
            let x = b.input("x", d, &sa).unwrap();
            let wt = b.input("wt", d, &[n, k]).unwrap();
            let w = b.transpose(wt, &[1, 0]).unwrap();
            let bias = b.input("bias", d, &[n]).unwrap();
            let mut so = batch.to_vec();
            so.extend([m, n]);
            let res = b.input("res", d, &so).unwrap();
            let y = b.matmul(x, w).unwrap();
            let y = b.add(y, bias).unwrap();
            let y = b.gelu(y).unwrap();
            let y = b.add(y, res).unwrap();
            b.output("y", y).unwrap();
            let g = b.build().unwrap();
            let program = lower(&compile(&g, &Options::default()).unwrap().graph).unwrap();
            assert!(!program.kernels[0].shared.is_empty(), "{program}");
            compile_all(&format!("tiled {d} {batch:?} {m}x{k}x{n}"), &g);
        }
        // A 3×3 convolution, 32 → 64 channels on 56², as an implicit product with bias+ReLU.
        let mut b = GraphBuilder::new();
        let x = b.input("x", d, &[2, 32, 56, 56]).unwrap();
        let w = b.input("w", d, &[64, 32, 3, 3]).unwrap();
        let bias = b.input("bias", d, &[64]).unwrap();
        let conv = smelt_compiler::ir::Conv2d {
            strides: [1, 1],
            pads: [1, 1, 1, 1],
            dilations: [1, 1],
            group: 1,
        };
        let y = b
            .op(smelt_compiler::ir::Op::Conv(conv), &[x, w, bias])
            .unwrap();
        let y = b.relu(y).unwrap();
        b.output("y", y).unwrap();
        let g = b.build().unwrap();
        let program = lower(&compile(&g, &Options::default()).unwrap().graph).unwrap();
        assert!(!program.kernels[0].shared.is_empty(), "{program}");
        compile_all(&format!("tiled conv {d}"), &g);
    }
}

/// Every CUDA snapshot of the compiler's codegen tests (each a translation unit of one or
/// more kernels) compiles for sm_80 and sm_90 with no spills.
#[test]
fn every_codegen_snapshot_compiles_without_spills() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../compiler/tests/snapshots");
    let mut snaps: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "snap"))
        .collect();
    snaps.sort();
    assert!(snaps.len() >= 20, "{} snapshots", snaps.len());
    for path in snaps {
        let text = std::fs::read_to_string(&path).unwrap();
        // insta's header is the YAML between the first two `---` lines.
        let src = text.splitn(3, "---\n").nth(2).unwrap();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        // And under --fast-math (the fast exp in smelt's helpers and the intrinsics).
        let fast = format!(
            "#define SMELT_FAST_MATH 1\n{}",
            src.replace("expf(", "__expf(")
        );
        for (arch, src) in [("sm_80", src), ("sm_90", src), ("sm_90", fast.as_str())] {
            let out = nvrtc::compile(&format!("{name}.cu"), src, arch)
                .unwrap_or_else(|e| panic!("{name} {arch}: {e}"));
            assert!(!out.resources.is_empty(), "{name}: no kernels");
            for (f, r) in &out.resources {
                assert_eq!((r.spill_stores, r.spill_loads), (0, 0), "{name} {f} {arch}");
            }
        }
    }
}

/// Row kernels over integer tensors (max, min, sum, and an elementwise max of a tensor with
/// its row sum) in every row layout: the typed helpers see one argument type.
#[test]
fn integer_row_kernels_compile() {
    use smelt_compiler::ir::{BinaryOp, ReduceKind};
    for (d, len) in [(DType::I64, 100), (DType::I64, 3000), (DType::I32, 100_000)] {
        let mut b = GraphBuilder::new();
        let x = b.input("x", d, &[8, len]).unwrap();
        let mx = b.reduce(ReduceKind::Max, x, &[1], false).unwrap();
        b.output("max", mx).unwrap();
        let mn = b.reduce(ReduceKind::Min, x, &[1], false).unwrap();
        b.output("min", mn).unwrap();
        let s = b.reduce(ReduceKind::Sum, x, &[1], true).unwrap();
        let y = b.binary(BinaryOp::Max, x, s).unwrap();
        let y = b.sub(y, s).unwrap();
        b.output("y", y).unwrap();
        compile_all(&format!("integer rows {d} {len}"), &b.build().unwrap());
    }
}

/// The real-model corpus (`tests/models/real`): every kernel of every model's fused plan
/// compiles for sm_80 and sm_90 with no spills. Kernels with the same body (the same layer
/// in another model or at another depth) compile once; they are compiled many to a program,
/// on every core, since NVRTC's time is mostly per program.
#[test]
fn real_model_kernels_compile_without_spills() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/models/real");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("model.onnx").exists())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 20, "the corpus is in {}", root.display());
    // Function (the same body in every model has the same name) -> (source, where it was
    // first seen).
    let mut functions: std::collections::BTreeMap<String, (String, String)> = Default::default();
    let mut kernels = 0;
    for d in &dirs {
        let model = d.file_name().unwrap().to_string_lossy().to_string();
        let mut opts = ImportOptions::default();
        if let Ok(s) = std::fs::read_to_string(d.join("shapes.txt")) {
            for spec in s.split_whitespace() {
                let (n, dims) = spec.split_once('=').unwrap();
                opts.shapes.insert(
                    n.into(),
                    dims.split('x').map(|x| x.parse().unwrap()).collect(),
                );
            }
        }
        let g = import_file(&d.join("model.onnx"), &opts).unwrap();
        let c = compile(&g, &Options::default()).unwrap();
        let program = lower(&c.graph).unwrap();
        let module = cuda::render_module(&Default::default(), &program)
            .unwrap_or_else(|e| panic!("{model}: {e}"));
        kernels += program.kernels.len();
        for f in module.functions {
            let origin = format!("{model} {}", f.kernels[0]);
            functions.entry(f.name).or_insert((f.source, origin));
        }
    }
    let origin: std::collections::HashMap<String, String> = functions
        .iter()
        .map(|(name, (_, o))| (name.clone(), o.clone()))
        .collect();
    let unique: Vec<(String, String)> = functions.into_values().collect();
    let programs: Vec<String> = unique
        .chunks(32)
        .map(|c| {
            c.iter()
                .map(|(s, _)| s.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect();
    let jobs: Vec<(&str, &str)> = programs
        .iter()
        .flat_map(|p| ["sm_80", "sm_90"].map(|arch| (p.as_str(), arch)))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let failures: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut bad = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&(src, arch)) = jobs.get(i) else {
                            break;
                        };
                        match nvrtc::compile(&format!("corpus{i}.cu"), src, arch) {
                            Err(e) => bad.push(format!("{arch}: {e}")),
                            Ok(out) => {
                                for (f, r) in &out.resources {
                                    if (r.spill_stores, r.spill_loads) != (0, 0) {
                                        bad.push(format!(
                                            "{arch}: {} spills {} / {} bytes",
                                            origin.get(f).unwrap_or(f),
                                            r.spill_stores,
                                            r.spill_loads
                                        ));
                                    }
                                }
                            }
                        }
                    }
                    bad
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!(
        "{kernels} kernels, {} distinct bodies, compiled for sm_80 and sm_90",
        unique.len()
    );
}
