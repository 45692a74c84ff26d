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

#endif
