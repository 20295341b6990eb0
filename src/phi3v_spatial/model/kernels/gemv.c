/* One-row float32 GEMV for the CPU decode step (one matmul per call; the kernel and why it is
 * hand-written: gemv.h), and at the end its sibling for 2-8 rows. Compiled on first use by model/native.py. */
#include "gemv.h"

void phi3v_gemv_f32(const float *W, const float *x, float *y, int64_t N, int64_t K, int64_t ldw,
                    int nthreads, int64_t prefetch) {
#pragma omp parallel num_threads(nthreads) if (nthreads > 1 && N > chunk_rows(N, K, nthreads))
    team_gemv(W, ldw, x, y, N, K, nthreads, prefetch);
}

/* A few rows at once (the decode step of a small batch): the few-row kernel of gemv.h */
void phi3v_gemm_rows_f32(const float *W, const float *X, float *Y, int64_t N, int64_t K, int64_t ldw, int64_t M,
                         int64_t ldx, int64_t ldy, int nthreads, int64_t prefetch) {
#pragma omp parallel num_threads(nthreads) if (nthreads > 1 && N > chunk_rows(N, K, nthreads))
    team_gemm_rows(W, ldw, X, ldx, Y, ldy, N, K, M, nthreads, prefetch);
}
