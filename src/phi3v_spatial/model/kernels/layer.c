/* One decoder layer of the CPU decode step for one row (batch 1), float32, in one call: the layer's four
 * weight streams (gemv.h), its attention (attend.h) and everything between them, inside one OpenMP
 * parallel region; at the end of the file the step's final norm and lm_head, also in one call.
 * Compiled on first use by model/native.py together with gemv.c and attend.c.
 *
 * Why fused: at batch 1 the step is a stream over the weights, and whatever runs between the weight
 * matmuls is time the memory is not streamed. Through torch each layer is ~14 small ops (norms, RoPE,
 * cache writes, SiLU, residual adds) of ~8-10 us each plus four kernel calls with their own thread
 * fan-out. Here the small work is a few microseconds between barriers of the same thread team.
 * Measured interleaved over phi3-2l (Phi-3's layer shapes, 775 cached tokens, the project's 2-core VM):
 * the step's time outside its GEMVs fell from 1.3-2.7 ms to 0.4-1.4 ms, the step 1.04-1.14x faster in
 * the VM's fast memory phase.
 *
 * The math is the decoder's (language.py), in the decode step's order (decode.py):
 *   h = rms_norm(x) * ln1; [q | k | v] = Wqkv h; RoPE on q and k (sin with rotate-half's sign folded
 *   in: x * cos + roll(x, d/2) * sin); k, v written to cache slot `slot`; attention of q over slots
 *   start..slot (+ bias); x += Wo attn; h = rms_norm(x) * ln2; [g | u] = Wgu h; x += Wd (silu(g) * u).
 * Norms sum their squares in double; SiLU is g / (1 + exp(-g)). Results agree with the torch path
 * to float32 rounding.
 *
 * Cache: kc/vc point at this layer's cache for the row (slot 0 of KV head 0); heads `k_sh`, slots
 * `k_ss` floats apart (values likewise). `bias` is NULL or the additive bias of slots start..slot.
 * `scratch` holds D + (H + 2 KVH) d + 2 H d + D + 3 I + H (slot + 1 - start) floats. */
#include "attend.h"
#include "gemv.h"

static inline void rms_norm(const float *x, const float *w, float eps, int64_t D, float *out) {
    double ss = 0.0;
    for (int64_t j = 0; j < D; j++) ss += (double)x[j] * x[j];
    const float r = 1.0f / sqrtf((float)(ss / (double)D) + eps);
    for (int64_t j = 0; j < D; j++) out[j] = (x[j] * r) * w[j];
}

static inline void rope(const float *in, const float *cos, const float *sin, int64_t d, float *out) {
    const int64_t half = d / 2;
    for (int64_t j = 0; j < d; j++) out[j] = in[j] * cos[j] + in[j < half ? j + half : j - half] * sin[j];
}

void phi3v_layer_one_f32(float *x, const float *ln1, float eps1, const float *ln2, float eps2,
                         const float *Wqkv, int64_t ld_qkv, const float *Wo, int64_t ld_o,
                         const float *Wgu, int64_t ld_gu, const float *Wd, int64_t ld_d,
                         const float *cos, const float *sin, float *kc, float *vc,
                         int64_t k_sh, int64_t k_ss, int64_t v_sh, int64_t v_ss, int64_t slot, int64_t start,
                         const float *bias, int64_t D, int64_t H, int64_t KVH, int64_t d, int64_t I, float scale,
                         float *scratch, int nthreads, int64_t prefetch) {
    const int64_t G = H / KVH, S = slot + 1 - start, NQKV = (H + 2 * KVH) * d;
    float *h = scratch, *qkv = h + D, *q = qkv + NQKV, *attn = q + H * d, *o = attn + H * d, *gu = o + D,
          *act = gu + 2 * I, *scores = act + I;
    /* KV heads per attention task: TASKS side by side, fewer when too few to give every thread one */
    int64_t per = (KVH + nthreads - 1) / (nthreads > 0 ? nthreads : 1);
    per = per > TASKS ? TASKS : per < 1 ? 1 : per;
    const int64_t ngroups = (KVH + per - 1) / per;
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
#pragma omp single
        rms_norm(x, ln1, eps1, D, h);
        team_gemv(Wqkv, ld_qkv, h, qkv, NQKV, D, nthreads, prefetch);
#pragma omp for schedule(dynamic, 1)
        for (int64_t grp = 0; grp < ngroups; grp++) {
            const int64_t j0 = grp * per, n = KVH - j0 < per ? KVH - j0 : per;
            const float *kh[TASKS], *vh[TASKS], *qg[TASKS], *bb[TASKS];
            float *sc[TASKS], *og[TASKS];
            for (int64_t i = 0; i < n; i++) {
                const int64_t j = j0 + i;
                float *kdst = kc + j * k_sh + slot * k_ss, *vdst = vc + j * v_sh + slot * v_ss;
                const float *vsrc = qkv + (H + KVH + j) * d;
                rope(qkv + (H + j) * d, cos, sin, d, kdst);
                for (int64_t t = 0; t < d; t++) vdst[t] = vsrc[t];
                for (int64_t g = 0; g < G; g++) rope(qkv + (j * G + g) * d, cos, sin, d, q + (j * G + g) * d);
                kh[i] = kc + j * k_sh + start * k_ss;
                vh[i] = vc + j * v_sh + start * v_ss;
                qg[i] = q + j * G * d;
                sc[i] = scores + j * G * S;
                bb[i] = bias;
                og[i] = attn + j * G * d;
            }
            attend_heads(n, kh, vh, qg, sc, bb, og, S, d, G, k_ss, v_ss, scale);
        }
        team_gemv(Wo, ld_o, attn, o, D, H * d, nthreads, prefetch);
#pragma omp single
        {
            for (int64_t j = 0; j < D; j++) x[j] += o[j];
            rms_norm(x, ln2, eps2, D, h);
        }
        team_gemv(Wgu, ld_gu, h, gu, 2 * I, D, nthreads, prefetch);
#pragma omp for schedule(static)
        for (int64_t j = 0; j < I; j++) act[j] = gu[j] / (1.0f + expf(-gu[j])) * gu[I + j];
        team_gemv(Wd, ld_d, act, o, D, I, nthreads, prefetch);
#pragma omp for schedule(static)
        for (int64_t j = 0; j < D; j++) x[j] += o[j];
    }
}

/* y = W (rms_norm(x) * nw): the step's final norm and lm_head in one call. `h` is scratch of K floats.
 * (Done by torch, the norm alone took ~0.2 ms: its ops run with the caches cold after the layers.) */
void phi3v_norm_gemv_f32(const float *x, const float *nw, float eps, const float *W, int64_t ldw, float *y, int64_t N,
                         int64_t K, float *h, int nthreads, int64_t prefetch) {
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
#pragma omp single
        rms_norm(x, nw, eps, K, h);
        team_gemv(W, ldw, h, y, N, K, nthreads, prefetch);
    }
}
