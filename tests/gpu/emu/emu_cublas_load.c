/* emu_cublas_load.c - sae_cublas (src/sae/cublas_fns.h) from the emulated
 * cuBLAS of emu_runtime.cc, linked in, in place of src/sae/cublas_load.c. */
#include "cublas_fns.h"

sae_cublas_fns sae_cublas;

int sae_cublas_load(sae_error *err)
{
    (void)err;
    sae_cublas = (sae_cublas_fns){
        .create = cublasCreate,
        .destroy = cublasDestroy,
        .set_stream = cublasSetStream,
        .set_math_mode = cublasSetMathMode,
        .status_name = cublasGetStatusName,
        .sgemm = cublasSgemm,
    };
    return SAE_OK;
}
