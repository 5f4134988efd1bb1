//! One positive and one negative case per rewrite rule: the rule fires (and the result keeps
//! its meaning, checked by the interpreter) or must not fire.

use smelt_compiler::interp;
use smelt_compiler::ir::{
    BinaryOp, DType, Graph, GraphBuilder, Op, ReduceKind, Tensor, UnaryOp, Value,
};
use smelt_compiler::optimize::{optimize, Options};
use std::collections::HashMap;

type Build = fn(&mut GraphBuilder, Value) -> Value;

fn graph(shape: &[usize], f: Build) -> Graph {
    let mut g = GraphBuilder::new();
    let x = g.input("x", DType::F32, shape).unwrap();
    let y = f(&mut g, x);
    g.output("y", y).unwrap();
    g.build().unwrap()
}

/// Optimizes, checks the interpreter agrees, and says whether `rule` fired.
fn fires_with(shape: &[usize], f: Build, rule: &str, fast_math: bool) -> bool {
    let g = graph(shape, f);
    let opts = Options {
        fast_math,
        ..Options::default()
    };
    let (opt, report) = optimize(&g, &opts).unwrap();
    let n: usize = shape.iter().product();
    let x = Tensor::f32(
        shape.to_vec(),
        (0..n)
            .map(|i| (i as f32 * 0.37).sin() * 1.7 + 0.1)
            .collect(),
    );
    let feeds = HashMap::from([("x".to_string(), x)]);
    let (a, b) = (
        interp::run(&g, &feeds).unwrap(),
        interp::run(&opt, &feeds).unwrap(),
    );
    for (p, q) in a[0].1.to_f64().iter().zip(b[0].1.to_f64()) {
        assert!(
            (p.is_finite() && (p - q).abs() <= 1e-5 + 1e-4 * p.abs()),
            "{rule}: {p} vs {q}\n{g}\n{opt}"
        );
    }
    report.rules_fired.contains_key(rule)
}

fn fires(shape: &[usize], f: Build, rule: &str) -> bool {
    fires_with(shape, f, rule, false)
}

fn c(g: &mut GraphBuilder, v: f64) -> Value {
    g.scalar(DType::F32, v)
}

macro_rules! rule_test {
    ($name:ident, $rule:literal, $shape:expr, pos: $pos:expr, neg: $neg:expr) => {
        #[test]
        fn $name() {
            assert!(fires(&$shape, $pos, $rule), "{} should fire", $rule);
            assert!(!fires(&$shape, $neg, $rule), "{} must not fire", $rule);
        }
    };
}

rule_test!(mul_by_one, "mul-by-one", [2, 3],
    pos: |g, x| { let k = c(g, 1.0); g.mul(k, x).unwrap() },
    neg: |g, x| { let k = g.constant(Tensor::f32([4, 2, 3], vec![1.0; 24])); g.mul(x, k).unwrap() });
rule_test!(add_zero, "add-zero", [2, 3],
    pos: |g, x| { let k = c(g, 0.0); g.add(x, k).unwrap() },
    neg: |g, x| { let k = c(g, 1e-30); g.add(x, k).unwrap() });
rule_test!(sub_zero, "sub-zero", [3],
    pos: |g, x| { let k = c(g, 0.0); g.sub(x, k).unwrap() },
    neg: |g, x| { let k = c(g, 0.0); g.sub(k, x).unwrap() });
rule_test!(div_by_one, "div-by-one", [3],
    pos: |g, x| { let k = c(g, 1.0); g.div(x, k).unwrap() },
    neg: |g, x| { let k = c(g, 1.0); g.div(k, x).unwrap() });
rule_test!(pow_one, "pow-one", [3],
    pos: |g, x| { let k = c(g, 1.0); g.pow(x, k).unwrap() },
    neg: |g, x| { let k = c(g, 2.0); g.pow(x, k).unwrap() });
rule_test!(neg_neg, "neg-neg", [3],
    pos: |g, x| { let n = g.neg(x).unwrap(); g.neg(n).unwrap() },
    neg: |g, x| { let n = g.unary(UnaryOp::Abs, x).unwrap(); g.neg(n).unwrap() });
rule_test!(cast_to_same_type, "cast-to-same-type", [3],
    pos: |g, x| g.cast(x, DType::F32).unwrap(),
    neg: |g, x| { let h = g.cast(x, DType::F16).unwrap(); g.cast(h, DType::F32).unwrap() });
rule_test!(identity_view, "identity-view", [2, 3],
    pos: |g, x| { let t = g.transpose(x, &[0, 1]).unwrap(); g.reshape(t, &[2, 3]).unwrap() },
    neg: |g, x| g.transpose(x, &[1, 0]).unwrap());
rule_test!(transpose_of_transpose, "transpose-of-transpose", [2, 3, 4],
    pos: |g, x| { let t = g.transpose(x, &[1, 2, 0]).unwrap(); g.transpose(t, &[1, 0, 2]).unwrap() },
    neg: |g, x| { let r = g.reshape(x, &[3, 2, 4]).unwrap(); g.transpose(r, &[1, 0, 2]).unwrap() });
rule_test!(reshape_of_reshape, "reshape-of-reshape", [2, 3, 4],
    pos: |g, x| { let r = g.reshape(x, &[6, 4]).unwrap(); g.reshape(r, &[4, 6]).unwrap() },
    neg: |g, x| { let t = g.transpose(x, &[2, 1, 0]).unwrap(); g.reshape(t, &[4, 6]).unwrap() });
rule_test!(broadcast_of_broadcast, "broadcast-of-broadcast", [3],
    pos: |g, x| { let b = g.op(Op::Broadcast(vec![2, 3]), &[x]).unwrap(); g.op(Op::Broadcast(vec![4, 2, 3]), &[b]).unwrap() },
    neg: |g, x| { let r = g.reshape(x, &[3, 1]).unwrap(); g.op(Op::Broadcast(vec![3, 2]), &[r]).unwrap() });
rule_test!(rule_gelu_erf, "gelu-erf", [2, 8],
    pos: |g, x| gelu_erf(g, x, 0.5),
    neg: |g, x| gelu_erf(g, x, 0.6));
rule_test!(rule_gelu_tanh, "gelu-tanh", [2, 8],
    pos: |g, x| gelu_tanh(g, x, 0.044715),
    neg: |g, x| gelu_tanh(g, x, 0.05));
rule_test!(rule_layernorm_decomposed, "layernorm-decomposed", [2, 3, 8],
    pos: |g, x| layernorm(g, x, -1),
    neg: |g, x| layernorm(g, x, 0));
rule_test!(layernorm_scale, "layernorm-scale", [2, 8],
    pos: |g, x| { let n = layernorm(g, x, -1); let s = g.constant(Tensor::f32([8], (0..8).map(|i| i as f32).collect())); g.mul(n, s).unwrap() },
    neg: |g, x| { let n = layernorm(g, x, -1); let s = g.constant(Tensor::f32([2, 1], vec![2.0, 3.0])); g.mul(n, s).unwrap() });
rule_test!(layernorm_bias, "layernorm-bias", [2, 8],
    pos: |g, x| { let s = g.constant(Tensor::f32([8], vec![2.0; 8])); let n = g.layer_norm(x, s, None, -1, 1e-5).unwrap(); let b = c(g, 0.5); g.add(n, b).unwrap() },
    neg: |g, x| { let s = g.constant(Tensor::f32([8], vec![2.0; 8])); let n = g.layer_norm(x, s, Some(s), -1, 1e-5).unwrap(); let b = c(g, 0.5); g.add(n, b).unwrap() });

fn gelu_erf(g: &mut GraphBuilder, x: Value, half: f64) -> Value {
    let s2 = c(g, std::f64::consts::SQRT_2);
    let (one, h) = (c(g, 1.0), c(g, half));
    let d = g.div(x, s2).unwrap();
    let e = g.unary(UnaryOp::Erf, d).unwrap();
    let p = g.add(one, e).unwrap();
    let m = g.mul(h, x).unwrap();
    g.mul(m, p).unwrap()
}

fn gelu_tanh(g: &mut GraphBuilder, x: Value, coef: f64) -> Value {
    let k = c(g, (2.0 / std::f64::consts::PI).sqrt());
    let (cc, one, h) = (c(g, coef), c(g, 1.0), c(g, 0.5));
    let x2 = g.mul(x, x).unwrap();
    let x3 = g.mul(x2, x).unwrap();
    let t = g.mul(x3, cc).unwrap();
    let s = g.add(t, x).unwrap();
    let u = g.mul(s, k).unwrap();
    let th = g.tanh(u).unwrap();
    let p = g.add(th, one).unwrap();
    let m = g.mul(x, p).unwrap();
    g.mul(m, h).unwrap()
}

fn layernorm(g: &mut GraphBuilder, x: Value, axis: i64) -> Value {
    let m = g.reduce(ReduceKind::Mean, x, &[axis], true).unwrap();
    let d = g.sub(x, m).unwrap();
    let sq = g.mul(d, d).unwrap();
    let v = g.reduce(ReduceKind::Mean, sq, &[axis], true).unwrap();
    let e = c(g, 1e-5);
    let ve = g.add(e, v).unwrap();
    let s = g.sqrt(ve).unwrap();
    g.div(d, s).unwrap()
}

#[test]
fn fast_math_rules_fire_only_when_asked() {
    let mul_zero: Build = |g, x| {
        let z = c(g, 0.0);
        g.mul(x, z).unwrap()
    };
    assert!(!fires_with(&[3], mul_zero, "mul-by-zero", false));
    assert!(fires_with(&[3], mul_zero, "mul-by-zero", true));
    let sub_self: Build = |g, x| g.sub(x, x).unwrap();
    assert!(fires_with(&[3], sub_self, "sub-self", true));
    let sub_other: Build = |g, x| {
        let e = g.exp(x).unwrap();
        g.sub(x, e).unwrap()
    };
    assert!(!fires_with(&[3], sub_other, "sub-self", true));
    let assoc: Build = |g, x| {
        let e = g.exp(x).unwrap();
        let s = g.add(x, e).unwrap();
        g.add(s, x).unwrap()
    };
    assert!(!fires_with(&[3], assoc, "reassociate-add", false));
    assert!(fires_with(&[3], assoc, "reassociate-add", true));
    let mul_chain: Build = |g, x| {
        let e = g.exp(x).unwrap();
        let m = g.mul(x, e).unwrap();
        g.mul(m, x).unwrap()
    };
    assert!(!fires_with(&[3], mul_chain, "reassociate-mul", false));
    assert!(fires_with(&[3], mul_chain, "reassociate-mul", true));
    let mixed: Build = |g, x| {
        let e = g.exp(x).unwrap();
        let s = g.add(x, e).unwrap();
        g.mul(s, x).unwrap()
    };
    assert!(!fires_with(&[3], mixed, "reassociate-mul", true));
}

#[test]
fn constants_fold_and_dead_nodes_go() {
    let mut g = GraphBuilder::new();
    let x = g.input("x", DType::F32, &[4]).unwrap();
    let a = g.constant(Tensor::f32([4], vec![1.0, 2.0, 3.0, 4.0]));
    let b = g.constant(Tensor::f32([4], vec![0.5; 4]));
    let ab = g.mul(a, b).unwrap();
    let ab2 = g.add(ab, b).unwrap();
    let _dead = g.exp(x).unwrap();
    let y = g.add(x, ab2).unwrap();
    // The same expression twice is computed once (CSE).
    let y2 = g.add(x, ab2).unwrap();
    let z = g.mul(y, y2).unwrap();
    g.output("z", z).unwrap();
    // Unfused, so the folded constant and the shared add are visible as nodes.
    let unfused = Options {
        fuse: false,
        ..Options::default()
    };
    let (opt, report) = optimize(&g.build().unwrap(), &unfused).unwrap();
    let ops: Vec<String> = opt.nodes.iter().map(|n| n.op.name()).collect();
    assert_eq!(ops, ["input", "constant", "add", "mul"], "{opt}");
    assert!(report.folded >= 2);
    let Op::Constant(t) = &opt.nodes[1].op else {
        panic!()
    };
    assert_eq!(t.to_f64(), vec![1.0, 1.5, 2.0, 2.5]);
    assert_eq!(opt.nodes[3].op, Op::Binary(BinaryOp::Mul));
    assert_eq!(opt.nodes[3].inputs, vec![2, 2]);
}

#[test]
fn limits_degrade_but_never_fail() {
    let mut g = GraphBuilder::new();
    let x = g.input("x", DType::F32, &[8]).unwrap();
    let mut v = x;
    for i in 0..40 {
        let k = c(&mut g, 1.0 + i as f64);
        v = g.add(v, k).unwrap();
        v = g.add(v, x).unwrap();
    }
    g.output("y", v).unwrap();
    let graph = g.build().unwrap();
    let opts = Options {
        fast_math: true,
        node_limit: 200,
        iter_limit: 3,
        ..Options::default()
    };
    let (opt, report) = optimize(&graph, &opts).unwrap();
    opt.validate().unwrap();
    assert!(
        report.stop_reason.contains("Limit"),
        "{}",
        report.stop_reason
    );
}

rule_test!(fuse_producer, "fuse-producer", [4, 8],
    pos: |g, x| { let e = g.exp(x).unwrap(); g.relu(e).unwrap() },
    // A reduction over a leading axis is no row of the consumer's kernel: nothing fuses.
    neg: |g, x| { let r = g.reduce(ReduceKind::Sum, x, &[0], true).unwrap(); g.exp(r).unwrap() });

rule_test!(fuse_attention, "fuse-attention", [8, 4],
pos: |g, x| {
    let t = g.transpose(x, &[1, 0]).unwrap();
    let s = g.matmul(x, t).unwrap();
    let p = g.softmax(s, -1).unwrap();
    g.matmul(p, x).unwrap()
},
// Softmax over the first axis is not attention's row.
neg: |g, x| {
    let t = g.transpose(x, &[1, 0]).unwrap();
    let s = g.matmul(x, t).unwrap();
    let p = g.softmax(s, 0).unwrap();
    g.matmul(p, x).unwrap()
});

#[test]
fn fused_kernels_say_what_they_are() {
    use smelt_compiler::ir::KernelKind;
    let kinds = |f: Build| -> Vec<KernelKind> {
        let (opt, _) = optimize(&graph(&[4, 8], f), &Options::default()).unwrap();
        opt.nodes
            .iter()
            .filter_map(|n| match &n.op {
                Op::Fused(k) => Some(k.kind),
                _ => None,
            })
            .collect()
    };
    assert_eq!(
        kinds(|g, x| {
            let e = g.exp(x).unwrap();
            g.tanh(e).unwrap()
        }),
        [KernelKind::Elementwise]
    );
    assert_eq!(
        kinds(|g, x| {
            let e = g.exp(x).unwrap();
            g.softmax(e, -1).unwrap()
        }),
        [KernelKind::Row { axis: 1 }]
    );
    assert_eq!(
        kinds(|g, x| {
            let w = g.constant(Tensor::f32([8, 8], vec![0.1; 64]));
            let m = g.matmul(x, w).unwrap();
            g.relu(m).unwrap()
        }),
        [KernelKind::Gemm]
    );
}

rule_test!(gather_constant_range, "gather-constant-range", [3, 4],
    pos: |g, x| { let i = g.constant(Tensor::i64([], vec![-2])); g.op(Op::Gather { axis: 0 }, &[x, i]).unwrap() },
    neg: |g, x| { let i = g.constant(Tensor::i64([2], vec![2, 0])); g.op(Op::Gather { axis: 0 }, &[x, i]).unwrap() });
