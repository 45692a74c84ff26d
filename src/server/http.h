/* http.h - the HTTP layer as handlers see it. Only http.c includes
 * microhttpd.h; handlers read a req and answer with reply_*.
 *
 * Lifecycle of a request: http.c matches the route, checks the scope, reads
 * the body (up to the limit) and calls the handler once. The handler either
 * replies at once, or calls req_suspend, hands the work to another thread and
 * returns HANDLER_PENDING; that thread replies and calls req_resume, or
 * calls req_resume_to so that the network thread writes the reply (work that
 * need not hold up the other thread, such as formatting a response). The req
 * lives until the response is sent (then its model reference and handler
 * state are released). */
#ifndef SAED_HTTP_H
#define SAED_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "apierr.h"
#include "config.h"
#include "routes.h"

struct model_entry;

typedef struct req {
    void *conn;                     /* struct MHD_Connection */
    int route;                      /* index in ROUTES, or -1 */
    char params[ROUTE_MAX_PARAMS][ROUTE_PARAM_MAX + 1];
    char method[16];
    char path[256];                 /* for the log line (truncated) */
    const char *content_type, *accept, *authorization;
    char *body;                     /* NUL-terminated, 16-byte aligned */
    size_t body_len, body_cap;
    bool body_too_large;
    struct timespec t0;
    /* reply */
    int status;
    char *resp;
    size_t resp_len;
    const char *resp_type;
    const char *allow;              /* for 405 */
    bool replied, suspended;
    void (*finish)(struct req *r);  /* req_resume_to's: replies on the network thread */
    /* released when the response is done */
    struct model_entry *model;
    void *state;
    void (*state_free)(void *state);
    /* a streamed reply (reply_stream); handed to MHD when it is sent */
    long (*stream_pull)(void *ctx, char *buf, size_t max);
    void (*stream_done)(void *ctx);
    void *stream_ctx;
} req;

/* The body is taken (freed by http.c). */
void reply(req *r, int status, const char *type, char *body, size_t len);
/* Copies a JSON text. */
void reply_json(req *r, int status, const char *json);
void reply_error(req *r, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void reply_api_err(req *r, const api_err *e);

/* A query-string argument, or NULL. */
const char *req_query(req *r, const char *key);

/* Suspends before handing the request to another thread; that thread replies
 * and then resumes. */
void req_suspend(req *r);
void req_resume(req *r);
/* Resumes; the network thread then calls finish(r), which must reply. */
void req_resume_to(req *r, void (*finish)(req *r));

/* Streamed replies (Server-Sent Events). After reply_stream, http.c calls
 * pull(ctx, buf, max) whenever the client can take more bytes; pull returns
 * the bytes it wrote, HTTP_STREAM_WAIT when it has nothing right now (the
 * connection is then parked, using no thread, until http_stream_wake), or
 * HTTP_STREAM_END. done(ctx) runs exactly once, when nothing will call pull
 * again; after it returns, the stream's connection must not be woken. The
 * connection has no idle timeout (pull should send keep-alive comments).
 * Before http_stop every stream must have ended: MHD cannot stop with a
 * parked connection. */
#define HTTP_STREAM_WAIT 0L
#define HTTP_STREAM_END (-1L)
void reply_stream(req *r, const char *type, long (*pull)(void *ctx, char *buf, size_t max),
                  void (*done)(void *ctx), void *ctx);
/* Unparks a stream's connection (conn is the req's conn). Safe from any
 * thread while the stream's done has not run; harmless if it is not parked. */
void http_stream_wake(void *conn);

typedef struct http_server http_server;

int http_start(const saed_config *cfg, http_server **out, char *err, size_t errlen);
/* Requests accepted and not yet answered. */
long http_in_flight(void);
/* Connections open now (for /metrics). */
long http_connections_open(void);
void http_stop(http_server *s);

#endif
