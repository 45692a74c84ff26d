/* synth.c - synthetic activation corpora with a known ground truth.
 *
 * The generative model (D = d_in, G = n_features, W = words_per_feature):
 *
 *   Dictionary   d_g = z_g / ||z_g||, z_g ~ N(0, I_D): G random unit directions.
 *   Firing       feature g fires at a token independently of everything else
 *                with base probability p_g = min(0.5, c (g + 1)^-zipf): feature
 *                ids are frequency ranks (Zipf-like, skewed). c is solved for so
 *                that the expected number of active features per token, pairs
 *                included, is k_mean.
 *   Pairs        floor(correlated * G / 2) disjoint (leader, follower) pairs from a
 *                seeded shuffle of the features (leader = the lower id). When the
 *                leader fires, the follower also fires with probability 0.8 (on
 *                top of its own base firing), so the follower's marginal frequency
 *                is p_b + (1 - p_b) 0.8 p_a. `frequencies` holds these marginals.
 *   Magnitudes   an active feature's coefficient is lognormal, positive and
 *                right-skewed: a = exp(mu_g + sigma_g xi), xi ~ N(0, 1), with
 *                mu_g ~ U(-0.5, 0.5) per feature and sigma_g = 0.5.
 *   Activation   x_t = sum over active g of a_tg d_g + noise * eps_t, eps_t ~ N(0, I_D).
 *   Tokens       the vocabulary is n_filler filler words, then W trigger words per
 *                feature (feature g owns ids n_filler + g W ... + W - 1). The token
 *                at t is one of the trigger words (uniform) of its dominant
 *                feature, the active one with the largest coefficient (ties to
 *                the lower id), or a uniform filler word when nothing fires.
 *                So the top examples of a latent that learned feature g should
 *                show g's words. Words are pseudo-words of CV syllables ("bako",
 *                "tiru"): id i is word number (i A + B) mod 70^L, A odd prime, B
 *                seeded, which keeps them distinct and unlike their neighbours.
 *   Documents    every context_len rows start a document (recorded in
 *                dataset.json; the rows themselves are i.i.d.).
 *
 * Randomness: Philox4x32-10, one key per purpose (seed XOR a purpose constant),
 * counters made of the indices a draw belongs to: (row, feature) for
 * magnitudes, (row, coordinate) for noise, (block of 4096 rows, feature, draw)
 * for firing, which is sampled by geometric gaps per feature so a block costs
 * O(4096 k_mean + G), not O(4096 G). No draw depends on the shard layout or
 * the thread count, so the rows are a function of the config alone. */
#include "synth.h"

#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <Random123/philox.h>
#include <jansson.h>

#include "dataset.h"
#include "util.h"

#define BLOCK_ROWS 4096
#define P_MAX 0.5
#define FOLLOW_PROB 0.8
#define MAG_SIGMA 0.5
#define MAG_MU_SPREAD 0.5
#define SHARD_BYTES ((int64_t)64 << 20)
#define WORD_MULT 2654435761ull     /* prime, so coprime with 70^L */
#define PI 3.14159265358979323846

static const char CONSONANTS[] = "bdfgklmnprstvz";
static const char VOWELS[] = "aeiou";
#define N_SYLLABLES ((int)(sizeof CONSONANTS - 1) * (int)(sizeof VOWELS - 1))

enum purpose { K_DICT = 1, K_MU, K_PAIRS, K_FIRE, K_FOLLOW, K_MAG, K_NOISE, K_TOKEN, K_WORDS };

/* ---- Randomness ---------------------------------------------------------- */

static uint64_t purpose_key(uint64_t seed, enum purpose p)
{
    return seed ^ ((uint64_t)p * 0x9E3779B97F4A7C15ull);
}

static philox4x32_ctr_t draw(uint64_t key, uint64_t a, uint32_t b, uint32_t c)
{
    philox4x32_ctr_t ctr = {{(uint32_t)a, (uint32_t)(a >> 32), b, c}};
    philox4x32_key_t k = {{(uint32_t)key, (uint32_t)(key >> 32)}};
    return philox4x32(ctr, k);
}

/* A uniform double in (0, 1), never 0 or 1, from 64 random bits. */
static double unit_open(uint32_t hi, uint32_t lo)
{
    uint64_t u = ((uint64_t)hi << 32) | lo;
    return ((double)(u >> 11) + 0.5) * 0x1p-53;
}

/* Box-Muller: two independent N(0, 1) from one draw. */
static void normal_pair(philox4x32_ctr_t r, double out[2])
{
    double rad = sqrt(-2.0 * log(unit_open(r.v[0], r.v[1])));
    double ang = 2.0 * PI * unit_open(r.v[2], r.v[3]);
    out[0] = rad * cos(ang);
    out[1] = rad * sin(ang);
}

/* Four N(0, 1) in single precision from one draw (Box-Muller on 24-bit
 * uniforms, so tails end near 5.9 sigma): plenty for additive noise, which is
 * D draws per row and the bulk of the generator's time. */
static void normal_quad(philox4x32_ctr_t r, float out[4])
{
    for (int i = 0; i < 4; i += 2) {
        float u1 = ((float)(r.v[i] >> 8) + 0.5f) * 0x1p-24f;
        float u2 = (float)(r.v[i + 1] >> 8) * 0x1p-24f;
        float rad = sqrtf(-2.0f * logf(u1)), ang = 2.0f * (float)PI * u2;
        out[i] = rad * cosf(ang);
        out[i + 1] = rad * sinf(ang);
    }
}

/* ---- Configuration ------------------------------------------------------- */

void synth_config_default(synth_config *c)
{
    *c = (synth_config){.context_len = 64, .zipf = 1.0f, .k_mean = 4.0f, .dtype = ST_F32,
                        .words_per_feature = 3, .n_filler = 64};
}

int synth_config_validate(const synth_config *c, sae_error *err)
{
    if (c->d_in < 1 || c->d_in > 65536)
        return sae_fail(err, "--d-in must be in [1, 65536], got %d", c->d_in);
    if (c->n_features < 1 || c->n_features > (1 << 20))
        return sae_fail(err, "--features must be in [1, 1048576], got %d", c->n_features);
    if (c->n_tokens < 1 || c->n_tokens > ((int64_t)1 << 40))
        return sae_fail(err, "--tokens must be in [1, 2^40], got %lld", (long long)c->n_tokens);
    if (c->context_len < 1 || c->context_len > (1 << 24))
        return sae_fail(err, "--context-len must be in [1, 16777216], got %d", c->context_len);
    if (!isfinite(c->noise) || c->noise < 0)
        return sae_fail(err, "--noise must be a finite number >= 0, got %g", c->noise);
    if (!(c->correlated >= 0 && c->correlated <= 1))
        return sae_fail(err, "--correlated must be in [0, 1], got %g", c->correlated);
    if (!(c->zipf >= 0 && c->zipf <= 8))
        return sae_fail(err, "--zipf must be in [0, 8], got %g", c->zipf);
    /* features/4 keeps k_mean reachable with every p_g capped at 0.5; 1024
     * keeps a block's firings (4096 rows x k_mean, x2 with followers) in int32. */
    double k_max = 0.25 * c->n_features < 1024 ? 0.25 * c->n_features : 1024;
    if (!(c->k_mean > 0 && c->k_mean <= k_max))
        return sae_fail(err, "--k-mean must be in (0, min(features/4, 1024) = %g], got %g",
                        k_max, c->k_mean);
    if (c->dtype != ST_F32 && c->dtype != ST_F16 && c->dtype != ST_BF16)
        return sae_fail(err, "--dtype must be float32, float16 or bfloat16");
    if (c->shard_tokens < 0)
        return sae_fail(err, "--shard-tokens must be >= 1 (or 0 for the default), got %lld",
                        (long long)c->shard_tokens);
    if (c->words_per_feature < 1 || c->words_per_feature > 16)
        return sae_fail(err, "--words-per-feature must be in [1, 16], got %d",
                        c->words_per_feature);
    if (c->n_filler < 1 || c->n_filler > 4096)
        return sae_fail(err, "--filler-words must be in [1, 4096], got %d", c->n_filler);
    return SAE_OK;
}

/* ---- The ground truth ---------------------------------------------------- */

typedef struct truth {
    const synth_config *cfg;
    float *dict;                /* [G, D] */
    double *base_p;             /* [G] */
    double *log1m_p;            /* [G] log(1 - p_g), for geometric gaps */
    double *freq;               /* [G] marginal firing frequency */
    double *mu;                 /* [G] */
    int32_t *pairs;             /* [n_pairs, 2] (leader, follower) */
    int n_pairs;
    int32_t *follower;          /* [G] follower of leader g, or -1 */
    int32_t *partner;           /* [G] the other member of g's pair, or -1 */
    int64_t vocab_size;         /* n_filler + G W */
    char **vocab;
} truth;

static void truth_free(truth *t)
{
    free(t->dict);
    free(t->base_p);
    free(t->log1m_p);
    free(t->freq);
    free(t->mu);
    free(t->pairs);
    free(t->follower);
    free(t->partner);
    for (int64_t i = 0; t->vocab && i < t->vocab_size; i++)
        free(t->vocab[i]);
    free(t->vocab);
}

static void make_dictionary(truth *t)
{
    int D = t->cfg->d_in;
    uint64_t key = purpose_key(t->cfg->seed, K_DICT);
    for (int g = 0; g < t->cfg->n_features; g++) {
        float *row = t->dict + (size_t)g * (size_t)D;
        double norm2;
        uint32_t attempt = 0;
        do {    /* a zero vector has no direction: redraw (never in practice) */
            norm2 = 0;
            for (int j = 0; j < D; j += 2) {
                double z[2];
                normal_pair(draw(key, (uint64_t)g, (uint32_t)j, attempt), z);
                row[j] = (float)z[0];
                if (j + 1 < D)
                    row[j + 1] = (float)z[1];
            }
            for (int j = 0; j < D; j++)
                norm2 += (double)row[j] * row[j];
            attempt++;
        } while (norm2 < 1e-12);
        float inv = (float)(1.0 / sqrt(norm2));
        for (int j = 0; j < D; j++)
            row[j] *= inv;
    }
}

/* Disjoint pairs from a seeded Fisher-Yates shuffle of the feature ids. */
static void make_pairs(truth *t, int32_t *order)
{
    int G = t->cfg->n_features;
    uint64_t key = purpose_key(t->cfg->seed, K_PAIRS);
    for (int g = 0; g < G; g++) {
        order[g] = g;
        t->follower[g] = t->partner[g] = -1;
    }
    for (int i = G - 1; i > 0; i--) {
        philox4x32_ctr_t r = draw(key, (uint64_t)i, 0, 0);
        int j = (int)((((uint64_t)r.v[0] << 32) | r.v[1]) % (uint64_t)(i + 1));
        int32_t tmp = order[i];
        order[i] = order[j];
        order[j] = tmp;
    }
    t->n_pairs = (int)floor((double)t->cfg->correlated * G / 2);
    for (int i = 0; i < t->n_pairs; i++) {
        int32_t a = order[2 * i], b = order[2 * i + 1];
        int32_t lead = a < b ? a : b, follow = a < b ? b : a;
        t->pairs[2 * i] = lead;
        t->pairs[2 * i + 1] = follow;
        t->follower[lead] = follow;
        t->partner[lead] = follow;
        t->partner[follow] = lead;
    }
}

/* Base probabilities for scale c, and the expected active count they give. */
static double set_probabilities(truth *t, double c)
{
    int G = t->cfg->n_features;
    double zipf = t->cfg->zipf, total = 0;
    for (int g = 0; g < G; g++) {
        double p = c * pow(g + 1.0, -zipf);
        t->base_p[g] = p < P_MAX ? p : P_MAX;
    }
    for (int g = 0; g < G; g++)
        t->freq[g] = t->base_p[g];
    for (int i = 0; i < t->n_pairs; i++) {
        int a = t->pairs[2 * i], b = t->pairs[2 * i + 1];
        t->freq[b] = t->base_p[b] + (1 - t->base_p[b]) * FOLLOW_PROB * t->base_p[a];
    }
    for (int g = 0; g < G; g++)
        total += t->freq[g];
    return total;
}

/* Solves for the scale c giving k_mean expected active features: the count
 * grows monotonically with c, so bisection. */
static int calibrate(truth *t, sae_error *err)
{
    double want = t->cfg->k_mean;
    double hi = P_MAX * pow((double)t->cfg->n_features, t->cfg->zipf);  /* all capped */
    double most = set_probabilities(t, hi);
    if (most < want)
        return sae_fail(err, "--k-mean %g is more than %g features (each capped at "
                        "probability %g) can give", want, most, P_MAX);
    double lo = 0;
    for (int it = 0; it < 200; it++) {
        double mid = 0.5 * (lo + hi);
        if (set_probabilities(t, mid) < want)
            lo = mid;
        else
            hi = mid;
    }
    set_probabilities(t, hi);
    for (int g = 0; g < t->cfg->n_features; g++)
        t->log1m_p[g] = log1p(-t->base_p[g]);
    return SAE_OK;
}

static void make_magnitudes(truth *t)
{
    uint64_t key = purpose_key(t->cfg->seed, K_MU);
    for (int g = 0; g < t->cfg->n_features; g++) {
        philox4x32_ctr_t r = draw(key, (uint64_t)g, 0, 0);
        t->mu[g] = MAG_MU_SPREAD * (2.0 * unit_open(r.v[0], r.v[1]) - 1.0);
    }
}

/* Word number w of 70^len as CV syllables. */
static void spell(uint64_t w, int len, char *out)
{
    for (int s = 0; s < len; s++) {
        int syl = (int)(w % N_SYLLABLES);
        w /= N_SYLLABLES;
        out[2 * s] = CONSONANTS[syl / (int)(sizeof VOWELS - 1)];
        out[2 * s + 1] = VOWELS[syl % (int)(sizeof VOWELS - 1)];
    }
    out[2 * len] = '\0';
}

static int make_vocab(truth *t, sae_error *err)
{
    const synth_config *c = t->cfg;
    t->vocab_size = c->n_filler + (int64_t)c->n_features * c->words_per_feature;
    /* At least 4x more words than we need so the multiplier scatters them. */
    int len = 2;
    uint64_t space = (uint64_t)N_SYLLABLES * N_SYLLABLES;
    while (space < 4 * (uint64_t)t->vocab_size) {
        space *= N_SYLLABLES;
        len++;
    }
    philox4x32_ctr_t r = draw(purpose_key(c->seed, K_WORDS), 0, 0, 0);
    uint64_t offset = (((uint64_t)r.v[0] << 32) | r.v[1]) % space;
    if (!(t->vocab = calloc((size_t)t->vocab_size, sizeof *t->vocab)))
        return sae_fail(err, "synth: out of memory for %lld words", (long long)t->vocab_size);
    for (int64_t i = 0; i < t->vocab_size; i++) {
        char buf[64];
        uint64_t w = ((uint64_t)i % space * (WORD_MULT % space) + offset) % space;
        spell(w, len, buf);
        if (!(t->vocab[i] = strdup(buf)))
            return sae_fail(err, "synth: out of memory for words");
    }
    return SAE_OK;
}

static int truth_make(truth *t, const synth_config *cfg, sae_error *err)
{
    memset(t, 0, sizeof *t);
    t->cfg = cfg;
    size_t G = (size_t)cfg->n_features, D = (size_t)cfg->d_in;
    int32_t *order = malloc(G * sizeof *order);
    t->dict = malloc(G * D * sizeof *t->dict);
    t->base_p = malloc(G * sizeof *t->base_p);
    t->log1m_p = malloc(G * sizeof *t->log1m_p);
    t->freq = malloc(G * sizeof *t->freq);
    t->mu = malloc(G * sizeof *t->mu);
    t->pairs = malloc((G / 2 + 1) * 2 * sizeof *t->pairs);
    t->follower = malloc(G * sizeof *t->follower);
    t->partner = malloc(G * sizeof *t->partner);
    int rc = SAE_OK;
    if (!order || !t->dict || !t->base_p || !t->log1m_p || !t->freq || !t->mu || !t->pairs ||
        !t->follower || !t->partner)
        rc = sae_fail(err, "synth: out of memory for the ground truth of %zu features", G);
    if (rc == SAE_OK) {
        make_dictionary(t);
        make_pairs(t, order);
        make_magnitudes(t);
        rc = calibrate(t, err);
    }
    free(order);
    if (rc == SAE_OK)
        rc = make_vocab(t, err);
    if (rc != SAE_OK)
        truth_free(t);
    return rc;
}

/* ---- Firing, block by block ---------------------------------------------- */

/* The active features and coefficients of rows [first_row, first_row + rows)
 * in CSR form: row r owns entries [indptr[r], indptr[r + 1]). */
typedef struct block_codes {
    int64_t first_row;
    int rows;
    int32_t indptr[BLOCK_ROWS + 1];
    int32_t *feat;
    float *coef;
    /* scratch: base firings as (row, feature) events */
    int32_t *ev_row, *ev_feat;
    int64_t n_ev, cap_ev;
} block_codes;

static void block_free(block_codes *b)
{
    free(b->feat);
    free(b->coef);
    free(b->ev_row);
    free(b->ev_feat);
}

static int push_event(block_codes *b, int32_t row, int32_t g)
{
    if (b->n_ev == b->cap_ev) {
        int64_t cap = b->cap_ev ? 2 * b->cap_ev : 4 * BLOCK_ROWS;
        int32_t *r = realloc(b->ev_row, (size_t)cap * sizeof *r);
        if (r)
            b->ev_row = r;
        int32_t *f = realloc(b->ev_feat, (size_t)cap * sizeof *f);
        if (f)
            b->ev_feat = f;
        if (!r || !f)
            return SAE_ERR;
        b->cap_ev = cap;
    }
    b->ev_row[b->n_ev] = row;
    b->ev_feat[b->n_ev++] = g;
    return SAE_OK;
}

/* Base firings of feature g in the block: the gaps between firings of a
 * Bernoulli(p) sequence are geometric, floor(log u / log(1 - p)). */
static int fire_feature(const truth *t, uint64_t key, int64_t block, int g, block_codes *b)
{
    if (t->base_p[g] <= 0)
        return SAE_OK;
    int64_t pos = -1;
    for (uint32_t j = 0;; j++) {
        philox4x32_ctr_t r = draw(key, (uint64_t)block, (uint32_t)g, j);
        double gap = floor(log(unit_open(r.v[0], r.v[1])) / t->log1m_p[g]);
        if (gap >= (double)(b->rows - 1 - pos))
            return SAE_OK;
        pos += 1 + (int64_t)gap;
        if (push_event(b, (int32_t)pos, g) != SAE_OK)
            return SAE_ERR;
    }
}

static float coefficient(const truth *t, uint64_t key, int64_t row, int g)
{
    double z[2];
    normal_pair(draw(key, (uint64_t)row, (uint32_t)g, 0), z);
    return (float)exp(t->mu[g] + MAG_SIGMA * z[0]);
}

/* Counting sort of the events by row (stable: features stay ascending), then
 * followers and coefficients row by row. */
static void assemble_rows(const truth *t, block_codes *b)
{
    uint64_t kfollow = purpose_key(t->cfg->seed, K_FOLLOW);
    uint64_t kmag = purpose_key(t->cfg->seed, K_MAG);
    int32_t start[BLOCK_ROWS + 1] = {0};
    for (int64_t e = 0; e < b->n_ev; e++)
        start[b->ev_row[e] + 1]++;
    for (int r = 0; r < b->rows; r++)
        start[r + 1] += start[r];
    int32_t fill[BLOCK_ROWS];
    memcpy(fill, start, (size_t)b->rows * sizeof *fill);
    /* Sorted base features go after the room for the output (2 n_ev). */
    int32_t *sorted = b->feat + 2 * b->n_ev;
    for (int64_t e = 0; e < b->n_ev; e++)
        sorted[fill[b->ev_row[e]]++] = b->ev_feat[e];
    int32_t out = 0;
    for (int r = 0; r < b->rows; r++) {
        int64_t row = b->first_row + r;
        b->indptr[r] = out;
        for (int32_t i = start[r]; i < start[r + 1]; i++)
            b->feat[out++] = sorted[i];
        /* Followers: pairs are disjoint, so a follower is added at most once;
         * skip it when it already fired on its own. */
        int32_t row_end = out;
        for (int32_t i = b->indptr[r]; i < row_end; i++) {
            int32_t f = t->follower[b->feat[i]];
            if (f < 0)
                continue;
            bool present = false;
            for (int32_t k = b->indptr[r]; k < row_end; k++)
                present |= b->feat[k] == f;
            philox4x32_ctr_t u = draw(kfollow, (uint64_t)row, (uint32_t)f, 0);
            if (!present && unit_open(u.v[0], u.v[1]) < FOLLOW_PROB)
                b->feat[out++] = f;
        }
        for (int32_t i = b->indptr[r]; i < out; i++)
            b->coef[i] = coefficient(t, kmag, row, b->feat[i]);
    }
    b->indptr[b->rows] = out;
}

static int gen_block(const truth *t, int64_t block, block_codes *b)
{
    int64_t N = t->cfg->n_tokens;
    b->first_row = block * BLOCK_ROWS;
    b->rows = (int)(N - b->first_row < BLOCK_ROWS ? N - b->first_row : BLOCK_ROWS);
    b->n_ev = 0;
    uint64_t kfire = purpose_key(t->cfg->seed, K_FIRE);
    for (int g = 0; g < t->cfg->n_features; g++)
        if (fire_feature(t, kfire, block, g, b) != SAE_OK)
            return SAE_ERR;
    /* Each base firing adds at most one follower: 2 n_ev output entries, then
     * the sorted base list (see assemble_rows). */
    size_t cap = 3 * (size_t)b->n_ev + 1;
    free(b->feat);
    free(b->coef);
    b->feat = malloc(cap * sizeof *b->feat);
    b->coef = malloc(cap * sizeof *b->coef);
    if (!b->feat || !b->coef)
        return SAE_ERR;
    assemble_rows(t, b);
    return SAE_OK;
}

/* ---- Rows ---------------------------------------------------------------- */

static void gen_row(const truth *t, const block_codes *b, int r, float *x, int32_t *token)
{
    const synth_config *c = t->cfg;
    int D = c->d_in;
    int64_t row = b->first_row + r;
    memset(x, 0, (size_t)D * sizeof *x);
    int32_t dominant = -1;
    float best = 0;
    for (int32_t i = b->indptr[r]; i < b->indptr[r + 1]; i++) {
        int32_t g = b->feat[i];
        float a = b->coef[i];
        const float *dir = t->dict + (size_t)g * (size_t)D;
        for (int j = 0; j < D; j++)
            x[j] += a * dir[j];
        if (dominant < 0 || a > best || (a == best && g < dominant)) {
            dominant = g;
            best = a;
        }
    }
    if (c->noise > 0) {
        uint64_t key = purpose_key(c->seed, K_NOISE);
        for (int j = 0; j < D; j += 4) {
            float z[4];
            normal_quad(draw(key, (uint64_t)row, (uint32_t)j, 0), z);
            for (int i = 0; i < 4 && j + i < D; i++)
                x[j + i] += c->noise * z[i];
        }
    }
    philox4x32_ctr_t u = draw(purpose_key(c->seed, K_TOKEN), (uint64_t)row, 0, 0);
    if (dominant < 0)
        *token = (int32_t)(u.v[0] % (uint32_t)c->n_filler);
    else
        *token = c->n_filler + dominant * c->words_per_feature +
                 (int32_t)(u.v[0] % (uint32_t)c->words_per_feature);
}

/* Rows [r0, r1) into x [r1 - r0, D] and tokens, block by block in parallel.
 * A block straddling a shard boundary is generated for both shards. */
static int gen_rows(const truth *t, int64_t r0, int64_t r1, float *x, int32_t *tokens,
                    sae_error *err)
{
    int64_t b0 = r0 / BLOCK_ROWS, b1 = (r1 - 1) / BLOCK_ROWS;
    size_t D = (size_t)t->cfg->d_in;
    int failed = 0;
#pragma omp parallel for schedule(dynamic, 1) reduction(| : failed)
    for (int64_t blk = b0; blk <= b1; blk++) {
        block_codes *b = calloc(1, sizeof *b);
        if (!b || gen_block(t, blk, b) != SAE_OK) {
            failed |= 1;
        } else {
            int64_t lo = b->first_row > r0 ? b->first_row : r0;
            int64_t hi = b->first_row + b->rows < r1 ? b->first_row + b->rows : r1;
            for (int64_t row = lo; row < hi; row++)
                gen_row(t, b, (int)(row - b->first_row), x + (size_t)(row - r0) * D,
                        tokens + (row - r0));
        }
        if (b)
            block_free(b);
        free(b);
    }
    if (failed)
        return sae_fail(err, "synth: out of memory generating rows [%lld, %lld)",
                        (long long)r0, (long long)r1);
    return SAE_OK;
}

/* ---- Writing ------------------------------------------------------------- */

static int64_t shard_rows(const synth_config *c)
{
    if (c->shard_tokens > 0)
        return c->shard_tokens;
    int64_t rows = SHARD_BYTES / ((int64_t)c->d_in * (int64_t)st_dtype_size(c->dtype));
    rows = rows / BLOCK_ROWS * BLOCK_ROWS;  /* whole blocks: none generated twice */
    return rows > BLOCK_ROWS ? rows : BLOCK_ROWS;
}

static int write_shards(const char *dir, const truth *t, int64_t T, int n_shards,
                        synth_progress_fn progress, void *ctx, sae_error *err)
{
    const synth_config *c = t->cfg;
    size_t D = (size_t)c->d_in;
    float *x = malloc((size_t)T * D * sizeof *x);
    int32_t *tokens = malloc((size_t)T * sizeof *tokens);
    void *packed = c->dtype == ST_F32 ? x : malloc((size_t)T * D * st_dtype_size(c->dtype));
    int rc = SAE_OK;
    if (!x || !tokens || !packed)
        rc = sae_fail(err, "synth: out of memory for a shard of %lld rows x %zu",
                      (long long)T, D);
    for (int s = 0; rc == SAE_OK && s < n_shards; s++) {
        int64_t r0 = (int64_t)s * T, r1 = r0 + T < c->n_tokens ? r0 + T : c->n_tokens;
        rc = gen_rows(t, r0, r1, x, tokens, err);
        if (rc == SAE_OK && packed != x)
            corpus_pack(c->dtype, x, (size_t)(r1 - r0) * D, packed);
        if (rc == SAE_OK)
            rc = corpus_write_shard(dir, s, c->dtype, c->d_in, r1 - r0, packed, tokens, err);
        if (rc == SAE_OK && progress)
            progress(ctx, r1, c->n_tokens);
    }
    if (packed != x)
        free(packed);
    free(x);
    free(tokens);
    return rc;
}

/* A float flag as the decimal the user typed (0.2, not 0.200000003). */
static double tidy(float f)
{
    char buf[32];
    snprintf(buf, sizeof buf, "%.7g", (double)f);
    return strtod(buf, NULL);
}

static int write_json(const char *dir, const char *name, json_t *root, sae_error *err)
{
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path) {
        json_decref(root);
        return sae_fail(err, "%s/%s: path too long", dir, name);
    }
    char *text = root ? json_dumps(root, JSON_INDENT(1) | JSON_REAL_PRECISION(15)) : NULL;
    json_decref(root);
    if (!text)
        return sae_fail(err, "%s: out of memory building JSON", path);
    int rc = sae_write_file_atomic(path, text, strlen(text), err);
    free(text);
    return rc;
}

static int write_vocab(const char *dir, const truth *t, sae_error *err)
{
    json_t *arr = json_array();
    for (int64_t i = 0; arr && i < t->vocab_size; i++) {
        if (json_array_append_new(arr, json_string(t->vocab[i])) != 0) {
            json_decref(arr);
            arr = NULL;
        }
    }
    return write_json(dir, "vocab.json", arr, err);
}

/* One feature's entry of truth.json. */
static json_t *feature_json(const truth *t, int g)
{
    const synth_config *c = t->cfg;
    json_t *words = json_array(), *ids = json_array();
    for (int w = 0; words && ids && w < c->words_per_feature; w++) {
        int32_t id = c->n_filler + g * c->words_per_feature + w;
        if (json_array_append_new(words, json_string(t->vocab[id])) ||
            json_array_append_new(ids, json_integer(id))) {
            json_decref(words);
            words = NULL;
        }
    }
    const char *role = t->partner[g] < 0 ? "none" : t->follower[g] >= 0 ? "leader" : "follower";
    return json_pack("{s:i, s:o, s:o, s:f, s:f, s:f, s:f, s:o, s:s}", "id", g, "words", words,
                     "token_ids", ids, "frequency", t->freq[g], "base_probability",
                     t->base_p[g], "magnitude_mu", t->mu[g], "magnitude_sigma", MAG_SIGMA,
                     "partner", t->partner[g] < 0 ? json_null() : json_integer(t->partner[g]),
                     "role", role);
}

static int write_truth_json(const char *dir, const truth *t, sae_error *err)
{
    const synth_config *c = t->cfg;
    json_t *features = json_array(), *fillers = json_array();
    for (int g = 0; features && g < c->n_features; g++) {
        if (json_array_append_new(features, feature_json(t, g)) != 0) {
            json_decref(features);
            features = NULL;
        }
    }
    for (int i = 0; fillers && i < c->n_filler; i++) {
        if (json_array_append_new(fillers, json_string(t->vocab[i])) != 0) {
            json_decref(fillers);
            fillers = NULL;
        }
    }
    json_t *root = json_pack(
        "{s:s, s:I, s:i, s:i, s:I, s:i, s:f, s:f, s:f, s:f, s:f, s:s, s:o, s:o}",
        "generator", "saectl synth", "seed", (json_int_t)c->seed, "d_in", c->d_in,
        "n_features", c->n_features, "n_tokens", (json_int_t)c->n_tokens, "context_len",
        c->context_len, "noise", tidy(c->noise), "correlated", tidy(c->correlated),
        "zipf", tidy(c->zipf), "k_mean", tidy(c->k_mean), "follow_probability",
        FOLLOW_PROB, "dtype", corpus_dtype_name(c->dtype), "filler_words", fillers,
        "features", features);
    return write_json(dir, "truth.json", root, err);
}

static int write_truth_tensors(const char *dir, const truth *t, sae_error *err)
{
    const synth_config *c = t->cfg;
    size_t G = (size_t)c->n_features, W = (size_t)c->words_per_feature;
    float *vecs = malloc(4 * G * sizeof *vecs);
    int32_t *trig = malloc(G * W * sizeof *trig);
    char path[PATH_MAX];
    int rc = SAE_OK;
    if (snprintf(path, sizeof path, "%s/truth.safetensors", dir) >= (int)sizeof path)
        rc = sae_fail(err, "%s: path too long", dir);
    else if (!vecs || !trig)
        rc = sae_fail(err, "synth: out of memory");
    if (rc == SAE_OK) {
        for (size_t g = 0; g < G; g++) {
            vecs[g] = (float)t->freq[g];
            vecs[G + g] = (float)t->base_p[g];
            vecs[2 * G + g] = (float)t->mu[g];
            vecs[3 * G + g] = (float)MAG_SIGMA;
            for (size_t w = 0; w < W; w++)
                trig[g * W + w] = c->n_filler + (int32_t)(g * W + w);
        }
        int64_t g64 = (int64_t)G;
        st_out ts[] = {
            {"dictionary", ST_F32, 2, {g64, c->d_in}, t->dict},
            {"frequencies", ST_F32, 1, {g64}, vecs},
            {"base_probability", ST_F32, 1, {g64}, vecs + G},
            {"magnitude_mu", ST_F32, 1, {g64}, vecs + 2 * G},
            {"magnitude_sigma", ST_F32, 1, {g64}, vecs + 3 * G},
            {"trigger_tokens", ST_I32, 2, {g64, (int64_t)W}, trig},
            {"pairs", ST_I32, 2, {t->n_pairs, 2}, t->pairs},
        };
        int n = (int)(sizeof ts / sizeof ts[0]) - (t->n_pairs == 0);
        rc = st_write(path, ts, n, NULL, err);
    }
    free(vecs);
    free(trig);
    return rc;
}

int synth_write(const char *dir, const synth_config *cfg, synth_progress_fn progress,
                void *progress_ctx, sae_error *err)
{
    if (synth_config_validate(cfg, err) != SAE_OK || sae_mkdirs(dir, err) != SAE_OK)
        return SAE_ERR;
    int64_t T = shard_rows(cfg);
    int64_t n_shards = (cfg->n_tokens + T - 1) / T;
    if (n_shards > INT_MAX)
        return sae_fail(err, "--shard-tokens %lld makes too many shards", (long long)T);
    truth t;
    if (truth_make(&t, cfg, err) != SAE_OK)
        return SAE_ERR;
    int rc = write_shards(dir, &t, T, (int)n_shards, progress, progress_ctx, err);
    if (rc == SAE_OK)
        rc = write_vocab(dir, &t, err);
    if (rc == SAE_OK)
        rc = write_truth_tensors(dir, &t, err);
    if (rc == SAE_OK)
        rc = write_truth_json(dir, &t, err);
    if (rc == SAE_OK) {
        corpus_manifest m = {.d_in = cfg->d_in, .dtype = cfg->dtype,
                             .context_len = cfg->context_len, .n_shards = (int)n_shards,
                             .n_tokens = cfg->n_tokens, .vocab = "vocab.json",
                             .model = "synthetic", .hook = "synth"};
        rc = corpus_write_manifest(dir, &m, err);
    }
    truth_free(&t);
    return rc;
}

int synth_read_dictionary(const char *dir, float **dict, int *n_features, int *d_in,
                          sae_error *err)
{
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/truth.safetensors", dir) >= (int)sizeof path)
        return sae_fail(err, "%s: path too long", dir);
    st_file f;
    if (st_open(&f, path, err) != SAE_OK)
        return SAE_ERR;
    const st_tensor *t = st_find(&f, "dictionary");
    int rc = SAE_OK;
    if (!t || t->ndim != 2 || t->shape[0] < 1 || t->shape[0] > INT_MAX || t->shape[1] < 1 ||
        t->shape[1] > INT_MAX)
        rc = sae_fail(err, "%s: want a tensor 'dictionary' [G, D]", path);
    float *out = NULL;
    if (rc == SAE_OK && !(out = malloc((size_t)st_numel(t) * sizeof *out)))
        rc = sae_fail(err, "%s: out of memory", path);
    if (rc == SAE_OK)
        rc = st_read_f32(&f, t, out, 0, 1, err);
    if (rc == SAE_OK) {
        *dict = out;
        *n_features = (int)t->shape[0];
        *d_in = (int)t->shape[1];
    } else {
        free(out);
    }
    st_close(&f);
    return rc;
}
