// smelt device library: 128-bit vectorized loads and stores for contiguous, 16-byte aligned
// elementwise kernels (4 floats or 8 halves per access).
#pragma once
#include <cuda_fp16.h>

namespace smelt {

__device__ __forceinline__ float4 load4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ void store4(float* p, float4 v) { *reinterpret_cast<float4*>(p) = v; }

// Eight halves as one 128-bit access.
struct half8 { __half2 a, b, c, d; };
__device__ __forceinline__ half8 load8(const __half* p) { return *reinterpret_cast<const half8*>(p); }
__device__ __forceinline__ void store8(__half* p, half8 v) { *reinterpret_cast<half8*>(p) = v; }

__device__ __forceinline__ bool aligned16(const void* p) { return (reinterpret_cast<unsigned long long>(p) & 15ull) == 0; }

}  // namespace smelt
