/* catalog.h - the tasks the workers can run, as the worker program describes
 * them (`forkpool-worker [--plugin ...] [--tasks-file ...] --describe`), and
 * the checks of an item's arguments against them, made before a batch is
 * accepted. */
#ifndef FORKPOOL_CATALOG_H
#define FORKPOOL_CATALOG_H

#include <jansson.h>
#include <spawn.h>
#include <stdint.h>
#include <stddef.h>

#include "store.h" /* TASK_NAME_MAX */

enum ptype { PT_INT, PT_UINT, PT_NUMBER, PT_UNUMBER, PT_STRING, PT_ANY };
#define CATALOG_MAX_PARAMS 16

struct task_info {
	char name[TASK_NAME_MAX];
	char *doc;
	int nparams, required, variadic;
	double timeout; /* seconds per item the task itself allows; 0: none */
	char *origin;	/* "plugin /x.so", "tasks file /t.json"; NULL: built in */
	struct {
		char *name;
		enum ptype type;
	} params[CATALOG_MAX_PARAMS];
};

extern const char *const ptype_names[];

/* What bounds the --describe run of catalog_load_with. */
struct catalog_limits {
	int64_t timeout_ms; /* past it the run is killed and the load fails; 0: no limit */
	int stop_fd;	    /* once it is readable (a signalfd), stop at once; -1: none */
};
#define CATALOG_STOPPED (-2) /* catalog_load_with: stop_fd became readable */

/* Runs `worker --describe` and loads its answer. 0, or -1 with the reason
 * logged. */
int catalog_load(const char *worker_path);
/* The attributes of every start of the worker program (a pool worker or a
 * --describe run): an empty signal mask and default dispositions (the server
 * blocks its signals, to read them from a signalfd, and the worker must not
 * inherit that), and a process group of its own, which what its tasks or
 * plugins start inherits: a Ctrl-C at the terminal reaches the server alone,
 * and a kill of the group reaches everything. Destroy it after the spawn. */
void catalog_worker_spawnattr(posix_spawnattr_t *at);
/* The same with the worker's extension arguments (NULL-terminated, such as
 * {"--plugin", "x.so", NULL}) before --describe, within lim (NULL: none). A
 * worker that finds its extensions broken says what and where on stderr;
 * that is logged (event config) and this returns -1, as it does, naming the
 * plugin it was loading, for one that hangs past the timeout or crashes.
 * CATALOG_STOPPED (nothing logged, the run killed) when lim->stop_fd became
 * readable first. */
int catalog_load_with(const char *worker_path, char *const *extra,
		      const struct catalog_limits *lim);
void catalog_free(void);
const struct task_info *catalog_find(const char *name);
int catalog_count(void);
const struct task_info *catalog_at(int i);
/* Checks an item's argument array. 0, or -1 with a message in err such as
 * "square takes 1 argument, got 2". */
int catalog_check(const struct task_info *t, const json_t *args, char *err, size_t errlen);
/* Whether catalog_check would accept the argument array of the n integers
 * v (the NDJSON fast path; on 0 the caller asks catalog_check for the
 * message). */
int catalog_ints_ok(const struct task_info *t, const int64_t *v, int n);

#endif
