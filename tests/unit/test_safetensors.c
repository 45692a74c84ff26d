/* test_safetensors.c - the safetensors reader and writer: round trips for
 * every dtype (half and bfloat16 against hand-computed bit patterns),
 * transposed reads, page release while loading, atomic writes, and every
 * malformed input the reader must refuse with a telling message.
 * Exit 0 = pass; one line per failed check. */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "safetensors.h"
#include "check.h"

static uint32_t f32_bits(float v)
{
    uint32_t b;
    memcpy(&b, &v, sizeof b);
    return b;
}

/* A file from raw parts: the given length word, header text, zeroed data. */
static uint8_t *raw_file(uint64_t hdr_len_word, const char *header, size_t data_len,
                         size_t *len)
{
    size_t h = strlen(header);
    *len = 8 + h + data_len;
    uint8_t *buf = calloc(1, *len);
    memcpy(buf, &hdr_len_word, 8);
    memcpy(buf + 8, header, h);
    return buf;
}

/* Parses a serialised set of tensors; the caller closes f and frees *buf. */
static int parse_tensors(const st_out *ts, int n, const char *meta, uint8_t **buf,
                         st_file *f)
{
    size_t len;
    sae_error err;
    if (st_serialize(ts, n, meta, buf, &len, &err) != SAE_OK) {
        printf("serialize: %s\n", err.msg);
        return SAE_ERR;
    }
    if (st_parse(f, *buf, len, &err) != SAE_OK) {
        printf("parse: %s\n", err.msg);
        free(*buf);
        return SAE_ERR;
    }
    return SAE_OK;
}

static void test_dtype_table(void)
{
    for (int i = 0; i < ST_DTYPE_COUNT; i++) {
        st_dtype t;
        CHECK(st_dtype_parse(st_dtype_name((st_dtype)i), &t) == SAE_OK && t == (st_dtype)i);
        CHECK(st_dtype_size((st_dtype)i) > 0);
    }
    st_dtype t;
    CHECK(st_dtype_parse("F8", &t) == SAE_ERR);
    CHECK(st_dtype_parse("f32", &t) == SAE_ERR);
    CHECK(st_dtype_size(ST_F16) == 2 && st_dtype_size(ST_F64) == 8 && st_dtype_size(ST_BOOL) == 1);
}

/* Order kept, contiguous offsets, 8-byte padded header, metadata, raw data. */
static void test_roundtrip_layout(void)
{
    float w[6] = {1, 2, 3, 4, 5, 6}, b[3] = {-1, 0.5f, 7};
    st_out ts[] = {
        {"zeta", ST_F32, 2, {2, 3}, w},
        {"alpha", ST_F32, 1, {3}, b},
    };
    uint8_t *buf;
    st_file f;
    if (parse_tensors(ts, 2, "{\"format\":\"pt\",\"note\":\"x\"}", &buf, &f) != SAE_OK) {
        CHECK(!"round trip parse");
        return;
    }
    CHECK(f.n_tensors == 2);
    CHECK(f.data_offset % 8 == 0);
    CHECK(strcmp(f.path, "<buffer>") == 0);
    const char *hdr = (const char *)buf + 8;
    const char *z = strstr(hdr, "\"zeta\""), *a = strstr(hdr, "\"alpha\"");
    CHECK(z && a && z < a);
    CHECK(f.metadata_json && strstr(f.metadata_json, "\"note\":\"x\""));
    const st_tensor *tz = st_find(&f, "zeta"), *ta = st_find(&f, "alpha");
    CHECK(tz && ta && !st_find(&f, "beta"));
    if (tz && ta) {
        CHECK(tz->begin == 0 && tz->end == 24 && ta->begin == 24 && ta->end == 36);
        CHECK(tz->ndim == 2 && tz->shape[0] == 2 && tz->shape[1] == 3 && st_numel(tz) == 6);
        CHECK(memcmp(st_data(&f, tz), w, sizeof w) == 0);
        float out[6];
        sae_error err;
        CHECK(st_read_f32(&f, ta, out, 0, 1, &err) == SAE_OK && memcmp(out, b, sizeof b) == 0);
    }
    CHECK(f.tensors[0].begin <= f.tensors[1].begin);   /* sorted by offset */
    st_close(&f);
    free(buf);
}

/* Reads one 1-D tensor of dtype dt holding n raw elements as float32 bits. */
static void read_bits(st_dtype dt, const void *raw, int n, uint32_t *bits)
{
    st_out t = {"t", dt, 1, {n}, raw};
    uint8_t *buf;
    st_file f;
    float out[32];
    sae_error err;
    if (parse_tensors(&t, 1, NULL, &buf, &f) != SAE_OK) {
        CHECK(!"parse");
        return;
    }
    int rc = st_read_f32(&f, &f.tensors[0], out, 0, 0, &err);
    CHECK(rc == SAE_OK);
    for (int i = 0; i < n; i++)
        bits[i] = rc == SAE_OK ? f32_bits(out[i]) : 0;
    st_close(&f);
    free(buf);
}

static void test_f16(void)
{
    static const struct { uint16_t h; uint32_t f; } cases[] = {
        {0x3C00, 0x3F800000},   /* 1.0 */
        {0xC000, 0xC0000000},   /* -2.0 */
        {0x3555, 0x3EAAA000},   /* 0.333251953125 */
        {0x7BFF, 0x477FE000},   /* 65504, the largest half */
        {0x0400, 0x38800000},   /* 2^-14, the smallest normal */
        {0x03FF, 0x387FC000},   /* 1023 * 2^-24, the largest subnormal */
        {0x0001, 0x33800000},   /* 2^-24 = 5.96e-8, the smallest subnormal */
        {0x8001, 0xB3800000},   /* -2^-24 */
        {0x0000, 0x00000000},   /* +0 */
        {0x8000, 0x80000000},   /* -0 */
        {0x7C00, 0x7F800000},   /* inf */
        {0xFC00, 0xFF800000},   /* -inf */
        {0x7E00, 0x7FC00000},   /* quiet nan */
        {0x7C01, 0x7F802000},   /* nan, payload kept */
    };
    enum { N = sizeof cases / sizeof cases[0] };
    uint16_t raw[N];
    uint32_t bits[N];
    for (int i = 0; i < N; i++)
        raw[i] = cases[i].h;
    read_bits(ST_F16, raw, N, bits);
    for (int i = 0; i < N; i++) {
        if (bits[i] != cases[i].f)
            printf("  f16 0x%04x -> 0x%08x, want 0x%08x\n", cases[i].h, bits[i], cases[i].f);
        CHECK(bits[i] == cases[i].f);
    }
}

static void test_bf16(void)
{
    static const struct { uint16_t h; uint32_t f; } cases[] = {
        {0x3F80, 0x3F800000},   /* 1.0 */
        {0xC049, 0xC0490000},   /* -3.140625 */
        {0x7F80, 0x7F800000},   /* inf */
        {0xFF80, 0xFF800000},   /* -inf */
        {0x7FC0, 0x7FC00000},   /* nan */
        {0x0001, 0x00010000},   /* a float32 subnormal */
        {0x8000, 0x80000000},   /* -0 */
    };
    enum { N = sizeof cases / sizeof cases[0] };
    uint16_t raw[N];
    uint32_t bits[N];
    for (int i = 0; i < N; i++)
        raw[i] = cases[i].h;
    read_bits(ST_BF16, raw, N, bits);
    for (int i = 0; i < N; i++)
        CHECK(bits[i] == cases[i].f);
}

static void test_f64(void)
{
    double raw[] = {1.5, -0.25, 1e-3, 3.0e38, -1e-50, 1e300};
    uint32_t bits[6];
    read_bits(ST_F64, raw, 6, bits);
    for (int i = 0; i < 6; i++)
        CHECK(bits[i] == f32_bits((float)raw[i]));
    CHECK(bits[5] == 0x7F800000);   /* beyond float range: inf */
}

/* F16, F32 and F64 tensors back to back, so that the later ones start at
 * offsets that are not multiples of their element size. */
static void test_unaligned(void)
{
    uint16_t h = 0x3C00;
    float v[3] = {1.25f, -2, 3};
    double d = 0.5;
    st_out ts[] = {
        {"h", ST_F16, 1, {1}, &h},
        {"v", ST_F32, 1, {3}, v},
        {"d", ST_F64, 0, {0}, &d},   /* a scalar: shape [] */
    };
    uint8_t *buf;
    st_file f;
    sae_error err;
    if (parse_tensors(ts, 3, NULL, &buf, &f) != SAE_OK) {
        CHECK(!"parse");
        return;
    }
    const st_tensor *tv = st_find(&f, "v"), *td = st_find(&f, "d");
    float out[3], sc;
    CHECK(tv && tv->begin == 2 && td && td->begin == 14 && td->ndim == 0 && st_numel(td) == 1);
    CHECK(tv && st_read_f32(&f, tv, out, 0, 1, &err) == SAE_OK && memcmp(out, v, sizeof v) == 0);
    CHECK(td && st_read_f32(&f, td, &sc, 0, 1, &err) == SAE_OK && sc == 0.5f);
    st_close(&f);
    free(buf);
}

static void test_integers(void)
{
    int32_t i32[3] = {-5, 0, INT32_MAX};
    int64_t i64[3] = {INT32_MIN, 42, -1};
    int64_t big[2] = {1, (int64_t)INT32_MAX + 1};
    int16_t i16[2] = {-3, 4};
    int8_t i8[2] = {-1, 2};
    uint8_t u8[2] = {200, 1}, bl[2] = {1, 0};
    st_out ts[] = {
        {"i32", ST_I32, 1, {3}, i32}, {"i64", ST_I64, 1, {3}, i64}, {"big", ST_I64, 1, {2}, big},
        {"i16", ST_I16, 1, {2}, i16}, {"i8", ST_I8, 1, {2}, i8},     {"u8", ST_U8, 1, {2}, u8},
        {"bool", ST_BOOL, 1, {2}, bl},
    };
    uint8_t *buf;
    st_file f;
    sae_error err;
    if (parse_tensors(ts, 7, NULL, &buf, &f) != SAE_OK) {
        CHECK(!"parse");
        return;
    }
    int32_t out[3];
    float fo[3];
    CHECK(st_read_i32(&f, st_find(&f, "i32"), out, &err) == SAE_OK &&
          memcmp(out, i32, sizeof i32) == 0);
    CHECK(st_read_i32(&f, st_find(&f, "i64"), out, &err) == SAE_OK && out[0] == INT32_MIN &&
          out[1] == 42 && out[2] == -1);
    CHECK(st_read_i32(&f, st_find(&f, "big"), out, &err) == SAE_ERR &&
          strstr(err.msg, "index 1") && strstr(err.msg, "big"));
    CHECK(st_read_i32(&f, st_find(&f, "i16"), out, &err) == SAE_ERR && strstr(err.msg, "dtype"));
    CHECK(st_read_f32(&f, st_find(&f, "i32"), fo, 0, 0, &err) == SAE_ERR &&
          strstr(err.msg, "float dtype"));
    CHECK(memcmp(st_data(&f, st_find(&f, "u8")), u8, 2) == 0);
    CHECK(memcmp(st_data(&f, st_find(&f, "bool")), bl, 2) == 0);
    CHECK(memcmp(st_data(&f, st_find(&f, "i8")), i8, 2) == 0);
    CHECK(st_find(&f, "i16")->dtype == ST_I16);
    st_close(&f);
    free(buf);
}

/* Half-precision bits of an integer with |v| <= 2048, which halves hold
 * exactly: v = 1.mant * 2^e. */
static uint16_t f16_of_int(int v)
{
    unsigned x = (unsigned)abs(v), e = 0;
    if (x == 0)
        return 0;
    while ((x >> e) > 1)
        e++;
    return (uint16_t)((v < 0 ? 0x8000u : 0) | ((e + 15) << 10) | (((x << 10) >> e) & 0x3ffu));
}

/* Fills a [r, c] source with small integers (exact in every float dtype) and
 * checks the transposed read. */
static void check_transpose(st_dtype dt, int r, int c)
{
    size_t n = (size_t)r * c, esz = st_dtype_size(dt);
    uint8_t *raw = malloc(n * esz + 1);
    float *want = malloc(n * sizeof *want + 1), *out = malloc(n * sizeof *out + 1);
    for (size_t k = 0; k < n; k++) {
        int span = dt == ST_BF16 ? 256 : 2000;   /* bf16 holds 8 significant bits */
        int iv = (int)(k % (size_t)span) - span / 2;
        float v = (float)iv;
        uint16_t h = dt == ST_BF16 ? (uint16_t)(f32_bits(v) >> 16) : f16_of_int(iv);
        if (dt == ST_F32)
            memcpy(raw + 4 * k, &v, 4);
        else
            memcpy(raw + 2 * k, &h, 2);
        want[k] = v;
    }
    st_out t = {"m", dt, 2, {r, c}, raw};
    uint8_t *buf;
    st_file f;
    sae_error err;
    if (parse_tensors(&t, 1, NULL, &buf, &f) == SAE_OK) {
        int rc = st_read_f32(&f, &f.tensors[0], out, 1, 1, &err);
        int ok = rc == SAE_OK;
        for (int i = 0; ok && i < r; i++)
            for (int j = 0; ok && j < c; j++)
                ok = out[(size_t)j * r + i] == want[(size_t)i * c + j];
        if (!ok)
            printf("  transpose %s [%d, %d] wrong\n", st_dtype_name(dt), r, c);
        CHECK(ok);
        st_close(&f);
        free(buf);
    } else {
        CHECK(!"parse");
    }
    free(raw);
    free(want);
    free(out);
}

static void test_transpose(void)
{
    check_transpose(ST_F32, 3, 5);
    check_transpose(ST_F32, 70, 130);   /* partial tiles on both edges */
    check_transpose(ST_F16, 65, 3);
    check_transpose(ST_BF16, 1, 200);
    check_transpose(ST_F32, 0, 4);

    float v[4] = {1, 2, 3, 4}, out[4];
    st_out t = {"v", ST_F32, 1, {4}, v};
    uint8_t *buf;
    st_file f;
    sae_error err;
    if (parse_tensors(&t, 1, NULL, &buf, &f) == SAE_OK) {
        CHECK(st_read_f32(&f, &f.tensors[0], out, 1, 0, &err) == SAE_ERR &&
              strstr(err.msg, "2") && strstr(err.msg, "v"));
        st_close(&f);
        free(buf);
    }
}

/* A parse that must fail with a message naming the buffer and `word`. */
static void expect_bad(const uint8_t *buf, size_t len, const char *word, int line)
{
    st_file f;
    sae_error err = {""};
    int rc = st_parse(&f, buf, len, &err);
    int ok = rc == SAE_ERR && strstr(err.msg, "<buffer>") && strstr(err.msg, word);
    if (!ok)
        printf("FAIL test_safetensors.c:%d: want error with '%s', got rc %d '%s'\n", line,
               word, rc, err.msg);
    failures += !ok;
    if (rc == SAE_OK)
        st_close(&f);
    CHECK(f.tensors == NULL && f.metadata_json == NULL);   /* nothing left behind */
}

static void expect_bad_header(const char *header, size_t data_len, const char *word, int line)
{
    size_t len;
    uint8_t *buf = raw_file(strlen(header), header, data_len, &len);
    expect_bad(buf, len, word, line);
    free(buf);
}

#define BAD(header, data_len, word) expect_bad_header(header, data_len, word, __LINE__)
#define T(name, dtype, shape, offsets) \
    "\"" name "\":{\"dtype\":\"" dtype "\",\"shape\":" shape ",\"data_offsets\":" offsets "}"

static void test_bad_headers(void)
{
    size_t len;
    uint8_t five[5] = {0};
    expect_bad(five, 5, "too short", __LINE__);
    expect_bad(five, 0, "too short", __LINE__);

    uint8_t *buf = raw_file(1ull << 62, "{}", 0, &len);
    expect_bad(buf, len, "header length", __LINE__);
    free(buf);
    buf = raw_file(UINT64_MAX, "{}", 0, &len);
    expect_bad(buf, len, "header length", __LINE__);
    free(buf);
    buf = raw_file(100, "{}", 10, &len);
    expect_bad(buf, len, "past the end", __LINE__);
    free(buf);

    BAD("", 0, "JSON");
    BAD("{not json", 0, "JSON");
    BAD("{} x", 0, "JSON");
    BAD("[1, 2]", 0, "not a JSON object");
    BAD("{" T("a", "F32", "[1]", "[0,4]") "," T("a", "F32", "[1]", "[4,8]") "}", 8, "duplicate");
    BAD("{" T("a", "F8", "[1]", "[0,4]") "}", 4, "dtype");
    BAD("{\"a\":{\"dtype\":5,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "dtype");
    BAD("{" T("a", "F32", "[3]", "[0,8]") "}", 8, "needs 12");
    BAD("{" T("a", "F32", "[4]", "[0,16]") "}", 8, "beyond");
    BAD("{" T("a", "F32", "[0]", "[8,4]") "}", 8, "after end");
    BAD("{" T("a", "F32", "[2]", "[0,8]") "," T("b", "F32", "[2]", "[4,12]") "}", 12, "overlap");
    BAD("{" T("a", "F32", "[1]", "[0,4]") "," T("b", "F32", "[1]", "[8,12]") "}", 12, "gap");
    BAD("{" T("a", "F32", "[1]", "[4,8]") "}", 8, "gap");
    BAD("{" T("a", "F32", "[1]", "[0,4]") "}", 8, "belong to no tensor");
    BAD("{}", 4, "belong to no tensor");
    BAD("{" T("a", "F32", "[-1]", "[0,4]") "}", 4, "shape[0]");
    BAD("{" T("a", "F32", "[1.0]", "[0,4]") "}", 4, "shape[0]");
    BAD("{" T("a", "F32", "7", "[0,4]") "}", 4, "shape");
    BAD("{" T("a", "F32", "[1,1,1,1,1,1,1,1,1]", "[0,4]") "}", 4, "dimensions");
    BAD("{" T("a", "F32", "[1099511627776,1099511627776]", "[0,4]") "}", 4, "too large");
    BAD("{" T("a", "F32", "[1]", "[0]") "}", 4, "data_offsets");
    BAD("{" T("a", "F32", "[1]", "[0,-4]") "}", 4, "data_offsets");
    BAD("{" T("a", "F32", "[1]", "[0,4,8]") "}", 4, "data_offsets");
    BAD("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "needs");
    BAD("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}", 4,
        "unexpected field");
    BAD("{\"a\":[1]}", 0, "not a JSON object");
    BAD("{\"__metadata__\":{\"k\":1}}", 0, "__metadata__");
    BAD("{\"__metadata__\":[\"k\"]}", 0, "__metadata__");

    char header[512];
    char name[301];
    memset(name, 'n', 300);
    name[300] = '\0';
    snprintf(header, sizeof header, "{\"%s\":{\"dtype\":\"F32\",\"shape\":[1],"
             "\"data_offsets\":[0,4]}}", name);
    BAD(header, 4, "longer");
}

static void test_good_headers(void)
{
    /* Zero-size tensors may sit anywhere, including on another's offset;
     * header padding after the JSON is allowed. */
    const char *hdr = "{" T("a", "F32", "[1]", "[0,4]") "," T("e", "F16", "[0,3]", "[4,4]")
                      "," T("b", "U8", "[2]", "[4,6]") ",\"__metadata__\":{}}   ";
    size_t len;
    uint8_t *buf = raw_file(strlen(hdr), hdr, 6, &len);
    st_file f;
    sae_error err;
    CHECK(st_parse(&f, buf, len, &err) == SAE_OK);
    CHECK(f.n_tensors == 3 && strcmp(f.tensors[1].name, "e") == 0);
    CHECK(f.metadata_json && strcmp(f.metadata_json, "{}") == 0);
    st_close(&f);
    free(buf);

    buf = raw_file(2, "{}", 0, &len);   /* no tensors at all */
    CHECK(st_parse(&f, buf, len, &err) == SAE_OK && f.n_tensors == 0 && !f.metadata_json);
    st_close(&f);
    st_close(&f);   /* closing twice is harmless */
    free(buf);
}

static void test_nonfinite(void)
{
    float v[5] = {1, 2, NAN, 4, INFINITY}, out[6];
    float m[6] = {1, 2, 3, 4, 5, -INFINITY};   /* [2, 3]: index 5 lands at out[5] */
    st_out ts[] = {{"W_dec", ST_F32, 1, {5}, v}, {"m", ST_F32, 2, {2, 3}, m}};
    uint8_t *buf;
    st_file f;
    sae_error err;
    if (parse_tensors(ts, 2, NULL, &buf, &f) != SAE_OK) {
        CHECK(!"parse");
        return;
    }
    const st_tensor *t = st_find(&f, "W_dec");
    CHECK(st_read_f32(&f, t, out, 0, 1, &err) == SAE_ERR &&
          strcmp(err.msg, "<buffer>: tensor W_dec has a non-finite value at index 2") == 0);
    CHECK(st_read_f32(&f, t, out, 0, 0, &err) == SAE_OK && isnan(out[2]) && isinf(out[4]));
    CHECK(st_read_f32(&f, st_find(&f, "m"), out, 1, 1, &err) == SAE_ERR &&
          strstr(err.msg, "index 5"));
    st_close(&f);
    free(buf);
}

static void test_serialize_errors(void)
{
    float v[2] = {1, 2};
    uint8_t *buf;
    size_t len;
    sae_error err;
    st_out ok = {"v", ST_F32, 1, {2}, v};
    static const struct { const char *meta, *word; } metas[] = {
        {"{\"a\":1}", "not a string"},
        {"[\"a\"]", "not a JSON object"},
        {"{oops", "not valid JSON"},
        {"{\"a\":\"1\",\"a\":\"2\"}", "not valid JSON"},
    };
    for (size_t i = 0; i < sizeof metas / sizeof metas[0]; i++)
        CHECK(st_serialize(&ok, 1, metas[i].meta, &buf, &len, &err) == SAE_ERR &&
              strstr(err.msg, metas[i].word));

    char name[300];
    memset(name, 'x', 299);
    name[299] = '\0';
    const struct { st_out t[2]; int n; const char *word; } bad[] = {
        {{ok, ok}, 2, "used twice"},
        {{{"__metadata__", ST_F32, 1, {2}, v}}, 1, "reserved"},
        {{{"v", ST_F32, 1, {-2}, v}}, 1, "negative"},
        {{{"v", ST_F32, 1, {2}, NULL}}, 1, "no data"},
        {{{"v", ST_F32, 9, {2}, v}}, 1, "ndim"},
        {{{"v", ST_DTYPE_COUNT, 1, {2}, v}}, 1, "dtype"},
        {{{NULL, ST_F32, 1, {2}, v}}, 1, "no name"},
        {{{name, ST_F32, 1, {2}, v}}, 1, "longer"},
        {{{"v", ST_F32, 2, {INT64_MAX, 2}, v}}, 1, "too large"},
        {{{"\xff", ST_F32, 1, {2}, v}}, 1, "UTF-8"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = st_serialize(bad[i].t, bad[i].n, NULL, &buf, &len, &err);
        if (rc != SAE_ERR || !strstr(err.msg, bad[i].word))
            printf("  serialize case %zu: rc %d '%s'\n", i, rc, err.msg);
        CHECK(rc == SAE_ERR && strstr(err.msg, bad[i].word));
    }
    CHECK(st_serialize(NULL, -1, NULL, &buf, &len, &err) == SAE_ERR);

    /* zero tensors, empty shapes and NULL data for empty tensors are fine */
    st_out empty = {"e", ST_F32, 2, {0, 5}, NULL};
    CHECK(st_serialize(&empty, 1, NULL, &buf, &len, &err) == SAE_OK);
    free(buf);
    CHECK(st_serialize(NULL, 0, NULL, &buf, &len, &err) == SAE_OK && len == 16 &&
          memcmp(buf + 8, "{}      ", 8) == 0);
    free(buf);
}

static int count_open_fds(void)
{
    return count_dir_entries("/proc/self/fd");
}

/* A mapping of path still listed in /proc/self/maps. */
static int still_mapped(const char *path)
{
    FILE *m = fopen("/proc/self/maps", "r");
    char line[1024];
    int found = 0;
    while (m && fgets(line, sizeof line, m))
        found |= strstr(line, path) != NULL;
    if (m)
        fclose(m);
    return found;
}

static int write_bytes(const char *path, const void *p, size_t n)
{
    FILE *fp = fopen(path, "wb");
    if (!fp)
        return -1;
    size_t w = fwrite(p, 1, n, fp);
    return fclose(fp) == 0 && w == n ? 0 : -1;
}

static void test_open_errors(void)
{
    char path[512];
    st_file f;
    sae_error err;
    int fds = count_open_fds();

    tmp_path(path, sizeof path, "missing.safetensors");
    CHECK(st_open(&f, path, &err) == SAE_ERR && strstr(err.msg, path) &&
          strstr(err.msg, "cannot open"));
    CHECK(st_open(&f, tmpdir, &err) == SAE_ERR && strstr(err.msg, "regular file"));

    tmp_path(path, sizeof path, "empty.safetensors");
    CHECK(write_bytes(path, "", 0) == 0);
    CHECK(st_open(&f, path, &err) == SAE_ERR && strstr(err.msg, path) &&
          strstr(err.msg, "too short"));

    tmp_path(path, sizeof path, "bad.safetensors");
    const char *hdr = "{" T("a", "F32", "[2]", "[0,4]") "}";
    size_t len;
    uint8_t *buf = raw_file(strlen(hdr), hdr, 4, &len);
    CHECK(write_bytes(path, buf, len) == 0);
    free(buf);
    CHECK(st_open(&f, path, &err) == SAE_ERR && strstr(err.msg, path) &&
          strstr(err.msg, "tensor a"));
    CHECK(!still_mapped(path));
    CHECK(count_open_fds() == fds);
    unlink(path);
    tmp_path(path, sizeof path, "empty.safetensors");
    unlink(path);
}

/* st_write then st_open: the same bytes as st_serialize, no temp file left,
 * an existing file replaced, a failed write leaving nothing behind. */
static void test_write_open(void)
{
    char path[512];
    float v[3] = {1, 2, 3}, out[3];
    st_out t = {"v", ST_F32, 1, {3}, v};
    sae_error err;
    st_file f;
    int fds = count_open_fds();
    tmp_path(path, sizeof path, "w.safetensors");
    CHECK(st_write(path, NULL, 0, NULL, &err) == SAE_OK);   /* no tensors: valid */
    CHECK(st_open(&f, path, &err) == SAE_OK && f.n_tensors == 0 && f.size == 16);
    st_close(&f);
    CHECK(st_write(path, &t, 1, "{\"k\":\"v\"}", &err) == SAE_OK);   /* replaces it */
    CHECK(count_dir_entries(tmpdir) == 1);
    if (st_open(&f, path, &err) == SAE_OK) {
        CHECK(count_open_fds() == fds);   /* the descriptor is closed once mapped */
        CHECK(f.mapped && f.n_tensors == 1 && strcmp(f.path, path) == 0);
        CHECK(st_read_f32(&f, &f.tensors[0], out, 0, 1, &err) == SAE_OK &&
              memcmp(out, v, sizeof v) == 0);
        CHECK(f.metadata_json && strcmp(f.metadata_json, "{\"k\":\"v\"}") == 0);
        st_close(&f);
    } else {
        printf("  open: %s\n", err.msg);
        CHECK(!"open written file");
    }
    unlink(path);

    tmp_path(path, sizeof path, "nodir/w.safetensors");
    CHECK(st_write(path, &t, 1, NULL, &err) == SAE_ERR && strstr(err.msg, "nodir"));
    tmp_path(path, sizeof path, "w2.safetensors");
    CHECK(st_write(path, &t, 1, "{\"k\":2}", &err) == SAE_ERR && strstr(err.msg, path));
    CHECK(count_dir_entries(tmpdir) == 0);
}

enum { BIG = 2100 };   /* [BIG, BIG] float32 = 17.6 MB: two chunks, two row bands */

/* Multi-chunk reads through a mapping, plain and transposed, and the first
 * non-finite index found across chunk and tile boundaries. */
static void test_big_file(void)
{
    char path[512];
    size_t n = (size_t)BIG * BIG;
    float *src = malloc(n * sizeof *src), *out = malloc(n * sizeof *out);
    for (size_t k = 0; k < n; k++)
        src[k] = (float)(k % 65536);
    st_out t = {"W", ST_F32, 2, {BIG, BIG}, src};
    sae_error err;
    st_file f;
    tmp_path(path, sizeof path, "big.safetensors");
    CHECK(st_write(path, &t, 1, NULL, &err) == SAE_OK);
    if (st_open(&f, path, &err) != SAE_OK) {
        CHECK(!"open big file");
        goto done;
    }
    CHECK(st_read_f32(&f, &f.tensors[0], out, 0, 1, &err) == SAE_OK &&
          memcmp(out, src, n * sizeof *src) == 0);
    CHECK(st_read_f32(&f, &f.tensors[0], out, 1, 1, &err) == SAE_OK);
    int ok = 1;
    for (size_t i = 0; ok && i < BIG; i++)
        for (size_t j = 0; ok && j < BIG; j++)
            ok = out[j * BIG + i] == src[i * BIG + j];
    CHECK(ok);
    st_close(&f);

    /* Row 2050 column 3 comes first in tile order, row 2000 column 100 first
     * in the file: the message must name the latter. */
    size_t first = (size_t)2000 * BIG + 100;
    src[(size_t)2050 * BIG + 3] = NAN;
    src[first] = INFINITY;
    CHECK(st_write(path, &t, 1, NULL, &err) == SAE_OK);
    if (st_open(&f, path, &err) == SAE_OK) {
        char want[64];
        snprintf(want, sizeof want, "at index %zu", first);
        CHECK(st_read_f32(&f, &f.tensors[0], out, 0, 1, &err) == SAE_ERR &&
              strstr(err.msg, want) && strstr(err.msg, path));
        CHECK(st_read_f32(&f, &f.tensors[0], out, 1, 1, &err) == SAE_ERR &&
              strstr(err.msg, want));
        st_close(&f);
    }
done:
    unlink(path);
    free(src);
    free(out);
}

/* kB value of a "Name:" line of /proc/self/status, or -1. */
static long status_kb(const char *name)
{
    FILE *fp = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    size_t len = strlen(name);
    while (fp && fgets(line, sizeof line, fp))
        if (strncmp(line, name, len) == 0)
            v = atol(line + len);
    if (fp)
        fclose(fp);
    return v;
}

/* In a child: resets the peak RSS, loads the tensor, and exits 0 when the
 * growth of the peak stays under 1.3x the float32 output (plus the 1/8 that
 * AddressSanitizer's shadow adds to the output's pages), 2 when it cannot
 * measure, 1 when over. */
static int peak_child(const char *path, int transpose)
{
    st_file f;
    sae_error err;
    if (st_open(&f, path, &err) != SAE_OK)
        return 1;
    size_t bytes = (size_t)st_numel(&f.tensors[0]) * sizeof(float);
    float *out = malloc(bytes);
    FILE *cr = fopen("/proc/self/clear_refs", "w");
    if (!out || !cr || fputs("5", cr) < 0 || fclose(cr) != 0)
        return 2;
    long base = status_kb("VmRSS:");
    if (st_read_f32(&f, &f.tensors[0], out, transpose, 1, &err) != SAE_OK)
        return 1;
    long peak = status_kb("VmHWM:");
    double ratio = (double)(peak - base) * 1024 / (double)bytes;
    double limit = 1.3;
#if defined(__SANITIZE_ADDRESS__)
    limit += 0.125;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
    limit += 0.125;
#endif
#endif
    printf("  peak RSS growth %.3fx of the float32 weights (transpose %d, limit %.3f)\n",
           ratio, transpose, limit);
    fflush(stdout);
    return ratio < limit ? 0 : 1;
}

/* The hard requirement of the loader: a 128 MiB tensor loads with a peak
 * RSS under 1.3x its float32 size, i.e. the mapped pages are released. */
static void test_peak_rss(void)
{
    char path[512];
    size_t n = (size_t)32 << 20;
    float *src = malloc(n * sizeof *src);
    for (size_t k = 0; k < n; k++)
        src[k] = (float)(k & 1023);
    st_out t = {"W", ST_F32, 2, {8192, 4096}, src};
    sae_error err;
    tmp_path(path, sizeof path, "peak.safetensors");
    int rc = st_write(path, &t, 1, NULL, &err);
    free(src);
    CHECK(rc == SAE_OK);
    for (int transpose = 0; rc == SAE_OK && transpose < 2; transpose++) {
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0)
            _exit(peak_child(path, transpose));
        int status = 0;
        CHECK(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status));
        if (WEXITSTATUS(status) == 2)
            printf("  peak RSS not measurable here (no /proc/self/clear_refs); skipped\n");
        else
            CHECK(WEXITSTATUS(status) == 0);
    }
    unlink(path);
}

int main(void)
{
    if (make_tmpdir("test_safetensors") != 0)
        return 1;
    test_dtype_table();
    test_roundtrip_layout();
    test_f16();
    test_bf16();
    test_f64();
    test_unaligned();
    test_integers();
    test_transpose();
    test_bad_headers();
    test_good_headers();
    test_nonfinite();
    test_serialize_errors();
    test_open_errors();
    test_write_open();
    test_big_file();
    test_peak_rss();
    return finish();
}
