/* select.c - top-k by a bounded min-heap. Scanning in index order, an element
 * enters only when it beats the worst kept one strictly, so among equal scores
 * the lower index stays. For k << n almost every element costs one compare. */
#include "select.h"

/* Heap order: the root is the worst kept entry: the lowest score, and among
 * equal scores the highest index. */
static int worse(double sa, int32_t ia, double sb, int32_t ib)
{
    return sa < sb || (sa == sb && ia > ib);
}

static void sift_down(double *hs, int32_t *hi, int k, int pos)
{
    for (;;) {
        int l = 2 * pos + 1, r = l + 1, w = pos;
        if (l < k && worse(hs[l], hi[l], hs[w], hi[w]))
            w = l;
        if (r < k && worse(hs[r], hi[r], hs[w], hi[w]))
            w = r;
        if (w == pos)
            return;
        double ts = hs[pos]; hs[pos] = hs[w]; hs[w] = ts;
        int32_t ti = hi[pos]; hi[pos] = hi[w]; hi[w] = ti;
        pos = w;
    }
}

void sae_topk_select(const double *score, int n, int k, int32_t *idx, double *heap)
{
    /* heap scores in `heap`, their indices in idx (the output array) */
    for (int i = 0; i < k; i++) {
        heap[i] = score[i];
        idx[i] = i;
    }
    for (int i = k / 2 - 1; i >= 0; i--)
        sift_down(heap, idx, k, i);
    for (int i = k; i < n; i++) {
        if (score[i] > heap[0]) {   /* i > every kept index: equal loses */
            heap[0] = score[i];
            idx[0] = i;
            sift_down(heap, idx, k, 0);
        }
    }
    /* Heap sort in place: repeatedly move the worst to the end, which leaves
     * the array best first. */
    for (int end = k - 1; end > 0; end--) {
        double ts = heap[0]; heap[0] = heap[end]; heap[end] = ts;
        int32_t ti = idx[0]; idx[0] = idx[end]; idx[end] = ti;
        sift_down(heap, idx, end, 0);
    }
}
