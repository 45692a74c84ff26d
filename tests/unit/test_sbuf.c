/* test_sbuf - saed's response builder: sbuf_int against snprintf("%lld"),
 * and ffmt_float (sbuf_float's) against snprintf("%.9g") byte for byte: the
 * edges of the notation switch, every power of two with its neighbours,
 * every float with a short significand (where ties to even happen), and
 * random bit patterns over the whole finite range. */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "ffmt.h"
#include "sbuf.h"

static void check_int(long long v)
{
    sbuf b;
    sbuf_init(&b);
    sbuf_puts(&b, "x");
    sbuf_int(&b, v);
    char want[32];
    snprintf(want, sizeof want, "x%lld", v);
    size_t n;
    char *got = sbuf_take(&b, &n);
    CHECK(got && n == strlen(want) && !strcmp(got, want));
    if (got && strcmp(got, want))
        printf("sbuf_int(%lld): \"%s\", want \"%s\"\n", v, got, want);
    free(got);
}

static int wrong_floats;

static void check_float(float v)
{
    if (!isfinite(v))
        return;
    char got[FFMT_MAX], want[64];
    size_t n = ffmt_float(v, got);
    snprintf(want, sizeof want, "%.9g", (double)v);
    if (n != strlen(want) || strcmp(got, want)) {
        if (wrong_floats++ < 10)
            printf("ffmt_float(%a): \"%s\", want \"%s\"\n", (double)v, got, want);
    }
}

static float from_bits(uint32_t b)
{
    float v;
    memcpy(&v, &b, sizeof v);
    return v;
}

static void check_floats(void)
{
    const float edges[] = {0.0f, -0.0f, 1.0f, -1.0f, 0.1f, 1e-4f, 9.99999997e-5f, 1e-5f,
                           999999999.0f, 1e9f, 123456789.0f, 1.23456789e-38f, 3.40282347e38f,
                           1e-19f, 1e-20f, 1.17549435e-38f, 1.4e-45f, 0.5f, 1e8f, 1e10f};
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++) {
        check_float(edges[i]);
        check_float(-edges[i]);
    }
    for (uint32_t e = 0; e < 255; e++) {
        for (int d = -8; d <= 8; d++) /* 2^k and its neighbours */
            check_float(from_bits((e << 23) + (uint32_t)d));
        for (uint32_t m = 0; m < 4096; m++) /* the top 12 significand bits only */
            check_float(from_bits(e << 23 | m << 11));
    }
    uint64_t s = 0x2545f4914f6cdd1dull;
    for (int i = 0; i < 3000000; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        check_float(from_bits((uint32_t)s));
    }
    CHECK(wrong_floats == 0);
}

int main(void)
{
    check_floats();
    const long long edges[] = {0, 1, -1, 9, 10, -10, 99, 100, 2147483647, -2147483648LL,
                               LLONG_MAX, LLONG_MIN, LLONG_MIN + 1};
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++)
        check_int(edges[i]);
    uint64_t s = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < 100000; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        check_int((long long)(s >> (s & 63))); /* every magnitude, both signs */
    }
    if (failures) {
        printf("%d checks failed\n", failures);
        return 1;
    }
    printf("all sbuf checks passed\n");
    return 0;
}
