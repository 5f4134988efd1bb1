//! ONNX import features beyond single ops: external data, import-time shape arithmetic,
//! bound constant inputs.

mod common;

use common::onnx_model as om;
use smelt::ir::Op;
use smelt::onnx::{import_file, proto, ImportOptions};
use smelt::{interp, Tensor};
use std::collections::{BTreeMap, HashMap};

#[test]
fn external_data_is_read_next_to_the_model() {
    let dir = std::env::temp_dir().join(format!("smelt-extdata-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("weights")).unwrap();
    // Two tensors in one file: 8 bytes of padding, then w (4 f32), then b (2 f32).
    let w = [1.0f32, 2.0, 3.0, 4.0];
    let b = [0.5f32, -0.5];
    let mut blob = vec![0u8; 8];
    blob.extend(w.iter().flat_map(|v| v.to_le_bytes()));
    blob.extend(b.iter().flat_map(|v| v.to_le_bytes()));
    std::fs::write(dir.join("weights/data.bin"), &blob).unwrap();
    let ext = |name: &str, dims: Vec<i64>, offset: usize, len: usize| proto::TensorProto {
        name: Some(name.into()),
        dims,
        data_type: Some(1),
        data_location: Some(proto::tensor_proto::DataLocation::External as i32),
        external_data: [
            ("location", "weights/data.bin".to_string()),
            ("offset", offset.to_string()),
            ("length", len.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| proto::StringStringEntryProto {
            key: Some(k.into()),
            value: Some(v),
        })
        .collect(),
        ..Default::default()
    };
    let m = om::model(
        vec![
            om::node("MatMul", "mm", &["x", "w"], &["h"], vec![]),
            om::node("Add", "add", &["h", "b"], &["y"], vec![]),
        ],
        vec![om::f32_value("x", &[1, 2])],
        vec![om::f32_value("y", &[1, 2])],
        vec![ext("w", vec![2, 2], 8, 16), ext("b", vec![2], 24, 8)],
        17,
    );
    let path = dir.join("model.onnx");
    std::fs::write(&path, om::bytes(&m)).unwrap();
    let g = import_file(&path, &ImportOptions::default()).unwrap();
    let out = interp::run(
        &g,
        &HashMap::from([("x".to_string(), Tensor::f32([1, 2], vec![1.0, 1.0]))]),
    )
    .unwrap();
    assert_eq!(out[0].1.to_f64(), vec![4.5, 5.5]);

    // A location outside the model's folder is refused.
    let mut bad = m.clone();
    bad.graph.as_mut().unwrap().initializer[0].external_data[0].value =
        Some("../secret.bin".into());
    std::fs::write(&path, om::bytes(&bad)).unwrap();
    let err = import_file(&path, &ImportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("must be a relative path inside the model's folder"),
        "{err}"
    );
    // A short file is reported with sizes.
    std::fs::write(dir.join("weights/data.bin"), &blob[..20]).unwrap();
    std::fs::write(&path, om::bytes(&m)).unwrap();
    let err = import_file(&path, &ImportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("tensor 'w'") && err.contains("has 20 bytes"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn static_shape_arithmetic_folds_at_import() {
    let path = common::root().join("tests/models/shape_reshape_chain/model.onnx");
    let g = import_file(&path, &ImportOptions::default()).unwrap();
    let ops: Vec<String> = g.nodes.iter().map(|n| n.op.name()).collect();
    // Shape → Gather → Unsqueeze → Concat → Reshape became one static reshape.
    assert!(
        !ops.iter().any(|o| o == "gather" || o == "concat"),
        "{ops:?}"
    );
    assert!(
        g.nodes
            .iter()
            .any(|n| matches!(&n.op, Op::Reshape(s) if s == &vec![2, 12])),
        "{g}"
    );
}

#[test]
fn inputs_can_be_bound_to_constants() {
    let m = om::model(
        vec![om::node("Reshape", "rs", &["x", "s"], &["y"], vec![])],
        vec![
            om::f32_value("x", &[6]),
            om::value("s", 7, vec![om::Dim::N(2)]),
        ],
        vec![om::f32_value("y", &[2, 3])],
        vec![],
        17,
    );
    let opts = ImportOptions {
        constants: BTreeMap::from([("s".to_string(), Tensor::i64([2], vec![3, -1]))]),
        ..Default::default()
    };
    let g = smelt::onnx::import_bytes(&om::bytes(&m), None, "m.onnx", &opts).unwrap();
    assert_eq!(g.inputs.len(), 1);
    assert_eq!(g.nodes[g.outputs[0].1].ty.shape, vec![3, 2]);
    let bad = ImportOptions {
        constants: BTreeMap::from([("s".to_string(), Tensor::f32([2], vec![3.0, 2.0]))]),
        ..Default::default()
    };
    let err = smelt::onnx::import_bytes(&om::bytes(&m), None, "m.onnx", &bad)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("constant for input 's' has dtype f32, the model declares i64"),
        "{err}"
    );
}

#[test]
fn masked_reductions_have_a_static_form_only_for_full_masks() {
    // x[mask].sum() with mask over the leading dim selects a data-dependent number of rows.
    let m = om::model(
        vec![
            om::node("NonZero", "nz", &["mask"], &["idx"], vec![]),
            om::node(
                "Transpose",
                "t",
                &["idx"],
                &["idx_t"],
                vec![om::ints("perm", &[1, 0])],
            ),
            om::node("GatherND", "g", &["x", "idx_t"], &["sel"], vec![]),
            om::node(
                "ReduceSum",
                "sum",
                &["sel"],
                &["y"],
                vec![om::int("keepdims", 0)],
            ),
        ],
        vec![
            om::f32_value("x", &[4, 5]),
            om::value("mask", 9, vec![om::Dim::N(4)]),
        ],
        vec![om::value("y", 1, vec![])],
        vec![],
        17,
    );
    let err = smelt::onnx::import_bytes(&om::bytes(&m), None, "m.onnx", &ImportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("node 'sum'") && err.contains("only a bool mask of x's full shape"),
        "{err}"
    );
    // The same with a full-shape mask imports as where + reduce, and computes the sum.
    let mut full = m.clone();
    full.graph.as_mut().unwrap().input[1] =
        om::value("mask", 9, vec![om::Dim::N(4), om::Dim::N(5)]);
    let g = smelt::onnx::import_bytes(&om::bytes(&full), None, "m.onnx", &ImportOptions::default())
        .unwrap();
    assert!(g.nodes.iter().any(|n| n.op == Op::Where), "{g}");
    let x = Tensor::f32([4, 5], (0..20).map(|i| i as f32).collect());
    let mask = Tensor::from_i64(
        smelt::DType::Bool,
        vec![4, 5],
        &(0..20).map(|i| (i % 3 == 0) as i64).collect::<Vec<_>>(),
    );
    let out = interp::run(
        &g,
        &HashMap::from([("x".to_string(), x), ("mask".to_string(), mask)]),
    )
    .unwrap();
    assert_eq!(
        out[0].1.to_f64(),
        vec![(0..20).filter(|i| i % 3 == 0).sum::<i32>() as f64]
    );
}

#[test]
fn nonzero_of_a_constant_mask_folds_at_import() {
    // x[:, nonzero(mask)] with a constant mask: the indices are known at import, so the
    // gather has a static shape; the same mask as an input is refused with the node named.
    let mask = Tensor::from_i64(smelt::DType::Bool, vec![5], &[0, 1, 1, 0, 1]);
    let nodes = || {
        vec![
            om::node("NonZero", "nz", &["mask"], &["idx"], vec![]),
            om::node("Squeeze", "sq", &["idx", "zero"], &["cols"], vec![]),
            om::node(
                "Gather",
                "g",
                &["x", "cols"],
                &["y"],
                vec![om::int("axis", 1)],
            ),
        ]
    };
    let zero = smelt::onnx::tensor_to_proto("zero", &Tensor::i64([1], vec![0]));
    let m = om::model(
        nodes(),
        vec![om::f32_value("x", &[2, 5])],
        vec![om::value("y", 1, vec![])],
        vec![smelt::onnx::tensor_to_proto("mask", &mask), zero.clone()],
        17,
    );
    let g = smelt::onnx::import_bytes(&om::bytes(&m), None, "m.onnx", &ImportOptions::default())
        .unwrap();
    assert_eq!(g.nodes[g.outputs[0].1].ty.shape, vec![2, 3]);
    assert!(!g.nodes.iter().any(|n| n.op.name() == "nonzero"), "{g}");
    let x = Tensor::f32([2, 5], (0..10).map(|i| i as f32).collect());
    let out = interp::run(&g, &HashMap::from([("x".to_string(), x)])).unwrap();
    assert_eq!(out[0].1.to_f64(), vec![1.0, 2.0, 4.0, 6.0, 7.0, 9.0]);

    let m = om::model(
        nodes(),
        vec![
            om::f32_value("x", &[2, 5]),
            om::value("mask", 9, vec![om::Dim::N(5)]),
        ],
        vec![om::value("y", 1, vec![])],
        vec![zero],
        17,
    );
    let err = smelt::onnx::import_bytes(&om::bytes(&m), None, "m.onnx", &ImportOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("node 'nz' (NonZero)") && err.contains("output shape depends on tensor data"),
        "{err}"
    );
}
