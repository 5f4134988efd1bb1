"""Collects compare_deploy.py results into OUT_PREFIX.json and OUT_PREFIX.md: the machine, the
commit, each deployment-size model's medians (smelt fused and unfused, ONNX Runtime,
OpenVINO), smelt ÷ each peer and ÷ the best one, and the ten costliest kernels of the set with
the share of the machine's peak each reaches (from smelt's profile).
Usage: report_deploy.py RESULTS_DIR OUT_PREFIX"""

import glob
import json
import os
import sys

from report import cpu_name, sh  # the same machine and commit lines as the corpus reports


def fmt(v, digits=2):
    return "—" if v is None else f"{v:.{digits}f}"


def main():
    src, out = sys.argv[1], sys.argv[2]
    rows = [json.load(open(f)) for f in sorted(glob.glob(os.path.join(src, "*.json")))]
    meta = {
        "commit": sh("git", "rev-parse", "HEAD"),
        "date": sh("date", "-u", "+%Y-%m-%dT%H:%M:%SZ"),
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "cc": sh(os.environ.get("SMELT_CC", "cc"), "--version").splitlines()[0],
        "versions": rows[0]["versions"] if rows else {},
    }
    peak = next((r["profile"]["peak"] for r in rows if r.get("profile")), None)
    costly = []
    for r in rows:
        p = r.get("profile") or {}
        for k in p.get("kernels", []):
            costly.append({"model": r["model"], **k})
    costly.sort(key=lambda k: -k["ms"])
    with open(out + ".json", "w") as f:
        json.dump({"meta": meta, "models": rows, "costliest_kernels": costly[:10]}, f, indent=1)

    md = [f"# Deployment-size models, CPU: smelt vs ONNX Runtime and OpenVINO ({meta['date'][:10]})", ""]
    md.append(
        f"Machine: {meta['cpu']}, {meta['cores']} cores; {meta['cc']}; commit {meta['commit'][:10]}; "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
        + "."
    )
    if rows:
        r0 = rows[0]
        md.append(
            f"Every system on {r0['threads']} threads; {r0['rounds']} interleaved rounds of {r0['runs']} runs "
            "on the stored inputs; medians in ms. Outputs checked against ONNX Runtime's at export "
            "(scaled error: max |diff| ÷ (1e-4 · max |ref| + 1e-4); ≤ 1 passes)."
        )
    md += [
        "",
        "| model | smelt | unfused | ORT | OpenVINO | fused ÷ unfused | smelt ÷ ORT | smelt ÷ OpenVINO | best peer | smelt ÷ best | kernels | error (smelt) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m, q = r["median_ms"], r["ratios"]
        err = r["errors"].get("smelt")
        md.append(
            f"| {r['model']} | {fmt(m.get('smelt'))} | {fmt(m.get('smelt_unfused'))} | {fmt(m.get('ort'))} "
            f"| {fmt(m.get('openvino'))} | {fmt(q.get('fused_over_unfused'))} | {fmt(q.get('smelt_over_ort'))} "
            f"| {fmt(q.get('smelt_over_openvino'))} | {r.get('best_peer') or '—'} | **{fmt(q.get('smelt_over_best'))}** "
            f"| {r['kernels']['fused']} / {r['kernels']['unfused']} | {fmt(err, 3) if isinstance(err, float) else err} |"
        )
    failed = {r["model"]: {k: v for k, v in r["errors"].items() if not isinstance(v, float)} for r in rows}
    failed = {k: v for k, v in failed.items() if v}
    if failed:
        md += ["", "Peers that could not run a model:"]
        md += [f"- {m}: " + "; ".join(f"{k}: {v}" for k, v in e.items()) for m, e in failed.items()]
    if peak:
        md += [
            "",
            f"## The ten costliest kernels of the set (smelt, fused plan; peaks on {peak['threads']} threads: "
            f"copy {peak['copy_gbps']:.1f} GB/s, f32 FMA {peak['fma_gflops']:.1f} GFLOP/s)",
            "",
            "| model | kernel | what | ms | share of its model | GB/s | GFLOP/s | bound | % of peak |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for k in costly[:10]:
            md.append(
                f"| {k['model']} | {k['name']} | {k['what']} | {k['ms']:.3f} | {100 * k['share']:.1f}% "
                f"| {k['gbps']:.1f} | {k['gflops']:.1f} | {k['bound']} | {k['peak_pct']:.0f}% |"
            )
    with open(out + ".md", "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
