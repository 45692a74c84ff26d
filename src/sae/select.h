/* select.h - top-k selection over one row of scores. */
#ifndef SAE_SELECT_H
#define SAE_SELECT_H

#include <stdint.h>

/* Writes the indices of the k largest of score[0..n) into idx, best first.
 * Ties go to the lower index, so the result is deterministic. heap is
 * scratch of k doubles. Requires 1 <= k <= n. */
void sae_topk_select(const double *score, int n, int k, int32_t *idx, double *heap);

#endif
