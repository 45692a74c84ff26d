/* h_health.c - liveness, readiness, metrics. */
#include <stdlib.h>

#include "handlers.h"
#include "http.h"
#include "metrics.h"
#include "registry.h"
#include "state.h"

int h_healthz(req *r)
{
    reply_json(r, 200, "{\"status\": \"ok\"}");
    return HANDLER_DONE;
}

/* Ready: start-up loading finished, at least one model serving, not draining. */
int h_readyz(req *r)
{
    if (!state_ready())
        reply_error(r, 503, "not_ready", "starting up or shutting down");
    else if (registry_count() == 0)
        reply_error(r, 503, "not_ready", "no model is loaded");
    else
        reply_json(r, 200, "{\"status\": \"ready\"}");
    return HANDLER_DONE;
}

int h_metrics(req *r)
{
    sbuf b;
    sbuf_init(&b);
    metrics_render(&b);
    size_t n;
    char *text = sbuf_take(&b, &n);
    if (!text)
        reply_error(r, 503, "out_of_memory", "no memory for the metrics");
    else
        reply(r, 200, "text/plain; version=0.0.4; charset=utf-8", text, n);
    return HANDLER_DONE;
}
