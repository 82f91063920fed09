/* pool.h - the prefork pool: worker processes, the queue of batches with
 * pending items, chunk dispatch, and what happens when a worker finishes a
 * chunk, dies, overruns an item's timeout, or reaches its task limit.
 *
 * Workers are `forkpool-worker` programs started with posix_spawn (a clean
 * image: no SQLite handle, listening socket or other workers' sockets), each
 * with a socketpair and a shared progress page (see common/frame.h). Every
 * item outcome goes to the store as it arrives; the caller commits. */
#ifndef FORKPOOL_POOL_H
#define FORKPOOL_POOL_H

#include <stdint.h>
#include <sys/types.h>

#include "store.h"

struct pool_config {
	const char *worker_path;
	int workers;
	int64_t max_tasks_per_child; /* 0: never recycle */
	char *const *worker_args;    /* given to every worker before --parent (plugins,
				      * tasks files); NULL-terminated, or NULL */
	int64_t start_timeout_ms;    /* a worker not ready by then is killed (0: no limit) */
	int64_t max_memory_mb;	     /* 0: none. Else each worker caps its own address
				      * space at its start-up size + this much, and one
				      * whose resident size passes it after an item is
				      * replaced when its chunk ends */
};

/* Called with a batch id when some of its items reached a final state. */
typedef void (*pool_change_fn)(int64_t batch);

/* Starts the workers and queues the store's batches that have pending items.
 * 0, or -1 (logged). */
int pool_start(struct store *s, const struct pool_config *c, pool_change_fn on_change);
/* A batch (committed) whose items are pending. */
void pool_add_batch(const struct batch *b);
/* Sends chunks to idle workers while there is pending work. */
void pool_dispatch(void);
/* Handles the results the busy workers have already sent, without waiting:
 * called before the turn's commit, so that a chunk that ran while the turn
 * went on (a single-item round trip, whose worker often runs the moment it
 * is woken) is stored in the same commit as its claim. Returns 1 if a
 * chunk ended (a worker is idle again), else 0. */
int pool_collect(void);
/* Reaps exited workers: fails or requeues their items, starts replacements.
 * Call after SIGCHLD. */
void pool_reap(void);
/* Kills workers whose running item is past its timeout, starts replacements
 * that are due. Returns the monotonic ms of the next such deadline, or -1. */
int64_t pool_tick(void);
/* Kills the workers running items of the batch (cancel with terminate);
 * their unfinished items become cancelled at once, and the workers are
 * replaced. Returns how many were killed. */
int pool_terminate_batch(int64_t batch);
/* Why workers cannot start (the last one to try failed: a plugin's
 * initializer, say), or NULL while they can. Pending items wait meanwhile. */
const char *pool_health_reason(void);
/* One worker process, as GET /v1/workers shows it. */
struct pool_worker_info {
	int pid;
	const char *state;	 /* starting, idle, busy, retiring */
	int64_t tasks_run;	 /* items it has finished */
	int64_t started_ms;	 /* Unix ms */
	int64_t batch, index;	 /* the item it is running; index < 0: none */
	const char *task;	 /* that item's task */
	int64_t item_started_ms; /* Unix ms, when it started that item */
};
/* Calls fn for every worker process (retiring ones too), newest first. */
void pool_workers(void (*fn)(void *arg, const struct pool_worker_info *w), void *arg);
/* The resident memory of process pid in bytes, from /proc (0 if it is gone). */
int64_t pool_rss_bytes(pid_t pid);
/* Workers ready for work (started and not dying). */
int pool_ready(void);
/* Tells the pool how the turn's commit went (call after every attempt; ok
 * when there was nothing to commit). After a failure the pool sends no
 * chunks and keeps its writes in memory, and replays them after a backoff
 * (from pool_tick) until a commit succeeds; pool_health_reason says so
 * meanwhile. */
void pool_after_commit(int ok);
/* Graceful stop, first step: no more chunks are sent and no workers started;
 * the chunks in flight go on. */
void pool_drain(void);
/* Workers running a chunk. */
int pool_busy(void);
/* Stops every worker: one not running a chunk in an orderly way (its
 * plugins' finalizers run, it exits 0; the wait is at most 1.5 s), one
 * still running a chunk with SIGKILL, its items going back to pending. */
void pool_stop(void);

#endif
