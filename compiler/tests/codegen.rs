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
