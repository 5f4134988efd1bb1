//! C from the kernel IR: one `static` function per kernel and one entry point,
//! `smelt_run(ctx, arena, io)`, that runs every kernel in order. Intermediates and constants
//! live in one arena at offsets fixed at compile time; graph inputs and the outputs kernels
//! write are read and written in place through the caller's pointers `io[slot]` (the
//! program's [`Layout`](crate::kernel::Layout)), so a run copies nothing.
//!
//! A kernel's blocks become the iterations of a loop that OpenMP splits over the thread pool
//! (`schedule(static)`, so each thread gets a contiguous run of blocks); a block of more than
//! one thread becomes an inner loop over the threads. Block reductions and barriers are
//! no-ops in a block of one thread, which is how [`Target::Cpu`] lowers; a kernel that
//! needs them across several threads is rejected. Library matrix products call
//! `smelt_gemm_f32` (`smelt/cpu.h`), which splits them over the pool and calls the routine
//! the runtime passes in `ctx`.
//!
//! [`Target::Cpu`]: crate::kernel::Target::Cpu

use super::c_style::{Ctx, LoopPragma, Target};
use super::RenderError;
use crate::ir::DType;
use crate::kernel::ir::{
    Builtin, Combiner, Gemm, Iterations, Kernel, MatrixView, Precision, Program, ReduceOp, Scope,
    Stmt,
};
use std::fmt::Write;

/// Version of the entry point's contract (`smelt_ctx`, `smelt_run`); the runtime checks it.
pub const ABI_VERSION: u32 = 4;

/// What `smelt_run` returns when an integer division or remainder met a zero divisor.
pub const FAULT_DIVIDE_BY_ZERO: i32 = 2;

/// What `smelt_run` returns when a run-time index failed its check
/// ([`IndexOp::Check`](crate::kernel::ir::IndexOp::Check)); `smelt_fault_detail(out)` then
/// writes the kernel (its position in the program), the check site and the index to
/// `out[0..3]`.
pub const FAULT_INDEX: i32 = 4;

/// The C target.
pub struct C;

impl Target for C {
    fn elem_type(&self, d: DType) -> &'static str {
        match d {
            DType::F32 => "float",
            DType::F16 | DType::BF16 => "uint16_t",
            DType::F64 => "double",
            DType::I64 => "int64_t",
            DType::I32 => "int32_t",
            DType::I8 => "int8_t",
            DType::U8 | DType::Bool => "uint8_t",
        }
    }

    fn builtin(&self, b: Builtin) -> &'static str {
        match b {
            Builtin::Block => "blk",
            Builtin::Thread => "thr",
            Builtin::BlockDim => "block_dim",
            Builtin::GridDim => "grid_dim",
        }
    }

    fn reduce(
        &self,
        _scope: Scope,
        _c: Combiner,
        vars: &[String],
        _identity: &str,
        _int: bool,
    ) -> String {
        format!(
            "/* {}: the block's one thread holds the block's value */",
            vars.join(", ")
        )
    }

    fn barrier(&self) -> &'static str {
        "/* barrier: one thread per block */"
    }

    fn half_conversions(&self, d: DType) -> (&'static str, &'static str) {
        match d {
            DType::BF16 => ("smelt_bf16_to_f32", "smelt_f32_to_bf16"),
            _ => ("smelt_f16_to_f32", "smelt_f32_to_f16"),
        }
    }

    fn helper(&self, name: &str, p: Precision) -> Option<String> {
        Some(match p {
            Precision::F32 => format!("smelt_{name}f"),
            Precision::F64 => format!("smelt_{name}"),
        })
    }

    fn int_fn(&self, name: &str) -> String {
        format!("smelt_{name}_ll")
    }

    fn combine_fn(&self, op: ReduceOp, p: Precision) -> String {
        let name = if op == ReduceOp::Min {
            "min_nan"
        } else {
            "max_nan"
        };
        self.helper(name, p).unwrap_or_default()
    }

    fn infinity(&self, p: Precision) -> &'static str {
        match p {
            Precision::F32 => "INFINITY",
            Precision::F64 => "((double)INFINITY)",
        }
    }

    /// Innermost loops get `omp simd`, so they vectorize: a fold loop (`acc = combine(acc,
    /// e)` last, `acc` read nowhere else; or several such folds of one op into distinct
    /// accumulators, as interleaved streams end) as a reduction (its order is not fixed; the
    /// GPU's tree reorders too; float max/min keep NaN propagation through a flag beside a
    /// plain max/min), any other loop when its iterations share no variable (each one it
    /// sets is set before it is read). Iterations never share memory: a kernel reads a
    /// buffer it writes only at the index it writes.
    fn loop_pragma(&self, body: &[Stmt], int_var: &dyn Fn(u32) -> bool) -> Option<LoopPragma> {
        let Iterations {
            sets: mut private,
            folds,
        } = Stmt::independent_iterations(body)?;
        private.sort_unstable();
        private.dedup();
        let private = if private.is_empty() {
            String::new()
        } else {
            let names: Vec<String> = private.iter().map(|v| format!("v{v}")).collect();
            format!(" private({})", names.join(", "))
        };
        let mut nan_flag = None;
        let line = match folds.first() {
            Some(&(acc, op)) => {
                // Float max/min: a plain combiner from ∓infinity (`smelt_fmax`/`smelt_fmin`
                // in cpu.h; a NaN-propagating combiner made a softmax row's max loop ~1.4×
                // slower), with NaN kept in a flag beside it (for one accumulator).
                let float_minmax = matches!(op, ReduceOp::Max | ReduceOp::Min)
                    && folds.iter().any(|&(a, _)| !int_var(a));
                let id = match op {
                    ReduceOp::Sum => "+",
                    ReduceOp::Prod => "*",
                    ReduceOp::Max if float_minmax => "smelt_fmax",
                    ReduceOp::Min if float_minmax => "smelt_fmin",
                    ReduceOp::Max => "max",
                    ReduceOp::Min => "min",
                };
                let flag = if float_minmax {
                    if folds.len() > 1 {
                        return None;
                    }
                    nan_flag = Some(acc);
                    format!(" reduction(|:nan_v{acc})")
                } else {
                    String::new()
                };
                let mut accs: Vec<u32> = folds.iter().map(|&(acc, _)| acc).collect();
                accs.sort_unstable();
                let accs: Vec<String> = accs.iter().map(|v| format!("v{v}")).collect();
                format!(
                    "#pragma omp simd reduction({id}:{}){flag}{private}",
                    accs.join(", ")
                )
            }
            None => format!("#pragma omp simd{private}"),
        };
        Some(LoopPragma { line, nan_flag })
    }

    fn checked_int(&self, op: &str) -> Option<String> {
        Some(format!("smelt_{op}_ll"))
    }

    fn math_fn(&self, name: &str, p: Precision) -> String {
        match (name, p) {
            // Branch-free versions that vectorize (`smelt/cpu.h`).
            ("exp" | "tanh" | "erf", Precision::F32) => format!("smelt_{name}f"),
            (_, Precision::F32) => format!("{name}f"),
            (_, Precision::F64) => name.to_string(),
        }
    }

    fn gemm(&self, g: &Gemm, program: &Program) -> Option<String> {
        if [g.a.buf, g.b.buf, g.c.buf]
            .iter()
            .any(|&b| program.buffers[b as usize].dtype != DType::F32)
        {
            return None;
        }
        let list = |v: &[i64]| {
            let parts: Vec<String> = v.iter().map(|x| format!("{x}ll")).collect();
            format!("{{{}}}", parts.join(", "))
        };
        let mut s = String::from("{\n");
        let nb = g.batch.len();
        let arr = |name: &str, v: &[i64], s: &mut String| {
            if nb > 0 {
                let _ = writeln!(s, "    static const long long {name}[{nb}] = {};", list(v));
                name.to_string()
            } else {
                "NULL".to_string()
            }
        };
        let batch: Vec<i64> = g.batch.iter().map(|&d| d as i64).collect();
        let bt = arr("batch", &batch, &mut s);
        let view = |name: &str, v: &MatrixView, s: &mut String| {
            let bs = arr(&format!("{name}_bs"), &v.batch_strides, s);
            let at = match v.offset {
                0 => format!("b{}", v.buf),
                o => format!("b{} + {o}ll", v.buf),
            };
            format!("{at}, {bs}, {}ll, {}ll", v.row_stride, v.col_stride)
        };
        let c = view("c", &g.c, &mut s);
        let a = view("a", &g.a, &mut s);
        let call = match g.b_panels {
            Some(w) => format!(
                "smelt_gemm_packed_f32(ctx, {nb}, {bt}, {}ll, {}ll, {}ll, {c}, {a}, b{}, {w}ll)",
                g.m, g.n, g.k, g.b.buf
            ),
            None => {
                let b = view("b", &g.b, &mut s);
                format!(
                    "smelt_gemm_f32(ctx, {nb}, {bt}, {}ll, {}ll, {}ll, {c}, {a}, {b})",
                    g.m, g.n, g.k
                )
            }
        };
        let _ = writeln!(s, "    {call};\n}}");
        Some(s)
    }
}

fn has_gemm(stmts: &[Stmt]) -> bool {
    Stmt::any(stmts, &|s| matches!(s, Stmt::Gemm(_)))
}

/// One kernel split for sharing: a body over positional buffers `b0, b1, ...` (its
/// parameters), and the pointer expressions this kernel passes for them.
struct Split {
    /// `static void NAME(ctx, params)`'s parameter list after `ctx`.
    params: String,
    /// The body, buffers renamed by position.
    body: String,
    /// The arguments this kernel passes (arena offsets or the caller's slots).
    args: Vec<String>,
}

fn split_kernel(program: &Program, kernel: &Kernel) -> Result<Split, RenderError> {
    let (offsets, slots) = (&program.layout.offsets, &program.layout.slots);
    let target = C;
    let err = |what: &str| RenderError {
        kernel: kernel.name.clone(),
        what: what.into(),
    };
    if !kernel.shared.is_empty() || !kernel.frags.is_empty() {
        return Err(err("block shared memory on the CPU"));
    }
    if kernel.launch.block > 1 && Stmt::has_collective(&kernel.body) {
        return Err(err("block collectives across several threads on the CPU"));
    }
    if kernel.launch.grid * kernel.launch.block > 1 && has_gemm(&kernel.body) {
        return Err(err("a library matrix product run by several threads"));
    }
    let ctx = Ctx::new(&target, program, kernel);
    let (grid, block) = (kernel.launch.grid, kernel.launch.block);
    let depth = if block > 1 { 3 } else { 2 };
    let mut loops = String::new();
    ctx.body(&mut loops, depth)?;
    // Positional buffers in the order the body first uses them: the same computation over
    // buffers numbered in another order (the same layer at another depth) is the same text.
    let listed: Vec<u32> = kernel.reads.iter().chain(&kernel.writes).copied().collect();
    let bufs = super::by_first_use(&loops, &listed);
    let (mut params, mut args, mut body) = (Vec::new(), Vec::new(), String::new());
    for (pos, &b) in bufs.iter().enumerate() {
        let d = program.buffers[b as usize].dtype;
        let t = target.elem_type(d);
        let konst = if kernel.writes.contains(&b) {
            ""
        } else {
            "const "
        };
        params.push(format!("{konst}{t}* restrict a{pos}"));
        if let Some(slot) = slots.get(b as usize).copied().flatten() {
            args.push(format!("({konst}{t}*)io[{slot}]"));
            let _ = writeln!(body, "    {konst}{t}* restrict b{pos} = a{pos};");
            continue;
        }
        let off = offsets
            .get(b as usize)
            .copied()
            .ok_or_else(|| err("a buffer without an arena offset"))?;
        args.push(format!("({konst}{t}*)(arena + {off})"));
        let _ = writeln!(
            body,
            "    {konst}{t}* restrict b{pos} = ({konst}{t}*)__builtin_assume_aligned(a{pos}, 64);"
        );
    }
    let _ = writeln!(
        body,
        "    const long long grid_dim = {grid}ll, block_dim = {block}ll;\n    (void)grid_dim; (void)block_dim;"
    );
    if grid > 1 {
        let _ = writeln!(
            body,
            "#pragma omp parallel for schedule(static) num_threads(ctx->threads)"
        );
    }
    let _ = writeln!(
        body,
        "    for (long long blk = 0; blk < grid_dim; blk++) {{"
    );
    if block > 1 {
        let _ = writeln!(
            body,
            "        for (long long thr = 0; thr < block_dim; thr++) {{"
        );
    } else {
        let _ = writeln!(body, "        const long long thr = 0; (void)thr;");
    }
    let map: std::collections::HashMap<u32, usize> =
        bufs.iter().enumerate().map(|(pos, &b)| (b, pos)).collect();
    body.push_str(&super::rename_buffers(&loops, &map));
    if block > 1 {
        let _ = writeln!(body, "        }}");
    }
    let _ = writeln!(body, "    }}");
    let mut p = String::from("const smelt_ctx* ctx");
    for param in &params {
        p.push_str(", ");
        p.push_str(param);
    }
    Ok(Split {
        params: p,
        body,
        args,
    })
}

/// `static void NAME(ctx, arena, io) { BODY(ctx, args...); }`.
fn wrapper(kernel: &Kernel, body: &str, args: &[String]) -> String {
    let mut call = format!("{body}(ctx");
    for a in args {
        call.push_str(", ");
        call.push_str(a);
    }
    call.push(')');
    format!(
        "// {} ({})\nstatic void {}(const smelt_ctx* ctx, unsigned char* arena, void* const* io) {{\n    (void)arena; (void)io;\n    {call};\n}}",
        kernel.name, kernel.node, kernel.name
    )
}

/// The program's C, split for sharing: each distinct kernel body once (with the first
/// kernel that has it), and the per-kernel wrappers and entry points that call them.
struct Parts {
    /// (`(params) { body }`, first kernel's name) per distinct body.
    bodies: Vec<(String, String)>,
    /// The kernels' wrappers, `smelt_run` and `smelt_run_kernel`.
    entries: String,
}

fn parts(program: &Program) -> Result<Parts, RenderError> {
    if program.target != crate::kernel::Target::Cpu {
        return Err(RenderError {
            kernel: String::new(),
            what: "a program lowered for the GPU (lower it for the CPU)".into(),
        });
    }
    // Kernels that differ only in their buffers (the same layer at another depth) share
    // one body function: the C compiler compiles each distinct body once.
    let mut bodies: Vec<(String, String)> = Vec::new();
    let mut index: std::collections::HashMap<String, usize> = Default::default();
    let mut out = String::new();
    for k in &program.kernels {
        let split = split_kernel(program, k)?;
        let text = format!("({}) {{\n    (void)ctx;\n{}}}", split.params, split.body);
        let i = *index.entry(text.clone()).or_insert_with(|| {
            bodies.push((text, k.name.clone()));
            bodies.len() - 1
        });
        out.push_str(&wrapper(k, &format!("smelt_body{i}"), &split.args));
        out.push_str("\n\n");
    }
    let _ = writeln!(
        out,
        "int smelt_abi_version(void) {{ return {ABI_VERSION}; }}\n\nint smelt_run(const smelt_ctx* ctx, unsigned char* arena, void* const* io) {{\n    smelt_fault = 0;"
    );
    for (i, k) in program.kernels.iter().enumerate() {
        // A kernel with index checks names itself for the fault record first.
        if !k.checks.is_empty() {
            let _ = write!(out, "    smelt_fault_kernel = {i};");
        }
        let _ = writeln!(out, "    {}(ctx, arena, io);", k.name);
    }
    let _ = writeln!(out, "    return smelt_fault;\n}}\n");
    let _ = writeln!(
        out,
        "void smelt_fault_detail(long long* out) {{\n    for (int i = 0; i < 3; i++) out[i] = smelt_fault_record[i];\n}}\n"
    );
    // One kernel at a time, for profiling.
    let _ = writeln!(
        out,
        "int smelt_kernel_count(void) {{ return {}; }}\n\nint smelt_run_kernel(const smelt_ctx* ctx, unsigned char* arena, void* const* io, int i) {{\n    switch (i) {{",
        program.kernels.len()
    );
    for (i, k) in program.kernels.iter().enumerate() {
        let _ = writeln!(
            out,
            "    case {i}: smelt_fault = 0; smelt_fault_kernel = {i}; {}(ctx, arena, io); return smelt_fault;",
            k.name
        );
    }
    let _ = writeln!(out, "    default: return 1;\n    }}\n}}");
    Ok(Parts {
        bodies,
        entries: out,
    })
}

const PREAMBLE: &str = "// generated by smelt from the kernel IR; do not edit.\n";

/// The whole program (lowered for the CPU) as one C translation unit: each distinct kernel
/// body once, the kernels calling them, and `smelt_run`, which runs the kernels in order,
/// each buffer where the program's layout puts it.
pub fn render(program: &Program) -> Result<String, RenderError> {
    let p = parts(program)?;
    let mut out = format!("{PREAMBLE}#define SMELT_MAIN_UNIT\n#include \"smelt/cpu.h\"\n\n");
    for (i, (text, first)) in p.bodies.iter().enumerate() {
        let _ = writeln!(
            out,
            "// body {i} (first: {first})\nstatic void smelt_body{i}{text}\n"
        );
    }
    out.push_str(&p.entries);
    Ok(out)
}

/// The same program as `units` translation units (at most; one per body beyond that) that
/// compile in parallel and link into one shared object: the first holds the entry points
/// (and defines `smelt_fault`), the bodies are spread over all of them by size.
pub fn render_units(program: &Program, units: usize) -> Result<Vec<String>, RenderError> {
    let p = parts(program)?;
    let n = units.clamp(1, p.bodies.len().max(1));
    // Largest bodies first, each to the unit with the least text so far; the entry points
    // count toward the first unit.
    let mut order: Vec<usize> = (0..p.bodies.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(p.bodies[i].0.len()));
    let mut load = vec![0usize; n];
    load[0] = p.entries.len();
    let mut of = vec![0usize; p.bodies.len()];
    for i in order {
        let u = (0..n).min_by_key(|&u| (load[u], u)).expect("n >= 1");
        of[i] = u;
        load[u] += p.bodies[i].0.len();
    }
    let mut out: Vec<String> = (0..n)
        .map(|u| {
            let main = if u == 0 {
                "#define SMELT_MAIN_UNIT\n"
            } else {
                ""
            };
            format!("{PREAMBLE}{main}#include \"smelt/cpu.h\"\n\n")
        })
        .collect();
    for (i, (text, first)) in p.bodies.iter().enumerate() {
        let params = &text[..text.find(')').map_or(0, |e| e + 1)];
        let _ = writeln!(out[0], "SMELT_LINK void smelt_body{i}{params};");
        let _ = writeln!(
            out[of[i]],
            "// body {i} (first: {first})\nSMELT_LINK void smelt_body{i}{text}\n"
        );
    }
    out[0].push('\n');
    out[0].push_str(&p.entries);
    Ok(out)
}
