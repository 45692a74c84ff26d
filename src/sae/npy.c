/* npy.c - NumPy .npy arrays: float reading (versions 1.0, 2.0, 3.0) and
 * float32 writing (version 1.0).
 *
 * Layout: "\x93NUMPY", major, minor, the header length (u16 in 1.0, u32 in
 * 2.0 and 3.0, little-endian), then a Python dict literal such as
 * {'descr': '<f4', 'fortran_order': False, 'shape': (10, 4), }
 * padded with spaces and a newline, then the raw C-order data.
 *
 * The data is read through a mapping and converted with st_read_f32 on a
 * one-tensor safetensors view of the file, which gives the same chunked
 * conversion and page release as checkpoint loading. */
#include "npy.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "safetensors.h"
#include "util.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "npy.c assumes a little-endian host"
#endif

#define NPY_MAX_DIMS 8
/* numpy itself refuses longer headers unless told otherwise. */
#define NPY_MAX_HEADER 65536u
static const char npy_magic[6] = {'\x93', 'N', 'U', 'M', 'P', 'Y'};

typedef struct npy_header {
    char descr[16];
    int fortran_order;          /* -1 until seen */
    int ndim;                   /* -1 until seen */
    int64_t shape[NPY_MAX_DIMS];
    size_t data_offset;
} npy_header;

/* ---- The header dict ----------------------------------------------------- */

/* A cursor over the header text, with the file name for messages. */
typedef struct cursor {
    const char *p, *end;
    const char *path;
} cursor;

static void skip_ws(cursor *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

/* Skips white space and tells whether ch is next. */
static int at(cursor *c, char ch)
{
    skip_ws(c);
    return c->p < c->end && *c->p == ch;
}

/* Consumes ch if it is next (after white space). */
static int accept(cursor *c, char ch)
{
    if (!at(c, ch))
        return 0;
    c->p++;
    return 1;
}

static int malformed(const cursor *c, const char *what, sae_error *err)
{
    int left = (int)(c->end - c->p);
    return sae_fail(err, "%s: malformed header: %s at '%.*s'", c->path, what,
                    left < 24 ? left : 24, c->p);
}

/* A quoted Python string without escapes (numpy writes none in a header). */
static int parse_str(cursor *c, char *out, size_t cap, sae_error *err)
{
    skip_ws(c);
    if (c->p >= c->end || (*c->p != '\'' && *c->p != '"'))
        return malformed(c, "expected a string", err);
    char quote = *c->p++;
    const char *start = c->p;
    while (c->p < c->end && *c->p != quote && *c->p != '\\')
        c->p++;
    if (c->p >= c->end || *c->p != quote)
        return malformed(c, "unterminated string", err);
    size_t len = (size_t)(c->p - start);
    c->p++;
    if (len >= cap)
        return sae_fail(err, "%s: malformed header: string '%.*s' is too long", c->path,
                        (int)(len < 32 ? len : 32), start);
    memcpy(out, start, len);
    out[len] = '\0';
    return SAE_OK;
}

static int accept_word(cursor *c, const char *word)
{
    size_t len = strlen(word);
    skip_ws(c);
    if ((size_t)(c->end - c->p) < len || memcmp(c->p, word, len) != 0)
        return 0;
    c->p += len;
    return 1;
}

static int parse_bool(cursor *c, int *out, sae_error *err)
{
    if (accept_word(c, "True"))
        *out = 1;
    else if (accept_word(c, "False"))
        *out = 0;
    else
        return malformed(c, "expected True or False", err);
    return SAE_OK;
}

/* A non-negative decimal integer; a trailing L (Python 2 longs) is allowed. */
static int parse_dim(cursor *c, int64_t *out, sae_error *err)
{
    skip_ws(c);
    if (c->p >= c->end || *c->p < '0' || *c->p > '9')
        return malformed(c, "expected a non-negative integer", err);
    int64_t v = 0;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
        int digit = *c->p++ - '0';
        if (v > (INT64_MAX - digit) / 10)
            return malformed(c, "dimension too large", err);
        v = v * 10 + digit;
    }
    if (c->p < c->end && *c->p == 'L')
        c->p++;
    *out = v;
    return SAE_OK;
}

/* A tuple of dimensions: (), (n,), (a, b), with an optional trailing comma. */
static int parse_shape(cursor *c, npy_header *h, sae_error *err)
{
    if (!accept(c, '('))
        return malformed(c, "expected a shape tuple", err);
    h->ndim = 0;
    while (!accept(c, ')')) {
        if (h->ndim == NPY_MAX_DIMS)
            return sae_fail(err, "%s: array has more than %d dimensions", c->path,
                            NPY_MAX_DIMS);
        if (parse_dim(c, &h->shape[h->ndim++], err) != SAE_OK)
            return SAE_ERR;
        if (!accept(c, ',') && !at(c, ')'))
            return malformed(c, "expected ',' or ')' in the shape", err);
    }
    return SAE_OK;
}

static int parse_entry(cursor *c, npy_header *h, sae_error *err)
{
    char key[32];
    if (parse_str(c, key, sizeof key, err) != SAE_OK)
        return SAE_ERR;
    if (!accept(c, ':'))
        return malformed(c, "expected ':'", err);
    int seen = strcmp(key, "descr") == 0 ? h->descr[0] != '\0'
        : strcmp(key, "fortran_order") == 0 ? h->fortran_order >= 0
        : strcmp(key, "shape") == 0 ? h->ndim >= 0 : -1;
    if (seen < 0)
        return sae_fail(err, "%s: unexpected key '%s' in the header", c->path, key);
    if (seen)
        return sae_fail(err, "%s: key '%s' appears twice in the header", c->path, key);
    if (strcmp(key, "descr") == 0) {
        if (at(c, '['))
            return sae_fail(err, "%s: structured dtypes are not supported (want float32)",
                            c->path);
        return parse_str(c, h->descr, sizeof h->descr, err);
    }
    if (strcmp(key, "fortran_order") == 0)
        return parse_bool(c, &h->fortran_order, err);
    return parse_shape(c, h, err);
}

static int parse_dict(cursor *c, npy_header *h, sae_error *err)
{
    h->descr[0] = '\0';
    h->fortran_order = -1;
    h->ndim = -1;
    if (!accept(c, '{'))
        return malformed(c, "expected '{'", err);
    while (!accept(c, '}')) {
        if (parse_entry(c, h, err) != SAE_OK)
            return SAE_ERR;
        if (!accept(c, ',') && !at(c, '}'))
            return malformed(c, "expected ',' or '}'", err);
    }
    skip_ws(c);
    if (c->p != c->end)
        return malformed(c, "trailing characters after the dict", err);
    if (!h->descr[0] || h->fortran_order < 0 || h->ndim < 0)
        return sae_fail(err, "%s: header lacks one of 'descr', 'fortran_order', 'shape'",
                        c->path);
    return SAE_OK;
}

/* Reads the fixed prefix and the dict of a mapped file. */
static int parse_header(const char *path, const uint8_t *base, size_t size, npy_header *h,
                        sae_error *err)
{
    if (size < 10 || memcmp(base, npy_magic, sizeof npy_magic) != 0)
        return sae_fail(err, "%s: not a .npy file (bad magic)", path);
    int major = base[6], minor = base[7];
    size_t prefix = major == 1 ? 10 : 12, hlen;
    if ((major < 1 || major > 3) || minor != 0)
        return sae_fail(err, "%s: unsupported .npy version %d.%d", path, major, minor);
    if (size < prefix)
        return sae_fail(err, "%s: truncated header", path);
    if (major == 1) {
        hlen = (size_t)base[8] | (size_t)base[9] << 8;
    } else {
        uint32_t v;
        memcpy(&v, base + 8, sizeof v);
        hlen = v;
    }
    if (hlen > NPY_MAX_HEADER)
        return sae_fail(err, "%s: header of %zu bytes is too long", path, hlen);
    if (hlen > size - prefix)
        return sae_fail(err, "%s: truncated header (%zu bytes announced, %zu present)", path,
                        hlen, size - prefix);
    cursor c = {(const char *)base + prefix, (const char *)base + prefix + hlen, path};
    h->data_offset = prefix + hlen;
    return parse_dict(&c, h, err);
}

/* ---- Reading ------------------------------------------------------------- */

/* Python's spelling of a shape, for messages: (), (10,), (3, 4). */
static void format_shape(char *buf, size_t cap, int ndim, const int64_t *shape)
{
    size_t n = (size_t)snprintf(buf, cap, "(");
    for (int i = 0; i < ndim && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (n < cap)
        snprintf(buf + n, cap - n, ndim == 1 ? ",)" : ")");
}

/* Maps '<f4', '<f2', '<f8' to the matching safetensors dtype. */
static int check_dtype(const char *path, const char *descr, st_dtype *out, sae_error *err)
{
    if (descr[0] == '>')
        return sae_fail(err, "%s: dtype '%s' is big-endian; only little-endian arrays are "
                        "supported", path, descr);
    if (strcmp(descr, "<f4") == 0)
        *out = ST_F32;
    else if (strcmp(descr, "<f2") == 0)
        *out = ST_F16;
    else if (strcmp(descr, "<f8") == 0)
        *out = ST_F64;
    else
        return sae_fail(err, "%s: dtype '%s' is not a float array (want float32)", path,
                        descr);
    return SAE_OK;
}

/* Checks the header against what the caller wants and fills a one-tensor view
 * of the data, whose byte size must match the rest of the file exactly. */
static int check_array(const char *path, const npy_header *h, size_t size, int want_ndim,
                       st_tensor *t, sae_error *err)
{
    char shape[256];
    format_shape(shape, sizeof shape, h->ndim, h->shape);
    if (check_dtype(path, h->descr, &t->dtype, err) != SAE_OK)
        return SAE_ERR;
    if (h->fortran_order)
        return sae_fail(err, "%s: fortran_order arrays are not supported (save with C order)",
                        path);
    if (h->ndim != want_ndim)
        return sae_fail(err, "%s: expected a %d-D array, got shape %s", path, want_ndim, shape);
    uint64_t bytes = st_dtype_size(t->dtype);
    for (int i = 0; i < h->ndim; i++) {
        if (h->shape[i] != 0 && bytes > (uint64_t)INT64_MAX / (uint64_t)h->shape[i])
            return sae_fail(err, "%s: shape %s is too large", path, shape);
        bytes *= (uint64_t)h->shape[i];
    }
    uint64_t have = size - h->data_offset;
    if (have < bytes)
        return sae_fail(err, "%s: truncated data: shape %s needs %llu bytes, the file has %llu",
                        path, shape, (unsigned long long)bytes, (unsigned long long)have);
    if (have > bytes)
        return sae_fail(err, "%s: %llu unexpected bytes after the data of shape %s", path,
                        (unsigned long long)(have - bytes), shape);
    snprintf(t->name, sizeof t->name, "array");
    t->ndim = h->ndim;
    memcpy(t->shape, h->shape, sizeof h->shape);
    t->begin = 0;
    t->end = bytes;
    return SAE_OK;
}

/* Converts the mapped data into out->data. */
static int load_data(const char *path, const uint8_t *base, size_t size, size_t data_offset,
                     st_tensor *t, npy_array *out, sae_error *err)
{
    int64_t numel = st_numel(t);
    out->data = malloc(numel > 0 ? (size_t)numel * sizeof(float) : 1);
    if (!out->data)
        return sae_fail(err, "%s: out of memory for %lld floats", path, (long long)numel);
    st_file view = {.base = base, .size = size, .data_offset = data_offset,
                    .n_tensors = 1, .tensors = t, .mapped = 1};
    snprintf(view.path, sizeof view.path, "%s", path);
    if (st_read_f32(&view, t, out->data, 0, 0, err) != SAE_OK)
        return SAE_ERR;
    out->ndim = t->ndim;
    memcpy(out->shape, t->shape, sizeof out->shape);
    return SAE_OK;
}

static int read_mapped(const char *path, const uint8_t *base, size_t size, int want_ndim,
                       npy_array *out, sae_error *err)
{
    npy_header h;
    st_tensor t = {0};
    if (parse_header(path, base, size, &h, err) != SAE_OK ||
        check_array(path, &h, size, want_ndim, &t, err) != SAE_OK)
        return SAE_ERR;
    return load_data(path, base, size, h.data_offset, &t, out, err);
}

int npy_read_f32(const char *path, int want_ndim, npy_array *out, sae_error *err)
{
    memset(out, 0, sizeof *out);
    if (want_ndim < 0 || want_ndim > NPY_MAX_DIMS)
        return sae_fail(err, "%s: cannot ask for a %d-D array", path, want_ndim);
    const void *base;
    size_t size;
    if (sae_map_file(path, &base, &size, err) != SAE_OK)
        return SAE_ERR;
    if (size < 10) {
        if (base)
            munmap((void *)base, size);
        return sae_fail(err, "%s: not a .npy file (too short)", path);
    }
    int rc = read_mapped(path, base, size, want_ndim, out, err);
    munmap((void *)base, size);
    if (rc != SAE_OK)
        npy_free(out);
    return rc;
}

void npy_free(npy_array *a)
{
    free(a->data);
    memset(a, 0, sizeof *a);
}

/* ---- Writing ------------------------------------------------------------- */

/* The version 1.0 prefix and dict, padded with spaces and ending in '\n' so
 * the data starts at a multiple of 64 bytes, as numpy writes it. */
static int build_header(const char *path, int ndim, const int64_t *shape, char *buf,
                        size_t cap, size_t *len, sae_error *err)
{
    char shape_text[256];
    format_shape(shape_text, sizeof shape_text, ndim, shape);
    memcpy(buf, npy_magic, sizeof npy_magic);
    buf[6] = 1;
    buf[7] = 0;
    int dict = snprintf(buf + 10, cap - 10,
                        "{'descr': '<f4', 'fortran_order': False, 'shape': %s, }", shape_text);
    if (dict < 0 || (size_t)dict + 10 + 64 > cap)
        return sae_fail(err, "%s: header too long", path);
    size_t total = (10 + (size_t)dict + 1 + 63) / 64 * 64;   /* + 1 for the '\n' */
    size_t hlen = total - 10;
    memset(buf + 10 + dict, ' ', total - 10 - (size_t)dict);
    buf[total - 1] = '\n';
    buf[8] = (char)(hlen & 0xff);
    buf[9] = (char)(hlen >> 8);
    *len = total;
    return SAE_OK;
}

int npy_write_f32(const char *path, const float *data, int ndim, const int64_t *shape,
                  sae_error *err)
{
    if (ndim < 0 || ndim > NPY_MAX_DIMS || (ndim > 0 && !shape))
        return sae_fail(err, "%s: cannot write a %d-D array", path, ndim);
    uint64_t bytes = sizeof(float), limit = SIZE_MAX / 2;   /* room for the header */
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || (shape[i] != 0 && bytes > limit / (uint64_t)shape[i]))
            return sae_fail(err, "%s: invalid shape[%d] = %lld", path, i,
                            (long long)shape[i]);
        bytes *= (uint64_t)shape[i];
    }
    if (bytes > 0 && !data)
        return sae_fail(err, "%s: no data to write", path);
    char hdr[512];
    size_t hdr_len;
    if (build_header(path, ndim, shape, hdr, sizeof hdr, &hdr_len, err) != SAE_OK)
        return SAE_ERR;
    /* One buffer for sae_write_file_atomic: a transient copy of the data,
     * acceptable for the outputs written as .npy (encode / decode results). */
    uint8_t *buf = malloc(hdr_len + (size_t)bytes);
    if (!buf)
        return sae_fail(err, "%s: out of memory for %llu bytes", path,
                        (unsigned long long)(hdr_len + bytes));
    memcpy(buf, hdr, hdr_len);
    if (bytes > 0)
        memcpy(buf + hdr_len, data, (size_t)bytes);
    int rc = sae_write_file_atomic(path, buf, hdr_len + (size_t)bytes, err);
    free(buf);
    return rc;
}
