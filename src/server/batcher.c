/* batcher.c - see batcher.h. */
#include "batcher.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"

struct batcher {
    const sae_model *m;
    batcher_opts o;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bjob *head, *tail;
    int64_t queued_rows;
    bool stop;
    struct timespec t_answered; /* when the last batch's requests got their codes */
    int64_t expect_rows;        /* the rows then answered and queued: a closed loop's next batch */
    bool waiting;               /* in wait_for_batch's timed wait */
    struct timespec t_last_enq; /* the latest arrival: the wait stretches past it */
    pthread_t thread;
    /* the worker's own, reused across batches */
    float *xbuf;
    int64_t xbuf_rows;
    sae_codes codes;
};

static double elapsed(const struct timespec *a, const struct timespec *b)
{
    return (double)(b->tv_sec - a->tv_sec) + 1e-9 * (double)(b->tv_nsec - a->tv_nsec);
}

static struct timespec add_us(struct timespec t, long us)
{
    t.tv_nsec += us * 1000L;
    t.tv_sec += t.tv_nsec / 1000000000L;
    t.tv_nsec %= 1000000000L;
    return t;
}

static struct timespec later(struct timespec a, struct timespec b)
{
    return elapsed(&a, &b) > 0.0 ? b : a;
}

/* Waits for work; then, while the queue is short, for up to wait_us after
 * the oldest job's arrival or the last batch's answers, whichever is later,
 * so that concurrent requests share a batch. The second matters under load:
 * the clients just answered send their next rows within that time and join
 * those queued meanwhile, instead of splitting into two half-size batches
 * that each stream the weights. While rows keep arriving the wait stretches
 * (half a wait past each arrival, four waits at most); it ends early once
 * the queue holds as many rows as were answered and queued then (clients
 * that send again as soon as they are answered are all back), or max_rows.
 * Returns with mu held and head set, or false on stop. */
static bool wait_for_batch(batcher *b)
{
    while (!b->head && !b->stop)
        pthread_cond_wait(&b->cv, &b->mu);
    if (!b->head)
        return false;
    if (b->head->n == 0 || b->o.wait_us == 0)
        return true;
    const struct timespec start = later(b->head->t_enq, b->t_answered);
    const struct timespec cap = add_us(start, 4L * b->o.wait_us);
    struct timespec deadline = add_us(start, b->o.wait_us);
    b->waiting = true;
    while (b->queued_rows < b->o.max_rows && b->queued_rows < b->expect_rows && !b->stop) {
        if (pthread_cond_timedwait(&b->cv, &b->mu, &deadline) != ETIMEDOUT)
            continue;
        /* still arriving: half a wait past the latest arrival, up to the cap */
        struct timespec more = add_us(b->t_last_enq, b->o.wait_us / 2);
        struct timespec next = later(deadline, elapsed(&more, &cap) > 0.0 ? more : cap);
        if (elapsed(&deadline, &next) <= 0.0)
            break;
        deadline = next;
    }
    b->waiting = false;
    return true;
}

/* Takes the encode jobs at the head of the queue, up to max_rows (the first
 * always, even when it alone is larger). */
static bjob *take_encode_jobs(batcher *b, int64_t *rows, int64_t *count)
{
    bjob *first = b->head, *last = first;
    *rows = first->n;
    *count = 1;
    while (last->next && last->next->n > 0 && *rows + last->next->n <= b->o.max_rows) {
        last = last->next;
        *rows += last->n;
        (*count)++;
    }
    b->head = last->next;
    if (!b->head)
        b->tail = NULL;
    last->next = NULL;
    b->queued_rows -= *rows;
    return first;
}

/* One contiguous copy of the rows, unless a single job already is one. */
static const float *gather_rows(batcher *b, bjob *jobs, int64_t rows, const char **err)
{
    if (!jobs->next)
        return jobs->x;
    int64_t d = b->m->cfg.d_in;
    if (rows > b->xbuf_rows) {
        float *p = realloc(b->xbuf, (size_t)rows * (size_t)d * sizeof *p);
        if (!p) {
            *err = "out of memory for the batch";
            return NULL;
        }
        b->xbuf = p;
        b->xbuf_rows = rows;
    }
    int64_t at = 0;
    for (bjob *j = jobs; j; j = j->next) {
        memcpy(b->xbuf + at * d, j->x, (size_t)(j->n * d) * sizeof(float));
        at += j->n;
    }
    return b->xbuf;
}

static void run_encode(batcher *b, bjob *jobs, int64_t rows, int64_t count)
{
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    const char *err = NULL;
    sae_error e;
    const float *x = gather_rows(b, jobs, rows, &err);
    if (x && sae_encode(b->m, x, rows, &b->codes, &e) != SAE_OK)
        err = e.msg;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    metrics_batch(rows, count, elapsed(&t0, &t1));
    int64_t row0 = 0;
    for (bjob *j = jobs, *next; j; j = next) {
        next = j->next;     /* the callback may free j */
        int64_t n = j->n;
        j->encoded(j, b->m, err ? NULL : &b->codes, row0, err);
        row0 += n;
    }
}

static void *worker(void *arg)
{
    batcher *b = arg;
    pthread_mutex_lock(&b->mu);
    while (wait_for_batch(b)) {
        if (b->head->n == 0) {
            bjob *j = b->head;
            b->head = j->next;
            if (!b->head)
                b->tail = NULL;
            pthread_mutex_unlock(&b->mu);
            j->call(j, b->m);
            pthread_mutex_lock(&b->mu);
        } else {
            int64_t rows, count;
            bjob *jobs = take_encode_jobs(b, &rows, &count);
            metrics_queue_add(-rows);
            pthread_mutex_unlock(&b->mu);
            run_encode(b, jobs, rows, count);
            pthread_mutex_lock(&b->mu);
            clock_gettime(CLOCK_MONOTONIC, &b->t_answered);
            b->expect_rows = rows + b->queued_rows;
        }
    }
    pthread_mutex_unlock(&b->mu);
    return NULL;
}

int batcher_start(const sae_model *m, const batcher_opts *o, batcher **out, sae_error *err)
{
    batcher *b = calloc(1, sizeof *b);
    if (!b)
        return sae_fail(err, "out of memory");
    b->m = m;
    b->o = *o;
    sae_codes_init(&b->codes);
    pthread_mutex_init(&b->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);   /* t_enq is monotonic */
    pthread_cond_init(&b->cv, &ca);
    pthread_condattr_destroy(&ca);
    int rc = pthread_create(&b->thread, NULL, worker, b);
    if (rc != 0) {
        pthread_cond_destroy(&b->cv);
        pthread_mutex_destroy(&b->mu);
        free(b);
        return sae_fail(err, "cannot start the batch thread: %s", strerror(rc));
    }
    *out = b;
    return SAE_OK;
}

void batcher_submit(batcher *b, bjob *j)
{
    j->next = NULL;
    clock_gettime(CLOCK_MONOTONIC, &j->t_enq);
    pthread_mutex_lock(&b->mu);
    if (b->tail)
        b->tail->next = j;
    else
        b->head = j;
    b->tail = j;
    b->queued_rows += j->n;
    b->t_last_enq = j->t_enq;
    if (j->n)
        metrics_queue_add(j->n);
    /* Wake the worker when it has nothing, or its wait is over: the batch is
     * full or the expected rows are back. Other arrivals only stretch the wait,
     * which the worker reads from t_last_enq when its deadline comes. */
    if (b->head == j || j->n == 0 || b->queued_rows >= b->o.max_rows ||
        (b->waiting && b->queued_rows >= b->expect_rows))
        pthread_cond_signal(&b->cv);
    pthread_mutex_unlock(&b->mu);
}

void batcher_stop(batcher *b)
{
    if (!b)
        return;
    pthread_mutex_lock(&b->mu);
    b->stop = true;
    pthread_cond_signal(&b->cv);
    pthread_mutex_unlock(&b->mu);
    pthread_join(b->thread, NULL);
    pthread_cond_destroy(&b->cv);
    pthread_mutex_destroy(&b->mu);
    sae_codes_free(&b->codes);
    free(b->xbuf);
    free(b);
}
