/* store.c - the LMDB environment behind store.h (which documents the layout). */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>
#include <lmdb.h>

#include "store.h"

/* Virtual address space only: the file grows as data does. 64 GiB holds
 * hundreds of millions of examples. */
#define STORE_MAP_SIZE ((size_t)64 << 30)
/* A writer commits after this many bytes or puts: bounded dirty pages, and
 * few enough commits (each one syncs) to keep writing fast. */
#define BATCH_BYTES ((size_t)32 << 20)
#define BATCH_PUTS 100000
#define DELETE_BATCH 20000

struct store {
    MDB_env *env;
    MDB_dbi meta, models, features, examples, explanations, jobs;
};

struct store_writer {
    store *s;
    MDB_txn *txn;
    size_t bytes, puts;
};

enum { PART_RECORD = 0, PART_VOCAB = 1, PART_RUN = 2, PART_SERVED = 3 };

static int fail(sae_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(sae_error *err, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return SAE_ERR;
}

static int lmdb_fail(sae_error *err, int rc, const char *what)
{
    return fail(err, "store: %s: %s", what, mdb_strerror(rc));
}

/* ---- Keys ------------------------------------------------------------------ */

/* id \0 + up to 4 + 1 + 1 + 4 bytes of integers, or an explanation's scorer. */
typedef struct keybuf {
    uint8_t b[2 * STORE_ID_MAX + 16];
    size_t n;
} keybuf;

int store_id_valid(const char *id)
{
    size_t n = id ? strlen(id) : 0;
    if (n == 0 || n > STORE_ID_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = id[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* Appends s with its NUL (s is at most STORE_ID_MAX bytes, checked by callers). */
static void key_str(keybuf *k, const char *s)
{
    size_t n = strlen(s) + 1;
    memcpy(k->b + k->n, s, n);
    k->n += n;
}

static void key_u8(keybuf *k, uint32_t v)
{
    k->b[k->n++] = (uint8_t)v;
}

static void key_u32(keybuf *k, uint32_t v)
{
    for (int i = 3; i >= 0; i--)
        k->b[k->n++] = (uint8_t)(v >> (8 * i));
}

static uint32_t read_u32be(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static keybuf key_model(const char *id, uint32_t part)
{
    keybuf k = {.n = 0};
    key_str(&k, id);
    key_u8(&k, part);
    return k;
}

static keybuf key_feature(const char *id, uint32_t feature)
{
    keybuf k = {.n = 0};
    key_str(&k, id);
    key_u32(&k, feature);
    return k;
}

static keybuf key_example(const char *id, uint32_t feature, uint32_t kind, uint32_t bucket,
                          uint32_t rank)
{
    keybuf k = key_feature(id, feature);
    key_u8(&k, kind);
    key_u8(&k, bucket);
    key_u32(&k, rank);
    return k;
}

static MDB_val val_of(const keybuf *k)
{
    return (MDB_val){k->n, (void *)k->b};
}

static bool has_prefix(const MDB_val *key, const keybuf *prefix)
{
    return key->mv_size >= prefix->n && memcmp(key->mv_data, prefix->b, prefix->n) == 0;
}

static int check_id(const char *id, sae_error *err)
{
    if (!store_id_valid(id))
        return fail(err, "store: bad id '%s' (1..%d characters of A-Z a-z 0-9 . _ -)",
                    id ? id : "(null)", STORE_ID_MAX);
    return SAE_OK;
}

/* ---- Transactions -------------------------------------------------------------- */

static int txn_begin(store *s, bool write, MDB_txn **txn, sae_error *err)
{
    int rc = mdb_txn_begin(s->env, NULL, write ? 0 : MDB_RDONLY, txn);
    return rc ? lmdb_fail(err, rc, write ? "begin write" : "begin read") : SAE_OK;
}

static int txn_commit(MDB_txn *txn, sae_error *err)
{
    int rc = mdb_txn_commit(txn);
    return rc ? lmdb_fail(err, rc, "commit") : SAE_OK;
}

static int put(MDB_txn *txn, MDB_dbi dbi, const keybuf *k, const void *v, size_t n,
               sae_error *err)
{
    MDB_val key = val_of(k), val = {n, (void *)v};
    int rc = mdb_put(txn, dbi, &key, &val, 0);
    return rc ? lmdb_fail(err, rc, "put") : SAE_OK;
}

/* *out points into the map (valid until the transaction ends). */
static int get(MDB_txn *txn, MDB_dbi dbi, const keybuf *k, MDB_val *out, sae_error *err)
{
    MDB_val key = val_of(k);
    int rc = mdb_get(txn, dbi, &key, out);
    if (rc == MDB_NOTFOUND)
        return STORE_NOT_FOUND;
    return rc ? lmdb_fail(err, rc, "get") : SAE_OK;
}

/* A JSON value is stored with its NUL, so it reads back as a C string. */
static bool is_cstring(const MDB_val *v)
{
    return v->mv_size > 0 && ((const char *)v->mv_data)[v->mv_size - 1] == '\0';
}

static int put_json(MDB_txn *txn, MDB_dbi dbi, const keybuf *k, const char *json,
                    sae_error *err)
{
    return put(txn, dbi, k, json, strlen(json) + 1, err);
}

/* One key of one database in its own short read transaction, copied out as a
 * malloc'd C string. */
static int get_json(store *s, MDB_dbi dbi, const keybuf *k, char **out, sae_error *err)
{
    MDB_txn *txn;
    if (txn_begin(s, false, &txn, err) != SAE_OK)
        return SAE_ERR;
    MDB_val v;
    int rc = get(txn, dbi, k, &v, err);
    if (rc == SAE_OK && !is_cstring(&v))
        rc = fail(err, "store: corrupt JSON value");
    if (rc == SAE_OK) {
        *out = malloc(v.mv_size);
        if (*out)
            memcpy(*out, v.mv_data, v.mv_size);
        else
            rc = fail(err, "store: out of memory");
    }
    mdb_txn_abort(txn);
    return rc;
}

/* One key of one database written in its own write transaction. */
static int put_json_txn(store *s, MDB_dbi dbi, const keybuf *k, const char *json,
                        sae_error *err)
{
    MDB_txn *txn;
    if (txn_begin(s, true, &txn, err) != SAE_OK)
        return SAE_ERR;
    if (put_json(txn, dbi, k, json, err) != SAE_OK) {
        mdb_txn_abort(txn);
        return SAE_ERR;
    }
    return txn_commit(txn, err);
}

/* ---- Open / close -------------------------------------------------------------- */

static int open_dbis(store *s, sae_error *err)
{
    struct {
        const char *name;
        MDB_dbi *dbi;
    } dbs[] = {{"meta", &s->meta},         {"models", &s->models},
               {"features", &s->features}, {"examples", &s->examples},
               {"explanations", &s->explanations}, {"jobs", &s->jobs}};
    MDB_txn *txn;
    if (txn_begin(s, true, &txn, err) != SAE_OK)
        return SAE_ERR;
    for (size_t i = 0; i < sizeof dbs / sizeof dbs[0]; i++) {
        int rc = mdb_dbi_open(txn, dbs[i].name, MDB_CREATE, dbs[i].dbi);
        if (rc) {
            mdb_txn_abort(txn);
            return lmdb_fail(err, rc, dbs[i].name);
        }
    }
    /* The schema: written by the first open, checked by every later one. */
    keybuf k = {.n = 0};
    key_str(&k, "schema");
    MDB_val v;
    int rc = get(txn, s->meta, &k, &v, err);
    uint32_t schema = STORE_SCHEMA;
    if (rc == STORE_NOT_FOUND)
        rc = put(txn, s->meta, &k, &schema, sizeof schema, err);
    else if (rc == SAE_OK && v.mv_size == sizeof schema)
        memcpy(&schema, v.mv_data, sizeof schema);
    if (rc == SAE_OK && schema != STORE_SCHEMA)
        rc = fail(err, "store: schema version %u, this program reads %u", schema,
                  STORE_SCHEMA);
    if (rc != SAE_OK) {
        mdb_txn_abort(txn);
        return SAE_ERR;
    }
    return txn_commit(txn, err);
}

int store_open(const char *dir, store **out, sae_error *err)
{
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return fail(err, "store: cannot create %s: %s", dir, strerror(errno));
    store *s = calloc(1, sizeof *s);
    if (!s)
        return fail(err, "store: out of memory");
    int rc = mdb_env_create(&s->env);
    if (rc) {
        free(s);
        return lmdb_fail(err, rc, "env create");
    }
    const char *step = "set max dbs";
    if (!(rc = mdb_env_set_maxdbs(s->env, 8)) && (step = "set map size") &&
        !(rc = mdb_env_set_mapsize(s->env, STORE_MAP_SIZE)) && (step = dir) &&
        !(rc = mdb_env_open(s->env, dir, MDB_NOTLS, 0644))) {
        /* Reader slots of processes killed mid-read would pin old pages. */
        int dead;
        step = "reader check";
        rc = mdb_reader_check(s->env, &dead);
    }
    if (rc) {
        lmdb_fail(err, rc, step);
        store_close(s);
        return SAE_ERR;
    }
    if (open_dbis(s, err) != SAE_OK) {
        store_close(s);
        return SAE_ERR;
    }
    *out = s;
    return SAE_OK;
}

void store_close(store *s)
{
    if (!s)
        return;
    mdb_env_close(s->env);
    free(s);
}

/* ---- Models --------------------------------------------------------------------- */

int store_model_put(store *s, const char *id, const char *json, sae_error *err)
{
    if (check_id(id, err) != SAE_OK)
        return SAE_ERR;
    keybuf k = key_model(id, PART_RECORD);
    return put_json_txn(s, s->models, &k, json, err);
}

int store_model_get(store *s, const char *id, char **json, sae_error *err)
{
    if (check_id(id, err) != SAE_OK)
        return SAE_ERR;
    keybuf k = key_model(id, PART_RECORD);
    return get_json(s, s->models, &k, json, err);
}

int store_vocab_get(store *s, const char *id, char **json, sae_error *err)
{
    if (check_id(id, err) != SAE_OK)
        return SAE_ERR;
    keybuf k = key_model(id, PART_VOCAB);
    return get_json(s, s->models, &k, json, err);
}

static int run_get(store *s, MDB_txn *txn, const char *id, store_profile_run *run,
                   sae_error *err)
{
    keybuf k = key_model(id, PART_RUN);
    MDB_val v;
    int rc = get(txn, s->models, &k, &v, err);
    if (rc != SAE_OK)
        return rc;
    if (v.mv_size != sizeof *run)
        return fail(err, "store: corrupt run record of model '%s'", id);
    memcpy(run, v.mv_data, sizeof *run);
    return SAE_OK;
}

int store_profile_run_get(store *s, const char *id, store_profile_run *run, sae_error *err)
{
    if (check_id(id, err) != SAE_OK)
        return SAE_ERR;
    MDB_txn *txn;
    if (txn_begin(s, false, &txn, err) != SAE_OK)
        return SAE_ERR;
    int rc = run_get(s, txn, id, run, err);
    mdb_txn_abort(txn);
    return rc;
}

/* Calls fn(ctx, key, value) for every entry of dbi whose key starts with
 * prefix (every entry when prefix is NULL), in key order. fn returns 0 to go
 * on, a positive value to stop, SAE_ERR (having filled the error) to fail. */
typedef int (*scan_fn)(void *ctx, const MDB_val *key, const MDB_val *val);

/* Like scan below, but starting at the first key >= start (which must itself
 * begin with prefix): a range scan such as "features n.. of one model". */
static int scan_from(MDB_txn *txn, MDB_dbi dbi, const keybuf *start, const keybuf *prefix,
                     scan_fn fn, void *ctx, sae_error *err)
{
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, dbi, &cur);
    if (rc)
        return lmdb_fail(err, rc, "cursor");
    MDB_val key = start ? val_of(start) : (MDB_val){0, NULL}, val;
    int stop = 0;
    for (rc = mdb_cursor_get(cur, &key, &val, start ? MDB_SET_RANGE : MDB_FIRST);
         rc == 0 && !stop && (!prefix || has_prefix(&key, prefix));
         rc = mdb_cursor_get(cur, &key, &val, MDB_NEXT))
        stop = fn(ctx, &key, &val);
    mdb_cursor_close(cur);
    if (stop == SAE_ERR)
        return SAE_ERR;
    return rc && rc != MDB_NOTFOUND ? lmdb_fail(err, rc, "cursor get") : SAE_OK;
}

static int scan(MDB_txn *txn, MDB_dbi dbi, const keybuf *prefix, scan_fn fn, void *ctx,
                sae_error *err)
{
    return scan_from(txn, dbi, prefix, prefix, fn, ctx, err);
}

static int scan_read(store *s, MDB_dbi dbi, const keybuf *prefix, scan_fn fn, void *ctx,
                     sae_error *err)
{
    MDB_txn *txn;
    if (txn_begin(s, false, &txn, err) != SAE_OK)
        return SAE_ERR;
    int rc = scan(txn, dbi, prefix, fn, ctx, err);
    mdb_txn_abort(txn);
    return rc;
}

/* The id of a key that starts with "id \0", or NULL when it does not. */
static const char *key_id(const MDB_val *key, size_t *len)
{
    const char *p = key->mv_data;
    const char *nul = memchr(p, '\0', key->mv_size < STORE_ID_MAX + 1 ? key->mv_size
                                                                        : STORE_ID_MAX + 1);
    if (!nul || nul == p)
        return NULL;
    *len = (size_t)(nul - p);
    return p;
}

typedef struct list_ctx {
    int (*fn)(void *ctx, const char *id);
    void *ctx;
} list_ctx;

static int list_model(void *vctx, const MDB_val *key, const MDB_val *val)
{
    (void)val;
    list_ctx *c = vctx;
    size_t n;
    const char *id = key_id(key, &n);
    if (!id || key->mv_size != n + 2 || ((const uint8_t *)key->mv_data)[n + 1] != PART_RECORD)
        return 0;
    return c->fn(c->ctx, id) != 0;
}

int store_model_list(store *s, int (*fn)(void *ctx, const char *id), void *ctx,
                     sae_error *err)
{
    list_ctx c = {fn, ctx};
    return scan_read(s, s->models, NULL, list_model, &c, err);
}

/* ---- Served models ------------------------------------------------------------- */

int store_served_put(store *s, const char *id, const char *json, sae_error *err)
{
    if (check_id(id, err) != SAE_OK)
        return SAE_ERR;
    keybuf k = key_model(id, PART_SERVED);
    return put_json_txn(s, s->models, &k, json, err);
}

int store_served_del(store *s, const char *id, sae_error *err)
{
    if (check_id(id, err) != SAE_OK)
        return SAE_ERR;
    MDB_txn *txn;
    if (txn_begin(s, true, &txn, err) != SAE_OK)
        return SAE_ERR;
    keybuf k = key_model(id, PART_SERVED);
    MDB_val key = val_of(&k);
    int rc = mdb_del(txn, s->models, &key, NULL);
    if (rc == MDB_NOTFOUND) {
        mdb_txn_abort(txn);
        return STORE_NOT_FOUND;
    }
    if (rc) {
        mdb_txn_abort(txn);
        return lmdb_fail(err, rc, "delete");
    }
    return txn_commit(txn, err);
}

/* Lists the JSON values of one database whose keys are "id \0" (part < 0:
 * jobs, where any other key is corrupt) or "id \0 part" (models, where the
 * other parts are skipped). */
typedef struct json_list {
    sae_error *err;
    int (*fn)(void *ctx, const char *id, const char *json);
    void *ctx;
    int part;
    const char *what;
} json_list;

static int visit_json(void *vctx, const MDB_val *key, const MDB_val *val)
{
    json_list *c = vctx;
    size_t n;
    const char *id = key_id(key, &n);
    bool mine = id && (c->part < 0 ? key->mv_size == n + 1
                                   : key->mv_size == n + 2 &&
                                         ((const uint8_t *)key->mv_data)[n + 1] == c->part);
    if (!mine && c->part >= 0)
        return 0;
    if (!mine || !is_cstring(val))
        return fail(c->err, "store: corrupt %s record", c->what);
    return c->fn(c->ctx, id, val->mv_data) != 0;
}

int store_served_list(store *s, int (*fn)(void *ctx, const char *id, const char *json),
                      void *ctx, sae_error *err)
{
    json_list c = {err, fn, ctx, PART_SERVED, "served-model"};
    return scan_read(s, s->models, NULL, visit_json, &c, err);
}

/* ---- Writers -------------------------------------------------------------------- */

int store_writer_begin(store *s, store_writer **out, sae_error *err)
{
    store_writer *w = calloc(1, sizeof *w);
    if (!w)
        return fail(err, "store: out of memory");
    w->s = s;
    if (txn_begin(s, true, &w->txn, err) != SAE_OK) {
        free(w);
        return SAE_ERR;
    }
    *out = w;
    return SAE_OK;
}

/* Counts a put; a full batch is committed and a new transaction begun. */
static int writer_account(store_writer *w, size_t bytes, sae_error *err)
{
    w->bytes += bytes;
    if (++w->puts < BATCH_PUTS && w->bytes < BATCH_BYTES)
        return SAE_OK;
    MDB_txn *txn = w->txn;
    w->txn = NULL;
    w->bytes = w->puts = 0;
    if (txn_commit(txn, err) != SAE_OK)
        return SAE_ERR;
    return txn_begin(w->s, true, &w->txn, err);
}

static int writer_put(store_writer *w, MDB_dbi dbi, const keybuf *k, const void *v, size_t n,
                      sae_error *err)
{
    if (put(w->txn, dbi, k, v, n, err) != SAE_OK)
        return SAE_ERR;
    return writer_account(w, k->n + n, err);
}

int store_writer_commit(store_writer *w, sae_error *err)
{
    int rc = w->txn ? txn_commit(w->txn, err) : fail(err, "store: writer already failed");
    free(w);
    return rc;
}

void store_writer_abort(store_writer *w)
{
    if (!w)
        return;
    if (w->txn)
        mdb_txn_abort(w->txn);
    free(w);
}

/* ---- Profiles ------------------------------------------------------------------- */

/* Deletes every key of dbi starting with prefix, DELETE_BATCH per transaction;
 * *left tells whether keys remain. */
static int delete_batch(store *s, MDB_dbi dbi, const keybuf *prefix, bool *left,
                        sae_error *err)
{
    MDB_txn *txn;
    if (txn_begin(s, true, &txn, err) != SAE_OK)
        return SAE_ERR;
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, dbi, &cur);
    if (rc) {
        mdb_txn_abort(txn);
        return lmdb_fail(err, rc, "cursor");
    }
    /* Seek afresh after each delete: where a cursor stands after mdb_cursor_del
     * at the end of a page is not something to lean on. */
    int deleted = 0;
    for (; deleted < DELETE_BATCH; deleted++) {
        MDB_val key = val_of(prefix), val;
        rc = mdb_cursor_get(cur, &key, &val, MDB_SET_RANGE);
        if (rc || !has_prefix(&key, prefix) || (rc = mdb_cursor_del(cur, 0)))
            break;
    }
    *left = deleted == DELETE_BATCH;
    mdb_cursor_close(cur);
    if (rc && rc != MDB_NOTFOUND) {
        mdb_txn_abort(txn);
        return lmdb_fail(err, rc, "delete");
    }
    return txn_commit(txn, err);
}

static int delete_prefix(store *s, MDB_dbi dbi, const keybuf *prefix, sae_error *err)
{
    bool left = true;
    while (left)
        if (delete_batch(s, dbi, prefix, &left, err) != SAE_OK)
            return SAE_ERR;
    return SAE_OK;
}

static int put_run(MDB_txn *txn, store *s, const char *id, const store_profile_run *run,
                   sae_error *err)
{
    keybuf k = key_model(id, PART_RUN);
    return put(txn, s->models, &k, run, sizeof *run, err);
}

int store_profile_begin(store *s, const char *id, const char *model_json,
                        const char *vocab_json, const store_profile_run *run, sae_error *err)
{
    if (check_id(id, err) != SAE_OK)
        return SAE_ERR;
    MDB_txn *txn;
    if (txn_begin(s, true, &txn, err) != SAE_OK)
        return SAE_ERR;
    store_profile_run running = *run;
    running.state = STORE_RUN_RUNNING;
    keybuf krec = key_model(id, PART_RECORD), kvocab = key_model(id, PART_VOCAB);
    MDB_val kv = val_of(&kvocab);
    int rc = put_json(txn, s->models, &krec, model_json, err);
    if (rc == SAE_OK && vocab_json)
        rc = put_json(txn, s->models, &kvocab, vocab_json, err);
    if (rc == SAE_OK && !vocab_json) {
        int drc = mdb_del(txn, s->models, &kv, NULL);
        if (drc && drc != MDB_NOTFOUND)
            rc = lmdb_fail(err, drc, "delete vocabulary");
    }
    if (rc == SAE_OK)
        rc = put_run(txn, s, id, &running, err);
    if (rc != SAE_OK) {
        mdb_txn_abort(txn);
        return SAE_ERR;
    }
    if (txn_commit(txn, err) != SAE_OK)
        return SAE_ERR;
    keybuf prefix = {.n = 0};
    key_str(&prefix, id);
    if (delete_prefix(s, s->features, &prefix, err) != SAE_OK)
        return SAE_ERR;
    return delete_prefix(s, s->examples, &prefix, err);
}

int store_profile_finish(store *s, const char *id, store_profile_run *run, sae_error *err)
{
    if (check_id(id, err) != SAE_OK)
        return SAE_ERR;
    run->state = STORE_RUN_COMPLETE;
    MDB_txn *txn;
    if (txn_begin(s, true, &txn, err) != SAE_OK)
        return SAE_ERR;
    if (put_run(txn, s, id, run, err) != SAE_OK) {
        mdb_txn_abort(txn);
        return SAE_ERR;
    }
    return txn_commit(txn, err);
}

int store_put_feature(store_writer *w, const char *id, uint32_t feature,
                      const store_feature *f, sae_error *err)
{
    if (check_id(id, err) != SAE_OK)
        return SAE_ERR;
    keybuf k = key_feature(id, feature);
    return writer_put(w, w->s->features, &k, f, sizeof *f, err);
}

static size_t example_size(uint32_t n)
{
    return sizeof(store_example_hdr) + (size_t)n * (sizeof(int32_t) + sizeof(float));
}

int store_put_example(store_writer *w, const char *id, uint32_t feature,
                      store_example_kind kind, uint32_t bucket, uint32_t rank,
                      const store_example_hdr *h, const int32_t *tokens, const float *values,
                      sae_error *err)
{
    if (check_id(id, err) != SAE_OK)
        return SAE_ERR;
    if (bucket >= STORE_N_BUCKETS || h->n == 0 || h->max_index >= h->n)
        return fail(err, "store: bad example (bucket %u, window %u, max_index %u)", bucket,
                    h->n, h->max_index);
    keybuf k = key_example(id, feature, kind, bucket, rank);
    MDB_val key = val_of(&k), val = {example_size(h->n), NULL};
    /* MDB_RESERVE: LMDB hands out the space and we fill it, one copy fewer. */
    int rc = mdb_put(w->txn, w->s->examples, &key, &val, MDB_RESERVE);
    if (rc)
        return lmdb_fail(err, rc, "put example");
    uint8_t *p = val.mv_data;
    memcpy(p, h, sizeof *h);
    memcpy(p + sizeof *h, tokens, h->n * sizeof *tokens);
    memcpy(p + sizeof *h + h->n * sizeof *tokens, values, h->n * sizeof *values);
    return writer_account(w, k.n + val.mv_size, err);
}

/* A complete run of model id, or an error saying why not. */
static int require_complete(store *s, MDB_txn *txn, const char *id, store_profile_run *run,
                            sae_error *err)
{
    int rc = run_get(s, txn, id, run, err);
    if (rc == STORE_NOT_FOUND) {
        fail(err, "store: model '%s' has no profile", id);
        return STORE_NOT_FOUND;
    }
    if (rc == SAE_OK && run->state != STORE_RUN_COMPLETE)
        return fail(err, "store: the profile of model '%s' is incomplete (running, or "
                         "interrupted: run it again)", id);
    return rc;
}

int store_feature_get(store *s, const char *id, uint32_t feature, store_feature *f,
                      sae_error *err)
{
    if (check_id(id, err) != SAE_OK)
        return SAE_ERR;
    MDB_txn *txn;
    if (txn_begin(s, false, &txn, err) != SAE_OK)
        return SAE_ERR;
    store_profile_run run;
    int rc = require_complete(s, txn, id, &run, err);
    if (rc == SAE_OK && feature >= run.n_features) {
        fail(err, "store: model '%s' has features 0..%u, not %u", id, run.n_features - 1,
             feature);
        rc = STORE_NOT_FOUND;
    }
    if (rc == SAE_OK) {    /* a complete run has every feature: absence is corruption */
        MDB_val v;
        keybuf k = key_feature(id, feature);
        rc = get(txn, s->features, &k, &v, err);
        if (rc == SAE_OK && v.mv_size == sizeof *f)
            memcpy(f, v.mv_data, sizeof *f);
        else if (rc != SAE_ERR)
            rc = fail(err, "store: missing or corrupt feature record %s/%u", id, feature);
    }
    mdb_txn_abort(txn);
    return rc;
}

typedef struct feature_list_ctx {
    sae_error *err;
    const char *id;
    uint32_t next, n_features;  /* the feature the next key must hold */
    int (*fn)(void *ctx, uint32_t feature, const store_feature *f);
    void *ctx;
    bool stopped;               /* fn asked to stop */
} feature_list_ctx;

static int visit_feature(void *vctx, const MDB_val *key, const MDB_val *val)
{
    feature_list_ctx *c = vctx;
    if (c->next >= c->n_features)
        return 1;
    store_feature f;
    /* A complete run holds every feature in order: a gap or a bad size is corruption. */
    if (key->mv_size != strlen(c->id) + 5 ||
        read_u32be((const uint8_t *)key->mv_data + key->mv_size - 4) != c->next ||
        val->mv_size != sizeof f)
        return fail(c->err, "store: missing or corrupt feature record %s/%u", c->id, c->next);
    memcpy(&f, val->mv_data, sizeof f);
    c->next++;
    c->stopped = c->fn(c->ctx, c->next - 1, &f) != 0;
    return c->stopped;
}

int store_feature_list(store *s, const char *id, uint32_t first,
                       int (*fn)(void *ctx, uint32_t feature, const store_feature *f),
                       void *ctx, sae_error *err)
{
    if (check_id(id, err) != SAE_OK)
        return SAE_ERR;
    MDB_txn *txn;
    if (txn_begin(s, false, &txn, err) != SAE_OK)
        return SAE_ERR;
    store_profile_run run;
    int rc = require_complete(s, txn, id, &run, err);
    if (rc == SAE_OK && first < run.n_features) {
        feature_list_ctx c = {err, id, first, run.n_features, fn, ctx, false};
        keybuf prefix = {.n = 0}, start = key_feature(id, first);
        key_str(&prefix, id);
        rc = scan_from(txn, s->features, &start, &prefix, visit_feature, &c, err);
        if (rc == SAE_OK && !c.stopped && c.next < run.n_features)
            rc = fail(err, "store: missing feature record %s/%u", id, c.next);
    }
    mdb_txn_abort(txn);
    return rc;
}

static int decode_example(const MDB_val *v, store_example *ex)
{
    if (v->mv_size < sizeof ex->h)
        return SAE_ERR;
    memcpy(&ex->h, v->mv_data, sizeof ex->h);
    if (v->mv_size != example_size(ex->h.n) || ex->h.n == 0 || ex->h.max_index >= ex->h.n)
        return SAE_ERR;
    ex->tokens = malloc(ex->h.n * sizeof *ex->tokens);
    ex->values = malloc(ex->h.n * sizeof *ex->values);
    if (!ex->tokens || !ex->values) {
        free(ex->tokens);
        free(ex->values);
        return SAE_ERR;
    }
    const uint8_t *p = (const uint8_t *)v->mv_data + sizeof ex->h;
    memcpy(ex->tokens, p, ex->h.n * sizeof *ex->tokens);
    memcpy(ex->values, p + ex->h.n * sizeof *ex->tokens, ex->h.n * sizeof *ex->values);
    return SAE_OK;
}

typedef struct examples_ctx {
    sae_error *err;
    store_example *ex;
    uint32_t n, limit;
} examples_ctx;

static int collect_example(void *vctx, const MDB_val *key, const MDB_val *val)
{
    (void)key;
    examples_ctx *c = vctx;
    if (c->n == c->limit)
        return 1;
    if (decode_example(val, &c->ex[c->n]) != SAE_OK)
        return fail(c->err, "store: corrupt or unreadable example record");
    c->n++;
    return 0;
}

int store_examples_get(store *s, const char *id, uint32_t feature, store_example_kind kind,
                       uint32_t bucket, uint32_t limit, store_example **out, uint32_t *n,
                       sae_error *err)
{
    if (check_id(id, err) != SAE_OK)
        return SAE_ERR;
    if (bucket >= STORE_N_BUCKETS)
        return fail(err, "store: bucket %u is not in 0..%d", bucket, STORE_N_BUCKETS - 1);
    examples_ctx c = {err, calloc(limit ? limit : 1, sizeof *c.ex), 0, limit};
    if (!c.ex)
        return fail(err, "store: out of memory");
    MDB_txn *txn;
    if (txn_begin(s, false, &txn, err) != SAE_OK) {
        free(c.ex);
        return SAE_ERR;
    }
    store_profile_run run;
    int rc = require_complete(s, txn, id, &run, err);
    keybuf prefix = key_feature(id, feature);
    key_u8(&prefix, kind);
    key_u8(&prefix, kind == STORE_EX_BUCKET ? bucket : 0);
    if (rc == SAE_OK)
        rc = scan(txn, s->examples, &prefix, collect_example, &c, err);
    mdb_txn_abort(txn);
    if (rc != SAE_OK) {
        store_examples_free(c.ex, c.n);
        return rc;
    }
    *out = c.ex;
    *n = c.n;
    return SAE_OK;
}

void store_examples_free(store_example *ex, uint32_t n)
{
    for (uint32_t i = 0; ex && i < n; i++) {
        free(ex[i].tokens);
        free(ex[i].values);
    }
    free(ex);
}

/* ---- Explanations ----------------------------------------------------------------- */

int store_put_explanation(store_writer *w, const char *id, uint32_t feature, uint32_t bucket,
                          const char *scorer, const char *json, sae_error *err)
{
    if (check_id(id, err) != SAE_OK)
        return SAE_ERR;
    size_t n = scorer ? strlen(scorer) : 0;
    if (n == 0 || n > STORE_ID_MAX)
        return fail(err, "store: scorer must have 1..%d characters", STORE_ID_MAX);
    if (bucket >= STORE_N_BUCKETS)
        return fail(err, "store: bucket %u is not in 0..%d", bucket, STORE_N_BUCKETS - 1);
    keybuf k = key_feature(id, feature);
    key_u8(&k, bucket);
    key_str(&k, scorer);
    return writer_put(w, w->s->explanations, &k, json, strlen(json) + 1, err);
}

typedef struct expl_ctx {
    sae_error *err;
    size_t id_len;
    int (*fn)(void *ctx, const store_explanation *e);
    void *ctx;
} expl_ctx;

/* Splits an explanation key and value; false when malformed. */
static bool parse_explanation(const MDB_val *key, const MDB_val *val, size_t id_len,
                              store_explanation *e)
{
    const uint8_t *p = key->mv_data;
    size_t head = id_len + 1 + 4 + 1;
    if (key->mv_size < head + 2 || p[key->mv_size - 1] != '\0' || !is_cstring(val) ||
        memchr(p + head, '\0', key->mv_size - head) != p + key->mv_size - 1)
        return false;
    e->feature = read_u32be(p + id_len + 1);
    e->bucket = p[id_len + 5];
    e->scorer = (const char *)p + head;
    e->json = val->mv_data;
    return e->bucket < STORE_N_BUCKETS;
}

static int visit_explanation(void *vctx, const MDB_val *key, const MDB_val *val)
{
    expl_ctx *c = vctx;
    store_explanation e;
    if (!parse_explanation(key, val, c->id_len, &e))
        return fail(c->err, "store: corrupt explanation record");
    return c->fn(c->ctx, &e) != 0;
}

int store_explanation_list(store *s, const char *id,
                           int (*fn)(void *ctx, const store_explanation *e), void *ctx,
                           sae_error *err)
{
    if (check_id(id, err) != SAE_OK)
        return SAE_ERR;
    keybuf prefix = {.n = 0};
    key_str(&prefix, id);
    expl_ctx c = {err, strlen(id), fn, ctx};
    return scan_read(s, s->explanations, &prefix, visit_explanation, &c, err);
}

int store_explanation_list_feature(store *s, const char *id, uint32_t feature,
                                   int (*fn)(void *ctx, const store_explanation *e), void *ctx,
                                   sae_error *err)
{
    if (check_id(id, err) != SAE_OK)
        return SAE_ERR;
    keybuf prefix = key_feature(id, feature);
    expl_ctx c = {err, strlen(id), fn, ctx};
    return scan_read(s, s->explanations, &prefix, visit_explanation, &c, err);
}

/* ---- Jobs ------------------------------------------------------------------------- */

int store_job_put(store *s, const char *job_id, const char *json, sae_error *err)
{
    if (check_id(job_id, err) != SAE_OK)
        return SAE_ERR;
    keybuf k = {.n = 0};
    key_str(&k, job_id);
    return put_json_txn(s, s->jobs, &k, json, err);
}

int store_job_get(store *s, const char *job_id, char **json, sae_error *err)
{
    if (check_id(job_id, err) != SAE_OK)
        return SAE_ERR;
    keybuf k = {.n = 0};
    key_str(&k, job_id);
    return get_json(s, s->jobs, &k, json, err);
}

int store_job_list(store *s, int (*fn)(void *ctx, const char *job_id, const char *json),
                   void *ctx, sae_error *err)
{
    json_list c = {err, fn, ctx, -1, "job"};
    return scan_read(s, s->jobs, NULL, visit_json, &c, err);
}


/* ---- Consistency check ------------------------------------------------------------ */

/* The walk's state: one read transaction; the model whose run is being
 * followed (or whose run record the last owner lookup found). */
typedef struct check_ctx {
    store *s;
    MDB_txn *txn;
    sae_error *err;
    char id[STORE_ID_MAX + 1];
    store_profile_run run;
    uint32_t next_feature;      /* features of a complete run come as 0, 1, 2, ... */
} check_ctx;

static int check_json(check_ctx *c, const MDB_val *val, const char *what)
{
    if (!is_cstring(val))
        return fail(c->err, "store check: %s is not a NUL-terminated JSON text", what);
    json_error_t jerr;
    json_t *j = json_loads(val->mv_data, JSON_DECODE_ANY, &jerr);
    if (!j)
        return fail(c->err, "store check: %s: bad JSON: %s", what, jerr.text);
    json_decref(j);
    return 0;
}

/* The examples of one (feature, kind, bucket): ranks 0..want-1, windows
 * well-formed, top examples in descending order. */
typedef struct group_ctx {
    check_ctx *c;
    uint32_t seen;
    bool descending;
    float last;
} group_ctx;

static int check_example(void *vctx, const MDB_val *key, const MDB_val *val)
{
    group_ctx *g = vctx;
    const uint8_t *p = key->mv_data;
    store_example_hdr h;
    if (read_u32be(p + key->mv_size - 4) != g->seen)
        return fail(g->c->err, "store check: example ranks of '%s' are not contiguous",
                    g->c->id);
    if (val->mv_size < sizeof h)
        return fail(g->c->err, "store check: short example of '%s'", g->c->id);
    memcpy(&h, val->mv_data, sizeof h);
    if (val->mv_size != example_size(h.n) || h.n == 0 || h.n > g->c->run.window ||
        h.max_index >= h.n)
        return fail(g->c->err, "store check: malformed example of '%s'", g->c->id);
    if (g->descending && g->seen > 0 && h.value > g->last)
        return fail(g->c->err, "store check: top examples of '%s' out of order", g->c->id);
    g->last = h.value;
    g->seen++;
    return 0;
}

static int check_group(check_ctx *c, uint32_t feature, uint32_t kind, uint32_t bucket,
                       uint32_t want)
{
    group_ctx g = {c, 0, kind == STORE_EX_TOP, 0.0f};
    keybuf prefix = key_feature(c->id, feature);
    key_u8(&prefix, kind);
    key_u8(&prefix, bucket);
    if (scan(c->txn, c->s->examples, &prefix, check_example, &g, c->err) != SAE_OK)
        return SAE_ERR;
    if (g.seen != want)
        return fail(c->err, "store check: feature %s/%u has %u examples of kind %u bucket %u, "
                    "its record says %u", c->id, feature, g.seen, kind, bucket, want);
    return 0;
}

/* One feature of a complete run: its place in the sequence, its counts, and
 * exactly the examples it counts. */
static int check_feature(void *vctx, const MDB_val *key, const MDB_val *val)
{
    check_ctx *c = vctx;
    size_t n = strlen(c->id);
    if (key->mv_size != n + 5 || val->mv_size != sizeof(store_feature))
        return fail(c->err, "store check: malformed feature record of '%s'", c->id);
    uint32_t feature = read_u32be((const uint8_t *)key->mv_data + n + 1);
    if (feature != c->next_feature++)
        return fail(c->err, "store check: model '%s' lacks feature %u", c->id,
                    c->next_feature - 1);
    store_feature f;
    memcpy(&f, val->mv_data, sizeof f);
    uint64_t in_buckets = 0;
    for (int b = 0; b < STORE_N_BUCKETS; b++)
        in_buckets += f.bucket_count[b];
    if (in_buckets != f.count || f.n_rows != c->run.n_rows)
        return fail(c->err, "store check: counts of feature %s/%u disagree", c->id, feature);
    if (check_group(c, feature, STORE_EX_TOP, 0, f.n_top) ||
        check_group(c, feature, STORE_EX_NEGATIVE, 0, f.n_negative))
        return SAE_ERR;
    for (uint32_t b = 0; b < STORE_N_BUCKETS; b++)
        if (check_group(c, feature, STORE_EX_BUCKET, b, f.n_bucket[b]))
            return SAE_ERR;
    return 0;
}

/* A complete run has features 0..n_features-1, each checked above. (A run
 * marked running may hold anything well-formed: a rerun replaces it.) */
static int check_run(check_ctx *c)
{
    if (c->run.state != STORE_RUN_COMPLETE)
        return 0;
    keybuf prefix = {.n = 0};
    key_str(&prefix, c->id);
    c->next_feature = 0;
    if (scan(c->txn, c->s->features, &prefix, check_feature, c, c->err) != SAE_OK)
        return SAE_ERR;
    if (c->next_feature != c->run.n_features)
        return fail(c->err, "store check: model '%s' has %u of its %u features", c->id,
                    c->next_feature, c->run.n_features);
    return 0;
}

static int check_model(void *vctx, const MDB_val *key, const MDB_val *val)
{
    check_ctx *c = vctx;
    size_t n;
    const char *id = key_id(key, &n);
    uint8_t part = id && key->mv_size == n + 2 ? ((const uint8_t *)key->mv_data)[n + 1] : 255;
    if (part > PART_SERVED)
        return fail(c->err, "store check: malformed key in models");
    if (part != PART_RUN)
        return check_json(c, val, part == PART_RECORD  ? "a model record"
                                  : part == PART_VOCAB ? "a vocabulary"
                                                       : "a served-model record");
    memcpy(c->id, id, n);
    c->id[n] = '\0';
    if (val->mv_size != sizeof c->run)
        return fail(c->err, "store check: run record of '%s' has %zu bytes", c->id,
                    val->mv_size);
    memcpy(&c->run, val->mv_data, sizeof c->run);
    if (c->run.state != STORE_RUN_RUNNING && c->run.state != STORE_RUN_COMPLETE)
        return fail(c->err, "store check: run record of '%s' has state %u", c->id,
                    c->run.state);
    return check_run(c);
}

/* Feature and example keys: well-formed, owned by a model with a run record
 * and, for complete runs, within its features. extra is the key's length
 * after "id \0". */
static int check_owner(check_ctx *c, const MDB_val *key, size_t extra)
{
    size_t n;
    const char *id = key_id(key, &n);
    if (!id || key->mv_size != n + 1 + extra)
        return fail(c->err, "store check: malformed feature or example key");
    if (strlen(c->id) != n || memcmp(c->id, id, n) != 0) {
        memcpy(c->id, id, n);
        c->id[n] = '\0';
        int rc = run_get(c->s, c->txn, c->id, &c->run, c->err);
        if (rc == STORE_NOT_FOUND)
            return fail(c->err, "store check: data of '%s', which has no run record", c->id);
        if (rc != SAE_OK)
            return SAE_ERR;
    }
    uint32_t feature = read_u32be((const uint8_t *)key->mv_data + n + 1);
    if (c->run.state == STORE_RUN_COMPLETE && feature >= c->run.n_features)
        return fail(c->err, "store check: data of '%s' beyond its features", c->id);
    return 0;
}

static int check_feature_owner(void *vctx, const MDB_val *key, const MDB_val *val)
{
    (void)val;
    return check_owner(vctx, key, 4);
}

static int check_example_owner(void *vctx, const MDB_val *key, const MDB_val *val)
{
    (void)val;
    check_ctx *c = vctx;
    const uint8_t *p = key->mv_data;
    if (check_owner(c, key, 10) != 0)
        return SAE_ERR;
    size_t n = strlen(c->id);
    if (p[n + 5] > STORE_EX_NEGATIVE || p[n + 6] >= STORE_N_BUCKETS)
        return fail(c->err, "store check: malformed example key of '%s'", c->id);
    return 0;
}

static int check_explanation(void *vctx, const MDB_val *key, const MDB_val *val)
{
    check_ctx *c = vctx;
    size_t n;
    store_explanation e;
    if (!key_id(key, &n) || !parse_explanation(key, val, n, &e))
        return fail(c->err, "store check: malformed explanation record");
    return check_json(c, val, "an explanation");
}

static int check_job(void *vctx, const MDB_val *key, const MDB_val *val)
{
    check_ctx *c = vctx;
    size_t n;
    if (!key_id(key, &n) || key->mv_size != n + 1)
        return fail(c->err, "store check: malformed job key");
    return check_json(c, val, "a job record");
}

int store_check(store *s, sae_error *err)
{
    check_ctx c = {.s = s, .err = err};
    if (txn_begin(s, false, &c.txn, err) != SAE_OK)
        return SAE_ERR;
    struct {
        MDB_dbi dbi;
        scan_fn fn;
    } walks[] = {{s->models, check_model},
                 {s->features, check_feature_owner},
                 {s->examples, check_example_owner},
                 {s->explanations, check_explanation},
                 {s->jobs, check_job}};
    int rc = SAE_OK;
    for (size_t i = 0; i < sizeof walks / sizeof walks[0] && rc == SAE_OK; i++) {
        c.id[0] = '\0';
        rc = scan(c.txn, walks[i].dbi, NULL, walks[i].fn, &c, err);
    }
    mdb_txn_abort(c.txn);
    return rc;
}
