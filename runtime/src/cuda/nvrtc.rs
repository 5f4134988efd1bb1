//! NVRTC through `cudarc`, loaded at run time: CUDA C source → cubin for one architecture,
//! with the ptxas resource report (registers, stack, spills).
//!
//! The library is found from `$SMELT_NVRTC` (a path to `libnvrtc.so.13`), else the
//! `nvidia-cuda-nvrtc` wheel that `scripts/setup` installs into the repository's `.venv`,
//! else the system's search path. A missing library is an [`NvrtcError::NotFound`], never a
//! panic. NVRTC ≥ 13.3 carries its own CUDA headers; they are installed once into
//! `$SMELT_CACHE_DIR` (default `~/.cache/smelt`), next to smelt's device library
//! ([`smelt_kernels::HEADERS`]).

use cudarc::nvrtc::{result, sys};
use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use thiserror::Error;

/// What can go wrong compiling with NVRTC.
#[derive(Debug, Error)]
pub enum NvrtcError {
    /// The library is not installed where smelt looks.
    #[error("NVRTC not found ({0}); run scripts/setup or set SMELT_NVRTC to libnvrtc.so.13")]
    NotFound(String),
    /// The headers could not be installed.
    #[error("NVRTC headers: {0}")]
    Headers(String),
    /// The kernel did not compile.
    #[error("kernel '{kernel}' does not compile for {arch}: {first_error}\n{log}")]
    Compile {
        /// Kernel (program) name.
        kernel: String,
        /// Target architecture.
        arch: String,
        /// The first error line of the log, with the offending source line when known.
        first_error: String,
        /// The full compiler log.
        log: String,
    },
    /// An NVRTC call failed.
    #[error("NVRTC call failed: {0}")]
    Call(String),
    /// The cubin and PTX cache cannot be used (its directory cannot be created or written):
    /// a problem of the machine, with the path and the OS error.
    #[error("compiled-code cache: {0} (set SMELT_CACHE_DIR to a writable directory)")]
    Cache(#[from] crate::cache::CacheError),
}

/// Registers, stack and spills of one compiled kernel, from ptxas.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    /// Registers per thread.
    pub registers: u32,
    /// Stack frame bytes.
    pub stack_bytes: u32,
    /// Bytes spilled to local memory.
    pub spill_stores: u32,
    /// Bytes loaded back from spills.
    pub spill_loads: u32,
}

/// A compiled program.
#[derive(Clone, Debug)]
pub struct Cubin {
    /// The machine code.
    pub cubin: Vec<u8>,
    /// The compiler log (ptxas report included).
    pub log: String,
    /// Resources per kernel function, by (mangled or extern "C") name.
    pub resources: Vec<(String, Resources)>,
}

struct Loaded {
    include_dir: PathBuf,
    version: (i32, i32),
}

fn candidates() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Ok(p) = std::env::var("SMELT_NVRTC") {
        v.push(PathBuf::from(p));
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/lib");
    if let Ok(entries) = std::fs::read_dir(&venv) {
        let mut pythons: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        pythons.sort();
        for py in pythons {
            v.push(py.join("site-packages/nvidia/cu13/lib/libnvrtc.so.13"));
        }
    }
    v
}

fn load() -> Result<&'static Loaded, NvrtcError> {
    static LOADED: OnceLock<Result<Loaded, String>> = OnceLock::new();
    let loaded = LOADED.get_or_init(|| {
        // Load by absolute path first: the dynamic loader then satisfies cudarc's load of
        // `libnvrtc.so.13` by its SONAME.
        let mut tried = Vec::new();
        for path in candidates() {
            if path.exists() {
                // SAFETY: loading NVRTC runs its initializers, which have no preconditions.
                match unsafe { libloading::Library::new(&path) } {
                    Ok(lib) => {
                        std::mem::forget(lib);
                        break;
                    }
                    Err(e) => tried.push(format!("{}: {e}", path.display())),
                }
            } else {
                tried.push(format!("{}: missing", path.display()));
            }
        }
        // SAFETY: only probes whether the library can be opened.
        if !unsafe { sys::is_culib_present() } {
            return Err(if tried.is_empty() {
                "no candidates".to_string()
            } else {
                tried.join("; ")
            });
        }
        let (mut major, mut minor) = (0, 0);
        // SAFETY: NVRTC is loaded; the pointers are valid.
        unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
            .result()
            .map_err(|e| format!("nvrtcVersion: {e:?}"))?;
        let include_dir = install_headers(major, minor)?;
        Ok(Loaded {
            include_dir,
            version: (major, minor),
        })
    });
    loaded.as_ref().map_err(|e| {
        if e.starts_with("headers:") {
            NvrtcError::Headers(e.clone())
        } else {
            NvrtcError::NotFound(e.clone())
        }
    })
}

/// Installs NVRTC's bundled CUDA headers and smelt's device library under the cache dir.
fn install_headers(major: i32, minor: i32) -> Result<PathBuf, String> {
    let dir = crate::cache::dir().join(format!("nvrtc-{major}.{minor}/include"));
    let stamp = dir.join(".installed");
    if !stamp.exists() {
        std::fs::create_dir_all(&dir).map_err(|e| format!("headers: {}: {e}", dir.display()))?;
        let c_dir =
            CString::new(dir.to_string_lossy().as_bytes()).map_err(|e| format!("headers: {e}"))?;
        let mut err: *const std::ffi::c_char = std::ptr::null();
        // SAFETY: NVRTC is loaded, the path is a valid C string and `err` a valid out-pointer.
        let r = unsafe { sys::nvrtcInstallBundledHeaders(c_dir.as_ptr(), 0, &mut err) };
        if r != sys::nvrtcResult::NVRTC_SUCCESS {
            let msg = if err.is_null() {
                format!("{r:?}")
            } else {
                // SAFETY: NVRTC returns a NUL-terminated message.
                unsafe { CStr::from_ptr(err) }
                    .to_string_lossy()
                    .into_owned()
            };
            return Err(format!("headers: installing into {}: {msg}", dir.display()));
        }
        std::fs::write(&stamp, b"").map_err(|e| format!("headers: {e}"))?;
    }
    for (path, src) in smelt_kernels::HEADERS {
        let p = dir.join(path);
        // Never opened in a way that blocks: a FIFO there is replaced like a stale copy.
        if crate::cache::read_regular(&p).ok().as_deref() != Some(src.as_bytes()) {
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).map_err(|e| format!("headers: {e}"))?;
            }
            // Write to a temporary name, then rename: concurrent processes never see half a file.
            let tmp = p.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, src).map_err(|e| format!("headers: {e}"))?;
            std::fs::rename(&tmp, &p).map_err(|e| format!("headers: {e}"))?;
        }
    }
    Ok(dir)
}

/// The NVRTC version, e.g. (13, 5), or why it cannot be loaded.
pub fn version() -> Result<(i32, i32), NvrtcError> {
    load().map(|l| l.version)
}

/// Compiles `source` (program `name`) to a cubin for `arch` (`sm_80`, `sm_90`, ...).
pub fn compile(name: &str, source: &str, arch: &str) -> Result<Cubin, NvrtcError> {
    let (cubin, log) = run(name, source, arch, arch, &|prog| cubin(prog))?;
    Ok(Cubin {
        cubin,
        resources: parse_resources(&log),
        log,
    })
}

/// Compiles `source` to PTX for the virtual architecture of `arch` (`sm_90` → `compute_90`):
/// the portable form a newer driver can still JIT.
pub fn compile_ptx(name: &str, source: &str, arch: &str) -> Result<String, NvrtcError> {
    let virt = arch.replacen("sm_", "compute_", 1);
    let (ptx, _) = run(name, source, arch, &virt, &|prog| {
        // SAFETY: `prog` compiled successfully.
        let chars = unsafe { result::get_ptx(prog) }
            .map_err(|e| NvrtcError::Call(format!("nvrtcGetPTX: {e:?}")))?;
        Ok(c_text(&chars))
    })?;
    Ok(ptx)
}

/// Runs NVRTC on `source` for `--gpu-architecture=target` and extracts the result from the
/// compiled program; returns it with the log. `arch` names the target in errors.
fn run<T>(
    name: &str,
    source: &str,
    arch: &str,
    target: &str,
    extract: &dyn Fn(sys::nvrtcProgram) -> Result<T, NvrtcError>,
) -> Result<(T, String), NvrtcError> {
    let loaded = load()?;
    let c_src =
        CString::new(source).map_err(|_| NvrtcError::Call("source contains a NUL byte".into()))?;
    let c_name =
        CString::new(name).map_err(|_| NvrtcError::Call("name contains a NUL byte".into()))?;
    let prog = result::create_program(&c_src, Some(&c_name))
        .map_err(|e| NvrtcError::Call(format!("{e:?}")))?;
    let inc = loaded.include_dir.display().to_string();
    let mut options = vec![
        format!("--gpu-architecture={target}"),
        format!("-I{inc}"),
        format!("-I{inc}/cccl"),
    ];
    options.extend(OPTIONS.split(' ').map(String::from));
    // SAFETY: `prog` was just created and is destroyed below; options contain no NUL bytes.
    let compiled = unsafe { result::compile_program(prog, &options) };
    // SAFETY: as above.
    let log = unsafe { result::get_program_log(prog) }
        .map(|chars| c_text(&chars))
        .unwrap_or_default();
    let out = match compiled {
        Err(_) => Err(NvrtcError::Compile {
            kernel: name.to_string(),
            arch: arch.to_string(),
            first_error: first_error(&log, name, source),
            log: log.clone(),
        }),
        Ok(()) => extract(prog).map(|t| (t, log)),
    };
    // SAFETY: created above, not destroyed before.
    let _ = unsafe { result::destroy_program(prog) };
    out
}

/// The cache identity of a `what` (cubin or PTX) of `source`: its key covers the source and
/// its name, smelt's device headers, the architecture, NVRTC's version and the options.
fn cache_id(
    what: &str,
    name: &str,
    source: &str,
    arch: &str,
) -> Result<crate::cache::Identity, NvrtcError> {
    let (major, minor) = version()?;
    let nvrtc = format!("nvrtc {major}.{minor}");
    let mut parts: Vec<&[u8]> = vec![
        what.as_bytes(),
        name.as_bytes(),
        source.as_bytes(),
        arch.as_bytes(),
        nvrtc.as_bytes(),
        OPTIONS.as_bytes(),
    ];
    for (p, t) in smelt_kernels::HEADERS {
        parts.push(p.as_bytes());
        parts.push(t.as_bytes());
    }
    let key = crate::cache::key(&parts);
    let about = format!("{what} {name} | {arch} | {nvrtc} | {OPTIONS}");
    Ok(crate::cache::Identity::new(key, about))
}

/// Like [`compile`], through the disk cache under `dir` (see [`crate::cache`]): an entry is
/// keyed by the source, smelt's device headers, the architecture, NVRTC's version and the
/// options, holds the cubin and the compiler log (so resources survive), and is verified on
/// read; a bad one is recompiled.
pub fn compile_cached(
    name: &str,
    source: &str,
    arch: &str,
    dir: &Path,
) -> Result<(Cubin, crate::cache::Outcome), NvrtcError> {
    use crate::cache;
    let id = cache_id("smelt-cubin", name, source, arch)?;
    let path = dir.join("cubin").join(format!("{}.cubin", id.key));
    if let Some(c) = cache::load(&path, &id).and_then(|b| decode(&b)) {
        return Ok((c, cache::Outcome::Disk));
    }
    let c = compile(name, source, arch)?;
    let bytes = encode(&c);
    let outcome = cache::get_or_build(&path, &id, |tmp| write_file(tmp, &bytes))?;
    Ok((c, outcome))
}

/// [`compile_ptx`] through the disk cache under `dir`, keyed as [`compile_cached`] keys
/// cubins.
pub fn compile_ptx_cached(
    name: &str,
    source: &str,
    arch: &str,
    dir: &Path,
) -> Result<String, NvrtcError> {
    use crate::cache;
    let id = cache_id("smelt-ptx", name, source, arch)?;
    let path = dir.join("ptx").join(format!("{}.ptx", id.key));
    if let Some(text) = cache::load(&path, &id).and_then(|b| String::from_utf8(b).ok()) {
        return Ok(text);
    }
    let ptx = compile_ptx(name, source, arch)?;
    cache::get_or_build(&path, &id, |tmp| write_file(tmp, ptx.as_bytes()))?;
    Ok(ptx)
}

/// Writes a cache entry's payload to its temporary path.
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), crate::cache::CacheError> {
    std::fs::write(path, bytes).map_err(|source| crate::cache::CacheError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The options every compile passes besides the architecture and include paths (part of
/// the cache key).
const OPTIONS: &str = "--std=c++17 --ptxas-options=-v";

/// A cache entry: cubin length (u64 little-endian), cubin, log.
fn encode(c: &Cubin) -> Vec<u8> {
    let mut v = (c.cubin.len() as u64).to_le_bytes().to_vec();
    v.extend_from_slice(&c.cubin);
    v.extend_from_slice(c.log.as_bytes());
    v
}

fn decode(b: &[u8]) -> Option<Cubin> {
    let len = u64::from_le_bytes(b.get(..8)?.try_into().ok()?) as usize;
    let cubin = b.get(8..8usize.checked_add(len)?)?.to_vec();
    let log = String::from_utf8_lossy(b.get(8 + len..)?).into_owned();
    Some(Cubin {
        resources: parse_resources(&log),
        cubin,
        log,
    })
}

/// A NUL-terminated C string from NVRTC as text.
fn c_text(chars: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = chars
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn cubin(prog: sys::nvrtcProgram) -> Result<Vec<u8>, NvrtcError> {
    let mut size = 0usize;
    // SAFETY: `prog` compiled successfully; the out-pointers are valid.
    unsafe { sys::nvrtcGetCUBINSize(prog, &mut size) }
        .result()
        .map_err(|e| NvrtcError::Call(format!("nvrtcGetCUBINSize: {e:?}")))?;
    let mut buf = vec![0u8; size];
    // SAFETY: `buf` has the size NVRTC reported.
    unsafe { sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr().cast()) }
        .result()
        .map_err(|e| NvrtcError::Call(format!("nvrtcGetCUBIN: {e:?}")))?;
    Ok(buf)
}

/// The first `error` line of a log, followed by the source line it points at when the error
/// is in the program itself (not in an included header).
fn first_error(log: &str, name: &str, source: &str) -> String {
    let Some(line) = log.lines().find(|l| l.contains("error")) else {
        return "no error line in the log".into();
    };
    // NVRTC writes `FILE(LINE): error: ...`.
    let at = line
        .split_once('(')
        .filter(|(file, _)| *file == name)
        .and_then(|(_, rest)| rest.split_once(')'))
        .and_then(|(n, _)| n.parse::<usize>().ok());
    match at.and_then(|n| source.lines().nth(n.saturating_sub(1)).map(|s| (n, s))) {
        Some((n, src)) => format!("{line} (line {n}: `{}`)", src.trim()),
        None => line.to_string(),
    }
}

/// Parses ptxas' `-v` report: per function, registers, stack and spill bytes.
pub fn parse_resources(log: &str) -> Vec<(String, Resources)> {
    let mut out: Vec<(String, Resources)> = Vec::new();
    let number_before = |l: &str, what: &str| -> Option<u32> {
        let i = l.find(what)?;
        l[..i].split_whitespace().last()?.parse().ok()
    };
    for l in log.lines() {
        if let Some(i) = l.find("Compiling entry function '") {
            let rest = &l[i + "Compiling entry function '".len()..];
            let name = rest.split('\'').next().unwrap_or("").to_string();
            out.push((name, Resources::default()));
        } else if let Some((_, r)) = out.last_mut() {
            if let Some(n) = number_before(l, "registers") {
                r.registers = n;
            }
            if let Some(n) = number_before(l, "bytes stack frame") {
                r.stack_bytes = n;
            }
            if let Some(n) = number_before(l, "bytes spill stores") {
                r.spill_stores = n;
            }
            if let Some(n) = number_before(l, "bytes spill loads") {
                r.spill_loads = n;
            }
        }
    }
    out
}
