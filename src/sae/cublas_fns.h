/* cublas_fns.h - the cuBLAS calls saed makes, through a table that
 * sae_cublas_load() fills the first time a GPU backend opens.
 *
 * Why not link libcublas: it needs libcublasLt, and loading that costs every
 * process about 100 MB of memory and 0.2 s before main, on machines without
 * a GPU and with --device cpu too (saectl --help: 221 MB and 0.23 s linked,
 * 5 MB and 0.01 s without). cublas_load.c opens the library with dlopen;
 * tests/gpu/emu fills the table with its CPU emulation. */
#ifndef SAE_CUBLAS_FNS_H
#define SAE_CUBLAS_FNS_H

#include <cublas_v2.h>

#include "sae.h"

#define SAE_STR_(x) #x
#define SAE_STR(x) SAE_STR_(x)
/* the library of the headers we compiled against */
#define CUBLAS_SONAME "libcublas.so." SAE_STR(CUBLAS_VER_MAJOR)

typedef struct sae_cublas_fns {
    cublasStatus_t (*create)(cublasHandle_t *h);
    cublasStatus_t (*destroy)(cublasHandle_t h);
    cublasStatus_t (*set_stream)(cublasHandle_t h, cudaStream_t stream);
    cublasStatus_t (*set_math_mode)(cublasHandle_t h, cublasMath_t mode);
    const char *(*status_name)(cublasStatus_t s);
    cublasStatus_t (*sgemm)(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                            int n, int k, const float *alpha, const float *A, int lda,
                            const float *B, int ldb, const float *beta, float *C, int ldc);
} sae_cublas_fns;

/* Filled by sae_cublas_load; read only after it returned SAE_OK. */
extern sae_cublas_fns sae_cublas;

/* Fills sae_cublas once (thread-safe; later calls repeat the first answer).
 * SAE_ERR, with the loader's reason, when the library or a symbol is missing. */
int sae_cublas_load(sae_error *err);

#endif
