/* cuda_util.h - error handling shared by the CUDA host code (backend_cuda.c,
 * train_cuda.c): every CUDA and cuBLAS call is checked, and an error that
 * leaves the context unusable (illegal address, launch failure, ...) is kept
 * as the owner's `fatal` message, which every later call repeats: the daemon
 * exits on it and systemd restarts us. Nothing here exits.
 *
 * CK(call, what) and BL(call, what) return from the calling function with the
 * error reported; they expect `st` (with `stream` and `char fatal[N]`) and
 * `sae_error *err` in scope. */
#ifndef SAE_CUDA_UTIL_H
#define SAE_CUDA_UTIL_H

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <stddef.h>

#include "sae.h"

/* Reports error e from `what` into err. A sticky error (e, or one the stream
 * shows on a check) is kept in fatal (the first one wins). */
int sae_cuda_fail(cudaStream_t stream, char *fatal, size_t fatal_len, sae_error *err,
                  cudaError_t e, const char *what);
int sae_cublas_fail(cudaStream_t stream, char *fatal, size_t fatal_len, sae_error *err,
                    cublasStatus_t s, const char *what);
/* cudaMalloc (never managed memory), with "out of GPU memory" said plainly. */
int sae_cuda_alloc(cudaStream_t stream, char *fatal, size_t fatal_len, void **p, size_t bytes,
                   const char *what, sae_error *err);
void sae_cuda_free(void *p);

/* A cuBLAS handle on stream, FP32 unless SAED_CUDA_TF32 is set (and not "0"):
 * then TF32 tensor cores, said once in the log. Loads cuBLAS first
 * (cublas_fns.h); calls through sae_cublas are valid once this succeeded. */
int sae_cublas_open(cudaStream_t stream, char *fatal, size_t fatal_len, cublasHandle_t *h,
                    sae_error *err);

/* backend_cuda.c: whether device is usable (it exists, runs this build's
 * kernels, and cuBLAS loads), described in desc (also where sae_build.h says
 * no CUDA: the emulated build of tests/gpu). */
int sae_cuda_probe(int device, char *desc, size_t n);

#define CK(call, what)                                                                   \
    do {                                                                                 \
        cudaError_t e_ = (cudaError_t)(call);                                            \
        if (e_ != cudaSuccess)                                                           \
            return sae_cuda_fail(st->stream, st->fatal, sizeof st->fatal, err, e_, what); \
    } while (0)

#define BL(call, what)                                                                    \
    do {                                                                                  \
        cublasStatus_t s_ = (call);                                                       \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                  \
            return sae_cublas_fail(st->stream, st->fatal, sizeof st->fatal, err, s_, what); \
    } while (0)

#endif
