/* jnum.c - see jnum.h.
 *
 * A JSON number is w * 10^e with w the digits as an integer. When w < 2^53
 * and |e| <= 22 both w and 10^|e| are exact doubles, so one multiply or
 * divide rounds once: the correctly rounded result (Clinger's fast path).
 * Beyond that, where long double has a 64-bit significand (x86), w < 10^19
 * and 10^|e| for |e| <= 27 are exact in it, and one operation gives the
 * true value rounded to 64 bits. Rounding that again to 53 bits is the
 * correct double unless the 64-bit result sits within one unit of a point
 * halfway between two doubles; those few are declined. */
#include "jnum.h"

#include <float.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#define MAX_DIGITS 19 /* 10^19 - 1 < 2^64 */

static const double pow10_d[] = {
    1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
#define MAX_EXP_D 22

#if LDBL_MANT_DIG == 64
static const long double pow10_ld[] = {
    1e0L,  1e1L,  1e2L,  1e3L,  1e4L,  1e5L,  1e6L,  1e7L,  1e8L,  1e9L,
    1e10L, 1e11L, 1e12L, 1e13L, 1e14L, 1e15L, 1e16L, 1e17L, 1e18L, 1e19L,
    1e20L, 1e21L, 1e22L, 1e23L, 1e24L, 1e25L, 1e26L, 1e27L};
#define MAX_EXP_LD 27 /* 5^27 < 2^64: 10^27 is exact in 64 bits */
#endif

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* w * 10^e10 as a double, or false when it cannot be done exactly here. */
static bool scale(uint64_t w, int e10, double *out)
{
    if (w <= (1ull << 53) && e10 >= -MAX_EXP_D && e10 <= MAX_EXP_D) {
        double d = (double)w;
        *out = e10 < 0 ? d / pow10_d[-e10] : d * pow10_d[e10];
        return true;
    }
#if LDBL_MANT_DIG == 64
    if (e10 >= -MAX_EXP_LD && e10 <= MAX_EXP_LD) {
        long double x = (long double)w;
        x = e10 < 0 ? x / pow10_ld[-e10] : x * pow10_ld[e10];
        uint64_t significand; /* the low 8 bytes of the x87 format */
        memcpy(&significand, &x, sizeof significand);
        unsigned below = (unsigned)(significand & 0x7ff); /* the 11 bits a double drops */
        if (below >= 0x3ff && below <= 0x401)
            return false;
        *out = (double)x;
        return true;
    }
#endif
    return false;
}

/* The value of the eight ASCII digits at p, or -1 when a byte is not a digit.
 * All eight at once in one 64-bit word (p[0], the leading digit, in the low
 * byte): a byte is a digit iff subtracting '0' does not set its top bit and
 * adding 0x46 (so '9' + 0x46 = 0x7f) does not either; a borrow or carry
 * between bytes comes only from a byte that fails one of the two. Then
 * neighbouring digits combine into pairs (10 a + b), pairs into the whole by
 * two multiplies whose high halves hold 10^6 p0 + 10^4 p1 + 10^2 p2 + p3. */
static int64_t eight_digits(const char *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
    const uint64_t t = v - 0x3030303030303030ull;
    if (((v + 0x4646464646464646ull) | t) & 0x8080808080808080ull)
        return -1;
    const uint64_t pairs = t * 10 + (t >> 8); /* byte 2i: 10 d[2i] + d[2i+1] */
    const uint64_t mask = 0x000000ff000000ffull;
    return (int64_t)(((pairs & mask) * (100 + (1000000ull << 32)) +
                      ((pairs >> 16) & mask) * (1 + (10000ull << 32))) >> 32);
}

/* Reads the digits at *q into w, eight at a time where it can. Zeros while
 * w is still 0 (a fraction's leading ones) are read but not significant.
 * Returns the digits read, or -1 past MAX_DIGITS significant ones. */
static int read_digits(const char **q, const char *end, uint64_t *w, int *digits)
{
    const char *p = *q;
    int64_t eight;
    while (p < end && is_digit(*p)) {
        if (*w != 0 && *digits + 8 <= MAX_DIGITS && end - p >= 8 &&
            (eight = eight_digits(p)) >= 0) {
            *w = *w * 100000000u + (uint64_t)eight;
            *digits += 8;
            p += 8;
            continue;
        }
        if (*w != 0 || *p != '0') {
            if (*digits == MAX_DIGITS)
                return -1;
            *w = *w * 10 + (uint64_t)(*p - '0');
            (*digits)++;
        }
        p++;
    }
    int read = (int)(p - *q);
    *q = p;
    return read;
}

size_t jnum_parse(const char *p, const char *end, double *out)
{
    const char *q = p;
    bool negative = q < end && *q == '-';
    q += negative;
    if (q >= end || !is_digit(*q))
        return 0;
    uint64_t w = 0;
    int digits = 0, e10 = 0;
    if (*q == '0')
        q++; /* JSON allows no other leading zero */
    else if (read_digits(&q, end, &w, &digits) < 0)
        return 0;
    if (q < end && *q == '.') {
        q++;
        int read = read_digits(&q, end, &w, &digits);
        if (read <= 0)
            return 0;
        e10 -= read;
    }
    if (q < end && (*q == 'e' || *q == 'E')) {
        q++;
        int sign = 1;
        if (q < end && (*q == '+' || *q == '-'))
            sign = *q++ == '-' ? -1 : 1;
        if (q >= end || !is_digit(*q))
            return 0;
        int e = 0;
        for (; q < end && is_digit(*q); q++)
            if (e < 100000)
                e = e * 10 + (*q - '0');
        e10 += sign * e;
    }
    double v = 0.0;
    if (w != 0 && !scale(w, e10, &v))
        return 0;
    *out = negative ? -v : v;
    return (size_t)(q - p);
}
