"""Times smelt (fused and unfused, C backend) and ONNX Runtime (all graph optimizations, the
same thread count) on one model in one run, checks that they agree, and prints the ratios.

Usage: compare_ort.py MODEL.onnx [--runs N] [--threads T] [--json FILE] [--shape NAME=AxB ...]
                      [--inputs DIR]
`--shape` fixes symbolic input dims (for both); `--inputs DIR` feeds ORT and the agreement
check the stored `DIR/NAME.npy` instead of random values (token ids must be in range).
smelt is run as `$SMELT_BIN bench` (default target/release/smelt)."""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NP_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64}


def parse_shapes(specs):
    return {n: [int(d) for d in dims.split("x")] for n, dims in (s.split("=", 1) for s in specs)}


def random_inputs(sess, seed, shapes):
    rng = np.random.default_rng(seed)
    out = {}
    for i in sess.get_inputs():
        dt = NP_TYPES[i.type]
        shape = shapes.get(i.name) or [int(d) for d in i.shape]
        if np.issubdtype(dt, np.floating):
            out[i.name] = rng.uniform(-2, 2, shape).astype(dt)
        else:
            out[i.name] = rng.integers(-3, 4, shape).astype(dt)
    return out


def stored_inputs(sess, folder):
    return {i.name: np.load(os.path.join(folder, i.name + ".npy")) for i in sess.get_inputs()}


def time_ort(model, threads, runs, warmup, shapes, folder):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    t = time.perf_counter()
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    load_ms = (time.perf_counter() - t) * 1e3
    if folder:
        sets = [stored_inputs(sess, folder)] * 2
    else:
        sets = [random_inputs(sess, 1, shapes), random_inputs(sess, 2, shapes)]
    for i in range(max(warmup, 1)):
        sess.run(None, sets[i % 2])
    ms = []
    for i in range(runs):
        t = time.perf_counter()
        sess.run(None, sets[i % 2])
        ms.append((time.perf_counter() - t) * 1e3)
    return sess, sets[0], {"median_ms": float(np.median(ms)), "min_ms": float(min(ms)), "load_ms": load_ms}


def smelt_bin():
    return os.environ.get("SMELT_BIN", os.path.join(ROOT, "target", "release", "smelt"))


def shape_args(specs):
    return [a for s in specs for a in ("--shape", s)]


def check_agreement(model, sess, feeds, tmp, specs):
    """smelt run (fused, C backend) on ORT's inputs gives ORT's outputs."""
    args = [smelt_bin(), "run", model, "--output-dir", os.path.join(tmp, "out")] + shape_args(specs)
    for name, a in feeds.items():
        p = os.path.join(tmp, f"in_{len(args)}.npy")
        np.save(p, a)
        args += ["--input", f"{name}={p}"]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    want = sess.run(None, feeds)
    worst = 0.0
    for o, w in zip(sess.get_outputs(), want):
        got = np.load(os.path.join(tmp, "out", o.name.replace("/", "_") + ".npy"))
        err = np.abs(got.astype(np.float64) - w) / (1e-4 + 1e-3 * np.abs(w))
        worst = max(worst, float(err.max()))
    return worst


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--json")
    ap.add_argument("--shape", action="append", default=[])
    ap.add_argument("--inputs")
    a = ap.parse_args()
    shapes = parse_shapes(a.shape)
    with tempfile.TemporaryDirectory() as tmp:
        sj = os.path.join(tmp, "smelt.json")
        # ONNX Runtime is timed before and after smelt and keeps its better median, so that
        # noise on a shared machine does not favour smelt.
        # Only the times are kept: the session (and its thread pool) is gone before smelt runs.
        before = time_ort(a.model, a.threads, a.runs, a.warmup, shapes, a.inputs)[2]
        subprocess.run(
            [smelt_bin(), "bench", a.model, "--runs", str(a.runs), "--warmup", str(a.warmup),
             "--threads", str(a.threads), "--json", sj] + shape_args(a.shape),
            check=True, stdout=subprocess.DEVNULL,
        )
        smelt = json.load(open(sj))
        sess, feeds, ortt = time_ort(a.model, a.threads, a.runs, a.warmup, shapes, a.inputs)
        if before["median_ms"] < ortt["median_ms"]:
            ortt = before
        worst = check_agreement(a.model, sess, feeds, tmp, a.shape)
    r = {
        "model": a.model,
        "threads": a.threads,
        "runs": a.runs,
        "smelt": smelt,
        "ort": ortt,
        "onnxruntime_version": ort.__version__,
        "agreement": {"worst_scaled_error": worst, "ok": worst <= 1.0},
        "ratios": {
            "fused_over_unfused": smelt["fused"]["median_ms"] / smelt["unfused"]["median_ms"],
            "smelt_over_ort": smelt["fused"]["median_ms"] / ortt["median_ms"],
        },
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
    }
    print(
        f"{os.path.basename(os.path.dirname(a.model)) or a.model}: smelt {smelt['fused']['median_ms']:.3f} ms, "
        f"unfused {smelt['unfused']['median_ms']:.3f} ms, ORT {ortt['median_ms']:.3f} ms | "
        f"fused/unfused {r['ratios']['fused_over_unfused']:.2f}, smelt/ORT {r['ratios']['smelt_over_ort']:.2f}"
        f" | agree {'yes' if worst <= 1 else 'NO'} ({worst:.2g})"
    )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=2)
    if worst > 1.0:
        sys.exit("smelt and ONNX Runtime disagree beyond rtol 1e-3, atol 1e-4")


if __name__ == "__main__":
    main()
