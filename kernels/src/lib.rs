//! smelt's device-side libraries. For CUDA: element types, scalar functions, warp/block reductions
//! with the online-softmax and Welford merges, and vectorized loads and stores. Generated
//! kernels include these headers; each is embedded here with `include_str!` and compiled by
//! NVRTC in the runtime's tests (for sm_80 and sm_90, with no register spills). For the C
//! backend: one header of scalar helpers and the GEMM driver ([`C_HEADERS`]).

#![warn(missing_docs)]

/// Every header, as (include path, source), in dependency order.
pub const HEADERS: &[(&str, &str)] = &[
    ("smelt/types.cuh", include_str!("../cuda/smelt/types.cuh")),
    ("smelt/math.cuh", include_str!("../cuda/smelt/math.cuh")),
    ("smelt/reduce.cuh", include_str!("../cuda/smelt/reduce.cuh")),
    ("smelt/vector.cuh", include_str!("../cuda/smelt/vector.cuh")),
];

/// The C backend's header, as (include path, source): scalar helpers, f16/bf16 conversions
/// and the GEMM driver that generated C includes.
pub const C_HEADERS: &[(&str, &str)] = &[("smelt/cpu.h", include_str!("../c/smelt/cpu.h"))];

/// The machine-peak probe (copy bandwidth and f32 FMA throughput), built with the C backend's
/// compiler and flags so that it measures what generated code can reach.
pub const C_PEAK: &str = include_str!("../c/peak.c");

#[cfg(test)]
mod tests {
    use super::HEADERS;

    #[test]
    fn headers_are_guarded_and_namespaced() {
        for (path, src) in HEADERS {
            assert!(src.contains("#pragma once"), "{path} lacks #pragma once");
            assert!(
                src.contains("namespace smelt"),
                "{path} is not in namespace smelt"
            );
        }
    }
}
