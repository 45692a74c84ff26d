/* batcher.h - dynamic batching for one model. Concurrent encode requests are
 * queued; one worker thread takes everything queued (waiting up to wait_us
 * after the oldest arrival or the last batch's answers when fewer rows are
 * there than max_rows and than the last batch answered), copies the
 * rows into one batch, calls sae_encode once and hands each request its slice
 * of the codes. Other model work (decode) runs on the same thread, so a
 * model's engine calls never overlap and never run on a network thread. */
#ifndef SAED_BATCHER_H
#define SAED_BATCHER_H

#include <stdint.h>
#include <time.h>

#include "sae.h"

typedef struct bjob bjob;
struct bjob {
    bjob *next;
    /* encode: n > 0 rows at x, merged with others; encoded() gets the whole
     * batch's codes and this job's first row in it (err set on failure). */
    const float *x;
    int64_t n;
    void (*encoded)(bjob *j, const sae_model *m, const sae_codes *codes, int64_t row0,
                    const char *err);
    /* other work: n == 0, call() runs alone on the worker thread */
    void (*call)(bjob *j, const sae_model *m);
    struct timespec t_enq;
};

typedef struct batcher_opts {
    int max_rows;
    int wait_us;
} batcher_opts;

typedef struct batcher batcher;

int batcher_start(const sae_model *m, const batcher_opts *o, batcher **out, sae_error *err);
void batcher_submit(batcher *b, bjob *j);
/* Joins the worker. Call only when no job can still be submitted (the model's
 * registry entry has no references left); queued jobs are finished first. */
void batcher_stop(batcher *b);

#endif
