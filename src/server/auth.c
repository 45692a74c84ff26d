/* auth.c - see auth.h. */
#include "auth.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define TOKEN_MAX 4096

static char *admin_token;       /* NULL: admin endpoints are disabled */
static size_t admin_token_len;

static int set_token(const char *t, size_t n, const char *from, char *err, size_t errlen)
{
    while (n && (t[n - 1] == '\n' || t[n - 1] == '\r' || t[n - 1] == ' '))
        n--;
    if (n < 16) {
        snprintf(err, errlen, "the admin token from %s is shorter than 16 bytes", from);
        return -1;
    }
    admin_token = malloc(n + 1);
    if (!admin_token) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    memcpy(admin_token, t, n);
    admin_token[n] = '\0';
    admin_token_len = n;
    return 0;
}

int auth_init(const char *token_file, char *err, size_t errlen)
{
    if (token_file) {
        FILE *f = fopen(token_file, "rb");
        if (!f) {
            snprintf(err, errlen, "--admin-token-file %s: cannot open", token_file);
            return -1;
        }
        char buf[TOKEN_MAX + 1];
        size_t n = fread(buf, 1, sizeof buf, f);
        int bad = ferror(f) || n > TOKEN_MAX;
        fclose(f);
        if (bad) {
            snprintf(err, errlen, "--admin-token-file %s: unreadable or over %d bytes",
                     token_file, TOKEN_MAX);
            return -1;
        }
        return set_token(buf, n, token_file, err, errlen);
    }
    const char *env = getenv("SAED_ADMIN_TOKEN");
    if (env && *env)
        return set_token(env, strlen(env), "SAED_ADMIN_TOKEN", err, errlen);
    return 0;
}

/* Equal length and bytes, in time that depends only on the lengths. */
static bool equal_ct(const char *a, size_t an, const char *b, size_t bn)
{
    unsigned char diff = an != bn;
    for (size_t i = 0; i < bn; i++)
        diff |= (unsigned char)(a[i < an ? i : 0] ^ b[i]);
    return diff == 0 && an > 0;
}

int auth_check(const char *h, api_err *e)
{
    if (!admin_token)
        return api_fail(e, 403, "admin_disabled", "no admin token is configured on this server");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0)
        return api_fail(e, 401, "unauthorized", "admin endpoints need "
                        "\"Authorization: Bearer <token>\"");
    const char *t = h + 7;
    if (!equal_ct(t, strlen(t), admin_token, admin_token_len))
        return api_fail(e, 401, "invalid_token", "the bearer token is not valid");
    return 0;
}

void auth_free(void)
{
    free(admin_token);
    admin_token = NULL;
}
