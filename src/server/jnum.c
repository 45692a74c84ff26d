/* jnum.c - see jnum.h.
 *
 * A JSON number is w * 10^e with w the digits as an integer. When w < 2^53
 * and |e| <= 22 both w and 10^|e| are exact doubles, so one multiply or
 * divide rounds once: the correctly rounded result (Clinger's fast path).
 * Beyond that (the usual 16-17 digit texts): 10^e as a 64-bit significand
 * truncated (pow10_m), one 64 x 64 -> 128-bit product with w, and its top 64
 * bits, at most one unit below the true product's, rounded to 53 bits. That
 * is the correct double unless they sit within a unit of a point halfway
 * between two doubles; those few (57 of test_jnum's 2.09M numbers) are
 * declined (see product_to_double). */
#include "jnum.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#define MAX_DIGITS 19 /* 10^19 - 1 < 2^64 */

static const double pow10_d[] = {
    1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
#define MAX_EXP_D 22

/* 10^e = (m + delta) 2^b with m in [2^63, 2^64), 0 <= delta < 1, for e in
 * [-64, 64] (entry e + 64); exact integer arithmetic (Python) wrote it:
 * m = floor(10^e / 2^b). */
#define POW10_MIN (-64)
#define POW10_MAX 64
static const struct {
    uint64_t m;
    int b;
} pow10_m[] = {
    {0xa87fea27a539e9a5u, -276}, {0xd29fe4b18e88640eu, -273}, {0x83a3eeeef9153e89u, -269},
    {0xa48ceaaab75a8e2bu, -266}, {0xcdb02555653131b6u, -263}, {0x808e17555f3ebf11u, -259},
    {0xa0b19d2ab70e6ed6u, -256}, {0xc8de047564d20a8bu, -253}, {0xfb158592be068d2eu, -250},
    {0x9ced737bb6c4183du, -246}, {0xc428d05aa4751e4cu, -243}, {0xf53304714d9265dfu, -240},
    {0x993fe2c6d07b7fabu, -236}, {0xbf8fdb78849a5f96u, -233}, {0xef73d256a5c0f77cu, -230},
    {0x95a8637627989aadu, -226}, {0xbb127c53b17ec159u, -223}, {0xe9d71b689dde71afu, -220},
    {0x9226712162ab070du, -216}, {0xb6b00d69bb55c8d1u, -213}, {0xe45c10c42a2b3b05u, -210},
    {0x8eb98a7a9a5b04e3u, -206}, {0xb267ed1940f1c61cu, -203}, {0xdf01e85f912e37a3u, -200},
    {0x8b61313bbabce2c6u, -196}, {0xae397d8aa96c1b77u, -193}, {0xd9c7dced53c72255u, -190},
    {0x881cea14545c7575u, -186}, {0xaa242499697392d2u, -183}, {0xd4ad2dbfc3d07787u, -180},
    {0x84ec3c97da624ab4u, -176}, {0xa6274bbdd0fadd61u, -173}, {0xcfb11ead453994bau, -170},
    {0x81ceb32c4b43fcf4u, -166}, {0xa2425ff75e14fc31u, -163}, {0xcad2f7f5359a3b3eu, -160},
    {0xfd87b5f28300ca0du, -157}, {0x9e74d1b791e07e48u, -153}, {0xc612062576589ddau, -150},
    {0xf79687aed3eec551u, -147}, {0x9abe14cd44753b52u, -143}, {0xc16d9a0095928a27u, -140},
    {0xf1c90080baf72cb1u, -137}, {0x971da05074da7beeu, -133}, {0xbce5086492111aeau, -130},
    {0xec1e4a7db69561a5u, -127}, {0x9392ee8e921d5d07u, -123}, {0xb877aa3236a4b449u, -120},
    {0xe69594bec44de15bu, -117}, {0x901d7cf73ab0acd9u, -113}, {0xb424dc35095cd80fu, -110},
    {0xe12e13424bb40e13u, -107}, {0x8cbccc096f5088cbu, -103}, {0xafebff0bcb24aafeu, -100},
    {0xdbe6fecebdedd5beu, -97}, {0x89705f4136b4a597u, -93}, {0xabcc77118461cefcu, -90},
    {0xd6bf94d5e57a42bcu, -87}, {0x8637bd05af6c69b5u, -83}, {0xa7c5ac471b478423u, -80},
    {0xd1b71758e219652bu, -77}, {0x83126e978d4fdf3bu, -73}, {0xa3d70a3d70a3d70au, -70},
    {0xccccccccccccccccu, -67}, {0x8000000000000000u, -63}, {0xa000000000000000u, -60},
    {0xc800000000000000u, -57}, {0xfa00000000000000u, -54}, {0x9c40000000000000u, -50},
    {0xc350000000000000u, -47}, {0xf424000000000000u, -44}, {0x9896800000000000u, -40},
    {0xbebc200000000000u, -37}, {0xee6b280000000000u, -34}, {0x9502f90000000000u, -30},
    {0xba43b74000000000u, -27}, {0xe8d4a51000000000u, -24}, {0x9184e72a00000000u, -20},
    {0xb5e620f480000000u, -17}, {0xe35fa931a0000000u, -14}, {0x8e1bc9bf04000000u, -10},
    {0xb1a2bc2ec5000000u, -7}, {0xde0b6b3a76400000u, -4}, {0x8ac7230489e80000u, 0},
    {0xad78ebc5ac620000u, 3}, {0xd8d726b7177a8000u, 6}, {0x878678326eac9000u, 10},
    {0xa968163f0a57b400u, 13}, {0xd3c21bcecceda100u, 16}, {0x84595161401484a0u, 20},
    {0xa56fa5b99019a5c8u, 23}, {0xcecb8f27f4200f3au, 26}, {0x813f3978f8940984u, 30},
    {0xa18f07d736b90be5u, 33}, {0xc9f2c9cd04674edeu, 36}, {0xfc6f7c4045812296u, 39},
    {0x9dc5ada82b70b59du, 43}, {0xc5371912364ce305u, 46}, {0xf684df56c3e01bc6u, 49},
    {0x9a130b963a6c115cu, 53}, {0xc097ce7bc90715b3u, 56}, {0xf0bdc21abb48db20u, 59},
    {0x96769950b50d88f4u, 63}, {0xbc143fa4e250eb31u, 66}, {0xeb194f8e1ae525fdu, 69},
    {0x92efd1b8d0cf37beu, 73}, {0xb7abc627050305adu, 76}, {0xe596b7b0c643c719u, 79},
    {0x8f7e32ce7bea5c6fu, 83}, {0xb35dbf821ae4f38bu, 86}, {0xe0352f62a19e306eu, 89},
    {0x8c213d9da502de45u, 93}, {0xaf298d050e4395d6u, 96}, {0xdaf3f04651d47b4cu, 99},
    {0x88d8762bf324cd0fu, 103}, {0xab0e93b6efee0053u, 106}, {0xd5d238a4abe98068u, 109},
    {0x85a36366eb71f041u, 113}, {0xa70c3c40a64e6c51u, 116}, {0xd0cf4b50cfe20765u, 119},
    {0x82818f1281ed449fu, 123}, {0xa321f2d7226895c7u, 126}, {0xcbea6f8ceb02bb39u, 129},
    {0xfee50b7025c36a08u, 132}, {0x9f4f2726179a2245u, 136}, {0xc722f0ef9d80aad6u, 139},
    {0xf8ebad2b84e0d58bu, 142}, {0x9b934c3b330c8577u, 146}, {0xc2781f49ffcfa6d5u, 149},
};

/* w 10^e10 rounded to the nearest double, or false when the rounding is in
 * doubt or the result not a normal double. With w = wn 2^-lz (wn's top bit
 * set), the true product wn (m + delta) lies in [p, p + 2^64) for p = wn m,
 * so the true value's bits below p's top 64 lie within two units of the
 * truncated ones: rounding them to 53 bits is decided unless they sit next
 * to the halfway point. A carry out of them (below near the top) rounds up
 * either way. */
static bool product_to_double(uint64_t w, int e10, double *out)
{
    if (e10 < POW10_MIN || e10 > POW10_MAX)
        return false;
    const int lz = __builtin_clzll(w);
    const unsigned __int128 p = (unsigned __int128)(w << lz) * pow10_m[e10 - POW10_MIN].m;
    const uint64_t hi = (uint64_t)(p >> 64);
    const int shift = hi >> 63 ? 11 : 10; /* hi has 64 or 63 significant bits */
    const uint64_t below = hi & ((1ull << shift) - 1), half = 1ull << (shift - 1);
    if (below == half || below == half - 1)
        return false;
    uint64_t mant = (hi >> shift) + (below > half);
    int exp2 = shift + 64 + pow10_m[e10 - POW10_MIN].b - lz; /* value = mant 2^exp2 */
    if (mant == 1ull << 53) {
        mant >>= 1;
        exp2++;
    }
    const int biased = exp2 + 52 + 1023;
    if (biased <= 0 || biased >= 2047)
        return false;
    const uint64_t bits = (uint64_t)biased << 52 | (mant & ((1ull << 52) - 1));
    memcpy(out, &bits, sizeof *out);
    return true;
}

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
    return product_to_double(w, e10, out);
}

/* Eight ASCII bytes as one 64-bit word, the first in the low byte. Byte i
 * is a digit iff subtracting '0' does not set its top bit and adding 0x46
 * (so '9' + 0x46 = 0x7f) does not either; a borrow or carry between bytes
 * comes only from a byte that fails, so the bytes below the first that
 * fails are judged exactly, and so is that one. */
#define ZEROS 0x3030303030303030ull

static int leading_digits(uint64_t v)
{
    const uint64_t fails = ((v + 0x4646464646464646ull) | (v - ZEROS)) & 0x8080808080808080ull;
    return fails ? __builtin_ctzll(fails) / 8 : 8;
}

/* The value of eight digit bytes: neighbours combine into pairs (10 a + b),
 * pairs into the whole by two multiplies whose high halves hold
 * 10^6 p0 + 10^4 p1 + 10^2 p2 + p3. */
static uint64_t eight_digits(uint64_t v)
{
    const uint64_t t = v - ZEROS;
    const uint64_t pairs = t * 10 + (t >> 8); /* byte 2i: 10 d[2i] + d[2i+1] */
    const uint64_t mask = 0x000000ff000000ffull;
    return ((pairs & mask) * (100 + (1000000ull << 32)) +
            ((pairs >> 16) & mask) * (1 + (10000ull << 32))) >> 32;
}

static const uint64_t pow10_u64[] = {1, 10, 100, 1000, 10000, 100000, 1000000, 10000000,
                                     100000000};

/* Reads the digits at *q into w, up to eight at a time: the n digits that
 * start a word, shifted to its top with '0's below them, are its value.
 * Zeros while w is still 0 (a fraction's leading ones) are read but not
 * significant. Returns the digits read, or -1 past MAX_DIGITS significant
 * ones. */
static inline __attribute__((always_inline)) int read_digits(const char **q, const char *end,
                                                           uint64_t *w, int *digits)
{
    const char *p = *q;
    while (p < end && is_digit(*p)) {
        if (*w == 0 && *p == '0') {
            p++;
            continue;
        }
        if (end - p >= 8) {
            uint64_t v;
            memcpy(&v, p, sizeof v);
            const int n = leading_digits(v); /* >= 1: p is a digit */
            if (*digits + n > MAX_DIGITS)
                return -1;
            if (n < 8)
                v = v << (8 * (8 - n)) | ZEROS >> (8 * n);
            *w = *w * pow10_u64[n] + eight_digits(v);
            *digits += n;
            p += n;
            if (n < 8)
                break;
            continue;
        }
        if (*digits == MAX_DIGITS)
            return -1;
        *w = *w * 10 + (uint64_t)(*p - '0');
        (*digits)++;
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
