// smelt device library: warp and block reductions, for one value with an operation and for
// the partials of the one-pass row algorithms (online softmax, Welford mean/variance), in f32
// or f64. Every function orders its operations as the kernel-IR interpreter's `merge` does
// (compiler/src/kernel/interp.rs); results may differ from it by rounding (NVRTC contracts
// a·b + c into fused multiply-adds; libdevice's expf is within 2 ulp), so GPU results are
// compared with tolerances. The asymmetric merges end by broadcasting the group's lane 0, so
// every lane holds the same statistics.
#pragma once
#include "smelt/types.cuh"
#include "smelt/math.cuh"

namespace smelt {

template <typename T> __device__ __forceinline__ T neg_inf() { return -(T)inf(); }

// Combining functors; max and min propagate NaN like the reference (fmaxf would drop it).
struct Sum { template <typename T> __device__ __forceinline__ T operator()(T a, T b) const { return a + b; } };
struct Prod { template <typename T> __device__ __forceinline__ T operator()(T a, T b) const { return a * b; } };
struct Max {
    template <typename T> __device__ __forceinline__ T operator()(T a, T b) const {
        return (a != a || b != b) ? a + b : (a > b ? a : b);
    }
};
struct Min {
    template <typename T> __device__ __forceinline__ T operator()(T a, T b) const {
        return (a != a || b != b) ? a + b : (a < b ? a : b);
    }
};

// Reduces `v` over each group of W consecutive lanes (W a power of two, at most 32); every
// lane of the group gets the result. All 32 lanes of the warp must call it together.
template <int W = 32, typename T, typename Op> __device__ __forceinline__ T warp_reduce(T v, Op op) {
#pragma unroll
    for (int offset = W / 2; offset > 0; offset >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// Reduces `v` over a block of `blockDim.x` threads (a multiple of 32, at most 1024), with 32
// values of shared memory; every thread gets the result. Contains barriers: call it from
// every thread of the block.
template <typename T, typename Op> __device__ __forceinline__ T block_reduce(T v, Op op, T identity, T* shared) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_reduce<32>(v, op);
    __syncthreads();  // shared may still be read by a previous call
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < warps ? shared[lane] : identity;
    return warp_reduce<32>(v, op);
}

// Online softmax partials: `s` is the sum of exp(x - m) over the values seen. Merging rescales
// both sums to the larger max (to 0 when both maxima are -inf, so empty partials stay 0).
template <typename T> __device__ __forceinline__ void merge_max_sum(T& m, T& s, T m2, T s2) {
    const T mx = Max()(m, m2);
    const T base = mx == neg_inf<T>() ? (T)0 : mx;
    const T a = s * exp_(m - base);
    const T b = s2 * exp_(m2 - base);
    s = a + b;
    m = mx;
}

template <int W = 32, typename T> __device__ __forceinline__ void warp_reduce_max_sum(T& m, T& s) {
#pragma unroll
    for (int offset = W / 2; offset > 0; offset >>= 1) {
        const T m2 = __shfl_xor_sync(0xffffffffu, m, offset), s2 = __shfl_xor_sync(0xffffffffu, s, offset);
        merge_max_sum(m, s, m2, s2);
    }
    m = __shfl_sync(0xffffffffu, m, 0, W);
    s = __shfl_sync(0xffffffffu, s, 0, W);
}

// Block-wide online-softmax merge over 64 values of shared memory.
template <typename T> __device__ __forceinline__ void block_reduce_max_sum(T& m, T& s, T* shared) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    warp_reduce_max_sum<32>(m, s);
    __syncthreads();
    if (lane == 0) { shared[warp] = m; shared[32 + warp] = s; }
    __syncthreads();
    m = lane < warps ? shared[lane] : neg_inf<T>();
    s = lane < warps ? shared[32 + lane] : (T)0;
    warp_reduce_max_sum<32>(m, s);
}

// Welford partials (count, mean, m2 = sum of squared deviations), merged with Chan's formula.
template <typename T> __device__ __forceinline__ void merge_welford(T& n, T& mean, T& m2, T n2, T mean2, T m22) {
    const T count = n + n2;
    if (count == (T)0) return;
    const T d = mean2 - mean;
    const T fb = n2 / count;
    const T mu = mean + d * fb;
    m2 = (m2 + m22) + ((d * d) * n) * fb;
    mean = mu;
    n = count;
}

template <int W = 32, typename T> __device__ __forceinline__ void warp_reduce_welford(T& n, T& mean, T& m2) {
#pragma unroll
    for (int offset = W / 2; offset > 0; offset >>= 1) {
        const T n2 = __shfl_xor_sync(0xffffffffu, n, offset);
        const T mean2 = __shfl_xor_sync(0xffffffffu, mean, offset);
        const T m22 = __shfl_xor_sync(0xffffffffu, m2, offset);
        merge_welford(n, mean, m2, n2, mean2, m22);
    }
    n = __shfl_sync(0xffffffffu, n, 0, W);
    mean = __shfl_sync(0xffffffffu, mean, 0, W);
    m2 = __shfl_sync(0xffffffffu, m2, 0, W);
}

// Block-wide Welford merge over 96 values of shared memory.
template <typename T> __device__ __forceinline__ void block_reduce_welford(T& n, T& mean, T& m2, T* shared) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    warp_reduce_welford<32>(n, mean, m2);
    __syncthreads();
    if (lane == 0) { shared[warp] = n; shared[32 + warp] = mean; shared[64 + warp] = m2; }
    __syncthreads();
    n = lane < warps ? shared[lane] : (T)0;
    mean = lane < warps ? shared[32 + lane] : (T)0;
    m2 = lane < warps ? shared[64 + lane] : (T)0;
    warp_reduce_welford<32>(n, mean, m2);
}

}  // namespace smelt
