//! The CUDA renderer: deterministic text, snapshot-pinned for the kernel families.

use smelt_compiler::codegen::cuda;
use smelt_compiler::compile;
use smelt_compiler::ir::{DType, Graph, GraphBuilder, ReduceKind, Tensor};
use smelt_compiler::kernel::lower;
use smelt_compiler::optimize::Options;

fn cuda_of(g: &Graph) -> String {
    let c = compile(g, &Options::default()).unwrap();
    let p = lower(&c.graph).unwrap();
    cuda::render(&p)
        .unwrap()
        .into_iter()
        .map(|(_, s)| s)
        .collect::<Vec<_>>()
        .join("\n")
}

fn masked_softmax(dtype: DType) -> Graph {
    let mut b = GraphBuilder::new();
    let x = b.input("scores", dtype, &[2, 4, 8, 8]).unwrap();
    let m = b.input("mask", dtype, &[2, 1, 1, 8]).unwrap();
    let k = b.scalar(dtype, 0.125);
    let s = b.mul(x, k).unwrap();
    let s = b.add(s, m).unwrap();
    let y = b.softmax(s, -1).unwrap();
    b.output("y", y).unwrap();
    b.build().unwrap()
}

fn chain(dtype: DType) -> Graph {
    let mut b = GraphBuilder::new();
    let x = b.input("x", dtype, &[64, 256]).unwrap();
    let row = b.input("row", dtype, &[256]).unwrap();
    let mut v = b.add(x, row).unwrap();
    v = b.tanh(v).unwrap();
    v = b.mul(v, x).unwrap();
    v = b.sigmoid(v).unwrap();
    v = b.sub(v, row).unwrap();
    v = b.exp(v).unwrap();
    v = b.relu(v).unwrap();
    v = b.max(v, x).unwrap();
    v = b.gelu(v).unwrap();
    v = b.add(v, row).unwrap();
    b.output("y", v).unwrap();
    b.build().unwrap()
}

fn layernorm(dtype: DType) -> Graph {
    let mut b = GraphBuilder::new();
    let x = b.input("x", dtype, &[8, 64]).unwrap();
    let g = b.constant(Tensor::from_f64(dtype, vec![64], &[1.5; 64]));
    let beta = b.constant(Tensor::from_f64(dtype, vec![64], &[0.5; 64]));
    let y = b.layer_norm(x, g, Some(beta), -1, 1e-5).unwrap();
    b.output("y", y).unwrap();
    b.build().unwrap()
}

fn transpose_add(dtype: DType) -> Graph {
    let mut b = GraphBuilder::new();
    let x = b.input("x", dtype, &[32, 64]).unwrap();
    let y = b.input("y", dtype, &[64, 32]).unwrap();
    let yt = b.transpose(y, &[1, 0]).unwrap();
    let z = b.add(x, yt).unwrap();
    b.output("z", z).unwrap();
    b.build().unwrap()
}

fn softmax(dtype: DType, cols: usize) -> Graph {
    let mut b = GraphBuilder::new();
    let x = b.input("x", dtype, &[4, cols]).unwrap();
    let y = b.softmax(x, -1).unwrap();
    b.output("y", y).unwrap();
    b.build().unwrap()
}

/// `gelu(x·w + bias)`: the MLP's first product with its epilogue (a tiled kernel).
fn gelu_mlp(dtype: DType) -> Graph {
    let mut b = GraphBuilder::new();
    let x = b.input("x", dtype, &[32, 16]).unwrap();
    let w = b.input("w", dtype, &[16, 32]).unwrap();
    let bias = b.input("bias", dtype, &[32]).unwrap();
    let y = b.matmul(x, w).unwrap();
    let y = b.add(y, bias).unwrap();
    let y = b.gelu(y).unwrap();
    b.output("y", y).unwrap();
    b.build().unwrap()
}

/// `softmax(q·kᵀ/4 + mask)·v` over [1, 2, 32, 16], the mask causal (-inf above the diagonal)
/// or additive.
fn attention(dtype: DType, causal: bool) -> Graph {
    let s = 32;
    let mut b = GraphBuilder::new();
    let q = b.input("q", dtype, &[1, 2, s, 16]).unwrap();
    let k = b.input("k", dtype, &[1, 2, s, 16]).unwrap();
    let v = b.input("v", dtype, &[1, 2, s, 16]).unwrap();
    let kt = b.transpose(k, &[0, 1, 3, 2]).unwrap();
    let scores = b.matmul(q, kt).unwrap();
    let scale = b.scalar(dtype, 0.25);
    let scores = b.mul(scores, scale).unwrap();
    let mask: Vec<f64> = (0..s * s)
        .map(|i| match causal {
            true if i % s > i / s => f64::NEG_INFINITY,
            true => 0.0,
            false => (i % 3) as f64 * 0.5,
        })
        .collect();
    let m = b.constant(Tensor::from_f64(dtype, vec![s, s], &mask));
    let scores = b.add(scores, m).unwrap();
    let p = b.softmax(scores, -1).unwrap();
    let o = b.matmul(p, v).unwrap();
    b.output("o", o).unwrap();
    b.build().unwrap()
}

/// 3×3 convolution (pad 1) + bias + ReLU, 4 → 32 channels (an implicit tiled product).
fn conv_bias_relu(dtype: DType) -> Graph {
    let mut b = GraphBuilder::new();
    let x = b.input("x", dtype, &[1, 4, 8, 8]).unwrap();
    let w = b.input("w", dtype, &[32, 4, 3, 3]).unwrap();
    let bias = b.input("bias", dtype, &[32]).unwrap();
    let conv = smelt_compiler::ir::Conv2d {
        strides: [1, 1],
        pads: [1, 1, 1, 1],
        dilations: [1, 1],
        group: 1,
    };
    let y = b
        .op(smelt_compiler::ir::Op::Conv(conv), &[x, w, bias])
        .unwrap();
    let y = b.relu(y).unwrap();
    b.output("y", y).unwrap();
    b.build().unwrap()
}

#[test]
fn rendering_is_deterministic() {
    let g = masked_softmax(DType::F32);
    assert_eq!(cuda_of(&g), cuda_of(&g));
}

#[test]
fn snapshots() {
    insta::assert_snapshot!("masked_softmax_f32", cuda_of(&masked_softmax(DType::F32)));
    insta::assert_snapshot!("masked_softmax_f16", cuda_of(&masked_softmax(DType::F16)));
    insta::assert_snapshot!("elementwise_chain_f32", cuda_of(&chain(DType::F32)));
    insta::assert_snapshot!("elementwise_chain_f16", cuda_of(&chain(DType::F16)));
    insta::assert_snapshot!("layernorm_f32", cuda_of(&layernorm(DType::F32)));
    insta::assert_snapshot!("layernorm_bf16", cuda_of(&layernorm(DType::BF16)));
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, &[16, 32]).unwrap();
    let s = b.reduce(ReduceKind::Sum, x, &[0], false).unwrap();
    b.output("s", s).unwrap();
    insta::assert_snapshot!("reduce_leading_axis_f32", cuda_of(&b.build().unwrap()));
}

/// The remaining kernel families, each in f32 and f16.
#[test]
fn family_snapshots() {
    for (d, tag) in [(DType::F32, "f32"), (DType::F16, "f16")] {
        let snap = |name: &str, g: Graph| {
            insta::assert_snapshot!(format!("{name}_{tag}"), cuda_of(&g));
        };
        snap("transpose_add", transpose_add(d));
        snap("softmax_warp_per_row", softmax(d, 96));
        snap("softmax_block_per_row", softmax(d, 2048));
        snap("softmax_streaming", softmax(d, 20000));
        snap("gelu_mlp_epilogue", gelu_mlp(d));
        snap("attention_causal", attention(d, true));
        snap("attention_additive", attention(d, false));
        snap("conv_bias_relu", conv_bias_relu(d));
        snap("layernorm", layernorm(d));
    }
}

/// Fast approximate intrinsics appear only when asked for (`--fast-math`), and the choice is
/// in the source text (so in the cubin cache key).
#[test]
fn fast_math_intrinsics_only_when_asked() {
    let g = softmax(DType::F32, 96);
    let c = compile(&g, &Options::default()).unwrap();
    let p = lower(&c.graph).unwrap();
    let exact = cuda::render(&p).unwrap();
    let fast = cuda::render_for(&cuda::Cuda { fast_math: true }, &p).unwrap();
    assert!(exact
        .iter()
        .all(|(_, s)| !s.contains("__expf") && !s.contains("SMELT_FAST_MATH")));
    assert!(fast
        .iter()
        .all(|(_, s)| s.contains("__expf(") && s.contains("#define SMELT_FAST_MATH 1")));
}

/// Integer row elements held in registers keep their integer type (a variable's first
/// assignment types it: a float zero would round values past 2^24): every copy `va = vb;`
/// is between variables of one type.
#[test]
fn held_integers_stay_integers() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::I64, &[8, 100]).unwrap();
    let s = b.reduce(ReduceKind::Sum, x, &[1], true).unwrap();
    let y = b.sub(x, s).unwrap();
    b.output("y", y).unwrap();
    let src = cuda_of(&b.build().unwrap());
    let ty = |v: &str| {
        src.lines()
            .map(str::trim)
            .find_map(|l| {
                l.strip_suffix(&format!(" {v};"))
                    .filter(|t| !t.contains('='))
            })
            .unwrap_or_else(|| panic!("{v} undeclared:\n{src}"))
            .to_string()
    };
    let mut copies = 0;
    for line in src.lines() {
        let Some((a, b)) = line
            .trim()
            .strip_suffix(';')
            .and_then(|l| l.split_once(" = "))
        else {
            continue;
        };
        let is_var = |v: &str| v.starts_with('v') && v[1..].chars().all(|c| c.is_ascii_digit());
        if is_var(a) && is_var(b) {
            copies += 1;
            assert_eq!(ty(a), ty(b), "{a} = {b}:\n{src}");
        }
    }
    assert!(copies >= 1, "{src}");
}
