/* util.h - small file helpers shared inside src/sae. */
#ifndef SAE_UTIL_H
#define SAE_UTIL_H

#include <stddef.h>

#include "sae.h"

/* Reads a whole file of at most max_bytes into a malloc'd, NUL-terminated
 * buffer. */
int sae_read_file(const char *path, size_t max_bytes, char **out, size_t *len, sae_error *err);
/* Writes path atomically: "<path>.tmp.<pid>" in the same directory, fsync,
 * rename, fsync of the directory. The temporary file is removed on error. */
int sae_write_file_atomic(const char *path, const void *data, size_t len, sae_error *err);
/* mkdir -p */
int sae_mkdirs(const char *path, sae_error *err);

#endif
