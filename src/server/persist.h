/* persist.h - implementations of registry_persist (registry.h). */
#ifndef SAED_PERSIST_H
#define SAED_PERSIST_H

#include "registry.h"

/* <state_dir>/models.json, replaced atomically on every change. The stand-in
 * until the LMDB store (src/store) is wired in. */
int persist_file_open(const char *state_dir, registry_persist *out, sae_error *err);

#endif
