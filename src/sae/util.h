/* util.h - small file helpers shared inside src/sae. */
#ifndef SAE_UTIL_H
#define SAE_UTIL_H

#include <limits.h>
#include <stddef.h>

#include "sae.h"

/* Reads a whole file of at most max_bytes into a malloc'd, NUL-terminated
 * buffer. */
int sae_read_file(const char *path, size_t max_bytes, char **out, size_t *len, sae_error *err);
/* Maps a regular file read-only: *base (NULL for an empty file, which mmap
 * refuses) and *size; unmap with munmap(*base, *size) when *base is set. The
 * descriptor is closed before returning: the mapping keeps the file alive. */
int sae_map_file(const char *path, const void **base, size_t *size, sae_error *err);
/* An atomic replacement of `path`: bytes go to "<path>.tmp.<pid>" in the same
 * directory (so rename stays within one filesystem), which is synced and then
 * renamed over path; the directory is synced so the rename survives a crash.
 * open, write..., then commit; abort after any failure removes the temporary. */
typedef struct sae_atomic_file {
    const char *path;
    char tmp[PATH_MAX + 32];
    int fd;
} sae_atomic_file;

int sae_atomic_open(sae_atomic_file *a, const char *path, sae_error *err);
int sae_atomic_write(sae_atomic_file *a, const void *buf, size_t n, sae_error *err);
int sae_atomic_commit(sae_atomic_file *a, sae_error *err);
void sae_atomic_abort(sae_atomic_file *a);

/* The whole of data, through the above. */
int sae_write_file_atomic(const char *path, const void *data, size_t len, sae_error *err);
/* Index of the first inf or nan in v[0, n), or n. Tests the exponent bits, so
 * it keeps working under -ffinite-math-only. */
size_t sae_first_nonfinite(const float *v, size_t n);

/* Seconds on the monotonic clock: for intervals (progress, ETA, timeouts). */
double sae_now_seconds(void);

/* n * size zeroed bytes on a 64-byte boundary (a cache line: vector loads of
 * weight rows never straddle two), freed with free(); NULL on overflow or
 * when out of memory. */
void *sae_calloc_aligned(size_t n, size_t size);

/* mkdir -p */
int sae_mkdirs(const char *path, sae_error *err);

#endif
