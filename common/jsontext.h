/* jsontext.h - JSON text that programs write, checked against RFC 8259's
 * grammar and made compact without going through jansson, whose integers
 * stop at 64 bits and whose reals stop at the doubles: here a number stays as
 * it was written (12345678901234567890, 1e999, 1.50), as the results of the
 * built-in tasks are exact.
 *
 * The checks are jansson's, numbers apart: strings are UTF-8 with valid
 * escapes, no control characters, no lone surrogates and no \u0000 (the
 * server refuses those in requests too); nesting is at most
 * JSONTEXT_MAX_DEPTH deep. Strings keep their escapes as written. */
#ifndef FORKPOOL_JSONTEXT_H
#define FORKPOOL_JSONTEXT_H

#include <stddef.h>

#include "buf.h"

#define JSONTEXT_MAX_DEPTH 2048

/* Appends the compact form of the one JSON value that s[0..n) holds
 * (whitespace around it allowed) to out and returns 0; or returns -1, out
 * as it was, when s[0..n) is not JSON text. */
int jsontext_compact(struct buf *out, const char *s, size_t n);

/* When the compact text c[0..n) (from jsontext_compact) is an object with
 * exactly one member: 1, with *key and *klen the member's name as written
 * (a JSON string, quotes included), *val and *vlen its value's text. Else 0. */
int jsontext_only_member(const char *c, size_t n, const char **key, size_t *klen,
			 const char **val, size_t *vlen);

#endif
