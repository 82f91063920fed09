/* test_auth.c - the bearer token and the listen rule against the real server:
 * /v1 needs the token (401 and WWW-Authenticate without it), /healthz never
 * does, /metrics only with --protect-metrics; the token comes from a file or
 * FORKPOOL_TOKEN and never reaches the workers; a non-loopback address
 * without a token is refused unless --insecure-listen. */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client.h"
#include "harness.h"

#define TOKEN "tok-3f9a1c7e5b2d4a60"

static const char *const good[] = {"Authorization: Bearer " TOKEN, NULL};

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	if (!f)
		FAILF("cannot write %s", path);
	fputs(text, f);
	fclose(f);
}

/* Runs forkpoold with the arguments until it exits (it is expected to refuse
 * to start); returns its exit status, and its stderr in out. */
static int run_refused(char *out, size_t outlen, const char *const *args)
{
	const char *argv[32];
	char bin[512];
	snprintf(bin, sizeof bin, "%s/forkpoold", harness_bin_dir());
	int n = 0;
	argv[n++] = bin;
	for (int i = 0; args[i] && n < 31; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	int fd = open("refused.out", O_WRONLY | O_CREAT | O_TRUNC, 0644);
	pid_t pid = fork();
	if (pid == 0) {
		dup2(fd, 1);
		dup2(fd, 2);
		execv(bin, (char *const *)argv);
		_exit(127);
	}
	close(fd);
	int status;
	int64_t deadline = harness_now_ms() + 10000;
	while (waitpid(pid, &status, WNOHANG) != pid) {
		if (harness_now_ms() > deadline) {
			kill(pid, SIGKILL);
			waitpid(pid, &status, 0);
			FAILF("forkpoold %s did not exit: it should have refused to start", args[0]);
		}
		usleep(5000);
	}
	FILE *f = fopen("refused.out", "r");
	size_t k = f ? fread(out, 1, outlen - 1, f) : 0;
	out[k] = '\0';
	if (f)
		fclose(f);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void start_with_token_file(struct server *s, const char *extra)
{
	write_file("token", TOKEN "\n");
	server_start(s, "--workers", "1", "--token-file", "token", extra, NULL);
}

TEST(auth_v1_without_a_token_is_401_with_www_authenticate)
{
	struct server s;
	start_with_token_file(&s, NULL);
	struct resp r = req(&s, "GET", "/v1/tasks", NULL);
	CHECK_INT(r.status, 401);
	char *wa = resp_header(&r, "WWW-Authenticate");
	CHECK_STR(wa, "Bearer realm=\"forkpool\"");
	free(wa);
	CHECK_STR(jstr(jget(r.json, "error"), "code"), "unauthorized");
	CHECK_CONTAINS(jstr(jget(r.json, "error"), "message"), "Authorization: Bearer");
	resp_free(&r);
	/* Another scheme is no better than none. */
	const char *basic[] = {"Authorization: Basic dXNlcjpwYXNz", NULL};
	r = reqh(&s, "GET", "/v1/batches", NULL, basic);
	CHECK_INT(r.status, 401);
	resp_free(&r);
	server_stop(&s);
}

TEST(auth_v1_with_a_wrong_token_is_401_invalid_token)
{
	struct server s;
	start_with_token_file(&s, NULL);
	static const char *const wrong[][2] = {
	    {"Authorization: Bearer tok-3f9a1c7e5b2d4a6", NULL},   /* a prefix */
	    {"Authorization: Bearer tok-3f9a1c7e5b2d4a600", NULL}, /* one more */
	    {"Authorization: Bearer TOK-3F9A1C7E5B2D4A60", NULL},  /* case matters */
	    {"Authorization: Bearer x", NULL},
	};
	for (size_t i = 0; i < sizeof wrong / sizeof wrong[0]; i++) {
		struct resp r = reqh(&s, "GET", "/v1/tasks", NULL, wrong[i]);
		CHECK_INT(r.status, 401);
		char *wa = resp_header(&r, "WWW-Authenticate");
		CHECK_STR(wa, "Bearer realm=\"forkpool\", error=\"invalid_token\"");
		free(wa);
		resp_free(&r);
	}
	server_stop(&s);
}

TEST(auth_v1_with_the_token_works_and_the_scheme_is_case_insensitive)
{
	struct server s;
	start_with_token_file(&s, NULL);
	struct resp r = reqh(&s, "POST", "/v1/batches", "{\"task\":\"square\",\"items\":[[7]]}", good);
	CHECK_INT(r.status, 201);
	resp_free(&r);
	const char *lower[] = {"Authorization: bearer " TOKEN, NULL};
	r = reqh(&s, "GET", "/v1/batches/1?wait=30", NULL, lower);
	CHECK_INT(r.status, 200);
	CHECK_STR(jstr(r.json, "state"), "done");
	resp_free(&r);
	r = reqh(&s, "GET", "/v1/workers", NULL, good);
	CHECK_INT(r.status, 200);
	resp_free(&r);
	server_stop(&s);
}

TEST(auth_refused_submission_stores_nothing)
{
	struct server s;
	start_with_token_file(&s, NULL);
	struct resp r = req(&s, "POST", "/v1/batches", "{\"task\":\"square\",\"items\":[[1],[2]]}");
	CHECK_INT(r.status, 401);
	resp_free(&r);
	r = reqh(&s, "GET", "/v1/batches", NULL, good);
	CHECK_INT(r.status, 200);
	CHECK_INT(json_array_size(jget(r.json, "batches")), 0);
	resp_free(&r);
	server_stop(&s);
}

TEST(auth_healthz_and_metrics_stay_open_and_unknown_paths_are_404)
{
	struct server s;
	start_with_token_file(&s, NULL);
	struct resp r = req(&s, "GET", "/healthz", NULL);
	CHECK_INT(r.status, 200);
	resp_free(&r);
	r = req(&s, "GET", "/metrics", NULL);
	CHECK_INT(r.status, 200);
	CHECK_CONTAINS(r.body, "forkpool_http_requests_total{code=\"200\"} 1");
	resp_free(&r);
	r = req(&s, "GET", "/nowhere", NULL);
	CHECK_INT(r.status, 404);
	resp_free(&r);
	server_stop(&s);
}

TEST(auth_protect_metrics_guards_metrics_but_not_healthz)
{
	struct server s;
	start_with_token_file(&s, "--protect-metrics");
	struct resp r = req(&s, "GET", "/metrics", NULL);
	CHECK_INT(r.status, 401);
	resp_free(&r);
	r = reqh(&s, "GET", "/metrics", NULL, good);
	CHECK_INT(r.status, 200);
	/* Refusals are counted like any answer. */
	CHECK_CONTAINS(r.body, "forkpool_http_requests_total{code=\"401\"} 1");
	resp_free(&r);
	r = req(&s, "GET", "/healthz", NULL);
	CHECK_INT(r.status, 200);
	resp_free(&r);
	server_stop(&s);
}

TEST(auth_token_from_the_environment_works_and_workers_do_not_inherit_it)
{
	setenv("FORKPOOL_TOKEN", TOKEN, 1);
	struct server s;
	server_start(&s, "--workers", "1", NULL);
	struct resp r = req(&s, "GET", "/v1/tasks", NULL);
	CHECK_INT(r.status, 401);
	resp_free(&r);
	r = reqh(&s, "GET", "/v1/workers", NULL, good);
	CHECK_INT(r.status, 200);
	json_t *ws = jget(r.json, "workers");
	CHECK(json_array_size(ws) >= 1);
	char path[64];
	snprintf(path, sizeof path, "/proc/%lld/environ", (long long)jint(json_array_get(ws, 0), "pid"));
	resp_free(&r);
	FILE *f = fopen(path, "r");
	CHECK(f);
	char env[65536];
	size_t n = fread(env, 1, sizeof env - 1, f);
	fclose(f);
	for (size_t i = 0; i < n; i++)
		if (!env[i])
			env[i] = '\n';
	env[n] = '\0';
	CHECK(strstr(env, "FORKPOOL_TOKEN") == NULL);
	CHECK(strstr(env, TOKEN) == NULL);
	/* Nor can a task read it from the server's own /proc/PID/environ, the
	 * block the server was started with (unsetenv alone leaves it there). */
	snprintf(path, sizeof path, "/proc/%d/environ", (int)s.pid);
	f = fopen(path, "r");
	CHECK(f);
	n = fread(env, 1, sizeof env - 1, f);
	fclose(f);
	env[n] = '\0';
	CHECK(memmem(env, n, TOKEN, strlen(TOKEN)) == NULL);
	server_stop(&s);
}

TEST(auth_refuses_a_non_loopback_listen_without_a_token_and_says_why)
{
	char out[4096];
	const char *a[] = {"--listen", "0.0.0.0:0", "--db", "x.db", NULL};
	CHECK_INT(run_refused(out, sizeof out, a), 2);
	CHECK_CONTAINS(out, "refusing to listen on 0.0.0.0:0 without a token");
	CHECK_CONTAINS(out, "--insecure-listen");
	CHECK(access("x.db", F_OK) != 0); /* it stopped before touching anything */
	const char *b[] = {"--listen", "[::]:0", "--db", "x.db", NULL};
	CHECK_INT(run_refused(out, sizeof out, b), 2);
	CHECK_CONTAINS(out, "refusing to listen on [::]:0");
	const char *c[] = {"--listen", ":0", "--db", "x.db", NULL};
	CHECK_INT(run_refused(out, sizeof out, c), 2);
}

TEST(auth_loopback_addresses_need_no_token)
{
	struct server s;
	server_start(&s, "--listen", "127.0.0.2:0", "--workers", "1", NULL);
	CHECK_INT(server_log_count(&s, "event=insecure_listen", NULL), 0);
	server_stop(&s);
	server_start(&s, "--listen", "localhost:0", "--workers", "1", NULL);
	server_stop(&s);
}

TEST(auth_insecure_listen_serves_without_a_token_and_warns)
{
	struct server s;
	server_start(&s, "--listen", "0.0.0.0:0", "--insecure-listen", "--workers", "1", NULL);
	CHECK_INT(server_log_count(&s, "level=warn", "event=insecure_listen", NULL), 1);
	struct resp r = req(&s, "GET", "/v1/tasks", NULL);
	CHECK_INT(r.status, 200);
	resp_free(&r);
	server_stop(&s);
	/* The same from the environment. */
	setenv("FORKPOOL_INSECURE_LISTEN", "1", 1);
	server_start(&s, "--listen", "0.0.0.0:0", "--workers", "1", NULL);
	CHECK_INT(server_log_count(&s, "event=insecure_listen", NULL), 1);
	server_stop(&s);
	char out[4096];
	setenv("FORKPOOL_INSECURE_LISTEN", "maybe", 1);
	const char *a[] = {"--listen", "0.0.0.0:0", "--db", "x.db", NULL};
	CHECK_INT(run_refused(out, sizeof out, a), 2);
	CHECK_CONTAINS(out, "expected 1 or 0");
}

TEST(auth_with_a_token_a_non_loopback_listen_is_fine)
{
	struct server s;
	write_file("token", TOKEN);
	server_start(&s, "--listen", "0.0.0.0:0", "--token-file", "token", "--workers", "1", NULL);
	CHECK_INT(server_log_count(&s, "event=insecure_listen", NULL), 0);
	CHECK_INT(server_log_count(&s, "event=auth", "token_from=\"file\"", NULL), 1);
	struct resp r = reqh(&s, "GET", "/v1/tasks", NULL, good);
	CHECK_INT(r.status, 200);
	resp_free(&r);
	server_stop(&s);
}

TEST(auth_bad_tokens_stop_the_server_at_start_with_the_reason)
{
	char out[4096];
	const char *missing[] = {"--token-file", "no-such-file", "--db", "x.db", NULL};
	CHECK_INT(run_refused(out, sizeof out, missing), 2);
	CHECK_CONTAINS(out, "--token-file no-such-file: No such file or directory");
	write_file("empty", "\n");
	const char *empty[] = {"--token-file", "empty", "--db", "x.db", NULL};
	CHECK_INT(run_refused(out, sizeof out, empty), 2);
	CHECK_CONTAINS(out, "is 0 characters");
	write_file("short", "abc\n");
	const char *shorter[] = {"--token-file", "short", "--db", "x.db", NULL};
	CHECK_INT(run_refused(out, sizeof out, shorter), 2);
	CHECK_CONTAINS(out, "is 3 characters; use 16");
	write_file("spaced", "a token with spaces in it\n");
	const char *spaced[] = {"--token-file", "spaced", "--db", "x.db", NULL};
	CHECK_INT(run_refused(out, sizeof out, spaced), 2);
	CHECK_CONTAINS(out, "holds a space");
	write_file("token", TOKEN);
	setenv("FORKPOOL_TOKEN", TOKEN, 1);
	const char *both[] = {"--token-file", "token", "--db", "x.db", NULL};
	CHECK_INT(run_refused(out, sizeof out, both), 2);
	CHECK_CONTAINS(out, "give the token one way only");
	unsetenv("FORKPOOL_TOKEN");
	const char *unguarded[] = {"--protect-metrics", "--db", "x.db", NULL};
	CHECK_INT(run_refused(out, sizeof out, unguarded), 2);
	CHECK_CONTAINS(out, "--protect-metrics needs a token");
	mkdir("tokdir", 0755);
	const char *dir[] = {"--token-file", "tokdir", "--db", "x.db", NULL};
	CHECK_INT(run_refused(out, sizeof out, dir), 2);
	CHECK_CONTAINS(out, "Is a directory");
}
