/* rng.c - see rng.h. The lane version repeats Random123's round (the same
 * constants and order) over eight counters at once, so that GCC can keep the
 * eight 32 x 32 -> 64-bit products in one vector; test_rng holds it to
 * Random123 word for word. */
#include "rng.h"
#include "vec.h" /* CLONES */

philox4x32_ctr_t sae_philox(uint64_t seed, uint32_t c0, uint32_t c1, uint64_t c23)
{
    philox4x32_key_t key = {{(uint32_t)seed, (uint32_t)(seed >> 32)}};
    philox4x32_ctr_t ctr = {{c0, c1, (uint32_t)c23, (uint32_t)(c23 >> 32)}};
    return philox4x32(ctr, key);
}

#define LANES 8

CLONES void sae_philox_fill(uint64_t seed, uint32_t c1, uint64_t c23, uint32_t *bits, int n)
{
    const int full = n / 4; /* blocks whose four words all land in bits */
    int g = 0;
    for (; g + LANES <= full; g += LANES) {
        uint32_t x0[LANES], x1[LANES], x2[LANES], x3[LANES];
        for (int l = 0; l < LANES; l++) {
            x0[l] = (uint32_t)(g + l);
            x1[l] = c1;
            x2[l] = (uint32_t)c23;
            x3[l] = (uint32_t)(c23 >> 32);
        }
        uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
        for (int round = 0; round < 10; round++) {
            for (int l = 0; l < LANES; l++) {
                uint64_t p0 = (uint64_t)PHILOX_M4x32_0 * x0[l];
                uint64_t p1 = (uint64_t)PHILOX_M4x32_1 * x2[l];
                uint32_t y0 = (uint32_t)(p1 >> 32) ^ x1[l] ^ k0, y1 = (uint32_t)p1;
                uint32_t y2 = (uint32_t)(p0 >> 32) ^ x3[l] ^ k1, y3 = (uint32_t)p0;
                x0[l] = y0;
                x1[l] = y1;
                x2[l] = y2;
                x3[l] = y3;
            }
            k0 += PHILOX_W32_0;
            k1 += PHILOX_W32_1;
        }
        for (int l = 0; l < LANES; l++) {
            uint32_t *out = bits + 4 * (g + l);
            out[0] = x0[l];
            out[1] = x1[l];
            out[2] = x2[l];
            out[3] = x3[l];
        }
    }
    for (; 4 * g < n; g++) {
        philox4x32_ctr_t r = sae_philox(seed, (uint32_t)g, c1, c23);
        for (int q = 0; q < 4 && 4 * g + q < n; q++)
            bits[4 * g + q] = r.v[q];
    }
}
