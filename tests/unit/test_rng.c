/* test_rng - sae_philox_fill, the lane-parallel Philox, against Random123's
 * philox4x32 word for word: every length from 0 to 300 words (whole and
 * partial blocks; up to three AVX-512 steps of 24 blocks, the 16-block lane
 * path where 16 to 23 blocks remain, and a tail), seeds and counters with
 * high bits set, and a guard word after the fill. */
#include <stdint.h>

#include "check.h"
#include "rng.h"

int main(void)
{
    const uint64_t seeds[] = {0, 1, 0x123456789abcdef0ull, UINT64_MAX};
    const uint64_t c23s[] = {0, 7, 1ull << 63, 0xdeadbeefcafef00dull};
    uint32_t bits[301];
    for (int s = 0; s < 4; s++)
        for (int c = 0; c < 4; c++)
            for (int n = 0; n <= 300; n++) {
                uint32_t c1 = (uint32_t)(n * 2654435761u);
                bits[n] = 0xa5a5a5a5u;
                sae_philox_fill(seeds[s], c1, c23s[c], bits, n);
                int wrong = 0;
                for (int i = 0; i < n; i++) {
                    philox4x32_key_t key = {{(uint32_t)seeds[s], (uint32_t)(seeds[s] >> 32)}};
                    philox4x32_ctr_t ctr = {{(uint32_t)(i / 4), c1, (uint32_t)c23s[c],
                                             (uint32_t)(c23s[c] >> 32)}};
                    wrong += philox4x32(ctr, key).v[i % 4] != bits[i];
                }
                CHECK(wrong == 0);
                CHECK(bits[n] == 0xa5a5a5a5u);
            }
    if (failures) {
        printf("%d checks failed\n", failures);
        return 1;
    }
    printf("all rng checks passed\n");
    return 0;
}
