/* test_retention.c - expiry (--result-ttl) and purge
 * (DELETE /v1/batches/{id}?purge=true) against the real server: what goes,
 * what stays, items' rows deleted in steps after the batch row, a purge cut
 * short by kill -9 finished at the next start, and freed pages reused. */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "buf.h"
#include "client.h"
#include "harness.h"
#include "retention.h"

/* A count read straight from the database file, beside the running server
 * (WAL lets a reader in). */
static long long db_count(const struct server *s, const char *sql)
{
	sqlite3 *db;
	if (sqlite3_open_v2(s->db, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK)
		FAILF("open %s: %s", s->db, sqlite3_errmsg(db));
	sqlite3_busy_timeout(db, 5000);
	sqlite3_stmt *st;
	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
		FAILF("%s: %s", sql, sqlite3_errmsg(db));
	long long n = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int64(st, 0) : -1;
	sqlite3_finalize(st);
	sqlite3_close(db);
	return n;
}

/* The rows holding items (schema/003_segments.sql) WHERE cond, e.g.
 * ITEM_ROWS(" WHERE batch_id = 2"); ITEM_ROWS("") counts every batch's. */
#define ITEM_ROWS(cond)                                                                          \
	"SELECT (SELECT count(*) FROM segments" cond ") + (SELECT count(*) FROM seg_args" cond  \
	") + (SELECT count(*) FROM outcomes" cond ")"

static long status_of(const struct server *s, const char *method, const char *path)
{
	struct resp r = req(s, method, path, NULL);
	long st = r.status;
	resp_free(&r);
	return st;
}

static char *squares(int n)
{
	struct buf b = {0};
	buf_adds(&b, "{\"task\":\"square\",\"items\":[");
	for (int i = 0; i < n; i++)
		buf_printf(&b, "%s[%d]", i ? "," : "", i);
	buf_adds(&b, "],\"chunksize\":5000}");
	size_t len;
	return buf_steal(&b, &len);
}

static void wait_until_gone(const struct server *s, int64_t id, int secs)
{
	char path[64];
	snprintf(path, sizeof path, "/v1/batches/%lld", (long long)id);
	int64_t deadline = harness_now_ms() + secs * 1000LL;
	while (status_of(s, "GET", path) != 404) {
		if (harness_now_ms() > deadline)
			FAILF("batch %lld is still there after %d s", (long long)id, secs);
		usleep(20000);
	}
}

static void wait_count(const struct server *s, const char *sql, long long want, int secs)
{
	int64_t deadline = harness_now_ms() + secs * 1000LL;
	long long n;
	while ((n = db_count(s, sql)) != want) {
		if (harness_now_ms() > deadline)
			FAILF("%s is %lld after %d s, expected %lld", sql, n, secs, want);
		usleep(20000);
	}
}

TEST(retention_parses_durations_with_units_and_off)
{
	int64_t ms;
	CHECK_INT(retention_parse("90s", &ms), 0);
	CHECK_INT(ms, 90000);
	CHECK_INT(retention_parse("30m", &ms), 0);
	CHECK_INT(ms, 1800000);
	CHECK_INT(retention_parse("12h", &ms), 0);
	CHECK_INT(ms, 43200000);
	CHECK_INT(retention_parse("7d", &ms), 0);
	CHECK_INT(ms, RETENTION_DEFAULT_MS);
	CHECK_INT(retention_parse("2w", &ms), 0);
	CHECK_INT(ms, 14 * 86400000LL);
	CHECK_INT(retention_parse("1.5s", &ms), 0);
	CHECK_INT(ms, 1500);
	CHECK_INT(retention_parse("off", &ms), 0);
	CHECK_INT(ms, -1);
	CHECK_INT(retention_parse("never", &ms), 0);
	CHECK_INT(ms, -1);
	/* No unit, no duration: "45" beside a default of 7d, "0" for off. */
	CHECK_INT(retention_parse("45", &ms), -1);
	CHECK_INT(retention_parse("0", &ms), -1);
	CHECK_INT(retention_parse("0s", &ms), -1);
	CHECK_INT(retention_parse("7 days", &ms), -1);
	CHECK_INT(retention_parse("-1d", &ms), -1);
	CHECK_INT(retention_parse("d", &ms), -1);
	CHECK_INT(retention_parse("", &ms), -1);
	CHECK_INT(retention_parse("3y", &ms), -1);
}

TEST(retention_deletes_batches_done_longer_than_the_ttl_and_keeps_running_ones)
{
	struct server s;
	server_start(&s, "--workers", "2", "--result-ttl", "2s", NULL);
	CHECK_INT(server_log_count(&s, "event=retention", "result_ttl_s=2", NULL), 1);
	int64_t running = submit(&s, "{\"task\":\"sleep\",\"items\":[[30]]}");
	int64_t done = submit(&s, "{\"task\":\"square\",\"items\":[[1],[2],[3]]}");
	json_decref(wait_batch(&s, done, 60));
	int64_t t0 = harness_now_ms();
	CHECK_INT(status_of(&s, "GET", "/v1/batches/2"), 200); /* not yet: done just now */
	wait_until_gone(&s, done, 20);
	/* Not before its time (finished_at has millisecond grain). */
	CHECK(harness_now_ms() - t0 >= 1900);
	CHECK_INT(status_of(&s, "GET", "/v1/batches/2/results"), 404);
	wait_count(&s, ITEM_ROWS(" WHERE batch_id = 2"), 0, 20);
	/* The running batch is older than the ttl, and stays: its segment and
	 * its arguments (no outcome yet). */
	CHECK_INT(status_of(&s, "GET", "/v1/batches/1"), 200);
	CHECK_INT(db_count(&s, "SELECT count(*) FROM segments WHERE batch_id = 1"), 1);
	CHECK_INT(db_count(&s, "SELECT count(*) FROM seg_args WHERE batch_id = 1"), 1);
	CHECK_INT(server_metric(&s, "forkpool_retention_deleted_batches_total"), 1);
	CHECK_INT(server_metric(&s, "forkpool_retention_deleted_items_total"), 3);
	CHECK_INT(server_metric(&s, "forkpool_items{state=\"finished\"}"), 0);
	(void)running;
	server_kill9(&s); /* no need to wait for the sleep */
}

TEST(retention_off_keeps_done_batches)
{
	struct server s;
	server_start(&s, "--workers", "1", "--result-ttl", "off", NULL);
	CHECK_INT(server_log_count(&s, "event=retention", "result_ttl=off", NULL), 1);
	server_stop(&s);
	/* A unit is required: a bare 7 beside a default of 7d would be seconds,
	 * and 0 would read as "at once" (off says off). */
	static const char *const bad[] = {"7days", "7", "0", "0s", "0x10s", "1e3s", "-1h", "s", "inf"};
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		char out[256];
		snprintf(out, sizeof out,
			 "%s/forkpoold --result-ttl '%s' --db x.db 2>&1 | grep -q 'expected a duration'",
			 harness_bin_dir(), bad[i]);
		if (system(out) != 0)
			FAILF("--result-ttl %s was not refused", bad[i]);
	}
}

TEST(retention_purge_deletes_a_done_batch_at_once)
{
	struct server s;
	server_start(&s, "--workers", "1", NULL);
	int64_t keep = submit(&s, "{\"task\":\"square\",\"items\":[[5]]}");
	int64_t id = submit(&s, "{\"task\":\"square\",\"items\":[[1],[2],[3]]}");
	json_decref(wait_batch(&s, keep, 60));
	json_decref(wait_batch(&s, id, 60));
	struct resp r = req(&s, "DELETE", "/v1/batches/2?purge=true", NULL);
	CHECK_INT(r.status, 200);
	CHECK_INT(jint(r.json, "id"), id);
	CHECK(json_is_true(jget(r.json, "purged")));
	CHECK_INT(jint(r.json, "items"), 3);
	resp_free(&r);
	CHECK_INT(status_of(&s, "GET", "/v1/batches/2"), 404);
	CHECK_INT(status_of(&s, "GET", "/v1/batches/2/results"), 404);
	CHECK_INT(status_of(&s, "GET", "/v1/batches/2/futures/0"), 404);
	CHECK_INT(status_of(&s, "DELETE", "/v1/batches/2?purge=true"), 404);
	r = req(&s, "GET", "/v1/batches", NULL);
	json_t *list = jget(r.json, "batches");
	CHECK_INT(json_array_size(list), 1);
	CHECK_INT(jint(json_array_get(list, 0), "id"), keep);
	resp_free(&r);
	wait_count(&s, ITEM_ROWS(" WHERE batch_id = 2"), 0, 20);
	/* The other batch keeps its segment, its arguments and its one outcome. */
	CHECK_INT(db_count(&s, ITEM_ROWS(" WHERE batch_id = 1")), 3);
	CHECK_INT(server_log_count(&s, "event=purge", "batch=2", "items=3", NULL), 1);
	server_stop(&s);
}

/* Ids are not AUTOINCREMENT (schema/004_fewer_pages.sql), yet the newest
 * batch's id, purged, is not given again, not even after a restart. */
TEST(retention_a_purged_batch_id_is_never_given_again)
{
	struct server s;
	server_start(&s, "--workers", "1", NULL);
	int64_t a = submit(&s, "{\"task\":\"square\",\"items\":[[5]]}");
	int64_t b = submit(&s, "{\"task\":\"square\",\"items\":[[6]]}");
	json_decref(wait_batch(&s, b, 60));
	char path[64];
	snprintf(path, sizeof path, "/v1/batches/%lld?purge=true", (long long)b);
	CHECK_INT(status_of(&s, "DELETE", path), 200);
	int64_t c = submit(&s, "{\"task\":\"square\",\"items\":[[7]]}");
	CHECK_INT(c, b + 1);
	json_decref(wait_batch(&s, c, 60));
	snprintf(path, sizeof path, "/v1/batches/%lld?purge=true", (long long)c);
	CHECK_INT(status_of(&s, "DELETE", path), 200);
	server_stop(&s);
	server_start(&s, "--workers", "1", NULL); /* the same database */
	CHECK_INT(submit(&s, "{\"task\":\"square\",\"items\":[[8]]}"), c + 1);
	json_t *first = wait_batch(&s, a, 60);
	CHECK_INT(jint(jget(first, "counts"), "finished"), 1);
	json_decref(first);
	server_stop(&s);
}

TEST(retention_purge_refuses_a_batch_that_is_not_done_and_a_bad_value)
{
	struct server s;
	server_start(&s, "--workers", "1", NULL);
	submit(&s, "{\"task\":\"sleep\",\"items\":[[30],[30]],\"chunksize\":1}");
	struct resp r = req(&s, "DELETE", "/v1/batches/1?purge=true", NULL);
	CHECK_INT(r.status, 409);
	CHECK_STR(jstr(jget(r.json, "error"), "code"), "conflict");
	CHECK_CONTAINS(jstr(jget(r.json, "error"), "message"), "is not done");
	resp_free(&r);
	r = req(&s, "DELETE", "/v1/batches/1?purge=yes", NULL);
	CHECK_INT(r.status, 400);
	CHECK_CONTAINS(jstr(jget(r.json, "error"), "message"), "purge must be true or false");
	resp_free(&r);
	CHECK_INT(status_of(&s, "DELETE", "/v1/batches/9?purge=true"), 404);
	CHECK_INT(status_of(&s, "GET", "/v1/batches/1"), 200);
	/* Cancelled, with an item still running: the way to end it is named. */
	int64_t deadline = harness_now_ms() + 10000;
	for (;;) {
		r = req(&s, "GET", "/v1/batches/1", NULL);
		int running = (int)jint(jget(r.json, "counts"), "running");
		resp_free(&r);
		if (running == 1)
			break;
		if (harness_now_ms() > deadline)
			FAILF("the first item never ran");
	}
	CHECK_INT(status_of(&s, "DELETE", "/v1/batches/1"), 200);
	r = req(&s, "DELETE", "/v1/batches/1?purge=true", NULL);
	CHECK_INT(r.status, 409);
	CHECK_CONTAINS(jstr(jget(r.json, "error"), "message"), "(0 pending, 1 running)");
	CHECK_CONTAINS(jstr(jget(r.json, "error"), "message"), "DELETE ?terminate=true");
	resp_free(&r);
	server_kill9(&s); /* no need to wait for the sleeps */
}

TEST_T(retention_purge_of_a_large_batch_goes_in_steps_and_its_pages_are_reused, 120)
{
	struct server s;
	server_start(&s, "--workers", "2", NULL);
	char *body = squares(50000);
	json_decref(wait_batch(&s, submit(&s, body), 60));
	CHECK_INT(status_of(&s, "DELETE", "/v1/batches/1?purge=true"), 200);
	/* The loop keeps answering while the items' rows go. */
	int64_t worst = 0;
	while (server_metric(&s, "forkpool_retention_deleted_items_total") < 50000) {
		int64_t t = harness_now_ms();
		CHECK_INT(status_of(&s, "GET", "/healthz"), 200);
		if (harness_now_ms() - t > worst)
			worst = harness_now_ms() - t;
	}
	CHECK(worst < 500);
	/* The items are counted as their segments go, and those go last. */
	CHECK_INT(db_count(&s, ITEM_ROWS("")), 0);
	double freed = server_metric(&s, "forkpool_db_free_bytes");
	CHECK(freed > 1e6);
	/* The same work again goes into the freed pages. */
	json_decref(wait_batch(&s, submit(&s, body), 60));
	CHECK(server_metric(&s, "forkpool_db_free_bytes") < freed / 4);
	server_stop(&s);
	free(body);
}

TEST_T(retention_finishes_a_purge_that_kill_9_cut_short, 120)
{
	struct server s;
	server_start(&s, "--workers", "2", NULL);
	char *body = squares(50000);
	json_decref(wait_batch(&s, submit(&s, body), 60));
	free(body);
	CHECK_INT(status_of(&s, "DELETE", "/v1/batches/1?purge=true"), 200);
	server_kill9(&s);
	long long left = db_count(&s, ITEM_ROWS(""));
	server_start(&s, "--workers", "1", NULL);
	CHECK_INT(status_of(&s, "GET", "/v1/batches/1"), 404);
	wait_count(&s, ITEM_ROWS(""), 0, 60);
	/* What the kill left was found at start-up (unless it left nothing). */
	if (left > 0)
		CHECK_INT(server_log_count(&s, "event=retention_orphans", "batch=1", NULL), 1);
	fprintf(stderr, "the kill left %lld rows of the purged batch\n", left);
	server_stop(&s);
}

/* The README's backup: SQLite's online backup of the live database (the
 * sqlite3 shell's .backup when it is installed, else the same API), and a
 * server started on the copy has every batch committed before it. */
TEST(retention_online_backup_restores_every_committed_batch)
{
	struct server s;
	server_start(&s, "--workers", "1", NULL);
	int64_t done = submit(&s, "{\"task\":\"power\",\"items\":[[2,100],[3,4]]}");
	json_decref(wait_batch(&s, done, 60));
	int64_t busy = submit(&s, "{\"task\":\"sleep\",\"items\":[[30],[0]],\"chunksize\":1}");
	if (system("command -v sqlite3 >/dev/null 2>&1") == 0) {
		char cmd[512];
		snprintf(cmd, sizeof cmd, "sqlite3 %s \".backup 'copy.db'\"", s.db);
		CHECK_INT(system(cmd), 0);
	} else {
		sqlite3 *from, *to;
		CHECK(sqlite3_open_v2(s.db, &from, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK);
		CHECK(sqlite3_open("copy.db", &to) == SQLITE_OK);
		sqlite3_backup *b = sqlite3_backup_init(to, "main", from, "main");
		CHECK(b);
		CHECK_INT(sqlite3_backup_step(b, -1), SQLITE_DONE);
		sqlite3_backup_finish(b);
		sqlite3_close(to);
		sqlite3_close(from);
	}
	server_kill9(&s);
	server_start(&s, "--workers", "1", "--db", "copy.db", NULL);
	struct resp r = results_raw(&s, done, NULL);
	CHECK_CONTAINS(r.body, "\"result\":1267650600228229401496703205376");
	CHECK_CONTAINS(r.body, "\"result\":81");
	resp_free(&r);
	/* The batch in flight at the copy is there, and runs again. */
	r = req(&s, "GET", "/v1/batches/2", NULL);
	CHECK_INT(r.status, 200);
	CHECK_INT(jint(r.json, "id"), busy);
	CHECK_INT(jint(r.json, "size"), 2);
	resp_free(&r);
	server_kill9(&s);
}

static long long wal_bytes(const struct server *s)
{
	char p[300];
	snprintf(p, sizeof p, "%s-wal", s->db);
	struct stat st;
	return stat(p, &st) == 0 ? (long long)st.st_size : 0;
}

/* The WAL policy of the README: checkpoints run beside the loop once the WAL
 * passes 1000 pages, so a long run keeps the WAL small however much it
 * writes. 200,000 items write some 100 MB of pages; without checkpoints the
 * WAL would hold them all. */
TEST_T(retention_a_long_run_keeps_the_wal_bounded, 180)
{
	struct server s;
	server_start(&s, "--workers", "2", "--log-level", "debug", NULL);
	static const char *const nd[] = {"Content-Type: application/x-ndjson", NULL};
	struct buf body = {0};
	for (int i = 0; i < 20000; i++)
		buf_printf(&body, "[\"%0100d\"]\n", i);
	long long peak = 0;
	for (int round = 0; round < 10; round++) {
		struct resp r = reqh(&s, "POST", "/v1/batches?task=echo&chunksize=1000", body.data, nd);
		CHECK_INT(r.status, 201);
		int64_t id = jint(r.json, "id");
		resp_free(&r);
		/* Sample the WAL's size while the batch runs: a long-poll that
		 * answers at the latest every 50 ms, until the batch is done. */
		char path[96];
		snprintf(path, sizeof path, "/v1/batches/%lld?wait=0.05", (long long)id);
		int64_t deadline = harness_now_ms() + 120000;
		for (int done = 0; !done;) {
			long long w = wal_bytes(&s);
			if (w > peak)
				peak = w;
			r = req(&s, "GET", path, NULL);
			CHECK_INT(r.status, 200);
			done = !strcmp(jstr(r.json, "state"), "done");
			resp_free(&r);
			CHECK(harness_now_ms() < deadline);
		}
	}
	buf_free(&body);
	fprintf(stderr, "WAL peak %lld bytes\n", peak);
	CHECK(peak < 32LL << 20);
	CHECK(server_log_count(&s, "event=db_checkpoint", NULL) >= 3);
	CHECK_INT(server_stop(&s), 0);
	CHECK_INT(wal_bytes(&s), 0); /* a clean stop checkpoints it away */
}
