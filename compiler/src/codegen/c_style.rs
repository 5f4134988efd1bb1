//! The C-style base: types, expressions and statements of the kernel IR as C text. A
//! [`Target`] supplies what differs between CUDA and C (built-in indices, block reductions,
//! barriers, element types).

use super::RenderError;
use crate::ir::{BinaryOp, DType, UnaryOp};
use crate::kernel::ir::{Builtin, Expr, IndexOp, Kernel, Precision, Program, ReduceOp, Stmt};
use std::fmt::Write;

/// What a renderer target decides.
pub trait Target {
    /// The C type of a buffer element.
    fn elem_type(&self, d: DType) -> &'static str;
    /// A built-in index.
    fn builtin(&self, b: Builtin) -> &'static str;
    /// `var = block-wide reduction of var`.
    fn block_reduce(&self, var: &str, op: ReduceOp, identity: &str) -> String;
    /// A barrier statement.
    fn barrier(&self) -> &'static str;
    /// A stored element's conversion from the compute value.
    fn store_conversion(&self, d: DType, value: &str, p: Precision) -> String;
    /// A loaded element's conversion to the compute value.
    fn load_conversion(&self, d: DType, value: &str, p: Precision) -> String;
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
            let inf = if f32 {
                "__int_as_float(0x7f800000)"
            } else {
                "__longlong_as_double(0x7ff0000000000000ll)"
            };
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

    /// The scalar type of an expression.
    pub fn scalar(&self, e: &Expr) -> Scalar {
        match e {
            Expr::F(_) | Expr::Combine(..) => Scalar::Float,
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
        let f32 = self.kernel.precision == Precision::F32;
        let fun = |name: &str| {
            if f32 {
                format!("{name}f")
            } else {
                name.to_string()
            }
        };
        Ok(match e {
            Expr::F(v) => self.lit(*v),
            Expr::I(v) => format!("{v}ll"),
            Expr::Var(v) => format!("v{v}"),
            Expr::Builtin(b) => self.target.builtin(*b).to_string(),
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
                        UnaryOp::Relu => Ok(format!("max({x}, 0ll)")),
                        UnaryOp::Not => Ok(format!("(long long)({x} == 0)")),
                        _ => Ok(self.unary_float(*u, &format!("({})({x})", self.float()), &fun)?),
                    };
                }
                self.unary_float(*u, &x, &fun)?
            }
            Expr::Binary(b, x, y) => {
                let int = self.scalar(x) == Scalar::Int && self.scalar(y) == Scalar::Int;
                let (a, c) = (self.expr(x)?, self.expr(y)?);
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
                    let stored = self.target.store_conversion(*d, &x, self.kernel.precision);
                    self.target
                        .load_conversion(*d, &stored, self.kernel.precision)
                }
            }
            Expr::Combine(op, a, b) => {
                let (x, y) = (self.expr(a)?, self.expr(b)?);
                match (op, f32) {
                    (ReduceOp::Sum, _) => format!("({x} + {y})"),
                    (ReduceOp::Prod, _) => format!("({x} * {y})"),
                    (ReduceOp::Max, true) => format!("smelt::Max()({x}, {y})"),
                    (ReduceOp::Min, true) => format!("smelt::Min()({x}, {y})"),
                    (ReduceOp::Max, false) => format!("fmax({x}, {y})"),
                    (ReduceOp::Min, false) => format!("fmin({x}, {y})"),
                }
            }
            Expr::Index(op, a, b) => {
                let (x, y) = (self.expr(a)?, self.expr(b)?);
                let o = op.symbol();
                match op {
                    IndexOp::Lt | IndexOp::Ge | IndexOp::And => format!("(long long)({x} {o} {y})"),
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
        let smelt_only = |name: &str| -> Result<String, RenderError> {
            if f32 {
                Ok(format!("smelt::{name}({x})"))
            } else {
                Err(self.err(format!("{name} in f64")))
            }
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
            UnaryOp::LeakyRelu(a) if f32 => format!("smelt::leaky_relu({x}, {})", self.lit(a.0)),
            UnaryOp::Elu(a) if f32 => format!("smelt::elu({x}, {})", self.lit(a.0)),
            UnaryOp::Celu(a) if f32 => format!("smelt::celu({x}, {})", self.lit(a.0)),
            UnaryOp::ThresholdedRelu(a) if f32 => {
                format!("smelt::thresholded_relu({x}, {})", self.lit(a.0))
            }
            UnaryOp::Selu(a, g) if f32 => {
                format!("smelt::selu({x}, {}, {})", self.lit(a.0), self.lit(g.0))
            }
            UnaryOp::HardSigmoid(a, b) if f32 => format!(
                "smelt::hard_sigmoid({x}, {}, {})",
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
        let f32 = self.kernel.precision == Precision::F32;
        let t = self.float();
        Ok(match b {
            BinaryOp::Add => format!("({x} + {y})"),
            BinaryOp::Sub => format!("({x} - {y})"),
            BinaryOp::Mul => format!("({x} * {y})"),
            BinaryOp::Div => format!("({x} / {y})"),
            BinaryOp::Pow if !int => format!("{}({x}, {y})", fun("pow")),
            BinaryOp::Min if int => format!("min({x}, {y})"),
            BinaryOp::Max if int => format!("max({x}, {y})"),
            BinaryOp::Min if f32 => format!("smelt::min_nan({x}, {y})"),
            BinaryOp::Max if f32 => format!("smelt::max_nan({x}, {y})"),
            BinaryOp::Min => format!("fmin({x}, {y})"),
            BinaryOp::Max => format!("fmax({x}, {y})"),
            BinaryOp::Mod if int || f32 => format!("smelt::mod_floor({x}, {y})"),
            BinaryOp::FMod if int => format!("({x} % {y})"),
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
                    let v =
                        self.target
                            .store_conversion(d, &self.expr(value)?, self.kernel.precision);
                    let _ = writeln!(out, "{pad}b{buf}[{}] = {v};", self.expr(index)?);
                }
                Stmt::For {
                    var,
                    start,
                    end,
                    step,
                    body,
                    ..
                } => {
                    let _ = writeln!(
                        out,
                        "{pad}for (v{var} = {}; v{var} < {}; v{var} += {}) {{",
                        self.expr(start)?,
                        self.expr(end)?,
                        self.expr(step)?
                    );
                    self.stmts(out, body, depth + 1)?;
                    let _ = writeln!(out, "{pad}}}");
                }
                Stmt::If { cond, then } => {
                    let _ = writeln!(out, "{pad}if ({}) {{", self.expr(cond)?);
                    self.stmts(out, then, depth + 1)?;
                    let _ = writeln!(out, "{pad}}}");
                }
                Stmt::BlockReduce { var, op } => {
                    if self.kernel.precision == Precision::F64 {
                        return Err(self.err("a block reduction in f64".into()));
                    }
                    let id = self.lit(op.identity());
                    let _ = writeln!(
                        out,
                        "{pad}{}",
                        self.target.block_reduce(&format!("v{var}"), *op, &id)
                    );
                }
                Stmt::Barrier => {
                    let _ = writeln!(out, "{pad}{}", self.target.barrier());
                }
            }
        }
        Ok(())
    }
}

/// The type of each variable: from its first assignment (loop variables are indices).
pub fn var_types<T: Target>(ctx: &mut Ctx<T>, stmts: &[Stmt]) {
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
            _ => {}
        }
    }
}
