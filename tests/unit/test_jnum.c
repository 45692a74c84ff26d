/* test_jnum - saed's JSON number fast path against glibc's strtod, the
 * correctly rounded reference: every number jnum_parse accepts must give
 * strtod's double to the bit, over numbers printed the ways clients print
 * them (shortest round-trip floats, %.Ng at every precision, exponents at
 * and past the fast path's edges, decimals near halfway points between
 * floats and between doubles); and it must take most of the usual ones. */
#include <math.h>
#include <stdint.h>

#include "check.h"
#include "jnum.h"

static uint64_t rng_state = 0x2545f4914f6cdd1dull;

static uint64_t next_u64(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static long tried, accepted, wrong;

static void check_text(const char *text)
{
    double fast = 0.0;
    size_t n = strlen(text), used = jnum_parse(text, text + n, &fast);
    tried++;
    if (used == 0)
        return;
    accepted++;
    char *endp;
    double ref = strtod(text, &endp);
    if (used != (size_t)(endp - text) || memcmp(&fast, &ref, sizeof ref) != 0) {
        if (wrong++ < 10)
            printf("jnum \"%s\": %.17g (%zu bytes), strtod %.17g (%zu bytes)\n", text, fast,
                   used, ref, (size_t)(endp - text));
    }
    /* the same number inside a JSON array: more bytes follow it */
    char inside[96];
    double again = 0.0;
    int len = snprintf(inside, sizeof inside, "%s,12345678]          ", text);
    if (jnum_parse(inside, inside + len, &again) != used || memcmp(&again, &fast, sizeof again)) {
        if (wrong++ < 10)
            printf("jnum \"%s\" followed by more: %.17g, alone %.17g\n", text, again, fast);
    }
}

static void check_double(double v, int precision)
{
    char text[64];
    snprintf(text, sizeof text, "%.*g", precision, v);
    check_text(text);
}

int main(void)
{
    /* JSON's grammar: these are not (whole) numbers, or not JSON numbers */
    const char *refused[] = {"", "-", "+1", ".5", "1.", "1e", "1e+", "-x", "NaN", "Infinity"};
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        double v;
        CHECK(jnum_parse(refused[i], refused[i] + strlen(refused[i]), &v) == 0);
    }
    /* "01" is a 0 followed by something else: the caller sees the '1' */
    double v = 1.0;
    const char *zero_one = "01", *minus_zero = "-0";
    CHECK(jnum_parse(zero_one, zero_one + 2, &v) == 1 && v == 0.0);
    CHECK(jnum_parse(minus_zero, minus_zero + 2, &v) == 2 && v == 0.0 && signbit(v));
    const char *edges[] = {"0", "0.0", "1", "-1", "0.1", "1e22", "1e23", "9007199254740993",
                           "1e-22", "1e-23", "123456789012345678", "1234567890123456789",
                           "12345678901234567890", "0.30000000000000004", "1.7976931348623157e308",
                           "4.9e-324", "1e999", "1e-999", "3.4028235e38", "3.4028236e38",
                           "0.00000000000000000000000000001234", "1E5", "1e+05", "2.5E-3"};
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++)
        check_text(edges[i]);

    long usual_tried = 0, usual_accepted = 0;
    for (int t = 0; t < 300000; t++) {
        /* a float32 as clients send it: the shortest text of its double */
        uint32_t bits = (uint32_t)next_u64();
        float f;
        memcpy(&f, &bits, sizeof f);
        if (!isfinite(f))
            continue;
        long before = accepted;
        check_double(f, 17);
        check_double(f, 9);
        if (fabsf(f) > 1e-7f && fabsf(f) < 1e7f) { /* activations' range */
            usual_tried += 2;
            usual_accepted += accepted - before;
        }
        /* the midpoint between f and its neighbour, to 17-19 digits */
        double mid = ((double)f + (double)nextafterf(f, INFINITY)) / 2.0;
        for (int p = 17; p <= 19; p++)
            check_double(mid, p);
        /* any double, any precision */
        uint64_t db = next_u64();
        double d;
        memcpy(&d, &db, sizeof d);
        if (isfinite(d))
            check_double(d, 1 + (int)(next_u64() % 19));
        /* a random decimal with up to 19 digits and an exponent near the edges */
        char text[64];
        snprintf(text, sizeof text, "%llue%d",
                 (unsigned long long)(next_u64() % 10000000000000000000ull),
                 (int)(next_u64() % 80) - 45);
        check_text(text);
    }
    printf("jnum: %ld numbers, %ld taken by the fast path, %ld wrong; usual float32 texts "
           "taken: %.1f%%\n", tried, accepted, wrong, 100.0 * usual_accepted / usual_tried);
    CHECK(wrong == 0);
    /* the usual texts must nearly all take the fast path */
    CHECK(usual_accepted > 0.99 * usual_tried);
    if (failures) {
        printf("%d checks failed\n", failures);
        return 1;
    }
    printf("all jnum checks passed\n");
    return 0;
}
