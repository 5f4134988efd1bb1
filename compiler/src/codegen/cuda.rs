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
    let params: Vec<u32> = kernel.reads.iter().chain(&kernel.writes).copied().collect();
    render_named(target, program, kernel, &kernel.name, &params)
}

/// The kernel's CUDA C with its entry point named `name`, taking its buffers as pointer
/// parameters in the order `params` (each of the kernel's reads and writes once).
fn render_named(
    target: &Cuda,
    program: &Program,
    kernel: &Kernel,
    name: &str,
    params: &[u32],
) -> Result<String, RenderError> {
    let target = *target;
    let ctx = Ctx::new(&target, program, kernel);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "// {name} — generated by smelt from the kernel IR; do not edit."
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
    let params: Vec<String> = params
        .iter()
        .map(|&b| {
            let ty = target.elem_type(program.buffers[b as usize].dtype);
            let constant = if kernel.writes.contains(&b) {
                ""
            } else {
                "const "
            };
            format!("{constant}{ty}* __restrict__ b{b}")
        })
        .collect();
    let _ = writeln!(
        out,
        "\nextern \"C\" __global__ void __launch_bounds__({}) {}({}) {{",
        kernel.launch.block,
        name,
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

/// A program's CUDA with each distinct kernel once: kernels that differ only in their
/// buffers (the same layer at another depth, or in another model) are one function, compiled
/// once and cached once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Module {
    /// The distinct functions, in order of first use.
    pub functions: Vec<Function>,
    /// For each kernel of the program, in launch order, the index of its function.
    pub of: Vec<usize>,
    /// For each kernel, its buffers in the order its function takes them (each read and
    /// write once, in the order the body first uses them): the launch's pointer arguments.
    pub params: Vec<Vec<u32>>,
}

/// One generated CUDA function: a translation unit of its own (NVRTC compiles each alone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    /// Its entry point, named by what it computes and a digest of its source
    /// (`fused_add_layernorm_1f0c…`), so the same body has the same name in every model.
    pub name: String,
    /// The CUDA C; its pointer parameters are positional (`b0`, `b1`, …).
    pub source: String,
    /// The kernels (of this program) that launch it.
    pub kernels: Vec<String>,
}

/// [`Module`] of a program lowered for the GPU.
pub fn render_module(target: &Cuda, program: &Program) -> Result<Module, RenderError> {
    const PLACEHOLDER: &str = "smelt_entry_point_";
    let mut functions: Vec<Function> = Vec::new();
    let mut by_text: std::collections::HashMap<String, usize> = Default::default();
    let (mut of, mut all_params) = (Vec::new(), Vec::new());
    for k in &program.kernels {
        // Parameters in the order the body first uses them, so that the same computation
        // over buffers listed in another order is the same text.
        let listed: Vec<u32> = k.reads.iter().chain(&k.writes).copied().collect();
        let text = render_named(target, program, k, PLACEHOLDER, &listed)?;
        let body = &text[text.find(") {\n").unwrap_or(0)..];
        let params = super::by_first_use(body, &listed);
        let text = if params == listed {
            text
        } else {
            render_named(target, program, k, PLACEHOLDER, &params)?
        };
        let map = params
            .iter()
            .enumerate()
            .map(|(pos, &b)| (b, pos))
            .collect();
        let text = super::rename_buffers(&text, &map);
        all_params.push(params);
        if let Some(&i) = by_text.get(&text) {
            functions[i].kernels.push(k.name.clone());
            of.push(i);
            continue;
        }
        // What it computes: the kernel's name without its launch index.
        let stem = k
            .name
            .strip_prefix('k')
            .and_then(|r| r.split_once('_'))
            .filter(|(n, _)| n.bytes().all(|c| c.is_ascii_digit()))
            .map_or(k.name.as_str(), |(_, rest)| rest);
        let mut name = format!("{stem}_{:016x}", fnv1a(text.as_bytes()));
        // Two distinct bodies with one digest (never seen; kept distinct all the same).
        while functions.iter().any(|f| f.name == name) {
            name.push('x');
        }
        by_text.insert(text.clone(), functions.len());
        of.push(functions.len());
        functions.push(Function {
            source: text.replace(PLACEHOLDER, &name),
            name,
            kernels: vec![k.name.clone()],
        });
    }
    Ok(Module {
        functions,
        of,
        params: all_params,
    })
}

/// FNV-1a, 64 bits: a digest stable across builds and machines (function names).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
