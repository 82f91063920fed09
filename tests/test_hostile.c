/* test_hostile.c - hostile input against the real server: bad bytes, bad
 * JSON, bad fields, bodies and batches over the limits, odd paths and
 * methods, oversized headers, idle and slow connections by the thousand.
 * Each must get a clear 4xx JSON error (or, below the HTTP layer, a closed
 * connection), store nothing, and leave the server answering everyone else.
 * Also: the fuzzer's kept inputs (fuzz/regressions) through the validator. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "catalog.h"
#include "client.h"
#include "harness.h"
#include "request.h"

/* ---- raw HTTP: bytes exactly as given ---- */

static int hconnect(const struct server *s)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)s->port)};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0)
		FAILF("connect to port %d: %s", s->port, strerror(errno));
	return fd;
}

/* Writes what it can (the server may answer and close before taking it all). */
static void hsend(int fd, const void *p, size_t n)
{
	const char *c = p;
	while (n) {
		ssize_t k = send(fd, c, n, MSG_NOSIGNAL);
		if (k <= 0)
			return;
		c += k;
		n -= (size_t)k;
	}
}

struct answer {
	int status; /* 0: the connection ended without one */
	char *text; /* status line, headers, body */
	json_t *json; /* the body, if it is JSON */
};

/* Reads until the server closes (every request here says Connection:
 * close) or ms pass. */
static struct answer hread(int fd, int ms)
{
	struct buf b = {0};
	int64_t deadline = harness_now_ms() + ms;
	for (;;) {
		int64_t left = deadline - harness_now_ms();
		if (left <= 0)
			FAILF("no end of the answer within %d ms: %.300s", ms, b.len ? b.data : "");
		struct pollfd p = {.fd = fd, .events = POLLIN};
		if (poll(&p, 1, (int)left) <= 0)
			continue;
		char tmp[65536];
		ssize_t k = recv(fd, tmp, sizeof tmp, 0);
		if (k <= 0)
			break;
		buf_add(&b, tmp, (size_t)k);
	}
	close(fd);
	buf_addc(&b, '\0');
	struct answer a = {0};
	size_t len;
	a.text = buf_steal(&b, &len);
	sscanf(a.text, "HTTP/%*s %d", &a.status);
	char *body = strstr(a.text, "\r\n\r\n");
	if (body)
		a.json = json_loads(body + 4, JSON_DECODE_ANY, NULL);
	return a;
}

static void answer_free(struct answer *a)
{
	free(a->text);
	json_decref(a->json);
}

/* One request of raw bytes: head (without the blank line) and a body. */
static struct answer hrequest(const struct server *s, const char *head, const char *body, size_t blen)
{
	int fd = hconnect(s);
	struct buf h = {0};
	buf_adds(&h, head);
	buf_adds(&h, "\r\nHost: x\r\nConnection: close\r\n");
	if (body)
		buf_printf(&h, "Content-Type: application/json\r\nContent-Length: %zu\r\n", blen);
	buf_adds(&h, "\r\n");
	hsend(fd, h.data, h.len);
	buf_free(&h);
	if (body)
		hsend(fd, body, blen);
	return hread(fd, 10000);
}

static void expect(struct answer *a, int status, const char *code, const char *msg, const char *what)
{
	if (a->status != status)
		FAILF("%s: status %d, expected %d: %.500s", what, a->status, status, a->text);
	if (!code) {
		answer_free(a);
		return;
	}
	json_t *e = a->json ? json_object_get(a->json, "error") : NULL;
	if (!e)
		FAILF("%s: not a JSON error: %.500s", what, a->text);
	CHECK_STR(json_string_value(json_object_get(e, "code")), code);
	const char *m = json_string_value(json_object_get(e, "message"));
	if (msg && (!m || !strstr(m, msg)))
		FAILF("%s: message \"%s\" lacks \"%s\"", what, m ? m : "(none)", msg);
	answer_free(a);
}

static json_int_t batches_stored(const struct server *s)
{
	struct resp r = req(s, "GET", "/v1/batches?limit=1000", NULL);
	json_int_t n = (json_int_t)json_array_size(jget(r.json, "batches"));
	resp_free(&r);
	return n;
}

/* The server still does its job. */
static void still_serving(const struct server *s)
{
	int64_t id = submit(s, "{\"task\":\"square\",\"items\":[[12]]}");
	json_t *res = (json_decref(wait_batch(s, id, 30)), results(s, id));
	CHECK_INT(jint(json_array_get(res, 0), "result"), 144);
	json_decref(res);
}

static char *repeat(const char *pre, const char *unit, int n, const char *post)
{
	struct buf b = {0};
	buf_adds(&b, pre);
	for (int i = 0; i < n; i++)
		buf_adds(&b, unit);
	buf_adds(&b, post);
	size_t len;
	return buf_steal(&b, &len);
}

/* ---- bodies ---- */

TEST(hostile_bad_bodies_get_a_4xx_json_error_naming_the_problem_and_store_nothing)
{
	struct server s;
	server_start(&s, "--workers", "1", NULL);
	static const struct {
		const char *body;
		size_t len; /* 0: strlen */
		const char *code, *msg;
	} cases[] = {
	    {"{\"task\":", 0, "invalid_json", "not valid JSON"},
	    {"{\"task\":\"square\",\"items\":[[1]]", 0, "invalid_json", NULL},
	    {"", 0, "invalid_json", NULL},
	    {"   \n ", 0, "invalid_json", NULL},
	    {"[]", 0, "invalid_request", "JSON object"},
	    {"\"square\"", 0, "invalid_json", NULL},
	    {"42", 0, "invalid_json", NULL},
	    {"null", 0, "invalid_json", NULL},
	    {"{\"task\":\"sq\xc3\x28re\",\"items\":[[1]]}", 0, "invalid_json", "decode byte 0xc3"},
	    {"{\"task\":\"square\",\"items\":[[\"\xc0\xaf\"]]}", 0, "invalid_json", "decode byte"},
	    {"{\"task\":\"square\",\"items\":[[\"\xed\xa0\x80\"]]}", 0, "invalid_json", NULL},
	    /* Valid JSON, but past what an argument can hold. */
	    {"{\"task\":\"square\",\"items\":[[1e999]]}", 0, "invalid_request", "out of range (real number overflow"},
	    {"{\"task\":\"square\",\"items\":[[-1e999]]}", 0, "invalid_request", "out of range"},
	    {"{\"task\":\"square\",\"items\":[[123456789012345678901234567890]]}", 0, "invalid_request", "must fit in 64 bits"},
	    {"{\"task\":\"square\",\"items\":[[18446744073709551615]]}", 0, "invalid_request", "must fit in 64 bits"},
	    {"{\"task\":\"echo\",\"items\":[[\"a\\u0000b\"]]}", 0, "invalid_json", NULL},
	    {"{\"task\":\"square\"\0,\"items\":[[1]]}", 31, "invalid_json", NULL},
	    {"{\"task\":\"squ\0are\",\"items\":[[1]]}", 32, "invalid_json", NULL},
	    {"{\"task\":\"square\",\"items\":[[1]]}\0", 32, "invalid_json", NULL},
	    {"{\"task\":\"square\",\"items\":[[1]]} {}", 0, "invalid_json", NULL},
	    {"{\"task\":\"square\",\"task\":\"echo\",\"items\":[[1]]}", 0, "invalid_json", "duplicate"},
	    {"{\"task\":null,\"items\":[[1]]}", 0, "invalid_request", "task: must be a string"},
	    {"{\"task\":[],\"items\":[[1]]}", 0, "invalid_request", "task: must be a string"},
	    {"{\"task\":\"\",\"items\":[[1]]}", 0, "invalid_request", "no task"},
	    {"{\"task\":\"square\"}", 0, "invalid_request", "items: is required"},
	    {"{\"task\":\"square\",\"items\":[]}", 0, "invalid_request", "items: must not be empty"},
	    {"{\"task\":\"square\",\"items\":\"[[1]]\"}", 0, "invalid_request", "items: must be an array"},
	    {"{\"task\":\"square\",\"items\":[1]}", 0, "invalid_request", "items[0]"},
	    {"{\"task\":\"square\",\"items\":[[1],{}]}", 0, "invalid_request", "items[1]"},
	    {"{\"task\":\"square\",\"items\":[[1],null]}", 0, "invalid_request", "items[1]"},
	    {"{\"task\":\"square\",\"items\":[[]]}", 0, "invalid_request",
	     "items[0]: square takes 1 argument, got 0"},
	    {"{\"task\":\"power\",\"items\":[[2,3,4]]}", 0, "invalid_request", "items[0]: power takes 2"},
	    {"{\"task\":\"power\",\"items\":[[2,-1]]}", 0, "invalid_request", "items[0]"},
	    {"{\"task\":\"square\",\"items\":[[1]],\"chunksize\":0}", 0, "invalid_request", "chunksize"},
	    {"{\"task\":\"square\",\"items\":[[1]],\"chunksize\":-5}", 0, "invalid_request", "chunksize"},
	    {"{\"task\":\"square\",\"items\":[[1]],\"chunksize\":1.5}", 0, "invalid_request", "chunksize"},
	    {"{\"task\":\"square\",\"items\":[[1]],\"chunksize\":\"2\"}", 0, "invalid_request", "chunksize"},
	    {"{\"task\":\"square\",\"items\":[[1]],\"chunksize\":true}", 0, "invalid_request", "chunksize"},
	    {"{\"task\":\"square\",\"items\":[[1]],\"chunksize\":1e10}", 0, "invalid_request", "chunksize"},
	    {"{\"task\":\"square\",\"items\":[[1]],\"timeout\":0}", 0, "invalid_request", "timeout"},
	    {"{\"task\":\"square\",\"items\":[[1]],\"timeout\":-1}", 0, "invalid_request", "timeout"},
	    {"{\"task\":\"square\",\"items\":[[1]],\"timeout\":1e-9}", 0, "invalid_request", "timeout: must be a number of seconds from 0.001"},
	    {"{\"task\":\"square\",\"items\":[[1]],\"timeout\":\"1\"}", 0, "invalid_request", "timeout"},
	    {"{\"task\":\"square\",\"items\":[[1]],\"timeout\":false}", 0, "invalid_request", "timeout"},
	    {"{\"task\":\"square\",\"items\":[[1]],\"timeout\":1e300}", 0, "invalid_request", "timeout"},
	    {"{\"task\":\"square\",\"items\":[[1]],\"timeout\":[1]}", 0, "invalid_request", "timeout"},
	    {"{\"task\":\"square\",\"items\":[[1]],\"retries\":-1}", 0, "invalid_request", "retries"},
	    {"{\"task\":\"square\",\"items\":[[1]],\"retries\":\"1\"}", 0, "invalid_request", "retries"},
	    {"{\"task\":\"square\",\"items\":[[1]],\"retries\":1.5}", 0, "invalid_request", "retries"},
	    {"{\"task\":\"square\",\"items\":[[1]],\"retries\":101}", 0, "invalid_request", "retries"},
	    {"{\"task\":\"square\",\"items\":[[1]],\"retries\":true}", 0, "invalid_request", "retries"},
	    {"{\"task\":\"square\",\"items\":[[1]],\"chunksize\":false}", 0, "invalid_request", "chunksize"},
	    {"{\"task\":\"square\",\"items\":[[1]],\"chunk_size\":2}", 0, "invalid_request",
	     "unknown field \"chunk_size\""},
	    {"{\"task\":\"square\",\"items\":[[1]],\"\":2}", 0, "invalid_request", "unknown field"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		size_t len = cases[i].len ? cases[i].len : strlen(cases[i].body);
		struct answer a = hrequest(&s, "POST /v1/batches HTTP/1.1", cases[i].body, len);
		char what[64];
		snprintf(what, sizeof what, "case %zu", i);
		expect(&a, 400, cases[i].code, cases[i].msg, what);
	}
	/* Nesting 100,000 deep, a megabyte-long task name, a megabyte-long key. */
	char *deep = repeat("{\"task\":\"echo\",\"items\":[", "[", 100000, "]}");
	struct answer a = hrequest(&s, "POST /v1/batches HTTP/1.1", deep, strlen(deep));
	expect(&a, 400, "invalid_json", "depth", "100,000 deep");
	free(deep);
	char *name = repeat("{\"task\":\"", "x", 1 << 20, "\",\"items\":[[1]]}");
	a = hrequest(&s, "POST /v1/batches HTTP/1.1", name, strlen(name));
	expect(&a, 400, "invalid_request", "no task", "a long task name");
	CHECK(strlen(name) > 1 << 20);
	free(name);
	char *key = repeat("{\"task\":\"square\",\"items\":[[1]],\"", "k", 1 << 20, "\":1}");
	a = hrequest(&s, "POST /v1/batches HTTP/1.1", key, strlen(key));
	expect(&a, 400, "invalid_request", "unknown field", "a long key");
	free(key);
	CHECK_INT(batches_stored(&s), 0);
	still_serving(&s);
	server_stop(&s);
}

/* A misspelt query parameter would otherwise be ignored: ?wiat=5 answers at
 * once, ?chunk_size=2 submits with the default chunk size. Every route
 * names the parameters it takes instead, and nothing is stored; those that
 * take none (/healthz and /metrics too) refuse any. */
/* ---- query parameters ---- */

static const char *const ND_BODY[] = {"Content-Type: application/x-ndjson", NULL};

/* A request the query tests expect refused, and the parameter it names. */
struct qcase {
	const char *method, *path, *body, *param;
	const char *const *headers;
};

/* A server holding one done batch, 1 (square of 2), for the refusals to
 * leave untouched. */
static void start_with_one_batch(struct server *s)
{
	server_start(s, "--workers", "1", NULL);
	json_decref(wait_batch(s, submit(s, "{\"task\":\"square\",\"items\":[[2]]}"), 30));
}

/* Each case is a 400 invalid_request whose message holds want (a format for
 * the case's parameter). */
static void expect_refused(const struct server *s, const struct qcase *c, size_t n, const char *want)
{
	for (size_t i = 0; i < n; i++) {
		struct resp r = reqh(s, c[i].method, c[i].path, c[i].body, c[i].headers);
		if (r.status != 400 || !r.json)
			FAILF("%s %s: status %ld: %.300s", c[i].method, c[i].path, (long)r.status, r.body);
		CHECK_STR(jstr(jget(r.json, "error"), "code"), "invalid_request");
		char msg[128];
		snprintf(msg, sizeof msg, want, c[i].param);
		CHECK_CONTAINS(jstr(jget(r.json, "error"), "message"), msg);
		resp_free(&r);
	}
}

/* Nothing was stored, cancelled or purged. */
static void batch_1_untouched(const struct server *s)
{
	CHECK_INT(batches_stored(s), 1);
	struct resp r = req(s, "GET", "/v1/batches/1/results", NULL);
	CHECK_INT(r.status, 200);
	CHECK_CONTAINS(r.body, "\"result\":4");
	resp_free(&r);
}

TEST(hostile_unknown_query_parameters_are_400_naming_the_parameter)
{
	struct server s;
	start_with_one_batch(&s);
	static const struct qcase cases[] = {
	    {"POST", "/v1/batches?chunk_size=2", "{\"task\":\"square\",\"items\":[[1]]}", "chunk_size", NULL},
	    {"POST", "/v1/batches?task=square", "{\"task\":\"square\",\"items\":[[1]]}", "task", NULL},
	    {"POST", "/v1/batches?task=square&retry=3", "[1]\n", "retry", ND_BODY},
	    {"POST", "/v1/batches?task=square&wiat=5", "[1]\n", "wiat", ND_BODY},
	    {"GET", "/v1/batches?limt=5", NULL, "limt", NULL},
	    {"GET", "/v1/batches/1?wiat=5", NULL, "wiat", NULL},
	    {"DELETE", "/v1/batches/1?purge=true&force=1", NULL, "force", NULL},
	    {"GET", "/v1/batches/1/results?ordr=completed", NULL, "ordr", NULL},
	    {"GET", "/v1/batches/1/futures/0?x", NULL, "x", NULL},
	    {"POST", "/v1/batches/1/futures/0/cancel?terminate=true", NULL, "terminate", NULL},
	    {"GET", "/v1/tasks?x", NULL, "x", NULL},
	    {"GET", "/v1/workers?x=1", NULL, "x", NULL},
	    {"GET", "/healthz?x=1", NULL, "x", NULL},
	    {"GET", "/metrics?x=1", NULL, "x", NULL},
	};
	expect_refused(&s, cases, sizeof cases / sizeof *cases, "unknown query parameter \"%s\"");
	batch_1_untouched(&s);
	/* What Docker's HEALTHCHECK and a Prometheus scrape ask (docker/,
	 * README): no query at all. */
	static const char *const plain[] = {"/healthz", "/metrics"};
	for (size_t i = 0; i < sizeof plain / sizeof *plain; i++) {
		struct resp r = req(&s, "GET", plain[i], NULL);
		CHECK_INT(r.status, 200);
		resp_free(&r);
	}
	server_stop(&s);
}

/* ?chunksize alone, without "=", was taken as absent: the batch went in with
 * the default chunk size while ?chunksize= was a 400. A parameter without a
 * value is an empty one: the same 400, the same message, nothing done. */
TEST(hostile_query_parameters_without_a_value_are_refused_as_empty_ones)
{
	struct server s;
	start_with_one_batch(&s);
	static const struct {
		const char *method, *path, *body;
		const char *const *headers;
	} cases[] = {
	    {"POST", "/v1/batches?task=square&chunksize", "[1]\n", ND_BODY},
	    {"POST", "/v1/batches?task", "[1]\n", ND_BODY},
	    {"POST", "/v1/batches?task=square&timeout", "[1]\n", ND_BODY},
	    {"POST", "/v1/batches?task=square&retries", "[1]\n", ND_BODY},
	    {"POST", "/v1/batches?task=square&wait", "[1]\n", ND_BODY},
	    {"POST", "/v1/batches?wait", "{\"task\":\"square\",\"items\":[[1]]}", NULL},
	    {"GET", "/v1/batches?limit", NULL, NULL},
	    {"GET", "/v1/batches/1?wait", NULL, NULL},
	    {"GET", "/v1/batches/1?until", NULL, NULL},
	    {"DELETE", "/v1/batches/1?purge", NULL, NULL},
	    {"DELETE", "/v1/batches/1?terminate", NULL, NULL},
	    {"GET", "/v1/batches/1/results?order", NULL, NULL},
	    {"GET", "/v1/batches/1/futures/0?wait", NULL, NULL},
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		char empty[256];
		snprintf(empty, sizeof empty, "%s=", cases[i].path);
		struct resp r = reqh(&s, cases[i].method, cases[i].path, cases[i].body, cases[i].headers);
		struct resp e = reqh(&s, cases[i].method, empty, cases[i].body, cases[i].headers);
		if (r.status != 400 || !r.json)
			FAILF("%s %s: status %ld: %.300s", cases[i].method, cases[i].path, (long)r.status, r.body);
		CHECK_INT(e.status, 400);
		CHECK_STR(jstr(jget(r.json, "error"), "code"), "invalid_request");
		CHECK_STR(jstr(jget(r.json, "error"), "message"), jstr(jget(e.json, "error"), "message"));
		resp_free(&r);
		resp_free(&e);
	}
	batch_1_untouched(&s);
	server_stop(&s);
}

/* ?task=square&task=echo ran square: the first of a repeated parameter won
 * and the rest were dropped unseen. Which one the client meant is not for
 * the server to guess: a repeat is a 400 naming the parameter. */
TEST(hostile_a_query_parameter_given_twice_is_refused_naming_it)
{
	struct server s;
	start_with_one_batch(&s);
	static const struct qcase cases[] = {
	    {"POST", "/v1/batches?task=square&task=echo", "[1]\n", "task", ND_BODY},
	    {"POST", "/v1/batches?task=square&chunksize=1&chunksize=2", "[1]\n", "chunksize", ND_BODY},
	    {"POST", "/v1/batches?wait=1&wait=2", "{\"task\":\"square\",\"items\":[[1]]}", "wait", NULL},
	    {"GET", "/v1/batches?limit=1&after=5&limit=2", NULL, "limit", NULL},
	    {"GET", "/v1/batches/1?wait&wait", NULL, "wait", NULL},
	    {"DELETE", "/v1/batches/1?purge=true&purge=false", NULL, "purge", NULL},
	    {"GET", "/v1/batches/1/results?order=completed&order=submitted", NULL, "order", NULL},
	    {"GET", "/v1/batches/1/futures/0?wait=0&wait=5", NULL, "wait", NULL},
	};
	expect_refused(&s, cases, sizeof cases / sizeof *cases, "query parameter \"%s\" is given more than once");
	batch_1_untouched(&s);
	server_stop(&s);
}

/* %00 decodes to a NUL byte, and a C string ends there: chunksize=1%00 was
 * read as 1, purge=true%00 purged, wait%00x=1 passed as wait. A NUL in a
 * parameter's name or value is a 400 naming it, and nothing is done. */
TEST(hostile_a_nul_byte_in_a_query_parameter_is_refused)
{
	struct server s;
	start_with_one_batch(&s);
	static const struct qcase cases[] = {
	    {"POST", "/v1/batches?task=square&chunksize=1%00", "[1]\n", "chunksize", ND_BODY},
	    {"POST", "/v1/batches?task=square%00x", "[1]\n", "task", ND_BODY},
	    {"POST", "/v1/batches?wait=1%002", "{\"task\":\"square\",\"items\":[[1]]}", "wait", NULL},
	    {"GET", "/v1/batches/1?wait%00x=1", NULL, "wait", NULL},
	    {"DELETE", "/v1/batches/1?purge=true%00", NULL, "purge", NULL},
	    {"GET", "/v1/batches/1/results?order=completed%00", NULL, "order", NULL},
	};
	expect_refused(&s, cases, sizeof cases / sizeof *cases, "query parameter \"%s\" holds a NUL byte");
	batch_1_untouched(&s);
	server_stop(&s);
}

/* Numbers in the query were read with strtod and strtoll, which also take
 * hex (timeout=0x10 was 16 s), inf and nan, and skip leading blanks. Only
 * decimal numbers are taken now. */
TEST(hostile_query_numbers_are_decimal_only)
{
	struct server s;
	start_with_one_batch(&s);
	static const char *const nds[] = {"Accept: application/x-ndjson", NULL};
	static const char *const sse[] = {"Accept: text/event-stream", NULL};
	static const struct qcase cases[] = {
	    {"POST", "/v1/batches?task=square&timeout=0x10", "[1]\n", "timeout", ND_BODY},
	    {"POST", "/v1/batches?task=square&wait=0x1p-2", "[1]\n", "wait", ND_BODY},
	    {"POST", "/v1/batches?task=square&timeout=%201", "[1]\n", "timeout", ND_BODY},
	    {"POST", "/v1/batches?task=square&chunksize=%201", "[1]\n", "chunksize", ND_BODY},
	    {"POST", "/v1/batches?wait=0x10", "{\"task\":\"square\",\"items\":[[1]]}", "wait", NULL},
	    {"GET", "/v1/batches/1?wait=0X1", NULL, "wait", NULL},
	    {"GET", "/v1/batches/1?wait=infinity", NULL, "wait", NULL},
	    {"GET", "/v1/batches/1/futures/0?wait=0x0", NULL, "wait", NULL},
	    {"GET", "/v1/batches/1/results?timeout=0x1", NULL, "timeout", nds},
	    {"GET", "/v1/batches/1/results?heartbeat=0x1", NULL, "heartbeat", sse},
	    {"GET", "/v1/batches?limit=%205", NULL, "limit", NULL},
	};
	expect_refused(&s, cases, sizeof cases / sizeof *cases, "query parameter %s must be");
	CHECK_INT(batches_stored(&s), 1);
	/* Decimal numbers, with a fraction or an exponent, still do. */
	struct resp r = reqh(&s, "POST", "/v1/batches?task=square&timeout=1e-3&wait=0.5&chunksize=1", "[3]\n", ND_BODY);
	CHECK_INT(r.status, 201);
	CHECK(json_real_value(jget(r.json, "timeout")) == 1e-3);
	resp_free(&r);
	r = req(&s, "GET", "/v1/batches/1?wait=.5", NULL);
	CHECK_INT(r.status, 200);
	resp_free(&r);
	server_stop(&s);
}

TEST(hostile_bodies_over_max_body_are_413_announced_or_chunked)
{
	struct server s;
	server_start(&s, "--workers", "1", "--max-body", "1K", NULL);
	/* Announced: refused before a byte of it is read. */
	int fd = hconnect(&s);
	const char *head = "POST /v1/batches HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
			   "Content-Type: application/json\r\nContent-Length: 5000000000\r\n\r\n";
	hsend(fd, head, strlen(head));
	struct answer a = hread(fd, 5000);
	expect(&a, 413, "payload_too_large", "--max-body", "announced");
	/* Chunked: refused once it passes the limit. */
	fd = hconnect(&s);
	head = "POST /v1/batches HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
	       "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
	hsend(fd, head, strlen(head));
	char chunk[600];
	memset(chunk, ' ', sizeof chunk);
	for (int i = 0; i < 4; i++) {
		hsend(fd, "258\r\n", 5); /* 0x258 = 600 */
		hsend(fd, chunk, sizeof chunk);
		hsend(fd, "\r\n", 2);
	}
	hsend(fd, "0\r\n\r\n", 5);
	a = hread(fd, 5000);
	expect(&a, 413, "payload_too_large", NULL, "chunked");
	/* A small chunked body is fine. */
	fd = hconnect(&s);
	hsend(fd, head, strlen(head));
	const char *body = "{\"task\":\"square\",\"items\":[[3]]}";
	char line[32];
	snprintf(line, sizeof line, "%zx\r\n", strlen(body));
	hsend(fd, line, strlen(line));
	hsend(fd, body, strlen(body));
	hsend(fd, "\r\n0\r\n\r\n", 7);
	a = hread(fd, 5000);
	expect(&a, 201, NULL, NULL, "small chunked");
	CHECK_INT(batches_stored(&s), 1);
	still_serving(&s);
	server_stop(&s);
}

TEST(hostile_more_items_than_max_items_is_413)
{
	struct server s;
	server_start(&s, "--workers", "1", "--max-items", "10", NULL);
	char *eleven = repeat("{\"task\":\"square\",\"items\":[[0]", ",[1]", 10, "]}");
	struct answer a = hrequest(&s, "POST /v1/batches HTTP/1.1", eleven, strlen(eleven));
	expect(&a, 413, "too_many_items", "--max-items", "11 items");
	free(eleven);
	CHECK_INT(batches_stored(&s), 0);
	char *ten = repeat("{\"task\":\"square\",\"items\":[[0]", ",[1]", 9, "]}");
	json_decref(wait_batch(&s, submit(&s, ten), 30));
	free(ten);
	server_stop(&s);
}

/* ---- paths, methods, headers ---- */

TEST(hostile_odd_paths_are_404_or_400_and_wrong_methods_405_with_allow)
{
	struct server s;
	server_start(&s, "--workers", "1", NULL);
	int64_t id = submit(&s, "{\"task\":\"square\",\"items\":[[2]]}");
	CHECK_INT(id, 1);
	static const struct {
		const char *head;
		int status;
		const char *code;
	} cases[] = {
	    {"GET /v1/batches/../tasks HTTP/1.1", 404, "not_found"},
	    {"GET /v1/batches/1/../../tasks HTTP/1.1", 404, "not_found"},
	    {"GET /v1/../v1/tasks HTTP/1.1", 404, "not_found"},
	    {"GET /v1/batches/99999999999999999999999999999 HTTP/1.1", 404, "not_found"},
	    {"GET /v1/batches/-1 HTTP/1.1", 404, "not_found"},
	    {"GET /v1/batches/0x1 HTTP/1.1", 404, "not_found"},
	    {"GET /v1/batches/1/futures/99999999999999999999 HTTP/1.1", 404, "not_found"},
	    {"GET /v1/batches/1/futures/ HTTP/1.1", 404, "not_found"},
	    {"GET /v1/batches/%zz HTTP/1.1", 404, "not_found"},
	    {"GET /v1/batches/%00 HTTP/1.1", 404, "not_found"},
	    {"GET /v1/batches/1%2F..%2Ftasks HTTP/1.1", 404, "not_found"},
	    {"GET //v1//batches HTTP/1.1", 404, "not_found"},
	    {"GET /v1/batches/1?wait=%zz HTTP/1.1", 400, "invalid_request"},
	    {"GET /v1/batches/1?wait=1e999 HTTP/1.1", 400, "invalid_request"},
	    {"GET /v1/batches/1?wait=nan HTTP/1.1", 400, "invalid_request"},
	    {"GET /v1/batches/1/results?limit=-1 HTTP/1.1", 400, "invalid_request"},
	    {"GET /v1/batches/1/results?after=99999999999999999999999 HTTP/1.1", 400, "invalid_request"},
	    {"GET /v1/batches?limit=0 HTTP/1.1", 400, "invalid_request"},
	    {"DELETE /v1/tasks HTTP/1.1", 405, "method_not_allowed"},
	    {"PATCH /v1/batches HTTP/1.1", 405, "method_not_allowed"},
	    {"BREW /v1/batches HTTP/1.1", 405, "method_not_allowed"},
	    {"PUT /healthz HTTP/1.1", 405, "method_not_allowed"},
	    {"POST /v1/batches/1/results HTTP/1.1", 405, "method_not_allowed"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		struct answer a = hrequest(&s, cases[i].head, NULL, 0);
		if (cases[i].status == 405 && !strstr(a.text, "\r\nAllow: "))
			FAILF("%s: no Allow header: %.300s", cases[i].head, a.text);
		expect(&a, cases[i].status, cases[i].code, NULL, cases[i].head);
	}
	CHECK_INT(batches_stored(&s), 1);
	still_serving(&s);
	server_stop(&s);
}

/* A path is routed as it was sent: libmicrohttpd's percent-decoding would
 * make /v1/batches/1%00 batch 1 and %2f a '/'. No API path holds a '%', so
 * each of these is a 404 that quotes it, and does nothing. Queries are
 * decoded as ever. */
TEST(hostile_percent_encoded_paths_are_404_not_decoded)
{
	struct server s;
	server_start(&s, "--workers", "1", NULL);
	int64_t id = submit(&s, "{\"task\":\"sleep\",\"chunksize\":1,\"items\":[[30],[30]]}");
	CHECK_INT(id, 1);
	static const struct {
		const char *head, *msg;
	} cases[] = {
	    {"GET /v1/batches/1%00 HTTP/1.1", "\"1%00\""},
	    {"GET /v1/batches/%31 HTTP/1.1", "\"%31\""},
	    {"GET /v1/batches/1%2fresults HTTP/1.1", "\"1%2fresults\""},
	    {"GET /v1/batches/1%2Fresults?order=completed HTTP/1.1", "\"1%2Fresults\""},
	    {"GET /v1/tasks%00garbage HTTP/1.1", "GET /v1/tasks%00garbage"},
	    {"GET /v1/%74asks HTTP/1.1", "GET /v1/%74asks"},
	    {"GET /healthz%00x HTTP/1.1", "GET /healthz%00x"},
	    {"GET /metrics%00 HTTP/1.1", "GET /metrics%00"},
	    {"GET /v1/batches/1/futures/0%00 HTTP/1.1", "\"0%00\""},
	    {"POST /v1/batches/1/futures/1%2fcancel HTTP/1.1", "\"1%2fcancel\""},
	    {"DELETE /v1/batches/%31 HTTP/1.1", "\"%31\""},
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		struct answer a = hrequest(&s, cases[i].head, NULL, 0);
		expect(&a, 404, "not_found", cases[i].msg, cases[i].head);
	}
	/* Neither the future nor the batch was cancelled. */
	struct resp r = req(&s, "GET", "/v1/batches/1/futures/1", NULL);
	CHECK_INT(r.status, 200);
	CHECK_STR(jstr(r.json, "state"), "pending");
	resp_free(&r);
	r = req(&s, "GET", "/v1/batches/1", NULL);
	CHECK_INT(jint(jget(r.json, "counts"), "cancelled"), 0);
	resp_free(&r);
	/* Query keys and values are still percent-decoded. */
	r = req(&s, "GET", "/v1/batches/1?w%61it=%30", NULL);
	CHECK_INT(r.status, 200);
	resp_free(&r);
	r = reqh(&s, "POST", "/v1/batches?task=sq%75are", "[3]\n", ND_BODY);
	if (r.status != 201)
		FAILF("POST ?task=sq%%75are: status %ld: %.300s", r.status, r.body);
	CHECK_STR(jstr(r.json, "task"), "square");
	resp_free(&r);
	server_stop(&s);
}

/* Error messages quote what the client sent (a path segment, a query key or
 * value, a header), which may be any bytes: the body must still be UTF-8,
 * with each ill-formed sequence written as U+FFFD and good ones kept. */
TEST(hostile_invalid_utf8_in_the_url_or_headers_gives_a_utf8_json_error)
{
	struct server s;
	server_start(&s, "--workers", "1", NULL);
	int64_t id = submit(&s, "{\"task\":\"square\",\"items\":[[2]]}");
	CHECK_INT(id, 1);
	static const char FFFD[] = "\xef\xbf\xbd";
	static const struct {
		const char *head;
		int status;
		const char *code, *msg;
	} cases[] = {
	    {"GET /v1/batches/%ff HTTP/1.1", 404, "not_found", NULL},
	    {"GET /v1/batches/\xff HTTP/1.1", 404, "not_found", FFFD},
	    {"GET /v1/nope\xff HTTP/1.1", 404, "not_found", FFFD},
	    {"GET /v1/batches/1/futures/\xff HTTP/1.1", 404, "not_found", FFFD},
	    {"GET /v1/batches/1?%ff=1 HTTP/1.1", 400, "invalid_request", FFFD},
	    {"GET /v1/batches/1?wait=%ff HTTP/1.1", 400, "invalid_request", FFFD},
	    {"GET /v1/batches/1/results?order=%ff HTTP/1.1", 400, "invalid_request", FFFD},
	    /* cut short, overlong, a surrogate, past U+10FFFF; then a good one */
	    {"GET /v1/batches/1?wait=%e2%82 HTTP/1.1", 400, "invalid_request", "got \"\xef\xbf\xbd\""},
	    {"GET /v1/batches/1?wait=%c0%af HTTP/1.1", 400, "invalid_request", "\xef\xbf\xbd\xef\xbf\xbd"},
	    {"GET /v1/batches/1?wait=%ed%a0%80 HTTP/1.1", 400, "invalid_request", FFFD},
	    {"GET /v1/batches/1?wait=%f4%90%80%80 HTTP/1.1", 400, "invalid_request", FFFD},
	    {"GET /v1/batches/1?wait=%e2%82%ac%01 HTTP/1.1", 400, "invalid_request", "got \"\xe2\x82\xac\x01\""},
	    {"POST /v1/batches?task=%ff HTTP/1.1\r\nContent-Type: application/x-ndjson", 400,
	     "invalid_request", FFFD},
	    {"POST /v1/batches HTTP/1.1\r\nContent-Type: text/\xff", 415, "unsupported_media_type", FFFD},
	    {"GET /v1/batches/1/results HTTP/1.1\r\nAccept: text/event-stream\r\nLast-Event-ID: \xff", 400,
	     "invalid_request", FFFD},
	};
	for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
		struct answer a = hrequest(&s, cases[i].head, NULL, 0);
		const char *body = strstr(a.text, "\r\n\r\n");
		CHECK(body != NULL);
		body += 4;
		json_error_t e;
		json_t *j = json_loadb(body, strlen(body), 0, &e); /* strict: refuses bad UTF-8 */
		if (!j)
			FAILF("%s: the body is not UTF-8 JSON (%s): %.300s", cases[i].head, e.text, body);
		json_decref(j);
		expect(&a, cases[i].status, cases[i].code, cases[i].msg, cases[i].head);
	}
	still_serving(&s);
	server_stop(&s);
}

TEST(hostile_oversized_headers_and_request_lines_are_refused_and_the_server_goes_on)
{
	struct server s;
	server_start(&s, "--workers", "1", NULL);
	/* These never reach the API: libmicrohttpd answers them itself, with
	 * its own small HTML page, once a request's head passes its memory
	 * limit (16 KiB, CONN_MEMORY in server/http.c). One header of 100 KB;
	 * ten thousand small ones; a 100 KB URL; garbage; a Content-Length
	 * past 64 bits. */
	char *big = repeat("GET /v1/tasks HTTP/1.1\r\nX-Big: ", "a", 100000, "");
	struct answer a = hrequest(&s, big, NULL, 0);
	expect(&a, 431, NULL, NULL, "a 100 KB header");
	free(big);
	char *many = repeat("GET /v1/tasks HTTP/1.1", "\r\nX-H: 1", 10000, "");
	a = hrequest(&s, many, NULL, 0);
	expect(&a, 431, NULL, NULL, "10,000 headers");
	free(many);
	char *url = repeat("GET /v1/", "x", 100000, " HTTP/1.1");
	a = hrequest(&s, url, NULL, 0);
	expect(&a, 414, NULL, NULL, "a 100 KB URL");
	free(url);
	int fd = hconnect(&s);
	static const char garbage[] = "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n";
	hsend(fd, garbage, sizeof garbage - 1);
	a = hread(fd, 5000);
	expect(&a, 400, NULL, NULL, "garbage");
	a = hrequest(&s, "POST /v1/batches HTTP/1.1\r\nContent-Length: 99999999999999999999999", NULL, 0);
	expect(&a, 413, NULL, NULL, "a Content-Length past 64 bits");
	still_serving(&s);
	server_stop(&s);
}

/* ---- connections ---- */

static void raise_nofile(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

/* The time one GET /healthz takes, on a new connection. */
static int64_t timed_get(const struct server *s)
{
	int64_t t0 = harness_now_ms();
	struct answer a = hrequest(s, "GET /v1/tasks HTTP/1.1", NULL, 0);
	int64_t took = harness_now_ms() - t0;
	if (a.status != 200)
		FAILF("GET /v1/tasks: %d: %.200s", a.status, a.text);
	answer_free(&a);
	return took;
}

TEST_T(hostile_1000_idle_connections_and_slow_loris_senders_do_not_slow_a_normal_client, 60)
{
	raise_nofile();
	struct rlimit rl;
	getrlimit(RLIMIT_NOFILE, &rl);
	if (rl.rlim_cur < 1200)
		FAILF("this test needs 1200 file descriptors; the limit is %llu",
		      (unsigned long long)rl.rlim_cur);
	struct server s;
	server_start(&s, "--workers", "1", NULL);
	enum { IDLE = 1000, LORIS = 50 };
	static int idle[IDLE], loris[LORIS];
	for (int i = 0; i < IDLE; i++)
		idle[i] = hconnect(&s);
	for (int i = 0; i < LORIS; i++) {
		loris[i] = hconnect(&s);
		hsend(loris[i], "POST /v1/batches HTTP/1.1\r\nHost: x\r\nX-Slow: ", 45);
	}
	/* Normal requests while the slow ones trickle a byte each round. */
	int64_t worst = 0;
	for (int round = 0; round < 20; round++) {
		for (int i = 0; i < LORIS; i++)
			hsend(loris[i], "a", 1);
		int64_t took = timed_get(&s);
		if (took > worst)
			worst = took;
	}
	if (worst > 1000)
		FAILF("a normal request took %lld ms among %d idle and %d slow connections",
		      (long long)worst, IDLE, LORIS);
	still_serving(&s);
	fprintf(stderr, "slowest normal request: %lld ms\n", (long long)worst);
	for (int i = 0; i < IDLE; i++)
		close(idle[i]);
	for (int i = 0; i < LORIS; i++)
		close(loris[i]);
	server_stop(&s);
}

/* Milliseconds until the server closes fd (which sends nothing more). */
static int64_t until_closed(int fd, int ms)
{
	int64_t t0 = harness_now_ms();
	struct answer a = hread(fd, ms);
	answer_free(&a);
	return harness_now_ms() - t0;
}

TEST_T(hostile_idle_timeout_closes_silent_and_half_sent_connections, 30)
{
	struct server s;
	server_start(&s, "--workers", "1", "--idle-timeout", "1", "--grace", "0", NULL);
	int silent = hconnect(&s), half = hconnect(&s);
	hsend(half, "GET /v1/tasks HTTP/1.1\r\nHost: x\r\n", 33);
	int64_t a = until_closed(silent, 5000), b = until_closed(half, 5000);
	if (a < 800 || a > 3500 || b > 3500)
		FAILF("idle connections closed after %lld and %lld ms with --idle-timeout 1", (long long)a,
		      (long long)b);
	/* A long-poll is not idle: it waits its full 2 s. */
	int64_t id = submit(&s, "{\"task\":\"sleep\",\"items\":[[30]]}");
	char path[96];
	snprintf(path, sizeof path, "/v1/batches/%lld?wait=2", (long long)id);
	int64_t t0 = harness_now_ms();
	struct resp r = req(&s, "GET", path, NULL);
	CHECK_INT(r.status, 200);
	CHECK(harness_now_ms() - t0 >= 1900);
	resp_free(&r);
	server_stop(&s);
}

TEST_T(hostile_max_connections_holds_the_excess_until_idle_ones_time_out, 30)
{
	struct server s;
	server_start(&s, "--workers", "1", "--max-connections", "20", "--idle-timeout", "1", NULL);
	int fds[20];
	for (int i = 0; i < 20; i++)
		fds[i] = hconnect(&s);
	/* The 21st waits in the listen backlog, and is served as soon as the
	 * idle ones are closed. */
	int64_t t0 = harness_now_ms();
	struct answer a = hrequest(&s, "GET /v1/tasks HTTP/1.1", NULL, 0);
	int64_t took = harness_now_ms() - t0;
	CHECK_INT(a.status, 200);
	answer_free(&a);
	if (took < 700 || took > 3000)
		FAILF("the 21st connection was served after %lld ms (--idle-timeout 1)", (long long)took);
	for (int i = 0; i < 20; i++)
		until_closed(fds[i], 5000);
	CHECK(timed_get(&s) < 1000);
	still_serving(&s);
	server_stop(&s);
}

/* ---- the validator on its own: the fuzzer's kept inputs ---- */

/* The source tree's fuzz/regressions: the first ancestor of the build
 * directory that has one. */
static int regressions_dir(char *out, size_t len)
{
	char dir[PATH_MAX - 32];
	snprintf(dir, sizeof dir, "%s", harness_bin_dir());
	for (;;) {
		if ((size_t)snprintf(out, len, "%s/fuzz/regressions", dir) >= len)
			return -1;
		struct stat st;
		if (stat(out, &st) == 0 && S_ISDIR(st.st_mode))
			return 0;
		char *slash = strrchr(dir, '/');
		if (!slash || slash == dir)
			return -1;
		*slash = '\0';
	}
}

/* The common body, {"task": ..., "items": [[integers], ...]}, is read
 * without jansson; everything else by jansson. The two agree on every body
 * here (the fuzzer checks the same on every input it makes): what the fast
 * path takes, and the bodies at its edges that it must leave to jansson. */
TEST(hostile_bodies_read_with_or_without_jansson_get_the_same_answer)
{
	char wpath[PATH_MAX + 32];
	snprintf(wpath, sizeof wpath, "%s/forkpool-worker", harness_bin_dir());
	CHECK_INT(catalog_load(wpath), 0);
	static const char *const bodies[] = {
	    "{\"task\":\"square\",\"items\":[[1],[2],[3]]}",
	    " {\r\n \"task\" : \"square\" ,\t\"items\" : [ [ 1 ] ,\n[\t-2 ] ] }\n",
	    "{\"task\":\"echo\",\"items\":[[1,2,3],[],[4]]}",
	    "{\"task\":\"square\",\"items\":[[1]],\"chunksize\":2}",
	    "{\"items\":[[1]],\"task\":\"square\"}",
	    "{\"task\":\"sq\\u0075are\",\"items\":[[1]]}",
	    "{\"task\":\"square\",\"task\":\"echo\",\"items\":[[1]]}",
	    "{\"task\":\"square\",\"items\":[[1]],\"items\":[[2]]}",
	    "{\"task\":\"square\",\"items\":[[1, 2]]}",
	    "{\"task\":\"square\",\"items\":[[\"a\"]]}",
	    "{\"task\":\"square\",\"items\":[]}",
	    "{\"task\":\"square\",\"items\":[1]}",
	    "{\"task\":\"square\",\"items\":[[[1]]]}",
	    "{\"task\":\"nosuch\",\"items\":[[1]]}",
	    "{\"task\":\"square\",\"items\":[[01]]}",
	    "{\"task\":\"square\",\"items\":[[-0]]}",
	    "{\"task\":\"square\",\"items\":[[1.0]]}",
	    "{\"task\":\"square\",\"items\":[[1e2]]}",
	    "{\"task\":\"square\",\"items\":[[999999999999999999]]}",
	    "{\"task\":\"square\",\"items\":[[9223372036854775807]]}",
	    "{\"task\":\"square\",\"items\":[[99999999999999999999]]}",
	    "{\"task\":\"square\",\"items\":[[1\n]]}",
	    "{\"task\":\"square\",\"items\":[[1]]",
	    "{\"task\":\"square\",\"items\":[[1]],}",
	    "{\"task\":\"square\",\"items\":[[1],]}",
	    "{\"task\":\"square\",\"items\":[[1]]} x",
	    "{\"task\":\"square\",\"items\":[[1]]}{}",
	    "{\"task\":\"squ\xc3\xa9re\",\"items\":[[1]]}",
	    "{\"task\":\"\",\"items\":[[1]]}",
	    "{\"task\":\"count_primes\",\"items\":[[0,10],[5,1]]}",
	    "{\"task\":\"count_primes\",\"items\":[[-1,10]]}",
	    "[{\"task\":\"square\",\"items\":[[1]]}]",
	    "",
	};
	struct request_limits lim = {.workers = 2, .max_items = 1000};
	for (size_t i = 0; i < sizeof bodies / sizeof *bodies; i++)
		if (!request_paths_agree(bodies[i], strlen(bodies[i]), &lim))
			FAILF("body %zu gets two answers: %s", i, bodies[i]);
	/* The item limit, at it and past it. */
	struct request_limits two = {.workers = 2, .max_items = 2};
	static const char at[] = "{\"task\":\"square\",\"items\":[[1],[2]]}";
	static const char past[] = "{\"task\":\"square\",\"items\":[[1],[2],[3]]}";
	CHECK(request_paths_agree(at, strlen(at), &two));
	CHECK(request_paths_agree(past, strlen(past), &two));
	/* And the answer itself, for the form that the fast path takes. */
	struct batch_request q;
	struct request_error err;
	CHECK_INT(request_parse_batch(bodies[1], strlen(bodies[1]), &lim, &q, &err), 0);
	CHECK_INT(q.b.size, 2);
	CHECK_STR(q.args.data ? q.args.data : "", "[1]\n[-2]\n");
	request_free(&q);
	catalog_free();
}

TEST(hostile_fuzz_regression_inputs_are_refused_or_accepted_cleanly)
{
	char wpath[PATH_MAX + 32], dir[PATH_MAX + 64];
	snprintf(wpath, sizeof wpath, "%s/forkpool-worker", harness_bin_dir());
	CHECK_INT(catalog_load(wpath), 0);
	if (regressions_dir(dir, sizeof dir) < 0)
		FAILF("no fuzz/regressions above %s", harness_bin_dir());
	DIR *d = opendir(dir);
	CHECK(d != NULL);
	struct dirent *e;
	int n = 0;
	struct request_limits lim = {.workers = 2, .max_items = 1000};
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		char path[PATH_MAX + 400];
		snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
		FILE *f = fopen(path, "rb");
		CHECK(f != NULL);
		struct buf b = {0};
		char tmp[4096];
		size_t k;
		while ((k = fread(tmp, 1, sizeof tmp, f)) > 0)
			buf_add(&b, tmp, k);
		fclose(f);
		struct batch_request q;
		struct request_error err;
		if (request_parse_batch(b.data ? b.data : "", b.len, &lim, &q, &err) == 0) {
			CHECK(q.b.size >= 1 && q.b.size <= lim.max_items);
			request_free(&q);
		} else {
			CHECK(err.status == 400 || err.status == 413);
			CHECK(err.code[0] && err.message[0]);
		}
		CHECK(request_paths_agree(b.data ? b.data : "", b.len, &lim));
		buf_free(&b);
		n++;
	}
	closedir(d);
	CHECK(n >= 1);
	catalog_free();
}
