/* retention.c - expiry and purge of done batches (see retention.h).
 *
 * A batch's items live in three tables (schema/003_segments.sql, keyed as
 * 004_fewer_pages.sql has it): segments and seg_args, a row per 256 items,
 * and outcomes, a row per group of done items. Deleting a batch's row first
 * raises meta's next_batch_id past its id, which is then never given again.
 * The sweeper's steps, one per loop turn while there is work, each its own
 * short transaction taken only when the store has none open:
 *  1. delete up to STEP_ROWS rows of a batch whose row is gone, from the three
 *     tables together, and no more rows once STEP_BYTES bytes of them are
 *     taken (an outcome group, or a segment's arguments, may weigh a MiB or
 *     more);
 *  2. once after start-up, look for such batches (a crash between the two
 *     moves): per batch id found in the three tables, an index seek in each
 *     for the next id and one in batches;
 *  3. every pass interval, walk the batches by id and delete the rows of
 *     those done before now - ttl. Ids grow with submission time, so the walk
 *     stops at the first batch submitted after the cutoff: a pass costs the
 *     old batches still kept (running ones, or done recently), not the table.
 *
 * WAL: the store checkpoints it (store.c, "the checkpointer"); nothing holds a
 * checkpoint back but an outside reader (a backup). journal_size_limit cuts
 * the file back to 64 MiB when it starts over, so a burst of deletions does
 * not leave a large log behind. */
#include "retention.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "log.h"
#include "loop.h"
#include "metrics.h"
#include "segfmt.h"

/* A step of deletion: at most STEP_ROWS rows (a segment stands for 256
 * items), and no more rows once STEP_BYTES bytes of them are taken. Measured:
 * 1 to 4 ms a step, where version 2's step of 2,000 futures rows took 4. */
#define STEP_ROWS 64
#define STEP_BYTES (1 << 20)
#define STEP_SCAN 256	    /* batch rows looked at per step */
#define STEP_EXPIRE 64	    /* batch rows deleted per step */
#define STEP_ORPHANS 256    /* batch ids looked up per step of the start-up search */
#define WAL_LIMIT (64 << 20)

/* The tables of a batch's items, in the order a deletion empties them. The
 * items deleted are counted from the segments, which go last: once all of a
 * batch's items are counted, nothing else of it is left. */
enum { T_OUTCOMES, T_ARGS, T_SEGMENTS, T_N };

enum {
	Q_SCAN,
	Q_DEL_BATCH,
	Q_ID_FLOOR,
	Q_SIZES, /* + T_*: the sizes of a batch's first rows, in key order */
	Q_DEL_ROWS = Q_SIZES + T_N, /* + T_*: a batch's first rows, in key order */
	Q_NEXT_STORED = Q_DEL_ROWS + T_N,
	Q_HAS_BATCH,
	Q_N
};

static const char *const qsql[Q_N] = {
    [Q_SCAN] = "SELECT id, created_at, finished_at, n_pending + n_running FROM batches"
	       " WHERE id > ?1 ORDER BY id LIMIT ?2",
    [Q_DEL_BATCH] = "DELETE FROM batches WHERE id = ?1",
    /* A deleted batch's id is never given again (schema/004_fewer_pages.sql). */
    [Q_ID_FLOOR] = "INSERT INTO meta (key, value) VALUES ('next_batch_id', ?1 + 1)"
		   " ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
    /* length() of a blob reads no overflow page. */
    [Q_SIZES + T_OUTCOMES] = "SELECT length(recs) FROM outcomes WHERE batch_id = ?1"
			     " ORDER BY last_seq LIMIT ?2",
    [Q_SIZES + T_ARGS] = "SELECT length(args) FROM seg_args WHERE batch_id = ?1 ORDER BY seg LIMIT ?2",
    [Q_SIZES + T_SEGMENTS] = "SELECT length(items), items FROM segments WHERE " SEG_RANGE_SQL
			     " ORDER BY id LIMIT ?2",
    [Q_DEL_ROWS + T_OUTCOMES] = "DELETE FROM outcomes WHERE batch_id = ?1 AND last_seq IN"
				" (SELECT last_seq FROM outcomes WHERE batch_id = ?1"
				" ORDER BY last_seq LIMIT ?2)",
    [Q_DEL_ROWS + T_ARGS] = "DELETE FROM seg_args WHERE batch_id = ?1 AND seg IN"
			    " (SELECT seg FROM seg_args WHERE batch_id = ?1 ORDER BY seg LIMIT ?2)",
    [Q_DEL_ROWS + T_SEGMENTS] = "DELETE FROM segments WHERE id IN"
				" (SELECT id FROM segments WHERE " SEG_RANGE_SQL " ORDER BY id LIMIT ?2)",
    /* Each min() is one index seek. */
    [Q_NEXT_STORED] = "SELECT min(b) FROM (SELECT min(id) >> 22 AS b FROM segments WHERE id >= (?1 + 1) << 22"
		      " UNION ALL SELECT min(batch_id) FROM seg_args WHERE batch_id > ?1"
		      " UNION ALL SELECT min(batch_id) FROM outcomes WHERE batch_id > ?1)",
    [Q_HAS_BATCH] = "SELECT 1 FROM batches WHERE id = ?1",
};

static struct {
	struct store *store;
	sqlite3 *db;
	sqlite3_stmt *q[Q_N];
	int64_t ttl_ms;	     /* < 0: keep forever */
	int64_t interval_ms; /* between passes */
	int64_t next_ms;     /* monotonic: the next step is due */
	/* batches whose rows are gone and whose items' rows remain */
	int64_t *gone;
	size_t ngone, capgone;
	int orphans_done;
	int64_t orphan_cursor;
	/* the pass in progress */
	int in_pass;
	int64_t cursor, cutoff_ms, pass_deleted;
} R;

static int db_fail(const char *op)
{
	log_error("retention_db", "op=%s code=%d msg=\"%s\"", op, sqlite3_extended_errcode(R.db),
		  sqlite3_errmsg(R.db));
	return -1;
}

int retention_parse(const char *v, int64_t *ms)
{
	if (!strcmp(v, "off") || !strcmp(v, "never")) {
		*ms = -1;
		return 0;
	}
	/* A decimal number and its unit, both required: a bare "7" beside a
	 * default of 7d would be 7 seconds, and "0" would read as "at once"
	 * while meaning "off" (say off). */
	size_t digits = strspn(v, "0123456789.");
	if (digits == 0 || !v[digits] || v[digits + 1])
		return -1;
	char *end;
	double n = strtod(v, &end);
	if (end != v + digits || !(n > 0) || n > 1e9)
		return -1;
	double unit;
	switch (v[digits]) {
	case 's': unit = 1000; break;
	case 'm': unit = 60e3; break;
	case 'h': unit = 3600e3; break;
	case 'd': unit = 86400e3; break;
	case 'w': unit = 7 * 86400e3; break;
	default: return -1;
	}
	*ms = (int64_t)(n * unit);
	if (*ms == 0)
		*ms = 1;
	return 0;
}

int retention_init(struct store *s, int64_t ttl_ms)
{
	retention_free();
	R.store = s;
	R.db = store_sqlite(s);
	R.ttl_ms = ttl_ms == 0 ? RETENTION_DEFAULT_MS : ttl_ms;
	/* A pass every minute, or more often for a short ttl (tests, demos). */
	R.interval_ms = 60000;
	if (R.ttl_ms > 0 && R.ttl_ms / 2 < R.interval_ms)
		R.interval_ms = R.ttl_ms / 2 > 200 ? R.ttl_ms / 2 : 200;
	for (int i = 0; i < Q_N; i++)
		if (sqlite3_prepare_v3(R.db, qsql[i], -1, SQLITE_PREPARE_PERSISTENT, &R.q[i], NULL) != SQLITE_OK)
			return db_fail(qsql[i]);
	char pragma[64];
	snprintf(pragma, sizeof pragma, "PRAGMA journal_size_limit = %d", WAL_LIMIT);
	sqlite3_exec(R.db, pragma, NULL, NULL, NULL);
	R.next_ms = now_mono_ms();
	if (R.ttl_ms > 0)
		log_info("retention", "result_ttl_s=%lld pass_every_ms=%lld", (long long)(R.ttl_ms / 1000),
			 (long long)R.interval_ms);
	else
		log_info("retention", "result_ttl=off");
	return 0;
}

void retention_free(void)
{
	for (int i = 0; i < Q_N; i++)
		sqlite3_finalize(R.q[i]);
	free(R.gone);
	memset(&R, 0, sizeof R);
}

static void gone_push(int64_t id)
{
	for (size_t i = 0; i < R.ngone; i++)
		if (R.gone[i] == id)
			return;
	if (R.ngone == R.capgone) {
		R.capgone = R.capgone ? R.capgone * 2 : 16;
		R.gone = realloc(R.gone, R.capgone * sizeof *R.gone);
		if (!R.gone)
			abort();
	}
	R.gone[R.ngone++] = id;
}

/* Steps a statement with no rows to return; resets it. */
static int run(int q)
{
	int rc = sqlite3_step(R.q[q]);
	sqlite3_reset(R.q[q]);
	sqlite3_clear_bindings(R.q[q]);
	return rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : db_fail(qsql[q]);
}

/* Deletes a batch's row, first raising next_batch_id past its id: if the
 * delete then fails, an id was only skipped. */
static int del_batch(int64_t id)
{
	sqlite3_bind_int64(R.q[Q_ID_FLOOR], 1, id);
	if (run(Q_ID_FLOOR) < 0)
		return -1;
	sqlite3_bind_int64(R.q[Q_DEL_BATCH], 1, id);
	return run(Q_DEL_BATCH);
}

static int begin(void)
{
	store_read_end(R.store);
	return sqlite3_exec(R.db, "BEGIN IMMEDIATE", NULL, NULL, NULL) == SQLITE_OK ? 0 : db_fail("begin");
}

static int end(int ok)
{
	if (ok && sqlite3_exec(R.db, "COMMIT", NULL, NULL, NULL) == SQLITE_OK)
		return 0;
	if (ok)
		db_fail("commit");
	sqlite3_exec(R.db, "ROLLBACK", NULL, NULL, NULL);
	return -1;
}

/* The items of the segment in column 1 of the row at st. */
static int64_t seg_items(sqlite3_stmt *st, int64_t batch)
{
	static struct seg_item it[SEG_ITEMS];
	const void *blob = sqlite3_column_blob(st, 1);
	int len = sqlite3_column_bytes(st, 1);
	int n = len > 0 ? segfmt_get_items(blob, (size_t)len, it, SEG_ITEMS) : 0;
	if (n < 0) {
		log_warn("retention_corrupt", "batch=%lld msg=\"a segment that does not decode; deleting it,"
			 " its items not counted\"", (long long)batch);
		return 0;
	}
	return n;
}

/* How many of the batch's first rows in table t (key order) the step takes:
 * at most max, and rows only while *bytes < STEP_BYTES, so at least one if
 * there is one. Adds their sizes to *bytes and, from segments, their items to
 * *items. -1 on error. */
static int64_t take_rows(int t, int64_t batch, int64_t max, int64_t *bytes, int64_t *items)
{
	int q = Q_SIZES + t;
	sqlite3_stmt *st = R.q[q];
	sqlite3_bind_int64(st, 1, batch);
	sqlite3_bind_int64(st, 2, max);
	int64_t n = 0;
	int rc = SQLITE_ROW;
	while (*bytes < STEP_BYTES && (rc = sqlite3_step(st)) == SQLITE_ROW) {
		n++;
		*bytes += sqlite3_column_int64(st, 0);
		if (t == T_SEGMENTS)
			*items += seg_items(st, batch);
	}
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	return rc == SQLITE_ROW || rc == SQLITE_DONE ? n : db_fail(qsql[q]);
}

/* Step 1: some rows of the first batch whose row is gone: the tables in turn,
 * while the step has room; each delete is the range take_rows measured. */
static int delete_rows(void)
{
	int64_t id = R.gone[0], rows = 0, bytes = 0, items = 0;
	if (begin() < 0)
		return -1;
	int t, ok = 1;
	for (t = 0; t < T_N; t++) {
		int64_t n = take_rows(t, id, STEP_ROWS - rows, &bytes, &items);
		if (n > 0) {
			sqlite3_bind_int64(R.q[Q_DEL_ROWS + t], 1, id);
			sqlite3_bind_int64(R.q[Q_DEL_ROWS + t], 2, n);
			if (run(Q_DEL_ROWS + t) < 0)
				n = -1;
		}
		if (n < 0) {
			ok = 0;
			break;
		}
		rows += n;
		if (rows == STEP_ROWS || bytes >= STEP_BYTES)
			break; /* the step is full; table t may hold more */
	}
	if (end(ok) < 0)
		return -1;
	metrics_retention(0, items);
	if (t == T_N) { /* every table had less than the room left: all gone */
		memmove(R.gone, R.gone + 1, (R.ngone - 1) * sizeof *R.gone);
		R.ngone--;
	}
	return 0;
}

/* Step 2: batch ids in segments, seg_args or outcomes without a batch row. */
static void find_orphans(void)
{
	for (int i = 0; i < STEP_ORPHANS; i++) {
		sqlite3_stmt *st = R.q[Q_NEXT_STORED];
		sqlite3_bind_int64(st, 1, R.orphan_cursor);
		int rc = sqlite3_step(st);
		int found = rc == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL;
		int64_t id = found ? sqlite3_column_int64(st, 0) : 0;
		sqlite3_reset(st);
		if (rc != SQLITE_ROW) {
			db_fail("orphans");
			return; /* try again next step */
		}
		if (!found) {
			R.orphans_done = 1;
			return;
		}
		R.orphan_cursor = id;
		st = R.q[Q_HAS_BATCH];
		sqlite3_bind_int64(st, 1, id);
		rc = sqlite3_step(st);
		sqlite3_reset(st);
		if (rc == SQLITE_DONE) {
			log_info("retention_orphans", "batch=%lld msg=\"items without their batch; deleting them\"",
				 (long long)id);
			gone_push(id);
		}
	}
}

/* Step 3: part of a pass over the batches. Returns 1 when the pass is over. */
static int expire_some(void)
{
	int64_t ids[STEP_EXPIRE];
	int nexp = 0, over = 0, rows = 0;
	sqlite3_stmt *st = R.q[Q_SCAN];
	sqlite3_bind_int64(st, 1, R.cursor);
	sqlite3_bind_int(st, 2, STEP_SCAN);
	int rc;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		rows++;
		int64_t id = sqlite3_column_int64(st, 0), created = sqlite3_column_int64(st, 1);
		int done = sqlite3_column_type(st, 2) != SQLITE_NULL && sqlite3_column_int64(st, 3) == 0;
		int64_t finished = done ? sqlite3_column_int64(st, 2) : 0;
		if (created >= R.cutoff_ms) {
			over = 1; /* this one and every later one are newer than the cutoff */
			break;
		}
		R.cursor = id;
		if (done && finished < R.cutoff_ms) {
			ids[nexp++] = id;
			if (nexp == STEP_EXPIRE)
				break;
		}
	}
	sqlite3_reset(st);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
		db_fail("scan");
		return 1;
	}
	if (rc == SQLITE_DONE && rows < STEP_SCAN)
		over = 1;
	if (nexp) {
		if (begin() < 0)
			return 1;
		int ok = 1;
		for (int i = 0; i < nexp && ok; i++)
			ok = del_batch(ids[i]) == 0;
		if (end(ok) < 0)
			return 1;
		for (int i = 0; i < nexp; i++) {
			store_forget(R.store, ids[i]);
			log_debug("retention_expire", "batch=%lld", (long long)ids[i]);
			gone_push(ids[i]);
		}
		metrics_retention(nexp, 0);
		R.pass_deleted += nexp;
	}
	return over && nexp < STEP_EXPIRE;
}

int64_t retention_tick(void)
{
	if (!R.db)
		return -1;
	int64_t now = now_mono_ms();
	if (R.next_ms > now)
		return R.next_ms;
	if (store_dirty(R.store))
		return now + 10; /* the loop commits first; look again next turn */
	if (R.ngone) {
		if (delete_rows() < 0)
			R.next_ms = now + 1000; /* the database is unwell: do not spin */
		return R.next_ms;
	}
	if (!R.orphans_done) {
		find_orphans();
		return R.next_ms;
	}
	if (R.ttl_ms < 0) {
		R.next_ms = now + 3600 * 1000;
		return R.next_ms;
	}
	if (!R.in_pass) {
		R.in_pass = 1;
		R.cursor = 0;
		R.pass_deleted = 0;
		R.cutoff_ms = now_unix_ms() - R.ttl_ms;
	}
	if (expire_some()) {
		R.in_pass = 0;
		if (R.pass_deleted)
			log_info("retention_pass", "expired_batches=%lld", (long long)R.pass_deleted);
		if (!R.ngone)
			R.next_ms = now + R.interval_ms;
	}
	return R.next_ms;
}

/* ---- DELETE /v1/batches/{id}?purge=true ---- */

struct purge {
	int64_t id, size;
};

static void purged(struct http_req *r, const struct purge *p)
{
	gone_push(p->id);
	R.next_ms = now_mono_ms();
	metrics_retention(1, 0);
	log_info("purge", "batch=%lld items=%lld", (long long)p->id, (long long)p->size);
	struct buf o = {0};
	buf_printf(&o, "{\"id\":%lld,\"purged\":true,\"items\":%lld}", (long long)p->id, (long long)p->size);
	http_reply(r, 200, &o);
}

int retention_delete(struct http_req *r, int64_t id)
{
	const char *v = http_query(r, "purge");
	if (!v || !strcmp(v, "false") || !strcmp(v, "0"))
		return 0;
	if (strcmp(v, "true") && strcmp(v, "1")) {
		http_error(r, 400, "invalid_request", "query parameter purge must be true or false, got \"%s\"", v);
		return 1;
	}
	if (http_woken(r) != WAKE_NONE) {
		/* The turn's commit, which held the deletion of the row, is over. */
		struct purge *p = http_data(r);
		if (http_woken(r) == WAKE_COMMIT && http_commit_ok(r))
			purged(r, p);
		else
			http_error(r, 503, "unavailable", "the database failed; see the server log and retry");
		return 1;
	}
	struct batch b;
	int found = store_batch_get(R.store, id, &b);
	if (found < 0) {
		http_error(r, 503, "unavailable", "the database failed; see the server log and retry");
		return 1;
	}
	if (!found) {
		http_error(r, 404, "not_found", "there is no batch %lld", (long long)id);
		return 1;
	}
	if (b.counts[FS_PENDING] + b.counts[FS_RUNNING] > 0) {
		/* A plain cancel leaves running items to finish: name the one
		 * that ends them when some are running. */
		http_error(r, 409, "conflict",
			   "batch %lld is not done (%lld pending, %lld running): cancel it first "
			   "(%s) or wait for it",
			   (long long)id, (long long)b.counts[FS_PENDING], (long long)b.counts[FS_RUNNING],
			   b.counts[FS_RUNNING] > 0 ? "DELETE ?terminate=true, which stops its running items too"
						    : "DELETE without purge");
		return 1;
	}
	/* Inside the turn's transaction when one is open (then answered after
	 * its commit), else on its own. */
	store_read_end(R.store);
	if (del_batch(id) < 0) {
		http_error(r, 503, "unavailable", "the database failed; see the server log and retry");
		return 1;
	}
	store_forget(R.store, id);
	struct purge *p = malloc(sizeof *p);
	if (!p)
		abort();
	*p = (struct purge){.id = id, .size = b.size};
	http_set_data(r, p, free);
	if (store_dirty(R.store))
		http_park_commit(r);
	else
		purged(r, p);
	return 1;
}
