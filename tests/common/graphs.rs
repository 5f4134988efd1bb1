//! Graphs that tests and benchmarks share, built with the Rust API (the test kit's zoo; the
//! benchmarks include this file by path). Only `smelt_compiler` is used, so every crate's
//! tests can include it.
#![allow(dead_code)]

use smelt_compiler::ir::{DType, Graph, GraphBuilder, ReduceKind, Tensor, Value};
use smelt_compiler::Result;

fn konst(g: &mut GraphBuilder, shape: &[usize], seed: u64, scale: f64) -> Value {
    let t = Tensor::random(DType::F32, shape, seed);
    let v: Vec<f64> = t.to_f64().iter().map(|x| x * scale).collect();
    g.constant(Tensor::from_f64(DType::F32, shape.to_vec(), &v))
}

fn s(g: &mut GraphBuilder, v: f64) -> Value {
    g.scalar(DType::F32, v)
}

/// LayerNorm over the last axis, decomposed as exporters write it.
pub fn layernorm_decomposed(g: &mut GraphBuilder, x: Value, seed: u64) -> Result<Value> {
    let d = g.ty(x).shape.last().copied().unwrap_or(1);
    let m = g.reduce(ReduceKind::Mean, x, &[-1], true)?;
    let c = g.sub(x, m)?;
    let two = s(g, 2.0);
    let sq = g.pow(c, two)?;
    let v = g.reduce(ReduceKind::Mean, sq, &[-1], true)?;
    let eps = s(g, 1e-5);
    let ve = g.add(v, eps)?;
    let sd = g.sqrt(ve)?;
    let n = g.div(c, sd)?;
    let gamma = konst(g, &[d], seed, 0.5);
    let beta = konst(g, &[d], seed + 1, 0.5);
    let n = g.mul(n, gamma)?;
    g.add(n, beta)
}

/// tanh-approximated GELU, decomposed.
pub fn gelu_tanh(g: &mut GraphBuilder, x: Value) -> Result<Value> {
    let (three, c, k, one, half) = (
        s(g, 3.0),
        s(g, 0.044715),
        s(g, (2.0 / std::f64::consts::PI).sqrt()),
        s(g, 1.0),
        s(g, 0.5),
    );
    let cube = g.pow(x, three)?;
    let t = g.mul(cube, c)?;
    let u = g.add(x, t)?;
    let u = g.mul(u, k)?;
    let th = g.tanh(u)?;
    let p = g.add(th, one)?;
    let h = g.mul(x, half)?;
    g.mul(h, p)
}

/// A pre-LN GPT-2 block: decomposed LayerNorms, `heads`-head causal self-attention,
/// tanh-GELU MLP (4× width), residuals. Input `x: f32[batch, seq, d]`.
pub fn gpt2_block(batch: usize, seq: usize, d: usize, heads: usize) -> Result<Graph> {
    gpt2_stack(1, batch, seq, d, heads)
}

/// `layers` GPT-2 blocks one after another (each with its own seeded weights), as a
/// `layers`-layer transformer: what compile time is measured against.
pub fn gpt2_stack(
    layers: usize,
    batch: usize,
    seq: usize,
    d: usize,
    heads: usize,
) -> Result<Graph> {
    if heads == 0 || !d.is_multiple_of(heads) {
        return Err(smelt_compiler::Error::Invalid(vec![format!(
            "gpt2_block: width {d} is not a multiple of {heads} heads"
        )]));
    }
    let mut g = GraphBuilder::new();
    let mut x = g.input("x", DType::F32, &[batch, seq, d])?;
    for layer in 0..layers as u64 {
        x = gpt2_layer(&mut g, x, (batch, seq, d, heads), 100 * layer)?;
    }
    g.output("y", x)?;
    g.build()
}

/// One pre-LN GPT-2 block over `x` (weights seeded from `seed`).
fn gpt2_layer(
    g: &mut GraphBuilder,
    x: Value,
    (batch, seq, d, heads): (usize, usize, usize, usize),
    seed: u64,
) -> Result<Value> {
    let dh = d / heads;
    let g = &mut *g;
    let w = 1.0 / (d as f64).sqrt();
    // Attention.
    let h = layernorm_decomposed(g, x, seed + 1)?;
    let wqkv = konst(g, &[d, 3 * d], seed + 3, w);
    let bqkv = konst(g, &[3 * d], seed + 4, 0.1);
    let qkv = g.matmul(h, wqkv)?;
    let qkv = g.add(qkv, bqkv)?;
    let mut parts = Vec::new();
    for i in 0..3 {
        let sl = g.op(
            smelt_compiler::ir::Op::Slice {
                starts: vec![0, 0, i * d],
                steps: vec![1, 1, 1],
                lens: vec![batch, seq, d],
            },
            &[qkv],
        )?;
        let r = g.reshape(sl, &[batch, seq, heads, dh])?;
        let perm: &[usize] = if i == 1 { &[0, 2, 3, 1] } else { &[0, 2, 1, 3] };
        parts.push(g.transpose(r, perm)?);
    }
    let scores = g.matmul(parts[0], parts[1])?;
    let scale = s(g, 1.0 / (dh as f64).sqrt());
    let scores = g.mul(scores, scale)?;
    let mask: Vec<f32> = (0..seq * seq)
        .map(|i| if i % seq > i / seq { -1e9 } else { 0.0 })
        .collect();
    let mask = g.constant(Tensor::f32([seq, seq], mask));
    let scores = g.add(scores, mask)?;
    let p = g.softmax(scores, -1)?;
    let o = g.matmul(p, parts[2])?;
    let o = g.transpose(o, &[0, 2, 1, 3])?;
    let o = g.reshape(o, &[batch, seq, d])?;
    let wo = konst(g, &[d, d], seed + 5, w);
    let bo = konst(g, &[d], seed + 6, 0.1);
    let a = g.matmul(o, wo)?;
    let a = g.add(a, bo)?;
    let x1 = g.add(x, a)?;
    // MLP.
    let h2 = layernorm_decomposed(g, x1, seed + 7)?;
    let w1 = konst(g, &[d, 4 * d], seed + 9, w);
    let b1 = konst(g, &[4 * d], seed + 10, 0.1);
    let f = g.matmul(h2, w1)?;
    let f = g.add(f, b1)?;
    let f = gelu_tanh(g, f)?;
    let w2 = konst(g, &[4 * d, d], seed + 11, 0.5 / (d as f64).sqrt());
    let b2 = konst(g, &[d], seed + 12, 0.1);
    let f = g.matmul(f, w2)?;
    let f = g.add(f, b2)?;
    let y = g.add(x1, f)?;
    Ok(y)
}

/// A chain of 10 elementwise ops over `n` elements: `x·a + b`, then activations and
/// arithmetic with a second input. Inputs `x, y: f32[n]`.
pub fn elementwise_chain(n: usize) -> Result<Graph> {
    let mut g = GraphBuilder::new();
    let x = g.input("x", DType::F32, &[n])?;
    let y = g.input("y", DType::F32, &[n])?;
    let (a, b, c) = (s(&mut g, 0.5), s(&mut g, 0.25), s(&mut g, 1.5));
    let v = g.mul(x, a)?; // 1
    let v = g.add(v, b)?; // 2
    let v = g.tanh(v)?; // 3
    let v = g.mul(v, y)?; // 4
    let v = g.sub(v, x)?; // 5
    let v = g.relu(v)?; // 6
    let v = g.add(v, c)?; // 7
    let v = g.sqrt(v)?; // 8
    let v = g.mul(v, y)?; // 9
    let v = g.sigmoid(v)?; // 10
    g.output("z", v)?;
    g.build()
}

/// Softmax over the last axis of `x: f32[rows, cols]`.
pub fn softmax(rows: usize, cols: usize) -> Result<Graph> {
    let mut g = GraphBuilder::new();
    let x = g.input("x", DType::F32, &[rows, cols])?;
    let y = g.softmax(x, -1)?;
    g.output("y", y)?;
    g.build()
}

/// Decomposed LayerNorm (as exporters write it) over the last axis of `x: f32[rows, cols]`.
pub fn layernorm(rows: usize, cols: usize) -> Result<Graph> {
    let mut g = GraphBuilder::new();
    let x = g.input("x", DType::F32, &[rows, cols])?;
    let y = layernorm_decomposed(&mut g, x, 1)?;
    g.output("y", y)?;
    g.build()
}

/// A GELU MLP: `gelu(x·W1 + b1)·W2 + b2` with erf-GELU, `x: f32[batch, d]`, hidden `h`.
pub fn gelu_mlp(batch: usize, d: usize, h: usize) -> Result<Graph> {
    let mut g = GraphBuilder::new();
    let x = g.input("x", DType::F32, &[batch, d])?;
    let w1 = konst(&mut g, &[d, h], 21, 1.0 / (d as f64).sqrt());
    let b1 = konst(&mut g, &[h], 22, 0.1);
    let w2 = konst(&mut g, &[h, d], 23, 1.0 / (h as f64).sqrt());
    let b2 = konst(&mut g, &[d], 24, 0.1);
    let f = g.matmul(x, w1)?;
    let f = g.add(f, b1)?;
    let f = g.gelu(f)?;
    let f = g.matmul(f, w2)?;
    let y = g.add(f, b2)?;
    g.output("y", y)?;
    g.build()
}

/// `layers` 3×3 convolutions (padding 1, bias) each followed by ReLU, `x: f32[batch,
/// channels, size, size]`.
pub fn conv_relu_stack(layers: usize, batch: usize, channels: usize, size: usize) -> Result<Graph> {
    let mut g = GraphBuilder::new();
    let mut v = g.input("x", DType::F32, &[batch, channels, size, size])?;
    for i in 0..layers {
        let w = konst(
            &mut g,
            &[channels, channels, 3, 3],
            100 + 2 * i as u64,
            1.0 / ((9 * channels) as f64).sqrt(),
        );
        let b = konst(&mut g, &[channels], 101 + 2 * i as u64, 0.1);
        let conv = smelt_compiler::ir::Conv2d {
            strides: [1, 1],
            pads: [1, 1, 1, 1],
            dilations: [1, 1],
            group: 1,
        };
        v = g.op(smelt_compiler::ir::Op::Conv(conv), &[v, w, b])?;
        v = g.relu(v)?;
    }
    g.output("y", v)?;
    g.build()
}
