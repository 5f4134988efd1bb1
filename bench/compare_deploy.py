"""One deployment-size model (a folder written by bench/export_deploy.py) timed by smelt (fused
and unfused, C backend), ONNX Runtime (all graph optimizations) and OpenVINO (CPU plugin,
latency hint), the same thread count for every system, interleaved: ROUNDS rounds, each
timing every system for RUNS runs on the folder's stored inputs; a system's time is the
median of all its runs. Every system's outputs are checked against the folder's oracle
(expected/*.npy, ONNX Runtime's outputs at export) within 1e-4 of each output's scale.
smelt's per-kernel profile (`smelt bench --profile --json`) is kept for the report.

Usage: compare_deploy.py FOLDER --json OUT [--runs N] [--rounds R] [--threads T]
smelt is run as `$SMELT_BIN` (default target/release/smelt)."""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smelt_bin():
    return os.environ.get("SMELT_BIN", os.path.join(ROOT, "target", "release", "smelt"))


def shape_args(folder):
    p = os.path.join(folder, "shapes.txt")
    if not os.path.exists(p):
        return []
    return [a for s in open(p).read().split() for a in ("--shape", s)]


def load_dir(d):
    return {f[: -len(".npy")]: np.load(os.path.join(d, f)) for f in sorted(os.listdir(d)) if f.endswith(".npy")}


def scaled_error(got, want):
    """max |got - want| over (1e-4 · max |want| + 1e-4): at most 1 passes."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return float("inf")
    if want.size == 0:
        return 0.0
    scale = 1e-4 * float(np.abs(want).max()) + 1e-4
    return float(np.abs(got - want).max() / scale)


def check(outputs, expected, names):
    return max((scaled_error(o, expected[n.replace("/", "_")]) for o, n in zip(outputs, names)), default=0.0)


def timed(run, runs):
    ms = []
    for _ in range(runs):
        t = time.perf_counter()
        run()
        ms.append((time.perf_counter() - t) * 1e3)
    return ms


class Ort:
    name = "ort"

    def __init__(self, model, threads):
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.sess.get_outputs()]

    def run(self, feeds):
        return self.sess.run(None, feeds)


class OpenVino:
    name = "openvino"

    def __init__(self, model, threads):
        import openvino as ov

        core = ov.Core()
        self.compiled = core.compile_model(
            model,
            "CPU",
            {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1},
        )
        self.request = self.compiled.create_infer_request()
        self.names = [o.get_any_name() for o in self.compiled.outputs]

    def run(self, feeds):
        r = self.request.infer(feeds)
        return [r[o] for o in self.compiled.outputs]


def smelt_round(folder, runs, threads, tmp, profile):
    out = os.path.join(tmp, "smelt.json")
    args = [smelt_bin(), "bench", os.path.join(folder, "model.onnx"), "--runs", str(runs),
            "--warmup", "2", "--threads", str(threads), "--json", out] + shape_args(folder)
    if profile:
        args.append("--profile")
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    return json.load(open(out))


def smelt_check(folder, inputs, expected, tmp):
    outdir = os.path.join(tmp, "out")
    args = [smelt_bin(), "run", os.path.join(folder, "model.onnx"), "--output-dir", outdir]
    args += shape_args(folder)
    for name in inputs:
        args += ["--input", f"{name}={os.path.join(folder, 'inputs', name + '.npy')}"]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
    got = load_dir(outdir)
    return max((scaled_error(got[n], w) for n, w in expected.items()), default=0.0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--json", required=True)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    model = os.path.join(a.folder, "model.onnx")
    inputs = load_dir(os.path.join(a.folder, "inputs"))
    expected = load_dir(os.path.join(a.folder, "expected"))
    name = os.path.basename(os.path.normpath(a.folder))
    peers, errors, times, versions = [], {}, {"smelt": [], "smelt_unfused": []}, {"onnxruntime": ort.__version__}
    for cls in (Ort, OpenVino):
        try:
            p = cls(model, a.threads)
            errors[p.name] = check(p.run(inputs), expected, p.names)
            p.run(inputs)
            peers.append(p)
            times[p.name] = []
        except Exception as e:  # a peer that cannot run the model is reported, not fatal
            errors[cls.name] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    try:
        import openvino

        versions["openvino"] = openvino.__version__
    except ImportError:
        pass
    profile = None
    with tempfile.TemporaryDirectory() as tmp:
        errors["smelt"] = smelt_check(a.folder, inputs, expected, tmp)
        for r in range(a.rounds):
            for p in peers:
                times[p.name] += timed(lambda: p.run(inputs), a.runs)
            s = smelt_round(a.folder, a.runs, a.threads, tmp, profile=(r == 0))
            # smelt bench reports medians per round: weight each by its runs.
            times["smelt"] += [s["fused"]["median_ms"]] * a.runs
            times["smelt_unfused"] += [s["unfused"]["median_ms"]] * a.runs
            if r == 0:
                profile = s.get("profile")
                compile_ms = {"cold": s["compile_cold_ms"], "warm": s["compile_warm_ms"]}
                kernels = {"fused": s["fused"]["kernels"], "unfused": s["unfused"]["kernels"]}
    med = {k: float(np.median(v)) for k, v in times.items() if v}
    peer_meds = {k: v for k, v in med.items() if k in ("ort", "openvino")}
    best = min(peer_meds, key=peer_meds.get) if peer_meds else None
    r = {
        "model": name,
        "threads": a.threads,
        "runs": a.runs,
        "rounds": a.rounds,
        "median_ms": med,
        "errors": errors,
        "ok": all(isinstance(e, float) and e <= 1.0 for k, e in errors.items() if k == "smelt"),
        "best_peer": best,
        "ratios": {
            "fused_over_unfused": med["smelt"] / med["smelt_unfused"],
            **({"smelt_over_ort": med["smelt"] / med["ort"]} if "ort" in med else {}),
            **({"smelt_over_openvino": med["smelt"] / med["openvino"]} if "openvino" in med else {}),
            **({"smelt_over_best": med["smelt"] / peer_meds[best]} if best else {}),
        },
        "compile_ms": compile_ms,
        "kernels": kernels,
        "versions": versions,
        "profile": profile,
    }
    with open(a.json, "w") as f:
        json.dump(r, f, indent=1)
    rat = r["ratios"]
    print(
        f"{name}: smelt {med['smelt']:.2f} ms, unfused {med['smelt_unfused']:.2f}, "
        + ", ".join(f"{k} {med[k]:.2f}" for k in ("ort", "openvino") if k in med)
        + f" | smelt/best {rat.get('smelt_over_best', float('nan')):.2f} ({best})"
        + f" | errors {', '.join(f'{k} {v:.2g}' if isinstance(v, float) else f'{k} {v}' for k, v in errors.items())}",
        flush=True,
    )
    if not r["ok"]:
        sys.exit(f"{name}: smelt's outputs differ from the oracle ({errors['smelt']})")


if __name__ == "__main__":
    main()
