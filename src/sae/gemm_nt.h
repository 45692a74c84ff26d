/* gemm_nt.h - C[m, n] = A[m, k] B[n, k]^T for few rows of A: the encoder of a
 * small batch (A = the batch, B = W_enc held [d_sae, d_in]).
 *
 * OpenBLAS packs all of B on every call; at a few dozen rows that copy costs
 * as much as the arithmetic. This kernel packs A instead (small: A^T, once
 * per call, gemm_nt_pack) and reads B's rows where they lie, once per 64
 * rows of A. Single-threaded: callers pack once and split n across threads.
 * Used only where gemm_nt_available() (AVX-512), where it is measured faster
 * than OpenBLAS (bench/encode); elsewhere callers keep OpenBLAS. */
#ifndef SAE_GEMM_NT_H
#define SAE_GEMM_NT_H

#include <stdbool.h>
#include <stddef.h>

bool gemm_nt_available(void);

/* floats in A's packed form (gemm_nt_pack's output) */
size_t gemm_nt_packed_floats(int m, int k);
void gemm_nt_pack(int m, int k, const float *A, int lda, float *At);

/* C = A B^T from At = gemm_nt_pack(A); C's rows are ldc apart */
void gemm_nt(int m, int n, int k, const float *At, const float *B, int ldb, float *C, int ldc);

#endif
