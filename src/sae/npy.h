/* npy.h - NumPy .npy files (format versions 1.0, 2.0, 3.0), little-endian,
 * C order. Reading accepts '<f4' (and '<f2', '<f8', converted to float32) for
 * float arrays; writing produces '<f4' version 1.0. */
#ifndef SAE_NPY_H
#define SAE_NPY_H

#include <stdint.h>

#include "sae.h"

typedef struct npy_array {
    int ndim;
    int64_t shape[8];
    float *data;                /* malloc'd, numel floats */
} npy_array;

/* Reads a float array of exactly `want_ndim` dimensions (2 for activations).
 * Errors name the file and the problem: bad magic, unsupported dtype,
 * fortran_order, truncated data, wrong rank. */
int npy_read_f32(const char *path, int want_ndim, npy_array *out, sae_error *err);
void npy_free(npy_array *a);
/* Writes float32 data of the given shape, atomically (temp file + rename). */
int npy_write_f32(const char *path, const float *data, int ndim, const int64_t *shape,
                  sae_error *err);

#endif
