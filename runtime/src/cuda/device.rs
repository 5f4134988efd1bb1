//! Finding a CUDA device through the driver API, loaded at run time: on a machine without the
//! NVIDIA driver this is an `Err` saying so, never a panic (cudarc panics on a missing
//! library, so its presence is checked first).

use cudarc::driver::{result, sys};

/// The first CUDA device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Its name (`NVIDIA H100 80GB HBM3`).
    pub name: String,
    /// Compute capability, major.
    pub major: i32,
    /// Compute capability, minor.
    pub minor: i32,
    /// Devices the driver reports.
    pub count: i32,
}

impl DeviceInfo {
    /// The cubin architecture of the device (`sm_90`).
    pub fn arch(&self) -> String {
        format!("sm_{}{}", self.major, self.minor)
    }
}

/// The first CUDA device, or why there is none (the text after `no CUDA device found: `).
pub fn probe() -> Result<DeviceInfo, String> {
    // SAFETY: only tries to open the library by its usual names.
    if !unsafe { sys::is_culib_present() } {
        return Err("the NVIDIA driver library (libcuda.so.1) is not installed".into());
    }
    result::init().map_err(|e| format!("cuInit failed: {e}"))?;
    let count = result::device::get_count().map_err(|e| format!("cuDeviceGetCount: {e}"))?;
    if count < 1 {
        return Err("the driver reports no devices".into());
    }
    let dev = result::device::get(0).map_err(|e| format!("cuDeviceGet(0): {e}"))?;
    let name = result::device::get_name(dev).map_err(|e| format!("cuDeviceGetName: {e}"))?;
    let attr = |a| {
        // SAFETY: `dev` came from `device::get`.
        unsafe { result::device::get_attribute(dev, a) }
            .map_err(|e| format!("cuDeviceGetAttribute: {e}"))
    };
    Ok(DeviceInfo {
        name,
        major: attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
        minor: attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
        count,
    })
}

/// Milliseconds between two completed timing events. cudarc calls `cuEventElapsedTime_v2`,
/// which drivers before CUDA 12.8 lack (and a missing symbol panics in its loader), so the
/// symbol is looked up first and the original `cuEventElapsedTime` used where it is absent.
pub fn elapsed_ms(
    start: &cudarc::driver::CudaEvent,
    end: &cudarc::driver::CudaEvent,
) -> Result<f64, String> {
    type Elapsed = unsafe extern "C" fn(*mut f32, sys::CUevent, sys::CUevent) -> sys::CUresult;
    // Looked up once: `Some(f)` when the driver lacks the _v2 symbol cudarc calls.
    static FALLBACK: std::sync::OnceLock<Result<Option<Elapsed>, String>> =
        std::sync::OnceLock::new();
    let fallback = FALLBACK.get_or_init(|| {
        // SAFETY: the driver library is loaded (a context exists) and never unloaded; the
        // lookups only read its symbol table.
        let lib = unsafe { sys::culib() };
        if unsafe { lib.get::<Elapsed>(b"cuEventElapsedTime_v2\0") }.is_ok() {
            return Ok(None);
        }
        unsafe { lib.get::<Elapsed>(b"cuEventElapsedTime\0") }
            .map(|f| Some(*f))
            .map_err(|e| format!("the driver has no cuEventElapsedTime: {e}"))
    });
    let Some(f) = fallback.clone()? else {
        return start
            .elapsed_ms(end)
            .map(f64::from)
            .map_err(|e| format!("timing the kernels: {e}"));
    };
    start
        .synchronize()
        .and_then(|()| end.synchronize())
        .map_err(|e| format!("timing the kernels: {e}"))?;
    let mut ms = 0f32;
    // SAFETY: both events are live, were created with timing enabled in the current
    // context, and have completed; `ms` is a valid place for the result.
    let rc = unsafe { f(&mut ms, start.cu_event(), end.cu_event()) };
    if rc != sys::CUresult::CUDA_SUCCESS {
        return Err(format!("cuEventElapsedTime: {rc:?}"));
    }
    Ok(f64::from(ms))
}
