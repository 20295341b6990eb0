/* Attention of one query per row over a KV cache, float32, for the CPU decode step. Compiled on first
 * use by model/native.py together with gemv.c.
 *
 * out[b, h] = softmax(scale * q[b, h] . K[b, h/G]^T + bias[b]) V[b, h/G], G = H / KVH query heads per
 * KV head (GQA without repeating the keys). One task per (row, KV head): its G queries read each key
 * and value once, front to back (a cache head is S rows of d floats at stride `ss`), so a decode
 * step reads the cache as two sequential streams per task, where torch's batched matmuls over the
 * transposed key view read it at a fraction of the memory's rate on this project's machine.
 * Softmax in float32 as the eager path: max-subtracted exponentials, normalised after the weighted sum
 * (the same terms, summed in another order: float32 rounding apart, it equals softmax(...) @ V).
 * `scores` is scratch of B * H * S floats. `bias` (additive, -inf or a large negative on padding) is
 * NULL or one row of S floats per batch row at stride `bias_sb`. Strides are in floats. */
#include <math.h>
#include <stdint.h>

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
    const int64_t G = H / KVH;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (int64_t task = 0; task < B * KVH; task++) {
        const int64_t b = task / KVH, kvh = task % KVH;
        const float *kh = k + b * k_sb + kvh * k_sh, *vh = v + b * v_sb + kvh * v_sh;
        const float *qg = q + (b * H + kvh * G) * d; /* the G query heads of this KV head */
        float *sc = scores + (b * H + kvh * G) * S;   /* G rows of S scores */
        const float *bb = bias ? bias + b * bias_sb : 0;
        for (int64_t s = 0; s < S; s++) {
            const float *ks = kh + s * k_ss;
            for (int64_t g = 0; g < G; g++) {
                float x = dot(qg + g * d, ks, d) * scale;
                sc[g * S + s] = bb ? x + bb[s] : x;
            }
        }
        float inv[G > 0 ? G : 1];
        for (int64_t g = 0; g < G; g++) {
            float *row = sc + g * S, m = -INFINITY;
            double sum = 0.0; /* in double: S may be 100k terms */
            for (int64_t s = 0; s < S; s++) m = row[s] > m ? row[s] : m;
            for (int64_t s = 0; s < S; s++) {
                row[s] = expf(row[s] - m);
                sum += row[s];
            }
            inv[g] = (float)(1.0 / sum);
            float *o = out + (b * H + kvh * G + g) * d;
            for (int64_t j = 0; j < d; j++) o[j] = 0.f;
        }
        for (int64_t s = 0; s < S; s++) {
            const float *vs = vh + s * v_ss;
            for (int64_t g = 0; g < G; g++) {
                const float p = sc[g * S + s];
                float *o = out + (b * H + kvh * G + g) * d;
#pragma omp simd
                for (int64_t j = 0; j < d; j++) o[j] += p * vs[j];
            }
        }
        for (int64_t g = 0; g < G; g++) {
            float *o = out + (b * H + kvh * G + g) * d;
            for (int64_t j = 0; j < d; j++) o[j] *= inv[g];
        }
    }
}
