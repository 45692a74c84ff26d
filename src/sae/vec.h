/* vec.h - the row-sized vector kernels of the sparse paths (d floats at a
 * time), built for AVX2 and plain x86-64 (those of the training step and
 * ptopk's for AVX-512 too) and picked at load time.
 * Sums use a fixed set of lanes added in a fixed order: the same inputs give
 * the same bits on a given machine, whatever the thread count. */
#ifndef SAE_VEC_H
#define SAE_VEC_H

#include <stddef.h>
#include <stdint.h>

/* How the kernels here (and rng.c's) are built: AVX2 and plain x86-64,
 * picked at load time. Not AVX-512 by default: it lowers the core's clock for
 * a while, and the scalar selection code around these kernels then runs
 * slower (bare topk encode of a 2048-latent model measured 45% slower with
 * an AVX-512 chunk-max pass than with an AVX2 one). ptopk's passes
 * (vec_sum_sq, vec_ptopk_bound, vec_logistic_key, vec_keys_reaching,
 * vec_absa_reaching), the latent gradients' vec_slice_sums and rng.c's
 * Philox fill keep an AVX-512 clone: they run beside the training GEMM's
 * AVX-512 anyway, and ptopk's AVX2 clones measured slower (encode/GEMM 2.0
 * vs 1.26; the fill 2x). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("avx2", "default")))
#define CLONES512 __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CLONES
#define CLONES512
#endif

float vec_dot(const float *a, const float *b, int n);

/* Columns per slice of vec_slice_sums */
#define VEC_SLICE 32
/* For n terms q, over the first w <= VEC_SLICE columns of rows rows[q] of A
 * and of B (ld floats apart): sa = sum_q fa[q] A[rows[q]] and sb = sum_q
 * fb[q] B[rows[q]], added in q order to 0, or to sa and sb as they are when
 * add, one product and one sum per term (vec_axpy's bits). Without add,
 * whole slices on 64-byte boundaries may be stored past the caches: see
 * vec_stream_fence. */
void vec_slice_sums(const int32_t *rows, const float *fa, const float *fb, int64_t n,
                    const float *A, const float *B, size_t ld, int w, int add, float *sa,
                    float *sb);
/* Orders vec_slice_sums' streamed stores (which bypass the caches) before
 * what follows: each thread that called it calls this before others read. */
void vec_stream_fence(void);
/* y += alpha x */
void vec_axpy(float alpha, const float *x, float *y, int n);

/* What ptopk's key pass also takes per chunk late in training, when gates
 * can saturate (all in float, a = z + bias, margin as KEY_MARGIN_* below):
 * the largest lower bound of the score, lambda |a| + (1 where key - margin
 * >= saturated: the gate is 1), and the largest upper bound, lambda |a| +
 * (1 unless key + margin <= unsaturated: there callers take the gate as below
 * a constant they add). Callers widen both by float rounding before relying
 * on them. */
typedef struct ptopk_bounds {
    float saturated, unsaturated, lambda;
    float *lb_max, *ub_max; /* a chunk each */
} ptopk_bounds;

/* ptopk's training key for n latents: key = l + log(u) - log(1 - u), with
 * l = (z + bias - mean) * rstd and u = ((bits >> 8) + 0.5) / 2^24, the logs
 * read off the floats' bits (within 0.0597 of the exact logit, plus
 * rounding); key = l where bits is NULL (no noise). For skipping only:
 * callers compare with a margin and compute kept scores exactly. In the same
 * pass, per chunk of `chunk` latents (n / chunk + 1 entries), the largest key
 * (key_max), the largest |z + bias| (absa_max) and, unless bounds is NULL,
 * the score's bounds. */
void vec_logistic_key(const float *z, const float *bias, float mean, float rstd,
                      const uint32_t *bits, int n, int chunk, float *key, float *key_max,
                      float *absa_max, const ptopk_bounds *bounds);

/* The slack of such a fast key against the exact l + g, KEY_MARGIN_ABS +
 * KEY_MARGIN_REL |key|: the logit's 0.0597, float rounding (the integers
 * read as floats lose up to 32 units of 2^-23 each, 2e-5 in all; l's
 * rounding is within the relative term), and room to spare. */
#define KEY_MARGIN_ABS 0.0625
#define KEY_MARGIN_REL 1e-6

/* Sums in double over sixteen lanes added in a fixed order (vec.c's
 * lane_sum16): of x_i, of x_i^2, of (x_i - shift)^2 and of (a_i - b_i)^2. */
double vec_sum(const float *x, size_t n);
double vec_sum_squares(const float *x, size_t n);
double vec_sum_sq_dev(const float *x, double shift, size_t n);
double vec_sum_sq_diff(const float *a, const float *b, size_t n);
/* out_i = (float)((x_i - shift) * scale), the product in double */
void vec_shift_scale(const float *x, double shift, double scale, float *out, size_t n);

/* Sum, sum of squares and largest |a| of a = z + bias over n latents, in
 * double (eight lanes, added in a fixed order). */
void vec_sum_sq(const float *z, const float *bias, int n, double *sum, double *sq,
                double *absmax);

/* ptopk at inference: for each latent, an upper bound of its score
 * s = sigmoid(t) + lambda |a| with a = z + bias, t = (a - mean) * scale:
 *   t >= 40:  the gate is exactly 1.0 in double: ub = s = 1 + lambda |a|;
 *   t <= -40: the gate is below 4.3e-18: ub = -(lambda |a| + 4.3e-18);
 *   else:     ub = -(1 + lambda |a|).
 * A negative ub marks a bound that is not s itself. A latent whose |ub|
 * cannot beat the heap's floor is skipped, and so is a whole chunk of
 * `chunk` latents whose chunk_max cannot; an inexact bound that can beat it
 * is scored exactly by the caller. chunk_lb: per chunk, the largest lower
 * bound of a score (ub where ub > 0, else -ub - 1), to within double
 * rounding. chunk_max and chunk_lb have one entry per chunk (rounded up). */
void vec_ptopk_bound(const float *z, const float *bias, int n, int chunk, double mean,
                     double scale, double lambda, double *ub, double *chunk_max,
                     double *chunk_lb);

/* The k-th largest of v[0..n) (1 <= k <= n, no NaN), through work[n]: a
 * binary search over the floats' order as integers, each step a vectorised
 * count of the elements at or above the probe (a quickselect spent 2 us on
 * mispredicted branches per 192 chunk maxima; this 0.7). */
float vec_kth_largest(const float *v, int n, int k, int32_t *work);

/* The largest a = z + bias of each chunk of `chunk` latents (NaNs ignored;
 * -inf for a chunk of NaNs): chunk_max has n / chunk + 1 entries. */
void vec_chunk_max(const float *z, const float *bias, int n, int chunk, float *chunk_max);

/* Bit j (j < n <= 64) set where key[j] plus a margin reaches threshold:
 * ptopk's candidates in a chunk. The margin is KEY_MARGIN_ABS 1.25 +
 * KEY_MARGIN_REL 1.5 |key|, wider than the exact test's (in double) so that
 * the float sum keeps a superset. */
uint64_t vec_keys_reaching(const float *key, int n, float threshold);

/* Bit j (j < n <= 64) set where |z[j] + bias[j]| >= threshold (in float). */
uint64_t vec_absa_reaching(const float *z, const float *bias, int n, float threshold);

#endif
