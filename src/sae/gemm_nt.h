/* gemm_nt.h - C[m, n] = A[m, k] B[n, k]^T for few rows of A: the encoder of a
 * small batch (A = the batch, B = W_enc held [d_sae, d_in]).
 *
 * OpenBLAS packs all of B on every call; at a few dozen rows that copy costs
 * as much as the arithmetic. This kernel reads B's rows where they lie, once
 * per call. Single-threaded: callers split n across threads. Used only where
 * gemm_nt_available() (AVX-512), where it is measured faster than OpenBLAS
 * (bench/encode); elsewhere callers keep OpenBLAS. */
#ifndef SAE_GEMM_NT_H
#define SAE_GEMM_NT_H

#include <stdbool.h>

bool gemm_nt_available(void);

void gemm_nt(int m, int n, int k, const float *A, int lda, const float *B, int ldb, float *C,
             int ldc);

#endif
