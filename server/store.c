/* store.c - the SQLite store (see store.h): the connection and its
 * checkpointer thread, transactions and their commit, migration and recovery
 * at open, batches, idempotency keys and NDJSON uploads. The futures (the
 * segments and outcome groups, claims, state changes, reads, and a new
 * batch's items) are futures.c's; what the two share is in store_impl.h.
 *
 * Batch counters: a state change adjusts the batch's n_* counters through a
 * small table of per-batch deltas that is folded into the batches rows before
 * any batch is read and at commit, so a burst of results costs one counter
 * UPDATE per batch rather than one per item. */
#include "store.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "buf.h"
#include "log.h"
#include "convert.h"
#include "schema.h"
#include "segfmt.h"
#include "store_impl.h"

const char *const fstate_names[FS_NSTATES] = {"pending", "running", "finished", "failed",
					      "cancelled"};
const char *const ferr_names[] = {NULL, "task_error", "timeout", "worker_died"};

#define BATCH_COLS                                                                               \
	"id, task, size, chunksize, timeout, created_at, finished_at, n_pending, n_running, "    \
	"n_finished, n_failed, n_cancelled, retries"

/* The statements' texts, by enum stmt_id (store_impl.h): store_open
 * prepares each once. */
const char *const store_sql[S_NSTMTS] = {
    [S_BEGIN] = "BEGIN IMMEDIATE",
    [S_BEGIN_READ] = "BEGIN",
    [S_COMMIT] = "COMMIT",
    [S_ROLLBACK] = "ROLLBACK",
    /* Never an id given before, even if retention deleted the batch that
     * had it (it raises next_batch_id): schema/004_fewer_pages.sql. */
    [S_NEXT_ID] = "SELECT max(coalesce((SELECT max(id) FROM batches), 0),"
		  " coalesce((SELECT value FROM meta WHERE key = 'next_batch_id'), 1) - 1) + 1",
    [S_INS_BATCH] = "INSERT INTO batches (id, task, size, chunksize, timeout, created_at, n_pending,"
		    " retries) VALUES (?7, ?1, ?2, ?3, ?4, ?5, ?2, ?6)",
    /* A batch whose size is -1 is an NDJSON upload still arriving: nobody
     * sees it until it is sealed (store_upload_seal). */
    [S_GET_BATCH] = "SELECT " BATCH_COLS " FROM batches WHERE id = ?1 AND size >= 0",
    [S_LIST_BATCHES] = "SELECT " BATCH_COLS " FROM batches WHERE id < ?1 AND size >= 0"
		       " ORDER BY id DESC LIMIT ?2",
    [S_PENDING_BATCHES] = "SELECT id FROM batches WHERE n_pending > 0 ORDER BY id",
    /* Right-hand sides see the old row, so the CASE tests the new totals. */
    [S_COUNTS] = "UPDATE batches SET n_pending = n_pending + ?2, n_running = n_running + ?3,"
		 " n_finished = n_finished + ?4, n_failed = n_failed + ?5,"
		 " n_cancelled = n_cancelled + ?6,"
		 " finished_at = CASE WHEN finished_at IS NULL AND n_pending + ?2 + n_running + ?3 = 0"
		 " THEN ?7 ELSE finished_at END WHERE id = ?1",
    /* The same change when the batch's row is cached: its new values, which
     * SQLite writes without evaluating the expressions above. */
    [S_COUNTS_SET] = "UPDATE batches SET n_pending = ?2, n_running = ?3, n_finished = ?4,"
		     " n_failed = ?5, n_cancelled = ?6, finished_at = ?7 WHERE id = ?1",
    [S_SET_SEQ] = "UPDATE meta SET value = ?1 WHERE key = 'done_seq'",
    [S_INS_SEG] = "INSERT INTO segments (id, items) VALUES (" SEG_ID_SQL ", ?3)",
    [S_INS_ARGS] = "INSERT INTO seg_args (batch_id, seg, args) VALUES (?1, ?2, ?3)",
    [S_GET_SEG] = "SELECT items FROM segments WHERE id = " SEG_ID_SQL,
    [S_PUT_SEG] = "UPDATE segments SET items = ?3 WHERE id = " SEG_ID_SQL,
    [S_GET_ARGS] = "SELECT args FROM seg_args WHERE batch_id = ?1 AND seg = ?2",
    [S_INS_GROUP] = "INSERT INTO outcomes (batch_id, last_seq, recs) VALUES (?1, ?2, ?3)",
    [S_GROUP_AT] = "SELECT recs FROM outcomes WHERE batch_id = ?1 AND last_seq >= ?2"
		   " ORDER BY last_seq LIMIT 1",
    [S_GROUPS_AFTER] = "SELECT recs, last_seq FROM outcomes WHERE batch_id = ?1 AND last_seq > ?2"
		       " ORDER BY last_seq",
};

/* ---- the checkpointer ----
 *
 * A checkpoint copies the WAL into the database file and fsyncs both: 10 to
 * 20 ms on these machines, which SQLite's automatic checkpoint spends inside
 * the commit that crosses its threshold, that is inside the event loop (it
 * was the whole of W2's p99). Instead the loop's connection has a WAL hook
 * that only wakes this thread, which runs PASSIVE checkpoints on a
 * connection of its own. A passive checkpoint takes no lock a writer needs:
 * the loop keeps committing meanwhile, and the next commit after a complete
 * checkpoint starts the WAL over. The thread touches nothing of the store
 * but its own connection and the fields below. (See ckpt_hook for the one
 * checkpoint the loop still makes.) */
#define CKPT_PAGES 1000 /* SQLite's own default threshold */
#define CKPT_LOOP_PAGES (4 * CKPT_PAGES) /* the WAL's size at which the loop finishes the job */

struct checkpointer {
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int want, quit; /* under mu */
	int asked;	/* the WAL's size at the latest ask (loop thread only) */
	sqlite3 *db;	/* the thread's own connection */
};

static void *ckpt_main(void *arg)
{
	struct checkpointer *c = arg;
	pthread_mutex_lock(&c->mu);
	for (;;) {
		while (!c->want && !c->quit)
			pthread_cond_wait(&c->cv, &c->mu);
		if (c->quit)
			break;
		c->want = 0;
		pthread_mutex_unlock(&c->mu);
		int log_pages = -1, done = -1;
		int rc = sqlite3_wal_checkpoint_v2(c->db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log_pages,
						   &done);
		if (rc != SQLITE_OK && rc != SQLITE_BUSY)
			/* A full disk, say: the WAL grows meanwhile, and the next
			 * commit over the threshold asks again. */
			log_warn("db_checkpoint", "code=%d msg=\"%s\"", rc, sqlite3_errmsg(c->db));
		else
			log_debug("db_checkpoint", "wal_pages=%d copied=%d", log_pages, done);
		pthread_mutex_lock(&c->mu);
	}
	pthread_mutex_unlock(&c->mu);
	return NULL;
}

/* The loop connection's WAL hook, after each commit: pages is the WAL's size. */
static int ckpt_hook(void *arg, sqlite3 *db, const char *name, int pages)
{
	(void)name;
	struct checkpointer *c = arg;
	if (pages >= CKPT_LOOP_PAGES) {
		/* Under a steady stream of commits the thread never quite
		 * catches up: the WAL starts over only when a writer begins
		 * with every frame copied, and the loop begins its next
		 * transaction before the thread is done. So, rarely, the loop
		 * copies what is left itself, here between its transactions:
		 * the thread has copied and synced nearly everything, so this
		 * costs far less than a whole checkpoint. BUSY (the thread is
		 * at it) just means the next commit tries again. */
		sqlite3_wal_checkpoint_v2(db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
		c->asked = 0;
		return SQLITE_OK;
	}
	/* Once over the threshold, every commit would ask again while the
	 * WAL waits to start over (a writer restarts it only after a complete
	 * checkpoint): ask again when a quarter of the threshold is new. */
	if (pages < c->asked)
		c->asked = 0; /* it started over */
	if (pages >= CKPT_PAGES && pages - c->asked >= CKPT_PAGES / 4) {
		c->asked = pages;
		pthread_mutex_lock(&c->mu);
		c->want = 1;
		pthread_cond_signal(&c->cv);
		pthread_mutex_unlock(&c->mu);
	}
	return SQLITE_OK;
}

static void ckpt_stop(struct store *s)
{
	struct checkpointer *c = s->ckpt;
	if (!c)
		return;
	sqlite3_wal_hook(s->db, NULL, NULL);
	pthread_mutex_lock(&c->mu);
	c->quit = 1;
	pthread_cond_signal(&c->cv);
	pthread_mutex_unlock(&c->mu);
	pthread_join(c->thread, NULL);
	sqlite3_close(c->db);
	pthread_cond_destroy(&c->cv);
	pthread_mutex_destroy(&c->mu);
	free(c);
	s->ckpt = NULL;
}

/* Starts the thread and hands it the WAL hook. 0 / -1 (logged). */
static int ckpt_start(struct store *s, const char *path)
{
	struct checkpointer *c = calloc(1, sizeof *c);
	if (!c)
		return -1;
	if (sqlite3_open_v2(path, &c->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
	    SQLITE_OK) {
		log_error("db_open", "path=\"%s\" msg=\"checkpointer: %s\"", path,
			  c->db ? sqlite3_errmsg(c->db) : "out of memory");
		sqlite3_close(c->db);
		free(c);
		return -1;
	}
	/* A connection knows the file is in WAL mode only once it has read it;
	 * before that its checkpoints do nothing. */
	if (sqlite3_exec(c->db, "PRAGMA journal_mode", NULL, NULL, NULL) != SQLITE_OK) {
		log_error("db_open", "path=\"%s\" msg=\"checkpointer: %s\"", path, sqlite3_errmsg(c->db));
		sqlite3_close(c->db);
		free(c);
		return -1;
	}
	pthread_mutex_init(&c->mu, NULL);
	pthread_cond_init(&c->cv, NULL);
	int rc = pthread_create(&c->thread, NULL, ckpt_main, c);
	if (rc != 0) {
		log_error("db_open", "msg=\"checkpointer: pthread_create: %s\"", strerror(rc));
		sqlite3_close(c->db);
		pthread_cond_destroy(&c->cv);
		pthread_mutex_destroy(&c->mu);
		free(c);
		return -1;
	}
	s->ckpt = c;
	/* Replaces SQLite's automatic checkpoint, which is a WAL hook too. */
	sqlite3_wal_hook(s->db, ckpt_hook, c);
	return 0;
}

/* ---- transactions ---- */

static struct batch *bcache_slot(struct store *s, int64_t id)
{
	return &s->bcache[(uint64_t)id % BCACHE];
}

static void bcache_drop(struct store *s)
{
	for (int i = 0; i < BCACHE; i++)
		s->bcache[i].id = 0;
}

void bcache_forget(struct store *s, int64_t batch)
{
	struct batch *e = bcache_slot(s, batch);
	if (e->id == batch)
		e->id = 0;
}

/* The counts of b moved by d, and its end if that ends it: what S_COUNTS
 * does to the row. */
static void bcache_apply(struct batch *b, const int64_t d[FS_NSTATES], int64_t now_ms)
{
	for (int k = 0; k < FS_NSTATES; k++)
		b->counts[k] += d[k];
	if (b->finished_ms < 0 && b->counts[FS_PENDING] + b->counts[FS_RUNNING] == 0)
		b->finished_ms = now_ms;
}

/* Forgets everything the transaction held in memory: after a rollback the
 * database is as the last commit left it. (Entries stay allocated.) */
static void drop_memory(struct store *s)
{
	bcache_drop(s);
	seg_drop_all(s);
	for (size_t i = 0; i < s->ngroups; i++)
		buf_free(&s->groups[i].recs);
	s->ngroups = 0;
	memset(s->cursors, 0, sizeof s->cursors);
	s->rg.batch = -1;
	kept_drop(s, 0, 1);
	s->resume.batch = -1;
	s->ndeltas = 0;
	/* next_id stays: the ids the lost writes gave are not given again by
	 * this process, whose pool may still hold their chunks and logged
	 * writes (a chunk goes out before its batch's commit). */
	s->done_seq = s->done_seq_committed;
	s->seq_bound = s->seq_bound_committed;
}

int db_fail(struct store *s, const char *op)
{
	bcache_drop(s);
	log_error("db_error", "op=%s code=%d msg=\"%s\"", op, sqlite3_extended_errcode(s->db),
		  sqlite3_errmsg(s->db));
	snprintf(s->last_error, sizeof s->last_error, "%s", sqlite3_errmsg(s->db));
	if (s->in_txn && sqlite3_get_autocommit(s->db)) {
		log_error("db_txn_lost", "msg=\"SQLite rolled the transaction back\"");
		s->in_txn = 0;
		s->lost = 1;
		drop_memory(s);
	}
	return -1;
}

/* Steps a statement that returns no rows and resets it. */
int db_run(struct store *s, enum stmt_id id)
{
	int rc = sqlite3_step(s->st[id]);
	sqlite3_reset(s->st[id]);
	sqlite3_clear_bindings(s->st[id]);
	if (rc != SQLITE_DONE && rc != SQLITE_ROW)
		return db_fail(s, store_sql[id]);
	return 0;
}

static int exec(struct store *s, const char *q)
{
	char *err = NULL;
	if (sqlite3_exec(s->db, q, NULL, NULL, &err) != SQLITE_OK) {
		log_error("db_error", "op=exec msg=\"%s\"", err ? err : "?");
		sqlite3_free(err);
		return -1;
	}
	return 0;
}

int db_begin(struct store *s)
{
	if (s->in_txn)
		return 0;
	store_read_end(s);
	if (db_run(s, S_BEGIN) < 0)
		return -1;
	s->in_txn = 1;
	return 0;
}

static struct delta *delta_for(struct store *s, int64_t batch)
{
	for (size_t i = 0; i < s->ndeltas; i++)
		if (s->deltas[i].batch == batch)
			return &s->deltas[i];
	if (s->ndeltas == s->capdeltas) {
		s->capdeltas = s->capdeltas ? s->capdeltas * 2 : 16;
		s->deltas = realloc(s->deltas, s->capdeltas * sizeof *s->deltas);
		if (!s->deltas)
			abort();
	}
	struct delta *d = &s->deltas[s->ndeltas++];
	memset(d, 0, sizeof *d);
	d->batch = batch;
	return d;
}

void move_count(struct store *s, int64_t batch, enum fstate from, enum fstate to, int64_t n)
{
	struct delta *d = delta_for(s, batch);
	d->d[from] -= n;
	d->d[to] += n;
}

/* Folds the counter deltas and the completion cursor into the database. */
static int flush_counts(struct store *s)
{
	for (size_t i = 0; i < s->ndeltas; i++) {
		struct batch *e = bcache_slot(s, s->deltas[i].batch);
		enum stmt_id id = e->id == s->deltas[i].batch ? S_COUNTS_SET : S_COUNTS;
		sqlite3_stmt *st = s->st[id];
		sqlite3_bind_int64(st, 1, s->deltas[i].batch);
		if (id == S_COUNTS_SET) {
			bcache_apply(e, s->deltas[i].d, s->now_ms);
			for (int k = 0; k < FS_NSTATES; k++)
				sqlite3_bind_int64(st, 2 + k, e->counts[k]);
			if (e->finished_ms >= 0)
				sqlite3_bind_int64(st, 7, e->finished_ms);
		} else {
			for (int k = 0; k < FS_NSTATES; k++)
				sqlite3_bind_int64(st, 2 + k, s->deltas[i].d[k]);
			sqlite3_bind_int64(st, 7, s->now_ms);
		}
		if (db_run(s, id) < 0)
			return -1;
	}
	s->ndeltas = 0;
	if (s->done_seq > s->seq_bound) {
		sqlite3_bind_int64(s->st[S_SET_SEQ], 1, s->done_seq + SEQ_BLOCK);
		if (db_run(s, S_SET_SEQ) < 0)
			return -1;
		s->seq_bound = s->done_seq + SEQ_BLOCK;
	}
	return 0;
}

/* Everything the transaction holds in memory, into the database. */
static int flush_all(struct store *s)
{
	for (int i = 0; i < s->nsegs; i++)
		if (s->segs[i]->dirty && seg_write(s, s->segs[i]) < 0)
			return -1;
	if (flush_groups(s) < 0)
		return -1;
	return flush_counts(s);
}

int store_commit(struct store *s)
{
	if (s->lost) {
		/* Writes after the loss go too: a commit keeps all or none. */
		if (s->in_txn)
			sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
		s->in_txn = s->lost = 0;
		drop_memory(s);
		return -1;
	}
	if (!s->in_txn)
		return 0;
	if (flush_all(s) < 0 || db_run(s, S_COMMIT) < 0) {
		sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
		s->in_txn = s->lost = 0;
		drop_memory(s);
		return -1;
	}
	s->in_txn = 0;
	s->done_seq_committed = s->done_seq;
	s->seq_bound_committed = s->seq_bound;
	return 0;
}

int store_dirty(const struct store *s) { return s->in_txn || s->lost; }

void store_read_begin(struct store *s)
{
	if (s->in_txn || s->in_read || s->lost)
		return;
	/* Deferred: it takes its locks at the first read. */
	int rc = sqlite3_step(s->st[S_BEGIN_READ]);
	sqlite3_reset(s->st[S_BEGIN_READ]);
	s->in_read = rc == SQLITE_DONE;
}

void store_read_end(struct store *s)
{
	if (!s->in_read)
		return;
	s->in_read = 0;
	int rc = sqlite3_step(s->st[S_COMMIT]);
	sqlite3_reset(s->st[S_COMMIT]);
	if (rc != SQLITE_DONE)
		log_warn("db_read_end", "msg=\"%s\"", sqlite3_errmsg(s->db));
}

/* ---- opening: the directory, migration, recovery ---- */

static int mkdirs_for(const char *path)
{
	char dir[PATH_MAX];
	if (strlen(path) >= sizeof dir)
		return -1;
	strcpy(dir, path);
	char *slash = strrchr(dir, '/');
	if (!slash || slash == dir)
		return 0;
	*slash = '\0';
	for (char *p = dir + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(dir, 0755) < 0 && errno != EEXIST)
			return -1;
		*p = '/';
	}
	if (mkdir(dir, 0755) < 0 && errno != EEXIST)
		return -1;
	return 0;
}

static int migrate(struct store *s)
{
	sqlite3_stmt *st;
	int version = 0;
	if (sqlite3_prepare_v2(s->db, "PRAGMA user_version", -1, &st, NULL) != SQLITE_OK)
		return db_fail(s, "user_version");
	if (sqlite3_step(st) == SQLITE_ROW)
		version = sqlite3_column_int(st, 0);
	sqlite3_finalize(st);
	if (version > schema_version) {
		log_error("db_too_new", "version=%d supported=%d", version, schema_version);
		return -1;
	}
	for (int v = version; v < schema_version; v++) {
		char pragma[64];
		snprintf(pragma, sizeof pragma, "PRAGMA user_version = %d", v + 1);
		if (exec(s, "BEGIN IMMEDIATE") < 0)
			return -1;
		/* Version 3 stores futures by segments: the rows of version
		 * 2's futures table are converted in the same transaction. */
		if (exec(s, schema_migrations[v]) < 0 ||
		    (v + 1 == 3 && convert_v2_futures(s->db) < 0) || exec(s, pragma) < 0) {
			exec(s, "ROLLBACK");
			return -1;
		}
		if (exec(s, "COMMIT") < 0)
			return -1;
		log_info("db_migrate", "version=%d", v + 1);
	}
	return 0;
}

/* Items that were running when the previous process stopped run again. A
 * claim counts an attempt for the whole chunk, but a worker runs its chunk
 * in index order: of a worker's running items only the first had started
 * (or had run, its result not yet committed). The others give their attempt
 * back, so attempts counts runs, not dispatches. */
static int recover_batch(struct store *s, int64_t batch, int64_t *requeued)
{
	int64_t *workers = NULL; /* those whose first running item was seen */
	size_t nw = 0, capw = 0;
	int rc = 0;
	for (int64_t seg = 0; rc == 0; seg++) {
		struct segment *g;
		int got = seg_get(s, batch, seg, &g);
		if (got <= 0) {
			rc = got;
			break;
		}
		for (int k = 0; k < g->n; k++) {
			struct seg_item *it = &g->it[k];
			if (it->state != FS_RUNNING)
				continue;
			size_t w = 0;
			while (w < nw && workers[w] != it->worker)
				w++;
			int first = w == nw;
			if (first) {
				if (nw == capw) {
					capw = capw ? capw * 2 : 8;
					workers = realloc(workers, capw * sizeof *workers);
					if (!workers)
						abort();
				}
				workers[nw++] = it->worker;
			}
			g->dirty = 1;
			to_pending(s, batch, seg * SEG_ITEMS + k, it, !first);
			(*requeued)++;
		}
	}
	free(workers);
	return rc;
}

/* Steps st, which selects batch ids, into *list (*n of them; free it).
 * SQLITE_DONE, or the error code of the step that failed. */
static int collect_ids(sqlite3_stmt *st, int64_t **list, size_t *n)
{
	size_t cap = 0;
	*list = NULL;
	*n = 0;
	int rc;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		if (*n == cap) {
			cap = cap ? cap * 2 : 16;
			*list = realloc(*list, cap * sizeof **list);
			if (!*list)
				abort();
		}
		(*list)[(*n)++] = sqlite3_column_int64(st, 0);
	}
	return rc;
}

/* The ids of the batches a query selects, into *list (*n of them; free it).
 * 0 / -1. */
static int batch_ids(struct store *s, const char *sql, int64_t **list, size_t *n)
{
	sqlite3_stmt *st;
	*list = NULL;
	*n = 0;
	if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK)
		return db_fail(s, "recover");
	int rc = collect_ids(st, list, n);
	sqlite3_finalize(st);
	return rc == SQLITE_DONE ? 0 : db_fail(s, "recover");
}

static int recover(struct store *s)
{
	int64_t n = 0, *list;
	size_t nlist;
	if (db_begin(s) < 0)
		return -1;
	int rc = batch_ids(s, "SELECT id FROM batches WHERE n_running > 0", &list, &nlist);
	for (size_t i = 0; rc == 0 && i < nlist; i++)
		rc = recover_batch(s, list[i], &n);
	free(list);
	/* Uploads cut short by the stop were never accepted. */
	if (rc == 0)
		rc = batch_ids(s, "SELECT id FROM batches WHERE size < 0", &list, &nlist);
	else
		list = NULL, nlist = 0;
	for (size_t i = 0; rc == 0 && i < nlist; i++)
		rc = store_upload_abort(s, list[i]);
	free(list);
	if (rc < 0) {
		exec(s, "ROLLBACK");
		s->in_txn = 0;
		drop_memory(s);
		return -1;
	}
	if (store_commit(s) < 0)
		return -1;
	if (n > 0)
		log_info("recover", "requeued=%lld", (long long)n);
	return 0;
}

struct store *store_open(const char *path, int sync_full)
{
	struct store *s = calloc(1, sizeof *s);
	if (!s)
		return NULL;
	s->lock_fd = -1;
	bcache_drop(s);
	if (mkdirs_for(path) < 0) {
		log_error("db_open", "path=\"%s\" msg=\"cannot create its directory: %s\"", path,
			  strerror(errno));
		free(s);
		return NULL;
	}
	/* SQLite's memory statistics (which nothing here reads) take a global
	 * mutex in every one of its mallocs: 40 a single-item call. Only
	 * possible before SQLite initialises; later calls fail harmlessly. */
	sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
	int rc = sqlite3_open_v2(path, &s->db,
				 SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
	if (rc != SQLITE_OK) {
		log_error("db_open", "path=\"%s\" msg=\"%s\"", path,
			  s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
		sqlite3_close(s->db);
		free(s);
		return NULL;
	}
	/* Two servers on one database would both dispatch its pending items
	 * and requeue each other's running ones (an old server still draining
	 * while its replacement starts, say). flock() on a descriptor of the
	 * file, held until after sqlite3_close: BSD locks are not SQLite's
	 * POSIX ones, and this descriptor is closed only once SQLite is done. */
	s->lock_fd = open(path, O_RDWR | O_CLOEXEC);
	if (s->lock_fd < 0 || flock(s->lock_fd, LOCK_EX | LOCK_NB) < 0) {
		int busy = s->lock_fd >= 0 && errno == EWOULDBLOCK;
		log_error("db_in_use", "path=\"%s\" msg=\"%s\"", path,
			  busy ? "another forkpoold has this database open; stop it first"
			       : strerror(errno));
		if (s->lock_fd >= 0)
			close(s->lock_fd); /* SQLite holds no lock yet */
		s->lock_fd = -1;
		goto fail;
	}
	sqlite3_busy_timeout(s->db, 5000);
	/* A new database gets 2 KiB pages; one that exists keeps its own
	 * (SQLite ignores this then, and a WAL database cannot change it).
	 * Every commit writes each page it dirtied whole into the WAL and the
	 * checkpoint copies it again: a single call's two commits dirty about
	 * seven pages, whatever their size, so half-size pages halve that
	 * traffic and its checksums. Measured against 4 KiB (callgrind, the
	 * server's instructions): W2 186,000 -> 165,000 a call, W1 -3 %; the
	 * database 85 -> 76 bytes an item; W2's p99 lower in four alternating
	 * runs of four, since its tail is the checkpoint's I/O. 1 KiB pages
	 * cost W1 a fifth of its rate (its segment blobs overflow). */
	char pragma[48];
	snprintf(pragma, sizeof pragma, "PRAGMA page_size = %d", STORE_PAGE_SIZE);
	if (exec(s, pragma) < 0)
		goto fail;
	sqlite3_stmt *st;
	const char *mode = "";
	if (sqlite3_prepare_v2(s->db, "PRAGMA journal_mode = WAL", -1, &st, NULL) == SQLITE_OK &&
	    sqlite3_step(st) == SQLITE_ROW)
		mode = (const char *)sqlite3_column_text(st, 0);
	int wal = mode && !strcmp(mode, "wal");
	sqlite3_finalize(st);
	if (!wal) {
		log_error("db_open", "path=\"%s\" msg=\"cannot switch to WAL mode: %s\"", path,
			  sqlite3_errmsg(s->db));
		goto fail;
	}
	if (exec(s, sync_full ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL") < 0 ||
	    exec(s, "PRAGMA cache_size = -32768") < 0 || exec(s, "PRAGMA temp_store = MEMORY") < 0 ||
	    migrate(s) < 0)
		goto fail;
	/* What SQLite really does, read back (a 201 relies on it). */
	int sync = -1;
	if (sqlite3_prepare_v2(s->db, "PRAGMA synchronous", -1, &st, NULL) == SQLITE_OK &&
	    sqlite3_step(st) == SQLITE_ROW)
		sync = sqlite3_column_int(st, 0);
	sqlite3_finalize(st);
	log_info("db_open", "path=\"%s\" journal_mode=wal synchronous=%s", path,
		 sync == 2 ? "full" : sync == 1 ? "normal" : sync == 3 ? "extra" : "off");
	for (int i = 0; i < S_NSTMTS; i++)
		if (sqlite3_prepare_v3(s->db, store_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->st[i], NULL) !=
		    SQLITE_OK) {
			db_fail(s, store_sql[i]);
			goto fail;
		}
	if (sqlite3_prepare_v2(s->db, "SELECT value FROM meta WHERE key = 'done_seq'", -1, &st,
			       NULL) == SQLITE_OK &&
	    sqlite3_step(st) == SQLITE_ROW)
		s->done_seq = s->done_seq_committed = s->seq_bound = s->seq_bound_committed =
		    sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	if (recover(s) < 0 || ckpt_start(s, path) < 0)
		goto fail;
	return s;
fail:
	store_close(s);
	return NULL;
}

void store_close(struct store *s)
{
	if (!s)
		return;
	store_read_end(s);
	if (s->in_txn)
		store_commit(s);
	ckpt_stop(s);
	for (int i = 0; i < S_NSTMTS; i++)
		sqlite3_finalize(s->st[i]);
	if (s->db) {
		/* Not another server's database (the lock was refused). */
		if (s->lock_fd >= 0)
			sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
		sqlite3_close(s->db);
	}
	if (s->lock_fd >= 0)
		close(s->lock_fd); /* after sqlite3_close: see store_open */
	free(s->deltas);
	for (int i = 0; i < s->nsegs; i++)
		free(s->segs[i]);
	for (size_t i = 0; i < s->ngroups; i++)
		buf_free(&s->groups[i].recs);
	free(s->groups);
	for (size_t i = 0; i < s->nbuilders; i++)
		buf_free(&s->builders[i].args);
	free(s->builders);
	buf_free(&s->scratch);
	free(s->submit_key);
	buf_free(&s->rg.blob);
	for (int i = 0; i < KEPT; i++) {
		buf_free(&s->kept_args[i].blob);
		buf_free(&s->kept_groups[i].blob);
	}
	free(s->rg.f);
	free(s);
}

/* ---- batches ---- */

/* The id the next batch gets: read once, then counted here (the server is
 * the database's only writer). Reading it took two subqueries in every
 * submission's INSERT. */
static int64_t next_id(struct store *s)
{
	if (s->next_id > 0)
		return s->next_id;
	sqlite3_stmt *st = s->st[S_NEXT_ID];
	if (sqlite3_step(st) == SQLITE_ROW)
		s->next_id = sqlite3_column_int64(st, 0);
	sqlite3_reset(st);
	return s->next_id > 0 ? s->next_id : db_fail(s, "next_batch_id");
}

int store_batch_begin(struct store *s, struct batch *b)
{
	if (db_begin(s) < 0)
		return -1;
	int64_t id = next_id(s);
	if (id < 0)
		return -1;
	sqlite3_stmt *st = s->st[S_INS_BATCH];
	sqlite3_bind_text(st, 1, b->task, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, b->size);
	sqlite3_bind_int64(st, 3, b->chunksize);
	if (b->timeout > 0)
		sqlite3_bind_double(st, 4, b->timeout);
	sqlite3_bind_int64(st, 5, b->created_ms);
	sqlite3_bind_int64(st, 6, b->retries);
	sqlite3_bind_int64(st, 7, id);
	if (db_run(s, S_INS_BATCH) < 0)
		return -1; /* a failed statement leaves nothing behind */
	b->id = s->submitting = id;
	s->next_id = id + 1;
	if (b->size >= 0) {
		/* The row as it now is, so its first read needs no SELECT
		 * (an upload's, size -1, is nobody's to read until sealed). */
		struct batch *e = bcache_slot(s, id);
		*e = *b;
		memset(e->counts, 0, sizeof e->counts);
		e->counts[FS_PENDING] = b->size;
		e->finished_ms = -1;
		if (!(e->timeout > 0))
			e->timeout = 0; /* stored as NULL */
	}
	return 0;
}

int store_batch_item(struct store *s, int64_t batch, int64_t idx, const char *args, size_t len)
{
	return add_item(s, batch, idx, args, len);
}

static sqlite3_stmt *prepare(struct store *s, const char *q);
static int delete_rows(struct store *s, int64_t batch, int upload);

/* Takes a submission that could not be stored whole back out of the
 * transaction by deleting what it wrote. A savepoint around every submission
 * did this before, at 6,300 instructions an item in W3 under callgrind:
 * SAVEPOINT, RELEASE, and the sub-journal's copy of every page an earlier
 * submission of the turn had already dirtied. If the deletes fail too, the
 * whole transaction goes, as with a failed commit. */
static int submission_undo(struct store *s, int64_t batch, const char *key)
{
	store_forget(s, batch); /* its cached row, fresh segments and kept rows */
	/* Nobody saw its id (it was never queued, so no chunk of it went out):
	 * the next batch has it, not a gap. */
	s->next_id = batch;
	if (s->lost)
		return 0; /* all of the transaction goes anyway */
	sqlite3_stmt *st = key ? prepare(s, "DELETE FROM idempotency WHERE key = ?1") : NULL;
	int rc = 0;
	if (st) {
		sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
		rc = sqlite3_step(st) == SQLITE_DONE ? 0 : db_fail(s, "idem_undo");
		sqlite3_finalize(st);
	}
	if ((key && !st) || rc < 0 || delete_rows(s, batch, 0) < 0) {
		log_error("db_txn_lost", "batch=%lld msg=\"a submission could not be taken back: the "
			  "transaction is rolled back at its commit\"", (long long)batch);
		s->lost = 1;
		return -1;
	}
	return 0;
}

int store_batch_end(struct store *s, int ok)
{
	int failed = 0;
	for (size_t i = 0; i < s->nbuilders; i++) {
		struct builder *bl = &s->builders[i];
		if (bl->batch != s->submitting)
			continue;
		if (ok && builder_write(s, bl) < 0)
			ok = 0, failed = 1;
		builder_drop(s, bl->batch);
		break;
	}
	int64_t batch = s->submitting;
	char *key = s->submit_key;
	s->submitting = 0;
	s->submit_key = NULL;
	int rc = ok || !batch ? 0 : submission_undo(s, batch, key); /* 0: none was begun */
	free(key);
	return rc < 0 || failed ? -1 : 0;
}

static void read_batch(sqlite3_stmt *st, struct batch *b)
{
	memset(b, 0, sizeof *b);
	b->id = sqlite3_column_int64(st, 0);
	const char *task = (const char *)sqlite3_column_text(st, 1);
	snprintf(b->task, sizeof b->task, "%s", task ? task : "");
	b->size = sqlite3_column_int64(st, 2);
	b->chunksize = sqlite3_column_int64(st, 3);
	b->timeout = sqlite3_column_type(st, 4) == SQLITE_NULL ? 0 : sqlite3_column_double(st, 4);
	b->created_ms = sqlite3_column_int64(st, 5);
	b->finished_ms = sqlite3_column_type(st, 6) == SQLITE_NULL ? -1 : sqlite3_column_int64(st, 6);
	for (int k = 0; k < FS_NSTATES; k++)
		b->counts[k] = sqlite3_column_int64(st, 7 + k);
	b->retries = sqlite3_column_int64(st, 7 + FS_NSTATES);
}

int store_batch_get(struct store *s, int64_t id, struct batch *out)
{
	if (s->ndeltas && flush_counts(s) < 0)
		return -1;
	struct batch *e = bcache_slot(s, id);
	if (e->id == id && id != 0) {
		*out = *e;
		return 1;
	}
	sqlite3_stmt *st = s->st[S_GET_BATCH];
	sqlite3_bind_int64(st, 1, id);
	int rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		read_batch(st, out);
	sqlite3_reset(st);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		return db_fail(s, "batch_get");
	if (rc == SQLITE_ROW)
		*e = *out;
	return rc == SQLITE_ROW;
}

int store_batch_list(struct store *s, int64_t before, int limit,
		     void (*fn)(void *arg, const struct batch *b), void *arg)
{
	if (s->ndeltas && flush_counts(s) < 0)
		return -1;
	sqlite3_stmt *st = s->st[S_LIST_BATCHES];
	sqlite3_bind_int64(st, 1, before > 0 ? before : INT64_MAX);
	sqlite3_bind_int(st, 2, limit);
	int n = 0, rc;
	struct batch b;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		read_batch(st, &b);
		fn(arg, &b);
		n++;
	}
	sqlite3_reset(st);
	return rc == SQLITE_DONE ? n : db_fail(s, "batch_list");
}

int store_pending_batches(struct store *s, int64_t **ids, size_t *n)
{
	int rc = collect_ids(s->st[S_PENDING_BATCHES], ids, n);
	sqlite3_reset(s->st[S_PENDING_BATCHES]);
	return rc == SQLITE_DONE ? 0 : db_fail(s, "pending_batches");
}


/* ---- idempotency keys (rare: prepared per call) ---- */

/* Prepares q, binds nothing; NULL on error (logged). */
static sqlite3_stmt *prepare(struct store *s, const char *q)
{
	sqlite3_stmt *st;
	if (sqlite3_prepare_v2(s->db, q, -1, &st, NULL) != SQLITE_OK) {
		db_fail(s, q);
		return NULL;
	}
	return st;
}

int store_idem_get(struct store *s, const char *key, const unsigned char hash[32], int64_t *batch)
{
	sqlite3_stmt *st = prepare(s, "SELECT body_hash, batch_id FROM idempotency WHERE key = ?1");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	int rc = sqlite3_step(st), found = 0;
	if (rc == SQLITE_ROW) {
		const void *h = sqlite3_column_blob(st, 0);
		found = sqlite3_column_bytes(st, 0) == 32 && h && !memcmp(h, hash, 32) ? 1 : 2;
		*batch = sqlite3_column_int64(st, 1);
	}
	sqlite3_finalize(st);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		return db_fail(s, "idem_get");
	return found;
}

int store_idem_put(struct store *s, const char *key, const unsigned char hash[32], int64_t batch,
		   int64_t now_ms)
{
	if (db_begin(s) < 0)
		return -1;
	sqlite3_stmt *st = prepare(s, "INSERT INTO idempotency (key, body_hash, batch_id, created_at)"
				      " VALUES (?1, ?2, ?3, ?4)");
	if (!st)
		return -1;
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	sqlite3_bind_blob(st, 2, hash, 32, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, batch);
	sqlite3_bind_int64(st, 4, now_ms);
	int rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE)
		return db_fail(s, "idem_put");
	if (batch == s->submitting) { /* taken back with it if it fails */
		free(s->submit_key);
		if (!(s->submit_key = strdup(key)))
			abort();
	}
	return 0;
}

const char *store_error(const struct store *s) { return s->last_error[0] ? s->last_error : "unknown error"; }


/* ---- NDJSON uploads: stored as they arrive, sealed or removed at the end ---- */

int store_upload_begin(struct store *s, struct batch *b)
{
	b->size = -1;
	if (store_batch_begin(s, b) < 0)
		return -1;
	s->submitting = 0; /* its items come later, over several turns */
	return store_batch_end(s, 1);
}

int store_upload_item(struct store *s, int64_t batch, int64_t idx, const char *args, size_t len)
{
	if (db_begin(s) < 0)
		return -1;
	return add_item(s, batch, idx, args, len);
}

/* Runs a one-off statement with up to three integer parameters; returns the
 * rows it changed, or -1. */
static int64_t run_once(struct store *s, const char *q, int64_t a, int64_t b, int64_t c)
{
	if (db_begin(s) < 0)
		return -1;
	sqlite3_stmt *st = prepare(s, q);
	if (!st)
		return -1;
	sqlite3_bind_int64(st, 1, a);
	sqlite3_bind_int64(st, 2, b);
	sqlite3_bind_int64(st, 3, c);
	int rc = sqlite3_step(st);
	int64_t n = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : sqlite3_changes64(s->db);
	sqlite3_finalize(st);
	return rc == SQLITE_DONE || rc == SQLITE_ROW ? n : db_fail(s, q);
}

int store_upload_seal(struct store *s, int64_t batch, int64_t size, int64_t chunksize)
{
	struct builder *bl = builder_for(s, batch);
	int rc = bl->next == size && db_begin(s) == 0 && builder_write(s, bl) == 0 ? 0 : -1;
	builder_drop(s, batch);
	if (rc < 0)
		return -1;
	/* A commit that failed during the upload took some of its rows (or
	 * its batch row) with it: then it cannot be sealed. */
	int64_t segs = run_once(s, "SELECT count(*) FROM seg_args WHERE batch_id = ?1", batch, 0, 0);
	if (segs != (size + SEG_ITEMS - 1) / SEG_ITEMS) {
		if (segs >= 0) {
			log_error("upload_lost", "batch=%lld msg=\"rows lost to a failed commit\"", (long long)batch);
			snprintf(s->last_error, sizeof s->last_error, "an upload lost rows to a failed commit");
		}
		return -1;
	}
	bcache_forget(s, batch);
	int64_t n = run_once(s, "UPDATE batches SET size = ?2, chunksize = ?3, n_pending = ?2"
			      " WHERE id = ?1 AND size < 0",
			   batch, size, chunksize);
	return n == 1 ? 0 : -1;
}

/* Deletes batch's segments, arguments and row (only while it is an upload
 * still arriving, if upload), after forgetting what is cached of it. 0 / -1. */
static int delete_rows(struct store *s, int64_t batch, int upload)
{
	store_forget(s, batch);
	if (run_once(s, "DELETE FROM segments WHERE " SEG_RANGE_SQL, batch, 0, 0) < 0 ||
	    run_once(s, "DELETE FROM seg_args WHERE batch_id = ?1", batch, 0, 0) < 0)
		return -1;
	const char *q = upload ? "DELETE FROM batches WHERE id = ?1 AND size < 0"
			       : "DELETE FROM batches WHERE id = ?1";
	return run_once(s, q, batch, 0, 0) < 0 ? -1 : 0;
}

int store_upload_abort(struct store *s, int64_t batch)
{
	builder_drop(s, batch);
	return delete_rows(s, batch, 1);
}

struct sqlite3 *store_sqlite(struct store *s) { return s ? s->db : NULL; }
