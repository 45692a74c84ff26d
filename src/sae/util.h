/* util.h - small helpers shared inside src/sae: files, checks, memory. */
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

/* Buffers a thread keeps across calls, one per use: fresh ones cost their
 * page faults on every call (a serving batch's scores, 6 MB at 64 rows of a
 * 24576-latent model, every few milliseconds; a large encode's blocks, 100 MB
 * and more). They are freed when their thread exits (a pthread key's
 * destructor): the daemon's batcher thread for a model ends when the model is
 * unloaded, and libgomp's pool of worker threads with it; a plain
 * thread-local pointer leaked both threads' buffers, about 100 MB per load,
 * encode and unload of a 768 x 24576 model. */
typedef enum sae_scratch_use {
    SAE_SCRATCH_ENCODE, /* the encoder's x~ and z */
    SAE_SCRATCH_PACK,   /* our GEMM kernel's packed A (blas.c) */
    SAE_SCRATCH_USES
} sae_scratch_use;

/* This thread's buffer for `use`: at least n floats on a 64-byte boundary,
 * holding whatever the last call left; NULL when out of memory. */
float *sae_thread_scratch(sae_scratch_use use, size_t n);

/* mkdir -p */
int sae_mkdirs(const char *path, sae_error *err);

#endif
