#!/usr/bin/env python3
"""Build small, realistically shaped ONNX models plus reference data.

Usage: python tests/models/build_models.py [OUTDIR]   (default: this folder)

For each model NAME this writes:

    OUTDIR/NAME/model.onnx
    OUTDIR/NAME/inputs/<input_name>.npy
    OUTDIR/NAME/expected/<output_name with '/' replaced by '_'>.npy

Models are built with ``onnx.helper`` (opset 17, IR version 8), validated with
``onnx.checker.check_model(full_check=True)``, run with onnxruntime on the CPU
(graph optimisations off, one thread) on random-normal inputs drawn from a
fixed seed, and the onnxruntime outputs are stored as the expected values.
Each model's output is also checked against a plain numpy reference so a
wrongly wired graph is caught here rather than in the Rust tests.

Requirements: see scripts/requirements.txt.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
F32 = TensorProto.FLOAT
HERE = os.path.dirname(os.path.abspath(__file__))


def sanitize(name: str) -> str:
    return name.replace("/", "_")


def nonzero_normal(rng: np.random.Generator, shape, scale: float = 1.0) -> np.ndarray:  # noqa: ANN001
    a = rng.standard_normal(shape).astype(np.float32) * np.float32(scale)
    # Exact zeros are astronomically unlikely, but guarantee it anyway.
    return np.where(a == 0, np.float32(1e-3), a).astype(np.float32)


def init(name: str, arr: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(arr), name)


def const_node(out: str, arr: np.ndarray) -> onnx.NodeProto:
    """A Constant node, the way PyTorch's exporter emits small constants."""
    return helper.make_node(
        "Constant",
        [],
        [out],
        name=out.replace("_output_0", ""),
        value=numpy_helper.from_array(np.asarray(arr), out),
    )


@dataclass
class Built:
    model: onnx.ModelProto
    inputs: dict[str, np.ndarray]
    reference: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
    rtol: float = 1e-4
    atol: float = 1e-5


def make_model(name: str, nodes, inputs, outputs, initializers) -> onnx.ModelProto:  # noqa: ANN001
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_operatorsetid("", OPSET)],
        producer_name="smelt-build-models",
        producer_version="1",
    )
    model.ir_version = IR_VERSION
    return model


def vi(name: str, shape) -> onnx.ValueInfoProto:  # noqa: ANN001
    return helper.make_tensor_value_info(name, F32, list(shape))


# --------------------------------------------------------------------------
# numpy helpers for the references
# --------------------------------------------------------------------------


def np_erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.float64])(x.astype(np.float64))


def np_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# --------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------


def build_mlp_gelu(rng: np.random.Generator) -> Built:
    w1 = nonzero_normal(rng, (64, 128), 1 / math.sqrt(64))
    b1 = nonzero_normal(rng, (128,), 0.1)
    w2 = nonzero_normal(rng, (128, 32), 1 / math.sqrt(128))
    b2 = nonzero_normal(rng, (32,), 0.1)
    inits = [
        init("fc1.weight", w1),
        init("fc1.bias", b1),
        init("fc2.weight", w2),
        init("fc2.bias", b2),
        init("gelu.sqrt2", np.array(math.sqrt(2.0), np.float32)),
        init("gelu.one", np.array(1.0, np.float32)),
        init("gelu.half", np.array(0.5, np.float32)),
    ]
    mk = helper.make_node
    nodes = [
        mk("MatMul", ["x", "fc1.weight"], ["/fc1/MatMul_output_0"], name="/fc1/MatMul"),
        mk("Add", ["/fc1/MatMul_output_0", "fc1.bias"], ["/fc1/Add_output_0"], name="/fc1/Add"),
        mk("Div", ["/fc1/Add_output_0", "gelu.sqrt2"], ["/act/Div_output_0"], name="/act/Div"),
        mk("Erf", ["/act/Div_output_0"], ["/act/Erf_output_0"], name="/act/Erf"),
        mk("Add", ["/act/Erf_output_0", "gelu.one"], ["/act/Add_output_0"], name="/act/Add"),
        mk("Mul", ["/fc1/Add_output_0", "/act/Add_output_0"], ["/act/Mul_output_0"], name="/act/Mul"),
        mk("Mul", ["/act/Mul_output_0", "gelu.half"], ["/act/Mul_1_output_0"], name="/act/Mul_1"),
        mk("MatMul", ["/act/Mul_1_output_0", "fc2.weight"], ["/fc2/MatMul_output_0"], name="/fc2/MatMul"),
        mk("Add", ["/fc2/MatMul_output_0", "fc2.bias"], ["y"], name="/fc2/Add"),
    ]
    model = make_model("mlp_gelu", nodes, [vi("x", (4, 64))], [vi("y", (4, 32))], inits)
    inputs = {"x": nonzero_normal(rng, (4, 64))}

    def ref(i: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        h = i["x"].astype(np.float64) @ w1 + b1
        g = 0.5 * h * (1.0 + np_erf(h / math.sqrt(2.0)))
        return {"y": g @ w2 + b2}

    return Built(model, inputs, ref)


def build_layernorm_decomposed(rng: np.random.Generator) -> Built:
    gamma = nonzero_normal(rng, (64,), 0.5) + np.float32(1.0)
    beta = nonzero_normal(rng, (64,), 0.1)
    inits = [
        init("ln.weight", gamma.astype(np.float32)),
        init("ln.bias", beta),
        init("ln.two", np.array(2.0, np.float32)),
        init("ln.eps", np.array(1e-5, np.float32)),
    ]
    mk = helper.make_node
    nodes = [
        mk("ReduceMean", ["x"], ["/ln/ReduceMean_output_0"], name="/ln/ReduceMean", axes=[-1], keepdims=1),
        mk("Sub", ["x", "/ln/ReduceMean_output_0"], ["/ln/Sub_output_0"], name="/ln/Sub"),
        mk("Pow", ["/ln/Sub_output_0", "ln.two"], ["/ln/Pow_output_0"], name="/ln/Pow"),
        mk("ReduceMean", ["/ln/Pow_output_0"], ["/ln/ReduceMean_1_output_0"], name="/ln/ReduceMean_1", axes=[-1], keepdims=1),
        mk("Add", ["/ln/ReduceMean_1_output_0", "ln.eps"], ["/ln/Add_output_0"], name="/ln/Add"),
        mk("Sqrt", ["/ln/Add_output_0"], ["/ln/Sqrt_output_0"], name="/ln/Sqrt"),
        mk("Div", ["/ln/Sub_output_0", "/ln/Sqrt_output_0"], ["/ln/Div_output_0"], name="/ln/Div"),
        mk("Mul", ["/ln/Div_output_0", "ln.weight"], ["/ln/Mul_output_0"], name="/ln/Mul"),
        mk("Add", ["/ln/Mul_output_0", "ln.bias"], ["y"], name="/ln/Add_1"),
    ]
    model = make_model(
        "layernorm_decomposed", nodes, [vi("x", (2, 16, 64))], [vi("y", (2, 16, 64))], inits
    )
    # Non-zero mean and non-unit variance so the normalisation matters.
    inputs = {"x": nonzero_normal(rng, (2, 16, 64), 2.0) + np.float32(0.5)}

    def ref(i: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = i["x"].astype(np.float64)
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return {"y": (x - mu) / np.sqrt(var + 1e-5) * gamma + beta}

    return Built(model, inputs, ref)


def build_attention_masked(rng: np.random.Generator) -> Built:
    b, s, d, h = 2, 8, 32, 4
    hd = d // h
    ws = {}
    inits = []
    for p in ("q", "k", "v", "out"):
        ws[p] = (
            nonzero_normal(rng, (d, d), 1 / math.sqrt(d)),
            nonzero_normal(rng, (d,), 0.1),
        )
        inits += [init(f"attn.{p}.weight", ws[p][0]), init(f"attn.{p}.bias", ws[p][1])]
    inits += [
        init("attn.heads_shape", np.array([b, s, h, hd], np.int64)),
        init("attn.out_shape", np.array([b, s, d], np.int64)),
        init("attn.scale", np.array(math.sqrt(hd), np.float32)),
    ]
    mk = helper.make_node
    nodes = []
    for p, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
        nodes += [
            mk("MatMul", ["x", f"attn.{p}.weight"], [f"/attn/{p}/MatMul_output_0"], name=f"/attn/{p}/MatMul"),
            mk("Add", [f"/attn/{p}/MatMul_output_0", f"attn.{p}.bias"], [f"/attn/{p}/Add_output_0"], name=f"/attn/{p}/Add"),
            mk("Reshape", [f"/attn/{p}/Add_output_0", "attn.heads_shape"], [f"/attn/{p}/Reshape_output_0"], name=f"/attn/{p}/Reshape"),
            # K goes straight to [b, h, hd, s] (K transposed), Q/V to [b, h, s, hd].
            mk("Transpose", [f"/attn/{p}/Reshape_output_0"], [f"/attn/{p}/Transpose_output_0"], name=f"/attn/{p}/Transpose", perm=perm),
        ]
    nodes += [
        mk("MatMul", ["/attn/q/Transpose_output_0", "/attn/k/Transpose_output_0"], ["/attn/MatMul_output_0"], name="/attn/MatMul"),
        mk("Div", ["/attn/MatMul_output_0", "attn.scale"], ["/attn/Div_output_0"], name="/attn/Div"),
        mk("Add", ["/attn/Div_output_0", "mask"], ["/attn/Add_output_0"], name="/attn/Add"),
        mk("Softmax", ["/attn/Add_output_0"], ["/attn/Softmax_output_0"], name="/attn/Softmax", axis=-1),
        mk("MatMul", ["/attn/Softmax_output_0", "/attn/v/Transpose_output_0"], ["/attn/MatMul_1_output_0"], name="/attn/MatMul_1"),
        mk("Transpose", ["/attn/MatMul_1_output_0"], ["/attn/Transpose_output_0"], name="/attn/Transpose", perm=[0, 2, 1, 3]),
        mk("Reshape", ["/attn/Transpose_output_0", "attn.out_shape"], ["/attn/Reshape_output_0"], name="/attn/Reshape"),
        mk("MatMul", ["/attn/Reshape_output_0", "attn.out.weight"], ["/attn/out/MatMul_output_0"], name="/attn/out/MatMul"),
        mk("Add", ["/attn/out/MatMul_output_0", "attn.out.bias"], ["y"], name="/attn/out/Add"),
    ]
    model = make_model(
        "attention_masked",
        nodes,
        [vi("x", (b, s, d)), vi("mask", (b, 1, 1, s))],
        [vi("y", (b, s, d))],
        inits,
    )
    # Padding-style additive mask: batch 0 keeps 6 keys, batch 1 keeps 5.
    valid = [6, 5]
    mask = np.zeros((b, 1, 1, s), np.float32)
    for i, n in enumerate(valid):
        mask[i, ..., n:] = np.float32(-1e9)
    inputs = {"x": nonzero_normal(rng, (b, s, d)), "mask": mask}

    def ref(i: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = i["x"].astype(np.float64)

        def proj(p: str) -> np.ndarray:
            return (x @ ws[p][0] + ws[p][1]).reshape(b, s, h, hd).transpose(0, 2, 1, 3)

        q, k, v = proj("q"), proj("k"), proj("v")
        sc = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd) + i["mask"]
        o = (np_softmax(sc) @ v).transpose(0, 2, 1, 3).reshape(b, s, d)
        return {"y": o @ ws["out"][0] + ws["out"][1]}

    return Built(model, inputs, ref)


def build_conv_relu_stack(rng: np.random.Generator) -> Built:
    w1 = nonzero_normal(rng, (8, 3, 3, 3), 1 / math.sqrt(27))
    b1 = nonzero_normal(rng, (8,), 0.1)
    w2 = nonzero_normal(rng, (8, 8, 3, 3), 1 / math.sqrt(72))
    b2 = nonzero_normal(rng, (8,), 0.1)
    w3 = nonzero_normal(rng, (4, 8, 1, 1), 1 / math.sqrt(8))
    b3 = nonzero_normal(rng, (4,), 0.1)
    bn_scale = (np.float32(1.0) + nonzero_normal(rng, (4,), 0.2)).astype(np.float32)
    bn_bias = nonzero_normal(rng, (4,), 0.2)
    bn_mean = nonzero_normal(rng, (4,), 0.2)
    bn_var = (np.abs(nonzero_normal(rng, (4,), 0.5)) + np.float32(0.5)).astype(np.float32)
    wg = nonzero_normal(rng, (10, 4), 0.5)
    bg = nonzero_normal(rng, (10,), 0.1)
    inits = [
        init("conv1.weight", w1), init("conv1.bias", b1),
        init("conv2.weight", w2), init("conv2.bias", b2),
        init("conv3.weight", w3), init("conv3.bias", b3),
        init("bn.weight", bn_scale), init("bn.bias", bn_bias),
        init("bn.running_mean", bn_mean), init("bn.running_var", bn_var),
        init("fc.weight", wg), init("fc.bias", bg),
    ]  # fmt: skip
    mk = helper.make_node
    nodes = [
        mk("Conv", ["x", "conv1.weight", "conv1.bias"], ["/conv1/Conv_output_0"], name="/conv1/Conv",
           kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1], dilations=[1, 1], group=1),
        mk("Relu", ["/conv1/Conv_output_0"], ["/relu1/Relu_output_0"], name="/relu1/Relu"),
        mk("Conv", ["/relu1/Relu_output_0", "conv2.weight", "conv2.bias"], ["/conv2/Conv_output_0"], name="/conv2/Conv",
           kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2], dilations=[1, 1], group=1),
        mk("Relu", ["/conv2/Conv_output_0"], ["/relu2/Relu_output_0"], name="/relu2/Relu"),
        mk("MaxPool", ["/relu2/Relu_output_0"], ["/pool/MaxPool_output_0"], name="/pool/MaxPool",
           kernel_shape=[2, 2], strides=[2, 2], pads=[0, 0, 0, 0], ceil_mode=0),
        mk("Conv", ["/pool/MaxPool_output_0", "conv3.weight", "conv3.bias"], ["/conv3/Conv_output_0"], name="/conv3/Conv",
           kernel_shape=[1, 1], pads=[0, 0, 0, 0], strides=[1, 1], dilations=[1, 1], group=1),
        mk("BatchNormalization", ["/conv3/Conv_output_0", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"],
           ["/bn/BatchNormalization_output_0"], name="/bn/BatchNormalization", epsilon=1e-5, momentum=0.9),
        mk("Relu", ["/bn/BatchNormalization_output_0"], ["/relu3/Relu_output_0"], name="/relu3/Relu"),
        mk("GlobalAveragePool", ["/relu3/Relu_output_0"], ["/gap/GlobalAveragePool_output_0"], name="/gap/GlobalAveragePool"),
        mk("Flatten", ["/gap/GlobalAveragePool_output_0"], ["/Flatten_output_0"], name="/Flatten", axis=1),
        mk("Gemm", ["/Flatten_output_0", "fc.weight", "fc.bias"], ["logits"], name="/fc/Gemm",
           alpha=1.0, beta=1.0, transB=1),
    ]  # fmt: skip
    model = make_model(
        "conv_relu_stack", nodes, [vi("x", (1, 3, 16, 16))], [vi("logits", (1, 10))], inits
    )
    inputs = {"x": nonzero_normal(rng, (1, 3, 16, 16))}

    def conv(x: np.ndarray, w: np.ndarray, bias: np.ndarray, stride: int, pad: int) -> np.ndarray:
        n, c, hh, ww = x.shape
        oc, _, kh, kw = w.shape
        xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        oh = (hh + 2 * pad - kh) // stride + 1
        ow = (ww + 2 * pad - kw) // stride + 1
        out = np.zeros((n, oc, oh, ow))
        for i in range(kh):
            for j in range(kw):
                patch = xp[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride]
                out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
        return out + bias.reshape(1, -1, 1, 1)

    def ref(i: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = i["x"].astype(np.float64)
        x = np.maximum(conv(x, w1, b1, 1, 1), 0)
        x = np.maximum(conv(x, w2, b2, 2, 1), 0)
        n, c, hh, ww = x.shape
        x = x.reshape(n, c, hh // 2, 2, ww // 2, 2).max(axis=(3, 5))
        x = conv(x, w3, b3, 1, 0)
        r = lambda a: a.reshape(1, -1, 1, 1)  # noqa: E731
        x = (x - r(bn_mean)) / np.sqrt(r(bn_var) + 1e-5) * r(bn_scale) + r(bn_bias)
        x = np.maximum(x, 0).mean(axis=(2, 3))
        return {"logits": x @ wg.T + bg}

    return Built(model, inputs, ref)


def build_shape_reshape_chain(rng: np.random.Generator) -> Built:
    mk = helper.make_node
    nodes = [
        mk("Shape", ["x"], ["/Shape_output_0"], name="/Shape"),
        const_node("/Constant_output_0", np.array(0, np.int64)),  # scalar index
        mk("Gather", ["/Shape_output_0", "/Constant_output_0"], ["/Gather_output_0"], name="/Gather", axis=0),
        const_node("/Constant_1_output_0", np.array([0], np.int64)),  # Unsqueeze axes
        mk("Unsqueeze", ["/Gather_output_0", "/Constant_1_output_0"], ["/Unsqueeze_output_0"], name="/Unsqueeze"),
        const_node("/Constant_2_output_0", np.array([-1], np.int64)),
        mk("Concat", ["/Unsqueeze_output_0", "/Constant_2_output_0"], ["/Concat_output_0"], name="/Concat", axis=0),
        mk("Reshape", ["x", "/Concat_output_0"], ["/Reshape_output_0"], name="/Reshape"),
        mk("Relu", ["/Reshape_output_0"], ["y"], name="/Relu"),
        const_node("/Constant_3_output_0", np.array(2.0, np.float32)),
        mk("Mul", ["x", "/Constant_3_output_0"], ["y/out"], name="/Mul"),
    ]
    model = make_model(
        "shape_reshape_chain",
        nodes,
        [vi("x", (2, 3, 4))],
        [vi("y", (2, 12)), vi("y/out", (2, 3, 4))],
        [],
    )
    inputs = {"x": nonzero_normal(rng, (2, 3, 4))}

    def ref(i: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = i["x"]
        return {"y": np.maximum(x.reshape(2, -1), 0), "y/out": x * 2}

    return Built(model, inputs, ref)


MODELS: dict[str, Callable[[np.random.Generator], Built]] = {
    "mlp_gelu": build_mlp_gelu,
    "layernorm_decomposed": build_layernorm_decomposed,
    "attention_masked": build_attention_masked,
    "conv_relu_stack": build_conv_relu_stack,
    "shape_reshape_chain": build_shape_reshape_chain,
}


def run_ort(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(
        model.SerializeToString(), so, providers=["CPUExecutionProvider"]
    )
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, inputs)))


def main(argv: list[str]) -> int:
    outdir = os.path.abspath(argv[1]) if len(argv) > 1 else HERE
    for name, builder in MODELS.items():
        # Per-model seed so adding/reordering models does not change others.
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        built = builder(rng)
        model = built.model
        onnx.checker.check_model(model, full_check=True)
        out = run_ort(model, built.inputs)

        ref = built.reference(built.inputs)
        assert set(ref) == set(out), (name, set(ref), set(out))
        for k, v in out.items():
            assert v.dtype == np.float32, (name, k, v.dtype)
            assert np.all(np.isfinite(v)), (name, k)
            np.testing.assert_allclose(
                v, ref[k], rtol=built.rtol, atol=built.atol, err_msg=f"{name}:{k}"
            )

        d = os.path.join(outdir, name)
        if os.path.isdir(d):
            shutil.rmtree(d)
        os.makedirs(os.path.join(d, "inputs"))
        os.makedirs(os.path.join(d, "expected"))
        data = model.SerializeToString(deterministic=True)
        with open(os.path.join(d, "model.onnx"), "wb") as f:
            f.write(data)
        for k, v in built.inputs.items():
            np.save(os.path.join(d, "inputs", f"{sanitize(k)}.npy"), v)
        for k, v in out.items():
            np.save(os.path.join(d, "expected", f"{sanitize(k)}.npy"), v)
        print(
            f"{name}: {len(data)} bytes, {len(model.graph.node)} nodes, "
            f"inputs {[f'{k}{list(v.shape)}' for k, v in built.inputs.items()]}, "
            f"outputs {[f'{k}{list(v.shape)}' for k, v in out.items()]}"
        )
    print(f"built {len(MODELS)} models in {outdir} (onnx {onnx.__version__}, onnxruntime {ort.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
