/* jnum.h - a JSON number to the double strtod would give, fast.
 *
 * Request bodies carry thousands of numbers; through jansson each costs a
 * token buffer, a json_t and glibc's strtod (about 0.8 us). This converts the
 * common ones (at most 19 significant digits, a decimal exponent within
 * +-64) with one exact double multiply or divide or one 64 x 64 -> 128-bit
 * integer product (jnum.c), and declines the rest, and any result whose
 * rounding it cannot decide, so the caller can take the slow path. */
#ifndef SAED_JNUM_H
#define SAED_JNUM_H

#include <stddef.h>

/* Reads one number of the JSON grammar at p (before end). Returns the bytes
 * it spans and sets *out to the correctly rounded double, or returns 0 when
 * p does not start a JSON number or the number needs strtod (too many
 * digits, a large exponent, a result within reach of a rounding tie). */
size_t jnum_parse(const char *p, const char *end, double *out);

#endif
