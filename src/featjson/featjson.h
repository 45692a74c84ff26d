/* featjson.h - the feature store as the API shows it: the JSON shapes of
 * DESIGN.md sec. 6 for a feature, its examples, the calibration table, and the
 * validation of an explanation record.
 *
 * Why a module of its own: saectl (feature, examples, calibration,
 * explain-import) and saed (GET /v1/models/{id}/features/..., calibration,
 * POST .../explanations) must print the very same JSON, so one implementation
 * serves both. It cannot live in src/store, because the store knows nothing of
 * SAEs (bucket centres, quantile names and the calibration math come from
 * src/sae/profile.h), nor in src/sae, which never sees the store; so it sits
 * above both, and both cli and server link it:
 *
 *     cli, server -> featjson -> store, sae (profile.h)
 *
 * Nothing here knows HTTP: errors come back as sae_error messages with the
 * store's return codes, and the daemon picks the status.
 *
 * Return codes: SAE_OK; STORE_NOT_FOUND when the model has no profile or the
 * feature is out of range; SAE_ERR otherwise (incomplete profile, corrupt
 * record, out of memory; err says which). */
#ifndef SAE_FEATJSON_H
#define SAE_FEATJSON_H

#include <stdint.h>

#include <jansson.h>

#include "sae.h"
#include "store.h"

/* How every document here is written out, by saectl and saed alike: compact,
 * and doubles with 17 significant digits so that they read back exactly. */
#define FEATJSON_DUMP_FLAGS (JSON_COMPACT | JSON_REAL_PRECISION(17))

/* Limits of an explanation record (bytes of UTF-8). */
#define FEATJSON_TEXT_MAX 8192
#define FEATJSON_JUDGE_MAX 256

/* The feature object with its explanations:
 * {"model_id", "feature", "count", "n_tokens", "density", "mean", "min", "max",
 *  "quantiles": {"q10".."q99"}, "buckets": [{"bucket", "lower", "upper",
 *  "upper_inclusive", "centre_percentile", "count", "n_examples"}],
 *  "examples": {"top", "negative"}, "explanations": [...]}.
 * Statistics of a feature that never fired are null. */
int featjson_feature(store *s, const char *id, uint32_t feature, json_t **out, sae_error *err);

/* {"examples": [{"tokens", "token_ids", "values", "max_value", "max_index",
 * "doc", "pos", "start", "row", "value"}]}: up to limit examples of one kind
 * (bucket only for STORE_EX_BUCKET), tokens as strings when the model's
 * vocabulary is stored, else as ids. */
int featjson_examples(store *s, const char *id, uint32_t feature, store_example_kind kind,
                      uint32_t bucket, uint32_t limit, json_t **out, sae_error *err);

/* {"model_id", "scorer", "buckets": [{"bucket", "centre_percentile", "mean",
 * "ci95": [lo, hi], "n_features"}], "pearson_r", "n_pairs"} over the model's
 * explanations by scorer (NULL: every scorer). A model without explanations
 * gets the empty table (nulls and zeros), not an error. */
int featjson_calibration(store *s, const char *id, const char *scorer, json_t **out,
                         sae_error *err);

/* "top", "bucket", "negative" -> the kind; SAE_ERR for anything else. */
int featjson_example_kind(const char *name, store_example_kind *kind);

/* One explanation, checked: {"bucket": 0..4, "text": 1..FEATJSON_TEXT_MAX bytes,
 * "scorer": an id (1..STORE_ID_MAX of A-Z a-z 0-9 . _ -), "score": a finite
 * number, "judge"?: 1..FEATJSON_JUDGE_MAX bytes or null}. Keys outside these
 * and extra_keys (a NULL-terminated list, or NULL) are refused, so a typo does
 * not pass silently. */
typedef struct featjson_explanation {
    uint32_t bucket;
    const char *scorer;         /* borrowed from the parsed object */
    char *value;                /* malloc'd: {"text", "score", "judge"?}, what the store keeps */
} featjson_explanation;

int featjson_explanation_parse(const json_t *o, const char *const *extra_keys,
                               featjson_explanation *out, sae_error *err);

/* A stored explanation as the feature object lists it: its value with
 * "bucket" and "scorer" added; NULL when the value is not a JSON object. */
json_t *featjson_explanation_json(const store_explanation *e);

#endif
