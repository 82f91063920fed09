/* tasks.h - the tasks a worker can run, as one table.
 *
 * Each task is a row of the table in tasks.c: its name, a one-line doc, its
 * parameters with their types, and the C function that runs it. The table is
 * the one source for `forkpool-worker --describe` (the server checks a batch's
 * arguments against that answer) and for running items, so adding a task is
 * adding a row. Arguments arrive as the JSON text of an array; a result
 * leaves as JSON text, with integers exact up to signed 128 bits.
 *
 * Tasks made at start-up (a plugin's, a program's: plugin.h, program.h) join
 * the table with task_add and are found, described and run the same way. */
#ifndef FORKPOOL_TASKS_H
#define FORKPOOL_TASKS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"

/* Parameter types, spelled in --describe as "int", "uint", "number",
 * "unumber", "string", "any" (see task_type_name). */
enum task_type { TASK_INT, TASK_UINT, TASK_NUMBER, TASK_UNUMBER, TASK_STRING, TASK_ANY };
#define TASK_MAX_PARAMS 8

struct task_param {
	const char *name;
	enum task_type type;
};

/* Runs one item. args is the item's argument array, already checked against
 * the task's params (count and types), so a function may trust them. Appends
 * the result as JSON text to res and returns 0, or returns task_error(err,
 * ...). Must not write a raw newline into res. */
typedef int (*task_fn)(const json_t *args, struct buf *res, struct buf *err);

struct task {
	const char *name;
	const char *doc;
	struct task_param params[TASK_MAX_PARAMS]; /* up to the first NULL name */
	int required;  /* how many leading params must be given; the rest are optional */
	bool variadic; /* the last param repeats, zero or more times */
	task_fn fn;
	/* Tasks added with task_add leave fn NULL and run through call, which is
	 * given the task itself (and so its ctx). */
	int (*call)(const struct task *t, const json_t *args, struct buf *res, struct buf *err);
	const void *ctx;
	const char *origin; /* where it was defined, for messages; NULL: built in */
	double timeout;	    /* seconds the server allows one item; 0: no limit of its own */
};

#define TASK_NAME_LEN 64 /* a name is 1 to TASK_NAME_LEN - 1 of [A-Za-z0-9_.-] */
/* The most JSON text one item's result may be, whatever made it (a program's
 * output, a plugin's value): a few of them still fit in one frame
 * (FRAME_MAX), and a bigger one is an error of its item, not a dead worker. */
#define TASK_RESULT_MAX (64u << 20)

/* Every task: the built-ins, then the added ones in the order they came. */
size_t task_count(void);
const struct task *task_at(size_t i); /* NULL past the end */
/* The task called name, or NULL. */
const struct task *task_find(const char *name);
int task_nparams(const struct task *t);
const char *task_type_name(enum task_type type);

/* Adds a task made at start-up; the table keeps the pointer, which must stay
 * valid. 0, or -1 with why appended to err: a bad name, or a name taken
 * ("task \"x\" of <origin> clashes with the built-in task \"x\"", or with
 * the task of another origin). */
int task_add(const struct task *t, struct buf *err);
/* Whether name can be a task's name (it travels in chunk frames). */
bool task_name_ok(const char *name);

/* Appends the catalogue: {"tasks":[{"name","doc","params":[{"name","type"}],
 * "required","variadic"[,"timeout","origin"]}, ...]}; added tasks carry their
 * origin, and their timeout when they have one. */
void task_describe(struct buf *out);

/* Runs t on one item whose arguments are the JSON text args[0..len). Returns
 * 0 with the result's JSON text appended to res, or -1 with a message (plain
 * text, not JSON) appended to err: the task's own error, why the arguments
 * are unusable (the server checks them first; this is the second line), or
 * that the result is longer than TASK_RESULT_MAX. */
int task_run(const struct task *t, const char *args, size_t len, struct buf *res, struct buf *err);

/* Appends the formatted message to err; returns -1, for `return task_error(...)`. */
__attribute__((format(printf, 2, 3))) int task_error(struct buf *err, const char *fmt, ...);

/* Odd helpers exposed for the tests: exact deterministic primality for any
 * 64-bit n, and the prime count of [start, end) (-1 if out of memory). */
bool task_is_prime_u64(uint64_t n);
int64_t task_count_primes(int64_t start, int64_t end);

#endif
