/* One-row float32 GEMV for the CPU decode step: y[n] = sum_k W[n, k] * x[k], W row-major (ldw floats
 * between rows, unit stride within a row). Compiled on first use by model/gemv.py.
 *
 * Why by hand: at batch 1 the decode step of a large model is a stream over its weights, and the GEMV
 * kernels torch reaches (oneDNN, OpenBLAS, MKL) read a one-row product's weights markedly slower than a
 * plain sum reads memory on this project's machine. This kernel reads each weight row once, front to
 * back, as one sequential stream per thread (rows split in contiguous blocks between the threads),
 * with four independent 16-lane accumulators and a software prefetch `prefetch` floats ahead.
 * Portable GNU C (vector extensions; the compiler maps them onto the machine's SIMD width) with
 * OpenMP, which resolves to the libgomp that torch has already loaded (model/gemv.py checks that). */
#include <stdint.h>
#include <string.h>

typedef float v16 __attribute__((vector_size(64)));

static inline v16 load16(const float *p) {
    v16 v;
    memcpy(&v, p, sizeof v); /* unaligned load */
    return v;
}

void phi3v_gemv_f32(const float *W, const float *x, float *y, int64_t N, int64_t K, int64_t ldw,
                    int nthreads, int64_t prefetch) {
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (int64_t n = 0; n < N; n++) {
        const float *w = W + n * ldw;
        v16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
        int64_t k = 0;
        for (; k + 64 <= K; k += 64) {
            if (prefetch) { /* a prefetch never faults, past the end included */
                __builtin_prefetch(w + k + prefetch, 0, 3);
                __builtin_prefetch(w + k + prefetch + 16, 0, 3);
                __builtin_prefetch(w + k + prefetch + 32, 0, 3);
                __builtin_prefetch(w + k + prefetch + 48, 0, 3);
            }
            a0 += load16(w + k) * load16(x + k);
            a1 += load16(w + k + 16) * load16(x + k + 16);
            a2 += load16(w + k + 32) * load16(x + k + 32);
            a3 += load16(w + k + 48) * load16(x + k + 48);
        }
        v16 a = (a0 + a1) + (a2 + a3);
        float s = 0.f;
        for (int i = 0; i < 16; i++) s += a[i];
        for (; k < K; k++) s += w[k] * x[k];
        y[n] = s;
    }
}
