/* persist_file.c - the model registry's records as one small JSON file,
 * {"models": {"id": "path", ...}}, rewritten atomically (temp file, fsync,
 * rename) on every change so a crash leaves the old or the new file. */
#include "persist.h"

#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util.h"

typedef struct file_store {
    char path[PATH_MAX];
    json_t *models;     /* id -> path; the file's content */
} file_store;

static int save(file_store *s, sae_error *err)
{
    json_t *root = json_pack("{sO}", "models", s->models);
    char *text = root ? json_dumps(root, JSON_INDENT(2) | JSON_SORT_KEYS) : NULL;
    json_decref(root);
    if (!text)
        return sae_fail(err, "out of memory");
    int rc = sae_write_file_atomic(s->path, text, strlen(text), err);
    free(text);
    return rc;
}

static int fs_put(void *ctx, const char *id, const char *path, sae_error *err)
{
    file_store *s = ctx;
    if (json_object_set_new(s->models, id, json_string(path)) != 0)
        return sae_fail(err, "out of memory");
    return save(s, err);
}

static int fs_del(void *ctx, const char *id, sae_error *err)
{
    file_store *s = ctx;
    json_object_del(s->models, id);
    return save(s, err);
}

static int fs_each(void *ctx, void (*fn)(void *, const char *, const char *), void *arg,
                   sae_error *err)
{
    (void)err;
    file_store *s = ctx;
    json_t *copy = json_copy(s->models);     /* fn may call put/del */
    const char *id;
    json_t *v;
    json_object_foreach(copy, id, v) {
        if (json_is_string(v))
            fn(arg, id, json_string_value(v));
    }
    json_decref(copy);
    return SAE_OK;
}

static void fs_close(void *ctx)
{
    file_store *s = ctx;
    json_decref(s->models);
    free(s);
}

int persist_file_open(const char *state_dir, registry_persist *out, sae_error *err)
{
    file_store *s = calloc(1, sizeof *s);
    if (!s)
        return sae_fail(err, "out of memory");
    snprintf(s->path, sizeof s->path, "%s/models.json", state_dir);
    json_error_t jerr;
    /* A missing file is an empty registry; an unreadable one is an error
     * (starting empty would overwrite it at the next change). */
    json_t *root = NULL;
    if (access(s->path, F_OK) == 0 && !(root = json_load_file(s->path, 0, &jerr))) {
        sae_fail(err, "%s: %s", s->path, jerr.text);
        free(s);
        return SAE_ERR;
    }
    json_t *models = root ? json_object_get(root, "models") : NULL;
    if (root && !json_is_object(models)) {
        sae_fail(err, "%s: want {\"models\": {id: path}}", s->path);
        json_decref(root);
        free(s);
        return SAE_ERR;
    }
    s->models = models ? json_incref(models) : json_object();
    json_decref(root);
    if (!s->models) {
        free(s);
        return sae_fail(err, "out of memory");
    }
    *out = (registry_persist){s, fs_put, fs_del, fs_each, fs_close};
    return SAE_OK;
}
