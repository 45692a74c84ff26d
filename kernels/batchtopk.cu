/* batchtopk.cu - BatchTopK's selection in training: the k B largest v = z +
 * b_enc > 0 over the whole batch (CPU twin: forward_batchtopk in
 * src/sae/train.c, a heap over the flat index b M + i that breaks ties
 * toward the lower index). On the GPU:
 *   1. batch_hist, four times: a radix select over the positive values' keys
 *      (8-bit digits from the top) finds the threshold key T and how many
 *      values equal to T are kept (the host reads each histogram);
 *   2. batch_count: per row, the values above T and equal to T; the host
 *      hands the ties out in row order (lowest flat index first) and scans
 *      the rows' totals into the CSR rowptr;
 *   3. batch_fill: per row, the kept latents in index order.
 * Integer counts only: the result is exact and deterministic. */
#include "launch.cuh"

#include <stdint.h>

#include "kernels.h"
#include "reduce.cuh"

#define BT_THREADS 256

/* The order key of a positive float: larger value, larger key. */
static __device__ __forceinline__ uint32_t pos_key(float v)
{
    return __float_as_uint(v) | 0x80000000u;
}

static __global__ void __launch_bounds__(BT_THREADS)
batch_hist_kernel(const float *z, const float *b_enc, int64_t n, int M, uint32_t prefix,
                  uint32_t mask, int shift, unsigned *hist)
{
    __shared__ unsigned h[256];
    for (int j = threadIdx.x; j < 256; j += BT_THREADS)
        h[j] = 0u;
    __syncthreads();
    for (int64_t q = blockIdx.x * (int64_t)BT_THREADS + threadIdx.x; q < n;
         q += (int64_t)gridDim.x * BT_THREADS) {
        const float v = __fadd_rn(z[q], b_enc[q % M]);
        if (!(v > 0.0f))
            continue;
        const uint32_t key = pos_key(v);
        if ((key & mask) == prefix)
            atomicAdd(&h[(key >> shift) & 255u], 1u);
    }
    __syncthreads();
    for (int j = threadIdx.x; j < 256; j += BT_THREADS)
        if (h[j])
            atomicAdd(&hist[j], h[j]);
}

extern "C" int sae_k_batch_hist(const float *z, const float *b_enc, int64_t B, int M,
                                uint32_t prefix, uint32_t mask, int shift, unsigned *hist,
                                void *stream)
{
    if (B <= 0 || M <= 0 || shift < 0 || shift > 24)
        return (int)cudaErrorInvalidValue;
    cudaError_t e = cudaMemsetAsync(hist, 0, 256 * sizeof *hist, (cudaStream_t)stream);
    if (e != cudaSuccess)
        return (int)e;
    const int64_t n = B * M, blocks = (n + BT_THREADS * 16 - 1) / (BT_THREADS * 16);
    LAUNCH(batch_hist_kernel, (unsigned)(blocks < 1 ? 1 : blocks > 4096 ? 4096 : blocks),
           BT_THREADS, stream, z, b_enc, n, M, prefix, mask, shift, hist);
    return (int)cudaGetLastError();
}

/* One block per row: above[b] = #keys > T, ties[b] = #keys == T. */
static __global__ void __launch_bounds__(BT_THREADS)
batch_count_kernel(const float *z, const float *b_enc, int M, uint32_t T, int32_t *above,
                   int32_t *ties)
{
    __shared__ int red[2][BT_THREADS / 32];
    const float *zr = z + (int64_t)blockIdx.x * M;
    int a = 0, t = 0;
    for (int i = threadIdx.x; i < M; i += BT_THREADS) {
        const float v = __fadd_rn(zr[i], b_enc[i]);
        if (v > 0.0f) {
            a += pos_key(v) > T;
            t += pos_key(v) == T;
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        a += __shfl_down_sync(0xffffffffu, a, o);
        t += __shfl_down_sync(0xffffffffu, t, o);
    }
    if ((threadIdx.x & 31) == 0) {
        red[0][threadIdx.x >> 5] = a;
        red[1][threadIdx.x >> 5] = t;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int sa = 0, st = 0;
        for (int w = 0; w < BT_THREADS / 32; w++) {
            sa += red[0][w];
            st += red[1][w];
        }
        above[blockIdx.x] = sa;
        ties[blockIdx.x] = st;
    }
}

extern "C" int sae_k_batch_count(const float *z, const float *b_enc, int64_t B, int M,
                                 uint32_t T, int32_t *above, int32_t *ties, void *stream)
{
    if (B <= 0 || B > 0x7fffffffLL || M <= 0)
        return (int)cudaErrorInvalidValue;
    LAUNCH(batch_count_kernel, (unsigned)B, BT_THREADS, stream, z, b_enc, M, T, above, ties);
    return (int)cudaGetLastError();
}

/* Within a tile of the block's threads, in thread order: this thread's rank
 * among those whose pred is set, plus seen (ballots and the warps' totals;
 * every thread must call it). *tile gets the tile's total. */
static __device__ int tile_rank(bool pred, int seen, int *warp_total, int *tile)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const unsigned ballot = __ballot_sync(0xffffffffu, pred);
    if (lane == 0)
        warp_total[warp] = __popc(ballot);
    __syncthreads();
    int rank = seen + __popc(ballot & ((1u << lane) - 1u));
    *tile = 0;
    for (int w = 0; w < BT_THREADS / 32; w++) {
        rank += w < warp ? warp_total[w] : 0;
        *tile += warp_total[w];
    }
    __syncthreads();    /* warp_total is rewritten by the next call */
    return rank;
}

/* One block per row, tiles of BT_THREADS latents in index order: a latent is
 * kept when its key is above T, or equal to T and among the row's first
 * tie_budget[b] ties; its slot is the number kept before it. */
static __global__ void __launch_bounds__(BT_THREADS)
batch_fill_kernel(const float *z, const float *b_enc, int M, uint32_t T,
                  const int32_t *tie_budget, const int64_t *rowptr, int32_t *idx, float *f)
{
    __shared__ int warp_total[BT_THREADS / 32];
    const int64_t b = blockIdx.x;
    const float *zr = z + b * M;
    const int budget = tie_budget[b];
    int ties_seen = 0, kept_seen = 0;       /* the same in every thread */
    for (int base = 0; base < M; base += BT_THREADS) {
        const int i = base + threadIdx.x;
        float v = 0.0f;
        bool above = false, tie = false;
        if (i < M) {
            v = __fadd_rn(zr[i], b_enc[i]);
            if (v > 0.0f) {
                above = pos_key(v) > T;
                tie = pos_key(v) == T;
            }
        }
        int tile_ties, tile_kept;
        const int tie_rank = tile_rank(tie, ties_seen, warp_total, &tile_ties);
        const bool keep = above || (tie && tie_rank < budget);
        const int slot = tile_rank(keep, kept_seen, warp_total, &tile_kept);
        if (keep) {
            idx[rowptr[b] + slot] = i;
            f[rowptr[b] + slot] = v;
        }
        ties_seen += tile_ties;
        kept_seen += tile_kept;
    }
}

extern "C" int sae_k_batch_fill(const float *z, const float *b_enc, int64_t B, int M, uint32_t T,
                                const int32_t *tie_budget, const int64_t *rowptr, int32_t *idx,
                                float *f, void *stream)
{
    if (B <= 0 || B > 0x7fffffffLL || M <= 0)
        return (int)cudaErrorInvalidValue;
    LAUNCH(batch_fill_kernel, (unsigned)B, BT_THREADS, stream, z, b_enc, M, T, tie_budget,
           rowptr, idx, f);
    return (int)cudaGetLastError();
}

/* out[0] = the smallest of x[0 .. n) (n > 0), one block. */
static __global__ void __launch_bounds__(RED_THREADS) min_kernel(const float *x, int64_t n,
                                                                 float *out)
{
    __shared__ float red[RED_THREADS];
    float m = INFINITY;
    for (int64_t q = threadIdx.x; q < n; q += RED_THREADS)
        m = fminf(m, x[q]);
    m = block_tree(m, red, [](float a, float b) { return fminf(a, b); });
    if (threadIdx.x == 0)
        *out = m;
}

extern "C" int sae_k_min(const float *x, int64_t n, float *out, void *stream)
{
    if (n <= 0)
        return (int)cudaErrorInvalidValue;
    LAUNCH(min_kernel, 1, RED_THREADS, stream, x, n, out);
    return (int)cudaGetLastError();
}
