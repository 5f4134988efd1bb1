//! smelt's device-side CUDA library: block/warp reductions, vectorized loads and stores, and
//! the GEMM-epilogue and attention templates that generated kernels include. Each `.cuh` file
//! is embedded with `include_str!` and compiled by NVRTC in tests.
//!
//! The library arrives with code generation (kernel IR and the CUDA renderer); until then
//! this crate holds no sources.

#![warn(missing_docs)]
