/* One decoder layer of the CPU decode step for M rows (a batch of 1-8), float32, in one call: the layer's
 * four weight matmuls (gemv.h: the one-row GEMV for one row, the few-row kernel for more), its
 * attention (attend.h) and everything between them, inside one OpenMP parallel region; at the end of
 * the file the step's final norm and lm_head, also in one call.
 * Compiled on first use by model/native.py together with gemv.c and attend.c.
 *
 * Why fused: at batch 1 the step is a stream over the weights, and whatever runs between the weight
 * matmuls is time the memory is not streamed. Through torch each layer is ~14 small ops (norms, RoPE,
 * cache writes, SiLU, residual adds) of ~8-10 us each plus four kernel calls with their own thread
 * fan-out. Here the small work is a few microseconds between barriers of the same thread team.
 * Measured interleaved over phi3-2l (Phi-3's layer shapes, 775 cached tokens, the project's 2-core VM):
 * the step's time outside its GEMVs fell from 1.3-2.7 ms to 0.4-1.4 ms, the step 1.04-1.14x faster in
 * the VM's fast memory phase. At 8 rows the torch ops between the few-row products (norms alone
 * ~0.13 ms each with the caches cold) cost more: 8-row generations 1.24x faster (median of 6
 * alternating pairs, 0.96-1.47x).
 *
 * The math is the decoder's (language.py), in the decode step's order (decode.py):
 *   h = rms_norm(x) * ln1; [q | k | v] = Wqkv h; RoPE on q and k (sin with rotate-half's sign folded
 *   in: x * cos + roll(x, d/2) * sin); k, v written to cache slot `slot`; attention of q over slots
 *   start..slot (+ bias); x += Wo attn; h = rms_norm(x) * ln2; [g | u] = Wgu h; x += Wd (silu(g) * u).
 * Norms sum their squares in double; SiLU is g / (1 + exp(-g)). Results agree with the torch path
 * to float32 rounding.
 *
 * Rows: x is M x D (contiguous), cos/sin M x d (each row's position), updated in place. Cache: kc/vc
 * point at this layer's cache (row 0, KV head 0, slot 0); rows `k_sb`, heads `k_sh`, slots `k_ss`
 * floats apart (values likewise). `bias` is NULL or, per row (`bias_sb` apart), the additive bias of
 * slots start..slot. `scratch` holds M (2 D + (H + 2 KVH) d + 2 H d + 3 I + H (slot + 1 - start))
 * floats. All rows write slot `slot` and attend slots start..slot (left padding keeps them aligned). */
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

/* rows 0..M-1 of h = rms_norm(x) * w, spread over the team (a worksharing loop) */
static inline void team_norm(const float *x, const float *w, float eps, int64_t D, int64_t M, float *h) {
#pragma omp for schedule(static)
    for (int64_t m = 0; m < M; m++) rms_norm(x + m * D, w, eps, D, h + m * D);
}

void phi3v_layer_rows_f32(float *x, int64_t M, const float *ln1, float eps1, const float *ln2, float eps2,
                          const float *Wqkv, int64_t ld_qkv, const float *Wo, int64_t ld_o,
                          const float *Wgu, int64_t ld_gu, const float *Wd, int64_t ld_d,
                          const float *cos, const float *sin, float *kc, float *vc, int64_t k_sb, int64_t k_sh,
                          int64_t k_ss, int64_t v_sb, int64_t v_sh, int64_t v_ss, int64_t slot, int64_t start,
                          const float *bias, int64_t bias_sb, int64_t D, int64_t H, int64_t KVH, int64_t d, int64_t I,
                          float scale, float *scratch, int nthreads, int64_t prefetch1, int64_t prefetchM) {
    const int64_t G = H / KVH, S = slot + 1 - start, NQKV = (H + 2 * KVH) * d, NT = M * KVH;
    float *h = scratch, *qkv = h + M * D, *q = qkv + M * NQKV, *attn = q + M * H * d, *o = attn + M * H * d,
          *gu = o + M * D, *act = gu + M * 2 * I, *scores = act + M * I;
    const int64_t per = tasks_per_group(NT, nthreads), ngroups = (NT + per - 1) / per;
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        team_norm(x, ln1, eps1, D, M, h);
        team_matmul(Wqkv, ld_qkv, h, D, qkv, NQKV, NQKV, D, M, nthreads, prefetch1, prefetchM);
#pragma omp for schedule(dynamic, 1)
        for (int64_t grp = 0; grp < ngroups; grp++) {
            const int64_t t0 = grp * per, n = NT - t0 < per ? NT - t0 : per;
            const float *kh[TASKS], *vh[TASKS], *qg[TASKS], *bb[TASKS];
            float *sc[TASKS], *og[TASKS];
            for (int64_t i = 0; i < n; i++) {
                const int64_t b = (t0 + i) / KVH, j = (t0 + i) % KVH;
                const float *row = qkv + b * NQKV, *cb = cos + b * d, *sb = sin + b * d;
                float *kdst = kc + b * k_sb + j * k_sh + slot * k_ss, *vdst = vc + b * v_sb + j * v_sh + slot * v_ss;
                const float *vsrc = row + (H + KVH + j) * d;
                rope(row + (H + j) * d, cb, sb, d, kdst);
                for (int64_t t = 0; t < d; t++) vdst[t] = vsrc[t];
                for (int64_t g = 0; g < G; g++) rope(row + (j * G + g) * d, cb, sb, d, q + (b * H + j * G + g) * d);
                kh[i] = kc + b * k_sb + j * k_sh + start * k_ss;
                vh[i] = vc + b * v_sb + j * v_sh + start * v_ss;
                qg[i] = q + (b * H + j * G) * d;
                sc[i] = scores + (b * H + j * G) * S;
                bb[i] = bias ? bias + b * bias_sb : 0;
                og[i] = attn + (b * H + j * G) * d;
            }
            attend_heads(n, kh, vh, qg, sc, bb, og, S, d, G, k_ss, v_ss, scale);
        }
        team_matmul(Wo, ld_o, attn, H * d, o, D, D, H * d, M, nthreads, prefetch1, prefetchM);
#pragma omp for schedule(static)
        for (int64_t j = 0; j < M * D; j++) x[j] += o[j];
        team_norm(x, ln2, eps2, D, M, h);
        team_matmul(Wgu, ld_gu, h, D, gu, 2 * I, 2 * I, D, M, nthreads, prefetch1, prefetchM);
#pragma omp for schedule(static)
        for (int64_t j = 0; j < M * I; j++) {
            const int64_t m = j / I, i = j % I;
            const float g = gu[m * 2 * I + i];
            act[j] = g / (1.0f + expf(-g)) * gu[m * 2 * I + I + i];
        }
        team_matmul(Wd, ld_d, act, I, o, D, D, I, M, nthreads, prefetch1, prefetchM);
#pragma omp for schedule(static)
        for (int64_t j = 0; j < M * D; j++) x[j] += o[j];
    }
}

/* y = W (rms_norm(x) * nw) for M rows of x (K floats each; y rows N apart): the step's final norm and
 * lm_head in one call. `h` is scratch of M K floats. (Done by torch, the norm alone took ~0.2 ms: its
 * ops run with the caches cold after the layers.) */
void phi3v_norm_rows_f32(const float *x, int64_t M, const float *nw, float eps, const float *W, int64_t ldw, float *y,
                         int64_t N, int64_t K, float *h, int nthreads, int64_t prefetch1, int64_t prefetchM) {
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        team_norm(x, nw, eps, K, M, h);
        team_matmul(W, ldw, h, K, y, N, N, K, M, nthreads, prefetch1, prefetchM);
    }
}
