/* test_plugins.c - bring your own tasks, end to end: the real server on
 * 127.0.0.1 (port 0) with a temporary database, loaded with C plugins
 * (build/examples/primes.so, build/test-plugins/\*.so) and tasks files
 * (programs written into the test's directory, and the examples), driven
 * over HTTP with libcurl. Nothing sleeps for a fixed time: every wait is a
 * long-poll or a poll with a deadline. */
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "harness.h"

/* ---- The server ---- */

struct srv {
	pid_t pid;
	char base[64]; /* http://127.0.0.1:PORT */
};

static void pause_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

static char *read_file(const char *path)
{
	struct buf b = {0};
	FILE *f = fopen(path, "r");
	if (f) {
		char tmp[4096];
		size_t n;
		while ((n = fread(tmp, 1, sizeof tmp, f)) > 0)
			buf_add(&b, tmp, n);
		fclose(f);
	}
	buf_addc(&b, '\0');
	return b.data;
}

static void write_file(const char *path, int mode, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void write_file(const char *path, int mode, const char *fmt, ...)
{
	FILE *f = fopen(path, "w");
	if (!f)
		FAILF("cannot write %s: %s", path, strerror(errno));
	va_list ap;
	va_start(ap, fmt);
	vfprintf(f, fmt, ap);
	va_end(ap);
	fclose(f);
	chmod(path, (mode_t)mode);
}

static const char *bin(const char *rel)
{
	static char path[4][4096];
	static int k;
	k = (k + 1) % 4;
	snprintf(path[k], sizeof path[k], "%s/%s", harness_bin_dir(), rel);
	return path[k];
}

/* Starts forkpoold with the given extra arguments (NULL-terminated), its log
 * in server.log. It fails the test if the server does not listen. */
static struct srv start_server(const char *first, ...)
{
	const char *argv[64] = {bin("forkpoold"), "--listen", "127.0.0.1:0", "--db", "./db/fp.db"};
	int argc = 5;
	va_list ap;
	va_start(ap, first);
	for (const char *a = first; a && argc < 62; a = va_arg(ap, const char *))
		argv[argc++] = a;
	va_end(ap);
	argv[argc] = NULL;
	unlink("server.log"); /* not a previous server's */
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		int fd = open("server.log", O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
		int nul = open("/dev/null", O_RDWR);
		dup2(nul, 0);
		dup2(nul, 1);
		dup2(fd, 2);
		execv(argv[0], (char **)argv);
		_exit(127);
	}
	int64_t deadline = harness_now_ms() + 20000;
	for (;;) {
		char *log = read_file("server.log");
		char *at = strstr(log, "event=listen addr=127.0.0.1:");
		if (at) {
			struct srv s = {.pid = pid};
			snprintf(s.base, sizeof s.base, "http://127.0.0.1:%d",
				 atoi(at + strlen("event=listen addr=127.0.0.1:")));
			free(log);
			return s;
		}
		int status;
		if (waitpid(pid, &status, WNOHANG) == pid)
			FAILF("the server exited (status %d) before listening:\n%s", status, log);
		free(log);
		if (harness_now_ms() > deadline)
			FAILF("the server did not listen within 20 s");
		pause_ms(10);
	}
}

/* Runs forkpoold, which must refuse to start: returns its log. */
static char *server_refuses(const char *first, ...)
{
	const char *argv[64] = {bin("forkpoold"), "--listen", "127.0.0.1:0", "--db", "./db/fp.db"};
	int argc = 5;
	va_list ap;
	va_start(ap, first);
	for (const char *a = first; a && argc < 62; a = va_arg(ap, const char *))
		argv[argc++] = a;
	va_end(ap);
	argv[argc] = NULL;
	pid_t pid = fork();
	CHECK(pid >= 0);
	if (pid == 0) {
		int fd = open("refused.log", O_WRONLY | O_CREAT | O_TRUNC, 0644);
		dup2(fd, 2);
		execv(argv[0], (char **)argv);
		_exit(127);
	}
	int status;
	int64_t deadline = harness_now_ms() + 20000;
	while (waitpid(pid, &status, WNOHANG) != pid) {
		if (harness_now_ms() > deadline) {
			kill(pid, SIGKILL);
			FAILF("the server started (or hung) instead of refusing:\n%s", read_file("refused.log"));
		}
		pause_ms(10);
	}
	char *log = read_file("refused.log");
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 1)
		FAILF("the server ended with wait status %d, expected exit 1:\n%s", status, log);
	return log;
}

static void stop_server(struct srv *s)
{
	kill(s->pid, SIGTERM);
	int status;
	CHECK_INT(waitpid(s->pid, &status, 0), s->pid);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* ---- HTTP ---- */

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
	buf_add(arg, p, size * n);
	return size * n;
}

/* The response body (NUL-terminated, free it); *status gets the code. */
static char *http(const struct srv *s, const char *method, const char *path, const char *body,
		  long *status)
{
	CURL *c = curl_easy_init();
	CHECK(c != NULL);
	char url[512];
	snprintf(url, sizeof url, "%s%s", s->base, path);
	struct buf out = {0};
	struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &out);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	if (body) {
		curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
	}
	CURLcode rc = curl_easy_perform(c);
	if (rc != CURLE_OK)
		FAILF("%s %s: %s", method, url, curl_easy_strerror(rc));
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
	curl_slist_free_all(h);
	curl_easy_cleanup(c);
	buf_addc(&out, '\0');
	return out.data;
}

static json_t *http_json(const struct srv *s, const char *method, const char *path,
			 const char *body, long want)
{
	long status;
	char *text = http(s, method, path, body, &status);
	if (status != want)
		FAILF("%s %s answered %ld, expected %ld: %s", method, path, status, want, text);
	json_t *j = json_loads(text, 0, NULL);
	if (!j)
		FAILF("%s %s: not JSON: %s", method, path, text);
	free(text);
	return j;
}

/* Posts a batch; returns its id. */
static long long submit(const struct srv *s, const char *body)
{
	json_t *b = http_json(s, "POST", "/v1/batches", body, 201);
	long long id = json_integer_value(json_object_get(b, "id"));
	json_decref(b);
	return id;
}

/* Waits (long-polls) until the batch is done. */
static void wait_done(const struct srv *s, long long id)
{
	char path[128];
	int64_t deadline = harness_now_ms() + 45000;
	for (;;) {
		snprintf(path, sizeof path, "/v1/batches/%lld?wait=5", id);
		json_t *b = http_json(s, "GET", path, NULL, 200);
		int done = !strcmp(json_string_value(json_object_get(b, "state")), "done");
		json_decref(b);
		if (done)
			break;
		if (harness_now_ms() > deadline)
			FAILF("batch %lld is not done after 45 s", id);
	}
}

/* Waits until the batch is done; returns its results array. */
static json_t *results(const struct srv *s, long long id)
{
	char path[128];
	wait_done(s, id);
	snprintf(path, sizeof path, "/v1/batches/%lld/results", id);
	json_t *r = http_json(s, "GET", path, NULL, 200);
	json_t *list = json_incref(json_object_get(r, "results"));
	json_decref(r);
	return list;
}

/* Runs a batch to the end; returns its results. */
static json_t *run(const struct srv *s, const char *body) { return results(s, submit(s, body)); }

static json_t *item(json_t *res, size_t i) { return json_array_get(res, i); }
static const char *state_of(json_t *res, size_t i)
{
	return json_string_value(json_object_get(item(res, i), "state"));
}
static const char *error_type(json_t *res, size_t i)
{
	return json_string_value(json_object_get(json_object_get(item(res, i), "error"), "type"));
}
static const char *error_msg(json_t *res, size_t i)
{
	return json_string_value(json_object_get(json_object_get(item(res, i), "error"), "message"));
}
static json_t *result_of(json_t *res, size_t i) { return json_object_get(item(res, i), "result"); }

/* The compact JSON text of the result of item i (static). */
static const char *result_text(json_t *res, size_t i)
{
	static char *last;
	free(last);
	json_t *r = result_of(res, i);
	if (!r)
		FAILF("item %zu has no result: state %s, error %s", i, state_of(res, i),
		      error_msg(res, i) ? error_msg(res, i) : "-");
	last = json_dumps(r, JSON_COMPACT | JSON_ENCODE_ANY);
	return last;
}

/* Whether pid is gone (or a zombie nobody has reaped yet). */
static int process_gone(pid_t pid)
{
	char path[64];
	snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
	char *st = read_file(path);
	char *paren = strrchr(st, ')');
	int gone = !*st || (paren && paren[1] == ' ' && paren[2] == 'Z');
	free(st);
	return gone;
}

static void wait_gone(pid_t pid)
{
	int64_t deadline = harness_now_ms() + 10000;
	while (!process_gone(pid)) {
		if (harness_now_ms() > deadline)
			FAILF("process %d outlived its worker", (int)pid);
		pause_ms(10);
	}
}

/* Whether name is an executable in PATH. */
static int have(const char *name)
{
	const char *path = getenv("PATH");
	char buf[4096];
	for (const char *d = path; d && *d;) {
		const char *colon = strchr(d, ':');
		size_t n = colon ? (size_t)(colon - d) : strlen(d);
		snprintf(buf, sizeof buf, "%.*s/%s", (int)n, d, name);
		if (access(buf, X_OK) == 0)
			return 1;
		d = colon ? colon + 1 : NULL;
	}
	return 0;
}

static void skip(const char *why)
{
	printf("     skipped: %s\n", why);
	fflush(stdout);
}

/* ---- C plugins ---- */

#define PRIMES(initargs) "--plugin", plugin_spec("examples/primes.so", initargs)

static const char *plugin_spec(const char *rel, const char *initargs)
{
	static char spec[4][9000];
	static int k;
	k = (k + 1) % 4;
	snprintf(spec[k], sizeof spec[k], "%s%s%s", bin(rel), initargs ? "=" : "",
		 initargs ? initargs : "");
	return spec[k];
}

TEST(plugin_tasks_appear_in_the_catalogue_beside_the_builtins)
{
	struct srv s = start_server(PRIMES(NULL), "--workers", "1", NULL);
	json_t *t = http_json(&s, "GET", "/v1/tasks", NULL, 200);
	char *text = json_dumps(t, JSON_COMPACT);
	CHECK_CONTAINS(text, "{\"name\":\"square\"");
	CHECK_CONTAINS(text, "{\"name\":\"is_prime_fast\",\"arity\":1,\"max_arity\":1,\"params\":"
			     "[{\"name\":\"n\",\"type\":\"int\",\"optional\":false}],\"doc\":"
			     "\"whether n is prime, from the worker's sieve (n <= limit)\"}");
	CHECK_CONTAINS(text, "{\"name\":\"sieve_info\",\"arity\":0,\"max_arity\":0");
	free(text);
	json_decref(t);
	stop_server(&s);
}

TEST(plugin_is_prime_fast_answers_from_the_sieve_its_initializer_built)
{
	struct srv s = start_server(PRIMES("{\"limit\": 1000000}"), "--workers", "2", NULL);
	json_t *r = run(&s, "{\"task\": \"is_prime_fast\", \"items\": [[-7], [0], [1], [2], [3], [4],"
			    " [97], [561], [7919], [999983], [999999], [1000000], [1000001]]}");
	static const char *const want[] = {"false", "false", "false", "true", "true", "false",
					   "true",  "false", "true",  "true", "false", "false"};
	for (size_t i = 0; i < 12; i++)
		CHECK_STR(result_text(r, i), want[i]);
	CHECK_STR(state_of(r, 12), "failed");
	CHECK_STR(error_type(r, 12), "task_error");
	CHECK_STR(error_msg(r, 12), "1000001 is past the sieve's limit 1000000 (raise it with the "
				    "plugin's initargs {\"limit\": N})");
	json_decref(r);
	r = run(&s, "{\"task\": \"sieve_info\", \"items\": [[]]}");
	CHECK_INT(json_integer_value(json_object_get(result_of(r, 0), "primes")), 78498);
	CHECK_INT(json_integer_value(json_object_get(result_of(r, 0), "limit")), 1000000);
	json_decref(r);
	stop_server(&s);
}

/* One worker replaced after every 3 items: 9 items run in 3 workers, and
 * each of them built its sieve once, before its first item. */
TEST(plugin_initializer_runs_once_per_worker_and_again_in_each_new_worker)
{
	struct srv s = start_server(PRIMES("{\"limit\": 100000}"), "--workers", "1",
				    "--max-tasks-per-child", "3", NULL);
	json_t *r = run(&s, "{\"task\": \"sieve_info\", \"chunksize\": 1, \"items\": "
			    "[[], [], [], [], [], [], [], [], []]}");
	long long pids[3] = {0};
	for (size_t i = 0; i < 9; i++) {
		json_t *info = result_of(r, i);
		CHECK(info != NULL);
		long long pid = json_integer_value(json_object_get(info, "pid"));
		CHECK_INT(json_integer_value(json_object_get(item(r, i), "worker")), pid);
		CHECK_INT(json_integer_value(json_object_get(info, "inits")), 1);
		CHECK_INT(json_integer_value(json_object_get(info, "served")), i % 3 + 1);
		if (i % 3 == 0)
			pids[i / 3] = pid;
		else
			CHECK_INT(pid, pids[i / 3]);
	}
	CHECK(pids[0] != pids[1] && pids[1] != pids[2] && pids[0] != pids[2]);
	json_decref(r);
	stop_server(&s);
}

TEST(plugin_arguments_of_the_wrong_type_are_refused_at_submission)
{
	struct srv s = start_server(PRIMES(NULL), "--workers", "1", NULL);
	json_t *e = http_json(&s, "POST", "/v1/batches",
			      "{\"task\": \"is_prime_fast\", \"items\": [[3], [\"x\"]]}", 400);
	char *text = json_dumps(e, JSON_COMPACT);
	CHECK_CONTAINS(text, "items[1]: is_prime_fast: argument 0 (n) must be an integer, got a string");
	free(text);
	json_decref(e);
	e = http_json(&s, "POST", "/v1/batches", "{\"task\": \"sieve_info\", \"items\": [[1]]}", 400);
	text = json_dumps(e, JSON_COMPACT);
	CHECK_CONTAINS(text, "sieve_info takes 0 arguments, got 1");
	free(text);
	json_decref(e);
	stop_server(&s);
}

TEST(plugin_task_errors_and_crashes_fail_only_their_own_items)
{
	struct srv s = start_server("--plugin", plugin_spec("test-plugins/flaky.so", NULL), "--workers",
				    "1", NULL);
	json_t *r = run(&s, "{\"task\": \"flaky_fail\", \"chunksize\": 3, \"items\": "
			    "[[\"no luck\"], [\"quote \\\" and \\n newline\"]]}");
	CHECK_STR(error_type(r, 0), "task_error");
	CHECK_STR(error_msg(r, 0), "no luck");
	CHECK_STR(error_msg(r, 1), "quote \" and \n newline");
	json_decref(r);
	r = run(&s, "{\"task\": \"flaky_silent_fail\", \"items\": [[]]}");
	CHECK_STR(error_msg(r, 0), "task failed");
	json_decref(r);
	r = run(&s, "{\"task\": \"flaky_crash\", \"items\": [[]]}");
	CHECK_STR(error_type(r, 0), "worker_died");
	/* SIGSEGV; under AddressSanitizer, its report and exit status 1 */
	CHECK_CONTAINS(error_msg(r, 0), "while running this item");
	json_decref(r);
	r = run(&s, "{\"task\": \"flaky_echo\", \"items\": [[1.5], [2, \"a\", \"b\"]]}");
	CHECK_STR(result_text(r, 0), "[1.5]");
	CHECK_STR(result_text(r, 1), "[2,\"a\",\"b\"]");
	json_decref(r);
	stop_server(&s);
}

/* A plugin's result is capped as a program's output is: past 64 MiB of JSON
 * it fails its item with a task_error naming its size and the limit (past
 * FRAME_MAX it used to kill the worker), and the worker goes on. */
TEST_T(plugin_result_past_64_mib_is_a_task_error_naming_its_size_and_the_limit, 120)
{
	struct srv s = start_server("--plugin", plugin_spec("test-plugins/big.so", NULL), "--workers",
				    "1", NULL);
	json_t *r = run(&s, "{\"task\": \"big_string\", \"chunksize\": 3, \"items\": [[67108862], "
			    "[67108863], [300000000]]}");
	CHECK_STR(state_of(r, 0), "finished");
	CHECK_INT(json_string_length(result_of(r, 0)), 67108862);
	CHECK_STR(error_type(r, 1), "task_error");
	CHECK_STR(error_msg(r, 1), "big_string: its result is 67108865 bytes of JSON, more than the "
				   "67108864 (64 MiB) one result may be");
	CHECK_STR(error_type(r, 2), "task_error");
	CHECK_STR(error_msg(r, 2), "big_string: its result is 300000002 bytes of JSON, more than the "
				   "67108864 (64 MiB) one result may be");
	for (size_t i = 1; i < 3; i++)
		CHECK_INT(json_integer_value(json_object_get(item(r, i), "worker")),
			  json_integer_value(json_object_get(item(r, 0), "worker")));
	json_decref(r);
	stop_server(&s);
}

static void wait_healthz(const struct srv *s, long want_status, const char *want_text)
{
	int64_t deadline = harness_now_ms() + 20000;
	for (;;) {
		long status;
		char *body = http(s, "GET", "/healthz", NULL, &status);
		int ok = status == want_status && strstr(body, want_text);
		if (ok) {
			free(body);
			return;
		}
		if (harness_now_ms() > deadline)
			FAILF("/healthz still answers %ld %s; expected %ld with %s", status, body,
			      want_status, want_text);
		free(body);
		pause_ms(20);
	}
}

static int count_lines(const char *path, const char *prefix)
{
	char *text = read_file(path);
	int n = 0;
	for (char *l = text; l && *l;) {
		n += !strncmp(l, prefix, strlen(prefix));
		char *nl = strchr(l, '\n');
		l = nl ? nl + 1 : NULL;
	}
	free(text);
	return n;
}

/* The initializer fails until a file exists: /healthz says why with a 503,
 * the server retries with a backoff, a batch waits (neither fails nor spins);
 * once the file is there, the next worker starts and the batch runs. */
TEST_T(plugin_failing_initializer_is_503_with_the_reason_and_work_waits_until_fixed, 90)
{
	char cwd[4096], initargs[8300];
	CHECK(getcwd(cwd, sizeof cwd) != NULL);
	snprintf(initargs, sizeof initargs, "{\"need\": \"%s/ready\", \"log\": \"%s/init.log\"}", cwd,
		 cwd);
	struct srv s = start_server("--plugin", plugin_spec("test-plugins/flaky.so", initargs),
				    "--workers", "2", NULL);
	char want[8400];
	snprintf(want, sizeof want, "\"reason\":\"plugin %s: initializer failed: waiting for %s/ready\"",
		 bin("test-plugins/flaky.so"), cwd);
	wait_healthz(&s, 503, want);
	wait_healthz(&s, 503, "\"status\":\"workers_failing\",\"workers\":0");
	long long id = submit(&s, "{\"task\": \"flaky_pid\", \"items\": [[], [], []]}");
	/* Let a few retries fail with the batch waiting. */
	int64_t deadline = harness_now_ms() + 20000;
	while (count_lines("init.log", "init ") < 5) {
		if (harness_now_ms() > deadline)
			FAILF("the server did not retry: %d starts", count_lines("init.log", "init "));
		pause_ms(20);
	}
	char path[64];
	snprintf(path, sizeof path, "/v1/batches/%lld", id);
	json_t *b = http_json(&s, "GET", path, NULL, 200);
	CHECK_INT(json_integer_value(json_object_get(json_object_get(b, "counts"), "pending")), 3);
	json_decref(b);
	char *log = read_file("server.log");
	CHECK_CONTAINS(log, "event=worker_start_failed");
	CHECK_CONTAINS(log, "msg=\"plugin ");
	/* The backoff grows: no more than about one start per 100 ms. */
	CHECK(count_lines("init.log", "init ") < 40);
	free(log);

	write_file("ready", 0644, "\n");
	json_t *r = results(&s, id);
	for (size_t i = 0; i < 3; i++)
		CHECK_STR(state_of(r, i), "finished");
	json_decref(r);
	wait_healthz(&s, 200, "\"status\":\"ok\"");
	stop_server(&s);
}

/* A worker retired after --max-tasks-per-child items ends in an orderly way:
 * its plugin's finalizer runs. */
TEST(plugin_finalizer_runs_when_a_worker_retires)
{
	char cwd[4096], initargs[4200];
	CHECK(getcwd(cwd, sizeof cwd) != NULL);
	snprintf(initargs, sizeof initargs, "{\"log\": \"%s/init.log\"}", cwd);
	struct srv s = start_server("--plugin", plugin_spec("test-plugins/flaky.so", initargs),
				    "--workers", "1", "--max-tasks-per-child", "2", NULL);
	json_t *r = run(&s, "{\"task\": \"flaky_pid\", \"chunksize\": 1, \"items\": [[], [], [], []]}");
	long long first = json_integer_value(result_of(r, 0));
	CHECK_INT(json_integer_value(result_of(r, 1)), first);
	json_decref(r);
	char want[64];
	snprintf(want, sizeof want, "fini %lld\n", first);
	int64_t deadline = harness_now_ms() + 10000;
	for (char *log = read_file("init.log"); !strstr(log, want); log = read_file("init.log")) {
		if (harness_now_ms() > deadline)
			FAILF("no \"%s\" in init.log:\n%s", want, log);
		free(log);
		pause_ms(10);
	}
	stop_server(&s);
}

/* A server stopping with its workers idle stops them in an orderly way too:
 * each runs its plugin's finalizer and exits 0. A worker still running a
 * chunk when the grace ends is killed (failures_sigterm_* tests). */
TEST(plugin_finalizer_runs_in_idle_workers_when_the_server_stops)
{
	char cwd[4096], initargs[4200];
	CHECK(getcwd(cwd, sizeof cwd) != NULL);
	snprintf(initargs, sizeof initargs, "{\"log\": \"%s/init.log\"}", cwd);
	struct srv s = start_server("--plugin", plugin_spec("test-plugins/flaky.so", initargs),
				    "--workers", "2", NULL);
	json_t *r = run(&s, "{\"task\": \"flaky_pid\", \"chunksize\": 1, \"items\": [[], [], [], []]}");
	json_decref(r);
	int64_t deadline = harness_now_ms() + 10000;
	while (count_lines("init.log", "init ") < 2) {
		if (harness_now_ms() > deadline)
			FAILF("two workers did not start: %d inits", count_lines("init.log", "init "));
		pause_ms(10);
	}
	CHECK_INT(count_lines("init.log", "fini "), 0);
	stop_server(&s);
	/* The server has exited, and had waited for its workers. */
	CHECK_INT(count_lines("init.log", "fini "), 2);
	char *log = read_file("server.log");
	int clean = 0;
	for (char *line = strtok(log, "\n"); line; line = strtok(NULL, "\n"))
		clean += strstr(line, "event=worker_exit") && strstr(line, "reason=shutdown") &&
			 strstr(line, "status=\"exited with status 0\"");
	CHECK_INT(clean, 2);
	free(log);
}

TEST(plugin_given_in_the_environment_loads_and_a_flag_replaces_it)
{
	setenv("FORKPOOL_PLUGIN", plugin_spec("test-plugins/flaky.so", NULL), 1);
	struct srv s = start_server("--workers", "1", NULL);
	json_t *r = run(&s, "{\"task\": \"flaky_pid\", \"items\": [[]]}");
	CHECK_STR(state_of(r, 0), "finished");
	json_decref(r);
	stop_server(&s);
	s = start_server(PRIMES(NULL), "--workers", "1", NULL);
	json_t *e = http_json(&s, "POST", "/v1/batches", "{\"task\": \"flaky_pid\", \"items\": [[]]}",
			      400);
	json_decref(e);
	r = run(&s, "{\"task\": \"is_prime_fast\", \"items\": [[5]]}");
	CHECK_STR(result_text(r, 0), "true");
	json_decref(r);
	stop_server(&s);
}

TEST(plugin_whose_task_name_clashes_keeps_the_server_from_starting_naming_both)
{
	char *log = server_refuses("--plugin", plugin_spec("test-plugins/clash.so", NULL), NULL);
	char want[4600];
	snprintf(want, sizeof want, "level=error event=config msg=\"task \\\"square\\\" of plugin %s "
				    "clashes with the built-in task \\\"square\\\"\"",
		 bin("test-plugins/clash.so"));
	CHECK_CONTAINS(log, want);
	free(log);
	/* Two plugins with the same task: both are named. */
	write_file("dup.json", 0644,
		   "{\"tasks\": [{\"name\": \"is_prime_fast\", \"mode\": \"exec\", \"argv\": [\"/bin/true\"]}]}");
	log = server_refuses(PRIMES(NULL), "--tasks-file", "dup.json", NULL);
	CHECK_CONTAINS(log, "task \\\"is_prime_fast\\\" of tasks file ");
	snprintf(want, sizeof want, "clashes with task \\\"is_prime_fast\\\" of plugin %s\"",
		 bin("examples/primes.so"));
	CHECK_CONTAINS(log, want);
	free(log);
}

TEST(plugin_that_cannot_be_loaded_keeps_the_server_from_starting_saying_why)
{
	char *log = server_refuses("--plugin", "./nosuch.so", NULL);
	CHECK_CONTAINS(log, "event=config msg=\"plugin ./nosuch.so: cannot load: No such file or directory\"");
	free(log);
	write_file("notelf.so", 0644, "%01000d\n", 0);
	log = server_refuses("--plugin", "notelf.so", NULL);
	CHECK_CONTAINS(log, "/notelf.so: cannot load: ");
	CHECK_CONTAINS(log, "invalid ELF header");
	free(log);
	log = server_refuses("--plugin", plugin_spec("test-plugins/noentry.so", NULL), NULL);
	CHECK_CONTAINS(log, "noentry.so: no entry point: it does not define forkpool_plugin()");
	free(log);
	log = server_refuses("--plugin", plugin_spec("test-plugins/badabi.so", NULL), NULL);
	CHECK_CONTAINS(log, "badabi.so: built for plugin ABI 99, but this worker has ABI 1");
	free(log);
	log = server_refuses(PRIMES("{limit: 5}"), NULL);
	CHECK_CONTAINS(log, "primes.so: the initargs after '=' are not valid JSON: ");
	free(log);
}

/* The pids tests/plugins/rude.c wrote to RUDE_PIDS, once there are n. */
static void rude_pids(pid_t *pids, int n)
{
	int64_t deadline = harness_now_ms() + 10000;
	for (;;) {
		char *text = read_file("rude.pids");
		int got = 0;
		for (char *l = text; *l && got < n; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : "")
			pids[got++] = atoi(l);
		free(text);
		if (got == n)
			return;
		if (harness_now_ms() > deadline)
			FAILF("rude.so wrote %d of %d pids", got, n);
		pause_ms(10);
	}
}

/* A plugin whose forkpool_plugin() hangs: the --describe run the server
 * makes at start-up is killed at --start-timeout, with whatever it started,
 * and the server refuses to start, naming the plugin and the timeout. */
TEST(plugin_that_hangs_while_loading_is_killed_at_the_start_timeout_and_named)
{
	setenv("RUDE", "hang", 1);
	setenv("RUDE_PIDS", "rude.pids", 1);
	int64_t t0 = harness_now_ms();
	char *log = server_refuses("--plugin", plugin_spec("test-plugins/rude.so", "{\"x\": 1}"),
				   "--start-timeout", "0.5", NULL);
	CHECK(harness_now_ms() - t0 < 10000);
	char want[4600];
	snprintf(want, sizeof want, "level=error event=config msg=\"plugin %s: the worker's --describe "
				    "did not end within the --start-timeout of 0.5 s while loading it (it "
				    "was killed): its constructors and forkpool_plugin() must return at "
				    "once\"", bin("test-plugins/rude.so"));
	CHECK_CONTAINS(log, want);
	CHECK_CONTAINS(log, "the plugins or tasks files above are not usable");
	free(log);
	pid_t pids[2];
	rude_pids(pids, 2);
	wait_gone(pids[0]);
	wait_gone(pids[1]);
}

/* SIGTERM or SIGINT while the server waits for the catalogue (a plugin
 * that hangs, the start-timeout still far) stops it at once: it ends by
 * that signal, and the --describe run goes with it. */
TEST(server_stops_at_once_on_sigterm_or_sigint_while_a_plugin_hangs_at_start_up)
{
	static const int sigs[] = {SIGTERM, SIGINT};
	setenv("RUDE", "hang", 1);
	setenv("RUDE_PIDS", "rude.pids", 1);
	for (size_t i = 0; i < 2; i++) {
		unlink("rude.pids");
		const char *argv[] = {bin("forkpoold"), "--listen", "127.0.0.1:0", "--db", "./db/fp.db",
				      "--plugin", plugin_spec("test-plugins/rude.so", NULL), NULL};
		pid_t pid = fork();
		CHECK(pid >= 0);
		if (pid == 0) {
			int fd = open("server.log", O_WRONLY | O_CREAT | O_TRUNC, 0644);
			dup2(fd, 2);
			execv(argv[0], (char **)argv);
			_exit(127);
		}
		pid_t pids[2];
		rude_pids(pids, 2);
		int64_t t0 = harness_now_ms();
		CHECK_INT(kill(pid, sigs[i]), 0);
		int status;
		while (waitpid(pid, &status, WNOHANG) != pid) {
			if (harness_now_ms() - t0 > 10000) {
				kill(pid, SIGKILL);
				FAILF("the server was still there 10 s after signal %d:\n%s", sigs[i],
				      read_file("server.log"));
			}
			pause_ms(10);
		}
		if (!WIFSIGNALED(status) || WTERMSIG(status) != sigs[i])
			FAILF("the server ended with wait status %d after signal %d", status, sigs[i]);
		char *log = read_file("server.log");
		CHECK_CONTAINS(log, "event=exit signal=");
		CHECK_CONTAINS(log, "msg=\"stopped while starting\"");
		free(log);
		wait_gone(pids[0]);
		wait_gone(pids[1]);
	}
}

TEST(plugin_that_crashes_while_loading_is_named)
{
	setenv("RUDE", "crash", 1);
	char *log = server_refuses("--plugin", plugin_spec("test-plugins/rude.so", NULL), NULL);
	char want[4600];
	snprintf(want, sizeof want, "level=error event=config msg=\"plugin %s: the worker's --describe ",
		 bin("test-plugins/rude.so"));
	CHECK_CONTAINS(log, want);
	/* SIGSEGV; under AddressSanitizer, its report and exit status 1 */
	CHECK_CONTAINS(log, " while loading it (in its constructors or forkpool_plugin())\"");
	free(log);
}

/* What a plugin prints to stdout while it loads cannot garble the
 * catalogue: it is logged as a warning naming the plugin. */
TEST(plugin_that_prints_to_stdout_while_loading_still_loads_and_is_named_in_the_log)
{
	setenv("RUDE", "print", 1);
	struct srv s = start_server("--plugin", plugin_spec("test-plugins/rude.so", NULL), "--workers",
				    "1", NULL);
	json_t *r = run(&s, "{\"task\": \"rude_ok\", \"items\": [[]]}");
	CHECK_STR(result_text(r, 0), "true");
	json_decref(r);
	char *log = read_file("server.log");
	char want[4600];
	snprintf(want, sizeof want, "level=warn event=worker_stderr loading=\"plugin %s\" "
				    "msg=\"rude: hello from forkpool_plugin()\"", bin("test-plugins/rude.so"));
	CHECK_CONTAINS(log, want);
	free(log);
	stop_server(&s);
}

/* ---- Programs as tasks ---- */

/* Writes tasks.json with the given tasks (a JSON array's inside). */
#define TASKS(...) write_file("tasks.json", 0644, "{\"tasks\": [" __VA_ARGS__ "]}")

TEST(program_exec_gets_arguments_in_argv_and_stdin_and_its_json_stdout_is_the_result)
{
	write_file("args.sh", 0755,
		   "#!/bin/sh\n"
		   "printf '{\"argv\": [\"%%s\", \"%%s\", \"%%s\"], \"n\": %%d, \"stdin\": %%s}\\n' "
		   "\"$1\" \"$2\" \"$3\" $# \"$(cat)\"\n");
	write_file("text.sh", 0755, "#!/bin/sh\necho \"hello, $1\"\necho\n");
	TASKS("{\"name\": \"args\", \"mode\": \"exec\", \"argv\": [\"./args.sh\", \"{0}\", "
	      "\"x={1}.\", \"{2}\"], \"params\": [{\"name\": \"a\", \"type\": \"string\"}, "
	      "{\"name\": \"b\", \"type\": \"number\"}, {\"name\": \"c\"}], \"required\": 2},"
	      "{\"name\": \"text\", \"mode\": \"exec\", \"argv\": [\"text.sh\", \"{0}\"], "
	      "\"params\": [\"who\"], \"env\": {\"PATH\": \".\"}}");
	struct srv s = start_server("--tasks-file", "tasks.json", "--workers", "2", NULL);
	json_t *r = run(&s, "{\"task\": \"args\", \"items\": [[\"a b\", 3, true], [\"\", 0.5], "
			    "[\"é\", -2, [1, {}]]]}");
	CHECK_STR(result_text(r, 0),
		  "{\"argv\":[\"a b\",\"x=3.\",\"true\"],\"n\":3,\"stdin\":[\"a b\",3,true]}");
	/* An absent optional argument drops its "{k}" entry. */
	CHECK_STR(result_text(r, 1), "{\"argv\":[\"\",\"x=0.5.\",\"\"],\"n\":2,\"stdin\":[\"\",0.5]}");
	CHECK_STR(result_text(r, 2), "{\"argv\":[\"é\",\"x=-2.\",\"[1,{}]\"],\"n\":3,"
				     "\"stdin\":[\"é\",-2,[1,{}]]}");
	json_decref(r);
	/* Output that is not JSON is a string, without its trailing newlines;
	 * the program was found in the task's own PATH. */
	r = run(&s, "{\"task\": \"text\", \"items\": [[\"world\"]]}");
	CHECK_STR(result_text(r, 0), "\"hello, world\"");
	json_decref(r);
	json_t *t = http_json(&s, "GET", "/v1/tasks", NULL, 200);
	char *text = json_dumps(t, JSON_COMPACT);
	CHECK_CONTAINS(text, "{\"name\":\"args\",\"arity\":2,\"max_arity\":3,\"params\":[{\"name\":\"a\","
			     "\"type\":\"string\",\"optional\":false},{\"name\":\"b\",\"type\":"
			     "\"number\",\"optional\":false},{\"name\":\"c\",\"type\":\"any\","
			     "\"optional\":true}]");
	free(text);
	json_decref(t);
	stop_server(&s);
}

/* The results of a batch once it is done, as the text the server sent (for
 * numbers jansson cannot hold). */
static char *results_text(const struct srv *s, long long id)
{
	char path[128];
	wait_done(s, id);
	snprintf(path, sizeof path, "/v1/batches/%lld/results", id);
	long status;
	char *text = http(s, "GET", path, NULL, &status);
	CHECK_INT(status, 200);
	return text;
}

/* JSON on a program's stdout is the result as written, whatever jansson
 * holds: integers past 64 bits stay exact numbers, as built-in results do. */
TEST(program_json_output_is_the_result_as_written_big_numbers_included)
{
	write_file("answer.sh", 0755,
		   "#!/bin/sh\nwhile IFS= read -r line; do\n"
		   "  echo '{\"result\": [170141183460469231731687303715884105728, 1e999, 1.50]}'\n"
		   "done\n");
	TASKS("{\"name\": \"out\", \"mode\": \"exec\", \"argv\": [\"/usr/bin/printf\", \"%%s\", "
	      "\"{0}\"], \"params\": [{\"name\": \"text\", \"type\": \"string\"}]},"
	      "{\"name\": \"answer\", \"mode\": \"persistent\", \"argv\": [\"./answer.sh\"]}");
	struct srv s = start_server("--tasks-file", "tasks.json", "--workers", "1", NULL);
	char *text = results_text(&s, submit(&s, "{\"task\": \"out\", \"items\": [[\"12345678901234567890\"], "
						 "[\"1e999\"], [\"{\\n  \\\"big\\\": [-123456789012345678901234567890, "
						 "0.10000000000000000000001]\\n}\\n\"], [\"not json\"]]}"));
	CHECK_CONTAINS(text, "\"result\":12345678901234567890,");
	CHECK_CONTAINS(text, "\"result\":1e999,");
	CHECK_CONTAINS(text, "\"result\":{\"big\":[-123456789012345678901234567890,"
			     "0.10000000000000000000001]},");
	CHECK_CONTAINS(text, "\"result\":\"not json\",");
	free(text);
	text = results_text(&s, submit(&s, "{\"task\": \"answer\", \"items\": [[]]}"));
	CHECK_CONTAINS(text, "\"result\":[170141183460469231731687303715884105728,1e999,1.50],");
	free(text);
	stop_server(&s);
}

TEST(program_exec_star_in_argv_is_every_argument_and_a_lone_missing_one_is_left_out)
{
	TASKS("{\"name\": \"star\", \"mode\": \"exec\", \"argv\": [\"/bin/echo\", \"{*}\", "
	      "\"|\", \"{*}\", \"|\", \"{1}\", \"end\"], \"params\": [\"x\"], \"variadic\": true}");
	struct srv s = start_server("--tasks-file", "tasks.json", "--workers", "1", NULL);
	json_t *r = run(&s, "{\"task\": \"star\", \"items\": [[1, \"a b\", true], [7], []]}");
	CHECK_STR(result_text(r, 0), "\"1 a b true | 1 a b true | a b end\"");
	CHECK_STR(result_text(r, 1), "\"7 | 7 | end\"");
	CHECK_STR(result_text(r, 2), "\"| | end\"");
	json_decref(r);
	stop_server(&s);
}

TEST(program_exec_nonzero_exit_is_a_task_error_with_the_last_lines_of_stderr)
{
	write_file("fails.sh", 0755,
		   "#!/bin/sh\n"
		   "echo 'partial output'\n"
		   "i=1; while [ $i -le 15 ]; do echo \"problem $i\" >&2; i=$((i+1)); done\n"
		   "exit 3\n");
	write_file("quiet.sh", 0755, "#!/bin/sh\nkill -9 $$\n");
	TASKS("{\"name\": \"fails\", \"mode\": \"exec\", \"argv\": [\"./fails.sh\"]},"
	      "{\"name\": \"quiet\", \"mode\": \"exec\", \"argv\": [\"./quiet.sh\"]}");
	struct srv s = start_server("--tasks-file", "tasks.json", "--workers", "1", NULL);
	json_t *r = run(&s, "{\"task\": \"fails\", \"items\": [[]]}");
	CHECK_STR(error_type(r, 0), "task_error");
	char want[8400], cwd[4096];
	CHECK(getcwd(cwd, sizeof cwd) != NULL);
	snprintf(want, sizeof want, "fails: %s/fails.sh exited with status 3: problem 6\nproblem 7\n"
				    "problem 8\nproblem 9\nproblem 10\nproblem 11\nproblem 12\n"
				    "problem 13\nproblem 14\nproblem 15", cwd);
	CHECK_STR(error_msg(r, 0), want);
	json_decref(r);
	r = run(&s, "{\"task\": \"quiet\", \"items\": [[]]}");
	snprintf(want, sizeof want, "quiet: %s/quiet.sh was killed by signal 9 (Killed) (nothing on "
				    "stderr)", cwd);
	CHECK_STR(error_msg(r, 0), want);
	json_decref(r);
	stop_server(&s);
}

TEST(program_runs_in_its_cwd_with_only_the_environment_its_task_lists)
{
	CHECK_INT(mkdir("sub", 0755), 0);
	write_file("sub/env.sh", 0755,
		   "#!/bin/sh\n"
		   "printf '{\"cwd\": \"%%s\", \"env\": \"%%s\"}' \"$(pwd)\" "
		   "\"$(env | grep -v '^PWD=' | sort | tr '\\n' ' ')\"\n");
	TASKS("{\"name\": \"env\", \"mode\": \"exec\", \"argv\": [\"./env.sh\"], \"cwd\": \"sub\","
	      "\"env\": {\"GREETING\": \"hi there\"}, \"pass_env\": [\"KEPT\", \"UNSET_ONE\"]}");
	setenv("KEPT", "yes", 1);
	setenv("SECRET", "do not pass", 1);
	unsetenv("UNSET_ONE");
	struct srv s = start_server("--tasks-file", "tasks.json", "--workers", "1", NULL);
	json_t *r = run(&s, "{\"task\": \"env\", \"items\": [[]]}");
	char cwd[4096], want[8400];
	CHECK(getcwd(cwd, sizeof cwd) != NULL);
	snprintf(want, sizeof want, "{\"cwd\":\"%s/sub\",\"env\":\"GREETING=hi there KEPT=yes \"}", cwd);
	CHECK_STR(result_text(r, 0), want);
	json_decref(r);
	stop_server(&s);
}

/* A task's timeout kills the worker, and the program dies with it. */
TEST(program_past_its_task_timeout_is_killed_with_its_worker)
{
	write_file("hang.sh", 0755, "#!/bin/sh\necho $$ > hang.pid\nexec sleep 60\n");
	TASKS("{\"name\": \"hang\", \"mode\": \"exec\", \"argv\": [\"./hang.sh\"], \"timeout\": 0.5}");
	struct srv s = start_server("--tasks-file", "tasks.json", "--workers", "1", NULL);
	json_t *r = run(&s, "{\"task\": \"hang\", \"items\": [[]]}");
	CHECK_STR(error_type(r, 0), "timeout");
	CHECK_CONTAINS(error_msg(r, 0), "item exceeded its timeout of 0.5 s");
	json_decref(r);
	char *pid = read_file("hang.pid");
	CHECK(atoi(pid) > 0);
	wait_gone(atoi(pid));
	free(pid);
	stop_server(&s);
}

/* What a program started goes too, whether its worker is killed for a
 * timeout or by a cancel with terminate: the children of a shell wrapper,
 * which do not get the worker's death signal, and even ones that ignore
 * SIGTERM. */
TEST(program_children_die_with_a_timed_out_or_terminated_worker)
{
	write_file("wrap.sh", 0755,
		   "#!/bin/sh\ntrap '' TERM\nsleep 60 &\necho $! > \"kid.$1\"\nwait\necho 1\n");
	TASKS("{\"name\": \"wrap\", \"mode\": \"exec\", \"argv\": [\"./wrap.sh\", \"{0}\"],"
	      " \"params\": [\"n\"]}");
	struct srv s = start_server("--tasks-file", "tasks.json", "--workers", "1", NULL);
	json_t *r = run(&s, "{\"task\": \"wrap\", \"items\": [[1]], \"timeout\": 0.5}");
	CHECK_STR(error_type(r, 0), "timeout");
	json_decref(r);
	char *pid = read_file("kid.1");
	CHECK(atoi(pid) > 0);
	wait_gone(atoi(pid));
	free(pid);
	long long id = submit(&s, "{\"task\": \"wrap\", \"items\": [[2]]}");
	int64_t deadline = harness_now_ms() + 10000;
	for (pid = read_file("kid.2"); atoi(pid) <= 0; pid = read_file("kid.2")) {
		free(pid);
		if (harness_now_ms() > deadline)
			FAILF("the task never started");
		pause_ms(10);
	}
	char path[96];
	snprintf(path, sizeof path, "/v1/batches/%lld?terminate=true", id);
	json_decref(http_json(&s, "DELETE", path, NULL, 200));
	wait_gone(atoi(pid));
	free(pid);
	stop_server(&s);
}

#define PERSISTENT_SH                                                                             \
	"#!/bin/sh\n"                                                                              \
	"n=0\n"                                                                                    \
	"echo \"counter $$ ready\" >&2\n"                                                          \
	"while IFS= read -r line; do\n"                                                            \
	"  n=$((n+1))\n"                                                                           \
	"  case $line in\n"                                                                        \
	"  '[\"fail\"]') echo '{\"error\": \"asked to fail\"}' ;;\n"                               \
	"  '[\"die\"]') echo \"dying on item $n\" >&2; exit 7 ;;\n"                                \
	"  '[\"garbage\"]') echo 'this is not the protocol' ;;\n"                                  \
	"  '[\"hang\"]') echo $$ > hung.pid; sleep 60 ;;\n"                                        \
	"  *) printf '{\"result\": {\"pid\": %%d, \"n\": %%d, \"args\": %%s}}\\n' $$ $n \"$line\" ;;\n" \
	"  esac\n"                                                                                 \
	"done\n"

TEST(program_persistent_serves_many_items_from_one_process)
{
	write_file("counter.sh", 0755, PERSISTENT_SH);
	TASKS("{\"name\": \"counter\", \"mode\": \"persistent\", \"argv\": [\"./counter.sh\"], "
	      "\"params\": [\"x\"], \"variadic\": true}");
	struct srv s = start_server("--tasks-file", "tasks.json", "--workers", "1", NULL);
	json_t *r = run(&s, "{\"task\": \"counter\", \"chunksize\": 2, \"items\": [[1], [\"two\"], "
			    "[], [{\"a\": null}], [5, 6]]}");
	long long pid = json_integer_value(json_object_get(result_of(r, 0), "pid"));
	CHECK(pid > 0);
	for (size_t i = 0; i < 5; i++) {
		CHECK_INT(json_integer_value(json_object_get(result_of(r, i), "pid")), pid);
		CHECK_INT(json_integer_value(json_object_get(result_of(r, i), "n")), i + 1);
	}
	char *args = json_dumps(json_object_get(result_of(r, 3), "args"), JSON_COMPACT);
	CHECK_STR(args, "[{\"a\":null}]");
	free(args);
	args = json_dumps(json_object_get(result_of(r, 4), "args"), JSON_COMPACT);
	CHECK_STR(args, "[5,6]");
	free(args);
	json_decref(r);
	/* Its stderr is in the server's log. */
	char *log = read_file("server.log");
	char want[64];
	snprintf(want, sizeof want, "counter %lld ready", pid);
	CHECK_CONTAINS(log, want);
	free(log);
	stop_server(&s);
	wait_gone((pid_t)pid);
}

TEST(program_persistent_error_lines_fail_only_their_items)
{
	write_file("counter.sh", 0755, PERSISTENT_SH);
	TASKS("{\"name\": \"counter\", \"mode\": \"persistent\", \"argv\": [\"./counter.sh\"], "
	      "\"params\": [\"x\"]}");
	struct srv s = start_server("--tasks-file", "tasks.json", "--workers", "1", NULL);
	json_t *r = run(&s, "{\"task\": \"counter\", \"chunksize\": 3, \"items\": [[1], [\"fail\"], [3]]}");
	CHECK_INT(json_integer_value(json_object_get(result_of(r, 0), "n")), 1);
	CHECK_STR(error_type(r, 1), "task_error");
	CHECK_STR(error_msg(r, 1), "asked to fail");
	CHECK_INT(json_integer_value(json_object_get(result_of(r, 2), "n")), 3);
	json_decref(r);
	stop_server(&s);
}

TEST(program_persistent_that_dies_fails_its_item_and_starts_again_for_the_next)
{
	write_file("counter.sh", 0755, PERSISTENT_SH);
	TASKS("{\"name\": \"counter\", \"mode\": \"persistent\", \"argv\": [\"./counter.sh\"], "
	      "\"params\": [\"x\"]}");
	struct srv s = start_server("--tasks-file", "tasks.json", "--workers", "1", NULL);
	json_t *r = run(&s, "{\"task\": \"counter\", \"chunksize\": 5, \"items\": [[1], [\"die\"], [3],"
			    " [\"garbage\"], [5]]}");
	long long pid1 = json_integer_value(json_object_get(result_of(r, 0), "pid"));
	CHECK_STR(error_type(r, 1), "task_error");
	CHECK_CONTAINS(error_msg(r, 1), "/counter.sh exited with status 7 while running this item "
					"(it starts again for the next one): ");
	CHECK_CONTAINS(error_msg(r, 1), "dying on item 2");
	long long pid2 = json_integer_value(json_object_get(result_of(r, 2), "pid"));
	CHECK(pid2 > 0 && pid2 != pid1);
	CHECK_INT(json_integer_value(json_object_get(result_of(r, 2), "n")), 1);
	CHECK_CONTAINS(error_msg(r, 3), "broke the protocol: it wrote \"this is not the protocol\" where "
					"one line {\"result\": ...} or {\"error\": \"...\"} was due");
	long long pid3 = json_integer_value(json_object_get(result_of(r, 4), "pid"));
	CHECK(pid3 > 0 && pid3 != pid2);
	/* All in one worker: the worker itself never died. */
	for (size_t i = 1; i < 5; i++)
		CHECK_INT(json_integer_value(json_object_get(item(r, i), "worker")),
			  json_integer_value(json_object_get(item(r, 0), "worker")));
	json_decref(r);
	wait_gone((pid_t)pid1);
	wait_gone((pid_t)pid2);
	stop_server(&s);
}

TEST(program_persistent_that_hangs_is_killed_by_the_timeout_with_its_worker)
{
	write_file("counter.sh", 0755, PERSISTENT_SH);
	TASKS("{\"name\": \"counter\", \"mode\": \"persistent\", \"argv\": [\"./counter.sh\"], "
	      "\"params\": [\"x\"]}");
	struct srv s = start_server("--tasks-file", "tasks.json", "--workers", "1", NULL);
	/* The batch's timeout applies to programs as to built-in tasks. */
	json_t *r = run(&s, "{\"task\": \"counter\", \"timeout\": 0.5, \"chunksize\": 2, \"items\": "
			    "[[\"hang\"], [2]]}");
	CHECK_STR(error_type(r, 0), "timeout");
	CHECK_INT(json_integer_value(json_object_get(result_of(r, 1), "n")), 1); /* a new program */
	json_decref(r);
	char *pid = read_file("hung.pid");
	CHECK(atoi(pid) > 0);
	wait_gone(atoi(pid));
	free(pid);
	stop_server(&s);
}

/* A persistent program that ends before it reads its first item (here a
 * script that is not there yet) cannot start: the worker counts as one that
 * could not start, /healthz says why with a 503, the item goes back to
 * pending, and starts are retried with a backoff. Once the script is there,
 * the batch runs. */
TEST_T(program_persistent_that_cannot_start_is_503_with_the_reason_and_work_waits_until_fixed, 90)
{
	TASKS("{\"name\": \"counter\", \"mode\": \"persistent\", \"argv\": [\"/bin/sh\", "
	      "\"counter.sh\"], \"params\": [\"x\"]}");
	struct srv s = start_server("--tasks-file", "tasks.json", "--workers", "1", NULL);
	long long id = submit(&s, "{\"task\": \"counter\", \"items\": [[1], [2], [3], [4], [5]]}");
	wait_healthz(&s, 503, "\"status\":\"workers_failing\"");
	/* "counter: /usr/bin/dash exited with status 2 before it read its
	 * first item: /bin/sh: 0: cannot open counter.sh: No such file" */
	wait_healthz(&s, 503, " before it read its first item: ");
	/* A few more starts fail; the items wait, none failed or ran. */
	int64_t deadline = harness_now_ms() + 20000;
	for (;;) {
		char *log = read_file("server.log");
		int n = 0;
		for (char *l = strstr(log, "event=worker_start_failed"); l;
		     l = strstr(l + 1, "event=worker_start_failed"))
			n++;
		free(log);
		if (n >= 3)
			break;
		if (harness_now_ms() > deadline)
			FAILF("only %d failed starts in 20 s", n);
		pause_ms(20);
	}
	char path[64];
	snprintf(path, sizeof path, "/v1/batches/%lld", id);
	json_t *b = http_json(&s, "GET", path, NULL, 200);
	CHECK_INT(json_integer_value(json_object_get(json_object_get(b, "counts"), "pending")), 5);
	json_decref(b);
	char *log = read_file("server.log");
	CHECK_CONTAINS(log, "event=worker_exit");
	CHECK_CONTAINS(log, "reason=start_failed");
	CHECK_CONTAINS(log, "cannot open counter.sh");
	free(log);

	write_file("counter.sh", 0755, PERSISTENT_SH);
	json_t *r = results(&s, id);
	for (size_t i = 0; i < 5; i++) {
		CHECK_STR(state_of(r, i), "finished");
		CHECK_INT(json_integer_value(json_object_get(item(r, i), "attempts")), 1);
	}
	json_decref(r);
	wait_healthz(&s, 200, "\"status\":\"ok\"");
	stop_server(&s);
}

/* One that reads an item and dies on it fails that item alone, even as the
 * first item of a new process: the item's fault, not the pool's. */
TEST(program_persistent_that_dies_on_its_first_item_fails_that_item_alone)
{
	write_file("counter.sh", 0755, PERSISTENT_SH);
	TASKS("{\"name\": \"counter\", \"mode\": \"persistent\", \"argv\": [\"./counter.sh\"], "
	      "\"params\": [\"x\"]}");
	struct srv s = start_server("--tasks-file", "tasks.json", "--workers", "1", NULL);
	json_t *r = run(&s, "{\"task\": \"counter\", \"chunksize\": 4, \"items\": [[\"die\"], [2], "
			    "[\"die\"], [\"die\"], [5]]}");
	CHECK_STR(error_type(r, 0), "task_error");
	CHECK_CONTAINS(error_msg(r, 0), "exited with status 7 while running this item");
	CHECK_INT(json_integer_value(json_object_get(result_of(r, 1), "n")), 1);
	CHECK_STR(error_type(r, 2), "task_error");
	CHECK_STR(error_type(r, 3), "task_error");
	CHECK_INT(json_integer_value(json_object_get(result_of(r, 4), "n")), 1);
	json_decref(r);
	wait_healthz(&s, 200, "\"status\":\"ok\"");
	char *log = read_file("server.log");
	if (strstr(log, "reason=start_failed"))
		FAILF("a worker counted as failing to start:\n%s", log);
	free(log);
	stop_server(&s);
}

/* One that ends between items (having answered one) did not see the next:
 * that item goes to a new process instead of failing. */
TEST(program_persistent_that_exits_between_items_gives_the_next_one_to_a_new_process)
{
	write_file("once.sh", 0755,
		   "#!/bin/sh\nIFS= read -r line\nprintf '{\"result\": %%d}\\n' $$\n");
	TASKS("{\"name\": \"once\", \"mode\": \"persistent\", \"argv\": [\"./once.sh\"]}");
	struct srv s = start_server("--tasks-file", "tasks.json", "--workers", "1", NULL);
	json_t *r = run(&s, "{\"task\": \"once\", \"chunksize\": 4, \"items\": [[], [], [], []]}");
	for (size_t i = 0; i < 4; i++) {
		CHECK_STR(state_of(r, i), "finished");
		for (size_t k = 0; k < i; k++)
			CHECK(json_integer_value(result_of(r, i)) != json_integer_value(result_of(r, k)));
	}
	json_decref(r);
	char *log = read_file("server.log");
	CHECK_CONTAINS(log, "/once.sh exited with status 0 between items; starting it again");
	free(log);
	stop_server(&s);
}

#define CHATTY_SH                                                                                 \
	"#!/bin/sh\n"                                                                              \
	"n=0\n"                                                                                    \
	"while IFS= read -r line; do\n"                                                            \
	"  n=$((n+1))\n"                                                                           \
	"  case $line in\n"                                                                        \
	"  '[\"two\"]') printf '{\"result\": 1}\\n{\"result\": 2}\\n' ;;\n"                        \
	"  '[\"later\"]') echo '{\"result\": 1}'\n"                                                \
	"     while [ ! -e go ]; do sleep 0.01; done\n"                                            \
	"     echo '{\"result\": \"stale\"}'; touch written ;;\n"                                  \
	"  *) printf '{\"result\": {\"pid\": %%d, \"n\": %%d}}\\n' $$ $n ;;\n"                     \
	"  esac\n"                                                                                 \
	"done\n"

/* A second line for one item does not change the item's answer, the
 * first; the program is out of step, so it is started again before the
 * next item, with a warning. */
TEST(program_persistent_second_line_for_an_item_keeps_the_first_and_restarts_the_program)
{
	write_file("chatty.sh", 0755, CHATTY_SH);
	TASKS("{\"name\": \"chatty\", \"mode\": \"persistent\", \"argv\": [\"./chatty.sh\"], "
	      "\"params\": [\"x\"]}");
	struct srv s = start_server("--tasks-file", "tasks.json", "--workers", "1", NULL);
	json_t *r = run(&s, "{\"task\": \"chatty\", \"items\": [[0]]}");
	long long pid1 = json_integer_value(json_object_get(result_of(r, 0), "pid"));
	json_decref(r);
	r = run(&s, "{\"task\": \"chatty\", \"chunksize\": 2, \"items\": [[\"two\"], [3]]}");
	CHECK_STR(result_text(r, 0), "1");
	long long pid2 = json_integer_value(json_object_get(result_of(r, 1), "pid"));
	CHECK(pid2 > 0 && pid2 != pid1);
	CHECK_INT(json_integer_value(json_object_get(result_of(r, 1), "n")), 1);
	json_decref(r);
	char *log = read_file("server.log");
	CHECK_CONTAINS(log, "/chatty.sh wrote more than one line for an item; restarting it");
	free(log);
	stop_server(&s);
}

/* Output that comes after an item's answer, while the worker waits for the
 * next chunk, is not taken for the next item's answer: the program is
 * started again first. */
TEST(program_persistent_output_between_items_is_not_taken_for_the_next_answer)
{
	write_file("chatty.sh", 0755, CHATTY_SH);
	TASKS("{\"name\": \"chatty\", \"mode\": \"persistent\", \"argv\": [\"./chatty.sh\"], "
	      "\"params\": [\"x\"]}");
	struct srv s = start_server("--tasks-file", "tasks.json", "--workers", "1", NULL);
	json_t *r = run(&s, "{\"task\": \"chatty\", \"items\": [[\"later\"]]}");
	CHECK_STR(result_text(r, 0), "1");
	json_decref(r);
	write_file("go", 0644, "\n");
	int64_t deadline = harness_now_ms() + 10000;
	while (access("written", F_OK) != 0) {
		if (harness_now_ms() > deadline)
			FAILF("the program did not write its second line");
		pause_ms(10);
	}
	r = run(&s, "{\"task\": \"chatty\", \"items\": [[5]]}");
	CHECK_INT(json_integer_value(json_object_get(result_of(r, 0), "n")), 1);
	json_decref(r);
	char *log = read_file("server.log");
	CHECK_CONTAINS(log, "/chatty.sh wrote to stdout between items; restarting it");
	free(log);
	stop_server(&s);
}

/* Each broken tasks file keeps the server from starting, with what and where. */
TEST(program_tasks_file_mistakes_keep_the_server_from_starting_saying_what_and_where)
{
	static const struct {
		const char *file, *want;
	} cases[] = {
		{"{\"tasks\": [", "tasks.json: not valid JSON: "},
		{"{\"tasks\": [], \"extra\": 1}", "tasks.json: must be an object {\\\"tasks\\\": [...]}"},
		{"{\"tasks\": [{\"name\": \"a\", \"mode\": \"exec\", \"argv\": [\"no-such-program-x\"]}]}",
		 "tasks.json: tasks[0] (\\\"a\\\"): argv[0]: program \\\"no-such-program-x\\\" was not "
		 "found in PATH ("},
		{"{\"tasks\": [{\"name\": \"a\", \"mode\": \"exec\", \"argv\": [\"./missing.sh\"]}]}",
		 "tasks[0] (\\\"a\\\"): argv[0]: program "},
		{"{\"tasks\": [{\"name\": \"a\", \"mode\": \"exec\", \"argv\": [\"./tasks.json\"]}]}",
		 "/tasks.json is not an executable file"},
		{"{\"tasks\": [{\"name\": \"a\", \"mode\": \"fork\", \"argv\": [\"/bin/true\"]}]}",
		 "tasks[0] (\\\"a\\\"): mode must be \\\"exec\\\" or \\\"persistent\\\""},
		{"{\"tasks\": [{\"name\": \"a\", \"mode\": \"exec\", \"argv\": [\"/bin/echo\", \"{1}\"],"
		 " \"params\": [\"x\"]}]}",
		 "argv[1] refers to {1}, but the task has 1 parameter"},
		{"{\"tasks\": [{\"name\": \"a\", \"mode\": \"persistent\", \"argv\": [\"/bin/cat\", "
		 "\"{0}\"], \"params\": [\"x\"]}]}",
		 "a persistent program gets its arguments on stdin"},
		{"{\"tasks\": [{\"name\": \"a\", \"mode\": \"exec\", \"argv\": [\"/bin/true\"], "
		 "\"timeout\": 0}]}", "timeout must be a number of seconds above 0"},
		{"{\"tasks\": [{\"name\": \"a\", \"mode\": \"exec\", \"argv\": [\"/bin/true\"], "
		 "\"cwd\": \"nowhere\"}]}", "/nowhere: No such file or directory"},
		{"{\"tasks\": [{\"name\": \"a\", \"mode\": \"exec\", \"argv\": [\"/bin/true\"], "
		 "\"timout\": 5}]}", "unknown field \\\"timout\\\""},
		{"{\"tasks\": [{\"name\": \"a b\", \"mode\": \"exec\", \"argv\": [\"/bin/true\"]}]}",
		 "name must be 1 to 63 letters, digits, _ . or -"},
		{"{\"tasks\": [{\"name\": \"a\", \"mode\": \"exec\", \"argv\": [\"/bin/true\"], "
		 "\"params\": [{\"name\": \"x\", \"type\": \"float\"}]}]}",
		 "params[0] (x): unknown type \\\"float\\\""},
		{"{\"tasks\": [{\"name\": \"a\", \"mode\": \"exec\", \"argv\": [\"/bin/true\"]}, "
		 "{\"name\": \"a\", \"mode\": \"exec\", \"argv\": [\"/bin/false\"]}]}",
		 "/tasks.json (tasks[1]) clashes with task \\\"a\\\" of tasks file "},
		{"{\"tasks\": [{\"name\": \"square\", \"mode\": \"exec\", \"argv\": [\"/bin/true\"]}]}",
		 "clashes with the built-in task \\\"square\\\""},
		{"{\"tasks\": [{\"name\": \"a\", \"mode\": \"exec\", \"argv\": [\"/bin/true\"], "
		 "\"params\": [\"x\", {\"name\": \"y\"}, {\"name\": \"x\", \"type\": \"int\"}]}]}",
		 "tasks[0] (\\\"a\\\"): params[2] (x): params[0] has that name too"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		write_file("tasks.json", 0644, "%s", cases[i].file);
		char *log = server_refuses("--tasks-file", "tasks.json", NULL);
		if (!strstr(log, cases[i].want) || !strstr(log, "level=error event=config msg=\"") ||
		    !strstr(log, "event=catalog"))
			FAILF("case %zu: %s\nthe log does not say \"%s\":\n%s", i, cases[i].file,
			      cases[i].want, log);
		free(log);
	}
	char *log = server_refuses("--tasks-file", "nowhere.json", NULL);
	CHECK_CONTAINS(log, "tasks file nowhere.json: No such file or directory");
	free(log);
}

/* Every problem of every tasks file has its own event=config line, not
 * only the first; the same file given twice is said to be given twice,
 * rather than clash with itself. */
TEST(program_tasks_file_problems_are_each_reported_and_a_file_given_twice_is_named)
{
	write_file("one.json", 0644,
		   "{\"tasks\": [{\"name\": \"good\", \"mode\": \"exec\", \"argv\": [\"/bin/true\"]},"
		   "{\"name\": \"b1\", \"mode\": \"fork\", \"argv\": [\"/bin/true\"]},"
		   "{\"name\": \"b2\", \"mode\": \"exec\", \"argv\": [\"no-such-program-x\"]},"
		   "{\"name\": \"b3\", \"mode\": \"exec\", \"argv\": [\"/bin/true\"], \"timout\": 1}]}");
	write_file("two.json", 0644, "{\"tasks\": [{\"name\": \"good\", \"mode\": \"exec\", "
				     "\"argv\": [\"/bin/true\"]}, {\"name\": \"b4\"}]}");
	char *log = server_refuses("--tasks-file", "one.json", "--tasks-file", "two.json", NULL);
	static const char *const want[] = {
		"/one.json: tasks[1] (\\\"b1\\\"): mode must be",
		"/one.json: tasks[2] (\\\"b2\\\"): argv[0]: program \\\"no-such-program-x\\\" was not found",
		"/one.json: tasks[3] (\\\"b3\\\"): unknown field \\\"timout\\\"",
		"task \\\"good\\\" of tasks file ",
		"/two.json: tasks[1] (\\\"b4\\\"): mode must be",
	};
	int lines = 0;
	for (char *l = strstr(log, "level=error event=config msg=\""); l;
	     l = strstr(l + 1, "level=error event=config msg=\""))
		lines++;
	CHECK_INT(lines, 5);
	for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
		CHECK_CONTAINS(log, want[i]);
	free(log);

	TASKS("{\"name\": \"a\", \"mode\": \"exec\", \"argv\": [\"/bin/true\"]}");
	log = server_refuses("--tasks-file", "tasks.json", "--tasks-file", "./tasks.json", NULL);
	char cwd[4096], want2[4200];
	CHECK(getcwd(cwd, sizeof cwd) != NULL);
	snprintf(want2, sizeof want2, "level=error event=config msg=\"tasks file %s/tasks.json is given "
				      "twice\"", cwd);
	CHECK_CONTAINS(log, want2);
	if (strstr(log, "clashes"))
		FAILF("a task clashes with itself:\n%s", log);
	free(log);
}

TEST(plugin_task_with_two_parameters_of_one_name_keeps_the_server_from_starting)
{
	char *log = server_refuses("--plugin", plugin_spec("test-plugins/dupparam.so", NULL), NULL);
	char want[4600];
	snprintf(want, sizeof want, "level=error event=config msg=\"plugin %s: task \\\"twice\\\": "
				    "parameters 0 and 2 are both called x\"", bin("test-plugins/dupparam.so"));
	CHECK_CONTAINS(log, want);
	free(log);
}

/* ---- The examples ---- */

TEST(program_example_classify_is_a_persistent_python_model)
{
	if (!have("python3"))
		return skip("python3 is not installed (apt-get install python3)");
	struct srv s = start_server("--tasks-file", bin("examples/classify.json"), "--workers", "2",
				    NULL);
	json_t *r = run(&s, "{\"task\": \"classify\", \"items\": [[\"What a wonderful, great day!\"],"
			    " [\"boring and awful, I hated it\"], [\"qwerty zxcv\"]]}");
	CHECK_STR(json_string_value(json_object_get(result_of(r, 0), "label")), "positive");
	CHECK(json_real_value(json_object_get(result_of(r, 0), "p")) > 0.5);
	CHECK_STR(json_string_value(json_object_get(result_of(r, 1), "label")), "negative");
	CHECK_STR(error_type(r, 2), "task_error");
	CHECK_STR(error_msg(r, 2), "ValueError: none of the words of the text are known to the model");
	json_decref(r);
	stop_server(&s);
	/* What the program printed to stderr is in the server's log as events
	 * of its worker, and the log stays one logfmt line per event. */
	char *log = read_file("server.log");
	CHECK_CONTAINS(log, "level=warn event=worker_stderr pid=");
	CHECK_CONTAINS(log, " line=\"classify.py: model ready (");
	for (char *l = log; *l; l = strchr(l, '\n') ? strchr(l, '\n') + 1 : l + strlen(l))
		if (strncmp(l, "ts=", 3))
			FAILF("a log line that is not logfmt: %.200s", l);
	free(log);
}

/* docs/plugins.md shows these answers of the example: they are what it
 * prints. */
TEST(program_example_classify_answers_as_the_docs_show)
{
	if (!have("python3"))
		return skip("python3 is not installed (apt-get install python3)");
	struct srv s = start_server("--tasks-file", bin("examples/classify.json"), "--workers", "1",
				    NULL);
	json_t *r = run(&s, "{\"task\": \"classify\", \"items\": [[\"a wonderful, moving film\"], "
			    "[\"dull and awful\"], [\"qwerty\"], [\"What a wonderful day\"]]}");
	static const struct {
		size_t i;
		const char *label, *p;
	} want[] = {{0, "positive", "0.7127"}, {1, "negative", "0.8085"}, {3, "negative", "0.5429"}};
	for (size_t k = 0; k < 3; k++) {
		json_t *v = result_of(r, want[k].i);
		char p[32];
		snprintf(p, sizeof p, "%.4f", json_real_value(json_object_get(v, "p")));
		CHECK_STR(json_string_value(json_object_get(v, "label")), want[k].label);
		CHECK_STR(p, want[k].p);
	}
	CHECK_STR(error_msg(r, 2), "ValueError: none of the words of the text are known to the model");
	json_decref(r);
	stop_server(&s);
}

/* Whether convert is ImageMagick's (not a stand-in). */
static int have_imagemagick(void)
{
	if (!have("convert"))
		return 0;
	FILE *p = popen("convert -version 2>/dev/null", "r");
	char line[256] = "";
	if (!p)
		return 0;
	if (!fgets(line, sizeof line, p))
		line[0] = '\0';
	pclose(p);
	return strstr(line, "Version: ImageMagick") != NULL;
}

TEST(program_example_thumbnail_runs_imagemagick_per_item)
{
	if (!have_imagemagick())
		return skip("ImageMagick's convert is not installed (apt-get install imagemagick)");
	/* The example's files, in a directory of our own (cwd is theirs). */
	char cmd[8300];
	snprintf(cmd, sizeof cmd, "cp '%s' '%s' . && mkdir images && convert -size 300x200 xc:blue "
				  "images/blue.png", bin("examples/thumbnail.json"),
		 bin("examples/thumbnail.sh"));
	CHECK_INT(system(cmd), 0);
	struct srv s = start_server("--tasks-file", "thumbnail.json", "--workers", "2", NULL);
	json_t *r = run(&s, "{\"task\": \"thumbnail\", \"items\": [[\"blue.png\", 64, \"small.png\"], "
			    "[\"../../etc/passwd\", 64, \"x.png\"], [\"nothere.png\", 64, \"y.png\"], "
			    "[\"blue.png\", 32, \"ephemeral:x\"]]}");
	CHECK_STR(result_text(r, 0), "{\"path\":\"thumbs/small.png\",\"width\":64,\"height\":43}");
	CHECK_STR(error_type(r, 1), "task_error");
	CHECK_CONTAINS(error_msg(r, 1), "exited with status 2: thumbnail: \"../../etc/passwd\" is not a "
					"plain file name");
	CHECK_CONTAINS(error_msg(r, 2), "there is no image \"nothere.png\"");
	CHECK_CONTAINS(error_msg(r, 3), "\"ephemeral:x\" is not a plain file name");
	json_decref(r);
	CHECK_INT(system("convert thumbs/small.png -format '%w %h' info: > size.txt"), 0);
	char *size = read_file("size.txt");
	CHECK_STR(size, "64 43");
	free(size);
	stop_server(&s);
}
