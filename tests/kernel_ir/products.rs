//! Matrix products and convolutions: shared-memory tiles, tensor cores, and the interpreter's race check on them.

use super::*;

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
