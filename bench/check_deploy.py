#!/usr/bin/env python3
"""Runs every deployment-size model (bench/export_deploy.py's folders) through `smelt run` and
checks its outputs against onnxruntime's (expected/*.npy).

Usage: python bench/check_deploy.py SMELT_BIN [DIR] [NAME ...] [--device cpu] [--timeout S]
       (DIR defaults to bench/deploy; NAMEs pick a subset of its folders)

For each folder: `SMELT_BIN run DIR/NAME/model.onnx --input NAME=inputs/NAME.npy ...
--shape ... (from shapes.txt) --output-dir TMP --device DEVICE`, timed by the wall clock (so
the time includes import, compile and the C compiler; smelt's compile cache may shorten a
second run). Each output passes when max|smelt - ort| <= 1e-4 * max|ort| + 1e-4; positions
that a padded attention mask leaves out are not compared (what a graph computes there is
undefined), as in the exporter. One line per model:

    NAME  ok|FAIL  max|diff|/max|ort| (worst output)  wall seconds  [error]

Exits 1 if any model fails. Needs only numpy.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATOL = 1e-4
RTOL = 1e-4


def smelt_command(smelt: str, folder: str, out: str, device: str) -> list[str]:
    cmd = [smelt, "run", os.path.join(folder, "model.onnx"), "--output-dir", out,
           "--device", device]
    inputs = os.path.join(folder, "inputs")
    for f in sorted(os.listdir(inputs)):
        if f.endswith(".npy"):
            cmd += ["--input", f"{f[:-4]}={os.path.join(inputs, f)}"]
    shapes = os.path.join(folder, "shapes.txt")
    if os.path.exists(shapes):
        with open(shapes) as fh:
            for line in fh:
                if line.strip():
                    cmd += ["--shape", line.strip()]
    return cmd


def compare(folder: str, out: str) -> tuple[bool, float, str]:
    """(all outputs pass, worst max|diff|/max|ort|, the first failing output's description)."""
    mask_path = os.path.join(folder, "inputs", "attention_mask.npy")
    mask = np.load(mask_path) if os.path.exists(mask_path) else None
    ok, worst, why = True, 0.0, ""
    expected = os.path.join(folder, "expected")
    for f in sorted(os.listdir(expected)):
        want = np.load(os.path.join(expected, f))
        got_path = os.path.join(out, f)
        if not os.path.exists(got_path):
            return False, float("inf"), f"no output {f}"
        got = np.load(got_path)
        if got.shape != want.shape or got.dtype != want.dtype:
            return False, float("inf"), (
                f"{f}: got {got.dtype}{list(got.shape)}, want {want.dtype}{list(want.shape)}")
        if mask is not None and want.shape[:2] == mask.shape:
            got, want = got[mask == 1], want[mask == 1]
        got64, want64 = got.astype(np.float64), want.astype(np.float64)
        if not np.all(np.isfinite(got64)):
            return False, float("inf"), f"{f}: non-finite values"
        diff = float(np.max(np.abs(got64 - want64))) if want.size else 0.0
        scale = float(np.max(np.abs(want64))) if want.size else 0.0
        rel = diff / scale if scale else diff
        if diff > RTOL * scale + ATOL:
            if ok:
                why = f"{f}: max|diff| {diff:.3g} > {RTOL * scale + ATOL:.3g} (max|ort| {scale:.3g})"
            ok = False
        worst = max(worst, rel)
    return ok, worst, why


def main(argv: list[str]) -> int:
    args = argv[1:]
    device, timeout = "cpu", 3600.0
    for flag in ("--device", "--timeout"):
        if flag in args:
            i = args.index(flag)
            value = args[i + 1]
            del args[i:i + 2]
            if flag == "--device":
                device = value
            else:
                timeout = float(value)
    if not args or args[0].startswith("-"):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    smelt = os.path.abspath(args[0])
    root = os.path.abspath(args[1]) if len(args) > 1 else os.path.join(ROOT, "bench", "deploy")
    names = args[2:] or sorted(
        d for d in os.listdir(root) if os.path.exists(os.path.join(root, d, "meta.json"))
    )
    failed = 0
    print(f"{'model':<22} {'result':<6} {'max err/scale':>13} {'wall s':>8}", flush=True)
    for name in names:
        folder = os.path.join(root, name)
        with tempfile.TemporaryDirectory(prefix=f"smelt-{name}-") as out:
            cmd = smelt_command(smelt, folder, out, device)
            t = time.perf_counter()
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
                rc, err = r.returncode, (r.stderr.strip() or r.stdout.strip())
            except subprocess.TimeoutExpired:
                rc, err = -1, f"timed out after {timeout:.0f} s"
            wall = time.perf_counter() - t
            if rc != 0:
                failed += 1
                msg = " | ".join(err.splitlines()[-6:]) if err else f"exit {rc}"
                print(f"{name:<22} {'FAIL':<6} {'-':>13} {wall:>8.1f}  smelt exit {rc}: {msg}",
                      flush=True)
                continue
            ok, worst, why = compare(folder, out)
        failed += not ok
        print(f"{name:<22} {'ok' if ok else 'FAIL':<6} {worst:>13.2e} {wall:>8.1f}"
              + (f"  {why}" if why else ""), flush=True)
    print(f"{len(names) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
