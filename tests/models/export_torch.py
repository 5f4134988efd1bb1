#!/usr/bin/env python3
"""Export small PyTorch modules with ``torch.onnx.export``, the way a user would.

Usage: python tests/models/export_torch.py [OUTDIR]   (default: this folder)

Unlike build_models.py (hand-wired graphs), these fixtures come straight out of
PyTorch's exporters, so they carry whatever node patterns, constant folding,
naming and metadata real exports have. For each module this writes

    OUTDIR/NAME/model.onnx            legacy TorchScript exporter (dynamo=False, opset 17)
    OUTDIR/NAME_dynamo/model.onnx     torch.export-based exporter (dynamo=True, its default opset)

each with ``inputs/x.npy`` (random normal float32, fixed seed) and
``expected/y.npy`` (onnxruntime, CPU EP, graph optimisations off, one thread).
The torch output is checked against onnxruntime's (atol = rtol = 1e-4); the
script fails if they disagree. Every model.onnx is a single self-contained file
(any external data is embedded again) and must stay under 300 KB.

The legacy transformer-layer export has a symbolic batch dim named 'batch'
(the stored input still has batch = 2), so a user has to fix it.

Requirements: torch (CPU is enough), onnxscript (for dynamo=True) and
scripts/requirements.txt, e.g.
    python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install \
        torch==2.15.0 onnxscript==0.7.2 onnx==1.23.2 onnxruntime==1.32.0 numpy==2.4.6
(the PyPI linux wheel pulls in the nvidia-* CUDA wheels; torch will not import
without them even on a CPU-only machine). Tested with exactly those versions on
Python 3.11; output is byte-for-byte reproducible with them.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
LEGACY_OPSET = 17
MAX_BYTES = 300 * 1024
ATOL = 1e-4
RTOL = 1e-4


@dataclass
class Spec:
    make: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    # dynamic_axes for the legacy exporter only (the dynamo variant stays static).
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)
    # Legacy export goes through CallX (see there).
    wrap_legacy: bool = False


def make_transformer_layer() -> nn.Module:
    return nn.TransformerEncoderLayer(
        d_model=32, nhead=4, dim_feedforward=64, dropout=0.1, batch_first=True
    )


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def make_convnet() -> nn.Module:
    m = ConvNet()
    # Non-trivial BatchNorm statistics so folding/lowering of BN is actually exercised.
    bn = m.features[1]
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(8, generator=g) * 0.1)
        bn.running_var.copy_(torch.rand(8, generator=g) + 0.5)
        bn.weight.copy_(torch.rand(8, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(8, generator=g) * 0.1)
    return m


MODELS: dict[str, Spec] = {
    "torch_transformer_layer": Spec(
        make_transformer_layer,
        (2, 8, 32),
        dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        wrap_legacy=True,
    ),
    "torch_convnet": Spec(make_convnet, (1, 3, 16, 16)),
}


def run_ort(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, inputs)))


class CallX(nn.Module):
    """``forward(x) = inner(x)``.

    The legacy exporter appends every defaulted forward() argument to the traced
    inputs, and tracing turns them into tensors; TransformerEncoderLayer's
    ``is_causal=False`` then reaches scaled_dot_product_attention as a Tensor and
    tracing fails (torch 2.15). Hiding the extra arguments behind a one-argument
    forward is the usual user-side workaround. Parameter names get an ``inner.``
    prefix.
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def export(module: nn.Module, x: torch.Tensor, spec: Spec, dynamo: bool) -> onnx.ModelProto:
    """Export to a temporary directory, then load back with all data in memory."""
    assert not any(m.training for m in module.modules())
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.onnx")
        if dynamo:
            prog = torch.onnx.export(
                module,
                (x,),
                dynamo=True,
                input_names=["x"],
                output_names=["y"],
                external_data=False,
            )
            prog.save(path, external_data=False)
        else:
            torch.onnx.export(
                # .eval(): the exporter restores the wrapper's own mode afterwards,
                # and a fresh module is in training mode (would switch dropout on).
                CallX(module).eval() if spec.wrap_legacy else module,
                (x,),
                path,
                dynamo=False,
                opset_version=LEGACY_OPSET,
                input_names=["x"],
                output_names=["y"],
                dynamic_axes=spec.dynamic_axes or None,
            )
        # onnx.load pulls any external-data files into the proto; saving the
        # proto serialised below embeds them, so the fixture is one file.
        model = onnx.load(path, load_external_data=True)
    assert not any(m.training for m in module.modules())
    for t in model.graph.initializer:
        assert t.data_location != onnx.TensorProto.EXTERNAL, t.name
    return model


def write_fixture(outdir: str, name: str, model: onnx.ModelProto,
                  inputs: dict[str, np.ndarray], out: dict[str, np.ndarray]) -> int:
    d = os.path.join(outdir, name)
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(os.path.join(d, "inputs"))
    os.makedirs(os.path.join(d, "expected"))
    data = model.SerializeToString(deterministic=True)
    assert len(data) < MAX_BYTES, (name, len(data))
    with open(os.path.join(d, "model.onnx"), "wb") as f:
        f.write(data)
    for k, v in inputs.items():
        np.save(os.path.join(d, "inputs", f"{k}.npy"), v)
    for k, v in out.items():
        np.save(os.path.join(d, "expected", f"{k}.npy"), v)
    return len(data)


def main(argv: list[str]) -> int:
    outdir = os.path.abspath(argv[1]) if len(argv) > 1 else HERE
    failures = []
    for name, spec in MODELS.items():
        seed = zlib.crc32(name.encode())
        torch.manual_seed(seed)
        module = spec.make().eval()
        rng = np.random.default_rng(seed)
        x_np = rng.standard_normal(spec.input_shape).astype(np.float32)
        inputs = {"x": x_np}
        x = torch.from_numpy(x_np.copy())
        with torch.no_grad():
            want = module(x).numpy()

        for dynamo in (False, True):
            variant = f"{name}_dynamo" if dynamo else name
            try:
                model = export(module, x, spec, dynamo)
            except Exception as e:  # noqa: BLE001
                if not dynamo:
                    raise
                print(f"{variant}: dynamo export failed, skipped: {type(e).__name__}: {e}")
                failures.append(variant)
                continue
            onnx.checker.check_model(model, full_check=True)
            out = run_ort(model, inputs)
            assert list(out) == ["y"], (variant, list(out))
            y = out["y"]
            assert y.dtype == np.float32 and y.shape == want.shape, (variant, y.dtype, y.shape)
            assert np.all(np.isfinite(y)), variant
            np.testing.assert_allclose(y, want, atol=ATOL, rtol=RTOL, err_msg=variant)
            size = write_fixture(outdir, variant, model, inputs, out)
            opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
            print(
                f"{variant}: {size} bytes, {len(model.graph.node)} nodes, opsets {opsets}, "
                f"x{list(x_np.shape)} -> y{list(y.shape)}, "
                f"max|torch-ort| = {float(np.max(np.abs(y - want))):.3g}"
            )
    print(
        f"exported to {outdir} (torch {torch.__version__}, onnx {onnx.__version__}, "
        f"onnxruntime {ort.__version__})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
