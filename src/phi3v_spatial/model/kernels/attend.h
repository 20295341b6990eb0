/* Attention of one query per head over a KV cache, float32: the per-head work shared by attend.c (one
 * attention call) and layer.c (a whole decoder layer per call).
 *
 * `attend_heads` takes n (<= TASKS) KV heads side by side: the G query heads of each read its keys
 * then its values once, front to back (a cache head is S rows of d floats at stride `k_ss`/`v_ss`),
 * where torch's batched matmuls over the transposed key view read the cache at a fraction of the
 * memory's rate on this project's machine. n heads side by side are n sequential streams: more
 * cache-line fills in flight than one head at a time, 1.05-1.2x at 32 heads x 800 keys with 1 or 8
 * rows on the project's 2-core VM, alternating in one process (2 side by side were no faster).
 * Softmax in float32 as the eager path: max-subtracted exponentials, normalised after the weighted sum
 * (the same terms, summed in another order: float32 rounding apart, it equals softmax(...) @ V). */
#pragma once
#include <math.h>
#include <stdint.h>

#define TASKS 4

static inline float dot(const float *restrict a, const float *restrict b, int64_t d) {
    float acc = 0.f;
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < d; j++) acc += a[j] * b[j];
    return acc;
}

/* For head i < n: kh[i]/vh[i] its keys/values (S rows), qg[i] its G queries (G x d, contiguous), sc[i]
 * scratch of G x S scores, bb[i] NULL or S additive biases, og[i] its G outputs (G x d). */
static inline void attend_heads(int64_t n, const float *const kh[], const float *const vh[], const float *const qg[],
                                float *const sc[], const float *const bb[], float *const og[], int64_t S, int64_t d,
                                int64_t G, int64_t k_ss, int64_t v_ss, float scale) {
    for (int64_t s = 0; s < S; s++)
        for (int64_t i = 0; i < n; i++) {
            const float *ks = kh[i] + s * k_ss;
            for (int64_t g = 0; g < G; g++) {
                float x = dot(qg[i] + g * d, ks, d) * scale;
                sc[i][g * S + s] = bb[i] ? x + bb[i][s] : x;
            }
        }
    float inv[TASKS * (G > 0 ? G : 1)];
    for (int64_t i = 0; i < n; i++)
        for (int64_t g = 0; g < G; g++) {
            float *row = sc[i] + g * S, m = -INFINITY;
            double sum = 0.0; /* in double: S may be 100k terms */
            for (int64_t s = 0; s < S; s++) m = row[s] > m ? row[s] : m;
            for (int64_t s = 0; s < S; s++) {
                row[s] = expf(row[s] - m);
                sum += row[s];
            }
            inv[i * G + g] = (float)(1.0 / sum);
            float *o = og[i] + g * d;
            for (int64_t j = 0; j < d; j++) o[j] = 0.f;
        }
    for (int64_t s = 0; s < S; s++)
        for (int64_t i = 0; i < n; i++) {
            const float *vs = vh[i] + s * v_ss;
            for (int64_t g = 0; g < G; g++) {
                const float p = sc[i][g * S + s];
                float *o = og[i] + g * d;
#pragma omp simd
                for (int64_t j = 0; j < d; j++) o[j] += p * vs[j];
            }
        }
    for (int64_t i = 0; i < n; i++)
        for (int64_t g = 0; g < G; g++) {
            float *o = og[i] + g * d;
            for (int64_t j = 0; j < d; j++) o[j] *= inv[i * G + g];
        }
}
