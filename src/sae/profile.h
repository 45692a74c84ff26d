/* profile.h - per-feature statistics of an SAE over an activation corpus:
 * count, density, mean, min, max, exact quantiles, percentile buckets (DESIGN.md
 * sec. 3), top activating positions, uniform random examples per bucket and
 * non-activating windows; and the calibration table over interpretability
 * scores per bucket. Plain structs and a callback: the caller decides where
 * results go (saectl writes them to the store).
 *
 * Definitions. Over the profiled rows (the first max_tokens of the corpus),
 * the activations of feature f are its values in the sparse codes; zeros do
 * not count. count, mean, min and max are over those non-zero values. The
 * quantile at level p is numpy's default ("linear"): with the n values sorted
 * as v_0 <= ... <= v_{n-1} and h = p (n - 1), it is v_j + (h - j)(v_{j+1} - v_j)
 * for j = floor(h), computed exactly (no sketch). Levels: 0.1 .. 0.9, 0.99.
 * Buckets split at q20 < q40 < q60 < q80: bucket b holds the values v with
 * bound_{b-1} <= v < bound_b (bucket 0 from the minimum, bucket 4 to the
 * maximum).
 *
 * Examples are windows of at most `window` consecutive positions of one
 * document, around a sampled position p: [p - window/2, p - window/2 + window)
 * moved (not cut) to fit inside the document, cut only when the document is
 * shorter. Top examples are the top_n positions by value (ties: lower row
 * first), in descending order. Bucket examples are per_bucket positions drawn
 * uniformly without replacement among the bucket's positions that are not top
 * examples: the ones with the smallest keys splitmix64(seed, f, row), so a
 * rerun (any thread count) draws the same. Negative examples are windows where
 * f is zero everywhere, around positions drawn the same way.
 *
 * How (one encode pass, bounded memory): pass 1 encodes the corpus in batches,
 * keeps per-feature count / sum / min / max / top-N heaps, and spills the
 * non-zero codes (8 bytes each) and a record per row (its first code and its
 * token) to unlinked temporary files in spill_dir. Quantiles are then found by exact selection over the
 * spilled codes: each round narrows every pending (feature, rank range) with a
 * 256-bin histogram, or, once at most collect_max values remain in range,
 * collects them and sorts. A pass over the spill draws the bucket samples;
 * then, for as many features as half of memory_mb holds, one sweep over the spill
 * fills every window of those features (each row's codes go to the windows
 * that cover it). Memory is O(d_sae * (top_n + 5 per_bucket)) plus fixed
 * budgets, independent of corpus length; disk is 8 bytes per non-zero plus 16
 * per row. */
#ifndef SAE_PROFILE_H
#define SAE_PROFILE_H

#include <stddef.h>
#include <stdint.h>

#include "dataset.h"
#include "sae.h"

#define PROFILE_N_QUANTILES 10
#define PROFILE_N_BUCKETS 5

/* 0.1, 0.2, ..., 0.9, 0.99; bucket bounds are levels 1, 3, 5, 7. */
extern const double profile_levels[PROFILE_N_QUANTILES];
extern const char *const profile_level_names[PROFILE_N_QUANTILES];   /* "q10" ... "q99" */

typedef struct profile_config {
    int top_n;                  /* default 32 */
    int per_bucket;             /* default 20 */
    int n_negative;             /* default 20 */
    int window;                 /* default 32 */
    int64_t max_tokens;         /* 0: the whole corpus */
    int batch;                  /* rows per sae_encode call, default 4096 */
    int64_t collect_max;        /* a feature's quantile values sorted at once; more are
                                   narrowed by histograms first. Default 2^22 */
    int memory_mb;              /* working memory: a quantile round's values, and (half
                                   of it) the windows of one sweep. Default 64 */
    uint64_t seed;
    const char *spill_dir;      /* temporary files (unlinked at once); default "." */
    /* Called from the calling thread now and then: phase is "encode",
     * "quantiles", "samples" or "examples". */
    void (*progress)(void *ctx, const char *phase, int64_t done, int64_t total);
    void *progress_ctx;
} profile_config;

void profile_config_default(profile_config *c);

typedef struct profile_stats {
    uint64_t count;
    double mean;
    float min, max;             /* 0 when count is 0 */
    float quantiles[PROFILE_N_QUANTILES];   /* 0 when count is 0 */
    uint64_t bucket_count[PROFILE_N_BUCKETS];
} profile_stats;

typedef struct profile_example {
    int64_t row;                /* corpus row of the sampled position */
    int64_t doc;                /* row / context_len (0 without documents) */
    int pos;                    /* the sampled position within its document */
    int start;                  /* window start within the document */
    int n;                      /* window length */
    int max_index;              /* first argmax of values */
    float max_value, value;     /* values[max_index]; the sampled position's value */
    int32_t *tokens;            /* [n]; -1 when the corpus has no tokens */
    float *values;              /* [n]: the feature's activation at each position */
} profile_example;

/* What the sink receives for one feature; pointers valid during the call. */
typedef struct profile_feature {
    int feature;
    const profile_stats *stats;
    const profile_example *top;                 /* descending */
    int n_top;
    const profile_example *bucket[PROFILE_N_BUCKETS];
    int n_bucket[PROFILE_N_BUCKETS];
    const profile_example *negative;
    int n_negative;
} profile_feature;

/* Called once per feature, in order 0 .. d_sae-1, from the calling thread,
 * at the end of the run. Returning SAE_ERR (with err filled) stops the run. */
typedef int (*profile_sink)(void *ctx, const profile_feature *f, sae_error *err);

/* Rows profiled for a corpus and config: min(n_rows, max_tokens). */
int64_t profile_rows(const corpus *c, const profile_config *cfg);

int profile_run(const sae_model *m, const corpus *c, const profile_config *cfg,
                profile_sink sink, void *sink_ctx, sae_error *err);

/* ---- Calibration (the seed paper's table 2) --------------------------------- */

typedef struct profile_score {
    int bucket;                 /* 0..4 */
    double score;
} profile_score;

typedef struct profile_calibration {
    int n[PROFILE_N_BUCKETS];   /* scores per bucket */
    double mean[PROFILE_N_BUCKETS];
    double ci_low[PROFILE_N_BUCKETS], ci_high[PROFILE_N_BUCKETS]; /* NaN when n < 2 */
    double pearson_r;           /* NaN when undefined */
    int n_pairs;
} profile_calibration;

/* Bucket b's centre percentile: 10, 30, 50, 70, 90. */
double profile_bucket_centre(int bucket);

/* Per bucket: mean score and the 95% interval mean +- 1.96 s / sqrt(n) (s the
 * sample standard deviation, ddof 1); Pearson r between centre percentile and
 * score over all pairs. */
void profile_calibrate(const profile_score *scores, size_t n, profile_calibration *out);

#endif
