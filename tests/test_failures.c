/* test_failures.c - nothing lost, nothing hangs: each test starts the real
 * server and inflicts one fault on it (a worker killed with SIGKILL, an item
 * past its timeout, a worker over its memory limit, a worker that cannot
 * start, SIGTERM with work running, kill -9 of the server mid-batch and
 * mid-submission, a retried request, a full disk), then checks what the
 * client sees and what the database holds. Ordering comes from long-polls and
 * polling with deadlines, never from sleeps. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "client.h"
#include "harness.h"
#include "segfmt.h"

/* {"task": task, "items": [[arg], ... n times], extra...} */
static char *same_items(const char *task, int n, const char *arg, const char *extra)
{
	struct buf b = {0};
	buf_printf(&b, "{\"task\":\"%s\",\"items\":[", task);
	for (int i = 0; i < n; i++)
		buf_printf(&b, "%s[%s]", i ? "," : "", arg);
	buf_printf(&b, "]%s%s}", extra ? "," : "", extra ? extra : "");
	size_t len;
	return buf_steal(&b, &len);
}

/* GET a future, long-polling up to wait seconds (0: no wait). */
static json_t *future(const struct server *s, int64_t id, int index, int wait)
{
	char path[128];
	snprintf(path, sizeof path, "/v1/batches/%lld/futures/%d?wait=%d", (long long)id, index, wait);
	struct resp r = req(s, "GET", path, NULL);
	if (r.status != 200 || !r.json)
		FAILF("GET %s answered %ld: %s", path, r.status, r.body);
	json_t *f = json_incref(r.json);
	resp_free(&r);
	return f;
}

static json_t *batch(const struct server *s, int64_t id)
{
	char path[64];
	snprintf(path, sizeof path, "/v1/batches/%lld", (long long)id);
	struct resp r = req(s, "GET", path, NULL);
	if (r.status != 200 || !r.json)
		FAILF("GET %s answered %ld: %s", path, r.status, r.body);
	json_t *b = json_incref(r.json);
	resp_free(&r);
	return b;
}

static json_int_t count(const json_t *b, const char *state) { return jint(jget(b, "counts"), state); }

/* Polls /healthz until it reports want workers; fails after ms. Returns the
 * milliseconds it took. */
static int64_t wait_workers(const struct server *s, int want, int64_t ms)
{
	int64_t t0 = harness_now_ms();
	for (;;) {
		struct resp r = req(s, "GET", "/healthz", NULL);
		json_int_t n = r.json ? jint(r.json, "workers") : -1;
		resp_free(&r);
		if (n == want)
			return harness_now_ms() - t0;
		if (harness_now_ms() - t0 > ms)
			FAILF("/healthz still says %lld workers, not %d, after %lld ms", (long long)n, want,
			      (long long)ms);
	}
}

static void pause_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
	nanosleep(&ts, NULL);
}

/* One integer from the server's database (opened read-only beside it). */
static long long db_int(const struct server *s, const char *sql)
{
	sqlite3 *db;
	if (sqlite3_open_v2(s->db, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK)
		FAILF("open %s: %s", s->db, sqlite3_errmsg(db));
	sqlite3_busy_timeout(db, 5000);
	sqlite3_stmt *st;
	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
		FAILF("%s: %s", sql, sqlite3_errmsg(db));
	if (sqlite3_step(st) != SQLITE_ROW)
		FAILF("%s: no row (%s)", sql, sqlite3_errmsg(db));
	long long v = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	sqlite3_close(db);
	return v;
}

/* The items the segments hold (schema/003_segments.sql), decoded from the
 * database file: those of batch id, or every batch's if id is 0, batch by
 * batch in index order. The first max go to it[] (it may be NULL). Returns
 * how many there are. */
static int64_t stored_items(const struct server *s, int64_t id, struct seg_item *it, int64_t max)
{
	sqlite3 *db;
	if (sqlite3_open_v2(s->db, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK)
		FAILF("open %s: %s", s->db, sqlite3_errmsg(db));
	sqlite3_busy_timeout(db, 5000);
	const char *sql = id ? "SELECT batch_id, seg, items FROM segments WHERE batch_id = ?1 ORDER BY seg"
			     : "SELECT batch_id, seg, items FROM segments ORDER BY batch_id, seg";
	sqlite3_stmt *st;
	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
		FAILF("%s: %s", sql, sqlite3_errmsg(db));
	sqlite3_bind_int64(st, 1, id);
	int64_t n = 0, batch = 0, in_batch = 0;
	int rc;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		int64_t b = sqlite3_column_int64(st, 0), seg = sqlite3_column_int64(st, 1);
		if (b != batch) {
			batch = b;
			in_batch = 0;
		}
		/* Every segment but a batch's last holds SEG_ITEMS items. */
		if (seg * SEG_ITEMS != in_batch)
			FAILF("batch %lld: segment %lld follows %lld items", (long long)b, (long long)seg,
			      (long long)in_batch);
		struct seg_item items[SEG_ITEMS];
		const void *blob = sqlite3_column_blob(st, 2);
		int len = sqlite3_column_bytes(st, 2);
		int k = len > 0 ? segfmt_get_items(blob, (size_t)len, items, SEG_ITEMS) : 0;
		if (k < 0)
			FAILF("batch %lld: segment %lld does not decode", (long long)b, (long long)seg);
		for (int i = 0; i < k; i++, n++)
			if (it && n < max)
				it[n] = items[i];
		in_batch += k;
	}
	if (rc != SQLITE_DONE)
		FAILF("%s: %s", sql, sqlite3_errmsg(db));
	sqlite3_finalize(st);
	sqlite3_close(db);
	return n;
}

/* Rows of items whose batch row is not there. */
static const char ROWS_WITHOUT_BATCH[] =
    "SELECT count(*) FROM (SELECT batch_id FROM segments UNION ALL SELECT batch_id FROM seg_args"
    " UNION ALL SELECT batch_id FROM outcomes) WHERE batch_id NOT IN (SELECT id FROM batches)";

/* ---- workers ---- */

TEST(failures_a_worker_killed_by_sigkill_costs_its_item_and_the_pool_refills_within_1s)
{
	struct server s;
	server_start(&s, "--workers", "2", NULL);
	wait_workers(&s, 2, 10000);
	/* Two chunks of five 0.3 s items: one per worker. */
	char *body = same_items("sleep", 10, "0.3", "\"chunksize\":5");
	int64_t id = submit(&s, body);
	free(body);
	/* Item 0 done means item 1 or a later one is running on its worker. */
	json_t *f = future(&s, id, 0, 30);
	CHECK_STR(jstr(f, "state"), "finished");
	pid_t victim = (pid_t)jint(f, "worker");
	json_decref(f);
	CHECK_INT(kill(victim, SIGKILL), 0);
	int64_t took = wait_workers(&s, 2, 1000);
	json_t *b = wait_batch(&s, id, 60);
	CHECK_INT(count(b, "finished"), 9);
	CHECK_INT(count(b, "failed"), 1);
	json_decref(b);
	json_t *res = results(&s, id);
	int failed = -1;
	for (int i = 0; i < 10; i++) {
		json_t *it = json_array_get(res, (size_t)i);
		if (!strcmp(jstr(it, "state"), "failed")) {
			failed = i;
			json_t *e = jget(it, "error");
			CHECK_STR(jstr(e, "type"), "worker_died");
			CHECK_CONTAINS(jstr(e, "message"), "killed by signal 9");
			char pid[32];
			snprintf(pid, sizeof pid, "worker %d ", (int)victim);
			CHECK_CONTAINS(jstr(e, "message"), pid);
		}
	}
	json_decref(res);
	/* The item that died was in the victim's chunk, after item 0. */
	CHECK(failed >= 1 && failed <= 4);
	fprintf(stderr, "pool back at 2 workers %lld ms after the kill\n", (long long)took);
	server_stop(&s);
}

TEST(failures_spin_30_with_timeout_1_fails_timeout_within_2s_and_its_chunk_goes_on)
{
	struct server s;
	server_start(&s, "--workers", "1", NULL);
	wait_workers(&s, 1, 10000);
	int64_t t0 = harness_now_ms();
	int64_t id = submit(&s, "{\"task\":\"spin\",\"timeout\":1,\"chunksize\":3,"
				"\"items\":[[0.01],[30],[0.01]]}");
	json_t *f = future(&s, id, 1, 30);
	int64_t took = harness_now_ms() - t0;
	CHECK_STR(jstr(f, "state"), "failed");
	CHECK_STR(jstr(jget(f, "error"), "type"), "timeout");
	CHECK_CONTAINS(jstr(jget(f, "error"), "message"), "timeout of 1 s");
	json_decref(f);
	if (took > 2000)
		FAILF("the timeout took %lld ms to show", (long long)took);
	json_t *b = wait_batch(&s, id, 30);
	CHECK_INT(count(b, "finished"), 2);
	json_decref(b);
	/* SIGTERM was enough: the worker had no SIGKILL. */
	CHECK_INT(server_log_count(&s, "event=item_timeout", NULL), 1);
	CHECK_INT(server_log_count(&s, "event=worker_kill", NULL), 0);
	CHECK_INT(server_log_count(&s, "event=worker_exit", "reason=timeout", "signal 15", NULL), 1);
	wait_workers(&s, 1, 1000);
	server_stop(&s);
}

static const char *stubborn_plugin(void)
{
	static char path[600];
	snprintf(path, sizeof path, "%s/test-plugins/stubborn.so", harness_bin_dir());
	return path;
}

TEST(failures_a_task_that_ignores_sigterm_gets_sigkill_after_the_grace)
{
	struct server s;
	server_start(&s, "--workers", "2", "--plugin", stubborn_plugin(), NULL);
	wait_workers(&s, 2, 10000);
	/* Another batch runs beside it and never notices. */
	int64_t other = submit(&s, "{\"task\":\"sleep\",\"chunksize\":1,"
				   "\"items\":[[0.2],[0.2],[0.2],[0.2]]}");
	int64_t t0 = harness_now_ms();
	int64_t id = submit(&s, "{\"task\":\"stubborn_sleep\",\"timeout\":0.5,\"items\":[[30]]}");
	json_t *f = future(&s, id, 0, 30);
	int64_t took = harness_now_ms() - t0;
	CHECK_STR(jstr(jget(f, "error"), "type"), "timeout");
	json_decref(f);
	if (took > 2500)
		FAILF("SIGTERM then SIGKILL took %lld ms for a 0.5 s timeout", (long long)took);
	CHECK_INT(server_log_count(&s, "event=worker_kill", "after SIGTERM", NULL), 1);
	CHECK_INT(server_log_count(&s, "event=worker_exit", "reason=timeout", "signal 9", NULL), 1);
	json_t *b = wait_batch(&s, other, 30);
	CHECK_INT(count(b, "finished"), 4);
	json_decref(b);
	json_t *res = results(&s, other);
	for (size_t i = 0; i < 4; i++)
		CHECK_INT(jint(json_array_get(res, i), "attempts"), 1);
	json_decref(res);
	wait_workers(&s, 2, 1000);
	server_stop(&s);
}

TEST(failures_a_task_that_calls_exit_fails_worker_died_with_the_status)
{
	struct server s;
	server_start(&s, "--workers", "1", "--plugin", stubborn_plugin(), NULL);
	int64_t id = submit(&s, "{\"task\":\"stubborn_exit\",\"items\":[[3]]}");
	json_t *f = future(&s, id, 0, 30);
	CHECK_STR(jstr(jget(f, "error"), "type"), "worker_died");
	CHECK_CONTAINS(jstr(jget(f, "error"), "message"), "exited with status 3");
	json_decref(f);
	wait_workers(&s, 1, 1000);
	server_stop(&s);
}

TEST(failures_default_timeout_applies_to_batches_that_give_none)
{
	struct server s;
	server_start(&s, "--workers", "1", "--default-timeout", "0.5", NULL);
	struct resp r = req(&s, "POST", "/v1/batches", "{\"task\":\"sleep\",\"items\":[[30],[0]]}");
	CHECK_INT(r.status, 201);
	CHECK(json_real_value(jget(r.json, "timeout")) == 0.5);
	int64_t id = jint(r.json, "id");
	resp_free(&r);
	json_t *f = future(&s, id, 0, 30);
	CHECK_STR(jstr(jget(f, "error"), "type"), "timeout");
	json_decref(f);
	/* NDJSON batches too; their retries come in the query. */
	static const char *const nd[] = {"Content-Type: application/x-ndjson", NULL};
	r = reqh(&s, "POST", "/v1/batches?task=sleep&retries=1", "[30]\n", nd);
	CHECK_INT(r.status, 201);
	CHECK(json_real_value(jget(r.json, "timeout")) == 0.5);
	CHECK_INT(jint(r.json, "retries"), 1);
	id = jint(r.json, "id");
	resp_free(&r);
	f = future(&s, id, 0, 30);
	CHECK_STR(jstr(jget(f, "error"), "type"), "timeout");
	CHECK_INT(jint(f, "attempts"), 2);
	json_decref(f);
	/* A batch's own timeout wins. */
	r = req(&s, "POST", "/v1/batches", "{\"task\":\"sleep\",\"items\":[[0.7]],\"timeout\":5}");
	CHECK_INT(r.status, 201);
	id = jint(r.json, "id");
	resp_free(&r);
	f = future(&s, id, 0, 30);
	CHECK_STR(jstr(f, "state"), "finished");
	json_decref(f);
	server_stop(&s);
}

TEST(failures_memory_past_the_cap_fails_the_item_and_a_bloated_worker_is_replaced)
{
	struct server s;
	server_start(&s, "--workers", "1", "--max-memory-per-child", "64", NULL);
	wait_workers(&s, 1, 10000);
	int64_t id = submit(&s, "{\"task\":\"alloc\",\"chunksize\":1,\"items\":[[200],[8]]}");
	json_t *f = future(&s, id, 0, 30);
#if defined(__SANITIZE_ADDRESS__)
	/* No address space cap under ASan: the resident size check replaces
	 * the worker after the item instead. */
	CHECK_STR(jstr(f, "state"), "finished");
#else
	CHECK_STR(jstr(f, "state"), "failed");
	CHECK_STR(jstr(jget(f, "error"), "type"), "task_error");
	CHECK_CONTAINS(jstr(jget(f, "error"), "message"), "cannot allocate 200 MiB");
#endif
	json_decref(f);
	json_decref(wait_batch(&s, id, 30));
	/* An item that keeps 63 MiB leaves a worker (2 MiB idle) over 64 MiB
	 * resident: it finishes, and the next item runs on a new worker. */
	id = submit(&s, "{\"task\":\"getpid\",\"items\":[[]]}");
	f = future(&s, id, 0, 30);
	json_int_t pid1 = jint(f, "result");
	json_decref(f);
	id = submit(&s, "{\"task\":\"alloc\",\"items\":[[63,true]]}");
	f = future(&s, id, 0, 30);
	CHECK_STR(jstr(f, "state"), "finished");
	CHECK_INT(jint(f, "worker"), pid1);
	json_decref(f);
	id = submit(&s, "{\"task\":\"getpid\",\"items\":[[]]}");
	f = future(&s, id, 0, 30);
	CHECK(jint(f, "result") != pid1);
	json_decref(f);
	CHECK(server_log_count(&s, "event=worker_retire", "reason=max_memory", NULL) >= 1);
	wait_workers(&s, 1, 1000);
	server_stop(&s);
}

TEST(failures_retries_rerun_items_whose_worker_died_but_never_task_errors)
{
	struct server s;
	server_start(&s, "--workers", "2", NULL);
	int64_t id = submit(&s, "{\"task\":\"crash_if\",\"retries\":2,\"items\":[[1,1],[2,1]]}");
	json_t *b = wait_batch(&s, id, 30);
	CHECK_INT(jint(b, "retries"), 2);
	json_decref(b);
	json_t *res = results(&s, id);
	json_t *it = json_array_get(res, 0);
	CHECK_STR(jstr(it, "state"), "failed");
	CHECK_STR(jstr(jget(it, "error"), "type"), "worker_died");
	CHECK_INT(jint(it, "attempts"), 3);
	CHECK_INT(jint(json_array_get(res, 1), "attempts"), 1);
	json_decref(res);
	CHECK_INT(server_log_count(&s, "event=item_retry", NULL), 2);

	id = submit(&s, "{\"task\":\"fail\",\"retries\":3,\"items\":[[\"no\"]]}");
	json_decref(wait_batch(&s, id, 30));
	json_t *f = future(&s, id, 0, 0);
	CHECK_STR(jstr(jget(f, "error"), "type"), "task_error");
	CHECK_INT(jint(f, "attempts"), 1);
	json_decref(f);

	/* A retry can succeed: kill the worker of a running item with retries 1. */
	id = submit(&s, "{\"task\":\"sleep\",\"retries\":1,\"chunksize\":2,\"items\":[[0],[0.5]]}");
	f = future(&s, id, 0, 30);
	CHECK_INT(kill((pid_t)jint(f, "worker"), SIGKILL), 0);
	json_decref(f);
	json_decref(wait_batch(&s, id, 30));
	f = future(&s, id, 1, 0);
	CHECK_STR(jstr(f, "state"), "finished");
	CHECK_INT(jint(f, "attempts"), 2);
	json_decref(f);
	server_stop(&s);
}

/* A --worker that passes --describe through to the real one and otherwise
 * serves only once the file ok exists; until then it runs `otherwise`. */
static void write_wrapper(const char *path, const char *okfile, const char *otherwise)
{
	FILE *f = fopen(path, "w");
	if (!f)
		FAILF("fopen %s: %s", path, strerror(errno));
	fprintf(f, "#!/bin/sh\n"
		   "for a; do [ \"$a\" = --describe ] && exec '%s/forkpool-worker' \"$@\"; done\n"
		   "[ -e '%s' ] && exec '%s/forkpool-worker' \"$@\"\n"
		   "%s\n",
		harness_bin_dir(), okfile, harness_bin_dir(), otherwise);
	fclose(f);
	chmod(path, 0755);
}

TEST_T(failures_a_worker_that_cannot_start_backs_off_and_healthz_says_why, 60)
{
	char cwd[512], wrapper[600], ok[600];
	if (!getcwd(cwd, sizeof cwd))
		FAILF("getcwd");
	snprintf(wrapper, sizeof wrapper, "%s/worker.sh", cwd);
	snprintf(ok, sizeof ok, "%s/ok", cwd);
	write_wrapper(wrapper, ok, "exit 7");
	struct server s;
	server_start(&s, "--workers", "2", "--worker", wrapper, NULL);
	int64_t t0 = harness_now_ms();
	for (;;) {
		struct resp r = req(&s, "GET", "/healthz", NULL);
		if (r.status == 503) {
			CHECK_STR(jstr(r.json, "status"), "workers_failing");
			CHECK_CONTAINS(jstr(r.json, "reason"), "exited with status 7");
			CHECK_INT(jint(r.json, "workers"), 0);
			resp_free(&r);
			break;
		}
		resp_free(&r);
		CHECK(harness_now_ms() - t0 < 5000);
	}
	/* Accepted work waits rather than failing. */
	int64_t id = submit(&s, "{\"task\":\"square\",\"items\":[[7]]}");
	/* Backoff, not a spin: 2 slots retried at 100, 200, 400, 800 ms... */
	int64_t t1 = harness_now_ms();
	while (harness_now_ms() - t1 < 1500)
		pause_ms(50);
	int starts = server_log_count(&s, "event=worker_start", NULL);
	if (starts > 14)
		FAILF("%d worker starts in about 1.5 s: spinning", starts);
	CHECK(server_log_count(&s, "event=worker_start_failed", NULL) >= 2);
	/* Fixed: the pool fills up and the waiting item runs. */
	int fd = open(ok, O_CREAT | O_WRONLY, 0644);
	close(fd);
	wait_workers(&s, 2, 10000);
	json_t *f = future(&s, id, 0, 30);
	CHECK_INT(jint(f, "result"), 49);
	json_decref(f);
	struct resp r = req(&s, "GET", "/healthz", NULL);
	CHECK_INT(r.status, 200);
	resp_free(&r);
	/* The program gone: spawning fails, which healthz names too. */
	CHECK_INT(unlink(wrapper), 0);
	f = future(&s, id, 0, 0);
	kill((pid_t)jint(f, "worker"), SIGKILL);
	json_decref(f);
	t0 = harness_now_ms();
	for (;;) {
		r = req(&s, "GET", "/healthz", NULL);
		int done = r.status == 503;
		if (done)
			CHECK_CONTAINS(jstr(r.json, "reason"), "No such file or directory");
		resp_free(&r);
		if (done)
			break;
		CHECK(harness_now_ms() - t0 < 5000);
	}
	server_stop(&s);
}

TEST_T(failures_a_worker_that_hangs_before_it_is_ready_is_killed_at_the_start_timeout, 30)
{
	char cwd[512], wrapper[600], ok[600];
	if (!getcwd(cwd, sizeof cwd))
		FAILF("getcwd");
	snprintf(wrapper, sizeof wrapper, "%s/worker.sh", cwd);
	snprintf(ok, sizeof ok, "%s/ok", cwd);
	write_wrapper(wrapper, ok, "exec sleep 600");
	struct server s;
	server_start(&s, "--workers", "1", "--worker", wrapper, "--start-timeout", "0.5", NULL);
	int64_t t0 = harness_now_ms();
	for (;;) {
		struct resp r = req(&s, "GET", "/healthz", NULL);
		int failing = r.status == 503;
		if (failing)
			CHECK_CONTAINS(jstr(r.json, "reason"), "was not ready within 0.5 s");
		resp_free(&r);
		if (failing)
			break;
		CHECK(harness_now_ms() - t0 < 5000);
	}
	CHECK(server_log_count(&s, "event=worker_start_timeout", NULL) >= 1);
	int fd = open(ok, O_CREAT | O_WRONLY, 0644);
	close(fd);
	wait_workers(&s, 1, 10000);
	json_decref(wait_batch(&s, submit(&s, "{\"task\":\"square\",\"items\":[[3]]}"), 30));
	server_stop(&s);
}

/* ---- the server's life ---- */

TEST_T(failures_sigterm_refuses_new_work_lets_running_chunks_finish_and_exits_0, 60)
{
	struct server s;
	server_start(&s, "--workers", "1", "--grace", "20", NULL);
	wait_workers(&s, 1, 10000);
	int64_t a = submit(&s, "{\"task\":\"sleep\",\"chunksize\":3,\"items\":[[0.3],[0.3],[0.3]]}");
	int64_t b = submit(&s, "{\"task\":\"square\",\"items\":[[5]]}");
	json_decref(future(&s, a, 0, 30)); /* the chunk is running */
	int64_t t0 = harness_now_ms();
	kill(s.pid, SIGTERM);
	/* During the grace: no new batches, /healthz 503, reads still work. */
	for (;;) {
		struct resp r = req(&s, "GET", "/healthz", NULL);
		long st = r.status;
		resp_free(&r);
		if (st == 503)
			break;
		CHECK(harness_now_ms() - t0 < 5000);
	}
	struct resp r = req(&s, "POST", "/v1/batches", "{\"task\":\"square\",\"items\":[[1]]}");
	CHECK_INT(r.status, 503);
	CHECK_STR(jstr(jget(r.json, "error"), "code"), "shutting_down");
	resp_free(&r);
	json_t *bj = batch(&s, a);
	json_decref(bj);
	int status;
	CHECK_INT(waitpid(s.pid, &status, 0), s.pid);
	int64_t took = harness_now_ms() - t0;
	s.pid = 0;
	CHECK(WIFEXITED(status));
	CHECK_INT(WEXITSTATUS(status), 0);
	CHECK(took < 5000); /* it did not sit out the 20 s */
	/* It checkpointed: the WAL is empty. */
	char wal[300];
	snprintf(wal, sizeof wal, "%s-wal", s.db);
	struct stat st;
	CHECK(stat(wal, &st) < 0 || st.st_size == 0);
	/* The running chunk finished; the other batch never started. */
	struct seg_item it[3];
	CHECK_INT(stored_items(&s, a, it, 3), 3);
	for (int i = 0; i < 3; i++)
		CHECK_INT(it[i].state, FS_FINISHED);
	CHECK_INT(stored_items(&s, b, it, 3), 1);
	CHECK_INT(it[0].state, FS_PENDING);
	CHECK_INT(db_int(&s, "SELECT count(*) FROM batches"), 2);
	server_start(&s, "--workers", "1", NULL);
	json_t *f = future(&s, b, 0, 30);
	CHECK_INT(jint(f, "result"), 25);
	json_decref(f);
	server_stop(&s);
}

TEST(failures_sigterm_grace_ends_and_unfinished_items_go_back_to_pending)
{
	struct server s;
	server_start(&s, "--workers", "1", "--grace", "0.5", NULL);
	int64_t id = submit(&s, "{\"task\":\"sleep\",\"chunksize\":2,\"items\":[[0],[30]]}");
	json_decref(future(&s, id, 0, 30));
	int64_t t0 = harness_now_ms();
	int status = server_stop(&s);
	int64_t took = harness_now_ms() - t0;
	CHECK(WIFEXITED(status));
	CHECK_INT(WEXITSTATUS(status), 0);
	if (took > 3000)
		FAILF("stopping took %lld ms with --grace 0.5", (long long)took);
	struct seg_item it[2];
	CHECK_INT(stored_items(&s, id, it, 2), 2);
	CHECK_INT(it[1].state, FS_PENDING);
	CHECK_INT(it[1].attempts, 0); /* its attempt not counted */
	CHECK_INT(server_log_count(&s, "event=shutdown", "busy_workers=1", NULL), 1);
}

TEST(failures_a_second_sigterm_skips_the_rest_of_the_grace)
{
	struct server s;
	server_start(&s, "--workers", "1", "--grace", "10", NULL);
	int64_t id = submit(&s, "{\"task\":\"sleep\",\"items\":[[30]]}");
	json_t *f;
	for (;;) { /* running */
		f = future(&s, id, 0, 0);
		int running = !strcmp(jstr(f, "state"), "running");
		json_decref(f);
		if (running)
			break;
	}
	int64_t t0 = harness_now_ms();
	kill(s.pid, SIGTERM);
	while (server_log_count(&s, "event=drain", NULL) == 0)
		CHECK(harness_now_ms() - t0 < 5000);
	int status = server_stop(&s); /* the second SIGTERM */
	CHECK(WIFEXITED(status));
	CHECK_INT(WEXITSTATUS(status), 0);
	CHECK(harness_now_ms() - t0 < 5000);
}

/* ---- a full disk ---- */

/* The disk the database lives on: a small tmpfs of our own (a private mount
 * namespace, so it vanishes with the test), or where mounting is not
 * allowed (not root; or FORKPOOL_TEST_NO_MOUNT is set, to try this path),
 * a file size limit set on the server process from outside. */
struct disk {
	int tmpfs;
	const struct server *s;
	char fill[64];
};

static int disk_mount(struct disk *d, const char *dir, const char *size)
{
	mkdir(dir, 0755);
	memset(d, 0, sizeof *d);
	if (!getenv("FORKPOOL_TEST_NO_MOUNT") && unshare(CLONE_NEWNS) == 0 &&
	    mount("none", "/", NULL, MS_REC | MS_PRIVATE, NULL) == 0) {
		char opt[64];
		snprintf(opt, sizeof opt, "size=%s", size);
		if (mount("tmpfs", dir, "tmpfs", 0, opt) == 0)
			d->tmpfs = 1;
	}
	snprintf(d->fill, sizeof d->fill, "%s/filler", dir);
	return d->tmpfs;
}

static long long file_size(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 ? (long long)st.st_size : 0;
}

/* Leaves no room for the database to grow. */
static void disk_fill(struct disk *d, const struct server *s)
{
	d->s = s;
	if (d->tmpfs) {
		int fd = open(d->fill, O_CREAT | O_WRONLY | O_TRUNC, 0644);
		if (fd < 0)
			FAILF("open %s: %s", d->fill, strerror(errno));
		static char block[65536];
		while (write(fd, block, sizeof block) > 0)
			;
		while (write(fd, block, 512) > 0) /* the last bits */
			;
		if (errno != ENOSPC)
			FAILF("filling the tmpfs: %s", strerror(errno));
		close(fd);
		return;
	}
	char wal[300];
	snprintf(wal, sizeof wal, "%s-wal", s->db);
	long long db = file_size(s->db), w = file_size(wal);
	struct rlimit rl = {.rlim_cur = (rlim_t)(db > w ? db : w) + 4096, .rlim_max = RLIM_INFINITY};
	if (prlimit(s->pid, RLIMIT_FSIZE, &rl, NULL) < 0)
		FAILF("prlimit: %s", strerror(errno));
}

static void disk_free(struct disk *d)
{
	if (d->tmpfs) {
		CHECK_INT(unlink(d->fill), 0);
		return;
	}
	struct rlimit rl = {.rlim_cur = RLIM_INFINITY, .rlim_max = RLIM_INFINITY};
	if (prlimit(d->s->pid, RLIMIT_FSIZE, &rl, NULL) < 0)
		FAILF("prlimit: %s", strerror(errno));
}

/* echo items whose arguments (and results) are each kb KiB of text. */
static char *big_echo(int n, int kb)
{
	struct buf b = {0};
	buf_adds(&b, "{\"task\":\"echo\",\"chunksize\":100,\"items\":[");
	for (int i = 0; i < n; i++) {
		buf_printf(&b, "%s[\"%d:", i ? "," : "", i);
		for (int k = 0; k < kb * 1024; k++)
			buf_addc(&b, (char)('a' + (i + k) % 26));
		buf_adds(&b, "\"]");
	}
	buf_adds(&b, "]}");
	size_t len;
	return buf_steal(&b, &len);
}

/* Polls GET /v1/workers until no worker is busy. */
static void wait_idle(const struct server *s, int64_t ms)
{
	int64_t t0 = harness_now_ms();
	for (;;) {
		struct resp r = req(s, "GET", "/v1/workers", NULL);
		int busy = r.body && strstr(r.body, "\"state\":\"busy\"") != NULL;
		resp_free(&r);
		if (!busy)
			return;
		if (harness_now_ms() - t0 > ms)
			FAILF("workers still busy after %lld ms", (long long)ms);
	}
}

/* A failed commit that held only a submission (no item was running): the
 * client gets 503, and /healthz says the database is failing until a commit
 * takes again, rather than 200 while the disk is full. */
TEST_T(failures_a_submission_on_a_full_disk_makes_healthz_503_until_a_commit_takes, 60)
{
	struct disk d;
	disk_mount(&d, "disk", "12m");
	struct server s;
	server_start(&s, "--workers", "1", "--db", "disk/forkpool.db", NULL);
	wait_workers(&s, 1, 10000);
	json_decref(wait_batch(&s, submit(&s, "{\"task\":\"square\",\"items\":[[2]]}"), 30));
	disk_fill(&d, &s);
	char *big = big_echo(20, 20);
	struct resp r = req(&s, "POST", "/v1/batches", big);
	CHECK_INT(r.status, 503);
	resp_free(&r);
	r = req(&s, "GET", "/healthz", NULL);
	CHECK_INT(r.status, 503);
	CHECK_STR(jstr(r.json, "status"), "database_failing");
	CHECK_CONTAINS(jstr(r.json, "reason"), "the database cannot be written");
	resp_free(&r);
	disk_free(&d);
	int64_t id = submit(&s, big);
	json_decref(wait_batch(&s, id, 60));
	r = req(&s, "GET", "/healthz", NULL);
	CHECK_INT(r.status, 200);
	CHECK_STR(jstr(r.json, "status"), "ok");
	resp_free(&r);
	free(big);
	server_stop(&s);
}

/* A submission whose commit fails was answered 503, but its items had gone
 * to the workers before the commit (as every chunk may). They are stopped
 * when the pool replays its writes, its id is never given again (the next
 * batch's results are its own), and it is not counted as accepted. */
TEST_T(failures_a_submission_refused_503_runs_nothing_and_its_id_is_not_given_again, 60)
{
	struct disk d;
	disk_mount(&d, "disk", "12m");
	struct server s;
	server_start(&s, "--workers", "2", "--db", "disk/forkpool.db", NULL);
	wait_workers(&s, 2, 10000);
	json_decref(wait_batch(&s, submit(&s, "{\"task\":\"square\",\"items\":[[2]]}"), 30));
	disk_fill(&d, &s);
	struct resp r = req(&s, "POST", "/v1/batches",
			    "{\"task\":\"sleep\",\"chunksize\":1,\"items\":[[60],[60],[60],[60]]}");
	CHECK_INT(r.status, 503);
	resp_free(&r);
	disk_free(&d);
	int64_t t0 = harness_now_ms();
	int64_t id = submit(&s, "{\"task\":\"square\",\"chunksize\":1,\"items\":[[10],[11],[12],[13]]}");
	CHECK(id > 2); /* 2 went to the refused batch */
	json_t *b = wait_batch(&s, id, 30);
	CHECK_INT(count(b, "finished"), 4);
	json_decref(b);
	CHECK(harness_now_ms() - t0 < 30000); /* not after the refused sleeps */
	json_t *res = results(&s, id);
	for (size_t i = 0; i < 4; i++)
		CHECK_INT(jint(json_array_get(res, i), "result"), (long long)((10 + i) * (10 + i)));
	json_decref(res);
	CHECK(server_log_count(&s, "event=batch_taken_back", "batch=2", NULL) >= 1);
	r = req(&s, "GET", "/v1/batches", NULL);
	CHECK_INT(json_array_size(jget(r.json, "batches")), 2);
	resp_free(&r);
	r = req(&s, "GET", "/metrics", NULL);
	CHECK(strstr(r.body, "forkpool_batches_accepted_total{task=\"sleep\"} 1") == NULL);
	CHECK_CONTAINS(r.body, "forkpool_batches_accepted_total{task=\"square\"} 2");
	resp_free(&r);
	server_stop(&s);
}

TEST_T(failures_a_full_disk_is_503_loses_no_result_and_recovers_when_space_returns, 90)
{
	struct disk d;
	int tmpfs = disk_mount(&d, "disk", "12m");
	struct server s;
	server_start(&s, "--workers", "2", "--db", "disk/forkpool.db", NULL);
	wait_workers(&s, 2, 10000);
	/* One worker runs a chunk of five 0.2 s items, the other one 0.6 s
	 * item; the batch of big arguments waits for a free worker. */
	int64_t a = submit(&s, "{\"task\":\"sleep\",\"chunksize\":5,"
			       "\"items\":[[0.2],[0.2],[0.2],[0.2],[0.2]]}");
	int64_t c = submit(&s, "{\"task\":\"sleep\",\"items\":[[0.6]]}");
	char *body = big_echo(8, 100);
	int64_t b = submit(&s, body);
	json_decref(future(&s, a, 0, 30));
	disk_fill(&d, &s);
	/* Taking b's items (1 MB of rows to rewrite) cannot be written:
	 * /healthz says so. */
	int64_t t0 = harness_now_ms();
	for (;;) {
		struct resp r = req(&s, "GET", "/healthz", NULL);
		int down = r.status == 503;
		if (down)
			CHECK_CONTAINS(jstr(r.json, "reason"), "the database cannot be written");
		resp_free(&r);
		if (down)
			break;
		if (harness_now_ms() - t0 > 20000)
			FAILF("/healthz never reported the database (tmpfs %d)", tmpfs);
	}
	/* A submission fails whole, with a JSON 503. */
	char *big = big_echo(20, 20);
	struct resp r = req(&s, "POST", "/v1/batches", big);
	CHECK_INT(r.status, 503);
	CHECK_STR(jstr(jget(r.json, "error"), "code"), "unavailable");
	resp_free(&r);
	/* The chunks in flight end meanwhile: their outcomes wait in memory. */
	wait_idle(&s, 20000);
	CHECK(server_log_count(&s, "event=db_down", NULL) >= 1);
	disk_free(&d);
	json_t *bj = wait_batch(&s, b, 60);
	CHECK_INT(count(bj, "finished"), 8);
	json_decref(bj);
	CHECK(server_log_count(&s, "event=db_recovered", NULL) >= 1);
	/* Every result is the one its single run produced. */
	json_t *in = json_loads(body, 0, NULL), *res = results(&s, b);
	for (size_t i = 0; i < 8; i++) {
		json_t *f = json_array_get(res, i);
		CHECK_INT(jint(f, "attempts"), 1);
		CHECK(json_equal(jget(f, "result"), json_array_get(json_object_get(in, "items"), i)));
	}
	json_decref(in);
	json_decref(res);
	res = results(&s, a);
	json_int_t pid = jint(json_array_get(res, 0), "worker");
	for (size_t i = 0; i < 5; i++) {
		json_t *f = json_array_get(res, i);
		CHECK_STR(jstr(f, "state"), "finished");
		CHECK_INT(jint(f, "attempts"), 1);
		CHECK_INT(jint(f, "worker"), pid); /* not run again elsewhere */
	}
	json_decref(res);
	json_t *f = future(&s, c, 0, 30);
	CHECK_INT(jint(f, "attempts"), 1);
	json_decref(f);
	r = req(&s, "GET", "/healthz", NULL);
	CHECK_INT(r.status, 200);
	resp_free(&r);
	/* Nothing half-written: the refused batch is not there, the database is
	 * sound, and new work is taken again. */
	r = req(&s, "GET", "/v1/batches", NULL);
	CHECK_INT(json_array_size(jget(r.json, "batches")), 3);
	resp_free(&r);
	int64_t e = submit(&s, big);
	json_decref(wait_batch(&s, e, 60));
	free(big);
	free(body);
	server_stop(&s);
	CHECK_INT(stored_items(&s, 0, NULL, 0), 5 + 1 + 8 + 20);
	CHECK_INT(db_int(&s, ROWS_WITHOUT_BATCH), 0);
	CHECK_INT(db_int(&s, "SELECT sum(size) FROM batches"), 5 + 1 + 8 + 20);
	CHECK_INT(db_int(&s, "SELECT count(*) FROM pragma_integrity_check WHERE integrity_check = 'ok'"), 1);
	(void)tmpfs;
}

/* ---- kill -9 of the server ---- */

TEST_T(failures_kill9_mid_batch_then_restart_finishes_all_200_items_exactly_once, 120)
{
	struct server s;
	server_start(&s, "--workers", "2", NULL);
	char *body = same_items("sleep", 200, "0.05", NULL);
	int64_t id = submit(&s, body);
	free(body);
	/* About a second in: 2 workers finish some 40 items a second. */
	int64_t t0 = harness_now_ms();
	for (;;) {
		json_t *b = batch(&s, id);
		json_int_t done = count(b, "finished");
		json_decref(b);
		if (done >= 30 && harness_now_ms() - t0 >= 1000)
			break;
		CHECK(harness_now_ms() - t0 < 30000);
		pause_ms(20);
	}
	json_t *before = results(&s, id);
	server_kill9(&s);
	server_start(&s, "--workers", "2", NULL);
	CHECK_INT(server_log_count(&s, "event=recover", NULL), 1);
	json_t *b = wait_batch(&s, id, 60);
	CHECK_INT(count(b, "finished"), 200);
	json_decref(b);
	json_t *after = results(&s, id);
	CHECK_INT(json_array_size(after), 200);
	int reran = 0, kept = 0;
	for (size_t i = 0; i < 200; i++) {
		json_t *f = json_array_get(after, i), *was = json_array_get(before, i);
		CHECK_INT(jint(f, "index"), (long long)i);
		CHECK_STR(jstr(f, "state"), "finished");
		if (!strcmp(jstr(was, "state"), "finished")) {
			/* Finished before the crash: untouched by it. */
			CHECK(json_equal(f, was));
			kept++;
		}
		reran += jint(f, "attempts") > 1;
	}
	CHECK(kept >= 30);
	CHECK(reran >= 1); /* the chunks in flight ran again: at least once */
	/* Only the item each worker was running had started: the rest of its
	 * chunk was dispatched, not run, and does not count an attempt. */
	CHECK(reran <= 2);
	json_decref(before);
	json_decref(after);
	/* Each item finished once, with a completion cursor of its own: read in
	 * completion order one at a time, every index comes once and the cursors
	 * only grow. */
	char seen[200] = {0};
	long long cursor = -1;
	for (int k = 0;; k++) {
		char path[128];
		snprintf(path, sizeof path, "/v1/batches/%lld/results?order=completed&limit=1&after=%lld",
			 (long long)id, cursor);
		struct resp r = req(&s, "GET", path, NULL);
		CHECK_INT(r.status, 200);
		json_t *page = jget(r.json, "results");
		if (json_array_size(page) == 0) {
			CHECK(json_is_null(jget(r.json, "next")));
			resp_free(&r);
			CHECK_INT(k, 200);
			break;
		}
		CHECK_INT(json_array_size(page), 1);
		json_t *f = json_array_get(page, 0);
		CHECK_STR(jstr(f, "state"), "finished");
		json_int_t i = jint(f, "index");
		CHECK(i >= 0 && i < 200 && !seen[i]);
		seen[i] = 1;
		json_int_t next = jint(r.json, "next");
		CHECK(next > cursor);
		cursor = next;
		resp_free(&r);
	}
	server_stop(&s);
	fprintf(stderr, "%d finished before the kill, %d ran again\n", kept, reran);
}

TEST_T(failures_kill9_during_a_submission_leaves_all_of_the_batch_or_none, 120)
{
	char *body = same_items("square", 20000, "7", NULL);
	struct server s;
	/* How long one submission takes here, to aim the kills across it. */
	server_start(&s, "--workers", "1", NULL);
	int64_t t0 = harness_now_ms();
	json_decref(wait_batch(&s, submit(&s, body), 60));
	int64_t took = harness_now_ms() - t0;
	server_stop(&s);
	static const int percent[] = {0, 20, 40, 60, 80, 120};
	int whole = 0, none = 0;
	long long batches = 1;
	for (size_t k = 0; k < sizeof percent / sizeof *percent; k++) {
		server_start(&s, "--workers", "1", NULL);
		pid_t child = fork();
		if (child == 0) {
			int devnull = open("/dev/null", O_WRONLY);
			dup2(devnull, 2);
			struct resp r = req(&s, "POST", "/v1/batches", body);
			_exit(r.status == 201 ? 0 : 1);
		}
		pause_ms((int)(took * percent[k] / 100));
		server_kill9(&s);
		int st;
		waitpid(child, &st, 0);
		int acked = WIFEXITED(st) && WEXITSTATUS(st) == 0;
		/* The database as the crash left it: each batch with every item and
		 * its arguments (a seg_args row per segment), no row without its
		 * batch. */
		long long n = db_int(&s, "SELECT count(*) FROM batches");
		for (long long j = 0; j < n; j++) {
			char q[128];
			snprintf(q, sizeof q, "SELECT id FROM batches ORDER BY id LIMIT 1 OFFSET %lld", j);
			long long id = db_int(&s, q);
			snprintf(q, sizeof q, "SELECT size FROM batches WHERE id = %lld", id);
			CHECK_INT(stored_items(&s, id, NULL, 0), db_int(&s, q));
		}
		CHECK_INT(db_int(&s, "SELECT count(*) FROM batches b WHERE (size + 255) / 256 != "
				     "(SELECT count(*) FROM seg_args a WHERE a.batch_id = b.id)"),
			  0);
		CHECK_INT(db_int(&s, ROWS_WITHOUT_BATCH), 0);
		if (acked)
			CHECK_INT(n, batches + 1); /* a 201 means it is there */
		CHECK(n == batches || n == batches + 1);
		whole += n > batches;
		none += n == batches;
		batches = n;
	}
	free(body);
	/* And a restart takes it from there. */
	server_start(&s, "--workers", "2", NULL);
	struct resp r = req(&s, "GET", "/v1/batches", NULL);
	CHECK_INT(json_array_size(jget(r.json, "batches")), batches);
	resp_free(&r);
	server_stop(&s);
	fprintf(stderr, "a submission took %lld ms; kills during one: %d left the whole batch, %d none\n",
		(long long)took, whole, none);
}

TEST_T(failures_sync_full_is_set_and_every_201_survives_kill9, 60)
{
	struct server s;
	for (int k = 0; k < 5; k++) {
		server_start(&s, "--workers", "1", "--sync", "full", NULL);
		CHECK_INT(server_log_count(&s, "event=db_open", "synchronous=full", NULL), 1);
		int64_t id = submit(&s, "{\"task\":\"square\",\"items\":[[1],[2],[3]]}");
		server_kill9(&s); /* right after the 201 */
		CHECK_INT(stored_items(&s, id, NULL, 0), 3);
	}
	server_start(&s, NULL);
	CHECK_INT(server_log_count(&s, "event=db_open", "synchronous=normal", NULL), 1);
	server_stop(&s);
}

/* ---- a client retrying after a lost answer ---- */

static struct resp post_keyed_at(const struct server *s, const char *path, const char *key,
				 const char *body)
{
	char h[320];
	snprintf(h, sizeof h, "Idempotency-Key: %s", key);
	const char *const headers[] = {h, NULL};
	return reqh(s, "POST", path, body, headers);
}

static struct resp post_keyed(const struct server *s, const char *key, const char *body)
{
	return post_keyed_at(s, "/v1/batches", key, body);
}

TEST(failures_idempotency_key_returns_the_original_batch_and_409s_another_body)
{
	struct server s;
	server_start(&s, "--workers", "1", NULL);
	const char *body = "{\"task\":\"square\",\"items\":[[4],[5]]}";
	struct resp r = post_keyed(&s, "order-17", body);
	CHECK_INT(r.status, 201);
	json_int_t id = jint(r.json, "id");
	resp_free(&r);
	/* The same request again (the answer was lost): the same batch, 200. */
	r = post_keyed(&s, "order-17", body);
	CHECK_INT(r.status, 200);
	CHECK_INT(jint(r.json, "id"), id);
	char *h = resp_header(&r, "Idempotent-Replayed"), *loc = resp_header(&r, "Location"), want[64];
	CHECK_STR(h, "true");
	snprintf(want, sizeof want, "/v1/batches/%lld", (long long)id);
	CHECK_STR(loc, want);
	free(h);
	free(loc);
	resp_free(&r);
	/* The key with another body is a mistake: 409, nothing stored. */
	r = post_keyed(&s, "order-17", "{\"task\":\"square\",\"items\":[[6]]}");
	CHECK_INT(r.status, 409);
	CHECK_STR(jstr(jget(r.json, "error"), "code"), "idempotency_key_reused");
	resp_free(&r);
	/* Other keys, and no key, make new batches. */
	r = post_keyed(&s, "order-18", body);
	CHECK_INT(r.status, 201);
	CHECK(jint(r.json, "id") != id);
	resp_free(&r);
	json_decref(wait_batch(&s, submit(&s, body), 30));
	/* A bad key is 400. */
	r = post_keyed(&s, "has space", body);
	CHECK_INT(r.status, 400);
	resp_free(&r);
	char longkey[300];
	memset(longkey, 'k', 256);
	longkey[256] = '\0';
	r = post_keyed(&s, longkey, body);
	CHECK_INT(r.status, 400);
	resp_free(&r);
	r = req(&s, "GET", "/v1/batches", NULL);
	CHECK_INT(json_array_size(jget(r.json, "batches")), 3);
	resp_free(&r);
	/* NDJSON bodies are stored as they arrive: a key is refused, not ignored. */
	static const char *const nd[] = {"Content-Type: application/x-ndjson", "Idempotency-Key: nd",
					 NULL};
	r = reqh(&s, "POST", "/v1/batches?task=square", "[1]\n", nd);
	CHECK_INT(r.status, 400);
	CHECK_CONTAINS(jstr(jget(r.json, "error"), "message"), "Idempotency-Key");
	resp_free(&r);
	/* Keys last across a crash: the retry after a kill -9 finds the batch. */
	server_kill9(&s);
	server_start(&s, "--workers", "1", NULL);
	r = post_keyed(&s, "order-17", body);
	CHECK_INT(r.status, 200);
	CHECK_INT(jint(r.json, "id"), id);
	resp_free(&r);
	json_t *res = results(&s, id);
	CHECK_INT(json_array_size(res), 2);
	json_decref(res);
	server_stop(&s);
}

TEST(failures_the_same_key_twice_in_one_turn_makes_one_batch)
{
	/* Two connections send the same keyed request at once. */
	struct server s;
	server_start(&s, "--workers", "1", NULL);
	const char *body = "{\"task\":\"square\",\"items\":[[9]]}";
	pid_t kids[4];
	for (int k = 0; k < 4; k++) {
		kids[k] = fork();
		if (kids[k] == 0) {
			struct resp r = post_keyed(&s, "same", body);
			_exit(r.status == 201 ? 1 : r.status == 200 ? 2 : 3);
		}
	}
	int created = 0, replayed = 0;
	for (int k = 0; k < 4; k++) {
		int st;
		waitpid(kids[k], &st, 0);
		created += WEXITSTATUS(st) == 1;
		replayed += WEXITSTATUS(st) == 2;
	}
	CHECK_INT(created, 1);
	CHECK_INT(replayed, 3);
	struct resp r = req(&s, "GET", "/v1/batches", NULL);
	CHECK_INT(json_array_size(jget(r.json, "batches")), 1);
	resp_free(&r);
	server_stop(&s);
}

/* A client whose ?wait answer was lost sends the request again: the replay
 * gets what the ?wait answer would have been (it waits until the batch is
 * done or the wait passes, and carries "results"), still as a replay: 200
 * with Idempotent-Replayed. */
TEST(failures_an_idempotent_replay_with_wait_waits_and_answers_with_the_results)
{
	struct server s;
	server_start(&s, "--workers", "2", NULL);
	const char *body = "{\"task\":\"sleep\",\"items\":[[1.5]]}";
	struct resp r = post_keyed(&s, "w2", body);
	CHECK_INT(r.status, 201);
	json_int_t id = jint(r.json, "id");
	resp_free(&r);
	r = post_keyed_at(&s, "/v1/batches?wait=30", "w2", body);
	CHECK_INT(r.status, 200);
	CHECK_INT(jint(r.json, "id"), id);
	CHECK_STR(jstr(r.json, "state"), "done");
	json_t *res = jget(r.json, "results");
	CHECK_INT(json_array_size(res), 1);
	CHECK_STR(jstr(json_array_get(res, 0), "state"), "finished");
	char *h = resp_header(&r, "Idempotent-Replayed"), *loc = resp_header(&r, "Location"), want[64];
	CHECK_STR(h, "true");
	snprintf(want, sizeof want, "/v1/batches/%lld", (long long)id);
	CHECK_STR(loc, want);
	free(h);
	free(loc);
	resp_free(&r);
	/* The wait passes first: the batch as it stands, with its results. */
	body = "{\"task\":\"sleep\",\"items\":[[30]]}";
	r = post_keyed(&s, "w3", body);
	CHECK_INT(r.status, 201);
	resp_free(&r);
	r = post_keyed_at(&s, "/v1/batches?wait=0.3", "w3", body);
	CHECK_INT(r.status, 200);
	CHECK(strcmp(jstr(r.json, "state"), "done") != 0);
	res = jget(r.json, "results");
	CHECK_INT(json_array_size(res), 1);
	CHECK(strcmp(jstr(json_array_get(res, 0), "state"), "finished") != 0);
	resp_free(&r);
	/* Without ?wait a replay is the batch alone, at once, as before. */
	r = post_keyed(&s, "w3", body);
	CHECK_INT(r.status, 200);
	CHECK(json_object_get(r.json, "results") == NULL);
	resp_free(&r);
	server_stop(&s);
}

/* The same keyed ?wait request from four connections at once: replays that
 * come in the first one's turn wait for its commit and then for the batch,
 * so every answer is the one batch, done, with its results. */
TEST(failures_the_same_key_with_wait_four_times_at_once_waits_for_one_batch)
{
	struct server s;
	server_start(&s, "--workers", "1", NULL);
	const char *body = "{\"task\":\"sleep\",\"items\":[[0.3]]}";
	pid_t kids[4];
	for (int k = 0; k < 4; k++) {
		kids[k] = fork();
		if (kids[k] == 0) {
			struct resp r = post_keyed_at(&s, "/v1/batches?wait=30", "same-wait", body);
			json_t *res = r.json ? json_object_get(r.json, "results") : NULL;
			json_t *st = r.json ? json_object_get(r.json, "state") : NULL;
			int whole = json_array_size(res) == 1 && json_is_string(st) &&
				    !strcmp(json_string_value(st), "done");
			_exit(!whole ? 3 : r.status == 201 ? 1 : r.status == 200 ? 2 : 3);
		}
	}
	int created = 0, replayed = 0;
	for (int k = 0; k < 4; k++) {
		int st;
		waitpid(kids[k], &st, 0);
		created += WEXITSTATUS(st) == 1;
		replayed += WEXITSTATUS(st) == 2;
	}
	CHECK_INT(created, 1);
	CHECK_INT(replayed, 3);
	struct resp r = req(&s, "GET", "/v1/batches", NULL);
	CHECK_INT(json_array_size(jget(r.json, "batches")), 1);
	resp_free(&r);
	server_stop(&s);
}

/* Polls batch id until its counts[state] reaches want; fails after secs. */
static void wait_count_of(const struct server *s, int64_t id, const char *state, int want, int secs)
{
	int64_t deadline = harness_now_ms() + secs * 1000;
	for (;;) {
		json_t *b = batch(s, id);
		json_int_t n = count(b, state);
		json_decref(b);
		if (n >= want)
			return;
		if (harness_now_ms() > deadline)
			FAILF("batch %lld: %lld %s after %d s, not %d", (long long)id, (long long)n, state,
			      secs, want);
		pause_ms(5);
	}
}

/* Small batches queued together travel in shared chunks (pool.c,
 * send_chunk): twenty single-item batches waiting for the one worker go in
 * a handful of chunks, each item still its own batch's and exact. */
TEST(failures_small_batches_queued_together_share_chunks)
{
	struct server s;
	server_start(&s, "--workers", "1", NULL);
	int64_t x = submit(&s, "{\"task\":\"sleep\",\"items\":[[1.5]]}");
	wait_count_of(&s, x, "running", 1, 30);
	double chunks = server_metric(&s, "forkpool_chunks_total");
	int64_t ids[20];
	for (int i = 0; i < 20; i++) {
		char body[96];
		snprintf(body, sizeof body, "{\"task\":\"square\",\"items\":[[%d]]}", i);
		ids[i] = submit(&s, body);
	}
	for (int i = 0; i < 20; i++) {
		json_t *b = wait_batch(&s, ids[i], 60);
		CHECK_INT(count(b, "finished"), 1);
		json_decref(b);
		json_t *f = future(&s, ids[i], 0, 0);
		CHECK_INT(jint(f, "result"), (json_int_t)i * i);
		CHECK_INT(jint(f, "attempts"), 1);
		json_decref(f);
	}
	double sent = server_metric(&s, "forkpool_chunks_total") - chunks;
	printf("    20 queued single-item batches went in %.0f chunks\n", sent);
	CHECK(sent >= 1 && sent <= 10);
	server_stop(&s);
}

/* Cancelling a batch with terminate kills the worker running its item, and
 * the items of other batches in that chunk go back to the queue: they run,
 * once, rather than being cancelled or lost. */
TEST(failures_terminate_in_a_shared_chunk_requeues_the_other_batches_items)
{
	struct server s;
	server_start(&s, "--workers", "1", NULL);
	int64_t x = submit(&s, "{\"task\":\"sleep\",\"items\":[[1.0]]}");
	wait_count_of(&s, x, "running", 1, 30);
	int64_t a = submit(&s, "{\"task\":\"sleep\",\"items\":[[60]]}");
	int64_t b[4];
	for (int i = 0; i < 4; i++)
		b[i] = submit(&s, "{\"task\":\"sleep\",\"items\":[[0]]}");
	/* After x: a's item and b[0]'s share a chunk (a queue of four behind a,
	 * one worker: a share of two). */
	wait_count_of(&s, a, "running", 1, 30);
	json_t *b0 = batch(&s, b[0]);
	CHECK_INT(count(b0, "running"), 1);
	json_decref(b0);
	char path[80];
	snprintf(path, sizeof path, "/v1/batches/%lld?terminate=true", (long long)a);
	struct resp r = req(&s, "DELETE", path, NULL);
	CHECK_INT(r.status, 200);
	resp_free(&r);
	json_t *ab = wait_batch(&s, a, 30);
	CHECK_INT(count(ab, "cancelled"), 1);
	json_decref(ab);
	for (int i = 0; i < 4; i++) {
		json_t *bb = wait_batch(&s, b[i], 30);
		CHECK_INT(count(bb, "finished"), 1);
		json_decref(bb);
		json_t *f = future(&s, b[i], 0, 0);
		CHECK_INT(jint(f, "attempts"), 1);
		json_decref(f);
	}
	/* Logged when the worker is reaped, which may come after the batches
	 * above are done. */
	CHECK_INT(server_log_wait(&s, 1, "event=worker_exit", "reason=cancelled", NULL), 1);
	server_stop(&s);
}
