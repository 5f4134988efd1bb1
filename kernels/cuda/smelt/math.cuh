// smelt device library: scalar functions that generated kernels call by name, so the
// renderer's op table maps each IR op to one call. Each is a template over float and double
// (the kernel's precision). Exact (libdevice) versions, except that kernels rendered under
// --fast-math define SMELT_FAST_MATH and get the fast exp.
#pragma once

// The module's fault record (see smelt::checked_index): unmangled, so the runtime finds it.
__device__ unsigned long long smelt_fault_record[2];

namespace smelt {

// libdevice functions by precision (f32 exp through the fast intrinsic in kernels compiled
// under --fast-math, which define SMELT_FAST_MATH).
#ifdef SMELT_FAST_MATH
__device__ __forceinline__ float exp_(float x) { return __expf(x); }
#else
__device__ __forceinline__ float exp_(float x) { return expf(x); }
#endif
__device__ __forceinline__ double exp_(double x) { return exp(x); }
__device__ __forceinline__ float erf_(float x) { return erff(x); }
__device__ __forceinline__ double erf_(double x) { return erf(x); }
__device__ __forceinline__ float tanh_(float x) { return tanhf(x); }
__device__ __forceinline__ double tanh_(double x) { return tanh(x); }
__device__ __forceinline__ float log1p_(float x) { return log1pf(x); }
__device__ __forceinline__ double log1p_(double x) { return log1p(x); }
__device__ __forceinline__ float fmod_(float a, float b) { return fmodf(a, b); }
__device__ __forceinline__ double fmod_(double a, double b) { return fmod(a, b); }
__device__ __forceinline__ float fmax_(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double fmax_(double a, double b) { return fmax(a, b); }
__device__ __forceinline__ float fmin_(float a, float b) { return fminf(a, b); }
__device__ __forceinline__ double fmin_(double a, double b) { return fmin(a, b); }

template <typename T> __device__ __forceinline__ T relu(T x) { return x < T(0) ? T(0) : x; }
template <typename T> __device__ __forceinline__ T sigmoid(T x) { return T(1) / (T(1) + exp_(-x)); }
template <typename T> __device__ __forceinline__ T gelu(T x) {
    return T(0.5) * x * (T(1) + erf_(x * T(0.70710678118654752440)));
}
template <typename T> __device__ __forceinline__ T gelu_tanh(T x) {
    const T k = T(0.79788456080286535588);  // sqrt(2 / pi)
    return T(0.5) * x * (T(1) + tanh_(k * (x + T(0.044715) * x * x * x)));
}
template <typename T> __device__ __forceinline__ T hard_sigmoid(T x, T alpha, T beta) {
    return fmin_(T(1), fmax_(T(0), alpha * x + beta));
}
template <typename T> __device__ __forceinline__ T hard_swish(T x) { return x * hard_sigmoid(x, T(1) / T(6), T(0.5)); }
template <typename T> __device__ __forceinline__ T softplus(T x) { return x > T(30) ? x : log1p_(exp_(x)); }
template <typename T> __device__ __forceinline__ T leaky_relu(T x, T alpha) { return x < T(0) ? alpha * x : x; }
template <typename T> __device__ __forceinline__ T elu(T x, T alpha) { return x < T(0) ? alpha * (exp_(x) - T(1)) : x; }
// NaN-propagating min/max (numpy and ONNX semantics; fminf/fmaxf drop NaN).
template <typename T> __device__ __forceinline__ T max_nan(T a, T b) { return (a != a || b != b) ? a + b : fmax_(a, b); }
template <typename T> __device__ __forceinline__ T min_nan(T a, T b) { return (a != a || b != b) ? a + b : fmin_(a, b); }

template <typename T> __device__ __forceinline__ T sign(T x) { return x != x ? x : (T)((x > T(0)) - (x < T(0))); }
// Remainder with the sign of the divisor (Python's %, ONNX Mod with fmod=0).
template <typename T> __device__ __forceinline__ T mod_floor(T a, T b) {
    const T r = fmod_(a, b);
    return (r != T(0) && ((r < T(0)) != (b < T(0)))) ? r + b : r;
}
template <> __device__ __forceinline__ long long mod_floor<long long>(long long a, long long b) {
    const long long r = a % b;
    return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
}
// Integer power: wrapping, by squaring; a negative exponent goes through double (numpy).
__device__ __forceinline__ long long pow_int(long long x, long long y) {
    if (y < 0) return (long long)pow((double)x, (double)y);
    unsigned long long r = 1, b = (unsigned long long)x;
    unsigned long long e = y > 0xffffffffll ? 0xffffffffull : (unsigned long long)y;
    while (e) {
        if (e & 1u) r *= b;
        b *= b;
        e >>= 1;
    }
    return (long long)r;
}
// Index i (negative counted from the end) into a dim of size n. An index outside the dim
// records the first fault of the run in this module's smelt_fault_record (check site + 1,
// then the index; read and cleared by the runtime when results are read) and gives 0, so no
// access leaves the tensor.
__device__ __noinline__ void index_fault(long long site, long long i);
__device__ __forceinline__ long long checked_index(long long i, long long n, long long site) {
    const long long j = i < 0 ? i + n : i;
    if ((unsigned long long)j < (unsigned long long)n) return j;
    index_fault(site, i);
    return 0;
}
template <typename T> __device__ __forceinline__ T celu(T x, T alpha) {
    return fmax_(T(0), x) + fmin_(T(0), alpha * (exp_(x / alpha) - T(1)));
}
template <typename T> __device__ __forceinline__ T selu(T x, T alpha, T gamma) {
    return x > T(0) ? gamma * x : gamma * (alpha * exp_(x) - alpha);
}
template <typename T> __device__ __forceinline__ T thresholded_relu(T x, T alpha) { return x > alpha ? x : T(0); }

}  // namespace smelt

__device__ __noinline__ void smelt::index_fault(long long site, long long i) {
    if (atomicCAS(&smelt_fault_record[0], 0ull, (unsigned long long)(site + 1)) == 0ull) {
        smelt_fault_record[1] = (unsigned long long)i;
    }
}
