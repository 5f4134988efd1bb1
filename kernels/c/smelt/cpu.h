// smelt CPU library: what generated C includes. Scalar helpers in float (suffix f) and
// double, NaN-propagating min/max, f16/bf16 storage conversions (round to nearest even),
// and the GEMM driver that splits a (batched) product over the thread pool and calls the
// library routine the runtime passes in.
#pragma once

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

// Helpers are always inlined: a call (or a partly inlined split) in a loop stops it from
// vectorizing.
#define SMELT_FN static inline __attribute__((always_inline))

// One call of the library routine: c = a × b, a m×k, b k×n, strides in elements.
typedef void (*smelt_gemm_f32_fn)(size_t m, size_t n, size_t k, float* c, ptrdiff_t c_rs,
                                  ptrdiff_t c_cs, const float* a, ptrdiff_t a_rs,
                                  ptrdiff_t a_cs, const float* b, ptrdiff_t b_rs,
                                  ptrdiff_t b_cs);

// What the runtime gives a run.
typedef struct smelt_ctx {
    smelt_gemm_f32_fn gemm_f32;
    int threads;
} smelt_ctx;

SMELT_FN float smelt_bits_f32(uint32_t u) { union { uint32_t u; float f; } v; v.u = u; return v.f; }
SMELT_FN uint32_t smelt_f32_bits(float f) { union { uint32_t u; float f; } v; v.f = f; return v.u; }

// f32 exp, tanh and erf written branch-free so that loops calling them vectorize (libm's are
// opaque calls). exp: Cody–Waite reduction and a degree-5 polynomial, within 2 ulp, with
// overflow to inf and gradual underflow to 0. tanh: a rational function (below). erf: series below 0.5, else Abramowitz–Stegun 7.1.26 (|error| ≤ 1.5e-7).
// NaN propagates through each. Polynomials use explicit fmaf (the C is built with
// -ffp-contract=off, so nothing else is contracted).

// exp(x) = 2^n · exp(r) with n = x/ln2 rounded (smelt_exp_nf of x and x clamped: 0 for NaN, so no conversion
// is undefined): exp(r), r = x - n·ln2 (Cody–Waite, in two parts), by Cephes' degree-5
// minimax polynomial for (exp(r) - 1 - r) / r² on |r| ≤ ln2/2. The caller scales by 2^n.
SMELT_FN float smelt_exp_nf(float x, float xc) { return rintf((x != x ? 0.0f : xc) * 1.44269504088896341f); }
SMELT_FN float smelt_exp_reducedf(float xc, float n) {
    const float r = fmaf(-n, 1.428606765330187e-6f, fmaf(-n, 0.693145751953125f, xc));
    float p = 1.9875691500e-4f;
    p = fmaf(p, r, 1.3981999507e-3f);
    p = fmaf(p, r, 8.3334519073e-3f);
    p = fmaf(p, r, 4.1665795894e-2f);
    p = fmaf(p, r, 1.6666665459e-1f);
    p = fmaf(p, r, 5.0000001201e-1f);
    return fmaf(p, r * r, r) + 1.0f;
}
SMELT_FN float smelt_expf(float x) {
    const float xc = x < -104.0f ? -104.0f : (x > 89.0f ? 89.0f : x);
    const float n = smelt_exp_nf(x, xc);
    const float p = smelt_exp_reducedf(xc, n);
    const int32_t ni = (int32_t)n, h = ni >> 1;
    const float s1 = smelt_bits_f32((uint32_t)(h + 127) << 23);
    const float s2 = smelt_bits_f32((uint32_t)(ni - h + 127) << 23);
    return p * s1 * s2;
}
// The sigmoid's exp: the same reduction and polynomial, its argument clamped to [-87, 88] so
// that one power-of-two scale suffices (smelt_expf needs two for gradual underflow and
// overflow). 1/(1 + e^-x) is then exact to rounding for x ≥ -88 and stays at sigmoid(-88)
// ≈ 6.1e-39 below that instead of decaying through the denormals (absolute error < 6.1e-39).
// About 12% off the 10-op elementwise chain, whose sigmoid is a third of its time.
SMELT_FN float smelt_sigmoidf(float x) {
    const float u = -x;
    const float uc = u < -87.0f ? -87.0f : (u > 88.0f ? 88.0f : u);
    const float n = smelt_exp_nf(u, uc);
    const float p = smelt_exp_reducedf(uc, n);
    return 1.0f / (1.0f + p * smelt_bits_f32((uint32_t)((int32_t)n + 127) << 23));
}
SMELT_FN double smelt_sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }
SMELT_FN float smelt_tanhf(float x) {
    // Lambert's continued fraction for tanh cut at depth 10, as x·N(x²)/D(x²): relative
    // error ≤ 7e-7 for |x| ≤ 9; beyond that tanh rounds to ±1 in f32. One division, no exp.
    const float a = fabsf(x);
    const float c = a > 9.0f ? 9.0f : a;
    const float t = c * c;
    float n = 7.273091851001112e-11f;
    n = fmaf(n, t, 1.5600782887759124e-07f);
    n = fmaf(n, t, 4.914246528642252e-05f);
    n = fmaf(n, t, 0.004678362514823675f);
    n = fmaf(n, t, 0.1428571492433548f);
    n = fmaf(n, t, 1.0f);
    float d = 4.80024064941631e-09f;
    d = fmaf(d, t, 3.276164306953433e-06f);
    d = fmaf(d, t, 0.0005503955762833357f);
    d = fmaf(d, t, 0.030075188726186752f);
    d = fmaf(d, t, 0.4761904776096344f);
    d = fmaf(d, t, 1.0f);
    const float r = c * n / d;
    const float y = a > 9.0f ? 1.0f : (r > 1.0f ? 1.0f : r);
    return copysignf(y, x);
}
SMELT_FN float smelt_erff(float x) {
    const float a = fabsf(x), x2 = x * x;
    const float small = x * 1.12837916709551257f * (1.0f + x2 * (-1.0f / 3.0f + x2 * (0.1f +
        x2 * (-1.0f / 42.0f + x2 * (1.0f / 216.0f + x2 * (-1.0f / 1320.0f))))));
    const float t = 1.0f / (1.0f + 0.3275911f * a);
    const float poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f +
        t * (-1.453152027f + t * 1.061405429f))));
    const float big = copysignf(1.0f - poly * smelt_expf(-x2), x);
    return a < 0.5f ? small : big;
}

#define SMELT_UNARY(name, expr_f, expr_d)                                   \
    SMELT_FN float smelt_##name##f(float x) { return (expr_f); }      \
    SMELT_FN double smelt_##name(double x) { return (expr_d); }

SMELT_UNARY(relu, x < 0.0f ? 0.0f : x, x < 0.0 ? 0.0 : x)
SMELT_UNARY(gelu, 0.5f * x * (1.0f + smelt_erff(x * 0.70710678118654752f)),
            0.5 * x * (1.0 + erf(x * 0.70710678118654752)))
SMELT_UNARY(gelu_tanh,
            0.5f * x * (1.0f + smelt_tanhf(0.79788456080286536f * (x + 0.044715f * x * x * x))),
            0.5 * x * (1.0 + tanh(0.79788456080286536 * (x + 0.044715 * x * x * x))))
SMELT_UNARY(softplus, x > 30.0f ? x : log1pf(smelt_expf(x)), x > 30.0 ? x : log1p(exp(x)))
SMELT_UNARY(sign, x != x ? x : (float)((x > 0.0f) - (x < 0.0f)),
            x != x ? x : (double)((x > 0.0) - (x < 0.0)))

SMELT_FN float smelt_hard_sigmoidf(float x, float a, float b) { return fminf(1.0f, fmaxf(0.0f, a * x + b)); }
SMELT_FN double smelt_hard_sigmoid(double x, double a, double b) { return fmin(1.0, fmax(0.0, a * x + b)); }
SMELT_FN float smelt_hard_swishf(float x) { return x * smelt_hard_sigmoidf(x, 1.0f / 6.0f, 0.5f); }
SMELT_FN double smelt_hard_swish(double x) { return x * smelt_hard_sigmoid(x, 1.0 / 6.0, 0.5); }
SMELT_FN float smelt_leaky_reluf(float x, float a) { return x < 0.0f ? a * x : x; }
SMELT_FN double smelt_leaky_relu(double x, double a) { return x < 0.0 ? a * x : x; }
SMELT_FN float smelt_eluf(float x, float a) { return x < 0.0f ? a * (smelt_expf(x) - 1.0f) : x; }
SMELT_FN double smelt_elu(double x, double a) { return x < 0.0 ? a * (exp(x) - 1.0) : x; }
SMELT_FN float smelt_celuf(float x, float a) { return fmaxf(0.0f, x) + fminf(0.0f, a * (smelt_expf(x / a) - 1.0f)); }
SMELT_FN double smelt_celu(double x, double a) { return fmax(0.0, x) + fmin(0.0, a * (exp(x / a) - 1.0)); }
SMELT_FN float smelt_seluf(float x, float a, float g) { return x > 0.0f ? g * x : g * (a * smelt_expf(x) - a); }
SMELT_FN double smelt_selu(double x, double a, double g) { return x > 0.0 ? g * x : g * (a * exp(x) - a); }
SMELT_FN float smelt_thresholded_reluf(float x, float a) { return x > a ? x : 0.0f; }
SMELT_FN double smelt_thresholded_relu(double x, double a) { return x > a ? x : 0.0; }

// NaN-propagating min/max (numpy and ONNX semantics; fminf/fmaxf drop NaN): `a` when it is
// NaN or wins, else `b` (NaN when `b` is). Written as one select so that a chain of them
// (a pool window's taps) still vectorizes; a form with a NaN constant in a second select
// made GCC leave such a loop scalar.
SMELT_FN float smelt_max_nanf(float a, float b) { return (a > b || a != a) ? a : b; }
SMELT_FN float smelt_min_nanf(float a, float b) { return (a < b || a != a) ? a : b; }
SMELT_FN double smelt_max_nan(double a, double b) { return (a > b || a != a) ? a : b; }
SMELT_FN double smelt_min_nan(double a, double b) { return (a < b || a != a) ? a : b; }

// Float max/min folds: a plain combiner (it vectorizes; the generated loop keeps NaN in a
// flag beside it) starting from ∓infinity (OpenMP's own max/min start from the least or
// greatest finite value under clang, which would turn an all -inf row's max into -FLT_MAX).
#pragma omp declare reduction(smelt_fmax : float : omp_out = omp_out > omp_in ? omp_out : omp_in) initializer(omp_priv = -INFINITY)
#pragma omp declare reduction(smelt_fmin : float : omp_out = omp_out < omp_in ? omp_out : omp_in) initializer(omp_priv = INFINITY)
#pragma omp declare reduction(smelt_fmax : double : omp_out = omp_out > omp_in ? omp_out : omp_in) initializer(omp_priv = -(double)INFINITY)
#pragma omp declare reduction(smelt_fmin : double : omp_out = omp_out < omp_in ? omp_out : omp_in) initializer(omp_priv = (double)INFINITY)

// Remainder with the sign of the divisor (Python's %, ONNX Mod with fmod=0).
SMELT_FN float smelt_mod_floorf(float a, float b) {
    const float r = fmodf(a, b);
    return (r != 0.0f && ((r < 0.0f) != (b < 0.0f))) ? r + b : r;
}
SMELT_FN double smelt_mod_floor(double a, double b) {
    const double r = fmod(a, b);
    return (r != 0.0 && ((r < 0.0) != (b < 0.0))) ? r + b : r;
}
// Set when an integer division meets a zero divisor (the result is then 0, and smelt_run
// returns 2: the runtime reports an error instead of the CPU trapping). INT64_MIN / -1 wraps.
// With several translation units (compiled in parallel, linked into one shared object) the
// first, SMELT_MAIN_UNIT, defines it; kernel bodies in other units reach it by name.
#define SMELT_LINK __attribute__((visibility("hidden")))
// A run-time index that fails its check (Gather, GatherElements, GatherND, ScatterND) sets
// smelt_fault to 4 and records, first fault only: the kernel (its position in the program,
// set by smelt_run before each kernel with checks), the check site and the index. The
// access then reads element 0 of the dim: nothing outside the tensor is read or written.
#ifdef SMELT_MAIN_UNIT
SMELT_LINK int smelt_fault;
SMELT_LINK int smelt_fault_kernel;
SMELT_LINK long long smelt_fault_record[3];
#else
SMELT_LINK extern int smelt_fault;
SMELT_LINK extern int smelt_fault_kernel;
SMELT_LINK extern long long smelt_fault_record[3];
#endif
static __attribute__((noinline, cold)) void smelt_index_fault(long long site, long long i) {
    int none = 0;
    if (__atomic_compare_exchange_n(&smelt_fault, &none, 4, 0, __ATOMIC_RELAXED,
                                    __ATOMIC_RELAXED)) {
        smelt_fault_record[0] = smelt_fault_kernel;
        smelt_fault_record[1] = site;
        smelt_fault_record[2] = i;
    }
}
// Index i (negative counted from the end) into a dim of size n, or a fault and 0.
SMELT_FN long long smelt_checked_index_ll(long long i, long long n, long long site) {
    const long long j = i < 0 ? i + n : i;
    if (__builtin_expect((unsigned long long)j < (unsigned long long)n, 1)) return j;
    smelt_index_fault(site, i);
    return 0;
}
SMELT_FN long long smelt_div_ll(long long a, long long b) {
    if (b == 0) { smelt_fault = 2; return 0; }
    return b == -1 ? (long long)(0ull - (unsigned long long)a) : a / b;
}
SMELT_FN long long smelt_rem_ll(long long a, long long b) {
    if (b == 0) { smelt_fault = 2; return 0; }
    return b == -1 ? 0 : a % b;
}
SMELT_FN long long smelt_mod_floor_ll(long long a, long long b) {
    if (b == 0) { smelt_fault = 2; return 0; }
    if (b == -1) return 0;
    const long long r = a % b;
    return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
}
// Integer power: wrapping, by squaring; a negative exponent goes through double (numpy).
SMELT_FN long long smelt_pow_int_ll(long long x, long long y) {
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
SMELT_FN long long smelt_min_ll(long long a, long long b) { return a < b ? a : b; }
SMELT_FN long long smelt_max_ll(long long a, long long b) { return a > b ? a : b; }

// f16 and bf16 storage: bit conversions, round to nearest even, NaN kept quiet.
SMELT_FN float smelt_f16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (exp == 0x1fu) return smelt_bits_f32(sign | 0x7f800000u | (man << 13));
    if (exp != 0) return smelt_bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
    // Subnormal: man · 2^-24.
    const float f = (float)man * 5.9604644775390625e-8f;
    return sign ? -f : f;
}
SMELT_FN uint16_t smelt_f32_to_f16(float f) {
    const uint32_t x = smelt_f32_bits(f);
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    const uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // rounds to ≥ 65520: inf
    if (ax < 0x38800000u) {  // below 2^-14: a subnormal or zero
        const float a = smelt_bits_f32(ax) * 16777216.0f;  // · 2^24, exact
        return (uint16_t)(sign | (uint16_t)rintf(a));
    }
    const uint32_t e = ((ax >> 23) - 112u) << 10, m = ax & 0x7fffffu;
    uint32_t h = e | (m >> 13);
    const uint32_t rest = m & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;
    return (uint16_t)(sign | h);
}
SMELT_FN float smelt_bf16_to_f32(uint16_t h) { return smelt_bits_f32((uint32_t)h << 16); }
SMELT_FN uint16_t smelt_f32_to_bf16(float f) {
    const uint32_t x = smelt_f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u);
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

// c[b] = a[b] × b[b] for every batch index, split over the thread pool: batches first,
// then column (or row) panels of one product. Strides in elements.
static void smelt_gemm_f32(const smelt_ctx* ctx, int nb, const long long* batch, long long m,
                           long long n, long long k, float* c, const long long* c_bs,
                           long long c_rs, long long c_cs, const float* a,
                           const long long* a_bs, long long a_rs, long long a_cs,
                           const float* b, const long long* b_bs, long long b_rs,
                           long long b_cs) {
    long long batches = 1;
    for (int d = 0; d < nb; d++) batches *= batch[d];
    if (m == 0 || n == 0 || batches == 0) return;
    const long long threads = ctx->threads > 1 ? ctx->threads : 1;
    // Panels per product so that every thread has work.
    long long panels = batches >= threads ? 1 : (threads + batches - 1) / batches;
    const int split_n = n >= m;
    const long long len = split_n ? n : m;
    // Column panels at most 512 wide: the library packs each call's panel of b, and a
    // panel of 512 columns keeps that packing in the core's L2 (measured ~10% faster on a
    // 64×1024×4096 product than one half-width call per thread).
    if (split_n && m * k >= 65536 && (n + 511) / 512 > panels) {
        panels = (n + 511) / 512;
        panels = (panels + threads - 1) / threads * threads;
    }
    if (panels > len) panels = len;
    const long long tasks = batches * panels;
#pragma omp parallel for schedule(static) num_threads(threads) if (tasks > 1 && m * n * k >= 32768)
    for (long long t = 0; t < tasks; t++) {
        const long long bi = t / panels, p = t % panels;
        long long ao = 0, bo = 0, co = 0, rest = bi;
        for (int d = nb - 1; d >= 0; d--) {
            const long long i = rest % batch[d];
            rest /= batch[d];
            ao += i * a_bs[d];
            bo += i * b_bs[d];
            co += i * c_bs[d];
        }
        const long long lo = len * p / panels, hi = len * (p + 1) / panels;
        long long mm = m, nn = n;
        if (split_n) {
            nn = hi - lo;
            bo += lo * b_cs;
            co += lo * c_cs;
        } else {
            mm = hi - lo;
            ao += lo * a_rs;
            co += lo * c_rs;
        }
        if (k == 0) {
            for (long long r = 0; r < mm; r++)
                for (long long q = 0; q < nn; q++) c[co + r * c_rs + q * c_cs] = 0.0f;
            continue;
        }
        ctx->gemm_f32((size_t)mm, (size_t)nn, (size_t)k, c + co, (ptrdiff_t)c_rs,
                      (ptrdiff_t)c_cs, a + ao, (ptrdiff_t)a_rs, (ptrdiff_t)a_cs, b + bo,
                      (ptrdiff_t)b_rs, (ptrdiff_t)b_cs);
    }
}

// ---- Products with a weight packed at compile time ----
//
// The right operand b (k×n, a constant) is stored in column panels of SMELT_PANEL: element
// (p, j) at (j / SMELT_PANEL)·k·SMELT_PANEL + p·SMELT_PANEL + j % SMELT_PANEL, zero past n.
// A tile of SMELT_MR rows × one panel keeps its accumulators in vector registers for the
// whole k walk: per k, two panel vectors and SMELT_MR broadcasts of a. With the packing done
// once by the compiler, a run reads each weight once, contiguously (the library packs b
// again on every call). On a 2-core AVX-512 machine: ~480 GFLOP/s on 64×1024×4096 against
// ~300 for the library.

#define SMELT_PANEL 32
// Accumulators are vectors of the target's own width (a wider generic vector is lowered
// through memory: on an AVX2 machine the 16-lane form ran at ~1.6 GFLOP/s): a tile of
// SMELT_MR rows holds SMELT_MR × SMELT_PANEL / SMELT_VL of them, plus the panel's vectors.
#if defined(__AVX512F__)
#define SMELT_MR 8
#define SMELT_VL 16
#else
#define SMELT_MR 3
#define SMELT_VL 8
#endif
#define SMELT_NV (SMELT_PANEL / SMELT_VL)

typedef float smelt_vf __attribute__((vector_size(SMELT_VL * 4)));

// One tile: rows [0, mr) of a (strides a_rs, a_cs) times panel bp, into c (mr × nr). `mr`
// is a constant at each call site, so the loops unroll and the accumulators stay in
// registers.
SMELT_FN void smelt_tile_f32(long long k, const float* restrict a, long long a_rs,
                             long long a_cs, const float* restrict bp, float* restrict c,
                             long long c_rs, long long c_cs, int mr, long long nr) {
    smelt_vf acc[SMELT_MR][SMELT_NV];
    for (int i = 0; i < mr; i++)
        for (int v = 0; v < SMELT_NV; v++) acc[i][v] = (smelt_vf){0};
    for (long long p = 0; p < k; p++) {
        smelt_vf bv[SMELT_NV];
        for (int v = 0; v < SMELT_NV; v++)
            __builtin_memcpy(&bv[v], bp + p * SMELT_PANEL + v * SMELT_VL, sizeof bv[v]);
        for (int i = 0; i < mr; i++) {
            const float av = a[i * a_rs + p * a_cs];
            for (int v = 0; v < SMELT_NV; v++) acc[i][v] += av * bv[v];
        }
    }
    for (int i = 0; i < mr; i++) {
        float* restrict row = c + i * c_rs;
        if (nr == SMELT_PANEL && c_cs == 1) {
            for (int v = 0; v < SMELT_NV; v++)
                __builtin_memcpy(row + v * SMELT_VL, &acc[i][v], sizeof acc[i][v]);
        } else {
            float t[SMELT_PANEL];
            for (int v = 0; v < SMELT_NV; v++)
                __builtin_memcpy(t + v * SMELT_VL, &acc[i][v], sizeof acc[i][v]);
            for (long long j = 0; j < nr; j++) row[j * c_cs] = t[j];
        }
    }
}

// c[b] = a[b] × bp for every batch index (bp the same packed weight for all). The threads
// split the panels (each reads its share of the weight once); with fewer panels than
// threads, each panel's row tiles are split too.
static void smelt_gemm_packed_f32(const smelt_ctx* ctx, int nb, const long long* batch,
                                  long long m, long long n, long long k, float* c,
                                  const long long* c_bs, long long c_rs, long long c_cs,
                                  const float* a, const long long* a_bs, long long a_rs,
                                  long long a_cs, const float* bp, long long panel) {
    if (panel != SMELT_PANEL) {
        smelt_fault = 3;
        return;
    }
    long long batches = 1;
    for (int d = 0; d < nb; d++) batches *= batch[d];
    if (m == 0 || n == 0 || batches == 0) return;
    const long long threads = ctx->threads > 1 ? ctx->threads : 1;
    const long long panels = (n + SMELT_PANEL - 1) / SMELT_PANEL;
    const long long tiles = (m + SMELT_MR - 1) / SMELT_MR;
    const long long units = batches * tiles;
    long long groups = panels >= threads ? 1 : (threads + panels - 1) / panels;
    if (groups > units) groups = units;
    const long long tasks = panels * groups;
#pragma omp parallel for schedule(static) num_threads(threads) if (tasks > 1 && m * n * k >= 32768)
    for (long long t = 0; t < tasks; t++) {
        const long long q = t / groups, g = t % groups;
        const long long lo = units * g / groups, hi = units * (g + 1) / groups;
        const long long j0 = q * SMELT_PANEL;
        const long long nr = n - j0 < SMELT_PANEL ? n - j0 : SMELT_PANEL;
        const float* restrict b = bp + q * k * SMELT_PANEL;
        for (long long u = lo; u < hi; u++) {
            const long long bi = u / tiles, i0 = (u % tiles) * SMELT_MR;
            long long ao = 0, co = 0, rest = bi;
            for (int d = nb - 1; d >= 0; d--) {
                const long long x = rest % batch[d];
                rest /= batch[d];
                ao += x * a_bs[d];
                co += x * c_bs[d];
            }
            const float* ta = a + ao + i0 * a_rs;
            float* tc = c + co + i0 * c_rs + j0 * c_cs;
            switch (m - i0 < SMELT_MR ? m - i0 : SMELT_MR) {
#define SMELT_TILE(r) \
    case r: smelt_tile_f32(k, ta, a_rs, a_cs, b, tc, c_rs, c_cs, r, nr); break;
                SMELT_TILE(1)
                SMELT_TILE(2)
                SMELT_TILE(3)
#if SMELT_MR == 8
                SMELT_TILE(4)
                SMELT_TILE(5)
                SMELT_TILE(6)
                SMELT_TILE(7)
                SMELT_TILE(8)
#endif
#undef SMELT_TILE
                default: break;
            }
        }
    }
}
