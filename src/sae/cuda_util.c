/* cuda_util.c - see cuda_util.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cublas_fns.h"
#include "cuda_util.h"

/* Errors after which the context is unusable: every later call fails too. */
static int is_sticky(cudaError_t e)
{
    switch (e) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorHardwareStackError:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorAssert:
    case cudaErrorECCUncorrectable:
    case cudaErrorLaunchTimeout:
    case cudaErrorNvlinkUncorrectable:
    case cudaErrorTensorMemoryLeak:
    case cudaErrorContextIsDestroyed:
    case cudaErrorUnknown:
        return 1;
    default:
        return 0;
    }
}

int sae_cuda_fail(cudaStream_t stream, char *fatal, size_t fatal_len, sae_error *err,
                  cudaError_t e, const char *what)
{
    if (!is_sticky(e) && stream) {
        cudaError_t q = cudaStreamQuery(stream);
        if (q != cudaSuccess && q != cudaErrorNotReady && is_sticky(q))
            e = q;
    }
    if (is_sticky(e)) {
        if (fatal && !fatal[0])
            snprintf(fatal, fatal_len, "fatal CUDA error: %s (%s) during %s", cudaGetErrorName(e),
                     cudaGetErrorString(e), what);
        return sae_fail(err, "%s", fatal ? fatal : "fatal CUDA error");
    }
    (void)cudaGetLastError();   /* clear a non-sticky error so it is not reported twice */
    return sae_fail(err, "CUDA error: %s (%s) during %s", cudaGetErrorName(e),
                    cudaGetErrorString(e), what);
}

int sae_cublas_fail(cudaStream_t stream, char *fatal, size_t fatal_len, sae_error *err,
                    cublasStatus_t s, const char *what)
{
    cudaError_t q = stream ? cudaStreamQuery(stream) : cudaSuccess;
    if (q != cudaSuccess && q != cudaErrorNotReady)
        return sae_cuda_fail(stream, fatal, fatal_len, err, q, what);
    return sae_fail(err, "cuBLAS error: %s during %s", sae_cublas.status_name(s), what);
}

int sae_cuda_alloc(cudaStream_t stream, char *fatal, size_t fatal_len, void **p, size_t bytes,
                   const char *what, sae_error *err)
{
    *p = NULL;
    cudaError_t e = cudaMalloc(p, bytes ? bytes : 1);
    if (e == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();
        *p = NULL;
        return sae_fail(err, "out of GPU memory: %zu bytes for %s", bytes, what);
    }
    if (e != cudaSuccess) {
        *p = NULL;
        return sae_cuda_fail(stream, fatal, fatal_len, err, e, what);
    }
    return SAE_OK;
}

void sae_cuda_free(void *p)
{
    if (p)
        (void)cudaFree(p);
}

int sae_cublas_open(cudaStream_t stream, char *fatal, size_t fatal_len, cublasHandle_t *h,
                    sae_error *err)
{
    static int said_tf32;
    const char *tf32 = getenv("SAED_CUDA_TF32");
    const int use_tf32 = tf32 && tf32[0] && strcmp(tf32, "0") != 0;
    *h = NULL;
    if (sae_cublas_load(err) != SAE_OK)
        return SAE_ERR;
    cublasStatus_t s = sae_cublas.create(h);
    if (s != CUBLAS_STATUS_SUCCESS) {
        *h = NULL;
        return sae_cublas_fail(stream, fatal, fatal_len, err, s, "creating the cuBLAS handle");
    }
    if ((s = sae_cublas.set_stream(*h, stream)) != CUBLAS_STATUS_SUCCESS)
        return sae_cublas_fail(stream, fatal, fatal_len, err, s, "setting the cuBLAS stream");
    s = sae_cublas.set_math_mode(*h, use_tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH);
    if (s != CUBLAS_STATUS_SUCCESS)
        return sae_cublas_fail(stream, fatal, fatal_len, err, s, "setting the cuBLAS math mode");
    if (use_tf32 && !said_tf32++)
        sae_log("cuBLAS GEMMs in TF32 (SAED_CUDA_TF32 is set)");
    return SAE_OK;
}
