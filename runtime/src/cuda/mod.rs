//! The CUDA side of the runtime: finding a device ([`device`]) and NVRTC compilation of CUDA C
//! to cubin ([`nvrtc`]). Both load their libraries at run time, so the binary starts and the
//! CPU path works on machines without a GPU or libcuda. The executor is issue 7's next step.

pub mod device;
pub mod nvrtc;
