//! Run-time indices (Gather, GatherElements, GatherND, ScatterND: token ids, positions) are
//! checked where they are read: an index outside its dim fails the run with an error naming
//! the node and the index, the same on the reference interpreter, the kernel-IR interpreter
//! (the GPU program and the CPU program) and the C backend, and nothing outside a tensor is
//! read. In-range indices, negative ones included, give the reference's results. Constant
//! indices are checked when the graph is built or imported.

mod common;

use common::onnx_model as om;
use smelt::ir::{DType, Op, ScatterReduction};
use smelt::kernel::interp::{self as kinterp, Products};
use smelt::kernel::Target;
use smelt::optimize::Options;
use smelt::{interp, Device, Graph, GraphBuilder, Session, SessionOptions, Tensor};
use std::collections::HashMap;

/// One executor's outputs, or its error's text.
type Outcome = Result<Vec<(String, Tensor)>, String>;

/// Every executor's result on `inputs`.
fn every_executor(g: &Graph, inputs: &HashMap<String, Tensor>) -> Vec<(String, Outcome)> {
    let mut runs = vec![(
        "reference".to_string(),
        interp::run(g, inputs).map_err(|e| e.to_string()),
    )];
    for fuse in [true, false] {
        let opts = Options {
            fuse,
            ..Options::default()
        };
        let gpu = smelt::compile(g, &opts).expect("compiles");
        let cpu = gpu.retarget(Target::Cpu).expect("retargets");
        for (what, c) in [("gpu program", &gpu), ("cpu program", &cpu)] {
            runs.push((
                format!("kernel-IR interpreter, {what}, fuse {fuse}"),
                kinterp::run_with(&c.program, inputs, Products::Kernels).map_err(|e| e.to_string()),
            ));
        }
        let session = Session::with_options(
            g.clone(),
            Device::Cpu,
            &SessionOptions {
                optimize: opts,
                ..SessionOptions::default()
            },
        )
        .expect("C backend session");
        // Twice: a fault is reported by the run that made it, and the next run starts clean.
        for rep in 0..2 {
            runs.push((
                format!("C backend, fuse {fuse}, run {rep}"),
                session.run(inputs).map_err(|e| e.to_string()),
            ));
        }
    }
    runs
}

/// Every executor fails, each error naming the node and the bad index.
fn all_refuse(g: &Graph, inputs: &HashMap<String, Tensor>, node: &str, index: i64) {
    let needle = format!("index {index} out of range");
    for (what, r) in every_executor(g, inputs) {
        match r {
            Ok(_) => panic!("{what}: ran an out-of-range index {index}"),
            Err(e) => assert!(
                e.contains(&format!("node '{node}'")) && e.contains(&needle),
                "{what}: the error should name node '{node}' and {needle:?}: {e}"
            ),
        }
    }
}

/// Every executor gives the reference's outputs.
fn all_agree(g: &Graph, inputs: &HashMap<String, Tensor>) {
    let want = interp::run(g, inputs).expect("reference");
    for (what, r) in every_executor(g, inputs) {
        let got = r.unwrap_or_else(|e| panic!("{what}: {e}"));
        for ((n, w), (_, v)) in want.iter().zip(&got) {
            common::compare(v, w, 1e-5, 1e-6).unwrap_or_else(|e| panic!("{what}, {n}: {e}"));
        }
    }
}

fn with_ids(g: &Graph, name: &str, ids: Tensor) -> HashMap<String, Tensor> {
    let mut inputs = g.random_inputs(3);
    inputs.insert(name.into(), ids);
    inputs
}

/// An embedding lookup fused with what follows it: `relu(table[ids] * 2 + 1)`.
fn embedding(vocab: usize, hidden: usize, tokens: usize) -> Graph {
    let mut b = GraphBuilder::new();
    let table = b.input("table", DType::F32, &[vocab, hidden]).unwrap();
    let ids = b.input("ids", DType::I64, &[1, tokens]).unwrap();
    let e = b
        .add_named("embed", Op::Gather { axis: 0 }, &[table, ids])
        .unwrap();
    let two = b.scalar(DType::F32, 2.0);
    let one = b.scalar(DType::F32, 1.0);
    let y = b.mul(e, two).unwrap();
    let y = b.add(y, one).unwrap();
    let y = b.unary(smelt::ir::UnaryOp::Relu, y).unwrap();
    b.output("y", y).unwrap();
    b.build().unwrap()
}

#[test]
fn token_ids_out_of_range_fail_the_run() {
    let g = embedding(3, 8, 2);
    all_refuse(
        &g,
        &with_ids(&g, "ids", Tensor::i64([1, 2], vec![7, 0])),
        "embed",
        7,
    );
    all_refuse(
        &g,
        &with_ids(&g, "ids", Tensor::i64([1, 2], vec![1, -9])),
        "embed",
        -9,
    );
    all_refuse(
        &g,
        &with_ids(&g, "ids", Tensor::i64([1, 2], vec![0, 3])),
        "embed",
        3,
    );
    all_refuse(
        &g,
        &with_ids(&g, "ids", Tensor::i64([1, 2], vec![0, -4])),
        "embed",
        -4,
    );
    // Far outside: would be a segfault if it were read.
    all_refuse(
        &g,
        &with_ids(&g, "ids", Tensor::i64([1, 2], vec![1 << 40, 0])),
        "embed",
        1 << 40,
    );
    all_refuse(
        &g,
        &with_ids(&g, "ids", Tensor::i64([1, 2], vec![i64::MIN, 0])),
        "embed",
        i64::MIN,
    );
    all_refuse(
        &g,
        &with_ids(&g, "ids", Tensor::i64([1, 2], vec![0, i64::MAX])),
        "embed",
        i64::MAX,
    );
    // The edges of the valid range, negative ones included.
    all_agree(&g, &with_ids(&g, "ids", Tensor::i64([1, 2], vec![2, -3])));
    all_agree(&g, &with_ids(&g, "ids", Tensor::i64([1, 2], vec![-1, 0])));
}

#[test]
fn a_gather_on_an_inner_axis_with_i32_indices() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, &[2, 5, 3]).unwrap();
    let i = b.input("i", DType::I32, &[4]).unwrap();
    let y = b
        .add_named("pick", Op::Gather { axis: 1 }, &[x, i])
        .unwrap();
    b.output("y", y).unwrap();
    let g = b.build().unwrap();
    all_refuse(
        &g,
        &with_ids(
            &g,
            "i",
            Tensor::new([4], smelt::ir::Data::I32(vec![0, 4, 5, 1])).unwrap(),
        ),
        "pick",
        5,
    );
    all_agree(
        &g,
        &with_ids(
            &g,
            "i",
            Tensor::new([4], smelt::ir::Data::I32(vec![0, 4, -5, -1])).unwrap(),
        ),
    );
}

#[test]
fn gather_elements_indices_are_checked() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, &[3, 4]).unwrap();
    let i = b.input("i", DType::I64, &[3, 2]).unwrap();
    let y = b
        .add_named("ge", Op::GatherElements { axis: 1 }, &[x, i])
        .unwrap();
    b.output("y", y).unwrap();
    let g = b.build().unwrap();
    let ids = |v: Vec<i64>| with_ids(&g, "i", Tensor::i64([3, 2], v));
    all_refuse(&g, &ids(vec![0, 1, 2, 3, 4, 0]), "ge", 4);
    all_refuse(&g, &ids(vec![0, 1, -5, 3, 0, 0]), "ge", -5);
    all_agree(&g, &ids(vec![0, 1, -4, 3, -1, 2]));
}

#[test]
fn gather_nd_indices_are_checked() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, &[2, 3, 4]).unwrap();
    let i = b.input("i", DType::I64, &[2, 2]).unwrap();
    let y = b
        .add_named("gnd", Op::GatherND { batch_dims: 0 }, &[x, i])
        .unwrap();
    b.output("y", y).unwrap();
    let g = b.build().unwrap();
    let ids = |v: Vec<i64>| with_ids(&g, "i", Tensor::i64([2, 2], v));
    // The second coordinate addresses dim 1 (size 3).
    all_refuse(&g, &ids(vec![0, 3, 1, 0]), "gnd", 3);
    all_refuse(&g, &ids(vec![0, 1, 2, 0]), "gnd", 2);
    all_agree(&g, &ids(vec![-1, 2, 1, -3]));
}

#[test]
fn scatter_nd_indices_are_checked() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, &[4, 3]).unwrap();
    let i = b.input("i", DType::I64, &[2, 1]).unwrap();
    let u = b.input("u", DType::F32, &[2, 3]).unwrap();
    let y = b
        .add_named(
            "snd",
            Op::ScatterND {
                reduction: ScatterReduction::Add,
            },
            &[x, i, u],
        )
        .unwrap();
    b.output("y", y).unwrap();
    let g = b.build().unwrap();
    let ids = |v: Vec<i64>| with_ids(&g, "i", Tensor::i64([2, 1], v));
    // Out of range, an update used to vanish without a word.
    all_refuse(&g, &ids(vec![1, 4]), "snd", 4);
    all_agree(&g, &ids(vec![1, -1]));
}

#[test]
fn constant_indices_out_of_range_are_refused_when_built() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, &[2, 3]).unwrap();
    let i = b.constant(Tensor::i64([2], vec![1, 7]));
    let y = b.add_named("g", Op::Gather { axis: 1 }, &[x, i]).unwrap();
    b.output("y", y).unwrap();
    let e = b.build().expect_err("index 7 on an axis of 3").to_string();
    assert!(
        e.contains("node 'g'") && e.contains("index 7 out of range for axis 1 of size 3"),
        "{e}"
    );
}

#[test]
fn constant_indices_out_of_range_are_refused_at_import() {
    let node = om::node("Gather", "g", &["x", "i"], &["y"], vec![om::int("axis", 1)]);
    let m = om::model(
        vec![node],
        vec![om::f32_value("x", &[2, 3])],
        vec![om::f32_value("y", &[2, 2])],
        vec![smelt::onnx::tensor_to_proto(
            "i",
            &Tensor::i64([2], vec![-4, 0]),
        )],
        17,
    );
    let e = smelt::onnx::import_bytes(
        &om::bytes(&m),
        None,
        "m.onnx",
        &smelt::onnx::ImportOptions::default(),
    )
    .expect_err("index -4 on an axis of 3")
    .to_string();
    assert!(
        e.contains("node 'y'") && e.contains("index -4 out of range for axis 1 of size 3"),
        "{e}"
    );
}

#[test]
fn run_time_indices_into_an_empty_dim_are_refused_when_built() {
    let mut b = GraphBuilder::new();
    let x = b.input("x", DType::F32, &[0, 3]).unwrap();
    let i = b.input("i", DType::I64, &[2]).unwrap();
    let y = b.add_named("g", Op::Gather { axis: 0 }, &[x, i]).unwrap();
    b.output("y", y).unwrap();
    // Two rows of an empty table: whatever the ids are, none can be in range.
    let e = b.build().expect_err("no index can be in range").to_string();
    assert!(e.contains("node 'g'") && e.contains("dim of size 0"), "{e}");
}
