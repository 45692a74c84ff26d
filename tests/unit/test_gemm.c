/* test_gemm - the small-batch kernel C = A B^T (gemm_nt) and sae_sgemm's
 * dispatch to it, against a plain double-precision triple loop, checkasm
 * style: random shapes and strides (rows of B not a multiple of the block,
 * k not a multiple of the vector), C pre-filled with a sentinel so a write
 * outside [m, n] or a missed element shows. */
#include <math.h>
#include <omp.h>
#include <stdint.h>

#include "blas.h"
#include "check.h"
#include "gemm_nt.h"
#include "util.h"

#define SENTINEL 1234.5f

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static float uniform(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((rng_state >> 40) * 0x1p-24) - 0.5f;
}

static int rand_int(int lo, int hi)
{
    return lo + (int)((uniform() + 0.5f) * (float)(hi - lo + 1)) % (hi - lo + 1);
}

/* Checks one product; via_sgemm sends it through sae_sgemm (threads, the
 * column split, the dispatch) instead of calling the kernel. */
static void check_case(int m, int n, int k, int pad, int via_sgemm)
{
    const int lda = k + pad, ldb = k + pad, ldc = n + pad;
    float *A = sae_calloc_aligned((size_t)m * lda, sizeof *A);
    float *B = sae_calloc_aligned((size_t)n * ldb, sizeof *B);
    float *C = sae_calloc_aligned((size_t)m * ldc, sizeof *C);
    for (long i = 0; i < (long)m * lda; i++)
        A[i] = uniform();
    for (long i = 0; i < (long)n * ldb; i++)
        B[i] = uniform();
    for (long i = 0; i < (long)m * ldc; i++)
        C[i] = SENTINEL;
    if (via_sgemm)
        sae_sgemm(false, true, m, n, k, 1.0f, A, lda, B, ldb, 0.0f, C, ldc);
    else {
        float *At = sae_calloc_aligned(gemm_nt_packed_floats(m, k), sizeof *At);
        gemm_nt_pack(m, k, A, lda, At);
        gemm_nt(m, n, k, At, B, ldb, C, ldc);
        free(At);
    }
    int bad = 0, overwritten = 0;
    for (int r = 0; r < m; r++) {
        for (int c = 0; c < n; c++) {
            double ref = 0.0, mag = 0.0;
            for (int j = 0; j < k; j++) {
                ref += (double)A[(long)r * lda + j] * B[(long)c * ldb + j];
                mag += fabs((double)A[(long)r * lda + j] * B[(long)c * ldb + j]);
            }
            /* float accumulation: error grows with k and the terms' size */
            bad += !(fabs(C[(long)r * ldc + c] - ref) <= 1e-6 * k * (mag + 1e-3));
        }
        for (int c = n; c < ldc; c++)
            overwritten += C[(long)r * ldc + c] != SENTINEL;
    }
    if (bad || overwritten)
        printf("gemm m=%d n=%d k=%d pad=%d via_sgemm=%d: %d wrong, %d padding written\n", m, n,
               k, pad, via_sgemm, bad, overwritten);
    CHECK(bad == 0);
    CHECK(overwritten == 0);
    free(A);
    free(B);
    free(C);
}

int main(void)
{
    printf("gemm_nt kernel %s\n", gemm_nt_available() ? "in use (AVX-512)" : "not in use here");
    /* whole tiles and every remainder: rows of A around the 16-row vectors
     * and the 64-row chunks, rows of B around each tile height (12, 8, 6) */
    const int ks[] = {1, 15, 16, 17, 64, 100, 768};
    const int ms[] = {1, 2, 5, 15, 16, 17, 31, 33, 47, 49, 63, 64, 65, 130};
    for (int mi = 0; mi < (int)(sizeof ms / sizeof ms[0]); mi++)
        for (int ki = 0; ki < (int)(sizeof ks / sizeof ks[0]); ki++)
            for (int n = 1; n <= 25; n += 1 + (ki % 2))
                check_case(ms[mi], n, ks[ki], (ms[mi] + n) % 3, 0);
    for (int t = 0; t < 60; t++)
        check_case(rand_int(1, 140), rand_int(1, 300), rand_int(1, 300), rand_int(0, 17), t % 2);
    /* through sae_sgemm at the dispatch's edges (1 row: GEMV; 2-255: ours,
     * in blocks handed to 2 threads; 256: OpenBLAS by rows) */
    check_case(1, 4096, 256, 0, 1);
    check_case(2, 4096, 256, 0, 1);
    check_case(64, 1000, 128, 0, 1);
    check_case(127, 1000, 128, 0, 1);
    check_case(200, 1000, 96, 1, 1);
    check_case(255, 777, 100, 2, 1);
    check_case(33, 2 * 768 + 5, 96, 1, 1); /* several of the threads' blocks, and a part */
    /* one thread: 64 to 255 rows still go to ours */
    const int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    check_case(64, 1000, 128, 0, 1);
    check_case(255, 900, 100, 2, 1);
    omp_set_num_threads(threads);
    check_case(256, 1000, 128, 0, 1);
    if (failures) {
        printf("%d checks failed\n", failures);
        return 1;
    }
    printf("all gemm checks passed\n");
    return 0;
}
