/* test_store.c - the SQLite store on a real database file in the test's
 * temporary directory. */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "harness.h"
#include "schema.h"
#include "segfmt.h"
#include "store.h"

static struct store *open_db(void)
{
	struct store *s = store_open("./db/forkpool.db", 0);
	CHECK(s != NULL);
	return s;
}

/* A batch of n items with arguments [i]. */
static int64_t add_batch(struct store *s, const char *task, int n)
{
	struct batch b = {.size = n, .chunksize = 2, .created_ms = 1000};
	snprintf(b.task, sizeof b.task, "%s", task);
	CHECK_INT(store_batch_begin(s, &b), 0);
	for (int i = 0; i < n; i++) {
		char args[32];
		int len = snprintf(args, sizeof args, "[%d]", i);
		CHECK_INT(store_batch_item(s, b.id, i, args, (size_t)len), 0);
	}
	CHECK_INT(store_batch_end(s, 1), 0);
	CHECK_INT(store_commit(s), 0);
	return b.id;
}

static struct batch get(struct store *s, int64_t id)
{
	struct batch b;
	CHECK_INT(store_batch_get(s, id, &b), 1);
	return b;
}

struct collect {
	int n;
	int64_t idx[64], seq[64];
	enum fstate state[64];
	char text[64][64];
};

static void on_future(void *arg, const struct future *f)
{
	struct collect *c = arg;
	c->idx[c->n] = f->index;
	c->seq[c->n] = f->done_seq;
	c->state[c->n] = f->state;
	snprintf(c->text[c->n], sizeof c->text[0], "%s",
		 f->result ? f->result : f->error ? f->error : "");
	c->n++;
}

TEST(store_creates_database_with_schema_version)
{
	struct store *s = open_db();
	store_close(s);
	sqlite3 *db;
	CHECK_INT(sqlite3_open("./db/forkpool.db", &db), SQLITE_OK);
	sqlite3_stmt *st;
	CHECK_INT(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL), SQLITE_OK);
	CHECK_INT(sqlite3_step(st), SQLITE_ROW);
	CHECK(sqlite3_column_int(st, 0) >= 1);
	sqlite3_finalize(st);
	CHECK_INT(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL), SQLITE_OK);
	CHECK_INT(sqlite3_step(st), SQLITE_ROW);
	CHECK_STR((const char *)sqlite3_column_text(st, 0), "wal");
	sqlite3_finalize(st);
	CHECK_INT(sqlite3_prepare_v2(db, "PRAGMA page_size", -1, &st, NULL), SQLITE_OK);
	CHECK_INT(sqlite3_step(st), SQLITE_ROW);
	CHECK_INT(sqlite3_column_int(st, 0), STORE_PAGE_SIZE);
	sqlite3_finalize(st);
	sqlite3_close(db);
}

TEST(store_batch_is_stored_with_pending_futures)
{
	struct store *s = open_db();
	int64_t id = add_batch(s, "square", 5);
	struct batch b = get(s, id);
	CHECK_STR(b.task, "square");
	CHECK_INT(b.size, 5);
	CHECK_INT(b.counts[FS_PENDING], 5);
	CHECK_INT(b.finished_ms, -1);
	struct collect c = {0};
	CHECK_INT(store_futures(s, id, 0, -1, -1, on_future, &c), 5);
	CHECK_INT(c.idx[4], 4);
	CHECK_INT(c.state[0], FS_PENDING);
	store_close(s);
}

TEST(store_undone_batch_leaves_nothing)
{
	struct store *s = open_db();
	struct batch b = {.size = 2, .chunksize = 1, .created_ms = 1};
	strcpy(b.task, "square");
	CHECK_INT(store_batch_begin(s, &b), 0);
	CHECK_INT(store_batch_item(s, b.id, 0, "[1]", 3), 0);
	CHECK_INT(store_batch_end(s, 0), 0);
	CHECK_INT(store_commit(s), 0);
	struct batch out;
	CHECK_INT(store_batch_get(s, b.id, &out), 0);
	struct collect c = {0};
	CHECK_INT(store_futures(s, b.id, 0, -1, -1, on_future, &c), 0);
	/* Nobody saw its id: the next batch has it, not a gap. */
	CHECK_INT(add_batch(s, "square", 1), b.id);
	store_close(s);
}

static int64_t count_rows(struct store *s, const char *q, int64_t id)
{
	sqlite3_stmt *st;
	CHECK_INT(sqlite3_prepare_v2(store_sqlite(s), q, -1, &st, NULL), SQLITE_OK);
	sqlite3_bind_int64(st, 1, id);
	CHECK_INT(sqlite3_step(st), SQLITE_ROW);
	int64_t n = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return n;
}

/* A submission taken back in the middle of a transaction: what it wrote
 * (its row, its arguments, the segments the full cache already wrote out,
 * its idempotency key) goes, and the submission before it stays. */
TEST(store_undone_batch_takes_back_only_its_own_rows)
{
	struct store *s = open_db();
	struct batch a = {.size = 3, .chunksize = 1, .created_ms = 1};
	strcpy(a.task, "square");
	CHECK_INT(store_batch_begin(s, &a), 0);
	for (int i = 0; i < 3; i++) {
		char args[16];
		int n = snprintf(args, sizeof args, "[%d]", i);
		CHECK_INT(store_batch_item(s, a.id, i, args, (size_t)n), 0);
	}
	CHECK_INT(store_batch_end(s, 1), 0);
	const int64_t big = 300 * 256; /* more segments than the cache holds */
	struct batch b = {.size = big, .chunksize = 1, .created_ms = 1};
	strcpy(b.task, "square");
	CHECK_INT(store_batch_begin(s, &b), 0);
	static const unsigned char hash[32];
	CHECK_INT(store_idem_put(s, "key-b", hash, b.id, 1), 0);
	for (int64_t i = 0; i < big; i++)
		CHECK_INT(store_batch_item(s, b.id, i, "[7]", 3), 0);
	CHECK(count_rows(s, "SELECT count(*) FROM segments WHERE batch_id = ?1", b.id) > 0);
	CHECK_INT(store_batch_end(s, 0), 0);
	CHECK_INT(store_commit(s), 0);
	CHECK_INT(count_rows(s, "SELECT count(*) FROM batches WHERE id = ?1", b.id), 0);
	CHECK_INT(count_rows(s, "SELECT count(*) FROM segments WHERE batch_id = ?1", b.id), 0);
	CHECK_INT(count_rows(s, "SELECT count(*) FROM seg_args WHERE batch_id = ?1", b.id), 0);
	CHECK_INT(count_rows(s, "SELECT count(*) FROM idempotency WHERE batch_id = ?1", b.id), 0);
	int64_t found = 0;
	CHECK_INT(store_idem_get(s, "key-b", hash, &found), 0);
	/* a is whole, read from the file */
	store_forget(s, a.id);
	struct batch out;
	CHECK_INT(store_batch_get(s, a.id, &out), 1);
	CHECK_INT(out.counts[FS_PENDING], 3);
	int64_t idx[4];
	struct buf args = {0};
	CHECK_INT(store_claim(s, a.id, 4, 7, 2000, idx, &args), 3);
	CHECK_STR(args.data, "[0]\n[1]\n[2]\n");
	CHECK_INT(add_batch(s, "square", 1), b.id); /* b's id was never given */
	buf_free(&args);
	store_close(s);
}

TEST(store_claim_takes_lowest_pending_and_counts_them)
{
	struct store *s = open_db();
	int64_t id = add_batch(s, "square", 5);
	int64_t idx[8];
	struct buf args = {0};
	CHECK_INT(store_claim(s, id, 3, 42, 2000, idx, &args), 3);
	CHECK_INT(idx[0], 0);
	CHECK_INT(idx[2], 2);
	CHECK_STR(args.data, "[0]\n[1]\n[2]\n");
	struct batch b = get(s, id);
	CHECK_INT(b.counts[FS_PENDING], 2);
	CHECK_INT(b.counts[FS_RUNNING], 3);
	buf_reset(&args);
	CHECK_INT(store_claim(s, id, 10, 43, 2000, idx, &args), 2);
	CHECK_INT(idx[0], 3);
	CHECK_INT(store_claim(s, id, 10, 43, 2000, idx, &args), 0);
	buf_free(&args);
	store_close(s);
}

TEST(store_results_finish_the_batch_in_completion_order)
{
	struct store *s = open_db();
	int64_t id = add_batch(s, "square", 3);
	int64_t idx[4];
	struct buf args = {0};
	CHECK_INT(store_claim(s, id, 3, 42, 2000, idx, &args), 3);
	buf_free(&args);
	CHECK_INT(store_finish(s, id, 2, "4", 1, 2000, 2100), 0);
	CHECK_INT(store_fail(s, id, 0, FE_TASK, "boom", 2000, 2200), 0);
	CHECK(get(s, id).finished_ms < 0);
	CHECK_INT(store_finish(s, id, 1, "1", 1, 2000, 2300), 0);
	CHECK_INT(store_commit(s), 0);
	struct batch b = get(s, id);
	CHECK_INT(b.counts[FS_FINISHED], 2);
	CHECK_INT(b.counts[FS_FAILED], 1);
	CHECK_INT(b.counts[FS_RUNNING], 0);
	CHECK_INT(b.finished_ms, 2300);
	struct collect c = {0};
	CHECK_INT(store_futures(s, id, 1, 0, -1, on_future, &c), 3);
	CHECK_INT(c.idx[0], 2);
	CHECK_INT(c.idx[1], 0);
	CHECK_INT(c.idx[2], 1);
	CHECK_STR(c.text[1], "boom");
	/* The cursor resumes after an item. */
	struct collect d = {0};
	CHECK_INT(store_futures(s, id, 1, c.seq[0], -1, on_future, &d), 2);
	CHECK_INT(d.idx[0], 0);
	store_close(s);
}

TEST(store_result_for_a_future_not_running_is_ignored)
{
	struct store *s = open_db();
	int64_t id = add_batch(s, "square", 2);
	CHECK_INT(store_finish(s, id, 0, "0", 1, 1, 2), 0); /* still pending */
	struct batch b = get(s, id);
	CHECK_INT(b.counts[FS_PENDING], 2);
	CHECK_INT(b.counts[FS_FINISHED], 0);
	store_close(s);
}

TEST(store_requeue_puts_a_future_back_without_counting_the_attempt)
{
	struct store *s = open_db();
	int64_t id = add_batch(s, "square", 2);
	int64_t idx[2];
	struct buf args = {0};
	CHECK_INT(store_claim(s, id, 2, 42, 2000, idx, &args), 2);
	CHECK_INT(store_requeue(s, id, 1), 0);
	CHECK_INT(get(s, id).counts[FS_PENDING], 1);
	buf_reset(&args);
	CHECK_INT(store_claim(s, id, 2, 43, 2000, idx, &args), 1);
	CHECK_INT(idx[0], 1);
	CHECK_INT(store_commit(s), 0);
	buf_free(&args);
	store_close(s);
}

TEST(store_reopen_requeues_running_futures_and_keeps_results)
{
	struct store *s = open_db();
	int64_t id = add_batch(s, "square", 3);
	int64_t idx[3];
	struct buf args = {0};
	CHECK_INT(store_claim(s, id, 3, 42, 2000, idx, &args), 3);
	CHECK_INT(store_finish(s, id, 0, "0", 1, 2000, 2001), 0);
	CHECK_INT(store_commit(s), 0);
	buf_free(&args);
	store_close(s);

	s = open_db();
	struct batch b = get(s, id);
	CHECK_INT(b.counts[FS_FINISHED], 1);
	CHECK_INT(b.counts[FS_RUNNING], 0);
	CHECK_INT(b.counts[FS_PENDING], 2);
	int64_t *ids;
	size_t n;
	CHECK_INT(store_pending_batches(s, &ids, &n), 0);
	CHECK_INT(n, 1);
	CHECK_INT(ids[0], id);
	free(ids);
	struct collect c = {0};
	CHECK_INT(store_futures(s, id, 0, -1, -1, on_future, &c), 3);
	CHECK_STR(c.text[0], "0");
	CHECK_INT(c.state[1], FS_PENDING);
	/* Completion cursors keep growing across restarts. */
	CHECK_INT(store_claim(s, id, 1, 7, 3000, idx, &(struct buf){0}), 1);
	CHECK_INT(store_finish(s, id, 1, "1", 1, 3000, 3001), 0);
	/* Completion order shows only what is committed: a failed commit
	 * could otherwise take back a cursor a client was given. */
	struct collect early = {0};
	CHECK_INT(store_futures(s, id, 1, 0, -1, on_future, &early), 1);
	CHECK_INT(store_commit(s), 0);
	struct collect d = {0};
	CHECK_INT(store_futures(s, id, 1, 0, -1, on_future, &d), 2);
	CHECK(d.seq[1] > d.seq[0]);
	store_close(s);
}

struct ids {
	int n;
	int64_t id[8];
};

static void on_batch(void *arg, const struct batch *bt)
{
	struct ids *got = arg;
	got->id[got->n++] = bt->id;
}

TEST(store_lists_batches_newest_first_with_a_cursor)
{
	struct store *s = open_db();
	int64_t a = add_batch(s, "square", 1), b = add_batch(s, "square", 1), c = add_batch(s, "echo", 1);
	struct ids got = {0};
	CHECK_INT(store_batch_list(s, 0, 2, on_batch, &got), 2);
	CHECK_INT(got.id[0], c);
	CHECK_INT(got.id[1], b);
	got.n = 0;
	CHECK_INT(store_batch_list(s, b, 10, on_batch, &got), 1);
	CHECK_INT(got.id[0], a);
	store_close(s);
}


/* ---- a version 2 database (one futures row per item), converted into
 * segments and outcome groups when store_open migrates it (convert.c) ---- */

#define V2_SIZE 600	    /* batch 1; batch 2 has 3 items */
#define V2_RUNNING 301	    /* the one item left running */
#define V2_BIG (400 * 1024) /* three results this long split a group by bytes */

/* An item as its version 2 futures row holds it; worker 0, times -1,
 * done_seq 0 and error_type 0 stand for NULL. text is the result
 * (finished) or the message (failed). */
struct v2_item {
	int state, error_type;
	int64_t attempts, worker, started, finished, done_seq;
	struct buf text;
};

static void v2_item(int64_t batch, int64_t i, struct v2_item *it)
{
	buf_reset(&it->text);
	it->error_type = 0;
	it->attempts = it->worker = it->done_seq = 0;
	it->started = it->finished = -1;
	if (batch == 2) {
		/* Its cursors are odd, batch 1's even: completions interleave. */
		it->state = i == 0 ? FS_FINISHED : i == 1 ? FS_FAILED : FS_PENDING;
		if (it->state == FS_PENDING)
			return;
		buf_adds(&it->text, i == 0 ? "\"two\"" : "slow");
		it->error_type = i == 1 ? FE_TIMEOUT : 0;
		it->attempts = 1 + i;
		it->worker = 300 + i;
		it->started = 8000 + i;
		it->finished = 8100 + i;
		it->done_seq = i == 0 ? 3 : 1;
		return;
	}
	if (i == V2_RUNNING) {
		it->state = FS_RUNNING;
		it->attempts = 1;
		it->worker = 4242;
		it->started = 9000;
		return;
	}
	switch (i % 5) {
	case 0:
		it->state = FS_FINISHED;
		/* Done in reverse index order: the first group ends for its
		 * bytes before 450, the next for its count (256). */
		if (i >= 450 && i % 50 == 0) {
			buf_addc(&it->text, '"');
			for (int k = 0; k < V2_BIG; k++)
				buf_addc(&it->text, (char)('a' + (i / 50 + k) % 26));
			buf_addc(&it->text, '"');
		} else {
			buf_printf(&it->text, "{\"square\":%lld}", (long long)(i * i));
		}
		break;
	case 1:
		it->state = FS_FAILED;
		it->error_type = FE_TASK + (int)(i % 3);
		buf_printf(&it->text, "boom at %lld", (long long)i);
		break;
	case 2:
		it->state = FS_CANCELLED;
		break;
	default:
		/* Some are back to pending after a run that timed out (retried). */
		it->state = FS_PENDING;
		it->attempts = i % 10 == 8;
		return;
	}
	if (it->state != FS_CANCELLED || i % 10 == 7) { /* it ran */
		it->attempts = 1 + i % 2;
		it->worker = 100 + i % 7;
		it->started = 5000 + i;
	}
	it->finished = 6000 + i;
	it->done_seq = 2 * (V2_SIZE - i); /* reverse index order */
}

/* Writes batches 1 and 2 into a new version 2 database at path. */
static void v2_create(const char *path)
{
	sqlite3 *db;
	sqlite3_stmt *fut, *bat;
	CHECK_INT(sqlite3_open(path, &db), SQLITE_OK);
	/* What servers before 2 KiB pages made. */
	CHECK_INT(sqlite3_exec(db, "PRAGMA page_size = 4096", NULL, NULL, NULL), SQLITE_OK);
	CHECK_INT(sqlite3_exec(db, schema_migrations[0], NULL, NULL, NULL), SQLITE_OK);
	CHECK_INT(sqlite3_exec(db, schema_migrations[1], NULL, NULL, NULL), SQLITE_OK);
	CHECK_INT(sqlite3_exec(db, "PRAGMA user_version = 2; BEGIN", NULL, NULL, NULL), SQLITE_OK);
	CHECK_INT(sqlite3_prepare_v2(db,
				     "INSERT INTO futures (batch_id, idx, state, args, result, error_type,"
				     " error, attempts, worker, started_at, finished_at, done_seq)"
				     " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
				     -1, &fut, NULL),
		  SQLITE_OK);
	CHECK_INT(sqlite3_prepare_v2(db,
				     "INSERT INTO batches (id, task, size, chunksize, created_at, n_pending,"
				     " n_running, n_finished, n_failed, n_cancelled, retries)"
				     " VALUES (?1, 'square', ?2, 10, 1000, ?3, ?4, ?5, ?6, ?7, 1)",
				     -1, &bat, NULL),
		  SQLITE_OK);
	struct v2_item it = {0};
	int64_t max_seq = 0;
	for (int64_t b = 1; b <= 2; b++) {
		int64_t size = b == 1 ? V2_SIZE : 3, n[FS_NSTATES] = {0};
		for (int64_t i = 0; i < size; i++) {
			v2_item(b, i, &it);
			n[it.state]++;
			char args[32];
			int len = snprintf(args, sizeof args, "[%lld]", (long long)i);
			sqlite3_bind_int64(fut, 1, b);
			sqlite3_bind_int64(fut, 2, i);
			sqlite3_bind_int(fut, 3, it.state);
			sqlite3_bind_text(fut, 4, args, len, SQLITE_TRANSIENT);
			if (it.state == FS_FINISHED)
				sqlite3_bind_text(fut, 5, it.text.data, (int)it.text.len, SQLITE_STATIC);
			if (it.error_type)
				sqlite3_bind_int(fut, 6, it.error_type);
			if (it.state == FS_FAILED)
				sqlite3_bind_text(fut, 7, it.text.data, -1, SQLITE_STATIC);
			sqlite3_bind_int64(fut, 8, it.attempts);
			if (it.worker)
				sqlite3_bind_int64(fut, 9, it.worker);
			if (it.started >= 0)
				sqlite3_bind_int64(fut, 10, it.started);
			if (it.finished >= 0)
				sqlite3_bind_int64(fut, 11, it.finished);
			if (it.done_seq)
				sqlite3_bind_int64(fut, 12, it.done_seq);
			CHECK_INT(sqlite3_step(fut), SQLITE_DONE);
			sqlite3_reset(fut);
			sqlite3_clear_bindings(fut);
			if (it.done_seq > max_seq)
				max_seq = it.done_seq;
		}
		sqlite3_bind_int64(bat, 1, b);
		sqlite3_bind_int64(bat, 2, size);
		for (int k = 0; k < FS_NSTATES; k++)
			sqlite3_bind_int64(bat, 3 + k, n[k]);
		CHECK_INT(sqlite3_step(bat), SQLITE_DONE);
		sqlite3_reset(bat);
	}
	sqlite3_finalize(fut);
	sqlite3_finalize(bat);
	char q[96];
	snprintf(q, sizeof q, "UPDATE meta SET value = %lld WHERE key = 'done_seq'; COMMIT",
		 (long long)max_seq);
	CHECK_INT(sqlite3_exec(db, q, NULL, NULL, NULL), SQLITE_OK);
	CHECK_INT(sqlite3_close(db), SQLITE_OK);
	buf_free(&it.text);
}

/* The futures a store call gave, each checked against its v2_item. */
struct v2_seen {
	int64_t batch;
	int n;
	int64_t idx[V2_SIZE];
	struct v2_item want;
};

#define V2_CHECK(f, got, exp)                                                                    \
	do {                                                                                     \
		long long g_ = (long long)(got), e_ = (long long)(exp);                          \
		if (g_ != e_)                                                                    \
			FAILF("future %lld: %s == %lld, expected %lld", (long long)(f)->index,   \
			      #got, g_, e_);                                                     \
	} while (0)

static void v2_on_future(void *arg, const struct future *f)
{
	struct v2_seen *seen = arg;
	struct v2_item *w = &seen->want;
	CHECK(seen->n < V2_SIZE);
	seen->idx[seen->n++] = f->index;
	v2_item(seen->batch, f->index, w);
	if (w->state == FS_RUNNING) {
		/* store_open requeued it; as its worker's first (only) running
		 * item it keeps its attempt. */
		V2_CHECK(f, f->state, FS_PENDING);
		V2_CHECK(f, f->attempts, w->attempts);
		V2_CHECK(f, f->finished_ms, -1);
		V2_CHECK(f, f->done_seq, 0);
		return;
	}
	V2_CHECK(f, f->state, w->state);
	V2_CHECK(f, f->attempts, w->attempts);
	V2_CHECK(f, f->worker, w->worker);
	V2_CHECK(f, f->started_ms, w->started);
	V2_CHECK(f, f->finished_ms, w->finished);
	V2_CHECK(f, f->done_seq, w->done_seq);
	if (w->state == FS_FINISHED) {
		V2_CHECK(f, f->result_len, w->text.len);
		if (!f->result || memcmp(f->result, w->text.data, w->text.len) != 0)
			FAILF("future %lld: result %.40s, expected %.40s", (long long)f->index,
			      f->result ? f->result : "(null)", w->text.data);
	} else if (w->state == FS_FAILED) {
		V2_CHECK(f, f->error_type, w->error_type);
		CHECK_STR(f->error, w->text.data);
	}
}

TEST(store_converts_v2_futures)
{
	v2_create("./v2.db");
	struct store *s = store_open("./v2.db", 0);
	CHECK(s != NULL);

	/* Migrated, and the futures table is gone. */
	sqlite3_stmt *st;
	CHECK_INT(sqlite3_prepare_v2(store_sqlite(s),
				     "SELECT (SELECT count(*) FROM sqlite_master WHERE name = 'futures'),"
				     " (SELECT user_version FROM pragma_user_version),"
				     " (SELECT page_size FROM pragma_page_size)",
				     -1, &st, NULL),
		  SQLITE_OK);
	CHECK_INT(sqlite3_step(st), SQLITE_ROW);
	CHECK_INT(sqlite3_column_int(st, 0), 0);
	CHECK_INT(sqlite3_column_int(st, 1), schema_version);
	/* A database made with other pages keeps them. */
	CHECK_INT(sqlite3_column_int(st, 2), 4096);
	sqlite3_finalize(st);

	/* What batch 1 should read: its done items in completion order, and
	 * its pending ones (the running one among them now). */
	struct v2_seen seen = {.batch = 1};
	int64_t done[V2_SIZE], counts[FS_NSTATES] = {0};
	int ndone = 0;
	struct buf pending_args = {0};
	for (int64_t i = 0; i < V2_SIZE; i++) {
		v2_item(1, i, &seen.want);
		int state = seen.want.state == FS_RUNNING ? FS_PENDING : seen.want.state;
		counts[state]++;
		if (state == FS_PENDING)
			buf_printf(&pending_args, "[%lld]\n", (long long)i);
	}
	for (int64_t i = V2_SIZE - 1; i >= 0; i--) {
		v2_item(1, i, &seen.want);
		if (seen.want.state >= FS_FINISHED)
			done[ndone++] = i;
	}
	struct batch b = get(s, 1);
	CHECK_INT(b.size, V2_SIZE);
	for (int k = 0; k < FS_NSTATES; k++)
		CHECK_INT(b.counts[k], counts[k]);

	/* Every future, one at a time and in index order. */
	for (int64_t i = 0; i < V2_SIZE; i++) {
		seen.n = 0;
		CHECK_INT(store_future_get(s, 1, i, v2_on_future, &seen), 1);
		CHECK_INT(seen.idx[0], i);
	}
	CHECK_INT(store_future_get(s, 1, V2_SIZE, v2_on_future, &seen), 0);
	seen.n = 0;
	CHECK_INT(store_futures(s, 1, 0, -1, -1, v2_on_future, &seen), V2_SIZE);
	for (int i = 0; i < V2_SIZE; i++)
		CHECK_INT(seen.idx[i], i);
	seen.n = 0; /* a page across a segment boundary */
	CHECK_INT(store_futures(s, 1, 0, 250, 10, v2_on_future, &seen), 10);
	CHECK_INT(seen.idx[0], 251);
	CHECK_INT(seen.idx[9], 260);

	/* The done ones in completion order, all and from a cursor. */
	seen.n = 0;
	CHECK_INT(store_futures(s, 1, 1, 0, -1, v2_on_future, &seen), ndone);
	for (int k = 0; k < ndone; k++)
		CHECK_INT(seen.idx[k], done[k]);
	seen.n = 0;
	CHECK_INT(store_futures(s, 1, 1, 2 * (V2_SIZE - done[99]), 200, v2_on_future, &seen), 200);
	CHECK_INT(seen.idx[0], done[100]);
	CHECK_INT(seen.idx[199], done[299]);

	/* Batch 2, whose cursors interleave with batch 1's. */
	seen.batch = 2;
	seen.n = 0;
	CHECK_INT(store_futures(s, 2, 0, -1, -1, v2_on_future, &seen), 3);
	seen.n = 0;
	CHECK_INT(store_futures(s, 2, 1, 0, -1, v2_on_future, &seen), 2);
	CHECK_INT(seen.idx[0], 1);
	CHECK_INT(seen.idx[1], 0);

	/* The arguments: a claim takes every pending item, lowest first. */
	int64_t idx[V2_SIZE];
	struct buf args = {0};
	CHECK_INT(store_claim(s, 1, V2_SIZE, 77, 20000, idx, &args), counts[FS_PENDING]);
	CHECK_INT(args.len, pending_args.len);
	CHECK_STR(args.data, pending_args.data);
	CHECK_INT(store_commit(s), 0);
	store_close(s);
	buf_free(&args);
	buf_free(&pending_args);
	buf_free(&seen.want.text);
}

/* ---- the segment store: write-back cache, claims, cancels, uploads ---- */

/* Checks every future of the batch in submission order: index i is finished
 * with result i*i+1 when i % 3 != 0, else the state want0. */
struct sweep {
	int64_t next, bad;
	enum fstate want0;
	int64_t last_seq, prev_seq[4]; /* the last four cursors seen */
};

static void on_sweep(void *arg, const struct future *f)
{
	struct sweep *w = arg;
	char want[32];
	snprintf(want, sizeof want, "%lld", (long long)(f->index * f->index + 1));
	int ok = f->index == w->next;
	if (f->index % 3)
		ok = ok && f->state == FS_FINISHED && f->result_len == strlen(want) &&
		     !memcmp(f->result, want, f->result_len) && f->attempts == 1 && f->worker == 7 &&
		     f->finished_ms == 5000 + f->index && f->done_seq > 0;
	else
		ok = ok && f->state == w->want0;
	if (!ok && w->bad < 0)
		w->bad = f->index;
	w->next++;
}

TEST(store_a_batch_larger_than_the_segment_cache_keeps_every_state)
{
	/* 300 segments of 256: claims and results dirty more segments than
	 * the cache holds, so dirty ones are written back to make room. */
	enum { N = 300 * 256 + 17 };
	struct store *s = open_db();
	int64_t id = add_batch(s, "square", N);
	int64_t *idx = malloc(N * sizeof *idx);
	struct buf args = {0};
	CHECK_INT(store_claim(s, id, N, 7, 4000, idx, &args), N);
	CHECK_INT(idx[N - 1], N - 1);
	/* the arguments of the last item, from the last (partial) segment */
	char last[32];
	snprintf(last, sizeof last, "[%d]\n", N - 1);
	CHECK(args.len > strlen(last) && !strcmp(args.data + args.len - strlen(last), last));
	for (int64_t i = 0; i < N; i++) {
		if (i % 3 == 0)
			continue;
		char r[32];
		int len = snprintf(r, sizeof r, "%lld", (long long)(i * i + 1));
		CHECK_INT(store_finish(s, id, i, r, (size_t)len, 4000, 5000 + i), 0);
	}
	/* the rest go back to pending, their attempts given back */
	for (int64_t i = 0; i < N; i += 3)
		CHECK_INT(store_requeue(s, id, i), 0);
	CHECK_INT(store_commit(s), 0);
	store_close(s);

	s = open_db();
	struct batch b = get(s, id);
	CHECK_INT(b.counts[FS_FINISHED], N - (N + 2) / 3);
	CHECK_INT(b.counts[FS_PENDING], (N + 2) / 3);
	struct sweep w = {.bad = -1, .want0 = FS_PENDING};
	CHECK_INT(store_futures(s, id, 0, -1, -1, on_sweep, &w), N);
	CHECK_INT(w.bad, -1);
	/* the requeued ones are claimed again, lowest first, from every segment */
	buf_reset(&args);
	CHECK_INT(store_claim(s, id, N, 8, 6000, idx, &args), (N + 2) / 3);
	CHECK_INT(idx[0], 0);
	CHECK_INT(idx[1], 3);
	CHECK_INT(idx[(N + 2) / 3 - 1], (N - 1) / 3 * 3);
	CHECK_INT(store_claim(s, id, N, 8, 6000, idx, &args), 0);
	CHECK_INT(store_commit(s), 0);
	free(idx);
	buf_free(&args);
	store_close(s);
}

static void on_seq(void *arg, const struct future *f)
{
	struct sweep *w = arg;
	if (f->done_seq <= w->last_seq && w->bad < 0)
		w->bad = f->index;
	w->prev_seq[0] = w->prev_seq[1];
	w->prev_seq[1] = w->prev_seq[2];
	w->prev_seq[2] = w->prev_seq[3];
	w->prev_seq[3] = w->last_seq = f->done_seq;
	w->next++;
}

TEST(store_cancel_of_a_batch_gives_each_pending_item_its_own_cursor)
{
	enum { N = 1000 };
	struct store *s = open_db();
	int64_t id = add_batch(s, "square", N);
	int64_t idx[8];
	struct buf args = {0};
	CHECK_INT(store_claim(s, id, 2, 7, 4000, idx, &args), 2);
	CHECK_INT(store_finish(s, id, 0, "1", 1, 4000, 4001), 0);
	CHECK_INT(store_cancel_pending(s, id, N, 4100), N - 2);
	/* the running one is not cancelled by it, and finishes */
	CHECK_INT(store_finish(s, id, 1, "2", 1, 4000, 4200), 0);
	CHECK_INT(store_cancel_one(s, id, 5, 4300), 0); /* already cancelled */
	CHECK_INT(store_commit(s), 0);
	struct batch b = get(s, id);
	CHECK_INT(b.counts[FS_CANCELLED], N - 2);
	CHECK_INT(b.counts[FS_FINISHED], 2);
	CHECK(b.finished_ms >= 0);
	/* completion order: all N, cursors strictly increasing */
	struct sweep w = {.bad = -1};
	CHECK_INT(store_futures(s, id, 1, 0, -1, on_seq, &w), N);
	CHECK_INT(w.bad, -1);
	/* and a page from the middle starts after its cursor (the cancel's
	 * cursors are base + index: they need not be consecutive) */
	struct collect c = {0};
	CHECK_INT(store_futures(s, id, 1, w.prev_seq[0], 10, on_future, &c), 3);
	CHECK_INT(c.seq[0], w.prev_seq[1]);
	CHECK_INT(c.idx[2], 1); /* the last to complete */
	CHECK_INT(c.state[0], FS_CANCELLED);
	buf_free(&args);
	store_close(s);
}

TEST(store_upload_seal_refuses_an_upload_that_lost_rows)
{
	struct store *s = open_db();
	struct batch b = {.chunksize = 0, .created_ms = 1000};
	snprintf(b.task, sizeof b.task, "square");
	CHECK_INT(store_upload_begin(s, &b), 0);
	for (int i = 0; i < 600; i++)
		CHECK_INT(store_upload_item(s, b.id, i, "[1]", 3), 0);
	CHECK_INT(store_commit(s), 0);
	/* what a failed commit in the middle of the upload would have taken */
	CHECK_INT(sqlite3_exec(store_sqlite(s), "DELETE FROM seg_args WHERE seg = 1", NULL, NULL, NULL),
		  SQLITE_OK);
	CHECK_INT(store_upload_seal(s, b.id, 600, 10), -1);
	CHECK_INT(store_upload_abort(s, b.id), 0);
	CHECK_INT(store_commit(s), 0);
	struct batch out;
	CHECK_INT(store_batch_get(s, b.id, &out), 0);
	/* a whole one seals, and reads back */
	struct batch b2 = {.chunksize = 0, .created_ms = 1000};
	snprintf(b2.task, sizeof b2.task, "square");
	CHECK_INT(store_upload_begin(s, &b2), 0);
	for (int i = 0; i < 600; i++)
		CHECK_INT(store_upload_item(s, b2.id, i, "[1]", 3), 0);
	CHECK_INT(store_upload_item(s, b2.id, 7, "[1]", 3), -1); /* out of order */
	CHECK_INT(store_upload_seal(s, b2.id, 600, 10), 0);
	CHECK_INT(store_commit(s), 0);
	CHECK_INT(get(s, b2.id).counts[FS_PENDING], 600);
	store_close(s);
}

static void on_copy(void *arg, const struct future *f)
{
	struct future *out = arg;
	*out = *f;
	out->result = out->error = NULL; /* valid only in the callback */
}

TEST(store_restart_requeues_running_items_giving_back_all_but_each_workers_first)
{
	struct store *s = open_db();
	int64_t id = add_batch(s, "square", 600);
	int64_t idx[600];
	struct buf args = {0};
	CHECK_INT(store_claim(s, id, 250, 7, 4000, idx, &args), 250);
	CHECK_INT(store_claim(s, id, 250, 8, 4000, idx, &args), 250); /* crosses a segment */
	CHECK_INT(store_finish(s, id, 0, "0", 1, 4000, 4001), 0);
	CHECK_INT(store_commit(s), 0);
	store_close(s);
	s = open_db();
	struct batch b = get(s, id);
	CHECK_INT(b.counts[FS_RUNNING], 0);
	CHECK_INT(b.counts[FS_PENDING], 599);
	/* item 1 was worker 7's first running one, item 250 worker 8's */
	int64_t want[][2] = {{1, 1}, {2, 0}, {249, 0}, {250, 1}, {251, 0}, {499, 0}, {500, 0}};
	for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
		struct future got = {.index = -1};
		CHECK_INT(store_future_get(s, id, want[i][0], on_copy, &got), 1);
		CHECK_INT(got.index, want[i][0]);
		CHECK_INT(got.state, FS_PENDING);
		CHECK_INT(got.attempts, want[i][1]);
		CHECK_INT(got.worker, 0);
		CHECK_INT(got.started_ms, -1);
	}
	buf_free(&args);
	store_close(s);
}

TEST(store_refuses_a_database_another_server_has_open)
{
	struct store *s = open_db();
	int64_t id = add_batch(s, "square", 3);
	/* A second server on the same file (an old one still draining while
	 * its replacement starts) is refused and changes nothing. */
	CHECK(store_open("./db/forkpool.db", 0) == NULL);
	CHECK_INT(get(s, id).counts[FS_PENDING], 3);
	store_close(s);
	s = open_db(); /* free again once the first has closed */
	CHECK_INT(get(s, id).counts[FS_PENDING], 3);
	store_close(s);
}

struct seqs {
	int n;
	int64_t seq[1200], idx[1200];
};

static void on_seqs(void *arg, const struct future *f)
{
	struct seqs *q = arg;
	q->seq[q->n] = f->done_seq;
	q->idx[q->n++] = f->index;
}

TEST(store_completion_pages_resume_inside_groups_exactly)
{
	/* 600 results over three groups (256 a group), read back in pages of
	 * 7 from each page's cursor: the same as one read, whatever else is
	 * read in between, and a page asked for twice is the same page. */
	enum { N = 600 };
	struct store *s = open_db();
	int64_t id = add_batch(s, "square", N), other = add_batch(s, "square", 3);
	int64_t *idx = malloc(N * sizeof *idx);
	struct buf args = {0};
	CHECK_INT(store_claim(s, id, N, 7, 4000, idx, &args), N);
	CHECK_INT(store_claim(s, other, 3, 7, 4000, idx, &args), 3);
	for (int i = 0; i < N; i++) {
		int64_t k = (int64_t)(i * 7 % N); /* not in index order */
		CHECK_INT(store_finish(s, id, k, "1", 1, 4000, 5000), 0);
		if (i % 250 == 0)
			CHECK_INT(store_finish(s, other, i / 250, "2", 1, 4000, 5000), 0);
	}
	CHECK_INT(store_commit(s), 0);
	struct seqs *all = calloc(1, sizeof *all), *paged = calloc(1, sizeof *paged);
	CHECK_INT(store_futures(s, id, 1, 0, -1, on_seqs, all), N);
	int64_t after = 0;
	for (int page = 0; paged->n < N; page++) {
		int before = paged->n;
		int got = store_futures(s, id, 1, after, 7, on_seqs, paged);
		CHECK(got > 0);
		if (page % 5 == 0) { /* the same page again */
			struct seqs again = {0};
			CHECK_INT(store_futures(s, id, 1, after, 7, on_seqs, &again), got);
			CHECK_INT(again.seq[0], paged->seq[before]);
		}
		if (page % 3 == 0) { /* another batch's read in between */
			struct seqs o = {0};
			CHECK_INT(store_futures(s, other, 1, 0, 1, on_seqs, &o), 1);
		}
		after = paged->seq[paged->n - 1];
	}
	CHECK_INT(paged->n, N);
	for (int i = 0; i < N; i++) {
		CHECK_INT(paged->seq[i], all->seq[i]);
		CHECK_INT(paged->idx[i], all->idx[i]);
		CHECK_INT(all->idx[i], (int64_t)(i * 7 % N));
	}
	free(all);
	free(paged);
	free(idx);
	buf_free(&args);
	store_close(s);
}

TEST(store_a_batch_of_whole_segments_ends_at_its_last_item)
{
	/* 512 items fill two segments exactly: claims, reads and a cancel
	 * must stop at index 511 without looking for a third. */
	enum { N = 2 * 256 };
	struct store *s = open_db();
	int64_t id = add_batch(s, "square", N);
	int64_t idx[N + 1];
	struct buf args = {0};
	CHECK_INT(store_claim(s, id, N - 1, 7, 4000, idx, &args), N - 1);
	CHECK_INT(store_claim(s, id, 10, 7, 4000, idx, &args), 1);
	CHECK_INT(idx[0], N - 1);
	CHECK_INT(store_claim(s, id, 10, 7, 4000, idx, &args), 0);
	for (int i = 0; i < N; i += 2)
		CHECK_INT(store_finish(s, id, i, "1", 1, 4000, 5000), 0);
	for (int i = 1; i < N; i += 2)
		CHECK_INT(store_requeue(s, id, i), 0);
	CHECK_INT(store_cancel_pending(s, id, N, 6000), N / 2);
	CHECK_INT(store_commit(s), 0);
	struct seqs *q = calloc(1, sizeof *q);
	CHECK_INT(store_futures(s, id, 0, -1, -1, on_seqs, q), N);
	CHECK_INT(q->idx[N - 1], N - 1);
	q->n = 0;
	CHECK_INT(store_futures(s, id, 0, N - 2, -1, on_seqs, q), 1);
	CHECK_INT(store_futures(s, id, 0, N - 1, -1, on_seqs, q), 0);
	struct collect c = {0};
	CHECK_INT(store_future_get(s, id, N, on_future, &c), 0);
	CHECK_INT(store_future_get(s, id, N - 1, on_future, &c), 1);
	CHECK_INT(c.state[0], FS_CANCELLED);
	CHECK_INT(get(s, id).counts[FS_CANCELLED], N / 2);
	free(q);
	buf_free(&args);
	store_close(s);
}

/* ---- schema 4: fewer pages a commit (schema/004_fewer_pages.sql) ---- */

static int64_t meta_value(struct store *s, const char *key)
{
	sqlite3_stmt *st;
	CHECK_INT(sqlite3_prepare_v2(store_sqlite(s), "SELECT value FROM meta WHERE key = ?1", -1, &st,
				     NULL),
		  SQLITE_OK);
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	int64_t v = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : -1;
	sqlite3_finalize(st);
	return v;
}

static int wal_frames; /* the WAL's size in frames after the latest commit */

static int count_frames(void *arg, sqlite3 *db, const char *name, int frames)
{
	(void)arg, (void)db, (void)name;
	wal_frames = frames;
	return SQLITE_OK;
}

/* Frames (pages) the commit of what the store holds now writes. */
static int commit_frames(struct store *s)
{
	int before = wal_frames;
	CHECK_INT(store_commit(s), 0);
	return wal_frames - before;
}

TEST(store_a_submission_writes_three_pages_and_its_result_four)
{
	struct store *s = open_db();
	/* This connection's hook counts frames from now on, in place of the
	 * checkpointer's (store_close checkpoints). */
	sqlite3_wal_hook(store_sqlite(s), count_frames, NULL);
	int64_t idx[1];
	struct buf args = {0};
	/* One batch through first: the tables' first pages exist, and the
	 * completion cursors' bound is written. */
	int64_t warm = add_batch(s, "echo", 1);
	CHECK_INT(store_claim(s, warm, 1, 7, 2000, idx, &args), 1);
	CHECK_INT(store_finish(s, warm, 0, "1", 1, 2000, 2001), 0);
	CHECK_INT(store_commit(s), 0);
	struct batch b = {.size = 1, .chunksize = 1, .created_ms = 3000};
	strcpy(b.task, "echo");
	CHECK_INT(store_batch_begin(s, &b), 0);
	CHECK_INT(store_batch_item(s, b.id, 0, "[5]", 3), 0);
	CHECK_INT(store_batch_end(s, 1), 0);
	int first = commit_frames(s);
	printf("    submission: %d pages\n", first);
	CHECK(first >= 1 && first <= 3); /* batches, segments, seg_args */
	CHECK_INT(store_claim(s, b.id, 1, 7, 3001, idx, &args), 1);
	CHECK_INT(store_finish(s, b.id, 0, "5", 1, 3001, 3002), 0);
	int result = commit_frames(s);
	printf("    claim and result: %d pages\n", result);
	CHECK(result >= 1 && result <= 4); /* batches, segments, outcomes and its index */
	buf_free(&args);
	store_close(s);
}

TEST(store_completion_cursors_go_on_above_the_bound_after_a_restart)
{
	struct store *s = open_db();
	int64_t id = add_batch(s, "square", 3), idx[3];
	struct buf args = {0};
	CHECK_INT(store_claim(s, id, 3, 7, 2000, idx, &args), 3);
	CHECK_INT(store_finish(s, id, 0, "0", 1, 2000, 2001), 0);
	CHECK_INT(store_commit(s), 0);
	struct collect c = {0};
	CHECK_INT(store_futures(s, id, 1, -1, -1, on_future, &c), 1);
	int64_t bound = meta_value(s, "done_seq");
	CHECK(bound >= c.seq[0] + 65536);
	/* More results within the bound write no meta row. */
	CHECK_INT(store_finish(s, id, 1, "1", 1, 2000, 2002), 0);
	CHECK_INT(store_commit(s), 0);
	CHECK_INT(meta_value(s, "done_seq"), bound);
	store_close(s);

	s = open_db(); /* item 2 was running: it is pending again */
	CHECK_INT(store_claim(s, id, 3, 8, 2003, idx, &args), 1);
	CHECK_INT(store_finish(s, id, 2, "4", 1, 2003, 2004), 0);
	CHECK_INT(store_commit(s), 0);
	c.n = 0;
	CHECK_INT(store_futures(s, id, 1, -1, -1, on_future, &c), 3);
	CHECK_INT(c.idx[0], 0);
	CHECK_INT(c.idx[1], 1);
	CHECK_INT(c.idx[2], 2);
	CHECK(c.seq[0] < c.seq[1]);
	CHECK(c.seq[2] > bound); /* never a cursor the last run may have given */
	CHECK(meta_value(s, "done_seq") >= c.seq[2] + 65536);
	/* and the stream goes on from a cursor of the previous run */
	c.n = 0;
	CHECK_INT(store_futures(s, id, 1, c.seq[0], -1, on_future, &c), 2);
	buf_free(&args);
	store_close(s);
}

/* Runs sql with ?1 bound to b's bytes. */
static void insert_blob(sqlite3 *db, const char *sql, const struct buf *b)
{
	sqlite3_stmt *st;
	CHECK_INT(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
	sqlite3_bind_blob(st, 1, b->data, (int)b->len, SQLITE_STATIC);
	CHECK_INT(sqlite3_step(st), SQLITE_DONE);
	sqlite3_finalize(st);
}

/* A version 3 database (AUTOINCREMENT ids; segments and outcomes keyed by
 * batch_id) keeps its batches, items and id sequence through migration 4. */
TEST(store_migrates_a_v3_database_and_never_reuses_its_ids)
{
	sqlite3 *db;
	CHECK_INT(sqlite3_open("./v3.db", &db), SQLITE_OK);
	for (int v = 0; v < 3; v++)
		CHECK_INT(sqlite3_exec(db, schema_migrations[v], NULL, NULL, NULL), SQLITE_OK);
	CHECK_INT(sqlite3_exec(db, "PRAGMA user_version = 3", NULL, NULL, NULL), SQLITE_OK);
	/* Batches 1..5, then the newest deleted: the next id is 6, not 5. */
	for (int i = 1; i <= 5; i++)
		CHECK_INT(sqlite3_exec(db,
				       "INSERT INTO batches (task, size, chunksize, created_at, n_pending,"
				       " n_finished) VALUES ('square', 2, 1, 1000, 1, 1)",
				       NULL, NULL, NULL),
			  SQLITE_OK);
	CHECK_INT(sqlite3_exec(db, "DELETE FROM batches WHERE id = 5", NULL, NULL, NULL), SQLITE_OK);
	/* Batch 4: item 0 finished (cursor 9), item 1 pending. */
	struct seg_item it[2] = {{.state = FS_FINISHED, .attempts = 1, .worker = 77, .started_ms = 1500,
				  .done_seq = 9},
				 {.state = FS_PENDING, .started_ms = -1}};
	struct future f = {.index = 0, .state = FS_FINISHED, .attempts = 1, .worker = 77,
			   .started_ms = 1500, .finished_ms = 1600, .result = "16", .result_len = 2,
			   .done_seq = 9};
	struct buf items = {0}, recs = {0};
	segfmt_put_items(&items, it, 2);
	segfmt_put_outcome(&recs, &f);
	insert_blob(db, "INSERT INTO segments (batch_id, seg, items) VALUES (4, 0, ?1)", &items);
	CHECK_INT(sqlite3_exec(db, "INSERT INTO seg_args (batch_id, seg, args) VALUES (4, 0, '[4]\n[5]\n')",
			       NULL, NULL, NULL),
		  SQLITE_OK);
	insert_blob(db, "INSERT INTO outcomes (batch_id, last_seq, recs) VALUES (4, 9, ?1)", &recs);
	CHECK_INT(sqlite3_exec(db, "UPDATE meta SET value = 9 WHERE key = 'done_seq'", NULL, NULL, NULL),
		  SQLITE_OK);
	sqlite3_close(db);
	buf_free(&items);
	buf_free(&recs);

	struct store *s = store_open("./v3.db", 0);
	CHECK(s != NULL);
	CHECK_INT(meta_value(s, "next_batch_id"), 6);
	struct batch b = get(s, 4);
	CHECK_INT(b.size, 2);
	CHECK_INT(b.counts[FS_FINISHED], 1);
	struct collect c = {0};
	CHECK_INT(store_futures(s, 4, 0, -1, -1, on_future, &c), 2);
	CHECK_INT(c.state[0], FS_FINISHED);
	CHECK_STR(c.text[0], "16");
	CHECK_INT(c.state[1], FS_PENDING);
	int64_t idx[2];
	struct buf args = {0};
	CHECK_INT(store_claim(s, 4, 2, 7, 2000, idx, &args), 1);
	CHECK_STR(args.data, "[5]\n");
	CHECK_INT(store_finish(s, 4, 1, "25", 2, 2000, 2001), 0);
	CHECK_INT(store_commit(s), 0);
	c.n = 0;
	CHECK_INT(store_futures(s, 4, 1, -1, -1, on_future, &c), 2);
	CHECK_INT(c.seq[0], 9);
	CHECK(c.seq[1] > 9);
	CHECK_INT(add_batch(s, "square", 1), 6);
	CHECK_INT(add_batch(s, "square", 1), 7);
	/* The virtual columns read as the old ones did. */
	sqlite3_stmt *st;
	CHECK_INT(sqlite3_prepare_v2(store_sqlite(s), "SELECT count(*) FROM segments WHERE batch_id = 4 AND seg = 0",
				     -1, &st, NULL),
		  SQLITE_OK);
	CHECK_INT(sqlite3_step(st), SQLITE_ROW);
	CHECK_INT(sqlite3_column_int(st, 0), 1);
	sqlite3_finalize(st);
	buf_free(&args);
	store_close(s);
}

/* Reads between store_read_begin and store_read_end share one transaction;
 * a write ends it and takes its own, which commits as usual. */
TEST(store_reads_share_a_transaction_that_a_write_ends)
{
	struct store *s = open_db();
	sqlite3 *db = store_sqlite(s);
	int64_t a = add_batch(s, "square", 2);
	store_read_begin(s);
	CHECK_INT(sqlite3_get_autocommit(db), 0); /* open */
	CHECK_INT(get(s, a).size, 2);
	store_read_begin(s); /* already open: nothing more */
	int64_t b = add_batch(s, "square", 3); /* ends it, writes, commits */
	CHECK_INT(sqlite3_get_autocommit(db), 1);
	store_read_end(s); /* nothing open: nothing to do */
	store_read_begin(s);
	CHECK_INT(get(s, b).size, 3);
	store_read_end(s);
	CHECK_INT(sqlite3_get_autocommit(db), 1);
	store_close(s);
	s = open_db();
	CHECK_INT(get(s, a).size, 2);
	CHECK_INT(get(s, b).size, 3);
	store_close(s);
}

/* The batch row as another connection reads it from the file. */
static struct batch row_from_file(int64_t id)
{
	sqlite3 *db;
	sqlite3_stmt *st;
	struct batch b = {0};
	CHECK_INT(sqlite3_open_v2("./db/forkpool.db", &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
	CHECK_INT(sqlite3_prepare_v2(db,
				     "SELECT n_pending, n_running, n_finished, n_failed, n_cancelled,"
				     " coalesce(finished_at, -1), size, task, chunksize,"
				     " coalesce(timeout, 0), created_at, retries FROM batches WHERE id = ?1",
				     -1, &st, NULL),
		  SQLITE_OK);
	sqlite3_bind_int64(st, 1, id);
	if (sqlite3_step(st) == SQLITE_ROW) {
		b.id = id;
		for (int k = 0; k < FS_NSTATES; k++)
			b.counts[k] = sqlite3_column_int64(st, k);
		b.finished_ms = sqlite3_column_int64(st, 5);
		b.size = sqlite3_column_int64(st, 6);
		snprintf(b.task, sizeof b.task, "%s", (const char *)sqlite3_column_text(st, 7));
		b.chunksize = sqlite3_column_int64(st, 8);
		b.timeout = sqlite3_column_double(st, 9);
		b.created_ms = sqlite3_column_int64(st, 10);
		b.retries = sqlite3_column_int64(st, 11);
	}
	sqlite3_finalize(st);
	sqlite3_close(db);
	return b;
}

static void same_as_file(struct store *s, int64_t id)
{
	CHECK_INT(store_commit(s), 0);
	struct batch cached = get(s, id), file = row_from_file(id);
	for (int k = 0; k < FS_NSTATES; k++)
		CHECK_INT(cached.counts[k], file.counts[k]);
	CHECK_INT(cached.finished_ms, file.finished_ms);
	CHECK_INT(cached.size, file.size);
	CHECK_STR(cached.task, file.task);
	CHECK_INT(cached.chunksize, file.chunksize);
	CHECK(cached.timeout == file.timeout);
	CHECK_INT(cached.created_ms, file.created_ms);
	CHECK_INT(cached.retries, file.retries);
}

/* store_batch_get answers from a cache of batch rows, filled by the insert
 * and kept current by every change of counts: after each step it reads
 * what the file holds. */
TEST(store_cached_batch_rows_match_the_database_at_every_step)
{
	struct store *s = open_db();
	int64_t id = add_batch(s, "square", 4), other = add_batch(s, "square", 1);
	struct batch t = {.size = 1, .chunksize = 5, .timeout = 2.5, .retries = 3, .created_ms = 1234};
	snprintf(t.task, sizeof t.task, "echo");
	CHECK_INT(store_batch_begin(s, &t), 0);
	CHECK_INT(store_batch_item(s, t.id, 0, "[1]", 3), 0);
	CHECK_INT(store_batch_end(s, 1), 0);
	same_as_file(s, t.id);
	CHECK_INT(t.id, other + 1);
	int64_t idx[4];
	struct buf args = {0};
	same_as_file(s, id);
	CHECK_INT(store_claim(s, id, 3, 7, 2000, idx, &args), 3);
	same_as_file(s, id);
	CHECK_INT(store_finish(s, id, 0, "0", 1, 2000, 2001), 0);
	CHECK_INT(get(s, id).counts[FS_FINISHED], 1); /* within the transaction too */
	same_as_file(s, id);
	CHECK_INT(store_fail(s, id, 1, FE_TASK, "no", 2000, 2002), 0);
	CHECK_INT(store_requeue(s, id, 2), 0);
	same_as_file(s, id);
	CHECK_INT(store_cancel_one(s, id, 2, 2003), 1);
	CHECK_INT(store_cancel_one(s, id, 3, 2003), 1);
	same_as_file(s, id); /* done now: finished_at set, the same in both */
	CHECK(get(s, id).finished_ms > 0);
	same_as_file(s, other);
	/* A row pushed out of the cache (direct-mapped by id) before its
	 * counters are written: they move by their deltas in SQL instead. */
	int64_t pushed = add_batch(s, "square", 2);
	while (add_batch(s, "square", 1) % 256 != (pushed + 255) % 256)
		;
	CHECK_INT(store_claim(s, pushed, 1, 7, 2000, idx, &args), 1);
	int64_t same_slot = add_batch(s, "square", 1); /* commits */
	CHECK_INT(same_slot % 256, pushed % 256);
	struct batch moved = row_from_file(pushed);
	CHECK_INT(moved.counts[FS_PENDING], 1);
	CHECK_INT(moved.counts[FS_RUNNING], 1);
	same_as_file(s, pushed);
	/* A row deleted behind the store's back, then forgotten, is gone. */
	CHECK_INT(sqlite3_exec(store_sqlite(s), "DELETE FROM batches WHERE id = 2", NULL, NULL, NULL),
		  SQLITE_OK);
	store_forget(s, other);
	struct batch out;
	CHECK_INT(store_batch_get(s, other, &out), 0);
	buf_free(&args);
	store_close(s);
}

/* A claim reads its items' arguments, and a call that waited its result,
 * from the rows just written, which the store keeps: with the rows gone
 * behind its back both batches' are still read, and once a batch is
 * forgotten its are not. */
TEST(store_written_arguments_and_outcome_groups_are_read_until_forgotten)
{
	struct store *s = open_db();
	int64_t a = add_batch(s, "square", 1), b = add_batch(s, "square", 1);
	int64_t c3 = add_batch(s, "square", 1);
	CHECK_INT(sqlite3_exec(store_sqlite(s), "DELETE FROM seg_args", NULL, NULL, NULL), SQLITE_OK);
	int64_t idx[1];
	struct buf args = {0};
	CHECK_INT(store_claim(s, a, 1, 7, 2000, idx, &args), 1);
	CHECK_INT(store_claim(s, b, 1, 7, 2000, idx, &args), 1);
	CHECK_STR(args.data, "[0]\n[0]\n");
	CHECK_INT(store_finish(s, a, 0, "49", 2, 2000, 2001), 0);
	CHECK_INT(store_finish(s, b, 0, "64", 2, 2000, 2002), 0);
	CHECK_INT(store_commit(s), 0);
	CHECK_INT(sqlite3_exec(store_sqlite(s), "DELETE FROM outcomes", NULL, NULL, NULL), SQLITE_OK);
	struct collect c = {0};
	CHECK_INT(store_future_get(s, a, 0, on_future, &c), 1);
	CHECK_INT(store_future_get(s, b, 0, on_future, &c), 1);
	CHECK_INT(store_future_get(s, a, 0, on_future, &c), 1);
	CHECK_INT(c.n, 3);
	CHECK_STR(c.text[0], "49");
	CHECK_STR(c.text[1], "64");
	CHECK_STR(c.text[2], "49");
	store_forget(s, a);
	CHECK_INT(store_future_get(s, a, 0, on_future, &c), -1); /* its outcome is missing now */
	store_forget(s, c3);
	CHECK_INT(store_claim(s, c3, 1, 7, 2000, idx, &args), -1); /* and its arguments */
	buf_free(&args);
	store_close(s);
}

/* The byte formats (segfmt.c): extreme values round-trip, a varint with
 * room to spare and one at the blob's very end, and truncated or over-long
 * blobs are refused, never read past. */
TEST(store_segment_formats_round_trip_and_refuse_corrupt_blobs)
{
	static const int64_t vals[] = {0, 1, 127, 128, 16383, 16384, (int64_t)1 << 35, INT64_MAX - 1};
	enum { NV = sizeof vals / sizeof vals[0] };
	struct seg_item it[NV], back[NV + 1];
	for (int i = 0; i < NV; i++)
		it[i] = (struct seg_item){.state = (uint8_t)(i % FS_NSTATES), .attempts = vals[i],
					  .worker = vals[NV - 1 - i], .started_ms = vals[i] - 1,
					  .done_seq = vals[i]};
	struct buf b = {0};
	segfmt_put_items(&b, it, NV);
	CHECK_INT(segfmt_get_items(b.data, b.len, back, NV + 1), NV);
	for (int i = 0; i < NV; i++) {
		CHECK_INT(back[i].state, it[i].state);
		CHECK_INT(back[i].attempts, it[i].attempts);
		CHECK_INT(back[i].worker, it[i].worker);
		CHECK_INT(back[i].started_ms, it[i].started_ms < 0 ? -1 : it[i].started_ms);
		CHECK_INT(back[i].done_seq, it[i].done_seq);
	}
	for (size_t cut = 1; cut < 12 && cut < b.len; cut++) /* the last item cut short */
		CHECK_INT(segfmt_get_items(b.data, b.len - cut, back, NV + 1) < NV, 1);
	/* An 11-byte varint, with room after it and at the very end. */
	unsigned char bad[32] = {FS_PENDING};
	memset(bad + 1, 0x80, 11);
	CHECK_INT(segfmt_get_items(bad, sizeof bad, back, NV), -1);
	CHECK_INT(segfmt_get_items(bad, 12, back, NV), -1);

	buf_reset(&b);
	for (int i = 0; i < NV; i++) {
		struct future f = {.index = vals[i], .state = FS_FINISHED, .attempts = vals[NV - 1 - i],
				   .worker = vals[i], .started_ms = vals[i], .finished_ms = vals[NV - 1 - i],
				   .result = "42", .result_len = 2, .done_seq = vals[i] + 1};
		segfmt_put_outcome(&b, &f);
	}
	const unsigned char *p = (const unsigned char *)b.data, *end = p + b.len;
	for (int i = 0; i < NV; i++) {
		struct future f;
		CHECK_INT(segfmt_get_outcome(&p, end, &f), 1);
		CHECK_INT(f.index, vals[i]);
		CHECK_INT(f.attempts, vals[NV - 1 - i]);
		CHECK_INT(f.started_ms, vals[i]);
		CHECK_INT(f.finished_ms, vals[NV - 1 - i]);
		CHECK_INT(f.done_seq, vals[i] + 1);
		CHECK_INT(f.result_len, 2);
		CHECK(!memcmp(f.result, "42", 2));
	}
	CHECK(p == end);
	for (size_t cut = 1; cut < b.len; cut += 7) { /* every cut is refused or stops short */
		const unsigned char *q = (const unsigned char *)b.data, *qe = q + b.len - cut;
		struct future f;
		int n = 0;
		while (q < qe && segfmt_get_outcome(&q, qe, &f) == 1)
			n++;
		CHECK(n < NV && q <= qe);
	}
	buf_free(&b);
}
