/* metrics.h - Prometheus counters, gauges and histograms, lock-free (C11
 * atomics) so that recording never blocks a network thread. The label sets
 * are closed (routes from the route table, a fixed list of statuses), so
 * every series is a fixed slot. */
#ifndef SAED_METRICS_H
#define SAED_METRICS_H

#include <stdint.h>

#include "sbuf.h"

/* route: index in ROUTES, or -1 for requests that matched none. */
void metrics_request(int route, int status, double seconds);
void metrics_batch(int64_t rows, int64_t requests, double seconds);
void metrics_queue_add(int64_t rows);       /* negative to take away */
void metrics_models_set(int64_t n);
void metrics_connection_refused(void);    /* at the connection cap */
/* Jobs by state: names is a static table of n (<= 8) state names. */
void metrics_jobs_set(const char *const *names, const int64_t *counts, int n);
void metrics_render(sbuf *out);

#endif
