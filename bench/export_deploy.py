#!/usr/bin/env python3
"""The deployment-size model set (issue #31): the architectures users deploy, at the sizes they
deploy them, exported by PyTorch the way users export them.

Usage: python bench/export_deploy.py [--skip-existing] OUTDIR [NAME ...]
       (default OUTDIR bench/deploy, not committed; NAMEs pick a subset, see NAMES)

Made by scripts/deploy-models, which creates the venv (.venv-deploy, bench/requirements-deploy.txt:
the same pinned torch / torchvision / transformers / onnxscript / onnx / onnxruntime / numpy as
tests/models/real/export_real.py, whose helpers this script imports). Each model is built from
its library class (torchvision, transformers) at its published size, with seeded random weights
(normalization statistics and affine parameters made non-trivial, as export_real does), and
exported once with the default (dynamo) exporter; only where that fails is it exported with
`dynamo=False, opset_version=17` (meta.json's `exporter` says which, `dynamo_error` why).
The exporter's dynamic axes are kept as export_real marks them (batch for vision and audio;
batch and sequence for text; batch and past length for decode steps). Each folder holds

    model.onnx        one file (external data, model.onnx.data, only past 2 GB)
    inputs/*.npy      seeded inputs (normal images and mel features, random token ids, masks)
    expected/*.npy    onnxruntime's outputs (CPU EP, graph optimizations off, one thread)
    shapes.txt        NAME=AxB for every input with a symbolic dim (the stored inputs' shapes)
    meta.json         architecture, exporter, opset, sizes, parameter count, op counts, versions

torch's outputs are checked against onnxruntime's (max|diff| <= 1e-4 * max|torch| + 1e-4 per
output) before anything is written; the script fails if they disagree. A folder is written
whole (staged, then renamed), so a folder with a meta.json is complete.

The models (NAMES):
    resnet50, mobilenet_v3_large, efficientnet_b0, convnext_tiny, vit_b_16
                        torchvision, default configs, 1x3x224x224
    bert_base_b1, bert_base_b8
                        BERT-base (12 layers, 768, 12 heads), sequence 128, batch 1 and 8
                        (batch 8 right-padded to lengths 128..72); last_hidden_state
    gpt2_prefill, gpt2_decode
                        GPT-2 small (12 layers, 768, vocab 50257): 128-token prefill -> logits;
                        one-token decode at past 128 -> logits and present key/values
    llama_prefill, llama_decode
                        LlamaConfig: hidden 1024, 8 layers, 16 heads / 4 kv heads (GQA),
                        intermediate 2816, vocab 32000; the same two steps as GPT-2
    whisper_base_encoder
                        WhisperConfig base (d_model 512, 6 encoder layers, 8 heads, 80 mel
                        bins), encoder only, 1x80x3000 -> last_hidden_state
The prefill and decode steps of one model share its weights (seeded by the family name).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "models", "real"))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import onnxscript  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
import transformers as tf  # noqa: E402
from torch import nn  # noqa: E402
from torchvision import models as tvm  # noqa: E402
from transformers.models.whisper.modeling_whisper import WhisperEncoder  # noqa: E402

import export_real as er  # noqa: E402  (tests/models/real/export_real.py)

warnings.filterwarnings("ignore")

DEFAULT_OUT = os.path.join(ROOT, "bench", "deploy")
LEGACY_OPSET = er.LEGACY_OPSET
ATOL = 1e-4  # max|diff| <= RTOL * max|reference| + ATOL
RTOL = 1e-4
# protobuf's limit for one file; past it the weights go to model.onnx.data.
EXTERNAL_DATA_BYTES = 2_000_000_000
SEQ = 128
PAST = 128
IMAGE = 224


@dataclass
class Model:
    """One deployment model: its export_real Spec (inputs, outputs, dynamic axes), the seed
    family (prefill and decode of one model share weights) and a description of its size."""

    name: str
    family: str
    spec: er.Spec
    sizes: dict[str, object]


# ---- inputs --------------------------------------------------------------------------------


def normal(shape: tuple[int, ...]) -> Callable[[np.random.Generator], np.ndarray]:
    return lambda rng: rng.standard_normal(shape).astype(np.float32)


def token_ids(batch: int, length: int, vocab: int) -> Callable[[np.random.Generator], np.ndarray]:
    return lambda rng: rng.integers(0, vocab, (batch, length), dtype=np.int64)


def right_padded_mask(batch: int, length: int) -> Callable[[np.random.Generator], np.ndarray]:
    """Row i keeps `length - 8 * i` tokens (all ones at batch 1): a padded encoder batch."""

    def make(_rng: np.random.Generator) -> np.ndarray:
        m = np.ones((batch, length), dtype=np.int64)
        for i in range(batch):
            m[i, length - 8 * i:] = 0
        return m

    return make


def ones_mask(batch: int, length: int) -> Callable[[np.random.Generator], np.ndarray]:
    return lambda _rng: np.ones((batch, length), dtype=np.int64)


# ---- vision --------------------------------------------------------------------------------


def vision(name: str, make: Callable[[], nn.Module]) -> Model:
    spec = er.Spec(
        name, make,
        [("pixel_values", normal((1, 3, IMAGE, IMAGE)), {0: "batch"})],
        ["logits"], {"logits": {0: "batch"}},
    )
    return Model(name, name, spec, {"batch": 1, "image": [3, IMAGE, IMAGE], "classes": 1000})


# ---- text ----------------------------------------------------------------------------------


def bert_base() -> nn.Module:
    c = tf.BertConfig(
        vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, max_position_embeddings=512, attn_implementation="sdpa",
    )
    return er.HiddenStates(tf.BertModel(c, add_pooling_layer=False), None)


def bert(name: str, batch: int) -> Model:
    spec = er.Spec(
        name, bert_base,
        [
            ("input_ids", token_ids(batch, SEQ, 30522), er.TEXT_AXES),
            ("attention_mask", right_padded_mask(batch, SEQ), er.TEXT_AXES),
        ],
        ["last_hidden_state"], {"last_hidden_state": er.TEXT_AXES},
    )
    sizes = {"batch": batch, "sequence": SEQ, "layers": 12, "hidden": 768, "heads": 12,
             "intermediate": 3072, "vocab": 30522}
    return Model(name, "bert_base", spec, sizes)


def gpt2_config() -> tf.GPT2Config:
    return tf.GPT2Config(
        vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
        attn_implementation="sdpa",
    )


LLAMA = {"hidden": 1024, "layers": 8, "heads": 16, "kv_heads": 4, "intermediate": 2816,
         "vocab": 32000}


def llama_config() -> tf.LlamaConfig:
    return tf.LlamaConfig(
        vocab_size=LLAMA["vocab"], hidden_size=LLAMA["hidden"],
        intermediate_size=LLAMA["intermediate"], num_hidden_layers=LLAMA["layers"],
        num_attention_heads=LLAMA["heads"], num_key_value_heads=LLAMA["kv_heads"],
        max_position_embeddings=2048, attn_implementation="sdpa",
    )


def decode_step(layers: int) -> type[nn.Module]:
    """export_real's DecodeStep for `layers` layers: `forward(input_ids, attention_mask,
    past_key_0, past_value_0, ...)` -> (logits, present_key_0, present_value_0, ...). The
    explicit signature names the exported graph's inputs."""
    params = ", ".join(f"past_key_{i}, past_value_{i}" for i in range(layers))
    pairs = ", ".join(f"(past_key_{i}, past_value_{i})" for i in range(layers))
    src = (
        f"def forward(self, input_ids, attention_mask, {params}):\n"
        f"    cache = tf.DynamicCache([{pairs}], config=self.inner.config)\n"
        "    out = self.inner(input_ids=input_ids, attention_mask=attention_mask,\n"
        "                     past_key_values=cache, use_cache=True)\n"
        "    present = []\n"
        "    for layer in out.past_key_values.layers:\n"
        "        present += [layer.keys, layer.values]\n"
        "    return (out.logits, *present)\n"
    )
    scope: dict[str, object] = {"tf": tf}
    exec(src, scope)  # noqa: S102
    return type(f"DecodeStep{layers}", (er.DecodeStep,), {"forward": scope["forward"]})


def causal_lm(name: str, family: str, make_lm: Callable[[], nn.Module], vocab: int,
              sizes: dict[str, object]) -> Model:
    spec = er.Spec(
        name, lambda: er.HiddenStates(make_lm(), False),
        [
            ("input_ids", token_ids(1, SEQ, vocab), er.TEXT_AXES),
            ("attention_mask", ones_mask(1, SEQ), er.TEXT_AXES),
        ],
        ["logits"], {"logits": er.TEXT_AXES},
    )
    return Model(name, family, spec, {"batch": 1, "sequence": SEQ, **sizes})


def causal_decode(name: str, family: str, make_lm: Callable[[], nn.Module], vocab: int,
                  layers: int, kv_heads: int, head_dim: int, sizes: dict[str, object]) -> Model:
    past_axes = {0: "batch", 2: "past_sequence"}
    inputs = [
        ("input_ids", token_ids(1, 1, vocab), {0: "batch"}),
        ("attention_mask", ones_mask(1, PAST + 1), {0: "batch", 1: "total_sequence"}),
    ]
    outputs = ["logits"]
    axes: dict[str, dict[int, str]] = {"logits": {0: "batch"}}
    for i in range(layers):
        for kv in ("key", "value"):
            inputs.append(
                (f"past_{kv}_{i}", normal((1, kv_heads, PAST, head_dim)), past_axes)
            )
            outputs.append(f"present_{kv}_{i}")
            axes[f"present_{kv}_{i}"] = {0: "batch", 2: "total_sequence"}
    step = decode_step(layers)
    spec = er.Spec(name, lambda: step(make_lm()), inputs, outputs, axes)
    return Model(name, family, spec, {"batch": 1, "past": PAST, "new_tokens": 1, **sizes})


GPT2_SIZES = {"layers": 12, "hidden": 768, "heads": 12, "vocab": 50257}


def gpt2_prefill() -> Model:
    return causal_lm("gpt2_prefill", "gpt2", lambda: tf.GPT2LMHeadModel(gpt2_config()), 50257,
                     GPT2_SIZES)


def gpt2_decode() -> Model:
    return causal_decode("gpt2_decode", "gpt2", lambda: tf.GPT2LMHeadModel(gpt2_config()),
                         50257, 12, 12, 64, GPT2_SIZES)


def llama_prefill() -> Model:
    return causal_lm("llama_prefill", "llama", lambda: tf.LlamaForCausalLM(llama_config()),
                     LLAMA["vocab"], LLAMA)


def llama_decode() -> Model:
    head_dim = LLAMA["hidden"] // LLAMA["heads"]
    return causal_decode("llama_decode", "llama", lambda: tf.LlamaForCausalLM(llama_config()),
                         LLAMA["vocab"], LLAMA["layers"], LLAMA["kv_heads"], head_dim, LLAMA)


# ---- audio ---------------------------------------------------------------------------------


class WhisperEncoderOnly(nn.Module):
    """`forward(input_features [b, 80, 3000])` -> the encoder's last hidden state."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        return self.inner(input_features=input_features)[0]


WHISPER = {"d_model": 512, "encoder_layers": 6, "heads": 8, "ffn": 2048, "mel_bins": 80,
           "frames": 3000}


def whisper_base_encoder() -> Model:
    def make() -> nn.Module:
        c = tf.WhisperConfig(
            d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
            decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048,
            num_mel_bins=80, max_source_positions=1500, attn_implementation="sdpa",
        )
        return WhisperEncoderOnly(WhisperEncoder(c))

    spec = er.Spec(
        "whisper_base_encoder", make,
        [("input_features", normal((1, 80, 3000)), {0: "batch"})],
        ["last_hidden_state"], {"last_hidden_state": {0: "batch"}},
    )
    return Model("whisper_base_encoder", "whisper_base_encoder", spec,
                 {"batch": 1, **WHISPER, "output_positions": 1500})


MODELS: dict[str, Callable[[], Model]] = {
    "resnet50": lambda: vision("resnet50", lambda: tvm.resnet50(weights=None)),
    "mobilenet_v3_large": lambda: vision(
        "mobilenet_v3_large", lambda: tvm.mobilenet_v3_large(weights=None)),
    "efficientnet_b0": lambda: vision(
        "efficientnet_b0", lambda: tvm.efficientnet_b0(weights=None)),
    "convnext_tiny": lambda: vision("convnext_tiny", lambda: tvm.convnext_tiny(weights=None)),
    "vit_b_16": lambda: vision("vit_b_16", lambda: tvm.vit_b_16(weights=None)),
    "bert_base_b1": lambda: bert("bert_base_b1", 1),
    "bert_base_b8": lambda: bert("bert_base_b8", 8),
    "gpt2_prefill": gpt2_prefill,
    "gpt2_decode": gpt2_decode,
    "llama_prefill": llama_prefill,
    "llama_decode": llama_decode,
    "whisper_base_encoder": whisper_base_encoder,
}
NAMES = list(MODELS)


# ---- export --------------------------------------------------------------------------------


def strip_debug_metadata(model: onnx.ModelProto) -> None:
    for n in model.graph.node:
        keep = [p for p in n.metadata_props if p.key not in er.DEBUG_METADATA]
        del n.metadata_props[:]
        n.metadata_props.extend(keep)


def export_to(module: nn.Module, args: tuple[torch.Tensor, ...], spec: er.Spec, dynamo: bool,
              path: str, param_bytes: int) -> onnx.ModelProto:
    """Exports to `path` (one file, or with model.onnx.data beside it past 2 GB) and returns
    the model without its external weights loaded (its graph, for meta.json)."""
    external = param_bytes > EXTERNAL_DATA_BYTES
    in_names = [n for n, _, _ in spec.inputs]
    with tempfile.TemporaryDirectory(dir=os.path.dirname(path)) as tmp:
        raw = os.path.join(tmp, "model.onnx")
        if dynamo:
            prog = torch.onnx.export(
                module, args, dynamo=True, input_names=in_names, output_names=spec.outputs,
                dynamic_shapes=er.dynamo_shapes(spec), external_data=external,
            )
            prog.save(raw, external_data=external)
            del prog
        else:
            axes = {n: a for n, _, a in spec.inputs}
            axes.update(spec.output_axes)
            torch.onnx.export(
                module, args, raw, dynamo=False, opset_version=LEGACY_OPSET,
                input_names=in_names, output_names=spec.outputs, dynamic_axes=axes,
            )
        model = onnx.load(raw, load_external_data=True)
        strip_debug_metadata(model)
        if external:
            onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                            location="model.onnx.data", size_threshold=1024)
        else:
            data = model.SerializeToString(deterministic=True)
            with open(path, "wb") as f:
                f.write(data)
            del data
    onnx.checker.check_model(path, full_check=True)
    return onnx.load(path, load_external_data=False)


def describe_error(e: BaseException) -> tuple[str, str]:
    """An export failure as (the innermost cause's type and first lines, the text of the
    whole chain of causes, at most 8000 characters), without terminal colors: torch.onnx wraps
    torch.export's errors (one per capture strategy it tried) in a generic TorchExportError."""
    chain = []
    while e is not None:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
        chain.append(f"{type(e).__name__}: {text}")
        last = e
        e = e.__cause__ or e.__context__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(last)).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()][:3]
    return f"{type(last).__name__}: {' '.join(lines)}", "\n---\n".join(chain)[:8000]


def run_ort(path: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    feeds = {i.name: inputs[i.name] for i in sess.get_inputs()}
    return dict(zip(names, sess.run(names, feeds)))


def compare(spec: er.Spec, inputs: dict[str, np.ndarray], out: dict[str, np.ndarray],
            want: list[np.ndarray]) -> dict[str, dict[str, float]]:
    """torch vs onnxruntime per output: max|diff| <= RTOL * max|torch| + ATOL (positions a
    padded mask leaves out are not compared, as in export_real)."""
    assert list(out) == spec.outputs, (spec.arch, list(out), spec.outputs)
    report = {}
    for (k, y), w in zip(out.items(), want):
        assert y.shape == w.shape, (spec.arch, k, y.shape, w.shape)
        assert np.all(np.isfinite(y)), (spec.arch, k, "non-finite output")
        assert np.std(y) > 1e-3 * np.max(np.abs(y)) > 0, (spec.arch, k, "constant output")
        mask = inputs.get("attention_mask")
        if mask is not None and y.shape[:2] == mask.shape:
            y, w = y[mask == 1], w[mask == 1]
        diff = float(np.max(np.abs(y.astype(np.float64) - w)))
        scale = float(np.max(np.abs(w)))
        bound = RTOL * scale + ATOL
        assert diff <= bound, f"{spec.arch}: {k}: max|torch-ort| = {diff:.3g} > {bound:.3g}"
        report[k] = {"max_abs_diff": diff, "max_abs": scale}
    return report


def write_folder(d: str, model_m: Model, build: Callable[[str], dict[str, object]]) -> None:
    """Stages the folder beside `d`, lets `build` fill it, then renames it into place."""
    parent = os.path.dirname(d)
    os.makedirs(parent, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=f".{model_m.name}-", dir=parent)
    os.chmod(stage, 0o755)
    try:
        build(stage)
        if os.path.isdir(d):
            shutil.rmtree(d)
        os.rename(stage, d)
    finally:
        if os.path.isdir(stage):
            shutil.rmtree(stage)


def export_one(m: Model, outdir: str) -> str:
    spec = m.spec
    seed = zlib.crc32(m.family.encode())
    torch.manual_seed(seed)
    module = er.randomize_norms(spec.make(), torch.Generator().manual_seed(seed)).eval()
    params = sum(p.numel() for p in module.parameters())
    # Tied weights (GPT-2's embedding and LM head) count once.
    unique = sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())
    param_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    rng = np.random.default_rng(zlib.crc32(m.name.encode()))
    inputs = {name: make(rng) for name, make, _ in spec.inputs}
    args = tuple(torch.from_numpy(v.copy()) for v in inputs.values())
    t0 = time.perf_counter()
    with torch.no_grad():
        want = module(*args)
    want = [want] if isinstance(want, torch.Tensor) else list(want)
    want = [w.numpy() for w in want]
    torch_s = time.perf_counter() - t0
    summary: dict[str, str] = {}

    def build(stage: str) -> dict[str, object]:
        path = os.path.join(stage, "model.onnx")
        exporter, dynamo_error, dynamo_error_text = "dynamo", None, None
        t = time.perf_counter()
        try:
            model = export_to(module, args, spec, True, path, param_bytes)
        except Exception as e:  # noqa: BLE001  (any dynamo failure: fall back, and say why)
            dynamo_error, dynamo_error_text = describe_error(e)
            print(f"{m.name}: dynamo export failed ({dynamo_error}); exporting with "
                  f"dynamo=False, opset {LEGACY_OPSET}", flush=True)
            for f in os.listdir(stage):
                os.remove(os.path.join(stage, f))
            exporter = "torchscript"
            model = export_to(module, args, spec, False, path, param_bytes)
        export_s = time.perf_counter() - t
        t = time.perf_counter()
        out = run_ort(path, inputs)
        ort_s = time.perf_counter() - t
        check = compare(spec, inputs, out, want)
        os.makedirs(os.path.join(stage, "inputs"))
        os.makedirs(os.path.join(stage, "expected"))
        for k, v in inputs.items():
            np.save(os.path.join(stage, "inputs", f"{k}.npy"), v)
        for k, v in out.items():
            np.save(os.path.join(stage, "expected", f"{k.replace('/', '_')}.npy"), v)
        shapes = er.symbolic_shapes(model, inputs)
        with open(os.path.join(stage, "shapes.txt"), "w") as f:
            f.write("\n".join(shapes) + ("\n" if shapes else ""))
        model_bytes = sum(
            os.path.getsize(os.path.join(stage, f)) for f in os.listdir(stage)
            if f.startswith("model.onnx")
        )
        opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
        meta = {
            "name": m.name,
            "architecture": type(module.inner if hasattr(module, "inner") else module).__name__,
            "family": m.family,
            "exporter": exporter,
            "dynamo_error": dynamo_error,
            "dynamo_error_text": dynamo_error_text,
            "opset": opsets.get("ai.onnx"),
            "opsets": opsets,
            "sizes": m.sizes,
            "parameters": unique,
            "parameters_with_tied": params,
            "model_bytes": model_bytes,
            "external_data": os.path.exists(os.path.join(stage, "model.onnx.data")),
            "nodes": len(model.graph.node),
            "inputs": {k: {"shape": list(v.shape), "dtype": str(v.dtype)}
                       for k, v in inputs.items()},
            "outputs": {k: {"shape": list(v.shape), "dtype": str(v.dtype)}
                        for k, v in out.items()},
            "torch_vs_ort": check,
            "seconds": {"torch": round(torch_s, 2), "export": round(export_s, 2),
                        "ort": round(ort_s, 2)},
            "ops": er.op_counts(model),
            "versions": {
                "python": sys.version.split()[0],
                "torch": torch.__version__,
                "torchvision": torchvision.__version__,
                "transformers": tf.__version__,
                "onnxscript": onnxscript.__version__,
                "onnx": onnx.__version__,
                "onnxruntime": ort.__version__,
                "numpy": np.__version__,
            },
        }
        with open(os.path.join(stage, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1, sort_keys=True)
            f.write("\n")
        worst = max(c["max_abs_diff"] / (c["max_abs"] or 1) for c in check.values())
        summary.update(
            line=f"{m.name}: {exporter} opset {opsets.get('ai.onnx')}, {unique / 1e6:.1f}M "
            f"params, {model_bytes / 1e6:.1f} MB, {len(model.graph.node)} nodes, "
            f"max|torch-ort|/max|torch| = {worst:.2g}; export {export_s:.1f} s, "
            f"ort {ort_s:.1f} s"
        )
        return meta

    write_folder(os.path.join(outdir, m.name), m, build)
    return summary["line"]


def main(argv: list[str]) -> int:
    args = argv[1:]
    skip_existing = "--skip-existing" in args
    args = [a for a in args if a != "--skip-existing"]
    if any(a.startswith("-") for a in args):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    outdir = os.path.abspath(args[0]) if args else DEFAULT_OUT
    names = args[1:] or NAMES
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        print(f"unknown model(s) {unknown}; known: {' '.join(NAMES)}", file=sys.stderr)
        return 2
    torch.use_deterministic_algorithms(True)
    total = time.perf_counter()
    for name in names:
        d = os.path.join(outdir, name)
        if skip_existing and os.path.exists(os.path.join(d, "meta.json")):
            print(f"{name}: exists, skipped ({d})", flush=True)
            continue
        t = time.perf_counter()
        line = export_one(MODELS[name](), outdir)
        print(f"{line}; total {time.perf_counter() - t:.1f} s", flush=True)
    print(f"done in {time.perf_counter() - total:.1f} s: {outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
