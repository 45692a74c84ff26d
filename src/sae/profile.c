/* profile.c - the profile pass (profile.h says what it computes and how). */
#include <math.h>
#include <omp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "profile.h"

#define HIST_BINS 256
#define COLLECT_MAX 65536               /* values a quantile item may collect and sort */
#define ROUND_BUDGET ((size_t)64 << 20) /* bytes of histograms and collections per round */
#define BLOCK_ROWS 65536                /* rows per read of the spill */
#define BLOCK_ENTRIES ((int64_t)1 << 20)
#define FEATURE_BLOCK 64                /* features whose examples are built together */
#define NEG_SPARE 2                     /* negative candidates kept per wanted window */
#define MAX_RANKS (2 * PROFILE_N_QUANTILES)

const double profile_levels[PROFILE_N_QUANTILES] = {0.1, 0.2, 0.3, 0.4, 0.5,
                                                    0.6, 0.7, 0.8, 0.9, 0.99};
const char *const profile_level_names[PROFILE_N_QUANTILES] = {
    "q10", "q20", "q30", "q40", "q50", "q60", "q70", "q80", "q90", "q99"};
static const int bound_level[PROFILE_N_BUCKETS - 1] = {1, 3, 5, 7};

void profile_config_default(profile_config *c)
{
    *c = (profile_config){.top_n = 32, .per_bucket = 20, .n_negative = 20, .window = 32,
                          .batch = 4096, .spill_dir = "."};
}

int64_t profile_rows(const corpus *c, const profile_config *cfg)
{
    int64_t n = corpus_get_info(c)->n_rows;
    return cfg->max_tokens > 0 && cfg->max_tokens < n ? cfg->max_tokens : n;
}

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* The sampling key of (feature, row) under a seed and a purpose tag. */
static uint64_t draw(uint64_t seed, uint64_t tag, int f, int64_t row)
{
    return splitmix64(seed ^ splitmix64(tag ^ splitmix64(((uint64_t)f << 40) ^ (uint64_t)row)));
}

enum { TAG_BUCKET = 0x42, TAG_NEGATIVE = 0x4e };

/* This thread's share [lo, hi) of M features inside a parallel region:
 * features have one owner each, so per-feature state needs no locks and the
 * order of updates (row order) does not depend on the thread count. */
static void my_features(int M, int *lo, int *hi)
{
    int t = omp_get_thread_num(), T = omp_get_num_threads();
    *lo = (int)((int64_t)M * t / T);
    *hi = (int)((int64_t)M * (t + 1) / T);
}

/* ---- Spill: non-zero codes and row records in unlinked files ---------------- */

typedef struct entry {
    int32_t f;
    float v;
} entry;

/* Row r's first entry and its token (-1 without tokens); one more record
 * after the last row holds the end of the entries. A window's rows and
 * tokens come back in one read. */
typedef struct spill_row {
    int64_t at;
    int32_t token;
    int32_t unused;
} spill_row;

typedef struct spill {
    FILE *entries, *rows;
    int64_t n_rows, n_entries;
} spill;

static FILE *spill_file(const char *dir, sae_error *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/.saectl-profile-XXXXXX", dir);
    int fd = mkstemp(path);
    if (fd < 0) {
        sae_fail(err, "profile: cannot create a temporary file in %s", dir);
        return NULL;
    }
    unlink(path);   /* gone with the process, however it ends */
    FILE *f = fdopen(fd, "w+");
    if (!f) {
        close(fd);
        sae_fail(err, "profile: fdopen failed");
    }
    return f;
}

static void spill_close(spill *sp)
{
    if (sp->entries)
        fclose(sp->entries);
    if (sp->rows)
        fclose(sp->rows);
}

static int spill_open(spill *sp, const char *dir, sae_error *err)
{
    *sp = (spill){0};
    if (!(sp->entries = spill_file(dir, err)) || !(sp->rows = spill_file(dir, err))) {
        spill_close(sp);
        return SAE_ERR;
    }
    return SAE_OK;
}

static int spill_write_failed(sae_error *err)
{
    return sae_fail(err, "profile: writing the temporary code files failed (disk full?)");
}

/* Appends a batch: its non-zero codes and a record per row. tokens may be
 * NULL. */
static int spill_append(spill *sp, const sae_codes *codes, const int32_t *tokens,
                        entry *ebuf, spill_row *rbuf, sae_error *err)
{
    int64_t n = codes->n_rows, at = 0;
    for (int64_t r = 0; r < n; r++) {
        rbuf[r] = (spill_row){sp->n_entries + at, tokens ? tokens[r] : -1, 0};
        for (int64_t e = codes->indptr[r]; e < codes->indptr[r + 1]; e++)
            if (codes->values[e] != 0.0f)
                ebuf[at++] = (entry){codes->indices[e], codes->values[e]};
    }
    if (fwrite(ebuf, sizeof *ebuf, (size_t)at, sp->entries) != (size_t)at ||
        fwrite(rbuf, sizeof *rbuf, (size_t)n, sp->rows) != (size_t)n)
        return spill_write_failed(err);
    sp->n_entries += at;
    sp->n_rows += n;
    return SAE_OK;
}

/* Writes the closing record. */
static int spill_finish(spill *sp, sae_error *err)
{
    spill_row end = {sp->n_entries, -1, 0};
    if (fwrite(&end, sizeof end, 1, sp->rows) != 1 || fflush(sp->entries) || fflush(sp->rows))
        return spill_write_failed(err);
    return SAE_OK;
}

/* pread of n items of size sz at item offset at, whole or an error. */
static int read_at(FILE *f, void *buf, size_t sz, int64_t n, int64_t at, sae_error *err)
{
    size_t want = sz * (size_t)n, got = 0;
    while (got < want) {
        ssize_t r = pread(fileno(f), (char *)buf + got, want - got, (off_t)(sz * at + got));
        if (r <= 0)
            return sae_fail(err, "profile: reading the temporary code files failed");
        got += (size_t)r;
    }
    return SAE_OK;
}

/* Sequential blocks of the spill: rows [r0, r1) with their records
 * rows[0 .. r1 - r0] and entries e[0 .. rows[r1 - r0].at - rows[0].at). */
typedef struct spill_block {
    int64_t r0, r1;
    spill_row *rows;            /* [r1 - r0 + 1]; .at are absolute entry offsets */
    entry *e;
    int64_t cap;
} spill_block;

static int block_init(spill_block *b, int M, sae_error *err)
{
    b->cap = BLOCK_ENTRIES > M ? BLOCK_ENTRIES : M;   /* any single row fits */
    b->rows = malloc((BLOCK_ROWS + 1) * sizeof *b->rows);
    b->e = malloc((size_t)b->cap * sizeof *b->e);
    b->r0 = b->r1 = 0;
    if (!b->rows || !b->e)
        return sae_fail(err, "profile: out of memory");
    return SAE_OK;
}

static void block_free(spill_block *b)
{
    free(b->rows);
    free(b->e);
}

/* Reads the block after b (b->r1 == 0 at the start); false at the end. */
static int block_next(const spill *sp, spill_block *b, bool *more, sae_error *err)
{
    int64_t r0 = b->r1, nr = sp->n_rows - r0 < BLOCK_ROWS ? sp->n_rows - r0 : BLOCK_ROWS;
    *more = nr > 0;
    if (!*more)
        return SAE_OK;
    if (read_at(sp->rows, b->rows, sizeof *b->rows, nr + 1, r0, err) != SAE_OK)
        return SAE_ERR;
    while (b->rows[nr].at - b->rows[0].at > b->cap)
        nr--;
    b->r0 = r0;
    b->r1 = r0 + nr;
    return read_at(sp->entries, b->e, sizeof *b->e, b->rows[nr].at - b->rows[0].at,
                   b->rows[0].at, err);
}

/* One pass over the spill calling visit(ctx, block) per block. */
typedef void (*block_fn)(void *ctx, const spill_block *b);

static int spill_pass(const spill *sp, int M, block_fn visit, void *ctx, sae_error *err)
{
    spill_block b;
    int rc = block_init(&b, M, err);
    bool more = true;
    while (rc == SAE_OK && (rc = block_next(sp, &b, &more, err)) == SAE_OK && more)
        visit(ctx, &b);
    block_free(&b);
    return rc;
}

/* ---- State per feature ------------------------------------------------------ */

typedef struct feature_state {
    uint64_t count;
    double sum;
    float min, max;
    int n_top;
    int n_ranks;
    int64_t ranks[MAX_RANKS];   /* order statistics the quantiles need, ascending */
    double rank_value[MAX_RANKS];
    float bounds[PROFILE_N_BUCKETS - 1];
    uint64_t bucket_count[PROFILE_N_BUCKETS];
    int n_sample[PROFILE_N_BUCKETS];
    int64_t last_fire;          /* row of the latest activation seen by the sample pass */
    int n_gap;                  /* negative candidates */
} feature_state;

/* Top positions: per feature a heap of top_n (value, row) with the worst at
 * the root, so a candidate costs one comparison unless it gets in. */
typedef struct ranked {
    float v;
    int64_t row;
} ranked;

static bool better(ranked a, ranked b)
{
    return a.v > b.v || (a.v == b.v && a.row < b.row);
}

static void heap_push(ranked *h, int *n, int cap, ranked x)
{
    if (*n == cap) {
        if (!better(x, h[0]))
            return;
        int i = 0;      /* replace the root and sift down */
        for (;;) {
            int c = 2 * i + 1;
            if (c >= cap)
                break;
            if (c + 1 < cap && better(h[c], h[c + 1]))
                c++;
            if (!better(x, h[c]))
                break;
            h[i] = h[c];
            i = c;
        }
        h[i] = x;
        return;
    }
    int i = (*n)++;     /* sift up */
    while (i > 0 && better(h[(i - 1) / 2], x)) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = x;
}

/* Bucket samples: per (feature, bucket) the per_bucket smallest sampling
 * keys, kept in a heap with the largest key at the root. */
typedef struct sample {
    uint64_t key;
    int64_t row;
    float v;
} sample;

static void sample_push(sample *h, int *n, int cap, sample x)
{
    if (cap == 0)
        return;
    if (*n == cap) {
        if (x.key >= h[0].key)
            return;
        int i = 0;
        for (;;) {
            int c = 2 * i + 1;
            if (c >= cap)
                break;
            if (c + 1 < cap && h[c + 1].key > h[c].key)
                c++;
            if (x.key >= h[c].key)
                break;
            h[i] = h[c];
            i = c;
        }
        h[i] = x;
        return;
    }
    int i = (*n)++;
    while (i > 0 && h[(i - 1) / 2].key < x.key) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = x;
}

typedef struct profile_state {
    const profile_config *cfg;
    int M;
    int64_t N;                  /* rows profiled */
    int context_len;
    feature_state *fs;          /* [M] */
    ranked *top;                /* [M * top_n] */
    sample *samples;            /* [M * 5 * per_bucket] */
    sample *gaps;               /* [M * NEG_SPARE * n_negative]: negative window centres */
    spill sp;
} profile_state;

static void progress(const profile_state *st, const char *phase, int64_t done, int64_t total)
{
    if (st->cfg->progress)
        st->cfg->progress(st->cfg->progress_ctx, phase, done, total);
}

/* ---- Pass 1: encode, first statistics, top heaps, spill ------------------------ */

static void accumulate(profile_state *st, const sae_codes *codes, int64_t row0)
{
#pragma omp parallel
    {
        int lo, hi;
        my_features(st->M, &lo, &hi);
        for (int64_t r = 0; r < codes->n_rows; r++)
            for (int64_t e = codes->indptr[r]; e < codes->indptr[r + 1]; e++) {
                int f = codes->indices[e];
                float v = codes->values[e];
                if (f < lo || f >= hi || v == 0.0f)
                    continue;
                feature_state *s = &st->fs[f];
                s->min = s->count == 0 || v < s->min ? v : s->min;
                s->max = s->count == 0 || v > s->max ? v : s->max;
                s->count++;
                s->sum += v;
                heap_push(st->top + (int64_t)f * st->cfg->top_n, &s->n_top, st->cfg->top_n,
                          (ranked){v, row0 + r});
            }
    }
}

static int encode_pass(profile_state *st, const sae_model *m, const corpus *c, sae_error *err)
{
    const int d = m->cfg.d_in, B = st->cfg->batch;
    const bool has_tokens = corpus_get_info(c)->has_tokens;
    float *x = malloc((size_t)B * d * sizeof *x);
    int32_t *tok = malloc((size_t)B * sizeof *tok);
    spill_row *rbuf = malloc((size_t)B * sizeof *rbuf);
    entry *ebuf = NULL;
    int64_t ebuf_cap = 0;
    sae_codes codes;
    sae_codes_init(&codes);
    int rc = x && tok && rbuf ? SAE_OK : sae_fail(err, "profile: out of memory");
    for (int64_t start = 0; rc == SAE_OK && start < st->N; start += B) {
        int64_t n = st->N - start < B ? st->N - start : B;
        rc = corpus_read_rows(c, start, n, x, has_tokens ? tok : NULL, err);
        if (rc == SAE_OK)
            rc = sae_encode(m, x, n, &codes, err);
        if (rc == SAE_OK && codes.indptr[n] > ebuf_cap) {
            free(ebuf);
            ebuf_cap = codes.indptr[n];
            if (!(ebuf = malloc((size_t)ebuf_cap * sizeof *ebuf)))
                rc = sae_fail(err, "profile: out of memory");
        }
        if (rc != SAE_OK)
            break;
        accumulate(st, &codes, start);
        rc = spill_append(&st->sp, &codes, has_tokens ? tok : NULL, ebuf, rbuf, err);
        progress(st, "encode", start + n, st->N);
    }
    sae_codes_free(&codes);
    free(x);
    free(tok);
    free(rbuf);
    free(ebuf);
    return rc == SAE_OK ? spill_finish(&st->sp, err) : SAE_ERR;
}

/* ---- Quantiles: exact selection over the spill ------------------------------ */

/* The order statistics (0-based ranks) that numpy's linear quantiles need. */
static void needed_ranks(feature_state *s)
{
    s->n_ranks = 0;
    if (s->count == 0)
        return;
    for (int q = 0; q < PROFILE_N_QUANTILES; q++) {
        double h = profile_levels[q] * (double)(s->count - 1);
        int64_t j = (int64_t)floor(h);
        int64_t want[2] = {j, j + 1 < (int64_t)s->count ? j + 1 : j};
        for (int w = 0; w < 2; w++) {
            int i = s->n_ranks;
            while (i > 0 && s->ranks[i - 1] > want[w])
                i--;
            if (i > 0 && s->ranks[i - 1] == want[w])
                continue;
            memmove(&s->ranks[i + 1], &s->ranks[i], (size_t)(s->n_ranks - i) * sizeof *s->ranks);
            s->ranks[i] = want[w];
            s->n_ranks++;
        }
    }
}

/* numpy's _lerp, so that results agree to the last bit where they can. */
static void finish_quantiles(const feature_state *s, float *q)
{
    for (int l = 0; l < PROFILE_N_QUANTILES; l++) {
        if (s->count == 0) {
            q[l] = 0.0f;
            continue;
        }
        double h = profile_levels[l] * (double)(s->count - 1), t = h - floor(h);
        int64_t j = (int64_t)floor(h);
        double a = 0, b = 0;
        for (int i = 0; i < s->n_ranks; i++) {
            if (s->ranks[i] == j)
                a = b = s->rank_value[i];
            if (s->ranks[i] == j + 1)
                b = s->rank_value[i];
        }
        q[l] = (float)(t >= 0.5 ? b - (b - a) * (1.0 - t) : a + (b - a) * t);
    }
}

/* A pending range of one feature's sorted values: ranks [below, below+count)
 * are exactly the values in [lo, hi] (lo and hi are values of the data). */
typedef struct qitem {
    int f;
    float lo, hi;
    int64_t below, count;
    /* this round's work: collect when count <= COLLECT_MAX, else histogram */
    float *vals;                /* [2 count]: the values, then room to sort them */
    int64_t n_vals;
    int64_t *hist;
    float *hmin, *hmax;
} qitem;

typedef struct qround {
    profile_state *st;
    qitem *items;
    int n_items;
    int *first;                 /* [M + 1]: items of feature f are first[f] .. first[f+1]-1 */
} qround;

static int hist_bin(const qitem *it, float v)
{
    int b = (int)(((double)v - it->lo) / ((double)it->hi - it->lo) * HIST_BINS);
    return b < 0 ? 0 : b >= HIST_BINS ? HIST_BINS - 1 : b;
}

static void qround_visit(void *ctx, const spill_block *b)
{
    qround *q = ctx;
    const int64_t n = b->rows[b->r1 - b->r0].at - b->rows[0].at;
#pragma omp parallel
    {
        int lo, hi;
        my_features(q->st->M, &lo, &hi);
        for (int64_t i = 0; i < n; i++) {
            int f = b->e[i].f;
            float v = b->e[i].v;
            if (f < lo || f >= hi || v == 0.0f)
                continue;
            for (int k = q->first[f]; k < q->first[f + 1]; k++) {
                qitem *it = &q->items[k];
                if (v < it->lo || v > it->hi)
                    continue;
                if (it->vals) {
                    it->vals[it->n_vals++] = v;
                } else {
                    int h = hist_bin(it, v);
                    it->hmin[h] = it->hist[h] == 0 || v < it->hmin[h] ? v : it->hmin[h];
                    it->hmax[h] = it->hist[h] == 0 || v > it->hmax[h] ? v : it->hmax[h];
                    it->hist[h]++;
                }
            }
        }
    }
}

/* Sorts n floats (no NaN) with an LSD radix sort on order-preserving keys:
 * linear time, several times faster than qsort on the collections here.
 * tmp holds n floats. */
static void sort_floats(float *v, float *tmp, int64_t n)
{
    uint32_t *a = (uint32_t *)v, *b = (uint32_t *)tmp;
    for (int64_t i = 0; i < n; i++)     /* negative: flip all bits; else the sign bit */
        a[i] ^= a[i] >> 31 ? 0xffffffffu : 0x80000000u;
    for (int shift = 0; shift < 32; shift += 8) {
        int64_t count[257] = {0};
        for (int64_t i = 0; i < n; i++)
            count[((a[i] >> shift) & 0xff) + 1]++;
        for (int d = 0; d < 256; d++)
            count[d + 1] += count[d];
        for (int64_t i = 0; i < n; i++)
            b[count[(a[i] >> shift) & 0xff]++] = a[i];
        uint32_t *t = a;
        a = b;
        b = t;
    }
    for (int64_t i = 0; i < n; i++)     /* four passes: the result is back in v */
        a[i] ^= a[i] >> 31 ? 0x80000000u : 0xffffffffu;
}

static int cmp_item(const void *a, const void *b)
{
    const qitem *x = a, *y = b;
    if (x->f != y->f)
        return (x->f > y->f) - (x->f < y->f);
    return (x->below > y->below) - (x->below < y->below);
}

/* Ranks of s within [below, below + count) get value v. */
static void resolve_range(feature_state *s, int64_t below, int64_t count, const float *sorted,
                          float v)
{
    for (int i = 0; i < s->n_ranks; i++)
        if (s->ranks[i] >= below && s->ranks[i] < below + count)
            s->rank_value[i] = sorted ? sorted[s->ranks[i] - below] : v;
}

static bool range_needed(const feature_state *s, int64_t below, int64_t count)
{
    for (int i = 0; i < s->n_ranks; i++)
        if (s->ranks[i] >= below && s->ranks[i] < below + count)
            return true;
    return false;
}

static size_t item_bytes(const qitem *it)
{
    return it->count <= COLLECT_MAX ? 2 * (size_t)it->count * sizeof(float)
                                    : HIST_BINS * (sizeof(int64_t) + 2 * sizeof(float));
}

static int item_alloc(qitem *it)
{
    if (it->count <= COLLECT_MAX)
        return (it->vals = malloc(2 * (size_t)it->count * sizeof(float))) ? SAE_OK : SAE_ERR;
    it->hist = calloc(HIST_BINS, sizeof *it->hist);
    it->hmin = malloc(HIST_BINS * sizeof *it->hmin);
    it->hmax = malloc(HIST_BINS * sizeof *it->hmax);
    return it->hist && it->hmin && it->hmax ? SAE_OK : SAE_ERR;
}

static void item_free(qitem *it)
{
    free(it->vals);
    free(it->hist);
    free(it->hmin);
    free(it->hmax);
    it->vals = it->hmin = it->hmax = NULL;
    it->hist = NULL;
}

/* After a round's pass: collected items resolve their ranks; histogram items
 * become narrower items for the bins holding needed ranks. */
static void item_settle(profile_state *st, qitem *it, qitem *next, int *n_next)
{
    feature_state *s = &st->fs[it->f];
    if (it->vals) {
        sort_floats(it->vals, it->vals + it->count, it->n_vals);
        resolve_range(s, it->below, it->count, it->vals, 0.0f);
        return;
    }
    int64_t below = it->below;
    for (int h = 0; h < HIST_BINS; h++) {
        if (it->hist[h] > 0 && range_needed(s, below, it->hist[h]))
            next[(*n_next)++] = (qitem){.f = it->f, .lo = it->hmin[h], .hi = it->hmax[h],
                                        .below = below, .count = it->hist[h]};
        below += it->hist[h];
    }
}

/* One round over the items [0, n) (sorted by feature), within the budget;
 * the rest wait. Returns how many were taken in *taken. */
static int quantile_round(profile_state *st, qitem *items, int n, int *taken, int *first,
                          sae_error *err)
{
    size_t bytes = 0;
    int k = 0;
    while (k < n && (k == 0 || bytes + item_bytes(&items[k]) <= ROUND_BUDGET))
        bytes += item_bytes(&items[k++]);
    int rc = SAE_OK;
    for (int i = 0; i < k && rc == SAE_OK; i++)
        if (item_alloc(&items[i]) != SAE_OK)
            rc = sae_fail(err, "profile: out of memory for quantile selection");
    memset(first, 0, (size_t)(st->M + 1) * sizeof *first);
    for (int i = 0; i < k; i++)
        first[items[i].f + 1]++;
    for (int f = 0; f < st->M; f++)
        first[f + 1] += first[f];
    qround q = {st, items, k, first};
    if (rc == SAE_OK)
        rc = spill_pass(&st->sp, st->M, qround_visit, &q, err);
    *taken = k;
    return rc;
}

static int quantile_passes(profile_state *st, sae_error *err)
{
    /* Every item may split into at most one item per needed rank. */
    int cap = st->M * MAX_RANKS + 1, n = 0, rc = SAE_OK, round = 0;
    qitem *items = malloc((size_t)cap * sizeof *items), *next = malloc((size_t)cap * sizeof *next);
    int *first = malloc((size_t)(st->M + 1) * sizeof *first);
    if (!items || !next || !first)
        rc = sae_fail(err, "profile: out of memory");
    for (int f = 0; rc == SAE_OK && f < st->M; f++) {
        feature_state *s = &st->fs[f];
        needed_ranks(s);
        if (s->count > 0)
            items[n++] = (qitem){.f = f, .lo = s->min, .hi = s->max, .count = (int64_t)s->count};
    }
    while (rc == SAE_OK && n > 0) {
        /* Ranges of one value need no pass. */
        int kept = 0;
        for (int i = 0; i < n; i++) {
            if (items[i].lo == items[i].hi)
                resolve_range(&st->fs[items[i].f], items[i].below, items[i].count, NULL,
                              items[i].lo);
            else
                items[kept++] = items[i];
        }
        n = kept;
        if (n == 0)
            break;
        qsort(items, (size_t)n, sizeof *items, cmp_item);
        int taken = 0, n_next = 0;
        rc = quantile_round(st, items, n, &taken, first, err);
        for (int i = 0; i < taken; i++) {
            if (rc == SAE_OK)
                item_settle(st, &items[i], next, &n_next);
            item_free(&items[i]);
        }
        memcpy(next + n_next, items + taken, (size_t)(n - taken) * sizeof *items);
        n = n_next + n - taken;
        qitem *t = items;
        items = next;
        next = t;
        progress(st, "quantiles", ++round, 0);
    }
    for (int f = 0; f < st->M; f++) {
        feature_state *s = &st->fs[f];
        float q[PROFILE_N_QUANTILES];
        finish_quantiles(s, q);
        for (int b = 0; b < PROFILE_N_BUCKETS - 1; b++)
            s->bounds[b] = q[bound_level[b]];
    }
    free(items);
    free(next);
    free(first);
    return rc;
}

/* ---- Bucket samples -------------------------------------------------------------- */

static int bucket_of(const feature_state *s, float v)
{
    int b = 0;
    while (b < PROFILE_N_BUCKETS - 1 && v >= s->bounds[b])
        b++;
    return b;
}

static int cmp_row(const void *a, const void *b)
{
    int64_t x = ((const ranked *)a)->row, y = ((const ranked *)b)->row;
    return (x > y) - (x < y);
}

static bool is_top(const profile_state *st, int f, int64_t row)
{
    const ranked *t = st->top + (int64_t)f * st->cfg->top_n;
    int lo = 0, hi = st->fs[f].n_top;    /* sorted by row before this pass */
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (t[mid].row < row)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < st->fs[f].n_top && t[lo].row == row;
}

/* Negative candidates: runs of rows [a, b] where f does not fire, long enough
 * for a window. Each run offers one window centre at a drawn offset; the runs
 * with the smallest keys win. (Windows moved to fit their document may cover
 * activations: the example pass rejects those, hence the spares.) */
static void gap_candidate(profile_state *st, int f, int64_t a, int64_t b)
{
    int64_t need = st->cfg->window, len = b - a + 1;
    if (st->context_len > 0 && st->context_len < need)
        need = st->context_len;
    if (len < need || st->cfg->n_negative == 0)
        return;
    uint64_t key = draw(st->cfg->seed, TAG_NEGATIVE, f, a);
    int64_t centre = a + (int64_t)((key >> 16) % (uint64_t)(len - need + 1)) + need / 2;
    int cap = NEG_SPARE * st->cfg->n_negative;
    sample_push(st->gaps + (int64_t)f * cap, &st->fs[f].n_gap, cap, (sample){key, centre, 0});
}

static void samples_visit(void *ctx, const spill_block *b)
{
    profile_state *st = ctx;
    const int R = st->cfg->per_bucket;
#pragma omp parallel
    {
        int lo, hi;
        my_features(st->M, &lo, &hi);
        for (int64_t r = b->r0; r < b->r1; r++)
            for (int64_t i = b->rows[r - b->r0].at; i < b->rows[r - b->r0 + 1].at; i++) {
                const entry *e = &b->e[i - b->rows[0].at];
                if (e->f < lo || e->f >= hi || e->v == 0.0f)
                    continue;
                feature_state *s = &st->fs[e->f];
                gap_candidate(st, e->f, s->last_fire + 1, r - 1);
                s->last_fire = r;
                int bk = bucket_of(s, e->v);
                s->bucket_count[bk]++;
                if (is_top(st, e->f, r))
                    continue;
                sample x = {draw(st->cfg->seed, TAG_BUCKET, e->f, r), r, e->v};
                sample_push(st->samples + ((int64_t)e->f * PROFILE_N_BUCKETS + bk) * R,
                            &s->n_sample[bk], R, x);
            }
    }
}

static int sample_pass(profile_state *st, sae_error *err)
{
    for (int f = 0; f < st->M; f++)
        qsort(st->top + (int64_t)f * st->cfg->top_n, (size_t)st->fs[f].n_top, sizeof(ranked),
              cmp_row);
    for (int f = 0; f < st->M; f++)
        st->fs[f].last_fire = -1;
    if (spill_pass(&st->sp, st->M, samples_visit, st, err) != SAE_OK)
        return SAE_ERR;
    for (int f = 0; f < st->M; f++)
        gap_candidate(st, f, st->fs[f].last_fire + 1, st->N - 1);
    return SAE_OK;
}

/* ---- Examples: windows read back from the spill ----------------------------------- */

typedef struct window_scratch {
    spill_row *rows;            /* [window + 1] */
    entry *e;
    int64_t cap;
} window_scratch;

/* The window around row p (profile.h: moved to fit its document). */
static void window_of(const profile_state *st, int64_t p, int64_t *start, int64_t *end,
                      int64_t *doc)
{
    int64_t L = st->context_len, W = st->cfg->window;
    *doc = L > 0 ? p / L : 0;
    int64_t d0 = L > 0 ? *doc * L : 0, d1 = L > 0 && d0 + L < st->N ? d0 + L : st->N;
    int64_t s = p - W / 2 > d0 ? p - W / 2 : d0;
    int64_t e = s + W < d1 ? s + W : d1;
    *start = e - W > d0 ? e - W : d0;
    *end = e;
}

/* Fills ex with the window around p: tokens and feature f's values. */
static int build_window(const profile_state *st, int f, int64_t p, window_scratch *ws,
                        profile_example *ex, sae_error *err)
{
    int64_t start, end, L = st->context_len;
    window_of(st, p, &start, &end, &ex->doc);
    int n = (int)(end - start);
    if (read_at(st->sp.rows, ws->rows, sizeof *ws->rows, n + 1, start, err) != SAE_OK)
        return SAE_ERR;
    const int64_t e0 = ws->rows[0].at, ne = ws->rows[n].at - e0;
    if (ne > ws->cap) {
        free(ws->e);
        ws->cap = ne;
        if (!(ws->e = malloc((size_t)ne * sizeof *ws->e)))
            return sae_fail(err, "profile: out of memory");
    }
    if (read_at(st->sp.entries, ws->e, sizeof *ws->e, ne, e0, err) != SAE_OK)
        return SAE_ERR;
    ex->row = p;
    ex->n = n;
    ex->pos = (int)(L > 0 ? p - ex->doc * L : p);
    ex->start = (int)(L > 0 ? start - ex->doc * L : start);
    ex->max_index = 0;
    for (int i = 0; i < n; i++) {
        ex->tokens[i] = ws->rows[i].token;
        ex->values[i] = 0.0f;
        for (int64_t k = ws->rows[i].at; k < ws->rows[i + 1].at; k++)
            if (ws->e[k - e0].f == f)
                ex->values[i] = ws->e[k - e0].v;
        if (ex->values[i] > ex->values[ex->max_index])
            ex->max_index = i;
    }
    ex->value = ex->values[p - start];
    ex->max_value = ex->values[ex->max_index];
    return SAE_OK;
}

static int cmp_better(const void *a, const void *b)
{
    ranked x = *(const ranked *)a, y = *(const ranked *)b;
    return better(x, y) ? -1 : better(y, x);
}

static int cmp_key(const void *a, const void *b)
{
    uint64_t x = ((const sample *)a)->key, y = ((const sample *)b)->key;
    return (x > y) - (x < y);
}

static bool all_zero(const profile_example *ex)
{
    for (int i = 0; i < ex->n; i++)
        if (ex->values[i] != 0.0f)
            return false;
    return true;
}

/* Negative windows: the candidates in key order whose window f never fires
 * in, each window once. */
static int negatives(profile_state *st, int f, profile_example *ex, window_scratch *ws,
                     int *n_out, sae_error *err)
{
    sample *cand = st->gaps + (int64_t)f * NEG_SPARE * st->cfg->n_negative;
    qsort(cand, (size_t)st->fs[f].n_gap, sizeof *cand, cmp_key);
    int n = 0;
    for (int i = 0; n < st->cfg->n_negative && i < st->fs[f].n_gap; i++) {
        if (build_window(st, f, cand[i].row, ws, &ex[n], err) != SAE_OK)
            return SAE_ERR;
        bool seen = false;
        for (int j = 0; j < n; j++)
            seen |= ex[j].start == ex[n].start && ex[j].doc == ex[n].doc;
        n += all_zero(&ex[n]) && !seen;
    }
    *n_out = n;
    return SAE_OK;
}

/* All examples of feature f into ex (room for top_n + 5 per_bucket + n_negative,
 * their arrays already pointing at storage), described by out. */
static int feature_examples(profile_state *st, int f, profile_example *ex,
                            window_scratch *ws, profile_feature *out, sae_error *err)
{
    const feature_state *s = &st->fs[f];
    const int N = st->cfg->top_n, R = st->cfg->per_bucket;
    ranked *top = st->top + (int64_t)f * N;    /* sorted by row until now */
    qsort(top, (size_t)s->n_top, sizeof *top, cmp_better);
    out->top = ex;
    out->n_top = s->n_top;
    for (int i = 0; i < s->n_top; i++)
        if (build_window(st, f, top[i].row, ws, ex++, err) != SAE_OK)
            return SAE_ERR;
    for (int b = 0; b < PROFILE_N_BUCKETS; b++) {
        sample *smp = st->samples + ((int64_t)f * PROFILE_N_BUCKETS + b) * R;
        qsort(smp, (size_t)s->n_sample[b], sizeof *smp, cmp_key);
        out->bucket[b] = ex;
        out->n_bucket[b] = s->n_sample[b];
        for (int i = 0; i < s->n_sample[b]; i++)
            if (build_window(st, f, smp[i].row, ws, ex++, err) != SAE_OK)
                return SAE_ERR;
    }
    out->negative = ex;
    return negatives(st, f, ex, ws, &out->n_negative, err);
}

static void stats_of(const feature_state *s, profile_stats *out)
{
    *out = (profile_stats){.count = s->count,
                           .mean = s->count ? s->sum / (double)s->count : 0.0,
                           .min = s->min, .max = s->max};
    finish_quantiles(s, out->quantiles);
    memcpy(out->bucket_count, s->bucket_count, sizeof out->bucket_count);
}

/* Room for the examples of FEATURE_BLOCK features. */
typedef struct example_slab {
    profile_example *ex;
    int32_t *tokens;
    float *values;
    int per_feature;
} example_slab;

static int slab_init(example_slab *sl, const profile_config *cfg, sae_error *err)
{
    sl->per_feature = cfg->top_n + PROFILE_N_BUCKETS * cfg->per_bucket + cfg->n_negative;
    size_t n = (size_t)FEATURE_BLOCK * (size_t)(sl->per_feature > 0 ? sl->per_feature : 1);
    sl->ex = malloc(n * sizeof *sl->ex);
    sl->tokens = malloc(n * (size_t)cfg->window * sizeof *sl->tokens);
    sl->values = malloc(n * (size_t)cfg->window * sizeof *sl->values);
    if (!sl->ex || !sl->tokens || !sl->values)
        return sae_fail(err, "profile: out of memory");
    for (size_t i = 0; i < n; i++) {
        sl->ex[i].tokens = sl->tokens + i * (size_t)cfg->window;
        sl->ex[i].values = sl->values + i * (size_t)cfg->window;
    }
    return SAE_OK;
}

static void slab_free(example_slab *sl)
{
    free(sl->ex);
    free(sl->tokens);
    free(sl->values);
}

/* Examples of features [f0, f0 + nf), built in parallel into the slab. */
static int build_block(profile_state *st, example_slab *sl, int f0, int nf,
                       profile_feature *pf, sae_error *err)
{
    bool failed = false;
#pragma omp parallel
    {
        window_scratch ws = {malloc(((size_t)st->cfg->window + 1) * sizeof(spill_row)), NULL, 0};
        sae_error e = {{0}};
#pragma omp for schedule(dynamic)
        for (int i = 0; i < nf; i++) {
            int rc = ws.rows ? feature_examples(st, f0 + i, sl->ex + (size_t)i * sl->per_feature,
                                                  &ws, &pf[i], &e)
                               : sae_fail(&e, "profile: out of memory");
            if (rc != SAE_OK) {
#pragma omp critical
                if (!failed) {
                    failed = true;
                    *err = e;
                }
            }
        }
        free(ws.rows);
        free(ws.e);
    }
    return failed ? SAE_ERR : SAE_OK;
}

static int example_pass(profile_state *st, profile_sink sink, void *sink_ctx, sae_error *err)
{
    example_slab sl;
    profile_feature pf[FEATURE_BLOCK];
    int rc = slab_init(&sl, st->cfg, err);
    for (int f0 = 0; rc == SAE_OK && f0 < st->M; f0 += FEATURE_BLOCK) {
        int nf = st->M - f0 < FEATURE_BLOCK ? st->M - f0 : FEATURE_BLOCK;
        rc = build_block(st, &sl, f0, nf, pf, err);
        for (int i = 0; rc == SAE_OK && i < nf; i++) {
            profile_stats stats;
            stats_of(&st->fs[f0 + i], &stats);
            pf[i].feature = f0 + i;
            pf[i].stats = &stats;
            rc = sink(sink_ctx, &pf[i], err);
        }
        progress(st, "examples", f0 + nf, st->M);
    }
    slab_free(&sl);
    return rc;
}

/* ---- The run ------------------------------------------------------------------------ */

static int check_config(const sae_model *m, const corpus *c, const profile_config *cfg,
                        sae_error *err)
{
    if (cfg->top_n < 0 || cfg->per_bucket < 0 || cfg->n_negative < 0)
        return sae_fail(err, "profile: --top, --per-bucket and --negatives must be >= 0");
    if (cfg->window < 1 || cfg->window > 4096)
        return sae_fail(err, "profile: --window must be in 1..4096, got %d", cfg->window);
    if (cfg->batch < 1)
        return sae_fail(err, "profile: the batch must be >= 1");
    if (corpus_get_info(c)->d_in != m->cfg.d_in)
        return sae_fail(err, "profile: the corpus has d_in %d, the model %d",
                        corpus_get_info(c)->d_in, m->cfg.d_in);
    if (profile_rows(c, cfg) < 1)
        return sae_fail(err, "profile: the corpus has no rows");
    return SAE_OK;
}

int profile_run(const sae_model *m, const corpus *c, const profile_config *cfg,
                profile_sink sink, void *sink_ctx, sae_error *err)
{
    if (check_config(m, c, cfg, err) != SAE_OK)
        return SAE_ERR;
    profile_state st = {.cfg = cfg, .M = m->cfg.d_sae, .N = profile_rows(c, cfg),
                        .context_len = corpus_get_info(c)->context_len};
    st.fs = calloc((size_t)st.M, sizeof *st.fs);
    st.top = malloc((size_t)st.M * (size_t)(cfg->top_n ? cfg->top_n : 1) * sizeof *st.top);
    st.samples = malloc((size_t)st.M * PROFILE_N_BUCKETS *
                        (size_t)(cfg->per_bucket ? cfg->per_bucket : 1) * sizeof *st.samples);
    st.gaps = malloc((size_t)st.M * NEG_SPARE * (size_t)(cfg->n_negative ? cfg->n_negative : 1) *
                     sizeof *st.gaps);
    int rc = st.fs && st.top && st.samples && st.gaps ? SAE_OK
                                                       : sae_fail(err, "profile: out of memory");
    if (rc == SAE_OK)
        rc = spill_open(&st.sp, cfg->spill_dir ? cfg->spill_dir : ".", err);
    if (rc == SAE_OK) {
        if ((rc = encode_pass(&st, m, c, err)) == SAE_OK &&
            (rc = quantile_passes(&st, err)) == SAE_OK &&
            (rc = sample_pass(&st, err)) == SAE_OK)
            rc = example_pass(&st, sink, sink_ctx, err);
        spill_close(&st.sp);
    }
    free(st.fs);
    free(st.top);
    free(st.samples);
    free(st.gaps);
    return rc;
}

/* ---- Calibration ---------------------------------------------------------------------- */

double profile_bucket_centre(int bucket)
{
    return 10.0 + 20.0 * bucket;
}

void profile_calibrate(const profile_score *scores, size_t n, profile_calibration *out)
{
    double sum[PROFILE_N_BUCKETS] = {0}, sq[PROFILE_N_BUCKETS] = {0}, sx = 0, sy = 0;
    *out = (profile_calibration){.n_pairs = (int)n};
    for (size_t i = 0; i < n; i++) {
        out->n[scores[i].bucket]++;
        sum[scores[i].bucket] += scores[i].score;
        sx += profile_bucket_centre(scores[i].bucket);
        sy += scores[i].score;
    }
    for (int b = 0; b < PROFILE_N_BUCKETS; b++)
        out->mean[b] = out->n[b] ? sum[b] / out->n[b] : NAN;
    /* Second pass: deviations from the means, which is the stable way. */
    double mx = sx / (double)n, my = sy / (double)n, sxy = 0, sxx = 0, syy = 0;
    for (size_t i = 0; i < n; i++) {
        int b = scores[i].bucket;
        double dx = profile_bucket_centre(b) - mx, dy = scores[i].score - my;
        double d = scores[i].score - out->mean[b];
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
        sq[b] += d * d;
    }
    out->pearson_r = sxx > 0 && syy > 0 ? sxy / sqrt(sxx * syy) : NAN;
    for (int b = 0; b < PROFILE_N_BUCKETS; b++) {
        double half = out->n[b] > 1 ? 1.96 * sqrt(sq[b] / (out->n[b] - 1) / out->n[b]) : NAN;
        out->ci_low[b] = out->mean[b] - half;
        out->ci_high[b] = out->mean[b] + half;
    }
}
