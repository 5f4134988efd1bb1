//! The lowered program, run by the kernel-IR interpreter (every block and thread, the
//! reduction trees as written), gives the reference interpreter's outputs: on the reference
//! models and on random graphs, fused and unfused. Tolerance: rtol 1e-4, atol 1e-5 (the
//! kernels compute in f32 as the GPU does; the reference accumulates in f64).

mod common;

use smelt::kernel::interp::{self as kinterp, Products};
use smelt::kernel::{lower, lower_for, Target};
use smelt::optimize::Options;
use smelt::{compile, interp, Graph, Tensor};
use std::collections::HashMap;

/// Seeded random inputs (never all zero): the benchmark harness's.
fn feeds(g: &Graph, seed: u64) -> HashMap<String, Tensor> {
    g.random_inputs(seed)
}

/// Lowers `g` (fused or not) and compares the kernel-IR run with the reference.
fn check(g: &Graph, fuse: bool) -> Result<(), String> {
    check_within(g, fuse, 1e-4, 1e-5)
}

/// [`check`] with a tolerance (f16 kernels round once at the end, the reference after
/// every op).
fn check_within(g: &Graph, fuse: bool, rtol: f64, atol: f64) -> Result<(), String> {
    let c = compile(
        g,
        &Options {
            fuse,
            ..Options::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let inputs = feeds(g, 5);
    let want = interp::run(g, &inputs).map_err(|e| e.to_string())?;
    // On the GPU, kernels that have a cuBLASLt form run both ways: as written, and as the
    // library call a runtime with cuBLASLt makes instead.
    let runs = [
        (Target::Gpu, Products::Kernels),
        (Target::Gpu, Products::Library),
        (Target::Cpu, Products::Kernels),
    ];
    for (target, products) in runs {
        let program = lower_for(&c.graph, target).map_err(|e| e.to_string())?;
        if products == Products::Library && program.kernels.iter().all(|k| k.blas.is_none()) {
            continue;
        }
        let got = kinterp::run_with(&program, &inputs, products)
            .map_err(|e| format!("{e}\n{program}"))?;
        for ((n, w), (_, v)) in want.iter().zip(&got) {
            common::compare(v, w, rtol, atol).map_err(|e| {
                format!(
                    "output {n} (fuse {fuse}, {target:?}, {products:?}): {e}\n{}\n{program}",
                    c.graph
                )
            })?;
        }
    }
    Ok(())
}

#[test]
fn gpt2_block_runs_lowered() {
    let g = common::graphs::gpt2_block(1, 8, 16, 2).unwrap();
    check(&g, true).unwrap();
    check(&g, false).unwrap();
}

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

#[test]
fn reference_models_run_lowered() {
    for (dir, g) in common::reference_models() {
        for fuse in [true, false] {
            check(&g, fuse).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        }
    }
}

/// Pointwise kernels whose output's last dim allows it compute 16 bytes of output per
/// thread with one vector store; inputs read contiguously are vector loads, broadcast ones
/// one scalar load, and misaligned or permuted reads stay scalar (the interpreter rejects a
/// misaligned vector access, so these runs prove the alignment).
#[test]
fn vectorized_pointwise_kernels_match_reference() {
    use smelt::ir::{BinaryOp, Op};
    use smelt::DType;
    for d in [DType::F32, DType::F16] {
        let mut b = smelt::GraphBuilder::new();
        let x = b.input("x", d, &[16, 64]).unwrap();
        let row = b.input("row", d, &[64]).unwrap();
        let col = b.input("col", d, &[16, 1]).unwrap();
        let t = b.input("t", d, &[64, 16]).unwrap();
        let wide = b.input("wide", d, &[16, 65]).unwrap();
        // Broadcast row (vector load), column (scalar), transpose (scalar per lane).
        let tt = b.transpose(t, &[1, 0]).unwrap();
        let mut v = b.add(x, row).unwrap();
        v = b.mul(v, col).unwrap();
        v = b.sub(v, tt).unwrap();
        // A slice starting at element 1 of each row: contiguous but misaligned.
        let s = b
            .op(
                Op::Slice {
                    starts: vec![0, 1],
                    steps: vec![1, 1],
                    lens: vec![16, 64],
                },
                &[wide],
            )
            .unwrap();
        v = b.add(v, s).unwrap();
        let mask = b.binary(BinaryOp::Greater, x, row).unwrap();
        v = b.where_(mask, v, x).unwrap();
        v = b.tanh(v).unwrap();
        b.output("y", v).unwrap();
        let g = b.build().unwrap();
        let c = compile(&g, &Options::default()).unwrap();
        let p = lower(&c.graph).unwrap();
        let text = p.to_string();
        let width = if d == DType::F16 { 8 } else { 4 };
        for want in [
            format!("= b0[v0 +: {width}]"),
            format!("b5[v0 +: {width}] = "),
        ] {
            assert!(text.contains(&want), "{d}: no {want} in\n{text}");
        }
        assert_eq!(
            text.matches("+: ").count(),
            3,
            "{d}: x, row and the output are vector accesses:\n{text}"
        );
        let (rtol, atol) = if d == DType::F16 {
            (1e-2, 1e-2)
        } else {
            (1e-4, 1e-5)
        };
        check_within(&g, true, rtol, atol).unwrap_or_else(|e| panic!("{d}: {e}"));
        check_within(&g, false, rtol, atol).unwrap_or_else(|e| panic!("{d} unfused: {e}"));
    }
}

/// A `[nq, nk]` causal mask: `hidden` where key `j` is past query `i` by more than `off`
/// (`j > i + off`), 0 elsewhere.
fn causal_mask(nq: usize, nk: usize, off: usize, hidden: f32) -> Vec<f32> {
    (0..nq * nk)
        .map(|x| if x % nk > x / nk + off { hidden } else { 0.0 })
        .collect()
}

/// `softmax(q·kᵀ·scale + mask)·v` over [2, 3, s, d] heads, with v shared by the heads.
fn attention(s: usize, d: usize, e: usize, mask: &[f32]) -> Graph {
    attention_in(smelt::DType::F32, s, d, e, mask, false)
}

/// [`attention`] with `dtype` inputs (and mask), the heads merged back (transpose and
/// reshape to [2, s, 3·e], as a transformer does) when `merge`.
fn attention_in(
    dtype: smelt::DType,
    s: usize,
    d: usize,
    e: usize,
    mask: &[f32],
    merge: bool,
) -> Graph {
    let mut b = smelt::GraphBuilder::new();
    let q = b.input("q", dtype, &[2, 3, s, d]).unwrap();
    let k = b.input("k", dtype, &[2, 3, s, d]).unwrap();
    let v = b.input("v", dtype, &[2, s, e]).unwrap();
    let v = b.reshape(v, &[2, 1, s, e]).unwrap();
    let kt = b.transpose(k, &[0, 1, 3, 2]).unwrap();
    let scores = b.matmul(q, kt).unwrap();
    let scale = b.scalar(dtype, 1.0 / (d as f64).sqrt());
    let scores = b.mul(scores, scale).unwrap();
    let m = b.constant(Tensor::f32([s, s], mask.to_vec()));
    let m = if dtype == smelt::DType::F32 {
        m
    } else {
        b.cast(m, dtype).unwrap()
    };
    let scores = b.add(scores, m).unwrap();
    let p = b.softmax(scores, -1).unwrap();
    let mut o = b.matmul(p, v).unwrap();
    if merge {
        o = b.transpose(o, &[0, 2, 1, 3]).unwrap();
        o = b.reshape(o, &[2, s, 3 * e]).unwrap();
    }
    b.output("o", o).unwrap();
    b.build().unwrap()
}

/// Fused f32 attention lowers to the K/V-tiled kernel (key tiles staged in shared memory,
/// a warp-shuffle score per key, online softmax, no score matrix; the race check covers the
/// staging) and gives the reference's results: head dims under,
/// at and over a warp, output width unlike the head dim, causal and additive masks, rows
/// that are entirely masked (NaN, as the reference), and the GPT-2 block's attention.
#[test]
fn attention_lowers_to_tiled_kernel() {
    for (s, d, e) in [(5, 8, 8), (7, 48, 20), (33, 64, 64), (4, 3, 40)] {
        let causal = causal_mask(s, s, 0, f32::NEG_INFINITY);
        let additive: Vec<f32> = (0..s * s)
            .map(|i| ((i * 7) % 5) as f32 * 0.3 - 0.6)
            .collect();
        let mut masked = additive.clone();
        masked[..s].fill(f32::NEG_INFINITY);
        for (what, mask) in [
            ("causal", causal),
            ("additive", additive),
            ("masked row", masked),
        ] {
            let g = attention(s, d, e, &mask);
            let c = compile(&g, &Options::default()).unwrap();
            let p = lower(&c.graph).unwrap();
            let k = p
                .kernels
                .iter()
                .find(|k| k.name.contains("attention"))
                .unwrap_or_else(|| panic!("{what} {s}x{d}x{e}: no attention kernel\n{p}"));
            let text = k.to_string();
            // K and V tiles in shared memory, two barriers per tile, a shuffle sum per key.
            assert!(
                text.contains("for uniform") && text.contains("_reduce_Sum"),
                "{text}"
            );
            assert_eq!(
                (k.shared.len(), text.matches("barrier").count()),
                (2, 2),
                "{text}"
            );
            if what == "masked row" {
                // Query row 0 of every head is NaN (0/0), as in the reference; the rest match.
                let inputs = feeds(&g, 5);
                let got = kinterp::run(&p, &inputs).unwrap()[0].1.to_f64();
                let want = interp::run(&g, &inputs).unwrap()[0].1.to_f64();
                for (i, (a, b)) in want.iter().zip(&got).enumerate() {
                    assert_eq!(a.is_nan(), (i / e) % s == 0, "reference [{i}] = {a}");
                    let same = (a.is_nan() && b.is_nan())
                        || (a.is_finite() && (a - b).abs() <= 1e-5 + 1e-4 * a.abs());
                    assert!(same, "{s}x{d}x{e} [{i}]: reference {a}, lowered {b}");
                }
                continue;
            }
            check(&g, true).unwrap_or_else(|err| panic!("{what} {s}x{d}x{e}: {err}"));
        }
    }
    // Heads merged back by the output's transpose and reshape: fused into the kernel's
    // stores (the K/V-tiled kernel, not the pointwise fallback).
    let s = 7;
    let additive: Vec<f32> = (0..s * s)
        .map(|i| ((i * 7) % 5) as f32 * 0.3 - 0.6)
        .collect();
    let g = attention_in(smelt::DType::F32, s, 48, 20, &additive, true);
    let p = lower(&compile(&g, &Options::default()).unwrap().graph).unwrap();
    let k = p
        .kernels
        .iter()
        .find(|k| k.name.contains("attention"))
        .unwrap_or_else(|| panic!("no attention kernel\n{p}"));
    assert!(k.to_string().contains("_reduce_Sum"), "{k}");
    // The output is that reshape: the kernel writes it directly, no copy kernel after.
    assert_eq!(p.kernels.len(), 1, "{p}");
    check(&g, true).unwrap();
    let g = common::graphs::gpt2_block(2, 16, 64, 2).unwrap();
    let c = compile(&g, &Options::default()).unwrap();
    let p = lower(&c.graph).unwrap();
    let k = p
        .kernels
        .iter()
        .find(|k| k.name.contains("attention"))
        .unwrap();
    assert!(k.to_string().contains("warp32_reduce_Sum"), "{k}");
}

/// f16 and bf16 attention lowers to the flash-style tensor-core kernel: query fragments
/// held per warp, K/V tiles of 32 keys staged in shared memory, scores and P·V as `wmma`
/// products, the online softmax between them. The interpreter runs every fragment
/// operation with its alignment rules and checks every shared access for races. Shapes
/// cover partial query and key tiles, padded head dims and output widths, both block sizes
/// (4 warps up to 64 columns, 2 above), causal, additive and fully masked rows.
/// Tolerance: f16/bf16 rounding (probabilities are rounded to the storage type before the
/// second product, as in FlashAttention).
#[test]
fn tensor_core_attention_matches_reference() {
    use smelt::DType;
    for d in [DType::F16, DType::BF16] {
        for (s, hd, e, merge) in [
            (40, 64, 64, false),
            (33, 40, 20, true),
            (16, 128, 128, false),
            (70, 96, 72, true),
        ] {
            let causal = causal_mask(s, s, 0, f32::NEG_INFINITY);
            let mut masked: Vec<f32> = (0..s * s)
                .map(|i| ((i * 7) % 5) as f32 * 0.3 - 0.6)
                .collect();
            masked[s..2 * s].fill(f32::NEG_INFINITY);
            for (what, mask) in [("causal", causal), ("masked row", masked)] {
                let g = attention_in(d, s, hd, e, &mask, merge);
                let c = compile(&g, &Options::default()).unwrap();
                let p = lower(&c.graph).unwrap();
                let k = p
                    .kernels
                    .iter()
                    .find(|k| k.name.contains("attention"))
                    .unwrap_or_else(|| panic!("{what} {s}x{hd}x{e}: no attention kernel\n{p}"));
                assert!(!k.frags.is_empty() && k.shared.len() == 6, "{k}");
                let inputs = feeds(&g, 5);
                let got = kinterp::run(&p, &inputs)
                    .unwrap_or_else(|err| panic!("{d} {what} {s}x{hd}x{e}: {err}"))[0]
                    .1
                    .to_f64();
                let want = interp::run(&g, &inputs).unwrap()[0].1.to_f64();
                for (i, (a, b)) in want.iter().zip(&got).enumerate() {
                    if what == "masked row" {
                        // Query row 1 of every head ([2, s, 3·e] when merged).
                        let row = if merge {
                            (i / (3 * e)) % s
                        } else {
                            (i / e) % s
                        };
                        assert_eq!(a.is_nan(), row == 1, "reference [{i}] = {a}");
                    }
                    let same = (a.is_nan() && b.is_nan())
                        || (a.is_finite() && (a - b).abs() <= 2e-2 + 2e-2 * a.abs());
                    assert!(
                        same,
                        "{d} {what} {s}x{hd}x{e} [{i}]: reference {a}, lowered {b}"
                    );
                }
            }
        }
    }
}

/// Products big enough for tiles lower to the shared-memory tiled kernel (two barriers per
/// step; the interpreter checks every shared access against races and reads of unwritten
/// elements) with the epilogue fused: edge tiles in every dim, a transposed operand,
/// batched and broadcast operands, bias + GELU + residual.
#[test]
fn tiled_products_match_reference() {
    use smelt::DType;
    for (batch, m, k, n, transposed) in [
        (&[][..], 64, 16, 64, false),
        (&[][..], 70, 45, 33, true),
        (&[2, 3][..], 40, 17, 130, false),
        (&[3][..], 65, 64, 64, true),
    ] {
        let mut b = smelt::GraphBuilder::new();
        let mut sa = batch.to_vec();
        sa.extend([m, k]);
        let x = b.input("x", DType::F32, &sa).unwrap();
        let w = if transposed {
            let wt = b.input("wt", DType::F32, &[n, k]).unwrap();
            b.transpose(wt, &[1, 0]).unwrap()
        } else {
            b.input("w", DType::F32, &[k, n]).unwrap()
        };
        let bias = b.input("bias", DType::F32, &[n]).unwrap();
        let mut so = batch.to_vec();
        so.extend([m, n]);
        let res = b.input("res", DType::F32, &so).unwrap();
        let y = b.matmul(x, w).unwrap();
        let y = b.add(y, bias).unwrap();
        let y = b.gelu(y).unwrap();
        let y = b.add(y, res).unwrap();
        b.output("y", y).unwrap();
        let g = b.build().unwrap();
        let c = compile(&g, &Options::default()).unwrap();
        let p = lower(&c.graph).unwrap();
        let label = format!("{batch:?} {m}x{k}x{n} transposed {transposed}");
        assert_eq!(p.kernels.len(), 1, "{label}: one kernel\n{p}");
        let text = p.kernels[0].to_string();
        assert!(
            text.contains("shared s0: f32[1024]") && text.matches("barrier").count() == 2,
            "{label}\n{text}"
        );
        check(&g, true).unwrap_or_else(|e| panic!("{label}: {e}"));
        check(&g, false).unwrap_or_else(|e| panic!("{label} unfused: {e}"));
    }
}

/// The race check catches a tiled product without its second barrier: the next step's
/// stores would overwrite slices other threads are still reading.
#[test]
fn shared_memory_races_are_caught() {
    let mut b = smelt::GraphBuilder::new();
    let x = b.input("x", smelt::DType::F32, &[64, 32]).unwrap();
    let w = b.input("w", smelt::DType::F32, &[32, 64]).unwrap();
    let y = b.matmul(x, w).unwrap();
    b.output("y", y).unwrap();
    let g = b.build().unwrap();
    let c = compile(&g, &Options::default()).unwrap();
    let mut p = lower(&c.graph).unwrap();
    fn drop_last_barrier(stmts: &mut [smelt::kernel::ir::Stmt]) -> bool {
        use smelt::kernel::ir::Stmt;
        for s in stmts.iter_mut() {
            if let Stmt::For {
                body,
                uniform: true,
                ..
            } = s
            {
                if let Some(i) = body.iter().rposition(|s| matches!(s, Stmt::Barrier)) {
                    body.remove(i);
                    return true;
                }
            }
        }
        false
    }
    assert!(drop_last_barrier(&mut p.kernels[0].body), "{p}");
    let e = kinterp::run(&p, &feeds(&g, 1)).unwrap_err().to_string();
    assert!(e.contains("no barrier between"), "{e}");
}

/// Convolutions with enough output channels and positions lower to the tiled kernel as an
/// implicit product (windows gathered with zero padding): stride, dilation, asymmetric
/// padding, no bias, and a fused ReLU + residual epilogue.
#[test]
fn tiled_convolutions_match_reference() {
    use smelt::ir::{Conv2d, Op};
    use smelt::DType;
    for (ci, co, hw, kern, strides, pads, dilations, bias) in [
        (4, 32, 8, 3, [1, 1], [1, 1, 1, 1], [1, 1], true),
        (3, 40, 13, 3, [2, 2], [0, 1, 2, 1], [1, 1], false),
        (5, 33, 12, 2, [1, 2], [1, 0, 0, 1], [2, 1], true),
    ] {
        let mut b = smelt::GraphBuilder::new();
        let x = b.input("x", DType::F32, &[2, ci, hw, hw]).unwrap();
        let w = b.input("w", DType::F32, &[co, ci, kern, kern]).unwrap();
        let mut ins = vec![x, w];
        if bias {
            ins.push(b.input("bias", DType::F32, &[co]).unwrap());
        }
        let conv = Conv2d {
            strides,
            pads,
            dilations,
            group: 1,
        };
        let y = b.op(Op::Conv(conv), &ins).unwrap();
        let y = b.relu(y).unwrap();
        let shape = b.ty(y).shape.clone();
        let res = b.input("res", DType::F32, &shape).unwrap();
        let y = b.add(y, res).unwrap();
        b.output("y", y).unwrap();
        let g = b.build().unwrap();
        let c = compile(&g, &Options::default()).unwrap();
        let p = lower(&c.graph).unwrap();
        let label = format!("{ci}->{co} {hw}² k{kern} s{strides:?} p{pads:?} d{dilations:?}");
        assert!(
            p.kernels.iter().any(|k| !k.shared.is_empty()),
            "{label}: no tiled kernel\n{p}"
        );
        check(&g, true).unwrap_or_else(|e| panic!("{label}: {e}"));
        check(&g, false).unwrap_or_else(|e| panic!("{label} unfused: {e}"));
    }
}

/// f16 and bf16 products and convolutions lower to the tensor-core variant (warp fragments
/// staged through shared memory, f32 accumulators); the interpreter runs the fragment
/// operations with their alignment rules and the race check. Tolerance: f16/bf16 rounding of
/// the result (the reference rounds every op to the storage type).
#[test]
fn tensor_core_products_match_reference() {
    use smelt::ir::{Conv2d, Op};
    use smelt::DType;
    for d in [DType::F16, DType::BF16] {
        for (batch, m, k, n) in [(&[][..], 64, 32, 64), (&[2][..], 70, 45, 33)] {
            let mut b = smelt::GraphBuilder::new();
            let mut sa = batch.to_vec();
            sa.extend([m, k]);
            let x = b.input("x", d, &sa).unwrap();
            let wt = b.input("wt", d, &[n, k]).unwrap();
            let w = b.transpose(wt, &[1, 0]).unwrap();
            let bias = b.input("bias", d, &[n]).unwrap();
            let y = b.matmul(x, w).unwrap();
            let y = b.add(y, bias).unwrap();
            let y = b.gelu(y).unwrap();
            b.output("y", y).unwrap();
            let g = b.build().unwrap();
            let p = lower(&compile(&g, &Options::default()).unwrap().graph).unwrap();
            assert_eq!(p.kernels[0].frags.len(), 8, "{p}");
            check_within(&g, true, 2e-2, 2e-2).unwrap_or_else(|e| panic!("{d} {m}x{k}x{n}: {e}"));
        }
        let mut b = smelt::GraphBuilder::new();
        let x = b.input("x", d, &[2, 6, 9, 9]).unwrap();
        let w = b.input("w", d, &[40, 6, 3, 3]).unwrap();
        let conv = Conv2d {
            strides: [1, 1],
            pads: [1, 1, 1, 1],
            dilations: [1, 1],
            group: 1,
        };
        let y = b.op(Op::Conv(conv), &[x, w]).unwrap();
        let y = b.relu(y).unwrap();
        b.output("y", y).unwrap();
        let g = b.build().unwrap();
        let p = lower(&compile(&g, &Options::default()).unwrap().graph).unwrap();
        assert_eq!(p.kernels[0].frags.len(), 8, "{p}");
        check_within(&g, true, 2e-2, 2e-2).unwrap_or_else(|e| panic!("{d} conv: {e}"));
    }
}

/// Cross-attention (queries and keys of different lengths) with a per-batch key-padding
/// mask broadcast over heads and queries, through both tiled kernels (f32: K/V tiles with
/// a partial last tile; f16: tensor cores): the reference's results, rows whose keys are
/// all padded NaN on both sides.
#[test]
fn cross_attention_with_padding_masks() {
    use smelt::DType;
    for (d, sq, sk) in [
        (DType::F32, 21, 45),
        (DType::F16, 40, 70),
        (DType::BF16, 17, 33),
    ] {
        let mut b = smelt::GraphBuilder::new();
        let q = b.input("q", d, &[2, 3, sq, 32]).unwrap();
        let k = b.input("k", d, &[2, 3, sk, 32]).unwrap();
        let v = b.input("v", d, &[2, 3, sk, 24]).unwrap();
        let kt = b.transpose(k, &[0, 1, 3, 2]).unwrap();
        let scores = b.matmul(q, kt).unwrap();
        let scale = b.scalar(d, 0.125);
        let scores = b.mul(scores, scale).unwrap();
        // Batch 0 keeps its first 30 keys, batch 1 none (every row of it is NaN).
        let pad: Vec<f32> = (0..2 * sk)
            .map(|i| {
                if i < 30.min(sk) {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect();
        let m = b.constant(Tensor::f32([2, 1, 1, sk], pad));
        let m = if d == DType::F32 {
            m
        } else {
            b.cast(m, d).unwrap()
        };
        let scores = b.add(scores, m).unwrap();
        let p = b.softmax(scores, -1).unwrap();
        let o = b.matmul(p, v).unwrap();
        b.output("o", o).unwrap();
        let g = b.build().unwrap();
        let prog = lower(&compile(&g, &Options::default()).unwrap().graph).unwrap();
        let k = prog
            .kernels
            .iter()
            .find(|k| k.name.contains("attention"))
            .unwrap_or_else(|| panic!("{d}: no attention kernel\n{prog}"));
        assert_eq!(k.frags.is_empty(), d == DType::F32, "{k}");
        let inputs = feeds(&g, 7);
        let got = kinterp::run(&prog, &inputs).unwrap()[0].1.to_f64();
        let want = interp::run(&g, &inputs).unwrap()[0].1.to_f64();
        let tol = if d == DType::F32 { 1e-4 } else { 2e-2 };
        for (i, (a, b)) in want.iter().zip(&got).enumerate() {
            assert_eq!(a.is_nan(), i >= want.len() / 2, "{d} reference [{i}] = {a}");
            let same = (a.is_nan() && b.is_nan())
                || (a.is_finite() && (a - b).abs() <= tol + tol * a.abs());
            assert!(same, "{d} {sq}x{sk} [{i}]: reference {a}, lowered {b}");
        }
    }
}

/// GPU product kernels get a cuBLASLt form exactly when the library's epilogue covers their
/// body: `act(alpha·A×B + bias + residual)` with ReLU or tanh-GELU, operands read through
/// transposes, a weight shared by a batch. Each form (column-major, the operands swapped) is
/// run by the interpreter as cuBLASLt defines the call, against the reference.
#[test]
fn cublas_forms_cover_product_epilogues() {
    use smelt::ir::UnaryOp;
    use smelt::DType;
    /// A product `x·w` (`w` given transposed when `transposed`), then each part asked for;
    /// `covered`: whether cuBLASLt's epilogue covers it. A label starting with "permuted"
    /// reads x [b, m, k] as a transpose of [m, b, k]; one starting with "sliced" reads x as
    /// columns 3.. of [.., m, k + 7] and w as rows 2.. of [k + 2, n] (operands starting
    /// inside their buffers).
    #[derive(Clone, Copy, Default)]
    struct Case {
        label: &'static str,
        batch: &'static [usize],
        mkn: (usize, usize, usize),
        transposed: bool,
        scale: bool,
        bias: bool,
        residual: bool,
        act: Option<UnaryOp>,
        covered: bool,
    }
    let base = Case {
        mkn: (24, 40, 56),
        covered: true,
        ..Case::default()
    };
    let cases = [
        Case {
            label: "plain",
            ..base
        },
        Case {
            label: "bias+gelu_tanh",
            mkn: (33, 17, 65),
            transposed: true,
            bias: true,
            act: Some(UnaryOp::GeluTanh),
            ..base
        },
        Case {
            label: "bias+relu, batch",
            batch: &[2, 3],
            mkn: (20, 16, 24),
            bias: true,
            act: Some(UnaryOp::Relu),
            ..base
        },
        Case {
            label: "scaled+residual",
            batch: &[3],
            mkn: (17, 32, 9),
            transposed: true,
            scale: true,
            residual: true,
            ..base
        },
        Case {
            label: "all",
            batch: &[2],
            mkn: (40, 24, 48),
            scale: true,
            bias: true,
            residual: true,
            act: Some(UnaryOp::Relu),
            ..base
        },
        Case {
            label: "single row",
            mkn: (1, 64, 96),
            transposed: true,
            bias: true,
            ..base
        },
        Case {
            label: "sliced x and w",
            batch: &[2],
            mkn: (12, 20, 24),
            bias: true,
            act: Some(UnaryOp::Relu),
            ..base
        },
        Case {
            label: "permuted x",
            batch: &[3],
            mkn: (20, 16, 24),
            bias: true,
            residual: true,
            ..base
        },
        // cuBLASLt's GELU is the tanh form: the exact one stays a kernel.
        Case {
            label: "erf gelu",
            bias: true,
            act: Some(UnaryOp::Gelu),
            covered: false,
            ..base
        },
        Case {
            label: "sigmoid",
            bias: true,
            act: Some(UnaryOp::Sigmoid),
            covered: false,
            ..base
        },
    ];
    for d in [DType::F32, DType::F16] {
        for c in cases {
            let Case {
                label,
                batch,
                mkn: (m, k, n),
                transposed,
                scale,
                bias,
                residual,
                act,
                covered,
            } = c;
            let mut b = smelt::GraphBuilder::new();
            let mut sa = batch.to_vec();
            sa.extend([m, k]);
            let sliced = label.starts_with("sliced");
            let slice = |b: &mut smelt::GraphBuilder, x, shape: &[usize], axis: usize, from| {
                let mut starts = vec![0; shape.len()];
                starts[axis] = from;
                let mut lens = shape.to_vec();
                lens[axis] -= from;
                let op = smelt::ir::Op::Slice {
                    starts,
                    steps: vec![1; shape.len()],
                    lens,
                };
                b.op(op, &[x]).unwrap()
            };
            let x = if label.starts_with("permuted") {
                let xt = b.input("xt", d, &[m, batch[0], k]).unwrap();
                b.transpose(xt, &[1, 0, 2]).unwrap()
            } else if sliced {
                let mut wide = sa.clone();
                *wide.last_mut().unwrap() += 7;
                let xw = b.input("xw", d, &wide).unwrap();
                // Columns 3..k+3 of k+7.
                let x = slice(&mut b, xw, &wide, wide.len() - 1, 3);
                let mut lens = sa.clone();
                *lens.last_mut().unwrap() = k;
                let op = smelt::ir::Op::Slice {
                    starts: vec![0; lens.len()],
                    steps: vec![1; lens.len()],
                    lens,
                };
                b.op(op, &[x]).unwrap()
            } else {
                b.input("x", d, &sa).unwrap()
            };
            let w = if transposed {
                let wt = b.input("wt", d, &[n, k]).unwrap();
                b.transpose(wt, &[1, 0]).unwrap()
            } else if sliced {
                let ww = b.input("ww", d, &[k + 2, n]).unwrap();
                slice(&mut b, ww, &[k + 2, n], 0, 2)
            } else {
                b.input("w", d, &[k, n]).unwrap()
            };
            let mut y = b.matmul(x, w).unwrap();
            if scale {
                let s = b.scalar(d, 0.125);
                y = b.mul(y, s).unwrap();
            }
            if bias {
                let c = b.input("bias", d, &[n]).unwrap();
                y = b.add(c, y).unwrap();
            }
            if residual {
                let mut so = batch.to_vec();
                so.extend([m, n]);
                let r = b.input("res", d, &so).unwrap();
                y = b.add(y, r).unwrap();
            }
            if let Some(u) = act {
                y = b.unary(u, y).unwrap();
            }
            b.output("y", y).unwrap();
            let g = b.build().unwrap();
            let p = lower(&compile(&g, &Options::default()).unwrap().graph).unwrap();
            let label = format!("{d} {label}");
            assert_eq!(p.kernels.len(), 1, "{label}: one kernel\n{p}");
            assert_eq!(p.kernels[0].blas.is_some(), covered, "{label}\n{p}");
            if sliced {
                let g = p.kernels[0].blas.as_ref().unwrap();
                // cuBLASLt's a is wᵀ (from row 2 of n columns), its b is xᵀ (from column 3).
                assert_eq!((g.a.offset, g.b.offset), (2 * n, 3), "{label}\n{p}");
            }
            if label.ends_with("bias+relu, batch") {
                // A weight shared by a contiguous batch: one product of all its rows.
                let g = p.kernels[0].blas.as_ref().unwrap();
                assert_eq!((g.batch, g.n), (1, 6 * m), "{label}\n{p}");
            }
            let (rtol, atol) = if d == DType::F32 {
                (1e-4, 1e-5)
            } else {
                (2e-2, 2e-2)
            };
            check_within(&g, true, rtol, atol).unwrap_or_else(|e| panic!("{label}: {e}"));
            if covered {
                // The library form alone, against the reference.
                let inputs = feeds(&g, 9);
                let want = interp::run(&g, &inputs).unwrap();
                let got = kinterp::run_with(&p, &inputs, Products::Library).unwrap();
                common::compare(&got[0].1, &want[0].1, rtol, atol)
                    .unwrap_or_else(|e| panic!("{label} library: {e}\n{p}"));
            }
        }
    }
}

/// Heads merged after attention (transpose + reshape) are the attention kernel's store, not
/// the output projection's gather: the projection then reads its operand as a plain matrix
/// and is one cuBLASLt call on a GPU (and needs no copy of its operand on the CPU).
#[test]
fn merged_heads_leave_the_output_projection_to_cublas() {
    let (dir, g) = common::reference_models()
        .into_iter()
        .find(|(d, _)| d.ends_with("attention_masked"))
        .expect("the attention_masked reference model");
    let c = compile(&g, &Options::default()).unwrap();
    let p = lower(&c.graph).unwrap();
    let attention = p
        .kernels
        .iter()
        .position(|k| k.name.contains("attention"))
        .unwrap_or_else(|| panic!("{}: no attention kernel\n{p}", dir.display()));
    let projection = &p.kernels[attention + 1];
    let blas = projection
        .blas
        .as_ref()
        .unwrap_or_else(|| panic!("the projection is no cuBLASLt call\n{p}"));
    assert_eq!(blas.b.buf, p.kernels[attention].writes[0], "{p}");
    check(&g, true).unwrap();
}

/// An empty batch (a zero-sized dim) lowers without a cuBLASLt form (nothing to call) and
/// without panicking, also through a transposed operand.
#[test]
fn empty_batches_have_no_cublas_form() {
    use smelt::DType;
    let mut b = smelt::GraphBuilder::new();
    let xt = b.input("xt", DType::F32, &[3, 0, 2, 4]).unwrap();
    let x = b.transpose(xt, &[1, 0, 2, 3]).unwrap();
    let w = b.input("w", DType::F32, &[4, 5]).unwrap();
    let y = b.matmul(x, w).unwrap();
    b.output("y", y).unwrap();
    let g = b.build().unwrap();
    let p = lower(&compile(&g, &Options::default()).unwrap().graph).unwrap();
    assert!(p.kernels.iter().all(|k| k.blas.is_none()), "{p}");
}

/// A causal mask (a constant hiding key `j` from query `i` when `j > i + off`, with -inf or
/// a large negative value) lets each block stop at the last key tile its last query sees:
/// the tile loop gets that bound (two more `min`s than with any other mask), and the results
/// stay the reference's: f32 (K/V-tiled kernel) and f16 (tensor cores), queries and keys
/// of different lengths (off = keys − queries), masks of -inf and of -1e9. A mask that
/// differs from causal in one element, whose first row sees no key, or whose hidden keys
/// are not far enough below the seen ones to weigh exactly 0, is not taken for one. A large
/// f16 mask (its cast left in the kernel) is seen through the cast.
#[test]
fn causal_masks_skip_hidden_key_tiles() {
    use smelt::DType;
    let graph = |dtype: DType, nq: usize, nk: usize, d: usize, mask: &[f32]| {
        let mut b = smelt::GraphBuilder::new();
        let q = b.input("q", dtype, &[2, 3, nq, d]).unwrap();
        let k = b.input("k", dtype, &[2, 3, nk, d]).unwrap();
        let v = b.input("v", dtype, &[2, 3, nk, d]).unwrap();
        let kt = b.transpose(k, &[0, 1, 3, 2]).unwrap();
        let s = b.matmul(q, kt).unwrap();
        let scale = b.scalar(dtype, 1.0 / (d as f64).sqrt());
        let s = b.mul(s, scale).unwrap();
        let m = b.constant(Tensor::f32([nq, nk], mask.to_vec()));
        let m = if dtype == DType::F32 {
            m
        } else {
            b.cast(m, dtype).unwrap()
        };
        let s = b.add(s, m).unwrap();
        let p = b.softmax(s, -1).unwrap();
        let o = b.matmul(p, v).unwrap();
        b.output("o", o).unwrap();
        b.build().unwrap()
    };
    let mins = |g: &Graph| {
        let p = lower(&compile(g, &Options::default()).unwrap().graph).unwrap();
        let k = p.kernels.iter().find(|k| k.name.contains("attention"));
        k.unwrap_or_else(|| panic!("no attention kernel\n{p}"))
            .to_string()
            .matches("min(")
            .count()
    };
    for dtype in [DType::F32, DType::F16] {
        let (rtol, atol) = if dtype == DType::F32 {
            (1e-4, 1e-5)
        } else {
            (1e-2, 1e-2)
        };
        for (nq, nk, hidden) in [(70, 70, f32::NEG_INFINITY), (80, 100, -1e9)] {
            let off = nk - nq;
            let causal = causal_mask(nq, nk, off, hidden);
            let mut near = causal.clone();
            // The first row sees its last key too.
            near[nk - 1] = 0.0;
            let mut blind = causal.clone();
            // The first row sees nothing.
            blind[..nk].fill(hidden);
            // Hidden keys only 8 below the seen ones: their weight is e^-8, not 0.
            let close: Vec<f32> = causal
                .iter()
                .map(|&v| if v == 0.0 { -99_999_992.0 } else { -1e8 })
                .collect();
            let label = format!("{dtype} {nq}x{nk}");
            let base = mins(&graph(dtype, nq, nk, 32, &near));
            // The bound, and the block's last query row clamped to the last row.
            assert_eq!(
                mins(&graph(dtype, nq, nk, 32, &causal)),
                base + 2,
                "{label}"
            );
            assert_eq!(mins(&graph(dtype, nq, nk, 32, &blind)), base, "{label}");
            if dtype == DType::F32 {
                assert_eq!(mins(&graph(dtype, nq, nk, 32, &close)), base, "{label}");
                check_within(&graph(dtype, nq, nk, 16, &close), true, rtol, atol)
                    .unwrap_or_else(|e| panic!("{label} close: {e}"));
            }
            for (what, mask) in [("causal", &causal), ("blind", &blind)] {
                check_within(&graph(dtype, nq, nk, 16, mask), true, rtol, atol)
                    .unwrap_or_else(|e| panic!("{label} {what}: {e}"));
            }
        }
    }
    // A mask too large for the optimizer to fold its cast to f16 (300×300) is seen through
    // the cast.
    let n = 300;
    let causal = causal_mask(n, n, 0, -1e9);
    let mut near = causal.clone();
    near[n - 1] = 0.0;
    let base = mins(&graph(DType::F16, n, n, 32, &near));
    assert_eq!(mins(&graph(DType::F16, n, n, 32, &causal)), base + 2);
}
