// smelt device library: warp and block reductions, and the merge steps of the one-pass row
// algorithms (online softmax, Welford mean/variance).
#pragma once
#include "smelt/types.cuh"

namespace smelt {

// Combining functors; max and min propagate NaN like the reference (fmaxf would drop it).
struct Sum { __device__ __forceinline__ float operator()(float a, float b) const { return a + b; } };
struct Prod { __device__ __forceinline__ float operator()(float a, float b) const { return a * b; } };
struct Max {
    __device__ __forceinline__ float operator()(float a, float b) const {
        return (a != a || b != b) ? __int_as_float(0x7fc00000) : fmaxf(a, b);
    }
};
struct Min {
    __device__ __forceinline__ float operator()(float a, float b) const {
        return (a != a || b != b) ? __int_as_float(0x7fc00000) : fminf(a, b);
    }
};

// Reduces `v` over the 32 lanes of a warp; every lane gets the result.
template <typename Op> __device__ __forceinline__ float warp_reduce(float v, Op op) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// Reduces `v` over a block of `blockDim.x` threads (a multiple of 32, at most 1024), with 32
// floats of shared memory; every thread gets the result. Contains barriers: call it from
// every thread of the block.
template <typename Op> __device__ __forceinline__ float block_reduce(float v, Op op, float identity, float* shared32) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_reduce(v, op);
    __syncthreads();  // shared32 may still be read by a previous call
    if (lane == 0) shared32[warp] = v;
    __syncthreads();
    v = lane < warps ? shared32[lane] : identity;
    return warp_reduce(v, op);
}

// Online softmax: a running (max, sum of exp(x - max)) pair, merged associatively.
struct MaxSum {
    float max, sum;
    __device__ __forceinline__ static MaxSum identity() { return {-inf(), 0.0f}; }
    __device__ __forceinline__ void push(float x) {
        const float m = fmaxf(max, x);
        sum = sum * __expf(max - m) + __expf(x - m);
        max = m;
    }
    __device__ __forceinline__ static MaxSum merge(MaxSum a, MaxSum b) {
        const float m = fmaxf(a.max, b.max);
        if (m == -inf()) return a;
        return {m, a.sum * __expf(a.max - m) + b.sum * __expf(b.max - m)};
    }
};

// Welford: count, mean and sum of squared deviations, merged with Chan's formula.
struct Welford {
    float count, mean, m2;
    __device__ __forceinline__ static Welford identity() { return {0.0f, 0.0f, 0.0f}; }
    __device__ __forceinline__ void push(float x) {
        count += 1.0f;
        const float d = x - mean;
        mean += d / count;
        m2 += d * (x - mean);
    }
    __device__ __forceinline__ static Welford merge(Welford a, Welford b) {
        const float n = a.count + b.count;
        if (n == 0.0f) return a;
        const float d = b.mean - a.mean, fb = b.count / n;
        return {n, a.mean + d * fb, a.m2 + b.m2 + d * d * a.count * fb};
    }
};

template <typename T> __device__ __forceinline__ T warp_merge(T v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        T other;
        other = v;
        float* o = reinterpret_cast<float*>(&other);
        const float* s = reinterpret_cast<const float*>(&v);
#pragma unroll
        for (int i = 0; i < int(sizeof(T) / sizeof(float)); ++i) o[i] = __shfl_xor_sync(0xffffffffu, s[i], offset);
        v = T::merge(v, other);
    }
    return v;
}

}  // namespace smelt
