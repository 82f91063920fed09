/* metrics.h - what the server counts about itself, and the two endpoints that
 * show what it is doing: GET /metrics (Prometheus text format 0.0.4) and
 * GET /v1/workers.
 *
 * Counters and histograms live here, in memory, since the process started
 * (Prometheus expects counters to reset with the process). Gauges (items by
 * state, workers by state, database size) are read when scraped: the store
 * and the pool are their truth. Other modules report events through the
 * one-line hooks below; each is cheap (no allocation after a task's first
 * event, no I/O). */
#ifndef FORKPOOL_METRICS_H
#define FORKPOOL_METRICS_H

#include <stdint.h>

#include "http.h"
#include "store.h"

/* db_path names the database file (its size and its WAL's are reported). */
void metrics_init(struct store *s, const char *db_path);
void metrics_free(void);

/* A batch of `items` futures of `task` was stored in the turn's transaction; it
 * counts as accepted once that commits (metrics_commit). */
void metrics_batch_accepted(const char *task, int64_t items);
/* A future of `task` reached a final state (FS_FINISHED, FS_FAILED with its
 * error type, or FS_CANCELLED). run_us: how long it ran, microseconds (< 0:
 * it did not);
 * wait_ms: from its batch's submission to its start (< 0: unknown). */
void metrics_item_done(const char *task, enum fstate state, enum ferr err, int64_t run_us,
		       int64_t wait_ms);
/* n pending futures of `task` were cancelled at once (they never ran). */
void metrics_items_cancelled(const char *task, int64_t n);
/* A worker process was started / was reaped (reason as logged by the pool:
 * max_tasks, shutdown, timeout, died, start_failed, cancelled). */
/* A chunk of n items went to a worker. */
void metrics_chunk(int64_t items);
void metrics_worker_start(void);
void metrics_worker_exit(const char *reason);
/* An HTTP answer went out with this status. */
void metrics_http(unsigned status);
/* The loop committed a turn's transaction (ok) or the commit failed. */
void metrics_commit(int ok);
/* The retention sweeper deleted batches / futures. */
void metrics_retention(int64_t batches, int64_t items);

/* GET /metrics and GET /v1/workers (the caller has checked the method). */
void metrics_handle(struct http_req *r);
void metrics_workers(struct http_req *r);

#endif
