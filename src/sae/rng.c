/* rng.c - see rng.h. The lane versions repeat Random123's round (the same
 * constants and order) over sixteen counters at once. Each 32-bit state word
 * sits in a 64-bit lane, so a round's two 32 x 32 -> 64-bit products are one
 * vector multiply each (vpmuludq) and its hi/lo halves a shift and a mask,
 * with no shuffles between rounds; sixteen lanes keep two AVX-512 registers
 * (four AVX2 ones) in flight to hide the multiply's latency. With AVX-512 the
 * multiply is the intrinsic: from generic 64-bit lanes GCC emits three
 * vpmuludq, two shifts and two adds per product (it does not see that the
 * masked factors fit 32 bits), which made the fill 2.5x slower. test_rng
 * holds both to Random123 word for word. */
#include <string.h>

#include "rng.h"
#include "vec.h" /* CLONES */

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_FILL512 1
#else
#define HAVE_FILL512 0
#endif

philox4x32_ctr_t sae_philox(uint64_t seed, uint32_t c0, uint32_t c1, uint64_t c23)
{
    philox4x32_key_t key = {{(uint32_t)seed, (uint32_t)(seed >> 32)}};
    philox4x32_ctr_t ctr = {{c0, c1, (uint32_t)c23, (uint32_t)(c23 >> 32)}};
    return philox4x32(ctr, key);
}

#define LANES 16

#if HAVE_FILL512
/* Blocks 0 .. full (sixteen at a time, two registers of eight) into bits;
 * returns how many it did. */
__attribute__((target("avx512f"))) static int fill512(uint64_t seed, uint32_t c1, uint64_t c23,
                                                      uint32_t *bits, int full)
{
    const __m512i lo32 = _mm512_set1_epi64(0xffffffffu);
    const __m512i mul0 = _mm512_set1_epi64(PHILOX_M4x32_0), mul1 = _mm512_set1_epi64(PHILOX_M4x32_1);
    const __m512i lane_of = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
    /* blocks l = 0..3, then 4..7, as (words 0-1, words 2-3) pairs */
    const __m512i first = _mm512_set_epi64(11, 3, 10, 2, 9, 1, 8, 0);
    const __m512i second = _mm512_set_epi64(15, 7, 14, 6, 13, 5, 12, 4);
    int g = 0;
    for (; g + LANES <= full; g += LANES) {
        __m512i x0[2], x1[2], x2[2], x3[2];
        for (int h = 0; h < 2; h++) {
            x0[h] = _mm512_add_epi64(lane_of, _mm512_set1_epi64(g + 8 * h));
            x1[h] = _mm512_set1_epi64(c1);
            x2[h] = _mm512_set1_epi64((uint32_t)c23);
            x3[h] = _mm512_set1_epi64((uint32_t)(c23 >> 32));
        }
        uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
        for (int round = 0; round < 10; round++) {
            const __m512i key0 = _mm512_set1_epi64(k0), key1 = _mm512_set1_epi64(k1);
            for (int h = 0; h < 2; h++) {
                const __m512i p0 = _mm512_mul_epu32(x0[h], mul0), p1 = _mm512_mul_epu32(x2[h], mul1);
                x0[h] = _mm512_xor_si512(_mm512_xor_si512(_mm512_srli_epi64(p1, 32), x1[h]), key0);
                x1[h] = _mm512_and_si512(p1, lo32);
                x2[h] = _mm512_xor_si512(_mm512_xor_si512(_mm512_srli_epi64(p0, 32), x3[h]), key1);
                x3[h] = _mm512_and_si512(p0, lo32);
            }
            k0 += PHILOX_W32_0;
            k1 += PHILOX_W32_1;
        }
        for (int h = 0; h < 2; h++) {
            const __m512i w01 = _mm512_or_si512(x0[h], _mm512_slli_epi64(x1[h], 32));
            const __m512i w23 = _mm512_or_si512(x2[h], _mm512_slli_epi64(x3[h], 32));
            uint32_t *out = bits + 4 * (g + 8 * h);
            _mm512_storeu_si512(out, _mm512_permutex2var_epi64(w01, first, w23));
            _mm512_storeu_si512(out + 16, _mm512_permutex2var_epi64(w01, second, w23));
        }
    }
    return g;
}
#endif

typedef uint64_t lanes_u64 __attribute__((vector_size(LANES * 8)));

CLONES void sae_philox_fill(uint64_t seed, uint32_t c1, uint64_t c23, uint32_t *bits, int n)
{
    const int full = n / 4; /* blocks whose four words all land in bits */
    int g = 0;
#if HAVE_FILL512
    if (__builtin_cpu_supports("avx512f"))
        g = fill512(seed, c1, c23, bits, full);
#endif
    const lanes_u64 lo32 = (lanes_u64){0} + 0xffffffffu;
    lanes_u64 lane_of = {0};
    for (int l = 0; l < LANES; l++)
        lane_of[l] = (uint64_t)l;
    for (; g + LANES <= full; g += LANES) {
        lanes_u64 x0 = lane_of + (uint64_t)g, x1 = (lanes_u64){0} + c1,
                  x2 = (lanes_u64){0} + (uint32_t)c23, x3 = (lanes_u64){0} + (uint32_t)(c23 >> 32);
        uint64_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
        for (int round = 0; round < 10; round++) {
            /* exact 32 x 32 -> 64-bit products (the masks); fill512 does them in one */
            lanes_u64 p0 = (x0 & lo32) * (uint64_t)PHILOX_M4x32_0,
                      p1 = (x2 & lo32) * (uint64_t)PHILOX_M4x32_1;
            x0 = (p1 >> 32) ^ x1 ^ k0;
            x1 = p1 & lo32;
            x2 = (p0 >> 32) ^ x3 ^ k1;
            x3 = p0 & lo32;
            k0 = (uint32_t)(k0 + PHILOX_W32_0);
            k1 = (uint32_t)(k1 + PHILOX_W32_1);
        }
        /* block g + l's words 0..3 are bits[4 (g + l) ..]: two 64-bit stores */
        lanes_u64 w01 = x0 | (x1 << 32), w23 = x2 | (x3 << 32);
        for (int l = 0; l < LANES; l++) {
            uint64_t pair[2] = {w01[l], w23[l]};
            memcpy(bits + 4 * (g + l), pair, sizeof pair);
        }
    }
    for (; 4 * g < n; g++) {
        philox4x32_ctr_t r = sae_philox(seed, (uint32_t)g, c1, c23);
        for (int q = 0; q < 4 && 4 * g + q < n; q++)
            bits[4 * g + q] = r.v[q];
    }
}
