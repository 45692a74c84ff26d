/* select.c - the bounded min-heap behind every top-k. For k << n almost every
 * candidate costs one compare against the root. */
#include "select.h"

#include <string.h>

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

double topk_kth_largest(double *v, int n, int k)
{
    int lo = 0, hi = n - 1, want = k - 1;
    while (lo < hi) { /* quickselect, descending */
        double pivot = v[lo + (hi - lo) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (v[i] > pivot)
                i++;
            while (v[j] < pivot)
                j--;
            if (i <= j) {
                double t = v[i];
                v[i++] = v[j];
                v[j--] = t;
            }
        }
        if (want <= j)
            hi = j;
        else if (want >= i)
            lo = i;
        else
            break;
    }
    return v[want];
}

double topk_kth_largest_of(const float *v, int n, int k, double *work)
{
    return vec_kth_largest(v, n, k, (int32_t *)work);
}

void topk_heap_offer_row(topk_heap *h, const float *z, const float *bias, int n, void *scratch)
{
    const int chunk = select_chunk(n, h->k), chunks = (n + chunk - 1) / chunk;
    double *work = scratch;
    float *chunk_max = (float *)(work + chunks);
    vec_chunk_max(z, bias, n, chunk, chunk_max);
    double t = -INFINITY;
    if (chunks >= h->k)
        t = topk_kth_largest_of(chunk_max, chunks, h->k, work);
    for (int c = 0; c < chunks; c++) {
        if (!(chunk_max[c] >= t))
            continue;
        int lo = c * chunk, hi = lo + chunk < n ? lo + chunk : n;
        for (int i = lo; i < hi; i++) {
            float a = z[i] + bias[i];
            if (a >= t)
                topk_heap_offer(h, (double)a, i);
        }
    }
}
