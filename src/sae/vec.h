/* vec.h - the row-sized vector kernels of the sparse paths (d floats at a
 * time), built for AVX-512, AVX2 and plain x86-64 and picked at load time.
 * Sums use a fixed set of lanes added in a fixed order: the same inputs give
 * the same bits on a given machine, whatever the thread count. */
#ifndef SAE_VEC_H
#define SAE_VEC_H

#include <stdint.h>

float vec_dot(const float *a, const float *b, int n);
/* y += alpha x */
void vec_axpy(float alpha, const float *x, float *y, int n);

/* ptopk's training key for n latents: key = l + log(u) - log(1 - u), with
 * l = (z + bias - mean) * rstd and u = ((bits >> 8) + 0.5) / 2^24, the logs
 * by a fast approximation within 2e-5 each. For skipping only: callers
 * compare with a margin and compute kept scores exactly. */
void vec_logistic_key(const float *z, const float *bias, float mean, float rstd,
                      const uint32_t *bits, int n, float *key);

/* Sum and sum of squares of a = z + bias over n latents, in double (eight
 * lanes, added in a fixed order). */
void vec_sum_sq(const float *z, const float *bias, int n, double *sum, double *sq);

/* ptopk at inference: an upper bound of a latent's score
 * s = sigmoid(t) + lambda |a| with a = z + bias, t = (a - mean) * scale:
 *   t >= 40:  the gate is exactly 1.0 in double: ub = s = 1 + lambda |a|;
 *   t <= -40: the gate is below 4.3e-18: ub = -(lambda |a| + 4.3e-18);
 *   else:     ub = -(1 + lambda |a|).
 * A negative ub marks a bound that is not s itself: a latent whose |ub|
 * cannot beat the heap's floor is skipped, one that can is scored exactly by
 * the caller. */
static inline double vec_ptopk_ub(float z, float bias, double mean, double scale, double lambda)
{
    double a = (double)(z + bias);
    double t = (a - mean) * scale, mag = lambda * (a < 0.0 ? -a : a);
    double bound = t <= -40.0 ? mag + 4.3e-18 : 1.0 + mag;
    return t < 40.0 ? -bound : bound;
}

/* The largest |vec_ptopk_ub| of each chunk of VEC_CHUNK latents (the last
 * chunk may be short), so that a whole chunk that cannot beat the heap's
 * floor is skipped without looking at its latents one by one. */
#define VEC_CHUNK 64
void vec_ptopk_chunk_max(const float *z, const float *bias, int n, double mean, double scale,
                         double lambda, double *chunk_max);

#endif
