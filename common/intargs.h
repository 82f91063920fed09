/* intargs.h - an argument list of plain integers, read without jansson.
 *
 * Most items are a few integers ([123], [2, 10]), and a jansson parse of
 * such a line costs thousands of instructions: the server reads NDJSON lines
 * with this (upload.c) and the worker its items' arguments (tasks.c). It
 * accepts only a JSON array of at most INTARGS_MAX integers of at most 18
 * digits each, without leading zeros, -0, fractions or exponents, with blanks
 * (space, tab) between tokens: anything it refuses is for jansson to decide,
 * and what it accepts jansson would read as the same integers. */
#ifndef FORKPOOL_INTARGS_H
#define FORKPOOL_INTARGS_H

#include <stddef.h>
#include <stdint.h>

#define INTARGS_MAX 8

/* Reads p[0..n) into v. Its count (0 for []), or -1. */
int intargs_parse(const char *p, size_t n, int64_t *v);

struct buf;
/* Appends the n integers v as the array jsonw_value writes: [1,-2]. */
void intargs_write(struct buf *b, const int64_t *v, int n);

#endif
