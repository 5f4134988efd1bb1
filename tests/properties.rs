//! Property tests: broadcasting against a direct definition, and the builder API and ONNX
//! import giving identical IR for the same random elementwise graph.

mod common;

use common::onnx_model as om;
use proptest::prelude::*;
use smelt::interp;
use smelt::ir::{broadcast_shapes, BinaryOp, DType, Graph, GraphBuilder, Op, UnaryOp};
use smelt::onnx::{import_bytes, ImportOptions};
use std::collections::HashMap;

/// Numpy broadcasting, stated directly: align from the right, missing dims are 1, each dim of
/// the result is the larger, and each operand's dim must be 1 or equal to it.
fn direct_broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let r = a.len().max(b.len());
    let dim = |s: &[usize], i: usize| {
        if i < r - s.len() {
            1
        } else {
            s[i - (r - s.len())]
        }
    };
    let out: Vec<usize> = (0..r).map(|i| dim(a, i).max(dim(b, i))).collect();
    let fits = |s: &[usize]| (0..r).all(|i| dim(s, i) == 1 || dim(s, i) == out[i]);
    (fits(a) && fits(b)).then_some(out)
}

fn shape() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..4, 0..4)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn broadcasting_matches_direct_definition(a in shape(), b in shape()) {
        prop_assert_eq!(broadcast_shapes(&a, &b), direct_broadcast(&a, &b));
    }

    /// The interpreter's broadcast Add reads, for every output index, the elements that the
    /// index projects to in each operand.
    #[test]
    fn broadcast_add_reads_the_projected_elements(base in prop::collection::vec(1usize..4, 1..4), mask_a in any::<u8>(), mask_b in any::<u8>(), drop in 0usize..2) {
        let derive = |mask: u8, drop: usize| -> Vec<usize> {
            base.iter().enumerate().skip(drop.min(base.len() - 1)).map(|(i, &d)| if mask >> i & 1 == 1 { 1 } else { d }).collect()
        };
        let (sa, sb) = (derive(mask_a, drop), derive(mask_b, 0));
        let out = broadcast_shapes(&sa, &sb).unwrap();
        let a = smelt::Tensor::random(DType::F32, &sa, 1);
        let b = smelt::Tensor::random(DType::F32, &sb, 2);
        let mut g = GraphBuilder::new();
        let x = g.input("a", DType::F32, &sa).unwrap();
        let y = g.input("b", DType::F32, &sb).unwrap();
        let s = g.add(x, y).unwrap();
        g.output("s", s).unwrap();
        let graph = g.build().unwrap();
        let res = interp::run(&graph, &HashMap::from([("a".into(), a.clone()), ("b".into(), b.clone())])).unwrap();
        let got = res[0].1.to_f64();
        let (av, bv) = (a.to_f64(), b.to_f64());
        let flat = |s: &[usize], idx: &[usize]| -> usize {
            let off = idx.len() - s.len();
            s.iter().enumerate().fold(0, |acc, (i, &d)| acc * d + if d == 1 { 0 } else { idx[i + off] })
        };
        for (k, &value) in got.iter().enumerate() {
            let mut idx = vec![0; out.len()];
            let mut rem = k;
            for d in (0..out.len()).rev() { idx[d] = rem % out[d]; rem /= out[d]; }
            let want = (av[flat(&sa, &idx)] as f32 + bv[flat(&sb, &idx)] as f32) as f64;
            prop_assert_eq!(value, want);
        }
    }

    #[test]
    fn builder_and_onnx_import_agree(spec in graph_spec()) {
        let built = build_with_api(&spec);
        let imported = import_bytes(&om::bytes(&to_onnx(&spec)), None, "random.onnx", &ImportOptions::default()).unwrap();
        prop_assert_eq!(built.to_string(), imported.to_string());
        prop_assert_eq!(&built, &imported);
    }
}

/// A random elementwise graph: input shapes derived from one base shape, then ops on earlier values.
#[derive(Debug, Clone)]
struct Spec {
    inputs: Vec<Vec<usize>>,
    /// (op index, operand a, operand b); unary ops ignore b.
    ops: Vec<(usize, usize, usize)>,
}

const UNARY: [(&str, UnaryOp); 6] = [
    ("Relu", UnaryOp::Relu),
    ("Exp", UnaryOp::Exp),
    ("Tanh", UnaryOp::Tanh),
    ("Neg", UnaryOp::Neg),
    ("Sigmoid", UnaryOp::Sigmoid),
    ("Abs", UnaryOp::Abs),
];
const BINARY: [(&str, BinaryOp); 6] = [
    ("Add", BinaryOp::Add),
    ("Sub", BinaryOp::Sub),
    ("Mul", BinaryOp::Mul),
    ("Div", BinaryOp::Div),
    ("Max", BinaryOp::Max),
    ("Min", BinaryOp::Min),
];

fn graph_spec() -> impl Strategy<Value = Spec> {
    (
        prop::collection::vec(1usize..5, 1..4),
        prop::collection::vec(any::<u8>(), 1..4),
        prop::collection::vec((0usize..12, any::<usize>(), any::<usize>()), 1..10),
    )
        .prop_map(|(base, masks, raw)| {
            let inputs: Vec<Vec<usize>> = masks
                .iter()
                .map(|m| {
                    base.iter()
                        .enumerate()
                        .map(|(i, &d)| if m >> i & 1 == 1 { 1 } else { d })
                        .collect()
                })
                .collect();
            let mut ops = Vec::new();
            for (k, (op, a, b)) in raw.into_iter().enumerate() {
                let avail = inputs.len() + k;
                ops.push((op, a % avail, b % avail));
            }
            Spec { inputs, ops }
        })
}

fn build_with_api(spec: &Spec) -> Graph {
    let mut g = GraphBuilder::new();
    let mut vals = Vec::new();
    for (i, s) in spec.inputs.iter().enumerate() {
        vals.push(g.input(&format!("in{i}"), DType::F32, s).unwrap());
    }
    for (k, &(op, a, b)) in spec.ops.iter().enumerate() {
        let name = format!("v{k}");
        let v = if op < 6 {
            g.add_named(&name, Op::Unary(UNARY[op].1), &[vals[a]])
                .unwrap()
        } else {
            g.add_named(&name, Op::Binary(BINARY[op - 6].1), &[vals[a], vals[b]])
                .unwrap()
        };
        vals.push(v);
    }
    for (name, v) in outputs(spec) {
        g.output(&name, vals[v]).unwrap();
    }
    g.build().unwrap()
}

/// Every op result that nothing else uses is an output, so nothing is pruned.
fn outputs(spec: &Spec) -> Vec<(String, usize)> {
    let n_in = spec.inputs.len();
    let mut used = vec![false; n_in + spec.ops.len()];
    for &(op, a, b) in &spec.ops {
        used[a] = true;
        if op >= 6 {
            used[b] = true;
        }
    }
    (0..spec.ops.len())
        .filter(|k| !used[n_in + k])
        .map(|k| (format!("v{k}"), n_in + k))
        .collect()
}

fn to_onnx(spec: &Spec) -> smelt::onnx::proto::ModelProto {
    let n_in = spec.inputs.len();
    let name_of = |v: usize| {
        if v < n_in {
            format!("in{v}")
        } else {
            format!("v{}", v - n_in)
        }
    };
    let mut nodes = Vec::new();
    for (k, &(op, a, b)) in spec.ops.iter().enumerate() {
        let out = format!("v{k}");
        let node = if op < 6 {
            om::node(
                UNARY[op].0,
                &format!("n{k}"),
                &[&name_of(a)],
                &[&out],
                vec![],
            )
        } else {
            om::node(
                BINARY[op - 6].0,
                &format!("n{k}"),
                &[&name_of(a), &name_of(b)],
                &[&out],
                vec![],
            )
        };
        nodes.push(node);
    }
    let inputs = spec
        .inputs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            om::f32_value(
                &format!("in{i}"),
                &s.iter().map(|&d| d as i64).collect::<Vec<_>>(),
            )
        })
        .collect();
    let outs = outputs(spec)
        .into_iter()
        .map(|(n, _)| om::value(&n, 1, vec![]))
        .collect();
    om::model(nodes, inputs, outs, vec![], 17)
}

#[test]
fn random_tensors_are_never_all_zero() {
    let t = smelt::Tensor::random(DType::F32, &[64], 3);
    assert!(t.to_f64().iter().any(|&v| v != 0.0));
}
