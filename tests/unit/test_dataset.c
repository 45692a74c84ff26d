/* test_dataset.c - activation corpora: float16/bfloat16 packing against
 * hand-computed bit patterns and exhaustive round trips; corpora written with
 * the writer API read back exactly (ranges across shards, empty shards,
 * tokens, vocab, .npy and single-file corpora); the loader's sequence (an
 * epoch is a permutation, same seed same batches, a saved state resumes
 * bit-identically, even with another batch size); and every broken corpus
 * corpus_open or the reads must refuse with a message naming the file.
 * Exit 0 = pass; one line per failed check. */
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dataset.h"
#include "npy.h"
#include "safetensors.h"
#include "util.h"

static int failures;

#define CHECK(cond) check(!!(cond), #cond, __LINE__)
#define CHECK_OK(call) check_ok((call), &err, #call, __LINE__)
/* An expected failure whose message contains `needle`. */
#define CHECK_ERR(call, needle) check_err((call), &err, needle, #call, __LINE__)

static void check(int ok, const char *what, int line)
{
    if (!ok) {
        printf("FAIL test_dataset.c:%d: %s\n", line, what);
        failures++;
    }
}

static void check_ok(int rc, const sae_error *err, const char *what, int line)
{
    if (rc != SAE_OK) {
        printf("FAIL test_dataset.c:%d: %s: %s\n", line, what, err->msg);
        failures++;
    }
}

static void check_err(int rc, sae_error *err, const char *needle, const char *what, int line)
{
    if (rc == SAE_OK) {
        printf("FAIL test_dataset.c:%d: %s succeeded, want an error with '%s'\n", line, what,
               needle);
        failures++;
    } else if (!strstr(err->msg, needle)) {
        printf("FAIL test_dataset.c:%d: %s: error '%s' does not mention '%s'\n", line, what,
               err->msg, needle);
        failures++;
    }
    err->msg[0] = '\0';
}

static char tmpdir[256];

/* A fresh subdirectory of tmpdir for one case. */
static const char *case_dir(const char *name)
{
    static char buf[512];
    snprintf(buf, sizeof buf, "%s/%s", tmpdir, name);
    if (mkdir(buf, 0755) != 0)
        printf("cannot create %s\n", buf);
    return buf;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void write_text(const char *dir, const char *name, const char *text)
{
    char path[600];
    sae_error err;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    CHECK_OK(sae_write_file_atomic(path, text, strlen(text), &err));
}

/* Row r of the test data: column j holds r + j / 8, exact in float16 and,
 * for the r < 32 of the f16/bf16 corpora here, in bfloat16 too. */
static float cell(int64_t r, int j)
{
    return (float)r + (float)j / 8.0f;
}

static float *make_rows(int64_t first, int64_t n, int d)
{
    float *x = malloc((size_t)(n * d) * sizeof *x);
    for (int64_t r = 0; r < n; r++)
        for (int j = 0; j < d; j++)
            x[r * d + j] = cell(first + r, j);
    return x;
}

/* Writes shards of the given row counts (rows numbered across shards), with
 * tokens (id = row % 7) when with_tokens, and dataset.json. */
static void write_corpus(const char *dir, st_dtype dt, int d, const int64_t *rows, int n_shards,
                         bool with_tokens, const char *vocab)
{
    sae_error err;
    int64_t first = 0;
    for (int s = 0; s < n_shards; s++) {
        float *x = make_rows(first, rows[s], d);
        uint16_t *half = malloc((size_t)(rows[s] * d) * 2 + 1);
        int32_t *tok = malloc((size_t)rows[s] * sizeof *tok + 1);
        for (int64_t r = 0; r < rows[s]; r++)
            tok[r] = (int32_t)((first + r) % 7);
        if (dt != ST_F32)
            corpus_pack(dt, x, (size_t)(rows[s] * d), half);
        CHECK_OK(corpus_write_shard(dir, s, dt, d, rows[s], dt == ST_F32 ? (void *)x : half,
                                    with_tokens ? tok : NULL, &err));
        free(x);
        free(half);
        free(tok);
        first += rows[s];
    }
    corpus_manifest m = {.d_in = d, .dtype = dt, .context_len = 4, .n_shards = n_shards,
                         .n_tokens = first, .vocab = vocab, .model = "m", .hook = "h"};
    CHECK_OK(corpus_write_manifest(dir, &m, &err));
}

/* ---- Packing ------------------------------------------------------------- */

static uint16_t pack1(st_dtype dt, float v)
{
    uint16_t h;
    corpus_pack(dt, &v, 1, &h);
    return h;
}

static void test_pack_bits(void)
{
    CHECK(pack1(ST_F16, 1.0f) == 0x3c00);
    CHECK(pack1(ST_F16, -2.0f) == 0xc000);
    CHECK(pack1(ST_F16, 65504.0f) == 0x7bff);
    CHECK(pack1(ST_F16, 65519.0f) == 0x7bff);              /* below the tie: max half */
    CHECK(pack1(ST_F16, 65520.0f) == 0x7c00);              /* tie to even: inf */
    CHECK(pack1(ST_F16, 1e6f) == 0x7c00);
    CHECK(pack1(ST_F16, -INFINITY) == 0xfc00);
    CHECK(pack1(ST_F16, 0x1p-24f) == 0x0001);              /* smallest subnormal */
    CHECK(pack1(ST_F16, 0x1p-25f) == 0x0000);              /* tie to even: zero */
    CHECK(pack1(ST_F16, 0x1.8p-25f) == 0x0001);
    CHECK(pack1(ST_F16, 0x1p-14f) == 0x0400);              /* smallest normal */
    CHECK(pack1(ST_F16, 0x1.ff8p-15f) == 0x03ff);          /* largest subnormal */
    CHECK(pack1(ST_F16, 0x1.ffcp-15f) == 0x0400);          /* tie, carries to normal */
    CHECK(pack1(ST_F16, 1.0f + 0x1p-11f) == 0x3c00);       /* tie, even stays */
    CHECK(pack1(ST_F16, 1.0f + 3 * 0x1p-11f) == 0x3c02);   /* tie, odd goes up */
    CHECK(pack1(ST_F16, -0.0f) == 0x8000);
    uint16_t h = pack1(ST_F16, NAN);
    CHECK((h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0);
    CHECK(pack1(ST_BF16, 1.0f) == 0x3f80);
    CHECK(pack1(ST_BF16, 1.0f + 0x1p-8f) == 0x3f80);       /* tie, even stays */
    CHECK(pack1(ST_BF16, 1.0f + 3 * 0x1p-8f) == 0x3f82);   /* tie, odd goes up */
    CHECK(pack1(ST_BF16, -3.0f) == 0xc040);
    h = pack1(ST_BF16, NAN);
    CHECK((h & 0x7f80) == 0x7f80 && (h & 0x7f) != 0);
}

/* Every non-NaN half and bfloat16 survives unpack then pack. */
static void test_pack_round_trip(void)
{
    const st_dtype dts[] = {ST_F16, ST_BF16};
    for (int k = 0; k < 2; k++) {
        int bad = 0;
        for (uint32_t b = 0; b < 65536; b++) {
            uint16_t in = (uint16_t)b, out;
            float f;
            st_to_f32(dts[k], &in, 1, &f);
            if (isnan(f))
                continue;
            corpus_pack(dts[k], &f, 1, &out);
            bad += out != in;
        }
        CHECK(bad == 0);
    }
    float v = 0;
    uint16_t one = 0x3c00;
    st_to_f32(ST_F16, &one, 1, &v);
    CHECK(v == 1.0f);
}

/* ---- Reading ------------------------------------------------------------- */

static void check_rows(const corpus *c, int64_t start, int64_t n, bool tokens)
{
    sae_error err;
    int d = corpus_get_info(c)->d_in;
    float *x = malloc((size_t)(n * d + 1) * sizeof *x);
    int32_t *tok = malloc((size_t)(n + 1) * sizeof *tok);
    CHECK_OK(corpus_read_rows(c, start, n, x, tokens ? tok : NULL, &err));
    int bad = 0;
    for (int64_t r = 0; r < n; r++) {
        for (int j = 0; j < d; j++)
            bad += x[r * d + j] != cell(start + r, j);
        if (tokens)
            bad += tok[r] != (start + r) % 7;
    }
    CHECK(bad == 0);
    free(x);
    free(tok);
}

static void test_read(st_dtype dt, const char *name)
{
    const char *dir = case_dir(name);
    const int64_t rows[] = {7, 0, 10, 6};
    write_corpus(dir, dt, 5, rows, 4, true, "vocab.json");
    write_text(dir, "vocab.json", "[\"a\", \"b\", \"c\", \"d\", \"e\", \"f\", \"g\"]");
    corpus *c;
    sae_error err;
    CHECK_OK(corpus_open(dir, &c, &err));
    if (!c)
        return;
    const corpus_info *ci = corpus_get_info(c);
    CHECK(ci->d_in == 5 && ci->n_rows == 23 && ci->context_len == 4 && ci->has_tokens);
    CHECK(ci->dtype == dt && ci->n_shards == 4 && ci->vocab_size == 7);
    CHECK(ci->vocab && strcmp(ci->vocab[6], "g") == 0);
    CHECK(strcmp(ci->model, "m") == 0 && strcmp(ci->hook, "h") == 0);
    check_rows(c, 0, 23, true);
    check_rows(c, 5, 4, true);      /* across the empty shard */
    check_rows(c, 7, 10, false);
    check_rows(c, 22, 1, true);
    check_rows(c, 23, 0, true);
    float x[5];
    CHECK_ERR(corpus_read_rows(c, 22, 2, x, NULL, &err), "outside");
    CHECK_ERR(corpus_read_rows(c, -1, 1, x, NULL, &err), "outside");
    corpus_close(c);
}

static void test_npy_and_single_file(void)
{
    const char *dir = case_dir("single");
    char path[600];
    sae_error err;
    float *x = make_rows(0, 9, 3);
    snprintf(path, sizeof path, "%s/acts.npy", dir);
    int64_t shape[2] = {9, 3};
    CHECK_OK(npy_write_f32(path, x, 2, shape, &err));
    corpus *c = NULL;
    CHECK_OK(corpus_open(path, &c, &err));
    if (c) {
        CHECK(corpus_get_info(c)->n_rows == 9 && corpus_get_info(c)->d_in == 3);
        CHECK(!corpus_get_info(c)->has_tokens && corpus_get_info(c)->context_len == 0);
        check_rows(c, 2, 6, false);
        int32_t tok[1];
        float row[3];
        CHECK_ERR(corpus_read_rows(c, 0, 1, row, tok, &err), "no tokens");
        corpus_close(c);
    }
    CHECK_OK(corpus_write_shard(dir, 0, ST_F32, 3, 9, x, NULL, &err));
    snprintf(path, sizeof path, "%s/shard_00000.safetensors", dir);
    CHECK_OK(corpus_open(path, &c, &err));
    if (c) {
        CHECK(corpus_get_info(c)->n_rows == 9 && corpus_get_info(c)->n_shards == 1);
        check_rows(c, 0, 9, false);
        corpus_close(c);
    }
    free(x);
    snprintf(path, sizeof path, "%s/acts.txt", dir);
    write_text(dir, "acts.txt", "hello");
    CHECK_ERR(corpus_open(path, &c, &err), "acts.txt");
    CHECK(c == NULL);
}

/* ---- Broken corpora ------------------------------------------------------ */

/* corpus_open must fail, with a message holding both needles (needle2 may
 * be NULL), and leave no corpus behind. */
#define EXPECT_OPEN_ERROR(dir, needle, needle2) \
    expect_open_error(dir, needle, needle2, __LINE__)

static void expect_open_error(const char *dir, const char *needle, const char *needle2,
                              int line)
{
    corpus *c = NULL;
    sae_error err = {{0}};
    int rc = corpus_open(dir, &c, &err);
    check(rc != SAE_OK && c == NULL, "corpus_open fails", line);
    if (rc != SAE_OK && (!strstr(err.msg, needle) || (needle2 && !strstr(err.msg, needle2)))) {
        printf("FAIL test_dataset.c:%d: error '%s' does not mention '%s'%s%s\n", line,
               err.msg, needle, needle2 ? " and " : "", needle2 ? needle2 : "");
        failures++;
    }
    corpus_close(c);
}

static void test_broken(void)
{
    const int64_t rows[] = {4, 4};
    sae_error err;

    const char *dir = case_dir("wrong_d_in");
    write_corpus(dir, ST_F32, 3, rows, 2, false, NULL);
    write_text(dir, "dataset.json", "{\"d_in\": 4, \"shards\": [\"shard_00000.safetensors\"]}");
    EXPECT_OPEN_ERROR(dir, "shard_00000.safetensors", "d_in is 4");

    dir = case_dir("missing_shard");
    write_corpus(dir, ST_F32, 3, rows, 1, false, NULL);
    write_text(dir, "dataset.json", "{\"d_in\": 3, \"shards\": [\"shard_00000.safetensors\", "
                                    "\"shard_00001.safetensors\"]}");
    EXPECT_OPEN_ERROR(dir, "shard_00001.safetensors", NULL);

    dir = case_dir("truncated");
    write_corpus(dir, ST_F32, 3, rows, 2, false, NULL);
    char path[600];
    snprintf(path, sizeof path, "%s/shard_00001.safetensors", dir);
    struct stat st;
    CHECK(stat(path, &st) == 0 && truncate(path, st.st_size - 5) == 0);
    EXPECT_OPEN_ERROR(dir, "shard_00001.safetensors", NULL);

    dir = case_dir("dtype_mismatch");
    write_corpus(dir, ST_F32, 3, rows, 2, false, NULL);
    write_text(dir, "dataset.json", "{\"d_in\": 3, \"dtype\": \"float16\", \"shards\": "
                                    "[\"shard_00000.safetensors\"]}");
    EXPECT_OPEN_ERROR(dir, "shard_00000.safetensors", "dtype");

    dir = case_dir("mixed_dtype");
    write_corpus(dir, ST_F32, 3, rows, 1, false, NULL);
    float *x = make_rows(0, 4, 3);
    uint16_t half[12];
    corpus_pack(ST_BF16, x, 12, half);
    CHECK_OK(corpus_write_shard(dir, 1, ST_BF16, 3, 4, half, NULL, &err));
    write_text(dir, "dataset.json", "{\"d_in\": 3, \"shards\": [\"shard_00000.safetensors\", "
                                    "\"shard_00001.safetensors\"]}");
    EXPECT_OPEN_ERROR(dir, "shard_00001.safetensors", "BF16");

    dir = case_dir("mixed_tokens");
    int32_t tok[4] = {0, 1, 2, 3};
    CHECK_OK(corpus_write_shard(dir, 0, ST_F32, 3, 4, x, tok, &err));
    CHECK_OK(corpus_write_shard(dir, 1, ST_F32, 3, 4, x, NULL, &err));
    write_text(dir, "dataset.json", "{\"d_in\": 3, \"shards\": [\"shard_00000.safetensors\", "
                                    "\"shard_00001.safetensors\"]}");
    EXPECT_OPEN_ERROR(dir, "shard_00001.safetensors", "tokens");

    dir = case_dir("tokens_length");
    snprintf(path, sizeof path, "%s/shard_00000.safetensors", dir);
    st_out ts[2] = {{"activations", ST_F32, 2, {4, 3}, x}, {"tokens", ST_I32, 1, {3}, tok}};
    CHECK_OK(st_write(path, ts, 2, NULL, &err));
    write_text(dir, "dataset.json", "{\"d_in\": 3, \"shards\": [\"shard_00000.safetensors\"]}");
    EXPECT_OPEN_ERROR(dir, "shard_00000.safetensors", "tokens must be [4]");

    dir = case_dir("escape");
    write_text(dir, "dataset.json", "{\"d_in\": 3, \"shards\": [\"../wrong_d_in/"
                                    "shard_00000.safetensors\"]}");
    EXPECT_OPEN_ERROR(dir, "leaves the corpus directory", NULL);
    write_text(dir, "dataset.json", "{\"d_in\": 3, \"shards\": [\"/etc/passwd\"]}");
    EXPECT_OPEN_ERROR(dir, "relative", NULL);

    dir = case_dir("n_tokens");
    write_corpus(dir, ST_F32, 3, rows, 2, false, NULL);
    write_text(dir, "dataset.json", "{\"d_in\": 3, \"n_tokens\": 9, \"shards\": "
                                    "[\"shard_00000.safetensors\", \"shard_00001.safetensors\"]}");
    EXPECT_OPEN_ERROR(dir, "n_tokens is 9", NULL);
    write_text(dir, "dataset.json", "{\"shards\": [\"shard_00000.safetensors\"]}");
    EXPECT_OPEN_ERROR(dir, "d_in", NULL);
    write_text(dir, "dataset.json", "{\"d_in\": 3, \"shards\": []}");
    EXPECT_OPEN_ERROR(dir, "shards", NULL);
    write_text(dir, "dataset.json", "{\"d_in\": 3, \"shards\": [");
    EXPECT_OPEN_ERROR(dir, "dataset.json", NULL);
    free(x);
}

/* Non-finite values and bad token ids pass corpus_open (it reads headers
 * only) but stop the read that meets them, naming shard and row. */
static void test_bad_values(void)
{
    const char *dir = case_dir("nan");
    const int64_t rows[] = {6, 6};
    write_corpus(dir, ST_F16, 2, rows, 2, true, "vocab.json");
    write_text(dir, "vocab.json", "[\"a\", \"b\", \"c\", \"d\", \"e\", \"f\", \"g\"]");
    float *x = make_rows(6, 6, 2);
    uint16_t half[12];
    x[3 * 2 + 1] = NAN;
    corpus_pack(ST_F16, x, 12, half);
    sae_error err;
    int32_t tok[6] = {0, 1, 2, 3, 4, 5};
    CHECK_OK(corpus_write_shard(dir, 1, ST_F16, 2, 6, half, tok, &err));
    corpus *c = NULL;
    CHECK_OK(corpus_open(dir, &c, &err));
    if (!c)
        return;
    float out[24];
    CHECK_OK(corpus_read_rows(c, 0, 9, out, NULL, &err));
    CHECK_ERR(corpus_read_rows(c, 0, 12, out, NULL, &err), "shard_00001.safetensors");
    CHECK_ERR(corpus_read_rows(c, 8, 3, out, NULL, &err), "row 3 (corpus row 9)");

    for (int prefetch = 0; prefetch < 2; prefetch++) {
        loader_config lc = {.batch = 4, .buffer_rows = 12, .chunk_rows = 2, .seed = 1,
                            .prefetch = prefetch};
        loader *l = NULL;
        CHECK_OK(loader_open(c, &lc, &l, &err));
        if (l) {
            CHECK_ERR(loader_next(l, out, &err), "corpus row 9) has a non-finite");
            loader_state s;
            loader_get_state(l, &s);
            CHECK(s.position == 0);
            CHECK_ERR(loader_next(l, out, &err), "corpus row 9) has a non-finite");
            loader_close(l);
        }
    }
    corpus_close(c);

    dir = case_dir("bad_token");
    x[3 * 2 + 1] = 1;
    CHECK_OK(corpus_write_shard(dir, 0, ST_F32, 2, 6, x, tok, &err));
    write_text(dir, "vocab.json", "[\"a\", \"b\", \"c\"]");
    write_text(dir, "dataset.json", "{\"d_in\": 2, \"vocab\": \"vocab.json\", \"shards\": "
                                    "[\"shard_00000.safetensors\"]}");
    CHECK_OK(corpus_open(dir, &c, &err));
    if (c) {
        int32_t t[6];
        CHECK_OK(corpus_read_rows(c, 0, 3, out, t, &err));
        CHECK_ERR(corpus_read_rows(c, 0, 6, out, t, &err), "tokens row 3");
        corpus_close(c);
    }
    free(x);
}

/* ---- The loader ---------------------------------------------------------- */

/* Runs n batches; returns a malloc'd [n, batch, d] array. */
static float *run_batches(loader *l, int n, int batch, int d)
{
    sae_error err;
    float *out = malloc((size_t)n * (size_t)batch * (size_t)d * sizeof *out);
    for (int i = 0; i < n; i++)
        CHECK_OK(loader_next(l, out + (size_t)i * (size_t)(batch * d), &err));
    return out;
}

static void test_loader(void)
{
    const char *dir = case_dir("loader");
    const int64_t rows[] = {300, 0, 455, 245};   /* 1000 rows */
    write_corpus(dir, ST_F32, 3, rows, 4, false, NULL);
    corpus *c = NULL;
    sae_error err;
    CHECK_OK(corpus_open(dir, &c, &err));
    if (!c)
        return;
    const int d = 3, B = 50;
    /* R divides N, so the first N rows are exactly epoch 0 (a permutation of
     * the corpus); chunks of 16 leave a tail of 8 rows. */
    loader_config lc = {.batch = B, .buffer_rows = 200, .chunk_rows = 16, .seed = 42};
    loader *a = NULL, *b = NULL;
    CHECK_OK(loader_open(c, &lc, &a, &err));
    CHECK_OK(loader_open(c, &lc, &b, &err));
    if (!a || !b)
        return;
    float *xa = run_batches(a, 20, B, d), *xb = run_batches(b, 20, B, d);
    CHECK(memcmp(xa, xb, (size_t)(20 * B * d) * sizeof *xa) == 0);
    int seen[1000] = {0}, bad_row = 0, in_order = 0;
    for (int i = 0; i < 1000; i++) {
        float v = xa[i * d];
        int r = (int)v;
        bad_row += v != (float)r || r < 0 || r >= 1000 || xa[i * d + 2] != cell(r, 2);
        if (!bad_row)
            seen[r]++;
        in_order += i > 0 && xa[i * d] == xa[(i - 1) * d] + 1;
    }
    CHECK(bad_row == 0);
    int all_once = 1;
    for (int r = 0; r < 1000; r++)
        all_once &= seen[r] == 1;
    CHECK(all_once);
    CHECK(in_order < 50);   /* shuffled: few consecutive neighbours */
    CHECK(fabs(loader_epochs(a) - 1.0) < 1e-12);

    /* Another seed, another sequence. */
    loader_config lc2 = lc;
    lc2.seed = 43;
    loader *o = NULL;
    CHECK_OK(loader_open(c, &lc2, &o, &err));
    float *xo = o ? run_batches(o, 4, B, d) : NULL;
    CHECK(xo && memcmp(xa, xo, (size_t)(4 * B * d) * sizeof *xa) != 0);
    loader_close(o);
    free(xo);

    /* Resume: state after 7 batches, a fresh loader, the same next batches;
     * also with batch size 30 (the row sequence does not depend on it). */
    loader *r = NULL, *r30 = NULL;
    CHECK_OK(loader_open(c, &lc, &r, &err));
    loader_config lc30 = lc;
    lc30.batch = 30;
    CHECK_OK(loader_open(c, &lc30, &r30, &err));
    loader_state s;
    loader *p = NULL;
    CHECK_OK(loader_open(c, &lc, &p, &err));
    if (p && r && r30) {
        free(run_batches(p, 7, B, d));
        loader_get_state(p, &s);
        CHECK(s.position == (uint64_t)(7 * B) && s.seed == 42 && s.buffer_rows == 200 &&
              s.chunk_rows == 16 && s.n_rows == 1000);
        CHECK_OK(loader_set_state(r, &s, &err));
        CHECK_OK(loader_set_state(r30, &s, &err));
        float *xr = run_batches(r, 13, B, d), *x30 = run_batches(r30, 5, 30, d);
        CHECK(memcmp(xr, xa + 7 * B * d, (size_t)(13 * B * d) * sizeof *xa) == 0);
        CHECK(memcmp(x30, xa + 7 * B * d, (size_t)(5 * 30 * d) * sizeof *xa) == 0);
        free(xr);
        free(x30);
        /* Back to the saved state from a later round of the same loader. */
        free(run_batches(p, 5, B, d));
        CHECK_OK(loader_set_state(p, &s, &err));
        float *xp = run_batches(p, 13, B, d);
        CHECK(memcmp(xp, xa + 7 * B * d, (size_t)(13 * B * d) * sizeof *xa) == 0);
        free(xp);
        s.seed = 41;
        CHECK_ERR(loader_set_state(r, &s, &err), "does not match");
    }
    loader_close(p);
    loader_close(r);
    loader_close(r30);

    /* Prefetching changes nothing in the sequence, also across seeks. */
    loader_config lcp = lc;
    lcp.prefetch = true;
    loader *pf = NULL;
    CHECK_OK(loader_open(c, &lcp, &pf, &err));
    if (pf) {
        float *xp = run_batches(pf, 20, B, d);
        CHECK(memcmp(xp, xa, (size_t)(20 * B * d) * sizeof *xa) == 0);
        loader_state s0;
        loader_get_state(pf, &s0);
        s0.position = 130;          /* back into round 0, mid-batch */
        CHECK_OK(loader_set_state(pf, &s0, &err));
        float *xq = run_batches(pf, 10, B, d);
        CHECK(memcmp(xq, xa + 130 * d, (size_t)(10 * B * d) * sizeof *xa) == 0);
        free(xp);
        free(xq);
        loader_close(pf);
    }

    /* Past the first epoch the sequence goes on (rounds may span epochs):
     * a buffer that does not divide N, a default chunk, tiny batches. */
    loader_config odd = {.batch = 7, .buffer_rows = 333, .chunk_rows = 0, .seed = 5};
    loader *e = NULL;
    CHECK_OK(loader_open(c, &odd, &e, &err));
    if (e) {
        float *xe = run_batches(e, 600, 7, d);   /* 4200 rows, 4.2 epochs */
        int ok = 1;
        for (int i = 0; i < 4200; i++)
            ok &= xe[i * d + 1] == cell((int)xe[i * d], 1);
        CHECK(ok);
        CHECK(loader_epochs(e) > 4.19 && loader_epochs(e) < 4.21);
        odd.prefetch = true;
        loader *ep = NULL;
        CHECK_OK(loader_open(c, &odd, &ep, &err));
        float *xep = ep ? run_batches(ep, 600, 7, d) : NULL;
        CHECK(xep && memcmp(xep, xe, (size_t)(4200 * d) * sizeof *xe) == 0);
        free(xep);
        loader_close(ep);
        free(xe);
        loader_close(e);
    }

    loader_config badc = {.batch = 0};
    loader *z = NULL;
    CHECK_ERR(loader_open(c, &badc, &z, &err), "batch");
    CHECK(z == NULL);
    loader_close(a);
    loader_close(b);
    free(xa);
    free(xb);
    corpus_close(c);
}

int main(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_dataset.XXXXXX");
    if (!mkdtemp(tmpdir)) {
        printf("cannot create a temporary directory\n");
        return 1;
    }
    test_pack_bits();
    test_pack_round_trip();
    test_read(ST_F32, "read_f32");
    test_read(ST_F16, "read_f16");
    test_read(ST_BF16, "read_bf16");
    test_npy_and_single_file();
    test_broken();
    test_bad_values();
    test_loader();
    nftw(tmpdir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    if (failures) {
        printf("%d check(s) failed\n", failures);
        return 1;
    }
    printf("test_dataset: all checks passed\n");
    return 0;
}
