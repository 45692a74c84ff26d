/* rng.c - see rng.h. The lane version repeats Random123's round (the same
 * constants and order) over sixteen counters at once. Each 32-bit state word
 * sits in a 64-bit lane, so a round's two 32 x 32 -> 64-bit products are one
 * vector multiply each (vpmuludq) and its hi/lo halves a shift and a mask,
 * with no shuffles between rounds; sixteen lanes keep two AVX-512 registers
 * (four AVX2 ones) in flight to hide the multiply's latency. test_rng holds
 * it to Random123 word for word. */
#include <string.h>

#include "rng.h"
#include "vec.h" /* CLONES */

philox4x32_ctr_t sae_philox(uint64_t seed, uint32_t c0, uint32_t c1, uint64_t c23)
{
    philox4x32_key_t key = {{(uint32_t)seed, (uint32_t)(seed >> 32)}};
    philox4x32_ctr_t ctr = {{c0, c1, (uint32_t)c23, (uint32_t)(c23 >> 32)}};
    return philox4x32(ctr, key);
}

#define LANES 16

typedef uint64_t lanes_u64 __attribute__((vector_size(LANES * 8)));

CLONES512 void sae_philox_fill(uint64_t seed, uint32_t c1, uint64_t c23, uint32_t *bits, int n)
{
    const int full = n / 4; /* blocks whose four words all land in bits */
    const lanes_u64 lo32 = (lanes_u64){0} + 0xffffffffu;
    lanes_u64 lane_of = {0};
    for (int l = 0; l < LANES; l++)
        lane_of[l] = (uint64_t)l;
    int g = 0;
    for (; g + LANES <= full; g += LANES) {
        lanes_u64 x0 = lane_of + (uint64_t)g, x1 = (lanes_u64){0} + c1,
                  x2 = (lanes_u64){0} + (uint32_t)c23, x3 = (lanes_u64){0} + (uint32_t)(c23 >> 32);
        uint64_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
        for (int round = 0; round < 10; round++) {
            /* the masks tell GCC both factors fit 32 bits: one vpmuludq each */
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
