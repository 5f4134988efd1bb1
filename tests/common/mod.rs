//! Helpers shared by the integration tests.
#![allow(dead_code)]

use smelt_compiler::ir::{DType, Tensor};
use std::path::PathBuf;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Compares `got` with `want`: same dtype and shape; floats within `atol + rtol * |want|`
/// (NaN matches NaN, infinities must match exactly); integers and bools exactly.
/// Returns a message describing the first mismatch.
pub fn compare(got: &Tensor, want: &Tensor, rtol: f64, atol: f64) -> Result<(), String> {
    if got.dtype() != want.dtype() {
        return Err(format!(
            "dtype {} != expected {}",
            got.dtype(),
            want.dtype()
        ));
    }
    if got.shape() != want.shape() {
        return Err(format!(
            "shape {:?} != expected {:?}",
            got.shape(),
            want.shape()
        ));
    }
    if want.dtype().is_float() {
        let (g, w) = (got.to_f64(), want.to_f64());
        for (i, (a, b)) in g.iter().zip(&w).enumerate() {
            let ok = (a.is_nan() && b.is_nan())
                || a == b
                || (a.is_finite() && b.is_finite() && (a - b).abs() <= atol + rtol * b.abs());
            if !ok {
                return Err(format!(
                    "element {i}: got {a}, expected {b} (rtol {rtol}, atol {atol})"
                ));
            }
        }
    } else {
        let (g, w) = (got.to_i64(), want.to_i64());
        if let Some(i) = (0..g.len()).find(|&i| g[i] != w[i]) {
            return Err(format!("element {i}: got {}, expected {}", g[i], w[i]));
        }
    }
    Ok(())
}

/// Default tolerances for a dtype: (rtol, atol).
pub fn tolerance(d: DType) -> (f64, f64) {
    match d {
        DType::F16 | DType::BF16 => (1e-2, 1e-3),
        _ => (1e-4, 1e-5),
    }
}

/// A deterministic pseudo-random tensor with values in [-2, 2) (floats) or small integers,
/// never all zeros.
pub fn random_tensor(dtype: DType, shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    let mut vals = Vec::with_capacity(n);
    for _ in 0..n {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let u = (s >> 11) as f64 / (1u64 << 53) as f64;
        vals.push(if dtype.is_float() {
            u * 4.0 - 2.0
        } else {
            (u * 7.0).floor() - 3.0
        });
    }
    Tensor::from_f64(dtype, shape.to_vec(), &vals)
}

/// Small helpers to build ONNX models in tests without Python.
pub mod onnx_model {
    use prost::Message;
    use smelt_compiler::onnx::proto::{
        attribute_proto::AttributeType, tensor_shape_proto::dimension,
        tensor_shape_proto::Dimension, type_proto, AttributeProto, GraphProto, ModelProto,
        NodeProto, OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
    };

    /// A dim: fixed size or symbolic name.
    pub enum Dim {
        /// Fixed.
        N(i64),
        /// Symbolic.
        Sym(&'static str),
    }

    /// A tensor value-info with element type code `elem` (1 = float, 7 = int64, 9 = bool).
    pub fn value(name: &str, elem: i32, dims: Vec<Dim>) -> ValueInfoProto {
        let dim = dims
            .into_iter()
            .map(|d| Dimension {
                value: Some(match d {
                    Dim::N(n) => dimension::Value::DimValue(n),
                    Dim::Sym(s) => dimension::Value::DimParam(s.to_string()),
                }),
                ..Default::default()
            })
            .collect();
        ValueInfoProto {
            name: Some(name.into()),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: Some(elem),
                    shape: Some(TensorShapeProto { dim }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A float-shaped input with fixed dims.
    pub fn f32_value(name: &str, dims: &[i64]) -> ValueInfoProto {
        value(name, 1, dims.iter().map(|&d| Dim::N(d)).collect())
    }

    /// An integer-list attribute.
    pub fn ints(name: &str, v: &[i64]) -> AttributeProto {
        AttributeProto {
            name: Some(name.into()),
            r#type: Some(AttributeType::Ints as i32),
            ints: v.to_vec(),
            ..Default::default()
        }
    }

    /// An integer attribute.
    pub fn int(name: &str, v: i64) -> AttributeProto {
        AttributeProto {
            name: Some(name.into()),
            r#type: Some(AttributeType::Int as i32),
            i: Some(v),
            ..Default::default()
        }
    }

    /// A node.
    pub fn node(
        op: &str,
        name: &str,
        inputs: &[&str],
        outputs: &[&str],
        attrs: Vec<AttributeProto>,
    ) -> NodeProto {
        NodeProto {
            op_type: Some(op.into()),
            name: Some(name.into()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            attribute: attrs,
            ..Default::default()
        }
    }

    /// A model at opset `opset`.
    pub fn model(
        nodes: Vec<NodeProto>,
        inputs: Vec<ValueInfoProto>,
        outputs: Vec<ValueInfoProto>,
        initializers: Vec<TensorProto>,
        opset: i64,
    ) -> ModelProto {
        ModelProto {
            ir_version: Some(8),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(opset),
            }],
            graph: Some(GraphProto {
                name: Some("test".into()),
                node: nodes,
                input: inputs,
                output: outputs,
                initializer: initializers,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Serialized bytes.
    pub fn bytes(m: &ModelProto) -> Vec<u8> {
        m.encode_to_vec()
    }
}

/// Graphs used by several tests and benchmarks, built with the Rust API.
pub mod graphs {
    use super::random_tensor;
    use smelt::ir::{DType, Graph, GraphBuilder, ReduceKind, Tensor, Value};

    fn konst(g: &mut GraphBuilder, shape: &[usize], seed: u64, scale: f64) -> Value {
        let t = random_tensor(DType::F32, shape, seed);
        let v: Vec<f64> = t.to_f64().iter().map(|x| x * scale).collect();
        g.constant(Tensor::from_f64(DType::F32, shape.to_vec(), &v))
    }

    fn s(g: &mut GraphBuilder, v: f64) -> Value {
        g.scalar(DType::F32, v)
    }

    /// LayerNorm over the last axis, decomposed as exporters write it.
    pub fn layernorm_decomposed(g: &mut GraphBuilder, x: Value, seed: u64) -> Value {
        let d = *g.ty(x).shape.last().unwrap();
        let m = g.reduce(ReduceKind::Mean, x, &[-1], true).unwrap();
        let c = g.sub(x, m).unwrap();
        let two = s(g, 2.0);
        let sq = g.pow(c, two).unwrap();
        let v = g.reduce(ReduceKind::Mean, sq, &[-1], true).unwrap();
        let eps = s(g, 1e-5);
        let ve = g.add(v, eps).unwrap();
        let sd = g.sqrt(ve).unwrap();
        let n = g.div(c, sd).unwrap();
        let gamma = konst(g, &[d], seed, 0.5);
        let beta = konst(g, &[d], seed + 1, 0.5);
        let n = g.mul(n, gamma).unwrap();
        g.add(n, beta).unwrap()
    }

    /// tanh-approximated GELU, decomposed.
    pub fn gelu_tanh(g: &mut GraphBuilder, x: Value) -> Value {
        let (three, c, k, one, half) = (
            s(g, 3.0),
            s(g, 0.044715),
            s(g, (2.0 / std::f64::consts::PI).sqrt()),
            s(g, 1.0),
            s(g, 0.5),
        );
        let cube = g.pow(x, three).unwrap();
        let t = g.mul(cube, c).unwrap();
        let u = g.add(x, t).unwrap();
        let u = g.mul(u, k).unwrap();
        let th = g.tanh(u).unwrap();
        let p = g.add(th, one).unwrap();
        let h = g.mul(x, half).unwrap();
        g.mul(h, p).unwrap()
    }

    /// A pre-LN GPT-2 block: decomposed LayerNorms, `heads`-head causal self-attention,
    /// tanh-GELU MLP (4× width), residuals. Input `x: f32[batch, seq, d]`.
    pub fn gpt2_block(batch: usize, seq: usize, d: usize, heads: usize) -> Graph {
        let dh = d / heads;
        let mut g = GraphBuilder::new();
        let x = g.input("x", DType::F32, &[batch, seq, d]).unwrap();
        let w = 1.0 / (d as f64).sqrt();
        // Attention.
        let h = layernorm_decomposed(&mut g, x, 1);
        let wqkv = konst(&mut g, &[d, 3 * d], 3, w);
        let bqkv = konst(&mut g, &[3 * d], 4, 0.1);
        let qkv = g.matmul(h, wqkv).unwrap();
        let qkv = g.add(qkv, bqkv).unwrap();
        let mut parts = Vec::new();
        for i in 0..3 {
            let sl = g
                .op(
                    smelt::ir::Op::Slice {
                        starts: vec![0, 0, i * d],
                        steps: vec![1, 1, 1],
                        lens: vec![batch, seq, d],
                    },
                    &[qkv],
                )
                .unwrap();
            let r = g.reshape(sl, &[batch, seq, heads, dh]).unwrap();
            let perm: &[usize] = if i == 1 { &[0, 2, 3, 1] } else { &[0, 2, 1, 3] };
            parts.push(g.transpose(r, perm).unwrap());
        }
        let scores = g.matmul(parts[0], parts[1]).unwrap();
        let scale = s(&mut g, 1.0 / (dh as f64).sqrt());
        let scores = g.mul(scores, scale).unwrap();
        let mask: Vec<f32> = (0..seq * seq)
            .map(|i| if i % seq > i / seq { -1e9 } else { 0.0 })
            .collect();
        let mask = g.constant(Tensor::f32([seq, seq], mask));
        let scores = g.add(scores, mask).unwrap();
        let p = g.softmax(scores, -1).unwrap();
        let o = g.matmul(p, parts[2]).unwrap();
        let o = g.transpose(o, &[0, 2, 1, 3]).unwrap();
        let o = g.reshape(o, &[batch, seq, d]).unwrap();
        let wo = konst(&mut g, &[d, d], 5, w);
        let bo = konst(&mut g, &[d], 6, 0.1);
        let a = g.matmul(o, wo).unwrap();
        let a = g.add(a, bo).unwrap();
        let x1 = g.add(x, a).unwrap();
        // MLP.
        let h2 = layernorm_decomposed(&mut g, x1, 7);
        let w1 = konst(&mut g, &[d, 4 * d], 9, w);
        let b1 = konst(&mut g, &[4 * d], 10, 0.1);
        let f = g.matmul(h2, w1).unwrap();
        let f = g.add(f, b1).unwrap();
        let f = gelu_tanh(&mut g, f);
        let w2 = konst(&mut g, &[4 * d, d], 11, 0.5 / (d as f64).sqrt());
        let b2 = konst(&mut g, &[d], 12, 0.1);
        let f = g.matmul(f, w2).unwrap();
        let f = g.add(f, b2).unwrap();
        let y = g.add(x1, f).unwrap();
        g.output("y", y).unwrap();
        g.build().unwrap()
    }
}
