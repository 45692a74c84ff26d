/* blas.c - OpenBLAS under one OpenMP pool (see blas.h). */
#include <cblas.h>
#include <limits.h>
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "blas.h"
#include "gemm_nt.h"
#include "util.h"

static pthread_once_t blas_once = PTHREAD_ONCE_INIT;

static void blas_single_threaded(void)
{
    openblas_set_num_threads(1);
}

void sae_blas_init(void)
{
    pthread_once(&blas_once, blas_single_threaded);
}

/* The kernels OpenBLAS should have chosen, or NULL where its choice stands.
 * Debian 12's OpenBLAS (0.3.21) picks them by CPU model and falls back to its
 * generic Prescott (SSE3) kernels on models newer than it knows: Emerald
 * Rapids (model 207) got them here, and its sgemm ran 3.4x slower than with
 * the SkylakeX kernels its AVX-512 can run (bench/RESULTS.md). */
static const char *openblas_better_core(void)
{
    const char *chosen = openblas_get_corename();
    if (!chosen || strcmp(chosen, "Prescott") != 0)
        return NULL;
#if defined(__x86_64__) && defined(__GNUC__)
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
        return "SkylakeX";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return "Haswell";
#endif
    return NULL;
}

void sae_blas_exec_tuned(char **argv, bool passive_openmp)
{
    const bool set_policy = passive_openmp && !getenv("OMP_WAIT_POLICY");
    const char *core = getenv("OPENBLAS_CORETYPE") ? NULL : openblas_better_core();
    if (!set_policy && !core)
        return;
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0)
        return;
    self[n] = '\0'; /* the real path, so the process keeps its name */
    if (set_policy && setenv("OMP_WAIT_POLICY", "passive", 1) != 0)
        return;
    if (core) {
        if (setenv("OPENBLAS_CORETYPE", core, 1) != 0)
            return;
        sae_log("OpenBLAS chose its generic Prescott kernels for this CPU; using %s "
                "(OPENBLAS_CORETYPE overrides)", core);
    }
    execv(self, argv);
    /* exec failed: go on as this process is */
}

/* Below this many rows per thread, split the columns instead: packing the
 * other operand once per call is amortised over too few rows. */
#define MIN_ROWS_PER_THREAD 64
/* From 2 up to this many rows, C = A B^T goes to our kernel, which packs A
 * and not B (gemm_nt.h): measured 1.3-1.8x faster than OpenBLAS' sgemm at
 * 8-64 rows (d 768, d_sae 24576, 2 threads), and a whole encode 1.3-1.8x
 * faster at 128-255 rows (bench_encode, eleventh session). One row stays a
 * GEMV, which OpenBLAS does faster (7.7 vs 11.1 ms at 768 x 24576). */
#define GEMM_NT_MAX_ROWS 255
/* Our kernel's work is handed out in blocks of this many rows of B, to
 * whichever thread is free: with fixed halves, a thread slowed by the
 * server's network threads (or by a neighbour on a shared host) kept the
 * other waiting. Serving 64 one-row clients measured 5-22% more requests/s
 * than with halves (bench/RESULTS.md, eleventh session); 192 to 1536 rows
 * measured alike. */
#define GEMM_NT_BLOCK 768

/* C = A B^T by our kernel; false (nothing done) where A's packing finds no
 * memory. */
static bool own_kernel_sgemm(int threads, int m, int n, int k, const float *A, int lda,
                             const float *B, int ldb, float *C, int ldc)
{
    float *At = sae_thread_scratch(SAE_SCRATCH_PACK, gemm_nt_packed_floats(m, k));
    if (!At)
        return false;
    gemm_nt_pack(m, k, A, lda, At); /* once, for all threads */
    const int blocks = (n + GEMM_NT_BLOCK - 1) / GEMM_NT_BLOCK;
#pragma omp parallel for schedule(dynamic) num_threads(threads)
    for (int b = 0; b < blocks; b++) {
        const int lo = b * GEMM_NT_BLOCK;
        const int rows_of_b = n - lo < GEMM_NT_BLOCK ? n - lo : GEMM_NT_BLOCK;
        gemm_nt(m, rows_of_b, k, At, B + (long)lo * ldb, ldb, C + lo, ldc);
    }
    return true;
}

bool sae_gemm_nt_fits(int64_t m)
{
    return m > 1 && m <= GEMM_NT_MAX_ROWS && gemm_nt_available();
}

void sae_sgemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *A,
               int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    sae_blas_init();
    const int threads = omp_get_max_threads();
    const bool own_kernel_fits = sae_gemm_nt_fits(m) && !trans_a && trans_b && alpha == 1.0f &&
                                 beta == 0.0f;
    if (own_kernel_fits && own_kernel_sgemm(threads, m, n, k, A, lda, B, ldb, C, ldc))
        return;
    const bool by_rows = m >= threads * MIN_ROWS_PER_THREAD || n < threads * 16;
    const int parts = threads;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int p = 0; p < parts; p++) {
        int total = by_rows ? m : n;
        int lo = (int)((long)total * p / parts), hi = (int)((long)total * (p + 1) / parts);
        if (hi <= lo)
            continue;
        if (by_rows) {
            /* rows lo..hi of op(A) and of C */
            const float *a = trans_a ? A + lo : A + (long)lo * lda;
            cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                        trans_b ? CblasTrans : CblasNoTrans, hi - lo, n, k, alpha, a, lda, B,
                        ldb, beta, C + (long)lo * ldc, ldc);
        } else if (m == 1 && !trans_a && trans_b) {
            /* one row: a GEMV over rows lo..hi of B (no packing of B) */
            cblas_sgemv(CblasRowMajor, CblasNoTrans, hi - lo, k, alpha, B + (long)lo * ldb, ldb,
                        A, 1, beta, C + lo, 1);
        } else {
            /* columns lo..hi of op(B) and of C */
            const float *b = trans_b ? B + (long)lo * ldb : B + lo;
            cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                        trans_b ? CblasTrans : CblasNoTrans, m, hi - lo, k, alpha, A, lda, b,
                        ldb, beta, C + lo, ldc);
        }
    }
}
