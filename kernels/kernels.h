/* kernels.h - the CUDA device code of saed behind a plain-C interface.
 *
 * Every launcher is extern "C", takes device pointers and a stream (a
 * cudaStream_t passed as void *), returns 0 on success or a cudaError_t code,
 * and never exits. Shape letters as in src/sae/sae.h (B, d, M, k). Each
 * kernel has a CPU twin in src/sae and a parity test in tests/gpu. */
#ifndef SAE_KERNELS_H
#define SAE_KERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Sparse decode: xhat[r] = b_dec + sum over e in [indptr[r], indptr[r+1]) of
 * values[e] * W_dec[indices[e]]. CPU twin: sae_decode in src/sae/encode.c. */
int sae_k_sparse_decode(const int64_t *indptr, const int32_t *indices, const float *values,
                        const float *W_dec, const float *b_dec, int64_t B, int d, float *xhat,
                        void *stream);

#ifdef __cplusplus
}
#endif

#endif
