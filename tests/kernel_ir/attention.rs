//! Attention kernels: K/V-tiled, tensor-core, cross attention with padding masks, causal tile skipping.

use super::*;

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

/// The exporters' attention: the query and the keys each scaled by `d^-1/4` before the
/// product (computed as the kernel loads them), and the softmax followed by the guard
/// `Where(IsNaN(p), 0, p)` that turns a fully masked row's NaN into zeros. The whole chain is
/// one attention kernel (no scaled copies, no score matrix, no guard kernel), on the K/V-tiled
/// (f32) and tensor-core (f16) kernels, and gives the reference's results, the fully masked
/// rows 0 on both sides; the C backend too.
#[test]
fn guarded_attention_with_scaled_operands_is_one_kernel() {
    use smelt::ir::UnaryOp;
    use smelt::DType;
    let build = |dtype: DType, s: usize, d: usize| -> Graph {
        let mut b = smelt::GraphBuilder::new();
        let q = b.input("q", dtype, &[2, 3, s, d]).unwrap();
        let k = b.input("k", dtype, &[2, 3, s, d]).unwrap();
        let v = b.input("v", dtype, &[2, 3, s, d]).unwrap();
        let c = b.scalar(dtype, (d as f64).powf(-0.25));
        let q = b.mul(q, c).unwrap();
        let kt = b.transpose(k, &[0, 1, 3, 2]).unwrap();
        let kt = b.mul(kt, c).unwrap();
        let scores = b.matmul(q, kt).unwrap();
        let mut mask: Vec<f32> = (0..s * s)
            .map(|i| ((i * 7) % 5) as f32 * 0.3 - 0.6)
            .collect();
        mask[s..2 * s].fill(f32::NEG_INFINITY);
        let m = b.constant(Tensor::f32([s, s], mask));
        let m = if dtype == DType::F32 {
            m
        } else {
            b.cast(m, dtype).unwrap()
        };
        let scores = b.add(scores, m).unwrap();
        let p = b.softmax(scores, -1).unwrap();
        let nan = b.unary(UnaryOp::IsNaN, p).unwrap();
        let zero = b.scalar(dtype, 0.0);
        let p = b.where_(nan, zero, p).unwrap();
        let o = b.matmul(p, v).unwrap();
        let o = b.transpose(o, &[0, 2, 1, 3]).unwrap();
        let o = b.reshape(o, &[2, s, 3 * d]).unwrap();
        b.output("o", o).unwrap();
        b.build().unwrap()
    };
    for (dtype, s, d, tol) in [
        (DType::F32, 7, 16, 1e-4),
        (DType::F32, 40, 64, 1e-4),
        (DType::F16, 33, 64, 2e-2),
    ] {
        let g = build(dtype, s, d);
        let c = compile(&g, &Options::default()).unwrap();
        let p = lower(&c.graph).unwrap();
        assert_eq!(p.kernels.len(), 1, "{dtype} {s}x{d}: one kernel\n{p}");
        assert!(p.kernels[0].name.contains("attention"), "{p}");
        let inputs = feeds(&g, 5);
        let want = interp::run(&g, &inputs).unwrap()[0].1.to_f64();
        // Query row 1 of every head is fully masked: zeros.
        for (i, w) in want.iter().enumerate() {
            let row = (i / (3 * d)) % s;
            assert_eq!(*w == 0.0, row == 1, "reference [{i}] = {w}");
        }
        check_within(&g, true, tol, tol).unwrap_or_else(|e| panic!("{dtype} {s}x{d}: {e}"));
        if dtype == DType::F32 {
            common::layers::c_backend(&g, true, 1e-4, 1e-5).unwrap();
        }
    }
}
