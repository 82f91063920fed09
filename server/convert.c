/* convert.c - migration 3's conversion of version 2's futures table (see
 * convert.h): one pass in (batch_id, idx) order builds each batch's segments
 * and seg_args rows, a second in (batch_id, done_seq) order packs the done
 * items' outcomes into groups (formats in segfmt.h). Runs inside the
 * caller's transaction, so an error leaves the caller to roll back. */
#include "convert.h"

#include <sqlite3.h>
#include <stdint.h>

#include "buf.h"
#include "log.h"
#include "segfmt.h"
#include "store.h"

static int db_error(sqlite3 *db, const char *op)
{
	log_error("db_migrate", "msg=\"converting futures: %s: %s\"", op, sqlite3_errmsg(db));
	return -1;
}

static int prepare(sqlite3 *db, const char *q, sqlite3_stmt **st)
{
	if (sqlite3_prepare_v2(db, q, -1, st, NULL) != SQLITE_OK) {
		*st = NULL;
		return db_error(db, q);
	}
	return 0;
}

/* Runs an INSERT of (batch_id, key, blob) and resets it. b is not empty. */
static int insert_blob(sqlite3 *db, sqlite3_stmt *st, const char *op, int64_t batch, int64_t key,
		       const struct buf *b)
{
	int rc = 0;
	if (sqlite3_bind_int64(st, 1, batch) != SQLITE_OK ||
	    sqlite3_bind_int64(st, 2, key) != SQLITE_OK ||
	    sqlite3_bind_blob64(st, 3, b->data, b->len, SQLITE_STATIC) != SQLITE_OK ||
	    sqlite3_step(st) != SQLITE_DONE)
		rc = db_error(db, op);
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	return rc;
}

/* Whether the table exists: 1, 0, or -1 (logged). */
static int table_exists(sqlite3 *db, const char *name)
{
	sqlite3_stmt *st;
	if (prepare(db, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1", &st) < 0)
		return -1;
	int rc = sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC) == SQLITE_OK ? sqlite3_step(st)
										  : SQLITE_ERROR;
	int found = rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : db_error(db, "sqlite_master");
	sqlite3_finalize(st);
	return found;
}

/* The items of one segment being gathered. */
struct segment {
	int64_t batch, seg;
	int n;
	struct seg_item it[SEG_ITEMS];
	struct buf items, args;
};

/* Writes the segment's rows if it holds items, and empties it. */
static int flush_segment(sqlite3 *db, sqlite3_stmt *ins_items, sqlite3_stmt *ins_args,
			 struct segment *sg, int64_t *nsegs)
{
	if (sg->n == 0)
		return 0;
	buf_reset(&sg->items);
	segfmt_put_items(&sg->items, sg->it, sg->n);
	if (insert_blob(db, ins_items, "insert segments", sg->batch, sg->seg, &sg->items) < 0 ||
	    insert_blob(db, ins_args, "insert seg_args", sg->batch, sg->seg, &sg->args) < 0)
		return -1;
	(*nsegs)++;
	sg->n = 0;
	buf_reset(&sg->args);
	return 0;
}

/* Segments and seg_args: every row, in (batch_id, idx) order. */
static int convert_segments(sqlite3 *db, int64_t *nrows, int64_t *nsegs)
{
	sqlite3_stmt *sel = NULL, *ins_items = NULL, *ins_args = NULL;
	struct segment sg = {0};
	int64_t next = 0; /* the index the batch's next row must have */
	int rc = -1, step;
	if (prepare(db,
		    "SELECT batch_id, idx, state, args, attempts, worker, started_at, done_seq"
		    " FROM futures ORDER BY batch_id, idx",
		    &sel) < 0 ||
	    prepare(db, "INSERT INTO segments (batch_id, seg, items) VALUES (?1, ?2, ?3)",
		    &ins_items) < 0 ||
	    prepare(db, "INSERT INTO seg_args (batch_id, seg, args) VALUES (?1, ?2, ?3)", &ins_args) <
		0)
		goto out;
	while ((step = sqlite3_step(sel)) == SQLITE_ROW) {
		int64_t batch = sqlite3_column_int64(sel, 0), idx = sqlite3_column_int64(sel, 1);
		if (*nrows == 0 || batch != sg.batch) {
			if (flush_segment(db, ins_items, ins_args, &sg, nsegs) < 0)
				goto out;
			sg.batch = batch;
			next = 0;
		}
		if (idx != next) {
			log_error("db_migrate",
				  "msg=\"converting futures: batch %lld has no future %lld\"",
				  (long long)batch, (long long)next);
			goto out;
		}
		if (idx % SEG_ITEMS == 0) {
			if (flush_segment(db, ins_items, ins_args, &sg, nsegs) < 0)
				goto out;
			sg.seg = idx / SEG_ITEMS;
		}
		int state = sqlite3_column_int(sel, 2);
		int64_t done_seq =
		    sqlite3_column_type(sel, 7) == SQLITE_NULL ? 0 : sqlite3_column_int64(sel, 7);
		/* Done items, and only they, have a cursor: the segment would
		 * otherwise point at an outcome that is not there. */
		if (state < 0 || state >= FS_NSTATES || (state >= FS_FINISHED) != (done_seq > 0)) {
			log_error("db_migrate",
				  "msg=\"converting futures: batch %lld future %lld has state %d"
				  " and done_seq %lld\"",
				  (long long)batch, (long long)idx, state, (long long)done_seq);
			goto out;
		}
		struct seg_item *it = &sg.it[sg.n++];
		it->state = (uint8_t)state;
		it->attempts = sqlite3_column_int64(sel, 4);
		it->worker = sqlite3_column_type(sel, 5) == SQLITE_NULL ? 0 : sqlite3_column_int64(sel, 5);
		it->started_ms =
		    sqlite3_column_type(sel, 6) == SQLITE_NULL ? -1 : sqlite3_column_int64(sel, 6);
		it->done_seq = done_seq;
		const char *args = (const char *)sqlite3_column_text(sel, 3);
		size_t len = (size_t)sqlite3_column_bytes(sel, 3);
		buf_add(&sg.args, args ? args : "", args ? len : 0);
		buf_addc(&sg.args, '\n');
		(*nrows)++;
		next++;
	}
	if (step != SQLITE_DONE) {
		db_error(db, "read futures");
		goto out;
	}
	rc = flush_segment(db, ins_items, ins_args, &sg, nsegs);
out:
	sqlite3_finalize(sel);
	sqlite3_finalize(ins_items);
	sqlite3_finalize(ins_args);
	buf_free(&sg.items);
	buf_free(&sg.args);
	return rc;
}

/* The outcome group being gathered. */
struct group {
	int64_t batch, last_seq;
	int n;
	struct buf recs;
};

/* Writes the group if it holds records, and empties it. */
static int flush_group(sqlite3 *db, sqlite3_stmt *ins, struct group *g, int64_t *ngroups)
{
	if (g->n == 0)
		return 0;
	if (insert_blob(db, ins, "insert outcomes", g->batch, g->last_seq, &g->recs) < 0)
		return -1;
	(*ngroups)++;
	g->n = 0;
	buf_reset(&g->recs);
	return 0;
}

/* Outcomes: the done rows, each batch's in completion order. */
static int convert_outcomes(sqlite3 *db, int64_t *ngroups)
{
	sqlite3_stmt *sel = NULL, *ins = NULL;
	struct group g = {0};
	struct buf rec = {0};
	int64_t nrecs = 0;
	int rc = -1, step;
	if (prepare(db,
		    "SELECT batch_id, idx, state, result, error_type, error, attempts, worker,"
		    " started_at, finished_at, done_seq FROM futures"
		    " WHERE done_seq IS NOT NULL ORDER BY batch_id, done_seq",
		    &sel) < 0 ||
	    prepare(db, "INSERT INTO outcomes (batch_id, last_seq, recs) VALUES (?1, ?2, ?3)", &ins) <
		0)
		goto out;
	while ((step = sqlite3_step(sel)) == SQLITE_ROW) {
		int64_t batch = sqlite3_column_int64(sel, 0);
		if (nrecs == 0 || batch != g.batch) {
			if (flush_group(db, ins, &g, ngroups) < 0)
				goto out;
			g.batch = batch;
		}
		struct future f = {0};
		f.index = sqlite3_column_int64(sel, 1);
		f.state = (enum fstate)sqlite3_column_int(sel, 2);
		if (f.state == FS_FINISHED) {
			f.result = (const char *)sqlite3_column_text(sel, 3);
			f.result_len = (size_t)sqlite3_column_bytes(sel, 3);
		} else if (f.state == FS_FAILED) {
			f.error = (const char *)sqlite3_column_text(sel, 5);
		}
		int error_type = sqlite3_column_int(sel, 4); /* NULL reads as 0 */
		if (error_type < FE_NONE || error_type > FE_WORKER_DIED) {
			log_error("db_migrate",
				  "msg=\"converting futures: batch %lld future %lld has error_type %d\"",
				  (long long)batch, (long long)f.index, error_type);
			goto out;
		}
		f.error_type = (enum ferr)error_type;
		f.attempts = sqlite3_column_int64(sel, 6);
		f.worker = sqlite3_column_type(sel, 7) == SQLITE_NULL ? 0 : sqlite3_column_int64(sel, 7);
		f.started_ms =
		    sqlite3_column_type(sel, 8) == SQLITE_NULL ? -1 : sqlite3_column_int64(sel, 8);
		f.finished_ms =
		    sqlite3_column_type(sel, 9) == SQLITE_NULL ? -1 : sqlite3_column_int64(sel, 9);
		f.done_seq = sqlite3_column_int64(sel, 10);

		buf_reset(&rec);
		segfmt_put_outcome(&rec, &f);
		/* Past its first record a group stays within GROUP_BYTES. */
		if (g.n > 0 && g.recs.len + rec.len > GROUP_BYTES &&
		    flush_group(db, ins, &g, ngroups) < 0)
			goto out;
		buf_add(&g.recs, rec.data, rec.len);
		g.n++;
		g.last_seq = f.done_seq;
		nrecs++;
		if (g.n == GROUP_RECS && flush_group(db, ins, &g, ngroups) < 0)
			goto out;
	}
	if (step != SQLITE_DONE) {
		db_error(db, "read done futures");
		goto out;
	}
	rc = flush_group(db, ins, &g, ngroups);
out:
	sqlite3_finalize(sel);
	sqlite3_finalize(ins);
	buf_free(&g.recs);
	buf_free(&rec);
	return rc;
}

int convert_v2_futures(struct sqlite3 *db)
{
	int found = table_exists(db, "futures");
	if (found <= 0)
		return found;
	int64_t nrows = 0, nsegs = 0, ngroups = 0;
	if (convert_segments(db, &nrows, &nsegs) < 0 || convert_outcomes(db, &ngroups) < 0)
		return -1;
	/* Every statement reading futures is finalized: it can go. */
	sqlite3_stmt *st;
	if (prepare(db, "DROP TABLE futures", &st) < 0)
		return -1;
	int rc = sqlite3_step(st) == SQLITE_DONE ? 0 : db_error(db, "drop futures");
	sqlite3_finalize(st);
	if (rc == 0 && nrows > 0)
		log_info("db_convert", "futures=%lld segments=%lld outcomes=%lld", (long long)nrows,
			 (long long)nsegs, (long long)ngroups);
	return rc;
}
