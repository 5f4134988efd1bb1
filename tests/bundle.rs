//! Ahead-of-time bundles: written and read back byte-identically (plan, launches, weights,
//! cubins), with clear errors for another format version, corruption, truncation and files
//! that are not bundles. Needs NVRTC (installed by scripts/setup); never skips.

mod common;

use smelt::optimize::Options;
use smelt_runtime::cuda::bundle::{Bundle, MAGIC, VERSION};
use smelt_runtime::cuda::nvrtc;

fn build() -> (smelt::Compiled, Bundle) {
    let g = common::graphs::gpt2_block(1, 8, 16, 2).unwrap();
    let c = smelt::compile(&g, &Options::default()).unwrap();
    let archs = vec!["sm_80".to_string(), "sm_90".to_string()];
    let b = Bundle::build(&c, &archs, &smelt_runtime::cache::dir()).unwrap();
    (c, b)
}

#[test]
fn bundles_round_trip_and_reject_bad_files() {
    let (c, b) = build();
    let dir = std::env::temp_dir().join(format!("smelt-bundle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.smelt");
    b.write(&path).unwrap();
    let back = Bundle::read(&path).unwrap();
    assert_eq!(back, b);
    assert_eq!(back.to_bytes(), std::fs::read(&path).unwrap());
    // The plan is the compiler's, byte for byte once printed.
    let plan: serde_json::Value = serde_json::from_str(&c.plan.to_json()).unwrap();
    assert_eq!(back.manifest.plan, plan);
    // Every function has a cubin per arch, equal to what NVRTC makes of its source, stored
    // once however many launches share it.
    let program = &c.program;
    let module = smelt::codegen::cuda::render_module(&Default::default(), program).unwrap();
    assert_eq!(back.manifest.launches.len(), program.kernels.len());
    for (l, (k, &fi)) in back
        .manifest
        .launches
        .iter()
        .zip(program.kernels.iter().zip(&module.of))
    {
        assert_eq!(l.name, k.name);
        assert_eq!(l.kernel, module.functions[fi].name);
    }
    for f in &module.functions {
        for arch in ["sm_80", "sm_90"] {
            let want = nvrtc::compile(&format!("{}.cu", f.name), &f.source, arch)
                .unwrap()
                .cubin;
            assert_eq!(
                back.cubin(&f.name, arch).unwrap(),
                want.as_slice(),
                "{} {arch}",
                f.name
            );
        }
        let blobs: std::collections::HashSet<u64> = back
            .manifest
            .launches
            .iter()
            .filter(|l| l.kernel == f.name)
            .flat_map(|l| {
                l.cubins
                    .iter()
                    .map(|(_, b)| b.offset)
                    .chain(l.source.iter().map(|b| b.offset))
            })
            .collect();
        assert_eq!(
            blobs.len(),
            3,
            "{}: one blob per arch and one source",
            f.name
        );
    }
    // Weights are there, as the graph has them.
    for (buf, t) in &program.constants {
        let spec = &back.manifest.buffers[*buf as usize];
        let raw = back.blob(spec.constant.as_ref().unwrap());
        let mut want = vec![0u8; spec.bytes];
        assert!(t.write_le_bytes(&mut want));
        assert_eq!(raw, want.as_slice());
    }
    let bytes = b.to_bytes();
    let expect = |bytes: &[u8], needle: &str| {
        let e = Bundle::from_bytes(bytes).unwrap_err().to_string();
        assert!(e.contains(needle), "{e:?} should mention {needle:?}");
    };
    // Another format version.
    let mut v = bytes.clone();
    v[8..12].copy_from_slice(&(VERSION + 1).to_le_bytes());
    expect(&v, &format!("version {}", VERSION + 1));
    expect(&v, "smelt compile");
    // A flipped byte, a truncated file, something else entirely.
    let mut x = bytes.clone();
    let mid = x.len() / 2;
    x[mid] ^= 1;
    expect(&x, "checksum");
    expect(&bytes[..bytes.len() - 100], "checksum");
    expect(
        b"PK\x03\x04 not a bundle at all, just bytes",
        "not a smelt bundle",
    );
    assert_eq!(&bytes[..8], MAGIC);
    // A launch outside CUDA's limits (a well-formed, checksummed file).
    let mut huge = b.clone();
    huge.manifest.launches[0].grid = 1 << 31;
    expect(&huge.to_bytes(), "outside CUDA's limits");
    // The products' cuBLASLt calls travel with their launches, and one that would reach
    // past its buffers, or read one as another type, is refused.
    let calls: Vec<usize> = (0..b.manifest.launches.len())
        .filter(|&i| b.manifest.launches[i].blas.is_some())
        .collect();
    assert!(calls.len() >= 2, "{calls:?}");
    let mut far = b.clone();
    far.manifest.launches[calls[0]].blas.as_mut().unwrap().a.ld *= 64;
    expect(&far.to_bytes(), "cuBLASLt call reaches past a");
    let mut wide = b.clone();
    wide.manifest.launches[calls[0]].blas.as_mut().unwrap().n += 1;
    expect(&wide.to_bytes(), "cuBLASLt call reaches past");
    let mut typed = b.clone();
    typed.manifest.launches[calls[0]]
        .blas
        .as_mut()
        .unwrap()
        .dtype = smelt::DType::F16;
    expect(&typed.to_bytes(), "as f16");
    // The path is in the error of a file read.
    std::fs::write(dir.join("bad.smelt"), b"garbage").unwrap();
    let e = Bundle::read(&dir.join("bad.smelt"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bad.smelt") && e.contains("not a smelt bundle"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A bundle carries each kernel's source: recompiled from those by NVRTC through an empty
/// cache (a cold first request) every kernel is compiled and the cubins are the bundle's,
/// byte for byte; through the same cache again (warm) nothing is compiled.
#[test]
fn bundles_recompile_from_their_sources() {
    let (_, b) = build();
    let dir = std::env::temp_dir().join(format!("smelt-recompile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // One compile per distinct function.
    let n = b
        .manifest
        .launches
        .iter()
        .map(|l| &l.kernel)
        .collect::<std::collections::HashSet<_>>()
        .len();
    for (pass, want_compiled) in [("cold", n), ("warm", 0)] {
        let (r, compiled) = b.recompiled("sm_90", &dir).unwrap();
        assert_eq!(compiled, want_compiled, "{pass}");
        assert_eq!(r.manifest.archs, ["sm_90"]);
        for l in &b.manifest.launches {
            assert!(b.source(l).unwrap().contains(&l.kernel), "{}", l.kernel);
            assert_eq!(
                r.cubin(&l.kernel, "sm_90"),
                b.cubin(&l.kernel, "sm_90"),
                "{pass}"
            );
            assert_eq!(r.cubin(&l.kernel, "sm_80"), None);
        }
        // It is a complete bundle: written and read back.
        assert_eq!(Bundle::from_bytes(&r.to_bytes()).unwrap(), r);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The launch list of the GPT-2 block (kernel, grid × block, buffer parameters, and the
/// cuBLASLt call made instead where the library is installed): what the CUDA executor will
/// replay, pinned.
#[test]
fn launch_list_snapshot() {
    let (_, b) = build();
    let mut text = String::new();
    let mut functions: Vec<&str> = Vec::new();
    for l in &b.manifest.launches {
        // Which distinct function it launches, by order of first use.
        let f = functions
            .iter()
            .position(|&f| f == l.kernel)
            .unwrap_or_else(|| {
                functions.push(&l.kernel);
                functions.len() - 1
            });
        let params: Vec<String> = l
            .params
            .iter()
            .map(|&p| {
                let s = &b.manifest.buffers[p as usize];
                format!("{}@{}", s.name, s.offset)
            })
            .collect();
        text.push_str(&format!(
            "{} = f{f} <<<{}, {}>>> ({})\n",
            l.name,
            l.grid,
            l.block,
            params.join(", ")
        ));
        if let Some(g) = &l.blas {
            text.push_str(&format!("  or {g}\n"));
        }
    }
    text.push_str(&format!("arena {} bytes\n", b.manifest.arena_bytes));
    insta::assert_snapshot!(text);
}

/// `smelt compile --bundle F --bundle-check` carries the reference's outputs on seeded inputs;
/// `smelt gpu-check` on a machine without a GPU fails loudly instead of skipping.
#[test]
fn bundle_checks_and_gpu_check_without_a_gpu() {
    use std::process::Command;
    let model = common::root().join("tests/models/mlp_gelu/model.onnx");
    let dir = std::env::temp_dir().join(format!("smelt-bundle-check-{}", std::process::id()));
    let path = dir.join("mlp.fused.smelt");
    let out = Command::new(env!("CARGO_BIN_EXE_smelt"))
        .args(["compile", model.to_str().unwrap(), "--out-dir"])
        .arg(&dir)
        .args(["--arch", "sm_90", "--bundle"])
        .arg(&path)
        .arg("--bundle-check")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b = Bundle::read(&path).unwrap();
    let check = b.manifest.check.clone().expect("a check");
    let g = smelt::onnx::import_file(&model, &Default::default()).unwrap();
    let want = smelt::interp::run(&g, &g.random_inputs(check.seed)).unwrap();
    assert_eq!(check.expected.len(), want.len());
    for ((name, blob), (wname, w)) in check.expected.iter().zip(&want) {
        assert_eq!(name, wname);
        let got =
            smelt::Tensor::from_le_bytes(w.dtype(), w.shape().to_vec(), b.blob(blob)).unwrap();
        assert_eq!(got.to_f64(), w.to_f64());
    }
    if smelt_runtime::cuda::device::probe().is_err() {
        let out = Command::new(env!("CARGO_BIN_EXE_smelt"))
            .arg("gpu-check")
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains("no CUDA device found"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The cuBLAS baseline of gpu-check is an error, not a panic, on a machine without a GPU
/// (the bundle-name parsing is unit-tested in the CLI).
#[test]
fn cublas_without_a_gpu_is_an_error() {
    use smelt::DType;
    // Operands that do not multiply are an error before any device work.
    let (a, b) = (
        smelt::Tensor::random(DType::F32, &[4, 8], 1),
        smelt::Tensor::random(DType::F32, &[5, 3], 2),
    );
    let e = smelt_runtime::cuda::cublas::time_gemm(&a, &b, 3).unwrap_err();
    assert!(e.contains("do not multiply"), "{e}");
    if smelt_runtime::cuda::device::probe().is_err() {
        let t = smelt::Tensor::random(DType::F32, &[64, 64], 1);
        let e = smelt_runtime::cuda::cublas::time_gemm(&t, &t, 3).unwrap_err();
        assert!(!e.is_empty());
    }
}

/// Kernels that differ only in their buffers are one CUDA function: a 12-layer GPT-2 stack
/// has no more functions than a 2-layer one (each layer launches the same ones), and a
/// second model made of the same layers finds every function in the cache a first one
/// filled: NVRTC compiles nothing for it.
#[test]
fn layers_share_functions_across_depths_and_models() {
    let dir = std::env::temp_dir().join(format!("smelt-shared-fns-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let arch = ["sm_90".to_string()];
    let bundle = |layers: usize| {
        let g = common::graphs::gpt2_stack(layers, 1, 16, 32, 2).unwrap();
        let c = smelt::compile(&g, &Options::default()).unwrap();
        let module = smelt::codegen::cuda::render_module(&Default::default(), &c.program).unwrap();
        (
            c.program.kernels.len(),
            module.functions.len(),
            Bundle::build(&c, &arch, &dir).unwrap(),
        )
    };
    let (k2, f2, b2) = bundle(2);
    let (k12, f12, b12) = bundle(12);
    assert!(k12 >= 5 * k2, "{k12} kernels for 12 layers, {k2} for 2");
    assert!(f12 <= f2, "12 layers: {f12} functions, 2 layers: {f2}");
    assert!(f12 * 4 < k12, "{f12} functions for {k12} kernels");
    // The 12-layer bundle stores each function's cubin once.
    let cubins: std::collections::HashSet<u64> = b12
        .manifest
        .launches
        .iter()
        .map(|l| l.cubins[0].1.offset)
        .collect();
    assert_eq!(cubins.len(), f12);
    let fresh = dir.join("fresh");
    let (_, cold) = b2.recompiled("sm_90", &fresh).unwrap();
    assert_eq!(cold, f2, "an empty cache compiles every function once");
    let (_, second) = b12.recompiled("sm_90", &fresh).unwrap();
    assert_eq!(second, 0, "the deeper model's functions were all cached");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A kernel that checks run-time indices carries its check sites in its launch (through a
/// write and a read back), and its cubin defines the fault record the executor reads: what
/// a GPU needs to report a bad token id by node name.
#[test]
fn launches_carry_their_index_checks() {
    use smelt::ir::{DType, Op};
    let mut b = smelt::GraphBuilder::new();
    let table = b.input("table", DType::F32, &[50, 16]).unwrap();
    let ids = b.input("ids", DType::I64, &[1, 8]).unwrap();
    let e = b
        .add_named("embed", Op::Gather { axis: 0 }, &[table, ids])
        .unwrap();
    let y = b.unary(smelt::ir::UnaryOp::Tanh, e).unwrap();
    b.output("y", y).unwrap();
    let g = b.build().unwrap();
    let c = smelt::compile(&g, &Options::default()).unwrap();
    let archs = vec!["sm_90".to_string()];
    let bundle = Bundle::build(&c, &archs, &smelt_runtime::cache::dir()).unwrap();
    let back = Bundle::from_bytes(&bundle.to_bytes()).unwrap();
    let checked: Vec<_> = back
        .manifest
        .launches
        .iter()
        .filter(|l| !l.checks.is_empty())
        .collect();
    assert_eq!(checked.len(), 1, "{:?}", back.manifest.launches);
    let check = &checked[0].checks[0];
    assert_eq!(
        (check.node.as_str(), check.axis, check.size),
        ("embed", 0, 50)
    );
    let e = check.error(50).to_string();
    assert!(
        e.contains("node 'embed'") && e.contains("index 50 out of range for axis 0 of size 50"),
        "{e}"
    );
    let cubin = back.cubin(&checked[0].kernel, "sm_90").unwrap();
    assert!(
        cubin.windows(18).any(|w| w == b"smelt_fault_record"),
        "the cubin has no fault record"
    );
}
