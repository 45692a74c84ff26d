/* train_step_dump.c - runs the engine's training step on given weights and a
 * given batch and dumps everything a reference needs to check it.
 *
 *   train_step_dump MODEL_DIR BATCHES.npy OPTIONS.json|- OUT_DIR STEPS
 *
 * MODEL_DIR is a native checkpoint directory. With OPTIONS.json the trainer is
 * trainer_from_model(options, model) (fresh: step 0, Adam moments 0, no latent
 * dead); with "-" it is trainer_load(MODEL_DIR), which also restores the
 * training state (train_state.safetensors: step, tokens, Adam moments, when
 * each latent last fired, the options).
 * BATCHES.npy is float32 [STEPS * batch, d_in]: step s uses rows
 * [s * batch, (s + 1) * batch).
 *
 * Writes into OUT_DIR (which must exist):
 *   grads.safetensors   trainer_loss_and_grads on batch 0 (a fresh trainer):
 *                       every gradient by trainer_grad's names (W_enc_T is
 *                       [d_sae, d_in]), unmodified: before clipping and before
 *                       the decoder's parallel component is removed.
 *   grads.json          {"loss", "mse", "fvu", "l0", "aux_loss", "lr", "beta"}
 *   step_N/             trainer_save after step N (1-based) of another fresh
 *                       trainer: cfg.json, sae_weights.safetensors,
 *                       train_state.safetensors (Adam moments, last_fired)
 *   steps.json          [{"loss", "mse", "grad_norm", "lr", "beta", ...}, ...]
 *
 *   train_step_dump --init OPTIONS.json BATCH.npy OUT_DIR
 *
 * trainer_new (the recipe's initialisation), then trainer_loss_and_grads on
 * the batch (which sets b_dec from it); saves the model into OUT_DIR.
 *
 *   train_step_dump --philox KEY0 KEY1 C0 C1 C2 C3
 *
 * prints Random123's philox4x32 (10 rounds) of that counter and key as four
 * hex words, as src/sae/train.c calls it: the reference's Philox is checked
 * against it.
 * Exit 0 on success, 1 with a message on stderr otherwise. */
#include <Random123/philox.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "npy.h"
#include "safetensors.h"
#include "train.h"
#include "util.h"

static const char *const NAMES[] = {"W_enc_T", "W_dec", "b_dec", "b_enc", "b_gate", "b_mag",
                                    "r_mag"};

static int die(const char *what, const sae_error *err)
{
    fprintf(stderr, "train_step_dump: %s: %s\n", what, err ? err->msg : "");
    return 1;
}

static int make_trainer(const char *model_dir, const char *options_path, trainer **out,
                        sae_error *err)
{
    if (!strcmp(options_path, "-"))
        return trainer_load(model_dir, out, NULL, err);
    char *text = NULL;
    size_t len = 0;
    if (sae_read_file(options_path, 1 << 20, &text, &len, err) != SAE_OK)
        return SAE_ERR;
    train_options o;
    int rc = train_options_from_json(text, &o, err);
    free(text);
    if (rc != SAE_OK)
        return SAE_ERR;
    sae_model *m = NULL;
    if (sae_load(model_dir, &m, err) != SAE_OK)
        return SAE_ERR;
    rc = trainer_from_model(&o, m, out, err);
    sae_free(m);
    return rc;
}

static json_t *stats_json(const step_stats *s)
{
    return json_pack("{s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f}", "loss", s->loss, "mse", s->mse,
                     "fvu", s->fvu, "l0", s->l0, "aux_loss", s->aux_loss, "grad_norm",
                     s->grad_norm, "lr", s->lr, "beta", s->beta);
}

static int write_json(const char *path, json_t *j, sae_error *err)
{
    char *text = json_dumps(j, JSON_INDENT(1) | JSON_REAL_PRECISION(17));
    if (!text)
        return sae_fail(err, "out of memory");
    int rc = sae_write_file_atomic(path, text, strlen(text), err);
    free(text);
    return rc;
}

static int init_mode(const char *options_path, const char *batch_path, const char *out)
{
    sae_error err;
    char *text = NULL;
    size_t len = 0;
    train_options o;
    if (sae_read_file(options_path, 1 << 20, &text, &len, &err) != SAE_OK)
        return die(options_path, &err);
    int rc = train_options_from_json(text, &o, &err);
    free(text);
    if (rc != SAE_OK)
        return die(options_path, &err);
    npy_array x;
    if (npy_read_f32(batch_path, 2, &x, &err) != SAE_OK)
        return die(batch_path, &err);
    trainer *t = NULL;
    step_stats st;
    int status = 1;
    if (x.shape[0] < o.batch)
        fprintf(stderr, "train_step_dump: %s: fewer rows than a batch\n", batch_path);
    else if (trainer_new(&o, (int)x.shape[1], &t, &err) != SAE_OK)
        die("trainer_new", &err);
    else if (trainer_loss_and_grads(t, x.data, &st, &err) != SAE_OK)
        die("trainer_loss_and_grads", &err);
    else if (sae_mkdirs(out, &err) != SAE_OK || sae_save(trainer_model(t), out, &err) != SAE_OK)
        die(out, &err);
    else
        status = 0;
    trainer_free(t);
    npy_free(&x);
    return status;
}

int main(int argc, char **argv)
{
    if (argc == 8 && !strcmp(argv[1], "--philox")) {
        philox4x32_key_t key = {{(uint32_t)strtoul(argv[2], NULL, 0),
                                 (uint32_t)strtoul(argv[3], NULL, 0)}};
        philox4x32_ctr_t ctr = {{(uint32_t)strtoul(argv[4], NULL, 0),
                                 (uint32_t)strtoul(argv[5], NULL, 0),
                                 (uint32_t)strtoul(argv[6], NULL, 0),
                                 (uint32_t)strtoul(argv[7], NULL, 0)}};
        philox4x32_ctr_t r = philox4x32(ctr, key);
        printf("%08x %08x %08x %08x\n", r.v[0], r.v[1], r.v[2], r.v[3]);
        return 0;
    }
    if (argc == 5 && !strcmp(argv[1], "--init"))
        return init_mode(argv[2], argv[3], argv[4]);
    if (argc != 6) {
        fprintf(stderr, "usage: train_step_dump MODEL_DIR BATCHES.npy OPTIONS.json|- OUT_DIR "
                "STEPS\n");
        return 2;
    }
    const char *model_dir = argv[1], *batches = argv[2], *options = argv[3], *out = argv[4];
    const int steps = atoi(argv[5]);
    sae_error err;
    trainer *t = NULL;
    if (make_trainer(model_dir, options, &t, &err) != SAE_OK)
        return die(model_dir, &err);
    const int B = trainer_options(t)->batch, d = trainer_model(t)->cfg.d_in;
    npy_array x;
    if (npy_read_f32(batches, 2, &x, &err) != SAE_OK) {
        trainer_free(t);
        return die(batches, &err);
    }
    if (x.shape[1] != d || x.shape[0] < (int64_t)(steps > 1 ? steps : 1) * B) {
        fprintf(stderr, "train_step_dump: %s: want [%d x %d, %d], got [%lld, %lld]\n", batches,
                steps, B, d, (long long)x.shape[0], (long long)x.shape[1]);
        npy_free(&x);
        trainer_free(t);
        return 1;
    }
    int status = 1;
    char path[4096];
    json_t *all = json_array();

    /* 1. loss and gradients, nothing updated */
    step_stats st;
    if (trainer_loss_and_grads(t, x.data, &st, &err) != SAE_OK) {
        die("trainer_loss_and_grads", &err);
        goto out;
    }
    st_out outs[8];
    int n = 0;
    for (size_t i = 0; i < sizeof NAMES / sizeof NAMES[0]; i++) {
        size_t len;
        const float *g = trainer_grad(t, NAMES[i], &len);
        if (!g)
            continue;
        outs[n++] = (st_out){NAMES[i], ST_F32, 1, {(int64_t)len}, g};
    }
    snprintf(path, sizeof path, "%s/grads.safetensors", out);
    if (st_write(path, outs, n, NULL, &err) != SAE_OK) {
        die(path, &err);
        goto out;
    }
    json_t *gj = stats_json(&st);
    snprintf(path, sizeof path, "%s/grads.json", out);
    int rc = write_json(path, gj, &err);
    json_decref(gj);
    if (rc != SAE_OK) {
        die(path, &err);
        goto out;
    }
    trainer_free(t);
    t = NULL;

    /* 2. full steps on a fresh trainer */
    if (make_trainer(model_dir, options, &t, &err) != SAE_OK) {
        die(model_dir, &err);
        goto out;
    }
    for (int s = 0; s < steps; s++) {
        if (trainer_step(t, x.data + (size_t)s * B * d, &st, &err) != SAE_OK) {
            die("trainer_step", &err);
            goto out;
        }
        json_array_append_new(all, stats_json(&st));
        snprintf(path, sizeof path, "%s/step_%d", out, s + 1);
        if (sae_mkdirs(path, &err) != SAE_OK || trainer_save(t, path, NULL, &err) != SAE_OK) {
            die(path, &err);
            goto out;
        }
    }
    snprintf(path, sizeof path, "%s/steps.json", out);
    if (write_json(path, all, &err) != SAE_OK) {
        die(path, &err);
        goto out;
    }
    status = 0;
out:
    json_decref(all);
    npy_free(&x);
    trainer_free(t);
    return status;
}
