/* test_store.c - the SQLite store on a real database file in the test's
 * temporary directory. */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "harness.h"
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

