#!/usr/bin/env python3
"""Write the ONNX backend *node* test cases to disk in the classic layout.

Usage: python scripts/gen_onnx_node_tests.py OUTDIR

Recent onnx wheels (1.23.x) no longer ship ``onnx/backend/test/data/node``;
the node cases are generated in memory by the ``export_*`` methods under
``onnx.backend.test.case.node`` (via ``collect_testcases()``, which is also
what ``onnx.backend.test.loader.load_node_model_tests()`` uses).  This script
collects them and serialises each one as:

    OUTDIR/<test_name>/model.onnx
    OUTDIR/<test_name>/test_data_set_<k>/input_<i>.pb    (TensorProto)
    OUTDIR/<test_name>/test_data_set_<k>/output_<i>.pb   (TensorProto)

Each TensorProto's ``name`` is the corresponding graph input/output name.
Only cases whose graph inputs and outputs are all plain tensors are written
(sequence/optional/map/sparse cases are skipped).

Determinism: numpy's global RNG and Python's ``random`` are seeded before the
cases are generated (onnx itself also calls ``np.random.seed(0)`` before each
export), and the script re-executes itself with PYTHONHASHSEED=0, so reruns
produce byte-identical files.

When the run finishes, ``OUTDIR/.complete`` is written holding the onnx
version; if it is already present with the same content, the script exits
immediately without touching anything.
"""

from __future__ import annotations

import os
import sys

SEED = 0
# Bump when the on-disk layout produced by this script changes.
LAYOUT_VERSION = 1
STAMP_NAME = ".complete"


def _stamp_text(onnx_version: str) -> str:
    return f"onnx=={onnx_version} layout={LAYOUT_VERSION}\n"


def _onnx_version_fast() -> str | None:
    """Installed onnx version without importing onnx (importing is slow)."""
    try:
        from importlib.metadata import version  # noqa: PLC0415

        return version("onnx")
    except Exception:  # noqa: BLE001
        return None


def _already_complete(outdir: str) -> bool:
    ver = _onnx_version_fast()
    if ver is None:
        return False
    try:
        with open(os.path.join(outdir, STAMP_NAME), encoding="utf-8") as f:
            return f.read() == _stamp_text(ver)
    except OSError:
        return False


def _tensor_only(value_infos) -> bool:  # noqa: ANN001
    return all(vi.type.WhichOneof("value") == "tensor_type" for vi in value_infos)


def _to_tensor_proto(value, name: str):  # noqa: ANN001
    import numpy as np  # noqa: PLC0415
    from onnx import TensorProto, numpy_helper  # noqa: PLC0415

    if isinstance(value, TensorProto):
        t = TensorProto()
        t.CopyFrom(value)
        t.name = name
        return t
    return numpy_helper.from_array(np.asarray(value), name)


def _write_bytes(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] in ("-h", "--help"):
        print(f"usage: {argv[0]} OUTDIR", file=sys.stderr)
        return 2
    outdir = os.path.abspath(argv[1])

    if _already_complete(outdir):
        print(f"{outdir}: already complete ({_stamp_text(_onnx_version_fast()).strip()})")
        return 0

    # Hash randomisation could in principle affect iteration order inside the
    # generators; pin it so output is reproducible.
    if os.environ.get("PYTHONHASHSEED") != "0":
        env = dict(os.environ, PYTHONHASHSEED="0")
        os.execve(sys.executable, [sys.executable, *argv], env)

    import random  # noqa: PLC0415
    import shutil  # noqa: PLC0415
    import time  # noqa: PLC0415
    import warnings  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415

    random.seed(SEED)
    np.random.seed(SEED)

    import onnx  # noqa: PLC0415
    from onnx.backend.test.case.node import collect_testcases  # noqa: PLC0415

    t0 = time.monotonic()

    # Seed again right before generation, in case importing onnx consumed RNG.
    random.seed(SEED)
    np.random.seed(SEED)
    with warnings.catch_warnings():
        # The generators deliberately overflow casts, divide by zero, etc.
        warnings.simplefilter("ignore")
        cases = collect_testcases()

    os.makedirs(outdir, exist_ok=True)
    stamp = os.path.join(outdir, STAMP_NAME)
    if os.path.exists(stamp):
        os.remove(stamp)
    # Remove cases left from a previous (different-version or partial) run.
    for entry in os.listdir(outdir):
        p = os.path.join(outdir, entry)
        if entry.startswith("test_") and os.path.isdir(p):
            shutil.rmtree(p)

    written = 0
    skipped_non_tensor: list[str] = []
    skipped_other: list[str] = []
    seen: set[str] = set()
    for case in sorted(cases, key=lambda c: c.name):
        if case.kind != "node" or case.model is None or not case.data_sets:
            skipped_other.append(case.name)
            continue
        if case.name in seen:
            skipped_other.append(case.name)
            continue
        seen.add(case.name)
        graph = case.model.graph
        if not (_tensor_only(graph.input) and _tensor_only(graph.output)):
            skipped_non_tensor.append(case.name)
            continue
        ok = all(
            len(ins) == len(graph.input) and len(outs) == len(graph.output)
            for ins, outs in case.data_sets
        )
        if not ok:
            skipped_other.append(case.name)
            continue

        case_dir = os.path.join(outdir, case.name)
        os.makedirs(case_dir)
        _write_bytes(
            os.path.join(case_dir, "model.onnx"),
            case.model.SerializeToString(deterministic=True),
        )
        for k, (inputs, outputs) in enumerate(case.data_sets):
            ds_dir = os.path.join(case_dir, f"test_data_set_{k}")
            os.makedirs(ds_dir)
            for i, (vi, value) in enumerate(zip(graph.input, inputs)):
                _write_bytes(
                    os.path.join(ds_dir, f"input_{i}.pb"),
                    _to_tensor_proto(value, vi.name).SerializeToString(
                        deterministic=True
                    ),
                )
            for i, (vi, value) in enumerate(zip(graph.output, outputs)):
                _write_bytes(
                    os.path.join(ds_dir, f"output_{i}.pb"),
                    _to_tensor_proto(value, vi.name).SerializeToString(
                        deterministic=True
                    ),
                )
        written += 1

    with open(stamp, "w", encoding="utf-8") as f:
        f.write(_stamp_text(onnx.__version__))

    dt = time.monotonic() - t0
    print(
        f"wrote {written} onnx {onnx.__version__} node tests to {outdir} "
        f"(skipped {len(skipped_non_tensor)} with sequence/optional/map/sparse "
        f"inputs or outputs, {len(skipped_other)} other) in {dt:.1f}s"
    )
    if skipped_other:
        print("  other skips: " + ", ".join(skipped_other), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
