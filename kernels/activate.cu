/* activate.cu - elementwise architectures (relu, jumprelu, gated; batchtopk at
 * inference is jumprelu) from z = x~ W_enc without bias, straight to CSR:
 *   1. act_count: one block per row counts its non-zeros;
 *   2. the host scans the counts into offsets (it needs them anyway to size
 *      the codes);
 *   3. act_fill: one block per row recomputes f and writes the non-zeros in
 *      index order at the row's offset.
 * f is never stored densely: both kernels read z once and recompute the
 * activation, which costs a few flops against a second [B, M] buffer.
 * CPU twins: relu_activate, jumprelu_activate, gated_activate (src/sae/arch.c).
 * The _rn intrinsics stop nvcc from fusing z * r + b into an FMA, so for equal
 * z the GPU's f is bit-equal to the CPU's. */
#include "launch.cuh"

#include "kernels.h"

#define ACT_THREADS 256

static __device__ __forceinline__ float act_value(const sae_k_act &p, const float *zr, int i)
{
    const float z = zr[i];
    if (p.kind == SAE_K_ACT_GATED) {
        float mag = __fadd_rn(__fmul_rn(z, p.r_mag_exp[i]), p.b_mag[i]);
        return (__fadd_rn(z, p.b_gate[i]) > 0.0f && mag > 0.0f) ? mag : 0.0f;
    }
    const float v = __fadd_rn(z, p.b_enc[i]);
    if (p.kind == SAE_K_ACT_JUMPRELU)
        return v > p.threshold[i] ? v : 0.0f;
    return v > 0.0f ? v : 0.0f;
}

static __global__ void __launch_bounds__(ACT_THREADS)
act_count_kernel(const float *z, int M, sae_k_act p, int32_t *count)
{
    __shared__ int red[ACT_THREADS / 32];
    const float *zr = z + (int64_t)blockIdx.x * M;
    int c = 0;
    for (int i = threadIdx.x; i < M; i += ACT_THREADS)
        c += act_value(p, zr, i) != 0.0f;
    for (int o = 16; o > 0; o >>= 1)
        c += __shfl_down_sync(0xffffffffu, c, o);
    if ((threadIdx.x & 31) == 0)
        red[threadIdx.x >> 5] = c;
    __syncthreads();
    if (threadIdx.x == 0) {
        int s = 0;
        for (int w = 0; w < ACT_THREADS / 32; w++)
            s += red[w];
        count[blockIdx.x] = s;
    }
}

/* Tiles of ACT_THREADS consecutive latents; within a tile each non-zero's
 * slot is the number of non-zeros before it (warp ballot + the warp totals),
 * so the row comes out in index order with no sort. */
static __global__ void __launch_bounds__(ACT_THREADS)
act_fill_kernel(const float *z, int M, sae_k_act p, const int64_t *offsets, int32_t *indices,
                float *values)
{
    __shared__ int warp_total[ACT_THREADS / 32];
    const float *zr = z + (int64_t)blockIdx.x * M;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int64_t at = offsets[blockIdx.x];
    for (int base = 0; base < M; base += ACT_THREADS) {
        const int i = base + threadIdx.x;
        const float f = i < M ? act_value(p, zr, i) : 0.0f;
        const unsigned ballot = __ballot_sync(0xffffffffu, f != 0.0f);
        if (lane == 0)
            warp_total[warp] = __popc(ballot);
        __syncthreads();
        int before = __popc(ballot & ((1u << lane) - 1u)), tile = 0;
        for (int w = 0; w < ACT_THREADS / 32; w++) {
            before += w < warp ? warp_total[w] : 0;
            tile += warp_total[w];
        }
        if (f != 0.0f) {
            indices[at + before] = i;
            values[at + before] = f;
        }
        at += tile;
        __syncthreads();        /* warp_total is rewritten by the next tile */
    }
}

static int check_rows(int64_t B)
{
    return B > 0x7fffffffLL ? (int)cudaErrorInvalidValue : 0;
}

extern "C" int sae_k_act_count(const float *z, int64_t B, int M, const sae_k_act *act,
                               int32_t *count, void *stream)
{
    if (B <= 0)
        return 0;
    if (check_rows(B) || M <= 0)
        return (int)cudaErrorInvalidValue;
    LAUNCH(act_count_kernel, (unsigned)B, ACT_THREADS, stream, z, M, *act, count);
    return (int)cudaGetLastError();
}

extern "C" int sae_k_act_fill(const float *z, int64_t B, int M, const sae_k_act *act,
                              const int64_t *offsets, int32_t *indices, float *values,
                              void *stream)
{
    if (B <= 0)
        return 0;
    if (check_rows(B) || M <= 0)
        return (int)cudaErrorInvalidValue;
    LAUNCH(act_fill_kernel, (unsigned)B, ACT_THREADS, stream, z, M, *act, offsets, indices,
           values);
    return (int)cudaGetLastError();
}
