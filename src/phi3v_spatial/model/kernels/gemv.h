/* The one-row float32 GEMV of the CPU decode step, shared by gemv.c (one matmul per call) and layer.c (a
 * whole decoder layer per call): y[n] = sum_k W[n, k] * x[k], W row-major (ldw floats between rows, unit
 * stride within a row), over chunks of rows (`gemv_chunk`) that the calling threads take in turn.
 *
 * Why by hand: at batch 1 the decode step of a large model is a stream over its weights, and the GEMV
 * kernels torch reaches (oneDNN, OpenBLAS, MKL) read a one-row product's weights markedly slower than a
 * plain sum reads memory on this project's machine. The rows are cut into chunks (~8 MiB) that the
 * threads take in turn (see chunk_rows); a thread reads four rows of its chunk at a time, one from
 * each quarter: four sequential streams apart, which keep more cache-line fills in flight than one
 * (measured on the project's 2-core Zen 4 VM, interleaved in one process: ~25% faster than one stream
 * per thread, ~10% faster than two, and faster than a plain one-stream sum of the same memory). Each row is read front to back with a
 * 16-lane accumulator and a software
 * prefetch `prefetch` floats ahead into the outer cache levels (locality 1: on x86 prefetcht2, which
 * Zen fills into L2, leaving L1 to the vector x; faster there than prefetching into L1).
 * Portable GNU C (vector extensions; the compiler maps them onto the machine's SIMD width) with
 * OpenMP, which resolves to the libgomp that torch has already loaded (model/native.py checks that). */
#pragma once
#include <omp.h>
#include <stdint.h>
#include <string.h>

typedef float v16 __attribute__((vector_size(64)));

static inline v16 load16(const float *p) {
    v16 v;
    memcpy(&v, p, sizeof v); /* unaligned load */
    return v;
}

typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));

/* the sum of a's 16 lanes, as a tree of halves (4 adds, not a chain of 15) */
static inline float hsum(v16 a) {
    v8 h, l;
    memcpy(&l, &a, sizeof l);
    memcpy(&h, (const char *)&a + sizeof l, sizeof h);
    l += h;
    v4 q, p;
    memcpy(&p, &l, sizeof p);
    memcpy(&q, (const char *)&l + sizeof p, sizeof q);
    p += q;
    return (p[0] + p[2]) + (p[1] + p[3]);
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

/* Rows per chunk of work: ~8 MiB of weights (672 rows at K = 3072) but at least ~4 chunks per thread,
 * a multiple of 12 (whole groups of 2, 3 or 4 rows). Threads take chunks one at a time (dynamic
 * schedule) rather than a fixed half each: on the project's 2-core VM one core often streams ~10-20%
 * slower than the other in the fast-memory phases (a neighbour's load), and with fixed halves the
 * faster one then waits (lm_head: 6.3 against 8.0 ms). Over phi3-2l's weights, interleaved in one
 * process, against fixed halves: one row 1.02x in the fast phases (mean 57.0 against 56.0 GB/s, a
 * sum reading 60-62), 8 rows 1.05x; 3 MiB chunks were 0.97x at one row (a chunk's four streams start
 * cold), larger ones par. */
static inline int64_t chunk_rows(int64_t N, int64_t K, int nthreads) {
    int64_t r = (2048 * 1024) / (K > 0 ? K : 1);
    const int64_t fair = N / (4 * (nthreads > 0 ? nthreads : 1));
    r = fair < r ? fair : r;
    r = r < 12 ? 12 : r > 4096 ? 4096 : r;
    return r - r % 12;
}

/* rows lo..hi of y = W x: four rows at a time, one from each quarter of the range */
static inline void gemv_chunk(const float *W, const float *x, float *y, int64_t lo, int64_t hi, int64_t K, int64_t ldw,
                              int64_t prefetch) {
    const int64_t q = (hi - lo) / 4;
    for (int64_t i = 0; i < q; i++) { /* row i of each quarter of the chunk */
        const float *w[4] = {W + (lo + i) * ldw, W + (lo + q + i) * ldw, W + (lo + 2 * q + i) * ldw,
                             W + (lo + 3 * q + i) * ldw};
        float *out[4] = {y + lo + i, y + lo + q + i, y + lo + 2 * q + i, y + lo + 3 * q + i};
        four_rows(w, x, K, prefetch, out);
    }
    for (int64_t n = lo + 4 * q; n < hi; n++) { /* the chunk's last 0-3 rows, one at a time */
        float unused[3];
        const float *w[4] = {W + n * ldw, W + n * ldw, W + n * ldw, W + n * ldw};
        float *out[4] = {y + n, unused, unused + 1, unused + 2};
        four_rows(w, x, K, prefetch, out);
    }
}

/* y = W x over the calling team: chunks of rows taken in turn (a worksharing loop, so called inside a
 * parallel region; it ends with the team's barrier) */
static inline void team_gemv(const float *W, int64_t ldw, const float *x, float *y, int64_t N, int64_t K, int nthreads,
                             int64_t prefetch) {
    const int64_t chunk = chunk_rows(N, K, nthreads), nchunks = (N + chunk - 1) / chunk;
#pragma omp for schedule(dynamic, 1)
    for (int64_t c = 0; c < nchunks; c++)
        gemv_chunk(W, x, y, c * chunk, (c + 1) * chunk < N ? (c + 1) * chunk : N, K, ldw, prefetch);
}

/* A few rows at once (the decode step of a small batch): Y[m, n] = sum_k W[n, k] * X[m, k] for M rows
 * of X (ldx floats apart; Y rows ldy apart). Each weight row is read once for up to 8 rows of X: the
 * same chunks as the GEMV, their rows taken 2 at a time for 1-3 rows of X (one from each half of the
 * chunk: two streams) and 3 at a time for 4-8 (one from each third), each loaded 16 floats at a
 * time and multiplied into 2 x M or 3 x M accumulators (at most 24 of the 32 vector registers). MB is
 * a compile-time row count (the switches below), so the loops over rows unroll. Measured on the
 * project's 2-core Zen 4 VM against oneDNN (its small-M GEMM at 2-3 rows, its packed-weight GEMM at
 * 8): ~1.4x at 2 rows, ~1.1x at 3; at 8 rows, where the arithmetic rather than the weight stream
 * bounds it, 131-137 GFLOP/s against oneDNN's packed 103-110 (and 117-119 for two rows at a time:
 * three weight rows per eight loads of X use each load for more multiply-adds). Each X vector is held
 * in a register for its R multiply-adds: left alone, GCC folds its load into every one of them (R
 * loads instead of one, 27 where 11 do), and the kernel was load-bound: with the register, ~160
 * GFLOP/s at 8 rows over phi3-2l's weights on huge pages (1.10x interleaved; the machine's peak is ~234). */
/* R weight rows (2 or 3, read side by side) times MB rows of X; R and MB compile-time constants */
static inline __attribute__((always_inline)) void weight_rows(const float *const w[3], const float *X, int64_t ldx,
                                                              int64_t K, int64_t prefetch, float *const y[3],
                                                              int64_t ldy, const int R, const int MB) {
    v16 a[3][8];
    for (int r = 0; r < R; r++)
        for (int m = 0; m < MB; m++) a[r][m] = (v16){0};
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
        v16 wk[3];
        for (int r = 0; r < R; r++) {
            if (prefetch) __builtin_prefetch(w[r] + k + prefetch, 0, 1);
            wk[r] = load16(w[r] + k);
        }
        for (int m = 0; m < MB; m++) {
            v16 xk = load16(X + m * ldx + k);
            __asm__("" : "+v"(xk)); /* in a register: else GCC folds the load into each of the R FMAs (R loads) */
            for (int r = 0; r < R; r++) a[r][m] += wk[r] * xk;
        }
    }
    for (int r = 0; r < R; r++)
        for (int m = 0; m < MB; m++) {
            float s = hsum(a[r][m]);
            for (int64_t i = k; i < K; i++) s += w[r][i] * X[m * ldx + i];
            y[r][m * ldy] = s;
        }
}

/* 2 weight rows at a time for 1-3 rows of X, 3 for 4-8 */
static void some_rows(const float *const w[3], const float *X, int64_t ldx, int64_t K, int64_t prefetch,
                      float *const y[3], int64_t ldy, int MB) {
    switch (MB) {
    case 1: weight_rows(w, X, ldx, K, prefetch, y, ldy, 2, 1); break;
    case 2: weight_rows(w, X, ldx, K, prefetch, y, ldy, 2, 2); break;
    case 3: weight_rows(w, X, ldx, K, prefetch, y, ldy, 2, 3); break;
    case 4: weight_rows(w, X, ldx, K, prefetch, y, ldy, 3, 4); break;
    case 5: weight_rows(w, X, ldx, K, prefetch, y, ldy, 3, 5); break;
    case 6: weight_rows(w, X, ldx, K, prefetch, y, ldy, 3, 6); break;
    case 7: weight_rows(w, X, ldx, K, prefetch, y, ldy, 3, 7); break;
    default: weight_rows(w, X, ldx, K, prefetch, y, ldy, 3, 8); break;
    }
}

/* Y[m, n] = sum_k W[n, k] * X[m, k] for M rows of X (ldx floats apart; Y rows ldy apart) over the calling
 * team: the GEMV's chunks taken in turn, each weight row read once per 8 rows of X (a worksharing
 * loop, so called inside a parallel region; it ends with the team's barrier) */
static inline void team_gemm_rows(const float *W, int64_t ldw, const float *X, int64_t ldx, float *Y, int64_t ldy,
                                  int64_t N, int64_t K, int64_t M, int nthreads, int64_t prefetch) {
    const int64_t chunk = chunk_rows(N, K, nthreads), nchunks = (N + chunk - 1) / chunk;
#pragma omp for schedule(dynamic, 1)
    for (int64_t c = 0; c < nchunks; c++) {
        const int64_t lo = c * chunk, hi = lo + chunk < N ? lo + chunk : N;
        for (int64_t m0 = 0; m0 < M; m0 += 8) { /* at most 8 rows of X per pass over the chunk */
            const int MB = (int)(M - m0 < 8 ? M - m0 : 8), R = MB >= 4 ? 3 : 2;
            const float *Xm = X + m0 * ldx;
            float *Ym = Y + m0 * ldy;
            const int64_t part = (hi - lo) / R;
            for (int64_t i = 0; i < part; i++) { /* row i of each of the chunk's R parts */
                const float *w[3];
                float *y[3];
                for (int r = 0; r < R; r++) {
                    w[r] = W + (lo + r * part + i) * ldw;
                    y[r] = Ym + lo + r * part + i;
                }
                some_rows(w, Xm, ldx, K, prefetch, y, ldy, MB);
            }
            for (int64_t n = lo + R * part; n < hi; n++) { /* the chunk's last rows (each computed R times into its place) */
                const float *w[3] = {W + n * ldw, W + n * ldw, W + n * ldw};
                float *y[3] = {Ym + n, Ym + n, Ym + n};
                some_rows(w, Xm, ldx, K, prefetch, y, ldy, MB);
            }
        }
    }
}

/* Y = X W^T for M rows over the calling team: the one-row GEMV (prefetch1 floats ahead) for one row,
 * the few-row kernel (prefetchM ahead) for more */
static inline void team_matmul(const float *W, int64_t ldw, const float *X, int64_t ldx, float *Y, int64_t ldy, int64_t N,
                               int64_t K, int64_t M, int nthreads, int64_t prefetch1, int64_t prefetchM) {
    if (M == 1)
        team_gemv(W, ldw, X, Y, N, K, nthreads, prefetch1);
    else
        team_gemm_rows(W, ldw, X, ldx, Y, ldy, N, K, M, nthreads, prefetchM);
}
