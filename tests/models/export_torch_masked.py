#!/usr/bin/env python3
"""Export reductions over a boolean selection (`x[mask].sum()`, `x[mask].mean()`) with
``torch.onnx.export`` (legacy exporter, opset 17), as PyTorch users write them. The exported
graph goes through NonZero (a data-dependent shape); smelt rewrites it to a static form.

Usage: python tests/models/export_torch_masked.py [OUTDIR]   (default: this folder)
Writes OUTDIR/torch_masked_{sum,mean}/{model.onnx, inputs/{x,mask}.npy, expected/y.npy};
expected values are onnxruntime's (CPU, optimizations off, one thread), checked against torch.
Needs torch (see export_torch.py for the tested install) and scripts/requirements.txt.
"""

import os
import sys

import numpy as np
import onnxruntime as ort
import torch


class MaskedSum(torch.nn.Module):
    def forward(self, x, mask):
        return x[mask].sum()


class MaskedMean(torch.nn.Module):
    def forward(self, x, mask):
        return x[mask].mean()


def main() -> None:
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 5)).astype(np.float32)
    mask = rng.standard_normal((4, 5)) > 0.2
    for name, mod in [("torch_masked_sum", MaskedSum()), ("torch_masked_mean", MaskedMean())]:
        d = os.path.join(out, name)
        os.makedirs(os.path.join(d, "inputs"), exist_ok=True)
        os.makedirs(os.path.join(d, "expected"), exist_ok=True)
        path = os.path.join(d, "model.onnx")
        torch.onnx.export(mod, (torch.from_numpy(x), torch.from_numpy(mask)), path, dynamo=False,
                          opset_version=17, input_names=["x", "mask"], output_names=["y"])
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        (y,) = sess.run(None, {"x": x, "mask": mask})
        want = mod(torch.from_numpy(x), torch.from_numpy(mask)).numpy()
        assert np.allclose(y, want, rtol=1e-5, atol=1e-6), (y, want)
        np.save(os.path.join(d, "inputs", "x.npy"), x)
        np.save(os.path.join(d, "inputs", "mask.npy"), mask)
        np.save(os.path.join(d, "expected", "y.npy"), y)
        print(name, y)


if __name__ == "__main__":
    main()
