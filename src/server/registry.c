/* registry.c - see registry.h. A small array under one mutex: a daemon serves
 * a handful of models, and lookups are a few string compares. */
#include "registry.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "backend.h"
#include "log.h"
#include "metrics.h"
#include "util.h"

#define MAX_MODELS 256

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static model_entry *models[MAX_MODELS];
static int n_models;
static store *db;     /* served-model records; NULL: nothing survives a restart */
static batcher_opts bopts;
static const char *device = "auto";

void registry_init(store *st, const batcher_opts *bo, const char *dev)
{
    db = st;
    bopts = *bo;
    device = dev;
}

bool registry_valid_id(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > MODEL_ID_MAX || id[0] == '.')
        return false;
    for (const char *p = id; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '.' || *p == '_' || *p == '-'))
            return false;
    return true;
}

static int find_locked(const char *id)
{
    for (int i = 0; i < n_models; i++)
        if (!strcmp(models[i]->id, id))
            return i;
    return -1;
}

static void entry_free(model_entry *m)
{
    batcher_stop(m->batcher);
    sae_free(m->model);
    free(m);
}

/* The batch wait: the configured one, or by default one that fits the device.
 * On the CPU a batch streams all of W_enc whatever its rows, so waiting for
 * the clients of the last batch pays: 64 one-row clients were served 1.4x
 * faster with 2000 us than with none (bench/RESULTS.md). A GPU batch of a few
 * rows costs about what one of 64 does, so batches run back to back as rows
 * come: 1.7x the requests at half the latency on an H200 than with 2000 us. */
static int batch_wait_us(const sae_model *m)
{
    if (bopts.wait_us >= 0)
        return bopts.wait_us;
    return m->backend == &sae_backend_cpu ? 2000 : 0;
}

/* The slow part, outside the lock: read the checkpoint, move it to the
 * device, start its batch thread. */
static model_entry *entry_load(const char *id, const char *path, api_err *e)
{
    model_entry *m = calloc(1, sizeof *m);
    if (!m) {
        api_fail(e, 503, "out_of_memory", "no memory for a model");
        return NULL;
    }
    snprintf(m->id, sizeof m->id, "%s", id);
    snprintf(m->path, sizeof m->path, "%s", path);
    atomic_init(&m->refs, 1);       /* the registry's own */
    sae_error err;
    if (sae_load(path, &m->model, &err) != SAE_OK ||
        sae_model_use_device(m->model, device, &err) != SAE_OK ||
        batcher_start(m->model, &(batcher_opts){bopts.max_rows, batch_wait_us(m->model)},
                      &m->batcher, &err) != SAE_OK) {
        api_fail(e, 422, "bad_checkpoint", "%s", err.msg);
        sae_free(m->model);
        free(m);
        return NULL;
    }
    return m;
}

static int record_put(const char *id, const char *path, sae_error *err);

/* write: store the record; persistent: the model came from the store or the
 * admin API (so an unload deletes its record). */
static int add_entry(const char *id, const char *path, bool write, bool persistent, api_err *e)
{
    if (!registry_valid_id(id))
        return api_fail(e, 422, "invalid_id", "model ids are 1-%d letters, digits, '.', '_' "
                        "or '-' (not starting with '.')", MODEL_ID_MAX);
    pthread_mutex_lock(&mu);
    int taken = find_locked(id) >= 0;
    pthread_mutex_unlock(&mu);
    if (taken)
        return api_fail(e, 409, "model_exists", "a model with id '%s' is loaded", id);
    model_entry *m = entry_load(id, path, e);
    if (!m)
        return -1;
    m->persistent = persistent;
    pthread_mutex_lock(&mu);
    int rc = 0;
    sae_error err;
    if (find_locked(id) >= 0)
        rc = api_fail(e, 409, "model_exists", "a model with id '%s' is loaded", id);
    else if (n_models == MAX_MODELS)
        rc = api_fail(e, 409, "too_many_models", "at most %d models", MAX_MODELS);
    else if (write && db && record_put(id, path, &err) != SAE_OK)
        rc = api_fail(e, 503, "store_error", "%s", err.msg);
    if (rc == 0) {
        models[n_models++] = m;
        metrics_models_set(n_models);
    }
    pthread_mutex_unlock(&mu);
    if (rc != 0)
        entry_free(m);
    else
        saed_log("model %s loaded from %s (%s, d_in %d, d_sae %d)", id, path,
                 m->model->backend ? m->model->backend->name : "cpu", m->model->cfg.d_in,
                 m->model->cfg.d_sae);
    return rc;
}

int registry_add(const char *id, const char *path, bool persist_it, api_err *e)
{
    return add_entry(id, path, persist_it, persist_it, e);
}

int registry_remove(const char *id, api_err *e)
{
    pthread_mutex_lock(&mu);
    int i = find_locked(id);
    model_entry *m = i >= 0 ? models[i] : NULL;
    int rc = 0;
    sae_error err;
    if (!m)
        rc = api_fail(e, 404, "model_not_found", "no model '%s'", id);
    else if (m->persistent && db && store_served_del(db, id, &err) == SAE_ERR)
        rc = api_fail(e, 503, "store_error", "%s", err.msg);
    if (rc == 0) {
        models[i] = models[--n_models];
        metrics_models_set(n_models);
    }
    pthread_mutex_unlock(&mu);
    if (rc == 0) {
        saed_log("model %s unloaded", id);
        registry_release(m);
    }
    return rc;
}

model_entry *registry_get(const char *id)
{
    pthread_mutex_lock(&mu);
    int i = find_locked(id);
    model_entry *m = i >= 0 ? models[i] : NULL;
    if (m)
        atomic_fetch_add(&m->refs, 1);
    pthread_mutex_unlock(&mu);
    return m;
}

void registry_release(model_entry *m)
{
    if (m && atomic_fetch_sub(&m->refs, 1) == 1)
        entry_free(m);
}

static int by_id(const void *a, const void *b)
{
    return strcmp((*(model_entry *const *)a)->id, (*(model_entry *const *)b)->id);
}

int registry_snapshot(model_entry **out, int max)
{
    pthread_mutex_lock(&mu);
    int n = n_models < max ? n_models : max;
    for (int i = 0; i < n; i++) {
        out[i] = models[i];
        atomic_fetch_add(&out[i]->refs, 1);
    }
    pthread_mutex_unlock(&mu);
    qsort(out, (size_t)n, sizeof *out, by_id);
    return n;
}

int registry_count(void)
{
    pthread_mutex_lock(&mu);
    int n = n_models;
    pthread_mutex_unlock(&mu);
    return n;
}

/* A served-model record: {"path": "<checkpoint directory>"}. */
static int record_put(const char *id, const char *path, sae_error *err)
{
    json_t *j = json_pack("{ss}", "path", path);
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!text)
        return sae_fail(err, "out of memory");
    int rc = store_served_put(db, id, text, err);
    free(text);
    return rc;
}

static int restore_one(void *arg, const char *id, const char *json)
{
    (void)arg;
    json_t *j = json_loads(json, 0, NULL);
    const char *path = json_string_value(json_object_get(j, "path"));
    api_err e;
    model_entry *have = registry_get(id);
    if (!path) {
        saed_log("model %s: stored record has no path; skipped", id);
    } else if (have) {     /* a --model flag of the same id wins */
        saed_log("model %s: stored record (%s) skipped, the id is taken by --model", id, path);
    } else if (add_entry(id, path, false, true, &e) != 0) {
        saed_log("model %s: stored record %s does not load: %s", id, path, e.msg);
    }
    registry_release(have);
    json_decref(j);
    return 0;
}

void registry_restore(void)
{
    sae_error err;
    if (db && store_served_list(db, restore_one, NULL, &err) != SAE_OK)
        saed_log("cannot read the stored models: %s", err.msg);
}

void registry_shutdown(void)
{
    pthread_mutex_lock(&mu);
    int n = n_models;
    model_entry *all[MAX_MODELS];
    memcpy(all, models, (size_t)n * sizeof *all);
    n_models = 0;
    pthread_mutex_unlock(&mu);
    for (int i = 0; i < n; i++)
        registry_release(all[i]);
    db = NULL;
}
