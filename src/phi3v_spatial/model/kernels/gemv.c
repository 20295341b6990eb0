/* One-row float32 GEMV for the CPU decode step: y[n] = sum_k W[n, k] * x[k], W row-major (ldw floats
 * between rows, unit stride within a row); at the end, its sibling for 2-8 rows. Compiled on first
 * use by model/native.py.
 *
 * Why by hand: at batch 1 the decode step of a large model is a stream over its weights, and the GEMV
 * kernels torch reaches (oneDNN, OpenBLAS, MKL) read a one-row product's weights markedly slower than a
 * plain sum reads memory on this project's machine. Each thread takes a contiguous block of rows and
 * reads four of them at a time, one from each quarter of its block: four sequential streams far
 * apart, which keep more cache-line fills in flight than one (measured on the project's 2-core Zen 4
 * VM, interleaved in one process: ~25% faster than one stream per thread, ~10% faster than two, and
 * faster than a plain one-stream sum of the same memory). Each row is read front to back with a
 * 16-lane accumulator and a software
 * prefetch `prefetch` floats ahead into the outer cache levels (locality 1: on x86 prefetcht2, which
 * Zen fills into L2, leaving L1 to the vector x; faster there than prefetching into L1).
 * Portable GNU C (vector extensions; the compiler maps them onto the machine's SIMD width) with
 * OpenMP, which resolves to the libgomp that torch has already loaded (model/native.py checks that). */
#include <omp.h>
#include <stdint.h>
#include <string.h>

typedef float v16 __attribute__((vector_size(64)));

static inline v16 load16(const float *p) {
    v16 v;
    memcpy(&v, p, sizeof v); /* unaligned load */
    return v;
}

static inline float hsum(v16 a) {
    float s = 0.f;
    for (int i = 0; i < 16; i++) s += a[i];
    return s;
}

/* y[j] = w[j] . x for four rows read side by side (a prefetch never faults, past the end included) */
static inline void four_rows(const float *const w[4], const float *x, int64_t K, int64_t prefetch, float *const y[4]) {
    v16 a[4] = {{0}, {0}, {0}, {0}};
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        if (prefetch)
            for (int j = 0; j < 4; j++) __builtin_prefetch(w[j] + k + prefetch, 0, 1);
        const v16 xk = load16(x + k);
        for (int j = 0; j < 4; j++) a[j] += load16(w[j] + k) * xk;
    }
    for (int j = 0; j < 4; j++) {
        float s = hsum(a[j]);
        for (int64_t i = k; i < K; i++) s += w[j][i] * x[i];
        *y[j] = s;
    }
}

void phi3v_gemv_f32(const float *W, const float *x, float *y, int64_t N, int64_t K, int64_t ldw,
                    int nthreads, int64_t prefetch) {
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        const int64_t nt = omp_get_num_threads(), id = omp_get_thread_num();
        const int64_t lo = N * id / nt, hi = N * (id + 1) / nt, q = (hi - lo) / 4;
        for (int64_t i = 0; i < q; i++) { /* row i of each quarter of the block */
            const float *w[4] = {W + (lo + i) * ldw, W + (lo + q + i) * ldw, W + (lo + 2 * q + i) * ldw,
                                 W + (lo + 3 * q + i) * ldw};
            float *out[4] = {y + lo + i, y + lo + q + i, y + lo + 2 * q + i, y + lo + 3 * q + i};
            four_rows(w, x, K, prefetch, out);
        }
        for (int64_t n = lo + 4 * q; n < hi; n++) { /* the block's last 0-3 rows, one at a time */
            float unused[3];
            const float *w[4] = {W + n * ldw, W + n * ldw, W + n * ldw, W + n * ldw};
            float *out[4] = {y + n, unused, unused + 1, unused + 2};
            four_rows(w, x, K, prefetch, out);
        }
    }
}

/* A few rows at once (the decode step of a small batch): Y[m, n] = sum_k W[n, k] * X[m, k] for M rows
 * of X (ldx floats apart; Y rows ldy apart). Each weight row is read once for up to 8 rows of X: per
 * thread a contiguous block of weight rows, taken 2 at a time for 1-3 rows of X (one from each half of
 * the block: two streams) and 3 at a time for 4-8 (one from each third), each loaded 16 floats at a
 * time and multiplied into 2 x M or 3 x M accumulators (at most 24 of the 32 vector registers). MB is
 * a compile-time row count (the switches below), so the loops over rows unroll. Measured on the
 * project's 2-core Zen 4 VM against oneDNN (its small-M GEMM at 2-3 rows, its packed-weight GEMM at
 * 8): ~1.4x at 2 rows, ~1.1x at 3; at 8 rows, where the arithmetic rather than the weight stream
 * bounds it, 131-137 GFLOP/s against oneDNN's packed 103-110 (and 117-119 for two rows at a time:
 * three weight rows per eight loads of X use each load for more multiply-adds). */
static inline __attribute__((always_inline)) void two_rows_mb(const float *w0, const float *w1, const float *X,
                                                              int64_t ldx, int64_t K, int64_t prefetch,
                                                              float *y0, float *y1, int64_t ldy, const int MB) {
    v16 a0[3], a1[3];
    for (int m = 0; m < MB; m++) a0[m] = a1[m] = (v16){0};
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        if (prefetch) {
            __builtin_prefetch(w0 + k + prefetch, 0, 1);
            __builtin_prefetch(w1 + k + prefetch, 0, 1);
        }
        const v16 u = load16(w0 + k), v = load16(w1 + k);
        for (int m = 0; m < MB; m++) {
            const v16 xk = load16(X + m * ldx + k);
            a0[m] += u * xk;
            a1[m] += v * xk;
        }
    }
    for (int m = 0; m < MB; m++) {
        float s0 = hsum(a0[m]), s1 = hsum(a1[m]);
        for (int64_t i = k; i < K; i++) {
            s0 += w0[i] * X[m * ldx + i];
            s1 += w1[i] * X[m * ldx + i];
        }
        y0[m * ldy] = s0;
        y1[m * ldy] = s1;
    }
}

static void two_rows(const float *w0, const float *w1, const float *X, int64_t ldx, int64_t K, int64_t prefetch,
                     float *y0, float *y1, int64_t ldy, int MB) {
    switch (MB) {
    case 1: two_rows_mb(w0, w1, X, ldx, K, prefetch, y0, y1, ldy, 1); break;
    case 2: two_rows_mb(w0, w1, X, ldx, K, prefetch, y0, y1, ldy, 2); break;
    default: two_rows_mb(w0, w1, X, ldx, K, prefetch, y0, y1, ldy, 3); break; /* 4-8 rows: three_rows */
    }
}

static inline __attribute__((always_inline)) void three_rows_mb(const float *w0, const float *w1, const float *w2,
                                                                const float *X, int64_t ldx, int64_t K, int64_t prefetch,
                                                                float *y0, float *y1, float *y2, int64_t ldy, const int MB) {
    v16 a0[8], a1[8], a2[8];
    for (int m = 0; m < MB; m++) a0[m] = a1[m] = a2[m] = (v16){0};
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        if (prefetch) {
            __builtin_prefetch(w0 + k + prefetch, 0, 1);
            __builtin_prefetch(w1 + k + prefetch, 0, 1);
            __builtin_prefetch(w2 + k + prefetch, 0, 1);
        }
        const v16 u = load16(w0 + k), v = load16(w1 + k), t = load16(w2 + k);
        for (int m = 0; m < MB; m++) {
            const v16 xk = load16(X + m * ldx + k);
            a0[m] += u * xk;
            a1[m] += v * xk;
            a2[m] += t * xk;
        }
    }
    for (int m = 0; m < MB; m++) {
        float s0 = hsum(a0[m]), s1 = hsum(a1[m]), s2 = hsum(a2[m]);
        for (int64_t i = k; i < K; i++) {
            s0 += w0[i] * X[m * ldx + i];
            s1 += w1[i] * X[m * ldx + i];
            s2 += w2[i] * X[m * ldx + i];
        }
        y0[m * ldy] = s0;
        y1[m * ldy] = s1;
        y2[m * ldy] = s2;
    }
}

static void three_rows(const float *w0, const float *w1, const float *w2, const float *X, int64_t ldx, int64_t K,
                       int64_t prefetch, float *y0, float *y1, float *y2, int64_t ldy, int MB) {
    switch (MB) {
    case 4: three_rows_mb(w0, w1, w2, X, ldx, K, prefetch, y0, y1, y2, ldy, 4); break;
    case 5: three_rows_mb(w0, w1, w2, X, ldx, K, prefetch, y0, y1, y2, ldy, 5); break;
    case 6: three_rows_mb(w0, w1, w2, X, ldx, K, prefetch, y0, y1, y2, ldy, 6); break;
    case 7: three_rows_mb(w0, w1, w2, X, ldx, K, prefetch, y0, y1, y2, ldy, 7); break;
    default: three_rows_mb(w0, w1, w2, X, ldx, K, prefetch, y0, y1, y2, ldy, 8); break;
    }
}

void phi3v_gemm_rows_f32(const float *W, const float *X, float *Y, int64_t N, int64_t K, int64_t ldw, int64_t M,
                         int64_t ldx, int64_t ldy, int nthreads, int64_t prefetch) {
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        const int64_t nt = omp_get_num_threads(), id = omp_get_thread_num();
        const int64_t lo = N * id / nt, hi = N * (id + 1) / nt, h = (hi - lo) / 2;
        for (int64_t m0 = 0; m0 < M; m0 += 8) { /* at most 8 rows of X per pass over the weights */
            const int MB = (int)(M - m0 < 8 ? M - m0 : 8);
            const float *Xm = X + m0 * ldx;
            float *Ym = Y + m0 * ldy;
            if (MB >= 4) { /* three streams: row i of each third of the block */
                const int64_t t = (hi - lo) / 3;
                for (int64_t i = 0; i < t; i++)
                    three_rows(W + (lo + i) * ldw, W + (lo + t + i) * ldw, W + (lo + 2 * t + i) * ldw, Xm, ldx, K,
                               prefetch, Ym + lo + i, Ym + lo + t + i, Ym + lo + 2 * t + i, ldy, MB);
                for (int64_t n = lo + 3 * t; n < hi; n++) /* the block's last 0-2 rows (each computed thrice into its place) */
                    three_rows(W + n * ldw, W + n * ldw, W + n * ldw, Xm, ldx, K, prefetch, Ym + n, Ym + n, Ym + n, ldy, MB);
                continue;
            }
            for (int64_t i = 0; i < h; i++) /* row i of each half of the block */
                two_rows(W + (lo + i) * ldw, W + (lo + h + i) * ldw, Xm, ldx, K, prefetch, Ym + lo + i,
                         Ym + lo + h + i, ldy, MB);
            if (lo + 2 * h < hi) { /* an odd block's last row (computed twice into the same place) */
                const int64_t n = hi - 1;
                two_rows(W + n * ldw, W + n * ldw, Xm, ldx, K, prefetch, Ym + n, Ym + n, ldy, MB);
            }
        }
    }
}
