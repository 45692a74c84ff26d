/* util.c - error messages and file helpers shared by the whole of src/sae. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "sae.h"
#include "util.h"

int sae_fail(sae_error *err, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return SAE_ERR;
}

int sae_map_file(const char *path, const void **base, size_t *size, sae_error *err)
{
    *base = NULL;
    *size = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return sae_fail(err, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return sae_fail(err, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return sae_fail(err, "%s: not a regular file", path);
    }
    *size = (size_t)st.st_size;
    if (*size > 0) {
        void *p = mmap(NULL, *size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            int e = errno;
            close(fd);
            *size = 0;
            return sae_fail(err, "%s: cannot map %zu bytes: %s", path, (size_t)st.st_size,
                            strerror(e));
        }
        *base = p;
    }
    /* a read-only descriptor has nothing to flush: a failing close changes
     * nothing we rely on */
    (void)close(fd);
    return SAE_OK;
}

int sae_read_file(const char *path, size_t max_bytes, char **out, size_t *len, sae_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return sae_fail(err, "%s: %s", path, strerror(errno));
    char *buf = NULL;
    size_t n = 0, cap = 0;
    int rc = SAE_OK;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 8192;
            char *nb = realloc(buf, cap);
            if (!nb) {
                rc = sae_fail(err, "%s: out of memory", path);
                break;
            }
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (n > max_bytes) {
            rc = sae_fail(err, "%s: larger than %zu bytes", path, max_bytes);
            break;
        }
        if (got == 0) {
            if (ferror(f))
                rc = sae_fail(err, "%s: read error", path);
            break;
        }
    }
    fclose(f);
    if (rc != SAE_OK) {
        free(buf);
        return rc;
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return SAE_OK;
}

int sae_atomic_open(sae_atomic_file *a, const char *path, sae_error *err)
{
    a->path = path;
    a->fd = -1;
    int len = snprintf(a->tmp, sizeof a->tmp, "%s.tmp.%ld", path, (long)getpid());
    if (len < 0 || (size_t)len >= sizeof a->tmp) {
        a->tmp[0] = '\0';
        return sae_fail(err, "%s: path too long", path);
    }
    a->fd = open(a->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (a->fd < 0) {
        int e = errno;
        sae_fail(err, "%s: cannot create %s: %s", path, a->tmp, strerror(e));
        a->tmp[0] = '\0';   /* not ours: the abort must not remove it */
        return SAE_ERR;
    }
    return SAE_OK;
}

int sae_atomic_write(sae_atomic_file *a, const void *buf, size_t n, sae_error *err)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(a->fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return sae_fail(err, "%s: write to %s failed: %s", a->path, a->tmp,
                            w < 0 ? strerror(errno) : "no progress");
        p += w;
        n -= (size_t)w;
    }
    return SAE_OK;
}

static int fsync_parent_dir(const char *path, sae_error *err)
{
    char dir[PATH_MAX];
    const char *slash = strrchr(path, '/');
    size_t len = slash ? (size_t)(slash - path) : 0;
    if (len >= sizeof dir)
        return sae_fail(err, "%s: path too long", path);
    if (slash && len == 0)
        len = 1;   /* a file in "/" */
    memcpy(dir, slash ? path : ".", slash ? len : 1);
    dir[slash ? len : 1] = '\0';
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return sae_fail(err, "%s: cannot open directory %s: %s", path, dir, strerror(errno));
    /* Some filesystems cannot sync a directory and say EINVAL; the rename is
     * then as durable as they make it. */
    int rc = fsync(fd) == 0 || errno == EINVAL ? SAE_OK
        : sae_fail(err, "%s: fsync of directory %s failed: %s", path, dir, strerror(errno));
    close(fd);
    return rc;
}

/* Syncs, closes and renames the temporary file into place. */
int sae_atomic_commit(sae_atomic_file *a, sae_error *err)
{
    if (fsync(a->fd) != 0)
        return sae_fail(err, "%s: fsync of %s failed: %s", a->path, a->tmp, strerror(errno));
    int rc = close(a->fd);
    a->fd = -1;
    if (rc != 0)
        return sae_fail(err, "%s: close of %s failed: %s", a->path, a->tmp, strerror(errno));
    if (rename(a->tmp, a->path) != 0)
        return sae_fail(err, "%s: rename from %s failed: %s", a->path, a->tmp,
                        strerror(errno));
    a->tmp[0] = '\0';   /* nothing left to clean up */
    return fsync_parent_dir(a->path, err);
}

void sae_atomic_abort(sae_atomic_file *a)
{
    if (a->fd >= 0)
        close(a->fd);
    if (a->tmp[0])
        unlink(a->tmp);
}

int sae_write_file_atomic(const char *path, const void *data, size_t len, sae_error *err)
{
    sae_atomic_file a;
    int rc = sae_atomic_open(&a, path, err);
    if (rc == SAE_OK)
        rc = sae_atomic_write(&a, data, len, err);
    if (rc == SAE_OK)
        rc = sae_atomic_commit(&a, err);
    if (rc != SAE_OK)
        sae_atomic_abort(&a);
    return rc;
}

int sae_mkdirs(const char *path, sae_error *err)
{
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return sae_fail(err, "%s: path too long", path);
    for (char *p = buf + 1; ; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(buf, 0755) != 0 && errno != EEXIST)
                return sae_fail(err, "%s: cannot create directory: %s", buf, strerror(errno));
            *p = c;
            if (c == '\0')
                break;
        }
    }
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
        return sae_fail(err, "%s: not a directory", path);
    return SAE_OK;
}

double sae_now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* inf or nan: every exponent bit set */
static inline uint32_t nonfinite(const float *f)
{
    uint32_t bits;
    memcpy(&bits, f, sizeof bits);
    return (bits & 0x7f800000u) == 0x7f800000u;
}

/* A block at a time without a branch, which the compiler vectorises (a
 * branch per value took 0.4 ms of a 1024-row request body); the block that
 * holds one is then searched. */
size_t sae_first_nonfinite(const float *v, size_t n)
{
    enum { BLOCK = 1024 };
    for (size_t i0 = 0; i0 < n; i0 += BLOCK) {
        const size_t end = n - i0 < BLOCK ? n : i0 + BLOCK;
        uint32_t any = 0;
        for (size_t i = i0; i < end; i++)
            any |= nonfinite(&v[i]);
        for (size_t i = i0; any && i < end; i++)
            if (nonfinite(&v[i]))
                return i;
    }
    return n;
}

void *sae_calloc_aligned(size_t n, size_t size)
{
    if (size && n > SIZE_MAX / size)
        return NULL;
    size_t bytes = n * size > 0 ? n * size : 1;
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes) != 0)
        return NULL;
    memset(p, 0, bytes);
    return p;
}

typedef struct thread_buffer {
    float *floats;
    size_t n;
} thread_buffer;

static pthread_key_t scratch_key;
static int scratch_key_ok;

static void scratch_free(void *p)
{
    thread_buffer *b = p;
    for (int u = 0; u < SAE_SCRATCH_USES; u++)
        free(b[u].floats);
    free(b);
}

static void scratch_key_create(void)
{
    scratch_key_ok = pthread_key_create(&scratch_key, scratch_free) == 0;
}

float *sae_thread_scratch(sae_scratch_use use, size_t n)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, scratch_key_create);
    if (!scratch_key_ok)
        return NULL;
    thread_buffer *b = pthread_getspecific(scratch_key);
    if (!b) {
        if (!(b = calloc(SAE_SCRATCH_USES, sizeof *b)))
            return NULL;
        if (pthread_setspecific(scratch_key, b) != 0) {
            free(b);
            return NULL;
        }
    }
    if (n > b[use].n) {
        free(b[use].floats);
        b[use].floats = sae_calloc_aligned(n, sizeof *b[use].floats);
        b[use].n = b[use].floats ? n : 0;
    }
    return b[use].floats;
}
