/* jobs.c - the job table, its state machine, the runner and keeper threads,
 * and the event streams. See jobs.h for the picture.
 *
 * One mutex (J.mu) guards everything here. Jobs are never removed while the
 * daemon runs (a finished job stays listable), so a job pointer taken under
 * the lock stays valid after it is released; the list only grows at its
 * tail. */
#include "jobs.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "http.h"
#include "job_params.h"
#include "job_proc.h"
#include "log.h"
#include "metrics.h"
#include "registry.h"
#include "util.h"

#define MAX_RUNNING_CAP 64      /* config's max-jobs upper bound */
#define MAX_STREAMS 16          /* concurrent GET .../events */
#define KEEPALIVE_S 10.0        /* an SSE comment when nothing happened */
#define EVENT_MIN_S 0.1         /* progress events at most this often per stream */
#define TICK_MS 100             /* the runner's poll timeout */
#define FLUSH_S 1.0             /* progress reaches the store at most this often */

typedef struct job {
    char id[JOB_ID_MAX + 1];
    job_kind kind;
    job_state state;
    json_t *params, *paths;         /* as validated (job_params.c) */
    json_t *progress, *metrics;     /* the latest progress line, split; or NULL */
    char error[1024];
    char created_at[32], started_at[32], finished_at[32];  /* "" when not yet */
    int attempts;                   /* children started */
    bool resume;                    /* the next start continues a train run */
    /* runtime only (not stored) */
    pid_t pid;                      /* the child, 0 when none */
    int pipe_fd;                    /* progress read end, -1 when closed */
    char line[4096];                /* a progress line being read */
    size_t line_len;
    bool line_too_long;
    bool cancel_requested, stop_requested, killed;
    double term_at;                 /* monotonic time of our SIGTERM, 0: none */
    bool registering;               /* exit 0; the keeper registers the model */
    bool dirty;                     /* to be stored */
    uint64_t seq;                   /* bumped on every change (event streams) */
    struct job *next;
} job;

struct job_stream {
    job *j;
    void *conn;
    uint64_t sent_seq;
    job_state sent_state;
    bool sent_any, parked, ended;
    double last_write, last_event;
    char *pending;                  /* an event being sent */
    size_t pending_len, pending_off;
    struct job_stream *next;
};

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;              /* broadcast on state changes */
    uint64_t state_gen;             /* bumped with every broadcast: the keeper's to-do */
    job *head, *tail;
    unsigned next_seq;
    int max_running, grace_s;
    char saectl[PATH_MAX];
    bool have_saectl;
    char state_dir[PATH_MAX], log_dir[PATH_MAX + 8];
    store *st;
    int wake[2];                    /* wakes the runner's poll */
    pthread_t runner, keeper;
    bool started, shutting_down, runner_stop, keeper_stop;
    job_stream *streams;
    int n_streams;
} J = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .wake = {-1, -1}};

static const char *const STATE_NAMES[JOB_N_STATES] = {
    "queued", "running", "succeeded", "failed", "cancelled", "interrupted"};

const char *job_state_name(job_state s)
{
    return (int)s >= 0 && (int)s < JOB_N_STATES ? STATE_NAMES[s] : "unknown";
}

static const char *kind_name(job_kind k)
{
    return k == JOB_TRAIN ? "train" : "profile";
}

static bool is_active(const job *j)
{
    return j->state == JOB_QUEUED || j->state == JOB_RUNNING;
}

static bool is_final(job_state s)
{
    return s != JOB_QUEUED && s != JOB_RUNNING;
}

static void iso_now(char out[32])
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static void wake_runner(void)
{
    unsigned char b = 1;
    ssize_t rc = write(J.wake[1], &b, 1);
    (void)rc;   /* a full pipe already wakes it */
}

static job *find_locked(const char *id)
{
    for (job *j = J.head; j; j = j->next)
        if (!strcmp(j->id, id))
            return j;
    return NULL;
}

static void log_path(const job *j, char *out, size_t len)
{
    snprintf(out, len, "%s/%s.log", J.log_dir, j->id);
}

/* ---- JSON ------------------------------------------------------------------- */

static json_t *str_or_null(const char *s)
{
    return s && *s ? json_string(s) : json_null();
}

/* The stored record; with api, also what only a live daemon knows. */
static json_t *job_json(const job *j, bool api)
{
    char logp[PATH_MAX + 64];
    log_path(j, logp, sizeof logp);
    json_t *o = json_pack(
        "{s:s, s:s, s:s, s:O, s:O, s:O?, s:O?, s:o, s:s, s:o, s:o, s:i, s:s}", "id", j->id,
        "kind", kind_name(j->kind), "state", job_state_name(j->state), "params", j->params,
        "paths", j->paths, "progress", j->progress, "metrics", j->metrics, "error",
        str_or_null(j->error), "created_at", j->created_at, "started_at",
        str_or_null(j->started_at), "finished_at", str_or_null(j->finished_at), "attempts",
        j->attempts, "log", logp);
    if (o && api) {
        bool resumable = j->state == JOB_INTERRUPTED || j->state == JOB_FAILED ||
                         j->state == JOB_CANCELLED;
        json_object_set_new(o, "resumable", json_boolean(resumable));
        json_object_set_new(o, "cancel_requested", json_boolean(j->cancel_requested));
        json_object_set_new(o, "pid", j->pid > 0 ? json_integer(j->pid) : json_null());
    }
    return o;
}

/* ---- state changes ------------------------------------------------------------ */

static void update_metrics_locked(void)
{
    int64_t counts[JOB_N_STATES] = {0};
    for (job *j = J.head; j; j = j->next)
        counts[j->state]++;
    metrics_jobs_set(STATE_NAMES, counts, JOB_N_STATES);
}

/* Every transition goes through here: stored, logged (with note, which is
 * not stored), counted, streamed. */
static void set_state_note_locked(job *j, job_state s, const char *error, const char *note)
{
    j->state = s;
    snprintf(j->error, sizeof j->error, "%s", error ? error : "");
    if (is_final(s))
        iso_now(j->finished_at);
    else
        j->finished_at[0] = '\0';
    j->dirty = true;
    j->seq++;
    saed_log("job %s (%s) %s%s%s%s%s", j->id, kind_name(j->kind), job_state_name(s),
             note ? " " : "", note ? note : "", error ? ": " : "", error ? error : "");
    update_metrics_locked();
    J.state_gen++;
    pthread_cond_broadcast(&J.cv);
}

static void set_state_locked(job *j, job_state s, const char *error)
{
    set_state_note_locked(j, s, error, NULL);
}

/* ---- progress ----------------------------------------------------------------- */

/* Progress keys as saectl writes them -> the job's progress fields; every
 * other key of a line is a metric (train: mse, fvu, l0, alive, ...). */
static const char *const PROGRESS_KEYS[][2] = {
    {"step", "step"},   {"steps", "total"},     {"done", "step"},   {"total", "total"},
    {"tokens", "tokens"}, {"tokens_per_s", "tokens_per_s"}, {"eta_s", "eta_s"},
    {"phase", "phase"},
};

static const char *progress_key(const char *key)
{
    for (size_t i = 0; i < sizeof PROGRESS_KEYS / sizeof PROGRESS_KEYS[0]; i++)
        if (!strcmp(key, PROGRESS_KEYS[i][0]))
            return PROGRESS_KEYS[i][1];
    return NULL;
}

static void on_progress_line_locked(job *j, const char *line)
{
    json_t *o = json_loads(line, 0, NULL);
    json_t *prog = json_object(), *met = json_object();
    if (!json_is_object(o) || !prog || !met) {
        json_decref(o);
        json_decref(prog);
        json_decref(met);
        return;     /* not a progress line: ignored */
    }
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v) {
        const char *pk = progress_key(key);
        json_object_set(pk ? prog : met, pk ? pk : key, v);
    }
    json_int_t step = json_integer_value(json_object_get(prog, "step"));
    json_int_t total = json_integer_value(json_object_get(prog, "total"));
    if (total > 0)
        json_object_set_new(prog, "fraction", json_real((double)step / (double)total));
    json_decref(j->progress);
    j->progress = prog;
    if (json_object_size(met) > 0) {
        json_decref(j->metrics);
        j->metrics = met;
    } else {
        json_decref(met);
    }
    json_decref(o);
    j->dirty = true;    /* the keeper stores it within FLUSH_S */
    j->seq++;
}

/* Splits what the pipe gave into lines; an overlong line is dropped. */
static void take_bytes_locked(job *j, const char *buf, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (buf[i] != '\n') {
            if (j->line_len + 1 < sizeof j->line)
                j->line[j->line_len++] = buf[i];
            else
                j->line_too_long = true;
            continue;
        }
        j->line[j->line_len] = '\0';
        if (!j->line_too_long)
            on_progress_line_locked(j, j->line);
        j->line_len = 0;
        j->line_too_long = false;
    }
}

/* Reads what is there (the pipe is non-blocking); closes it at EOF. */
static void read_progress_locked(job *j)
{
    char buf[8192];
    while (j->pipe_fd >= 0) {
        ssize_t n = read(j->pipe_fd, buf, sizeof buf);
        if (n > 0) {
            take_bytes_locked(j, buf, (size_t)n);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        close(j->pipe_fd);      /* EOF or a real error */
        j->pipe_fd = -1;
    }
}

/* ---- starting and finishing children --------------------------------------------- */

static void log_command(const char *path, char *const argv[], int attempt)
{
    FILE *f = fopen(path, "a");
    if (!f)
        return;
    char stamp[32];
    iso_now(stamp);
    fprintf(f, "=== %s attempt %d:", stamp, attempt);
    for (char *const *a = argv; *a; a++)
        fprintf(f, " %s", *a);
    fputc('\n', f);
    fclose(f);
}

static void start_job_locked(job *j)
{
    char err[512], logp[PATH_MAX + 64];
    char **argv = NULL;
    bool resume = j->resume && j->kind == JOB_TRAIN && job_params_resumable(j->paths);
    j->resume = false;
    if (!J.have_saectl) {
        set_state_locked(j, JOB_FAILED, "saectl was not found (set --saectl)");
        return;
    }
    if (job_argv(j->kind, j->params, j->paths, J.saectl, J.state_dir, JOB_PROGRESS_FD, resume,
                 &argv) < 0) {
        set_state_locked(j, JOB_FAILED, "out of memory");
        return;
    }
    log_path(j, logp, sizeof logp);
    log_command(logp, argv, j->attempts + 1);
    int rc = job_spawn(argv, logp, &j->pid, &j->pipe_fd, err, sizeof err);
    job_argv_free(argv);
    if (rc < 0) {
        set_state_locked(j, JOB_FAILED, err);
        return;
    }
    j->attempts++;
    j->cancel_requested = j->stop_requested = j->killed = false;
    j->term_at = 0;
    j->line_len = 0;
    j->line_too_long = false;
    iso_now(j->started_at);
    json_decref(j->progress);
    j->progress = NULL;
    char note[64];
    snprintf(note, sizeof note, "(pid %d%s)", (int)j->pid, resume ? ", resuming" : "");
    set_state_note_locked(j, JOB_RUNNING, NULL, note);
}

static void describe_failure(const job *j, int status, char *out, size_t len)
{
    char logp[PATH_MAX + 64], tail[600];
    log_path(j, logp, sizeof logp);
    job_log_tail(logp, tail, sizeof tail);
    if (WIFEXITED(status))
        snprintf(out, len, "saectl exited with status %d: %s", WEXITSTATUS(status), tail);
    else if (WIFSIGNALED(status))
        snprintf(out, len, "saectl was killed by signal %d: %s", WTERMSIG(status), tail);
    else
        snprintf(out, len, "saectl ended oddly (status %d): %s", status, tail);
}

/* The child is gone (status from waitpid): the job's next state. */
static void finish_job_locked(job *j, int status)
{
    read_progress_locked(j);        /* the last lines */
    if (j->pipe_fd >= 0) {
        close(j->pipe_fd);
        j->pipe_fd = -1;
    }
    j->pid = 0;
    bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    bool stopped = (WIFEXITED(status) && WEXITSTATUS(status) == JOB_EXIT_STOPPED) ||
                   (WIFSIGNALED(status) && (j->cancel_requested || j->stop_requested));
    char err[1024];
    if (ok && j->kind == JOB_TRAIN && job_params_model_id(j->params)) {
        j->registering = true;      /* stays running until the keeper is done */
        j->seq++;
        J.state_gen++;
        pthread_cond_broadcast(&J.cv);
    } else if (ok) {
        set_state_locked(j, JOB_SUCCEEDED, NULL);
    } else if (j->cancel_requested) {
        set_state_locked(j, JOB_CANCELLED, "cancelled while running");
    } else if (stopped) {
        set_state_locked(j, JOB_INTERRUPTED, "stopped by saed's shutdown; POST "
                                             ".../resume continues it");
    } else {
        describe_failure(j, status, err, sizeof err);
        set_state_locked(j, JOB_FAILED, err);
    }
}

static int count_running_locked(void)
{
    int n = 0;
    for (job *j = J.head; j; j = j->next)
        n += j->state == JOB_RUNNING;
    return n;
}

static void start_queued_locked(void)
{
    if (J.shutting_down)
        return;
    int running = count_running_locked();
    for (job *j = J.head; j && running < J.max_running; j = j->next)
        if (j->state == JOB_QUEUED) {
            start_job_locked(j);
            running += j->state == JOB_RUNNING;
        }
}

/* SIGKILL for children that ignored SIGTERM for the grace period. */
static void escalate_locked(double now)
{
    for (job *j = J.head; j; j = j->next)
        if (j->pid > 0 && j->term_at > 0 && !j->killed && now - j->term_at >= J.grace_s) {
            kill(j->pid, SIGKILL);
            j->killed = true;
            saed_log("job %s: no exit %d s after SIGTERM, sent SIGKILL", j->id, J.grace_s);
        }
}

static void reap_locked(void)
{
    for (job *j = J.head; j; j = j->next) {
        if (j->pid <= 0)
            continue;
        int status = 0;
        pid_t r = waitpid(j->pid, &status, WNOHANG);
        if (r == j->pid)
            finish_job_locked(j, status);
        else if (r < 0 && errno == ECHILD)
            finish_job_locked(j, 0x7f00);   /* lost: reads as "exited 127" */
    }
}

/* ---- event streams -------------------------------------------------------------- */

static void wake_streams_locked(double now)
{
    for (job_stream *s = J.streams; s; s = s->next)
        if (s->parked && (s->j->seq != s->sent_seq || J.shutting_down ||
                          now - s->last_write >= KEEPALIVE_S))
            http_stream_wake(s->conn);
}

/* ---- the runner thread ------------------------------------------------------------ */

static void drain_wake_pipe(void)
{
    unsigned char buf[64];
    while (read(J.wake[0], buf, sizeof buf) > 0) {
    }
}

static void *runner_main(void *arg)
{
    (void)arg;
    struct pollfd fds[MAX_RUNNING_CAP + 1];
    job *owner[MAX_RUNNING_CAP + 1];
    pthread_mutex_lock(&J.mu);
    while (!J.runner_stop) {
        start_queued_locked();
        double now = sae_now_seconds();
        escalate_locked(now);
        reap_locked();
        wake_streams_locked(now);
        int n = 0;
        fds[n++] = (struct pollfd){J.wake[0], POLLIN, 0};
        for (job *j = J.head; j && n < MAX_RUNNING_CAP + 1; j = j->next)
            if (j->pipe_fd >= 0) {
                owner[n] = j;
                fds[n++] = (struct pollfd){j->pipe_fd, POLLIN, 0};
            }
        pthread_mutex_unlock(&J.mu);
        int ready = poll(fds, (nfds_t)n, TICK_MS);
        pthread_mutex_lock(&J.mu);
        if (ready <= 0)
            continue;
        if (fds[0].revents)
            drain_wake_pipe();
        for (int i = 1; i < n; i++)
            if (fds[i].revents)
                read_progress_locked(owner[i]);
    }
    pthread_mutex_unlock(&J.mu);
    return NULL;
}

/* ---- the keeper thread ------------------------------------------------------------ */

static void register_model_locked(job *j)
{
    char id[MODEL_ID_MAX + 1], out[PATH_MAX];
    snprintf(id, sizeof id, "%s", job_params_model_id(j->params));
    snprintf(out, sizeof out, "%s", job_params_out(j->paths));
    pthread_mutex_unlock(&J.mu);
    api_err e;
    int rc = registry_add(id, out, true, &e);
    pthread_mutex_lock(&J.mu);
    j->registering = false;
    if (rc == 0) {
        saed_log("job %s registered model %s (%s)", j->id, id, out);
        set_state_locked(j, JOB_SUCCEEDED, NULL);
        return;
    }
    char err[1024];
    snprintf(err, sizeof err, "training finished (the model is in %.400s) but registering it "
             "as '%s' failed: %.384s", out, id, e.msg);
    set_state_locked(j, JOB_FAILED, err);
}

static void flush_locked(void)
{
    for (job *j = J.head; j; j = j->next) {
        if (!j->dirty)
            continue;
        json_t *o = job_json(j, false);
        char *text = o ? json_dumps(o, JOB_JSON_FLAGS) : NULL;
        json_decref(o);
        if (!text) {
            saed_log("job %s: no memory to store it", j->id);
            continue;
        }
        j->dirty = false;
        pthread_mutex_unlock(&J.mu);
        sae_error err;
        int rc = store_job_put(J.st, j->id, text, &err);
        free(text);
        pthread_mutex_lock(&J.mu);
        if (rc != SAE_OK)
            saed_log("job %s: storing it failed: %s", j->id, err.msg);
    }
}

static bool keeper_has_work_locked(void)
{
    for (job *j = J.head; j; j = j->next)
        if (j->dirty || j->registering)
            return true;
    return false;
}

/* State changes are stored at once; progress waits for the next second.
 * state_gen is read before the work, so a change made while the keeper was
 * writing (unlocked) is seen before it sleeps. */
static void *keeper_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&J.mu);
    for (;;) {
        uint64_t seen = J.state_gen;
        for (job *j = J.head; j; j = j->next)
            if (j->registering)
                register_model_locked(j);
        flush_locked();
        if (J.keeper_stop && !keeper_has_work_locked())
            break;
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += (time_t)FLUSH_S;
        if (!J.keeper_stop && J.state_gen == seen)
            pthread_cond_timedwait(&J.cv, &J.mu, &until);
    }
    pthread_mutex_unlock(&J.mu);
    return NULL;
}

/* ---- loading ------------------------------------------------------------------ */

static job *job_new(const char *id, job_kind kind, json_t *params, json_t *paths)
{
    job *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    snprintf(j->id, sizeof j->id, "%s", id);
    j->kind = kind;
    j->params = params;
    j->paths = paths;
    j->pipe_fd = -1;
    return j;
}

static void job_free(job *j)
{
    json_decref(j->params);
    json_decref(j->paths);
    json_decref(j->progress);
    json_decref(j->metrics);
    free(j);
}

static void append_locked(job *j)
{
    if (J.tail)
        J.tail->next = j;
    else
        J.head = j;
    J.tail = j;
    unsigned seq;
    if (sscanf(j->id, "job-%u", &seq) == 1 && seq >= J.next_seq)
        J.next_seq = seq + 1;
}

static int parse_state(const char *s)
{
    for (int i = 0; s && i < JOB_N_STATES; i++)
        if (!strcmp(s, STATE_NAMES[i]))
            return i;
    return -1;
}

/* A string member of a record, or "". */
static const char *member(json_t *rec, const char *key)
{
    const char *s = json_string_value(json_object_get(rec, key));
    return s ? s : "";
}

static void copy_time(char out[32], json_t *rec, const char *key)
{
    snprintf(out, 32, "%s", member(rec, key));
}

/* One stored record back into the table; one left running or queued by a
 * daemon that died becomes interrupted. */
static int load_one(void *ctx, const char *id, const char *text)
{
    (void)ctx;
    json_t *rec = json_loads(text, 0, NULL);
    const char *kind = json_string_value(json_object_get(rec, "kind"));
    int state = parse_state(json_string_value(json_object_get(rec, "state")));
    json_t *params = json_object_get(rec, "params"), *paths = json_object_get(rec, "paths");
    if (!kind || state < 0 || !json_is_object(params) || !json_is_object(paths) ||
        strlen(id) > JOB_ID_MAX) {
        saed_log("job %s: unreadable record, skipped", id);
        json_decref(rec);
        return 0;
    }
    job *j = job_new(id, strcmp(kind, "train") ? JOB_PROFILE : JOB_TRAIN, json_incref(params),
                     json_incref(paths));
    if (!j) {
        json_decref(rec);
        return 1;
    }
    j->state = (job_state)state;
    snprintf(j->error, sizeof j->error, "%s", member(rec, "error"));
    copy_time(j->created_at, rec, "created_at");
    copy_time(j->started_at, rec, "started_at");
    copy_time(j->finished_at, rec, "finished_at");
    j->attempts = (int)json_integer_value(json_object_get(rec, "attempts"));
    json_t *p = json_object_get(rec, "progress"), *m = json_object_get(rec, "metrics");
    j->progress = json_is_object(p) ? json_incref(p) : NULL;
    j->metrics = json_is_object(m) ? json_incref(m) : NULL;
    json_decref(rec);
    append_locked(j);
    if (is_active(j))
        set_state_locked(j, JOB_INTERRUPTED, "saed stopped while the job was queued or "
                                              "running; POST .../resume continues it");
    return 0;
}

/* ---- init and shutdown ------------------------------------------------------------- */

static int init_dirs(const saed_config *cfg, char *err, size_t errlen)
{
    if (!realpath(cfg->state_dir, J.state_dir)) {
        snprintf(err, errlen, "--state-dir %s: %s", cfg->state_dir, strerror(errno));
        return -1;
    }
    snprintf(J.log_dir, sizeof J.log_dir, "%s/jobs", J.state_dir);
    if (mkdir(J.log_dir, 0750) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "%s: %s", J.log_dir, strerror(errno));
        return -1;
    }
    return 0;
}

static int start_threads(char *err, size_t errlen)
{
    if (pthread_create(&J.runner, NULL, runner_main, NULL) != 0) {
        snprintf(err, errlen, "cannot start the job runner thread");
        return -1;
    }
    if (pthread_create(&J.keeper, NULL, keeper_main, NULL) != 0) {
        pthread_mutex_lock(&J.mu);
        J.runner_stop = true;
        pthread_mutex_unlock(&J.mu);
        wake_runner();
        pthread_join(J.runner, NULL);
        snprintf(err, errlen, "cannot start the job keeper thread");
        return -1;
    }
    J.started = true;
    return 0;
}

static void free_all(void)
{
    for (job *j = J.head, *next; j; j = next) {
        next = j->next;
        job_free(j);
    }
    J.head = J.tail = NULL;
    for (int i = 0; i < 2; i++)
        if (J.wake[i] >= 0) {
            close(J.wake[i]);
            J.wake[i] = -1;
        }
}

int jobs_init(const saed_config *cfg, store *st, char *err, size_t errlen)
{
    J.st = st;
    J.max_running = cfg->max_jobs;
    J.grace_s = cfg->job_grace_s;
    J.next_seq = 1;
    if (init_dirs(cfg, err, errlen) < 0)
        return -1;
    J.have_saectl = job_find_saectl(cfg->saectl, J.saectl, sizeof J.saectl) == 0;
    if (J.have_saectl)
        saed_log("jobs: %s, at most %d running", J.saectl, J.max_running);
    else
        saed_log("jobs: saectl not found%s%s; job requests will be refused",
                 cfg->saectl ? " at " : "", cfg->saectl ? cfg->saectl : "");
    if (pipe2(J.wake, O_CLOEXEC | O_NONBLOCK) != 0) {
        snprintf(err, errlen, "jobs: pipe: %s", strerror(errno));
        return -1;
    }
    sae_error serr;
    pthread_mutex_lock(&J.mu);
    int rc = store_job_list(st, load_one, NULL, &serr);
    update_metrics_locked();
    pthread_mutex_unlock(&J.mu);
    if (rc != SAE_OK) {
        snprintf(err, errlen, "jobs: %s", serr.msg);
        free_all();
        return -1;
    }
    if (start_threads(err, errlen) < 0) {
        free_all();
        return -1;
    }
    return 0;
}

void jobs_begin_shutdown(void)
{
    if (!J.started)
        return;
    pthread_mutex_lock(&J.mu);
    J.shutting_down = true;
    double now = sae_now_seconds();
    for (job *j = J.head; j; j = j->next) {
        if (j->state == JOB_QUEUED)
            set_state_locked(j, JOB_INTERRUPTED, "saed stopped before the job started");
        else if (j->pid > 0 && !j->stop_requested) {
            j->stop_requested = true;
            j->term_at = now;
            kill(j->pid, SIGTERM);
            saed_log("job %s: SIGTERM sent (saed is stopping)", j->id);
        }
    }
    wake_streams_locked(now);
    pthread_mutex_unlock(&J.mu);
    wake_runner();
}

static bool children_left_locked(void)
{
    for (job *j = J.head; j; j = j->next)
        if (j->pid > 0)
            return true;
    return false;
}

void jobs_shutdown(void)
{
    if (!J.started)
        return;
    jobs_begin_shutdown();
    pthread_mutex_lock(&J.mu);
    while (children_left_locked()) {       /* the runner reaps them (SIGKILL after grace) */
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 1;
        pthread_cond_timedwait(&J.cv, &J.mu, &until);
    }
    J.runner_stop = true;
    pthread_mutex_unlock(&J.mu);
    wake_runner();
    pthread_join(J.runner, NULL);
    pthread_mutex_lock(&J.mu);
    J.keeper_stop = true;
    pthread_cond_broadcast(&J.cv);
    pthread_mutex_unlock(&J.mu);
    pthread_join(J.keeper, NULL);   /* stores the final states */
    J.started = false;
    free_all();
}

/* ---- requests ------------------------------------------------------------------ */

/* Another active job that writes the same output or works on the same model. */
static int check_conflicts_locked(const job *self, job_kind kind, const json_t *params,
                                  const json_t *paths, api_err *e)
{
    const char *out = job_params_out(paths), *mid = job_params_model_id(params);
    for (const job *j = J.head; j; j = j->next) {
        if (j == self || !is_active(j))
            continue;
        const char *jout = job_params_out(j->paths), *jmid = job_params_model_id(j->params);
        if (out && jout && !strcmp(out, jout))
            return api_fail(e, 409, "job_conflict", "job %s already writes %s", j->id, out);
        if (mid && jmid && !strcmp(mid, jmid))
            return api_fail(e, 409, "job_conflict", "job %s already works on model '%s'",
                            j->id, mid);
    }
    model_entry *m = kind == JOB_TRAIN && mid ? registry_get(mid) : NULL;
    if (m) {
        registry_release(m);
        return api_fail(e, 409, "model_exists", "a model '%s' is already served", mid);
    }
    return 0;
}

static int reply_job_locked(const job *j, json_t **out, api_err *e)
{
    *out = job_json(j, true);
    return *out ? 0 : api_fail(e, 503, "out_of_memory", "no memory for the reply");
}

static int refuse_if_unavailable_locked(api_err *e)
{
    if (!J.started || J.shutting_down)
        return api_fail(e, 503, "not_ready", "saed is stopping");
    if (!J.have_saectl)
        return api_fail(e, 503, "jobs_unavailable", "saectl was not found (set --saectl)");
    return 0;
}

int jobs_submit(job_kind kind, json_t *params, json_t *paths, json_t **out, api_err *e)
{
    pthread_mutex_lock(&J.mu);
    int rc = refuse_if_unavailable_locked(e);
    if (rc == 0)
        rc = check_conflicts_locked(NULL, kind, params, paths, e);
    job *j = NULL;
    if (rc == 0) {
        char id[JOB_ID_MAX + 1];
        snprintf(id, sizeof id, "job-%06u", J.next_seq);
        if (!(j = job_new(id, kind, params, paths)))
            rc = api_fail(e, 503, "out_of_memory", "no memory for the job");
    }
    if (rc == 0) {
        params = paths = NULL;      /* the job owns them */
        iso_now(j->created_at);
        append_locked(j);
        set_state_locked(j, JOB_QUEUED, NULL);
        rc = reply_job_locked(j, out, e);
    }
    pthread_mutex_unlock(&J.mu);
    json_decref(params);
    json_decref(paths);
    if (j)
        wake_runner();
    return rc;
}

int jobs_get(const char *id, json_t **out, api_err *e)
{
    pthread_mutex_lock(&J.mu);
    const job *j = find_locked(id);
    int rc = j ? reply_job_locked(j, out, e) : api_fail(e, 404, "job_not_found", "no job '%s'",
                                                        id);
    pthread_mutex_unlock(&J.mu);
    return rc;
}

int jobs_list(json_t **out, api_err *e)
{
    json_t *arr = json_array();
    pthread_mutex_lock(&J.mu);
    for (const job *j = J.head; j && arr; j = j->next)
        if (json_array_append_new(arr, job_json(j, true)) != 0) {
            json_decref(arr);
            arr = NULL;
        }
    pthread_mutex_unlock(&J.mu);
    *out = arr ? json_pack("{s:o}", "jobs", arr) : NULL;
    return *out ? 0 : api_fail(e, 503, "out_of_memory", "no memory for the reply");
}

int jobs_cancel(const char *id, json_t **out, api_err *e)
{
    pthread_mutex_lock(&J.mu);
    job *j = find_locked(id);
    int rc = 0;
    if (!j)
        rc = api_fail(e, 404, "job_not_found", "no job '%s'", id);
    else if (j->state == JOB_QUEUED)
        set_state_locked(j, JOB_CANCELLED, "cancelled before it started");
    else if (j->state != JOB_RUNNING || j->registering)
        rc = api_fail(e, 409, "job_finished", "job %s has already %s", id,
                      j->registering ? "finished training" : job_state_name(j->state));
    else if (!j->cancel_requested && j->pid > 0) {
        j->cancel_requested = true;
        j->term_at = sae_now_seconds();
        kill(j->pid, SIGTERM);
        j->seq++;
        saed_log("job %s: cancel requested, SIGTERM sent", id);
    }
    if (rc == 0)
        rc = reply_job_locked(j, out, e);
    pthread_mutex_unlock(&J.mu);
    wake_runner();
    return rc;
}

/* A job's paths resolved again from its parameters, as at submission: the
 * daemon may have restarted with other --model-root flags since the job was
 * stored, and a resumed job must still stay inside the roots. The same
 * directories are required, so that a train job continues its own run. */
static int recheck_paths_locked(const job *j, api_err *e)
{
    json_t *body = json_deep_copy(j->params), *params = NULL, *paths = NULL;
    job_kind kind;
    int rc = body && json_object_set_new(body, "kind", json_string(kind_name(j->kind))) == 0
                 ? 0
                 : api_fail(e, 503, "out_of_memory", "no memory");
    if (rc == 0)
        rc = job_params_check(body, &kind, &params, &paths, e);
    if (rc == 0 && !json_equal(paths, j->paths))
        rc = api_fail(e, 409, "paths_changed", "job %s: its paths resolve to other directories "
                      "now; submit it again", j->id);
    json_decref(body);
    json_decref(params);
    json_decref(paths);
    return rc;
}

int jobs_resume(const char *id, json_t **out, api_err *e)
{
    pthread_mutex_lock(&J.mu);
    job *j = find_locked(id);
    int rc = refuse_if_unavailable_locked(e);
    if (rc == 0 && !j)
        rc = api_fail(e, 404, "job_not_found", "no job '%s'", id);
    else if (rc == 0 && j->state != JOB_INTERRUPTED && j->state != JOB_FAILED &&
             j->state != JOB_CANCELLED)
        rc = api_fail(e, 409, "not_resumable", "job %s is %s; only interrupted, failed or "
                      "cancelled jobs resume", id, job_state_name(j->state));
    if (rc == 0)
        rc = recheck_paths_locked(j, e);
    if (rc == 0)
        rc = check_conflicts_locked(j, j->kind, j->params, j->paths, e);
    if (rc == 0) {
        j->resume = true;
        set_state_locked(j, JOB_QUEUED, NULL);
        rc = reply_job_locked(j, out, e);
    }
    pthread_mutex_unlock(&J.mu);
    wake_runner();
    return rc;
}

/* ---- event streams ---------------------------------------------------------------- */

int jobs_stream_open(const char *id, void *conn, job_stream **out, api_err *e)
{
    pthread_mutex_lock(&J.mu);
    job *j = find_locked(id);
    job_stream *s = NULL;
    int rc = 0;
    if (!j)
        rc = api_fail(e, 404, "job_not_found", "no job '%s'", id);
    else if (!J.started || J.shutting_down)
        rc = api_fail(e, 503, "not_ready", "saed is stopping");
    else if (J.n_streams >= MAX_STREAMS)
        rc = api_fail(e, 503, "too_many_streams", "%d event streams are open already; try "
                      "again later", MAX_STREAMS);
    else if (!(s = calloc(1, sizeof *s)))
        rc = api_fail(e, 503, "out_of_memory", "no memory for the stream");
    if (rc == 0) {
        s->j = j;
        s->conn = conn;
        s->last_write = sae_now_seconds();
        s->next = J.streams;
        J.streams = s;
        J.n_streams++;
        *out = s;
    }
    pthread_mutex_unlock(&J.mu);
    return rc;
}

/* The next event for a stream: the whole job as one line of JSON. "state"
 * when the state changed since the last event (the first event is one too),
 * else "progress". */
static int make_event_locked(job_stream *s, double now)
{
    const job *j = s->j;
    bool state_event = !s->sent_any || j->state != s->sent_state;
    json_t *o = job_json(j, true);
    char *data = o ? json_dumps(o, JOB_JSON_FLAGS) : NULL;
    json_decref(o);
    size_t cap = (data ? strlen(data) : 0) + 96;
    free(s->pending);
    s->pending = data ? malloc(cap) : NULL;
    if (!s->pending) {
        free(data);
        return -1;
    }
    int n = snprintf(s->pending, cap, "event: %s\nid: %llu\ndata: %s\n\n",
                     state_event ? "state" : "progress", (unsigned long long)j->seq, data);
    free(data);
    s->pending_len = n > 0 ? (size_t)n : 0;
    s->pending_off = 0;
    s->sent_any = true;
    s->sent_seq = j->seq;
    s->sent_state = j->state;
    s->last_event = now;
    if (is_final(j->state) && !j->registering)
        s->ended = true;        /* after this event */
    return 0;
}

static int set_pending_locked(job_stream *s, const char *text)
{
    free(s->pending);
    s->pending = strdup(text);
    s->pending_len = s->pending ? strlen(text) : 0;
    s->pending_off = 0;
    return s->pending ? 0 : -1;
}

long jobs_stream_pull(void *stream, char *buf, size_t max)
{
    job_stream *s = stream;
    long rc = HTTP_STREAM_WAIT;
    double now = sae_now_seconds();
    pthread_mutex_lock(&J.mu);
    s->parked = false;
    if (s->pending_off == s->pending_len) {
        bool changed = !s->sent_any || s->j->seq != s->sent_seq;
        bool state_changed = !s->sent_any || s->j->state != s->sent_state;
        if (s->ended || J.shutting_down)
            rc = HTTP_STREAM_END;
        else if (changed && (state_changed || now - s->last_event >= EVENT_MIN_S))
            rc = make_event_locked(s, now) < 0 ? HTTP_STREAM_END : HTTP_STREAM_WAIT;
        else if (now - s->last_write >= KEEPALIVE_S)
            rc = set_pending_locked(s, ": keep-alive\n\n") < 0 ? HTTP_STREAM_END
                                                                : HTTP_STREAM_WAIT;
    }
    if (rc != HTTP_STREAM_END && s->pending_off < s->pending_len) {
        size_t n = s->pending_len - s->pending_off;
        n = n < max ? n : max;
        memcpy(buf, s->pending + s->pending_off, n);
        s->pending_off += n;
        s->last_write = now;
        rc = (long)n;
    }
    if (rc == HTTP_STREAM_WAIT)
        s->parked = true;       /* the runner wakes it on the next change */
    pthread_mutex_unlock(&J.mu);
    return rc;
}

void jobs_stream_close(void *stream)
{
    job_stream *s = stream;
    pthread_mutex_lock(&J.mu);
    for (job_stream **p = &J.streams; *p; p = &(*p)->next)
        if (*p == s) {
            *p = s->next;
            J.n_streams--;
            break;
        }
    pthread_mutex_unlock(&J.mu);
    free(s->pending);
    free(s);
}
