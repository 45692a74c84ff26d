/* rng.h - Philox4x32-10 (Random123) keyed by a run's seed: the one source of
 * randomness in training and in corpus shuffling, so a run is reproducible
 * from its seed and the same draws can be made on another backend. */
#ifndef SAE_RNG_H
#define SAE_RNG_H

#include <stdint.h>

#include <Random123/philox.h>

/* One block: four 32-bit words for the counter (c0, c1, c23). */
philox4x32_ctr_t sae_philox(uint64_t seed, uint32_t c0, uint32_t c1, uint64_t c23);

/* bits[4 g + q] = sae_philox(seed, g, c1, c23).v[q] for the n words (n need
 * not be a multiple of 4): eight blocks at a time, in vector lanes. */
void sae_philox_fill(uint64_t seed, uint32_t c1, uint64_t c23, uint32_t *bits, int n);

#endif
