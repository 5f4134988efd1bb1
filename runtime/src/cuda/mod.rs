//! The CUDA side of the runtime. For now: NVRTC compilation of CUDA C to cubin, which works
//! on machines without a GPU or libcuda (the library is loaded dynamically).

pub mod nvrtc;
