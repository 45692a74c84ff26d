/* test_store.c - the store's API round trips, the refusal of incomplete
 * profiles, the rerun that replaces old data, and store_check catching a
 * complete run that lacks what its records count. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store.h"

static int failures;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);  \
            failures++;                                                              \
        }                                                                            \
    } while (0)

#define OK(call)                                                                     \
    do {                                                                             \
        sae_error e_ = {{0}};                                                        \
        sae_error *err = &e_;                                                        \
        if ((call) != SAE_OK) {                                                      \
            fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #call,     \
                    e_.msg);                                                         \
            failures++;                                                              \
        }                                                                            \
    } while (0)

enum { N_FEATURES = 3, N_TOP = 4, WINDOW = 5 };

static store_profile_run run_of(uint32_t n_features)
{
    return (store_profile_run){.n_features = n_features, .top_n = N_TOP, .per_bucket = 1,
                               .window = WINDOW, .n_rows = 100, .seed = 1};
}

/* Feature f: N_TOP top examples with values 10f + 4 - rank, one example in bucket 2. */
static void write_profile(store *s, const char *id, uint32_t n_features, float scale)
{
    store_profile_run run = run_of(n_features);
    OK(store_profile_begin(s, id, "{\"id\": \"m\"}", "[\"a\", \"b\"]", &run, err));
    store_writer *w = NULL;
    OK(store_writer_begin(s, &w, err));
    int32_t tokens[WINDOW] = {0, 1, 0, 1, 1};
    float values[WINDOW] = {0, 1, 2, 0, 0};
    for (uint32_t f = 0; f < n_features; f++) {
        store_feature rec = {.count = 7, .n_rows = 100, .mean = 1.5 * scale, .max = 9,
                             .n_top = N_TOP, .bucket_count = {1, 1, 3, 1, 1}};
        rec.n_bucket[2] = 1;
        OK(store_put_feature(w, id, f, &rec, err));
        for (uint32_t r = 0; r < N_TOP; r++) {
            store_example_hdr h = {.row = r, .n = WINDOW, .max_index = 2,
                                   .value = (float)(10 * f + 4 - r), .max_value = 2};
            OK(store_put_example(w, id, f, STORE_EX_TOP, 0, r, &h, tokens, values, err));
        }
        store_example_hdr h = {.row = 50, .n = 3, .max_index = 1, .value = 1};
        OK(store_put_example(w, id, f, STORE_EX_BUCKET, 2, 0, &h, tokens, values, err));
    }
    OK(store_writer_commit(w, err));
    OK(store_profile_finish(s, id, &run, err));
}

static void test_profile_round_trip(store *s)
{
    write_profile(s, "model-a", N_FEATURES, 1.0f);
    store_feature f;
    OK(store_feature_get(s, "model-a", 1, &f, err));
    CHECK(f.count == 7 && f.mean == 1.5 && f.bucket_count[2] == 3 && f.n_top == N_TOP);
    store_example *ex = NULL;
    uint32_t n = 0;
    OK(store_examples_get(s, "model-a", 2, STORE_EX_TOP, 0, 3, &ex, &n, err));
    CHECK(n == 3);
    for (uint32_t i = 0; i < n; i++)
        CHECK(ex[i].h.value == (float)(24 - i) && ex[i].h.n == WINDOW && ex[i].values[2] == 2 &&
              ex[i].tokens[1] == 1);
    store_examples_free(ex, n);
    OK(store_examples_get(s, "model-a", 0, STORE_EX_BUCKET, 2, 100, &ex, &n, err));
    CHECK(n == 1 && ex[0].h.row == 50 && ex[0].h.n == 3);
    store_examples_free(ex, n);
    OK(store_examples_get(s, "model-a", 0, STORE_EX_BUCKET, 3, 100, &ex, &n, err));
    CHECK(n == 0);
    store_examples_free(ex, n);
    sae_error e;
    CHECK(store_feature_get(s, "model-a", N_FEATURES, &f, &e) == STORE_NOT_FOUND);
    CHECK(store_feature_get(s, "nobody", 0, &f, &e) == STORE_NOT_FOUND);
    char *vocab = NULL;
    OK(store_vocab_get(s, "model-a", &vocab, err));
    CHECK(vocab && !strcmp(vocab, "[\"a\", \"b\"]"));
    free(vocab);
    OK(store_check(s, err));
}

typedef struct feature_seen {
    uint32_t first, n, stop_after;
    int bad;
} feature_seen;

static int see_feature(void *ctx, uint32_t feature, const store_feature *f)
{
    feature_seen *c = ctx;
    if (feature != c->first + c->n || f->count != 7)
        c->bad++;
    return ++c->n == c->stop_after;
}

/* The list: every feature from first on, in order, stopping when asked; the
 * refusals of feature_get (no profile, incomplete). */
static void test_feature_list(store *s)
{
    feature_seen c = {.first = 0};
    OK(store_feature_list(s, "model-a", 0, see_feature, &c, err));
    CHECK(c.n == N_FEATURES && !c.bad);
    c = (feature_seen){.first = 1};
    OK(store_feature_list(s, "model-a", 1, see_feature, &c, err));
    CHECK(c.n == N_FEATURES - 1 && !c.bad);
    c = (feature_seen){.first = 0, .stop_after = 2};
    OK(store_feature_list(s, "model-a", 0, see_feature, &c, err));
    CHECK(c.n == 2 && !c.bad);
    c = (feature_seen){.first = N_FEATURES};
    OK(store_feature_list(s, "model-a", N_FEATURES, see_feature, &c, err));
    CHECK(c.n == 0);
    sae_error e = {{0}};
    CHECK(store_feature_list(s, "nobody", 0, see_feature, &c, &e) == STORE_NOT_FOUND);
    store_profile_run run = run_of(2);
    OK(store_profile_begin(s, "model-d", "{}", NULL, &run, err));
    CHECK(store_feature_list(s, "model-d", 0, see_feature, &c, &e) == SAE_ERR &&
          strstr(e.msg, "incomplete"));
    write_profile(s, "model-d", 2, 1.0f);
}

/* A rerun with fewer features leaves none of the old ones behind. */
static void test_rerun_replaces(store *s)
{
    write_profile(s, "model-b", 5, 1.0f);
    write_profile(s, "model-b", 2, 2.0f);
    store_feature f;
    sae_error e;
    OK(store_feature_get(s, "model-b", 1, &f, err));
    CHECK(f.mean == 3.0);
    CHECK(store_feature_get(s, "model-b", 3, &f, &e) == STORE_NOT_FOUND);
    OK(store_check(s, err));
}

static void test_incomplete_refused_and_checked(store *s)
{
    store_profile_run run = run_of(2);
    OK(store_profile_begin(s, "model-c", "{}", NULL, &run, err));
    store_feature f;
    sae_error e = {{0}};
    CHECK(store_feature_get(s, "model-c", 0, &f, &e) == SAE_ERR && strstr(e.msg, "incomplete"));
    OK(store_check(s, err));            /* a running run may be partial */
    /* Marked complete without its features: the check must object. */
    OK(store_profile_finish(s, "model-c", &run, err));
    CHECK(store_check(s, &e) == SAE_ERR && strstr(e.msg, "model-c"));
    write_profile(s, "model-c", 2, 1.0f);
    OK(store_check(s, err));
}

static int count_expl(void *ctx, const store_explanation *e)
{
    int *n = ctx;
    CHECK(e->bucket < STORE_N_BUCKETS && strstr(e->json, "score"));
    (*n)++;
    return 0;
}

static int count_job(void *ctx, const char *id, const char *json)
{
    (void)json;
    CHECK(!strncmp(id, "job-", 4));
    (*(int *)ctx)++;
    return 0;
}

static void test_explanations_and_jobs(store *s)
{
    store_writer *w = NULL;
    OK(store_writer_begin(s, &w, err));
    OK(store_put_explanation(w, "model-a", 1, 0, "detection", "{\"score\": 0.5}", err));
    OK(store_put_explanation(w, "model-a", 1, 4, "fuzz", "{\"score\": 0.7}", err));
    OK(store_put_explanation(w, "model-a", 1, 4, "fuzz", "{\"score\": 0.9}", err)); /* replaces */
    sae_error e;
    CHECK(store_put_explanation(w, "model-a", 1, 5, "fuzz", "{}", &e) == SAE_ERR);
    OK(store_writer_commit(w, err));
    int n = 0;
    OK(store_explanation_list(s, "model-a", count_expl, &n, err));
    CHECK(n == 2);
    /* One feature's range: feature 1 has both, feature 0 none. */
    n = 0;
    OK(store_explanation_list_feature(s, "model-a", 1, count_expl, &n, err));
    CHECK(n == 2);
    n = 0;
    OK(store_explanation_list_feature(s, "model-a", 0, count_expl, &n, err));
    CHECK(n == 0);
    OK(store_job_put(s, "job-1", "{\"state\": \"queued\"}", err));
    OK(store_job_put(s, "job-2", "{\"state\": \"done\"}", err));
    char *json = NULL;
    OK(store_job_get(s, "job-2", &json, err));
    CHECK(json && strstr(json, "done"));
    free(json);
    CHECK(store_job_get(s, "job-3", &json, &e) == STORE_NOT_FOUND);
    n = 0;
    OK(store_job_list(s, count_job, &n, err));
    CHECK(n == 2);
    CHECK(store_job_put(s, "bad id", "{}", &e) == SAE_ERR);
    OK(store_check(s, err));
}

static int collect_served(void *ctx, const char *id, const char *json)
{
    char *seen = ctx;
    strcat(seen, id);
    strcat(seen, strstr(json, "/ckpt") ? "+" : "?");
    return 0;
}

/* Served-model records sit beside a profile without disturbing it, and
 * deleting one leaves the profile in place. */
static void test_served(store *s)
{
    OK(store_served_put(s, "model-a", "{\"path\": \"/ckpt/a\"}", err));
    OK(store_served_put(s, "zeta", "{\"path\": \"/ckpt/z\"}", err));
    char seen[64] = "";
    OK(store_served_list(s, collect_served, seen, err));
    CHECK(!strcmp(seen, "model-a+zeta+"));
    OK(store_served_del(s, "zeta", err));
    sae_error e;
    CHECK(store_served_del(s, "zeta", &e) == STORE_NOT_FOUND);
    seen[0] = '\0';
    OK(store_served_list(s, collect_served, seen, err));
    CHECK(!strcmp(seen, "model-a+"));
    store_feature f;
    OK(store_feature_get(s, "model-a", 0, &f, err));
    OK(store_check(s, err));
}

int main(void)
{
    char dir[] = "/tmp/test_store_XXXXXX";
    if (!mkdtemp(dir))
        return 1;
    store *s = NULL;
    OK(store_open(dir, &s, err));
    if (!s)
        return 1;
    test_profile_round_trip(s);
    test_feature_list(s);
    test_rerun_replaces(s);
    test_incomplete_refused_and_checked(s);
    test_explanations_and_jobs(s);
    test_served(s);
    store_close(s);
    /* Reopening finds the same data and schema. */
    OK(store_open(dir, &s, err));
    if (s) {
        OK(store_check(s, err));
        store_close(s);
    }
    char cmd[64];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0)
        failures++;
    if (failures)
        fprintf(stderr, "test_store: %d failure(s)\n", failures);
    return failures ? 1 : 0;
}
