/* profile.c - the profile pass (profile.h says what it computes and how). */
#include <math.h>
#include <omp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "profile.h"
#include "util.h"

#define HIST_BINS 256
#define BLOCK_ROWS 65536                /* rows per read of the spill */
#define BLOCK_ENTRIES ((int64_t)1 << 20)
#define FEATURE_BLOCK 64                /* features whose examples are built together */
#define PREFETCH_WINDOWS 8              /* how far ahead the example sweep prefetches */
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
                          .batch = 4096, .collect_max = (int64_t)1 << 22, .memory_mb = 64,
                          .spill_dir = "."};
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

/* The salt of a sampling purpose (tag) under a seed. */
static uint64_t salt_of(uint64_t seed, uint64_t tag)
{
    return splitmix64(seed ^ splitmix64(tag));
}

/* The sampling key of (feature, row) under a salt: one mixing round of a
 * value distinct for every (feature, row), a bijection, so keys never tie. */
static uint64_t draw(uint64_t salt, int f, int64_t row)
{
    return splitmix64(salt ^ ((uint64_t)f << 40) ^ (uint64_t)row);
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
    const entry *e;             /* inside the mapping below */
    void *map;                  /* this block's pages of the entries file, or NULL */
    size_t map_len;
    int64_t cap;
} spill_block;

static int block_init(spill_block *b, int M, sae_error *err)
{
    *b = (spill_block){.cap = BLOCK_ENTRIES > M ? BLOCK_ENTRIES : M};   /* any row fits */
    if (!(b->rows = malloc((BLOCK_ROWS + 1) * sizeof *b->rows)))
        return sae_fail(err, "profile: out of memory");
    return SAE_OK;
}

static void block_unmap(spill_block *b)
{
    if (b->map)
        munmap(b->map, b->map_len);
    b->map = NULL;
}

static void block_free(spill_block *b)
{
    free(b->rows);
    block_unmap(b);
}

/* Maps entries [e0, e1) of the spill. A mapping rather than a read: the
 * sweeps pass over the spill several times, and a copy of every block was a
 * third of each sweep. Only one block is mapped at a time, so the mapped
 * pages in the resident set stay bounded. */
static int block_map(const spill *sp, spill_block *b, int64_t e0, int64_t e1, sae_error *err)
{
    block_unmap(b);
    if (e1 == e0) {
        b->e = NULL;
        return SAE_OK;
    }
    const off_t page = (off_t)sysconf(_SC_PAGESIZE), at = (off_t)(e0 * (int64_t)sizeof(entry));
    const off_t base = at - at % page;
    b->map_len = (size_t)(e1 * (int64_t)sizeof(entry) - base);
    b->map = mmap(NULL, b->map_len, PROT_READ, MAP_SHARED | MAP_POPULATE, fileno(sp->entries),
                  base);
    if (b->map == MAP_FAILED) {
        b->map = NULL;
        return sae_fail(err, "profile: mapping the temporary code file failed");
    }
    b->e = (const entry *)((const char *)b->map + (at - base));
    return SAE_OK;
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
    return block_map(sp, b, b->rows[0].at, b->rows[nr].at, err);
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

/* Pass 1 touches the first cache line for every activation. */
typedef struct feature_state {
    _Alignas(64) uint64_t count;
    double sum;
    float min, max;
    float top_floor;            /* the root of a full top heap, else -inf */
    int n_top;
    int n_gap;                  /* negative candidates */
    int n_sample[PROFILE_N_BUCKETS];
    int n_ranks;
    int64_t ranks[MAX_RANKS];   /* order statistics the quantiles need, ascending */
    double rank_value[MAX_RANKS];
} feature_state;

/* What the sample pass touches for every activation, in one cache line. */
typedef struct sample_state {
    int64_t last_fire;          /* row of the latest activation seen so far */
    float bounds[PROFILE_N_BUCKETS - 1];
    uint64_t bucket_count[PROFILE_N_BUCKETS];
} sample_state;

_Static_assert(sizeof(sample_state) == 64, "one cache line");

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
    sample_state *ss;           /* [M], 64-byte aligned */
    int64_t gap_need;           /* rows a negative window needs (INT64_MAX: none wanted) */
    ranked *top;                /* [M * top_n] */
    sample *samples;            /* [M * 5 * per_bucket] */
    uint64_t *sample_cut;       /* [M * 5]: the root key of a full sample heap, else max */
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
                /* rows only grow here, so a value equal to a full heap's root
                 * (a lower row) cannot get in */
                if (v > s->top_floor) {
                    ranked *h = st->top + (int64_t)f * st->cfg->top_n;
                    heap_push(h, &s->n_top, st->cfg->top_n, (ranked){v, row0 + r});
                    if (s->n_top == st->cfg->top_n)
                        s->top_floor = h[0].v;
                }
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
    /* this round's work: collect when count <= collect_max, else histogram */
    float *vals;                /* [count]: the values */
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

/* Sorts the values the round collected, in parallel over items. */
static int sort_collected(qitem *items, int n, sae_error *err)
{
    int64_t most = 1, failed = 0;
    for (int i = 0; i < n; i++)
        most = items[i].vals && items[i].n_vals > most ? items[i].n_vals : most;
#pragma omp parallel reduction(| : failed)
    {
        float *tmp = malloc((size_t)most * sizeof *tmp);
        failed |= !tmp;
#pragma omp for schedule(dynamic, 8)
        for (int i = 0; i < n; i++)
            if (tmp && items[i].vals)
                sort_floats(items[i].vals, tmp, items[i].n_vals);
        free(tmp);
    }
    return failed ? sae_fail(err, "profile: out of memory") : SAE_OK;
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

static size_t item_bytes(const qitem *it, int64_t collect_max)
{
    return it->count <= collect_max ? (size_t)it->count * sizeof(float)
                                    : HIST_BINS * (sizeof(int64_t) + 2 * sizeof(float));
}

/* A collecting item takes its values from the round's arena (one large
 * allocation, so its memory goes back to the system when the round ends). */
static int item_alloc(qitem *it, int64_t collect_max, float **arena)
{
    if (it->count <= collect_max) {
        it->vals = *arena;
        *arena += it->count;
        return SAE_OK;
    }
    it->hist = calloc(HIST_BINS, sizeof *it->hist);
    it->hmin = malloc(HIST_BINS * sizeof *it->hmin);
    it->hmax = malloc(HIST_BINS * sizeof *it->hmax);
    return it->hist && it->hmin && it->hmax ? SAE_OK : SAE_ERR;
}

static void item_free(qitem *it)
{
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
    if (it->vals) {     /* sorted already (quantile_passes) */
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
 * the rest wait. Returns how many were taken in *taken, and the arena of the
 * collected values (the caller frees it) in *arena. */
static int quantile_round(profile_state *st, qitem *items, int n, int *taken, int *first,
                          float **arena, sae_error *err)
{
    size_t bytes = 0, collected = 0;
    int k = 0;
    const int64_t cmax = st->cfg->collect_max;
    const size_t budget = (size_t)st->cfg->memory_mb << 20;
    while (k < n && (k == 0 || bytes + item_bytes(&items[k], cmax) <= budget)) {
        collected += items[k].count <= cmax ? (size_t)items[k].count : 0;
        bytes += item_bytes(&items[k++], cmax);
    }
    int rc = (*arena = malloc(collected ? collected * sizeof(float) : 1))
                 ? SAE_OK
                 : sae_fail(err, "profile: out of memory for quantile selection");
    float *next = *arena;
    for (int i = 0; i < k && rc == SAE_OK; i++)
        if (item_alloc(&items[i], cmax, &next) != SAE_OK)
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
        float *arena = NULL;
        rc = quantile_round(st, items, n, &taken, first, &arena, err);
        if (rc == SAE_OK)
            rc = sort_collected(items, taken, err);
        for (int i = 0; i < taken; i++) {
            if (rc == SAE_OK)
                item_settle(st, &items[i], next, &n_next);
            item_free(&items[i]);
        }
        free(arena);
        memcpy(next + n_next, items + taken, (size_t)(n - taken) * sizeof *items);
        n = n_next + n - taken;
        qitem *t = items;
        items = next;
        next = t;
        progress(st, "quantiles", ++round, 0);
    }
    for (int f = 0; f < st->M; f++) {
        float q[PROFILE_N_QUANTILES];
        finish_quantiles(&st->fs[f], q);
        for (int b = 0; b < PROFILE_N_BUCKETS - 1; b++)
            st->ss[f].bounds[b] = q[bound_level[b]];
    }
    free(items);
    free(next);
    free(first);
    return rc;
}

/* ---- Bucket samples -------------------------------------------------------------- */

/* The bounds ascend, so the bucket is how many of them v reaches. */
static int bucket_of(const sample_state *s, float v)
{
    int b = 0;
    for (int i = 0; i < PROFILE_N_BUCKETS - 1; i++)
        b += v >= s->bounds[i];
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
    int64_t need = st->gap_need, len = b - a + 1;
    if (len < need)
        return;
    uint64_t key = draw(salt_of(st->cfg->seed, TAG_NEGATIVE), f, a);
    int64_t centre = a + (int64_t)((key >> 16) % (uint64_t)(len - need + 1)) + need / 2;
    int cap = NEG_SPARE * st->cfg->n_negative;
    sample_push(st->gaps + (int64_t)f * cap, &st->fs[f].n_gap, cap, (sample){key, centre, 0});
}

static void samples_visit(void *ctx, const spill_block *b)
{
    profile_state *st = ctx;
    const int R = st->cfg->per_bucket;
    const uint64_t salt = salt_of(st->cfg->seed, TAG_BUCKET);
#pragma omp parallel
    {
        int lo, hi;
        my_features(st->M, &lo, &hi);
        for (int64_t r = b->r0; r < b->r1; r++)
            for (int64_t i = b->rows[r - b->r0].at; i < b->rows[r - b->r0 + 1].at; i++) {
                const entry *e = &b->e[i - b->rows[0].at];
                if (e->f < lo || e->f >= hi || e->v == 0.0f)
                    continue;
                sample_state *s = &st->ss[e->f];
                if (r - 1 - s->last_fire >= st->gap_need)
                    gap_candidate(st, e->f, s->last_fire + 1, r - 1);
                s->last_fire = r;
                int bk = bucket_of(s, e->v);
                s->bucket_count[bk]++;
                int64_t hb = (int64_t)e->f * PROFILE_N_BUCKETS + bk;
                sample x = {draw(salt, e->f, r), r, e->v};
                int *n_sample = &st->fs[e->f].n_sample[bk];
                if ((x.key < st->sample_cut[hb] || *n_sample < R) && !is_top(st, e->f, r)) {
                    sample_push(st->samples + hb * R, n_sample, R, x);
                    if (*n_sample == R)
                        st->sample_cut[hb] = st->samples[hb * R].key;
                }
            }
    }
}

static int sample_pass(profile_state *st, sae_error *err)
{
    for (int f = 0; f < st->M; f++)
        qsort(st->top + (int64_t)f * st->cfg->top_n, (size_t)st->fs[f].n_top, sizeof(ranked),
              cmp_row);
    st->gap_need = st->cfg->window;
    if (st->context_len > 0 && st->context_len < st->gap_need)
        st->gap_need = st->context_len;
    if (st->cfg->n_negative == 0)
        st->gap_need = INT64_MAX;
    for (int f = 0; f < st->M; f++)
        st->ss[f].last_fire = -1;
    if (spill_pass(&st->sp, st->M, samples_visit, st, err) != SAE_OK)
        return SAE_ERR;
    for (int f = 0; f < st->M; f++)
        gap_candidate(st, f, st->ss[f].last_fire + 1, st->N - 1);
    return SAE_OK;
}

/* ---- Examples: windows filled by sweeps over the spill --------------------------- */

/* A window to fill: its absolute start, the feature it shows, its cells. */
typedef struct window_req {
    int64_t start;
    int32_t f;
    int32_t n;
    int32_t *tokens;
    float *values;
} window_req;

/* The examples of a block of features: each feature's slots (top, buckets,
 * negative candidates) and one request per slot in use, sorted by start. */
typedef struct example_slab {
    profile_example *ex;
    int32_t *tokens;
    float *values;
    window_req *req, *req_tmp;
    profile_feature *pf;
    int per_feature;            /* top_n + 5 per_bucket + NEG_SPARE n_negative */
    int features;               /* features per block */
} example_slab;

static int slab_init(example_slab *sl, const profile_state *st, sae_error *err)
{
    const profile_config *cfg = st->cfg;
    sl->per_feature = cfg->top_n + PROFILE_N_BUCKETS * cfg->per_bucket + NEG_SPARE * cfg->n_negative;
    if (sl->per_feature < 1)
        sl->per_feature = 1;
    size_t slot_bytes = (size_t)cfg->window * (sizeof(int32_t) + sizeof(float)) +
                        sizeof(profile_example) + 2 * sizeof(window_req);
    /* half the budget: the store's write batch is alive beside the windows */
    const size_t budget = (size_t)cfg->memory_mb << 19;
    int64_t fit = (int64_t)(budget / (slot_bytes * (size_t)sl->per_feature));
    sl->features = fit < 1 ? 1 : fit > st->M ? st->M : (int)fit;
    size_t n = (size_t)sl->features * (size_t)sl->per_feature;
    sl->ex = malloc(n * sizeof *sl->ex);
    sl->tokens = malloc(n * (size_t)cfg->window * sizeof *sl->tokens);
    sl->values = malloc(n * (size_t)cfg->window * sizeof *sl->values);
    sl->req = malloc(n * sizeof *sl->req);
    sl->req_tmp = malloc(n * sizeof *sl->req_tmp);
    sl->pf = malloc((size_t)sl->features * sizeof *sl->pf);
    if (!sl->ex || !sl->tokens || !sl->values || !sl->req || !sl->req_tmp || !sl->pf)
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
    free(sl->req);
    free(sl->req_tmp);
    free(sl->pf);
}

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

/* Describes ex as feature f's window around p, to be filled by the sweep. */
static window_req plan_window(const profile_state *st, int f, int64_t p, profile_example *ex)
{
    int64_t start, end, L = st->context_len;
    window_of(st, p, &start, &end, &ex->doc);
    ex->row = p;
    ex->n = (int)(end - start);
    ex->pos = (int)(L > 0 ? p - ex->doc * L : p);
    ex->start = (int)(L > 0 ? start - ex->doc * L : start);
    return (window_req){start, f, ex->n, ex->tokens, ex->values};
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

/* Sorts req[0..n) by start (>= 0), stably, through tmp[n]: LSD radix,
 * 11 bits a pass, as many passes as the largest start needs. qsort was
 * most of the example pass. */
static void sort_by_start(window_req *req, window_req *tmp, int64_t n)
{
    int64_t max = 0;
    for (int64_t i = 0; i < n; i++)
        max = req[i].start > max ? req[i].start : max;
    for (int shift = 0; shift == 0 || max >> shift; shift += 11) {
        int64_t count[2048] = {0};
        for (int64_t i = 0; i < n; i++)
            count[(req[i].start >> shift) & 2047]++;
        for (int64_t d = 0, at = 0; d < 2048; d++) {
            int64_t c = count[d];
            count[d] = at;
            at += c;
        }
        for (int64_t i = 0; i < n; i++)
            tmp[count[(req[i].start >> shift) & 2047]++] = req[i];
        memcpy(req, tmp, (size_t)n * sizeof *req);
    }
}

/* Plans feature f's windows into its slots ex: the top examples in
 * descending order, each bucket's samples and the negative candidates in key
 * order. out gets the counts (negatives: the candidates, for now). */
static void plan_feature(profile_state *st, int f, profile_example *ex, window_req *req,
                         int64_t *n_req, profile_feature *out)
{
    const feature_state *s = &st->fs[f];
    const int N = st->cfg->top_n, R = st->cfg->per_bucket;
    ranked *top = st->top + (int64_t)f * N;    /* sorted by row until now */
    qsort(top, (size_t)s->n_top, sizeof *top, cmp_better);
    *out = (profile_feature){.feature = f, .top = ex, .n_top = s->n_top};
    for (int i = 0; i < s->n_top; i++, ex++)
        req[(*n_req)++] = plan_window(st, f, top[i].row, ex);
    for (int b = 0; b < PROFILE_N_BUCKETS; b++) {
        sample *smp = st->samples + ((int64_t)f * PROFILE_N_BUCKETS + b) * R;
        qsort(smp, (size_t)s->n_sample[b], sizeof *smp, cmp_key);
        out->bucket[b] = ex;
        out->n_bucket[b] = s->n_sample[b];
        for (int i = 0; i < s->n_sample[b]; i++, ex++)
            req[(*n_req)++] = plan_window(st, f, smp[i].row, ex);
    }
    sample *cand = st->gaps + (int64_t)f * NEG_SPARE * st->cfg->n_negative;
    qsort(cand, (size_t)s->n_gap, sizeof *cand, cmp_key);
    out->negative = ex;
    out->n_negative = s->n_gap;
    for (int i = 0; i < s->n_gap; i++, ex++)
        req[(*n_req)++] = plan_window(st, f, cand[i].row, ex);
}

/* A feature's value at a row. */
typedef struct stamped {
    int64_t row;
    float v;
} stamped;

/* The sweep of one block of features: every requested window gets its tokens
 * and its feature's values from the rows it covers. */
typedef struct sweep {
    const window_req *req;      /* sorted by start */
    int64_t n_req;
    int M, window;
    stamped *value_of;          /* [threads * M] */
} sweep;

/* Rows [r0, r1) of spill block b, with value_of (this thread's [M]: f's
 * value at row r is v where row == r, else zero, so it needs no reset). Each
 * window cell belongs to one row, so threads with disjoint rows never write
 * the same cell. A window's cells are prefetched a few windows ahead: the
 * sweep is otherwise bound by the first write to each of them. */
static void sweep_rows(const sweep *sw, const spill_block *b, int64_t r0, int64_t r1,
                       stamped *value_of)
{
    int64_t lo = 0, hi = sw->n_req;
    while (lo < hi) {           /* the first window that may cover r0 */
        int64_t mid = lo + (hi - lo) / 2;
        if (sw->req[mid].start <= r0 - sw->window)
            lo = mid + 1;
        else
            hi = mid;
    }
    hi = lo;
    const entry *e_base = b->e - b->rows[0].at;
    for (int64_t r = r0; r < r1; r++) {
        const spill_row *row = &b->rows[r - b->r0];
        for (int64_t i = row[0].at; i < row[1].at; i++)
            value_of[e_base[i].f] = (stamped){r, e_base[i].v};
        while (lo < sw->n_req && sw->req[lo].start <= r - sw->window)
            lo++;
        while (hi < sw->n_req && sw->req[hi].start <= r) {
            if (hi + PREFETCH_WINDOWS < sw->n_req) {
                const window_req *q = &sw->req[hi + PREFETCH_WINDOWS];
                for (int c = 0; c < q->n; c += 16) {
                    __builtin_prefetch(q->tokens + c, 1);
                    __builtin_prefetch(q->values + c, 1);
                }
            }
            hi++;
        }
        for (int64_t w = lo; w < hi; w++) {
            const window_req *q = &sw->req[w];
            int64_t at = r - q->start;
            if (at < q->n) {
                q->tokens[at] = row->token;
                q->values[at] = value_of[q->f].row == r ? value_of[q->f].v : 0.0f;
            }
        }
    }
}

static void sweep_visit(void *ctx, const spill_block *b)
{
    const sweep *sw = ctx;
#pragma omp parallel
    {
        int t = omp_get_thread_num(), T = omp_get_num_threads();
        int64_t n = b->r1 - b->r0;
        sweep_rows(sw, b, b->r0 + n * t / T, b->r0 + n * (t + 1) / T,
                   sw->value_of + (size_t)t * (size_t)sw->M);
    }
}

/* The sampled position's value and the window's maximum, once filled. */
static void finish_window(profile_example *ex)
{
    ex->max_index = 0;
    for (int i = 1; i < ex->n; i++)
        if (ex->values[i] > ex->values[ex->max_index])
            ex->max_index = i;
    ex->max_value = ex->values[ex->max_index];
    ex->value = ex->values[ex->pos - ex->start];
}

static bool all_zero(const profile_example *ex)
{
    for (int i = 0; i < ex->n; i++)
        if (ex->values[i] != 0.0f)
            return false;
    return true;
}

/* Keeps, in key order, the first n_negative candidates whose window f never
 * fires in, each window once. (Windows moved to fit their document may cover
 * activations: hence the spares.) */
static void pick_negatives(const profile_state *st, profile_feature *pf)
{
    profile_example *cand = (profile_example *)pf->negative;
    int n = 0;
    for (int i = 0; n < st->cfg->n_negative && i < pf->n_negative; i++) {
        bool seen = false;
        for (int j = 0; j < n; j++)
            seen |= cand[j].start == cand[i].start && cand[j].doc == cand[i].doc;
        if (all_zero(&cand[i]) && !seen) {
            profile_example keep = cand[i];     /* swaps the storage too */
            cand[i] = cand[n];
            cand[n++] = keep;
        }
    }
    pf->n_negative = n;
}

/* Examples of features [f0, f0 + nf): plan, one sweep over the spill, finish. */
static int build_block(profile_state *st, example_slab *sl, int f0, int nf, sae_error *err)
{
    int64_t n_req = 0;
    for (int i = 0; i < nf; i++)
        plan_feature(st, f0 + i, sl->ex + (size_t)i * sl->per_feature, sl->req, &n_req,
                     &sl->pf[i]);
    sort_by_start(sl->req, sl->req_tmp, n_req);
    const size_t cells = (size_t)omp_get_max_threads() * (size_t)st->M;
    sweep sw = {sl->req, n_req, st->M, st->cfg->window, malloc(cells * sizeof(stamped))};
    if (!sw.value_of)
        return sae_fail(err, "profile: out of memory");
    for (size_t i = 0; i < cells; i++)
        sw.value_of[i] = (stamped){-1, 0.0f};   /* no row yet */
    int rc = spill_pass(&st->sp, st->M, sweep_visit, &sw, err);
    free(sw.value_of);
    if (rc != SAE_OK)
        return SAE_ERR;
#pragma omp parallel for schedule(dynamic, 16)
    for (int i = 0; i < nf; i++) {
        profile_feature *pf = &sl->pf[i];
        int n = pf->n_top + pf->n_negative;
        for (int b = 0; b < PROFILE_N_BUCKETS; b++)
            n += pf->n_bucket[b];
        for (int j = 0; j < n; j++)     /* the slots in use are the first n */
            finish_window((profile_example *)pf->top + j);
        pick_negatives(st, pf);
    }
    return SAE_OK;
}

static void stats_of(const feature_state *s, const sample_state *ss, profile_stats *out)
{
    *out = (profile_stats){.count = s->count,
                           .mean = s->count ? s->sum / (double)s->count : 0.0,
                           .min = s->min, .max = s->max};
    finish_quantiles(s, out->quantiles);
    memcpy(out->bucket_count, ss->bucket_count, sizeof out->bucket_count);
}

/* As many features per block as the budget holds; one sweep per block. */
static int example_pass(profile_state *st, profile_sink sink, void *sink_ctx, sae_error *err)
{
    example_slab sl = {0};
    int rc = slab_init(&sl, st, err);
    for (int f0 = 0; rc == SAE_OK && f0 < st->M; f0 += sl.features) {
        int nf = st->M - f0 < sl.features ? st->M - f0 : sl.features;
        rc = build_block(st, &sl, f0, nf, err);
        for (int i = 0; rc == SAE_OK && i < nf; i++) {
            profile_stats stats;
            stats_of(&st->fs[f0 + i], &st->ss[f0 + i], &stats);
            sl.pf[i].stats = &stats;
            rc = sink(sink_ctx, &sl.pf[i], err);
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
    if (cfg->memory_mb < 1 || cfg->memory_mb > (1 << 20))
        return sae_fail(err, "profile: --memory-mb must be in 1..1048576, got %d",
                        cfg->memory_mb);
    if (cfg->collect_max < 1 || cfg->collect_max > ((int64_t)1 << 30))
        return sae_fail(err, "profile: --collect-max must be in 1..2^30, got %lld",
                        (long long)cfg->collect_max);
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
    st.fs = sae_calloc_aligned((size_t)st.M, sizeof *st.fs);
    st.ss = sae_calloc_aligned((size_t)st.M, sizeof *st.ss);
    st.top = malloc((size_t)st.M * (size_t)(cfg->top_n ? cfg->top_n : 1) * sizeof *st.top);
    st.samples = malloc((size_t)st.M * PROFILE_N_BUCKETS *
                        (size_t)(cfg->per_bucket ? cfg->per_bucket : 1) * sizeof *st.samples);
    st.gaps = malloc((size_t)st.M * NEG_SPARE * (size_t)(cfg->n_negative ? cfg->n_negative : 1) *
                     sizeof *st.gaps);
    st.sample_cut = malloc((size_t)st.M * PROFILE_N_BUCKETS * sizeof *st.sample_cut);
    int rc = st.fs && st.ss && st.top && st.samples && st.gaps && st.sample_cut
                 ? SAE_OK
                 : sae_fail(err, "profile: out of memory");
    for (int64_t i = 0; rc == SAE_OK && i < st.M; i++)   /* empty heaps pass everything */
        st.fs[i].top_floor = cfg->top_n > 0 ? -INFINITY : INFINITY;
    for (int64_t i = 0; rc == SAE_OK && i < (int64_t)st.M * PROFILE_N_BUCKETS; i++)
        st.sample_cut[i] = cfg->per_bucket > 0 ? UINT64_MAX : 0;
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
    free(st.ss);
    free(st.top);
    free(st.samples);
    free(st.gaps);
    free(st.sample_cut);
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
