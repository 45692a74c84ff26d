/* registry.h - the models this daemon serves: id -> loaded model + its
 * batcher, reference counted so that an unload waits for the requests that
 * are using the model (the last release frees it).
 *
 * What must survive a restart (id -> checkpoint path of admin-registered
 * models) goes through a registry_persist: a small interface that the LMDB
 * store implements (persist_store.c) and, until it exists, a JSON file in the
 * state directory (persist_file.c). The registry never knows which. */
#ifndef SAED_REGISTRY_H
#define SAED_REGISTRY_H

#include <limits.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "apierr.h"
#include "batcher.h"
#include "sae.h"

#define MODEL_ID_MAX 64

typedef struct registry_persist {
    void *ctx;
    int (*put)(void *ctx, const char *id, const char *path, sae_error *err);
    int (*del)(void *ctx, const char *id, sae_error *err);
    /* Calls each(arg, id, path) for every stored model. */
    int (*each)(void *ctx, void (*fn)(void *arg, const char *id, const char *path), void *arg,
                sae_error *err);
    void (*close)(void *ctx);
} registry_persist;

typedef struct model_entry {
    char id[MODEL_ID_MAX + 1];
    char path[PATH_MAX];
    bool persistent;            /* registered through the admin API */
    sae_model *model;
    batcher *batcher;
    atomic_int refs;
} model_entry;

/* persist may be NULL (nothing survives a restart). */
void registry_init(const registry_persist *persist, const batcher_opts *bo, const char *device);
/* Letters, digits, '.', '_', '-'; 1..64 bytes; not starting with '.'. */
bool registry_valid_id(const char *id);
/* Loads the checkpoint at path (already checked by the caller) as id. 409 if
 * the id is taken, 422 if the checkpoint does not load. With persist, the
 * record is written before the model becomes visible. */
int registry_add(const char *id, const char *path, bool persist, api_err *e);
/* 404 if unknown. The model is freed once its last request is done. */
int registry_remove(const char *id, api_err *e);
/* A counted reference, or NULL. */
model_entry *registry_get(const char *id);
void registry_release(model_entry *m);
/* References to every model (release each), in id order; returns the count. */
int registry_snapshot(model_entry **out, int max);
int registry_count(void);
/* Reloads what the persist layer holds (at start); failures are logged. */
void registry_restore(void);
void registry_shutdown(void);

#endif
