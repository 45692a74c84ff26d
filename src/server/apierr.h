/* apierr.h - an API error: the HTTP status, a stable machine-readable code and
 * a message for people. Every layer that can refuse a request fills one; only
 * http.c turns it into a response {"error": {"code", "message"}}. */
#ifndef SAED_APIERR_H
#define SAED_APIERR_H

typedef struct api_err {
    int status;
    const char *code;       /* static string, e.g. "invalid_json" */
    char msg[384];
} api_err;

/* Fills e and returns -1, so callers can `return api_fail(e, 422, ...)`. */
int api_fail(api_err *e, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
