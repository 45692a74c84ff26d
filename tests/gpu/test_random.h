/* test_random.h - the GPU tests' random numbers: splitmix64, reproducible
 * from a seed on any machine, no library. */
#ifndef SAE_TEST_RANDOM_H
#define SAE_TEST_RANDOM_H

#include <stdint.h>

/* Uniform in (0, 1), advancing *state. */
static inline double test_uniform(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return ((double)(z >> 11) + 0.5) / 9007199254740992.0;
}

#endif
