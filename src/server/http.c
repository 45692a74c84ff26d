/* http.c - the libmicrohttpd daemon: connection limits, the body limit,
 * routing, the scope check, suspend/resume, one log line per request.
 *
 * MHD runs a pool of network threads over epoll. Handlers run on those
 * threads, so they only do quick work themselves; encoding goes to the
 * batcher's thread while the connection is suspended. */
#include "http.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "auth.h"
#include "listener.h"
#include "log.h"
#include "metrics.h"
#include "registry.h"

struct http_server {
    struct MHD_Daemon *daemon;
    listener *listener;
    /* refusals at the connection cap not yet logged (listener thread only) */
    long refused_unlogged;
    time_t refused_logged_at;
    const saed_config *cfg;
    size_t max_body;
    request_log_mode log;
};

static atomic_long in_flight, connections_open;

long http_in_flight(void)
{
    return atomic_load(&in_flight);
}

long http_connections_open(void)
{
    return atomic_load(&connections_open);
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_ctx,
                          enum MHD_ConnectionNotificationCode code)
{
    (void)cls;
    (void)conn;
    (void)socket_ctx;
    atomic_fetch_add(&connections_open, code == MHD_CONNECTION_NOTIFY_STARTED ? 1 : -1);
}

/* ------------------------------------------------------------------ replies */

void reply(req *r, int status, const char *type, char *body, size_t len)
{
    free(r->resp);
    r->status = status;
    r->resp_type = type;
    r->resp = body;
    r->resp_len = body ? len : 0;
    r->replied = true;
}

void reply_json(req *r, int status, const char *json)
{
    size_t n = strlen(json);
    char *copy = malloc(n + 1);
    if (copy)
        memcpy(copy, json, n + 1);
    reply(r, copy ? status : 500, "application/json", copy, n);
}

static void json_escape_into(char *out, size_t cap, const char *s)
{
    size_t o = 0;
    for (; *s && o + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20) {
            o += (size_t)snprintf(out + o, cap - o, "\\u%04x", c);
        } else {
            out[o++] = (char)c;
        }
    }
    out[o] = '\0';
}

void reply_error(req *r, int status, const char *code, const char *fmt, ...)
{
    char msg[512], esc[1024], body[1200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_escape_into(esc, sizeof esc, msg);
    snprintf(body, sizeof body, "{\"error\": {\"code\": \"%s\", \"message\": \"%s\"}}", code, esc);
    reply_json(r, status, body);
}

void reply_api_err(req *r, const api_err *e)
{
    reply_error(r, e->status, e->code, "%s", e->msg);
}

const char *req_query(req *r, const char *key)
{
    return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, key);
}

void req_suspend(req *r)
{
    r->suspended = true;
    MHD_suspend_connection(r->conn);
}

void req_resume(req *r)
{
    MHD_resume_connection(r->conn);
}

void req_resume_to(req *r, void (*finish)(req *r))
{
    r->finish = finish;
    MHD_resume_connection(r->conn);
}

/* ------------------------------------------------------------------ streams */

/* What MHD's content reader holds for a streamed reply. */
typedef struct stream_box {
    struct MHD_Connection *conn;
    long (*pull)(void *ctx, char *buf, size_t max);
    void (*done)(void *ctx);
    void *ctx;
} stream_box;

void reply_stream(req *r, const char *type, long (*pull)(void *ctx, char *buf, size_t max),
                  void (*done)(void *ctx), void *ctx)
{
    reply(r, 200, type, NULL, 0);
    r->stream_pull = pull;
    r->stream_done = done;
    r->stream_ctx = ctx;
}

void http_stream_wake(void *conn)
{
    MHD_resume_connection(conn);
}

/* Called by MHD on the connection's thread when the socket can take more.
 * Nothing to send: park the connection (MHD's documented way to return 0
 * from a content reader without busy-waiting under internal polling). A wake
 * that comes before the park cancels it, so no wake is lost. */
static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    stream_box *b = cls;
    long n = b->pull(b->ctx, buf, max);
    if (n == HTTP_STREAM_WAIT) {
        MHD_suspend_connection(b->conn);
        return 0;
    }
    return n < 0 ? MHD_CONTENT_READER_END_OF_STREAM : (ssize_t)n;
}

static void stream_free(void *cls)
{
    stream_box *b = cls;
    b->done(b->ctx);
    free(b);
}

/* The streamed reply's response; the stream belongs to it from here on. */
static struct MHD_Response *stream_response(req *r)
{
    stream_box *b = malloc(sizeof *b);
    struct MHD_Response *resp = NULL;
    if (b) {
        *b = (stream_box){r->conn, r->stream_pull, r->stream_done, r->stream_ctx};
        resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_read, b,
                                                 stream_free);
    }
    if (!resp) {
        free(b);
        return NULL;    /* on_completed still calls done */
    }
    r->stream_done = NULL;
    /* Events may be minutes apart: no idle timeout on this connection. */
    MHD_set_connection_option(r->conn, MHD_CONNECTION_OPTION_TIMEOUT, 0u);
    if (MHD_add_response_header(resp, "Cache-Control", "no-cache") != MHD_YES ||
        MHD_add_response_header(resp, "X-Accel-Buffering", "no") != MHD_YES) {
        MHD_destroy_response(resp);     /* calls done */
        return NULL;
    }
    return resp;
}

/* ------------------------------------------------------------------ sending */

static enum MHD_Result send_reply(http_server *s, req *r)
{
    struct MHD_Response *resp;
    if (r->stream_done)
        resp = stream_response(r);
    else
        resp = MHD_create_response_from_buffer(
            r->resp_len, r->resp ? r->resp : (void *)"", r->resp ? MHD_RESPMEM_MUST_FREE
                                                                 : MHD_RESPMEM_PERSISTENT);
    if (!resp)
        return MHD_NO;
    r->resp = NULL;     /* MHD frees it now */
    int ok = 1;
    if (r->resp_type)
        ok &= MHD_add_response_header(resp, "Content-Type", r->resp_type) == MHD_YES;
    if (r->allow)
        ok &= MHD_add_response_header(resp, "Allow", r->allow) == MHD_YES;
    if (r->status == 401)
        ok &= MHD_add_response_header(resp, "WWW-Authenticate", "Bearer") == MHD_YES;
    if (s->cfg->cors_origin) {
        ok &= MHD_add_response_header(resp, "Access-Control-Allow-Origin",
                                      s->cfg->cors_origin) == MHD_YES;
        ok &= MHD_add_response_header(resp, "Vary", "Origin") == MHD_YES;
        if (r->status == 204 && r->allow) {     /* a preflight */
            ok &= MHD_add_response_header(resp, "Access-Control-Allow-Methods", r->allow) ==
                  MHD_YES;
            ok &= MHD_add_response_header(resp, "Access-Control-Allow-Headers",
                                          "Authorization, Content-Type, Accept") == MHD_YES;
            ok &= MHD_add_response_header(resp, "Access-Control-Max-Age", "600") == MHD_YES;
        }
    }
    enum MHD_Result rc = ok ? MHD_queue_response(r->conn, (unsigned)r->status, resp) : MHD_NO;
    MHD_destroy_response(resp);
    return rc;
}

/* ------------------------------------------------------------------ requests */

static void cors_preflight(http_server *s, req *r, const char *path)
{
    char params[ROUTE_MAX_PARAMS][ROUTE_PARAM_MAX + 1];
    static _Thread_local char allow[64];
    if (route_match("OPTIONS", path, params, allow, sizeof allow) != -2) {
        reply_error(r, 404, "not_found", "no route %s", path);
        return;
    }
    (void)s;
    reply(r, 204, NULL, NULL, 0);
    r->allow = allow;   /* sent as Allow; browsers read the CORS headers below */
}

/* The first call for a request: route, scope, declared body size. Anything
 * refused here is answered before the body is read. */
static void admit(http_server *s, req *r, const char *url, const char *method)
{
    static _Thread_local char allow[64];
    if (s->cfg->cors_origin && !strcmp(method, "OPTIONS")) {
        cors_preflight(s, r, url);
        return;
    }
    r->route = route_match(method, url, r->params, allow, sizeof allow);
    if (r->route == -1) {
        reply_error(r, 404, "not_found", "no route %s", url);
        return;
    }
    if (r->route == -2) {
        r->route = -1;
        r->allow = allow;
        reply_error(r, 405, "method_not_allowed", "%s is not allowed here (allowed: %s)", method,
                    allow);
        return;
    }
    if (ROUTES[r->route].scope == SCOPE_ADMIN) {
        api_err e;
        if (auth_check(r->authorization, &e) < 0) {
            reply_api_err(r, &e);
            return;
        }
    }
    const char *cl = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Content-Length");
    if (cl) {
        unsigned long long n = strtoull(cl, NULL, 10);
        if (n > s->max_body)
            reply_error(r, 413, "body_too_large", "the body (%llu bytes) is over the limit of "
                        "%zu bytes", n, s->max_body);
        else
            r->body_cap = (size_t)n;   /* allocate once, exactly */
    }
}

/* Appends a piece of the body; past the limit the bytes are dropped, and a
 * client that keeps sending twice the limit is disconnected. */
static enum MHD_Result take_body(http_server *s, req *r, const char *data, size_t n)
{
    if (r->body_too_large || r->body_len + n > s->max_body) {
        r->body_too_large = true;
        r->body_len += n;
        return r->body_len > 2 * s->max_body ? MHD_NO : MHD_YES;
    }
    if (r->body_len + n + 1 > r->body_cap || !r->body) {
        size_t cap = r->body_cap > r->body_len + n ? r->body_cap : 2 * (r->body_len + n);
        if (cap > s->max_body)
            cap = s->max_body;
        char *p = realloc(r->body, cap + 1);
        if (!p)
            return MHD_NO;
        r->body = p;
        r->body_cap = cap;
    }
    memcpy(r->body + r->body_len, data, n);
    r->body_len += n;
    r->body[r->body_len] = '\0';
    return MHD_YES;
}

static req *new_req(struct MHD_Connection *conn, const char *url, const char *method)
{
    req *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    atomic_fetch_add(&in_flight, 1);
    clock_gettime(CLOCK_MONOTONIC, &r->t0);
    r->conn = conn;
    r->route = -1;
    snprintf(r->method, sizeof r->method, "%s", method);
    snprintf(r->path, sizeof r->path, "%s", url);
    r->content_type = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Type");
    r->accept = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Accept");
    r->authorization = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization");
    return r;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    (void)version;
    http_server *s = cls;
    req *r = *con_cls;
    if (!r) {
        if (!(r = new_req(conn, url, method)))
            return MHD_NO;
        *con_cls = r;
        admit(s, r, url, method);
        return r->replied ? send_reply(s, r) : MHD_YES;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        return r->replied ? MHD_YES : take_body(s, r, upload_data, n);
    }
    if (r->finish) {
        r->finish(r);
        r->finish = NULL;
    }
    if (r->replied)
        return send_reply(s, r);
    if (r->body_too_large) {
        reply_error(r, 413, "body_too_large", "the body is over the limit of %zu bytes",
                    s->max_body);
        return send_reply(s, r);
    }
    if (ROUTES[r->route].handler(r) == HANDLER_PENDING)
        return MHD_YES;
    if (!r->replied)
        reply_error(r, 500, "internal", "the handler gave no reply");
    return send_reply(s, r);
}

static double seconds_since(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) + 1e-9 * (double)(t.tv_nsec - t0->tv_nsec);
}

static const char *termination_name(enum MHD_RequestTerminationCode toe)
{
    switch (toe) {
    case MHD_REQUEST_TERMINATED_COMPLETED_OK: return NULL;
    case MHD_REQUEST_TERMINATED_TIMEOUT_REACHED: return "timeout";
    case MHD_REQUEST_TERMINATED_CLIENT_ABORT: return "client closed";
    case MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN: return "shutdown";
    default: return "aborted";
    }
}

static void client_addr(struct MHD_Connection *conn, char *out, size_t n)
{
    snprintf(out, n, "-");
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (!ci || !ci->client_addr)
        return;
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, out,
                  (socklen_t)n);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, out,
                  (socklen_t)n);
}

/* One line per request (never the Authorization header), the metrics, and
 * the release of everything the request held. */
static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    const http_server *s = cls;
    req *r = *con_cls;
    if (!r)
        return;
    *con_cls = NULL;
    double secs = seconds_since(&r->t0);
    const char *why = termination_name(toe);
    int status = r->replied ? r->status : 0;
    if (s->log == REQUEST_LOG_ALL ||
        (s->log == REQUEST_LOG_ERRORS && (why || status >= 400 || !status))) {
        char addr[64];
        client_addr(conn, addr, sizeof addr);
        saed_log("%s \"%s %s\" %d %zu %.3fms%s%s", addr, r->method, r->path, status,
                 r->replied ? r->resp_len : 0, secs * 1e3, why ? " " : "", why ? why : "");
    }
    metrics_request(r->route, why ? 499 : status, secs);
    free(r->resp);
    free(r->body);
    if (r->stream_done)     /* a stream that never reached MHD */
        r->stream_done(r->stream_ctx);
    if (r->state_free)
        r->state_free(r->state);
    if (r->model)
        registry_release(r->model);
    free(r);
    atomic_fetch_sub(&in_flight, 1);
}

/* ------------------------------------------------------------------ daemon */

static int parse_listen(const char *spec, struct sockaddr_storage *ss, bool *v6, char *err,
                        size_t n)
{
    char host[256];
    const char *colon = strrchr(spec, ':');
    if (!colon || (size_t)(colon - spec) >= sizeof host) {
        snprintf(err, n, "--listen %s: want ADDR:PORT", spec);
        return -1;
    }
    memcpy(host, spec, (size_t)(colon - spec));
    host[colon - spec] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (!colon[1] || *end || port < 0 || port > 65535) {
        snprintf(err, n, "--listen %s: bad port", spec);
        return -1;
    }
    memset(ss, 0, sizeof *ss);
    size_t hl = strlen(host);
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
        host[hl - 1] = '\0';
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
        *v6 = true;
        if (inet_pton(AF_INET6, host + 1, &a->sin6_addr) == 1)
            return 0;
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)ss;
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)port);
        *v6 = false;
        if (inet_pton(AF_INET, host, &a->sin_addr) == 1)
            return 0;
    }
    snprintf(err, n, "--listen %s: '%s' is not a numeric address", spec, host);
    return -1;
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    size_t l = strlen(line);
    while (l && line[l - 1] == '\n')
        line[--l] = '\0';
    saed_log("mhd: %s", line);
}

#define REFUSED_LOG_EVERY_S 10 /* a flood of refusals is one line per this */

/* The listener's connections, dealt out over MHD's pool (see listener.h).
 * One refused (MHD closes it) means the connection cap is reached. */
static void take_connection(void *ctx, int fd, const struct sockaddr *addr, socklen_t addrlen)
{
    http_server *s = ctx;
    if (MHD_add_connection(s->daemon, fd, addr, addrlen) == MHD_YES)
        return;
    metrics_connection_refused();
    s->refused_unlogged++;
    if (saed_log_due(&s->refused_logged_at, REFUSED_LOG_EVERY_S)) {
        saed_log("connections refused: %ld (at the cap of %d connections, --max-connections)",
                 s->refused_unlogged, s->cfg->max_connections);
        s->refused_unlogged = 0;
    }
}

int http_start(const saed_config *cfg, http_server **out, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    bool v6;
    if (parse_listen(cfg->listen, &ss, &v6, err, errlen) < 0)
        return -1;
    http_server *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    s->cfg = cfg;
    s->max_body = (size_t)cfg->max_body_mb << 20;
    s->log = (request_log_mode)config_request_log(cfg);
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ERROR_LOG | MHD_USE_NO_LISTEN_SOCKET | MHD_USE_ITC;
    s->daemon = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, s,
        MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,     /* first, to catch all */
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned)cfg->threads,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)cfg->timeout_s,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)cfg->max_connections,
        /* a request's headers and MHD's buffers; MHD zeroes the pool between
         * requests, so a bigger one costs a bigger memset per request (64 KiB
         * was 8% of the workers' time under 1-row load); bodies stream past it */
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)16 * 1024,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, NULL,
        MHD_OPTION_END);
    if (!s->daemon) {
        snprintf(err, errlen, "cannot start the network threads (see the mhd: line above)");
        free(s);
        return -1;
    }
    char why[160];
    if (listener_start((struct sockaddr *)&ss, v6 ? sizeof(struct sockaddr_in6)
                                                  : sizeof(struct sockaddr_in),
                       take_connection, s, &s->listener, why, sizeof why) < 0) {
        snprintf(err, errlen, "cannot listen on %s: %s", cfg->listen, why);
        MHD_stop_daemon(s->daemon);
        free(s);
        return -1;
    }
    saed_log("listening on %s (port %u), %d network threads", cfg->listen,
             listener_port(s->listener), cfg->threads);
    *out = s;
    return 0;
}

void http_stop(http_server *s)
{
    if (!s)
        return;
    listener_stop(s->listener);
    MHD_stop_daemon(s->daemon);
    free(s);
}
