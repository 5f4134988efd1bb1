//! The C backend's runtime: the lowered program rendered to C, compiled by the system
//! compiler into a shared object (cached on disk and in memory), loaded with `libloading`,
//! and run through its one entry point over one 64-byte-aligned arena laid out by the shared
//! memory planner. Matrix products reach the `gemm` crate through a function pointer in the
//! context; blocks run on OpenMP's thread pool.

mod cc;
pub mod peak;

pub use cc::{Compiler, DEFAULT_CFLAGS, FIXED_CFLAGS};

use crate::cache::{self, Outcome};
use crate::Error;
use smelt_compiler::codegen::c as c_render;
use smelt_compiler::ir::{DType, Data, Tensor};
use smelt_compiler::kernel::{Program, Target};
use smelt_compiler::timings::Timings;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
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

type RunFn = unsafe extern "C" fn(*const Ctx, *mut u8, *const *mut std::ffi::c_void) -> i32;
type RunKernelFn =
    unsafe extern "C" fn(*const Ctx, *mut u8, *const *mut std::ffi::c_void, i32) -> i32;
type FaultDetailFn = unsafe extern "C" fn(*mut i64);

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

/// The arena: every intermediate and constant of the program at its planned offset, in one
/// zeroed, 64-byte aligned allocation.
struct Arena {
    ptr: std::ptr::NonNull<u8>,
    layout: std::alloc::Layout,
}

// SAFETY: the arena is plain memory owned by one model; access goes through `&mut self`.
unsafe impl Send for Arena {}

impl Arena {
    fn new(bytes: usize) -> Result<Arena, Error> {
        let layout = std::alloc::Layout::from_size_align(bytes.max(64), 64)
            .map_err(|e| Error::Codegen(format!("arena of {bytes} bytes: {e}")))?;
        // SAFETY: the layout has a nonzero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = std::ptr::NonNull::new(ptr)
            .ok_or_else(|| Error::Codegen(format!("cannot allocate an arena of {bytes} bytes")))?;
        Ok(Arena { ptr, layout })
    }
    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is a live allocation of `layout.size()` zero-initialized bytes.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// The error for a nonzero return of `smelt_run`: `detail` reads the fault record
/// (kernel, check site, index) of a failed index check.
fn fault(rc: i32, program: &Program, detail: FaultDetailFn) -> Result<(), Error> {
    match rc {
        0 => Ok(()),
        c_render::FAULT_DIVIDE_BY_ZERO => {
            Err(Error::Compiler(smelt_compiler::Error::Invalid(vec![
                "integer division by zero".into(),
            ])))
        }
        c_render::FAULT_INDEX => {
            let mut record = [0i64; 3];
            // SAFETY: `smelt_fault_detail` writes three values.
            unsafe { detail(record.as_mut_ptr()) };
            let check = usize::try_from(record[0])
                .ok()
                .and_then(|k| program.kernels.get(k))
                .and_then(|k| k.checks.get(usize::try_from(record[1]).ok()?));
            Err(match check {
                Some(c) => Error::Compiler(c.error(record[2])),
                None => Error::Codegen(format!(
                    "an index check failed with an unknown site {record:?}"
                )),
            })
        }
        rc => Err(Error::Codegen(format!("smelt_run returned {rc}"))),
    }
}

/// A tensor's elements as a raw pointer for `io`.
fn data_ptr(d: &Data) -> *mut std::ffi::c_void {
    macro_rules! p {
        ($v:expr) => {
            $v.as_ptr() as *mut std::ffi::c_void
        };
    }
    match d {
        Data::F32(v) => p!(v),
        Data::F16(v) => p!(v),
        Data::BF16(v) => p!(v),
        Data::F64(v) => p!(v),
        Data::I64(v) => p!(v),
        Data::I32(v) => p!(v),
        Data::I8(v) => p!(v),
        Data::U8(v) => p!(v),
        Data::Bool(v) => p!(v),
    }
}

/// Zeroed storage for `n` elements of `d` (bool as false).
fn zeroed(d: DType, n: usize) -> Data {
    match d {
        DType::F32 => Data::F32(vec![0.0; n]),
        DType::F16 => Data::F16(vec![half::f16::ZERO; n]),
        DType::BF16 => Data::BF16(vec![half::bf16::ZERO; n]),
        DType::F64 => Data::F64(vec![0.0; n]),
        DType::I64 => Data::I64(vec![0; n]),
        DType::I32 => Data::I32(vec![0; n]),
        DType::I8 => Data::I8(vec![0; n]),
        DType::U8 => Data::U8(vec![0; n]),
        DType::Bool => Data::Bool(vec![false; n]),
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
    /// Where the time went (rendering, the cache key, the C compiler or the cache read,
    /// loading, the arena and weights).
    pub timings: Timings,
}

/// Loaded libraries by cache path: the in-memory cache. They stay loaded for the life of the
/// process: unloading one could unload the OpenMP runtime under its own worker threads.
fn loaded() -> &'static Mutex<HashMap<PathBuf, Arc<libloading::Library>>> {
    static L: OnceLock<Mutex<HashMap<PathBuf, Arc<libloading::Library>>>> = OnceLock::new();
    L.get_or_init(Default::default)
}

/// What a shared object that smelt built but cannot load may be telling.
const NOEXEC_HINT: &str =
    "is the cache directory on a filesystem mounted noexec? Set SMELT_CACHE_DIR to another one";

/// Loads the shared object at `path` and checks that it is smelt's generated code of this
/// ABI; why not otherwise (the loader's message, a missing entry point, another ABI).
fn open(path: &Path) -> Result<libloading::Library, String> {
    // SAFETY: the library is smelt's own generated code, verified against its checksum and
    // its cache key; its initializers only set up OpenMP.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| e.to_string())?;
    entry_points(&lib)?;
    Ok(lib)
}

/// The entry points of a loaded model (`smelt_run`, `smelt_run_kernel`,
/// `smelt_fault_detail`), after checking its ABI version.
fn entry_points(lib: &libloading::Library) -> Result<(RunFn, RunKernelFn, FaultDetailFn), String> {
    let missing = |e: libloading::Error| e.to_string();
    // SAFETY: the symbols are the entry points `codegen::c` generates, with these
    // signatures; the ABI version is checked before the others are looked up.
    unsafe {
        let abi: libloading::Symbol<unsafe extern "C" fn() -> i32> =
            lib.get(b"smelt_abi_version\0").map_err(missing)?;
        let v = abi();
        if v != c_render::ABI_VERSION as i32 {
            return Err(format!(
                "ABI version {v}, expected {}",
                c_render::ABI_VERSION
            ));
        }
        Ok((
            *lib.get::<RunFn>(b"smelt_run\0").map_err(missing)?,
            *lib.get::<RunKernelFn>(b"smelt_run_kernel\0")
                .map_err(missing)?,
            *lib.get::<FaultDetailFn>(b"smelt_fault_detail\0")
                .map_err(missing)?,
        ))
    }
}

/// A stretch of time, in milliseconds since a profile's epoch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Span {
    /// When it began.
    pub start_ms: f64,
    /// How long it took.
    pub ms: f64,
}

/// One profiled run: its span (inputs in, every kernel, outputs out) and each kernel's, in
/// launch order.
#[derive(Clone, Debug)]
pub struct ProfiledRun {
    /// The whole run.
    pub run: Span,
    /// Each kernel.
    pub kernels: Vec<Span>,
}

/// A model compiled for the CPU, ready to run.
pub struct CpuModel {
    program: Program,
    arena: Mutex<Arena>,
    run: RunFn,
    run_kernel: RunKernelFn,
    fault_detail: FaultDetailFn,
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

impl CpuModel {
    /// Renders a program lowered for the CPU ([`smelt_compiler::compile_for`] with
    /// [`Target::Cpu`]) to C, compiles it (or finds it in the cache) and loads it, to run on
    /// `threads` threads, with the default cache.
    pub fn new(program: &Program, threads: usize) -> Result<CpuModel, Error> {
        CpuModel::with_cache(program, threads, &cache::dir(), true)
    }

    /// Like [`CpuModel::new`], with the cache in `cache_dir`; `reuse_loaded: false` skips
    /// the in-memory cache and reads (and verifies) the disk entry, as a new process would.
    pub fn with_cache(
        program: &Program,
        threads: usize,
        cache_dir: &std::path::Path,
        reuse_loaded: bool,
    ) -> Result<CpuModel, Error> {
        let start = Instant::now();
        if program.target != Target::Cpu {
            return Err(Error::Compiler(smelt_compiler::Error::Render(
                smelt_compiler::codegen::RenderError {
                    kernel: String::new(),
                    what: "a program lowered for the GPU on the CPU".into(),
                },
            )));
        }
        let mut timings = Timings::default();
        // One translation unit per core (the C compiler runs them in parallel), a few at most.
        let jobs = smelt_compiler::parallel::cores();
        let units = timings
            .time("render c", || c_render::render_units(program, jobs))
            .map_err(smelt_compiler::Error::from)?;
        let layout = &program.layout;
        let t = Instant::now();
        let compiler = cc::find().map_err(|why| Error::NoCompiler { why })?;
        let headers = smelt_kernels::C_HEADERS;
        let mut parts: Vec<&[u8]> = vec![b"smelt-cpu"];
        for u in &units {
            parts.push(u.as_bytes());
            parts.push(b"\0unit\0");
        }
        parts.push(compiler.command.as_bytes());
        parts.push(compiler.version.as_bytes());
        let flags = compiler.flags.join(" ");
        parts.push(flags.as_bytes());
        let host = if flags.contains("native") {
            cc::host_cpu()
        } else {
            String::new()
        };
        parts.push(host.as_bytes());
        for (p, t) in headers {
            parts.push(p.as_bytes());
            parts.push(t.as_bytes());
        }
        let key = cache::key(&parts);
        let id = cache::Identity::new(
            key.clone(),
            format!(
                "smelt-cpu abi {} | {} | {} | {flags}",
                c_render::ABI_VERSION,
                compiler.command,
                compiler.version
            ),
        );
        timings.add("cache key", t.elapsed().as_secs_f64() * 1e3);
        let path = cache_dir.join("cpu").join(format!("{key}.so"));
        let mut outcome = Outcome::Memory;
        let mut map = loaded().lock().unwrap_or_else(|p| p.into_inner());
        let lib = match map.get(&path).filter(|_| reuse_loaded) {
            Some(lib) => lib.clone(),
            None => {
                let t = Instant::now();
                let build = |tmp: &Path| {
                    let work = cache::temp_path(&path.with_extension("build"));
                    let r = compiler.build(&units, headers, &work, tmp, jobs);
                    if r.is_ok() {
                        let _ = std::fs::remove_dir_all(&work);
                    }
                    r
                };
                outcome = cache::get_or_build(&path, &id, build)?;
                let stage = match outcome {
                    Outcome::Disk => "cache read",
                    _ => "cc",
                };
                timings.add(stage, t.elapsed().as_secs_f64() * 1e3);
                let t = Instant::now();
                let lib = match (open(&path), outcome) {
                    (Ok(lib), _) => lib,
                    // An entry that verified but does not load (a shared object built for
                    // something else, sealed with this key): built once more.
                    (Err(why), Outcome::Disk) => {
                        eprintln!(
                            "warning: cached code {} does not load ({why}): rebuilding it",
                            path.display()
                        );
                        outcome = cache::rebuild(&path, &id, build)?;
                        open(&path).map_err(|why| Error::Load {
                            path: path.display().to_string(),
                            why: format!("{why} (also after rebuilding it; {NOEXEC_HINT})"),
                        })?
                    }
                    (Err(why), _) => {
                        return Err(Error::Load {
                            path: path.display().to_string(),
                            why: format!("{why} (just built; {NOEXEC_HINT})"),
                        })
                    }
                };
                let lib = Arc::new(lib);
                map.insert(path.clone(), lib.clone());
                timings.add("load", t.elapsed().as_secs_f64() * 1e3);
                lib
            }
        };
        drop(map);
        let (run, run_kernel, fault_detail) = entry_points(&lib).map_err(|why| Error::Load {
            path: path.display().to_string(),
            why,
        })?;
        let t = Instant::now();
        let mut arena = Arena::new(layout.size)?;
        {
            let bytes = arena.bytes();
            for (b, t) in &program.constants {
                if layout.slots[*b as usize].is_some() {
                    continue;
                }
                let off = layout.offsets[*b as usize];
                let len = t.numel() * t.dtype().size();
                if !t.write_le_bytes(&mut bytes[off..off + len]) {
                    return Err(Error::Codegen(format!(
                        "constant {} does not fit its buffer",
                        program.buffers[*b as usize].name
                    )));
                }
            }
        }
        timings.add("arena and weights", t.elapsed().as_secs_f64() * 1e3);
        let info = BuildInfo {
            outcome,
            path,
            ms: start.elapsed().as_secs_f64() * 1e3,
            kernels: program.kernels.len(),
            arena_bytes: layout.size,
            timings,
        };
        Ok(CpuModel {
            program: program.clone(),
            arena: Mutex::new(arena),
            run,
            run_kernel,
            fault_detail,
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
    /// Inputs are read in place and outputs written in place; nothing is copied except an
    /// output that is itself an input or a constant.
    pub fn run(&self, inputs: &HashMap<String, Tensor>) -> Result<Vec<(String, Tensor)>, Error> {
        self.run_reusing(inputs, Vec::new())
    }

    /// Like [`CpuModel::run`], writing the outputs into the storage of `previous` (the
    /// outputs of an earlier run) where dtype and size match, so a steady-state loop
    /// allocates nothing.
    pub fn run_reusing(
        &self,
        inputs: &HashMap<String, Tensor>,
        previous: Vec<(String, Tensor)>,
    ) -> Result<Vec<(String, Tensor)>, Error> {
        let mut spare: Vec<Data> = previous
            .into_iter()
            .map(|(_, t)| t.into_parts().1)
            .collect();
        self.run_with(inputs, &mut spare, &mut |ctx, arena, io| {
            // SAFETY: see `run_with`.
            let rc = unsafe { (self.run)(ctx, arena, io) };
            fault(rc, &self.program, self.fault_detail)
        })
    }

    /// Runs the plan `reps` times (at least once), each kernel on its own (timed from the
    /// host around it: the kernel's whole parallel region), and returns every run's kernel
    /// spans in launch order, times in milliseconds since `epoch`.
    pub fn profile_runs(
        &self,
        inputs: &HashMap<String, Tensor>,
        reps: usize,
        epoch: Instant,
    ) -> Result<Vec<ProfiledRun>, Error> {
        let since = |t: Instant| t.duration_since(epoch).as_secs_f64() * 1e3;
        let mut runs = Vec::with_capacity(reps.max(1));
        let mut spare = Vec::new();
        for _ in 0..reps.max(1) {
            let mut kernels = Vec::with_capacity(self.program.kernels.len());
            let start = Instant::now();
            let out = self.run_with(inputs, &mut spare, &mut |ctx, arena, io| {
                for i in 0..self.program.kernels.len() {
                    let t = Instant::now();
                    // SAFETY: see `run_with`; kernels run in launch order.
                    let rc = unsafe { (self.run_kernel)(ctx, arena, io, i as i32) };
                    kernels.push(Span {
                        start_ms: since(t),
                        ms: t.elapsed().as_secs_f64() * 1e3,
                    });
                    fault(rc, &self.program, self.fault_detail)?;
                }
                Ok(())
            })?;
            runs.push(ProfiledRun {
                run: Span {
                    start_ms: since(start),
                    ms: start.elapsed().as_secs_f64() * 1e3,
                },
                kernels,
            });
            spare = out.into_iter().map(|(_, t)| t.into_parts().1).collect();
        }
        Ok(runs)
    }

    /// Sets up `io` and the arena for `inputs`, calls `f`, and collects the outputs.
    ///
    /// `f` gets the context, the arena and the io table of a model whose every pointer is
    /// valid: the arena has the size the C was rendered for and is locked for this call, and
    /// each io pointer points at storage of its buffer's dtype and length.
    fn run_with(
        &self,
        inputs: &HashMap<String, Tensor>,
        spare: &mut Vec<Data>,
        f: &mut dyn FnMut(*const Ctx, *mut u8, *const *mut std::ffi::c_void) -> Result<(), Error>,
    ) -> Result<Vec<(String, Tensor)>, Error> {
        let input_err = |name: &str, message: String| {
            Error::Compiler(smelt_compiler::Error::Input {
                name: name.to_string(),
                message,
            })
        };
        let slots = &self.program.layout.slots;
        let nslots = slots.iter().flatten().count();
        let mut io: Vec<*mut std::ffi::c_void> = vec![std::ptr::null_mut(); nslots];
        for (b, t) in &self.program.constants {
            if let Some(slot) = slots[*b as usize] {
                // Read only: the generated code declares weights `const`.
                io[slot] = data_ptr(t.data());
            }
        }
        for (name, b) in &self.program.inputs {
            let t = inputs
                .get(name)
                .ok_or_else(|| input_err(name, "missing".into()))?;
            let d = &self.program.buffers[*b as usize];
            if t.dtype() != d.dtype || t.numel() != d.len {
                return Err(input_err(
                    name,
                    format!("expected {} elements of {}", d.len, d.dtype),
                ));
            }
            if let Some(slot) = slots[*b as usize] {
                io[slot] = data_ptr(t.data());
            }
        }
        // Storage for each output that a kernel writes, by slot.
        let mut owned: Vec<(usize, Data)> = Vec::new();
        for (_, b) in &self.program.outputs {
            let Some(slot) = slots[*b as usize] else {
                continue;
            };
            let is_input = self.program.inputs.iter().any(|(_, i)| i == b);
            if is_input || owned.iter().any(|(s, _)| *s == slot) {
                continue;
            }
            let d = &self.program.buffers[*b as usize];
            let reuse = spare
                .iter()
                .position(|x| x.dtype() == d.dtype && x.len() == d.len);
            let data = match reuse {
                Some(i) => spare.swap_remove(i),
                None => zeroed(d.dtype, d.len),
            };
            io[slot] = data_ptr(&data);
            owned.push((slot, data));
        }
        let ctx = Ctx {
            gemm_f32,
            threads: self.threads.min(i32::MAX as usize) as i32,
        };
        let mut arena = self.arena.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = arena.bytes();
        f(&ctx, bytes.as_mut_ptr(), io.as_ptr())?;
        let mut out: Vec<(String, Tensor)> = Vec::with_capacity(self.program.outputs.len());
        for (k, (name, b)) in self.program.outputs.iter().enumerate() {
            let d = &self.program.buffers[*b as usize];
            let slot = slots[*b as usize];
            let earlier = self.program.outputs[..k].iter().position(|(_, e)| e == b);
            let t = if let Some(e) = earlier {
                out[e].1.clone()
            } else if let Some(i) = self.program.inputs.iter().find(|(_, ib)| ib == b) {
                inputs[&i.0].clone()
            } else if let Some(pos) = owned.iter().position(|(s, _)| Some(*s) == slot) {
                let (_, data) = owned.swap_remove(pos);
                Tensor::new(d.shape.clone(), data)
                    .ok_or_else(|| Error::Codegen(format!("output {name} has the wrong size")))?
            } else {
                let off = self.program.layout.offsets[*b as usize];
                let len = d.len * d.dtype.size();
                Tensor::from_le_bytes(d.dtype, d.shape.clone(), &bytes[off..off + len])
                    .ok_or_else(|| Error::Codegen(format!("output {name} has the wrong size")))?
            };
            out.push((name.clone(), t));
        }
        Ok(out)
    }
}
