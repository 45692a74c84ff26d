/* sbuf.h - a growable byte buffer for building response bodies. An allocation
 * failure is remembered (oom) instead of reported at every append, so a
 * builder can append freely and check once at the end. */
#ifndef SAED_SBUF_H
#define SAED_SBUF_H

#include <stdbool.h>
#include <stddef.h>

typedef struct sbuf {
    char *data;
    size_t len, cap;
    bool oom;
} sbuf;

void sbuf_init(sbuf *b);
void sbuf_free(sbuf *b);
bool sbuf_reserve(sbuf *b, size_t extra);
void sbuf_put(sbuf *b, const void *p, size_t n);
void sbuf_puts(sbuf *b, const char *s);
void sbuf_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* An integer in decimal (what "%lld" writes, without printf's cost). */
void sbuf_int(sbuf *b, long long v);
/* A float32 as the shortest JSON number that reads back to the same float
 * (9 significant digits); callers check finiteness first. */
void sbuf_float(sbuf *b, float v);
/* A JSON string literal, escaped. */
void sbuf_json_str(sbuf *b, const char *s);
/* Hands the bytes over (NUL-terminated); the buffer is left empty. */
char *sbuf_take(sbuf *b, size_t *len);

#endif
