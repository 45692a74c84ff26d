/* cblas_fallback.c - a plain single-threaded SGEMM (the CPU backend already
 * splits its GEMMs across OpenMP threads, blas.c), for tests/gpu/run.sh's
 * direct build where OpenBLAS is missing. Slower than OpenBLAS, the same
 * function: the parity test's reference stays the CPU backend's code. */
#include "cblas.h"

void openblas_set_num_threads(int n)
{
    (void)n;
}

/* element (i, p) of op(A) for a row-major A */
static float at(const float *A, int lda, int trans, int i, int p)
{
    return trans ? A[(long)p * lda + i] : A[(long)i * lda + p];
}

void cblas_sgemm(enum CBLAS_ORDER order, enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, int m,
                 int n, int k, float alpha, const float *A, int lda, const float *B, int ldb,
                 float beta, float *C, int ldc)
{
    if (order != CblasRowMajor)     /* saed only asks for row-major */
        return;
    const int tA = ta == CblasTrans, tB = tb == CblasTrans;
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            float acc = 0.0f;
            if (!tA && tB) {
                /* the encoder's case: two contiguous rows; 8 partial sums the
                 * compiler can keep in one vector register */
                const float *a = A + (long)i * lda, *b = B + (long)j * ldb;
                float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
                int p = 0;
                for (; p + 8 <= k; p += 8)
                    for (int u = 0; u < 8; u++)
                        s[u] += a[p + u] * b[p + u];
                for (; p < k; p++)
                    s[0] += a[p] * b[p];
                acc = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
            } else {
                for (int p = 0; p < k; p++)
                    acc += at(A, lda, tA, i, p) * at(B, ldb, !tB, j, p);
            }
            float *c = C + (long)i * ldc + j;
            *c = alpha * acc + (beta != 0.0f ? beta * *c : 0.0f);
        }
}

/* y = alpha A x + beta y for a row-major A [m, n]: the one-row encode */
void cblas_sgemv(enum CBLAS_ORDER order, enum CBLAS_TRANSPOSE ta, int m, int n, float alpha,
                 const float *A, int lda, const float *x, int incx, float beta, float *y, int incy)
{
    if (order != CblasRowMajor || ta != CblasNoTrans)
        return;
    for (int i = 0; i < m; i++) {
        float acc = 0.0f;
        for (int p = 0; p < n; p++)
            acc += A[(long)i * lda + p] * x[(long)p * incx];
        float *c = y + (long)i * incy;
        *c = alpha * acc + (beta != 0.0f ? beta * *c : 0.0f);
    }
}
