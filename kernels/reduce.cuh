/* reduce.cuh - the fixed-order reductions the training kernels share
 * (train.cu, train_dense.cu): the same inputs give the same bits on every
 * run, so GPU training is deterministic. */
#ifndef SAE_REDUCE_CUH
#define SAE_REDUCE_CUH

#include "launch.cuh"

#include <stdint.h>

/* block size of the reductions below (a power of 2); the emulator runs one
 * CPU thread per CUDA thread, so it gets fewer */
#ifdef SAE_KERNEL_EMU
#define RED_THREADS 32
#else
#define RED_THREADS 256
#endif

/* op over the block's v, in a fixed tree: the same bits for the same inputs.
 * Every thread gets the result. red: RED_THREADS Ts of shared memory. */
template <typename T, typename Op>
static __device__ T block_tree(T v, T *red, Op op)
{
    red[threadIdx.x] = v;
    __syncthreads();
    for (int half = RED_THREADS / 2; half > 0; half >>= 1) {
        if ((int)threadIdx.x < half)
            red[threadIdx.x] = op(red[threadIdx.x], red[threadIdx.x + half]);
        __syncthreads();
    }
    const T total = red[0];
    __syncthreads();
    return total;
}

/* The block's sum of v (block_tree), in double. */
static __device__ double block_sum_fixed(double v, double *red)
{
    return block_tree(v, red, [](double a, double b) { return __dadd_rn(a, b); });
}

/* A row kernel's two sums, each over the block: thread 0 stores them at
 * rows[2 b] and rows[2 b + 1] (for sum_row_pairs_kernel). */
static __device__ void store_row_pair(double s0, double s1, int64_t b, double *rows, double *red)
{
    s0 = block_sum_fixed(s0, red);
    s1 = block_sum_fixed(s1, red);
    if (threadIdx.x == 0) {
        rows[2 * b] = s0;
        rows[2 * b + 1] = s1;
    }
}

/* The same for a row summed by one warp (its lanes' sums in a fixed shuffle
 * tree): lane 0 stores them. */
static __device__ void store_row_pair_warp(double s0, double s1, int64_t b, double *rows)
{
    for (int o = 16; o > 0; o >>= 1) {
        s0 = __dadd_rn(s0, __shfl_down_sync(0xffffffffu, s0, o));
        s1 = __dadd_rn(s1, __shfl_down_sync(0xffffffffu, s1, o));
    }
    if ((threadIdx.x & 31) == 0) {
        rows[2 * b] = s0;
        rows[2 * b + 1] = s1;
    }
}

static inline unsigned blocks_for(int64_t n, int per_block)
{
    const int64_t b = (n + per_block - 1) / per_block;
    return (unsigned)(b < 1 ? 1 : b > 65535 * 16 ? 65535 * 16 : b);
}

/* Adds rows[2 b + q] over b in order (one block; each thread a contiguous run
 * of rows, then the fixed tree): out[q] += the total, q = 0, 1. */
static __global__ void __launch_bounds__(RED_THREADS)
sum_row_pairs_kernel(const double *rows, int64_t B, double *out)
{
    __shared__ double red[RED_THREADS];
    const int64_t lo = B * threadIdx.x / RED_THREADS, hi = B * (threadIdx.x + 1) / RED_THREADS;
    for (int q = 0; q < 2; q++) {
        double acc = 0.0;
        for (int64_t b = lo; b < hi; b++)
            acc = __dadd_rn(acc, rows[2 * b + q]);
        acc = block_sum_fixed(acc, red);
        if (threadIdx.x == 0)
            out[q] = __dadd_rn(out[q], acc);
    }
}

/* dot(a, b) over d in float, the same in every thread of the block (fixed
 * tree). red: RED_THREADS floats of shared. */
static __device__ float block_dot(const float *a, const float *b, int d, float *red)
{
    float acc = 0.0f;
    for (int j = threadIdx.x; j < d; j += RED_THREADS)
        acc = __fadd_rn(acc, __fmul_rn(a[j], b[j]));
    return block_tree(acc, red, [](float x, float y) { return __fadd_rn(x, y); });
}

#endif
