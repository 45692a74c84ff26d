/* h_admin.c - model registration. Loading reads a checkpoint from disk, which
 * can take seconds, so it runs on a short-lived thread of its own while the
 * connection is suspended. */
#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "handlers.h"
#include "http.h"
#include "paths.h"
#include "registry.h"
#include "reqparse.h"

typedef struct load_job {
    req *r;
    char id[MODEL_ID_MAX + 1];
    char path[PATH_MAX];
} load_job;

int h_admin_models_list(req *r)
{
    model_entry *all[256];
    int n = registry_snapshot(all, 256);
    json_t *arr = json_array();
    for (int i = 0; i < n; i++) {
        json_t *o = json_pack("{s:s, s:s, s:b}", "id", all[i]->id, "path", all[i]->path,
                              "persistent", all[i]->persistent);
        if (arr && o)
            json_array_append_new(arr, o);
        else
            json_decref(o);
        registry_release(all[i]);
    }
    json_t *root = arr ? json_pack("{so}", "models", arr) : NULL;
    char *text = root ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    if (text)
        reply(r, 200, "application/json", text, strlen(text));
    else
        reply_error(r, 503, "out_of_memory", "no memory for the reply");
    return HANDLER_DONE;
}

static void *load_thread(void *arg)
{
    load_job *j = arg;
    api_err e;
    if (registry_add(j->id, j->path, true, &e) < 0) {
        reply_api_err(j->r, &e);
    } else {
        char body[PATH_MAX + 256];
        json_t *o = json_pack("{s:s, s:s}", "id", j->id, "path", j->path);
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        snprintf(body, sizeof body, "%s", text ? text : "{}");
        free(text);
        reply_json(j->r, 201, body);
    }
    req_resume(j->r);
    free(j);
    return NULL;
}

/* {"id", "path"}: validated here, loaded on a thread. */
static int read_load_request(req *r, load_job *j, api_err *e)
{
    if (r->content_type && strncasecmp(r->content_type, "application/json", 16) != 0)
        return api_fail(e, 415, "unsupported_media_type", "send application/json");
    if (!json_depth_ok(r->body ? r->body : "", r->body_len, REQ_MAX_JSON_DEPTH))
        return api_fail(e, 400, "too_deep", "JSON nests too deep");
    json_error_t jerr;
    json_t *o = json_loadb(r->body ? r->body : "", r->body_len, 0, &jerr);
    if (!o)
        return api_fail(e, 400, "invalid_json", "invalid JSON: %s", jerr.text);
    const char *id = json_string_value(json_object_get(o, "id"));
    const char *path = json_string_value(json_object_get(o, "path"));
    int rc = 0;
    if (!json_is_object(o) || !id || !path)
        rc = api_fail(e, 422, "invalid_request", "want {\"id\": string, \"path\": string}");
    else if (!registry_valid_id(id))
        rc = api_fail(e, 422, "invalid_id", "model ids are 1-%d letters, digits, '.', '_' or "
                      "'-' (not starting with '.')", MODEL_ID_MAX);
    else if ((rc = paths_resolve(path, j->path, e)) == 0)
        snprintf(j->id, sizeof j->id, "%s", id);
    json_decref(o);
    return rc;
}

int h_admin_model_load(req *r)
{
    load_job *j = calloc(1, sizeof *j);
    if (!j) {
        reply_error(r, 503, "out_of_memory", "no memory for the request");
        return HANDLER_DONE;
    }
    api_err e;
    if (read_load_request(r, j, &e) < 0) {
        free(j);
        reply_api_err(r, &e);
        return HANDLER_DONE;
    }
    j->r = r;
    req_suspend(r);
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&t, &attr, load_thread, j);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        free(j);
        reply_error(r, 503, "busy", "cannot start a loader thread");
        req_resume(r);
    }
    return HANDLER_PENDING;
}

int h_admin_model_unload(req *r)
{
    api_err e;
    if (registry_remove(r->params[0], &e) < 0)
        reply_api_err(r, &e);
    else
        reply(r, 204, NULL, NULL, 0);
    return HANDLER_DONE;
}
