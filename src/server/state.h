/* state.h - the daemon's lifecycle as the health endpoints report it, and
 * the store every part of it shares. */
#ifndef SAED_STATE_H
#define SAED_STATE_H

#include <stdbool.h>

#include "store.h"

/* Set once the startup loads are done; cleared when draining. */
void state_set_ready(bool ready);
bool state_ready(void);

/* The LMDB store under --state-dir: set once at start, before HTTP starts,
 * and closed after HTTP and the registry have stopped. */
void state_set_store(store *s);
store *state_store(void);

#endif
