/* h_features.c - the feature store over HTTP (DESIGN.md sec. 6): feature
 * summaries for dashboards, one feature, its examples, posting an
 * explanation, and the calibration table.
 *
 * Every route reads the LMDB store written by `saectl profile --model-id ID`,
 * never the loaded model: {id} is a profiled model id, and a model that is
 * profiled but not served (or served but not profiled) answers accordingly.
 * The single-feature, examples and calibration documents come from featjson,
 * the module saectl prints with, so both give the same bytes.
 *
 * Statuses shared by these routes:
 *   404 model_not_found     the store has no profile of {id}
 *   404 feature_not_found   {f} is not an integer in [0, n_features)
 *   409 profile_incomplete  the profile is running, or was interrupted (run
 *                           `saectl profile` again): a conflict with the
 *                           resource's state rather than a transient 503,
 *                           since an interrupted run never finishes by itself
 *   400 invalid_parameter   a query parameter out of its range
 *   503 store_unavailable   the daemon has no store (unit situations only)
 *   503 store_error         the store failed (corruption, I/O), as registry.c
 * The handlers run on the network threads: each is a few short read
 * transactions (a sorted listing of 100k features takes milliseconds). */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "featjson.h"
#include "handlers.h"
#include "http.h"
#include "reqparse.h"
#include "state.h"

#define LIST_LIMIT_DEFAULT 100
#define LIST_LIMIT_MAX 1000
#define EXAMPLES_LIMIT_DEFAULT 1000      /* saectl examples' default: every stored one */
#define EXAMPLES_LIMIT_MAX 1000
#define OFFSET_MAX 2147483647LL

/* ---- Shared steps ------------------------------------------------------------------ */

/* Dumps a document the way saectl prints it and sends it (NULL: out of memory). */
static void reply_doc(req *r, int status, json_t *doc)
{
    char *text = doc ? json_dumps(doc, FEATJSON_DUMP_FLAGS) : NULL;
    json_decref(doc);
    if (text)
        reply(r, status, "application/json", text, strlen(text));
    else
        reply_error(r, 503, "out_of_memory", "no memory for the reply");
}

/* The store, or a 503 reply. */
static store *route_store(req *r)
{
    store *s = state_store();
    if (!s)
        reply_error(r, 503, "store_unavailable", "the daemon has no feature store");
    return s;
}

/* The complete profile run of the route's {id}; 0, or -1 after replying
 * 404 / 409 / 500. */
static int route_profile(req *r, store *s, store_profile_run *run)
{
    const char *id = r->params[0];
    sae_error err;
    int rc = store_id_valid(id) ? store_profile_run_get(s, id, run, &err) : STORE_NOT_FOUND;
    if (rc == STORE_NOT_FOUND) {
        reply_error(r, 404, "model_not_found", "the store has no profile of model '%s'", id);
        return -1;
    }
    if (rc != SAE_OK) {
        reply_error(r, 503, "store_error", "%s", err.msg);
        return -1;
    }
    if (run->state != STORE_RUN_COMPLETE) {
        reply_error(r, 409, "profile_incomplete", "the profile of model '%s' is not complete "
                    "(running, or interrupted: run saectl profile again)", id);
        return -1;
    }
    return 0;
}

/* The route's {f} within the profile; 0, or -1 after a 404 reply. */
static int route_feature(req *r, const store_profile_run *run, uint32_t *feature)
{
    int64_t f = parse_index(r->params[1], run->n_features);
    if (f < 0) {
        reply_error(r, 404, "feature_not_found", "feature '%s' is not in [0, %u)", r->params[1],
                    run->n_features);
        return -1;
    }
    *feature = (uint32_t)f;
    return 0;
}

/* The model and feature of a /features/{f} route; 0, or -1 after a reply. */
static int route_profiled_feature(req *r, store **s, uint32_t *feature)
{
    store_profile_run run;
    if (!(*s = route_store(r)) || route_profile(r, *s, &run) < 0)
        return -1;
    return route_feature(r, &run, feature);
}

/* A read that failed after the route checks passed: a profile rerun may have
 * started in between, so ask the store again which status fits. */
static void reply_read_failure(req *r, store *s, int rc, const sae_error *err)
{
    store_profile_run run;
    if (route_profile(r, s, &run) < 0)
        return;                         /* replied 404 / 409 / 500 */
    if (rc == STORE_NOT_FOUND)
        reply_error(r, 404, "feature_not_found", "%s", err->msg);
    else
        reply_error(r, 503, "store_error", "%s", err->msg);
}

/* An optional non-negative integer query parameter: def when absent; 0, or -1
 * after a 400 reply when it is not an integer in [0, max]. */
static int query_uint(req *r, const char *key, int64_t def, int64_t max, int64_t *out)
{
    const char *v = req_query(r, key);
    *out = v ? parse_index(v, max + 1) : def;
    if (*out < 0) {
        reply_error(r, 400, "invalid_parameter", "%s must be an integer in [0, %lld], got "
                    "'%.40s'", key, (long long)max, v);
        return -1;
    }
    return 0;
}

/* ---- GET /v1/models/{id}/features --------------------------------------------------- */

typedef enum { SORT_INDEX, SORT_DENSITY, SORT_MAX, SORT_COUNT } sort_key;

static int parse_sort(const char *name, sort_key *key)
{
    static const char *const names[] = {"index", "density", "max", "count"};
    for (int i = 0; i < 4; i++)
        if (!strcmp(name, names[i])) {
            *key = (sort_key)i;
            return 0;
        }
    return -1;
}

/* What a dashboard row needs, 32 bytes a feature: a sorted listing holds one
 * per feature of the model (3.2 MB for 100k features) while it sorts. */
typedef struct summary {
    uint32_t feature;
    float max;
    uint64_t count, n_rows;
    double mean;
} summary;

typedef struct summary_list {
    summary *rows;
    uint32_t n, cap;            /* cap: the rows wanted (limit, or all to sort) */
} summary_list;

static int take_summary(void *ctx, uint32_t feature, const store_feature *f)
{
    summary_list *l = ctx;
    if (l->n == l->cap)
        return 1;
    l->rows[l->n++] = (summary){feature, f->max, f->count, f->n_rows, f->mean};
    return l->n == l->cap;
}

/* A feature that never fired has no max: it sorts below every one that did. */
static double max_key(const summary *s)
{
    return s->count && isfinite(s->max) ? (double)s->max : -INFINITY;
}

/* Descending by the key, ties by feature index so that pages are stable. */
static int cmp_by_max(const void *pa, const void *pb)
{
    const summary *a = pa, *b = pb;
    double x = max_key(a), y = max_key(b);
    if (x != y)
        return x > y ? -1 : 1;
    return a->feature < b->feature ? -1 : a->feature > b->feature;
}

/* By count, which is also by density: every feature of a profile has the
 * same n_rows. */
static int cmp_by_count(const void *pa, const void *pb)
{
    const summary *a = pa, *b = pb;
    if (a->count != b->count)
        return a->count > b->count ? -1 : 1;
    return a->feature < b->feature ? -1 : a->feature > b->feature;
}

static json_t *summary_json(const summary *s)
{
    return json_pack("{s:I, s:I, s:f, s:o, s:o}", "feature", (json_int_t)s->feature, "count",
                     (json_int_t)s->count, "density",
                     s->n_rows ? (double)s->count / (double)s->n_rows : 0.0, "mean",
                     s->count && isfinite(s->mean) ? json_real(s->mean) : json_null(), "max",
                     s->count && isfinite(s->max) ? json_real(s->max) : json_null());
}

static json_t *listing_json(const char *id, const store_profile_run *run, int64_t offset,
                            int64_t limit, const char *sort, const summary *rows, uint32_t n)
{
    json_t *a = json_array();
    for (uint32_t i = 0; a && i < n; i++) {
        json_t *o = summary_json(&rows[i]);
        if (!o || json_array_append_new(a, o) != 0) {
            json_decref(a);
            a = NULL;
        }
    }
    return a ? json_pack("{s:s, s:I, s:I, s:I, s:s, s:o}", "model_id", id, "total",
                         (json_int_t)run->n_features, "offset", (json_int_t)offset, "limit",
                         (json_int_t)limit, "sort", sort, "features", a)
             : NULL;
}

/* By index: read just the page, from offset on. Otherwise: read every
 * feature in one transaction, sort, and cut the page. */
static int read_page(store *s, const char *id, const store_profile_run *run, sort_key key,
                     int64_t offset, int64_t limit, summary_list *l, sae_error *err)
{
    if (offset >= run->n_features || limit == 0)
        return SAE_OK;
    l->cap = key == SORT_INDEX ? (uint32_t)limit : run->n_features;
    l->rows = malloc((size_t)l->cap * sizeof *l->rows);
    if (!l->rows)
        return sae_fail(err, "out of memory for %u feature summaries", l->cap);
    int rc = store_feature_list(s, id, key == SORT_INDEX ? (uint32_t)offset : 0, take_summary,
                                l, err);
    if (rc != SAE_OK || key == SORT_INDEX)
        return rc;
    qsort(l->rows, l->n, sizeof *l->rows, key == SORT_MAX ? cmp_by_max : cmp_by_count);
    uint64_t start = (uint64_t)offset < l->n ? (uint64_t)offset : l->n;
    uint64_t end = start + (uint64_t)limit < l->n ? start + (uint64_t)limit : l->n;
    memmove(l->rows, l->rows + start, (size_t)(end - start) * sizeof *l->rows);
    l->n = (uint32_t)(end - start);
    return SAE_OK;
}

int h_features_list(req *r)
{
    store *s;
    store_profile_run run;
    if (!(s = route_store(r)) || route_profile(r, s, &run) < 0)
        return HANDLER_DONE;
    int64_t offset, limit;
    sort_key key = SORT_INDEX;
    const char *sort = req_query(r, "sort");
    if (query_uint(r, "offset", 0, OFFSET_MAX, &offset) < 0 ||
        query_uint(r, "limit", LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX, &limit) < 0)
        return HANDLER_DONE;
    if (sort && parse_sort(sort, &key) < 0) {
        reply_error(r, 400, "invalid_parameter", "sort must be index, density, max or count, "
                    "got '%.40s'", sort);
        return HANDLER_DONE;
    }
    summary_list l = {0};
    sae_error err;
    int rc = read_page(s, r->params[0], &run, key, offset, limit, &l, &err);
    if (rc != SAE_OK)
        reply_read_failure(r, s, rc, &err);
    else
        reply_doc(r, 200, listing_json(r->params[0], &run, offset, limit, sort ? sort : "index",
                                       l.rows, l.n));
    free(l.rows);
    return HANDLER_DONE;
}

/* ---- GET /v1/models/{id}/features/{f} ----------------------------------------------- */

int h_feature_get(req *r)
{
    store *s;
    uint32_t f;
    if (route_profiled_feature(r, &s, &f) < 0)
        return HANDLER_DONE;
    json_t *doc = NULL;
    sae_error err;
    int rc = featjson_feature(s, r->params[0], f, &doc, &err);
    if (rc != SAE_OK)
        reply_read_failure(r, s, rc, &err);
    else
        reply_doc(r, 200, doc);
    return HANDLER_DONE;
}

/* ---- GET /v1/models/{id}/features/{f}/examples -------------------------------------- */

/* kind (default top) and bucket (required for kind=bucket; when given for
 * another kind it must still be valid, and is ignored); 0, or -1 after a 400. */
static int examples_query(req *r, store_example_kind *kind, uint32_t *bucket)
{
    const char *k = req_query(r, "kind");
    *kind = STORE_EX_TOP;
    if (k && featjson_example_kind(k, kind) != SAE_OK) {
        reply_error(r, 400, "invalid_parameter", "kind must be top, bucket or negative, got "
                    "'%.40s'", k);
        return -1;
    }
    int64_t b = -1;             /* absent */
    if (req_query(r, "bucket") && query_uint(r, "bucket", 0, STORE_N_BUCKETS - 1, &b) < 0)
        return -1;
    if (*kind == STORE_EX_BUCKET && b < 0) {
        reply_error(r, 400, "invalid_parameter", "kind=bucket needs bucket=0..%d",
                    STORE_N_BUCKETS - 1);
        return -1;
    }
    *bucket = b < 0 ? 0 : (uint32_t)b;
    return 0;
}

int h_feature_examples(req *r)
{
    store *s;
    uint32_t f, bucket;
    store_example_kind kind;
    int64_t limit;
    if (route_profiled_feature(r, &s, &f) < 0 || examples_query(r, &kind, &bucket) < 0 ||
        query_uint(r, "limit", EXAMPLES_LIMIT_DEFAULT, EXAMPLES_LIMIT_MAX, &limit) < 0)
        return HANDLER_DONE;
    json_t *doc = NULL;
    sae_error err;
    int rc = featjson_examples(s, r->params[0], f, kind, bucket, (uint32_t)limit, &doc, &err);
    if (rc != SAE_OK)
        reply_read_failure(r, s, rc, &err);
    else
        reply_doc(r, 200, doc);
    return HANDLER_DONE;
}

/* ---- POST /v1/models/{id}/features/{f}/explanations --------------------------------- */

/* The body as a JSON value; NULL after a 400 / 415 reply. */
static json_t *read_json_body(req *r)
{
    const char *body = r->body ? r->body : "";
    if (r->content_type && strncasecmp(r->content_type, "application/json", 16) != 0) {
        reply_error(r, 415, "unsupported_media_type", "Content-Type %.100s: send "
                    "application/json", r->content_type);
        return NULL;
    }
    if (!json_depth_ok(body, r->body_len, REQ_MAX_JSON_DEPTH)) {
        reply_error(r, 400, "too_deep", "JSON nests deeper than %d levels", REQ_MAX_JSON_DEPTH);
        return NULL;
    }
    json_error_t jerr;
    /* DECODE_ANY: a bare "str" or 3 is JSON of the wrong shape (422), not bad JSON. */
    json_t *j = json_loadb(body, r->body_len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (!j)
        reply_error(r, 400, "invalid_json", "invalid JSON at line %d column %d: %s", jerr.line,
                    jerr.column, jerr.text);
    return j;
}

/* Writes one explanation in its own (small) write transaction. */
static int put_explanation(store *s, const char *id, uint32_t feature,
                           const featjson_explanation *ex, sae_error *err)
{
    store_writer *w;
    if (store_writer_begin(s, &w, err) != SAE_OK)
        return SAE_ERR;
    if (store_put_explanation(w, id, feature, ex->bucket, ex->scorer, ex->value, err) != SAE_OK) {
        store_writer_abort(w);
        return SAE_ERR;
    }
    return store_writer_commit(w, err);
}

int h_feature_explanation_post(req *r)
{
    store *s;
    uint32_t f;
    if (route_profiled_feature(r, &s, &f) < 0)
        return HANDLER_DONE;
    json_t *body = read_json_body(r);
    if (!body)
        return HANDLER_DONE;
    featjson_explanation ex = {0};
    sae_error err;
    if (featjson_explanation_parse(body, NULL, &ex, &err) != SAE_OK) {
        reply_error(r, 422, "invalid_explanation", "%s", err.msg);
    } else if (put_explanation(s, r->params[0], f, &ex, &err) != SAE_OK) {
        reply_error(r, 503, "store_error", "%s", err.msg);
    } else {
        /* Answer with the record as GET .../features/{f} will list it. */
        store_explanation e = {f, ex.bucket, ex.scorer, ex.value};
        reply_doc(r, 201, featjson_explanation_json(&e));
    }
    free(ex.value);
    json_decref(body);
    return HANDLER_DONE;
}

/* ---- GET /v1/models/{id}/calibration ------------------------------------------------ */

int h_calibration(req *r)
{
    store *s;
    store_profile_run run;
    if (!(s = route_store(r)) || route_profile(r, s, &run) < 0)
        return HANDLER_DONE;
    const char *scorer = req_query(r, "scorer");
    if (scorer && !store_id_valid(scorer)) {
        reply_error(r, 400, "invalid_parameter", "scorer must be 1..%d characters of A-Z a-z "
                    "0-9 . _ -", STORE_ID_MAX);
        return HANDLER_DONE;
    }
    json_t *doc = NULL;
    sae_error err;
    int rc = featjson_calibration(s, r->params[0], scorer, &doc, &err);
    if (rc != SAE_OK)
        reply_read_failure(r, s, rc, &err);
    else
        reply_doc(r, 200, doc);
    return HANDLER_DONE;
}
