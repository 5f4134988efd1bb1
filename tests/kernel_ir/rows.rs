//! Row kernels: each GPU row layout and the statistics' edge values.

use super::*;

/// A softmax, a layernorm (with a residual add before it) and a mean over rows of `len`.
fn row_graph(rows: usize, len: usize) -> Graph {
    use smelt::{ir::ReduceKind, DType};
    let mut b = smelt::GraphBuilder::new();
    let x = b.input("x", DType::F32, &[rows, len]).unwrap();
    let r = b.input("r", DType::F32, &[len]).unwrap();
    let s = b.softmax(x, -1).unwrap();
    b.output("softmax", s).unwrap();
    let h = b.add(x, r).unwrap();
    let gamma = b.constant(Tensor::from_f64(DType::F32, vec![len], &vec![1.5; len]));
    let ln = b.layer_norm(h, gamma, None, -1, 1e-5).unwrap();
    let ln = b.tanh(ln).unwrap();
    b.output("layernorm", ln).unwrap();
    let m = b.reduce(ReduceKind::Mean, x, &[1], false).unwrap();
    b.output("mean", m).unwrap();
    let ls = b.log_softmax(h, -1).unwrap();
    b.output("log_softmax", ls).unwrap();
    b.build().unwrap()
}

/// Each row layout of the GPU lowering (lanes of a warp per row, a block per row in
/// registers, a streaming block per row with one-pass statistics) gives the reference's
/// results, with row counts that leave groups of a block without a row.
#[test]
fn row_layouts_match_reference() {
    for (rows, len, marks) in [
        (5, 6, &["warp8_reduce_Max", "warp8_reduce_Sum"][..]),
        (7, 300, &["warp32_reduce_Sum", "if (v0 < 7)"][..]),
        (3, 3000, &["block_reduce_Max", "for uniform"][..]),
        (
            2,
            20000,
            &["block_reduce_MaxSum", "block_reduce_Welford"][..],
        ),
    ] {
        let g = row_graph(rows, len);
        let c = compile(&g, &Options::default()).unwrap();
        let text = lower(&c.graph).unwrap().to_string();
        for m in marks {
            assert!(text.contains(m), "{rows}x{len}: no {m} in\n{text}");
        }
        check(&g, true).unwrap_or_else(|e| panic!("{rows}x{len}: {e}"));
    }
}

/// Edge values through the one-pass merges: masked (-inf) elements, rows that are all -inf
/// (NaN, as the reference), +inf and NaN.
#[test]
fn row_statistics_propagate_infinities_like_the_reference() {
    for len in [6, 300, 20000] {
        let g = row_graph(3, len);
        let mut inputs = feeds(&g, 9);
        let mut x = inputs["x"].to_f64();
        for v in x.iter_mut().take(len) {
            *v = f64::NEG_INFINITY;
        }
        for v in x.iter_mut().skip(len).step_by(2).take(len / 2) {
            *v = f64::NEG_INFINITY;
        }
        x[2 * len + len / 2] = f64::INFINITY;
        let mut y = x.clone();
        y[len + 1] = f64::NAN;
        for (name, data) in [("x", &x), ("x", &y)] {
            inputs.insert(
                name.into(),
                Tensor::from_f64(smelt::DType::F32, vec![3, len], data),
            );
            let want = interp::run(&g, &inputs).unwrap();
            let c = compile(&g, &Options::default()).unwrap();
            let p = lower(&c.graph).unwrap();
            let got = kinterp::run(&p, &inputs).unwrap();
            for ((n, w), (_, v)) in want.iter().zip(&got) {
                let (w, v) = (w.to_f64(), v.to_f64());
                for (i, (a, b)) in w.iter().zip(&v).enumerate() {
                    let same = (a.is_nan() && b.is_nan())
                        || a == b
                        || (a.is_finite() && (a - b).abs() <= 1e-5 + 1e-4 * a.abs());
                    assert!(same, "len {len} {n}[{i}]: reference {a}, lowered {b}");
                }
            }
        }
    }
}
