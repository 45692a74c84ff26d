/* dataset.c - activation corpora; dataset.h describes the formats and the
 * loader's sequence.
 *
 * Shards stay mapped for the corpus' lifetime and are read in row ranges
 * straight from the mapping, converted to float32 in pieces; the pages of a
 * piece are handed back (MADV_DONTNEED) right after it is converted. The
 * mapping is read-only and private, so dropping a page is always safe: a later
 * access, by any thread, faults it in again from the file. That is what keeps
 * a pass over a corpus larger than memory bounded. */
#include "dataset.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "npy.h"
#include "rng.h"
#include "util.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "dataset.c assumes a little-endian host"
#endif

#define MANIFEST_MAX_BYTES ((size_t)64 << 20)
#define VOCAB_MAX_BYTES ((size_t)512 << 20)
#define MAX_D_IN (1 << 24)
/* Source bytes converted between page releases. */
#define READ_PIECE_BYTES ((size_t)8 << 20)

typedef struct shard {
    char path[PATH_MAX];
    st_file file;
    const st_tensor *acts;
    const st_tensor *tokens;    /* NULL when the corpus has none */
    int64_t first_row, rows;
} shard;

struct corpus {
    corpus_info info;
    char path[PATH_MAX];        /* as opened, for messages */
    shard *shards;              /* info.n_shards of them; NULL for .npy */
    npy_array npy;              /* .npy corpora: the whole array */
    char npy_path[PATH_MAX];
    char **vocab;
    char *model, *hook;
};

/* ---- Float conversion ---------------------------------------------------- */

/* Rounds mant >> shift to nearest, ties to even. */
static uint32_t shift_round_even(uint32_t mant, int shift)
{
    uint32_t q = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    return q + (rem > half || (rem == half && (q & 1u)));
}

static uint16_t f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint32_t sign = (x >> 16) & 0x8000u, exp = (x >> 23) & 0xffu, mant = x & 0x7fffffu;
    if (exp == 0xff)                /* inf, or nan kept quiet with its top payload */
        return (uint16_t)(sign | 0x7c00u | (mant ? 0x200u | (mant >> 13) : 0));
    int e = (int)exp - 127 + 15;
    if (e >= 31)
        return (uint16_t)(sign | 0x7c00u);
    if (e <= 0) {                   /* f16 subnormal (or zero): units of 2^-24 */
        if (e < -10)
            return (uint16_t)sign;
        return (uint16_t)(sign | shift_round_even(mant | 0x800000u, 14 - e));
    }
    /* A carry out of the mantissa correctly bumps the exponent (up to inf). */
    return (uint16_t)(sign | shift_round_even(((uint32_t)e << 23) | mant, 13));
}

static uint16_t f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    if ((x & 0x7f800000u) == 0x7f800000u && (x & 0x7fffffu))
        return (uint16_t)((x >> 16) | 0x40u);   /* nan: stay nan after truncation */
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

void corpus_pack(st_dtype dt, const float *src, size_t n, void *dst)
{
    uint8_t *d = dst;
    if (dt == ST_F32) {
        memcpy(dst, src, n * sizeof *src);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        uint16_t h = dt == ST_F16 ? f32_to_f16(src[i]) : f32_to_bf16(src[i]);
        memcpy(d + 2 * i, &h, sizeof h);
    }
}

static const struct {
    const char *name;
    st_dtype dtype;
} corpus_dtypes[] = {{"float32", ST_F32}, {"float16", ST_F16}, {"bfloat16", ST_BF16}};
#define N_CORPUS_DTYPES (int)(sizeof corpus_dtypes / sizeof corpus_dtypes[0])

const char *corpus_dtype_name(st_dtype t)
{
    for (int i = 0; i < N_CORPUS_DTYPES; i++)
        if (corpus_dtypes[i].dtype == t)
            return corpus_dtypes[i].name;
    return "?";
}

int corpus_dtype_parse(const char *s, st_dtype *out)
{
    for (int i = 0; i < N_CORPUS_DTYPES; i++) {
        if (strcmp(s, corpus_dtypes[i].name) == 0) {
            *out = corpus_dtypes[i].dtype;
            return SAE_OK;
        }
    }
    return SAE_ERR;
}

static bool is_storage_dtype(st_dtype t)
{
    return t == ST_F32 || t == ST_F16 || t == ST_BF16;
}

/* ---- Opening: shards ----------------------------------------------------- */

/* Shard and vocab names come from dataset.json, which a daemon may get from a
 * request: keep them inside the corpus directory. */
static int check_member_name(const char *manifest, const char *name, sae_error *err)
{
    if (name[0] == '\0' || name[0] == '/')
        return sae_fail(err, "%s: file name '%s' must be relative to the corpus directory",
                        manifest, name);
    for (const char *p = name; p; p = strchr(p, '/')) {
        p += *p == '/';     /* at the start of a path component */
        if (strncmp(p, "..", 2) == 0 && (p[2] == '/' || p[2] == '\0'))
            return sae_fail(err, "%s: file name '%s' leaves the corpus directory", manifest,
                            name);
    }
    return SAE_OK;
}

static int join_path(char *buf, size_t len, const char *dir, const char *name, sae_error *err)
{
    int n = snprintf(buf, len, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= len)
        return sae_fail(err, "%s/%s: path too long", dir, name);
    return SAE_OK;
}

/* Checks the tensors of an opened shard against the corpus so far (d_in, and
 * dtype and has_tokens as set by the first shard). */
static int check_shard(corpus *c, shard *s, bool first, sae_error *err)
{
    const char *p = s->path;
    s->acts = st_find(&s->file, "activations");
    if (!s->acts)
        return sae_fail(err, "%s: no tensor named 'activations'", p);
    const st_tensor *a = s->acts;
    if (a->ndim != 2)
        return sae_fail(err, "%s: activations has %d dimensions, want 2 [rows, d_in]", p,
                        a->ndim);
    if (a->shape[1] != c->info.d_in)
        return sae_fail(err, "%s: activations has %lld columns, but d_in is %d", p,
                        (long long)a->shape[1], c->info.d_in);
    if (!is_storage_dtype(a->dtype))
        return sae_fail(err, "%s: activations dtype %s is not F32, F16 or BF16", p,
                        st_dtype_name(a->dtype));
    if (first && c->info.dtype == ST_DTYPE_COUNT)
        c->info.dtype = a->dtype;
    if (a->dtype != c->info.dtype)
        return sae_fail(err, "%s: activations dtype is %s, but the corpus dtype is %s", p,
                        st_dtype_name(a->dtype), corpus_dtype_name(c->info.dtype));
    s->rows = a->shape[0];
    s->tokens = st_find(&s->file, "tokens");
    if (first)
        c->info.has_tokens = s->tokens != NULL;
    if ((s->tokens != NULL) != c->info.has_tokens)
        return sae_fail(err, "%s: %s 'tokens' tensor, unlike the first shard", p,
                        s->tokens ? "has a" : "has no");
    if (!s->tokens)
        return SAE_OK;
    const st_tensor *t = s->tokens;
    if (t->dtype != ST_I32 && t->dtype != ST_I64)
        return sae_fail(err, "%s: tokens dtype %s, want I32 or I64", p, st_dtype_name(t->dtype));
    if (t->ndim != 1 || t->shape[0] != s->rows)
        return sae_fail(err, "%s: tokens must be [%lld] like the activations' rows, got %d "
                        "dimension(s) of %lld", p, (long long)s->rows, t->ndim,
                        (long long)(t->ndim > 0 ? t->shape[0] : 0));
    return SAE_OK;
}

static int open_shard(corpus *c, int i, const char *dir, const char *name, sae_error *err)
{
    shard *s = &c->shards[i];
    if (join_path(s->path, sizeof s->path, dir, name, err) != SAE_OK)
        return SAE_ERR;
    if (st_open(&s->file, s->path, err) != SAE_OK)
        return SAE_ERR;
    if (check_shard(c, s, i == 0, err) != SAE_OK)
        return SAE_ERR;
    s->first_row = c->info.n_rows;
    c->info.n_rows += s->rows;
    return SAE_OK;
}

/* ---- Opening: dataset.json ----------------------------------------------- */

static int get_int(const char *mpath, json_t *root, const char *key, bool required,
                   long long lo, long long hi, long long *out, sae_error *err)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        if (required)
            return sae_fail(err, "%s: missing \"%s\"", mpath, key);
        return SAE_OK;
    }
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi)
        return sae_fail(err, "%s: \"%s\" must be an integer in [%lld, %lld]", mpath, key, lo,
                        hi);
    *out = json_integer_value(v);
    return SAE_OK;
}

/* An optional string field: *out stays NULL when absent. */
static int get_str(const char *mpath, json_t *root, const char *key, const char **out,
                   sae_error *err)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v))
        return SAE_OK;
    if (!json_is_string(v))
        return sae_fail(err, "%s: \"%s\" must be a string", mpath, key);
    *out = json_string_value(v);
    return SAE_OK;
}

static char *dup_or_empty(const char *s)
{
    return strdup(s ? s : "");
}

static int load_vocab(corpus *c, const char *path, sae_error *err)
{
    char *text;
    size_t len;
    if (sae_read_file(path, VOCAB_MAX_BYTES, &text, &len, err) != SAE_OK)
        return SAE_ERR;
    json_error_t jerr;
    json_t *root = json_loadb(text, len, 0, &jerr);
    free(text);
    if (!root)
        return sae_fail(err, "%s: not valid JSON: %s (line %d)", path, jerr.text, jerr.line);
    int rc = SAE_OK;
    size_t n = json_is_array(root) ? json_array_size(root) : 0;
    if (!json_is_array(root) || n == 0)
        rc = sae_fail(err, "%s: want a non-empty JSON array of token strings", path);
    else if (!(c->vocab = calloc(n, sizeof *c->vocab)))
        rc = sae_fail(err, "%s: out of memory for %zu tokens", path, n);
    for (size_t i = 0; rc == SAE_OK && i < n; i++) {
        json_t *s = json_array_get(root, i);
        if (!json_is_string(s))
            rc = sae_fail(err, "%s: entry %zu is not a string", path, i);
        else if (!(c->vocab[i] = strdup(json_string_value(s))))
            rc = sae_fail(err, "%s: out of memory", path);
        else
            c->info.vocab_size = (int64_t)i + 1;   /* corpus_close frees this many */
    }
    json_decref(root);
    if (rc == SAE_OK)
        c->info.vocab = (const char *const *)c->vocab;
    return rc;
}

static int open_shards(corpus *c, const char *dir, const char *mpath, json_t *list,
                       sae_error *err)
{
    if (!json_is_array(list) || json_array_size(list) == 0)
        return sae_fail(err, "%s: \"shards\" must be a non-empty array of file names", mpath);
    if (json_array_size(list) > INT_MAX)
        return sae_fail(err, "%s: too many shards", mpath);
    int n = (int)json_array_size(list);
    if (!(c->shards = calloc((size_t)n, sizeof *c->shards)))
        return sae_fail(err, "%s: out of memory", mpath);
    for (int i = 0; i < n; i++) {
        json_t *v = json_array_get(list, (size_t)i);
        if (!json_is_string(v))
            return sae_fail(err, "%s: shards[%d] is not a string", mpath, i);
        if (check_member_name(mpath, json_string_value(v), err) != SAE_OK)
            return SAE_ERR;
        c->info.n_shards = i + 1;   /* corpus_close closes this many */
        if (open_shard(c, i, dir, json_string_value(v), err) != SAE_OK)
            return SAE_ERR;
    }
    return SAE_OK;
}

/* The fields other than "shards"; dtype is checked against the shards later. */
static int parse_manifest_fields(corpus *c, const char *mpath, json_t *root, const char **vocab,
                                 sae_error *err)
{
    long long d_in = 0, ctx = 0;
    const char *dtype = NULL, *model = NULL, *hook = NULL;
    if (get_int(mpath, root, "d_in", true, 1, MAX_D_IN, &d_in, err) != SAE_OK ||
        get_int(mpath, root, "context_len", false, 0, INT_MAX, &ctx, err) != SAE_OK ||
        get_str(mpath, root, "dtype", &dtype, err) != SAE_OK ||
        get_str(mpath, root, "vocab", vocab, err) != SAE_OK ||
        get_str(mpath, root, "model", &model, err) != SAE_OK ||
        get_str(mpath, root, "hook", &hook, err) != SAE_OK)
        return SAE_ERR;
    c->info.d_in = (int)d_in;
    c->info.context_len = (int)ctx;
    if (dtype && corpus_dtype_parse(dtype, &c->info.dtype) != SAE_OK)
        return sae_fail(err, "%s: dtype '%s' is not float32, float16 or bfloat16", mpath, dtype);
    if (!(c->model = dup_or_empty(model)) || !(c->hook = dup_or_empty(hook)))
        return sae_fail(err, "%s: out of memory", mpath);
    if (*vocab && check_member_name(mpath, *vocab, err) != SAE_OK)
        return SAE_ERR;
    return SAE_OK;
}

static int open_dir(corpus *c, const char *dir, sae_error *err)
{
    char mpath[PATH_MAX], vpath[PATH_MAX];
    if (join_path(mpath, sizeof mpath, dir, "dataset.json", err) != SAE_OK)
        return SAE_ERR;
    char *text;
    size_t len;
    if (sae_read_file(mpath, MANIFEST_MAX_BYTES, &text, &len, err) != SAE_OK)
        return SAE_ERR;
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (!root)
        return sae_fail(err, "%s: not valid JSON: %s (line %d)", mpath, jerr.text, jerr.line);
    const char *vocab = NULL;
    long long n_tokens = -1;
    int rc = json_is_object(root) ? SAE_OK : sae_fail(err, "%s: not a JSON object", mpath);
    if (rc == SAE_OK)
        rc = parse_manifest_fields(c, mpath, root, &vocab, err);
    if (rc == SAE_OK)
        rc = get_int(mpath, root, "n_tokens", false, 0, LLONG_MAX, &n_tokens, err);
    if (rc == SAE_OK)
        rc = open_shards(c, dir, mpath, json_object_get(root, "shards"), err);
    if (rc == SAE_OK && n_tokens >= 0 && n_tokens != c->info.n_rows)
        rc = sae_fail(err, "%s: n_tokens is %lld, but the shards hold %lld rows", mpath,
                      n_tokens, (long long)c->info.n_rows);
    if (rc == SAE_OK && vocab)
        rc = join_path(vpath, sizeof vpath, dir, vocab, err);
    if (rc == SAE_OK && vocab)
        rc = load_vocab(c, vpath, err);
    json_decref(root);
    return rc;
}

/* ---- Opening: single files ----------------------------------------------- */

static int open_single_safetensors(corpus *c, const char *path, sae_error *err)
{
    if (!(c->shards = calloc(1, sizeof *c->shards)))
        return sae_fail(err, "%s: out of memory", path);
    shard *s = &c->shards[0];
    if (snprintf(s->path, sizeof s->path, "%s", path) >= (int)sizeof s->path)
        return sae_fail(err, "%s: path too long", path);
    if (st_open(&s->file, s->path, err) != SAE_OK)
        return SAE_ERR;
    c->info.n_shards = 1;
    const st_tensor *a = st_find(&s->file, "activations");
    if (!a || a->ndim != 2 || a->shape[1] < 1 || a->shape[1] > MAX_D_IN)
        return sae_fail(err, "%s: want a tensor 'activations' [rows, d_in], d_in in [1, %d]",
                        path, MAX_D_IN);
    c->info.d_in = (int)a->shape[1];
    if (check_shard(c, s, true, err) != SAE_OK)
        return SAE_ERR;
    c->info.n_rows = s->rows;
    return SAE_OK;
}

static int open_npy(corpus *c, const char *path, sae_error *err)
{
    if (snprintf(c->npy_path, sizeof c->npy_path, "%s", path) >= (int)sizeof c->npy_path)
        return sae_fail(err, "%s: path too long", path);
    if (npy_read_f32(path, 2, &c->npy, err) != SAE_OK)
        return SAE_ERR;
    if (c->npy.shape[1] < 1 || c->npy.shape[1] > MAX_D_IN)
        return sae_fail(err, "%s: %lld columns; want d_in in [1, %d]", path,
                        (long long)c->npy.shape[1], MAX_D_IN);
    c->info.d_in = (int)c->npy.shape[1];
    c->info.n_rows = c->npy.shape[0];
    c->info.dtype = ST_F32;
    return SAE_OK;
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

int corpus_open(const char *path, corpus **out, sae_error *err)
{
    *out = NULL;
    struct stat st;
    if (stat(path, &st) != 0)
        return sae_fail(err, "%s: %s", path, strerror(errno));
    corpus *c = calloc(1, sizeof *c);
    if (!c)
        return sae_fail(err, "%s: out of memory", path);
    c->info.dtype = ST_DTYPE_COUNT;     /* "not yet known" until a shard says */
    snprintf(c->path, sizeof c->path, "%s", path);
    int rc;
    if (S_ISDIR(st.st_mode))
        rc = open_dir(c, path, err);
    else if (ends_with(path, ".npy"))
        rc = open_npy(c, path, err);
    else if (ends_with(path, ".safetensors"))
        rc = open_single_safetensors(c, path, err);
    else
        rc = sae_fail(err, "%s: not a corpus directory, .safetensors or .npy file", path);
    if (rc == SAE_OK && c->info.n_rows == 0)
        rc = sae_fail(err, "%s: the corpus has no rows", path);
    if (rc != SAE_OK) {
        corpus_close(c);
        return SAE_ERR;
    }
    if (!c->model && !(c->model = strdup("")))
        rc = SAE_ERR;
    if (!c->hook && !(c->hook = strdup("")))
        rc = SAE_ERR;
    if (rc != SAE_OK) {
        corpus_close(c);
        return sae_fail(err, "%s: out of memory", path);
    }
    c->info.model = c->model;
    c->info.hook = c->hook;
    *out = c;
    return SAE_OK;
}

void corpus_close(corpus *c)
{
    if (!c)
        return;
    for (int i = 0; c->shards && i < c->info.n_shards; i++)
        st_close(&c->shards[i].file);
    free(c->shards);
    if (c->npy.data)
        npy_free(&c->npy);
    for (int64_t i = 0; c->vocab && i < c->info.vocab_size; i++)
        free(c->vocab[i]);
    free(c->vocab);
    free(c->model);
    free(c->hook);
    free(c);
}

const corpus_info *corpus_get_info(const corpus *c)
{
    return &c->info;
}

/* ---- Reading rows -------------------------------------------------------- */

/* Hands the pages spanning [p, p + len) back to the kernel. Rounding outward
 * is fine: see the note at the top. */
static void release_pages(const st_file *f, const uint8_t *p, size_t len)
{
    if (!f->mapped || len == 0)
        return;
    long ps = sysconf(_SC_PAGESIZE);
    uintptr_t page = ps > 0 ? (uintptr_t)ps : 4096;
    uintptr_t lo = (uintptr_t)p / page * page;
    uintptr_t hi = ((uintptr_t)p + len + page - 1) / page * page;
    uintptr_t map_lo = (uintptr_t)f->base, map_hi = map_lo + f->size;
    if (lo < map_lo)
        lo = map_lo;
    if (hi > map_hi)    /* the page holding the end of the file is whole anyway */
        hi = (map_hi + page - 1) / page * page;
    /* Advice only: on failure the pages simply stay resident. */
    (void)madvise((void *)lo, hi - lo, MADV_DONTNEED);
}

static int read_tokens(const corpus *c, const shard *s, int64_t r0, int64_t n, int32_t *out,
                       sae_error *err)
{
    const st_tensor *t = s->tokens;
    size_t esz = st_dtype_size(t->dtype);
    const uint8_t *src = (const uint8_t *)st_data(&s->file, t) + (size_t)r0 * esz;
    for (int64_t i = 0; i < n; i++) {
        int64_t v;
        if (t->dtype == ST_I32) {
            int32_t v32;
            memcpy(&v32, src + (size_t)i * esz, sizeof v32);
            v = v32;
        } else {
            memcpy(&v, src + (size_t)i * esz, sizeof v);
        }
        int64_t limit = c->info.vocab_size > 0 ? c->info.vocab_size : INT32_MAX + 1LL;
        if (v < 0 || v >= limit)
            return sae_fail(err, "%s: tokens row %lld (corpus row %lld) is %lld, outside "
                            "[0, %lld)", s->path, (long long)(r0 + i),
                            (long long)(s->first_row + r0 + i), (long long)v, (long long)limit);
        out[i] = (int32_t)v;
    }
    release_pages(&s->file, src, (size_t)n * esz);
    return SAE_OK;
}

/* Rows [r0, r0 + n) of one shard, in pieces of about READ_PIECE_BYTES. */
static int read_shard_rows(const corpus *c, const shard *s, int64_t r0, int64_t n, float *out,
                           int32_t *tokens, sae_error *err)
{
    size_t d = (size_t)c->info.d_in, esz = st_dtype_size(s->acts->dtype);
    const uint8_t *base = st_data(&s->file, s->acts);
    int64_t per_piece = (int64_t)(READ_PIECE_BYTES / (d * esz));
    if (per_piece < 1)
        per_piece = 1;
    for (int64_t i = 0; i < n; i += per_piece) {
        int64_t m = n - i < per_piece ? n - i : per_piece;
        const uint8_t *src = base + (size_t)(r0 + i) * d * esz;
        float *dst = out + (size_t)i * d;
        st_to_f32(s->acts->dtype, src, (size_t)m * d, dst);
        release_pages(&s->file, src, (size_t)m * d * esz);
        size_t bad = sae_first_nonfinite(dst, (size_t)m * d);
        if (bad < (size_t)m * d) {
            int64_t row = r0 + i + (int64_t)(bad / d);
            return sae_fail(err, "%s: activations row %lld (corpus row %lld) has a non-finite "
                            "value in column %zu", s->path, (long long)row,
                            (long long)(s->first_row + row), bad % d);
        }
    }
    return tokens ? read_tokens(c, s, r0, n, tokens, err) : SAE_OK;
}

/* The shard holding corpus row r (shards with no rows are never returned). */
static int find_shard(const corpus *c, int64_t r)
{
    int lo = 0, hi = c->info.n_shards - 1;
    while (lo < hi) {
        int mid = lo + (hi - lo + 1) / 2;
        if (c->shards[mid].first_row <= r)
            lo = mid;
        else
            hi = mid - 1;
    }
    while (c->shards[lo].rows == 0 || r >= c->shards[lo].first_row + c->shards[lo].rows)
        lo++;   /* only empty shards sharing first_row; r < n_rows ends this */
    return lo;
}

static int read_npy_rows(const corpus *c, int64_t start, int64_t n, float *out,
                         sae_error *err)
{
    size_t d = (size_t)c->info.d_in;
    memcpy(out, c->npy.data + (size_t)start * d, (size_t)n * d * sizeof *out);
    size_t bad = sae_first_nonfinite(out, (size_t)n * d);
    if (bad < (size_t)n * d)
        return sae_fail(err, "%s: row %lld has a non-finite value in column %zu", c->npy_path,
                        (long long)(start + (int64_t)(bad / d)), bad % d);
    return SAE_OK;
}

int corpus_read_rows(const corpus *c, int64_t start, int64_t n, float *out, int32_t *tokens,
                     sae_error *err)
{
    if (start < 0 || n < 0 || start > c->info.n_rows || n > c->info.n_rows - start)
        return sae_fail(err, "%s: rows [%lld, %lld) are outside the corpus' %lld rows",
                        c->path, (long long)start, (long long)(start + n),
                        (long long)c->info.n_rows);
    if (tokens && !c->info.has_tokens)
        return sae_fail(err, "%s: the corpus has no tokens", c->path);
    if (n == 0)
        return SAE_OK;
    if (!c->shards)
        return read_npy_rows(c, start, n, out, err);
    size_t d = (size_t)c->info.d_in;
    int64_t done = 0;
    for (int i = find_shard(c, start); done < n; i++) {
        const shard *s = &c->shards[i];
        int64_t r0 = start + done - s->first_row;
        int64_t m = s->rows - r0 < n - done ? s->rows - r0 : n - done;
        if (m <= 0)
            continue;   /* an empty shard */
        if (read_shard_rows(c, s, r0, m, out + (size_t)done * d, tokens ? tokens + done : NULL,
                            err) != SAE_OK)
            return SAE_ERR;
        done += m;
    }
    return SAE_OK;
}

/* ---- The shuffling loader ------------------------------------------------ */

/* Philox counter tags, so the two uses of one seed draw unrelated numbers. */
#define TAG_PERM 0x50450000u    /* 'PE' | Feistel round */
#define TAG_SHUFFLE 0x53480000u /* 'SH' */
#define FEISTEL_ROUNDS 6
#define MAX_BUFFER_ROWS ((int64_t)INT32_MAX)

/* A keyed bijection of [0, n): a balanced Feistel network on the smallest
 * even number of bits covering n, cycle-walked back into [0, n). That domain
 * is < 4n, so the walk takes under 4 steps on average. */
typedef struct chunk_perm {
    uint64_t n, seed, epoch;
    int half;                   /* bits per Feistel half */
} chunk_perm;

static chunk_perm chunk_perm_make(uint64_t n, uint64_t seed, uint64_t epoch)
{
    int bits = 0;
    while (bits < 64 && (1ull << bits) < n)
        bits++;
    bits += bits & 1;
    chunk_perm p = {n, seed, epoch, bits / 2};
    return p;
}

static uint64_t feistel(const chunk_perm *p, uint64_t x)
{
    uint64_t mask = (1ull << p->half) - 1;
    uint64_t left = x >> p->half, right = x & mask;
    for (uint32_t r = 0; r < FEISTEL_ROUNDS; r++) {
        uint64_t f = sae_philox(p->seed, (uint32_t)right, TAG_PERM | r, p->epoch).v[0];
        uint64_t next = left ^ (f & mask);
        left = right;
        right = next;
    }
    return (left << p->half) | right;
}

static uint64_t chunk_perm_apply(const chunk_perm *p, uint64_t x)
{
    if (p->n <= 1)
        return 0;
    do
        x = feistel(p, x);
    while (x >= p->n);
    return x;
}

/* One contiguous corpus read of a round: rows [src, src + n) go to buffer
 * rows [dst, dst + n). */
typedef struct piece {
    int64_t dst, src, n;
} piece;

typedef enum { SLOT_EMPTY, SLOT_LOADING, SLOT_READY, SLOT_FAILED } slot_state;

/* One round's rows and emission order. */
typedef struct slot {
    float *buf;                 /* [R, d] */
    uint32_t *perm;             /* [R] */
    piece *pieces;
    int64_t n_pieces, cap_pieces;
    uint64_t round;
    slot_state state;           /* under loader.mu while a prefetch thread runs */
} slot;

/* With prefetch, slot[cur] is being emitted while the thread fills
 * slot[1 - cur] with the next round. Without, only slot[0] is used. */
struct loader {
    const corpus *c;
    int d, batch;
    int64_t R, C, n_rows, n_full;
    uint64_t seed, position;
    slot slot[2];
    int cur;
    bool prefetch;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool job, stop;             /* a fill of slot[1 - cur] is requested / quit */
};

static int add_piece(slot *sl, int64_t dst, int64_t src, int64_t n, sae_error *err)
{
    if (sl->n_pieces == sl->cap_pieces) {
        int64_t cap = sl->cap_pieces ? 2 * sl->cap_pieces : 64;
        piece *p = realloc(sl->pieces, (size_t)cap * sizeof *p);
        if (!p)
            return sae_fail(err, "loader: out of memory for %lld pieces", (long long)cap);
        sl->pieces = p;
        sl->cap_pieces = cap;
    }
    sl->pieces[sl->n_pieces++] = (piece){dst, src, n};
    return SAE_OK;
}

/* Stream rows [round R, (round + 1) R) as contiguous corpus reads (step 1 of
 * the sequence in dataset.h). */
static int plan_round(const loader *l, slot *sl, uint64_t round, sae_error *err)
{
    sl->n_pieces = 0;
    uint64_t s = round * (uint64_t)l->R, N = (uint64_t)l->n_rows, C = (uint64_t)l->C;
    int64_t dst = 0;
    while (dst < l->R) {
        uint64_t epoch = s / N, o = s % N, src, avail;
        if (o < (uint64_t)l->n_full * C) {
            chunk_perm p = chunk_perm_make((uint64_t)l->n_full, l->seed, epoch);
            src = chunk_perm_apply(&p, o / C) * C + o % C;
            avail = C - o % C;
        } else {                /* the tail, read last in every epoch */
            src = o;
            avail = N - o;
        }
        int64_t n = (int64_t)avail < l->R - dst ? (int64_t)avail : l->R - dst;
        if (add_piece(sl, dst, (int64_t)src, n, err) != SAE_OK)
            return SAE_ERR;
        dst += n;
        s += (uint64_t)n;
    }
    return SAE_OK;
}

/* Step 2: the emission order of a round's buffer. */
static void shuffle_round(const loader *l, slot *sl, uint64_t round)
{
    for (int64_t i = 0; i < l->R; i++)
        sl->perm[i] = (uint32_t)i;
    for (int64_t i = l->R - 1; i > 0; i--) {
        philox4x32_ctr_t r = sae_philox(l->seed, (uint32_t)i, TAG_SHUFFLE, round);
        uint64_t u = ((uint64_t)r.v[1] << 32) | r.v[0];
        int64_t j = (int64_t)(u % (uint64_t)(i + 1));   /* bias < 2^-32 */
        uint32_t t = sl->perm[i];
        sl->perm[i] = sl->perm[j];
        sl->perm[j] = t;
    }
}

/* Reads the pieces in parallel; each writes its own buffer rows. On failure
 * the error of the first failing piece is reported, whatever the threads did. */
static int read_pieces(const loader *l, slot *sl, sae_error *err)
{
    int64_t first_bad = sl->n_pieces;
    sae_error bad_err = {{0}};
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t i = 0; i < sl->n_pieces; i++) {
        const piece *p = &sl->pieces[i];
        sae_error e;
        if (corpus_read_rows(l->c, p->src, p->n, sl->buf + (size_t)p->dst * (size_t)l->d, NULL,
                             &e) != SAE_OK) {
#pragma omp critical(loader_error)
            if (i < first_bad) {
                first_bad = i;
                bad_err = e;
            }
        }
    }
    if (first_bad < sl->n_pieces) {
        if (err)
            *err = bad_err;
        return SAE_ERR;
    }
    return SAE_OK;
}

/* Fills sl with round `round`; touches nothing but sl. */
static int fill_slot(const loader *l, slot *sl, uint64_t round, sae_error *err)
{
    if (plan_round(l, sl, round, err) != SAE_OK || read_pieces(l, sl, err) != SAE_OK)
        return SAE_ERR;
    shuffle_round(l, sl, round);
    return SAE_OK;
}

/* The prefetch thread: fills slot[1 - cur] whenever a job is posted. Errors
 * are not kept: the main thread redoes a failed round itself and so reports
 * the error exactly as a loader without prefetch would. */
static void *prefetch_main(void *arg)
{
    loader *l = arg;
    pthread_mutex_lock(&l->mu);
    for (;;) {
        while (!l->job && !l->stop)
            pthread_cond_wait(&l->cv, &l->mu);
        if (l->stop)
            break;
        l->job = false;
        slot *sl = &l->slot[1 - l->cur];
        uint64_t round = sl->round;
        pthread_mutex_unlock(&l->mu);
        int rc = fill_slot(l, sl, round, NULL);
        pthread_mutex_lock(&l->mu);
        sl->state = rc == SAE_OK ? SLOT_READY : SLOT_FAILED;
        pthread_cond_broadcast(&l->cv);
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

/* Waits until the prefetch slot is not being filled; returns it. */
static slot *settle_prefetch(loader *l)
{
    slot *o = &l->slot[1 - l->cur];
    pthread_mutex_lock(&l->mu);
    while (o->state == SLOT_LOADING)
        pthread_cond_wait(&l->cv, &l->mu);
    pthread_mutex_unlock(&l->mu);
    return o;
}

static void request_prefetch(loader *l, uint64_t round)
{
    slot *o = &l->slot[1 - l->cur];
    pthread_mutex_lock(&l->mu);
    o->round = round;
    o->state = SLOT_LOADING;
    l->job = true;
    pthread_cond_signal(&l->cv);
    pthread_mutex_unlock(&l->mu);
}

/* Makes slot[cur] hold `round`: already there, prefetched, or read now. */
static int ensure_round(loader *l, uint64_t round, sae_error *err)
{
    slot *cur = &l->slot[l->cur];
    if (cur->state == SLOT_READY && cur->round == round)
        return SAE_OK;
    if (l->prefetch) {
        slot *o = settle_prefetch(l);
        if (o->state == SLOT_READY && o->round == round) {
            l->cur = 1 - l->cur;
            request_prefetch(l, round + 1);
            return SAE_OK;
        }
    }
    cur->state = SLOT_EMPTY;
    if (fill_slot(l, cur, round, err) != SAE_OK)
        return SAE_ERR;
    cur->round = round;
    cur->state = SLOT_READY;
    if (l->prefetch)
        request_prefetch(l, round + 1);
    return SAE_OK;
}

static int resolve_config(const corpus_info *ci, const loader_config *cfg, int64_t *R,
                          int64_t *C, sae_error *err)
{
    if (cfg->batch < 1)
        return sae_fail(err, "loader: batch must be >= 1, got %d", cfg->batch);
    *R = cfg->buffer_rows > 0 ? cfg->buffer_rows : 32 * (int64_t)cfg->batch;
    if (cfg->buffer_rows < 0 || *R > MAX_BUFFER_ROWS)
        return sae_fail(err, "loader: buffer_rows must be in [1, %lld], got %lld",
                        (long long)MAX_BUFFER_ROWS, (long long)*R);
    if ((size_t)*R > SIZE_MAX / sizeof(float) / 2 / (size_t)ci->d_in)
        return sae_fail(err, "loader: a buffer of %lld rows of %d floats is too large",
                        (long long)*R, ci->d_in);
    if (cfg->chunk_rows < 0)
        return sae_fail(err, "loader: chunk_rows must be >= 0, got %lld",
                        (long long)cfg->chunk_rows);
    *C = cfg->chunk_rows > 0 ? cfg->chunk_rows : (*R / 256 > 1 ? *R / 256 : 1);
    if (*C > ci->n_rows)
        *C = ci->n_rows;
    return SAE_OK;
}

static int alloc_slot(slot *sl, int64_t R, int d)
{
    sl->buf = malloc((size_t)R * (size_t)d * sizeof *sl->buf);
    sl->perm = malloc((size_t)R * sizeof *sl->perm);
    return sl->buf && sl->perm ? SAE_OK : SAE_ERR;
}

static int start_prefetch(loader *l, sae_error *err)
{
    if (alloc_slot(&l->slot[1], l->R, l->d) != SAE_OK)
        return sae_fail(err, "loader: out of memory for a second buffer of %lld rows x %d "
                        "(prefetch)", (long long)l->R, l->d);
    if (pthread_mutex_init(&l->mu, NULL) != 0)
        return sae_fail(err, "loader: cannot create a mutex");
    if (pthread_cond_init(&l->cv, NULL) != 0) {
        pthread_mutex_destroy(&l->mu);
        return sae_fail(err, "loader: cannot create a condition variable");
    }
    if (pthread_create(&l->thread, NULL, prefetch_main, l) != 0) {
        pthread_cond_destroy(&l->cv);
        pthread_mutex_destroy(&l->mu);
        return sae_fail(err, "loader: cannot start the prefetch thread");
    }
    l->prefetch = true;
    return SAE_OK;
}

int loader_open(const corpus *c, const loader_config *cfg, loader **out, sae_error *err)
{
    *out = NULL;
    const corpus_info *ci = corpus_get_info(c);
    int64_t R = 0, C = 0;   /* set by resolve_config on success */
    if (resolve_config(ci, cfg, &R, &C, err) != SAE_OK)
        return SAE_ERR;
    loader *l = calloc(1, sizeof *l);
    if (!l)
        return sae_fail(err, "loader: out of memory");
    *l = (loader){.c = c, .d = ci->d_in, .batch = cfg->batch, .R = R, .C = C,
                  .n_rows = ci->n_rows, .n_full = ci->n_rows / C, .seed = cfg->seed};
    int rc = SAE_OK;
    if (alloc_slot(&l->slot[0], R, l->d) != SAE_OK)
        rc = sae_fail(err, "loader: out of memory for a shuffle buffer of %lld rows x %d",
                      (long long)R, l->d);
    if (rc == SAE_OK && cfg->prefetch)
        rc = start_prefetch(l, err);
    if (rc != SAE_OK) {
        loader_close(l);
        return SAE_ERR;
    }
    *out = l;
    return SAE_OK;
}

void loader_close(loader *l)
{
    if (!l)
        return;
    if (l->prefetch) {
        pthread_mutex_lock(&l->mu);
        l->stop = true;
        pthread_cond_signal(&l->cv);
        pthread_mutex_unlock(&l->mu);
        pthread_join(l->thread, NULL);
        pthread_cond_destroy(&l->cv);
        pthread_mutex_destroy(&l->mu);
    }
    for (int i = 0; i < 2; i++) {
        free(l->slot[i].buf);
        free(l->slot[i].perm);
        free(l->slot[i].pieces);
    }
    free(l);
}

int loader_next(loader *l, float *batch_out, sae_error *err)
{
    uint64_t start = l->position;
    size_t d = (size_t)l->d;
    for (int b = 0; b < l->batch; b++) {
        if (ensure_round(l, l->position / (uint64_t)l->R, err) != SAE_OK) {
            l->position = start;
            return SAE_ERR;
        }
        const slot *sl = &l->slot[l->cur];
        uint32_t row = sl->perm[l->position % (uint64_t)l->R];
        memcpy(batch_out + (size_t)b * d, sl->buf + (size_t)row * d, d * sizeof *batch_out);
        l->position++;
    }
    return SAE_OK;
}

void loader_get_state(const loader *l, loader_state *s)
{
    *s = (loader_state){.position = l->position, .seed = l->seed, .buffer_rows = l->R,
                        .chunk_rows = l->C, .n_rows = l->n_rows};
}

int loader_set_state(loader *l, const loader_state *s, sae_error *err)
{
    if (s->seed != l->seed || s->buffer_rows != l->R || s->chunk_rows != l->C ||
        s->n_rows != l->n_rows)
        return sae_fail(err, "loader: the saved state (seed %llu, buffer %lld rows, chunks of "
                        "%lld, corpus of %lld rows) does not match this loader (seed %llu, "
                        "buffer %lld, chunks of %lld, corpus of %lld rows)",
                        (unsigned long long)s->seed, (long long)s->buffer_rows,
                        (long long)s->chunk_rows, (long long)s->n_rows,
                        (unsigned long long)l->seed, (long long)l->R, (long long)l->C,
                        (long long)l->n_rows);
    l->position = s->position;  /* loaded rounds stay valid: rounds are pure functions */
    return SAE_OK;
}

double loader_epochs(const loader *l)
{
    return (double)l->position / (double)l->n_rows;
}

/* ---- Writing ------------------------------------------------------------- */

void corpus_shard_name(int index, char *buf, size_t len)
{
    snprintf(buf, len, "shard_%05d.safetensors", index);
}

int corpus_write_shard(const char *dir, int index, st_dtype dtype, int d_in, int64_t rows,
                       const void *activations, const int32_t *tokens, sae_error *err)
{
    char name[64], path[PATH_MAX];
    corpus_shard_name(index, name, sizeof name);
    if (join_path(path, sizeof path, dir, name, err) != SAE_OK)
        return SAE_ERR;
    if (!is_storage_dtype(dtype))
        return sae_fail(err, "%s: activations dtype %s is not F32, F16 or BF16", path,
                        st_dtype_name(dtype));
    st_out ts[2] = {
        {.name = "activations", .dtype = dtype, .ndim = 2, .shape = {rows, d_in},
         .data = activations},
        {.name = "tokens", .dtype = ST_I32, .ndim = 1, .shape = {rows}, .data = tokens},
    };
    return st_write(path, ts, tokens ? 2 : 1, NULL, err);
}

static json_t *manifest_json(const corpus_manifest *m)
{
    json_t *shards = json_array();
    for (int i = 0; shards && i < m->n_shards; i++) {
        char name[64];
        corpus_shard_name(i, name, sizeof name);
        if (json_array_append_new(shards, json_string(name)) != 0) {
            json_decref(shards);
            return NULL;
        }
    }
    json_t *root = json_pack("{s:i, s:s, s:i, s:o, s:I}", "d_in", m->d_in, "dtype",
                             corpus_dtype_name(m->dtype), "context_len", m->context_len,
                             "shards", shards, "n_tokens", (json_int_t)m->n_tokens);
    if (!root)
        return NULL;
    const struct {
        const char *key, *value;
    } opt[] = {{"vocab", m->vocab}, {"model", m->model}, {"hook", m->hook}};
    for (size_t i = 0; i < sizeof opt / sizeof opt[0]; i++) {
        if (opt[i].value && json_object_set_new(root, opt[i].key, json_string(opt[i].value))) {
            json_decref(root);
            return NULL;
        }
    }
    return root;
}

int corpus_write_manifest(const char *dir, const corpus_manifest *m, sae_error *err)
{
    char path[PATH_MAX];
    if (join_path(path, sizeof path, dir, "dataset.json", err) != SAE_OK)
        return SAE_ERR;
    if (!is_storage_dtype(m->dtype))
        return sae_fail(err, "%s: dtype %s is not F32, F16 or BF16", path,
                        st_dtype_name(m->dtype));
    json_t *root = manifest_json(m);
    char *text = root ? json_dumps(root, JSON_INDENT(2)) : NULL;
    json_decref(root);
    if (!text)
        return sae_fail(err, "%s: out of memory", path);
    int rc = sae_write_file_atomic(path, text, strlen(text), err);
    free(text);
    return rc;
}
