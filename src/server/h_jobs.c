/* h_jobs.c - the admin job endpoints: HTTP in, jobs.c calls, JSON out. None
 * of them waits for a child or for the store. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "handlers.h"
#include "http.h"
#include "job_params.h"
#include "jobs.h"
#include "reqparse.h"

/* Replies with a JSON value (taking it) or the error. */
static int answer(req *r, int rc, int status, json_t *o, const api_err *e)
{
    if (rc < 0) {
        reply_api_err(r, e);
        return HANDLER_DONE;
    }
    char *text = json_dumps(o, JOB_JSON_FLAGS);
    json_decref(o);
    if (text)
        reply(r, status, "application/json", text, strlen(text));
    else
        reply_error(r, 503, "out_of_memory", "no memory for the reply");
    return HANDLER_DONE;
}

static int read_body(req *r, json_t **out, api_err *e)
{
    if (r->content_type && strncasecmp(r->content_type, "application/json", 16) != 0)
        return api_fail(e, 415, "unsupported_media_type", "send application/json");
    const char *body = r->body ? r->body : "";
    if (!json_depth_ok(body, r->body_len, REQ_MAX_JSON_DEPTH))
        return api_fail(e, 400, "too_deep", "JSON nests too deep");
    json_error_t jerr;
    *out = json_loadb(body, r->body_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!*out)
        return api_fail(e, 400, "invalid_json", "invalid JSON: %s", jerr.text);
    return 0;
}

int h_jobs_submit(req *r)
{
    api_err e;
    json_t *body = NULL, *params = NULL, *paths = NULL, *job = NULL;
    job_kind kind;
    int rc = read_body(r, &body, &e);
    if (rc == 0)
        rc = job_params_check(body, &kind, &params, &paths, &e);
    json_decref(body);
    if (rc == 0)
        rc = jobs_submit(kind, params, paths, &job, &e);   /* takes params, paths */
    return answer(r, rc, 202, job, &e);
}

int h_jobs_list(req *r)
{
    api_err e;
    json_t *o = NULL;
    int rc = jobs_list(&o, &e);
    return answer(r, rc, 200, o, &e);
}

int h_job_get(req *r)
{
    api_err e;
    json_t *o = NULL;
    int rc = jobs_get(r->params[0], &o, &e);
    return answer(r, rc, 200, o, &e);
}

int h_job_cancel(req *r)
{
    api_err e;
    json_t *o = NULL;
    int rc = jobs_cancel(r->params[0], &o, &e);
    return answer(r, rc, 202, o, &e);
}

int h_job_resume(req *r)
{
    api_err e;
    json_t *o = NULL;
    int rc = jobs_resume(r->params[0], &o, &e);
    return answer(r, rc, 202, o, &e);
}

/* Server-Sent Events: one event per progress update (at most ten a second)
 * and per state change, each carrying the whole job; the stream ends after
 * the event of a final state. */
int h_job_events(req *r)
{
    api_err e;
    job_stream *s = NULL;
    if (jobs_stream_open(r->params[0], r->conn, &s, &e) < 0) {
        reply_api_err(r, &e);
        return HANDLER_DONE;
    }
    reply_stream(r, "text/event-stream", jobs_stream_pull, jobs_stream_close, s);
    return HANDLER_DONE;
}
