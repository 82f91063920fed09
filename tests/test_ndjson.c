/* test_ndjson.c - NDJSON batches (POST /v1/batches?task=T with one JSON array
 * of arguments per line), stored as they arrive, against the real server. */
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "buf.h"
#include "client.h"
#include "harness.h"

static const char *const NDJSON_CT[] = {"Content-Type: application/x-ndjson", NULL};

static struct resp post_ndjson(const struct server *s, const char *query, const char *body)
{
	char path[256];
	snprintf(path, sizeof path, "/v1/batches%s", query);
	return reqh(s, "POST", path, body, NDJSON_CT);
}

/* Rows in a table of the server's database (read while it runs: WAL). */
static long long db_count(const struct server *s, const char *table)
{
	sqlite3 *db;
	if (sqlite3_open_v2(s->db, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK)
		FAILF("open %s", s->db);
	char q[128];
	snprintf(q, sizeof q, "SELECT count(*) FROM %s", table);
	sqlite3_stmt *st;
	long long n = -1;
	if (sqlite3_prepare_v2(db, q, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
		n = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	sqlite3_close(db);
	return n;
}

static void wait_rows(const struct server *s, const char *table, long long want)
{
	int64_t deadline = harness_now_ms() + 10000;
	long long n;
	while ((n = db_count(s, table)) != want)
		if (harness_now_ms() > deadline)
			FAILF("%s has %lld rows, expected %lld", table, n, want);
}

static char *lines(int n, const char *eol)
{
	struct buf b = {0};
	for (int i = 0; i < n; i++)
		buf_printf(&b, "[%d]%s", i, eol);
	buf_addc(&b, '\0');
	return b.data;
}

TEST(ndjson_batch_is_stored_and_runs_exactly)
{
	struct server s;
	server_start(&s, "--workers", "2", NULL);
	char *body = lines(1000, "\n");
	struct resp r = post_ndjson(&s, "?task=square&chunksize=100", body);
	free(body);
	CHECK_INT(r.status, 201);
	CHECK_INT(jint(r.json, "size"), 1000);
	CHECK_INT(jint(r.json, "chunksize"), 100);
	CHECK_STR(jstr(r.json, "task"), "square");
	int64_t id = jint(r.json, "id");
	char *loc = resp_header(&r, "Location");
	CHECK(loc != NULL);
	free(loc);
	resp_free(&r);
	json_decref(wait_batch(&s, id, 60));
	json_t *res = results(&s, id);
	CHECK_INT(json_array_size(res), 1000);
	for (size_t i = 0; i < 1000; i++)
		CHECK_INT(jint(json_array_get(res, i), "result"), (long long)(i * i));
	json_decref(res);
	/* Accepted like a JSON batch. */
	CHECK_INT(server_metric(&s, "forkpool_batches_accepted_total{task=\"square\"}"), 1);
	CHECK_INT(server_metric(&s, "forkpool_items_accepted_total{task=\"square\"}"), 1000);
	server_stop(&s);
}

TEST(ndjson_accepts_crlf_blank_lines_no_final_newline_and_wait)
{
	struct server s;
	server_start(&s, "--workers", "1", NULL);
	struct resp r = post_ndjson(&s, "?task=power&wait=20", "[2, 10]\r\n\r\n  \n[3,2]");
	CHECK_INT(r.status, 201);
	CHECK_INT(jint(r.json, "size"), 2);
	CHECK_STR(jstr(r.json, "state"), "done");
	json_t *res = jget(r.json, "results");
	CHECK_INT(jint(json_array_get(res, 0), "result"), 1024);
	CHECK_INT(jint(json_array_get(res, 1), "result"), 9);
	resp_free(&r);
	/* Automatic chunk size, as for JSON bodies: ceil(10 / (1 x 4)). */
	char *body = lines(10, "\n");
	r = post_ndjson(&s, "?task=square", body);
	free(body);
	CHECK_INT(jint(r.json, "chunksize"), 3);
	resp_free(&r);
	server_stop(&s);
}

TEST(ndjson_errors_name_the_line_and_store_nothing)
{
	struct server s;
	server_start(&s, NULL);
	static const struct {
		const char *query, *body, *code, *msg;
		long status;
	} cases[] = {
	    {"?task=square", "[1]\n[2,3]\n[3]\n", "invalid_request", "line 2: square takes 1 argument, got 2", 400},
	    {"?task=square", "[1]\n[2]\n{\"x\":1}\n", "invalid_request", "line 3: each line must be a JSON array", 400},
	    {"?task=square", "[1]\nnope\n", "invalid_json", "line 2: not valid JSON", 400},
	    {"?task=square", "[1]\n[18446744073709551615]\n", "invalid_request",
	     "line 2: a number out of range", 400},
	    {"?task=square", "[1]\n[\"a\"]", "invalid_request", "line 2:", 400},
	    {"?task=square", "", "invalid_request", "no lines", 400},
	    {"?task=square", "\n\n", "invalid_request", "no lines", 400},
	    {"", "[1]\n", "invalid_request", "task: is required", 400},
	    {"?task=cube", "[1]\n", "invalid_request", "no task \"cube\"", 400},
	    {"?task=square&chunksize=0", "[1]\n", "invalid_request", "chunksize", 400},
	    {"?task=square&timeout=-1", "[1]\n", "invalid_request", "timeout", 400},
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		struct resp r = post_ndjson(&s, cases[i].query, cases[i].body);
		if (r.status != cases[i].status || !r.json)
			FAILF("case %zu: status %ld: %s", i, r.status, r.body);
		json_t *e = jget(r.json, "error");
		CHECK_STR(jstr(e, "code"), cases[i].code);
		if (!strstr(jstr(e, "message"), cases[i].msg))
			FAILF("case %zu: message \"%s\" lacks \"%s\"", i, jstr(e, "message"), cases[i].msg);
		resp_free(&r);
	}
	struct resp r = req(&s, "GET", "/v1/batches", NULL);
	CHECK_INT(json_array_size(jget(r.json, "batches")), 0);
	resp_free(&r);
	wait_rows(&s, "segments", 0);
	wait_rows(&s, "seg_args", 0);
	wait_rows(&s, "batches", 0);
	server_stop(&s);
}

TEST(ndjson_is_streamed_past_the_body_limit)
{
	struct server s;
	server_start(&s, "--max-body", "1K", NULL);
	char *body = lines(2000, "\n"); /* about 15 KB */
	struct resp r = post_ndjson(&s, "?task=square", body);
	free(body);
	CHECK_INT(r.status, 201);
	CHECK_INT(jint(r.json, "size"), 2000);
	resp_free(&r);
	server_stop(&s);
}

/* A line of n bytes: [1] with blanks inside up to n, for square. */
static void padded_line(struct buf *b, size_t n)
{
	buf_adds(b, "[1");
	for (size_t i = 3; i < n; i++)
		buf_addc(b, ' ');
	buf_addc(b, ']');
}

static void write_all(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t k = write(fd, p, n);
		if (k <= 0)
			FAILF("write failed");
		p += k;
		n -= (size_t)k;
	}
}

/* The 1 MiB limit is on a line's text, and "\r\n" ends a line as "\n"
 * does: a line of exactly 1 MiB was accepted with "\n" and refused (413)
 * with "\r\n", its "\r" counted as part of it. The "\r" may also end one
 * piece of the body and the "\n" start the next; chunked encoding puts
 * them there for sure (MHD hands over a chunk's end by itself). */
TEST(ndjson_a_1_mib_line_fits_with_a_crlf_ending_too)
{
	struct server s;
	server_start(&s, "--workers", "1", NULL);
	struct buf b = {0};
	padded_line(&b, 1 << 20);
	buf_adds(&b, "\r\n[2]\r\n");
	buf_addc(&b, '\0');
	struct resp r = post_ndjson(&s, "?task=square", b.data);
	if (r.status != 201)
		FAILF("a 1 MiB line with CRLF: %ld %.300s", r.status, r.body);
	CHECK_INT(jint(r.json, "size"), 2);
	resp_free(&r);
	/* A byte more is over, CRLF or not. */
	buf_reset(&b);
	padded_line(&b, (1 << 20) + 1);
	buf_adds(&b, "\r\n");
	buf_addc(&b, '\0');
	r = post_ndjson(&s, "?task=square", b.data);
	CHECK_INT(r.status, 413);
	CHECK_CONTAINS(jstr(jget(r.json, "error"), "message"), "line 1: the line is longer than 1 MiB");
	resp_free(&r);
	/* The "\r" at the end of a chunk, the "\n" at the start of the next. */
	buf_reset(&b);
	padded_line(&b, 1 << 20);
	size_t line = b.len;
	char head[512];
	int n = snprintf(head, sizeof head,
			 "POST /v1/batches?task=square HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
			 "Content-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n%zx\r\n",
			 line + 1);
	int fd = raw_connect(&s);
	write_all(fd, head, (size_t)n);
	write_all(fd, b.data, line);
	static const char rest[] = "\r\r\n6\r\n\n[2]\r\n\r\n0\r\n\r\n";
	write_all(fd, rest, sizeof rest - 1);
	char got[4096];
	size_t len = 0;
	ssize_t k;
	while (len < sizeof got - 1 && (k = read(fd, got + len, sizeof got - 1 - len)) > 0)
		len += (size_t)k;
	got[len] = '\0';
	close(fd);
	if (strncmp(got, "HTTP/1.1 201", 12))
		FAILF("chunked, the CR ending a chunk: %.400s", got);
	CHECK_CONTAINS(got, "\"size\":2");
	buf_free(&b);
	server_stop(&s);
}

/* Sends the headers of an upload and part of its body on a raw socket. */
static int start_upload(const struct server *s, int total, int lines_sent)
{
	char hdr[256];
	int n = snprintf(hdr, sizeof hdr,
			 "POST /v1/batches?task=square HTTP/1.1\r\nHost: x\r\n"
			 "Content-Type: application/x-ndjson\r\nContent-Length: %d\r\n\r\n",
			 total);
	int fd = raw_connect(s);
	if (write(fd, hdr, (size_t)n) != n)
		FAILF("write failed");
	for (int i = 0; i < lines_sent; i++) {
		char line[32];
		int k = snprintf(line, sizeof line, "[%d]\n", i);
		if (write(fd, line, (size_t)k) != k)
			FAILF("write failed");
	}
	return fd;
}

TEST(ndjson_upload_cut_short_stores_nothing)
{
	struct server s;
	server_start(&s, "--workers", "1", NULL);
	int fd = start_upload(&s, 1000000, 500);
	/* Its lines are stored as they come, a segment of 256 as soon as it
	 * is full (invisible to the API)... */
	int64_t deadline = harness_now_ms() + 10000;
	while (db_count(&s, "seg_args") < 500 / 256)
		CHECK(harness_now_ms() < deadline);
	struct resp r = req(&s, "GET", "/v1/batches", NULL);
	CHECK_INT(json_array_size(jget(r.json, "batches")), 0);
	resp_free(&r);
	r = req(&s, "GET", "/v1/batches/1", NULL);
	CHECK_INT(r.status, 404);
	resp_free(&r);
	/* Nor to the metrics (its row's counts are -1 until it is sealed). */
	CHECK_INT(server_metric(&s, "forkpool_items{state=\"pending\"}"), 0);
	CHECK_INT(server_metric(&s, "forkpool_batches{state=\"open\"}"), 0);
	CHECK_INT(server_metric(&s, "forkpool_batches{state=\"done\"}"), 0);
	/* ...and removed when the client goes away. */
	close(fd);
	wait_rows(&s, "segments", 0);
	wait_rows(&s, "seg_args", 0);
	wait_rows(&s, "batches", 0);
	/* A crash in the middle of one: the restart removes it. */
	fd = start_upload(&s, 1000000, 300);
	deadline = harness_now_ms() + 10000;
	while (db_count(&s, "seg_args") < 300 / 256)
		CHECK(harness_now_ms() < deadline);
	server_kill9(&s);
	close(fd);
	server_start(&s, "--workers", "1", NULL);
	wait_rows(&s, "segments", 0);
	wait_rows(&s, "seg_args", 0);
	wait_rows(&s, "batches", 0);
	server_stop(&s);
}

TEST(ndjson_more_items_than_max_items_is_413_and_stores_nothing)
{
	struct server s;
	server_start(&s, "--max-items", "10", NULL);
	char *body = lines(11, "\n");
	struct resp r = post_ndjson(&s, "?task=square", body);
	free(body);
	CHECK_INT(r.status, 413);
	CHECK_STR(jstr(jget(r.json, "error"), "code"), "too_many_items");
	CHECK_CONTAINS(jstr(jget(r.json, "error"), "message"), "line 11: more than 10 items");
	resp_free(&r);
	wait_rows(&s, "segments", 0);
	wait_rows(&s, "seg_args", 0);
	body = lines(10, "\n");
	r = post_ndjson(&s, "?task=square", body);
	free(body);
	CHECK_INT(r.status, 201);
	resp_free(&r);
	server_stop(&s);
}

/* NDJSON lines of plain integers skip jansson (upload.c's fast path): each
 * line below must get, as one NDJSON line, what the same arguments get in a
 * JSON body, which always goes through jansson: the same status and the
 * same result or error message. */
/* The arguments text batch's first segment holds (malloc'd). */
static char *stored_args(const struct server *s, json_int_t batch)
{
	sqlite3 *db;
	if (sqlite3_open_v2(s->db, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK)
		FAILF("open %s", s->db);
	sqlite3_busy_timeout(db, 5000);
	sqlite3_stmt *st;
	if (sqlite3_prepare_v2(db, "SELECT args FROM seg_args WHERE batch_id = ?1 AND seg = 0", -1, &st,
			       NULL) != SQLITE_OK)
		FAILF("seg_args: %s", sqlite3_errmsg(db));
	sqlite3_bind_int64(st, 1, batch);
	char *text = strdup(sqlite3_step(st) == SQLITE_ROW ? (const char *)sqlite3_column_text(st, 0) : "");
	sqlite3_finalize(st);
	sqlite3_close(db);
	return text;
}

TEST(ndjson_integer_lines_are_decided_as_json_bodies_decide_them)
{
	struct server s;
	server_start(&s, "--workers", "1", NULL);
	static const struct {
		const char *task, *line;
	} cases[] = {
	    {"square", "[7]"},
	    {"square", " [ -12 ]\t"},
	    {"square", "[0]"},
	    {"square", "[-0]"},
	    {"square", "[01]"},
	    {"square", "[1.5]"},
	    {"square", "[2e3]"},
	    {"square", "[999999999999999999]"},
	    {"square", "[1000000000000000000]"},
	    {"square", "[9223372036854775807]"},
	    {"square", "[9223372036854775808]"},
	    {"square", "[-9223372036854775808]"},
	    {"square", "[]"},
	    {"square", "[1,2]"},
	    {"square", "[1,]"},
	    {"square", "[,1]"},
	    {"square", "[1 2]"},
	    {"square", "[-]"},
	    {"square", "[1]]"},
	    {"power", "[3, 4]"},
	    {"power", "[3,-4]"},
	    {"power", "[-3,3]"},
	    {"count_primes", "[10,100]"},
	    {"sum_squares", "[-1]"},
	    {"monte_carlo_pi", "[1000, 5]"}, /* seeded: the same result */
	    {"monte_carlo_pi", "[1000, -7]"},
	    {"monte_carlo_pi", "[1,2,3,4,5,6,7,8,9]"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		char q[64], body[256];
		snprintf(q, sizeof q, "?task=%s&wait=20", cases[i].task);
		snprintf(body, sizeof body, "{\"task\":\"%s\",\"items\":[%s]}", cases[i].task, cases[i].line);
		struct resp nd = post_ndjson(&s, q, cases[i].line);
		char path[64];
		snprintf(path, sizeof path, "/v1/batches?wait=20");
		struct resp js = req(&s, "POST", path, body);
		if (nd.status != js.status)
			FAILF("%s %s: NDJSON got %ld, JSON %ld", cases[i].task, cases[i].line, (long)nd.status,
			      (long)js.status);
		if (nd.status == 201) {
			/* raw text: results may pass 64 bits, which jansson cannot read */
			const char *ta = strstr(nd.body, "\"results\":[{"), *tb = strstr(js.body, "\"results\":[{");
			const char *ea = ta ? strstr(ta, ",\"attempts\"") : NULL;
			const char *eb = tb ? strstr(tb, ",\"attempts\"") : NULL;
			if (!ea || !eb || ea - ta != eb - tb || memcmp(ta, tb, (size_t)(ea - ta)))
				FAILF("%s %s: NDJSON answered %s, JSON %s", cases[i].task, cases[i].line, nd.body,
				      js.body);
			/* and the arguments are stored as the same text */
			char *aa = stored_args(&s, atoll(strstr(nd.body, "\"id\":") + 5));
			char *ab = stored_args(&s, atoll(strstr(js.body, "\"id\":") + 5));
			if (strcmp(aa, ab))
				FAILF("%s %s: NDJSON stored %s, JSON %s", cases[i].task, cases[i].line, aa, ab);
			free(aa);
			free(ab);
		} else if (!nd.json || !js.json) {
			FAILF("%s %s: no JSON answer (%ld, %ld)", cases[i].task, cases[i].line, (long)nd.status,
			      (long)js.status);
		} else if (nd.status == 400) {
			/* the JSON body's message names items[0]; the line's, line 1 */
			const char *ma = jstr(jget(nd.json, "error"), "message");
			const char *mb = jstr(jget(js.json, "error"), "message");
			const char *ca = jstr(jget(nd.json, "error"), "code");
			const char *cb = jstr(jget(js.json, "error"), "code");
			if (!ma || !mb || !ca || !cb || strcmp(ca, cb))
				FAILF("%s %s: NDJSON error %s, JSON %s", cases[i].task, cases[i].line,
				      ca ? ca : "?", cb ? cb : "?");
			/* a refusal by the task reads the same after where it was */
			const char *ra = strstr(ma, cases[i].task), *rb = strstr(mb, cases[i].task);
			if ((ra || rb) && (!ra || !rb || strcmp(ra, rb)))
				FAILF("%s %s: NDJSON says \"%s\", JSON \"%s\"", cases[i].task, cases[i].line, ma,
				      mb);
		}
		resp_free(&nd);
		resp_free(&js);
	}
	server_stop(&s);
}
