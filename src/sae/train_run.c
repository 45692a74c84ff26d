/* train_run.c - a whole training run: corpus -> loader -> steps, with
 * progress, metrics.jsonl, periodic checkpoints and resume.
 *
 * Layout of the output directory:
 *   cfg.json, sae_weights.safetensors, train_state.safetensors   the final model
 *   metrics.jsonl                                                 one line per report
 *   checkpoints/step_000001000/ ...                               the same three files
 *   checkpoints/latest                                            name of the newest
 * A checkpoint directory is written under a temporary name and renamed into
 * place, then `latest` is replaced atomically: a kill at any moment leaves
 * the previous checkpoint intact and named by `latest`. */
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dataset.h"
#include "train.h"
#include "util.h"

#define KEEP_CHECKPOINTS 2

static char *loader_state_json(const loader *l)
{
    loader_state s;
    loader_get_state(l, &s);
    json_t *j = json_pack("{s:{s:I, s:I, s:I, s:I, s:I}}", "loader", "position",
                          (json_int_t)s.position, "seed", (json_int_t)s.seed, "buffer_rows",
                          (json_int_t)s.buffer_rows, "chunk_rows", (json_int_t)s.chunk_rows,
                          "n_rows", (json_int_t)s.n_rows);
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    return text;
}

static int restore_loader(loader *l, const char *extra, sae_error *err)
{
    json_t *j = extra ? json_loads(extra, 0, NULL) : NULL;
    json_t *ls = json_object_get(j, "loader");
    if (!json_is_object(ls)) {
        json_decref(j);
        return sae_fail(err, "checkpoint has no loader position");
    }
    loader_state s = {
        .position = (uint64_t)json_integer_value(json_object_get(ls, "position")),
        .seed = (uint64_t)json_integer_value(json_object_get(ls, "seed")),
        .buffer_rows = json_integer_value(json_object_get(ls, "buffer_rows")),
        .chunk_rows = json_integer_value(json_object_get(ls, "chunk_rows")),
        .n_rows = json_integer_value(json_object_get(ls, "n_rows")),
    };
    json_decref(j);
    return loader_set_state(l, &s, err);
}

/* A resumed run shuffles as the saved one did: its buffer and chunk sizes. */
static void saved_loader_geometry(const char *extra, loader_config *lc)
{
    json_t *j = extra ? json_loads(extra, 0, NULL) : NULL;
    json_t *ls = json_object_get(j, "loader");
    if (json_is_object(ls)) {
        lc->buffer_rows = json_integer_value(json_object_get(ls, "buffer_rows"));
        lc->chunk_rows = json_integer_value(json_object_get(ls, "chunk_rows"));
    }
    json_decref(j);
}

/* Removes a checkpoint directory (flat: files only). */
static void remove_dir(const char *dir)
{
    DIR *dp = opendir(dir);
    if (!dp)
        return;
    struct dirent *de;
    char path[4200];
    while ((de = readdir(dp)))
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
            snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
            unlink(path);
        }
    closedir(dp);
    rmdir(dir);
}

static int save_checkpoint(const trainer *t, const loader *l, const char *out_dir,
                           sae_error *err)
{
    char name[64], dir[4200], tmp[4300], path[4300];
    int64_t step = trainer_step_count(t);
    snprintf(name, sizeof name, "step_%09lld", (long long)step);
    snprintf(dir, sizeof dir, "%s/checkpoints/%s", out_dir, name);
    snprintf(tmp, sizeof tmp, "%s.partial", dir);
    remove_dir(tmp);
    char *extra = loader_state_json(l);
    int rc = extra ? trainer_save(t, tmp, extra, err) : sae_fail(err, "out of memory");
    free(extra);
    if (rc != SAE_OK)
        return SAE_ERR;
    remove_dir(dir);
    if (rename(tmp, dir) != 0)
        return sae_fail(err, "%s: rename failed: %s", dir, strerror(errno));
    snprintf(path, sizeof path, "%s/checkpoints/latest", out_dir);
    if (sae_write_file_atomic(path, name, strlen(name), err) != SAE_OK)
        return SAE_ERR;
    /* keep the newest few */
    int64_t every_old = step;
    DIR *dp;
    snprintf(path, sizeof path, "%s/checkpoints", out_dir);
    if ((dp = opendir(path))) {
        struct dirent *de;
        int64_t steps[1024];
        int n = 0;
        while ((de = readdir(dp)) && n < 1024) {
            long long s;
            char rest[8];
            if (sscanf(de->d_name, "step_%lld%7s", &s, rest) == 1 && s < every_old)
                steps[n++] = s;
        }
        closedir(dp);
        /* remove all but the KEEP_CHECKPOINTS - 1 newest older ones */
        for (int i = 0; i < n; i++) {
            int newer = 0;
            for (int j = 0; j < n; j++)
                newer += steps[j] > steps[i];
            if (newer >= KEEP_CHECKPOINTS - 1) {
                snprintf(dir, sizeof dir, "%s/checkpoints/step_%09lld", out_dir,
                         (long long)steps[i]);
                remove_dir(dir);
            }
        }
    }
    return SAE_OK;
}

/* The newest checkpoint's directory, or the output directory itself when the
 * run finished there. */
static int find_resume_dir(const char *out_dir, char *dir, size_t len, sae_error *err)
{
    char path[4200], *name;
    size_t n;
    snprintf(path, sizeof path, "%s/checkpoints/latest", out_dir);
    if (sae_read_file(path, 256, &name, &n, err) == SAE_OK) {
        while (n > 0 && (name[n - 1] == '\n' || name[n - 1] == ' '))
            name[--n] = '\0';
        snprintf(dir, len, "%s/checkpoints/%s", out_dir, name);
        free(name);
        return SAE_OK;
    }
    snprintf(path, sizeof path, "%s/train_state.safetensors", out_dir);
    if (access(path, R_OK) == 0) {
        snprintf(dir, len, "%s", out_dir);
        return SAE_OK;
    }
    return sae_fail(err, "%s: nothing to resume (no checkpoints/latest)", out_dir);
}

/* metrics.jsonl keeps the lines up to `step` (a resumed run rewrites the rest). */
static FILE *open_metrics(const char *out_dir, int64_t step, sae_error *err)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/metrics.jsonl", out_dir);
    char *old = NULL;
    size_t len = 0;
    if (step > 0 && sae_read_file(path, (size_t)1 << 30, &old, &len, NULL) == SAE_OK) {
        size_t keep = 0;
        for (char *line = old; line < old + len;) {
            char *end = memchr(line, '\n', (size_t)(old + len - line));
            if (!end)
                break;
            long long s;
            if (sscanf(line, "{\"step\": %lld", &s) == 1 && s > step)
                break;
            keep = (size_t)(end + 1 - old);
            line = end + 1;
        }
        if (sae_write_file_atomic(path, old, keep, err) != SAE_OK) {
            free(old);
            return NULL;
        }
    }
    free(old);
    FILE *f = fopen(path, step > 0 ? "a" : "w");
    if (!f)
        sae_fail(err, "%s: %s", path, strerror(errno));
    return f;
}

static void write_metrics(FILE *f, const train_progress *p)
{
    const step_stats *s = &p->stats;
    fprintf(f, "{\"step\": %lld, \"steps\": %lld, \"tokens\": %lld, \"tokens_per_s\": %.1f, "
            "\"eta_s\": %.1f, \"loss\": %.9g, \"mse\": %.9g, \"fvu\": %.9g, \"l0\": %.4f, "
            "\"aux_loss\": %.9g, \"alive\": %lld, \"dead\": %lld, \"beta\": %.6g, "
            "\"lr\": %.6g, \"grad_norm\": %.6g}\n",
            (long long)p->step, (long long)p->steps, (long long)p->tokens, p->tokens_per_s,
            p->eta_s, s->loss, s->mse, s->fvu, s->l0, s->aux_loss, (long long)p->alive,
            (long long)p->dead, s->beta, s->lr, s->grad_norm);
    fflush(f);
}

int train_run(const train_options *opts, const train_run_config *rc, sae_error *err)
{
    corpus *c = NULL;
    loader *l = NULL;
    trainer *t = NULL;
    FILE *metrics = NULL;
    float *batch = NULL;
    char *extra = NULL;
    int result = SAE_ERR;

    if (corpus_open(rc->corpus, &c, err) != SAE_OK)
        return SAE_ERR;
    const corpus_info *info = corpus_get_info(c);
    char dir[4300];
    if (rc->resume) {   /* the saved options rule */
        if (find_resume_dir(rc->out_dir, dir, sizeof dir, err) != SAE_OK ||
            trainer_load(dir, &t, &extra, err) != SAE_OK)
            goto out;
        if (sae_mkdirs(rc->out_dir, err) != SAE_OK)
            goto out;
    } else if (trainer_new(opts, info->d_in, &t, err) != SAE_OK) {
        goto out;
    }
    const train_options *o = trainer_options(t);
    if (trainer_model(t)->cfg.d_in != info->d_in) {   /* still on the host: no copy */
        sae_fail(err, "%s: d_in %d, but the model being trained has d_in %d", rc->corpus,
                 info->d_in, trainer_model(t)->cfg.d_in);
        goto out;
    }
    if (trainer_use_device(t, rc->device, err) != SAE_OK)
        goto out;
    char ckpt_dir[4300];
    snprintf(ckpt_dir, sizeof ckpt_dir, "%s/checkpoints", rc->out_dir);
    if (sae_mkdirs(ckpt_dir, err) != SAE_OK)
        goto out;
    loader_config lc = {.batch = o->batch, .buffer_rows = rc->shuffle_rows, .seed = o->seed};
    if (rc->resume && rc->shuffle_rows == 0)    /* the saved shuffle geometry, unless given */
        saved_loader_geometry(extra, &lc);
    if (loader_open(c, &lc, &l, err) != SAE_OK)
        goto out;
    if (rc->resume && restore_loader(l, extra, err) != SAE_OK)
        goto out;
    if (!(metrics = open_metrics(rc->out_dir, trainer_step_count(t), err)))
        goto out;
    const int d = info->d_in;
    if (!(batch = malloc((size_t)o->batch * d * sizeof *batch))) {
        sae_fail(err, "out of memory for a batch of %d rows", o->batch);
        goto out;
    }
    float *next = trainer_batch_buffer(t);  /* page-locked on a GPU */
    if (!next)
        next = batch;

    const int64_t every = o->steps / 1000 > 1 ? o->steps / 1000 : 1;
    const int64_t first_step = trainer_step_count(t);
    const double t0 = sae_now_seconds();
    while (trainer_step_count(t) < o->steps) {
        step_stats st;
        if (loader_next(l, next, err) != SAE_OK || trainer_step(t, next, &st, err) != SAE_OK)
            goto out;   /* the last checkpoint stays as it was */
        const int64_t step = trainer_step_count(t);
        train_progress p = {.step = step, .steps = o->steps, .stats = st};
        p.tokens = step * (int64_t)o->batch;
        p.elapsed_s = sae_now_seconds() - t0;
        p.tokens_per_s = (double)(step - first_step) * o->batch / (p.elapsed_s > 0 ? p.elapsed_s : 1e-9);
        p.eta_s = (double)(o->steps - step) * o->batch / (p.tokens_per_s > 0 ? p.tokens_per_s : 1e-9);
        p.alive = trainer_alive(t);
        p.dead = o->d_sae - p.alive;
        if (step % every == 0 || step == o->steps)
            write_metrics(metrics, &p);
        if (rc->progress)
            rc->progress(rc->progress_ctx, &p);
        int stopping = rc->stop && *rc->stop;
        if (((rc->checkpoint_every > 0 && step % rc->checkpoint_every == 0) || stopping) &&
            step < o->steps && save_checkpoint(t, l, rc->out_dir, err) != SAE_OK)
            goto out;
        if (stopping && step < o->steps) {   /* at the last step: finish, save the model */
            sae_fail(err, "stopped at step %lld; resume with --resume", (long long)step);
            goto out;
        }
    }
    char *final_extra = loader_state_json(l);
    result = final_extra ? trainer_save(t, rc->out_dir, final_extra, err)
                         : sae_fail(err, "out of memory");
    free(final_extra);
out:
    if (metrics)
        fclose(metrics);
    free(batch);
    free(extra);
    loader_close(l);
    trainer_free(t);
    corpus_close(c);
    return result;
}
