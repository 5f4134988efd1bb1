//! Interleaved streams for the CPU's latency-bound loops.
//!
//! An inner loop whose iterations are independent and each run a long chain of dependent
//! arithmetic (an inlined exp, tanh, erf, a division, a square root) is bound by that
//! chain's latency, not by the core's throughput: the out-of-order window holds too few
//! iterations to overlap them. The C compiler vectorizes the loop but keeps one chain per
//! vector in flight.
//!
//! [`interleave`] splits such a loop's range into [`STREAMS`] contiguous parts walked
//! together: iteration `i` of the new loop runs the body for `lo + i`, `lo + q + i`, … with
//! statements interleaved (the first statement for every part, then the second, …), so
//! that independent chains sit next to each other in the instruction stream. A tail loop
//! runs the last `(hi - lo) mod STREAMS` iterations (none when the range is a constant
//! multiple of it). Each part is still a contiguous walk, so the loop still vectorizes. A
//! loop that folds a float sum or product (a softmax row's sum of exponentials) gets one
//! accumulator per part, added into the first before the tail: the C renderer turns them
//! into one multi-variable `omp simd` reduction.
//!
//! It is a kernel-IR rewrite, so the interpreter runs exactly what the C compiler gets.
//! On the 10-op elementwise chain (tanh, sqrt, sigmoid) this took the 2-core machine from
//! 7.8 to about 5.5 ms; a loop of cheap arithmetic only gets more memory streams from it
//! and is left alone.

use super::{add, mul, substitute, Builtin, Expr, IndexOp, Program, ReduceOp, Stmt};
use crate::ir::{BinaryOp, UnaryOp};
use std::collections::HashMap;

/// Parts walked together (4: measured best on the chain, 2 gives half the gain, 8 no more).
pub const STREAMS: i64 = 4;

/// Loops shorter than this (when their length is known) are left alone: too few vectors to
/// interleave.
const MIN_TRIP: i64 = 16 * STREAMS;

/// Interleaves every latency-bound inner loop of the program's kernels.
pub(super) fn interleave(program: &mut Program) {
    for k in &mut program.kernels {
        let mut cx = Cx {
            next: k.vars,
            // One thread per block (always, on the CPU): a loop stepping by the block's
            // thread count steps by one.
            unit_block: k.launch.block == 1,
        };
        k.body = block(std::mem::take(&mut k.body), &mut cx);
        k.vars = cx.next;
    }
}

struct Cx {
    next: u32,
    unit_block: bool,
}

impl Cx {
    fn fresh(&mut self) -> u32 {
        self.next += 1;
        self.next - 1
    }
}

fn block(stmts: Vec<Stmt>, cx: &mut Cx) -> Vec<Stmt> {
    let mut out: Vec<Stmt> = Vec::with_capacity(stmts.len());
    for s in stmts {
        match s {
            Stmt::For {
                var,
                start,
                end,
                step,
                uniform,
                body,
            } => {
                let unit = step == Expr::I(1)
                    || (cx.unit_block && step == Expr::Builtin(Builtin::BlockDim));
                let start = match start {
                    Expr::Builtin(Builtin::Thread) if unit && cx.unit_block => Expr::I(0),
                    start => start,
                };
                let shape = if unit {
                    latency_bound(var, &start, &end, &body, out.last())
                } else {
                    None
                };
                match shape {
                    Some(fold) => {
                        let l = Loop {
                            var,
                            start,
                            end,
                            uniform,
                            body,
                        };
                        split(l, fold, cx, &mut out)
                    }
                    None => out.push(Stmt::For {
                        var,
                        start,
                        end,
                        step,
                        uniform,
                        body: block(body, cx),
                    }),
                }
            }
            Stmt::If { cond, then } => out.push(Stmt::If {
                cond,
                then: block(then, cx),
            }),
            other => out.push(other),
        }
    }
    out
}

/// A loop with a unit step.
struct Loop {
    var: u32,
    start: Expr,
    end: Expr,
    uniform: bool,
    body: Vec<Stmt>,
}

/// A sum or product folded into a float accumulator by a loop's last statement.
#[derive(Clone, Copy)]
struct Fold {
    acc: u32,
    op: ReduceOp,
}

/// `Some` for a loop worth interleaving (with its fold, if it ends in one): its iterations
/// share no variable ([`Stmt::independent_iterations`], the test the C renderer's `omp simd`
/// makes too) and it sets each variable once and not the loop variable; it folds at most a
/// float sum or product (`acc = acc + e`, `acc` set to a float just before the loop); every
/// store's index depends on the loop variable; it runs a long-latency op; and it is not
/// known to be short. `before`: the statement before the loop.
fn latency_bound(
    var: u32,
    start: &Expr,
    end: &Expr,
    body: &[Stmt],
    before: Option<&Stmt>,
) -> Option<Option<Fold>> {
    if let (Expr::I(a), Expr::I(b)) = (start, end) {
        if b - a < MIN_TRIP {
            return None;
        }
    }
    let shape = Stmt::independent_iterations(body)?;
    // The loop variable is not set, nor any variable twice (each part renames its own).
    let mut sets = shape.sets.clone();
    sets.sort_unstable();
    sets.dedup();
    if sets.len() != shape.sets.len() || sets.contains(&var) {
        return None;
    }
    let fold = match (shape.folds.as_slice(), before) {
        ([], _) => None,
        (
            [(acc, op @ (ReduceOp::Sum | ReduceOp::Prod))],
            Some(Stmt::Let {
                var: init,
                value: Expr::F(_),
            }),
        ) if init == acc => Some(Fold { acc: *acc, op: *op }),
        _ => return None,
    };
    let stores_indexed = body.iter().all(|s| match s {
        Stmt::Store { index, .. } => reads(index, var),
        _ => true,
    });
    let slow = body.iter().any(|s| match s {
        Stmt::Let { value, .. } | Stmt::Store { value, .. } => has_slow_op(value),
        _ => false,
    });
    (stores_indexed && slow).then_some(fold)
}

/// The loop as the interleaved loop and its tail. A fold gets one accumulator per part,
/// combined into the first before the tail.
fn split(l: Loop, fold: Option<Fold>, cx: &mut Cx, out: &mut Vec<Stmt>) {
    let Loop {
        var,
        start,
        end,
        uniform,
        body,
    } = l;
    // The parts' length: a constant when the range is.
    let (lo, q) = match (&start, &end) {
        (Expr::I(a), Expr::I(b)) => (Expr::I(*a), Expr::I((b - a) / STREAMS)),
        _ => {
            let (lo, q) = (cx.fresh(), cx.fresh());
            out.push(Stmt::Let {
                var: lo,
                value: start,
            });
            let len = Expr::Index(IndexOp::Sub, Box::new(end.clone()), Box::new(Expr::Var(lo)));
            out.push(Stmt::Let {
                var: q,
                value: Expr::Index(IndexOp::Div, Box::new(len), Box::new(Expr::I(STREAMS))),
            });
            (Expr::Var(lo), Expr::Var(q))
        }
    };
    // Part 0 keeps the body's variables; part j renames each one it sets (its accumulator
    // included) and reads the loop variable shifted by j·q.
    let renames: Vec<HashMap<u32, u32>> = (0..STREAMS)
        .map(|j| {
            body.iter()
                .filter_map(|s| match s {
                    Stmt::Let { var: v, .. } if j > 0 => Some((*v, cx.fresh())),
                    _ => None,
                })
                .collect()
        })
        .collect();
    if let Some(f) = fold {
        let identity = Expr::F(f.op.identity());
        for names in &renames[1..] {
            out.push(Stmt::Let {
                var: names[&f.acc],
                value: identity.clone(),
            });
        }
    }
    let mut parts = Vec::with_capacity(body.len() * STREAMS as usize);
    for s in &body {
        for (j, names) in renames.iter().enumerate() {
            let shifted = add(Expr::Var(var), mul(Expr::I(j as i64), q.clone()));
            let by = |x: u32| {
                if x == var {
                    Some(shifted.clone())
                } else {
                    names.get(&x).map(|&y| Expr::Var(y))
                }
            };
            parts.push(match s.clone() {
                Stmt::Let { var: v, value } => Stmt::Let {
                    var: names.get(&v).copied().unwrap_or(v),
                    value: substitute(value, &by),
                },
                Stmt::Store { buf, index, value } => Stmt::Store {
                    buf,
                    index: substitute(index, &by),
                    value: substitute(value, &by),
                },
                other => other,
            });
        }
    }
    let tail_start = add(lo.clone(), mul(Expr::I(STREAMS), q.clone()));
    let whole = tail_start == end;
    out.push(Stmt::For {
        var,
        start: lo.clone(),
        end: add(lo, q),
        step: Expr::I(1),
        uniform,
        body: parts,
    });
    if let Some(f) = fold {
        for names in &renames[1..] {
            out.push(Stmt::Let {
                var: f.acc,
                value: Expr::Combine(
                    f.op,
                    Box::new(Expr::Var(f.acc)),
                    Box::new(Expr::Var(names[&f.acc])),
                ),
            });
        }
    }
    if !whole {
        out.push(Stmt::For {
            var,
            start: tail_start,
            end,
            step: Expr::I(1),
            uniform,
            body,
        });
    }
}

/// An op whose inlined form is a long dependent chain (or a slow divider/sqrt unit).
fn has_slow_op(e: &Expr) -> bool {
    let mut slow = false;
    e.walk(&mut |x| {
        slow |= match x {
            Expr::Unary(op, _) => !matches!(
                op,
                UnaryOp::Neg
                    | UnaryOp::Abs
                    | UnaryOp::Relu
                    | UnaryOp::Floor
                    | UnaryOp::Ceil
                    | UnaryOp::Round
                    | UnaryOp::Sign
                    | UnaryOp::Not
                    | UnaryOp::IsNaN
                    | UnaryOp::IsInf(..)
                    | UnaryOp::LeakyRelu(_)
                    | UnaryOp::ThresholdedRelu(_)
                    | UnaryOp::HardSigmoid(..)
                    | UnaryOp::HardSwish
            ),
            Expr::Binary(op, _, _) => {
                matches!(op, BinaryOp::Div | BinaryOp::Pow | BinaryOp::FMod)
            }
            _ => false,
        }
    });
    slow
}

fn reads(e: &Expr, var: u32) -> bool {
    let mut found = false;
    e.walk(&mut |x| found |= *x == Expr::Var(var));
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{DType, Tensor};
    use crate::kernel::interp;
    use crate::kernel::ir::{BufferDecl, Builtin, Kernel, Launch, Precision};

    const N: usize = 1003;
    const PER: i64 = 400;

    fn x(i: u32) -> Box<Expr> {
        Box::new(Expr::Load {
            buf: 0,
            index: Box::new(Expr::Var(i)),
        })
    }

    /// `y = op(x)` over N elements in blocks of PER: `for v0 in b·PER..min(N, b·PER + PER)`.
    fn program(body: Vec<Stmt>, vars: u32) -> Program {
        program_with(vec![], body, vec![], vars)
    }

    /// `pre`, the loop, then `post`, in each block.
    fn program_with(pre: Vec<Stmt>, body: Vec<Stmt>, post: Vec<Stmt>, vars: u32) -> Program {
        let start = mul(Expr::Builtin(Builtin::Block), Expr::I(PER));
        let end = Expr::Index(
            IndexOp::Min,
            Box::new(Expr::I(N as i64)),
            Box::new(add(start.clone(), Expr::I(PER))),
        );
        let buf = |name: &str| BufferDecl {
            name: name.into(),
            dtype: DType::F32,
            shape: vec![N],
            len: N,
        };
        Program {
            target: crate::kernel::Target::Cpu,
            layout: Default::default(),
            buffers: vec![buf("x"), buf("y")],
            inputs: vec![("x".into(), 0)],
            constants: vec![],
            outputs: vec![("y".into(), 1)],
            kernels: vec![Kernel {
                name: "k0".into(),
                node: "y".into(),
                launch: Launch {
                    grid: N.div_ceil(PER as usize),
                    block: 1,
                },
                precision: Precision::F32,
                reads: vec![0],
                writes: vec![1],
                vars,
                shared: vec![],
                frags: vec![],
                body: [
                    pre,
                    vec![Stmt::For {
                        var: 0,
                        start,
                        end,
                        step: Expr::I(1),
                        uniform: true,
                        body,
                    }],
                    post,
                ]
                .concat(),
                blas: None,
                checks: Vec::new(),
            }],
        }
    }

    fn store(value: Expr) -> Stmt {
        Stmt::Store {
            buf: 1,
            index: Expr::Var(0),
            value,
        }
    }

    fn run(p: &Program) -> Vec<f64> {
        let xs: Vec<f32> = (0..N)
            .map(|i| ((i * 37) % 101) as f32 / 17.0 - 3.0)
            .collect();
        let inputs = HashMap::from([("x".to_string(), Tensor::f32([N], xs))]);
        let out = interp::run(p, &inputs).unwrap();
        out[0].1.to_f64()
    }

    fn loops(p: &Program) -> usize {
        p.kernels[0]
            .body
            .iter()
            .filter(|s| matches!(s, Stmt::For { .. }))
            .count()
    }

    #[test]
    fn a_latency_bound_loop_runs_as_interleaved_parts_and_a_tail() {
        // v1 = tanh(x); y = v1 / (1 + x·x): ranges of 400 and 203 elements, so both the
        // interleaved loop and the tail run.
        let body = vec![
            Stmt::Let {
                var: 1,
                value: Expr::Unary(UnaryOp::Tanh, x(0)),
            },
            store(Expr::Binary(
                BinaryOp::Div,
                Box::new(Expr::Var(1)),
                Box::new(Expr::Binary(
                    BinaryOp::Add,
                    Box::new(Expr::F(1.0)),
                    Box::new(Expr::Binary(BinaryOp::Mul, x(0), x(0))),
                )),
            )),
        ];
        let before = program(body, 2);
        let mut after = before.clone();
        interleave(&mut after);
        let k = &after.kernels[0];
        assert_eq!(loops(&after), 2, "{k:?}");
        // lo, q, then a renamed v1 for each part after the first.
        assert_eq!(k.vars, 2 + 2 + (STREAMS as u32 - 1));
        match &k.body[2] {
            Stmt::For { body, .. } => assert_eq!(body.len(), 2 * STREAMS as usize),
            s => panic!("{s:?}"),
        }
        assert_eq!(run(&after), run(&before));
    }

    #[test]
    fn a_latency_bound_sum_gets_an_accumulator_per_part() {
        // v2 = 0; for v0 { v1 = exp(x / 8); v2 = v2 + v1 }; y[b·PER] = v2
        let fold = |acc: u32, e: Expr| Stmt::Let {
            var: acc,
            value: Expr::Combine(
                crate::kernel::ir::ReduceOp::Sum,
                Box::new(Expr::Var(acc)),
                Box::new(e),
            ),
        };
        let body = vec![
            Stmt::Let {
                var: 1,
                value: Expr::Unary(
                    UnaryOp::Exp,
                    Box::new(Expr::Binary(BinaryOp::Mul, x(0), Box::new(Expr::F(0.125)))),
                ),
            },
            fold(2, Expr::Var(1)),
        ];
        let init = vec![Stmt::Let {
            var: 2,
            value: Expr::F(0.0),
        }];
        let out = vec![Stmt::Store {
            buf: 1,
            index: mul(Expr::Builtin(Builtin::Block), Expr::I(PER)),
            value: Expr::Var(2),
        }];
        let before = program_with(init, body, out, 3);
        let mut after = before.clone();
        interleave(&mut after);
        let k = &after.kernels[0];
        // The three other parts' accumulators start at 0 and are added in before the tail.
        let zeros = k
            .body
            .iter()
            .filter(|s| matches!(s, Stmt::Let { value: Expr::F(z), .. } if *z == 0.0))
            .count();
        assert_eq!(zeros, STREAMS as usize, "{k:?}");
        assert_eq!(loops(&after), 2);
        let (want, got) = (run(&before), run(&after));
        let sums = (0..N).step_by(PER as usize);
        for i in sums {
            assert!((want[i] - got[i]).abs() <= 1e-6 * want[i].abs(), "{i}");
            assert!(want[i] > 100.0);
        }
    }

    #[test]
    fn cheap_folding_short_and_carried_loops_are_left_alone() {
        let cheap = vec![store(Expr::Binary(BinaryOp::Add, x(0), x(0)))];
        // acc = acc + exp(x) with no float start right before the loop (so no known type).
        let fold = vec![
            Stmt::Let {
                var: 1,
                value: Expr::Combine(
                    crate::kernel::ir::ReduceOp::Sum,
                    Box::new(Expr::Var(1)),
                    Box::new(Expr::Unary(UnaryOp::Exp, x(0))),
                ),
            },
            store(Expr::Var(1)),
        ];
        // Every iteration writes element 0.
        let same_index = vec![Stmt::Store {
            buf: 1,
            index: Expr::I(0),
            value: Expr::Unary(UnaryOp::Exp, x(0)),
        }];
        for body in [cheap, fold, same_index] {
            let before = program(body, 2);
            let mut after = before.clone();
            interleave(&mut after);
            assert_eq!(after, before);
        }
        // A sum whose accumulator the body also sets (acc = exp(x); acc = acc + x): the
        // last iteration's value, not a sum, even with a float start before the loop.
        let reset = vec![
            Stmt::Let {
                var: 1,
                value: Expr::Unary(UnaryOp::Exp, x(0)),
            },
            Stmt::Let {
                var: 1,
                value: Expr::Combine(
                    crate::kernel::ir::ReduceOp::Sum,
                    Box::new(Expr::Var(1)),
                    x(0),
                ),
            },
        ];
        let init = vec![Stmt::Let {
            var: 1,
            value: Expr::F(0.0),
        }];
        let before = program_with(init, reset, vec![], 2);
        let mut after = before.clone();
        interleave(&mut after);
        assert_eq!(after, before);
        let slow = vec![store(Expr::Unary(UnaryOp::Exp, x(0)))];
        let mut short = program(slow, 1);
        let Stmt::For { start, end, .. } = &mut short.kernels[0].body[0] else {
            unreachable!()
        };
        (*start, *end) = (Expr::I(0), Expr::I(MIN_TRIP - 1));
        let before = short.clone();
        interleave(&mut short);
        assert_eq!(short, before);
    }
}
