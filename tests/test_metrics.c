/* test_metrics.c - GET /metrics and GET /v1/workers against the real server:
 * the Prometheus text format parsed strictly (and by promtool when it is
 * installed), and the counts after known work: finished, failed, timed out
 * and crashed items, worker exits by reason, HTTP answers by status. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client.h"
#include "harness.h"

/* ---- a strict reader of the text format (version 0.0.4) ---- */

#define MAX_SAMPLES 4096

struct sample {
	char key[512]; /* name{labels} exactly as written */
	char name[128];
	double value;
};

struct scrape {
	struct sample *s;
	int n;
	char *text;
};

static int name_ok(const char *s, size_t n)
{
	if (!n || !(isalpha((unsigned char)s[0]) || s[0] == '_' || s[0] == ':'))
		return 0;
	for (size_t i = 1; i < n; i++)
		if (!(isalnum((unsigned char)s[i]) || s[i] == '_' || s[i] == ':'))
			return 0;
	return 1;
}

/* The family a sample belongs to: histograms' _bucket/_sum/_count series
 * belong to the histogram's name. */
static const char *family_of(const char *name, char types[][2][128], int ntypes)
{
	static const char *const suffix[] = {"_bucket", "_sum", "_count"};
	for (int i = 0; i < ntypes; i++) {
		if (!strcmp(types[i][0], name))
			return types[i][1];
		size_t n = strlen(types[i][0]);
		if (!strncmp(types[i][0], name, n) && !strcmp(types[i][1], "histogram"))
			for (int k = 0; k < 3; k++)
				if (!strcmp(name + n, suffix[k]))
					return "histogram";
	}
	return NULL;
}

/* Parses and checks the text; fails the test at the first line that is not
 * valid exposition format. */
static struct scrape parse(const char *text)
{
	struct scrape sc = {.s = calloc(MAX_SAMPLES, sizeof(struct sample)), .text = strdup(text)};
	static char types[256][2][128]; /* name, type */
	int ntypes = 0, lineno = 0;
	char *save = NULL;
	for (char *l = strtok_r(sc.text, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
		lineno++;
		if (l[0] == '#') {
			char kw[16], name[128], rest[512];
			if (sscanf(l, "# %15s %127s %511[^\n]", kw, name, rest) != 3)
				FAILF("line %d: a comment that is neither HELP nor TYPE: %s", lineno, l);
			if (!name_ok(name, strlen(name)))
				FAILF("line %d: bad metric name %s", lineno, name);
			if (!strcmp(kw, "TYPE")) {
				if (strcmp(rest, "counter") && strcmp(rest, "gauge") && strcmp(rest, "histogram"))
					FAILF("line %d: unknown type %s", lineno, rest);
				for (int i = 0; i < ntypes; i++)
					if (!strcmp(types[i][0], name))
						FAILF("line %d: second TYPE for %s", lineno, name);
				if (!strcmp(rest, "counter") && strlen(name) > 6 &&
				    strcmp(name + strlen(name) - 6, "_total"))
					FAILF("line %d: counter %s does not end in _total", lineno, name);
				snprintf(types[ntypes][0], 128, "%s", name);
				snprintf(types[ntypes][1], 128, "%.100s", rest);
				ntypes++;
			} else if (strcmp(kw, "HELP")) {
				FAILF("line %d: unknown comment keyword %s", lineno, kw);
			}
			continue;
		}
		/* name{label="value",...} value */
		const char *p = l;
		while (*p && *p != '{' && *p != ' ')
			p++;
		if (!name_ok(l, (size_t)(p - l)))
			FAILF("line %d: bad sample name: %s", lineno, l);
		struct sample *s = &sc.s[sc.n];
		snprintf(s->name, sizeof s->name, "%.*s", (int)(p - l), l);
		if (*p == '{') {
			p++;
			while (*p != '}') {
				const char *ln = p;
				while (isalnum((unsigned char)*p) || *p == '_')
					p++;
				if (p == ln || p[0] != '=' || p[1] != '"')
					FAILF("line %d: bad label at \"%s\"", lineno, ln);
				p += 2;
				while (*p && *p != '"') {
					if (*p == '\\') {
						if (p[1] != '\\' && p[1] != '"' && p[1] != 'n')
							FAILF("line %d: bad escape in a label value", lineno);
						p++;
					}
					p++;
				}
				if (*p != '"')
					FAILF("line %d: unterminated label value", lineno);
				p++;
				if (*p == ',')
					p++;
				else if (*p != '}')
					FAILF("line %d: expected , or } after a label", lineno);
			}
			p++;
		}
		snprintf(s->key, sizeof s->key, "%.*s", (int)(p - l), l);
		if (*p != ' ')
			FAILF("line %d: no space before the value: %s", lineno, l);
		char *end;
		s->value = strtod(p + 1, &end);
		if (end == p + 1 || (*end && *end != ' '))
			FAILF("line %d: bad value: %s", lineno, l);
		if (!family_of(s->name, types, ntypes))
			FAILF("line %d: sample %s comes before its TYPE line", lineno, s->name);
		for (int i = 0; i < sc.n; i++)
			if (!strcmp(sc.s[i].key, s->key))
				FAILF("line %d: series %s appears twice", lineno, s->key);
		if (++sc.n == MAX_SAMPLES)
			FAILF("more than %d samples", MAX_SAMPLES);
	}
	return sc;
}

/* The value of one series (its exact name{labels}); fails if absent. */
static double val(const struct scrape *sc, const char *key)
{
	for (int i = 0; i < sc->n; i++)
		if (!strcmp(sc->s[i].key, key))
			return sc->s[i].value;
	FAILF("no series %s in the scrape", key);
}

static int has(const struct scrape *sc, const char *key)
{
	for (int i = 0; i < sc->n; i++)
		if (!strcmp(sc->s[i].key, key))
			return 1;
	return 0;
}

/* Every histogram: buckets in increasing le, counts never decreasing, and
 * the +Inf bucket equal to _count. */
static void check_histograms(const struct scrape *sc)
{
	for (int i = 0; i < sc->n; i++) {
		const struct sample *s = &sc->s[i];
		size_t n = strlen(s->name);
		if (n < 7 || strcmp(s->name + n - 7, "_bucket"))
			continue;
		if (i > 0 && !strcmp(sc->s[i - 1].name, s->name)) {
			const char *le = strstr(s->key, "le=\""), *ple = strstr(sc->s[i - 1].key, "le=\"");
			if (!le || !ple)
				FAILF("bucket without le: %s", s->key);
			if (s->value < sc->s[i - 1].value)
				FAILF("bucket counts decrease at %s", s->key);
			if (strncmp(ple + 4, "+Inf", 4) && strncmp(le + 4, "+Inf", 4) &&
			    strtod(le + 4, NULL) <= strtod(ple + 4, NULL))
				FAILF("buckets out of order at %s", s->key);
		}
		if (strstr(s->key, "le=\"+Inf\"")) {
			/* name_count{same labels but le} */
			char count[512], base[128];
			snprintf(base, sizeof base, "%.*s", (int)(n - 7), s->name);
			const char *lb = strchr(s->key, '{');
			const char *le = strstr(lb, ",le=");
			snprintf(count, sizeof count, "%s_count%.*s}", base, (int)(le - lb), lb);
			if (val(sc, count) != s->value)
				FAILF("%s is %g but %s is %g", s->key, s->value, count, val(sc, count));
		}
	}
}

static void scrape_free(struct scrape *sc)
{
	free(sc->s);
	free(sc->text);
}

static struct scrape scrape(const struct server *s)
{
	struct resp r = req(s, "GET", "/metrics", NULL);
	CHECK_INT(r.status, 200);
	char *ct = resp_header(&r, "Content-Type");
	CHECK_STR(ct, "text/plain; version=0.0.4; charset=utf-8");
	free(ct);
	struct scrape sc = parse(r.body);
	check_histograms(&sc);
	resp_free(&r);
	return sc;
}

/* Runs promtool check metrics on the body of GET /metrics, when promtool is
 * installed (Debian's prometheus package). */
static void promtool_check(const struct server *s)
{
	if (system("command -v promtool >/dev/null 2>&1") != 0) {
		printf("     note: promtool is not installed (apt-get install prometheus); "
		       "the text format was checked by the test's own reader only\n");
		return;
	}
	struct resp r = req(s, "GET", "/metrics", NULL);
	FILE *f = fopen("metrics.txt", "w");
	CHECK(f);
	fputs(r.body, f);
	fclose(f);
	resp_free(&r);
	int rc = system("promtool check metrics < metrics.txt > promtool.out 2>&1");
	FILE *o = fopen("promtool.out", "r");
	char out[4096] = "";
	if (o) {
		size_t n = fread(out, 1, sizeof out - 1, o);
		out[n] = '\0';
		fclose(o);
	}
	if (rc != 0 || out[0])
		FAILF("promtool check metrics (exit %d): %s", WEXITSTATUS(rc), out);
}

/* ---- the tests ---- */

TEST(metrics_count_items_by_task_state_and_error_and_workers_by_exit_reason)
{
	struct server s;
	server_start(&s, "--workers", "2", NULL);
	int64_t a = submit(&s, "{\"task\":\"fail_if\",\"items\":[[1,2],[2,2],[3,2]]}");
	int64_t b = submit(&s, "{\"task\":\"crash_if\",\"items\":[[1,2],[2,2]],\"chunksize\":2}");
	int64_t c = submit(&s, "{\"task\":\"spin\",\"items\":[[30]],\"timeout\":0.2}");
	json_decref(wait_batch(&s, a, 60));
	json_decref(wait_batch(&s, b, 60));
	json_decref(wait_batch(&s, c, 60));

	struct scrape sc = scrape(&s);
	CHECK_INT(val(&sc, "forkpool_items{state=\"finished\"}"), 3);
	CHECK_INT(val(&sc, "forkpool_items{state=\"failed\"}"), 3);
	CHECK_INT(val(&sc, "forkpool_items{state=\"pending\"}"), 0);
	CHECK_INT(val(&sc, "forkpool_batches{state=\"done\"}"), 3);
	CHECK_INT(val(&sc, "forkpool_batches{state=\"open\"}"), 0);
	CHECK_INT(val(&sc, "forkpool_batches_accepted_total{task=\"fail_if\"}"), 1);
	CHECK_INT(val(&sc, "forkpool_items_accepted_total{task=\"fail_if\"}"), 3);
	CHECK_INT(val(&sc, "forkpool_items_completed_total{task=\"fail_if\",state=\"finished\"}"), 2);
	CHECK_INT(val(&sc, "forkpool_items_completed_total{task=\"fail_if\",state=\"failed\"}"), 1);
	CHECK_INT(val(&sc, "forkpool_item_failures_total{task=\"fail_if\",error=\"task_error\"}"), 1);
	CHECK_INT(val(&sc, "forkpool_item_failures_total{task=\"crash_if\",error=\"worker_died\"}"), 1);
	CHECK_INT(val(&sc, "forkpool_items_completed_total{task=\"crash_if\",state=\"finished\"}"), 1);
	CHECK_INT(val(&sc, "forkpool_item_failures_total{task=\"spin\",error=\"timeout\"}"), 1);
	/* Every item that ran was timed, the timed-out one for its 0.2 s. */
	CHECK_INT(val(&sc, "forkpool_item_run_seconds_count{task=\"fail_if\"}"), 3);
	CHECK_INT(val(&sc, "forkpool_item_wait_seconds_count{task=\"fail_if\"}"), 3);
	CHECK(val(&sc, "forkpool_item_run_seconds_sum{task=\"spin\"}") >= 0.19);
	CHECK_INT(val(&sc, "forkpool_item_run_seconds_bucket{task=\"spin\",le=\"0.1\"}"), 0);
	CHECK_INT(val(&sc, "forkpool_worker_exits_total{reason=\"died\"}"), 1);
	CHECK_INT(val(&sc, "forkpool_worker_exits_total{reason=\"timeout\"}"), 1);
	/* Two at start and a replacement for each death. */
	CHECK_INT(val(&sc, "forkpool_worker_starts_total"), 4);
	CHECK_INT(val(&sc, "forkpool_http_requests_total{code=\"201\"}"), 3);
	CHECK(val(&sc, "forkpool_db_size_bytes{file=\"main\"}") > 0);
	CHECK(has(&sc, "forkpool_db_size_bytes{file=\"wal\"}"));
	CHECK(has(&sc, "forkpool_db_free_bytes"));
	CHECK(val(&sc, "forkpool_start_time_seconds") > 1.7e9);
	scrape_free(&sc);
	promtool_check(&s);
	CHECK_INT(WEXITSTATUS(server_stop(&s)), 0);
}

TEST(metrics_count_http_answers_by_status_code)
{
	struct server s;
	server_start(&s, "--workers", "1", NULL);
	struct resp r = req(&s, "GET", "/v1/nowhere", NULL);
	CHECK_INT(r.status, 404);
	resp_free(&r);
	r = req(&s, "POST", "/metrics", "{}");
	CHECK_INT(r.status, 405);
	resp_free(&r);
	r = req(&s, "POST", "/v1/batches", "{\"task\":");
	CHECK_INT(r.status, 400);
	resp_free(&r);
	struct scrape sc = scrape(&s);
	CHECK_INT(val(&sc, "forkpool_http_requests_total{code=\"404\"}"), 1);
	CHECK_INT(val(&sc, "forkpool_http_requests_total{code=\"405\"}"), 1);
	CHECK_INT(val(&sc, "forkpool_http_requests_total{code=\"400\"}"), 1);
	scrape_free(&sc);
	/* The scrape itself is counted, in the next one. */
	sc = scrape(&s);
	CHECK(val(&sc, "forkpool_http_requests_total{code=\"200\"}") >= 1);
	scrape_free(&sc);
	server_stop(&s);
}

TEST(metrics_show_pending_and_running_items_and_busy_workers_while_work_runs)
{
	struct server s;
	server_start(&s, "--workers", "1", NULL);
	submit(&s, "{\"task\":\"sleep\",\"items\":[[30],[30],[30]],\"chunksize\":1}");
	int64_t deadline = harness_now_ms() + 20000;
	for (;;) {
		struct scrape sc = scrape(&s);
		int ok = val(&sc, "forkpool_items{state=\"running\"}") == 1 &&
			 val(&sc, "forkpool_items{state=\"pending\"}") == 2 &&
			 val(&sc, "forkpool_workers{state=\"busy\"}") == 1 &&
			 val(&sc, "forkpool_batches{state=\"open\"}") == 1 &&
			 val(&sc, "forkpool_workers_resident_bytes") > 0;
		scrape_free(&sc);
		if (ok)
			break;
		CHECK(harness_now_ms() < deadline);
		usleep(10000);
	}
	server_kill9(&s); /* no need to wait for the sleeps */
}

TEST(metrics_count_cancelled_items_by_task)
{
	struct server s;
	server_start(&s, "--workers", "1", NULL);
	submit(&s, "{\"task\":\"sleep\",\"items\":[[30],[30],[30]],\"chunksize\":1}");
	struct resp r = req(&s, "DELETE", "/v1/batches/1", NULL);
	CHECK_INT(r.status, 200);
	resp_free(&r);
	struct scrape sc = scrape(&s);
	/* Those still pending when the cancel came: two, or three if the
	 * worker had not taken the first yet. */
	double n = val(&sc, "forkpool_items_completed_total{task=\"sleep\",state=\"cancelled\"}");
	CHECK(n == 2 || n == 3);
	CHECK_INT(val(&sc, "forkpool_items{state=\"cancelled\"}"), n);
	scrape_free(&sc);
	server_kill9(&s);
}

TEST(metrics_text_passes_promtool_check_metrics)
{
	struct server s;
	server_start(&s, "--workers", "1", NULL);
	json_decref(wait_batch(&s, submit(&s, "{\"task\":\"square\",\"items\":[[1],[2]]}"), 60));
	promtool_check(&s);
	server_stop(&s);
}

/* ---- GET /v1/workers ---- */

/* The worker running item idx of batch, once /v1/workers shows it. */
static json_t *busy_worker(const struct server *s, int64_t batch, int64_t idx)
{
	int64_t deadline = harness_now_ms() + 20000;
	for (;;) {
		struct resp r = req(s, "GET", "/v1/workers", NULL);
		CHECK_INT(r.status, 200);
		json_t *ws = jget(r.json, "workers"), *w;
		size_t i;
		json_array_foreach(ws, i, w)
		{
			json_t *cur = jget(w, "current");
			if (json_is_object(cur) && jint(cur, "batch") == batch &&
			    jint(cur, "index") == idx) {
				json_incref(w);
				resp_free(&r);
				return w;
			}
		}
		resp_free(&r);
		CHECK(harness_now_ms() < deadline);
		usleep(10000);
	}
}

TEST(workers_list_each_process_with_pid_state_items_run_rss_and_current_item)
{
	struct server s;
	server_start(&s, "--workers", "2", NULL);
	/* Both ready first: a slow start (under ASan, say) would otherwise
	 * still show one "starting" below. */
	int64_t deadline = harness_now_ms() + 20000;
	for (;;) {
		struct resp h = req(&s, "GET", "/healthz", NULL);
		int ready = h.json && jint(h.json, "workers") == 2;
		resp_free(&h);
		if (ready)
			break;
		CHECK(harness_now_ms() < deadline);
		usleep(10000);
	}
	json_decref(wait_batch(&s, submit(&s, "{\"task\":\"square\",\"items\":[[1],[2],[3]]}"), 60));
	int64_t id = submit(&s, "{\"task\":\"sleep\",\"items\":[[0],[30]],\"chunksize\":2}");
	/* Item 0 takes no time, but the page may still show it for a moment
	 * (a loaded machine): wait for item 1. */
	json_t *w = busy_worker(&s, id, 1);
	CHECK_STR(jstr(w, "state"), "busy");
	json_t *cur = jget(w, "current");
	CHECK_INT(jint(cur, "index"), 1);
	CHECK_STR(jstr(cur, "task"), "sleep");
	CHECK_INT(strlen(jstr(cur, "started_at")), 24);
	CHECK_INT(strlen(jstr(w, "started_at")), 24);
	int pid = (int)jint(w, "pid");
	CHECK(kill(pid, 0) == 0);
	CHECK(jint(w, "rss_bytes") > 0);
	json_decref(w);

	struct resp r = req(&s, "GET", "/v1/workers", NULL);
	json_t *ws = jget(r.json, "workers"), *x;
	CHECK_INT(json_array_size(ws), 2);
	json_int_t run = 0;
	size_t i;
	json_array_foreach(ws, i, x)
	{
		run += jint(x, "tasks_run");
		CHECK(!strcmp(jstr(x, "state"), "busy") || !strcmp(jstr(x, "state"), "idle"));
		if (jint(x, "pid") != pid)
			CHECK(json_is_null(jget(x, "current")));
	}
	/* The three squares, and the sleep of 0 s once its record is in (a
	 * worker may hold records back until its chunk ends). */
	CHECK(run == 3 || run == 4);
	resp_free(&r);
	r = req(&s, "POST", "/v1/workers", "{}");
	CHECK_INT(r.status, 405);
	resp_free(&r);
	server_kill9(&s); /* no need to wait for the sleep */
}
