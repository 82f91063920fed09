/* forkpool.h - the plugin interface of forkpool: a shared object that adds
 * tasks to the workers. docs/plugins.md is the guide; this file is the contract.
 *
 * A plugin defines one function, forkpool_plugin(), that returns a description
 * of itself: its tasks (name, parameters, one-line doc, C function) and an
 * optional initializer and finalizer.
 *
 *     forkpoold --plugin /path/primes.so='{"limit": 10000000}'
 *
 * Every worker process loads the plugin when it starts, calls init once with
 * the JSON after '=' (the executor's initializer/initargs), then runs items:
 * one at a time, on one thread, so a task may use what init built without
 * locks. The worker calls fini when it ends in an orderly way (retired after
 * --max-tasks-per-child, or not running a chunk when the server stops); a
 * worker that is killed (a timeout, a crash, a chunk still running when the
 * server's grace ends) does not. The server also loads the plugin once, in a
 * separate `forkpool-worker --describe` run, to learn its tasks: there init is
 * NOT called, so forkpool_plugin() must be cheap and free of side effects.
 *
 * Build:  cc -shared -fPIC -O2 -o primes.so primes.c $(pkg-config --cflags --libs jansson)
 *
 * Arguments and results are jansson values (https://jansson.readthedocs.io).
 * Integers are 64-bit (json_int_t). */
#ifndef FORKPOOL_H
#define FORKPOOL_H

#include <jansson.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The version of this interface. A worker refuses a plugin built for another
 * one, saying which it has and which it wants. */
#define FORKPOOL_PLUGIN_ABI 1

#define FORKPOOL_MAX_PARAMS 8  /* parameters per task */
#define FORKPOOL_ERR_MAX 1024  /* size of the err buffer given to fn and init */
#define FORKPOOL_NAME_MAX 63   /* longest task name: letters, digits, _ . - */

/* What a parameter accepts. The server checks every item's arguments against
 * these before it accepts a batch (an item with a wrong count or type is a 400
 * at submission), and the worker checks them again before fn runs. */
enum forkpool_type {
	FORKPOOL_INT,     /* a JSON integer */
	FORKPOOL_UINT,    /* a JSON integer >= 0 */
	FORKPOOL_NUMBER,  /* a JSON integer or real */
	FORKPOOL_UNUMBER, /* a JSON number >= 0 */
	FORKPOOL_STRING,  /* a JSON string */
	FORKPOOL_ANY,     /* any JSON value */
};

struct forkpool_param {
	const char *name;
	enum forkpool_type type;
};

/* Runs one item. args is the item's argument array, already checked against
 * the task's params: fn may trust the count and the types. Returns the
 * result, a new reference that forkpool releases (json_integer(42),
 * json_pack("{s:i}", "n", 3), ...), or NULL after writing a message to err
 * (at most errlen bytes, NUL-terminated; it starts empty): the item then fails
 * with error type task_error and that message ("task failed" if err is left
 * empty). A crash (abort, SIGSEGV) fails only this item, as worker_died, and
 * the worker is replaced. */
typedef json_t *(*forkpool_task_fn)(const json_t *args, char *err, size_t errlen);

struct forkpool_task {
	const char *name; /* NULL ends the plugin's task list */
	const char *doc;  /* one line, shown by GET /v1/tasks */
	struct forkpool_param params[FORKPOOL_MAX_PARAMS]; /* up to the first NULL name */
	int required; /* how many leading params must be given; the rest are optional */
	int variadic; /* nonzero: the last param repeats, zero or more times */
	forkpool_task_fn fn;
};

struct forkpool_plugin {
	int abi;          /* FORKPOOL_PLUGIN_ABI: must stay the first member */
	const char *name; /* for messages and logs, e.g. "primes" */
	const struct forkpool_task *tasks; /* ends with an entry whose name is NULL */
	/* Optional (NULL: none). Runs once in each worker before its first item.
	 * initargs is the JSON value given after '=' in --plugin, or JSON null
	 * when none was given (a borrowed reference: json_incref it to keep it).
	 * Returns 0, or nonzero after writing why to err: the worker then exits,
	 * the server logs the message, answers /healthz with 503 and that reason,
	 * keeps pending items waiting, and starts a new worker after a backoff
	 * (up to 5 s), so fixing the cause (a file, a service, memory) lets work
	 * resume without a restart. */
	int (*init)(const json_t *initargs, char *err, size_t errlen);
	/* Optional. Runs when the worker ends in an orderly way (see above). */
	void (*fini)(void);
};

/* The entry point every plugin defines (with C linkage). Returns a pointer to
 * a description that lives as long as the plugin (a static). */
const struct forkpool_plugin *forkpool_plugin(void);

#ifdef __cplusplus
}
#endif

#endif
