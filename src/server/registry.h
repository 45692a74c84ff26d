/* registry.h - the models this daemon serves: id -> loaded model + its
 * batcher, reference counted so that an unload waits for the requests that
 * are using the model (the last release frees it).
 *
 * What must survive a restart (id -> checkpoint path of admin-registered
 * models) is kept in the store's served-model records. */
#ifndef SAED_REGISTRY_H
#define SAED_REGISTRY_H

#include <limits.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "apierr.h"
#include "batcher.h"
#include "sae.h"
#include "store.h"

#define MODEL_ID_MAX 64

typedef struct model_entry {
    char id[MODEL_ID_MAX + 1];
    char path[PATH_MAX];
    bool persistent;            /* registered through the admin API */
    sae_model *model;
    batcher *batcher;
    atomic_int refs;
} model_entry;

/* st may be NULL (nothing survives a restart); the caller closes it after
 * registry_shutdown. */
void registry_init(store *st, const batcher_opts *bo, const char *device);
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
/* Reloads the store's served models (at start); failures are logged. */
void registry_restore(void);
void registry_shutdown(void);

#endif
