/* state.h - the daemon's lifecycle as the health endpoints report it. */
#ifndef SAED_STATE_H
#define SAED_STATE_H

#include <stdbool.h>

/* Set once the startup loads are done; cleared when draining. */
void state_set_ready(bool ready);
bool state_ready(void);

#endif
