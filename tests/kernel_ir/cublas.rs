//! cuBLASLt forms of product kernels, run by the interpreter as the library defines the call.

use super::*;

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
