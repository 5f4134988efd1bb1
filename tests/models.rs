//! `smelt run` on the reference models in `tests/models` (built by `tests/models/build_models.py`
//! with onnxruntime's outputs as expected values) matches within 1e-4 relative error.

mod common;

use common::npy;
use std::path::Path;
use std::process::Command;

fn npy_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "npy"))
        .collect();
    v.sort();
    v
}

#[test]
fn smelt_run_matches_onnxruntime_on_reference_models() {
    let dirs = common::model_dirs(&common::root().join("tests/models"));
    assert!(
        dirs.len() >= 5,
        "expected the reference models in tests/models"
    );
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let out = tempdir(&name);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_smelt"));
        cmd.arg("run")
            .arg(dir.join("model.onnx"))
            .arg("--output-dir")
            .arg(&out);
        for f in npy_files(&dir.join("inputs")) {
            let input = f.file_stem().unwrap().to_string_lossy().to_string();
            cmd.arg("--input").arg(format!("{input}={}", f.display()));
        }
        for s in common::model_shapes(&dir) {
            cmd.arg("--shape").arg(s);
        }
        let res = cmd.output().unwrap();
        assert!(
            res.status.success(),
            "{name}: smelt run failed: {}",
            String::from_utf8_lossy(&res.stderr)
        );
        let expected = npy_files(&dir.join("expected"));
        assert!(!expected.is_empty(), "{name}: no expected outputs");
        for want_path in expected {
            let file = want_path.file_name().unwrap();
            let got = npy::read(&out.join(file))
                .unwrap_or_else(|e| panic!("{name}: output {file:?} missing: {e}"));
            let want = npy::read(&want_path).unwrap();
            common::compare(&got, &want, 1e-4, 1e-5)
                .unwrap_or_else(|e| panic!("{name}: {file:?}: {e}"));
        }
    }
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("smelt-test-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
