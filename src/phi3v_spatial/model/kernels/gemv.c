/* One-row float32 GEMV for the CPU decode step (one matmul per call; the kernel and why it is
 * hand-written: gemv.h), and at the end its sibling for 2-8 rows. Compiled on first use by model/native.py. */
#include "gemv.h"

void phi3v_gemv_f32(const float *W, const float *x, float *y, int64_t N, int64_t K, int64_t ldw,
                    int nthreads, int64_t prefetch) {
#pragma omp parallel num_threads(nthreads) if (nthreads > 1 && N > chunk_rows(N, K, nthreads))
    team_gemv(W, ldw, x, y, N, K, nthreads, prefetch);
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

void phi3v_gemm_rows_f32(const float *W, const float *X, float *Y, int64_t N, int64_t K, int64_t ldw, int64_t M,
                         int64_t ldx, int64_t ldy, int nthreads, int64_t prefetch) {
    const int64_t chunk = chunk_rows(N, K, nthreads), nchunks = (N + chunk - 1) / chunk;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads) if (nthreads > 1 && nchunks > 1)
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
