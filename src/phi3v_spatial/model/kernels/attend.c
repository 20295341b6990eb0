/* Attention of one query per row over a KV cache, float32, for the CPU decode step. Compiled on first
 * use by model/native.py together with gemv.c.
 *
 * out[b, h] = softmax(scale * q[b, h] . K[b, h/G]^T + bias[b]) V[b, h/G], G = H / KVH query heads per
 * KV head (GQA without repeating the keys). One task per (row, KV head): its G queries read each key
 * and value once, front to back (a cache head is S rows of d floats at stride `ss`), where torch's
 * batched matmuls over the transposed key view read the cache at a fraction of the memory's rate on
 * this project's machine. A thread runs TASKS tasks side by side (their keys, then their values, as
 * TASKS sequential streams): more cache-line fills in flight than one task at a time, 1.05-1.2x at
 * 32 heads x 800 keys with 1 or 8 rows on the project's 2-core VM, alternating in one process (2 side
 * by side were no faster).
 * Softmax in float32 as the eager path: max-subtracted exponentials, normalised after the weighted sum
 * (the same terms, summed in another order: float32 rounding apart, it equals softmax(...) @ V).
 * `scores` is scratch of B * H * S floats. `bias` (additive, -inf or a large negative on padding) is
 * NULL or one row of S floats per batch row at stride `bias_sb`. Strides are in floats. */
#include <math.h>
#include <stdint.h>

#define TASKS 4

static inline float dot(const float *restrict a, const float *restrict b, int64_t d) {
    float acc = 0.f;
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < d; j++) acc += a[j] * b[j];
    return acc;
}

void phi3v_attend_one_f32(const float *q, const float *k, const float *v, const float *bias, float *out,
                          float *scores, int64_t B, int64_t H, int64_t KVH, int64_t S, int64_t d,
                          int64_t k_sb, int64_t k_sh, int64_t k_ss, int64_t v_sb, int64_t v_sh, int64_t v_ss,
                          int64_t bias_sb, float scale, int nthreads) {
    const int64_t G = H / KVH, NT = B * KVH;
    /* TASKS per group, fewer when there are too few tasks to give every thread a group */
    int64_t per = (NT + nthreads - 1) / (nthreads > 0 ? nthreads : 1);
    per = per > TASKS ? TASKS : per < 1 ? 1 : per;
    const int64_t NG = (NT + per - 1) / per;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (int64_t grp = 0; grp < NG; grp++) {
        const int64_t t0 = grp * per, n = NT - t0 < per ? NT - t0 : per;
        const float *kh[TASKS], *vh[TASKS], *qg[TASKS], *bb[TASKS];
        float *sc[TASKS], *og[TASKS];
        for (int64_t i = 0; i < n; i++) {
            const int64_t task = t0 + i, b = task / KVH, kvh = task % KVH;
            kh[i] = k + b * k_sb + kvh * k_sh;
            vh[i] = v + b * v_sb + kvh * v_sh;
            qg[i] = q + (b * H + kvh * G) * d; /* the G query heads of this KV head */
            sc[i] = scores + (b * H + kvh * G) * S; /* G rows of S scores */
            bb[i] = bias ? bias + b * bias_sb : 0;
            og[i] = out + (b * H + kvh * G) * d;
        }
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
}
