/* metrics.c - see metrics.h. */
#include "metrics.h"

#include <stdatomic.h>
#include <stdbool.h>

#include "http.h"
#include "routes.h"

#define MAX_ROUTES 64
#define N_LAT 14
#define N_BATCH 12

static const int STATUSES[] = {200, 201, 202, 204, 400, 401, 403, 404, 405, 409,
                               413, 415, 422, 499, 500, 503, 0 /* other */};
#define N_STATUS (int)(sizeof STATUSES / sizeof STATUSES[0])
static const double LAT_BOUNDS[N_LAT] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                         0.1,    0.25,  0.5,    1,     2.5,   5,     10};
static const double BATCH_BOUNDS[N_BATCH] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096};

typedef struct histogram {
    atomic_uint_fast64_t bucket[N_LAT + 1];     /* the last one is +Inf */
    atomic_uint_fast64_t count;
    _Atomic double sum;
} histogram;

/* slot MAX_ROUTES - 1 holds the unmatched requests */
static atomic_uint_fast64_t requests[MAX_ROUTES][N_STATUS];
static histogram latency[MAX_ROUTES];
static histogram batch_rows;
static atomic_uint_fast64_t batch_requests;
static histogram batch_seconds;
static atomic_int_fast64_t queue_rows;
static atomic_int_fast64_t models_loaded;
static atomic_uint_fast64_t connections_refused;

static void add_double(_Atomic double *a, double v)
{
    double old = atomic_load(a);
    while (!atomic_compare_exchange_weak(a, &old, old + v)) {
    }
}

static void observe(histogram *h, const double *bounds, int n, double v)
{
    int i = 0;
    while (i < n && v > bounds[i])
        i++;
    atomic_fetch_add(&h->bucket[i], 1);
    atomic_fetch_add(&h->count, 1);
    add_double(&h->sum, v);
}

static int route_slot(int route)
{
    return route >= 0 && route < N_ROUTES && route < MAX_ROUTES - 1 ? route : MAX_ROUTES - 1;
}

void metrics_request(int route, int status, double seconds)
{
    int slot = route_slot(route), s = N_STATUS - 1;
    for (int i = 0; i < N_STATUS - 1; i++)
        if (STATUSES[i] == status)
            s = i;
    atomic_fetch_add(&requests[slot][s], 1);
    observe(&latency[slot], LAT_BOUNDS, N_LAT, seconds);
}

void metrics_batch(int64_t rows, int64_t n_requests, double seconds)
{
    observe(&batch_rows, BATCH_BOUNDS, N_BATCH, (double)rows);
    observe(&batch_seconds, LAT_BOUNDS, N_LAT, seconds);
    atomic_fetch_add(&batch_requests, (uint_fast64_t)n_requests);
}

void metrics_queue_add(int64_t rows)
{
    atomic_fetch_add(&queue_rows, rows);
}

void metrics_models_set(int64_t n)
{
    atomic_store(&models_loaded, n);
}

void metrics_connection_refused(void)
{
    atomic_fetch_add(&connections_refused, 1);
}

#define MAX_JOB_STATES 8
static const char *const *job_state_names;
static atomic_int n_job_states;
static atomic_int_fast64_t jobs_by_state[MAX_JOB_STATES];

void metrics_jobs_set(const char *const *names, const int64_t *counts, int n)
{
    n = n < MAX_JOB_STATES ? n : MAX_JOB_STATES;
    for (int i = 0; i < n; i++)
        atomic_store(&jobs_by_state[i], counts[i]);
    job_state_names = names;    /* the same static table every time */
    atomic_store(&n_job_states, n);
}

static void render_jobs(sbuf *out)
{
    int n = atomic_load(&n_job_states);
    if (n == 0)
        return;
    sbuf_puts(out, "# HELP saed_jobs Training and profiling jobs by state.\n"
                   "# TYPE saed_jobs gauge\n");
    for (int i = 0; i < n; i++)
        sbuf_printf(out, "saed_jobs{state=\"%s\"} %lld\n", job_state_names[i],
                    (long long)atomic_load(&jobs_by_state[i]));
}

static void route_label(int slot, sbuf *out)
{
    if (slot == MAX_ROUTES - 1) {
        sbuf_puts(out, "method=\"\",route=\"unmatched\"");
        return;
    }
    sbuf_printf(out, "method=\"%s\",route=\"%s\"", ROUTES[slot].method, ROUTES[slot].pattern);
}

static void render_hist(sbuf *out, const char *name, const char *labels, histogram *h,
                        const double *bounds, int n)
{
    uint64_t cum = 0;
    const char *sep = labels[0] ? "," : "";
    for (int i = 0; i <= n; i++) {
        cum += atomic_load(&h->bucket[i]);
        if (i < n)
            sbuf_printf(out, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, labels, sep, bounds[i],
                        (unsigned long long)cum);
        else
            sbuf_printf(out, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep,
                        (unsigned long long)cum);
    }
    const char *open = labels[0] ? "{" : "", *close = labels[0] ? "}" : "";
    sbuf_printf(out, "%s_sum%s%s%s %.9g\n", name, open, labels, close, atomic_load(&h->sum));
    sbuf_printf(out, "%s_count%s%s%s %llu\n", name, open, labels, close,
                (unsigned long long)atomic_load(&h->count));
}

static bool slot_used(int slot)
{
    return slot == MAX_ROUTES - 1 || slot < N_ROUTES;
}

void metrics_render(sbuf *out)
{
    sbuf_puts(out, "# HELP saed_http_requests_total HTTP requests by route and status "
                   "(499: the client went away or timed out).\n"
                   "# TYPE saed_http_requests_total counter\n");
    for (int slot = 0; slot < MAX_ROUTES; slot++) {
        if (!slot_used(slot))
            continue;
        for (int s = 0; s < N_STATUS; s++) {
            uint64_t v = atomic_load(&requests[slot][s]);
            if (!v)
                continue;
            sbuf_puts(out, "saed_http_requests_total{");
            route_label(slot, out);
            if (STATUSES[s])
                sbuf_printf(out, ",status=\"%d\"} %llu\n", STATUSES[s], (unsigned long long)v);
            else
                sbuf_printf(out, ",status=\"other\"} %llu\n", (unsigned long long)v);
        }
    }
    sbuf_puts(out, "# HELP saed_http_request_duration_seconds Time from the request line to "
                   "the end of the response.\n"
                   "# TYPE saed_http_request_duration_seconds histogram\n");
    for (int slot = 0; slot < MAX_ROUTES; slot++) {
        if (!slot_used(slot) || !atomic_load(&latency[slot].count))
            continue;
        sbuf labels;
        sbuf_init(&labels);
        route_label(slot, &labels);
        render_hist(out, "saed_http_request_duration_seconds", labels.data ? labels.data : "",
                    &latency[slot], LAT_BOUNDS, N_LAT);
        sbuf_free(&labels);
    }
    sbuf_puts(out, "# HELP saed_batch_rows Rows per encode batch.\n"
                   "# TYPE saed_batch_rows histogram\n");
    render_hist(out, "saed_batch_rows", "", &batch_rows, BATCH_BOUNDS, N_BATCH);
    sbuf_puts(out, "# HELP saed_batch_seconds Engine time per batch.\n"
                   "# TYPE saed_batch_seconds histogram\n");
    render_hist(out, "saed_batch_seconds", "", &batch_seconds, LAT_BOUNDS, N_LAT);
    sbuf_printf(out, "# HELP saed_batch_requests_total Requests served through batches.\n"
                     "# TYPE saed_batch_requests_total counter\n"
                     "saed_batch_requests_total %llu\n",
                (unsigned long long)atomic_load(&batch_requests));
    sbuf_printf(out, "# HELP saed_queue_rows Rows waiting for a batch.\n"
                     "# TYPE saed_queue_rows gauge\nsaed_queue_rows %lld\n",
                (long long)atomic_load(&queue_rows));
    sbuf_printf(out, "# HELP saed_models_loaded Models loaded and serving.\n"
                     "# TYPE saed_models_loaded gauge\nsaed_models_loaded %lld\n",
                (long long)atomic_load(&models_loaded));
    sbuf_printf(out, "# HELP saed_connections_refused_total Connections closed unanswered at "
                     "the connection cap.\n"
                     "# TYPE saed_connections_refused_total counter\n"
                     "saed_connections_refused_total %llu\n",
                (unsigned long long)atomic_load(&connections_refused));
    sbuf_printf(out, "# HELP saed_requests_in_flight Requests accepted and not answered.\n"
                     "# TYPE saed_requests_in_flight gauge\nsaed_requests_in_flight %ld\n",
                http_in_flight());
    sbuf_printf(out, "# HELP saed_connections_open Client connections open (at most "
                     "--max-connections).\n"
                     "# TYPE saed_connections_open gauge\nsaed_connections_open %ld\n",
                http_connections_open());
    render_jobs(out);
}
