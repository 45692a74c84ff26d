/* blas.h - matrix products on the CPU, parallel through OpenMP.
 *
 * One thread pool only: OpenBLAS runs single-threaded and our OpenMP threads
 * each call it on their own block. Two pools (OpenBLAS' threads and OpenMP's)
 * spin against each other between calls, which on a small machine costs more
 * than the work itself. */
#ifndef SAE_BLAS_H
#define SAE_BLAS_H

#include <stdbool.h>

/* Makes OpenBLAS single-threaded (once per process). Call before any cblas_*
 * made from inside an OpenMP region. */
void sae_blas_init(void);

/* C[m, n] = alpha op(A) op(B) + beta C, row-major, split across threads by
 * rows of C (or by columns when there are few rows). Called from outside any
 * parallel region. */
void sae_sgemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *A,
               int lda, const float *B, int ldb, float beta, float *C, int ldc);

#endif
