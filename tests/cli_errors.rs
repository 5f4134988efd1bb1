//! Bad input gets a one-line error naming the thing and what was expected, a non-zero exit
//! code, and never a panic.

mod common;

use common::npy;
use common::onnx_model::{self as om, Dim};
use common::Dir;
use smelt::Tensor;
use std::path::{Path, PathBuf};
use std::process::Command;

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

/// `stderr` is one line, `error: …`, mentioning every needle.
fn assert_one_line_error(stderr: &str, needles: &[&str]) {
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

fn expect_error(model: &Path, args: &[String], out: &Path, needles: &[&str]) {
    let (ok, stderr) = smelt_run(model, args, out);
    assert!(!ok, "expected failure, got success");
    assert_one_line_error(&stderr, needles);
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

/// Runs smelt; returns (success, stdout, stderr).
fn smelt(args: &[&std::ffi::OsStr]) -> (bool, String, String) {
    let res = Command::new(env!("CARGO_BIN_EXE_smelt"))
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr).to_string();
    assert!(!stderr.contains("panicked"), "smelt panicked: {stderr}");
    (
        res.status.success(),
        String::from_utf8_lossy(&res.stdout).to_string(),
        stderr,
    )
}

/// A failed command prints its one-line error and nothing else, on either stream.
fn expect_only_error(args: &[&std::ffi::OsStr], needles: &[&str]) {
    let (ok, stdout, stderr) = smelt(args);
    assert!(!ok, "expected failure, got success: {stdout}");
    assert_eq!(stdout, "", "a failed command printed results");
    assert_one_line_error(&stderr, needles);
}

/// Files under `dir` (recursively), sorted; empty when it does not exist.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(files_under(&p));
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Two outputs of x: f32[2,3], named `a` and `b`.
fn two_output_model(dir: &Dir, a: &str, b: &str) -> PathBuf {
    let m = om::model(
        vec![
            om::node("Relu", "r", &["x"], &[a], vec![]),
            om::node("Neg", "n", &["x"], &[b], vec![]),
        ],
        vec![om::f32_value("x", &[2, 3])],
        vec![om::f32_value(a, &[2, 3]), om::f32_value(b, &[2, 3])],
        vec![],
        17,
    );
    let p = dir.path("two.onnx");
    std::fs::write(&p, om::bytes(&m)).unwrap();
    p
}

#[test]
fn outputs_that_would_share_a_file_are_refused_before_running() {
    let d = Dir::new("collide");
    // 'a/b' is written as a_b.npy: so is 'a_b'. One would silently overwrite the other.
    let m = two_output_model(&d, "a/b", "a_b");
    let x = write_input(&d, "x", &Tensor::f32([2, 3], vec![1.0; 6]));
    let out = d.path("out");
    expect_error(
        &m,
        &[format!("--input=x={x}"), "--device=interp".into()],
        &out,
        &["two.onnx", "'a/b'", "'a_b'", "a_b.npy"],
    );
    assert!(files_under(&out).is_empty(), "{:?}", files_under(&out));
    // Outputs that do not collide still run, '/' becoming '_'.
    let m = two_output_model(&d, "a/b", "c");
    let (ok, err) = smelt_run(
        &m,
        &[format!("--input=x={x}"), "--device=interp".into()],
        &out,
    );
    assert!(ok, "{err}");
    assert_eq!(
        files_under(&out),
        vec![out.join("a_b.npy"), out.join("c.npy")]
    );
}

#[test]
fn npy_inputs_with_trailing_data_are_refused() {
    let d = Dir::new("trailing");
    let m = relu_model(&d);
    let x = write_input(&d, "x", &Tensor::f32([2, 3], vec![1.0; 6]));
    let mut bytes = std::fs::read(&x).unwrap();
    bytes.extend_from_slice(b"junk");
    let padded = d.path("padded.npy");
    std::fs::write(&padded, &bytes).unwrap();
    expect_error(
        &m,
        &[format!("--input=x={}", padded.display())],
        &d.path("out"),
        &[
            "padded.npy",
            "4 bytes of trailing data after the array (f32 [2,3]: 24 bytes)",
        ],
    );
    // Too little data is still refused as before.
    std::fs::write(&padded, &bytes[..bytes.len() - 8]).unwrap();
    expect_error(
        &m,
        &[format!("--input=x={}", padded.display())],
        &d.path("out"),
        &["padded.npy", "truncated or corrupt data"],
    );
}

#[test]
fn failed_commands_leave_no_files_and_print_only_the_error() {
    let d = Dir::new("all-or-nothing");
    let os = |s: &str| std::ffi::OsString::from(s);
    let m = relu_model(&d);
    let x = format!(
        "x={}",
        write_input(&d, "x", &Tensor::f32([2, 3], vec![1.0; 6]))
    );
    let a_file = d.path("a_file");
    std::fs::write(&a_file, b"").unwrap();
    let out = d.path("out");

    // run: an output directory that is a file is refused before running.
    let run = |out: &Path| -> Vec<std::ffi::OsString> {
        vec![
            os("run"),
            m.clone().into(),
            os("--input"),
            os(&x),
            os("--device"),
            os("interp"),
            os("--output-dir"),
            out.into(),
        ]
    };
    let refs = |v: &[std::ffi::OsString]| v.to_vec();
    let args = refs(&run(&a_file));
    let argv: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    expect_only_error(&argv, &["--output-dir", "a_file", "not a directory"]);

    // run: one output's file is taken by a directory: the other is not written either.
    let two = two_output_model(&d, "a", "y");
    std::fs::create_dir_all(out.join("y.npy")).unwrap();
    let mut args = run(&out);
    args[1] = two.into();
    let argv: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    expect_only_error(&argv, &["y.npy", "is a directory"]);
    assert_eq!(files_under(&out), vec![out.join("y.npy")]);
    std::fs::remove_dir_all(&out).unwrap();

    // compile: a bundle path under a file, or naming a directory, is refused before any
    // work, and the output folder is not created.
    let compile = |bundle: &Path| -> Vec<std::ffi::OsString> {
        vec![
            os("compile"),
            m.clone().into(),
            os("--out-dir"),
            out.clone().into(),
            os("--bundle"),
            bundle.into(),
        ]
    };
    for (bundle, why) in [
        (a_file.join("b.smelt"), "a_file is not a directory"),
        (d.0.clone(), "is a directory"),
    ] {
        let args = compile(&bundle);
        let argv: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        expect_only_error(&argv, &["--bundle", why]);
        assert!(!out.exists(), "{:?}", files_under(&out));
    }
    // A good bundle path: without NVRTC the bundle cannot be built, and then nothing is
    // written and only the error is printed; with it, everything is.
    let bundle = d.path("m.smelt");
    let args = compile(&bundle);
    let argv: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let (ok, stdout, stderr) = smelt(&argv);
    if ok {
        assert!(
            out.join("plan.json").exists() && bundle.exists(),
            "{stdout}"
        );
        std::fs::remove_dir_all(&out).unwrap();
    } else {
        assert_eq!(stdout, "");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(!out.exists(), "{:?}", files_under(&out));
        assert!(!bundle.exists());
    }
    assert!(
        files_under(&d.0)
            .iter()
            .all(|p| !p.to_string_lossy().contains("smelt-tmp")),
        "temporary files left: {:?}",
        files_under(&d.0)
    );

    // Failures after the work (a destination that cannot be created): no progress lines
    // (optimizer passes, timings, results) before the error.
    let proc_dir = Path::new("/proc/smelt-cannot-create-this");
    if Path::new("/proc/self").exists() {
        let p = proc_dir.as_os_str();
        let args = run(proc_dir);
        let argv: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        expect_only_error(&argv, &["smelt-cannot-create-this"]);
        let mo = m.as_os_str();
        let compile = [
            std::ffi::OsStr::new("compile"),
            mo,
            std::ffi::OsStr::new("--out-dir"),
            p,
            std::ffi::OsStr::new("--timings"),
            std::ffi::OsStr::new("--report"),
        ];
        expect_only_error(&compile, &["smelt-cannot-create-this"]);
        let inspect = [
            std::ffi::OsStr::new("inspect"),
            mo,
            std::ffi::OsStr::new("--dot"),
            p,
        ];
        expect_only_error(&inspect, &["smelt-cannot-create-this"]);
    }
}

/// An embedding lookup whose run-time token ids leave the table fails the run with one line
/// naming the node and the index, on the C backend and the interpreter, with no output
/// written; in-range ids (negative ones too) run.
#[test]
fn token_ids_out_of_range_are_a_clear_error() {
    let dir = Dir::new("token-ids");
    let table = smelt::onnx::tensor_to_proto(
        "table",
        &Tensor::f32([3, 4], (0..12).map(|i| i as f32 * 0.5 + 0.25).collect()),
    );
    let m = om::model(
        vec![
            om::node("Gather", "embed", &["table", "ids"], &["e"], vec![]),
            om::node("Tanh", "act", &["e"], &["y"], vec![]),
        ],
        vec![om::value("ids", 7, vec![Dim::N(2)])],
        vec![om::f32_value("y", &[2, 4])],
        vec![table],
        17,
    );
    let model = dir.path("embed.onnx");
    std::fs::write(&model, om::bytes(&m)).unwrap();
    let out = dir.path("out");
    for (ids, bad) in [
        (vec![5, 0], "index 5 out of range"),
        (vec![1, -9], "index -9 out of range"),
        (vec![1 << 40, 0], "index 1099511627776 out of range"),
    ] {
        let ids = write_input(&dir, "ids", &Tensor::i64([2], ids));
        for device in ["cpu", "interp"] {
            let args = vec![
                "--input".to_string(),
                format!("ids={ids}"),
                "--device".into(),
                device.into(),
            ];
            expect_error(&model, &args, &out, &["'e'", bad, "for axis 0 of size 3"]);
            assert!(!out.join("y.npy").exists(), "{device}: wrote an output");
        }
    }
    let ids = write_input(&dir, "ids", &Tensor::i64([2], vec![2, -3]));
    let (ok, stderr) = smelt_run(&model, &["--input".into(), format!("ids={ids}")], &out);
    assert!(ok, "{stderr}");
    assert!(out.join("y.npy").exists());
}
