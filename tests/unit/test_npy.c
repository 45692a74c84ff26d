/* test_npy.c - .npy reading and writing: round trips of what we write,
 * hand-made files of every version and float dtype, and every malformed or
 * unsupported file, each refused with a message naming the file.
 * Exit 0 = pass; one line per failed check. */
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "npy.h"
#include "check.h"

static int write_bytes(const char *path, const void *p, size_t n)
{
    FILE *fp = fopen(path, "wb");
    if (!fp)
        return -1;
    size_t w = fwrite(p, 1, n, fp);
    return fclose(fp) == 0 && w == n ? 0 : -1;
}

static uint8_t *read_all(const char *path, size_t *n)
{
    FILE *fp = fopen(path, "rb");
    uint8_t *buf = malloc(1 << 16);
    *n = fp ? fread(buf, 1, 1 << 16, fp) : 0;
    if (fp)
        fclose(fp);
    return buf;
}

/* Writes x.npy of the given version with a dict (padded to 64 like numpy)
 * and data bytes; returns its path in a static buffer. */
static const char *make_npy(int major, const char *dict, const void *data, size_t data_len)
{
    static char path[512];
    size_t prefix = major == 1 ? 10 : 12, d = strlen(dict);
    size_t total = (prefix + d + 1 + 63) / 64 * 64, hlen = total - prefix;
    uint8_t *buf = malloc(total + data_len + 1);
    memcpy(buf, "\x93NUMPY", 6);
    buf[6] = (uint8_t)major;
    buf[7] = 0;
    uint32_t h32 = (uint32_t)hlen;
    memcpy(buf + 8, &h32, major == 1 ? 2 : 4);
    memcpy(buf + prefix, dict, d);
    memset(buf + prefix + d, ' ', hlen - d - 1);
    buf[total - 1] = '\n';
    if (data_len)
        memcpy(buf + total, data, data_len);
    tmp_path(path, sizeof path, "x.npy");
    if (write_bytes(path, buf, total + data_len) != 0)
        printf("cannot write %s\n", path);
    free(buf);
    return path;
}

static void test_write_roundtrip(void)
{
    char path[512];
    float v[12];
    for (int i = 0; i < 12; i++)
        v[i] = (float)i * 0.5f - 2;
    int64_t shape[2] = {3, 4};
    sae_error err;
    tmp_path(path, sizeof path, "w.npy");
    CHECK(npy_write_f32(path, v, 2, shape, &err) == SAE_OK);
    CHECK(count_dir_entries(tmpdir) == 1);   /* no temporary file left */

    size_t n;
    uint8_t *buf = read_all(path, &n);
    size_t hlen = (size_t)buf[8] | (size_t)buf[9] << 8;
    CHECK(memcmp(buf, "\x93NUMPY\x01\x00", 8) == 0);
    CHECK((10 + hlen) % 64 == 0 && n == 10 + hlen + sizeof v);
    CHECK(buf[10 + hlen - 1] == '\n');
    buf[10 + hlen - 1] = '\0';
    const char *dict = (const char *)buf + 10;
    CHECK(strstr(dict, "'descr': '<f4'") && strstr(dict, "'shape': (3, 4)") &&
          strstr(dict, "'fortran_order': False"));
    CHECK(memcmp(buf + 10 + hlen, v, sizeof v) == 0);
    free(buf);

    npy_array a;
    CHECK(npy_read_f32(path, 2, &a, &err) == SAE_OK && a.ndim == 2 && a.shape[0] == 3 &&
          a.shape[1] == 4 && a.data && memcmp(a.data, v, sizeof v) == 0);
    npy_free(&a);
    CHECK(a.data == NULL);

    int64_t s1 = 5;
    CHECK(npy_write_f32(path, v, 1, &s1, &err) == SAE_OK);   /* replaces the file */
    buf = read_all(path, &n);
    CHECK(strstr((char *)buf + 10, "'shape': (5,)"));
    free(buf);
    CHECK(npy_read_f32(path, 1, &a, &err) == SAE_OK && a.shape[0] == 5 &&
          memcmp(a.data, v, 5 * sizeof *v) == 0);
    npy_free(&a);

    int64_t s0[2] = {0, 7};   /* empty arrays, with and without data */
    CHECK(npy_write_f32(path, NULL, 2, s0, &err) == SAE_OK);
    CHECK(npy_read_f32(path, 2, &a, &err) == SAE_OK && a.shape[0] == 0 && a.shape[1] == 7);
    npy_free(&a);
    CHECK(npy_write_f32(path, v, 0, NULL, &err) == SAE_OK);   /* a scalar */
    CHECK(npy_read_f32(path, 0, &a, &err) == SAE_OK && a.ndim == 0 && a.data[0] == v[0]);
    npy_free(&a);
    unlink(path);
}

static void test_versions_and_dtypes(void)
{
    npy_array a;
    sae_error err;
    /* 1.0, half: 1, -2, 2^-24 (subnormal), inf */
    uint16_t h[4] = {0x3C00, 0xC000, 0x0001, 0x7C00};
    const char *p = make_npy(1, "{'descr': '<f2', 'fortran_order': False, 'shape': (2, 2), }",
                             h, sizeof h);
    CHECK(npy_read_f32(p, 2, &a, &err) == SAE_OK && a.data[0] == 1 && a.data[1] == -2 &&
          a.data[2] == 0x1p-24f && isinf(a.data[3]));
    npy_free(&a);

    /* 2.0, double, keys in another order, no trailing comma */
    double d[3] = {0.5, -1e-3, 3e38};
    p = make_npy(2, "{'shape': (3,), 'fortran_order': False, 'descr': '<f8'}", d, sizeof d);
    CHECK(npy_read_f32(p, 1, &a, &err) == SAE_OK && a.shape[0] == 3 && a.data[0] == 0.5f &&
          a.data[1] == (float)-1e-3 && a.data[2] == (float)3e38);
    npy_free(&a);

    /* 3.0 (UTF-8 header), double quotes, Python 2 longs */
    float f[2] = {1.5f, 2.5f};
    p = make_npy(3, "{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (1L, 2L)}", f,
                 sizeof f);
    CHECK(npy_read_f32(p, 2, &a, &err) == SAE_OK && a.shape[1] == 2 && a.data[1] == 2.5f);
    npy_free(&a);
    unlink(p);
}

/* A read that must fail with a message naming x.npy and containing `word`. */
static void expect_bad(const char *path, int want_ndim, const char *word, int line)
{
    npy_array a;
    sae_error err = {""};
    int rc = npy_read_f32(path, want_ndim, &a, &err);
    int ok = rc == SAE_ERR && strstr(err.msg, path) && strstr(err.msg, word) && !a.data;
    if (!ok)
        printf("FAIL test_npy.c:%d: want error with '%s', got rc %d '%s'\n", line, word, rc,
               err.msg);
    failures += !ok;
    if (rc == SAE_OK)
        npy_free(&a);
}

#define BAD(major, dict, data_len, want_ndim, word) do {                              \
        static const uint8_t zeros_[64];                                              \
        expect_bad(make_npy(major, dict, zeros_, data_len), want_ndim, word, __LINE__); \
    } while (0)

static void test_bad_files(void)
{
    char path[512];
    BAD(1, "{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }", 16, 1,
        "x.npy: dtype '<i8' is not a float array (want float32)");
    BAD(1, "{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", 8, 1, "big-endian");
    BAD(1, "{'descr': '|O', 'fortran_order': False, 'shape': (2,), }", 16, 1,
        "not a float array");
    BAD(1, "{'descr': '|u1', 'fortran_order': False, 'shape': (2,), }", 2, 1,
        "not a float array");
    BAD(1, "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }", 8, 1,
        "structured");
    BAD(1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", 16, 2, "fortran");
    BAD(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (10,), }", 40, 2,
        "x.npy: expected a 2-D array, got shape (10,)");
    BAD(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (), }", 4, 2, "shape ()");
    BAD(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (4, 4), }", 60, 2, "truncated");
    BAD(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", 12, 1,
        "unexpected bytes");
    BAD(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 2), }", 8, 2, "malformed");
    BAD(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2 2), }", 16, 2, "malformed");
    BAD(1, "{'descr': '<f4', 'fortran_order': False, 'shape': "
           "(99999999999999999999,), }", 0, 1, "too large");
    BAD(1, "{'descr': '<f4', 'fortran_order': False, 'shape': "
           "(4611686018427387904, 4), }", 0, 2, "too large");
    BAD(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (1,1,1,1,1,1,1,1,1), }", 4, 2,
        "dimensions");
    BAD(1, "{'descr': '<f4', 'shape': (2,), }", 8, 1, "lacks");
    BAD(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}", 8, 1,
        "unexpected key");
    BAD(1, "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,)}", 8, 1,
        "twice");
    BAD(1, "{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2,)}", 8, 1, "True or False");
    BAD(1, "{'descr': '<f4, 'fortran_order': False, 'shape': (2,)}", 8, 1, "malformed");
    BAD(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,)} junk", 8, 1, "trailing");
    BAD(1, "'descr': '<f4'", 8, 1, "malformed");
    BAD(4, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,)}", 8, 1, "version 4.0");

    tmp_path(path, sizeof path, "x.npy");
    uint8_t raw[64] = "\x93NUMPY\x01\x00";
    raw[8] = 200;   /* header of 200 bytes in a 64-byte file */
    CHECK(write_bytes(path, raw, sizeof raw) == 0);
    expect_bad(path, 1, "truncated header", __LINE__);
    memcpy(raw, "\x93NUMPX", 6);
    CHECK(write_bytes(path, raw, sizeof raw) == 0);
    expect_bad(path, 1, "bad magic", __LINE__);
    CHECK(write_bytes(path, raw, 5) == 0);
    expect_bad(path, 1, "too short", __LINE__);
    unlink(path);
    expect_bad(path, 1, "cannot open", __LINE__);
    expect_bad(tmpdir, 1, "not a regular file", __LINE__);
}

static void test_write_errors(void)
{
    char path[512];
    float v[4] = {0};
    int64_t neg[2] = {2, -1}, ok[2] = {2, 2}, nine[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    sae_error err;
    tmp_path(path, sizeof path, "e.npy");
    CHECK(npy_write_f32(path, v, 2, neg, &err) == SAE_ERR && strstr(err.msg, "shape[1]"));
    CHECK(npy_write_f32(path, v, 9, nine, &err) == SAE_ERR && strstr(err.msg, "9-D"));
    CHECK(npy_write_f32(path, NULL, 2, ok, &err) == SAE_ERR && strstr(err.msg, "no data"));
    tmp_path(path, sizeof path, "nodir/e.npy");
    CHECK(npy_write_f32(path, v, 2, ok, &err) == SAE_ERR && strstr(err.msg, "nodir"));
    CHECK(count_dir_entries(tmpdir) == 0);
}

int main(void)
{
    if (make_tmpdir("test_npy") != 0)
        return 1;
    test_write_roundtrip();
    test_versions_and_dtypes();
    test_bad_files();
    test_write_errors();
    return finish();
}
