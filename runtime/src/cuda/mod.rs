//! The CUDA side of the runtime: finding a device ([`device`]), NVRTC compilation of CUDA C
//! to cubin ([`nvrtc`], cached on disk), and ahead-of-time bundles ([`bundle`]). Both load their libraries at run time, so the binary starts and the
//! CPU path works on machines without a GPU or libcuda; [`executor`] runs a bundle on a GPU.

pub mod bundle;
pub mod cublas;
pub mod device;
pub mod executor;
pub mod lt;
pub mod nvrtc;
