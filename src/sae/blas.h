/* blas.h - matrix products on the CPU, parallel through OpenMP.
 *
 * One thread pool only: OpenBLAS runs single-threaded and our OpenMP threads
 * each call it on their own block. Two pools (OpenBLAS' threads and OpenMP's)
 * spin against each other between calls, which on a small machine costs more
 * than the work itself. */
#ifndef SAE_BLAS_H
#define SAE_BLAS_H

#include <stdbool.h>
#include <stdint.h>

/* OpenBLAS picks its kernels, and libgomp its wait policy, from the
 * environment before main() runs; a program changes them by executing itself
 * again, which this does (the first thing in main) where that is needed:
 * - OPENBLAS_CORETYPE, where OpenBLAS fell back to generic kernels on a CPU
 *   newer than it knows (3-4x slower GEMMs; one line on stderr says so);
 * - OMP_WAIT_POLICY=passive, where passive_openmp asks for it (workers that
 *   spin between parallel regions take the cores a server's network threads
 *   need).
 * Values already in the environment are kept; children inherit the result. */
void sae_blas_exec_tuned(char **argv, bool passive_openmp);

/* Makes OpenBLAS single-threaded (once per process). Call before any cblas_*
 * made from inside an OpenMP region. */
void sae_blas_init(void);

/* C[m, n] = alpha op(A) op(B) + beta C, row-major, split across threads by
 * rows of C (or by columns when there are few rows). C = A B^T of 2 to 255
 * rows goes to our small-batch kernel where sae_gemm_nt_fits(m) (gemm_nt.h),
 * on any number of threads. Called from outside any parallel region. */
bool sae_gemm_nt_fits(int64_t m);
void sae_sgemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *A,
               int lda, const float *B, int ldb, float beta, float *C, int ldc);

#endif
