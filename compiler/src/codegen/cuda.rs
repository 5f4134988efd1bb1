//! CUDA C from the kernel IR: one `extern "C" __global__` function per kernel, including
//! smelt's device library (`smelt/*.cuh`). Blocks and threads map to `blockIdx.x` and
//! `threadIdx.x`; reductions to the warp-shuffle and block functions of `smelt/reduce.cuh`
//! (block ones over 32 values of shared memory per component).

use super::c_style::{Ctx, Target};
use super::RenderError;
use crate::ir::DType;
use crate::kernel::ir::{
    Builtin, Combiner, FragRole, Gemm, Kernel, Precision, Program, ReduceOp, Scope, Stmt,
};
use std::fmt::Write;

/// The CUDA target.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cuda {
    /// Fast approximate intrinsics (`__expf`, `__logf`, …) for f32 math: only under
    /// `--fast-math`.
    pub fast_math: bool,
}

impl Target for Cuda {
    fn elem_type(&self, d: DType) -> &'static str {
        match d {
            DType::F32 => "float",
            DType::F16 => "__half",
            DType::BF16 => "__nv_bfloat16",
            DType::F64 => "double",
            DType::I64 => "long long",
            DType::I32 => "int",
            DType::I8 => "signed char",
            DType::U8 => "unsigned char",
            DType::Bool => "bool",
        }
    }

    fn builtin(&self, b: Builtin) -> &'static str {
        match b {
            Builtin::Block => "(long long)blockIdx.x",
            Builtin::Thread => "(long long)threadIdx.x",
            Builtin::BlockDim => "(long long)blockDim.x",
            Builtin::GridDim => "(long long)gridDim.x",
        }
    }

    fn reduce(
        &self,
        scope: Scope,
        combiner: Combiner,
        vars: &[String],
        identity: &str,
        int: bool,
    ) -> String {
        let all = vars.join(", ");
        let scratch = if int {
            "smelt_shared_i"
        } else {
            "smelt_shared"
        };
        match (combiner, scope) {
            (Combiner::Op(op), Scope::Block) => format!(
                "{all} = smelt::block_reduce({all}, smelt::{}(), {identity}, {scratch});",
                functor(op)
            ),
            (Combiner::Op(op), Scope::Warp(w)) => {
                format!(
                    "{all} = smelt::warp_reduce<{w}>({all}, smelt::{}());",
                    functor(op)
                )
            }
            (Combiner::MaxSum, Scope::Block) => {
                format!("smelt::block_reduce_max_sum({all}, smelt_shared);")
            }
            (Combiner::MaxSum, Scope::Warp(w)) => {
                format!("smelt::warp_reduce_max_sum<{w}>({all});")
            }
            (Combiner::Welford, Scope::Block) => {
                format!("smelt::block_reduce_welford({all}, smelt_shared);")
            }
            (Combiner::Welford, Scope::Warp(w)) => {
                format!("smelt::warp_reduce_welford<{w}>({all});")
            }
        }
    }

    fn wmma(&self) -> Option<&'static str> {
        Some("nvcuda::wmma::")
    }

    fn math_fn(&self, name: &str, p: Precision) -> String {
        match (p, self.fast_math, name) {
            (Precision::F32, true, "exp" | "log" | "sin" | "cos" | "pow") => format!("__{name}f"),
            (Precision::F32, _, _) => format!("{name}f"),
            (Precision::F64, _, _) => name.to_string(),
        }
    }

    fn vector_type(&self, elem: &str, n: usize) -> Option<String> {
        Some(format!("smelt::vec<{elem}, {n}>"))
    }

    fn barrier(&self) -> &'static str {
        "__syncthreads();"
    }

    fn helper(&self, name: &str, _p: Precision) -> Option<String> {
        Some(format!("smelt::{name}"))
    }

    fn int_fn(&self, name: &str) -> String {
        match name {
            "min" | "max" => name.to_string(),
            _ => format!("smelt::{name}"),
        }
    }

    fn combine_fn(&self, op: ReduceOp, _p: Precision) -> String {
        match op {
            ReduceOp::Min => "smelt::Min()".into(),
            _ => "smelt::Max()".into(),
        }
    }

    fn infinity(&self, p: Precision) -> &'static str {
        match p {
            Precision::F32 => "__int_as_float(0x7f800000)",
            Precision::F64 => "__longlong_as_double(0x7ff0000000000000ll)",
        }
    }

    fn gemm(&self, _g: &Gemm, _program: &Program) -> Option<String> {
        None
    }

    fn half_conversions(&self, d: DType) -> (&'static str, &'static str) {
        match d {
            DType::BF16 => ("__bfloat162float", "__float2bfloat16_rn"),
            _ => ("__half2float", "__float2half_rn"),
        }
    }
}

fn functor(op: ReduceOp) -> &'static str {
    match op {
        ReduceOp::Sum => "Sum",
        ReduceOp::Max => "Max",
        ReduceOp::Min => "Min",
        ReduceOp::Prod => "Prod",
    }
}

/// True when a block reduction of the kernel combines 64-bit integers (their scratch is
/// `smelt_shared_i`).
fn int_block_reduce(ctx: &Ctx<Cuda>, stmts: &[Stmt]) -> bool {
    Stmt::any(
        stmts,
        &|s| matches!(s, Stmt::Reduce { scope: Scope::Block, vars, .. } if vars.iter().all(|&v| ctx.is_int(v))),
    )
}

/// Shared memory the block reductions of a kernel need: 32 values per component of the
/// widest one, or none.
fn shared_values(ctx: &Ctx<Cuda>, stmts: &[Stmt]) -> usize {
    let most = std::cell::Cell::new(0);
    Stmt::any(stmts, &|s| {
        if let Stmt::Reduce {
            scope: Scope::Block,
            combiner,
            vars,
        } = s
        {
            if !vars.iter().all(|&v| ctx.is_int(v)) {
                most.set(most.get().max(32 * combiner.arity()));
            }
        }
        false
    });
    most.get()
}

/// CUDA C for one kernel of a program.
pub fn render_kernel(program: &Program, kernel: &Kernel) -> Result<String, RenderError> {
    render_kernel_for(&Cuda::default(), program, kernel)
}

/// CUDA C for one kernel of a program, for a target configuration.
pub fn render_kernel_for(
    target: &Cuda,
    program: &Program,
    kernel: &Kernel,
) -> Result<String, RenderError> {
    let target = *target;
    let ctx = Ctx::new(&target, program, kernel);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "// {} — generated by smelt from the kernel IR; do not edit.",
        kernel.name
    );
    if target.fast_math {
        let _ = writeln!(out, "#define SMELT_FAST_MATH 1");
    }
    if !kernel.frags.is_empty() {
        let _ = writeln!(out, "#include <mma.h>");
    }
    for h in ["types", "math", "reduce", "vector"] {
        let _ = writeln!(out, "#include \"smelt/{h}.cuh\"");
    }
    let mut params = Vec::new();
    for &b in &kernel.reads {
        let d = program.buffers[b as usize].dtype;
        params.push(format!("const {}* __restrict__ b{b}", target.elem_type(d)));
    }
    for &b in &kernel.writes {
        let d = program.buffers[b as usize].dtype;
        params.push(format!("{}* __restrict__ b{b}", target.elem_type(d)));
    }
    let _ = writeln!(
        out,
        "\nextern \"C\" __global__ void __launch_bounds__({}) {}({}) {{",
        kernel.launch.block,
        kernel.name,
        params.join(", ")
    );
    let shared = shared_values(&ctx, &kernel.body);
    if shared > 0 {
        let t = ctx.float();
        let _ = writeln!(out, "    __shared__ {t} smelt_shared[{shared}];");
    }
    if int_block_reduce(&ctx, &kernel.body) {
        let _ = writeln!(out, "    __shared__ long long smelt_shared_i[32];");
    }
    for (i, a) in kernel.shared.iter().enumerate() {
        let elem = target.elem_type(a.dtype);
        let _ = writeln!(
            out,
            "    __shared__ __align__(32) {elem} smelt_s{i}[{}];",
            a.len
        );
    }
    for (i, f) in kernel.frags.iter().enumerate() {
        let ty = match f.role {
            FragRole::A => format!(
                "matrix_a, 16, 16, 16, {}, nvcuda::wmma::row_major",
                target.elem_type(f.dtype)
            ),
            FragRole::B => format!(
                "matrix_b, 16, 16, 16, {}, nvcuda::wmma::row_major",
                target.elem_type(f.dtype)
            ),
            FragRole::Acc => "accumulator, 16, 16, 16, float".to_string(),
        };
        let _ = writeln!(
            out,
            "    nvcuda::wmma::fragment<nvcuda::wmma::{ty}> smelt_f{i};"
        );
    }
    ctx.body(&mut out, 1)?;
    let _ = writeln!(out, "}}");
    Ok(out)
}

/// CUDA C for every kernel: (kernel name, source), in launch order.
pub fn render(program: &Program) -> Result<Vec<(String, String)>, RenderError> {
    render_for(&Cuda::default(), program)
}

/// CUDA C for every kernel, for a target configuration (fast math or not).
pub fn render_for(target: &Cuda, program: &Program) -> Result<Vec<(String, String)>, RenderError> {
    program
        .kernels
        .iter()
        .map(|k| Ok((k.name.clone(), render_kernel_for(target, program, k)?)))
        .collect()
}
