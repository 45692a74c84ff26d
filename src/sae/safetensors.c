/* safetensors.c - a strict safetensors reader and writer; safetensors.h
 * describes the format and what is validated.
 *
 * Reading: the whole header is checked (parse_header) before any tensor is
 * touched, so later code can trust every offset and size. Conversion to
 * float32 goes in chunks and hands the mapped pages it has consumed back to
 * the kernel, so loading a checkpoint costs the float32 copy plus one chunk.
 * Writing: one JSON header built with jansson, then the tensors' bytes;
 * st_write goes through a temporary file so a crash never leaves half a file
 * under the real name. */
#include "safetensors.h"
#include "util.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <immintrin.h>
#define HAVE_F16C_PATH 1
#endif
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <jansson.h>

/* File data is copied byte for byte into native integers and floats. */
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host"
#endif

/* The reference implementation refuses headers over 100 MB; so do we, which
 * also bounds what a hostile file can make us allocate. */
#define ST_MAX_HEADER 100000000ull
/* Source bytes converted between page releases: big enough to amortise a
 * madvise call, small next to any file whose pages are worth releasing. */
#define ST_CHUNK_BYTES ((size_t)16 << 20)
/* Transpose tile edge in elements: a 64 x 64 float tile (16 KiB) stays in L1. */
#define ST_TILE 64

static const struct {
    const char *name;
    size_t size;
} dtypes[ST_DTYPE_COUNT] = {
    [ST_F32] = {"F32", 4}, [ST_F16] = {"F16", 2}, [ST_BF16] = {"BF16", 2},
    [ST_F64] = {"F64", 8}, [ST_I64] = {"I64", 8}, [ST_I32] = {"I32", 4},
    [ST_I16] = {"I16", 2}, [ST_I8] = {"I8", 1},   [ST_U8] = {"U8", 1},
    [ST_BOOL] = {"BOOL", 1},
};

static int dtype_valid(st_dtype t)
{
    return (unsigned)t < (unsigned)ST_DTYPE_COUNT;
}

size_t st_dtype_size(st_dtype t)
{
    return dtype_valid(t) ? dtypes[t].size : 0;
}

const char *st_dtype_name(st_dtype t)
{
    return dtype_valid(t) ? dtypes[t].name : "?";
}

int st_dtype_parse(const char *s, st_dtype *out)
{
    for (int i = 0; i < ST_DTYPE_COUNT; i++) {
        if (strcmp(s, dtypes[i].name) == 0) {
            *out = (st_dtype)i;
            return SAE_OK;
        }
    }
    return SAE_ERR;
}

/* Only meaningful for validated tensors, whose element count cannot overflow. */
int64_t st_numel(const st_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

/* ---- Header validation ------------------------------------------------- */

static uint64_t load_u64le(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* A JSON integer >= 0 (jansson rejects integers beyond long long at parse). */
static int json_uint(const json_t *v, uint64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return SAE_ERR;
    *out = (uint64_t)json_integer_value(v);
    return SAE_OK;
}

static int parse_dtype(const st_file *f, const char *name, const json_t *v, st_tensor *t,
                       sae_error *err)
{
    if (!json_is_string(v))
        return sae_fail(err, "%s: tensor %s: \"dtype\" is not a string", f->path, name);
    if (st_dtype_parse(json_string_value(v), &t->dtype) != SAE_OK)
        return sae_fail(err, "%s: tensor %s: unknown dtype '%.32s'", f->path, name,
                        json_string_value(v));
    return SAE_OK;
}

/* Fills t->ndim and t->shape, making sure the byte size fits in int64. */
static int parse_shape(const st_file *f, const char *name, const json_t *v, st_tensor *t,
                       sae_error *err)
{
    if (!json_is_array(v))
        return sae_fail(err, "%s: tensor %s: \"shape\" is not an array", f->path, name);
    if (json_array_size(v) > ST_MAX_DIMS)
        return sae_fail(err, "%s: tensor %s: shape has %zu dimensions, at most %d allowed",
                        f->path, name, json_array_size(v), ST_MAX_DIMS);
    uint64_t limit = INT64_MAX / dtypes[t->dtype].size;   /* largest numel whose bytes fit */
    uint64_t numel = 1;
    t->ndim = (int)json_array_size(v);
    for (int i = 0; i < t->ndim; i++) {
        uint64_t d;
        if (json_uint(json_array_get(v, (size_t)i), &d) != SAE_OK)
            return sae_fail(err, "%s: tensor %s: shape[%d] is not a non-negative integer",
                            f->path, name, i);
        if (d != 0 && numel > limit / d)
            return sae_fail(err, "%s: tensor %s: shape is too large (byte size overflows)",
                            f->path, name);
        numel *= d;
        t->shape[i] = (int64_t)d;
    }
    return SAE_OK;
}

static int parse_offsets(const st_file *f, const char *name, const json_t *v,
                         uint64_t data_size, st_tensor *t, sae_error *err)
{
    if (!json_is_array(v) || json_array_size(v) != 2 ||
        json_uint(json_array_get(v, 0), &t->begin) != SAE_OK ||
        json_uint(json_array_get(v, 1), &t->end) != SAE_OK)
        return sae_fail(err, "%s: tensor %s: \"data_offsets\" is not [begin, end] with "
                        "non-negative integers", f->path, name);
    if (t->begin > t->end)
        return sae_fail(err, "%s: tensor %s: data_offsets begin %llu is after end %llu",
                        f->path, name, (unsigned long long)t->begin,
                        (unsigned long long)t->end);
    if (t->end > data_size)
        return sae_fail(err, "%s: tensor %s: data_offsets end %llu is beyond the data block "
                        "(%llu bytes)", f->path, name, (unsigned long long)t->end,
                        (unsigned long long)data_size);
    uint64_t want = (uint64_t)st_numel(t) * dtypes[t->dtype].size;
    if (t->end - t->begin != want)
        return sae_fail(err, "%s: tensor %s: data_offsets span %llu bytes but the shape of "
                        "%s needs %llu", f->path, name,
                        (unsigned long long)(t->end - t->begin), dtypes[t->dtype].name,
                        (unsigned long long)want);
    return SAE_OK;
}

/* Every tensor entry has exactly these fields; anything else is a typo or a
 * format we do not understand, and both deserve an error. */
static int check_fields(const st_file *f, const char *name, json_t *v, sae_error *err)
{
    const char *key;
    json_t *val;
    json_object_foreach(v, key, val) {
        if (strcmp(key, "dtype") != 0 && strcmp(key, "shape") != 0 &&
            strcmp(key, "data_offsets") != 0)
            return sae_fail(err, "%s: tensor %s: unexpected field '%.64s'", f->path, name, key);
    }
    if (!json_object_get(v, "dtype") || !json_object_get(v, "shape") ||
        !json_object_get(v, "data_offsets"))
        return sae_fail(err, "%s: tensor %s: needs \"dtype\", \"shape\" and \"data_offsets\"",
                        f->path, name);
    return SAE_OK;
}

static int parse_tensor(const st_file *f, const char *name, json_t *v, uint64_t data_size,
                        st_tensor *t, sae_error *err)
{
    size_t len = strlen(name);
    if (len >= ST_MAX_NAME)
        return sae_fail(err, "%s: tensor name '%.40s...' is %zu bytes, longer than the "
                        "limit of %d", f->path, name, len, ST_MAX_NAME - 1);
    if (!json_is_object(v))
        return sae_fail(err, "%s: tensor %s: entry is not a JSON object", f->path, name);
    if (check_fields(f, name, v, err) != SAE_OK ||
        parse_dtype(f, name, json_object_get(v, "dtype"), t, err) != SAE_OK ||
        parse_shape(f, name, json_object_get(v, "shape"), t, err) != SAE_OK ||
        parse_offsets(f, name, json_object_get(v, "data_offsets"), data_size, t, err) != SAE_OK)
        return SAE_ERR;
    memcpy(t->name, name, len + 1);
    return SAE_OK;
}

static int parse_metadata(st_file *f, json_t *v, sae_error *err)
{
    if (!json_is_object(v))
        return sae_fail(err, "%s: \"__metadata__\" is not an object", f->path);
    const char *key;
    json_t *val;
    json_object_foreach(v, key, val) {
        if (!json_is_string(val))
            return sae_fail(err, "%s: \"__metadata__\" value of '%.64s' is not a string",
                            f->path, key);
    }
    f->metadata_json = json_dumps(v, JSON_COMPACT);
    if (!f->metadata_json)
        return sae_fail(err, "%s: out of memory copying \"__metadata__\"", f->path);
    return SAE_OK;
}

static int cmp_begin(const void *a, const void *b)
{
    const st_tensor *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)   /* empty tensors before the one starting at their offset */
        return x->end < y->end ? -1 : 1;
    return 0;
}

/* The format requires the tensors, sorted by offset, to tile the data block
 * exactly: no overlap (two names for the same bytes) and no gaps (bytes that
 * belong to nothing, a sign of a corrupted or hand-edited file). */
static int check_layout(const st_file *f, uint64_t data_size, sae_error *err)
{
    uint64_t pos = 0;
    for (int i = 0; i < f->n_tensors; i++) {
        const st_tensor *t = &f->tensors[i];
        if (t->begin < pos)
            return sae_fail(err, "%s: tensors %s and %s overlap in the data block", f->path,
                            f->tensors[i - 1].name, t->name);
        if (t->begin > pos)
            return sae_fail(err, "%s: gap of %llu bytes in the data block before tensor %s",
                            f->path, (unsigned long long)(t->begin - pos), t->name);
        pos = t->end;
    }
    if (pos != data_size)
        return sae_fail(err, "%s: the last %llu bytes of the data block belong to no tensor",
                        f->path, (unsigned long long)(data_size - pos));
    return SAE_OK;
}

static int parse_entries(st_file *f, json_t *root, sae_error *err)
{
    if (!json_is_object(root))
        return sae_fail(err, "%s: header is not a JSON object", f->path);
    size_t n = json_object_size(root) - (json_object_get(root, "__metadata__") != NULL);
    if (n > INT_MAX)
        return sae_fail(err, "%s: header lists too many tensors (%zu)", f->path, n);
    if (n > 0 && !(f->tensors = calloc(n, sizeof *f->tensors)))
        return sae_fail(err, "%s: out of memory for %zu tensor entries", f->path, n);

    uint64_t data_size = f->size - f->data_offset;
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        int rc = strcmp(key, "__metadata__") == 0
            ? parse_metadata(f, v, err)
            : parse_tensor(f, key, v, data_size, &f->tensors[f->n_tensors++], err);
        if (rc != SAE_OK)
            return SAE_ERR;
    }
    if (n > 0)
        qsort(f->tensors, n, sizeof *f->tensors, cmp_begin);
    return check_layout(f, data_size, err);
}

/* Validates f->base[0, f->size); fills everything else in f. */
static int parse_header(st_file *f, sae_error *err)
{
    if (f->size < 8)
        return sae_fail(err, "%s: file is %zu bytes, too short for a safetensors header "
                        "(8 bytes at least)", f->path, f->size);
    uint64_t n = load_u64le(f->base);
    if (n > f->size - 8)   /* written this way round so a huge n cannot overflow */
        return sae_fail(err, "%s: header length %llu runs past the end of the file "
                        "(%zu bytes)", f->path, (unsigned long long)n, f->size);
    if (n > ST_MAX_HEADER)
        return sae_fail(err, "%s: header length %llu exceeds the limit of %llu bytes",
                        f->path, (unsigned long long)n, ST_MAX_HEADER);
    f->data_offset = 8 + (size_t)n;

    json_error_t jerr;
    json_t *root = json_loadb((const char *)f->base + 8, (size_t)n, JSON_REJECT_DUPLICATES,
                              &jerr);
    if (!root)
        return sae_fail(err, "%s: header is not valid JSON: %s (header byte %d)", f->path,
                        jerr.text, jerr.position);
    int rc = parse_entries(f, root, err);
    json_decref(root);
    return rc;
}

int st_parse(st_file *f, const uint8_t *buf, size_t len, sae_error *err)
{
    memset(f, 0, sizeof *f);
    snprintf(f->path, sizeof f->path, "<buffer>");
    f->base = buf;
    f->size = len;
    if (parse_header(f, err) != SAE_OK) {
        st_close(f);
        return SAE_ERR;
    }
    return SAE_OK;
}

int st_open(st_file *f, const char *path, sae_error *err)
{
    memset(f, 0, sizeof *f);
    snprintf(f->path, sizeof f->path, "%s", path);
    const void *base;
    if (sae_map_file(path, &base, &f->size, err) != SAE_OK)
        return SAE_ERR;
    f->base = base;     /* NULL for an empty file: parse_header reports it short */
    f->mapped = base != NULL;
    if (parse_header(f, err) != SAE_OK) {
        st_close(f);
        return SAE_ERR;
    }
    return SAE_OK;
}

void st_close(st_file *f)
{
    if (f->mapped)
        munmap((void *)f->base, f->size);
    free(f->tensors);
    free(f->metadata_json);
    memset(f, 0, sizeof *f);
}

const st_tensor *st_find(const st_file *f, const char *name)
{
    for (int i = 0; i < f->n_tensors; i++)
        if (strcmp(f->tensors[i].name, name) == 0)
            return &f->tensors[i];
    return NULL;
}

const void *st_data(const st_file *f, const st_tensor *t)
{
    return f->base + f->data_offset + t->begin;
}

/* ---- Releasing consumed pages ------------------------------------------ */

/* Tracks how much of a mapped file has been handed back. MADV_DONTNEED on a
 * private, never-written file mapping only drops our page-table entries: a
 * later access faults the same bytes back in from the page cache, so
 * releasing is always safe, even for pages shared with a neighbouring tensor. */
typedef struct releaser {
    const st_file *f;
    size_t page;
    size_t done;        /* offset from f->base up to which pages are released */
} releaser;

static releaser releaser_start(const st_file *f, size_t from)
{
    long ps = sysconf(_SC_PAGESIZE);
    releaser r = {f, ps > 0 ? (size_t)ps : 4096, 0};
    r.done = from / r.page * r.page;
    return r;
}

/* Releases the whole pages below offset `upto`. */
static int release_upto(releaser *r, size_t upto, sae_error *err)
{
    size_t end = upto / r->page * r->page;
    if (!r->f->mapped || end <= r->done)
        return SAE_OK;
    if (madvise((void *)(r->f->base + r->done), end - r->done, MADV_DONTNEED) != 0)
        return sae_fail(err, "%s: madvise(MADV_DONTNEED) failed: %s", r->f->path,
                        strerror(errno));
    r->done = end;
    return SAE_OK;
}

/* ---- Conversion to float32 --------------------------------------------- */

/* IEEE half to single. Every half value is exact in single precision. */
static float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) {                 /* inf, or nan with its payload kept */
        bits = sign | 0x7f800000u | (mant << 13);
    } else if (exp != 0) {             /* normal: rebias 15 -> 127 */
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    } else {                           /* zero or subnormal: mant * 2^-24 */
        float v = (float)mant * 0x1p-24f;
        return sign ? -v : v;
    }
    float out;
    memcpy(&out, &bits, sizeof out);
    return out;
}

/* bf16 is the top half of a float32. */
static float bf16_to_f32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float out;
    memcpy(&out, &bits, sizeof out);
    return out;
}

/* Conversion is the corpus loader's inner loop (every row a training step
 * sees goes through it), so each dtype gets its own tight loop, and float16
 * uses the F16C instruction where the CPU has it (exact, like the scalar
 * version). */
#ifdef HAVE_F16C_PATH
__attribute__((target("avx,f16c")))
static size_t unpack_f16_f16c(const uint8_t *src, size_t n, float *dst)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm_loadu_si128((const __m128i *)(const void *)(src + 2 * i));
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
    }
    return i;
}

static bool have_f16c;
static pthread_once_t f16c_once = PTHREAD_ONCE_INIT;

/* CPUID leaf 1: F16C (ECX bit 29) and AVX (bit 28) with OSXSAVE (bit 27),
 * and XGETBV saying the OS saves the YMM registers. */
static void detect_f16c(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return;
    const unsigned want = (1u << 29) | (1u << 28) | (1u << 27);
    if ((c & want) != want)
        return;
    unsigned lo, hi;
    __asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    have_f16c = (lo & 6u) == 6u;
}

static bool cpu_has_f16c(void)
{
    pthread_once(&f16c_once, detect_f16c);
    return have_f16c;
}
#endif

static void unpack_f16(const uint8_t *src, size_t n, float *dst)
{
    size_t i = 0;
#ifdef HAVE_F16C_PATH
    if (cpu_has_f16c())
        i = unpack_f16_f16c(src, n, dst);
#endif
    for (; i < n; i++) {
        uint16_t h;
        memcpy(&h, src + 2 * i, sizeof h);
        dst[i] = f16_to_f32(h);
    }
}

static void unpack_bf16(const uint8_t *src, size_t n, float *dst)
{
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, src + 2 * i, sizeof h);
        dst[i] = bf16_to_f32(h);
    }
}

void st_to_f32(st_dtype dt, const void *src, size_t n, float *dst)
{
    const uint8_t *s = src;
    switch (dt) {
    case ST_F32:
        memcpy(dst, src, n * sizeof *dst);
        break;
    case ST_F16:
        unpack_f16(s, n, dst);
        break;
    case ST_BF16:
        unpack_bf16(s, n, dst);
        break;
    case ST_F64:
        for (size_t i = 0; i < n; i++) {
            double d;
            memcpy(&d, s + 8 * i, sizeof d);
            dst[i] = (float)d;
        }
        break;
    default:   /* float dtypes only */
        break;
    }
}

static int fail_nonfinite(const st_file *f, const st_tensor *t, size_t index, sae_error *err)
{
    return sae_fail(err, "%s: tensor %s has a non-finite value at index %zu", f->path,
                    t->name, index);
}

static int read_linear(const st_file *f, const st_tensor *t, float *out, int require_finite,
                       sae_error *err)
{
    size_t esz = dtypes[t->dtype].size, n = (size_t)st_numel(t);
    size_t off = f->data_offset + (size_t)t->begin;
    size_t per_chunk = ST_CHUNK_BYTES / esz;
    releaser rel = releaser_start(f, off);
    for (size_t i = 0; i < n; i += per_chunk) {
        size_t m = n - i < per_chunk ? n - i : per_chunk;
        st_to_f32(t->dtype, f->base + off + i * esz, m, out + i);
        size_t bad = require_finite ? sae_first_nonfinite(out + i, m) : m;
        if (bad < m)
            return fail_nonfinite(f, t, i + bad, err);
        if (release_upto(&rel, off + (i + m) * esz, err) != SAE_OK)
            return SAE_ERR;
    }
    return SAE_OK;
}

/* A [rows, cols] source being written as [cols, rows]. */
typedef struct transpose_job {
    const uint8_t *src;
    size_t esz, rows, cols;
    st_dtype dtype;
    float *out;
    int require_finite;
    size_t first_bad;   /* smallest source index of a non-finite value, or SIZE_MAX */
} transpose_job;

/* Converts the h x w source block at (i0, j0) into a tile, row by row (each
 * row a contiguous run), then writes the tile's columns as output rows. */
static void transpose_tile(transpose_job *job, size_t i0, size_t h, size_t j0, size_t w)
{
    float tile[ST_TILE * ST_TILE];
    for (size_t ii = 0; ii < h; ii++) {
        float *row = tile + ii * ST_TILE;
        size_t src_index = (i0 + ii) * job->cols + j0;
        st_to_f32(job->dtype, job->src + src_index * job->esz, w, row);
        size_t bad = job->require_finite ? sae_first_nonfinite(row, w) : w;
        if (bad < w && src_index + bad < job->first_bad)
            job->first_bad = src_index + bad;
    }
    for (size_t jj = 0; jj < w; jj++) {
        float *dst = job->out + (j0 + jj) * job->rows + i0;
        for (size_t ii = 0; ii < h; ii++)
            dst[ii] = tile[ii * ST_TILE + jj];
    }
}

/* Goes through the source in bands of whole rows, about one chunk each, so
 * the pages of a finished band can be released like in read_linear. */
static int read_transposed(const st_file *f, const st_tensor *t, float *out,
                           int require_finite, sae_error *err)
{
    size_t off = f->data_offset + (size_t)t->begin;
    transpose_job job = {f->base + off, dtypes[t->dtype].size, (size_t)t->shape[0],
                         (size_t)t->shape[1], t->dtype, out, require_finite, SIZE_MAX};
    if (job.rows == 0 || job.cols == 0)
        return SAE_OK;
    size_t row_bytes = job.cols * job.esz;
    size_t band = ST_CHUNK_BYTES / row_bytes > 0 ? ST_CHUNK_BYTES / row_bytes : 1;
    releaser rel = releaser_start(f, off);
    for (size_t b0 = 0; b0 < job.rows; b0 += band) {
        size_t b1 = job.rows - b0 < band ? job.rows : b0 + band;
        for (size_t i0 = b0; i0 < b1; i0 += ST_TILE)
            for (size_t j0 = 0; j0 < job.cols; j0 += ST_TILE)
                transpose_tile(&job, i0, b1 - i0 < ST_TILE ? b1 - i0 : ST_TILE, j0,
                               job.cols - j0 < ST_TILE ? job.cols - j0 : ST_TILE);
        /* Bands go in source order, so the first band with a bad value holds
         * the first bad index. */
        if (job.first_bad != SIZE_MAX)
            return fail_nonfinite(f, t, job.first_bad, err);
        if (release_upto(&rel, off + b1 * row_bytes, err) != SAE_OK)
            return SAE_ERR;
    }
    return SAE_OK;
}

int st_read_f32(const st_file *f, const st_tensor *t, float *out, int transpose_2d,
                int require_finite, sae_error *err)
{
    if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16 && t->dtype != ST_F64)
        return sae_fail(err, "%s: tensor %s has dtype %s, want a float dtype (F32, F16, BF16 "
                        "or F64)", f->path, t->name, st_dtype_name(t->dtype));
    if (!transpose_2d)
        return read_linear(f, t, out, require_finite, err);
    if (t->ndim != 2)
        return sae_fail(err, "%s: tensor %s has %d dimensions, a transposed read needs 2",
                        f->path, t->name, t->ndim);
    return read_transposed(f, t, out, require_finite, err);
}

int st_read_i32(const st_file *f, const st_tensor *t, int32_t *out, sae_error *err)
{
    if (t->dtype != ST_I32 && t->dtype != ST_I64)
        return sae_fail(err, "%s: tensor %s has dtype %s, want I32 or I64", f->path, t->name,
                        st_dtype_name(t->dtype));
    size_t esz = dtypes[t->dtype].size, n = (size_t)st_numel(t);
    size_t off = f->data_offset + (size_t)t->begin;
    size_t per_chunk = ST_CHUNK_BYTES / esz;
    const uint8_t *src = f->base + off;
    releaser rel = releaser_start(f, off);
    for (size_t i = 0; i < n; i += per_chunk) {
        size_t end = n - i < per_chunk ? n : i + per_chunk;
        if (t->dtype == ST_I32) {
            memcpy(out + i, src + i * esz, (end - i) * esz);
        } else {
            for (size_t j = i; j < end; j++) {
                int64_t v;
                memcpy(&v, src + j * esz, sizeof v);
                if (v < INT32_MIN || v > INT32_MAX)
                    return sae_fail(err, "%s: tensor %s: value %lld at index %zu does not "
                                    "fit in int32", f->path, t->name, (long long)v, j);
                out[j] = (int32_t)v;
            }
        }
        if (release_upto(&rel, off + end * esz, err) != SAE_OK)
            return SAE_ERR;
    }
    return SAE_OK;
}

/* ---- Writing ----------------------------------------------------------- */

/* Adds a key whose value is a new reference; json_object_set_new takes the
 * value even on failure, and refuses a NULL one. */
static int set_new(json_t *obj, const char *key, json_t *v)
{
    return json_object_set_new(obj, key, v) == 0 ? SAE_OK : SAE_ERR;
}

static int add_metadata(const char *what, json_t *root, const char *metadata_json,
                        sae_error *err)
{
    if (!metadata_json)
        return SAE_OK;
    json_error_t jerr;
    json_t *meta = json_loads(metadata_json, JSON_REJECT_DUPLICATES, &jerr);
    if (!meta)
        return sae_fail(err, "%s: metadata is not valid JSON: %s", what, jerr.text);
    const char *key;
    json_t *val;
    int rc = json_is_object(meta) ? SAE_OK
        : sae_fail(err, "%s: metadata is not a JSON object", what);
    json_object_foreach(meta, key, val) {
        if (rc == SAE_OK && !json_is_string(val))
            rc = sae_fail(err, "%s: metadata value of '%.64s' is not a string", what, key);
    }
    if (rc != SAE_OK) {
        json_decref(meta);
        return rc;
    }
    if (set_new(root, "__metadata__", meta) != SAE_OK)
        return sae_fail(err, "%s: out of memory building the header", what);
    return SAE_OK;
}

/* Checks one tensor to write and returns its byte size in *bytes. */
static int check_out(const char *what, const json_t *root, const st_out *t, int i,
                     size_t *bytes, sae_error *err)
{
    if (!t->name)
        return sae_fail(err, "%s: tensor #%d has no name", what, i);
    if (strlen(t->name) >= ST_MAX_NAME)
        return sae_fail(err, "%s: tensor name '%.40s...' is longer than the limit of %d",
                        what, t->name, ST_MAX_NAME - 1);
    if (strcmp(t->name, "__metadata__") == 0 || json_object_get(root, t->name))
        return sae_fail(err, "%s: tensor name %s is reserved or used twice", what, t->name);
    if (!dtype_valid(t->dtype))
        return sae_fail(err, "%s: tensor %s: invalid dtype %d", what, t->name, (int)t->dtype);
    if (t->ndim < 0 || t->ndim > ST_MAX_DIMS)
        return sae_fail(err, "%s: tensor %s: ndim %d is outside [0, %d]", what, t->name,
                        t->ndim, ST_MAX_DIMS);
    size_t n = dtypes[t->dtype].size;
    for (int d = 0; d < t->ndim; d++) {
        if (t->shape[d] < 0)
            return sae_fail(err, "%s: tensor %s: shape[%d] is negative", what, t->name, d);
        if (t->shape[d] != 0 && n > (size_t)INT64_MAX / (uint64_t)t->shape[d])
            return sae_fail(err, "%s: tensor %s: shape is too large", what, t->name);
        n *= (size_t)t->shape[d];
    }
    if (n > 0 && !t->data)
        return sae_fail(err, "%s: tensor %s has no data", what, t->name);
    *bytes = n;
    return SAE_OK;
}

/* {"dtype", "shape", "data_offsets"} for one tensor, or NULL when out of
 * memory. shape and offsets are held by our own reference until the end, so
 * every failure path frees them exactly once. */
static json_t *tensor_entry(const st_out *t, size_t begin, size_t end)
{
    json_t *entry = json_object(), *shape = json_array(), *offsets = json_array();
    int ok = entry && shape && offsets;
    for (int d = 0; ok && d < t->ndim; d++)
        ok = json_array_append_new(shape, json_integer(t->shape[d])) == 0;
    ok = ok && json_array_append_new(offsets, json_integer((json_int_t)begin)) == 0 &&
         json_array_append_new(offsets, json_integer((json_int_t)end)) == 0;
    ok = ok && set_new(entry, "dtype", json_string(dtypes[t->dtype].name)) == SAE_OK;
    ok = ok && set_new(entry, "shape", json_incref(shape)) == SAE_OK &&
         set_new(entry, "data_offsets", json_incref(offsets)) == SAE_OK;
    json_decref(shape);
    json_decref(offsets);
    if (!ok) {
        json_decref(entry);
        return NULL;
    }
    return entry;
}

/* Builds the header text, padded with spaces to a multiple of 8 bytes so the
 * data block starts aligned, and the size of the data block. `what` names the
 * destination in messages. */
static int build_header(const char *what, const st_out *ts, int n, const char *metadata_json,
                        char **hdr, size_t *hdr_len, size_t *data_len, sae_error *err)
{
    if (n < 0 || (n > 0 && !ts))
        return sae_fail(err, "%s: invalid tensor list (n = %d)", what, n);
    json_t *root = json_object();
    if (!root)
        return sae_fail(err, "%s: out of memory building the header", what);
    int rc = add_metadata(what, root, metadata_json, err);
    size_t pos = 0;
    for (int i = 0; rc == SAE_OK && i < n; i++) {
        size_t bytes = 0;
        rc = check_out(what, root, &ts[i], i, &bytes, err);
        if (rc == SAE_OK && bytes > SIZE_MAX / 2 - pos)
            rc = sae_fail(err, "%s: tensors add up to more than the address space", what);
        if (rc == SAE_OK && set_new(root, ts[i].name, tensor_entry(&ts[i], pos, pos + bytes)))
            rc = sae_fail(err, "%s: cannot add tensor %s to the header (invalid UTF-8 name "
                          "or out of memory)", what, ts[i].name);
        pos += bytes;
    }
    char *text = rc == SAE_OK ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    if (rc != SAE_OK)
        return rc;
    size_t len = text ? strlen(text) : 0, padded = (len + 7) / 8 * 8;
    char *out = text ? realloc(text, padded + 1) : NULL;
    if (!out) {
        free(text);
        return sae_fail(err, "%s: out of memory building the header", what);
    }
    memset(out + len, ' ', padded - len);
    out[padded] = '\0';
    *hdr = out;
    *hdr_len = padded;
    *data_len = pos;
    return SAE_OK;
}

static size_t out_bytes(const st_out *t)
{
    size_t n = dtypes[t->dtype].size;
    for (int d = 0; d < t->ndim; d++)
        n *= (size_t)t->shape[d];
    return n;
}

int st_serialize(const st_out *ts, int n, const char *metadata_json, uint8_t **buf,
                 size_t *len, sae_error *err)
{
    char *hdr;
    size_t hdr_len, data_len;
    if (build_header("<buffer>", ts, n, metadata_json, &hdr, &hdr_len, &data_len, err))
        return SAE_ERR;
    size_t total = 8 + hdr_len + data_len;   /* data_len <= SIZE_MAX / 2, no overflow */
    uint8_t *out = malloc(total);
    if (!out) {
        free(hdr);
        return sae_fail(err, "<buffer>: out of memory for %zu bytes", total);
    }
    uint64_t n_le = hdr_len;
    memcpy(out, &n_le, 8);
    memcpy(out + 8, hdr, hdr_len);
    free(hdr);
    size_t pos = 8 + hdr_len;
    for (int i = 0; i < n; i++) {
        size_t bytes = out_bytes(&ts[i]);
        if (bytes > 0)
            memcpy(out + pos, ts[i].data, bytes);
        pos += bytes;
    }
    *buf = out;
    *len = total;
    return SAE_OK;
}

static int write_contents(sae_atomic_file *a, const st_out *ts, int n, const char *hdr,
                          size_t hdr_len, sae_error *err)
{
    uint64_t n_le = hdr_len;
    if (sae_atomic_write(a, &n_le, 8, err) != SAE_OK || sae_atomic_write(a, hdr, hdr_len, err) != SAE_OK)
        return SAE_ERR;
    for (int i = 0; i < n; i++)
        if (sae_atomic_write(a, ts[i].data, out_bytes(&ts[i]), err) != SAE_OK)
            return SAE_ERR;
    return SAE_OK;
}

int st_write(const char *path, const st_out *ts, int n, const char *metadata_json,
             sae_error *err)
{
    char *hdr;
    size_t hdr_len, data_len;
    if (build_header(path, ts, n, metadata_json, &hdr, &hdr_len, &data_len, err))
        return SAE_ERR;
    sae_atomic_file a;
    int rc = sae_atomic_open(&a, path, err);
    if (rc == SAE_OK)
        rc = write_contents(&a, ts, n, hdr, hdr_len, err);
    if (rc == SAE_OK)
        rc = sae_atomic_commit(&a, err);
    /* After a failed directory fsync the file is already in place; the abort
     * then has nothing left to remove. */
    if (rc != SAE_OK)
        sae_atomic_abort(&a);
    free(hdr);
    return rc;
}
