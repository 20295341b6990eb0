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
#include <string.h>

#include "gemv.h" /* v16, load16 */

#define TASKS 4
/* the vector path prefetches each head's keys and values AHEAD keys ahead, into L2 (prefetcht1): it
 * reads 16 keys of one head, then of the next, and the hardware prefetchers alone fall behind those
 * bursts (0.68x of the key-by-key generic path over a cold cache; with the prefetch 1.05x, and 1.6x
 * with the cache warm; 8-32 keys ahead and L1 / L2 / non-temporal targets measured, on the project's VM) */
#define AHEAD 16

typedef int32_t vi16 __attribute__((vector_size(64)));
typedef double vd8 __attribute__((vector_size(64)));

static inline v16 select16(vi16 mask, v16 yes, v16 no) { /* lane-wise mask ? yes : no (mask lanes 0 or -1) */
    vi16 y, n;
    memcpy(&y, &yes, sizeof y);
    memcpy(&n, &no, sizeof n);
    const vi16 r = (y & mask) | (n & ~mask);
    v16 out;
    memcpy(&out, &r, sizeof out);
    return out;
}

/* exp(x) for x <= 0 (a score minus its row's maximum), 16 lanes at a time: x = n ln2 + f, |f| <= ln2/2,
 * e^f by the minimax polynomial of Cephes' expf (~1 ulp), times 2^n through the exponent bits; 0 below
 * -87 (and for -inf). Vectorised, where the C library's expf is a call per element. */
static inline v16 exp16(v16 x) {
    const vi16 under = x < -87.0f;
    x = select16(under, (v16){0}, x);
    const vi16 n = -__builtin_convertvector(0.5f - x * 1.44269504088896341f, vi16); /* round(x / ln2) for x <= 0 */
    const v16 nf = __builtin_convertvector(n, v16);
    const v16 f = x - nf * 0.693359375f + nf * 2.12194440e-4f;
    v16 p = 1.9875691500e-4f * f + 1.3981999507e-3f;
    p = p * f + 8.3334519073e-3f;
    p = p * f + 4.1665795894e-2f;
    p = p * f + 1.6666665459e-1f;
    p = p * f + 5.0000001201e-1f;
    p = p * f * f + f + 1.0f;
    const vi16 bits = (n + 127) << 23;
    v16 scale;
    memcpy(&scale, &bits, sizeof scale);
    return select16(under, (v16){0}, p * scale);
}

/* the 16 lane sums of a[0..15], in order, as one vector (a transpose-and-add tree: 15 steps of two
 * shuffles and an add, where 16 separate horizontal sums take ~4x the instructions) */
static inline v16 sums16(v16 a[16]) {
    v16 b[8], c[4], e[2];
    for (int i = 0; i < 8; i++)
        b[i] = __builtin_shufflevector(a[2 * i], a[2 * i + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
               __builtin_shufflevector(a[2 * i], a[2 * i + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    for (int i = 0; i < 4; i++)
        c[i] = __builtin_shufflevector(b[2 * i], b[2 * i + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
               __builtin_shufflevector(b[2 * i], b[2 * i + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
    for (int i = 0; i < 2; i++)
        e[i] = __builtin_shufflevector(c[2 * i], c[2 * i + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29) +
               __builtin_shufflevector(c[2 * i], c[2 * i + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
    return __builtin_shufflevector(e[0], e[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
           __builtin_shufflevector(e[0], e[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}

/* q . k for one key (DV vectors of 16 floats) as a 16-lane vector of partial sums, prefetching the key
 * AHEAD keys on; even and odd vectors in two accumulators (two chains of multiply-adds, not one) */
static inline __attribute__((always_inline)) v16 key_dot(const float *k, const v16 q[], int64_t k_ss, const int DV) {
    v16 a = (v16){0}, b = (v16){0};
    for (int c = 0; c < DV; c++) {
        __builtin_prefetch(k + AHEAD * k_ss + 16 * c, 0, 2);
        if (c % 2 == 0)
            a += q[c] * load16(k + 16 * c);
        else
            b += q[c] * load16(k + 16 * c);
    }
    return a + b;
}

/* o += p * v for one value row (DV vectors), prefetching the row AHEAD keys on */
static inline __attribute__((always_inline)) void value_fma(v16 o[], float p, const float *v, int64_t v_ss, const int DV) {
    for (int c = 0; c < DV; c++) {
        __builtin_prefetch(v + AHEAD * v_ss + 16 * c, 0, 2);
        o[c] += p * load16(v + 16 * c);
    }
}

/* `attend_heads` for one query per KV head (G = 1) and d = 16 DV: queries, keys, values and outputs as
 * DV vectors of 16 floats. Keys 16 at a time per head: their dot products as 16 vector accumulators,
 * summed into one vector of 16 scores (`sums16`). Values 16 keys at a time per head: the 16
 * probabilities as one vector exponential, the output accumulated in registers over the 16 keys (even
 * and odd keys apart, then added into the head's running output). A whole block of 16 keys has a path
 * without per-key tests, so that its accumulators live in registers: with a test per key GCC kept them
 * in memory, and every multiply-add waited on the previous one's store (~80 GB/s of keys and values
 * from L3 before, for ~20 GB/s per core of DRAM bandwidth to overlap with). */
static inline __attribute__((always_inline)) void attend_heads_vec(int64_t n, const float *const kh[], const float *const vh[],
                                                                   const float *const qg[], float *const sc[],
                                                                   const float *const bb[], float *const og[], int64_t S,
                                                                   int64_t k_ss, int64_t v_ss, float scale, const int DV) {
    v16 mx[TASKS];
    for (int64_t i = 0; i < n; i++) mx[i] = (v16){0} - INFINITY;
    for (int64_t s0 = 0; s0 < S; s0 += 16) {
        const int64_t m = S - s0 < 16 ? S - s0 : 16;
        for (int64_t i = 0; i < n; i++) {
            v16 q[8], acc[16];
            for (int c = 0; c < DV; c++) q[c] = load16(qg[i] + 16 * c);
            const float *k0 = kh[i] + s0 * k_ss;
            v16 x;
            if (m == 16) {
                for (int t = 0; t < 16; t++) acc[t] = key_dot(k0 + t * k_ss, q, k_ss, DV);
                x = sums16(acc) * scale;
                if (bb[i]) x += load16(bb[i] + s0);
                memcpy(sc[i] + s0, &x, sizeof x);
            } else {
                for (int t = 0; t < 16; t++) acc[t] = t < m ? key_dot(k0 + t * k_ss, q, k_ss, DV) : (v16){0};
                x = sums16(acc) * scale;
                if (bb[i])
                    for (int t = 0; t < m; t++) x[t] += bb[i][s0 + t];
                for (int t = m; t < 16; t++) x[t] = -INFINITY;
                memcpy(sc[i] + s0, &x, m * sizeof(float));
            }
            mx[i] = select16(x > mx[i], x, mx[i]);
        }
    }
    float top[TASKS];
    for (int64_t i = 0; i < n; i++) {
        top[i] = -INFINITY;
        for (int t = 0; t < 16; t++) top[i] = mx[i][t] > top[i] ? mx[i][t] : top[i];
    }
    v16 o[TASKS][8];
    vd8 sum[TASKS]; /* in double: S may be 100k terms */
    for (int64_t i = 0; i < n; i++) {
        sum[i] = (vd8){0};
        for (int c = 0; c < DV; c++) o[i][c] = (v16){0};
    }
    for (int64_t s0 = 0; s0 < S; s0 += 16) {
        const int64_t m = S - s0 < 16 ? S - s0 : 16;
        for (int64_t i = 0; i < n; i++) {
            v16 x;
            if (m == 16)
                x = load16(sc[i] + s0) - top[i];
            else
                for (int t = 0; t < 16; t++) x[t] = t < m ? sc[i][s0 + t] - top[i] : -INFINITY;
            const v16 p = exp16(x);
            sum[i] += __builtin_convertvector(__builtin_shufflevector(p, p, 0, 1, 2, 3, 4, 5, 6, 7), vd8) +
                      __builtin_convertvector(__builtin_shufflevector(p, p, 8, 9, 10, 11, 12, 13, 14, 15), vd8);
            const float *v0 = vh[i] + s0 * v_ss;
            v16 even[8], odd[8];
            for (int c = 0; c < DV; c++) even[c] = odd[c] = (v16){0};
            if (m == 16)
                for (int t = 0; t < 16; t += 2) {
                    value_fma(even, p[t], v0 + t * v_ss, v_ss, DV);
                    value_fma(odd, p[t + 1], v0 + (t + 1) * v_ss, v_ss, DV);
                }
            else
                for (int t = 0; t < m; t++) value_fma(even, p[t], v0 + t * v_ss, v_ss, DV);
            for (int c = 0; c < DV; c++) o[i][c] += even[c] + odd[c];
        }
    }
    for (int64_t i = 0; i < n; i++) {
        double total = 0.0;
        for (int t = 0; t < 8; t++) total += sum[i][t];
        const float inv = (float)(1.0 / total);
        for (int c = 0; c < DV; c++) {
            const v16 r = o[i][c] * inv;
            memcpy(og[i] + 16 * c, &r, sizeof r);
        }
    }
}

static inline float dot(const float *restrict a, const float *restrict b, int64_t d) {
    float acc = 0.f;
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < d; j++) acc += a[j] * b[j];
    return acc;
}

/* For head i < n: kh[i]/vh[i] its keys/values (S rows), qg[i] its G queries (G x d, contiguous), sc[i]
 * scratch of G x S scores, bb[i] NULL or S additive biases, og[i] its G outputs (G x d). */
static inline void attend_heads_any(int64_t n, const float *const kh[], const float *const vh[], const float *const qg[],
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
    /* max of each score row; the exponentials are taken in the pass over the values, where they
     * overlap the values' stream (a pass of their own left the memory idle meanwhile) */
    float mx[TASKS * (G > 0 ? G : 1)];
    double sum[TASKS * (G > 0 ? G : 1)]; /* in double: S may be 100k terms */
    for (int64_t i = 0; i < n; i++)
        for (int64_t g = 0; g < G; g++) {
            const float *row = sc[i] + g * S;
            float m = -INFINITY;
            for (int64_t s = 0; s < S; s++) m = row[s] > m ? row[s] : m;
            mx[i * G + g] = m;
            sum[i * G + g] = 0.0;
            float *o = og[i] + g * d;
            for (int64_t j = 0; j < d; j++) o[j] = 0.f;
        }
    for (int64_t s = 0; s < S; s++)
        for (int64_t i = 0; i < n; i++) {
            const float *vs = vh[i] + s * v_ss;
            for (int64_t g = 0; g < G; g++) {
                const float p = expf(sc[i][g * S + s] - mx[i * G + g]);
                sum[i * G + g] += p;
                float *o = og[i] + g * d;
#pragma omp simd
                for (int64_t j = 0; j < d; j++) o[j] += p * vs[j];
            }
        }
    for (int64_t i = 0; i < n; i++)
        for (int64_t g = 0; g < G; g++) {
            const float inv = (float)(1.0 / sum[i * G + g]);
            float *o = og[i] + g * d;
            for (int64_t j = 0; j < d; j++) o[j] *= inv;
        }
}

/* (row, KV head) tasks per group a thread runs side by side: TASKS, fewer when there are too few tasks
 * to give every one of `nthreads` threads a group */
static inline int64_t tasks_per_group(int64_t tasks, int nthreads) {
    const int64_t per = (tasks + nthreads - 1) / (nthreads > 0 ? nthreads : 1);
    return per > TASKS ? TASKS : per < 1 ? 1 : per;
}

/* the vector path where it applies (one query per KV head, d a multiple of 16 up to 128), else the generic one */
static inline void attend_heads(int64_t n, const float *const kh[], const float *const vh[], const float *const qg[],
                                float *const sc[], const float *const bb[], float *const og[], int64_t S, int64_t d,
                                int64_t G, int64_t k_ss, int64_t v_ss, float scale) {
    if (G == 1 && d % 16 == 0 && d >= 16 && d <= 128) switch (d / 16) {
        case 1: attend_heads_vec(n, kh, vh, qg, sc, bb, og, S, k_ss, v_ss, scale, 1); return;
        case 2: attend_heads_vec(n, kh, vh, qg, sc, bb, og, S, k_ss, v_ss, scale, 2); return;
        case 3: attend_heads_vec(n, kh, vh, qg, sc, bb, og, S, k_ss, v_ss, scale, 3); return;
        case 4: attend_heads_vec(n, kh, vh, qg, sc, bb, og, S, k_ss, v_ss, scale, 4); return;
        case 5: attend_heads_vec(n, kh, vh, qg, sc, bb, og, S, k_ss, v_ss, scale, 5); return;
        case 6: attend_heads_vec(n, kh, vh, qg, sc, bb, og, S, k_ss, v_ss, scale, 6); return;
        case 7: attend_heads_vec(n, kh, vh, qg, sc, bb, og, S, k_ss, v_ss, scale, 7); return;
        default: attend_heads_vec(n, kh, vh, qg, sc, bb, og, S, k_ss, v_ss, scale, 8); return;
    }
    attend_heads_any(n, kh, vh, qg, sc, bb, og, S, d, G, k_ss, v_ss, scale);
}
