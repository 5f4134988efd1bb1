//! The compiled-code cache against damaged, swapped and odd entries, through the CLI: another
//! model's entry under a model's key is never run, a FIFO at an entry's path is replaced
//! without waiting on it, an entry that verifies but does not load is rebuilt once (a second
//! failure is a clear error), an unusable cache directory is an environment error naming the
//! path, and what a killed build left behind is cleaned up.

mod common;

use common::npy;
use common::onnx_model as om;
use common::Dir;
use smelt::Tensor;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The input every test runs on, and what each model gives for it.
const X: [f32; 6] = [-1.0, 2.0, -3.0, 4.0, -5.0, 6.0];
const RELU: [f64; 6] = [0.0, 2.0, 0.0, 4.0, 0.0, 6.0];

/// `y = op(x)`, x: f32[2,3].
fn unary_model(dir: &Dir, op: &str) -> PathBuf {
    let m = om::model(
        vec![om::node(op, "act", &["x"], &["y"], vec![])],
        vec![om::f32_value("x", &[2, 3])],
        vec![om::f32_value("y", &[2, 3])],
        vec![],
        17,
    );
    let p = dir.path(&format!("{op}.onnx"));
    std::fs::write(&p, om::bytes(&m)).unwrap();
    p
}

/// What one `smelt run` did.
struct Run {
    ok: bool,
    stderr: String,
    /// The output `y`, when it succeeded.
    y: Option<Vec<f64>>,
}

/// `smelt run MODEL` on [`X`] with the cache in `cache` and `env` set, failing (rather than
/// hanging) when it takes over two minutes.
fn run(dir: &Dir, model: &Path, cache: &Path, env: &[(&str, &Path)]) -> Run {
    let x = dir.path("x.npy");
    if !x.exists() {
        npy::write(&x, &Tensor::f32([2, 3], X.to_vec())).unwrap();
    }
    let out = dir.path("out");
    let _ = std::fs::remove_dir_all(&out);
    let err_path = dir.path("stderr.txt");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_smelt"));
    cmd.env("SMELT_CACHE_DIR", cache)
        .arg("run")
        .arg(model)
        .arg(format!("--input=x={}", x.display()))
        .arg("--output-dir")
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_path).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("smelt run hung (blocked on a cache entry?)");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(&err_path).unwrap();
    assert!(!stderr.contains("panicked"), "smelt panicked: {stderr}");
    assert!(
        !stderr.contains("internal error"),
        "a cache fault is not a smelt bug: {stderr}"
    );
    let y = status
        .success()
        .then(|| npy::read(&out.join("y.npy")).unwrap().to_f64());
    Run {
        ok: status.success(),
        stderr,
        y,
    }
}

/// The entries of a cache's CPU folder.
fn entries(cache: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(cache.join("cpu"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// Runs `model` into an empty cache and returns its one entry.
fn first_entry(dir: &Dir, model: &Path, cache: &Path) -> PathBuf {
    let r = run(dir, model, cache, &[]);
    assert!(r.ok, "{}", r.stderr);
    let e = entries(cache);
    assert_eq!(e.len(), 1, "{e:?}");
    e[0].clone()
}

/// The one error line of a failed run.
fn error_line(r: &Run) -> &str {
    assert!(!r.ok, "expected a failure");
    let last = r.stderr.trim().lines().last().unwrap_or("");
    assert!(last.starts_with("error: "), "{}", r.stderr);
    last
}

#[test]
fn another_models_entry_under_a_models_key_is_not_run() {
    let d = Dir::new("swap");
    let cache = d.path("cache");
    let relu = unary_model(&d, "Relu");
    let neg = unary_model(&d, "Neg");
    let relu_entry = first_entry(&d, &relu, &cache);
    let r = run(&d, &neg, &cache, &[]);
    assert_eq!(r.y.unwrap(), X.map(|v| -v as f64).to_vec());
    let neg_entry = entries(&cache)
        .into_iter()
        .find(|e| *e != relu_entry)
        .unwrap();
    // Neg's whole entry, a valid one with a good checksum, copied over Relu's.
    std::fs::copy(&neg_entry, &relu_entry).unwrap();
    let r = run(&d, &relu, &cache, &[]);
    assert_eq!(r.y.as_deref(), Some(&RELU[..]), "{}", r.stderr);
    // Relu's entry was rebuilt: it is Relu's again.
    let bytes = std::fs::read(&relu_entry).unwrap();
    let (_, id) = smelt_runtime::cache::open_entry(&bytes).unwrap();
    let stem = relu_entry.file_stem().unwrap().to_str().unwrap();
    assert_eq!(id.key, stem);
    assert_ne!(bytes, std::fs::read(&neg_entry).unwrap());
}

#[test]
fn a_fifo_at_an_entry_is_replaced_not_waited_on() {
    let d = Dir::new("fifo");
    let cache = d.path("cache");
    let relu = unary_model(&d, "Relu");
    let entry = first_entry(&d, &relu, &cache);
    std::fs::remove_file(&entry).unwrap();
    let made = Command::new("mkfifo").arg(&entry).status().unwrap();
    assert!(made.success());
    let r = run(&d, &relu, &cache, &[]);
    assert_eq!(r.y.as_deref(), Some(&RELU[..]), "{}", r.stderr);
    assert!(std::fs::symlink_metadata(&entry).unwrap().is_file());
    assert!(smelt_runtime::cache::verify(
        &std::fs::read(&entry).unwrap()
    ));
}

#[test]
fn an_entry_that_verifies_but_does_not_load_is_rebuilt_once() {
    let d = Dir::new("noload");
    let cache = d.path("cache");
    let relu = unary_model(&d, "Relu");
    let entry = first_entry(&d, &relu, &cache);
    // Garbage sealed with the entry's own identity: it verifies, but is no shared object.
    let bytes = std::fs::read(&entry).unwrap();
    let (_, id) = smelt_runtime::cache::open_entry(&bytes).unwrap();
    let mut garbage = b"not a shared object at all".to_vec();
    smelt_runtime::cache::seal_entry(&mut garbage, &id);
    std::fs::write(&entry, &garbage).unwrap();
    let r = run(&d, &relu, &cache, &[]);
    assert_eq!(r.y.as_deref(), Some(&RELU[..]), "{}", r.stderr);
    assert!(
        r.stderr.contains("warning:") && r.stderr.contains("rebuilding"),
        "{}",
        r.stderr
    );
    let bytes = std::fs::read(&entry).unwrap();
    let (payload, _) = smelt_runtime::cache::open_entry(&bytes).unwrap();
    assert!(payload.starts_with(b"\x7fELF"));
}

#[test]
fn code_that_never_loads_is_a_clear_error_after_one_rebuild() {
    use std::os::unix::fs::PermissionsExt;
    let d = Dir::new("badcc");
    let cache = d.path("cache");
    let relu = unary_model(&d, "Relu");
    // A "compiler" whose every output is garbage.
    let cc = d.path("fakecc");
    std::fs::write(
        &cc,
        "#!/bin/sh\n\
         if [ \"$1\" = --version ]; then echo 'fakecc 1.0'; exit 0; fi\n\
         out=\n\
         while [ $# -gt 0 ]; do if [ \"$1\" = -o ]; then out=\"$2\"; fi; shift; done\n\
         printf 'not an object' > \"$out\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&cc, std::fs::Permissions::from_mode(0o755)).unwrap();
    let env = [("SMELT_CC", cc.as_path())];
    // Just built and not loadable: an error at once.
    let r = run(&d, &relu, &cache, &env);
    let e = error_line(&r);
    assert!(e.contains("cannot load") && e.contains(".so"), "{e}");
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    // From the cache: rebuilt once, with a warning, then the error.
    let r = run(&d, &relu, &cache, &env);
    let e = error_line(&r);
    assert!(
        e.contains("cannot load") && e.contains("after rebuilding"),
        "{e}"
    );
    assert_eq!(r.stderr.matches("warning:").count(), 1, "{}", r.stderr);
    assert_eq!(r.stderr.trim().lines().count(), 2, "{}", r.stderr);
}

#[test]
fn a_cache_dir_that_is_a_file_is_an_environment_error() {
    let d = Dir::new("isfile");
    let relu = unary_model(&d, "Relu");
    let cache = d.path("cache-file");
    std::fs::write(&cache, b"not a directory").unwrap();
    let r = run(&d, &relu, &cache, &[]);
    let e = error_line(&r);
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    for needle in ["cache-file", "Not a directory", "SMELT_CACHE_DIR"] {
        assert!(e.contains(needle), "{e:?} should mention {needle:?}");
    }
}

#[test]
fn a_read_only_cache_dir_is_an_environment_error() {
    use std::os::unix::fs::PermissionsExt;
    let d = Dir::new("readonly");
    let relu = unary_model(&d, "Relu");
    let cache = d.path("cache-ro");
    std::fs::create_dir_all(cache.join("cpu")).unwrap();
    for p in [cache.join("cpu"), cache.clone()] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    let restore = || {
        for p in [cache.clone(), cache.join("cpu")] {
            let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755));
        }
    };
    // Root writes anyway: nothing to check there.
    if std::fs::write(cache.join("cpu/probe"), b"").is_ok() {
        restore();
        return;
    }
    let r = run(&d, &relu, &cache, &[]);
    restore();
    let e = error_line(&r);
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    for needle in ["cache-ro", "Permission denied"] {
        assert!(e.contains(needle), "{e:?} should mention {needle:?}");
    }
}

#[test]
fn what_a_killed_build_left_is_removed_by_the_next_build() {
    let d = Dir::new("stale");
    let cache = d.path("cache");
    let relu = unary_model(&d, "Relu");
    let cpu = cache.join("cpu");
    // A build folder and a temporary entry of a process that no longer runs, two hours old.
    let dead = 999_999_999u32;
    let work = cpu.join(format!("0123abcd.build.tmp.{dead}.1.0"));
    std::fs::create_dir_all(work.join("include")).unwrap();
    std::fs::write(work.join("model0.c"), b"int x;").unwrap();
    let tmp = cpu.join(format!("0123abcd.so.tmp.{dead}.1.1"));
    std::fs::write(&tmp, b"half an entry").unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(2 * 3600);
    for p in [&work, &tmp] {
        std::fs::File::open(p).unwrap().set_modified(old).unwrap();
    }
    let r = run(&d, &relu, &cache, &[]);
    assert_eq!(r.y.as_deref(), Some(&RELU[..]), "{}", r.stderr);
    assert!(!work.exists() && !tmp.exists(), "{:?}", entries(&cache));
    assert_eq!(entries(&cache).len(), 1, "{:?}", entries(&cache));
}
