/* decode.cu - sparse decode: one block per row, threads stride over d and
 * accumulate the row's active decoder rows. Cost O(B k d), never a dense
 * B x M x d GEMM. */
#include <cuda_runtime.h>

#include "kernels.h"

static __global__ void sparse_decode_kernel(const int64_t *indptr, const int32_t *indices,
                                            const float *values, const float *W_dec,
                                            const float *b_dec, int d, float *xhat)
{
    int64_t row = blockIdx.x;
    int64_t begin = indptr[row], end = indptr[row + 1];
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        float acc = b_dec[j];
        for (int64_t e = begin; e < end; e++)
            acc += values[e] * W_dec[(int64_t)indices[e] * d + j];
        xhat[row * d + j] = acc;
    }
}

extern "C" int sae_k_sparse_decode(const int64_t *indptr, const int32_t *indices,
                                   const float *values, const float *W_dec, const float *b_dec,
                                   int64_t B, int d, float *xhat, void *stream)
{
    if (B == 0)
        return 0;
    sparse_decode_kernel<<<(unsigned)B, 256, 0, (cudaStream_t)stream>>>(indptr, indices, values,
                                                                       W_dec, b_dec, d, xhat);
    return (int)cudaGetLastError();
}
