//! The kernel IR: what one launch does, written out as loops, loads, stores, scalar ops and
//! block-level collectives. Lowering produces it; the kernel-IR interpreter runs it exactly as
//! written; the CUDA and C renderers print it.
//!
//! Execution model: a kernel runs `launch.grid` blocks of `launch.block` threads. Every
//! thread runs the body with its own variables. [`Stmt::Reduce`] and [`Stmt::Barrier`]
//! involve every thread of the block (or of the warp lanes they name), so they may only appear
//! where all threads of a block get to them together: at the top level of the body, or inside
//! a loop whose bounds depend on the block index alone ([`Stmt::For`] with `uniform: true`).

use crate::ir::{BinaryOp, DType, UnaryOp};
use serde::{Deserialize, Serialize};
use std::fmt;

/// A buffer of the program (graph input, weight, intermediate or output).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BufferDecl {
    /// Name (the producing node's).
    pub name: String,
    /// Element type in memory.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<usize>,
    /// Number of elements.
    pub len: usize,
}

/// Built-in integer values of the execution model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Builtin {
    /// Index of the block in the grid.
    Block,
    /// Index of the thread in its block.
    Thread,
    /// Threads per block.
    BlockDim,
    /// Blocks in the grid.
    GridDim,
}

/// Integer index arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[allow(missing_docs)]
pub enum IndexOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    /// 1 if a < b else 0.
    Lt,
    /// 1 if a >= b else 0.
    Ge,
    /// 1 if a == b else 0.
    Eq,
    /// 1 if both are nonzero else 0.
    And,
    /// The smaller of the two.
    Min,
    /// A run-time index `a` into a dim of size `b`, checked: `a + b` for `-b <= a < 0`, `a`
    /// for `0 <= a < b`; any other `a` faults the run at the kernel's check site (an entry of
    /// [`Kernel::checks`]), which then returns an error naming the node and the index, and
    /// the value is 0 so that no access leaves the tensor.
    Check(u32),
}

impl IndexOp {
    /// The C operator.
    pub fn symbol(self) -> &'static str {
        match self {
            IndexOp::Add => "+",
            IndexOp::Sub => "-",
            IndexOp::Mul => "*",
            IndexOp::Div => "/",
            IndexOp::Rem => "%",
            IndexOp::Lt => "<",
            IndexOp::Ge => ">=",
            IndexOp::Eq => "==",
            IndexOp::And => "&&",
            IndexOp::Min => "min",
            IndexOp::Check(_) => "check",
        }
    }
}

/// Combining operation of a reduction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[allow(missing_docs)]
pub enum ReduceOp {
    Sum,
    Max,
    Min,
    Prod,
}

impl ReduceOp {
    /// The identity element.
    pub fn identity(self) -> f64 {
        match self {
            ReduceOp::Sum => 0.0,
            ReduceOp::Prod => 1.0,
            ReduceOp::Max => f64::NEG_INFINITY,
            ReduceOp::Min => f64::INFINITY,
        }
    }

    /// The identity over 64-bit integers.
    pub fn identity_int(self) -> i64 {
        match self {
            ReduceOp::Sum => 0,
            ReduceOp::Prod => 1,
            ReduceOp::Max => i64::MIN,
            ReduceOp::Min => i64::MAX,
        }
    }
}

/// Which threads combine their values in a [`Stmt::Reduce`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Scope {
    /// Each group of `width` consecutive lanes of a warp (a power of two, at most 32): a
    /// butterfly of warp shuffles, no shared memory and no barrier.
    Warp(usize),
    /// The whole block: a butterfly in each warp, then across warps through shared memory.
    Block,
}

/// What a [`Stmt::Reduce`] combines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Combiner {
    /// One value, with a reduction operation.
    Op(ReduceOp),
    /// Online-softmax partials `(max, sum)`: `sum` is Σ exp(x - max) over the values seen.
    /// Merging rescales both sums to the larger max.
    MaxSum,
    /// Welford partials `(count, mean, m2)`: `m2` is Σ (x - mean)²; merged with Chan's
    /// formula.
    Welford,
}

impl Combiner {
    /// How many variables a partial result takes.
    pub fn arity(self) -> usize {
        match self {
            Combiner::Op(_) => 1,
            Combiner::MaxSum => 2,
            Combiner::Welford => 3,
        }
    }
}

/// A scalar expression. Floats compute in the kernel's [`Precision`]; indices in i64.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Expr {
    /// Float constant.
    F(f64),
    /// Integer constant.
    I(i64),
    /// A variable.
    Var(u32),
    /// A built-in index.
    Builtin(Builtin),
    /// Element `index` of buffer `buf`, converted to the compute type.
    Load {
        /// Buffer.
        buf: u32,
        /// Element index.
        index: Box<Expr>,
    },
    /// Elementwise function.
    Unary(UnaryOp, Box<Expr>),
    /// Elementwise function of two values.
    Binary(BinaryOp, Box<Expr>, Box<Expr>),
    /// `cond ? a : b`.
    Select(Box<Expr>, Box<Expr>, Box<Expr>),
    /// Conversion to a dtype's values (rounding as storing would).
    Cast(DType, Box<Expr>),
    /// Combining two values as a reduction does.
    Combine(ReduceOp, Box<Expr>, Box<Expr>),
    /// Integer index arithmetic.
    Index(IndexOp, Box<Expr>, Box<Expr>),
    /// Element `index` of the block's shared array `array` (of the compute type).
    Shared {
        /// Array (an index into [`Kernel::shared`]).
        array: u32,
        /// Element index.
        index: Box<Expr>,
    },
}

/// A statement.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Stmt {
    /// `var = value` (declares on first assignment).
    Let {
        /// Variable.
        var: u32,
        /// Value.
        value: Expr,
    },
    /// `buf[index] = value`, converted to the buffer's dtype.
    Store {
        /// Buffer.
        buf: u32,
        /// Element index.
        index: Expr,
        /// Value.
        value: Expr,
    },
    /// `shared[array][index] = value`: a write to the block's shared memory. Another
    /// thread may read it only after a [`Stmt::Barrier`] (the interpreter checks).
    SharedStore {
        /// Array (an index into [`Kernel::shared`]).
        array: u32,
        /// Element index.
        index: Expr,
        /// Value.
        value: Expr,
    },
    /// Every lane of the warp sets fragment `frag` to `value` everywhere.
    FragFill {
        /// Fragment.
        frag: u32,
        /// Value.
        value: f64,
    },
    /// The warp loads fragment `frag` (16×16, row-major) from shared array `array` at
    /// element `offset` (the same in every lane; 32-byte aligned) with row stride `ld`.
    FragLoad {
        /// Fragment.
        frag: u32,
        /// Shared array.
        array: u32,
        /// First element.
        offset: Expr,
        /// Row stride (elements; 16 bytes' worth a multiple).
        ld: usize,
    },
    /// The warp's tensor-core product `acc += a × b` (16×16×16).
    FragMma {
        /// Accumulator fragment.
        acc: u32,
        /// Left fragment.
        a: u32,
        /// Right fragment.
        b: u32,
    },
    /// The warp stores fragment `frag` to shared array `array` at `offset` (row-major,
    /// row stride `ld`), as [`Stmt::FragLoad`] reads.
    FragStore {
        /// Shared array.
        array: u32,
        /// First element.
        offset: Expr,
        /// Row stride.
        ld: usize,
        /// Fragment.
        frag: u32,
    },
    /// `vars[l] = buf[index + l]` for every lane `l`: one vector access. `index` is a multiple
    /// of the lane count, so the access is aligned to its size (buffers start 64-byte
    /// aligned).
    LoadVec {
        /// One variable per lane.
        vars: Vec<u32>,
        /// Buffer.
        buf: u32,
        /// Element index of lane 0.
        index: Expr,
    },
    /// `buf[index + l] = values[l]` for every lane `l`: one vector access, aligned as
    /// [`Stmt::LoadVec`]'s.
    StoreVec {
        /// Buffer.
        buf: u32,
        /// Element index of lane 0.
        index: Expr,
        /// One value per lane.
        values: Vec<Expr>,
    },
    /// `for var in (start..end).step_by(step)`.
    For {
        /// Loop variable.
        var: u32,
        /// First value.
        start: Expr,
        /// Bound (exclusive).
        end: Expr,
        /// Step (positive).
        step: Expr,
        /// Bounds depend on the block index alone (collectives allowed inside).
        uniform: bool,
        /// Body.
        body: Vec<Stmt>,
    },
    /// Runs `then` when `cond` is nonzero.
    If {
        /// Condition.
        cond: Expr,
        /// Body.
        then: Vec<Stmt>,
    },
    /// The threads of `scope` combine their partial results held in `vars` (one per
    /// component of the combiner); afterwards every one of them holds the combined result.
    Reduce {
        /// Who takes part.
        scope: Scope,
        /// How partials combine.
        combiner: Combiner,
        /// The partial's variables, reduced in place.
        vars: Vec<u32>,
    },
    /// Every thread of the block waits for the others.
    Barrier,
    /// A matrix product by a library routine (the `gemm` crate on the CPU). Kernels holding
    /// one run it once: they launch one block of one thread.
    Gemm(Box<Gemm>),
}

/// A strided matrix operand of a [`Gemm`]: element `(batch…, r, c)` of buffer `buf` is at
/// `offset + Σ batch[i]·batch_strides[i] + r·row_stride + c·col_stride` (strides in
/// elements; 0 broadcasts).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MatrixView {
    /// Buffer.
    pub buf: u32,
    /// Element of the first matrix's (0, 0).
    pub offset: i64,
    /// Stride of each batch dim of the product.
    pub batch_strides: Vec<i64>,
    /// Stride between rows.
    pub row_stride: i64,
    /// Stride between columns.
    pub col_stride: i64,
}

/// `c[b] = a[b] × b[b]` for every batch index `b`: `a` is m×k, `b` is k×n, `c` is m×n, all
/// f32, accumulated in f32 or wider.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Gemm {
    /// Batch dims.
    pub batch: Vec<usize>,
    /// Rows of `a` and `c`.
    pub m: usize,
    /// Columns of `b` and `c`.
    pub n: usize,
    /// Columns of `a`, rows of `b`.
    pub k: usize,
    /// Left operand.
    pub a: MatrixView,
    /// Right operand.
    pub b: MatrixView,
    /// Result (written, never read).
    pub c: MatrixView,
    /// `Some(w)`: `b` is a constant the compiler stored in column panels of width `w`:
    /// element (p, j) at `(j / w)·k·w + p·w + j % w` (zero past `n`; `b`'s strides are
    /// unused), the same for every batch.
    pub b_panels: Option<usize>,
}

impl Expr {
    /// Calls `f` on the expression and on each of its subexpressions.
    pub fn walk(&self, f: &mut dyn FnMut(&Expr)) {
        f(self);
        match self {
            Expr::F(_) | Expr::I(_) | Expr::Var(_) | Expr::Builtin(_) => {}
            Expr::Load { index, .. } | Expr::Shared { index, .. } => index.walk(f),
            Expr::Unary(_, a) | Expr::Cast(_, a) => a.walk(f),
            Expr::Binary(_, a, b) | Expr::Combine(_, a, b) | Expr::Index(_, a, b) => {
                a.walk(f);
                b.walk(f);
            }
            Expr::Select(c, a, b) => {
                c.walk(f);
                a.walk(f);
                b.walk(f);
            }
        }
    }
}

/// What a loop body whose iterations share no variable sets: see
/// [`Stmt::independent_iterations`].
#[derive(Clone, Debug, PartialEq)]
pub struct Iterations {
    /// The variables the statements before the folds set, in order (once per setting).
    pub sets: Vec<u32>,
    /// The trailing folds `acc = combine(acc, e)`, last first: one op, distinct
    /// accumulators.
    pub folds: Vec<(u32, ReduceOp)>,
}

impl Stmt {
    /// The loop body's [`Iterations`] when its iterations share no variable: it only sets
    /// variables and stores; every variable a statement reads that the body sets was set
    /// earlier in the same iteration; except trailing folds `acc = combine(acc, e)` of one
    /// op into distinct accumulators, which nothing else in the body reads or sets.
    /// (Memory is not looked at: a kernel reads a buffer it writes only at the index it
    /// writes.)
    pub fn independent_iterations(body: &[Stmt]) -> Option<Iterations> {
        let mut folds: Vec<(u32, ReduceOp)> = Vec::new();
        for s in body.iter().rev() {
            match s {
                Stmt::Let {
                    var,
                    value: Expr::Combine(op, a, _),
                } if **a == Expr::Var(*var)
                    && folds.iter().all(|&(acc, o)| o == *op && acc != *var) =>
                {
                    folds.push((*var, *op))
                }
                _ => break,
            }
        }
        let is_acc = |v: u32| folds.iter().any(|&(acc, _)| acc == v);
        let plain = &body[..body.len() - folds.len()];
        let set_in_plain = |v: u32| {
            plain
                .iter()
                .any(|s| matches!(s, Stmt::Let { var, .. } if *var == v))
        };
        let mut sets: Vec<u32> = Vec::new();
        // Reads an accumulator, or a variable the body sets later.
        let reads_unset = |e: &Expr, sets: &[u32]| {
            let mut bad = false;
            e.walk(&mut |x| {
                if let Expr::Var(v) = x {
                    bad |= is_acc(*v) || (set_in_plain(*v) && !sets.contains(v));
                }
            });
            bad
        };
        for s in plain {
            match s {
                Stmt::Let { var, value } => {
                    if reads_unset(value, &sets) || is_acc(*var) {
                        return None;
                    }
                    sets.push(*var);
                }
                Stmt::Store { index, value, .. } => {
                    if reads_unset(index, &sets) || reads_unset(value, &sets) {
                        return None;
                    }
                }
                _ => return None,
            }
        }
        // What the folds add reads no accumulator (every plain variable is set by now).
        for s in &body[plain.len()..] {
            if let Stmt::Let {
                value: Expr::Combine(_, _, e),
                ..
            } = s
            {
                if reads_unset(e, &sets) {
                    return None;
                }
            }
        }
        Some(Iterations { sets, folds })
    }

    /// True when any statement is a collective (reduction, barrier, fragment operation),
    /// nested ones included.
    pub fn has_collective(stmts: &[Stmt]) -> bool {
        Stmt::any(stmts, &|s| {
            matches!(
                s,
                Stmt::Reduce { .. }
                    | Stmt::Barrier
                    | Stmt::FragFill { .. }
                    | Stmt::FragLoad { .. }
                    | Stmt::FragMma { .. }
                    | Stmt::FragStore { .. }
            )
        })
    }

    /// True when `pred` holds for any statement, nested loop and branch bodies included.
    pub fn any(stmts: &[Stmt], pred: &dyn Fn(&Stmt) -> bool) -> bool {
        stmts.iter().any(|s| {
            pred(s)
                || match s {
                    Stmt::For { body, .. } => Stmt::any(body, pred),
                    Stmt::If { then, .. } => Stmt::any(then, pred),
                    _ => false,
                }
        })
    }
}

/// A matrix product with its epilogue, in cuBLASLt's own (column-major) terms, that computes
/// exactly what a kernel computes: a runtime that has the library may make this call instead
/// of launching the kernel. For every batch `t < batch` and `i < m`, `j < n`:
///
/// `d[i, j] = act(alpha · Σ_p op(a)[i, p] · op(b)[p, j] + bias[i] + residual[i, j])`
///
/// where a column-major operand `x` (leading dim `ld`) has element `(r, c)` at
/// `offset + t·batch_stride + r + c·ld`, and `op(x)` is `x` or, when `trans`, its transpose (`op(a)` is
/// m×k, `op(b)` k×n). `residual` is laid out as `d`. Products accumulate in f32 (f64 in the
/// interpreter); the result is rounded to `dtype` once, after the epilogue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlasGemm {
    /// Element type of every operand, the bias and the result: f32, f16 or bf16.
    pub dtype: DType,
    /// Rows of `op(a)` and `d`.
    pub m: usize,
    /// Columns of `op(b)` and `d`.
    pub n: usize,
    /// Columns of `op(a)`, rows of `op(b)`.
    pub k: usize,
    /// Products in the batch.
    pub batch: usize,
    /// Left operand.
    pub a: BlasMatrix,
    /// Right operand.
    pub b: BlasMatrix,
    /// Result (never transposed).
    pub d: BlasMatrix,
    /// Scale of the product.
    pub alpha: f64,
    /// A buffer of `m` elements added to every column (the same for every batch).
    pub bias: Option<u32>,
    /// A buffer laid out as `d`, added before the activation (cuBLASLt's `C`, `beta = 1`).
    pub residual: Option<u32>,
    /// Applied last.
    pub activation: Option<BlasActivation>,
}

/// A column-major operand of a [`BlasGemm`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlasMatrix {
    /// Buffer.
    pub buf: u32,
    /// Read transposed.
    pub trans: bool,
    /// Leading dimension (elements between columns of the stored matrix).
    pub ld: usize,
    /// Elements between consecutive products of the batch (0: every product reads the same).
    pub batch_stride: usize,
    /// Element of the first product's (0, 0): the call's pointer is the buffer's plus this
    /// (a slice of a buffer, such as one head's columns of a fused QKV projection).
    #[serde(default)]
    pub offset: usize,
}

/// The activations cuBLASLt applies in a matmul's epilogue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlasActivation {
    /// `max(x, 0)`.
    Relu,
    /// GELU, tanh approximation: `x/2 · (1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
    GeluTanh,
}

impl fmt::Display for BlasGemm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let x = |name: &str, m: &BlasMatrix| {
            let t = if m.trans { "ᵀ" } else { "" };
            let at = match m.offset {
                0 => String::new(),
                o => format!("+{o}"),
            };
            format!(
                "{name}=b{}{at}{t} ld {} stride {}",
                m.buf, m.ld, m.batch_stride
            )
        };
        let mut sum = String::from("alpha·a×b");
        if let Some(b) = self.bias {
            sum += &format!(" + bias b{b}");
        }
        if let Some(r) = self.residual {
            sum += &format!(" + b{r}");
        }
        let value = match self.activation {
            Some(BlasActivation::Relu) => format!("relu({sum})"),
            Some(BlasActivation::GeluTanh) => format!("gelu_tanh({sum})"),
            None => sum,
        };
        write!(
            f,
            "cublasLt {} batch {} m {} n {} k {}: d = {value}, alpha {}; {}, {}, {}",
            self.dtype,
            self.batch,
            self.m,
            self.n,
            self.k,
            self.alpha,
            x("a", &self.a),
            x("b", &self.b),
            x("d", &self.d),
        )
    }
}

/// Float arithmetic precision of a kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 (f16/bf16/f32 storage).
    F32,
    /// f64 (f64 storage).
    F64,
}

impl Precision {
    /// The float dtype of this precision.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F64 => DType::F64,
        }
    }
}

/// Blocks and threads of a launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Launch {
    /// Blocks.
    pub grid: usize,
    /// Threads per block (a multiple of 32).
    pub block: usize,
}

/// One kernel.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Kernel {
    /// Stable name.
    pub name: String,
    /// The graph node it computes.
    pub node: String,
    /// Blocks and threads.
    pub launch: Launch,
    /// Float precision.
    pub precision: Precision,
    /// Buffers it reads.
    pub reads: Vec<u32>,
    /// Buffers it writes.
    pub writes: Vec<u32>,
    /// Number of variables (`v0..`).
    pub vars: u32,
    /// The block's shared arrays.
    pub shared: Vec<SharedArray>,
    /// The warps' tensor-core fragments (each warp has its own of each).
    pub frags: Vec<Fragment>,
    /// Statements every thread runs.
    pub body: Vec<Stmt>,
    /// The same result by one cuBLASLt call, when the library covers the kernel's whole
    /// body (its product and epilogue).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blas: Option<Box<BlasGemm>>,
    /// The run-time index checks of its body ([`IndexOp::Check`] sites), by site.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<IndexCheck>,
}

/// What a run-time index check guards: the node that indexes, and the dim it indexes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
pub struct IndexCheck {
    /// The indexing node's name.
    pub node: String,
    /// Its op, as the reference interpreter names it (`gather`, `gather_nd`, …).
    pub op: String,
    /// The data dim the index addresses.
    pub axis: usize,
    /// That dim's size.
    pub size: usize,
}

impl IndexCheck {
    /// The error a run reports when index `index` failed this check.
    pub fn error(&self, index: i64) -> crate::Error {
        crate::Error::Node {
            node: self.node.clone(),
            op: self.op.clone(),
            message: out_of_range(index, self.axis, self.size),
        }
    }
}

/// The one wording of an out-of-range index, shared by the reference interpreter and every
/// executor of lowered code.
pub fn out_of_range(index: i64, axis: usize, size: usize) -> String {
    format!("index {index} out of range for axis {axis} of size {size} (valid: -{size}..{size})")
}

/// A shared array of a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SharedArray {
    /// Element type (values are converted to it when stored).
    pub dtype: DType,
    /// Elements.
    pub len: usize,
}

/// What a tensor-core fragment holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum FragRole {
    /// A 16×16 left operand.
    A,
    /// A 16×16 right operand.
    B,
    /// A 16×16 f32 accumulator.
    Acc,
}

/// A warp's 16×16 tensor-core fragment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Fragment {
    /// Role.
    pub role: FragRole,
    /// Element type: f16 or bf16 for operands, f32 for accumulators.
    pub dtype: DType,
}

/// What a program is lowered for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// A GPU: blocks of many threads, block reductions, matrix products as loops.
    #[default]
    Gpu,
    /// The CPU: one thread per block, each block a contiguous share of the work (the C
    /// renderer runs blocks on a thread pool), f32 matrix products as library [`Gemm`]
    /// calls.
    Cpu,
}

/// Where a program's buffers live: one arena, planned once when the program is lowered
/// ([`crate::kernel::layout`]), plus, on the CPU, the caller's own memory for the graph's
/// inputs and outputs.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Layout {
    /// Offset of each buffer in the arena (0, unused, for a buffer with a slot).
    pub offsets: Vec<usize>,
    /// The pointer slot of each buffer passed in place, if it is one: on the CPU, the graph
    /// inputs first (in order), then each output buffer a kernel writes (in order, once),
    /// then the weights (the tensors' own storage). None on the GPU, where every buffer is
    /// in the arena.
    pub slots: Vec<Option<usize>>,
    /// Arena bytes (every offset + size within it, 64-byte aligned).
    pub size: usize,
}

/// A lowered program laid out in memory: buffers with their places, kernels in launch order.
/// The one value the compiler hands to the runtimes and to every artifact (`plan.json`, the
/// C source, CUDA sources and bundles).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Program {
    /// What it was lowered for.
    pub target: Target,
    /// Every buffer.
    pub buffers: Vec<BufferDecl>,
    /// Graph inputs: (input name, buffer).
    pub inputs: Vec<(String, u32)>,
    /// Constants: (buffer, value), uploaded before the first run.
    pub constants: Vec<(u32, std::sync::Arc<crate::ir::Tensor>)>,
    /// Graph outputs: (output name, buffer).
    pub outputs: Vec<(String, u32)>,
    /// Kernels in launch order.
    pub kernels: Vec<Kernel>,
    /// Where each buffer lives.
    pub layout: Layout,
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::F(v) => write!(f, "{v:?}"),
            Expr::I(v) => write!(f, "{v}"),
            Expr::Var(v) => write!(f, "v{v}"),
            Expr::Builtin(b) => write!(
                f,
                "{}",
                match b {
                    Builtin::Block => "block",
                    Builtin::Thread => "thread",
                    Builtin::BlockDim => "block_dim",
                    Builtin::GridDim => "grid_dim",
                }
            ),
            Expr::Load { buf, index } => write!(f, "b{buf}[{index}]"),
            Expr::Unary(u, a) => write!(f, "{}({a})", crate::ir::Op::Unary(*u).name()),
            Expr::Binary(b, x, y) => write!(f, "{}({x}, {y})", crate::ir::Op::Binary(*b).name()),
            Expr::Select(c, a, b) => write!(f, "({c} ? {a} : {b})"),
            Expr::Cast(d, a) => write!(f, "{d}({a})"),
            Expr::Combine(op, a, b) => write!(f, "{op:?}({a}, {b})"),
            Expr::Index(IndexOp::Min, a, b) => write!(f, "min({a}, {b})"),
            Expr::Index(IndexOp::Check(s), a, b) => write!(f, "check{s}({a}, {b})"),
            Expr::Shared { array, index } => write!(f, "s{array}[{index}]"),
            Expr::Index(op, a, b) => {
                let s = op.symbol();
                write!(f, "({a} {s} {b})")
            }
        }
    }
}

fn fmt_block(f: &mut fmt::Formatter<'_>, stmts: &[Stmt], depth: usize) -> fmt::Result {
    let pad = "  ".repeat(depth);
    for s in stmts {
        match s {
            Stmt::Let { var, value } => writeln!(f, "{pad}v{var} = {value}")?,
            Stmt::Store { buf, index, value } => writeln!(f, "{pad}b{buf}[{index}] = {value}")?,
            Stmt::SharedStore {
                array,
                index,
                value,
            } => writeln!(f, "{pad}s{array}[{index}] = {value}")?,
            Stmt::FragFill { frag, value } => writeln!(f, "{pad}f{frag} = fill({value:?})")?,
            Stmt::FragLoad {
                frag,
                array,
                offset,
                ld,
            } => writeln!(f, "{pad}f{frag} = s{array}[{offset} ld {ld}]")?,
            Stmt::FragMma { acc, a, b } => writeln!(f, "{pad}f{acc} += f{a} x f{b}")?,
            Stmt::FragStore {
                array,
                offset,
                ld,
                frag,
            } => writeln!(f, "{pad}s{array}[{offset} ld {ld}] = f{frag}")?,
            Stmt::LoadVec { vars, buf, index } => {
                let vs: Vec<String> = vars.iter().map(|v| format!("v{v}")).collect();
                let n = vars.len();
                writeln!(f, "{pad}{} = b{buf}[{index} +: {n}]", vs.join(", "))?
            }
            Stmt::StoreVec { buf, index, values } => {
                let vs: Vec<String> = values.iter().map(|v| v.to_string()).collect();
                let n = values.len();
                writeln!(f, "{pad}b{buf}[{index} +: {n}] = ({})", vs.join(", "))?
            }
            Stmt::For {
                var,
                start,
                end,
                step,
                uniform,
                body,
            } => {
                let u = if *uniform { " uniform" } else { "" };
                writeln!(f, "{pad}for{u} v{var} in {start}..{end} step {step} {{")?;
                fmt_block(f, body, depth + 1)?;
                writeln!(f, "{pad}}}")?;
            }
            Stmt::If { cond, then } => {
                writeln!(f, "{pad}if {cond} {{")?;
                fmt_block(f, then, depth + 1)?;
                writeln!(f, "{pad}}}")?;
            }
            Stmt::Reduce {
                scope,
                combiner,
                vars,
            } => {
                let vs: Vec<String> = vars.iter().map(|v| format!("v{v}")).collect();
                let vs = vs.join(", ");
                let scope = match scope {
                    Scope::Warp(w) => format!("warp{w}"),
                    Scope::Block => "block".into(),
                };
                let how = match combiner {
                    Combiner::Op(op) => format!("{op:?}"),
                    c => format!("{c:?}"),
                };
                writeln!(f, "{pad}{vs} = {scope}_reduce_{how}({vs})")?
            }
            Stmt::Barrier => writeln!(f, "{pad}barrier")?,
            Stmt::Gemm(g) => {
                let v = |m: &MatrixView| {
                    let at = match m.offset {
                        0 => String::new(),
                        o => format!("+{o}"),
                    };
                    format!(
                        "b{}{at}{:?}/{}/{}",
                        m.buf, m.batch_strides, m.row_stride, m.col_stride
                    )
                };
                let b = match g.b_panels {
                    Some(w) => format!("b{} in panels of {w}", g.b.buf),
                    None => v(&g.b),
                };
                writeln!(
                    f,
                    "{pad}gemm batch {:?} m {} n {} k {}: {} = {} x {b}",
                    g.batch,
                    g.m,
                    g.n,
                    g.k,
                    v(&g.c),
                    v(&g.a),
                )?
            }
        }
    }
    Ok(())
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "kernel {} <<<{}, {}>>> {:?} reads {:?} writes {:?} {{",
            self.name, self.launch.grid, self.launch.block, self.precision, self.reads, self.writes
        )?;
        for (i, a) in self.shared.iter().enumerate() {
            writeln!(f, "  shared s{i}: {}[{}]", a.dtype, a.len)?;
        }
        for (i, fr) in self.frags.iter().enumerate() {
            writeln!(f, "  fragment f{i}: {:?} {}", fr.role, fr.dtype)?;
        }
        fmt_block(f, &self.body, 1)?;
        if let Some(b) = &self.blas {
            writeln!(f, "  or {b}")?;
        }
        write!(f, "}}")
    }
}

impl fmt::Display for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.buffers.iter().enumerate() {
            writeln!(
                f,
                "buffer b{i} {}: {}{}",
                b.name,
                b.dtype,
                crate::ir::fmt_shape(&b.shape)
            )?;
        }
        for k in &self.kernels {
            writeln!(f, "{k}")?;
        }
        Ok(())
    }
}
