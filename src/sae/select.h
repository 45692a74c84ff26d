/* select.h - top-k selection: a bounded heap that candidates are offered to
 * in increasing index order. An offer enters only when it beats the worst
 * kept entry strictly, so among equal scores the lower index stays and the
 * result is deterministic. Callers can skip a candidate early by comparing
 * a bound on its score with topk_heap_floor(). */
#ifndef SAE_SELECT_H
#define SAE_SELECT_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "vec.h"

typedef struct topk_heap {
    int k, n;
    double *score;      /* [k] the root is the worst kept entry */
    int32_t *idx;       /* [k] */
    void *scratch;      /* for the architecture's select: SAE_SELECT_SCRATCH(M) bytes */
} topk_heap;

/* Selections read a row in chunks of latents: a chunk's maximum (or bound)
 * tells whether anything in it can enter, and the k-th largest of the chunk
 * maxima is a floor. Larger chunks mean fewer horizontal reductions (topk's
 * selection over 1024 rows of 24576 latents, k 32: 31 ms with chunks of 16,
 * 27 with 32, 23 with 64), but the floor needs many more chunks than k (a
 * 2048-latent topk encode was 1.35x slower with chunks of 64 than of 16):
 * the largest of 64, 32, 16 that leaves at least 4 k chunks. */
#define SELECT_CHUNK_MIN 16
#define SELECT_CHUNK_MAX 64
static inline int select_chunk(int n, int k)
{
    int c = SELECT_CHUNK_MAX;
    while (c > SELECT_CHUNK_MIN && (int64_t)n < (int64_t)4 * k * c)
        c /= 2;
    return c;
}
#define SELECT_CHUNKS(M) (((size_t)(M) + SELECT_CHUNK_MIN - 1) / SELECT_CHUNK_MIN)

/* Row scratch an architecture's select may use: three doubles per chunk of
 * the smallest size (topk), or a double per latent and two per chunk
 * (ptopk). */
#define SAE_SELECT_SCRATCH(M) (((size_t)(M) + 3 * SELECT_CHUNKS(M)) * sizeof(double))

void topk_heap_sift_down(topk_heap *h, int pos, int n);
void topk_heap_push(topk_heap *h, double s, int32_t i);

static inline void topk_heap_init(topk_heap *h, int k, double *score, int32_t *idx)
{
    h->k = k;
    h->n = 0;
    h->score = score;
    h->idx = idx;
    h->scratch = NULL;
}

/* The score a candidate must beat to enter; -inf until the heap is full. */
static inline double topk_heap_floor(const topk_heap *h)
{
    return h->n < h->k ? -INFINITY : h->score[0];
}

static inline void topk_heap_offer(topk_heap *h, double s, int32_t i)
{
    if (h->n < h->k) {
        topk_heap_push(h, s, i);
    } else if (s > h->score[0]) {
        h->score[0] = s;
        h->idx[0] = i;
        topk_heap_sift_down(h, 0, h->k);
    }
}

/* The k-th largest of v[0..n) (1 <= k <= n); v is reordered. With v the
 * chunk maxima of a row's scores (or lower bounds of them), these are scores
 * of distinct latents, so the result bounds the row's k-th best score from
 * below: a latent whose score stays under it cannot enter the heap. */
double topk_kth_largest(double *v, int n, int k);
/* The same for floats (no NaN), through work[n] (v is left as it is). */
double topk_kth_largest_of(const float *v, int n, int k, double *work);

/* Offers a_i = z_i + bias_i (float sums, ranked as doubles) for i = 0..n-1
 * in order, except those that cannot be among the k best: the same heap as
 * offering every one, at a fraction of the cost. scratch: SAE_SELECT_SCRATCH(n)
 * bytes. */
void topk_heap_offer_row(topk_heap *h, const float *z, const float *bias, int n, void *scratch);

/* Orders the kept entries best first (score descending, index ascending). */
void topk_heap_sort(topk_heap *h);

#endif
