//! The IR's contracts: errors that name node, op and shapes; validation that reports every
//! problem; a stable text form; serde round trips.

use smelt_compiler::ir::{DType, Graph, GraphBuilder, Node, Op, ReduceKind, Tensor, TensorType};
use smelt_compiler::Error;
use std::sync::Arc;

fn mlp() -> Graph {
    let mut g = GraphBuilder::new();
    let x = g.input("x", DType::F32, &[2, 3]).unwrap();
    let w = g.constant(Tensor::f32(
        [3, 4],
        (0..12).map(|i| i as f32 * 0.1).collect(),
    ));
    let b = g.constant(Tensor::f32([4], vec![0.5; 4]));
    let h = g.matmul(x, w).unwrap();
    let h = g.add(h, b).unwrap();
    let y = g.gelu(h).unwrap();
    let s = g.softmax(y, -1).unwrap();
    let m = g.reduce(ReduceKind::Mean, s, &[-1], true).unwrap();
    g.output("y", y).unwrap();
    g.output("m", m).unwrap();
    g.build().unwrap()
}

#[test]
fn builder_errors_name_op_and_shapes() {
    let mut g = GraphBuilder::new();
    let a = g.input("a", DType::F32, &[2, 3]).unwrap();
    let b = g.input("b", DType::F32, &[4, 5]).unwrap();
    let err = g.matmul(a, b).unwrap_err().to_string();
    assert!(err.contains("matmul"), "{err}");
    assert!(err.contains("[2,3]") && err.contains("[4,5]"), "{err}");
    let c = g.input("c", DType::I64, &[2, 3]).unwrap();
    let err = g.add(a, c).unwrap_err().to_string();
    assert!(err.contains("dtypes differ: f32 and i64"), "{err}");
    let err = g.reshape(a, &[4, 2]).unwrap_err().to_string();
    assert!(
        err.contains("cannot reshape [2,3] (6 elements) to [4,2]"),
        "{err}"
    );
    let err = g.softmax(a, 2).unwrap_err().to_string();
    assert!(err.contains("axis 2 out of range for rank 2"), "{err}");
    assert!(
        g.input("a", DType::F32, &[1]).is_err(),
        "duplicate input name"
    );
}

#[test]
fn validate_reports_every_problem() {
    let mut g = mlp();
    // Break three things: a wrong declared type, a forward reference, and a duplicate name.
    let last = g.nodes.len() - 1;
    g.nodes[last].ty = TensorType::new(DType::F32, vec![7]);
    g.nodes[2].inputs = vec![last];
    let dup = g.nodes[1].name.clone();
    g.nodes[3].name = dup;
    let Err(Error::Invalid(problems)) = g.validate() else {
        panic!("expected Invalid");
    };
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert!(
        problems.iter().any(|p| p.contains("declared type f32[7]")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("not defined before")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("duplicate name")),
        "{problems:?}"
    );
}

#[test]
fn validate_catches_bad_op_inputs() {
    let mut g = mlp();
    g.nodes.push(Node {
        name: "bad".into(),
        op: Op::Transpose(vec![0, 0]),
        inputs: vec![0],
        ty: TensorType::new(DType::F32, vec![2, 2]),
    });
    let err = g.validate().unwrap_err().to_string();
    assert!(
        err.contains(
            "node 'bad' (transpose): perm [0, 0] is not a permutation of rank 2 (inputs: f32[2,3])"
        ),
        "{err}"
    );
}

#[test]
fn text_form_is_stable() {
    let text = mlp().to_string();
    let want = r#"graph(%x: f32[2,3]) {
  %constant_0 = constant[<12 values>]() : f32[3,4]
  %constant_1 = constant[[0.5,0.5,0.5,0.5]]() : f32[4]
  %matmul_0 = matmul(%x, %constant_0) : f32[2,4]
  %add_0 = add(%matmul_0, %constant_1) : f32[2,4]
  %gelu_0 = gelu(%add_0) : f32[2,4]
  %softmax_0 = softmax[axis=1](%gelu_0) : f32[2,4]
  %reduce_mean_0 = reduce_mean[axes=[1], keepdims=true](%softmax_0) : f32[2,1]
  return %gelu_0 as "y", %reduce_mean_0 as "m"
}"#;
    assert_eq!(text, want);
}

#[test]
fn serde_round_trip() {
    let g = mlp();
    let json = serde_json::to_string(&g).unwrap();
    let back: Graph = serde_json::from_str(&json).unwrap();
    assert_eq!(g, back);
    assert_eq!(g.to_string(), back.to_string());
}

#[test]
fn constants_hash_by_bits() {
    use std::collections::HashSet;
    let a = Op::Constant(Arc::new(Tensor::f32([2], vec![f32::NAN, 1.0])));
    let b = Op::Constant(Arc::new(Tensor::f32([2], vec![f32::NAN, 1.0])));
    let c = Op::Constant(Arc::new(Tensor::f32([2], vec![-0.0, 1.0])));
    let d = Op::Constant(Arc::new(Tensor::f32([2], vec![0.0, 1.0])));
    assert_eq!(a, b);
    assert_ne!(c, d);
    let set: HashSet<Op> = [a, b, c, d].into_iter().collect();
    assert_eq!(set.len(), 3);
}
