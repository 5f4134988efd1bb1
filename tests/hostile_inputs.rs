//! Malformed or extreme models get a clear error, never a panic, an overflow or an
//! attempted giant allocation. Each case was once a crash.

mod common;

use common::onnx_model::{self as om, Dim};
use smelt::onnx::{import_bytes, proto, ImportOptions};
use smelt::{interp, DType, Tensor};
use std::collections::HashMap;

fn int_tensor(name: &str, v: &[i64]) -> proto::TensorProto {
    smelt::onnx::tensor_to_proto(name, &Tensor::i64([v.len()], v.to_vec()))
}

fn scalar_i64(name: &str, v: i64) -> proto::TensorProto {
    smelt::onnx::tensor_to_proto(name, &Tensor::i64([], vec![v]))
}

/// Imports a one-node model over `x: f32[shape]` and returns the error text.
fn import_err(node: proto::NodeProto, x_shape: &[i64], inits: Vec<proto::TensorProto>) -> String {
    let outs: Vec<proto::ValueInfoProto> = node
        .output
        .iter()
        .map(|o| om::value(o, 1, vec![]))
        .collect();
    let m = om::model(
        vec![node],
        vec![om::f32_value("x", x_shape)],
        outs,
        inits,
        17,
    );
    match std::panic::catch_unwind(|| {
        import_bytes(&om::bytes(&m), None, "m.onnx", &ImportOptions::default())
    }) {
        Ok(Ok(g)) => panic!("expected an error, imported:\n{g}"),
        Ok(Err(e)) => e.to_string(),
        Err(_) => panic!("import panicked"),
    }
}

fn expect(err: String, needle: &str) {
    assert!(
        err.contains(needle),
        "error {err:?} should mention {needle:?}"
    );
}

#[test]
fn window_attributes_are_bounded() {
    let conv = |attrs| om::node("Conv", "c", &["x", "w"], &["y"], attrs);
    let w = |dims: Vec<i64>| {
        smelt::onnx::tensor_to_proto(
            "w",
            &Tensor::f32(
                dims.iter().map(|&d| d as usize).collect::<Vec<_>>(),
                vec![0.5; dims.iter().product::<i64>() as usize],
            ),
        )
    };
    expect(
        import_err(conv(vec![]), &[1, 1, 5, 5], vec![w(vec![1, 1, 0, 3])]),
        "non-empty window",
    );
    expect(
        import_err(conv(vec![]), &[1, 1, 5, 5], vec![w(vec![1, 1])]),
        "conv weight must be",
    );
    expect(
        import_err(
            conv(vec![om::ints("pads", &[i64::MAX, 0, i64::MAX, 0])]),
            &[1, 1, 5, 5],
            vec![w(vec![1, 1, 3, 3])],
        ),
        "must be 4 values in 0..=2^31-1",
    );
    expect(
        import_err(
            conv(vec![om::ints("strides", &[0, 1])]),
            &[1, 1, 5, 5],
            vec![w(vec![1, 1, 3, 3])],
        ),
        "values in 1..=2^31-1",
    );
    let pool = |k: &[i64]| {
        om::node(
            "MaxPool",
            "p",
            &["x"],
            &["y"],
            vec![om::ints("kernel_shape", k)],
        )
    };
    expect(
        import_err(pool(&[0, 2]), &[1, 1, 4, 4], vec![]),
        "kernel_shape",
    );
    expect(
        import_err(pool(&[9, 9]), &[1, 1, 4, 4], vec![]),
        "larger than padded input",
    );
    let same = om::node(
        "MaxPool",
        "p",
        &["x"],
        &["y"],
        vec![
            om::ints("kernel_shape", &[2, 2]),
            om::str_attr("auto_pad", "SAME_UPPER"),
        ],
    );
    expect(import_err(same, &[1, 1, 0, 4], vec![]), "empty input");
}

#[test]
fn huge_shapes_are_refused_not_allocated() {
    let cos = om::node("ConstantOfShape", "c", &["s"], &["y"], vec![]);
    let m = om::model(
        vec![cos],
        vec![],
        vec![om::value("y", 1, vec![])],
        vec![int_tensor("s", &[100_000, 100_000, 100_000])],
        17,
    );
    let err = import_bytes(&om::bytes(&m), None, "m.onnx", &ImportOptions::default())
        .unwrap_err()
        .to_string();
    expect(err, "more than 2^32 elements");
    expect(
        import_err(
            om::node("Tile", "t", &["x", "r"], &["y"], vec![]),
            &[4],
            vec![int_tensor("r", &[1 << 62])],
        ),
        "overflows",
    );
    expect(
        import_err(
            om::node("Expand", "e", &["x", "s"], &["y"], vec![]),
            &[1],
            vec![int_tensor("s", &[1 << 40, 1 << 40])],
        ),
        "more than 2^32 elements",
    );
    expect(
        import_err(
            om::node("Reshape", "r", &["x", "s"], &["y"], vec![]),
            &[4],
            vec![int_tensor("s", &[1 << 40, 1 << 40])],
        ),
        "more than 2^32 elements",
    );
    // An initializer whose dims overflow, with no data.
    let mut t = int_tensor("w", &[]);
    t.dims = vec![1 << 32, 1 << 32];
    t.raw_data = Some(Vec::new().into());
    expect(
        import_err(
            om::node("Add", "a", &["x", "w"], &["y"], vec![]),
            &[1],
            vec![t],
        ),
        "more than 2^32 elements",
    );
    // A graph input that large.
    let m = om::model(
        vec![om::node("Relu", "r", &["x"], &["y"], vec![])],
        vec![om::value("x", 1, vec![Dim::N(1 << 40), Dim::N(1 << 40)])],
        vec![om::value("y", 1, vec![])],
        vec![],
        17,
    );
    let err = import_bytes(&om::bytes(&m), None, "m.onnx", &ImportOptions::default())
        .unwrap_err()
        .to_string();
    expect(err, "more than 2^32 elements");
}

#[test]
fn range_and_split_parameters_are_checked() {
    let range = |s: i64, l: i64, d: i64| {
        let m = om::model(
            vec![om::node("Range", "r", &["s", "l", "d"], &["y"], vec![])],
            vec![],
            vec![om::value("y", 7, vec![])],
            vec![scalar_i64("s", s), scalar_i64("l", l), scalar_i64("d", d)],
            17,
        );
        import_bytes(&om::bytes(&m), None, "m.onnx", &ImportOptions::default())
            .map(|g| g.nodes.len())
    };
    expect(
        range(i64::MIN, i64::MAX, 1).unwrap_err().to_string(),
        "longer than 2^24",
    );
    expect(
        range(0, 1 << 62, 1).unwrap_err().to_string(),
        "longer than 2^24",
    );
    expect(range(0, 5, 0).unwrap_err().to_string(), "delta is 0");
    assert!(range(10, 0, -3).is_ok());
    let split = |attrs| om::node("Split", "s", &["x"], &["a", "b"], attrs);
    expect(
        import_err(split(vec![om::int("num_outputs", -1)]), &[4], vec![]),
        "num_outputs -1",
    );
    expect(
        import_err(split(vec![om::int("num_outputs", 1 << 40)]), &[4], vec![]),
        "must be positive and match",
    );
    expect(
        import_err(split(vec![om::ints("split", &[i64::MAX, 2])]), &[4], vec![]),
        "do not cover",
    );
}

#[test]
fn extreme_slice_steps_count_right() {
    let slice = |step: i64| {
        let m = om::model(
            vec![om::node(
                "Slice",
                "s",
                &["x", "b", "e", "a", "st"],
                &["y"],
                vec![],
            )],
            vec![om::f32_value("x", &[4])],
            vec![om::value("y", 1, vec![])],
            vec![
                int_tensor("b", &[if step > 0 { 0 } else { -1 }]),
                int_tensor("e", &[if step > 0 { i64::MAX } else { i64::MIN }]),
                int_tensor("a", &[0]),
                int_tensor("st", &[step]),
            ],
            17,
        );
        let g = import_bytes(&om::bytes(&m), None, "m.onnx", &ImportOptions::default()).unwrap();
        let x = Tensor::f32([4], vec![0.0, 1.0, 2.0, 3.0]);
        interp::run(&g, &HashMap::from([("x".to_string(), x)])).unwrap()[0]
            .1
            .to_f64()
    };
    assert_eq!(slice(i64::MAX), vec![0.0]);
    assert_eq!(slice(i64::MIN), vec![3.0]);
    assert_eq!(slice(-2), vec![3.0, 1.0]);
}

#[test]
fn padding_an_empty_dim_with_edge_values_is_refused() {
    let pad = om::node(
        "Pad",
        "p",
        &["x", "pads"],
        &["y"],
        vec![om::str_attr("mode", "edge")],
    );
    expect(
        import_err(pad, &[0, 2], vec![int_tensor("pads", &[1, 0, 1, 0])]),
        "empty, has no values to repeat",
    );
}

#[test]
fn broken_masked_selection_patterns_are_left_alone() {
    // NonZero → Transpose without inputs → GatherND → ReduceSum: not the static form, and
    // the NonZero is reported, not a crash.
    let m = om::model(
        vec![
            om::node("NonZero", "nz", &["x"], &["i"], vec![]),
            om::node("Transpose", "t", &[], &["it"], vec![]),
            om::node("GatherND", "g", &["x", "it"], &["sel"], vec![]),
            om::node("ReduceSum", "r", &["sel"], &[], vec![]),
        ],
        vec![om::f32_value("x", &[4])],
        vec![],
        vec![],
        17,
    );
    let err = import_bytes(&om::bytes(&m), None, "m.onnx", &ImportOptions::default())
        .unwrap_err()
        .to_string();
    expect(err, "NonZero");
}

#[test]
fn nd_gathers_and_scatters_check_their_indices() {
    let gnd = |attrs| om::node("GatherND", "g", &["x", "i"], &["y"], attrs);
    let idx = |dims: &[usize], v: &[i64]| {
        smelt::onnx::tensor_to_proto("i", &Tensor::i64(dims.to_vec(), v.to_vec()))
    };
    // The indices' last dim addresses more dims than the data has.
    expect(
        import_err(gnd(vec![]), &[2, 3], vec![idx(&[1, 3], &[0, 0, 0])]),
        "must be 1..=2",
    );
    expect(
        import_err(
            gnd(vec![om::int("batch_dims", -1)]),
            &[2, 3],
            vec![idx(&[1, 1], &[0])],
        ),
        "batch_dims -1 is negative",
    );
    expect(
        import_err(
            gnd(vec![om::int("batch_dims", 2)]),
            &[2, 3],
            vec![idx(&[2, 1], &[0, 0])],
        ),
        "must be below both ranks",
    );
    // Constant out-of-range indices fold at import and are reported there.
    let data = smelt::onnx::tensor_to_proto("d", &Tensor::f32([2, 3], vec![1.0; 6]));
    let consts = om::model(
        vec![om::node("GatherND", "g", &["d", "i"], &["y"], vec![])],
        vec![],
        vec![om::value("y", 1, vec![])],
        vec![data, idx(&[1, 2], &[0, 3])],
        17,
    );
    let err = import_bytes(
        &om::bytes(&consts),
        None,
        "m.onnx",
        &ImportOptions::default(),
    )
    .unwrap_err()
    .to_string();
    expect(err, "index 3 out of range for axis 1 of size 3");
    let snd = om::node("ScatterND", "s", &["x", "i", "u"], &["y"], vec![]);
    let upd = smelt::onnx::tensor_to_proto("u", &Tensor::f32([2], vec![1.0, 2.0]));
    expect(
        import_err(snd, &[2, 3], vec![idx(&[1, 1], &[0]), upd]),
        "scatter_nd updates must be f32 [1,3] (indices [1,1], data [2,3]), got f32 [2]",
    );
    let snd = om::node(
        "ScatterND",
        "s",
        &["x", "i", "u"],
        &["y"],
        vec![om::str_attr("reduction", "avg")],
    );
    let upd = smelt::onnx::tensor_to_proto("u", &Tensor::f32([1, 3], vec![1.0; 3]));
    expect(
        import_err(snd, &[2, 3], vec![idx(&[1, 1], &[0]), upd]),
        "unknown reduction 'avg'",
    );
}

#[test]
fn fused_transformer_ops_check_their_shapes() {
    let x = |name: &str, dims: &[usize]| {
        let n = dims.iter().product();
        smelt::onnx::tensor_to_proto(name, &Tensor::f32(dims.to_vec(), vec![0.5; n]))
    };
    // Query heads that key/value heads cannot share.
    let att = om::node("Attention", "a", &["x", "k", "v"], &["y"], vec![]);
    expect(
        import_err(
            att,
            &[1, 3, 4, 8],
            vec![x("k", &[1, 2, 4, 8]), x("v", &[1, 2, 4, 8])],
        ),
        "3 query heads cannot share 2 key/value heads",
    );
    let att = om::node("Attention", "a", &["x", "k", "v"], &["y"], vec![]);
    expect(
        import_err(
            att,
            &[1, 4, 8],
            vec![x("k", &[1, 4, 8]), x("v", &[1, 4, 8])],
        ),
        "3-D inputs need the attribute 'q_num_heads'",
    );
    let att = om::node(
        "Attention",
        "a",
        &["x", "k", "v"],
        &["y"],
        vec![om::int("left_window_size", -2)],
    );
    expect(
        import_err(
            att,
            &[1, 2, 4, 8],
            vec![x("k", &[1, 2, 4, 8]), x("v", &[1, 2, 4, 8])],
        ),
        "left_window_size -2 must be -1 or nonnegative",
    );
    let rot = om::node("RotaryEmbedding", "r", &["x", "c", "s"], &["y"], vec![]);
    expect(
        import_err(
            rot,
            &[1, 2, 4, 8],
            vec![x("c", &[1, 4, 3]), x("s", &[1, 4, 3])],
        ),
        "cos cache (after position_ids) is [1,4,3], expected [1, 4, 4] for input [1,2,4,8]",
    );
    let rot = om::node(
        "RotaryEmbedding",
        "r",
        &["x", "c", "s"],
        &["y"],
        vec![om::int("rotary_embedding_dim", 3)],
    );
    expect(
        import_err(
            rot,
            &[1, 2, 4, 8],
            vec![x("c", &[1, 4, 4]), x("s", &[1, 4, 4])],
        ),
        "rotary_embedding_dim 3 must be even",
    );
    let rms = om::node(
        "RMSNormalization",
        "n",
        &["x", "w"],
        &["y"],
        vec![om::int("axis", 2)],
    );
    expect(import_err(rms, &[2, 3], vec![x("w", &[3])]), "axis 2");
}

/// Runs a one-`Attention`-node model (opset 23) on the reference interpreter: Q [1,2,3,4],
/// K and V [1,2,5,4], and the mask given as a graph input (`mask_input`: dtype code and
/// dims, fed `mask_feed`) or an initializer.
fn attention_with_mask(
    mask_input: Option<(i32, &[i64], Tensor)>,
    mask_init: Option<Tensor>,
    attrs: Vec<proto::AttributeProto>,
) -> Result<Vec<f64>, String> {
    let mut inputs = vec![
        om::f32_value("q", &[1, 2, 3, 4]),
        om::f32_value("k", &[1, 2, 5, 4]),
        om::f32_value("v", &[1, 2, 5, 4]),
    ];
    let mut inits = Vec::new();
    let seq = |n: usize, k: f32| (0..n).map(|i| ((i as f32) * k).sin()).collect::<Vec<f32>>();
    let mut feeds = HashMap::from([
        ("q".to_string(), Tensor::f32([1, 2, 3, 4], seq(24, 0.7))),
        ("k".to_string(), Tensor::f32([1, 2, 5, 4], seq(40, 1.3))),
        ("v".to_string(), Tensor::f32([1, 2, 5, 4], seq(40, 0.4))),
    ]);
    let mut ins = vec!["q", "k", "v"];
    if let Some((elem, dims, feed)) = mask_input {
        let dims = dims.iter().map(|&d| Dim::N(d)).collect();
        inputs.push(om::value("mask", elem, dims));
        feeds.insert("mask".to_string(), feed);
        ins.push("mask");
    }
    if let Some(t) = mask_init {
        inits.push(smelt::onnx::tensor_to_proto("mask", &t));
        ins.push("mask");
    }
    let m = om::model(
        vec![om::node("Attention", "att", &ins, &["y"], attrs)],
        inputs,
        vec![om::value("y", 1, vec![])],
        inits,
        23,
    );
    let g = std::panic::catch_unwind(|| {
        import_bytes(&om::bytes(&m), None, "m.onnx", &ImportOptions::default())
    })
    .map_err(|_| "import panicked".to_string())?
    .map_err(|e| e.to_string())?;
    let out = interp::run(&g, &feeds).map_err(|e| e.to_string())?;
    Ok(out[0].1.to_f64())
}

fn assert_close(got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 1e-6, "element {i}: got {g}, expected {w}");
    }
}

#[test]
fn attention_broadcasts_a_scalar_mask() {
    // The mask must broadcast to (batch, q_heads, q_len, kv_len): a rank-0 mask does, to
    // every query and key. It is the same as that value written out at full size.
    let full = |d: DType, x: f64| Tensor::from_f64(d, vec![1, 2, 3, 5], &[x; 30]);
    let scalar = |d: DType, x: f64| Tensor::scalar(d, x);
    let none = attention_with_mask(None, None, vec![]).unwrap();
    for causal in [0, 1] {
        let attrs = || vec![om::int("is_causal", causal)];
        // An initializer (folded at import) and a graph input, additive.
        let want = attention_with_mask(None, Some(full(DType::F32, -0.75)), attrs()).unwrap();
        let got = attention_with_mask(None, Some(scalar(DType::F32, -0.75)), attrs()).unwrap();
        assert_close(&got, &want);
        let got =
            attention_with_mask(Some((1, &[], scalar(DType::F32, -0.75))), None, attrs()).unwrap();
        assert_close(&got, &want);
        // Boolean: true shows every key, false hides them all (such rows give zeros).
        for show in [true, false] {
            let x = if show { 1.0 } else { 0.0 };
            let want = attention_with_mask(None, Some(full(DType::Bool, x)), attrs()).unwrap();
            let got = attention_with_mask(None, Some(scalar(DType::Bool, x)), attrs()).unwrap();
            assert_close(&got, &want);
            let got =
                attention_with_mask(Some((9, &[], scalar(DType::Bool, x))), None, attrs()).unwrap();
            assert_close(&got, &want);
            if show && causal == 0 {
                assert_close(&got, &none);
            }
            if !show {
                assert!(got.iter().all(|&v| v == 0.0), "{got:?}");
            }
        }
    }
    // Masks that do not broadcast to [1, 2, 3, 5] are refused, naming the shapes.
    let err = |dims: &[usize]| {
        let n = dims.iter().product();
        let t = Tensor::f32(dims.to_vec(), vec![0.0; n]);
        attention_with_mask(None, Some(t), vec![]).unwrap_err()
    };
    expect(err(&[1, 1, 1, 1, 5]), "attn_mask [1,1,1,1,5] has rank 5");
    expect(
        err(&[2, 1, 3, 5]),
        "attn_mask [2,1,3,5] does not broadcast to (batch, q_num_heads, q_sequence_length, total_sequence_length) [1,2,3,5]",
    );
    expect(err(&[1, 2, 4, 5]), "does not broadcast");
    expect(
        err(&[1, 2, 3, 6]),
        "attn_mask [1,2,3,6] is longer than the 5 keys",
    );
}

#[test]
fn conv_group_is_checked_not_wrapped() {
    let conv = |group: i64| {
        om::node(
            "Conv",
            "c",
            &["x", "w"],
            &["y"],
            vec![om::int("group", group)],
        )
    };
    let w = |dims: &[usize]| {
        let n = dims.iter().product();
        smelt::onnx::tensor_to_proto("w", &Tensor::f32(dims.to_vec(), vec![0.5; n]))
    };
    // 4 · (2^62 + 1) wraps to 4 = the input's channels, and 0 output channels divide by any
    // group: unchecked, a release build accepted this model and ran it to an empty output.
    let err = import_err(conv((1 << 62) + 1), &[1, 4, 5, 5], vec![w(&[0, 4, 1, 1])]);
    expect(err.clone(), "node 'c' (Conv)");
    expect(err, "with group 4611686018427387905");
    expect(
        import_err(conv(i64::MAX), &[1, 4, 5, 5], vec![w(&[4, 4, 3, 3])]),
        "with group 9223372036854775807",
    );
    expect(
        import_err(conv(0), &[1, 4, 5, 5], vec![w(&[4, 4, 3, 3])]),
        "group 0 must be positive",
    );
}

#[test]
fn shape_parameters_are_checked_not_wrapped() {
    // Negative sizes were clamped to 0 (a silently different model).
    expect(
        import_err(
            om::node("Expand", "e", &["x", "s"], &["y"], vec![]),
            &[1],
            vec![int_tensor("s", &[-1])],
        ),
        "negative dim in shape [-1]",
    );
    let split = om::node(
        "Split",
        "s",
        &["x"],
        &["a", "b"],
        vec![om::ints("split", &[-1, 5])],
    );
    expect(
        import_err(split, &[4], vec![]),
        "split sizes [-1, 5] must not be negative",
    );
    // The target type was truncated to 32 bits: 2^32 + 1 became FLOAT.
    let cast = om::node(
        "Cast",
        "c",
        &["x"],
        &["y"],
        vec![om::int("to", (1 << 32) + 1)],
    );
    expect(
        import_err(cast, &[2], vec![]),
        "unknown ONNX element type 4294967297",
    );
    // A Slice of a scalar indexed a dim it does not have.
    let m = om::model(
        vec![om::node("Slice", "s", &["d", "b", "e"], &["y"], vec![])],
        vec![],
        vec![om::value("y", 7, vec![])],
        vec![
            scalar_i64("d", 3),
            int_tensor("b", &[0]),
            int_tensor("e", &[1]),
        ],
        17,
    );
    let err = import_bytes(&om::bytes(&m), None, "m.onnx", &ImportOptions::default())
        .unwrap_err()
        .to_string();
    expect(err, "1 starts for an input of rank 0");
    expect(
        import_err(
            om::node("Slice", "s", &["x", "b", "e", "a"], &["y"], vec![]),
            &[4, 4],
            vec![
                int_tensor("b", &[0, 1]),
                int_tensor("e", &[2, 3]),
                int_tensor("a", &[0, -2]),
            ],
        ),
        "repeat an axis",
    );
    expect(
        import_err(
            om::node("Pad", "p", &["x", "pads"], &["y"], vec![]),
            &[4],
            vec![int_tensor("pads", &[i64::MIN, i64::MAX])],
        ),
        "beyond ±2^32",
    );
    // Causal attention over 2^32 queries and keys: the positional mask's size overflowed.
    let att = om::node(
        "Attention",
        "a",
        &["x", "k", "k"],
        &["y"],
        vec![om::int("is_causal", 1)],
    );
    let m = om::model(
        vec![att],
        vec![
            om::f32_value("x", &[1, 1, 1 << 32, 1]),
            om::f32_value("k", &[1, 1, 1 << 32, 1]),
        ],
        vec![om::value("y", 1, vec![])],
        vec![],
        23,
    );
    let err = std::panic::catch_unwind(|| {
        import_bytes(&om::bytes(&m), None, "m.onnx", &ImportOptions::default())
    })
    .expect("import panicked")
    .unwrap_err()
    .to_string();
    expect(err, "more than 2^32 elements");
}

#[test]
fn trilu_offsets_beyond_the_matrix_keep_all_or_nothing() {
    let trilu = |k: i64, upper: i64| {
        let m = om::model(
            vec![om::node(
                "Trilu",
                "t",
                &["x", "k"],
                &["y"],
                vec![om::int("upper", upper)],
            )],
            vec![om::f32_value("x", &[2, 3])],
            vec![om::value("y", 1, vec![])],
            vec![scalar_i64("k", k)],
            17,
        );
        let g = import_bytes(&om::bytes(&m), None, "m.onnx", &ImportOptions::default()).unwrap();
        let x = Tensor::f32([2, 3], vec![1.0; 6]);
        interp::run(&g, &HashMap::from([("x".to_string(), x)])).unwrap()[0]
            .1
            .to_f64()
    };
    assert_eq!(trilu(i64::MAX, 1), vec![0.0; 6]);
    assert_eq!(trilu(i64::MIN, 1), vec![1.0; 6]);
    assert_eq!(trilu(i64::MAX, 0), vec![1.0; 6]);
    assert_eq!(trilu(i64::MIN, 0), vec![0.0; 6]);
    assert_eq!(trilu(1, 1), vec![0.0, 1.0, 1.0, 0.0, 0.0, 1.0]);
}

#[test]
fn narrow_initializer_values_are_not_truncated() {
    // int8, uint8 and float16 initializers may hold their values in int32_data; one that
    // does not fit was truncated (300 became 44).
    for (code, v, dtype) in [(3, 300, "i8"), (2, -1, "u8"), (10, 1 << 20, "f16")] {
        let t = proto::TensorProto {
            name: Some("w".into()),
            dims: vec![1],
            data_type: Some(code),
            int32_data: vec![v],
            ..Default::default()
        };
        let m = om::model(
            vec![om::node("Identity", "i", &["w"], &["y"], vec![])],
            vec![],
            vec![om::value("y", code, vec![])],
            vec![t],
            17,
        );
        let err = import_bytes(&om::bytes(&m), None, "m.onnx", &ImportOptions::default())
            .unwrap_err()
            .to_string();
        expect(
            err,
            &format!("tensor 'w': int32_data value {v} does not fit {dtype}"),
        );
    }
}
