/* Attention of one query per row over a KV cache, float32, for the CPU decode step (the per-head
 * kernel: attend.h). Compiled on first use by model/native.py together with gemv.c.
 *
 * out[b, h] = softmax(scale * q[b, h] . K[b, h/G]^T + bias[b]) V[b, h/G], G = H / KVH query heads per
 * KV head (GQA without repeating the keys). One task per (row, KV head); a thread runs TASKS tasks side
 * by side. `scores` is scratch of B * H * S floats. `bias` (additive, -inf or a large negative on
 * padding) is NULL or one row of S floats per batch row at stride `bias_sb`. Strides are in floats. */
#include "attend.h"

void phi3v_attend_one_f32(const float *q, const float *k, const float *v, const float *bias, float *out,
                          float *scores, int64_t B, int64_t H, int64_t KVH, int64_t S, int64_t d,
                          int64_t k_sb, int64_t k_sh, int64_t k_ss, int64_t v_sb, int64_t v_sh, int64_t v_ss,
                          int64_t bias_sb, float scale, int nthreads) {
    const int64_t G = H / KVH, NT = B * KVH;
    const int64_t per = tasks_per_group(NT, nthreads), NG = (NT + per - 1) / per;
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
        attend_heads(n, kh, vh, qg, sc, bb, og, S, d, G, k_ss, v_ss, scale);
    }
}
