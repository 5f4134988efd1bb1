"""Writes the benchmark suite as ONNX models (bench/models/<name>/model.onnx), the same graphs
smelt's Rust zoo builds (src/zoo.rs), so smelt and ONNX Runtime time identical models.
Weights are random with a fixed seed. Usage: make_models.py OUT_DIR [NAME...]; with
`gemms` as the only name, writes the GPU check's plain products instead (GEMMS: both operands
are inputs, so their bundles carry no weights), which gpu-check times against cuBLAS."""

import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

rng = np.random.default_rng(0)
F = TensorProto.FLOAT


class G:
    """A tiny graph builder: nodes, initializers, fresh names."""

    def __init__(self):
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, p):
        self.n += 1
        return f"{p}{self.n}"

    def op(self, t, ins, **attrs):
        out = self.name(t.lower())
        self.nodes.append(helper.make_node(t, ins, [out], **attrs))
        return out

    def const(self, arr, p="w"):
        n = self.name(p)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), n))
        return n

    def scalar(self, v):
        return self.const(np.array(v, dtype=np.float32), "c")

    def rand(self, shape, scale):
        return self.const((rng.uniform(-1, 1, shape) * scale).astype(np.float32))

    def model(self, inputs, output, out_shape, dtype=F):
        g = helper.make_graph(
            self.nodes,
            "bench",
            [helper.make_tensor_value_info(n, dtype, s) for n, s in inputs],
            [helper.make_tensor_value_info(output, dtype, out_shape)],
            self.inits,
        )
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        return m


def elementwise_chain(n):
    g = G()
    a, b, c = g.scalar(0.5), g.scalar(0.25), g.scalar(1.5)
    v = g.op("Mul", ["x", a])
    v = g.op("Add", [v, b])
    v = g.op("Tanh", [v])
    v = g.op("Mul", [v, "y"])
    v = g.op("Sub", [v, "x"])
    v = g.op("Relu", [v])
    v = g.op("Add", [v, c])
    v = g.op("Sqrt", [v])
    v = g.op("Mul", [v, "y"])
    v = g.op("Sigmoid", [v])
    return g.model([("x", [n]), ("y", [n])], v, [n])


def softmax(rows, cols):
    g = G()
    v = g.op("Softmax", ["x"], axis=-1)
    return g.model([("x", [rows, cols])], v, [rows, cols])


def layernorm_decomposed(g, x, d):
    m = g.op("ReduceMean", [x], axes=[-1], keepdims=1)
    c = g.op("Sub", [x, m])
    sq = g.op("Pow", [c, g.scalar(2.0)])
    v = g.op("ReduceMean", [sq], axes=[-1], keepdims=1)
    sd = g.op("Sqrt", [g.op("Add", [v, g.scalar(1e-5)])])
    n = g.op("Div", [c, sd])
    n = g.op("Mul", [n, g.rand([d], 0.5)])
    return g.op("Add", [n, g.rand([d], 0.5)])


def layernorm(rows, cols):
    g = G()
    v = layernorm_decomposed(g, "x", cols)
    return g.model([("x", [rows, cols])], v, [rows, cols])


def gelu_mlp(batch, d, h):
    g = G()
    f = g.op("Add", [g.op("MatMul", ["x", g.rand([d, h], d**-0.5)]), g.rand([h], 0.1)])
    # erf-GELU as exporters write it.
    e = g.op("Erf", [g.op("Div", [f, g.scalar(2**0.5)])])
    f = g.op("Mul", [g.op("Mul", [f, g.op("Add", [e, g.scalar(1.0)])]), g.scalar(0.5)])
    y = g.op("Add", [g.op("MatMul", [f, g.rand([h, d], h**-0.5)]), g.rand([d], 0.1)])
    return g.model([("x", [batch, d])], y, [batch, d])


def gelu_tanh(g, x):
    cube = g.op("Pow", [x, g.scalar(3.0)])
    u = g.op("Add", [x, g.op("Mul", [cube, g.scalar(0.044715)])])
    th = g.op("Tanh", [g.op("Mul", [u, g.scalar((2 / np.pi) ** 0.5)])])
    return g.op("Mul", [g.op("Mul", [x, g.scalar(0.5)]), g.op("Add", [th, g.scalar(1.0)])])


def gpt2_block(b, s, d, heads):
    g = G()
    dh = d // heads
    w = d**-0.5
    h = layernorm_decomposed(g, "x", d)
    qkv = g.op("Add", [g.op("MatMul", [h, g.rand([d, 3 * d], w)]), g.rand([3 * d], 0.1)])
    parts = []
    for i in range(3):
        sl = g.op(
            "Slice",
            [qkv, g.const(np.array([i * d])), g.const(np.array([(i + 1) * d])), g.const(np.array([2]))],
        )
        r = g.op("Reshape", [sl, g.const(np.array([b, s, heads, dh]))])
        perm = [0, 2, 3, 1] if i == 1 else [0, 2, 1, 3]
        parts.append(g.op("Transpose", [r], perm=perm))
    sc = g.op("Mul", [g.op("MatMul", [parts[0], parts[1]]), g.scalar(dh**-0.5)])
    mask = np.where(np.arange(s)[None, :] > np.arange(s)[:, None], -1e9, 0.0).astype(np.float32)
    sc = g.op("Add", [sc, g.const(mask, "mask")])
    p = g.op("Softmax", [sc], axis=-1)
    o = g.op("Transpose", [g.op("MatMul", [p, parts[2]])], perm=[0, 2, 1, 3])
    o = g.op("Reshape", [o, g.const(np.array([b, s, d]))])
    a = g.op("Add", [g.op("MatMul", [o, g.rand([d, d], w)]), g.rand([d], 0.1)])
    x1 = g.op("Add", ["x", a])
    h2 = layernorm_decomposed(g, x1, d)
    f = g.op("Add", [g.op("MatMul", [h2, g.rand([d, 4 * d], w)]), g.rand([4 * d], 0.1)])
    f = gelu_tanh(g, f)
    f = g.op("Add", [g.op("MatMul", [f, g.rand([4 * d, d], 0.5 * w)]), g.rand([d], 0.1)])
    y = g.op("Add", [x1, f])
    return g.model([("x", [b, s, d])], y, [b, s, d])


def conv_relu_stack(layers, batch, ch, size):
    g = G()
    v = "x"
    for _ in range(layers):
        wt = g.rand([ch, ch, 3, 3], (9 * ch) ** -0.5)
        v = g.op("Relu", [g.op("Conv", [v, wt, g.rand([ch], 0.1)], pads=[1, 1, 1, 1])])
    return g.model([("x", [batch, ch, size, size])], v, [batch, ch, size, size])


def matmul(m, k, n, dtype):
    g = G()
    y = g.op("MatMul", ["a", "b"])
    return g.model([("a", [m, k]), ("b", [k, n])], y, [m, n], dtype)


# Named gemm_MxKxN[_f16]: gpu-check reads the shape and dtype from the name.
GEMMS = {
    f"gemm_{m}x{k}x{n}{tag}": (lambda m=m, k=k, n=n, t=t: matmul(m, k, n, t))
    for (m, k, n) in [(64, 1024, 4096), (1024, 256, 1024), (1024, 1024, 1024), (4096, 4096, 4096)]
    for (tag, t) in [("", F), ("_f16", TensorProto.FLOAT16)]
}

SUITE = {
    "elementwise_chain_16m": lambda: elementwise_chain(1 << 24),
    "softmax_4096x4096": lambda: softmax(4096, 4096),
    "layernorm_8192x1024": lambda: layernorm(8192, 1024),
    "gelu_mlp_b64_1024_4096": lambda: gelu_mlp(64, 1024, 4096),
    "gpt2_block_b2_s32_d64_h4": lambda: gpt2_block(2, 32, 64, 4),
    "gpt2_block_b8_s128_d256_h4": lambda: gpt2_block(8, 128, 256, 4),
    "conv_relu_stack_12x_b1_c32_56": lambda: conv_relu_stack(12, 1, 32, 56),
}

if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 else "bench/models"
    only = set(sys.argv[2:])
    models = SUITE
    if only == {"gemms"}:
        models, only = GEMMS, set()
    for name, make in models.items():
        if only and name not in only:
            continue
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        m = make()
        onnx.checker.check_model(m)
        onnx.save(m, os.path.join(d, "model.onnx"))
        print(f"wrote {d}/model.onnx")
