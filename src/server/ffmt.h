/* ffmt.h - a float32 as the text printf("%.9g") writes for it (nine
 * significant digits: reads back to the same float), without printf's cost
 * for the values responses carry. */
#ifndef SAED_FFMT_H
#define SAED_FFMT_H

#include <stddef.h>

#define FFMT_MAX 24 /* "-1.23456789e-38" and its NUL, with room to spare */

/* Writes v's text and a NUL to out; returns the text's length. Finite v. */
size_t ffmt_float(float v, char out[FFMT_MAX]);

#endif
