/* test_api.c - the HTTP API v1 against the real server: every endpoint,
 * every error status, every built-in task, the README's examples with exact
 * answers, chunking, the task limit per child, crashes and timeouts. */
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "buf.h"
#include "client.h"
#include "harness.h"

/* The buffer's text, NUL-terminated. */
static char *buf_cstr(struct buf *b)
{
	buf_addc(b, '\0');
	b->len--;
	return b->data;
}

/* items [[0], [1], ... [n-1]] for task, as a batch body. */
static char *range_batch(const char *task, int n, const char *extra)
{
	struct buf b = {0};
	buf_printf(&b, "{\"task\":\"%s\",\"items\":[", task);
	for (int i = 0; i < n; i++)
		buf_printf(&b, "%s[%d]", i ? "," : "", i);
	buf_printf(&b, "]%s%s}", extra ? "," : "", extra ? extra : "");
	size_t len;
	return buf_steal(&b, &len);
}

static json_t *run_batch(const struct server *s, const char *body, json_t **batch)
{
	int64_t id = submit(s, body);
	json_t *b = wait_batch(s, id, 60);
	if (batch)
		*batch = b;
	else
		json_decref(b);
	return results(s, id);
}

static json_t *item(json_t *res, size_t i)
{
	json_t *f = json_array_get(res, i);
	if (!f)
		FAILF("no result %zu", i);
	return f;
}

static json_int_t count(const json_t *batch, const char *state)
{
	return jint(jget(batch, "counts"), state);
}

/* ---- the basics ---- */

TEST(api_healthz_answers_ok_with_the_worker_count)
{
	struct server s;
	server_start(&s, "--workers", "2", NULL);
	struct resp r = req(&s, "GET", "/healthz", NULL);
	CHECK_INT(r.status, 200);
	CHECK_STR(jstr(r.json, "status"), "ok");
	char *ct = resp_header(&r, "Content-Type");
	CHECK_STR(ct, "application/json");
	free(ct);
	resp_free(&r);
	/* The workers are started ahead of demand. */
	int64_t deadline = harness_now_ms() + 10000;
	for (;;) {
		r = req(&s, "GET", "/healthz", NULL);
		json_int_t n = jint(r.json, "workers");
		resp_free(&r);
		if (n == 2)
			break;
		CHECK(harness_now_ms() < deadline);
	}
	CHECK_INT(WEXITSTATUS(server_stop(&s)), 0);
}

TEST(api_tasks_lists_every_builtin_with_arity_and_doc)
{
	struct server s;
	server_start(&s, NULL);
	struct resp r = req(&s, "GET", "/v1/tasks", NULL);
	CHECK_INT(r.status, 200);
	json_t *tasks = jget(r.json, "tasks");
	static const char *const names[] = {"square", "power", "sum_squares", "sum_cubes",
					    "is_prime", "count_primes", "smallest_factor",
					    "monte_carlo_pi", "sleep", "spin", "fail", "fail_if",
					    "crash", "crash_if", "getpid", "echo", "alloc"};
	CHECK_INT(json_array_size(tasks), sizeof names / sizeof *names);
	for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
		json_t *t = NULL, *v;
		size_t k;
		json_array_foreach(tasks, k, v) if (!strcmp(jstr(v, "name"), names[i])) t = v;
		if (!t)
			FAILF("task %s is not listed", names[i]);
		CHECK(strlen(jstr(t, "doc")) > 0);
	}
	json_t *sq = json_array_get(tasks, 0);
	CHECK_STR(jstr(sq, "name"), "square");
	CHECK_INT(jint(sq, "arity"), 1);
	CHECK_STR(jstr(sq, "doc"), "x*x");
	resp_free(&r);
	server_stop(&s);
}

/* map(square, range(10)) */
TEST(api_square_of_range_10_is_exact_with_full_batch_and_future_objects)
{
	struct server s;
	server_start(&s, "--workers", "2", NULL);
	char *body = range_batch("square", 10, NULL);
	struct resp r = req(&s, "POST", "/v1/batches", body);
	free(body);
	CHECK_INT(r.status, 201);
	json_int_t id = jint(r.json, "id");
	char *loc = resp_header(&r, "Location"), want[64];
	snprintf(want, sizeof want, "/v1/batches/%lld", (long long)id);
	CHECK_STR(loc, want);
	free(loc);
	CHECK_STR(jstr(r.json, "task"), "square");
	CHECK_INT(jint(r.json, "size"), 10);
	CHECK_INT(jint(r.json, "chunksize"), 2); /* ceil(10 / (2 workers * 4)) */
	CHECK(json_is_null(jget(r.json, "timeout")));
	CHECK_INT(count(r.json, "pending") + count(r.json, "running") + count(r.json, "finished"), 10);
	const char *created = jstr(r.json, "created_at");
	/* RFC 3339 UTC: 2026-11-25T10:00:00.123Z */
	CHECK(strlen(created) >= 20 && created[4] == '-' && created[10] == 'T' &&
	      created[strlen(created) - 1] == 'Z');
	resp_free(&r);

	json_t *b = wait_batch(&s, id, 30);
	CHECK_STR(jstr(b, "state"), "done");
	CHECK_INT(count(b, "finished"), 10);
	CHECK_INT(count(b, "pending") + count(b, "running") + count(b, "failed") + count(b, "cancelled"), 0);
	CHECK(json_is_string(jget(b, "finished_at")));
	json_decref(b);

	json_t *res = results(&s, id);
	CHECK_INT(json_array_size(res), 10);
	for (int i = 0; i < 10; i++) {
		json_t *f = item(res, (size_t)i);
		CHECK_INT(jint(f, "index"), i);
		CHECK_STR(jstr(f, "state"), "finished");
		CHECK_INT(jint(f, "result"), i * i);
		CHECK_INT(jint(f, "attempts"), 1);
		CHECK(jint(f, "worker") > 0);
		CHECK(json_is_string(jget(f, "started_at")));
		CHECK(json_is_string(jget(f, "finished_at")));
		CHECK(!json_object_get(f, "error"));
	}
	json_decref(res);

	/* One future on its own. */
	snprintf(want, sizeof want, "/v1/batches/%lld/futures/7", (long long)id);
	r = req(&s, "GET", want, NULL);
	CHECK_INT(r.status, 200);
	CHECK_INT(jint(r.json, "index"), 7);
	CHECK_INT(jint(r.json, "result"), 49);
	resp_free(&r);
	server_stop(&s);
}

/* map(power, [2, 3, 4, 5], [10] * 4) */
TEST(api_power_example_is_exact)
{
	struct server s;
	server_start(&s, NULL);
	json_t *res = run_batch(&s, "{\"task\":\"power\",\"items\":[[2,10],[3,10],[4,10],[5,10]]}", NULL);
	static const long long want[] = {1024, 59049, 1048576, 9765625};
	for (size_t i = 0; i < 4; i++)
		CHECK_INT(jint(item(res, i), "result"), want[i]);
	json_decref(res);
	server_stop(&s);
}

TEST(api_count_primes_below_a_million_in_4_ranges_is_78498)
{
	struct server s;
	server_start(&s, "--workers", "2", NULL);
	json_t *res = run_batch(&s,
				"{\"task\":\"count_primes\",\"items\":[[0,250000],[250000,500000],"
				"[500000,750000],[750000,1000000]]}",
				NULL);
	long long total = 0;
	for (size_t i = 0; i < 4; i++)
		total += jint(item(res, i), "result");
	CHECK_INT(total, 78498);
	CHECK_INT(jint(item(res, 0), "result"), 22044);
	json_decref(res);
	server_stop(&s);
}

static long long trial_factor(long long n)
{
	for (long long d = 2; d * d <= n; d++)
		if (n % d == 0)
			return d;
	return 0;
}

TEST(api_smallest_factor_examples_match_trial_division)
{
	static const long long ns[] = {104729,   1000003,  999983,   7919LL * 7919, 1299827,
				       15485863, 49979687, 67867979, 104395303,     982451653};
	struct server s;
	server_start(&s, "--workers", "2", NULL);
	struct buf body = {0};
	buf_adds(&body, "{\"task\":\"smallest_factor\",\"items\":[");
	for (size_t i = 0; i < 10; i++)
		buf_printf(&body, "%s[%lld]", i ? "," : "", ns[i]);
	buf_adds(&body, "]}");
	json_t *res = run_batch(&s, buf_cstr(&body), NULL);
	buf_free(&body);
	for (size_t i = 0; i < 10; i++) {
		long long want = trial_factor(ns[i]);
		json_t *r = jget(item(res, i), "result");
		if (want)
			CHECK_INT(json_integer_value(r), want);
		else
			CHECK(json_is_null(r));
	}
	CHECK_INT(json_integer_value(jget(item(res, 3), "result")), 7919);
	json_decref(res);
	server_stop(&s);
}

static void fmt_u128(char *out, unsigned __int128 v)
{
	char tmp[48];
	int n = 0;
	do {
		tmp[n++] = (char)('0' + (int)(v % 10));
		v /= 10;
	} while (v);
	for (int i = 0; i < n; i++)
		out[i] = tmp[n - 1 - i];
	out[n] = '\0';
}

TEST(api_sum_squares_past_64_bits_is_exact)
{
	struct server s;
	server_start(&s, "--workers", "2", NULL);
	int64_t id = submit(&s, "{\"task\":\"sum_squares\",\"items\":[[10000000],[20000000],[30000000],[40000000]]}");
	json_decref(wait_batch(&s, id, 60));
	struct resp r = results_raw(&s, id, NULL);
	for (long long n = 10000000; n <= 40000000; n += 10000000) {
		unsigned __int128 v = (unsigned __int128)(n - 1) * (unsigned __int128)n * (2 * n - 1) / 6;
		char want[64];
		snprintf(want, sizeof want, "\"result\":");
		fmt_u128(want + strlen(want), v);
		CHECK_CONTAINS(r.body, want);
	}
	CHECK_CONTAINS(r.body, "\"result\":21333332533333340000000");
	resp_free(&r);
	server_stop(&s);
}

TEST(api_monte_carlo_pi_8_by_a_million_estimates_pi)
{
	struct server s;
	server_start(&s, "--workers", "2", NULL);
	struct buf body = {0};
	buf_adds(&body, "{\"task\":\"monte_carlo_pi\",\"items\":[");
	for (int i = 0; i < 8; i++)
		buf_printf(&body, "%s[1000000,%d]", i ? "," : "", i + 1);
	buf_adds(&body, "]}");
	json_t *a = run_batch(&s, buf_cstr(&body), NULL);
	json_t *again = run_batch(&s, buf_cstr(&body), NULL);
	buf_free(&body);
	long long inside = 0;
	for (size_t i = 0; i < 8; i++) {
		inside += jint(item(a, i), "result");
		/* The same seed gives the same answer. */
		CHECK_INT(jint(item(again, i), "result"), jint(item(a, i), "result"));
	}
	double pi = 4.0 * (double)inside / 8e6;
	if (pi < 3.13 || pi > 3.153)
		FAILF("pi estimated as %f", pi);
	json_decref(a);
	json_decref(again);
	server_stop(&s);
}

TEST(api_a_failing_item_fails_alone_in_its_chunk)
{
	struct server s;
	server_start(&s, "--workers", "1", NULL);
	json_t *b;
	json_t *res = run_batch(&s,
				"{\"task\":\"fail_if\",\"chunksize\":10,\"items\":[[0,3],[1,3],[2,3],[3,3],[4,3],"
				"[5,3],[6,3],[7,3],[8,3],[9,3]]}",
				&b);
	CHECK_INT(count(b, "finished"), 9);
	CHECK_INT(count(b, "failed"), 1);
	CHECK_STR(jstr(b, "state"), "done");
	for (size_t i = 0; i < 10; i++) {
		json_t *f = item(res, i);
		if (i == 3) {
			CHECK_STR(jstr(f, "state"), "failed");
			json_t *e = jget(f, "error");
			CHECK_STR(jstr(e, "type"), "task_error");
			CHECK_STR(jstr(e, "message"), "Cannot process 3");
			CHECK(!json_object_get(f, "result"));
		} else {
			CHECK_STR(jstr(f, "state"), "finished");
			CHECK_INT(jint(f, "result"), (long long)(i * i));
		}
	}
	/* The chunk went to one worker whole. */
	CHECK_INT(jint(item(res, 0), "worker"), jint(item(res, 9), "worker"));
	json_decref(res);
	json_decref(b);
	server_stop(&s);
}

TEST(api_every_other_builtin_task_answers_exactly)
{
	struct server s;
	server_start(&s, "--workers", "2", NULL);
	json_t *res;
	res = run_batch(&s, "{\"task\":\"sum_cubes\",\"items\":[[4],[0]]}", NULL);
	CHECK_INT(jint(item(res, 0), "result"), 36);
	CHECK_INT(jint(item(res, 1), "result"), 0);
	json_decref(res);
	int64_t id = submit(&s, "{\"task\":\"sum_cubes\",\"items\":[[3000000]]}");
	json_decref(wait_batch(&s, id, 30));
	struct resp r = results_raw(&s, id, NULL);
	/* (n(n-1)/2)^2 for n = 3e6 */
	CHECK_CONTAINS(r.body, "\"result\":20249986500002250000000000");
	resp_free(&r);

	res = run_batch(&s, "{\"task\":\"is_prime\",\"items\":[[2],[1],[0],[-7],[7919],[1000000007],[1000000008]]}",
			NULL);
	static const int primes[] = {1, 0, 0, 0, 1, 1, 0};
	for (size_t i = 0; i < 7; i++)
		CHECK_INT(json_is_true(jget(item(res, i), "result")), primes[i]);
	json_decref(res);

	res = run_batch(&s, "{\"task\":\"sleep\",\"items\":[[0.01],[0]]}", NULL);
	CHECK(json_is_null(jget(item(res, 0), "result")));
	CHECK_STR(jstr(item(res, 1), "state"), "finished");
	json_decref(res);

	res = run_batch(&s, "{\"task\":\"spin\",\"items\":[[0.05]]}", NULL);
	CHECK(json_is_null(jget(item(res, 0), "result")));
	json_decref(res);

	res = run_batch(&s, "{\"task\":\"fail\",\"items\":[[\"no luck\"]]}", NULL);
	CHECK_STR(jstr(jget(item(res, 0), "error"), "type"), "task_error");
	CHECK_STR(jstr(jget(item(res, 0), "error"), "message"), "no luck");
	json_decref(res);

	res = run_batch(&s, "{\"task\":\"getpid\",\"items\":[[]]}", NULL);
	CHECK_INT(jint(item(res, 0), "result"), jint(item(res, 0), "worker"));
	json_decref(res);

	res = run_batch(&s, "{\"task\":\"echo\",\"items\":[[1,\"two\",[3.5,null],{\"k\":true}],[]]}", NULL);
	char *echo = json_dumps(jget(item(res, 0), "result"), JSON_COMPACT);
	CHECK_STR(echo, "[1,\"two\",[3.5,null],{\"k\":true}]");
	free(echo);
	CHECK_INT(json_array_size(jget(item(res, 1), "result")), 0);
	json_decref(res);

	res = run_batch(&s, "{\"task\":\"crash_if\",\"items\":[[5,6]]}", NULL);
	CHECK_INT(jint(item(res, 0), "result"), 5);
	json_decref(res);

	res = run_batch(&s, "{\"task\":\"square\",\"items\":[[1.5],[-3]]}", NULL);
	CHECK(json_real_value(jget(item(res, 0), "result")) == 2.25);
	CHECK_INT(jint(item(res, 1), "result"), 9);
	json_decref(res);
	/* Just past INT64_MAX. */
	id = submit(&s, "{\"task\":\"square\",\"items\":[[3037000500]]}");
	json_decref(wait_batch(&s, id, 30));
	r = results_raw(&s, id, NULL);
	CHECK_CONTAINS(r.body, "\"result\":9223372037000250000,");
	resp_free(&r);
	server_stop(&s);
}

TEST(api_integers_are_exact_to_128_bits_and_overflow_is_an_error)
{
	struct server s;
	server_start(&s, NULL);
	int64_t id = submit(&s, "{\"task\":\"power\",\"items\":[[2,126],[-2,127],[2,200],[40000000000,2]]}");
	json_decref(wait_batch(&s, id, 30));
	struct resp r = results_raw(&s, id, NULL);
	CHECK_CONTAINS(r.body, "\"result\":85070591730234615865843651857942052864");
	CHECK_CONTAINS(r.body, "\"result\":-170141183460469231731687303715884105728");
	CHECK_CONTAINS(r.body, "\"result\":1600000000000000000000");
	resp_free(&r);
	char path[128];
	snprintf(path, sizeof path, "/v1/batches/%lld/futures/2", (long long)id);
	r = req(&s, "GET", path, NULL);
	CHECK_STR(jstr(r.json, "state"), "failed");
	CHECK_STR(jstr(jget(r.json, "error"), "type"), "task_error");
	CHECK_CONTAINS(jstr(jget(r.json, "error"), "message"), "overflow");
	resp_free(&r);
	server_stop(&s);
}

/* ---- the pool ---- */

TEST(api_a_crash_in_a_chunk_costs_one_item_and_the_pool_recovers)
{
	struct server s;
	server_start(&s, "--workers", "1", NULL);
	json_t *b;
	json_t *res = run_batch(&s, "{\"task\":\"crash_if\",\"chunksize\":5,\"items\":[[0,2],[1,2],[2,2],[3,2],[4,2]]}",
				&b);
	CHECK_INT(count(b, "finished"), 4);
	CHECK_INT(count(b, "failed"), 1);
	json_t *f = item(res, 2);
	CHECK_STR(jstr(jget(f, "error"), "type"), "worker_died");
	CHECK_CONTAINS(jstr(jget(f, "error"), "message"), "signal 6");
	for (size_t i = 0; i < 5; i++)
		if (i != 2)
			CHECK_INT(jint(item(res, i), "result"), (long long)i);
	json_decref(res);
	json_decref(b);
	/* The pool is whole again and other work runs. */
	res = run_batch(&s, "{\"task\":\"square\",\"items\":[[12]]}", NULL);
	CHECK_INT(jint(item(res, 0), "result"), 144);
	json_decref(res);
	CHECK(server_log_count(&s, "event=worker_exit", NULL) >= 1);
	res = run_batch(&s, "{\"task\":\"crash\",\"items\":[[]]}", NULL);
	CHECK_STR(jstr(jget(item(res, 0), "error"), "type"), "worker_died");
	json_decref(res);
	server_stop(&s);
}

TEST(api_an_item_past_its_timeout_fails_timeout_and_others_finish)
{
	struct server s;
	server_start(&s, "--workers", "2", NULL);
	int64_t t0 = harness_now_ms();
	json_t *b;
	json_t *res = run_batch(&s, "{\"task\":\"spin\",\"timeout\":1,\"chunksize\":1,\"items\":[[30],[0.01]]}", &b);
	int64_t took = harness_now_ms() - t0;
	CHECK(json_real_value(jget(b, "timeout")) == 1.0);
	CHECK_STR(jstr(jget(item(res, 0), "error"), "type"), "timeout");
	CHECK_STR(jstr(item(res, 1), "state"), "finished");
	if (took > 10000)
		FAILF("the timed-out batch took %lld ms", (long long)took);
	json_decref(res);
	json_decref(b);
	server_stop(&s);
}

TEST(api_max_tasks_per_child_2_gives_six_items_three_workers)
{
	struct server s;
	server_start(&s, "--workers", "1", "--max-tasks-per-child", "2", NULL);
	json_t *res = run_batch(&s, "{\"task\":\"getpid\",\"items\":[[],[],[],[],[],[]]}", NULL);
	long long pids[6];
	int distinct = 0;
	for (size_t i = 0; i < 6; i++) {
		pids[i] = jint(item(res, i), "result");
		int seen = 0;
		for (size_t k = 0; k < i; k++)
			seen |= pids[k] == pids[i];
		distinct += !seen;
	}
	CHECK_INT(distinct, 3);
	/* Each worker ran two consecutive items. */
	CHECK_INT(pids[0], pids[1]);
	CHECK_INT(pids[2], pids[3]);
	CHECK_INT(pids[4], pids[5]);
	json_decref(res);
	server_stop(&s);
}

/* A chunk is cut at the worker's remaining task limit: with chunksize 6 and
 * a limit of 2 the six items still go to three workers, two each (the
 * automatic chunk size, 2 here, would not show it). */
TEST(api_chunks_are_cut_to_the_max_tasks_per_child_limit)
{
	struct server s;
	server_start(&s, "--workers", "1", "--max-tasks-per-child", "2", NULL);
	json_t *b = NULL;
	json_t *res = run_batch(&s, "{\"task\":\"getpid\",\"chunksize\":6,\"items\":[[],[],[],[],[],[]]}", &b);
	CHECK_INT(jint(b, "chunksize"), 6);
	json_decref(b);
	for (size_t i = 0; i < 6; i += 2) {
		CHECK_INT(jint(item(res, i), "result"), jint(item(res, i + 1), "result"));
		if (i)
			CHECK(jint(item(res, i), "result") != jint(item(res, i - 1), "result"));
	}
	json_decref(res);
	server_stop(&s);
}

/* Results are written in group commits, one transaction a loop turn: a
 * batch of 20,000 items takes a few dozen, not one per item. */
TEST(api_results_are_stored_in_group_commits_not_one_per_item)
{
	struct server s;
	server_start(&s, "--workers", "2", NULL);
	double before = server_metric(&s, "forkpool_db_commits_total{result=\"ok\"}");
	struct buf body = {0};
	buf_adds(&body, "{\"task\":\"square\",\"chunksize\":1000,\"items\":[");
	for (int i = 0; i < 20000; i++)
		buf_printf(&body, "%s[%d]", i ? "," : "", i);
	buf_adds(&body, "]}");
	json_t *res = run_batch(&s, body.data, NULL);
	buf_free(&body);
	CHECK_INT(json_array_size(res), 20000);
	CHECK_INT(jint(item(res, 19999), "result"), 19999LL * 19999);
	json_decref(res);
	double commits = server_metric(&s, "forkpool_db_commits_total{result=\"ok\"}") - before;
	printf("    20,000 items in 20 chunks: %.0f commits\n", commits);
	CHECK(commits >= 1);
	CHECK(commits < 1000);
	server_stop(&s);
}

/* A turn stores the results its workers have already sent in its own
 * commit: on one CPU a woken worker runs before the server goes on, so a
 * single-item call (submission, claim and result) takes about one commit
 * instead of two. */
TEST(api_a_result_sent_before_the_commit_goes_in_that_commit)
{
	cpu_set_t one, all;
	CHECK(sched_getaffinity(0, sizeof all, &all) == 0);
	CPU_ZERO(&one);
	CPU_SET(sched_getcpu() >= 0 ? sched_getcpu() : 0, &one);
	CHECK(sched_setaffinity(0, sizeof one, &one) == 0); /* the server and workers inherit it */
	struct server s;
	server_start(&s, "--workers", "1", NULL);
	CHECK(sched_setaffinity(0, sizeof all, &all) == 0);
	const int calls = 40;
	json_decref(run_batch(&s, "{\"task\":\"echo\",\"items\":[[0]]}", NULL)); /* warm */
	/* It takes the worker running as soon as its chunk wakes it, before
	 * the loop reaches its commit: what the scheduler does on one idle CPU,
	 * but not always when other processes share it (several test suites
	 * at once, say). So up to three rounds; without the feature every
	 * round is two commits a call, 80. */
	double commits = 0;
	for (int round = 0; round < 3; round++) {
		double before = server_metric(&s, "forkpool_db_commits_total{result=\"ok\"}");
		for (int i = 0; i < calls; i++) {
			struct resp r = req(&s, "POST", "/v1/batches?wait=5",
					    "{\"task\":\"echo\",\"items\":[[7]]}");
			CHECK_INT(r.status, 201);
			CHECK(r.body && strstr(r.body, "\"state\":\"done\""));
			resp_free(&r);
		}
		commits = server_metric(&s, "forkpool_db_commits_total{result=\"ok\"}") - before;
		printf("    %d single-item calls on one CPU: %.0f commits\n", calls, commits);
		CHECK(commits >= calls * 0.9);
		if (commits < calls * 1.8)
			break;
	}
	CHECK(commits < calls * 1.8);
	server_stop(&s);
}

TEST(api_chunks_go_whole_to_one_worker)
{
	struct server s;
	server_start(&s, "--workers", "2", NULL);
	char *body = range_batch("square", 20, "\"chunksize\":10");
	json_t *b;
	json_t *res = run_batch(&s, body, &b);
	free(body);
	CHECK_INT(jint(b, "chunksize"), 10);
	for (size_t i = 0; i < 20; i++)
		CHECK_INT(jint(item(res, i), "worker"), jint(item(res, i < 10 ? 0 : 10), "worker"));
	json_decref(res);
	json_decref(b);
	/* Automatic: ceil(100 / (2 workers x 4)) = 13. */
	body = range_batch("square", 100, NULL);
	struct resp r = req(&s, "POST", "/v1/batches", body);
	free(body);
	CHECK_INT(jint(r.json, "chunksize"), 13);
	resp_free(&r);
	server_stop(&s);
	/* --chunksize sets the default. */
	server_start(&s, "--chunksize", "7", NULL);
	body = range_batch("square", 100, NULL);
	r = req(&s, "POST", "/v1/batches", body);
	free(body);
	CHECK_INT(jint(r.json, "chunksize"), 7);
	resp_free(&r);
	server_stop(&s);
}

/* ---- reading ---- */

TEST(api_batches_are_listed_newest_first_and_paged)
{
	struct server s;
	server_start(&s, NULL);
	int64_t ids[3];
	for (int i = 0; i < 3; i++)
		ids[i] = submit(&s, "{\"task\":\"square\",\"items\":[[1]]}");
	struct resp r = req(&s, "GET", "/v1/batches", NULL);
	CHECK_INT(r.status, 200);
	json_t *list = jget(r.json, "batches");
	CHECK_INT(json_array_size(list), 3);
	CHECK_INT(jint(json_array_get(list, 0), "id"), ids[2]);
	CHECK_INT(jint(json_array_get(list, 2), "id"), ids[0]);
	resp_free(&r);
	r = req(&s, "GET", "/v1/batches?limit=2", NULL);
	list = jget(r.json, "batches");
	CHECK_INT(json_array_size(list), 2);
	json_int_t next = jint(r.json, "next");
	CHECK_INT(next, ids[1]);
	resp_free(&r);
	char path[64];
	snprintf(path, sizeof path, "/v1/batches?limit=2&after=%lld", (long long)next);
	r = req(&s, "GET", path, NULL);
	list = jget(r.json, "batches");
	CHECK_INT(json_array_size(list), 1);
	CHECK_INT(jint(json_array_get(list, 0), "id"), ids[0]);
	resp_free(&r);
	r = req(&s, "GET", "/v1/batches?limit=0", NULL);
	CHECK_INT(r.status, 400);
	resp_free(&r);
	server_stop(&s);
}

TEST(api_results_in_completion_order_and_paged)
{
	struct server s;
	server_start(&s, "--workers", "2", NULL);
	/* Item 0 sleeps long enough that item 1 finishes first. */
	int64_t id = submit(&s, "{\"task\":\"sleep\",\"chunksize\":1,\"items\":[[0.5],[0.01]]}");
	json_decref(wait_batch(&s, id, 30));
	struct resp r = results_raw(&s, id, "order=completed");
	json_t *res = jget(r.json, "results");
	CHECK_INT(json_array_size(res), 2);
	CHECK_INT(jint(item(res, 0), "index"), 1);
	CHECK_INT(jint(item(res, 1), "index"), 0);
	resp_free(&r);
	r = results_raw(&s, id, NULL);
	CHECK_INT(jint(item(jget(r.json, "results"), 0), "index"), 0);
	resp_free(&r);

	/* Paging in submission order: after is the last index seen. */
	char *body = range_batch("square", 25, NULL);
	id = submit(&s, body);
	free(body);
	json_decref(wait_batch(&s, id, 30));
	int seen = 0;
	char q[64] = "limit=10";
	for (int page = 0; page < 5; page++) {
		r = results_raw(&s, id, q);
		res = jget(r.json, "results");
		size_t k;
		json_t *f;
		json_array_foreach(res, k, f) CHECK_INT(jint(f, "index"), seen++);
		if (json_array_size(res) == 0) {
			CHECK(json_is_null(jget(r.json, "next")));
			resp_free(&r);
			break;
		}
		snprintf(q, sizeof q, "limit=10&after=%lld", (long long)jint(r.json, "next"));
		resp_free(&r);
	}
	CHECK_INT(seen, 25);
	/* Paging in completion order visits each item once. */
	int n = 0;
	snprintf(q, sizeof q, "order=completed&limit=7");
	for (int page = 0; page < 6; page++) {
		r = results_raw(&s, id, q);
		res = jget(r.json, "results");
		n += (int)json_array_size(res);
		if (!json_array_size(res)) {
			resp_free(&r);
			break;
		}
		snprintf(q, sizeof q, "order=completed&limit=7&after=%lld", (long long)jint(r.json, "next"));
		resp_free(&r);
	}
	CHECK_INT(n, 25);
	r = results_raw(&s, id, "order=completed");
	CHECK_INT(json_array_size(jget(r.json, "results")), 25);
	resp_free(&r);
	server_stop(&s);
}

TEST(api_long_polls_answer_when_done_or_when_the_wait_ends)
{
	struct server s;
	server_start(&s, "--workers", "1", NULL);
	int64_t id = submit(&s, "{\"task\":\"sleep\",\"items\":[[0.3]]}");
	char path[128];
	int64_t t0 = harness_now_ms();
	snprintf(path, sizeof path, "/v1/batches/%lld?wait=30", (long long)id);
	struct resp r = req(&s, "GET", path, NULL);
	int64_t took = harness_now_ms() - t0;
	CHECK_INT(r.status, 200);
	CHECK_STR(jstr(r.json, "state"), "done");
	CHECK(took < 10000);
	resp_free(&r);

	/* A future's long-poll. */
	id = submit(&s, "{\"task\":\"sleep\",\"items\":[[0.2],[0.2]]}");
	snprintf(path, sizeof path, "/v1/batches/%lld/futures/1?wait=30", (long long)id);
	r = req(&s, "GET", path, NULL);
	CHECK_INT(r.status, 200);
	CHECK_STR(jstr(r.json, "state"), "finished");
	resp_free(&r);

	/* The wait ends before the batch does: the answer shows it unfinished. */
	id = submit(&s, "{\"task\":\"sleep\",\"items\":[[20]]}");
	t0 = harness_now_ms();
	snprintf(path, sizeof path, "/v1/batches/%lld?wait=0.3", (long long)id);
	r = req(&s, "GET", path, NULL);
	took = harness_now_ms() - t0;
	CHECK_INT(r.status, 200);
	CHECK(strcmp(jstr(r.json, "state"), "done") != 0);
	CHECK(took >= 250 && took < 5000);
	resp_free(&r);
	snprintf(path, sizeof path, "/v1/batches/%lld/futures/0?wait=0.2", (long long)id);
	r = req(&s, "GET", path, NULL);
	CHECK_INT(r.status, 200);
	CHECK(strcmp(jstr(r.json, "state"), "finished") != 0);
	resp_free(&r);
	snprintf(path, sizeof path, "/v1/batches/%lld?wait=forever", (long long)id);
	r = req(&s, "GET", path, NULL);
	CHECK_INT(r.status, 400);
	CHECK_CONTAINS(r.body, "wait");
	resp_free(&r);
	server_stop(&s);
}

/* ---- errors ---- */

static void expect_error(const struct server *s, const char *method, const char *path, const char *body,
			 long status, const char *code, const char *msg)
{
	struct resp r = req(s, method, path, body);
	if (r.status != status)
		FAILF("%s %s %s: status %ld, expected %ld: %s", method, path, body ? body : "", r.status,
		      status, r.body);
	char *ct = resp_header(&r, "Content-Type");
	CHECK_STR(ct, "application/json");
	free(ct);
	if (!r.json)
		FAILF("the error is not JSON: %s", r.body);
	json_t *e = jget(r.json, "error");
	CHECK_STR(jstr(e, "code"), code);
	if (msg && !strstr(jstr(e, "message"), msg))
		FAILF("%s %s %s: message \"%s\" lacks \"%s\"", method, path, body ? body : "",
		      jstr(e, "message"), msg);
	resp_free(&r);
}

TEST(api_invalid_batches_are_400_naming_the_field_and_store_nothing)
{
	struct server s;
	server_start(&s, NULL);
	static const struct {
		const char *body, *code, *msg;
	} cases[] = {
	    {"{\"task\":\"square\",\"items\":[[1]]", "invalid_json", "not valid JSON"},
	    {"", "invalid_json", NULL},
	    {"[1,2]", "invalid_request", "JSON object"},
	    {"{\"items\":[[1]]}", "invalid_request", "task: is required"},
	    {"{\"task\":5,\"items\":[[1]]}", "invalid_request", "task: must be a string"},
	    {"{\"task\":\"cube\",\"items\":[[1]]}", "invalid_request", "no task \"cube\""},
	    {"{\"task\":\"square\"}", "invalid_request", "items: is required"},
	    {"{\"task\":\"square\",\"items\":[]}", "invalid_request", "items: must not be empty"},
	    {"{\"task\":\"square\",\"items\":{}}", "invalid_request", "items: must be an array"},
	    {"{\"task\":\"square\",\"items\":[[1],[2],[3],[4,5]]}", "invalid_request",
	     "items[3]: square takes 1 argument, got 2"},
	    {"{\"task\":\"square\",\"items\":[[1],2]}", "invalid_request", "items[1]"},
	    {"{\"task\":\"square\",\"items\":[[\"x\"]]}", "invalid_request", "items[0]"},
	    {"{\"task\":\"power\",\"items\":[[2]]}", "invalid_request", "items[0]: power takes 2 arguments, got 1"},
	    {"{\"task\":\"sleep\",\"items\":[[-1]]}", "invalid_request", "items[0]"},
	    {"{\"task\":\"square\",\"items\":[[1]],\"chunksize\":0}", "invalid_request", "chunksize"},
	    {"{\"task\":\"square\",\"items\":[[1]],\"chunksize\":\"2\"}", "invalid_request", "chunksize"},
	    {"{\"task\":\"square\",\"items\":[[1]],\"timeout\":-1}", "invalid_request", "timeout"},
	    {"{\"task\":\"square\",\"items\":[[1]],\"timeout\":\"1\"}", "invalid_request", "timeout"},
	    {"{\"task\":\"square\",\"items\":[[1]],\"priority\":1}", "invalid_request", "unknown field \"priority\""},
	    {"{\"task\":\"square\",\"task\":\"square\",\"items\":[[1]]}", "invalid_json", "duplicate"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
		expect_error(&s, "POST", "/v1/batches", cases[i].body, 400, cases[i].code, cases[i].msg);
	struct resp r = req(&s, "GET", "/v1/batches", NULL);
	CHECK_INT(json_array_size(jget(r.json, "batches")), 0);
	resp_free(&r);
	/* The server is unaffected. */
	json_t *res = run_batch(&s, "{\"task\":\"square\",\"items\":[[3]]}", NULL);
	CHECK_INT(jint(item(res, 0), "result"), 9);
	json_decref(res);
	server_stop(&s);
}

TEST(api_optional_fields_given_as_null_take_their_defaults)
{
	struct server s;
	server_start(&s, "--workers", "1", NULL);
	struct resp r = req(&s, "POST", "/v1/batches?wait=30",
			    "{\"task\":\"square\",\"items\":[[1],[2],[3],[4],[5],[6],[7],[8],[9]],"
			    "\"chunksize\":null,\"timeout\":null,\"retries\":null}");
	CHECK_INT(r.status, 201);
	CHECK_INT(jint(r.json, "chunksize"), 3); /* 9 items over 1 worker's 4 chunks */
	CHECK(json_is_null(jget(r.json, "timeout")));
	CHECK_INT(jint(r.json, "retries"), 0);
	CHECK_INT(jint(json_array_get(jget(r.json, "results"), 8), "result"), 81);
	resp_free(&r);
	server_stop(&s);
}

TEST(api_unknown_things_are_404_wrong_methods_405)
{
	struct server s;
	server_start(&s, NULL);
	int64_t id = submit(&s, "{\"task\":\"square\",\"items\":[[1],[2]]}");
	char path[128];
	expect_error(&s, "GET", "/v1/batches/999999", NULL, 404, "not_found", "no batch 999999");
	expect_error(&s, "GET", "/v1/batches/abc", NULL, 404, "not_found", NULL);
	expect_error(&s, "GET", "/v1/batches/999999/results", NULL, 404, "not_found", NULL);
	snprintf(path, sizeof path, "/v1/batches/%lld/futures/2", (long long)id);
	expect_error(&s, "GET", path, NULL, 404, "not_found", "no future 2");
	expect_error(&s, "GET", "/v1/nothing", NULL, 404, "not_found", "no route");
	expect_error(&s, "GET", "/", NULL, 404, "not_found", NULL);
	expect_error(&s, "PUT", "/v1/batches", "{}", 405, "method_not_allowed", NULL);
	expect_error(&s, "POST", "/v1/tasks", "{}", 405, "method_not_allowed", NULL);
	expect_error(&s, "POST", "/healthz", "{}", 405, "method_not_allowed", NULL);
	snprintf(path, sizeof path, "/v1/batches/%lld", (long long)id);
	expect_error(&s, "PATCH", path, "{}", 405, "method_not_allowed", NULL);
	struct resp r = req(&s, "PUT", "/v1/batches", "{}");
	char *allow = resp_header(&r, "Allow");
	CHECK_STR(allow, "GET, HEAD, POST");
	free(allow);
	resp_free(&r);
	snprintf(path, sizeof path, "/v1/batches/%lld/results?order=random", (long long)id);
	expect_error(&s, "GET", path, NULL, 400, "invalid_request", "order");
	server_stop(&s);
}

/* HEAD is answered wherever GET is, so a 405's Allow names it too. */
TEST(api_allow_lists_head_wherever_get_is_allowed)
{
	struct server s;
	server_start(&s, NULL);
	int64_t id = submit(&s, "{\"task\":\"square\",\"items\":[[1]]}");
	json_decref(wait_batch(&s, id, 30));
	static const struct {
		const char *method, *path, *allow;
	} cases[] = {
	    {"PUT", "/healthz", "GET, HEAD"},
	    {"POST", "/metrics", "GET, HEAD"},
	    {"POST", "/v1/workers", "GET, HEAD"},
	    {"POST", "/v1/tasks", "GET, HEAD"},
	    {"PUT", "/v1/batches", "GET, HEAD, POST"},
	    {"PATCH", "/v1/batches/1", "GET, HEAD, DELETE"},
	    {"POST", "/v1/batches/1/results", "GET, HEAD"},
	    {"POST", "/v1/batches/1/futures/0", "GET, HEAD"},
	    {"GET", "/v1/batches/1/futures/0/cancel", "POST"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		struct resp r = req(&s, cases[i].method, cases[i].path, NULL);
		if (r.status != 405)
			FAILF("%s %s: status %ld, expected 405", cases[i].method, cases[i].path, r.status);
		char *allow = resp_header(&r, "Allow");
		if (!allow || strcmp(allow, cases[i].allow))
			FAILF("%s %s: Allow is \"%s\", expected \"%s\"", cases[i].method, cases[i].path,
			      allow ? allow : "(none)", cases[i].allow);
		free(allow);
		resp_free(&r);
		if (strstr(cases[i].allow, "HEAD")) {
			/* and HEAD is indeed answered there */
			r = req(&s, "HEAD", cases[i].path, NULL);
			if (r.status != 200)
				FAILF("HEAD %s: status %ld, expected 200", cases[i].path, r.status);
			resp_free(&r);
		}
	}
	server_stop(&s);
}

TEST(api_wrong_content_type_is_415_and_big_bodies_413)
{
	struct server s;
	server_start(&s, "--max-body", "1K", NULL);
	static const char *const form[] = {"Content-Type: application/x-www-form-urlencoded", NULL};
	struct resp r = reqh(&s, "POST", "/v1/batches", "{\"task\":\"square\",\"items\":[[1]]}", form);
	CHECK_INT(r.status, 415);
	CHECK_STR(jstr(jget(r.json, "error"), "code"), "unsupported_media_type");
	resp_free(&r);
	char *body = range_batch("square", 400, NULL); /* about 2.5 KB */
	r = req(&s, "POST", "/v1/batches", body);
	free(body);
	CHECK_INT(r.status, 413);
	CHECK_STR(jstr(jget(r.json, "error"), "code"), "payload_too_large");
	resp_free(&r);
	r = req(&s, "GET", "/v1/batches", NULL);
	CHECK_INT(json_array_size(jget(r.json, "batches")), 0);
	resp_free(&r);
	/* Just under the limit is fine. */
	body = range_batch("square", 100, NULL);
	r = req(&s, "POST", "/v1/batches", body);
	free(body);
	CHECK_INT(r.status, 201);
	resp_free(&r);
	server_stop(&s);
}

/* ---- the server's life ---- */

TEST(api_results_survive_a_clean_restart)
{
	struct server s;
	server_start(&s, "--workers", "2", NULL);
	char *body = range_batch("square", 50, NULL);
	int64_t id = submit(&s, body);
	free(body);
	json_decref(wait_batch(&s, id, 30));
	struct resp before = results_raw(&s, id, NULL);
	int st = server_stop(&s);
	CHECK(WIFEXITED(st));
	CHECK_INT(WEXITSTATUS(st), 0);
	server_start(&s, "--workers", "1", NULL);
	struct resp after = results_raw(&s, id, NULL);
	CHECK_STR(after.body, before.body);
	resp_free(&before);
	resp_free(&after);
	server_stop(&s);
}

TEST_T(api_a_killed_server_finishes_every_accepted_item_after_restart, 120)
{
	struct server s;
	server_start(&s, "--workers", "1", NULL);
	int64_t id = submit(&s, "{\"task\":\"sleep\",\"chunksize\":5,\"items\":[[0.05],[0.05],[0.05],[0.05],"
				"[0.05],[0.05],[0.05],[0.05],[0.05],[0.05],[0.05],[0.05],[0.05],[0.05],"
				"[0.05],[0.05],[0.05],[0.05],[0.05],[0.05]]}");
	char path[128];
	snprintf(path, sizeof path, "/v1/batches/%lld/futures/2?wait=30", (long long)id);
	struct resp r = req(&s, "GET", path, NULL);
	CHECK_STR(jstr(r.json, "state"), "finished");
	resp_free(&r);
	server_kill9(&s);
	server_start(&s, "--workers", "2", NULL);
	json_t *b = wait_batch(&s, id, 60);
	CHECK_INT(count(b, "finished"), 20);
	json_decref(b);
	json_t *res = results(&s, id);
	CHECK_INT(json_array_size(res), 20);
	CHECK_INT(jint(item(res, 2), "attempts"), 1);
	json_decref(res);
	server_stop(&s);
}

TEST(api_sigterm_stops_cleanly_and_sigint_too)
{
	struct server s;
	server_start(&s, NULL);
	int st = server_stop(&s);
	CHECK(WIFEXITED(st));
	CHECK_INT(WEXITSTATUS(st), 0);
	server_start(&s, NULL);
	kill(s.pid, SIGINT);
	waitpid(s.pid, &st, 0);
	s.pid = 0;
	CHECK(WIFEXITED(st));
	CHECK_INT(WEXITSTATUS(st), 0);
	CHECK(server_log_count(&s, "event=stop", NULL) + server_log_count(&s, "event=exit", NULL) >= 1);
}

TEST(api_environment_sets_flags_and_flags_win)
{
	setenv("FORKPOOL_WORKERS", "1", 1);
	setenv("FORKPOOL_CHUNKSIZE", "3", 1);
	struct server s;
	server_start(&s, NULL);
	char *body = range_batch("square", 10, NULL);
	struct resp r = req(&s, "POST", "/v1/batches", body);
	CHECK_INT(jint(r.json, "chunksize"), 3);
	resp_free(&r);
	server_stop(&s);
	server_start(&s, "--chunksize", "4", NULL);
	r = req(&s, "POST", "/v1/batches", body);
	CHECK_INT(jint(r.json, "chunksize"), 4);
	resp_free(&r);
	server_stop(&s);
	/* A flag wins even over an environment value that is not valid, and
	 * for every kind of option: the address, the database, sync, the
	 * task limit. */
	setenv("FORKPOOL_CHUNKSIZE", "many", 1);
	setenv("FORKPOOL_LISTEN", "192.0.2.1:1", 1);
	setenv("FORKPOOL_DB", "/nonexistent/dir/x.db", 1);
	setenv("FORKPOOL_SYNC", "full", 1);
	setenv("FORKPOOL_MAX_TASKS_PER_CHILD", "1", 1);
	server_start(&s, "--chunksize", "5", "--db", "flag.db", "--sync", "normal",
		     "--max-tasks-per-child", "0", NULL);
	r = req(&s, "POST", "/v1/batches", body);
	CHECK_INT(jint(r.json, "chunksize"), 5);
	resp_free(&r);
	CHECK_INT(server_log_count(&s, "event=start", "db=\"flag.db\"", "sync=normal",
				   "max_tasks_per_child=0", NULL), 1);
	CHECK_INT(server_log_count(&s, "event=listen", "addr=127.0.0.1:", NULL), 1);
	free(body);
	server_stop(&s);
}

static int run_server_cmd(const char *args, char *out, size_t outlen)
{
	char cmd[1024];
	snprintf(cmd, sizeof cmd, "%s/forkpoold %s 2>&1", harness_bin_dir(), args);
	FILE *p = popen(cmd, "r");
	if (!p)
		FAILF("popen failed");
	size_t n = fread(out, 1, outlen - 1, p);
	out[n] = '\0';
	return pclose(p);
}

/* A second server on an address one is already listening on refuses to
 * start: it must not share the port (SO_REUSEPORT would let the kernel
 * split the clients between two servers and two databases). */
TEST(api_an_address_in_use_is_refused_not_shared)
{
	struct server s;
	server_start(&s, "--workers", "1", NULL);
	/* If it did start, timeout ends it (exit 124): a failure, not a hang. */
	char cmd[1024], out[8192];
	snprintf(cmd, sizeof cmd,
		 "timeout -s KILL 10 %s/forkpoold --listen 127.0.0.1:%d --db ./second.db --workers 1 2>&1",
		 harness_bin_dir(), s.port);
	FILE *p = popen(cmd, "r");
	if (!p)
		FAILF("popen failed");
	size_t n = fread(out, 1, sizeof out - 1, p);
	out[n] = '\0';
	int st = pclose(p);
	CHECK(WIFEXITED(st));
	CHECK_INT(WEXITSTATUS(st), 1);
	CHECK_CONTAINS(out, "cannot listen there");
	server_stop(&s);
}

TEST(api_help_and_bad_flags)
{
	char out[8192];
	int st = run_server_cmd("--help", out, sizeof out);
	CHECK_INT(WEXITSTATUS(st), 0);
	CHECK_CONTAINS(out, "--max-tasks-per-child");
	CHECK_CONTAINS(out, "FORKPOOL_");
	st = run_server_cmd("--workers zero", out, sizeof out);
	CHECK(WEXITSTATUS(st) != 0);
	CHECK_CONTAINS(out, "workers");
	st = run_server_cmd("--bogus", out, sizeof out);
	CHECK(WEXITSTATUS(st) != 0);
	st = run_server_cmd("--listen 127.0.0.1:0 --db ./x.db --sync sometimes", out, sizeof out);
	CHECK(WEXITSTATUS(st) != 0);
	CHECK_CONTAINS(out, "sync");
	/* A port past 16 bits is refused, not wrapped round to another one. */
	static const char *const listens[] = {"127.0.0.1:99999", "127.0.0.1:-1", "nope", ":80",
					      "127.0.0.1:"};
	for (size_t i = 0; i < sizeof listens / sizeof *listens; i++) {
		char a[128];
		snprintf(a, sizeof a, "--listen '%s' --db ./x.db", listens[i]);
		st = run_server_cmd(a, out, sizeof out);
		CHECK_INT(WEXITSTATUS(st), 2);
		CHECK_CONTAINS(out, "expected HOST:PORT with a port from 0 to 65535");
	}
	/* --help needs no valid environment. */
	setenv("FORKPOOL_WORKERS", "abc", 1);
	st = run_server_cmd("--help", out, sizeof out);
	CHECK_INT(WEXITSTATUS(st), 0);
	st = run_server_cmd("--listen 127.0.0.1:0 --db ./x.db", out, sizeof out);
	CHECK_INT(WEXITSTATUS(st), 2);
	CHECK_CONTAINS(out, "(from FORKPOOL_WORKERS)");
}
