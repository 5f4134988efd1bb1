//! Every supported ONNX op, imported with extreme attributes and extreme constant inputs
//! (i64::MAX, i64::MIN, -1, 2^40, long lists), ends in an error or a valid graph: never a
//! panic. Tests build with overflow checks, so unchecked shape or attribute arithmetic
//! reachable from a model shows up here as a panic.

use prost::Message;
use smelt_compiler::ir::{DType, Tensor};
use smelt_compiler::onnx::proto::{
    attribute_proto::AttributeType, tensor_shape_proto::dimension, tensor_shape_proto::Dimension,
    type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};
use smelt_compiler::onnx::{import_bytes, tensor_to_proto, ImportOptions, SUPPORTED_OPS};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Integer values that break unchecked arithmetic.
const VALUES: &[i64] = &[
    i64::MAX,
    i64::MIN,
    -1,
    0,
    2,
    i32::MAX as i64 + 1,
    1 << 40,
    -(1 << 40),
    (1 << 62) + 1,
];

/// Every integer attribute some supported op reads (and a few it does not).
const INT_ATTRS: &[&str] = &[
    "allowzero",
    "axes",
    "axis",
    "batch_dims",
    "ceil_mode",
    "count_include_pad",
    "detect_negative",
    "detect_positive",
    "dilations",
    "end",
    "ends",
    "exclusive",
    "fmod",
    "group",
    "interleaved",
    "is_causal",
    "keepdims",
    "kernel_shape",
    "kv_num_heads",
    "left_window_size",
    "noop_with_empty_axes",
    "num_heads",
    "num_outputs",
    "pads",
    "perm",
    "q_num_heads",
    "qk_matmul_output_mode",
    "reverse",
    "right_window_size",
    "rotary_embedding_dim",
    "select_last_index",
    "shape",
    "softmax_precision",
    "split",
    "start",
    "starts",
    "stash_type",
    "strides",
    "to",
    "training_mode",
    "transA",
    "transB",
    "upper",
    "value_int",
    "value_ints",
];

/// Float attributes, with values that break float-to-integer conversions.
const FLOAT_ATTRS: &[&str] = &[
    "alpha",
    "beta",
    "epsilon",
    "gamma",
    "max",
    "min",
    "scale",
    "softcap",
    "value",
    "value_float",
];
const FLOATS: &[f32] = &[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e30, -1e30];

/// Ops whose attributes mean something else before opset 11 or 13.
const OLD_FORMS: &[&str] = &[
    "Clip",
    "LogSoftmax",
    "Pad",
    "Slice",
    "Softmax",
    "Split",
    "Squeeze",
    "Unsqueeze",
    "ReduceSum",
];

/// Ops with optional extra outputs.
const MULTI_OUTPUT: &[&str] = &[
    "Attention",
    "Dropout",
    "LayerNormalization",
    "MaxPool",
    "Split",
];

fn int_attr(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

fn ints_attr(name: &str, v: Vec<i64>) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v,
        ..Default::default()
    }
}

fn float_attr(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Float as i32),
        f: Some(v),
        ..Default::default()
    }
}

fn value(name: &str, elem: i32, dims: &[i64]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|&d| Dimension {
            value: Some(dimension::Value::DimValue(d)),
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

/// The named values a node may read (graph inputs, then initializers, some filled with
/// `v`), restricted to those in `used`.
fn operands(v: i64, used: &[&str]) -> (Vec<ValueInfoProto>, Vec<TensorProto>) {
    let f = |name: &str, dims: &[usize]| {
        let n = dims.iter().product();
        tensor_to_proto(name, &Tensor::f32(dims.to_vec(), vec![0.5; n]))
    };
    let mut inputs = Vec::new();
    let mut inits = Vec::new();
    for &name in ["x", "x3", "m", "w", "b", "iv", "i1", "sv", "fv"].iter() {
        if !used.contains(&name) {
            continue;
        }
        match name {
            "x" => inputs.push(value("x", 1, &[2, 4, 4, 4])),
            "x3" => inputs.push(value("x3", 1, &[2, 4, 8])),
            "m" => inputs.push(value("m", 9, &[2, 4, 4, 4])),
            "w" => inits.push(f("w", &[4, 4, 1, 1])),
            "b" => inits.push(f("b", &[4])),
            "iv" => inits.push(tensor_to_proto("iv", &Tensor::i64([4], vec![v; 4]))),
            "i1" => inits.push(tensor_to_proto("i1", &Tensor::i64([1], vec![v]))),
            "sv" => inits.push(tensor_to_proto("sv", &Tensor::i64([], vec![v]))),
            _ => inits.push(tensor_to_proto("fv", &Tensor::scalar(DType::F32, v as f64))),
        }
    }
    (inputs, inits)
}

/// True when `ins` reads a constant filled with the value under test.
fn uses_value(ins: &[&str]) -> bool {
    ins.iter().any(|i| matches!(*i, "iv" | "i1" | "sv" | "fv"))
}

/// Input lists tried for every op.
const INPUT_SETS: &[&[&str]] = &[
    &["x"],
    &["x3"],
    &["x", "w"],
    &["x", "w", "b"],
    &["x", "x", "x"],
    &["x3", "x3", "x3"],
    &["x", "x", "x", "m"],
    &["x", "x", "x", "sv"],
    &["x", "x", "x", "fv"],
    &["x3", "x3", "x3", "sv"],
    &["x", "x", "x", "x", "x", "x", "iv"],
    &["x", "iv"],
    &["x", "i1"],
    &["x", "sv"],
    &["x", "fv", "fv"],
    &["x", "iv", "iv", "iv", "iv"],
    &["x", "i1", "i1", "i1", "i1"],
    &["x", "b", "b", "b", "b"],
    &["sv", "sv", "sv"],
    &["iv"],
    &["m", "x", "x"],
];

/// Imports a one-node model; `Err` carries a description of a panic.
fn try_import(
    op: &str,
    opset: i64,
    v: i64,
    ins: &[&str],
    outs: &[&str],
    attrs: Vec<AttributeProto>,
) -> Result<Result<(), String>, String> {
    let (inputs, inits) = operands(v, ins);
    let node = NodeProto {
        op_type: Some(op.into()),
        name: Some("n".into()),
        input: ins.iter().map(|s| s.to_string()).collect(),
        output: outs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs.clone(),
        ..Default::default()
    };
    let model = ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opset),
        }],
        graph: Some(GraphProto {
            name: Some("g".into()),
            node: vec![node],
            input: inputs,
            output: vec![value("y", 1, &[])],
            initializer: inits,
            ..Default::default()
        }),
        ..Default::default()
    };
    let bytes = model.encode_to_vec();
    let r = catch_unwind(AssertUnwindSafe(|| {
        import_bytes(&bytes, None, "m.onnx", &ImportOptions::default())
    }));
    match r {
        Ok(r) => Ok(r.map(|_| ()).map_err(|e| e.to_string())),
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let shown: Vec<String> = attrs
                .iter()
                .map(|a| {
                    let n = a.ints.len();
                    let ints = if n > 8 {
                        format!("[{}; {n}]", a.ints[0])
                    } else {
                        format!("{:?}", a.ints)
                    };
                    format!("{}={:?}/{ints}/{:?}", a.name(), a.i, a.f)
                })
                .collect();
            Err(format!(
                "{op} (opset {opset}) inputs {ins:?} outputs {outs:?} value {v} attrs {shown:?}: {msg}"
            ))
        }
    }
}

/// The attribute forms tried for one integer attribute and value.
fn int_forms(name: &str, v: i64) -> Vec<AttributeProto> {
    let mut forms = vec![
        int_attr(name, v),
        ints_attr(name, vec![v]),
        ints_attr(name, vec![v, v]),
        ints_attr(name, vec![v, 1]),
        ints_attr(name, vec![v; 4]),
        ints_attr(name, vec![1, 1, v, v]),
    ];
    if matches!(v, -1 | 0 | 2) {
        forms.push(ints_attr(name, vec![v; 10_000]));
    }
    forms
}

fn string_attr(name: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::String as i32),
        s: Some(b"?".to_vec()),
        ..Default::default()
    }
}

#[test]
fn every_op_survives_extreme_attributes_and_inputs() {
    // Panics are caught and listed; keep their messages off the test output.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut panics = Vec::new();
    let mut imported = 0usize;
    let mut note = |r: Result<Result<(), String>, String>| match r {
        Ok(r) => {
            imported += r.is_ok() as usize;
            r
        }
        Err(p) => {
            panics.push(p.clone());
            Err(p)
        }
    };
    for &op in SUPPORTED_OPS {
        let opsets: &[i64] = if OLD_FORMS.contains(&op) {
            &[9, 12, 23]
        } else {
            &[23]
        };
        let out_lists: &[&[&str]] = if MULTI_OUTPUT.contains(&op) {
            &[&["y"], &["y", "y1", "y2", "y3"]]
        } else {
            &[&["y"]]
        };
        for &opset in opsets {
            // Extreme constant inputs, no attributes; the inputs the op accepts.
            let mut good: Vec<&[&str]> = Vec::new();
            for &ins in INPUT_SETS {
                let values: &[i64] = if uses_value(ins) { VALUES } else { &[1] };
                for &v in values {
                    for &outs in out_lists {
                        let ok = note(try_import(op, opset, v, ins, outs, vec![])).is_ok();
                        if ok && !uses_value(ins) && !good.contains(&ins) {
                            good.push(ins);
                        }
                    }
                }
            }
            if good.is_empty() {
                good.push(&["x"]);
            }
            good.truncate(2);
            for &ins in &good {
                // The attributes the op reads: given one of the wrong type, it says so.
                let read: Vec<&str> = INT_ATTRS
                    .iter()
                    .copied()
                    .filter(|name| {
                        let r = note(try_import(
                            op,
                            opset,
                            1,
                            ins,
                            &["y"],
                            vec![string_attr(name)],
                        ));
                        r.is_err_and(|e| e.contains(&format!("attribute '{name}' has type")))
                    })
                    .collect();
                for &v in VALUES {
                    for name in &read {
                        for attr in int_forms(name, v) {
                            for &outs in out_lists {
                                note(try_import(op, opset, 1, ins, outs, vec![attr.clone()])).ok();
                            }
                        }
                    }
                    // Every attribute it reads at once, and every one there is.
                    let some = read.iter().map(|n| int_attr(n, v)).collect();
                    note(try_import(op, opset, 1, ins, &["y"], some)).ok();
                    let all = INT_ATTRS.iter().map(|n| int_attr(n, v)).collect();
                    note(try_import(op, opset, 1, ins, &["y"], all)).ok();
                }
            }
            for name in FLOAT_ATTRS {
                for &f in FLOATS {
                    let attr = vec![float_attr(name, f)];
                    note(try_import(op, opset, 1, good[0], &["y"], attr)).ok();
                }
            }
        }
    }
    std::panic::set_hook(hook);
    assert!(imported > 0, "nothing imported: the sweep tests nothing");
    assert!(
        panics.is_empty(),
        "{} imports panicked:\n{}",
        panics.len(),
        panics
            .iter()
            .take(60)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
