/* ffmt.c - see ffmt.h.
 *
 * |v| = m 2^e exactly (m < 2^24). Nine significant digits are
 * D = |v| 10^(8 - E) rounded to nearest, ties to even, with E = floor(log10
 * of the rounded value) so that 10^8 <= D < 10^9. With 128-bit integers D
 * is exact for 10^-19 <= |v| < 2^104: one product (and a shift or a
 * division) and its remainder. E starts from the binary exponent's estimate
 * and moves by one until D has nine digits. The text then follows printf's
 * %g: exponent notation when E < -4 or E >= 9, trailing zeros dropped. */
#include "ffmt.h"

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef unsigned __int128 u128;

#define DIGITS 9

static u128 pow10_u128(int p)
{
    u128 r = 1;
    while (p-- > 0)
        r *= 10;
    return r;
}

/* n / 2^s rounded to nearest, ties to even (s < 128) */
static u128 shift_round(u128 n, int s)
{
    if (s == 0)
        return n;
    const u128 q = n >> s, rem = n & (((u128)1 << s) - 1), half = (u128)1 << (s - 1);
    return q + (rem > half || (rem == half && (q & 1)));
}

/* n / d rounded to nearest, ties to even */
static u128 div_round(u128 n, u128 d)
{
    const u128 q = n / d, rem = n % d;
    return q + (2 * rem > d || (2 * rem == d && (q & 1)));
}

/* m 2^e 10^p rounded, or false when it is out of this exact reach */
static bool scaled(uint32_t m, int e, int p, u128 *out)
{
    if (p > 27 || p < -30 || e > 104 || e < -120)
        return false; /* 10^27 m < 2^114; 10^30 < 2^100; m 2^104 < 2^128 */
    if (p >= 0) {
        const u128 n = (u128)m * pow10_u128(p);
        if (e >= 0)
            return e <= 13 ? (*out = n << e, true) : false; /* n < 2^114 */
        *out = shift_round(n, -e);
        return true;
    }
    if (e < 0)
        return false; /* |v| < 2^24 < 10^9: p >= 0 */
    *out = div_round((u128)m << e, pow10_u128(-p));
    return true;
}

/* D (nine digits) and E for |v| = D 10^(E - 8), or false (fall back). */
static bool nine_digits(float v, uint32_t *D, int *E)
{
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits);
    const int biased = (int)(bits >> 23) & 0xff;
    if (biased == 0 || biased == 0xff)
        return false; /* zero, subnormal, inf, nan */
    const uint32_t m = (bits & 0x7fffff) | 0x800000;
    const int e = biased - 127 - 23;
    int e10 = (int)floor((e + 23) * 0.30102999566398120); /* log10 2^(e + 23) */
    for (int tries = 0; tries < 4; tries++) {
        u128 d;
        if (!scaled(m, e, DIGITS - 1 - e10, &d))
            return false;
        if (d >= 1000000000u) {
            e10++;
        } else if (d < 100000000u) {
            e10--;
        } else {
            *D = (uint32_t)d;
            *E = e10;
            return true;
        }
    }
    return false;
}

size_t ffmt_float(float v, char out[FFMT_MAX])
{
    uint32_t D;
    int E;
    if (!nine_digits(v, &D, &E))
        return (size_t)snprintf(out, FFMT_MAX, "%.9g", (double)v);
    char dig[DIGITS];
    for (int i = DIGITS - 1; i >= 0; i--, D /= 10)
        dig[i] = (char)('0' + D % 10);
    int n = DIGITS;
    while (n > 1 && dig[n - 1] == '0')
        n--;
    char *p = out;
    if (signbit(v))
        *p++ = '-';
    if (E < -4 || E >= DIGITS) { /* d.ddde+XX */
        *p++ = dig[0];
        if (n > 1) {
            *p++ = '.';
            memcpy(p, dig + 1, (size_t)n - 1);
            p += n - 1;
        }
        const int mag = E < 0 ? -E : E; /* at most 45 for a float */
        *p++ = 'e';
        *p++ = E < 0 ? '-' : '+';
        *p++ = (char)('0' + mag / 10);
        *p++ = (char)('0' + mag % 10);
    } else if (E >= 0) { /* E + 1 integer digits, then the rest */
        for (int i = 0; i <= E; i++)
            *p++ = i < n ? dig[i] : '0';
        if (n > E + 1) {
            *p++ = '.';
            memcpy(p, dig + E + 1, (size_t)(n - E - 1));
            p += n - E - 1;
        }
    } else { /* 0.000ddd */
        *p++ = '0';
        *p++ = '.';
        for (int i = 0; i < -E - 1; i++)
            *p++ = '0';
        memcpy(p, dig, (size_t)n);
        p += n;
    }
    *p = '\0';
    return (size_t)(p - out);
}
