/* backend.h - where a model's arithmetic runs. The CPU backend (OpenBLAS) is
 * the reference; the CUDA backend (cuBLAS + kernels/) must match it. A model
 * points at one backend; sae_encode / sae_decode dispatch through it. */
#ifndef SAE_BACKEND_H
#define SAE_BACKEND_H

#include <stddef.h>

#include "sae.h"
#include "sae_build.h"

typedef struct sae_backend {
    const char *name;
    /* Copies the weights where the backend needs them (m->backend_state). */
    int (*attach)(sae_model *m, sae_error *err);
    void (*detach)(sae_model *m);
    int (*encode)(const sae_model *m, const float *x, int64_t n, sae_codes *codes,
                  sae_error *err);
    int (*decode)(const sae_model *m, const sae_codes *codes, float *xhat, sae_error *err);
} sae_backend;

extern const sae_backend sae_backend_cpu;

/* Compiled in with -Dcuda; sae_cuda_probe says whether a usable GPU is there
 * and describes it in desc. */
#if SAE_HAVE_CUDA
extern const sae_backend sae_backend_cuda;
int sae_cuda_probe(int device, char *desc, size_t n);
#endif

/* A device string: "cpu" (or NULL), "auto", "cuda" or "cuda:N" (N in
 * *cuda_index, 0 for "cuda"); -1 for anything else. */
enum { SAE_DEVICE_CPU, SAE_DEVICE_AUTO, SAE_DEVICE_CUDA };
int sae_parse_device(const char *s, int *cuda_index);

/* Log hook for the few things a library must say once (which device was
 * chosen). Default: a line on stderr after the program's name. */
void sae_set_log(void (*fn)(const char *line));
void sae_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
