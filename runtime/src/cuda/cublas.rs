//! cuBLAS as a baseline for `smelt gpu-check`: the time cuBLAS takes for a plain product of
//! the shape smelt's generated kernel computes, on the same device, timed the same way (CUDA
//! events around the work, median of the runs after warm-up).
//!
//! cuBLAS is loaded at run time like the driver, and is optional: a GPU machine without
//! `libcublas` gets an `Err` saying so (the comparison is then reported as missing), never a
//! panic (cudarc panics on a missing library, so its presence is checked first). smelt's
//! kernels do not call cuBLAS.

use super::device;
use cudarc::cublas::{result, sys, CudaBlas};
use cudarc::driver::{sys as driver, CudaContext, DevicePtr, DevicePtrMut};
use smelt_compiler::ir::{DType, Tensor};

/// The median milliseconds of `runs` cuBLAS products `c = a × b` (row-major `a` m×k, `b`
/// k×n, `c` m×n, the operands uploaded as given: the caller passes the inputs smelt's
/// kernel ran on, since tensor cores run faster on zeros) in their dtype (f32 with f32
/// compute, no TF32; f16/bf16 storage with f32 accumulation, as smelt's tensor-core
/// kernels), after 3 untimed ones.
pub fn time_gemm(a: &Tensor, b: &Tensor, runs: usize) -> Result<f64, String> {
    let (dtype, sa, sb) = (a.dtype(), a.shape(), b.shape());
    let [m, k] = *sa else {
        return Err(format!("a is {sa:?}, not a matrix"));
    };
    let [kb, n] = *sb else {
        return Err(format!("b is {sb:?}, not a matrix"));
    };
    if kb != k || b.dtype() != dtype {
        return Err(format!(
            "a {sa:?} of {dtype} and b {sb:?} of {} do not multiply",
            b.dtype()
        ));
    }
    device::probe()?;
    // SAFETY: only tries to open the library by its usual names.
    if !unsafe { sys::is_culib_present() } {
        return Err("cuBLAS (libcublas) is not installed on this machine".into());
    }
    let data_type = match dtype {
        DType::F32 => sys::cudaDataType_t::CUDA_R_32F,
        DType::F16 => sys::cudaDataType_t::CUDA_R_16F,
        DType::BF16 => sys::cudaDataType_t::CUDA_R_16BF,
        d => return Err(format!("no cuBLAS baseline for {d}")),
    };
    let int = |v: usize| i32::try_from(v).map_err(|_| format!("{v} is past cuBLAS's int range"));
    let (mi, ki, ni) = (int(m)?, int(k)?, int(n)?);
    let e = |what: &'static str| move |x: cudarc::driver::DriverError| format!("{what}: {x}");
    let ctx = CudaContext::new(0).map_err(e("creating a context"))?;
    // As in the executor: no cross-stream event tracking, which would add event records
    // and waits to every product inside the timed window.
    // SAFETY: everything here is used on this one stream, in order, and freed after it.
    unsafe { ctx.disable_event_tracking() };
    let stream = ctx.new_stream().map_err(e("creating a stream"))?;
    let size = dtype.size();
    let upload = |t: &Tensor| -> Result<cudarc::driver::CudaSlice<u8>, String> {
        let mut raw = vec![0u8; (t.numel() * size).max(1)];
        t.write_le_bytes(&mut raw[..t.numel() * size]);
        stream.clone_htod(&raw).map_err(e("uploading an operand"))
    };
    let (a, b) = (upload(a)?, upload(b)?);
    let mut c = stream
        .alloc_zeros::<u8>((m * n * size).max(1))
        .map_err(e("allocating c"))?;
    let blas = CudaBlas::new(stream.clone()).map_err(|x| format!("creating a handle: {x}"))?;
    let (alpha, beta) = (1.0f32, 0.0f32);
    let product = |c: &mut cudarc::driver::CudaSlice<u8>| -> Result<(), String> {
        let (pa, _ra) = a.device_ptr(&stream);
        let (pb, _rb) = b.device_ptr(&stream);
        let (pc, _rc) = c.device_ptr_mut(&stream);
        // Row-major c = a × b is column-major cᵀ = bᵀ × aᵀ: cuBLAS gets (n, m, k) with b first.
        // SAFETY: the buffers hold k×n, m×k and m×n elements of `dtype`; the scalars are f32
        // as CUBLAS_COMPUTE_32F requires; everything is on `stream`, the handle's stream.
        unsafe {
            result::gemm_ex(
                *blas.handle(),
                sys::cublasOperation_t::CUBLAS_OP_N,
                sys::cublasOperation_t::CUBLAS_OP_N,
                ni,
                mi,
                ki,
                (&alpha) as *const f32 as *const _,
                pb as *const _,
                data_type,
                ni,
                pa as *const _,
                data_type,
                ki,
                (&beta) as *const f32 as *const _,
                pc as *mut _,
                data_type,
                ni,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|x| format!("cublasGemmEx {m}x{k}x{n} {dtype}: {x}"))
    };
    for _ in 0..3 {
        product(&mut c)?;
    }
    let timing = || ctx.new_event(Some(driver::CUevent_flags::CU_EVENT_DEFAULT));
    let (start, end) = (
        timing().map_err(e("an event"))?,
        timing().map_err(e("an event"))?,
    );
    let mut ms = Vec::with_capacity(runs.max(1));
    for _ in 0..runs.max(1) {
        start.record(&stream).map_err(e("recording"))?;
        product(&mut c)?;
        end.record(&stream).map_err(e("recording"))?;
        stream.synchronize().map_err(e("synchronizing"))?;
        ms.push(device::elapsed_ms(&start, &end)?);
    }
    ms.sort_by(f64::total_cmp);
    Ok(ms[ms.len() / 2])
}
