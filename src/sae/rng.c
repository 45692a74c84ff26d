/* rng.c - see rng.h. The lane versions repeat Random123's round (the same
 * constants and order) over sixteen counters at once. Each 32-bit state word
 * sits in a 64-bit lane, so a round's two 32 x 32 -> 64-bit products are one
 * vector multiply each (vpmuludq) and its hi/lo halves a shift and a mask,
 * with no shuffles between rounds; sixteen lanes keep four AVX2 registers in
 * flight to hide the multiply's latency. With AVX-512 the
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
/* Blocks 0 .. full into bits, 8 CHAINS512 at a time (one register of eight
 * each); returns how many it did. The multiply and a 64-bit shift both run on
 * one port only, which bound the loop: here a lane's high half is left to
 * hold garbage (vpmuludq reads only the low half of each factor) and the hi
 * half moves down by a dword swap (vpshufd), which runs on the other port.
 * Three chains measured 25% faster than two with shift and mask (four
 * spilled). */
#define CHAINS512 3

__attribute__((target("avx512f"))) static int fill512(uint64_t seed, uint32_t c1, uint64_t c23,
                                                      uint32_t *bits, int full)
{
    const __m512i mul0 = _mm512_set1_epi64(PHILOX_M4x32_0), mul1 = _mm512_set1_epi64(PHILOX_M4x32_1);
    const __m512i lane_of = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
    /* blocks l = 0..3, then 4..7, as (words 0-1, words 2-3) pairs */
    const __m512i first = _mm512_set_epi64(11, 3, 10, 2, 9, 1, 8, 0);
    const __m512i second = _mm512_set_epi64(15, 7, 14, 6, 13, 5, 12, 4);
    int g = 0;
    for (; g + 8 * CHAINS512 <= full; g += 8 * CHAINS512) {
        __m512i x0[CHAINS512], x1[CHAINS512], x2[CHAINS512], x3[CHAINS512];
        for (int h = 0; h < CHAINS512; h++) {
            x0[h] = _mm512_add_epi64(lane_of, _mm512_set1_epi64(g + 8 * h));
            x1[h] = _mm512_set1_epi64(c1);
            x2[h] = _mm512_set1_epi64((uint32_t)c23);
            x3[h] = _mm512_set1_epi64((uint32_t)(c23 >> 32));
        }
        uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
        for (int round = 0; round < 10; round++) {
            const __m512i key0 = _mm512_set1_epi64(k0), key1 = _mm512_set1_epi64(k1);
            for (int h = 0; h < CHAINS512; h++) {
                const __m512i p0 = _mm512_mul_epu32(x0[h], mul0), p1 = _mm512_mul_epu32(x2[h], mul1);
                const __m512i hi1 = _mm512_shuffle_epi32(p1, _MM_PERM_CDAB),
                              hi0 = _mm512_shuffle_epi32(p0, _MM_PERM_CDAB);
                x0[h] = _mm512_xor_si512(_mm512_xor_si512(hi1, x1[h]), key0);
                x1[h] = p1;
                x2[h] = _mm512_xor_si512(_mm512_xor_si512(hi0, x3[h]), key1);
                x3[h] = p0;
            }
            k0 += PHILOX_W32_0;
            k1 += PHILOX_W32_1;
        }
        for (int h = 0; h < CHAINS512; h++) { /* words 0-1 and 2-3: low halves of each pair */
            const __m512i w01 =
                _mm512_mask_blend_epi32(0xaaaa, x0[h], _mm512_shuffle_epi32(x1[h], _MM_PERM_CDAB));
            const __m512i w23 =
                _mm512_mask_blend_epi32(0xaaaa, x2[h], _mm512_shuffle_epi32(x3[h], _MM_PERM_CDAB));
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
