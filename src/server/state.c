/* state.c - see state.h. */
#include "state.h"

#include <stdatomic.h>

static atomic_bool ready;
static store *the_store;

void state_set_ready(bool r)
{
    atomic_store(&ready, r);
}

bool state_ready(void)
{
    return atomic_load(&ready);
}

void state_set_store(store *s)
{
    the_store = s;
}

store *state_store(void)
{
    return the_store;
}
