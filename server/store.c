/* store.c - the SQLite store (see store.h).
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
#include <sys/stat.h>

#include "buf.h"
#include "log.h"
#include "schema.h"

const char *const fstate_names[FS_NSTATES] = {"pending", "running", "finished", "failed",
					      "cancelled"};
const char *const ferr_names[] = {NULL, "task_error", "timeout", "worker_died"};

enum stmt_id {
	S_BEGIN,
	S_COMMIT,
	S_ROLLBACK,
	S_SP_BEGIN,
	S_SP_RELEASE,
	S_SP_UNDO,
	S_INS_BATCH,
	S_INS_FUTURE,
	S_GET_BATCH,
	S_LIST_BATCHES,
	S_PENDING_BATCHES,
	S_GET_FUTURE,
	S_FUTURES_BY_IDX,
	S_FUTURES_BY_DONE,
	S_CLAIM_SEL,
	S_CLAIM_UPD,
	S_FINISH,
	S_FAIL,
	S_REQUEUE,
	S_COUNTS,
	S_SET_SEQ,
	S_CANCEL_PENDING,
	S_CANCEL_ONE,
	S_CANCEL_RUNNING,
	S_NSTMTS
};

#define BATCH_COLS                                                                               \
	"id, task, size, chunksize, timeout, created_at, finished_at, n_pending, n_running, "    \
	"n_finished, n_failed, n_cancelled, retries"
#define FUTURE_COLS                                                                              \
	"idx, state, result, error_type, error, attempts, worker, started_at, finished_at, "     \
	"done_seq"

static const char *const sql[S_NSTMTS] = {
    [S_BEGIN] = "BEGIN IMMEDIATE",
    [S_COMMIT] = "COMMIT",
    [S_ROLLBACK] = "ROLLBACK",
    [S_SP_BEGIN] = "SAVEPOINT submit",
    [S_SP_RELEASE] = "RELEASE submit",
    [S_SP_UNDO] = "ROLLBACK TO submit",
    [S_INS_BATCH] = "INSERT INTO batches (task, size, chunksize, timeout, created_at, n_pending,"
		    " retries) VALUES (?1, ?2, ?3, ?4, ?5, ?2, ?6)",
    [S_INS_FUTURE] = "INSERT INTO futures (batch_id, idx, args) VALUES (?1, ?2, ?3)",
    /* A batch whose size is -1 is an NDJSON upload still arriving: nobody
     * sees it until it is sealed (store_upload_seal). */
    [S_GET_BATCH] = "SELECT " BATCH_COLS " FROM batches WHERE id = ?1 AND size >= 0",
    [S_LIST_BATCHES] = "SELECT " BATCH_COLS " FROM batches WHERE id < ?1 AND size >= 0"
		       " ORDER BY id DESC LIMIT ?2",
    [S_PENDING_BATCHES] = "SELECT id FROM batches WHERE n_pending > 0 ORDER BY id",
    [S_GET_FUTURE] = "SELECT " FUTURE_COLS " FROM futures WHERE batch_id = ?1 AND idx = ?2",
    [S_FUTURES_BY_IDX] = "SELECT " FUTURE_COLS " FROM futures WHERE batch_id = ?1 AND idx > ?2"
			 " ORDER BY idx LIMIT ?3",
    [S_FUTURES_BY_DONE] = "SELECT " FUTURE_COLS " FROM futures WHERE batch_id = ?1"
			  " AND done_seq > ?2 AND done_seq <= ?4 ORDER BY done_seq LIMIT ?3",
    /* INDEXED BY: without it SQLite walks the batch's primary key from idx 0
     * (it also yields idx order), skipping the rows already claimed, so a
     * batch's claims cost O(size) each and O(size^2) in all: a 10,000,000
     * item batch slowed to 20,000 items/s. The partial index holds only the
     * pending rows. */
    [S_CLAIM_SEL] = "SELECT idx, args FROM futures INDEXED BY futures_pending"
		    " WHERE batch_id = ?1 AND state = 0 ORDER BY idx LIMIT ?2",
    [S_CLAIM_UPD] = "UPDATE futures SET state = 1, attempts = attempts + 1, worker = ?1,"
		    " started_at = ?2 WHERE batch_id = ?3 AND idx BETWEEN ?4 AND ?5 AND state = 0",
    [S_FINISH] = "UPDATE futures SET state = 2, result = ?3, started_at = ?4, finished_at = ?5,"
		 " done_seq = ?6 WHERE batch_id = ?1 AND idx = ?2 AND state = 1",
    [S_FAIL] = "UPDATE futures SET state = 3, error_type = ?3, error = ?4, started_at = ?5,"
	       " finished_at = ?6, done_seq = ?7 WHERE batch_id = ?1 AND idx = ?2 AND state = 1",
    [S_REQUEUE] = "UPDATE futures SET state = 0, attempts = attempts - 1, worker = NULL,"
		  " started_at = NULL WHERE batch_id = ?1 AND idx = ?2 AND state = 1",
    /* Right-hand sides see the old row, so the CASE tests the new totals. */
    [S_COUNTS] = "UPDATE batches SET n_pending = n_pending + ?2, n_running = n_running + ?3,"
		 " n_finished = n_finished + ?4, n_failed = n_failed + ?5,"
		 " n_cancelled = n_cancelled + ?6,"
		 " finished_at = CASE WHEN finished_at IS NULL AND n_pending + ?2 + n_running + ?3 = 0"
		 " THEN ?7 ELSE finished_at END WHERE id = ?1",
    [S_SET_SEQ] = "UPDATE meta SET value = ?1 WHERE key = 'done_seq'",
    /* Each cancelled future gets its own completion cursor, ?2 + idx. */
    [S_CANCEL_PENDING] = "UPDATE futures INDEXED BY futures_pending SET state = 4, finished_at = ?3,"
			 " done_seq = ?2 + idx WHERE batch_id = ?1 AND state = 0",
    [S_CANCEL_ONE] = "UPDATE futures SET state = 4, finished_at = ?4, done_seq = ?3"
		     " WHERE batch_id = ?1 AND idx = ?2 AND state = 0",
    [S_CANCEL_RUNNING] = "UPDATE futures SET state = 4, finished_at = ?4, done_seq = ?3"
			 " WHERE batch_id = ?1 AND idx = ?2 AND state = 1",
};

struct delta {
	int64_t batch;
	int64_t d[FS_NSTATES];
};

struct store {
	sqlite3 *db;
	sqlite3_stmt *st[S_NSTMTS];
	int in_txn;
	int64_t done_seq, done_seq_saved;
	/* The highest completion cursor committed: completion-order reads stop
	 * there, so that a cursor handed to a client is never one a failed
	 * commit takes back and gives to another future. */
	int64_t done_seq_committed;
	int64_t now_ms; /* time of the latest change, for finished_at */
	struct delta *deltas;
	size_t ndeltas, capdeltas;
	/* SQLite rolled the open transaction back by itself (it may, on
	 * SQLITE_FULL, SQLITE_IOERR, SQLITE_NOMEM): the next store_commit
	 * fails, so that the caller knows those writes are gone. */
	int lost;
	char last_error[256];
	struct checkpointer *ckpt;
	/* The batch store_batch_get read last, valid while the connection has
	 * changed no row since (sqlite3_total_changes64 counts every write on
	 * it, the retention sweeper's too) and nothing was rolled back (which
	 * that count does not see): 2,000 long-polls woken by one batch then
	 * cost one read, not 4,000. */
	struct batch bcache;
	int64_t bcache_changes; /* -1: empty */
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

static void bcache_drop(struct store *s) { s->bcache_changes = -1; }

static int db_fail(struct store *s, const char *op)
{
	bcache_drop(s);
	log_error("db_error", "op=%s code=%d msg=\"%s\"", op, sqlite3_extended_errcode(s->db),
		  sqlite3_errmsg(s->db));
	snprintf(s->last_error, sizeof s->last_error, "%s", sqlite3_errmsg(s->db));
	if (s->in_txn && sqlite3_get_autocommit(s->db)) {
		log_error("db_txn_lost", "msg=\"SQLite rolled the transaction back\"");
		s->in_txn = 0;
		s->lost = 1;
		s->ndeltas = 0;
		s->done_seq = s->done_seq_saved;
	}
	return -1;
}

/* Steps a statement that returns no rows and resets it. */
static int run(struct store *s, enum stmt_id id)
{
	int rc = sqlite3_step(s->st[id]);
	sqlite3_reset(s->st[id]);
	sqlite3_clear_bindings(s->st[id]);
	if (rc != SQLITE_DONE && rc != SQLITE_ROW)
		return db_fail(s, sql[id]);
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

static int begin(struct store *s)
{
	if (s->in_txn)
		return 0;
	if (run(s, S_BEGIN) < 0)
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

static void move_count(struct store *s, int64_t batch, enum fstate from, enum fstate to, int64_t n)
{
	struct delta *d = delta_for(s, batch);
	d->d[from] -= n;
	d->d[to] += n;
}

/* Folds the counter deltas and the completion cursor into the database. */
static int flush_counts(struct store *s)
{
	for (size_t i = 0; i < s->ndeltas; i++) {
		sqlite3_stmt *st = s->st[S_COUNTS];
		sqlite3_bind_int64(st, 1, s->deltas[i].batch);
		for (int k = 0; k < FS_NSTATES; k++)
			sqlite3_bind_int64(st, 2 + k, s->deltas[i].d[k]);
		sqlite3_bind_int64(st, 7, s->now_ms);
		if (run(s, S_COUNTS) < 0)
			return -1;
	}
	s->ndeltas = 0;
	if (s->done_seq != s->done_seq_saved) {
		sqlite3_bind_int64(s->st[S_SET_SEQ], 1, s->done_seq);
		if (run(s, S_SET_SEQ) < 0)
			return -1;
		s->done_seq_saved = s->done_seq;
	}
	return 0;
}

int store_commit(struct store *s)
{
	if (s->lost) {
		bcache_drop(s);
		/* Writes after the loss go too: a commit keeps all or none. */
		if (s->in_txn)
			sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
		s->in_txn = s->lost = 0;
		s->ndeltas = 0;
		s->done_seq = s->done_seq_saved;
		return -1;
	}
	if (!s->in_txn)
		return 0;
	if (flush_counts(s) < 0 || run(s, S_COMMIT) < 0) {
		bcache_drop(s);
		sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
		s->in_txn = s->lost = 0;
		s->ndeltas = 0;
		s->done_seq = s->done_seq_saved;
		return -1;
	}
	s->in_txn = 0;
	s->done_seq_committed = s->done_seq;
	return 0;
}

int store_dirty(const struct store *s) { return s->in_txn || s->lost; }

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
		if (exec(s, schema_migrations[v]) < 0 || exec(s, pragma) < 0) {
			exec(s, "ROLLBACK");
			return -1;
		}
		if (exec(s, "COMMIT") < 0)
			return -1;
		log_info("db_migrate", "version=%d", v + 1);
	}
	return 0;
}

/* Items that were running when the previous process stopped run again. */
static int recover(struct store *s)
{
	int64_t n = 0;
	if (exec(s, "BEGIN IMMEDIATE") < 0)
		return -1;
	sqlite3_stmt *ids, *upd;
	if (sqlite3_prepare_v2(s->db, "SELECT id FROM batches WHERE n_running > 0", -1, &ids, NULL) !=
	    SQLITE_OK)
		return db_fail(s, "recover");
	/* A claim counts an attempt for the whole chunk, but a worker runs its
	 * chunk in index order: of a worker's running items only the first
	 * had started (or had run, its result not yet committed). The others
	 * give their attempt back, so attempts counts runs, not dispatches. */
	static const char requeue[] =
	    "WITH firsts AS (SELECT min(idx) AS idx FROM futures WHERE batch_id = ?1 AND state = 1"
	    " GROUP BY worker)"
	    " UPDATE futures SET state = 0, attempts = attempts - (idx NOT IN (SELECT idx FROM firsts))"
	    " WHERE batch_id = ?1 AND state = 1";
	if (sqlite3_prepare_v2(s->db, requeue, -1, &upd, NULL) != SQLITE_OK) {
		sqlite3_finalize(ids);
		return db_fail(s, "recover");
	}
	int rc = 0;
	while (rc == 0 && sqlite3_step(ids) == SQLITE_ROW) {
		sqlite3_bind_int64(upd, 1, sqlite3_column_int64(ids, 0));
		if (sqlite3_step(upd) != SQLITE_DONE)
			rc = db_fail(s, "recover");
		n += sqlite3_changes(s->db);
		sqlite3_reset(upd);
	}
	sqlite3_finalize(ids);
	sqlite3_finalize(upd);
	if (rc == 0)
		rc = exec(s, "UPDATE batches SET n_pending = n_pending + n_running, n_running = 0"
			     " WHERE n_running > 0");
	/* Uploads cut short by the crash were never accepted. */
	if (rc == 0)
		rc = exec(s, "DELETE FROM futures WHERE batch_id IN (SELECT id FROM batches WHERE size < 0);"
			     "DELETE FROM batches WHERE size < 0");
	if (rc < 0 || exec(s, "COMMIT") < 0) {
		exec(s, "ROLLBACK");
		return -1;
	}
	if (n > 0)
		log_info("recover", "requeued=%lld", (long long)n);
	return 0;
}

struct store *store_open(const char *path, int sync_full)
{
	struct store *s = calloc(1, sizeof *s);
	if (!s)
		return NULL;
	bcache_drop(s);
	if (mkdirs_for(path) < 0) {
		log_error("db_open", "path=\"%s\" msg=\"cannot create its directory: %s\"", path,
			  strerror(errno));
		free(s);
		return NULL;
	}
	int rc = sqlite3_open_v2(path, &s->db,
				 SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
	if (rc != SQLITE_OK) {
		log_error("db_open", "path=\"%s\" msg=\"%s\"", path,
			  s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
		sqlite3_close(s->db);
		free(s);
		return NULL;
	}
	sqlite3_busy_timeout(s->db, 5000);
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
	    migrate(s) < 0 || recover(s) < 0 || ckpt_start(s, path) < 0)
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
		if (sqlite3_prepare_v3(s->db, sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->st[i], NULL) !=
		    SQLITE_OK) {
			db_fail(s, sql[i]);
			goto fail;
		}
	if (sqlite3_prepare_v2(s->db, "SELECT value FROM meta WHERE key = 'done_seq'", -1, &st,
			       NULL) == SQLITE_OK &&
	    sqlite3_step(st) == SQLITE_ROW)
		s->done_seq = s->done_seq_saved = s->done_seq_committed = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return s;
fail:
	store_close(s);
	return NULL;
}

void store_close(struct store *s)
{
	if (!s)
		return;
	if (s->in_txn)
		store_commit(s);
	ckpt_stop(s);
	for (int i = 0; i < S_NSTMTS; i++)
		sqlite3_finalize(s->st[i]);
	if (s->db) {
		sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
		sqlite3_close(s->db);
	}
	free(s->deltas);
	free(s);
}

int store_batch_begin(struct store *s, struct batch *b)
{
	if (begin(s) < 0 || run(s, S_SP_BEGIN) < 0)
		return -1;
	sqlite3_stmt *st = s->st[S_INS_BATCH];
	sqlite3_bind_text(st, 1, b->task, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, b->size);
	sqlite3_bind_int64(st, 3, b->chunksize);
	if (b->timeout > 0)
		sqlite3_bind_double(st, 4, b->timeout);
	sqlite3_bind_int64(st, 5, b->created_ms);
	sqlite3_bind_int64(st, 6, b->retries);
	if (run(s, S_INS_BATCH) < 0) {
		store_batch_end(s, 0);
		return -1;
	}
	b->id = sqlite3_last_insert_rowid(s->db);
	return 0;
}

int store_batch_item(struct store *s, int64_t batch, int64_t idx, const char *args, size_t len)
{
	sqlite3_stmt *st = s->st[S_INS_FUTURE];
	sqlite3_bind_int64(st, 1, batch);
	sqlite3_bind_int64(st, 2, idx);
	sqlite3_bind_text(st, 3, args, (int)len, SQLITE_STATIC);
	return run(s, S_INS_FUTURE);
}

int store_batch_end(struct store *s, int ok)
{
	if (!ok)
		bcache_drop(s);
	if (!ok && run(s, S_SP_UNDO) < 0)
		return -1;
	return run(s, S_SP_RELEASE);
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
	int64_t changes = sqlite3_total_changes64(s->db);
	if (s->bcache_changes == changes && s->bcache.id == id) {
		*out = s->bcache;
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
	if (rc == SQLITE_ROW) {
		s->bcache = *out;
		s->bcache_changes = changes;
	}
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
	sqlite3_stmt *st = s->st[S_PENDING_BATCHES];
	size_t cap = 0;
	*ids = NULL;
	*n = 0;
	int rc;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		if (*n == cap) {
			cap = cap ? cap * 2 : 16;
			*ids = realloc(*ids, cap * sizeof **ids);
			if (!*ids)
				abort();
		}
		(*ids)[(*n)++] = sqlite3_column_int64(st, 0);
	}
	sqlite3_reset(st);
	return rc == SQLITE_DONE ? 0 : db_fail(s, "pending_batches");
}

static void read_future(sqlite3_stmt *st, struct future *f)
{
	f->index = sqlite3_column_int64(st, 0);
	f->state = (enum fstate)sqlite3_column_int(st, 1);
	f->result = (const char *)sqlite3_column_text(st, 2);
	f->result_len = (size_t)sqlite3_column_bytes(st, 2);
	f->error_type = (enum ferr)sqlite3_column_int(st, 3);
	f->error = (const char *)sqlite3_column_text(st, 4);
	f->attempts = sqlite3_column_int64(st, 5);
	f->worker = sqlite3_column_int64(st, 6);
	f->started_ms = sqlite3_column_type(st, 7) == SQLITE_NULL ? -1 : sqlite3_column_int64(st, 7);
	f->finished_ms = sqlite3_column_type(st, 8) == SQLITE_NULL ? -1 : sqlite3_column_int64(st, 8);
	f->done_seq = sqlite3_column_int64(st, 9);
}

static int each_future(struct store *s, sqlite3_stmt *st, void (*fn)(void *, const struct future *),
		       void *arg)
{
	int n = 0, rc;
	struct future f;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		read_future(st, &f);
		fn(arg, &f);
		n++;
	}
	sqlite3_reset(st);
	return rc == SQLITE_DONE ? n : db_fail(s, "futures");
}

int store_future_get(struct store *s, int64_t batch, int64_t idx,
		     void (*fn)(void *arg, const struct future *f), void *arg)
{
	sqlite3_stmt *st = s->st[S_GET_FUTURE];
	sqlite3_bind_int64(st, 1, batch);
	sqlite3_bind_int64(st, 2, idx);
	return each_future(s, st, fn, arg);
}

int store_futures(struct store *s, int64_t batch, int completed, int64_t after, int64_t limit,
		  void (*fn)(void *arg, const struct future *f), void *arg)
{
	sqlite3_stmt *st = s->st[completed ? S_FUTURES_BY_DONE : S_FUTURES_BY_IDX];
	sqlite3_bind_int64(st, 1, batch);
	sqlite3_bind_int64(st, 2, completed && after < 0 ? 0 : after);
	sqlite3_bind_int64(st, 3, limit);
	if (completed)
		sqlite3_bind_int64(st, 4, s->done_seq_committed);
	return each_future(s, st, fn, arg);
}

int store_claim(struct store *s, int64_t batch, int64_t max, int64_t pid, int64_t now_ms,
		int64_t *idx, struct buf *args)
{
	if (begin(s) < 0)
		return -1;
	sqlite3_stmt *st = s->st[S_CLAIM_SEL];
	sqlite3_bind_int64(st, 1, batch);
	sqlite3_bind_int64(st, 2, max);
	int64_t n = 0;
	int rc;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		idx[n++] = sqlite3_column_int64(st, 0);
		buf_add(args, sqlite3_column_text(st, 1), (size_t)sqlite3_column_bytes(st, 1));
		buf_addc(args, '\n');
	}
	sqlite3_reset(st);
	if (rc != SQLITE_DONE)
		return db_fail(s, "claim");
	if (n == 0)
		return 0;
	st = s->st[S_CLAIM_UPD];
	sqlite3_bind_int64(st, 1, pid);
	sqlite3_bind_int64(st, 2, now_ms);
	sqlite3_bind_int64(st, 3, batch);
	sqlite3_bind_int64(st, 4, idx[0]);
	sqlite3_bind_int64(st, 5, idx[n - 1]);
	if (run(s, S_CLAIM_UPD) < 0)
		return -1;
	s->now_ms = now_ms;
	move_count(s, batch, FS_PENDING, FS_RUNNING, n);
	return (int)n;
}

int store_finish(struct store *s, int64_t batch, int64_t idx, const char *result, size_t len,
		 int64_t started_ms, int64_t now_ms)
{
	if (begin(s) < 0)
		return -1;
	sqlite3_stmt *st = s->st[S_FINISH];
	sqlite3_bind_int64(st, 1, batch);
	sqlite3_bind_int64(st, 2, idx);
	sqlite3_bind_text(st, 3, result, (int)len, SQLITE_STATIC);
	sqlite3_bind_int64(st, 4, started_ms);
	sqlite3_bind_int64(st, 5, now_ms);
	sqlite3_bind_int64(st, 6, s->done_seq + 1);
	if (run(s, S_FINISH) < 0)
		return -1;
	if (sqlite3_changes(s->db) == 1) {
		s->done_seq++;
		s->now_ms = now_ms;
		move_count(s, batch, FS_RUNNING, FS_FINISHED, 1);
	}
	return 0;
}

int store_fail(struct store *s, int64_t batch, int64_t idx, enum ferr type, const char *msg,
	       int64_t started_ms, int64_t now_ms)
{
	if (begin(s) < 0)
		return -1;
	sqlite3_stmt *st = s->st[S_FAIL];
	sqlite3_bind_int64(st, 1, batch);
	sqlite3_bind_int64(st, 2, idx);
	sqlite3_bind_int(st, 3, (int)type);
	sqlite3_bind_text(st, 4, msg, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 5, started_ms);
	sqlite3_bind_int64(st, 6, now_ms);
	sqlite3_bind_int64(st, 7, s->done_seq + 1);
	if (run(s, S_FAIL) < 0)
		return -1;
	if (sqlite3_changes(s->db) == 1) {
		s->done_seq++;
		s->now_ms = now_ms;
		move_count(s, batch, FS_RUNNING, FS_FAILED, 1);
	}
	return 0;
}

int store_requeue(struct store *s, int64_t batch, int64_t idx)
{
	if (begin(s) < 0)
		return -1;
	sqlite3_stmt *st = s->st[S_REQUEUE];
	sqlite3_bind_int64(st, 1, batch);
	sqlite3_bind_int64(st, 2, idx);
	if (run(s, S_REQUEUE) < 0)
		return -1;
	if (sqlite3_changes(s->db) == 1)
		move_count(s, batch, FS_RUNNING, FS_PENDING, 1);
	return 0;
}

int store_cancel_pending(struct store *s, int64_t batch, int64_t size, int64_t now_ms)
{
	if (begin(s) < 0)
		return -1;
	sqlite3_stmt *st = s->st[S_CANCEL_PENDING];
	int64_t base = s->done_seq + 1;
	sqlite3_bind_int64(st, 1, batch);
	sqlite3_bind_int64(st, 2, base);
	sqlite3_bind_int64(st, 3, now_ms);
	if (run(s, S_CANCEL_PENDING) < 0)
		return -1;
	int64_t n = sqlite3_changes64(s->db);
	if (n > 0) {
		s->done_seq = base + size; /* past every cursor just given */
		s->now_ms = now_ms;
		move_count(s, batch, FS_PENDING, FS_CANCELLED, n);
	}
	return (int)(n > INT32_MAX ? INT32_MAX : n);
}

/* Moves one future from state `from` to cancelled. 1, 0 (not in that
 * state) or -1. */
static int cancel_one(struct store *s, enum stmt_id id, enum fstate from, int64_t batch, int64_t idx,
		      int64_t now_ms)
{
	if (begin(s) < 0)
		return -1;
	sqlite3_stmt *st = s->st[id];
	sqlite3_bind_int64(st, 1, batch);
	sqlite3_bind_int64(st, 2, idx);
	sqlite3_bind_int64(st, 3, s->done_seq + 1);
	sqlite3_bind_int64(st, 4, now_ms);
	if (run(s, id) < 0)
		return -1;
	if (sqlite3_changes(s->db) != 1)
		return 0;
	s->done_seq++;
	s->now_ms = now_ms;
	move_count(s, batch, from, FS_CANCELLED, 1);
	return 1;
}

int store_cancel_one(struct store *s, int64_t batch, int64_t idx, int64_t now_ms)
{
	return cancel_one(s, S_CANCEL_ONE, FS_PENDING, batch, idx, now_ms);
}

int store_cancel_running(struct store *s, int64_t batch, int64_t idx, int64_t now_ms)
{
	return cancel_one(s, S_CANCEL_RUNNING, FS_RUNNING, batch, idx, now_ms);
}

struct sqlite3 *store_sqlite(struct store *s) { return s ? s->db : NULL; }

/* ---- retries and idempotency keys (rare: prepared per call) ---- */

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

int store_retry(struct store *s, int64_t batch, int64_t idx, int64_t retries)
{
	if (begin(s) < 0)
		return -1;
	sqlite3_stmt *st = prepare(s, "UPDATE futures SET state = 0, worker = NULL, started_at = NULL"
				      " WHERE batch_id = ?1 AND idx = ?2 AND state = 1 AND attempts <= ?3");
	if (!st)
		return -1;
	sqlite3_bind_int64(st, 1, batch);
	sqlite3_bind_int64(st, 2, idx);
	sqlite3_bind_int64(st, 3, retries);
	int rc = sqlite3_step(st);
	sqlite3_finalize(st);
	if (rc != SQLITE_DONE)
		return db_fail(s, "retry");
	if (sqlite3_changes(s->db) != 1)
		return 0;
	move_count(s, batch, FS_RUNNING, FS_PENDING, 1);
	return 1;
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
	if (begin(s) < 0)
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
	return rc == SQLITE_DONE ? 0 : db_fail(s, "idem_put");
}

const char *store_error(const struct store *s) { return s->last_error[0] ? s->last_error : "unknown error"; }

int store_claim_range(struct store *s, int64_t batch, int64_t first, int64_t last, int64_t pid,
		      int64_t now_ms)
{
	if (begin(s) < 0)
		return -1;
	sqlite3_stmt *st = s->st[S_CLAIM_UPD];
	sqlite3_bind_int64(st, 1, pid);
	sqlite3_bind_int64(st, 2, now_ms);
	sqlite3_bind_int64(st, 3, batch);
	sqlite3_bind_int64(st, 4, first);
	sqlite3_bind_int64(st, 5, last);
	if (run(s, S_CLAIM_UPD) < 0)
		return -1;
	int n = sqlite3_changes(s->db);
	s->now_ms = now_ms;
	move_count(s, batch, FS_PENDING, FS_RUNNING, n);
	return n;
}

/* ---- NDJSON uploads: stored as they arrive, sealed or removed at the end ---- */

int store_upload_begin(struct store *s, struct batch *b)
{
	b->size = -1;
	if (store_batch_begin(s, b) < 0)
		return -1;
	return store_batch_end(s, 1);
}

int store_upload_item(struct store *s, int64_t batch, int64_t idx, const char *args, size_t len)
{
	if (begin(s) < 0)
		return -1;
	return store_batch_item(s, batch, idx, args, len);
}

/* Runs a one-off statement with up to three integer parameters. */
static int run_once(struct store *s, const char *q, int64_t a, int64_t b, int64_t c)
{
	sqlite3_stmt *st;
	if (begin(s) < 0)
		return -1;
	if (sqlite3_prepare_v2(s->db, q, -1, &st, NULL) != SQLITE_OK)
		return db_fail(s, q);
	sqlite3_bind_int64(st, 1, a);
	sqlite3_bind_int64(st, 2, b);
	sqlite3_bind_int64(st, 3, c);
	int rc = sqlite3_step(st);
	sqlite3_finalize(st);
	return rc == SQLITE_DONE ? 0 : db_fail(s, q);
}

int store_upload_seal(struct store *s, int64_t batch, int64_t size, int64_t chunksize)
{
	return run_once(s, "UPDATE batches SET size = ?2, chunksize = ?3, n_pending = ?2"
			   " WHERE id = ?1 AND size < 0",
			batch, size, chunksize);
}

int store_upload_abort(struct store *s, int64_t batch)
{
	if (run_once(s, "DELETE FROM futures WHERE batch_id = ?1", batch, 0, 0) < 0)
		return -1;
	return run_once(s, "DELETE FROM batches WHERE id = ?1 AND size < 0", batch, 0, 0);
}
