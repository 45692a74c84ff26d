/* sbuf.c - see sbuf.h. */
#include "sbuf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ffmt.h"

void sbuf_init(sbuf *b)
{
    memset(b, 0, sizeof *b);
}

void sbuf_free(sbuf *b)
{
    free(b->data);
    sbuf_init(b);
}

bool sbuf_reserve(sbuf *b, size_t extra)
{
    if (b->oom)
        return false;
    if (b->len + extra + 1 <= b->cap)
        return true;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1)
        cap *= 2;
    char *p = realloc(b->data, cap);
    if (!p) {
        b->oom = true;
        return false;
    }
    b->data = p;
    b->cap = cap;
    return true;
}

void sbuf_put(sbuf *b, const void *p, size_t n)
{
    if (!sbuf_reserve(b, n))
        return;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
}

void sbuf_puts(sbuf *b, const char *s)
{
    sbuf_put(b, s, strlen(s));
}

void sbuf_printf(sbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char small[256];
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->oom = true;
        return;
    }
    if ((size_t)n < sizeof small) {
        sbuf_put(b, small, (size_t)n);
        return;
    }
    if (!sbuf_reserve(b, (size_t)n))
        return;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void sbuf_int(sbuf *b, long long v)
{
    char tmp[24], *p = tmp + sizeof tmp;
    /* the magnitude as unsigned: -LLONG_MIN does not fit a long long */
    unsigned long long u = v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
    do
        *--p = (char)('0' + u % 10);
    while (u /= 10);
    if (v < 0)
        *--p = '-';
    sbuf_put(b, p, (size_t)(tmp + sizeof tmp - p));
}

void sbuf_float(sbuf *b, float v)
{
    char tmp[FFMT_MAX];
    sbuf_put(b, tmp, ffmt_float(v, tmp));
}

void sbuf_json_str(sbuf *b, const char *s)
{
    sbuf_put(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            char esc[2] = {'\\', (char)*p};
            sbuf_put(b, esc, 2);
        } else if (*p < 0x20) {
            sbuf_printf(b, "\\u%04x", *p);
        } else {
            sbuf_put(b, p, 1);
        }
    }
    sbuf_put(b, "\"", 1);
}

char *sbuf_take(sbuf *b, size_t *len)
{
    if (!b->data)
        sbuf_reserve(b, 0);
    char *p = b->oom ? NULL : b->data;
    if (len)
        *len = b->len;
    if (b->oom)
        free(b->data);
    sbuf_init(b);
    return p;
}
