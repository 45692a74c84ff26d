/* select.c - the bounded min-heap behind every top-k. For k << n almost every
 * candidate costs one compare against the root. */
#include "select.h"

/* Heap order: a parent is worse than its children; worse = lower score, or
 * the same score and a higher index. */
static int worse(double sa, int32_t ia, double sb, int32_t ib)
{
    return sa < sb || (sa == sb && ia > ib);
}

static void swap(topk_heap *h, int a, int b)
{
    double ts = h->score[a];
    h->score[a] = h->score[b];
    h->score[b] = ts;
    int32_t ti = h->idx[a];
    h->idx[a] = h->idx[b];
    h->idx[b] = ti;
}

void topk_heap_sift_down(topk_heap *h, int pos, int n)
{
    for (;;) {
        int l = 2 * pos + 1, r = l + 1, w = pos;
        if (l < n && worse(h->score[l], h->idx[l], h->score[w], h->idx[w]))
            w = l;
        if (r < n && worse(h->score[r], h->idx[r], h->score[w], h->idx[w]))
            w = r;
        if (w == pos)
            return;
        swap(h, pos, w);
        pos = w;
    }
}

void topk_heap_push(topk_heap *h, double s, int32_t i)
{
    int pos = h->n++;
    h->score[pos] = s;
    h->idx[pos] = i;
    while (pos > 0) {
        int parent = (pos - 1) / 2;
        if (!worse(h->score[pos], h->idx[pos], h->score[parent], h->idx[parent]))
            break;
        swap(h, pos, parent);
        pos = parent;
    }
}

void topk_heap_sort(topk_heap *h)
{
    /* Repeatedly move the worst to the end: the array ends best first. */
    for (int end = h->n - 1; end > 0; end--) {
        swap(h, 0, end);
        topk_heap_sift_down(h, 0, end);
    }
}
