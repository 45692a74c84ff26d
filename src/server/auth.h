/* auth.h - the admin bearer token. Read once at start from a file or from
 * SAED_ADMIN_TOKEN; compared in constant time; never logged. */
#ifndef SAED_AUTH_H
#define SAED_AUTH_H

#include <stddef.h>

#include "apierr.h"

/* token_file may be NULL (then the environment, then no admin at all). */
int auth_init(const char *token_file, char *err, size_t errlen);
/* 0 when the Authorization header carries the admin token. Otherwise -1 with
 * 401 (no or malformed header, wrong token) or 403 (admin is disabled: no
 * token was configured). */
int auth_check(const char *authorization, api_err *e);
void auth_free(void);

#endif
