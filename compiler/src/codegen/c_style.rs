//! The C-style base: types, expressions and statements of the kernel IR as C text. A
//! [`Target`] supplies what differs between CUDA and C (built-in indices, block reductions,
//! barriers, element types).

use super::RenderError;
use crate::ir::{BinaryOp, DType, UnaryOp};
use crate::kernel::ir::{
    Builtin, Combiner, Expr, FragRole, Gemm, IndexOp, Kernel, Precision, Program, ReduceOp, Scope,
    Stmt,
};
use std::fmt::Write;

/// What a renderer target decides.
pub trait Target {
    /// The C type of a buffer element.
    fn elem_type(&self, d: DType) -> &'static str;
    /// A built-in index.
    fn builtin(&self, b: Builtin) -> &'static str;
    /// The statement combining the partials held in `vars` across `scope`, in place
    /// (`identity` is the combiner's identity for one-value operations; `int`: the values are
    /// 64-bit integers).
    fn reduce(
        &self,
        scope: Scope,
        combiner: Combiner,
        vars: &[String],
        identity: &str,
        int: bool,
    ) -> String;
    /// A barrier statement.
    fn barrier(&self) -> &'static str;
    /// The functions converting a 16-bit float storage type (f16, bf16) to f32 and back.
    fn half_conversions(&self, d: DType) -> (&'static str, &'static str);
    /// A stored element's conversion from the compute value.
    fn store_conversion(&self, d: DType, v: &str) -> String {
        match d {
            DType::F16 | DType::BF16 => format!("{}((float)({v}))", self.half_conversions(d).1),
            DType::Bool => format!("({})(({v}) != 0)", self.elem_type(d)),
            d => format!("({})({v})", self.elem_type(d)),
        }
    }
    /// A loaded element's conversion to the compute value.
    fn load_conversion(&self, d: DType, raw: &str, p: Precision) -> String {
        let float = match p {
            Precision::F32 => "float",
            Precision::F64 => "double",
        };
        match d {
            DType::F16 | DType::BF16 => format!("({float}){}({raw})", self.half_conversions(d).0),
            DType::F32 | DType::F64 | DType::Bool => format!("({float})({raw})"),
            _ => format!("(long long)({raw})"),
        }
    }
    /// The smelt float helper `name` (relu, gelu, max_nan, …) at a precision, if the target
    /// has it.
    fn helper(&self, name: &str, p: Precision) -> Option<String>;
    /// The 64-bit integer function `name` (min, max, mod_floor).
    fn int_fn(&self, name: &str) -> String;
    /// The function combining two values of a reduction (NaN-propagating max/min).
    fn combine_fn(&self, op: ReduceOp, p: Precision) -> String;
    /// Positive infinity.
    fn infinity(&self, p: Precision) -> &'static str;
    /// A library matrix product statement, if the target has one.
    fn gemm(&self, g: &Gemm, program: &Program) -> Option<String>;
    /// The function for 64-bit integer `/` (`div`) or `%` (`rem`) that checks its divisor,
    /// if the target wants one (a zero divisor traps on the CPU).
    fn checked_int(&self, _op: &str) -> Option<String> {
        None
    }
    /// The namespace prefix of the warp matrix (tensor-core) functions, if the target has
    /// them.
    fn wmma(&self) -> Option<&'static str> {
        None
    }
    /// The type of one vector access of `n` elements of C type `elem`, if the target has
    /// one (else vector accesses are rendered element by element).
    fn vector_type(&self, _elem: &str, _n: usize) -> Option<String> {
        None
    }
    /// How to vectorize a loop with this body, if the target does: the pragma line, and
    /// whether its float max/min fold keeps NaN in a separate flag.
    fn loop_pragma(&self, _body: &[Stmt], _int_var: &dyn Fn(u32) -> bool) -> Option<LoopPragma> {
        None
    }
    /// The C math function `name` (exp, tanh, …) at a precision: libm's by default.
    fn math_fn(&self, name: &str, p: Precision) -> String {
        match p {
            Precision::F32 => format!("{name}f"),
            Precision::F64 => name.to_string(),
        }
    }
}

/// A vectorized loop as a target renders it.
#[derive(Clone, Debug, PartialEq)]
pub struct LoopPragma {
    /// The line before the loop.
    pub line: String,
    /// The loop folds float max/min into this variable with the target's plain (vectorizing)
    /// max/min reduction, which may drop NaN: the body also ORs each element's NaN-ness into
    /// a flag (`nan_v{acc}`, seeded with the accumulator's own), and after the loop a set
    /// flag makes the result NaN, as the NaN-propagating combine would.
    pub nan_flag: Option<u32>,
}

/// The scalar type of a variable or expression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scalar {
    /// The kernel's float type.
    Float,
    /// 64-bit index/integer.
    Int,
}

/// Context for rendering one kernel.
pub struct Ctx<'a, T: Target> {
    /// The target.
    pub target: &'a T,
    /// The program (buffer types).
    pub program: &'a Program,
    /// The kernel.
    pub kernel: &'a Kernel,
    /// Type of each variable.
    pub vars: Vec<Option<Scalar>>,
}

impl<'a, T: Target> Ctx<'a, T> {
    /// The context for rendering `kernel`, each variable typed by its first assignment.
    pub fn new(target: &'a T, program: &'a Program, kernel: &'a Kernel) -> Self {
        let mut ctx = Ctx {
            target,
            program,
            kernel,
            vars: vec![None; kernel.vars as usize],
        };
        var_types(&mut ctx, &kernel.body);
        ctx
    }

    /// The kernel's variable declarations and statements at an indentation depth.
    pub fn body(&self, out: &mut String, depth: usize) -> Result<(), RenderError> {
        let pad = "    ".repeat(depth);
        for (v, t) in self.vars.iter().enumerate() {
            match t {
                Some(Scalar::Int) => {
                    let _ = writeln!(out, "{pad}long long v{v};");
                }
                Some(Scalar::Float) => {
                    let _ = writeln!(out, "{pad}{} v{v};", self.float());
                }
                None => {}
            }
        }
        self.stmts(out, &self.kernel.body, depth)
    }

    fn err(&self, what: String) -> RenderError {
        RenderError {
            kernel: self.kernel.name.clone(),
            what,
        }
    }

    /// The float type name.
    pub fn float(&self) -> &'static str {
        match self.kernel.precision {
            Precision::F32 => "float",
            Precision::F64 => "double",
        }
    }

    /// An expression as the kernel's float type: integer ones converted (so typed helpers
    /// see one argument type).
    fn float_expr(&self, e: &Expr) -> Result<String, RenderError> {
        let x = self.expr(e)?;
        Ok(match self.scalar(e) {
            Scalar::Int => format!("({})({x})", self.float()),
            Scalar::Float => x,
        })
    }

    fn lit(&self, v: f64) -> String {
        let f32 = self.kernel.precision == Precision::F32;
        if v.is_nan() {
            return format!(
                "(0.0{} / 0.0{})",
                if f32 { "f" } else { "" },
                if f32 { "f" } else { "" }
            );
        }
        if v.is_infinite() {
            let inf = self.target.infinity(self.kernel.precision);
            return if v > 0.0 {
                inf.to_string()
            } else {
                format!("(-{inf})")
            };
        }
        if f32 {
            format!("{:?}f", v as f32)
        } else {
            format!("{v:?}")
        }
    }

    /// True when variable `v` is a 64-bit integer.
    pub fn is_int(&self, v: u32) -> bool {
        self.vars.get(v as usize).copied().flatten() == Some(Scalar::Int)
    }

    fn shared_dtype(&self, array: u32) -> Result<DType, RenderError> {
        self.kernel
            .shared
            .get(array as usize)
            .map(|a| a.dtype)
            .ok_or_else(|| self.err(format!("no shared array s{array}")))
    }

    fn wmma(&self) -> Result<&'static str, RenderError> {
        self.target
            .wmma()
            .ok_or_else(|| self.err("tensor-core fragments".into()))
    }

    /// The scalar type of an expression.
    pub fn scalar(&self, e: &Expr) -> Scalar {
        match e {
            Expr::F(_) | Expr::Combine(..) | Expr::Shared { .. } => Scalar::Float,
            Expr::I(_) | Expr::Builtin(_) | Expr::Index(..) => Scalar::Int,
            Expr::Var(v) => self
                .vars
                .get(*v as usize)
                .copied()
                .flatten()
                .unwrap_or(Scalar::Float),
            Expr::Load { buf, .. } => {
                if self.program.buffers[*buf as usize].dtype.is_int() {
                    Scalar::Int
                } else {
                    Scalar::Float
                }
            }
            Expr::Unary(u, a) => match (u, self.scalar(a)) {
                (
                    UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Sign | UnaryOp::Relu | UnaryOp::Not,
                    Scalar::Int,
                ) => Scalar::Int,
                _ => Scalar::Float,
            },
            Expr::Binary(b, x, y) => {
                if self.scalar(x) == Scalar::Int
                    && self.scalar(y) == Scalar::Int
                    && !b.is_predicate()
                {
                    Scalar::Int
                } else {
                    Scalar::Float
                }
            }
            Expr::Select(_, a, b) => {
                if self.scalar(a) == Scalar::Int && self.scalar(b) == Scalar::Int {
                    Scalar::Int
                } else {
                    Scalar::Float
                }
            }
            Expr::Cast(d, _) => {
                if d.is_int() {
                    Scalar::Int
                } else {
                    Scalar::Float
                }
            }
        }
    }

    /// Renders an expression.
    pub fn expr(&self, e: &Expr) -> Result<String, RenderError> {
        let fun = |name: &str| self.target.math_fn(name, self.kernel.precision);
        Ok(match e {
            Expr::F(v) => self.lit(*v),
            // The most negative i64 has no literal: its magnitude overflows.
            Expr::I(i64::MIN) => "(-9223372036854775807ll - 1)".into(),
            Expr::I(v) => format!("{v}ll"),
            Expr::Var(v) => format!("v{v}"),
            Expr::Builtin(b) => self.target.builtin(*b).to_string(),
            Expr::Shared { array, index } => {
                let d = self.shared_dtype(*array)?;
                let raw = format!("smelt_s{array}[{}]", self.expr(index)?);
                self.target.load_conversion(d, &raw, self.kernel.precision)
            }
            Expr::Load { buf, index } => {
                let d = self.program.buffers[*buf as usize].dtype;
                let raw = format!("b{buf}[{}]", self.expr(index)?);
                self.target.load_conversion(d, &raw, self.kernel.precision)
            }
            Expr::Unary(u, a) => {
                let int = self.scalar(a) == Scalar::Int;
                let x = self.expr(a)?;
                if int {
                    return match u {
                        UnaryOp::Neg => Ok(format!("(-{x})")),
                        UnaryOp::Abs => Ok(format!("llabs({x})")),
                        UnaryOp::Sign => Ok(format!("(({x} > 0) - ({x} < 0))")),
                        UnaryOp::Relu => Ok(format!("{}({x}, 0ll)", self.target.int_fn("max"))),
                        UnaryOp::Not => Ok(format!("(long long)({x} == 0)")),
                        _ => Ok(self.unary_float(*u, &format!("({})({x})", self.float()), &fun)?),
                    };
                }
                self.unary_float(*u, &x, &fun)?
            }
            Expr::Binary(b, x, y) => {
                let int = self.scalar(x) == Scalar::Int && self.scalar(y) == Scalar::Int;
                let (a, c) = if int {
                    (self.expr(x)?, self.expr(y)?)
                } else {
                    (self.float_expr(x)?, self.float_expr(y)?)
                };
                self.binary(*b, &a, &c, int, &fun)?
            }
            Expr::Select(c, a, b) => format!(
                "({} ? {} : {})",
                self.expr(c)?,
                self.expr(a)?,
                self.expr(b)?
            ),
            Expr::Cast(d, a) => {
                let x = self.expr(a)?;
                if d.is_int() {
                    format!("(long long)({x})")
                } else if *d == DType::Bool {
                    format!("({})(({x}) != 0)", self.float())
                } else {
                    // Round as storing in `d` would, back in the compute type.
                    let stored = self.target.store_conversion(*d, &x);
                    self.target
                        .load_conversion(*d, &stored, self.kernel.precision)
                }
            }
            Expr::Combine(op, a, b)
                if self.scalar(a) == Scalar::Int && self.scalar(b) == Scalar::Int =>
            {
                let (x, y) = (self.expr(a)?, self.expr(b)?);
                match op {
                    ReduceOp::Sum => format!("({x} + {y})"),
                    ReduceOp::Prod => format!("({x} * {y})"),
                    ReduceOp::Max => format!("{}({x}, {y})", self.target.int_fn("max")),
                    ReduceOp::Min => format!("{}({x}, {y})", self.target.int_fn("min")),
                }
            }
            Expr::Combine(op, a, b) => {
                let (x, y) = (self.float_expr(a)?, self.float_expr(b)?);
                match op {
                    ReduceOp::Sum => format!("({x} + {y})"),
                    ReduceOp::Prod => format!("({x} * {y})"),
                    ReduceOp::Max | ReduceOp::Min => format!(
                        "{}({x}, {y})",
                        self.target.combine_fn(*op, self.kernel.precision)
                    ),
                }
            }
            Expr::Index(op, a, b) => {
                let (x, y) = (self.expr(a)?, self.expr(b)?);
                let o = op.symbol();
                match op {
                    IndexOp::Min => format!("{}({x}, {y})", self.target.int_fn("min")),
                    IndexOp::Check(site) => {
                        format!("{}({x}, {y}, {site})", self.target.int_fn("checked_index"))
                    }
                    IndexOp::Lt | IndexOp::Ge | IndexOp::Eq | IndexOp::And => {
                        format!("(long long)({x} {o} {y})")
                    }
                    _ => format!("({x} {o} {y})"),
                }
            }
        })
    }

    fn unary_float(
        &self,
        u: UnaryOp,
        x: &str,
        fun: &dyn Fn(&str) -> String,
    ) -> Result<String, RenderError> {
        let f32 = self.kernel.precision == Precision::F32;
        let one = if f32 { "1.0f" } else { "1.0" };
        let p = self.kernel.precision;
        let helper = |name: &str| self.target.helper(name, p);
        let name_of = |name: &str| -> Result<String, RenderError> {
            helper(name).ok_or_else(|| self.err(format!("{name} in f64")))
        };
        let smelt_only = |name: &str| -> Result<String, RenderError> {
            helper(name)
                .map(|h| format!("{h}({x})"))
                .ok_or_else(|| self.err(format!("{name} in f64")))
        };
        Ok(match u {
            UnaryOp::Neg => format!("(-{x})"),
            UnaryOp::Abs => format!("{}({x})", fun("fabs")),
            UnaryOp::Sqrt => format!("{}({x})", fun("sqrt")),
            UnaryOp::Exp => format!("{}({x})", fun("exp")),
            UnaryOp::Log => format!("{}({x})", fun("log")),
            UnaryOp::Tanh => format!("{}({x})", fun("tanh")),
            UnaryOp::Erf => format!("{}({x})", fun("erf")),
            UnaryOp::Floor => format!("{}({x})", fun("floor")),
            UnaryOp::Ceil => format!("{}({x})", fun("ceil")),
            UnaryOp::Round => format!("{}({x})", fun("rint")),
            UnaryOp::Sin => format!("{}({x})", fun("sin")),
            UnaryOp::Cos => format!("{}({x})", fun("cos")),
            UnaryOp::Tan => format!("{}({x})", fun("tan")),
            UnaryOp::Asin => format!("{}({x})", fun("asin")),
            UnaryOp::Acos => format!("{}({x})", fun("acos")),
            UnaryOp::Atan => format!("{}({x})", fun("atan")),
            UnaryOp::Sinh => format!("{}({x})", fun("sinh")),
            UnaryOp::Cosh => format!("{}({x})", fun("cosh")),
            UnaryOp::Asinh => format!("{}({x})", fun("asinh")),
            UnaryOp::Acosh => format!("{}({x})", fun("acosh")),
            UnaryOp::Atanh => format!("{}({x})", fun("atanh")),
            UnaryOp::Reciprocal => format!("({one} / {x})"),
            UnaryOp::Softsign => format!("({x} / ({one} + {}({x})))", fun("fabs")),
            UnaryOp::Not => format!("({})({x} == 0)", self.float()),
            UnaryOp::IsNaN => format!("({})({x} != {x})", self.float()),
            UnaryOp::IsInf(pos, neg) => {
                let inf = self.lit(f64::INFINITY);
                match (pos, neg) {
                    (true, true) => format!("({})({x} == {inf} || {x} == -{inf})", self.float()),
                    (true, false) => format!("({})({x} == {inf})", self.float()),
                    (false, true) => format!("({})({x} == -{inf})", self.float()),
                    (false, false) => format!("({})0", self.float()),
                }
            }
            UnaryOp::Relu => smelt_only("relu")?,
            UnaryOp::Sigmoid => smelt_only("sigmoid")?,
            UnaryOp::Sign => smelt_only("sign")?,
            UnaryOp::Softplus => smelt_only("softplus")?,
            UnaryOp::HardSwish => smelt_only("hard_swish")?,
            UnaryOp::Gelu => smelt_only("gelu")?,
            UnaryOp::GeluTanh => smelt_only("gelu_tanh")?,
            UnaryOp::LeakyRelu(a) if helper("leaky_relu").is_some() => {
                format!("{}({x}, {})", name_of("leaky_relu")?, self.lit(a.0))
            }
            UnaryOp::Elu(a) if helper("elu").is_some() => {
                format!("{}({x}, {})", name_of("elu")?, self.lit(a.0))
            }
            UnaryOp::Celu(a) if helper("celu").is_some() => {
                format!("{}({x}, {})", name_of("celu")?, self.lit(a.0))
            }
            UnaryOp::ThresholdedRelu(a) if helper("thresholded_relu").is_some() => {
                format!("{}({x}, {})", name_of("thresholded_relu")?, self.lit(a.0))
            }
            UnaryOp::Selu(a, g) if helper("selu").is_some() => format!(
                "{}({x}, {}, {})",
                name_of("selu")?,
                self.lit(a.0),
                self.lit(g.0)
            ),
            UnaryOp::HardSigmoid(a, b) if helper("hard_sigmoid").is_some() => format!(
                "{}({x}, {}, {})",
                name_of("hard_sigmoid")?,
                self.lit(a.0),
                self.lit(b.0)
            ),
            other => return Err(self.err(format!("{other:?} in f64"))),
        })
    }

    fn binary(
        &self,
        b: BinaryOp,
        x: &str,
        y: &str,
        int: bool,
        fun: &dyn Fn(&str) -> String,
    ) -> Result<String, RenderError> {
        let t = self.float();
        let helper = |name: &str| self.target.helper(name, self.kernel.precision);
        Ok(match b {
            BinaryOp::Add => format!("({x} + {y})"),
            BinaryOp::Sub => format!("({x} - {y})"),
            BinaryOp::Mul => format!("({x} * {y})"),
            BinaryOp::Div if int && self.target.checked_int("div").is_some() => {
                format!(
                    "{}({x}, {y})",
                    self.target.checked_int("div").unwrap_or_default()
                )
            }
            BinaryOp::Div => format!("({x} / {y})"),
            BinaryOp::Pow if !int => format!("{}({x}, {y})", fun("pow")),
            BinaryOp::Pow => format!("{}({x}, {y})", self.target.int_fn("pow_int")),
            BinaryOp::Min if int => format!("{}({x}, {y})", self.target.int_fn("min")),
            BinaryOp::Max if int => format!("{}({x}, {y})", self.target.int_fn("max")),
            BinaryOp::Min => match helper("min_nan") {
                Some(h) => format!("{h}({x}, {y})"),
                None => format!("fmin({x}, {y})"),
            },
            BinaryOp::Max => match helper("max_nan") {
                Some(h) => format!("{h}({x}, {y})"),
                None => format!("fmax({x}, {y})"),
            },
            BinaryOp::Mod if int => format!("{}({x}, {y})", self.target.int_fn("mod_floor")),
            BinaryOp::Mod if helper("mod_floor").is_some() => {
                format!("{}({x}, {y})", helper("mod_floor").unwrap_or_default())
            }
            BinaryOp::FMod if int => match self.target.checked_int("rem") {
                Some(f) => format!("{f}({x}, {y})"),
                None => format!("({x} % {y})"),
            },
            BinaryOp::FMod => format!("{}({x}, {y})", fun("fmod")),
            BinaryOp::PRelu => format!("({x} < 0 ? {y} * {x} : {x})"),
            BinaryOp::Equal => format!("({t})({x} == {y})"),
            BinaryOp::Less => format!("({t})({x} < {y})"),
            BinaryOp::Greater => format!("({t})({x} > {y})"),
            BinaryOp::LessOrEqual => format!("({t})({x} <= {y})"),
            BinaryOp::GreaterOrEqual => format!("({t})({x} >= {y})"),
            BinaryOp::And => format!("({t})(({x} != 0) && ({y} != 0))"),
            BinaryOp::Or => format!("({t})(({x} != 0) || ({y} != 0))"),
            BinaryOp::Xor => format!("({t})(({x} != 0) != ({y} != 0))"),
            other => {
                return Err(self.err(format!(
                    "{other:?} on {}",
                    if int { "integers" } else { "f64" }
                )))
            }
        })
    }

    /// Renders statements at an indentation depth.
    pub fn stmts(&self, out: &mut String, stmts: &[Stmt], depth: usize) -> Result<(), RenderError> {
        let pad = "    ".repeat(depth);
        for s in stmts {
            match s {
                Stmt::Let { var, value } => {
                    let _ = writeln!(out, "{pad}v{var} = {};", self.expr(value)?);
                }
                Stmt::Store { buf, index, value } => {
                    let d = self.program.buffers[*buf as usize].dtype;
                    let v = self.target.store_conversion(d, &self.expr(value)?);
                    let _ = writeln!(out, "{pad}b{buf}[{}] = {v};", self.expr(index)?);
                }
                Stmt::SharedStore {
                    array,
                    index,
                    value,
                } => {
                    let d = self.shared_dtype(*array)?;
                    let v = self.target.store_conversion(d, &self.expr(value)?);
                    let _ = writeln!(out, "{pad}smelt_s{array}[{}] = {v};", self.expr(index)?);
                }
                Stmt::FragFill { frag, value } => {
                    let ns = self.wmma()?;
                    let _ = writeln!(
                        out,
                        "{pad}{ns}fill_fragment(smelt_f{frag}, {});",
                        self.lit(*value)
                    );
                }
                Stmt::FragLoad {
                    frag,
                    array,
                    offset,
                    ld,
                } => {
                    let ns = self.wmma()?;
                    let o = self.expr(offset)?;
                    // An accumulator's load names its memory layout; operands' is in their type.
                    let layout = match self.kernel.frags.get(*frag as usize).map(|f| f.role) {
                        Some(FragRole::Acc) => format!(", {ns}mem_row_major"),
                        _ => String::new(),
                    };
                    let _ = writeln!(
                        out,
                        "{pad}{ns}load_matrix_sync(smelt_f{frag}, smelt_s{array} + {o}, {ld}{layout});"
                    );
                }
                Stmt::FragMma { acc, a, b } => {
                    let ns = self.wmma()?;
                    let _ = writeln!(
                        out,
                        "{pad}{ns}mma_sync(smelt_f{acc}, smelt_f{a}, smelt_f{b}, smelt_f{acc});"
                    );
                }
                Stmt::FragStore {
                    array,
                    offset,
                    ld,
                    frag,
                } => {
                    let ns = self.wmma()?;
                    let o = self.expr(offset)?;
                    let _ = writeln!(
                        out,
                        "{pad}{ns}store_matrix_sync(smelt_s{array} + {o}, smelt_f{frag}, {ld}, {ns}mem_row_major);"
                    );
                }
                Stmt::LoadVec { vars, buf, index } => {
                    let d = self.program.buffers[*buf as usize].dtype;
                    let p = self.kernel.precision;
                    let i = self.expr(index)?;
                    let elem = self.target.elem_type(d);
                    match self.target.vector_type(elem, vars.len()) {
                        Some(vt) => {
                            let _ = writeln!(out, "{pad}{{");
                            let _ = writeln!(
                                out,
                                "{pad}    const {vt} t = *reinterpret_cast<const {vt}*>(b{buf} + {i});"
                            );
                            for (l, v) in vars.iter().enumerate() {
                                let x = self.target.load_conversion(d, &format!("t.v[{l}]"), p);
                                let _ = writeln!(out, "{pad}    v{v} = {x};");
                            }
                            let _ = writeln!(out, "{pad}}}");
                        }
                        None => {
                            for (l, v) in vars.iter().enumerate() {
                                let raw = format!("b{buf}[{i} + {l}]");
                                let x = self.target.load_conversion(d, &raw, p);
                                let _ = writeln!(out, "{pad}v{v} = {x};");
                            }
                        }
                    }
                }
                Stmt::StoreVec { buf, index, values } => {
                    let d = self.program.buffers[*buf as usize].dtype;
                    let i = self.expr(index)?;
                    let vs = values
                        .iter()
                        .map(|v| Ok(self.target.store_conversion(d, &self.expr(v)?)))
                        .collect::<Result<Vec<String>, RenderError>>()?;
                    let elem = self.target.elem_type(d);
                    match self.target.vector_type(elem, values.len()) {
                        Some(vt) => {
                            let _ = writeln!(out, "{pad}{{");
                            let _ = writeln!(out, "{pad}    {vt} t;");
                            for (l, v) in vs.iter().enumerate() {
                                let _ = writeln!(out, "{pad}    t.v[{l}] = {v};");
                            }
                            let _ = writeln!(
                                out,
                                "{pad}    *reinterpret_cast<{vt}*>(b{buf} + {i}) = t;"
                            );
                            let _ = writeln!(out, "{pad}}}");
                        }
                        None => {
                            for (l, v) in vs.iter().enumerate() {
                                let _ = writeln!(out, "{pad}b{buf}[{i} + {l}] = {v};");
                            }
                        }
                    }
                }
                Stmt::For {
                    var,
                    start,
                    end,
                    step,
                    body,
                    ..
                } => {
                    let pragma = self.target.loop_pragma(body, &|v| self.is_int(v));
                    let nan_flag = pragma.as_ref().and_then(|p| p.nan_flag);
                    if let Some(acc) = nan_flag {
                        let _ = writeln!(out, "{pad}int nan_v{acc} = v{acc} != v{acc};");
                    }
                    if let Some(p) = &pragma {
                        let _ = writeln!(out, "{pad}{}", p.line);
                    }
                    let _ = writeln!(
                        out,
                        "{pad}for (v{var} = {}; v{var} < {}; v{var} += {}) {{",
                        self.expr(start)?,
                        self.expr(end)?,
                        self.expr(step)?
                    );
                    match (nan_flag, body.last()) {
                        (
                            Some(acc),
                            Some(Stmt::Let {
                                value: Expr::Combine(op, _, e),
                                ..
                            }),
                        ) => {
                            self.stmts(out, &body[..body.len() - 1], depth + 1)?;
                            let e = self.float_expr(e)?;
                            let cmp = if *op == ReduceOp::Min { "<" } else { ">" };
                            let inner = "    ".repeat(depth + 1);
                            let _ =
                                writeln!(out, "{inner}v{acc} = v{acc} {cmp} {e} ? v{acc} : {e};");
                            let _ = writeln!(out, "{inner}nan_v{acc} |= {e} != {e};");
                        }
                        _ => self.stmts(out, body, depth + 1)?,
                    }
                    let _ = writeln!(out, "{pad}}}");
                    if let Some(acc) = nan_flag {
                        let nan = self.lit(f64::NAN);
                        let _ = writeln!(out, "{pad}if (nan_v{acc}) v{acc} = {nan};");
                    }
                }
                Stmt::If { cond, then } => {
                    let _ = writeln!(out, "{pad}if ({}) {{", self.expr(cond)?);
                    self.stmts(out, then, depth + 1)?;
                    let _ = writeln!(out, "{pad}}}");
                }
                Stmt::Reduce {
                    scope,
                    combiner,
                    vars,
                } => {
                    let int = vars.iter().all(|&v| self.is_int(v));
                    let id = match combiner {
                        Combiner::Op(op) if int => self.expr(&Expr::I(op.identity_int()))?,
                        Combiner::Op(op) => self.lit(op.identity()),
                        _ => String::new(),
                    };
                    let vars: Vec<String> = vars.iter().map(|v| format!("v{v}")).collect();
                    let text = self.target.reduce(*scope, *combiner, &vars, &id, int);
                    let _ = writeln!(out, "{pad}{text}");
                }
                Stmt::Barrier => {
                    let _ = writeln!(out, "{pad}{}", self.target.barrier());
                }
                Stmt::Gemm(g) => {
                    let call = self
                        .target
                        .gemm(g, self.program)
                        .ok_or_else(|| self.err("a library matrix product".into()))?;
                    for line in call.lines() {
                        let _ = writeln!(out, "{pad}{line}");
                    }
                }
            }
        }
        Ok(())
    }
}

/// The type of each variable: from its first assignment (loop variables are indices).
fn var_types<T: Target>(ctx: &mut Ctx<T>, stmts: &[Stmt]) {
    for s in stmts {
        match s {
            Stmt::Let { var, value } if ctx.vars[*var as usize].is_none() => {
                let t = ctx.scalar(value);
                ctx.vars[*var as usize] = Some(t);
            }
            Stmt::For { var, body, .. } => {
                ctx.vars[*var as usize] = Some(Scalar::Int);
                var_types(ctx, body);
            }
            Stmt::If { then, .. } => var_types(ctx, then),
            Stmt::LoadVec { vars, buf, .. } => {
                let t = ctx.scalar(&Expr::Load {
                    buf: *buf,
                    index: Box::new(Expr::I(0)),
                });
                for v in vars {
                    ctx.vars[*v as usize].get_or_insert(t);
                }
            }
            _ => {}
        }
    }
}
