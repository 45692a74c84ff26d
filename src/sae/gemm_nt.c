/* gemm_nt.c - see gemm_nt.h.
 *
 * C = A B^T is computed as its transpose, C^T = B A^T, by outer products.
 * gemm_nt_pack lays A^T out once per call, in chunks of up to 64 rows of A:
 * a chunk is [k][16 MV] floats, its rows of A padded with zeros to MV
 * vectors of 16. For each step j the kernel loads the MV vectors of A^T and
 * broadcasts one scalar B[c][j] per row c of B in its tile; a tile of RB
 * rows of B keeps RB x MV accumulators (24 of the 32 vector registers) over
 * all of k and is then written to C transposed. Per step MV loads and RB
 * broadcasts feed RB x MV FMAs, so the FMA units set the pace; each row of B
 * is read from memory once per chunk, and the next tile's rows are
 * prefetched while this one runs. The broadcast is a load of its own (an
 * initialiser of sixteen copies): `vector + scalar` would add a shuffle on
 * the FMA port for every one; the FMA is the intrinsic, as -std=c11 keeps
 * GCC from contracting a * b + c. */
#include <stdbool.h>

#include "gemm_nt.h"

#define CHUNK_ROWS 64 /* rows of A per chunk: at most 4 vectors */

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

/* vectors of 16 rows in a chunk of `rows` rows of A */
static int chunk_vectors(int rows)
{
    return (rows + 15) / 16;
}

size_t gemm_nt_packed_floats(int m, int k)
{
    size_t floats = 0;
    for (int r0 = 0; r0 < m; r0 += CHUNK_ROWS) {
        const int rows = m - r0 < CHUNK_ROWS ? m - r0 : CHUNK_ROWS;
        floats += (size_t)k * 16 * chunk_vectors(rows);
    }
    return floats;
}

void gemm_nt_pack(int m, int k, const float *A, int lda, float *At)
{
    for (int r0 = 0; r0 < m; r0 += CHUNK_ROWS) {
        const int rows = m - r0 < CHUNK_ROWS ? m - r0 : CHUNK_ROWS;
        const int width = 16 * chunk_vectors(rows);
        for (int j = 0; j < k; j++)
            for (int r = 0; r < width; r++)
                *At++ = r < rows ? A[(long)(r0 + r) * lda + j] : 0.0f;
    }
}

#if HAVE_KERNEL
#include <immintrin.h>

typedef float v16 __attribute__((vector_size(64)));

/* C[r][c] for the RB rows of B at B and the `rows` rows of A packed at At
 * (MV vectors); RB, MV constants after inlining. */
static inline __attribute__((always_inline)) KERNEL_TARGET void
tile(int RB, int MV, int rows, int k, const float *At, const float *B, int ldb, bool prefetch,
     float *C, int ldc)
{
    /* The accumulators must live in registers, so every loop over RB or MV
     * is unrolled whole: -O3 would, -O2 would not (and then runs 4x slower). */
    v16 acc[24];
#pragma GCC unroll 24
    for (int i = 0; i < RB * MV; i++)
        acc[i] = (v16){0};
    for (int j = 0; j < k; j++) {
        if (prefetch && j % 16 == 0) /* a line of each row of the next tile */
#pragma GCC unroll 12
            for (int r = 0; r < RB; r++)
                __builtin_prefetch(B + (long)(RB + r) * ldb + j, 0, 3);
        v16 a[4];
#pragma GCC unroll 4
        for (int v = 0; v < MV; v++)
            a[v] = *(const v16 *)(At + (long)j * 16 * MV + 16 * v);
#pragma GCC unroll 12
        for (int r = 0; r < RB; r++) {
            const float s = B[(long)r * ldb + j];
            const v16 b = {s, s, s, s, s, s, s, s, s, s, s, s, s, s, s, s};
#pragma GCC unroll 4
            for (int v = 0; v < MV; v++)
                acc[r * MV + v] = _mm512_fmadd_ps(b, a[v], acc[r * MV + v]);
        }
    }
#pragma GCC unroll 4
    for (int v = 0; v < MV; v++)
        for (int l = 0; l < 16 && 16 * v + l < rows; l++)
#pragma GCC unroll 12
            for (int r = 0; r < RB; r++)
                C[(long)(16 * v + l) * ldc + r] = acc[r * MV + v][l];
}

/* One chunk: tiles of RB rows of B, then the last n % RB one at a time. */
static inline __attribute__((always_inline)) KERNEL_TARGET void
chunk(int RB, int MV, int rows, int n, int k, const float *At, const float *B, int ldb, float *C,
      int ldc)
{
    int c = 0;
    for (; c + RB <= n; c += RB)
        tile(RB, MV, rows, k, At, B + (long)c * ldb, ldb, c + 2 * RB <= n, C + c, ldc);
    for (; c < n; c++)
        tile(1, MV, rows, k, At, B + (long)c * ldb, ldb, false, C + c, ldc);
}

KERNEL_TARGET void gemm_nt(int m, int n, int k, const float *At, const float *B, int ldb,
                           float *C, int ldc)
{
    for (int r0 = 0; r0 < m; r0 += CHUNK_ROWS) {
        const int rows = m - r0 < CHUNK_ROWS ? m - r0 : CHUNK_ROWS;
        float *c = C + (long)r0 * ldc;
        /* RB per MV: measured best at d 768 (24 accumulators where MV allows) */
        switch (chunk_vectors(rows)) {
        case 1: chunk(12, 1, rows, n, k, At, B, ldb, c, ldc); break;
        case 2: chunk(12, 2, rows, n, k, At, B, ldb, c, ldc); break;
        case 3: chunk(8, 3, rows, n, k, At, B, ldb, c, ldc); break;
        case 4: chunk(6, 4, rows, n, k, At, B, ldb, c, ldc); break;
        }
        At += (size_t)k * 16 * chunk_vectors(rows);
    }
}
#else
/* The same sums in plain C, where the kernel is not built (tests only:
 * gemm_nt_available() is false there, so sae_sgemm keeps OpenBLAS). */
void gemm_nt(int m, int n, int k, const float *At, const float *B, int ldb, float *C, int ldc)
{
    for (int r0 = 0; r0 < m; r0 += CHUNK_ROWS) {
        const int rows = m - r0 < CHUNK_ROWS ? m - r0 : CHUNK_ROWS;
        const int width = 16 * chunk_vectors(rows);
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < n; c++) {
                float s = 0.0f;
                for (int j = 0; j < k; j++)
                    s += At[(long)j * width + r] * B[(long)c * ldb + j];
                C[(long)(r0 + r) * ldc + c] = s;
            }
        At += (size_t)k * width;
    }
}
#endif
