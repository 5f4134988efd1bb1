//! cuBLASLt, for the product kernels whose whole body one library matmul computes
//! ([`BlasGemm`], attached by lowering). The library is optional: it is opened at load time
//! from `$SMELT_CUBLASLT` (a path) or by its usual names (`libcublasLt.so.13`, `.so.12`,
//! `.so`: any CUDA 12 or 13 install), and a model without it launches its own kernels. Its
//! few entry points are resolved here (cudarc's loader knows one CUDA major version's name
//! only, and panics when that is missing); the types are cudarc's bindings.
//!
//! Everything about a call is decided at load: descriptors, layouts, the algorithm (the
//! heuristic's first choice for the pointers' actual alignment and the workspace), and the
//! pointers themselves (the arena never moves). A run only enqueues `cublasLtMatmul` on
//! the model's stream, which a CUDA graph captures like a kernel launch.

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublaslt::sys::{
    cublasComputeType_t, cublasLtEpilogue_t, cublasLtHandle_t, cublasLtMatmulAlgo_t,
    cublasLtMatmulDescAttributes_t as DescAttr, cublasLtMatmulDesc_t,
    cublasLtMatmulHeuristicResult_t, cublasLtMatmulPreferenceAttributes_t as PrefAttr,
    cublasLtMatmulPreference_t, cublasLtMatrixLayoutAttribute_t as LayoutAttr,
    cublasLtMatrixLayout_t, cublasStatus_t, cudaDataType_t, cudaStream_t,
};
use smelt_compiler::ir::DType;
use smelt_compiler::kernel::ir::{BlasActivation, BlasGemm, BlasMatrix};
use std::ffi::{c_int, c_void};
use std::sync::Arc;

type Status = cublasStatus_t;
type SetAttr<H, A> = unsafe extern "C" fn(H, A, *const c_void, usize) -> Status;

/// The entry points smelt calls.
struct Fns {
    create: unsafe extern "C" fn(*mut cublasLtHandle_t) -> Status,
    destroy: unsafe extern "C" fn(cublasLtHandle_t) -> Status,
    version: unsafe extern "C" fn() -> usize,
    desc_create: unsafe extern "C" fn(
        *mut cublasLtMatmulDesc_t,
        cublasComputeType_t,
        cudaDataType_t,
    ) -> Status,
    desc_set: SetAttr<cublasLtMatmulDesc_t, DescAttr>,
    desc_destroy: unsafe extern "C" fn(cublasLtMatmulDesc_t) -> Status,
    layout_create:
        unsafe extern "C" fn(*mut cublasLtMatrixLayout_t, cudaDataType_t, u64, u64, i64) -> Status,
    layout_set: SetAttr<cublasLtMatrixLayout_t, LayoutAttr>,
    layout_destroy: unsafe extern "C" fn(cublasLtMatrixLayout_t) -> Status,
    pref_create: unsafe extern "C" fn(*mut cublasLtMatmulPreference_t) -> Status,
    pref_set: SetAttr<cublasLtMatmulPreference_t, PrefAttr>,
    pref_destroy: unsafe extern "C" fn(cublasLtMatmulPreference_t) -> Status,
    #[allow(clippy::type_complexity)]
    heuristic: unsafe extern "C" fn(
        cublasLtHandle_t,
        cublasLtMatmulDesc_t,
        cublasLtMatrixLayout_t,
        cublasLtMatrixLayout_t,
        cublasLtMatrixLayout_t,
        cublasLtMatrixLayout_t,
        cublasLtMatmulPreference_t,
        c_int,
        *mut cublasLtMatmulHeuristicResult_t,
        *mut c_int,
    ) -> Status,
    #[allow(clippy::type_complexity)]
    matmul: unsafe extern "C" fn(
        cublasLtHandle_t,
        cublasLtMatmulDesc_t,
        *const c_void,
        *const c_void,
        cublasLtMatrixLayout_t,
        *const c_void,
        cublasLtMatrixLayout_t,
        *const c_void,
        *const c_void,
        cublasLtMatrixLayout_t,
        *mut c_void,
        cublasLtMatrixLayout_t,
        *const cublasLtMatmulAlgo_t,
        *mut c_void,
        usize,
        cudaStream_t,
    ) -> Status,
}

/// An opened cuBLASLt and one handle of it.
pub struct CublasLt {
    f: Fns,
    handle: cublasLtHandle_t,
    /// Where it was found.
    pub path: String,
    // Last: the entry points above point into it.
    _lib: libloading::Library,
}

// SAFETY: a cuBLASLt handle may be used from any thread; smelt serializes the calls on one
// handle (a model's runs hold its state lock).
unsafe impl Send for CublasLt {}
// SAFETY: as above; `&CublasLt` only reads the entry points and the handle.
unsafe impl Sync for CublasLt {}

impl std::fmt::Debug for CublasLt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CublasLt")
            .field("path", &self.path)
            .finish()
    }
}

fn check(what: &str, s: Status) -> Result<(), String> {
    if s == cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(format!("{what}: {s:?}"))
    }
}

/// The names tried, in order, when `$SMELT_CUBLASLT` is not set.
pub const NAMES: &[&str] = &["libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"];

impl CublasLt {
    /// Opens the library (`$SMELT_CUBLASLT`, else [`NAMES`]) and creates a handle. `Err` says
    /// what was tried; nothing here panics.
    pub fn open() -> Result<CublasLt, String> {
        let candidates: Vec<String> = match std::env::var("SMELT_CUBLASLT") {
            Ok(p) if !p.is_empty() => vec![p],
            _ => NAMES.iter().map(|s| s.to_string()).collect(),
        };
        let mut why = Vec::new();
        for path in &candidates {
            // SAFETY: loading runs the library's initializers; cuBLASLt's only set up its
            // own state.
            match unsafe { libloading::Library::new(path) } {
                Ok(lib) => return Self::with(lib, path.clone()),
                Err(e) => why.push(format!("{path}: {e}")),
            }
        }
        Err(format!(
            "cuBLASLt not found ({}); set SMELT_CUBLASLT to libcublasLt's path",
            why.join("; ")
        ))
    }

    fn with(lib: libloading::Library, path: String) -> Result<CublasLt, String> {
        macro_rules! sym {
            ($name:literal) => {
                // SAFETY: the symbol is cuBLASLt's, with the signature of cuBLASLt's header
                // (as cudarc's bindings declare it), stable across CUDA 12 and 13.
                *unsafe { lib.get($name) }.map_err(|e| {
                    format!(
                        "{path} lacks {}: {e}",
                        String::from_utf8_lossy(&$name[..$name.len() - 1])
                    )
                })?
            };
        }
        let f = Fns {
            create: sym!(b"cublasLtCreate\0"),
            destroy: sym!(b"cublasLtDestroy\0"),
            version: sym!(b"cublasLtGetVersion\0"),
            desc_create: sym!(b"cublasLtMatmulDescCreate\0"),
            desc_set: sym!(b"cublasLtMatmulDescSetAttribute\0"),
            desc_destroy: sym!(b"cublasLtMatmulDescDestroy\0"),
            layout_create: sym!(b"cublasLtMatrixLayoutCreate\0"),
            layout_set: sym!(b"cublasLtMatrixLayoutSetAttribute\0"),
            layout_destroy: sym!(b"cublasLtMatrixLayoutDestroy\0"),
            pref_create: sym!(b"cublasLtMatmulPreferenceCreate\0"),
            pref_set: sym!(b"cublasLtMatmulPreferenceSetAttribute\0"),
            pref_destroy: sym!(b"cublasLtMatmulPreferenceDestroy\0"),
            heuristic: sym!(b"cublasLtMatmulAlgoGetHeuristic\0"),
            matmul: sym!(b"cublasLtMatmul\0"),
        };
        let mut handle = std::ptr::null_mut();
        // SAFETY: `handle` is a valid place for the new handle.
        check("cublasLtCreate", unsafe { (f.create)(&mut handle) })?;
        Ok(CublasLt {
            f,
            handle,
            path,
            _lib: lib,
        })
    }

    /// The library's version (`130100` for 13.1.0).
    pub fn version(&self) -> usize {
        // SAFETY: no arguments, no state.
        unsafe { (self.f.version)() }
    }
}

impl Drop for CublasLt {
    fn drop(&mut self) {
        // SAFETY: the handle is this object's, and every call made with it is finished
        // (models drop their calls, and synchronize, before the library).
        unsafe { (self.f.destroy)(self.handle) };
    }
}

/// Where a call's buffers are on the device.
#[derive(Clone, Copy, Debug)]
pub struct Pointers {
    /// `a`, `b`, `d`.
    pub a: u64,
    /// Right operand.
    pub b: u64,
    /// Result.
    pub d: u64,
    /// Bias, if the call has one.
    pub bias: Option<u64>,
    /// Residual (cuBLASLt's `C`), if the call has one.
    pub residual: Option<u64>,
    /// Workspace and its size in bytes.
    pub workspace: (u64, usize),
}

/// A [`BlasGemm`] planned on a [`CublasLt`]: everything decided, ready to enqueue.
pub struct LtMatmul {
    lt: Arc<CublasLt>,
    desc: cublasLtMatmulDesc_t,
    layouts: [cublasLtMatrixLayout_t; 3],
    algo: cublasLtMatmulAlgo_t,
    alpha: f32,
    beta: f32,
    ptrs: Pointers,
}

// SAFETY: the descriptors are only read by `cublasLtMatmul`, from one thread at a time
// (a model's runs hold its state lock).
unsafe impl Send for LtMatmul {}
// SAFETY: as above.
unsafe impl Sync for LtMatmul {}

impl std::fmt::Debug for LtMatmul {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LtMatmul")
            .field("ptrs", &self.ptrs)
            .finish()
    }
}

/// cuBLASLt's type of smelt's element type.
pub fn data_type(d: DType) -> Option<cudaDataType_t> {
    Some(match d {
        DType::F32 => cudaDataType_t::CUDA_R_32F,
        DType::F16 => cudaDataType_t::CUDA_R_16F,
        DType::BF16 => cudaDataType_t::CUDA_R_16BF,
        _ => return None,
    })
}

/// The epilogue cuBLASLt applies for a bias and an activation.
pub fn epilogue(bias: bool, act: Option<BlasActivation>) -> cublasLtEpilogue_t {
    use cublasLtEpilogue_t as E;
    match (bias, act) {
        (false, None) => E::CUBLASLT_EPILOGUE_DEFAULT,
        (true, None) => E::CUBLASLT_EPILOGUE_BIAS,
        (false, Some(BlasActivation::Relu)) => E::CUBLASLT_EPILOGUE_RELU,
        (true, Some(BlasActivation::Relu)) => E::CUBLASLT_EPILOGUE_RELU_BIAS,
        (false, Some(BlasActivation::GeluTanh)) => E::CUBLASLT_EPILOGUE_GELU,
        (true, Some(BlasActivation::GeluTanh)) => E::CUBLASLT_EPILOGUE_GELU_BIAS,
    }
}

/// The largest power of two up to 256 that divides a device address: the alignment
/// cuBLASLt may assume of it.
pub fn alignment(ptr: u64) -> u32 {
    if ptr == 0 {
        256
    } else {
        (1u64 << ptr.trailing_zeros().min(8)) as u32
    }
}

/// Sets an attribute from a plain value.
fn set<H: Copy, A: Copy, T>(
    f: SetAttr<H, A>,
    h: H,
    attr: A,
    v: &T,
    what: &str,
) -> Result<(), String> {
    // SAFETY: `v` is a live value of the attribute's documented type and size.
    check(what, unsafe {
        f(
            h,
            attr,
            v as *const T as *const c_void,
            std::mem::size_of::<T>(),
        )
    })
}

impl LtMatmul {
    /// Plans `g` on `lt` with its buffers at `ptrs`: the descriptors, the layouts and the
    /// algorithm. `Err` when cuBLASLt has no algorithm for it (the kernel runs instead).
    pub fn new(lt: &Arc<CublasLt>, g: &BlasGemm, ptrs: Pointers) -> Result<LtMatmul, String> {
        let ty = data_type(g.dtype).ok_or_else(|| format!("no cuBLASLt type for {}", g.dtype))?;
        let f = &lt.f;
        let mut call = LtMatmul {
            lt: lt.clone(),
            desc: std::ptr::null_mut(),
            layouts: [std::ptr::null_mut(); 3],
            algo: cublasLtMatmulAlgo_t { data: [0; 8] },
            alpha: g.alpha as f32,
            beta: if g.residual.is_some() { 1.0 } else { 0.0 },
            ptrs,
        };
        // SAFETY: `call.desc` is a valid place for the new descriptor; from here on `call`
        // owns it (and the layouts below) and destroys what was created when dropped.
        check("cublasLtMatmulDescCreate", unsafe {
            (f.desc_create)(
                &mut call.desc,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cudaDataType_t::CUDA_R_32F,
            )
        })?;
        // The attribute is an int32 cublasOperation_t.
        let op = |t: bool| {
            if t {
                cublasOperation_t::CUBLAS_OP_T as i32
            } else {
                cublasOperation_t::CUBLAS_OP_N as i32
            }
        };
        let d = call.desc;
        set(
            f.desc_set,
            d,
            DescAttr::CUBLASLT_MATMUL_DESC_TRANSA,
            &op(g.a.trans),
            "transa",
        )?;
        set(
            f.desc_set,
            d,
            DescAttr::CUBLASLT_MATMUL_DESC_TRANSB,
            &op(g.b.trans),
            "transb",
        )?;
        let epi = epilogue(g.bias.is_some(), g.activation) as u32;
        set(
            f.desc_set,
            d,
            DescAttr::CUBLASLT_MATMUL_DESC_EPILOGUE,
            &epi,
            "epilogue",
        )?;
        if let Some(bias) = ptrs.bias {
            set(
                f.desc_set,
                d,
                DescAttr::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                &bias,
                "bias",
            )?;
            let bt = ty as i32;
            set(
                f.desc_set,
                d,
                DescAttr::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                &bt,
                "bias type",
            )?;
        }
        let stored = |x: &BlasMatrix, rows: usize, cols: usize| {
            if x.trans {
                (cols, rows)
            } else {
                (rows, cols)
            }
        };
        let shapes = [
            (g.a, stored(&g.a, g.m, g.k)),
            (g.b, stored(&g.b, g.k, g.n)),
            (g.d, (g.m, g.n)),
        ];
        for (i, (x, (rows, cols))) in shapes.into_iter().enumerate() {
            // SAFETY: a valid place for the new layout, owned by `call` from here.
            check("cublasLtMatrixLayoutCreate", unsafe {
                (f.layout_create)(
                    &mut call.layouts[i],
                    ty,
                    rows as u64,
                    cols as u64,
                    x.ld as i64,
                )
            })?;
            if g.batch > 1 {
                let (count, stride) = (g.batch as i32, x.batch_stride as i64);
                let l = call.layouts[i];
                set(
                    f.layout_set,
                    l,
                    LayoutAttr::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                    &count,
                    "batch",
                )?;
                let attr = LayoutAttr::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET;
                set(f.layout_set, l, attr, &stride, "batch stride")?;
            }
        }
        let mut pref = std::ptr::null_mut();
        // SAFETY: a valid place for the new preference, destroyed below.
        check("cublasLtMatmulPreferenceCreate", unsafe {
            (f.pref_create)(&mut pref)
        })?;
        let searched = (|| {
            let ws = ptrs.workspace.1 as u64;
            set(
                f.pref_set,
                pref,
                PrefAttr::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &ws,
                "workspace",
            )?;
            let residual = ptrs.residual.unwrap_or(ptrs.d);
            for (attr, p) in [
                (PrefAttr::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, ptrs.a),
                (PrefAttr::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, ptrs.b),
                (
                    PrefAttr::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                    residual,
                ),
                (PrefAttr::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, ptrs.d),
            ] {
                set(f.pref_set, pref, attr, &alignment(p), "alignment")?;
            }
            // SAFETY: an all-zero heuristic result is a valid value of this plain C struct.
            let mut result: cublasLtMatmulHeuristicResult_t = unsafe { std::mem::zeroed() };
            let mut found: c_int = 0;
            let [a, b, dl] = call.layouts;
            // SAFETY: every handle is live; one result is asked for and has room.
            check("cublasLtMatmulAlgoGetHeuristic", unsafe {
                (f.heuristic)(lt.handle, d, a, b, dl, dl, pref, 1, &mut result, &mut found)
            })?;
            if found < 1 || result.state != cublasStatus_t::CUBLAS_STATUS_SUCCESS {
                return Err(format!("no cuBLASLt algorithm ({:?})", result.state));
            }
            if result.workspaceSize > ptrs.workspace.1 {
                return Err("the algorithm wants more workspace than it was given".into());
            }
            Ok(result.algo)
        })();
        // SAFETY: created above, used by nothing else.
        unsafe { (f.pref_destroy)(pref) };
        call.algo = searched?;
        Ok(call)
    }

    /// Enqueues the call on `stream`.
    ///
    /// # Safety
    /// `stream` belongs to the context the pointers were allocated in, and the buffers they
    /// point at stay allocated until the call has run.
    pub unsafe fn enqueue(&self, stream: cudaStream_t) -> Result<(), String> {
        let p = &self.ptrs;
        let [a, b, d] = self.layouts;
        let c = p.residual.unwrap_or(p.d);
        let f = &self.lt.f;
        // SAFETY: the caller's contract; alpha and beta are read before this returns (host
        // pointer mode), the descriptors and algorithm are this call's.
        check("cublasLtMatmul", unsafe {
            (f.matmul)(
                self.lt.handle,
                self.desc,
                &self.alpha as *const f32 as *const c_void,
                p.a as *const c_void,
                a,
                p.b as *const c_void,
                b,
                &self.beta as *const f32 as *const c_void,
                c as *const c_void,
                d,
                p.d as *mut c_void,
                d,
                &self.algo,
                p.workspace.0 as *mut c_void,
                p.workspace.1,
                stream,
            )
        })
    }
}

impl Drop for LtMatmul {
    fn drop(&mut self) {
        let f = &self.lt.f;
        // SAFETY: each was created by `new` (or is null and skipped) and is used by nothing
        // after this.
        unsafe {
            for l in self.layouts {
                if !l.is_null() {
                    (f.layout_destroy)(l);
                }
            }
            if !self.desc.is_null() {
                (f.desc_destroy)(self.desc);
            }
        }
    }
}

/// Workspace bytes NVIDIA recommends for cuBLASLt: 32 MiB on Hopper and later, 4 MiB before.
pub fn workspace_bytes(compute_major: u32) -> usize {
    if compute_major >= 9 {
        32 << 20
    } else {
        4 << 20
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_is_an_error_not_a_panic() {
        std::env::set_var("SMELT_CUBLASLT", "/nonexistent/libcublasLt.so.13");
        let e = CublasLt::open().unwrap_err();
        std::env::remove_var("SMELT_CUBLASLT");
        assert!(
            e.contains("/nonexistent/libcublasLt.so.13") && e.contains("SMELT_CUBLASLT"),
            "{e}"
        );
    }

    #[test]
    fn alignments_are_what_the_address_allows() {
        assert_eq!(alignment(0x7f00_0000_0000), 256);
        assert_eq!(alignment(0x7f00_0000_0040), 64);
        assert_eq!(alignment(0x7f00_0000_0042), 2);
    }

    #[test]
    fn epilogues_cover_bias_and_activation() {
        use cublasLtEpilogue_t as E;
        assert_eq!(epilogue(false, None), E::CUBLASLT_EPILOGUE_DEFAULT);
        assert_eq!(
            epilogue(true, Some(BlasActivation::GeluTanh)),
            E::CUBLASLT_EPILOGUE_GELU_BIAS
        );
        assert_eq!(
            epilogue(false, Some(BlasActivation::Relu)),
            E::CUBLASLT_EPILOGUE_RELU
        );
        assert_eq!(data_type(DType::F64), None);
    }
}
