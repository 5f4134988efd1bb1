//! The real-model corpus (`tests/models/real`, written by `export_real.py` there): models as
//! PyTorch's two exporters write them, each compared with onnxruntime's outputs on the stored
//! seeded inputs, fused and unfused, through
//! - `smelt run` (the C backend, the CLI a user runs, `--shape` fixing the symbolic dims);
//! - the kernel-IR interpreter on the lowered program, for the GPU (as written, and with the
//!   cuBLASLt calls where kernels have them) and for the CPU.
//!
//! Tolerance: every element within 1e-4 of the output's scale (its largest magnitude).
//! Outputs are ORT's, computed in f32 in another order; the corpus models are tiny, so
//! 1e-4 of the scale is far above the rounding both sides make and far below any real error.

mod common;

use common::npy;
use smelt::kernel::interp::{self as kinterp, Products};
use smelt::kernel::{lower_for, Target};
use smelt::optimize::Options;
use smelt::{compile, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Relative to the output's largest magnitude.
const TOLERANCE: f64 = 1e-4;

fn corpus_dir() -> PathBuf {
    common::root().join("tests/models/real")
}

/// `DIR/SUB/*.npy` by file stem, sorted.
fn tensors(dir: &Path) -> Vec<(String, Tensor)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "npy"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| {
            let name = f.file_stem().unwrap().to_string_lossy().to_string();
            let t = npy::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            (name, t)
        })
        .collect()
}

/// Every element of `got` within `TOLERANCE × max|want|` of `want` (same dtype and shape;
/// NaN where `want` has NaN).
fn compare_scaled(got: &Tensor, want: &Tensor) -> Result<(), String> {
    if got.dtype() != want.dtype() || got.shape() != want.shape() {
        return Err(format!(
            "got {} {:?}, expected {} {:?}",
            got.dtype(),
            got.shape(),
            want.dtype(),
            want.shape()
        ));
    }
    let (g, w) = (got.to_f64(), want.to_f64());
    let scale = w
        .iter()
        .filter(|x| x.is_finite())
        .fold(0.0f64, |m, x| m.max(x.abs()));
    let tol = TOLERANCE * scale.max(f64::MIN_POSITIVE);
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        if a.is_nan() && b.is_nan() || a == b {
            continue;
        }
        let d = (a - b).abs();
        if !d.is_finite() || d > tol {
            return Err(format!(
                "element {i}: got {a}, expected {b} (tolerance {tol:.3e} = {TOLERANCE} x scale {scale:.3e})"
            ));
        }
    }
    Ok(())
}

fn import(dir: &Path) -> smelt::Graph {
    let mut opts = smelt::onnx::ImportOptions::default();
    for s in common::model_shapes(dir) {
        let (n, dims) = s.split_once('=').expect("NAME=AxB");
        opts.shapes.insert(
            n.into(),
            dims.split('x').map(|d| d.parse().expect("a dim")).collect(),
        );
    }
    smelt::onnx::import_file(&dir.join("model.onnx"), &opts)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

/// `smelt run` on the model's stored inputs, fused or not, compared with ORT's outputs.
fn check_cli(dir: &Path, name: &str, fuse: bool) {
    let out = std::env::temp_dir().join(format!(
        "smelt-real-{}-{name}-{}",
        std::process::id(),
        if fuse { "fused" } else { "unfused" }
    ));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_smelt"));
    cmd.arg("run")
        .arg(dir.join("model.onnx"))
        .arg("--output-dir")
        .arg(&out);
    for (input, _) in tensors(&dir.join("inputs")) {
        let f = dir.join("inputs").join(format!("{input}.npy"));
        cmd.arg("--input").arg(format!("{input}={}", f.display()));
    }
    for s in common::model_shapes(dir) {
        cmd.arg("--shape").arg(s);
    }
    if !fuse {
        cmd.arg("--no-fuse");
    }
    let res = cmd.output().unwrap();
    assert!(
        res.status.success(),
        "{name} (fuse {fuse}): smelt run failed: {}",
        String::from_utf8_lossy(&res.stderr)
    );
    for (output, want) in tensors(&dir.join("expected")) {
        let got = npy::read(&out.join(format!("{output}.npy")))
            .unwrap_or_else(|e| panic!("{name}: output {output} missing: {e}"));
        compare_scaled(&got, &want)
            .unwrap_or_else(|e| panic!("{name} (smelt run, fuse {fuse}): {output}: {e}"));
    }
    let _ = std::fs::remove_dir_all(&out);
}

/// The lowered program run by the kernel-IR interpreter, for each target (and with the
/// cuBLASLt calls where the GPU program has them), compared with ORT's outputs.
fn check_lowered(
    g: &smelt::Graph,
    inputs: &HashMap<String, Tensor>,
    want: &[(String, Tensor)],
    name: &str,
    fuse: bool,
) {
    let c = compile(
        g,
        &Options {
            fuse,
            ..Options::default()
        },
    )
    .unwrap_or_else(|e| panic!("{name}: compile: {e}"));
    let runs = [
        (Target::Gpu, Products::Kernels),
        (Target::Gpu, Products::Library),
        (Target::Cpu, Products::Kernels),
    ];
    for (target, products) in runs {
        let program = lower_for(&c.graph, target)
            .unwrap_or_else(|e| panic!("{name} ({target:?}, fuse {fuse}): lower: {e}"));
        if products == Products::Library && program.kernels.iter().all(|k| k.blas.is_none()) {
            continue;
        }
        let got = kinterp::run_with(&program, inputs, products)
            .unwrap_or_else(|e| panic!("{name} ({target:?}, {products:?}, fuse {fuse}): {e}"));
        for (output, w) in want {
            let (_, v) = got
                .iter()
                .find(|(n, _)| n.replace('/', "_") == *output)
                .unwrap_or_else(|| panic!("{name}: no output {output}"));
            compare_scaled(v, w).unwrap_or_else(|e| {
                panic!("{name} (kernel IR, {target:?}, {products:?}, fuse {fuse}): {output}: {e}")
            });
        }
    }
}

fn check(name: &str) {
    let dir = corpus_dir().join(name);
    let g = import(&dir);
    let inputs: HashMap<String, Tensor> = tensors(&dir.join("inputs")).into_iter().collect();
    let want = tensors(&dir.join("expected"));
    assert!(!want.is_empty(), "{name}: no expected outputs");
    for fuse in [true, false] {
        check_cli(&dir, name, fuse);
        check_lowered(&g, &inputs, &want, name, fuse);
    }
}

/// One test per corpus model, named after its folder (`-` → `_`).
macro_rules! corpus {
    ($($test:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                check(&folder(stringify!($test)));
            }
        )*
        /// The list above is the corpus: every folder has a test, every test a folder.
        #[test]
        fn corpus_is_complete() {
            let mut listed: Vec<String> = vec![$(folder(stringify!($test))),*];
            listed.sort();
            let found: Vec<String> = common::model_dirs(&corpus_dir())
                .iter()
                .map(|d| d.file_name().unwrap().to_string_lossy().to_string())
                .collect();
            assert_eq!(listed, found);
        }
    };
}

/// The folder of a test: the architecture keeps its underscores, the exporter suffix is
/// joined by `-` (`llama_lm_dynamo_opset23` → `llama_lm-dynamo-opset23`).
fn folder(test: &str) -> String {
    for suffix in ["_torchscript", "_dynamo_opset23", "_dynamo"] {
        if let Some(arch) = test.strip_suffix(suffix) {
            return format!("{arch}{}", suffix.replace('_', "-"));
        }
    }
    panic!("test {test} has no exporter suffix");
}

corpus!(
    resnet18_torchscript,
    resnet18_dynamo,
    mobilenet_v3_small_torchscript,
    mobilenet_v3_small_dynamo,
    efficientnet_b0_torchscript,
    efficientnet_b0_dynamo,
    convnext_tiny_torchscript,
    convnext_tiny_dynamo,
    vit_torchscript,
    vit_dynamo,
    bert_torchscript,
    bert_dynamo,
    bert_dynamo_opset23,
    distilbert_torchscript,
    distilbert_dynamo,
    distilbert_dynamo_opset23,
    t5_encoder_torchscript,
    t5_encoder_dynamo,
    gpt2_lm_torchscript,
    gpt2_lm_dynamo,
    gpt2_lm_dynamo_opset23,
    llama_lm_torchscript,
    llama_lm_dynamo,
    llama_lm_dynamo_opset23,
    gpt2_decode_torchscript,
    gpt2_decode_dynamo,
    gpt2_decode_dynamo_opset23,
    llama_decode_torchscript,
    llama_decode_dynamo,
    llama_decode_dynamo_opset23,
);
