//! The operator set of the IR. Every node produces exactly one tensor; multi-output ONNX
//! ops (Split) become several single-output nodes at import.

use super::dtype::DType;
use super::tensor::Tensor;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// A float attribute with bit-exact equality and hashing, so ops can be hash-consed.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct F64(pub f64);

impl PartialEq for F64 {
    fn eq(&self, o: &Self) -> bool {
        self.0.to_bits() == o.0.to_bits()
    }
}
impl Eq for F64 {}
impl Hash for F64 {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.0.to_bits().hash(h)
    }
}
impl PartialOrd for F64 {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
/// A total order consistent with bit equality.
impl Ord for F64 {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&o.0)
    }
}
impl fmt::Display for F64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Elementwise functions of one input. The output dtype is the input's, except the
/// predicates (`IsNaN`, `IsInf`) which give bool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum UnaryOp {
    Neg,
    Abs,
    Sqrt,
    Exp,
    Log,
    Tanh,
    Sigmoid,
    Relu,
    Erf,
    Reciprocal,
    Floor,
    Ceil,
    /// Round half to even.
    Round,
    Sign,
    /// Logical not (bool only).
    Not,
    Sin,
    Cos,
    Tan,
    Asin,
    Acos,
    Atan,
    Sinh,
    Cosh,
    Asinh,
    Acosh,
    Atanh,
    Softplus,
    Softsign,
    IsNaN,
    /// `detect_positive`, `detect_negative`.
    IsInf(bool, bool),
    /// `x * relu6(x + 3) / 6`.
    HardSwish,
    /// Exact GELU: `0.5 x (1 + erf(x / sqrt 2))`.
    Gelu,
    /// Tanh-approximated GELU.
    GeluTanh,
    LeakyRelu(F64),
    Elu(F64),
    Celu(F64),
    ThresholdedRelu(F64),
    /// `gamma * (x > 0 ? x : alpha * (exp(x) - 1))`, fields (alpha, gamma).
    Selu(F64, F64),
    /// `max(0, min(1, alpha x + beta))`, fields (alpha, beta).
    HardSigmoid(F64, F64),
}

impl UnaryOp {
    /// Whether the op accepts this input dtype.
    pub fn accepts(self, d: DType) -> bool {
        match self {
            UnaryOp::Not => d == DType::Bool,
            UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Sign | UnaryOp::Relu => d != DType::Bool,
            _ => d.is_float(),
        }
    }
    /// Output dtype for an input dtype.
    pub fn output(self, d: DType) -> DType {
        match self {
            UnaryOp::IsNaN | UnaryOp::IsInf(..) => DType::Bool,
            _ => d,
        }
    }
}

/// Elementwise functions of two inputs with numpy broadcasting. Comparisons and logic give bool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    /// Integer division truncates toward zero (as ONNX/C).
    Div,
    Pow,
    Min,
    Max,
    /// Remainder with the sign of the divisor (Python `%`), ONNX `Mod` with `fmod=0`.
    Mod,
    /// Remainder with the sign of the dividend (C `fmod`), ONNX `Mod` with `fmod=1`.
    FMod,
    /// `x < 0 ? slope * x : x`, (x, slope).
    PRelu,
    Equal,
    Less,
    Greater,
    LessOrEqual,
    GreaterOrEqual,
    And,
    Or,
    Xor,
}

impl BinaryOp {
    /// True for comparisons and logical ops (bool result).
    pub fn is_predicate(self) -> bool {
        matches!(
            self,
            BinaryOp::Equal
                | BinaryOp::Less
                | BinaryOp::Greater
                | BinaryOp::LessOrEqual
                | BinaryOp::GreaterOrEqual
                | BinaryOp::And
                | BinaryOp::Or
                | BinaryOp::Xor
        )
    }
    /// True for the logical ops (bool inputs).
    pub fn is_logical(self) -> bool {
        matches!(self, BinaryOp::And | BinaryOp::Or | BinaryOp::Xor)
    }
}

/// Reduction kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum ReduceKind {
    Sum,
    Mean,
    Max,
    Min,
    Prod,
}

/// 2-D convolution attributes (NCHW input, OIHW weight). `pads` = [top, left, bottom, right].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct Conv2d {
    pub strides: [usize; 2],
    pub pads: [usize; 4],
    pub dilations: [usize; 2],
    pub group: usize,
}

/// Pooling kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum PoolKind {
    Max,
    /// Average; `count_include_pad` says whether padding counts in the divisor.
    Avg {
        count_include_pad: bool,
    },
}

/// 2-D pooling attributes (NCHW). `pads` = [top, left, bottom, right].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct Pool2d {
    pub kind: PoolKind,
    pub kernel: [usize; 2],
    pub strides: [usize; 2],
    pub pads: [usize; 4],
    pub dilations: [usize; 2],
    pub ceil_mode: bool,
}

/// Padding modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum PadMode {
    Constant(F64),
    Reflect,
    Edge,
    Wrap,
}

/// How ScatterND combines an update with the element it lands on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[allow(missing_docs)]
pub enum ScatterReduction {
    /// The update replaces the element.
    None,
    Add,
    Mul,
    Max,
    Min,
}

/// What kind of kernel a fused group is, which decides how it is lowered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KernelKind {
    /// Elementwise ops and index maps (broadcast, transpose, reshape, slice): one pass over
    /// the output.
    Elementwise,
    /// Row kernel: reductions, softmax and layernorm over the trailing dims from `axis` of
    /// the iteration space, with elementwise producers and consumers; one read of each row.
    Row {
        /// First reduced dim of the iteration space.
        axis: usize,
    },
    /// One matrix product with index-map prologues on its operands (a transpose folded into
    /// the operand) and an elementwise epilogue (bias, activation, scale, residual add).
    Gemm,
    /// One 2-D convolution with an elementwise epilogue (bias, activation, affine, residual).
    Conv,
    /// `matmul → elementwise (scale, mask) → softmax → matmul` with index-map prologues and an
    /// epilogue: flash-style, the score matrix never reaches memory.
    Attention,
}

/// A fused group of ops that runs as one kernel: a small graph whose inputs are the
/// kernel's inputs (in order) and whose one output is the kernel's output.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FusedKernel {
    /// How it is lowered.
    pub kind: KernelKind,
    /// The computation.
    pub body: super::graph::Graph,
}

/// An IR operator with its attributes. Inputs are listed per variant.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Op {
    /// A graph input (no inputs); the node's name is the input name.
    Input,
    /// A constant tensor (no inputs).
    Constant(Arc<Tensor>),
    /// `(x)`.
    Unary(UnaryOp),
    /// `(a, b)`, broadcast.
    Binary(BinaryOp),
    /// `(cond, a, b)`, broadcast.
    Where,
    /// `(x)` converted to a dtype.
    Cast(DType),
    /// `(a, b)`, numpy `matmul` semantics (1-D operands promoted, batch dims broadcast).
    MatMul,
    /// `(x, w)` or `(x, w, bias)`.
    Conv(Conv2d),
    /// `(x)`.
    Pool(Pool2d),
    /// `(x)` along an axis.
    Softmax {
        /// Normalized axis.
        axis: usize,
    },
    /// `(x)` along an axis.
    LogSoftmax {
        /// Normalized axis.
        axis: usize,
    },
    /// `(x, scale)` or `(x, scale, bias)`; normalizes over dims `axis..`.
    LayerNorm {
        /// First normalized axis.
        axis: usize,
        /// Added to the variance.
        epsilon: F64,
    },
    /// `(x)` reduced over sorted, distinct axes.
    Reduce {
        /// What to compute.
        kind: ReduceKind,
        /// Axes to reduce.
        axes: Vec<usize>,
        /// Keep reduced dims as size 1.
        keepdims: bool,
    },
    /// `(x)` → i64 index of the max (or min) along an axis.
    ArgReduce {
        /// Max if true, else min.
        max: bool,
        /// Axis.
        axis: usize,
        /// Keep the axis as size 1.
        keepdims: bool,
        /// Pick the last index among ties.
        select_last: bool,
    },
    /// `(x)` viewed with another shape of equal size.
    Reshape(Vec<usize>),
    /// `(x)` with dims permuted: output dim i is input dim `perm[i]`.
    Transpose(Vec<usize>),
    /// `(x)` broadcast (numpy rules) to exactly this shape.
    Broadcast(Vec<usize>),
    /// `(x0, x1, ...)` joined along an axis.
    Concat {
        /// Axis.
        axis: usize,
    },
    /// `(x)` strided slice, one (start, step) and output length per dim.
    Slice {
        /// First index per dim.
        starts: Vec<usize>,
        /// Step per dim (nonzero; negative walks backward).
        steps: Vec<i64>,
        /// Output length per dim.
        lens: Vec<usize>,
    },
    /// `(data, indices)`: numpy `take` along an axis; negative indices count from the end.
    Gather {
        /// Axis.
        axis: usize,
    },
    /// `(data, indices)` ONNX GatherElements along an axis.
    GatherElements {
        /// Axis.
        axis: usize,
    },
    /// `(data, indices)` ONNX GatherND: the last dim of `indices` (m) addresses data dims
    /// `batch_dims..batch_dims + m`; the first `batch_dims` dims of both are shared. Negative
    /// indices count from the end.
    GatherND {
        /// Leading dims shared by data and indices.
        batch_dims: usize,
    },
    /// `(data, indices, updates)` ONNX ScatterND: a copy of `data` where the slices addressed
    /// by the last dim of `indices` are replaced by (or combined with) `updates`; where
    /// several updates address one slice they apply in order (so with no reduction the last
    /// one wins).
    ScatterND {
        /// How an update combines with the element it lands on.
        reduction: ScatterReduction,
    },
    /// `(x)` padded; (before, after) per dim, negative crops.
    Pad {
        /// (before, after) per dim.
        pads: Vec<(i64, i64)>,
        /// Fill mode.
        mode: PadMode,
    },
    /// `(x)`: keep the upper (or lower) triangle of the last two dims, diagonal offset `k`.
    Trilu {
        /// Upper if true.
        upper: bool,
        /// Diagonal offset.
        k: i64,
    },
    /// `(inputs...)` a fused kernel: its body graph applied to the inputs.
    Fused(Arc<FusedKernel>),
    /// `(x)` cumulative sum along an axis.
    CumSum {
        /// Axis.
        axis: usize,
        /// Exclude the current element.
        exclusive: bool,
        /// Sum from the end.
        reverse: bool,
    },
}

impl Op {
    /// Short lowercase name used in text form, errors and plans.
    pub fn name(&self) -> String {
        match self {
            Op::Input => "input".into(),
            Op::Constant(_) => "constant".into(),
            Op::Unary(u) => lower(&format!("{u:?}")),
            Op::Binary(b) => lower(&format!("{b:?}")),
            Op::Where => "where".into(),
            Op::Cast(_) => "cast".into(),
            Op::MatMul => "matmul".into(),
            Op::Conv(_) => "conv".into(),
            Op::Pool(p) => match p.kind {
                PoolKind::Max => "maxpool".into(),
                PoolKind::Avg { .. } => "avgpool".into(),
            },
            Op::Softmax { .. } => "softmax".into(),
            Op::LogSoftmax { .. } => "logsoftmax".into(),
            Op::LayerNorm { .. } => "layernorm".into(),
            Op::Reduce { kind, .. } => format!("reduce_{}", lower(&format!("{kind:?}"))),
            Op::ArgReduce { max, .. } => if *max { "argmax" } else { "argmin" }.into(),
            Op::Reshape(_) => "reshape".into(),
            Op::Transpose(_) => "transpose".into(),
            Op::Broadcast(_) => "broadcast".into(),
            Op::Concat { .. } => "concat".into(),
            Op::Slice { .. } => "slice".into(),
            Op::Gather { .. } => "gather".into(),
            Op::GatherElements { .. } => "gather_elements".into(),
            Op::GatherND { .. } => "gather_nd".into(),
            Op::ScatterND { .. } => "scatter_nd".into(),
            Op::Pad { .. } => "pad".into(),
            Op::Trilu { .. } => "trilu".into(),
            Op::CumSum { .. } => "cumsum".into(),
            Op::Fused(k) => match k.kind {
                KernelKind::Elementwise => "fused_elementwise".into(),
                KernelKind::Row { .. } => "fused_row".into(),
                KernelKind::Gemm => "fused_gemm".into(),
                KernelKind::Conv => "fused_conv".into(),
                KernelKind::Attention => "fused_attention".into(),
            },
        }
    }

    /// Attributes rendered for the text form (empty when there are none).
    pub fn attrs(&self) -> String {
        match self {
            Op::Input | Op::Where | Op::MatMul => String::new(),
            Op::Constant(t) => t.summary(),
            Op::Unary(u) => match u {
                UnaryOp::LeakyRelu(a)
                | UnaryOp::Elu(a)
                | UnaryOp::Celu(a)
                | UnaryOp::ThresholdedRelu(a) => format!("alpha={a}"),
                UnaryOp::Selu(a, g) => format!("alpha={a}, gamma={g}"),
                UnaryOp::HardSigmoid(a, b) => format!("alpha={a}, beta={b}"),
                UnaryOp::IsInf(p, n) => format!("positive={p}, negative={n}"),
                _ => String::new(),
            },
            Op::Binary(_) => String::new(),
            Op::Cast(d) => format!("to={d}"),
            Op::Conv(c) => format!(
                "strides={:?}, pads={:?}, dilations={:?}, group={}",
                c.strides, c.pads, c.dilations, c.group
            ),
            Op::Pool(p) => format!(
                "kernel={:?}, strides={:?}, pads={:?}, dilations={:?}, ceil={}{}",
                p.kernel,
                p.strides,
                p.pads,
                p.dilations,
                p.ceil_mode,
                match p.kind {
                    PoolKind::Avg { count_include_pad } =>
                        format!(", count_include_pad={count_include_pad}"),
                    PoolKind::Max => String::new(),
                }
            ),
            Op::Softmax { axis } | Op::LogSoftmax { axis } | Op::Concat { axis } => {
                format!("axis={axis}")
            }
            Op::Gather { axis } | Op::GatherElements { axis } => format!("axis={axis}"),
            Op::GatherND { batch_dims } => format!("batch_dims={batch_dims}"),
            Op::ScatterND { reduction } => format!("reduction={reduction:?}"),
            Op::LayerNorm { axis, epsilon } => format!("axis={axis}, epsilon={epsilon}"),
            Op::Reduce { axes, keepdims, .. } => format!("axes={axes:?}, keepdims={keepdims}"),
            Op::ArgReduce {
                axis,
                keepdims,
                select_last,
                ..
            } => format!("axis={axis}, keepdims={keepdims}, select_last={select_last}"),
            Op::Reshape(s) | Op::Broadcast(s) => format!("shape={s:?}"),
            Op::Transpose(p) => format!("perm={p:?}"),
            Op::Slice {
                starts,
                steps,
                lens,
            } => format!("starts={starts:?}, steps={steps:?}, lens={lens:?}"),
            Op::Pad { pads, mode } => format!("pads={pads:?}, mode={mode:?}"),
            Op::Trilu { upper, k } => format!("upper={upper}, k={k}"),
            Op::CumSum {
                axis,
                exclusive,
                reverse,
            } => format!("axis={axis}, exclusive={exclusive}, reverse={reverse}"),
            Op::Fused(k) => {
                let ops: Vec<String> = k
                    .body
                    .nodes
                    .iter()
                    .filter(|n| !matches!(n.op, Op::Input))
                    .map(|n| n.op.name())
                    .collect();
                ops.join(" ")
            }
        }
    }
}

fn lower(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if !c.is_alphanumeric() {
            break;
        }
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.extend(c.to_lowercase());
    }
    out
}
