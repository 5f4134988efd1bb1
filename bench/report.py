"""Collects compare_ort.py results into bench/results/<name>.json and .md: the machine, the
commit, every model's times and ratios, and the issue's targets with whether they are met.
Usage: report.py RESULTS_DIR OUT_PREFIX [--real]   (--real: the real-model corpus, no targets)"""

import glob
import json
import os
import platform
import subprocess
import sys

TARGETS = [
    # (what, model, metric, bound)
    ("fused/unfused <= 0.33", "elementwise_chain_16m", "fused_over_unfused", 0.33),
    ("fused/unfused <= 0.67", "gpt2_block_b2_s32_d64_h4", "fused_over_unfused", 0.67),
    ("fused/unfused <= 0.67", "gpt2_block_b8_s128_d256_h4", "fused_over_unfused", 0.67),
    ("smelt/ORT <= 1.0", "gpt2_block_b2_s32_d64_h4", "smelt_over_ort", 1.0),
    ("smelt/ORT <= 1.0", "gpt2_block_b8_s128_d256_h4", "smelt_over_ort", 1.0),
    ("smelt/ORT <= 1.0", "gelu_mlp_b64_1024_4096", "smelt_over_ort", 1.0),
    ("smelt/ORT <= 1.0", "elementwise_chain_16m", "smelt_over_ort", 1.0),
]


def sh(*args):
    try:
        return subprocess.run(args, capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        return "unknown"


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main():
    src, out = sys.argv[1], sys.argv[2]
    real = "--real" in sys.argv[3:]
    rows = {}
    for f in sorted(glob.glob(os.path.join(src, "*.json"))):
        r = json.load(open(f))
        rows[os.path.basename(f)[: -len(".json")]] = r
    extra = {}
    if os.path.exists(os.path.join(src, "memcpy.txt")):
        extra["memcpy_gbps"] = float(open(os.path.join(src, "memcpy.txt")).read())
    meta = {
        "commit": sh("git", "rev-parse", "HEAD"),
        "date": sh("date", "-u", "+%Y-%m-%dT%H:%M:%SZ"),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "cc": sh(os.environ.get("SMELT_CC", "cc"), "--version").splitlines()[0],
        **extra,
    }
    targets = []
    for what, model, metric, bound in [] if real else TARGETS:
        r = rows.get(model)
        v = r["ratios"][metric] if r else None
        targets.append({"target": what, "model": model, "value": v, "met": v is not None and v <= bound})
    chain = rows.get("elementwise_chain_16m")
    if chain and "memcpy_gbps" in meta:
        n = 1 << 24
        gbps = 3 * 4 * n / (chain["smelt"]["fused"]["median_ms"] * 1e-3) / 1e9
        frac = gbps / meta["memcpy_gbps"]
        targets.append({"target": ">= 60% of memcpy bandwidth", "model": "elementwise_chain_16m",
                        "value": frac, "met": frac >= 0.6})
    gp = rows.get("gpt2_block_b2_s32_d64_h4")
    if gp and not real:
        targets.append({"target": "cold compile <= 2000 ms", "model": "gpt2_block_b2_s32_d64_h4",
                        "value": gp["smelt"]["compile_cold_ms"], "met": gp["smelt"]["compile_cold_ms"] <= 2000})
        targets.append({"target": "warm-cache load <= 20 ms", "model": "gpt2_block_b2_s32_d64_h4",
                        "value": gp["smelt"]["compile_warm_ms"], "met": gp["smelt"]["compile_warm_ms"] <= 20})
    json.dump({"meta": meta, "models": rows, "targets": targets}, open(out + ".json", "w"), indent=2)
    with open(out + ".md", "w") as f:
        title = "the real-model corpus (tests/models/real)" if real else "CPU benchmarks"
        f.write(f"# smelt {title}, {meta['date']}\n\n")
        f.write(f"Commit `{meta['commit']}`; {meta['cpu']}, {meta['cores']} cores; {meta['cc']}.\n")
        if "memcpy_gbps" in meta:
            f.write(f"Same-size memcpy (64 MB, read + write): {meta['memcpy_gbps']:.1f} GB/s.\n")
        f.write("Medians of the runs after warm-up; smelt writes into the previous run's outputs "
                "(steady state), ONNX Runtime with all graph optimizations and the same threads.\n\n")
        f.write("| model | smelt fused ms | smelt unfused ms | ORT ms | fused/unfused | smelt/ORT | kernels fused/unfused | compile cold / warm ms | agrees with ORT |\n")
        f.write("|---|---|---|---|---|---|---|---|---|\n")
        for name, r in rows.items():
            s = r["smelt"]
            f.write(
                f"| {name} | {s['fused']['median_ms']:.3f} | {s['unfused']['median_ms']:.3f} | {r['ort']['median_ms']:.3f} "
                f"| {r['ratios']['fused_over_unfused']:.2f} | {r['ratios']['smelt_over_ort']:.2f} "
                f"| {s['fused']['kernels']}/{s['unfused']['kernels']} | {s['compile_cold_ms']:.0f} / {s['compile_warm_ms']:.1f} "
                f"| {'yes' if r['agreement']['ok'] else 'NO'} |\n"
            )
        if targets:
            f.write("\n## Targets (issue #6)\n\n| target | model | value | met |\n|---|---|---|---|\n")
        for t in targets:
            v = "n/a" if t["value"] is None else f"{t['value']:.3g}"
            f.write(f"| {t['target']} | {t['model']} | {v} | {'yes' if t['met'] else 'no'} |\n")
    print(open(out + ".md").read())


if __name__ == "__main__":
    main()
