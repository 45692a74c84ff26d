/* decode.cu - sparse decode: one block per row, threads stride over d and
 * accumulate the row's active decoder rows. Cost O(B k d), never a dense
 * B x M x d GEMM.
 *
 * The sum runs in the CPU's order (b_dec, then the entries in CSR order) with
 * separate multiply and add roundings (no FMA), so for the same codes the
 * GPU's xhat is bit-equal to cpu_decode's. With d % 4 == 0 each thread owns
 * groups of 4 columns and loads them 16 bytes at a time. */
#include "launch.cuh"

#include "kernels.h"

/* Where a row's sum starts: b_dec or zero. */
enum { FROM_BIAS, FROM_ZERO };

template <bool VEC, int FROM>
static __global__ void __launch_bounds__(256)
sparse_decode_kernel(const int64_t *__restrict__ indptr, const int32_t *__restrict__ indices,
                     const float *__restrict__ values, const float *__restrict__ W_dec,
                     const float *__restrict__ b_dec, int d, float *__restrict__ xhat)
{
    const int64_t row = blockIdx.x;
    const int64_t begin = indptr[row], end = indptr[row + 1];
    if (VEC) {
        const int d4 = d / 4;
        const float4 *W4 = (const float4 *)W_dec;
        float4 *out = (float4 *)(xhat + row * d);
        for (int j = threadIdx.x; j < d4; j += blockDim.x) {
            float4 acc = FROM == FROM_BIAS ? ((const float4 *)b_dec)[j]
                                           : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 4
            for (int64_t e = begin; e < end; e++) {
                const float v = values[e];
                const float4 w = W4[(int64_t)indices[e] * d4 + j];
                acc.x = __fadd_rn(acc.x, __fmul_rn(v, w.x));
                acc.y = __fadd_rn(acc.y, __fmul_rn(v, w.y));
                acc.z = __fadd_rn(acc.z, __fmul_rn(v, w.z));
                acc.w = __fadd_rn(acc.w, __fmul_rn(v, w.w));
            }
            out[j] = acc;
        }
    } else {
        for (int j = threadIdx.x; j < d; j += blockDim.x) {
            float acc = FROM == FROM_BIAS ? b_dec[j] : 0.0f;
#pragma unroll 4
            for (int64_t e = begin; e < end; e++)
                acc = __fadd_rn(acc, __fmul_rn(values[e], W_dec[(int64_t)indices[e] * d + j]));
            xhat[row * d + j] = acc;
        }
    }
}

template <int FROM>
static int launch_decode(const int64_t *indptr, const int32_t *indices, const float *values,
                         const float *W_dec, const float *b_dec, int64_t B, int d, float *xhat,
                         void *stream)
{
    if (B <= 0)
        return 0;
    if (B > 0x7fffffffLL || d <= 0)
        return (int)cudaErrorInvalidValue;
    /* 16-byte path: every row start is 16-byte aligned when d % 4 == 0 and
     * the base pointers are (cudaMalloc gives 256) */
    const bool vec = (d % 4) == 0 &&
                     (((uintptr_t)W_dec | (uintptr_t)b_dec | (uintptr_t)xhat) & 15) == 0;
    const int cols = vec ? d / 4 : d;
    /* one pass over the columns when they fit in a block: d = 768 -> 192 threads */
    const int threads = cols >= 256 ? 256 : ((cols + 31) / 32) * 32;
    const auto kernel = vec ? sparse_decode_kernel<true, FROM> : sparse_decode_kernel<false, FROM>;
    LAUNCH(kernel, (unsigned)B, threads, stream, indptr, indices, values, W_dec, b_dec, d, xhat);
    return (int)cudaGetLastError();
}

extern "C" int sae_k_sparse_decode(const int64_t *indptr, const int32_t *indices,
                                   const float *values, const float *W_dec, const float *b_dec,
                                   int64_t B, int d, float *xhat, void *stream)
{
    return b_dec ? launch_decode<FROM_BIAS>(indptr, indices, values, W_dec, b_dec, B, d, xhat,
                                            stream)
                 : launch_decode<FROM_ZERO>(indptr, indices, values, W_dec, NULL, B, d, xhat,
                                            stream);
}
