//! The optimizer against the oracle: on random graphs that mix elementwise ops, broadcasts,
//! reductions, matmuls, views, softmax, layernorm, constants and the decomposed patterns the
//! recognizers look for, the reference interpreter gives the same outputs before and after
//! optimization (rtol 1e-4, atol 1e-5; the recognizers reorder rounding), the optimized graph
//! validates, every rule fires somewhere across the cases, and the optimized graph lowered to
//! the kernel IR (fused and unfused) gives the same outputs when the kernel-IR interpreter
//! runs it, also with the products that have a cuBLASLt form made as that library call.

mod common;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use smelt::interp;
use smelt::ir::{BinaryOp, DType, Graph, GraphBuilder, Op, ReduceKind, Tensor, UnaryOp, Value};
use smelt::optimize::{optimize, rules, Options};
use std::collections::{BTreeMap, HashMap};

/// One step of a random graph: which snippet, and which earlier values it uses.
#[derive(Clone, Debug)]
struct Step {
    kind: usize,
    a: usize,
    b: usize,
    seed: u64,
}

const KINDS: usize = 29;

fn steps() -> impl Strategy<Value = (Vec<usize>, Vec<Step>)> {
    (
        prop::collection::vec(1usize..5, 2..4),
        prop::collection::vec(
            (0..KINDS, any::<usize>(), any::<usize>(), any::<u64>()),
            1..12,
        ),
    )
        .prop_map(|(base, raw)| {
            let steps = raw
                .into_iter()
                .map(|(kind, a, b, seed)| Step { kind, a, b, seed })
                .collect();
            (base, steps)
        })
}

fn konst(g: &mut GraphBuilder, shape: &[usize], seed: u64) -> Value {
    g.constant(smelt::Tensor::random(DType::F32, shape, seed))
}

fn scalar(g: &mut GraphBuilder, v: f64) -> Value {
    g.scalar(DType::F32, v)
}

/// Builds a random graph over inputs of shape `base` (and `base` with the first dim 1).
fn build(base: &[usize], steps: &[Step], fast_math_safe: bool) -> Graph {
    let mut g = GraphBuilder::new();
    let mut vals = vec![g.input("x", DType::F32, base).unwrap()];
    let mut b1 = base.to_vec();
    b1[0] = 1;
    vals.push(g.input("y", DType::F32, &b1).unwrap());
    let r = base.len();
    let last = *base.last().unwrap();
    for s in steps {
        let a = vals[s.a % vals.len()];
        let b = vals[s.b % vals.len()];
        let sh = g.ty(a).shape.clone();
        let v = match s.kind {
            0 => g.unary(UnaryOp::Tanh, a).unwrap(),
            1 => g.unary(UnaryOp::Relu, a).unwrap(),
            2 => g.add(a, b).unwrap(),
            3 => g.mul(a, b).unwrap(),
            4 if !fast_math_safe => {
                // Divide by something bounded away from zero.
                let two = scalar(&mut g, 2.5);
                let t = g.tanh(b).unwrap();
                let d = g.add(t, two).unwrap();
                g.div(a, d).unwrap()
            }
            4 => g.sub(a, b).unwrap(),
            5 => {
                let c = konst(&mut g, &[last], s.seed);
                g.add(a, c).unwrap()
            }
            6 => g.reduce(ReduceKind::Sum, a, &[-1], true).unwrap(),
            7 => g.reduce(ReduceKind::Max, a, &[-1], true).unwrap(),
            8 => g.softmax(a, -1).unwrap(),
            9 => {
                let al = *sh.last().unwrap();
                let w = konst(&mut g, &[al, al], s.seed);
                g.matmul(a, w).unwrap()
            }
            10 => {
                let flat = g.reshape(a, &[sh.iter().product()]).unwrap();
                g.reshape(flat, &sh).unwrap()
            }
            11 => {
                let perm: Vec<usize> = (0..r).rev().collect();
                let t = g.transpose(a, &perm).unwrap();
                g.transpose(t, &perm).unwrap()
            }
            12 => {
                let one = scalar(&mut g, 1.0);
                let zero = scalar(&mut g, 0.0);
                let m = g.mul(a, one).unwrap();
                let p = g.add(m, zero).unwrap();
                let q = g.sub(p, zero).unwrap();
                let d = g.div(q, one).unwrap();
                g.pow(d, one).unwrap()
            }
            13 => {
                let n = g.neg(a).unwrap();
                let n = g.neg(n).unwrap();
                g.cast(n, DType::F32).unwrap()
            }
            14 => {
                let bb = g.op(Op::Broadcast(base.to_vec()), &[a]).unwrap();
                g.op(Op::Broadcast(base.to_vec()), &[bb]).unwrap()
            }
            15 => gelu_erf(&mut g, a),
            16 => gelu_tanh(&mut g, a),
            17 => layernorm_decomposed(&mut g, a, s.seed),
            18 => {
                let sc = konst(&mut g, &[*sh.last().unwrap()], s.seed);
                g.layer_norm(a, sc, None, -1, 1e-5).unwrap()
            }
            19 => {
                // Constant-only arithmetic folds.
                let c1 = konst(&mut g, &[last], s.seed);
                let c2 = konst(&mut g, &[last], s.seed + 1);
                let c = g.mul(c1, c2).unwrap();
                g.add(a, c).unwrap()
            }
            20 => g.reduce(ReduceKind::Mean, a, &[0], true).unwrap(),
            21 => {
                // x*0 and x-x: kept exact unless fast-math.
                let zero = scalar(&mut g, 0.0);
                let z = g.mul(a, zero).unwrap();
                let d = g.sub(b, b).unwrap();
                let s1 = g.add(a, z).unwrap();
                g.add(s1, d).unwrap()
            }
            22 => {
                // Chains that reassociate.
                let c = konst(&mut g, &[last], s.seed);
                let s1 = g.add(a, b).unwrap();
                let s2 = g.add(s1, c).unwrap();
                let m1 = g.mul(s2, b).unwrap();
                g.mul(m1, c).unwrap()
            }
            23 => attention(&mut g, a, s.seed),
            27 if sh.len() >= 2 => {
                // Self-attention over Q, K and V projections of one input (biases on two),
                // with the exporters' NaN guard after the softmax: one product over the
                // concatenated weights, read by the attention kernel.
                let (r, n) = (sh.len(), sh[sh.len() - 1]);
                let w = |g: &mut GraphBuilder, k| konst(g, &[n, n], s.seed + k);
                let (wq, wk, wv) = (w(&mut g, 1), w(&mut g, 2), w(&mut g, 3));
                let bq = konst(&mut g, &[n], s.seed + 4);
                let bk = konst(&mut g, &[n], s.seed + 5);
                let q = g.matmul(a, wq).unwrap();
                let q = g.add(q, bq).unwrap();
                let k = g.matmul(a, wk).unwrap();
                let k = g.add(k, bk).unwrap();
                let v = g.matmul(a, wv).unwrap();
                let mut perm: Vec<usize> = (0..r).collect();
                perm.swap(r - 2, r - 1);
                let kt = g.transpose(k, &perm).unwrap();
                let sc = g.matmul(q, kt).unwrap();
                let scale = scalar(&mut g, 0.3);
                let sc = g.mul(sc, scale).unwrap();
                let m = sh[r - 2];
                let mask = konst(&mut g, &[m, m], s.seed + 6);
                let sc = g.add(sc, mask).unwrap();
                let p = g.softmax(sc, -1).unwrap();
                let nan = g.unary(UnaryOp::IsNaN, p).unwrap();
                let zero = scalar(&mut g, 0.0);
                let p = g.where_(nan, zero, p).unwrap();
                g.matmul(p, v).unwrap()
            }
            26 if r >= 3 => {
                // Attention, heads merged (the head dim moved next to the features and
                // reshaped into them), an output projection with bias and residual, and
                // the heads split back.
                let o = attention(&mut g, a, s.seed);
                let mut perm: Vec<usize> = (0..r).collect();
                perm.swap(r - 3, r - 2);
                let t = g.transpose(o, &perm).unwrap();
                let ts = g.ty(t).shape.clone();
                let mut merged = ts[..r - 2].to_vec();
                merged.push(ts[r - 2] * ts[r - 1]);
                let m = g.reshape(t, &merged).unwrap();
                let f = merged[r - 2];
                let w = konst(&mut g, &[f, f], s.seed + 1);
                let bias = konst(&mut g, &[f], s.seed + 2);
                let y = g.matmul(m, w).unwrap();
                let y = g.add(y, bias).unwrap();
                let res = konst(&mut g, &merged, s.seed + 3);
                let y = g.add(y, res).unwrap();
                let y = g.reshape(y, &ts).unwrap();
                g.transpose(y, &perm).unwrap()
            }
            25 => {
                // A rotation (not its own inverse for rank 3) with work between it and its inverse.
                let rot: Vec<usize> = (1..r).chain([0]).collect();
                let mut inv = vec![0; r];
                for (i, &p) in rot.iter().enumerate() {
                    inv[p] = i;
                }
                let t = g.transpose(a, &rot).unwrap();
                let u = g.tanh(t).unwrap();
                let back = g.transpose(u, &inv).unwrap();
                g.add(back, a).unwrap()
            }
            24 => {
                // Gather of a constant index range along the first axis: a view.
                let n = sh[0] as i64;
                let i = g.constant(Tensor::i64([], vec![(s.seed % n as u64) as i64 - n]));
                let row = g.op(Op::Gather { axis: 0 }, &[a, i]).unwrap();
                g.add(a, row).unwrap()
            }
            _ => g.sigmoid(a).unwrap(),
        };
        vals.push(v);
    }
    let n = vals.len();
    g.output("out", vals[n - 1]).unwrap();
    if n > 3 {
        g.output("mid", vals[n / 2 + 1]).unwrap();
    }
    g.build().unwrap()
}

/// softmax(a·aᵀ · scale + mask) · a over the last two dims.
fn attention(g: &mut GraphBuilder, a: Value, seed: u64) -> Value {
    let sh = g.ty(a).shape.clone();
    let r = sh.len();
    let m = sh[r - 2];
    let mut perm: Vec<usize> = (0..r).collect();
    perm.swap(r - 2, r - 1);
    let at = g.transpose(a, &perm).unwrap();
    let s = g.matmul(a, at).unwrap();
    let scale = scalar(g, 0.5);
    let s = g.mul(s, scale).unwrap();
    let mask = konst(g, &[m, m], seed);
    let s = g.add(s, mask).unwrap();
    let p = g.softmax(s, -1).unwrap();
    g.matmul(p, a).unwrap()
}

fn gelu_erf(g: &mut GraphBuilder, x: Value) -> Value {
    let s2 = scalar(g, std::f64::consts::SQRT_2);
    let one = scalar(g, 1.0);
    let half = scalar(g, 0.5);
    let d = g.div(x, s2).unwrap();
    let e = g.unary(UnaryOp::Erf, d).unwrap();
    let p = g.add(e, one).unwrap();
    let m = g.mul(x, p).unwrap();
    g.mul(m, half).unwrap()
}

fn gelu_tanh(g: &mut GraphBuilder, x: Value) -> Value {
    let k = scalar(g, (2.0 / std::f64::consts::PI).sqrt());
    let c = scalar(g, 0.044715);
    let three = scalar(g, 3.0);
    let one = scalar(g, 1.0);
    let half = scalar(g, 0.5);
    let cube = g.pow(x, three).unwrap();
    let t = g.mul(c, cube).unwrap();
    let s = g.add(x, t).unwrap();
    let u = g.mul(k, s).unwrap();
    let th = g.tanh(u).unwrap();
    let p = g.add(one, th).unwrap();
    let h = g.mul(half, x).unwrap();
    g.mul(h, p).unwrap()
}

fn layernorm_decomposed(g: &mut GraphBuilder, x: Value, seed: u64) -> Value {
    let last = *g.ty(x).shape.last().unwrap();
    let two = scalar(g, 2.0);
    let eps = scalar(g, 1e-5);
    let m = g.reduce(ReduceKind::Mean, x, &[-1], true).unwrap();
    let d = g.sub(x, m).unwrap();
    let sq = g.pow(d, two).unwrap();
    let v = g.reduce(ReduceKind::Mean, sq, &[-1], true).unwrap();
    let ve = g.add(v, eps).unwrap();
    let sd = g.sqrt(ve).unwrap();
    let n = g.div(d, sd).unwrap();
    let gamma = konst(g, &[last], seed);
    let beta = konst(g, &[last], seed + 7);
    let n = g.mul(n, gamma).unwrap();
    g.add(n, beta).unwrap()
}

fn inputs(graph: &Graph, seed: u64) -> HashMap<String, Tensor> {
    graph
        .inputs
        .iter()
        .enumerate()
        .map(|(k, &i)| {
            let n = &graph.nodes[i];
            (
                n.name.clone(),
                smelt::Tensor::random(n.ty.dtype, &n.ty.shape, seed + k as u64),
            )
        })
        .collect()
}

fn check_case(
    base: &[usize],
    steps: &[Step],
    opts: &Options,
    fired: &mut BTreeMap<String, usize>,
) -> Result<(), TestCaseError> {
    let graph = build(base, steps, opts.fast_math);
    let (opt, report) = optimize(&graph, opts).map_err(|e| TestCaseError::fail(e.to_string()))?;
    opt.validate()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    for (r, n) in report.rules_fired {
        *fired.entry(r).or_insert(0) += n;
    }
    let feeds = inputs(&graph, 11);
    let want = interp::run(&graph, &feeds).unwrap();
    let got = interp::run(&opt, &feeds).unwrap();
    prop_assert_eq!(want.len(), got.len());
    let (rtol, atol) = if opts.fast_math {
        (1e-3, 1e-4)
    } else {
        (1e-4, 1e-5)
    };
    for ((n, w), (_, gv)) in want.iter().zip(&got) {
        common::compare(gv, w, rtol, atol).map_err(|e| {
            TestCaseError::fail(format!("output {n}: {e}\nbefore:\n{graph}\nafter:\n{opt}"))
        })?;
    }
    // The lowered program, run by the kernel-IR interpreter, gives the same outputs.
    let program = smelt::kernel::lower(&opt).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let lowered = smelt::kernel::interp::run(&program, &feeds)
        .map_err(|e| TestCaseError::fail(format!("{e}\n{program}")))?;
    for ((n, w), (_, gv)) in want.iter().zip(&lowered) {
        common::compare(gv, w, rtol, atol).map_err(|e| {
            TestCaseError::fail(format!("lowered output {n}: {e}\nafter:\n{opt}\n{program}"))
        })?;
    }
    // With the products that have a cuBLASLt form made as that library call.
    if program.kernels.iter().any(|k| k.blas.is_some()) {
        use smelt::kernel::interp::{run_with, Products};
        let library = run_with(&program, &feeds, Products::Library)
            .map_err(|e| TestCaseError::fail(format!("{e}\n{program}")))?;
        for ((n, w), (_, gv)) in want.iter().zip(&library) {
            common::compare(gv, w, rtol, atol).map_err(|e| {
                TestCaseError::fail(format!(
                    "cuBLASLt output {n}: {e}\nafter:\n{opt}\n{program}"
                ))
            })?;
        }
    }
    // So does the C backend (CPU lowering, generated C, the system compiler).
    let cpu = smelt::kernel::lower_for(&opt, smelt::kernel::Target::Cpu)
        .map_err(|e| TestCaseError::fail(format!("CPU lowering: {e}\nafter:\n{opt}")))?;
    let model = smelt_runtime::cpu::CpuModel::new(&cpu, 2)
        .map_err(|e| TestCaseError::fail(format!("C backend: {e}\nafter:\n{opt}")))?;
    let compiled = model
        .run(&feeds)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    for ((n, w), (_, gv)) in want.iter().zip(&compiled) {
        common::compare(gv, w, rtol, atol).map_err(|e| {
            TestCaseError::fail(format!(
                "C backend output {n}: {e}\nafter:\n{opt}\n{}",
                model.program()
            ))
        })?;
    }
    Ok(())
}

fn run_cases(opts: Options, cases: u32) -> BTreeMap<String, usize> {
    let fired = std::cell::RefCell::new(BTreeMap::new());
    let mut runner = TestRunner::new(Config {
        cases,
        ..Config::default()
    });
    runner
        .run(&steps(), |(base, steps)| {
            check_case(&base, &steps, &opts, &mut fired.borrow_mut())
        })
        .unwrap();
    fired.into_inner()
}

#[test]
fn optimized_graphs_match_the_oracle_and_every_rule_fires() {
    let mut fired = run_cases(Options::default(), 200);
    // Patterns too rare for 200 random cases to reach every time, checked the same way:
    // attention with its heads merged before a projection (the strided-form rule; random
    // shapes often have a size-1 dim, and then the merge is a plain view).
    // Attention over three projections of one input (the horizontal-products rule).
    let fixed = [
        (
            vec![2, 4, 3],
            vec![Step {
                kind: 26,
                a: 0,
                b: 0,
                seed: 7,
            }],
        ),
        (
            vec![2, 5, 4],
            vec![Step {
                kind: 27,
                a: 0,
                b: 0,
                seed: 9,
            }],
        ),
    ];
    for (base, steps) in fixed {
        check_case(&base, &steps, &Options::default(), &mut fired)
            .unwrap_or_else(|e| panic!("{base:?} {steps:?}: {e}"));
    }
    let mut exact = rules::simplification(false, true);
    exact.extend(rules::fuse::rules());
    let never: Vec<String> = exact
        .iter()
        .map(|r| r.name.to_string())
        .filter(|n| !fired.contains_key(n))
        .collect();
    assert!(
        never.is_empty(),
        "rules that never fired: {never:?} (fired: {fired:?})"
    );
}

#[test]
fn fast_math_graphs_match_the_oracle_and_its_rules_fire() {
    let opts = Options {
        fast_math: true,
        ..Options::default()
    };
    let fired = run_cases(opts, 100);
    let never: Vec<String> = rules::fast::rules()
        .iter()
        .map(|r| r.name.to_string())
        .filter(|n| !fired.contains_key(n))
        .collect();
    assert!(
        never.is_empty(),
        "fast-math rules that never fired: {never:?}"
    );
}

#[test]
fn unfused_graphs_lower_and_match_the_oracle() {
    run_cases(
        Options {
            fuse: false,
            ..Options::default()
        },
        100,
    );
}

#[test]
fn exact_mode_keeps_inexact_identities() {
    let mut g = GraphBuilder::new();
    let x = g.input("x", DType::F32, &[4]).unwrap();
    let zero = scalar(&mut g, 0.0);
    let z = g.mul(x, zero).unwrap();
    let d = g.sub(x, x).unwrap();
    let s = g.add(z, d).unwrap();
    g.output("s", s).unwrap();
    let graph = g.build().unwrap();
    let unfused = Options {
        fuse: false,
        ..Options::default()
    };
    let (opt, report) = optimize(&graph, &unfused).unwrap();
    assert!(!report.rules_fired.contains_key("mul-by-zero"));
    assert!(
        opt.nodes.iter().any(|n| n.op == Op::Binary(BinaryOp::Mul)),
        "{opt}"
    );
    // With x = inf, x*0 and x-x are NaN: the exact graph must say so.
    let inf = Tensor::f32([4], vec![f32::INFINITY, 1.0, -2.0, 0.5]);
    let out = interp::run(&opt, &HashMap::from([("x".to_string(), inf)])).unwrap();
    assert!(out[0].1.to_f64()[0].is_nan());
    let (fast, _) = optimize(
        &graph,
        &Options {
            fast_math: true,
            ..Options::default()
        },
    )
    .unwrap();
    assert!(
        !fast.nodes.iter().any(|n| matches!(n.op, Op::Binary(_))),
        "{fast}"
    );
}

/// Under `--dtype f16|bf16` storage every constant is rounded to the storage type (the GELU
/// coefficient 0.044715 becomes 0.044708 in f16): the recognizers still find tanh-GELU, erf-GELU
/// and LayerNorm, so a transformer's MLP keeps its activation in the product's epilogue, and
/// the recognized graph matches the reference within the storage type's rounding.
#[test]
fn recognizers_see_through_reduced_precision_constants() {
    for storage in [DType::F16, DType::BF16] {
        let mut g = GraphBuilder::new();
        let x = g.input("x", DType::F32, &[4, 16]).unwrap();
        let a = gelu_tanh(&mut g, x);
        let b = gelu_erf(&mut g, x);
        let ab = g.add(a, b).unwrap();
        let c = layernorm_decomposed(&mut g, ab, 3);
        g.output("y", c).unwrap();
        let graph = smelt::ir::with_storage(&g.build().unwrap(), storage).unwrap();
        let (opt, report) = optimize(&graph, &Options::default()).unwrap();
        for rule in ["gelu-tanh", "gelu-erf", "layernorm-decomposed"] {
            assert!(
                report.rules_fired.contains_key(rule),
                "{storage} {rule}: {report:?}\n{opt}"
            );
        }
        let inputs = HashMap::from([(
            "x".to_string(),
            smelt::Tensor::random(DType::F32, &[4, 16], 11),
        )]);
        let (want, got) = (
            interp::run(&graph, &inputs).unwrap(),
            interp::run(&opt, &inputs).unwrap(),
        );
        common::compare(&got[0].1, &want[0].1, 2e-2, 2e-2)
            .unwrap_or_else(|e| panic!("{storage}: {e}"));
    }
}
