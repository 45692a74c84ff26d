/* gemm_nt.c - see gemm_nt.h.
 *
 * The kernel holds a 4 x 4 block of C (4 rows of A against 4 rows of B) in
 * sixteen 16-lane accumulators and walks k sixteen floats at a time: per step
 * 8 loads feed 16 FMAs, so it runs on the FMA units rather than on memory.
 * B's four rows (4 k floats) stay in L1 while every row group of A passes
 * over them; each row of B is read from memory once per call. */
#include <stdbool.h>

#include "gemm_nt.h"
#include "vec.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define HAVE_KERNEL 1
#define KERNEL_TARGET __attribute__((target("avx512f,fma")))
#else
#define HAVE_KERNEL 0
#define KERNEL_TARGET
#endif

bool gemm_nt_available(void)
{
#if HAVE_KERNEL
    return __builtin_cpu_supports("avx512f");
#else
    return false;
#endif
}

/* Columns c0..n of C by plain dot products: the rows of B past the last
 * whole block, or all of them where the kernel is not built. */
static void dot_columns(int m, int c0, int n, int k, const float *A, int lda, const float *B,
                        int ldb, float *C, int ldc)
{
    for (int c = c0; c < n; c++)
        for (int r = 0; r < m; r++)
            C[(long)r * ldc + c] = vec_dot(A + (long)r * lda, B + (long)c * ldb, k);
}

#if HAVE_KERNEL
typedef float v16 __attribute__((vector_size(64), aligned(4)));
#define BR 4 /* rows of B per block */
#define RA 4 /* rows of A per block: RA * BR = 16 accumulators */
_Static_assert(RA * BR == 16 && RA == 4, "sum16 folds 16 accumulators; gemm_nt ends with m % 4");

typedef int v16i __attribute__((vector_size(64)));

/* Pairs up lanes of x and y: the sum holds half as many partial sums of each,
 * x's first. Four rounds turn 16 vectors into one vector of their 16 sums, in
 * their order (15 adds instead of 240 scalar ones). */
static inline __attribute__((always_inline)) KERNEL_TARGET v16 fold(v16 x, v16 y, v16i lo,
                                                                    v16i hi)
{
    return __builtin_shuffle(x, y, lo) + __builtin_shuffle(x, y, hi);
}

static inline __attribute__((always_inline)) KERNEL_TARGET v16 sum16(v16 v[16])
{
    static const v16i lo[4] = {
        {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23},
        {0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27},
        {0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29},
        {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30}};
    static const v16i hi[4] = {
        {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31},
        {4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31},
        {2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31},
        {1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31}};
    for (int round = 0, n = 16; round < 4; round++, n /= 2)
        for (int i = 0; i < n / 2; i++)
            v[i] = fold(v[2 * i], v[2 * i + 1], lo[round], hi[round]);
    return v[0];
}

/* R rows of A (R <= RA, a constant after inlining) against BR rows of B. */
static inline __attribute__((always_inline)) KERNEL_TARGET void
block(int R, int k, const float *A, int lda, const float *B, int ldb, float *C, int ldc)
{
    v16 acc[RA * BR];
    for (int i = 0; i < RA * BR; i++)
        acc[i] = (v16){0};
    int j = 0;
    for (; j + 16 <= k; j += 16) {
        v16 b[BR];
        for (int c = 0; c < BR; c++)
            b[c] = *(const v16 *)(B + (long)c * ldb + j);
        for (int r = 0; r < R; r++) {
            v16 a = *(const v16 *)(A + (long)r * lda + j);
            for (int c = 0; c < BR; c++)
                acc[r * BR + c] += a * b[c];
        }
    }
    v16 s = sum16(acc);
    for (int r = 0; r < R; r++)
        for (int c = 0; c < BR; c++) {
            float t = s[r * BR + c];
            for (int q = j; q < k; q++)
                t += A[(long)r * lda + q] * B[(long)c * ldb + q];
            C[(long)r * ldc + c] = t;
        }
}

KERNEL_TARGET void gemm_nt(int m, int n, int k, const float *A, int lda, const float *B, int ldb,
                           float *C, int ldc)
{
    int c = 0;
    for (; c + BR <= n; c += BR) {
        const float *b = B + (long)c * ldb;
        int r = 0;
        for (; r + RA <= m; r += RA)
            block(RA, k, A + (long)r * lda, lda, b, ldb, C + (long)r * ldc + c, ldc);
        const float *a = A + (long)r * lda;
        float *cr = C + (long)r * ldc + c;
        switch (m - r) { /* the last m % RA rows of A */
        case 3: block(3, k, a, lda, b, ldb, cr, ldc); break;
        case 2: block(2, k, a, lda, b, ldb, cr, ldc); break;
        case 1: block(1, k, a, lda, b, ldb, cr, ldc); break;
        }
    }
    dot_columns(m, c, n, k, A, lda, B, ldb, C, ldc); /* the last n % BR rows of B */
}
#else
void gemm_nt(int m, int n, int k, const float *A, int lda, const float *B, int ldb, float *C,
             int ldc)
{
    dot_columns(m, 0, n, k, A, lda, B, ldb, C, ldc);
}
#endif
