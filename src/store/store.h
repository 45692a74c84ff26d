/* store.h - everything that must survive a restart, in one LMDB environment
 * under a state directory. Nothing else in the program includes lmdb.h, and
 * nothing here knows what an SAE is: the store keeps bytes, JSON text and the
 * plain structs below.
 *
 * Named databases and their keys. "id" is a model id: 1..STORE_ID_MAX bytes
 * of [A-Za-z0-9._-], written with a terminating NUL so that a prefix scan of
 * one model never runs into another ("a" < "a\0..." < "ab"). Integers in keys
 * are big-endian, so LMDB's byte order is numeric order and a range scan comes
 * back as (model, feature, kind, bucket, rank).
 *
 *   meta          "schema"                            u32 STORE_SCHEMA (native endian)
 *   models        id \0 u8 part                       part 0: model record, JSON text
 *                                                     part 1: vocabulary, JSON array of strings
 *                                                     part 2: store_profile_run
 *                                                     part 3: served by saed, JSON text
 *   features      id \0 u32 feature                   store_feature
 *   examples      id \0 u32 feature u8 kind u8 bucket u32 rank
 *                                                     store_example_hdr, then int32 tokens[n],
 *                                                     then float values[n]
 *   explanations  id \0 u32 feature u8 bucket scorer \0
 *                                                     JSON text {"text","score","judge"}
 *   jobs          job id \0                           JSON text
 *
 * Values are native-endian plain structs (an LMDB file is not portable across
 * byte orders anyway); STORE_SCHEMA changes whenever a layout does, and a
 * store written with another schema is refused at open.
 *
 * Profiles and crash safety: store_profile_begin marks the model's run
 * STORE_RUN_RUNNING and deletes its old features and examples; the results
 * then arrive through a writer in batched transactions; store_profile_finish
 * marks the run STORE_RUN_COMPLETE in the last transaction. A kill -9 at any
 * point leaves either a complete profile or a run marked running (readers
 * refuse it, and a rerun replaces it). store_check verifies exactly that.
 *
 * Threads: the environment is opened with MDB_NOTLS, so any thread may read.
 * Reads use short read-only transactions inside each call. Writes are
 * serialised by LMDB (one writer at a time). */
#ifndef SAE_STORE_H
#define SAE_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "sae.h"

#define STORE_SCHEMA 2u
#define STORE_ID_MAX 128
#define STORE_NOT_FOUND 1       /* a get's return when the key is absent */

#define STORE_N_QUANTILES 10    /* q10 q20 ... q90 q99 */
#define STORE_N_BUCKETS 5       /* split at q20 q40 q60 q80 */

typedef struct store store;

/* Opens (creating if needed) the environment under dir, clears stale reader
 * slots, and checks the schema version. */
int store_open(const char *dir, store **out, sae_error *err);
void store_close(store *s);

/* Model ids as the key layout wants them. */
int store_id_valid(const char *id);

/* ---- Models ------------------------------------------------------------- */

typedef enum { STORE_RUN_RUNNING = 1, STORE_RUN_COMPLETE = 2 } store_run_state;

/* The profile run record: what a complete profile must contain. */
typedef struct store_profile_run {
    uint32_t state;             /* store_run_state */
    uint32_t n_features;        /* features 0 .. n_features-1 each have a record */
    uint32_t top_n, per_bucket, n_negative, window;
    uint64_t n_rows;            /* token positions profiled */
    uint64_t seed;
} store_profile_run;

int store_model_put(store *s, const char *id, const char *json, sae_error *err);
/* *json is malloc'd and NUL-terminated; STORE_NOT_FOUND when absent. */
int store_model_get(store *s, const char *id, char **json, sae_error *err);
int store_vocab_get(store *s, const char *id, char **json, sae_error *err);
int store_profile_run_get(store *s, const char *id, store_profile_run *run, sae_error *err);
/* Calls fn for every model id in order; stops early when fn returns non-zero. */
int store_model_list(store *s, int (*fn)(void *ctx, const char *id), void *ctx,
                     sae_error *err);

/* Models the daemon serves (registered through its admin API): a JSON record
 * per id, independent of the profile. del returns STORE_NOT_FOUND when absent. */
int store_served_put(store *s, const char *id, const char *json, sae_error *err);
int store_served_del(store *s, const char *id, sae_error *err);
int store_served_list(store *s, int (*fn)(void *ctx, const char *id, const char *json),
                      void *ctx, sae_error *err);

/* ---- Profiles ------------------------------------------------------------ */

typedef struct store_feature {
    uint64_t count;             /* non-zero activations */
    uint64_t n_rows;            /* positions profiled: density = count / n_rows */
    double mean;                /* of the non-zero activations */
    float min, max;
    float quantiles[STORE_N_QUANTILES];
    uint64_t bucket_count[STORE_N_BUCKETS];
    uint32_t n_top, n_bucket[STORE_N_BUCKETS], n_negative; /* examples stored */
} store_feature;

typedef enum { STORE_EX_TOP = 0, STORE_EX_BUCKET = 1, STORE_EX_NEGATIVE = 2 } store_example_kind;

typedef struct store_example_hdr {
    uint64_t row;               /* corpus row of the sampled position */
    uint64_t doc;               /* document index (row / context_len) */
    uint32_t pos;               /* the sampled position within its document */
    uint32_t start;             /* window start within the document */
    uint32_t n;                 /* window length */
    uint32_t max_index;         /* argmax of values within the window */
    float max_value, value;     /* values[max_index]; the value at the sampled position */
} store_example_hdr;

/* An example as read back: tokens[n] (-1 when the corpus has none), values[n]. */
typedef struct store_example {
    store_example_hdr h;
    int32_t *tokens;
    float *values;
} store_example;

/* Writes the model record (JSON), its vocabulary (JSON array or NULL) and a
 * run record marked running; then deletes the model's old features and
 * examples in batched transactions. */
int store_profile_begin(store *s, const char *id, const char *model_json,
                        const char *vocab_json, const store_profile_run *run, sae_error *err);
/* Marks the run complete (run->state is set here). */
int store_profile_finish(store *s, const char *id, store_profile_run *run, sae_error *err);

/* A writer batches puts into write transactions of bounded size, committing
 * as it goes; commit writes the rest. After an error, only abort. */
typedef struct store_writer store_writer;
int store_writer_begin(store *s, store_writer **out, sae_error *err);
int store_put_feature(store_writer *w, const char *id, uint32_t feature,
                      const store_feature *f, sae_error *err);
int store_put_example(store_writer *w, const char *id, uint32_t feature,
                      store_example_kind kind, uint32_t bucket, uint32_t rank,
                      const store_example_hdr *h, const int32_t *tokens, const float *values,
                      sae_error *err);
int store_writer_commit(store_writer *w, sae_error *err);    /* frees w */
void store_writer_abort(store_writer *w);                     /* frees w */

/* Reads refuse a model whose profile is not complete (an error saying so). */
int store_feature_get(store *s, const char *id, uint32_t feature, store_feature *f,
                      sae_error *err);
/* Every feature record of a complete profile from feature first on, in order,
 * in one read transaction (a consistent snapshot even while a rerun starts);
 * stops early when fn returns non-zero. STORE_NOT_FOUND without a profile. */
int store_feature_list(store *s, const char *id, uint32_t first,
                       int (*fn)(void *ctx, uint32_t feature, const store_feature *f),
                       void *ctx, sae_error *err);
/* Up to limit examples of one (feature, kind, bucket) in rank order; *out is
 * a malloc'd array freed with store_examples_free. bucket is ignored (0) for
 * top and negative. */
int store_examples_get(store *s, const char *id, uint32_t feature, store_example_kind kind,
                       uint32_t bucket, uint32_t limit, store_example **out, uint32_t *n,
                       sae_error *err);
void store_examples_free(store_example *ex, uint32_t n);

/* ---- Explanations -------------------------------------------------------- */

typedef struct store_explanation {
    uint32_t feature, bucket;
    const char *scorer;         /* borrowed for the callback's duration */
    const char *json;           /* {"text", "score", "judge"} */
} store_explanation;

/* One writer's batch of puts; scorer is 1..STORE_ID_MAX bytes without NUL. */
int store_put_explanation(store_writer *w, const char *id, uint32_t feature, uint32_t bucket,
                          const char *scorer, const char *json, sae_error *err);
/* Every explanation of a model in key order (feature, bucket, scorer); stops
 * early when fn returns non-zero. */
int store_explanation_list(store *s, const char *id,
                           int (*fn)(void *ctx, const store_explanation *e), void *ctx,
                           sae_error *err);
/* The same for one feature only (a range scan, not a walk over the model). */
int store_explanation_list_feature(store *s, const char *id, uint32_t feature,
                                   int (*fn)(void *ctx, const store_explanation *e), void *ctx,
                                   sae_error *err);

/* ---- Jobs ---------------------------------------------------------------- */

int store_job_put(store *s, const char *job_id, const char *json, sae_error *err);
int store_job_get(store *s, const char *job_id, char **json, sae_error *err);
int store_job_list(store *s, int (*fn)(void *ctx, const char *job_id, const char *json),
                   void *ctx, sae_error *err);

/* ---- Consistency ----------------------------------------------------------- */

/* Walks every database: keys and values well-formed, every feature and example
 * belongs to a model with a run record, and every complete run has all its
 * features with exactly the examples their records count, ranks contiguous
 * and top examples in descending order. SAE_ERR names the first problem. */
int store_check(store *s, sae_error *err);

#endif
