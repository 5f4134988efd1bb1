//! The C backend's runtime: the lowered program rendered to C, compiled by the system
//! compiler into a shared object (cached on disk and in memory), loaded with `libloading`,
//! and run through its one entry point over one 64-byte-aligned arena laid out by the shared
//! memory planner. Matrix products reach the `gemm` crate through a function pointer in the
//! context; blocks run on OpenMP's thread pool.

mod cc;

pub use cc::{Compiler, DEFAULT_CFLAGS, FIXED_CFLAGS};

use crate::cache::{self, Outcome};
use crate::Error;
use smelt_compiler::codegen::c as c_render;
use smelt_compiler::ir::{Graph, Tensor};
use smelt_compiler::kernel::{lower_for, Program, Target};
use smelt_compiler::schedule::arena;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

/// The context `smelt_run` gets (`smelt_ctx` in `smelt/cpu.h`).
#[repr(C)]
struct Ctx {
    gemm_f32: GemmF32,
    threads: i32,
}

type GemmF32 = unsafe extern "C" fn(
    usize,
    usize,
    usize,
    *mut f32,
    isize,
    isize,
    *const f32,
    isize,
    isize,
    *const f32,
    isize,
    isize,
);

type RunFn = unsafe extern "C" fn(*const Ctx, *mut u8) -> i32;

/// `c = a × b` through the `gemm` crate, single-threaded (the C driver splits the work over
/// the pool). Strides in elements.
///
/// # Safety
/// The pointers and strides must describe valid m×k, k×n and m×n matrices, `c` not
/// overlapping the others.
unsafe extern "C" fn gemm_f32(
    m: usize,
    n: usize,
    k: usize,
    c: *mut f32,
    c_rs: isize,
    c_cs: isize,
    a: *const f32,
    a_rs: isize,
    a_cs: isize,
    b: *const f32,
    b_rs: isize,
    b_cs: isize,
) {
    // SAFETY: the caller (generated code) passes views inside the arena that the lowering
    // derived from the buffers' shapes.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            c_cs,
            c_rs,
            false,
            a,
            a_cs,
            a_rs,
            b,
            b_cs,
            b_rs,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// A 64-byte aligned block of the arena.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// The arena: every buffer of the program at its planned offset.
struct Arena {
    lines: Vec<Line>,
}

impl Arena {
    fn new(bytes: usize) -> Arena {
        Arena {
            lines: vec![Line([0; 64]); bytes.div_ceil(64).max(1)],
        }
    }
    fn bytes(&mut self) -> &mut [u8] {
        let len = self.lines.len() * 64;
        // SAFETY: `Line` is 64 plain bytes with no padding; the slice covers exactly the
        // vector's initialized elements.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<u8>(), len) }
    }
}

/// How a model's shared object was obtained, and what it took.
#[derive(Clone, Debug)]
pub struct BuildInfo {
    /// Memory, disk, built, or rebuilt after a failed verification.
    pub outcome: Outcome,
    /// The cache entry.
    pub path: PathBuf,
    /// Milliseconds from the optimized graph to a loaded shared object.
    pub ms: f64,
    /// Kernels in the program.
    pub kernels: usize,
    /// Arena bytes.
    pub arena_bytes: usize,
}

/// Loaded libraries by cache path: the in-memory cache. They stay loaded for the life of the
/// process: unloading one could unload the OpenMP runtime under its own worker threads.
fn loaded() -> &'static Mutex<HashMap<PathBuf, Arc<libloading::Library>>> {
    static L: OnceLock<Mutex<HashMap<PathBuf, Arc<libloading::Library>>>> = OnceLock::new();
    L.get_or_init(Default::default)
}

/// A model compiled for the CPU, ready to run.
pub struct CpuModel {
    program: Program,
    offsets: Vec<usize>,
    arena: Mutex<Arena>,
    run: RunFn,
    threads: usize,
    info: BuildInfo,
    _lib: Arc<libloading::Library>,
}

impl std::fmt::Debug for CpuModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuModel")
            .field("kernels", &self.program.kernels.len())
            .field("info", &self.info)
            .finish()
    }
}

/// The C source of an optimized graph and its arena plan (what [`CpuModel::new`] compiles).
pub fn source(graph: &Graph) -> Result<(Program, arena::ArenaPlan, String), Error> {
    let program = lower_for(graph, Target::Cpu).map_err(|e| Error::Codegen(e.to_string()))?;
    let plan = arena::plan(&arena::program_lifetimes(&program));
    let src =
        c_render::render(&program, &plan.offsets).map_err(|e| Error::Codegen(e.to_string()))?;
    Ok((program, plan, src))
}

impl CpuModel {
    /// Lowers an optimized graph, compiles it (or finds it in the cache) and loads it, to
    /// run on `threads` threads.
    pub fn new(graph: &Graph, threads: usize) -> Result<CpuModel, Error> {
        let start = Instant::now();
        let (program, plan, src) = source(graph)?;
        let compiler = cc::find().map_err(|why| Error::NoCompiler { why })?;
        let headers = smelt_kernels::C_HEADERS;
        let mut parts: Vec<&[u8]> = vec![
            b"smelt-cpu",
            src.as_bytes(),
            compiler.command.as_bytes(),
            compiler.version.as_bytes(),
        ];
        let flags = compiler.flags.join(" ");
        parts.push(flags.as_bytes());
        for (p, t) in headers {
            parts.push(p.as_bytes());
            parts.push(t.as_bytes());
        }
        let key = cache::key(&parts);
        let path = cache::dir().join("cpu").join(format!("{key}.so"));
        let mut outcome = Outcome::Memory;
        let mut map = loaded().lock().unwrap_or_else(|p| p.into_inner());
        let lib = match map.get(&path) {
            Some(lib) => lib.clone(),
            None => {
                outcome = cache::get_or_build(&path, |tmp| {
                    let work = cache::temp_path(&path.with_extension("build"));
                    let r = compiler.build(&src, headers, &work, tmp);
                    if r.is_ok() {
                        let _ = std::fs::remove_dir_all(&work);
                    }
                    r
                })
                .map_err(Error::CCompile)?;
                // SAFETY: the library is smelt's own generated code, verified against its
                // checksum; its initializers only set up OpenMP.
                let lib = unsafe { libloading::Library::new(&path) }.map_err(|e| Error::Load {
                    path: path.display().to_string(),
                    why: e.to_string(),
                })?;
                let lib = Arc::new(lib);
                map.insert(path.clone(), lib.clone());
                lib
            }
        };
        drop(map);
        let load_err = |e: libloading::Error| Error::Load {
            path: path.display().to_string(),
            why: e.to_string(),
        };
        // SAFETY: the symbols are the entry points `codegen::c` generates, with these
        // signatures; the ABI version is checked before `smelt_run` is used.
        let run = unsafe {
            let abi: libloading::Symbol<unsafe extern "C" fn() -> i32> =
                lib.get(b"smelt_abi_version\0").map_err(load_err)?;
            let v = abi();
            if v != c_render::ABI_VERSION as i32 {
                return Err(Error::Load {
                    path: path.display().to_string(),
                    why: format!("ABI version {v}, expected {}", c_render::ABI_VERSION),
                });
            }
            *lib.get::<RunFn>(b"smelt_run\0").map_err(load_err)?
        };
        let mut arena = Arena::new(plan.size);
        {
            let bytes = arena.bytes();
            for (b, t) in &program.constants {
                let off = plan.offsets[*b as usize];
                let len = t.numel() * t.dtype().size();
                if !t.write_le_bytes(&mut bytes[off..off + len]) {
                    return Err(Error::Codegen(format!(
                        "constant {} does not fit its buffer",
                        program.buffers[*b as usize].name
                    )));
                }
            }
        }
        let info = BuildInfo {
            outcome,
            path,
            ms: start.elapsed().as_secs_f64() * 1e3,
            kernels: program.kernels.len(),
            arena_bytes: plan.size,
        };
        Ok(CpuModel {
            program,
            offsets: plan.offsets,
            arena: Mutex::new(arena),
            run,
            threads: threads.max(1),
            info,
            _lib: lib,
        })
    }

    /// How it was built.
    pub fn info(&self) -> &BuildInfo {
        &self.info
    }

    /// The lowered program it runs.
    pub fn program(&self) -> &Program {
        &self.program
    }

    /// Runs on inputs already checked against the graph; returns the outputs in order.
    pub fn run(&self, inputs: &HashMap<String, Tensor>) -> Result<Vec<(String, Tensor)>, Error> {
        let mut arena = self.arena.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = arena.bytes();
        for (name, b) in &self.program.inputs {
            let t = inputs.get(name).ok_or_else(|| {
                Error::Compiler(smelt_compiler::Error::Input {
                    name: name.clone(),
                    message: "missing".into(),
                })
            })?;
            let d = &self.program.buffers[*b as usize];
            let off = self.offsets[*b as usize];
            let len = d.len * d.dtype.size();
            if t.dtype() != d.dtype || !t.write_le_bytes(&mut bytes[off..off + len]) {
                return Err(Error::Compiler(smelt_compiler::Error::Input {
                    name: name.clone(),
                    message: format!("expected {} elements of {}", d.len, d.dtype),
                }));
            }
        }
        let ctx = Ctx {
            gemm_f32,
            threads: self.threads.min(i32::MAX as usize) as i32,
        };
        // SAFETY: `run` is the loaded library's entry point; the arena has the size the
        // plan the C was rendered with asks for, and no one else touches it (locked).
        let rc = unsafe { (self.run)(&ctx, bytes.as_mut_ptr()) };
        if rc != 0 {
            return Err(Error::Codegen(format!("smelt_run returned {rc}")));
        }
        self.program
            .outputs
            .iter()
            .map(|(name, b)| {
                let d = &self.program.buffers[*b as usize];
                let off = self.offsets[*b as usize];
                let len = d.len * d.dtype.size();
                Tensor::from_le_bytes(d.dtype, d.shape.clone(), &bytes[off..off + len])
                    .map(|t| (name.clone(), t))
                    .ok_or_else(|| Error::Codegen(format!("output {name} has the wrong size")))
            })
            .collect()
    }
}
