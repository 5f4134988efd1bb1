//! Vectorized pointwise kernels.

use super::*;

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
