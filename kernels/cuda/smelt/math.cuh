// smelt device library: scalar functions that generated kernels call by name, so the
// renderer's op table maps each IR op to one call. Exact (libdevice) versions; fast-math
// kernels are compiled with --use_fast_math instead.
#pragma once

namespace smelt {

__device__ __forceinline__ float relu(float x) { return x < 0.0f ? 0.0f : x; }
__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ __forceinline__ float gelu(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }
__device__ __forceinline__ float gelu_tanh(float x) {
    const float k = 0.79788456080286536f;  // sqrt(2 / pi)
    return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
}
__device__ __forceinline__ float hard_sigmoid(float x, float alpha, float beta) {
    return fminf(1.0f, fmaxf(0.0f, alpha * x + beta));
}
__device__ __forceinline__ float hard_swish(float x) { return x * hard_sigmoid(x, 1.0f / 6.0f, 0.5f); }
__device__ __forceinline__ float softplus(float x) { return x > 30.0f ? x : log1pf(expf(x)); }
__device__ __forceinline__ float leaky_relu(float x, float alpha) { return x < 0.0f ? alpha * x : x; }
__device__ __forceinline__ float elu(float x, float alpha) { return x < 0.0f ? alpha * (expf(x) - 1.0f) : x; }
// NaN-propagating min/max (numpy and ONNX semantics; fminf/fmaxf drop NaN).
__device__ __forceinline__ float max_nan(float a, float b) { return (a != a || b != b) ? __int_as_float(0x7fc00000) : fmaxf(a, b); }
__device__ __forceinline__ float min_nan(float a, float b) { return (a != a || b != b) ? __int_as_float(0x7fc00000) : fminf(a, b); }

__device__ __forceinline__ float sign(float x) { return x != x ? x : (float)((x > 0.0f) - (x < 0.0f)); }
// Remainder with the sign of the divisor (Python's %, ONNX Mod with fmod=0).
__device__ __forceinline__ float mod_floor(float a, float b) {
    const float r = fmodf(a, b);
    return (r != 0.0f && ((r < 0.0f) != (b < 0.0f))) ? r + b : r;
}
__device__ __forceinline__ long long mod_floor(long long a, long long b) {
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
__device__ __forceinline__ float celu(float x, float alpha) { return fmaxf(0.0f, x) + fminf(0.0f, alpha * (expf(x / alpha) - 1.0f)); }
__device__ __forceinline__ float selu(float x, float alpha, float gamma) {
    return x > 0.0f ? gamma * x : gamma * (alpha * expf(x) - alpha);
}
__device__ __forceinline__ float thresholded_relu(float x, float alpha) { return x > alpha ? x : 0.0f; }

}  // namespace smelt
