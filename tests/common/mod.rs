//! Helpers shared by the integration tests.
#![allow(dead_code, unused_imports)]

use smelt_compiler::ir::{DType, Tensor};
use std::path::PathBuf;

/// A fresh scratch directory for one test, `smelt-<test crate>-<pid>-<tag>` under the
/// system's temporary directory, removed when dropped.
pub struct Dir(pub PathBuf);

impl Dir {
    /// Creates it empty (removing what an earlier run left).
    pub fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!(
            "smelt-{}-{}-{tag}",
            env!("CARGO_CRATE_NAME"),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    /// A path inside it.
    pub fn path(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Subdirectories of `root` that hold a `model.onnx`, sorted.
pub fn model_dirs(root: &std::path::Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("model.onnx").exists())
        .collect();
    dirs.sort();
    dirs
}

/// The `NAME=AxB` shapes a reference model needs (`shapes.txt` beside it), if any.
pub fn model_shapes(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("shapes.txt"))
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Every reference model under `tests/models`, imported with its `shapes.txt`: (directory,
/// graph).
#[allow(dead_code)]
pub fn reference_models() -> Vec<(PathBuf, smelt::Graph)> {
    model_dirs(&root().join("tests/models"))
        .into_iter()
        .map(|dir| {
            let mut opts = smelt::onnx::ImportOptions::default();
            for s in model_shapes(&dir) {
                let (n, dims) = s.split_once('=').expect("NAME=AxB");
                opts.shapes.insert(
                    n.into(),
                    dims.split('x').map(|d| d.parse().expect("a dim")).collect(),
                );
            }
            let g = smelt::onnx::import_file(&dir.join("model.onnx"), &opts)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            (dir, g)
        })
        .collect()
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

    /// A string attribute.
    pub fn str_attr(name: &str, v: &str) -> AttributeProto {
        AttributeProto {
            name: Some(name.into()),
            r#type: Some(AttributeType::String as i32),
            s: Some(v.as_bytes().to_vec()),
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

/// Graphs used by several tests and benchmarks (they live in the library for the benches).
pub mod graphs;
pub mod layers;

/// The CLI's `.npy` reader and writer.
#[path = "../../src/cli/npy.rs"]
pub mod npy;
