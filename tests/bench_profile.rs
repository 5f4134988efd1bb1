//! `smelt bench --profile`, `--trace` and `--roofline` on a small model: the profile names
//! every kernel with its time, share, bytes, flops, rates, bound and share of peak; the
//! trace is Chrome trace-event JSON with the compile's stages and one slice per kernel per
//! profiled run, each inside its run; the roofline is an SVG that names the kernels.

mod common;

use common::onnx_model as om;
use smelt::Tensor;
use std::process::Command;

#[test]
fn profile_trace_and_roofline_describe_every_kernel() {
    let dir = std::env::temp_dir().join(format!("smelt-bench-profile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // y = softmax(relu(x · w)): a product and a row kernel.
    let w = smelt::onnx::tensor_to_proto(
        "w",
        &Tensor::f32(
            [64, 48],
            (0..64 * 48)
                .map(|i| ((i % 13) as f32 - 6.0) * 0.01)
                .collect(),
        ),
    );
    let m = om::model(
        vec![
            om::node("MatMul", "mm", &["x", "w"], &["h"], vec![]),
            om::node("Relu", "act", &["h"], &["r"], vec![]),
            om::node("Softmax", "sm", &["r"], &["y"], vec![om::int("axis", -1)]),
        ],
        vec![om::f32_value("x", &[32, 64])],
        vec![om::f32_value("y", &[32, 48])],
        vec![w],
        17,
    );
    let model = dir.join("m.onnx");
    std::fs::write(&model, om::bytes(&m)).unwrap();
    let (trace, svg, json) = (dir.join("t.json"), dir.join("r.svg"), dir.join("b.json"));
    let runs = 4;
    let out = Command::new(env!("CARGO_BIN_EXE_smelt"))
        .arg("bench")
        .arg(&model)
        .args(["--runs", &runs.to_string(), "--threads", "2", "--profile"])
        .arg("--trace")
        .arg(&trace)
        .arg("--roofline")
        .arg(&svg)
        .arg("--json")
        .arg(&json)
        .env("SMELT_CACHE_DIR", dir.join("cache"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The profile: the columns, then one row per kernel of the fused plan.
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let kernels = report["profile"]["kernels"].as_array().unwrap();
    assert!(!kernels.is_empty());
    for col in [
        "ms", "share", "MB", "MFLOP", "GB/s", "GFLOP/s", "bound", "%peak",
    ] {
        assert!(stdout.contains(col), "no column {col}:\n{stdout}");
    }
    assert!(stdout.contains("peaks on 2 threads: copy"), "{stdout}");
    assert!(stdout.contains("by layer:"), "{stdout}");
    let peak = &report["profile"]["peak"];
    assert!(peak["copy_gbps"].as_f64().unwrap() > 0.0);
    assert!(peak["fma_gflops"].as_f64().unwrap() > 0.0);
    let mut share = 0.0;
    let mut flops = 0;
    for k in kernels {
        let name = k["name"].as_str().unwrap();
        assert!(
            stdout.contains(name),
            "{name} is not in the profile:\n{stdout}"
        );
        assert!(k["ms"].as_f64().unwrap() >= 0.0);
        assert!(k["bytes"].as_u64().unwrap() > 0, "{k}");
        assert!(["memory", "compute"].contains(&k["bound"].as_str().unwrap()));
        assert!(k["peak_pct"].as_f64().unwrap() >= 0.0);
        share += k["share"].as_f64().unwrap();
        flops += k["flops"].as_u64().unwrap();
    }
    assert!((share - 1.0).abs() < 1e-6, "shares add up to {share}");
    // The product's 2·m·n·k flops are all counted.
    assert!(flops >= 2 * 32 * 48 * 64, "{flops} flops");

    // The trace: valid JSON, the compile's stages, each run containing one slice per kernel.
    let t: serde_json::Value = serde_json::from_slice(&std::fs::read(&trace).unwrap()).unwrap();
    let events = t["traceEvents"].as_array().unwrap();
    let slices = |cat: &str| -> Vec<&serde_json::Value> {
        events
            .iter()
            .filter(|e| e["ph"] == "X" && e["cat"] == cat)
            .collect()
    };
    assert!(!slices("compile").is_empty());
    let run_slices = slices("run");
    let kernel_slices = slices("kernel");
    assert_eq!(run_slices.len(), runs);
    assert_eq!(kernel_slices.len(), runs * kernels.len());
    let span = |e: &serde_json::Value| {
        let ts = e["ts"].as_f64().unwrap();
        (ts, ts + e["dur"].as_f64().unwrap())
    };
    let compile_end = slices("compile")
        .iter()
        .map(|e| span(e).1)
        .fold(0.0, f64::max);
    for (r, run) in run_slices.iter().enumerate() {
        let (start, end) = span(run);
        assert!(
            start >= compile_end - 1e-3,
            "run {r} starts inside the compile"
        );
        let inside: Vec<_> = kernel_slices[r * kernels.len()..(r + 1) * kernels.len()].to_vec();
        for (k, e) in kernels.iter().zip(inside) {
            assert_eq!(e["name"], k["name"]);
            let (s, f) = span(e);
            assert!(
                s >= start && f <= end + 1e-3,
                "{e} is not inside run {r} [{start}, {end}]"
            );
            assert_eq!(e["args"]["bytes"], k["bytes"]);
            assert_eq!(e["args"]["flops"], k["flops"]);
        }
    }

    // The roofline: an SVG naming the costliest kernels.
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
    assert!(svg.contains("roofline"));
    assert!(kernels
        .iter()
        .any(|k| svg.contains(k["name"].as_str().unwrap())));
    let _ = std::fs::remove_dir_all(&dir);
}
