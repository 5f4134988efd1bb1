//! Bad input gets a one-line error naming the thing and what was expected, a non-zero exit
//! code, and never a panic.

mod common;

use common::npy;
use common::onnx_model::{self as om, Dim};
use smelt::Tensor;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Dir(PathBuf);
impl Dir {
    fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("smelt-cli-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `smelt run`; returns (success, stderr).
fn smelt_run(model: &Path, args: &[String], out: &Path) -> (bool, String) {
    let res = Command::new(env!("CARGO_BIN_EXE_smelt"))
        .arg("run")
        .arg(model)
        .args(args)
        .arg("--output-dir")
        .arg(out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr).to_string();
    assert!(!stderr.contains("panicked"), "smelt panicked: {stderr}");
    (res.status.success(), stderr)
}

fn expect_error(model: &Path, args: &[String], out: &Path, needles: &[&str]) {
    let (ok, stderr) = smelt_run(model, args, out);
    assert!(!ok, "expected failure, got success");
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "error must be one line: {stderr}"
    );
    assert!(stderr.starts_with("error: "), "{stderr}");
    for n in needles {
        assert!(stderr.contains(n), "error {stderr:?} should mention {n:?}");
    }
}

/// y = relu(x), x: f32[2,3].
fn relu_model(dir: &Dir) -> PathBuf {
    let m = om::model(
        vec![om::node("Relu", "act", &["x"], &["y"], vec![])],
        vec![om::f32_value("x", &[2, 3])],
        vec![om::f32_value("y", &[2, 3])],
        vec![],
        17,
    );
    let p = dir.path("relu.onnx");
    std::fs::write(&p, om::bytes(&m)).unwrap();
    p
}

fn write_input(dir: &Dir, name: &str, t: &Tensor) -> String {
    let p = dir.path(&format!("{name}.npy"));
    npy::write(&p, t).unwrap();
    p.display().to_string()
}

#[test]
fn runs_a_good_model() {
    let d = Dir::new("good");
    let m = relu_model(&d);
    let x = write_input(
        &d,
        "x",
        &Tensor::f32([2, 3], vec![-1.0, 2.0, -3.0, 4.0, -5.0, 6.0]),
    );
    let (ok, err) = smelt_run(&m, &[format!("--input=x={x}")], &d.path("out"));
    assert!(ok, "{err}");
    let y = npy::read(&d.path("out/y.npy")).unwrap();
    assert_eq!(y.to_f64(), vec![0.0, 2.0, 0.0, 4.0, 0.0, 6.0]);
}

#[test]
fn truncated_and_garbage_files() {
    let d = Dir::new("garbage");
    let m = relu_model(&d);
    let bytes = std::fs::read(&m).unwrap();
    let t = d.path("truncated.onnx");
    std::fs::write(&t, &bytes[..bytes.len() / 2]).unwrap();
    expect_error(
        &t,
        &[],
        &d.path("o"),
        &["truncated.onnx", "not a valid ONNX model"],
    );
    let g = d.path("garbage.onnx");
    std::fs::write(&g, b"this is not a protobuf at all \xff\xfe").unwrap();
    expect_error(
        &g,
        &[],
        &d.path("o"),
        &["garbage.onnx", "not a valid ONNX model"],
    );
    expect_error(
        &d.path("missing.onnx"),
        &[],
        &d.path("o"),
        &["missing.onnx"],
    );
}

#[test]
fn input_problems() {
    let d = Dir::new("inputs");
    let m = relu_model(&d);
    let good = write_input(&d, "x", &Tensor::f32([2, 3], vec![1.0; 6]));
    expect_error(
        &m,
        &[format!("--input=q={good}")],
        &d.path("o"),
        &["'q'", "inputs: x"],
    );
    expect_error(&m, &[], &d.path("o"), &["missing --input x", "f32[2,3]"]);
    let wrong_shape = write_input(&d, "s", &Tensor::f32([3, 2], vec![1.0; 6]));
    expect_error(
        &m,
        &[format!("--input=x={wrong_shape}")],
        &d.path("o"),
        &["expected f32[2,3]", "got f32[3,2]"],
    );
    let wrong_dtype = write_input(&d, "i", &Tensor::i64([2, 3], vec![1; 6]));
    expect_error(
        &m,
        &[format!("--input=x={wrong_dtype}")],
        &d.path("o"),
        &["expected f32[2,3]", "got i64[2,3]"],
    );
    let bad_npy = d.path("bad.npy");
    std::fs::write(&bad_npy, b"\x93NUMPY garbage").unwrap();
    expect_error(
        &m,
        &[format!("--input=x={}", bad_npy.display())],
        &d.path("o"),
        &["bad.npy"],
    );
    expect_error(
        &m,
        &[format!("--input=x={good}"), "--device=tpu".into()],
        &d.path("o"),
        &["unknown device 'tpu'"],
    );
}

#[test]
fn unsupported_ops_are_listed_together() {
    let d = Dir::new("unsupported");
    let m = om::model(
        vec![
            om::node("FancyOp", "f1", &["x"], &["a"], vec![]),
            om::node("FancyOp", "f2", &["a"], &["b"], vec![]),
            om::node("OtherOp", "o1", &["b"], &["y"], vec![]),
        ],
        vec![om::f32_value("x", &[2])],
        vec![om::f32_value("y", &[2])],
        vec![],
        17,
    );
    let p = d.path("m.onnx");
    std::fs::write(&p, om::bytes(&m)).unwrap();
    expect_error(
        &p,
        &[],
        &d.path("o"),
        &[
            "unsupported ops",
            "FancyOp (first at node 'f1')",
            "OtherOp (first at node 'o1')",
        ],
    );
}

#[test]
fn symbolic_dims_need_a_shape() {
    let d = Dir::new("symbolic");
    let m = om::model(
        vec![om::node("Relu", "act", &["x"], &["y"], vec![])],
        vec![om::value("x", 1, vec![Dim::Sym("batch"), Dim::N(4)])],
        vec![om::value("y", 1, vec![Dim::Sym("batch"), Dim::N(4)])],
        vec![],
        17,
    );
    let p = d.path("m.onnx");
    std::fs::write(&p, om::bytes(&m)).unwrap();
    let x = write_input(&d, "x", &Tensor::f32([3, 4], vec![1.0; 12]));
    expect_error(
        &p,
        &[format!("--input=x={x}")],
        &d.path("o"),
        &["input 'x'", "symbolic dim 0 ('batch')", "--shape x="],
    );
    expect_error(
        &p,
        &[format!("--input=x={x}"), "--shape=x=3x5".into()],
        &d.path("o"),
        &["dim 1", "fixes it to 4"],
    );
    let (ok, err) = smelt_run(
        &p,
        &[format!("--input=x={x}"), "--shape=x=3x4".into()],
        &d.path("o"),
    );
    assert!(ok, "{err}");
}

#[test]
fn data_dependent_ops_are_rejected() {
    let d = Dir::new("datadep");
    let m = om::model(
        vec![om::node("NonZero", "nz", &["x"], &["y"], vec![])],
        vec![om::f32_value("x", &[4])],
        vec![om::value("y", 7, vec![Dim::N(1), Dim::Sym("n")])],
        vec![],
        17,
    );
    let p = d.path("m.onnx");
    std::fs::write(&p, om::bytes(&m)).unwrap();
    expect_error(
        &p,
        &[],
        &d.path("o"),
        &[
            "node 'nz' (NonZero)",
            "output shape depends on tensor data",
            "host sync",
        ],
    );
    // A Reshape whose target shape is computed from an input's values.
    let m = om::model(
        vec![om::node("Reshape", "rs", &["x", "s"], &["y"], vec![])],
        vec![om::f32_value("x", &[4]), om::value("s", 7, vec![Dim::N(2)])],
        vec![om::f32_value("y", &[2, 2])],
        vec![],
        17,
    );
    let p = d.path("m2.onnx");
    std::fs::write(&p, om::bytes(&m)).unwrap();
    expect_error(
        &p,
        &[],
        &d.path("o"),
        &[
            "node 'rs' (Reshape)",
            "input 's' (shape)",
            "depends on data",
        ],
    );
}

#[test]
fn shape_errors_name_the_node() {
    let d = Dir::new("shape");
    let m = om::model(
        vec![om::node("Add", "adder", &["x", "z"], &["y"], vec![])],
        vec![om::f32_value("x", &[2, 3]), om::f32_value("z", &[4])],
        vec![om::f32_value("y", &[2, 3])],
        vec![],
        17,
    );
    let p = d.path("m.onnx");
    std::fs::write(&p, om::bytes(&m)).unwrap();
    expect_error(
        &p,
        &[],
        &d.path("o"),
        &["node 'adder' (Add)", "[2,3] and [4] do not broadcast"],
    );
}

#[test]
fn a_missing_c_compiler_says_how_to_fix_it() {
    let d = Dir::new("nocc");
    let m = relu_model(&d);
    let x = write_input(&d, "x", &Tensor::f32([2, 3], vec![1.0; 6]));
    let res = Command::new(env!("CARGO_BIN_EXE_smelt"))
        .env("SMELT_CC", "/nonexistent/cc")
        .env("SMELT_CACHE_DIR", d.path("cache"))
        .arg("run")
        .arg(&m)
        .arg(format!("--input=x={x}"))
        .arg("--output-dir")
        .arg(d.path("out"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert!(!res.status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    for needle in [
        "no C compiler",
        "/nonexistent/cc",
        "SMELT_CC",
        "--device interp",
    ] {
        assert!(
            stderr.contains(needle),
            "{stderr:?} should mention {needle:?}"
        );
    }
    // The interpreter needs no compiler.
    let res = Command::new(env!("CARGO_BIN_EXE_smelt"))
        .env("SMELT_CC", "/nonexistent/cc")
        .arg("run")
        .arg(&m)
        .arg(format!("--input=x={x}"))
        .args(["--device", "interp", "--output-dir"])
        .arg(d.path("out"))
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
}

#[test]
fn concurrent_runs_share_one_valid_cache_entry() {
    let d = Dir::new("concurrent");
    let m = relu_model(&d);
    let x = write_input(
        &d,
        "x",
        &Tensor::f32([2, 3], vec![-1.0, 2.0, -3.0, 4.0, -5.0, 6.0]),
    );
    let cache = d.path("cache");
    let children: Vec<_> = (0..3)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_smelt"))
                .env("SMELT_CACHE_DIR", &cache)
                .arg("run")
                .arg(&m)
                .arg(format!("--input=x={x}"))
                .arg("--output-dir")
                .arg(d.path(&format!("out{i}")))
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, mut c) in children.into_iter().enumerate() {
        assert!(c.wait().unwrap().success());
        let y = npy::read(&d.path(&format!("out{i}/y.npy"))).unwrap();
        assert_eq!(y.to_f64(), vec![0.0, 2.0, 0.0, 4.0, 0.0, 6.0]);
    }
    // One entry, verified, and no temporary files left behind.
    let entries: Vec<_> = std::fs::read_dir(cache.join("cpu"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(smelt_runtime::cache::verify(
        &std::fs::read(&entries[0]).unwrap()
    ));
}

#[test]
fn device_cuda_without_a_gpu_is_a_clear_error() {
    let d = Dir::new("nocuda");
    let m = relu_model(&d);
    let x = write_input(&d, "x", &Tensor::f32([2, 3], vec![1.0; 6]));
    // This machine has no GPU (CI never does); a GPU machine runs scripts/gpu-check instead.
    if smelt_runtime::cuda::device::probe().is_ok() {
        return;
    }
    expect_error(
        &m,
        &[format!("--input=x={x}"), "--device=cuda".into()],
        &d.path("out"),
        &["no CUDA device found", "--device cpu"],
    );
}

/// A mistake in how smelt was called exits with status 2; a model or input smelt refuses
/// exits with 1. Both are one `error:` line (failures of smelt itself say `internal error:`).
#[test]
fn usage_mistakes_and_refused_models_exit_differently() {
    let dir = Dir::new("exit-codes");
    let model = relu_model(&dir);
    let status = |args: &[&str]| {
        let res = Command::new(env!("CARGO_BIN_EXE_smelt"))
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&res.stderr).to_string();
        (res.status.code(), stderr)
    };
    let m = model.display().to_string();
    let out = dir.path("out").display().to_string();
    // --shape without '=': the call is wrong.
    let (code, err) = status(&["run", &m, "--shape", "x", "--output-dir", &out]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.starts_with("error: --shape 'x'"), "{err}");
    // A file that is not a model: the input is refused.
    let bad = dir.path("bad.onnx");
    std::fs::write(&bad, b"not a model").unwrap();
    let b = bad.display().to_string();
    let (code, err) = status(&["run", &b, "--output-dir", &out]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.starts_with("error: ") && err.contains("not a valid ONNX model"),
        "{err}"
    );
}
