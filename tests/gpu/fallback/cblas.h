/* cblas.h (fallback) - the BLAS calls src/sae's CPU backend makes, for
 * tests/gpu/run.sh's direct build on a GPU machine without libopenblas-dev.
 * cblas_fallback.c implements them; real builds use OpenBLAS. */
#ifndef SAE_FALLBACK_CBLAS_H
#define SAE_FALLBACK_CBLAS_H

enum CBLAS_ORDER { CblasRowMajor = 101, CblasColMajor = 102 };
enum CBLAS_TRANSPOSE { CblasNoTrans = 111, CblasTrans = 112 };

void cblas_sgemm(enum CBLAS_ORDER order, enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, int m,
                 int n, int k, float alpha, const float *A, int lda, const float *B, int ldb,
                 float beta, float *C, int ldc);
void cblas_sgemv(enum CBLAS_ORDER order, enum CBLAS_TRANSPOSE ta, int m, int n, float alpha,
                 const float *A, int lda, const float *x, int incx, float beta, float *y, int incy);
void openblas_set_num_threads(int n);

#endif
