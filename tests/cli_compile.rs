//! `smelt compile` and `smelt inspect` as a user runs them.

mod common;

use std::process::Command;

fn smelt(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_smelt"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn compile_writes_plan_json_fused_and_unfused() {
    let model = common::root().join("tests/models/attention_masked/model.onnx");
    let dir = std::env::temp_dir().join(format!("smelt-compile-{}", std::process::id()));
    let mut launches = Vec::new();
    for extra in [None, Some("--no-fuse")] {
        let out = dir.join(if extra.is_some() { "unfused" } else { "fused" });
        let mut args = vec![
            "compile",
            model.to_str().unwrap(),
            "--out-dir",
            out.to_str().unwrap(),
            "--cuda",
            "--timings",
        ];
        args.extend(extra);
        let (ok, stdout, stderr) = smelt(&args);
        assert!(ok, "{stderr}");
        // One line per pass on stderr, with its time and node counts.
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with("simplify") && l.contains("ms") && l.contains("nodes")),
            "{stderr}"
        );
        // --timings: one line per stage, NVRTC among them since --cuda asked for it.
        for stage in [
            "import",
            "lower gpu",
            "lower cpu",
            "render c",
            "render cuda",
            "nvrtc",
        ] {
            assert!(
                stderr.lines().any(|l| l.trim_start().starts_with(stage)),
                "no {stage} timing: {stderr}"
            );
        }
        assert!(stdout.contains("kernels"), "{stdout}");
        let plan: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("plan.json")).unwrap()).unwrap();
        for key in [
            "launches",
            "bytes_moved",
            "arena_bytes",
            "kernels",
            "buffers",
        ] {
            assert!(plan.get(key).is_some(), "plan.json lacks {key}");
        }
        for k in plan["kernels"].as_array().unwrap() {
            for key in [
                "name",
                "kind",
                "ops",
                "inputs",
                "outputs",
                "bytes_read",
                "bytes_written",
                "flops",
            ] {
                assert!(k.get(key).is_some(), "kernel lacks {key}: {k}");
            }
            // NVRTC is installed by scripts/setup: every kernel has its source, cubin and
            // ptxas report.
            let cuda = &k["cuda"];
            assert!(cuda["registers"].as_u64().unwrap() > 0, "{k}");
            assert_eq!(cuda["spill_bytes"].as_u64(), Some(0), "{k}");
            let src = out.join(cuda["source"].as_str().unwrap());
            assert!(std::fs::read_to_string(&src)
                .unwrap()
                .contains("__global__"));
            assert!(
                src.with_extension("sm_90.cubin").exists(),
                "{}",
                src.display()
            );
            let ptx = std::fs::read_to_string(src.with_extension("sm_90.ptx")).unwrap();
            assert!(
                ptx.contains(".entry") && ptx.contains(".target sm_90"),
                "{ptx}"
            );
            let kind = k["kind"].as_str().unwrap();
            assert!(
                ["fused", "gemm", "conv", "attention"].contains(&kind),
                "{kind}"
            );
        }
        launches.push(plan["launches"].as_u64().unwrap());
    }
    assert_eq!(
        launches[0], 3,
        "fused attention model (one QKV product, attention, output projection)"
    );
    assert!(launches[1] > 3 * launches[0], "unfused: {}", launches[1]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn compile_writes_cuda_only_when_asked() {
    let model = common::root().join("tests/models/attention_masked/model.onnx");
    let out = std::env::temp_dir().join(format!("smelt-compile-cpu-{}", std::process::id()));
    let (ok, _, stderr) = smelt(&[
        "compile",
        model.to_str().unwrap(),
        "--out-dir",
        out.to_str().unwrap(),
        "--timings",
    ]);
    assert!(ok, "{stderr}");
    assert!(out.join("model.c").exists() && out.join("plan.json").exists());
    assert!(!out.join("kernels").exists(), "CUDA written without --cuda");
    assert!(
        !stderr.contains("nvrtc"),
        "NVRTC ran without --cuda: {stderr}"
    );
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("plan.json")).unwrap()).unwrap();
    assert!(plan["kernels"]
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k["cuda"].is_null()));
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn inspect_explains_and_draws() {
    let model = common::root().join("tests/models/conv_relu_stack/model.onnx");
    let dir = std::env::temp_dir().join(format!("smelt-inspect-{}", std::process::id()));
    let (ok, stdout, stderr) = smelt(&[
        "inspect",
        model.to_str().unwrap(),
        "--dot",
        dir.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("k0_fused_conv") && stdout.contains("conv relu"),
        "{stdout}"
    );
    assert!(stdout.contains("fusions not taken:"), "{stdout}");
    assert!(stdout.contains("maxpool is not fusible"), "{stdout}");
    assert!(
        stdout.contains("one kernel holds one matrix product or convolution"),
        "{stdout}"
    );
    let after = std::fs::read_to_string(dir.join("after.dot")).unwrap();
    assert!(
        after.starts_with("digraph") && after.contains("subgraph cluster_"),
        "{after}"
    );
    let before = std::fs::read_to_string(dir.join("before.dot")).unwrap();
    assert!(!before.contains("cluster"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn compile_report_models_gpu_time() {
    let model = common::root().join("tests/models/torch_transformer_layer/model.onnx");
    let dir = std::env::temp_dir().join(format!("smelt-report-{}", std::process::id()));
    let (ok, stdout, stderr) = smelt(&[
        "compile",
        model.to_str().unwrap(),
        "--shape",
        "x=2x8x32",
        "--out-dir",
        dir.to_str().unwrap(),
        "--report",
        "--gpu",
        "H100",
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("modelled on h100"), "{stdout}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    let ratio = r["fused_over_unfused"].as_f64().unwrap();
    // Fewer launches and bytes: the fused plan models faster.
    assert!(ratio > 0.0 && ratio < 1.0, "{ratio}");
    let kernels = r["plan"]["kernels"].as_array().unwrap();
    let sum: f64 = kernels
        .iter()
        .map(|k| k["total_us"].as_f64().unwrap())
        .sum();
    assert!((sum - r["plan"]["total_us"].as_f64().unwrap()).abs() < 1e-6);
    // Every kernel pays at least the launch.
    assert!(kernels
        .iter()
        .all(|k| k["total_us"].as_f64().unwrap() >= 3.0));
    let (ok, _, stderr) = smelt(&[
        "compile",
        model.to_str().unwrap(),
        "--shape",
        "x=2x8x32",
        "--out-dir",
        dir.to_str().unwrap(),
        "--report",
        "--gpu",
        "tpu9",
    ]);
    assert!(
        !ok && stderr.contains("--gpu tpu9") && stderr.contains("h100"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `smelt inspect` on a real export groups the kernels and the fusions not taken by layer,
/// the layers named by the exporter's modules (the dynamo exporter's `namespace` metadata,
/// TorchScript's node names): every kernel and every fusion not taken is in one layer.
#[test]
fn inspect_explains_by_layer() {
    for model in ["bert-torchscript", "bert-dynamo"] {
        let dir = common::root().join("tests/models/real").join(model);
        let mut args = vec![
            "inspect".to_string(),
            dir.join("model.onnx").to_string_lossy().to_string(),
        ];
        if let Ok(s) = std::fs::read_to_string(dir.join("shapes.txt")) {
            for spec in s.split_whitespace() {
                args.push("--shape".into());
                args.push(spec.into());
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, stdout, stderr) = smelt(&args);
        assert!(ok, "{model}: {stderr}");
        let launches: usize = stdout
            .lines()
            .find_map(|l| l.strip_prefix("total: "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{model}: no total\n{stdout}"));
        let not_taken = stdout.split("fusions not taken:").nth(1).map_or(0, |rest| {
            rest.lines()
                .skip(1)
                .take_while(|l| l.starts_with("  "))
                .count()
        });
        let section = stdout
            .split("by layer (module names from the exporter):")
            .nth(1)
            .unwrap_or_else(|| panic!("{model}: no by-layer section\n{stdout}"));
        let mut kernels = 0;
        let mut layers = Vec::new();
        for l in section
            .lines()
            .filter(|l| l.starts_with("  ") && !l.starts_with("    "))
        {
            let (name, rest) = l.trim().split_once(": ").unwrap();
            let n: usize = rest.split_whitespace().next().unwrap().parse().unwrap();
            kernels += n;
            layers.push(name.to_string());
        }
        assert_eq!(
            kernels, launches,
            "{model}: every kernel in one layer\n{section}"
        );
        assert_eq!(
            section.matches("    kept apart: ").count(),
            not_taken,
            "{model}: every fusion not taken in one layer"
        );
        for l in [
            "inner.embeddings",
            "inner.encoder.layer.0",
            "inner.encoder.layer.1",
        ] {
            assert!(
                layers.iter().any(|x| x == l),
                "{model}: no {l} in {layers:?}"
            );
        }
        assert!(
            !layers.iter().any(|x| x == "(unattributed)"),
            "{model}: {layers:?}"
        );
    }
}
