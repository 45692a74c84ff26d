/* preprocess.cu - x -> x' and x~ = x' - b_dec, one block per row; and the probe
 * kernel.
 *
 * CPU twin: sae_preprocess (src/sae/encode.c) followed by the b_dec
 * subtraction of input_rows (src/sae/backend_cpu.c). The statistics are in
 * double and the output is formed exactly as the CPU forms it,
 * (float)((x - shift) * scale) then - b_dec in float, so the two differ only
 * by the summation order of the row statistics. */
#include "launch.cuh"

#include "kernels.h"

#define PRE_THREADS 256

/* Sum of v over the block (PRE_THREADS threads); every thread gets it.
 * `red` is PRE_THREADS / 32 doubles of shared memory. */
static __device__ double block_sum(double v, double *red)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_down_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();            /* red may still be read by a previous call */
    if (lane == 0)
        red[warp] = v;
    __syncthreads();
    double s = 0.0;
    for (int w = 0; w < PRE_THREADS / 32; w++)
        s += red[w];
    return s;
}

/* x' = the row of src preprocessed, into dst (NULL: not kept); x' - b_dec
 * (b_dec NULL: 0) into dst_sub (NULL: not made). Either may be src. */
static __global__ void __launch_bounds__(PRE_THREADS)
preprocess_kernel(const float *src, float *dst, float *dst_sub, int d, int norm, float scale_c,
                  const float *b_dec)
{
    __shared__ double red[PRE_THREADS / 32];
    const int64_t row = (int64_t)blockIdx.x * d;
    const float *xr = src + row;
    double shift = 0.0, scale = 1.0;
    if (norm == SAE_K_NORM_CONSTANT_SCALE) {
        scale = (double)scale_c;
    } else if (norm == SAE_K_NORM_CENTER_UNIT_NORM || norm == SAE_K_NORM_LAYER_NORM) {
        /* two passes, as the CPU: mean first, then the centred square sum
         * (one pass of sum and sum of squares loses digits for large means) */
        double s = 0.0;
        for (int j = threadIdx.x; j < d; j += PRE_THREADS)
            s += (double)xr[j];
        shift = block_sum(s, red) / d;
        double q = 0.0;
        for (int j = threadIdx.x; j < d; j += PRE_THREADS) {
            double c = (double)xr[j] - shift;
            q = __dadd_rn(q, __dmul_rn(c, c));
        }
        q = block_sum(q, red);
        if (norm == SAE_K_NORM_LAYER_NORM)
            scale = 1.0 / sqrt(q / d + 1e-5);
        else
            scale = q > 0.0 ? 1.0 / sqrt(q) : 0.0;   /* a constant row stays 0 */
    }
    /* every thread read its columns above before any is overwritten: each
     * thread writes only the columns it read itself */
    for (int j = threadIdx.x; j < d; j += PRE_THREADS) {
        const float o = (float)(__dmul_rn((double)xr[j] - shift, scale));
        if (dst)
            dst[row + j] = o;
        if (dst_sub)
            dst_sub[row + j] = b_dec ? __fsub_rn(o, b_dec[j]) : o;
    }
}

extern "C" int sae_k_preprocess_to(const float *src, float *dst, float *dst_sub, int64_t B,
                                   int d, int norm, float scale, const float *b_dec,
                                   void *stream)
{
    if (B <= 0 || d <= 0)
        return 0;
    if (B > 0x7fffffffLL)
        return (int)cudaErrorInvalidValue;
    if (norm == SAE_K_NORM_NONE && !b_dec && (!dst || dst == src) && (!dst_sub || dst_sub == src))
        return 0;           /* nothing to change */
    LAUNCH(preprocess_kernel, (unsigned)B, PRE_THREADS, stream, src, dst, dst_sub, d, norm, scale,
           b_dec);
    return (int)cudaGetLastError();
}

extern "C" int sae_k_preprocess(float *x, int64_t B, int d, int norm, float scale,
                                const float *b_dec, void *stream)
{
    return sae_k_preprocess_to(x, b_dec ? NULL : x, b_dec ? x : NULL, B, d, norm, scale, b_dec,
                               stream);
}

static __global__ void probe_kernel(void) {}

extern "C" int sae_k_probe(void)
{
    LAUNCH(probe_kernel, 1, 1, 0, );
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess)
        return (int)e;
    return (int)cudaDeviceSynchronize();
}
