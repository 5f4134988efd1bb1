//! ONNX import: a `ModelProto` becomes an [`ir::Graph`](crate::ir::Graph) with static shapes.
//!
//! Shape arithmetic on static shapes (Shape → Gather → Concat → Reshape, ConstantOfShape,
//! Range, ...) is evaluated while importing, by running the reference interpreter on nodes
//! whose inputs are all known. Ops whose output shape depends on tensor data are rejected
//! with an error naming the node.

mod attrs;
mod ops;
#[allow(missing_docs)]
pub mod proto;
pub mod scopes;
mod static_forms;
mod tensor;

pub use tensor::{dtype_from_onnx, dtype_to_onnx, tensor_from_proto, tensor_to_proto};

use crate::error::{Error, Result};
use crate::ir::{fmt_shape, Graph, Tensor};
use prost::Message;
use proto::{type_proto, ModelProto};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Options for import.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// Static shapes for inputs, by input name: required for inputs with symbolic dims,
    /// and checked against the model's fixed dims otherwise.
    pub shapes: BTreeMap<String, Vec<usize>>,
    /// Inputs bound to a value at compile time: they become constants, so shape parameters
    /// fed as inputs (axes, target shapes, slice bounds) are known statically.
    pub constants: BTreeMap<String, Tensor>,
}

/// Reads and imports an ONNX model file (external data is resolved next to it).
pub fn import_file(path: &Path, opts: &ImportOptions) -> Result<Graph> {
    let model = read_model(path)?;
    import_owned(model, path.parent(), &path.display().to_string(), opts)
}

/// Reads and decodes an ONNX model file; its initializers' bytes are slices of the file's
/// buffer, not copies.
pub fn read_model(path: &Path) -> Result<ModelProto> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    decode_buffer(
        prost::bytes::Bytes::from(bytes),
        &path.display().to_string(),
    )
}

/// Decodes a `ModelProto` from bytes; `file` names it in errors.
pub fn decode_model(bytes: &[u8], file: &str) -> Result<ModelProto> {
    decode_buffer(prost::bytes::Bytes::copy_from_slice(bytes), file)
}

fn decode_buffer(buf: prost::bytes::Bytes, file: &str) -> Result<ModelProto> {
    let err = |message: String| Error::Onnx {
        file: file.to_string(),
        message,
    };
    // Decoding from `Bytes` shares the buffer: initializers' raw data is not copied.
    let model = ModelProto::decode(buf).map_err(|e| {
        err(format!(
            "not a valid ONNX model (protobuf decode failed: {e})"
        ))
    })?;
    if model.graph.is_none() {
        return Err(err("not a valid ONNX model (no graph)".into()));
    }
    Ok(model)
}

/// Imports a model from bytes. `base_dir` resolves external data; `file` names the model in errors.
pub fn import_bytes(
    bytes: &[u8],
    base_dir: Option<&Path>,
    file: &str,
    opts: &ImportOptions,
) -> Result<Graph> {
    let model = decode_model(bytes, file)?;
    import_owned(model, base_dir, file, opts)
}

/// The op types this importer translates (default ONNX domain).
pub const SUPPORTED_OPS: &[&str] = ops::SUPPORTED;

/// Ops rejected because their output shape depends on tensor data. (`NonZero` is imported
/// when its input is known at import, a constant mask, and rejected with the same reason
/// otherwise.)
pub const DATA_DEPENDENT_OPS: &[&str] = &["Unique", "Compress", "NonMaxSuppression"];

/// Imports a decoded model.
pub fn import_model(
    model: &ModelProto,
    base_dir: Option<&Path>,
    file: &str,
    opts: &ImportOptions,
) -> Result<Graph> {
    import_owned(model.clone(), base_dir, file, opts)
}

/// [`import_model`] on a model it may take apart (its weights are not copied again).
pub fn import_owned(
    mut model: ModelProto,
    base_dir: Option<&Path>,
    file: &str,
    opts: &ImportOptions,
) -> Result<Graph> {
    let err = |message: String| Error::Onnx {
        file: file.to_string(),
        message,
    };
    let mut graph = model
        .graph
        .take()
        .ok_or_else(|| err("model has no graph".into()))?;
    static_forms::rewrite(&mut graph);
    let graph = &graph;
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain().is_empty() || o.domain() == "ai.onnx")
        .map(|o| o.version())
        .unwrap_or(if model.opset_import.is_empty() { 1 } else { 0 });

    // Reject data-dependent and unsupported ops up front, all at once.
    for node in &graph.node {
        if DATA_DEPENDENT_OPS.contains(&node.op_type()) && is_default_domain(node.domain()) {
            return Err(err(format!(
                "node '{}' ({}): output shape depends on tensor data, which would force a host sync; smelt compiles static shapes only",
                node_label(node),
                node.op_type()
            )));
        }
    }
    let mut unsupported: BTreeMap<String, String> = BTreeMap::new();
    for node in &graph.node {
        let known = is_internal(node)
            || is_default_domain(node.domain()) && SUPPORTED_OPS.contains(&node.op_type());
        if !known {
            let key = if is_default_domain(node.domain()) {
                node.op_type().to_string()
            } else {
                format!("{}::{}", node.domain(), node.op_type())
            };
            unsupported.entry(key).or_insert_with(|| node_label(node));
        }
    }
    if !unsupported.is_empty() {
        let list: Vec<String> = unsupported
            .iter()
            .map(|(op, node)| format!("{op} (first at node '{node}')"))
            .collect();
        return Err(err(format!("unsupported ops: {}", list.join(", "))));
    }
    if opset < 7 {
        return Err(err(format!(
            "opset {opset} is too old; smelt imports ONNX opset 7 and newer (13-21 tested)"
        )));
    }

    let mut imp = ops::Importer::new(opset, base_dir);
    let initializers: BTreeSet<&str> = graph.initializer.iter().map(|t| t.name()).collect();
    // Initializers are decoded, and their digests computed, on every core (a large model's
    // are hundreds of MB); added in the file's order.
    let decoded = crate::parallel::map(&graph.initializer, |t| {
        let tensor = tensor_from_proto(t, base_dir)?;
        tensor.digest();
        Ok::<_, String>(tensor)
    });
    for (t, tensor) in graph.initializer.iter().zip(decoded) {
        imp.add_constant(t.name(), tensor.map_err(&err)?)
            .map_err(&err)?;
    }
    if let Some(t) = graph.sparse_initializer.first() {
        let name = t.values.as_ref().map(|v| v.name()).unwrap_or("?");
        return Err(err(format!("sparse initializer '{name}' is not supported")));
    }

    let declared: Vec<String> = graph
        .input
        .iter()
        .filter(|vi| !initializers.contains(vi.name()))
        .map(|vi| vi.name().to_string())
        .collect();
    for name in opts.shapes.keys().chain(opts.constants.keys()) {
        if !declared.contains(name) {
            return Err(err(format!(
                "'{name}' is given a shape or value but is not an input of the model (inputs: {})",
                declared.join(", ")
            )));
        }
    }
    for vi in &graph.input {
        if initializers.contains(vi.name()) {
            continue;
        }
        let tensor_type = match vi.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(type_proto::Value::TensorType(t)) => t,
            _ => return Err(err(format!("input '{}' is not a tensor", vi.name()))),
        };
        let dtype = dtype_from_onnx(tensor_type.elem_type())
            .map_err(|e| err(format!("input '{}': {e}", vi.name())))?;
        if let Some(t) = opts.constants.get(vi.name()) {
            if t.dtype() != dtype {
                return Err(err(format!(
                    "constant for input '{}' has dtype {}, the model declares {dtype}",
                    vi.name(),
                    t.dtype()
                )));
            }
            imp.add_constant_input(vi.name(), t.clone()).map_err(&err)?;
            continue;
        }
        let shape = input_shape(vi.name(), tensor_type.shape.as_ref(), opts).map_err(&err)?;
        imp.add_input(vi.name(), dtype, &shape).map_err(&err)?;
    }

    for node in &graph.node {
        imp.import_node(node).map_err(|e| {
            err(format!(
                "node '{}' ({}): {e}",
                node_label(node),
                node.op_type()
            ))
        })?;
    }
    for out in &graph.output {
        imp.add_output(out.name()).map_err(&err)?;
    }
    imp.finish().map_err(|e| match e {
        Error::Invalid(p) => err(format!("imported graph is invalid: {}", p.join("; "))),
        other => other,
    })
}

fn is_default_domain(d: &str) -> bool {
    d.is_empty() || d == "ai.onnx"
}

/// True for the ops of smelt's own domain that [`static_forms`] introduces.
fn is_internal(node: &proto::NodeProto) -> bool {
    node.domain() == static_forms::DOMAIN && node.op_type() == static_forms::MASKED_REDUCE
}

fn node_label(node: &proto::NodeProto) -> String {
    if !node.name().is_empty() {
        node.name().to_string()
    } else {
        node.output.first().cloned().unwrap_or_else(|| "?".into())
    }
}

fn input_shape(
    name: &str,
    shape: Option<&proto::TensorShapeProto>,
    opts: &ImportOptions,
) -> std::result::Result<Vec<usize>, String> {
    use proto::tensor_shape_proto::dimension::Value;
    let given = opts.shapes.get(name);
    let Some(shape) = shape else {
        return given.cloned().ok_or_else(|| {
            format!("input '{name}' has no shape in the model; give it with --shape {name}=AxB")
        });
    };
    if let Some(g) = given {
        if g.len() != shape.dim.len() {
            return Err(format!(
                "--shape {name}={} has rank {}, but the model's input has rank {}",
                fmt_dims(g),
                g.len(),
                shape.dim.len()
            ));
        }
    }
    let mut out = Vec::new();
    for (i, d) in shape.dim.iter().enumerate() {
        let fixed = match &d.value {
            Some(Value::DimValue(v)) if *v >= 0 => Some(*v as usize),
            _ => None,
        };
        let symbol = match &d.value {
            Some(Value::DimParam(p)) => format!("'{p}'"),
            _ => "unnamed".into(),
        };
        match (fixed, given) {
            (Some(f), Some(g)) if g[i] != f => {
                return Err(format!(
                    "--shape {name}={} sets dim {i} to {}, but the model fixes it to {f}",
                    fmt_dims(g),
                    g[i]
                ))
            }
            (Some(f), _) => out.push(f),
            (None, Some(g)) => out.push(g[i]),
            (None, None) => {
                return Err(format!(
                    "input '{name}' has symbolic dim {i} ({symbol}); fix it with --shape {name}=... (e.g. {})",
                    example_shape(shape)
                ))
            }
        }
    }
    Ok(out)
}

fn fmt_dims(d: &[usize]) -> String {
    let s: Vec<String> = d.iter().map(|x| x.to_string()).collect();
    s.join("x")
}

fn example_shape(shape: &proto::TensorShapeProto) -> String {
    use proto::tensor_shape_proto::dimension::Value;
    let dims: Vec<String> = shape
        .dim
        .iter()
        .map(|d| match &d.value {
            Some(Value::DimValue(v)) if *v >= 0 => v.to_string(),
            _ => "1".into(),
        })
        .collect();
    dims.join("x")
}

/// Formats a shape for messages.
pub fn shape_text(s: &[usize]) -> String {
    fmt_shape(s)
}
