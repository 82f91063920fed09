/* store.h - the SQLite store: batches and their futures. The store is the
 * truth: everything the API answers is read from it, and every state change is
 * a write into the current transaction.
 *
 * Transactions: the first write opens one (BEGIN IMMEDIATE); store_commit ends
 * it. The event loop commits once per turn (group commit), so a turn's results
 * and submissions cost one commit between them. One connection, used only on
 * the loop thread; never carried across fork (workers are exec'd). WAL
 * checkpoints run off the loop, on a thread of the store's with its own
 * connection, when the WAL passes 1000 pages; store_close checkpoints the
 * rest and truncates the WAL. */
#ifndef FORKPOOL_STORE_H
#define FORKPOOL_STORE_H

#include <stddef.h>
#include <stdint.h>

/* The page size of a database the store creates (an existing one keeps
 * its own). */
#define STORE_PAGE_SIZE 2048

enum fstate { FS_PENDING, FS_RUNNING, FS_FINISHED, FS_FAILED, FS_CANCELLED, FS_NSTATES };
enum ferr { FE_NONE, FE_TASK, FE_TIMEOUT, FE_WORKER_DIED };

extern const char *const fstate_names[FS_NSTATES];
extern const char *const ferr_names[]; /* indexed by enum ferr; [0] is NULL */

#define TASK_NAME_MAX 64

struct batch {
	int64_t id;
	char task[TASK_NAME_MAX];
	int64_t size, chunksize;
	double timeout; /* seconds per item; 0 = none */
	int64_t retries; /* more runs of an item after worker_died or timeout */
	int64_t counts[FS_NSTATES];
	int64_t created_ms, finished_ms; /* finished_ms < 0: not done */
};

/* A future as read; the strings point into the store and are valid only
 * during the callback that receives it. */
struct future {
	int64_t index;
	enum fstate state;
	const char *result; /* JSON text, when finished */
	size_t result_len;
	enum ferr error_type;
	const char *error; /* message, when failed */
	int64_t attempts, worker; /* worker 0: none */
	int64_t started_ms, finished_ms; /* < 0: not yet */
	int64_t done_seq;                /* completion cursor; 0 while not done */
};

struct store;

/* Opens (creating file and directory as needed) and migrates the database;
 * items left running by a previous process go back to pending. NULL on
 * failure, with the reason logged. */
struct store *store_open(const char *path, int sync_full);
void store_close(struct store *s);

/* Commits the open transaction, if any. 0, or -1 (rolled back, logged):
 * every write since the previous store_commit is then gone, including when
 * SQLite itself rolled the transaction back in between (a full disk). */
int store_commit(struct store *s);
/* Whether writes are waiting for store_commit. */
int store_dirty(const struct store *s);
/* Reads from here to store_read_end share one read transaction, so one set
 * of WAL locks rather than one per statement (2 to 4 fcntl calls each: 7 an
 * answer in W3). The store's next write ends it first (it then reads within
 * its own transaction); code writing on the connection by itself
 * (retention.c) calls store_read_end first. Never held while the loop waits:
 * it keeps checkpoints from finishing. */
void store_read_begin(struct store *s);
void store_read_end(struct store *s);

/* Submission: store_batch_begin inserts the batch row (b->id is set), each
 * store_batch_item one future, and store_batch_end(ok) keeps them (ok) or
 * undoes them all (!ok), inside the current transaction. All return 0 / -1. */
int store_batch_begin(struct store *s, struct batch *b);
int store_batch_item(struct store *s, int64_t batch, int64_t idx, const char *args, size_t len);
int store_batch_end(struct store *s, int ok);

/* NDJSON uploads, stored as they arrive over several turns (so several
 * commits): store_upload_begin inserts the batch row marked open (size -1;
 * nothing reads such a batch), store_upload_item one future, and the end is
 * store_upload_seal (the real size and chunk size; the items become pending)
 * or store_upload_abort (every row removed). A restart removes open uploads.
 * All return 0 / -1. */
int store_upload_begin(struct store *s, struct batch *b);
int store_upload_item(struct store *s, int64_t batch, int64_t idx, const char *args, size_t len);
int store_upload_seal(struct store *s, int64_t batch, int64_t size, int64_t chunksize);
int store_upload_abort(struct store *s, int64_t batch);

/* 1 and *out filled, 0 if there is no such batch, -1 on error. */
int store_batch_get(struct store *s, int64_t id, struct batch *out);
/* Calls fn for up to limit batches with id < before (before <= 0: from the
 * newest), newest first. Returns the number listed, or -1. */
int store_batch_list(struct store *s, int64_t before, int limit,
		     void (*fn)(void *arg, const struct batch *b), void *arg);
/* Ids of batches with pending items, oldest first (for dispatch at start-up). */
int store_pending_batches(struct store *s, int64_t **ids, size_t *n);

/* 1 and fn called once, 0 if there is no such future, -1 on error. */
int store_future_get(struct store *s, int64_t batch, int64_t idx,
		     void (*fn)(void *arg, const struct future *f), void *arg);
/* Calls fn for the batch's futures: submission order (completed = 0) with
 * index > after, or done ones in completion order (completed = 1) with
 * done_seq > after, up to the last committed completion (a cursor is never
 * shown before the commit that makes it final); at most limit (limit < 0:
 * all). Returns the count or -1. */
int store_futures(struct store *s, int64_t batch, int completed, int64_t after, int64_t limit,
		  void (*fn)(void *arg, const struct future *f), void *arg);

/* Dispatch: marks up to max pending futures of the batch, lowest indexes
 * first, running on worker pid (attempts + 1, started now). Their indexes go
 * to idx[] and their argument texts, one per line, to *args (appended).
 * Returns how many (0: none pending), or -1. */
struct buf;
int store_claim(struct store *s, int64_t batch, int64_t max, int64_t pid, int64_t now_ms,
		int64_t *idx, struct buf *args);
/* A running future's outcome. started_ms is when it really began. */
int store_finish(struct store *s, int64_t batch, int64_t idx, const char *result, size_t len,
		 int64_t started_ms, int64_t now_ms);
int store_fail(struct store *s, int64_t batch, int64_t idx, enum ferr type, const char *msg,
	       int64_t started_ms, int64_t now_ms);
/* A running future that did not run after all goes back to pending (its
 * attempt is not counted). */
int store_requeue(struct store *s, int64_t batch, int64_t idx);

/* Cancelling. store_cancel_pending cancels every pending future of the batch
 * (size is its size) and returns how many, or -1; store_cancel_one cancels
 * one future if it is pending, store_cancel_running one that is running (its
 * worker was killed for it): 1 done, 0 not in that state, -1 error. Each
 * cancelled future becomes done, with a completion cursor. */
int store_cancel_pending(struct store *s, int64_t batch, int64_t size, int64_t now_ms);
int store_cancel_one(struct store *s, int64_t batch, int64_t idx, int64_t now_ms);
int store_cancel_running(struct store *s, int64_t batch, int64_t idx, int64_t now_ms);

/* The connection itself, for the modules that keep the database in shape
 * rather than read or write futures: retention.c (deletes expired batches in
 * its own small transactions, only while !store_dirty) and metrics.c (reads
 * totals and sizes). Loop thread only. */
struct sqlite3 *store_sqlite(struct store *s);

/* Drops what the store holds in memory about batch: retention.c calls it
 * after deleting the batch's rows. */
void store_forget(struct store *s, int64_t batch);

/* Retries: puts a running future whose worker died or timed out back to
 * pending if it has run at most `retries` times (attempts <= retries), its
 * attempt counted. 1 requeued, 0 not (it has had its runs: fail it), -1. */
int store_retry(struct store *s, int64_t batch, int64_t idx, int64_t retries);

/* Idempotency keys. store_idem_get: 1 if key is stored with this body hash
 * (*batch set), 2 if with another hash (*batch set), 0 if not stored, -1.
 * store_idem_put records key for batch in the current transaction (call it
 * between store_batch_begin and store_batch_end, so that it goes or stays
 * with the batch). 0 / -1. */
int store_idem_get(struct store *s, const char *key, const unsigned char hash[32], int64_t *batch);
int store_idem_put(struct store *s, const char *key, const unsigned char hash[32], int64_t batch,
		   int64_t now_ms);

/* The message of the latest database error (for /healthz). */
const char *store_error(const struct store *s);
/* Claims again, after a failed commit, what one store_claim took: the
 * pending futures of the batch with first <= index <= last (those it took,
 * since nothing else makes futures pending meanwhile). Returns how many, -1. */
int store_claim_range(struct store *s, int64_t batch, int64_t first, int64_t last, int64_t pid,
		      int64_t now_ms);

#endif
