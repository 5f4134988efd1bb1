// The machine's peaks as generated code can reach them (built with the C backend's own
// compiler and flags): copy bandwidth (read + write bytes per second over arrays far larger
// than the caches) and f32 fused multiply-add throughput (independent accumulator chains,
// enough of them to cover the FMA latency on every port), both on `threads` OpenMP threads.
// smelt measures them once per machine (runtime/src/cpu/peak.rs) to say how far each kernel
// is from the roofline.
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

// Best of `reps` copies of `n` floats, in GB/s (bytes read + bytes written).
double smelt_peak_copy(int threads, long long n, int reps) {
    float* a = (float*)aligned_alloc(64, (size_t)n * sizeof(float));
    float* b = (float*)aligned_alloc(64, (size_t)n * sizeof(float));
    if (!a || !b) {
        free(a);
        free(b);
        return 0.0;
    }
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long long i = 0; i < n; i++) {
        a[i] = (float)(i & 1023);
        b[i] = 0.0f;
    }
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t = omp_get_wtime();
#pragma omp parallel for simd schedule(static) num_threads(threads)
        for (long long i = 0; i < n; i++) b[i] = a[i];
        t = omp_get_wtime() - t;
        if (t < best) best = t;
        a[r % n] += b[(r * 7919) % n];
    }
    free(a);
    free(b);
    return 2.0 * (double)n * sizeof(float) / best / 1e9;
}

// 12 independent chains of the widest vectors the compiler targets (AVX-512, else 256-bit):
// more than FMA latency × ports on any x86 core, and few enough to stay in registers. Built
// with -ffp-contract=fast (after the backend's flags) so each `a * m + c` is one FMA.
#if defined(__AVX512F__)
#define SMELT_PEAK_LANES 16
#else
#define SMELT_PEAK_LANES 8
#endif
typedef float smelt_vf __attribute__((vector_size(SMELT_PEAK_LANES * 4)));
#define SMELT_PEAK_CHAINS 12

// Best of `reps` runs of `iters` rounds of SMELT_PEAK_CHAINS vector FMAs per thread, in
// GFLOP/s (an FMA is two flops per lane).
double smelt_peak_fma(int threads, long long iters, int reps) {
    double best = 1e30;
    volatile float sink = 0.0f;
    for (int r = 0; r < reps; r++) {
        double t = omp_get_wtime();
#pragma omp parallel num_threads(threads)
        {
            const float mf = 0.999999f + 1e-7f * (float)omp_get_thread_num();
            smelt_vf m, c, a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11;
            for (int l = 0; l < SMELT_PEAK_LANES; l++) {
                m[l] = mf;
                c[l] = 1e-6f;
                a0[l] = 0.0f + l, a1[l] = 1.0f + l, a2[l] = 2.0f + l, a3[l] = 3.0f + l;
                a4[l] = 4.0f + l, a5[l] = 5.0f + l, a6[l] = 6.0f + l, a7[l] = 7.0f + l;
                a8[l] = 8.0f + l, a9[l] = 9.0f + l, a10[l] = 10.0f + l, a11[l] = 11.0f + l;
            }
            for (long long i = 0; i < iters; i++) {
                a0 = a0 * m + c, a1 = a1 * m + c, a2 = a2 * m + c, a3 = a3 * m + c;
                a4 = a4 * m + c, a5 = a5 * m + c, a6 = a6 * m + c, a7 = a7 * m + c;
                a8 = a8 * m + c, a9 = a9 * m + c, a10 = a10 * m + c, a11 = a11 * m + c;
            }
            const smelt_vf all = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11;
            float s = 0.0f;
            for (int l = 0; l < SMELT_PEAK_LANES; l++) s += all[l];
#pragma omp atomic
            sink += s;
        }
        t = omp_get_wtime() - t;
        if (t < best) best = t;
    }
    return 2.0 * SMELT_PEAK_CHAINS * SMELT_PEAK_LANES * (double)iters * threads / best / 1e9;
}
