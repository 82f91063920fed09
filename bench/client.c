/* client.c - the HTTP side of the bench, with libcurl: batches in, results
 * out, round trips one after another and many at once. Request bodies are
 * made before the clock starts, so that the client's own work while timed is
 * sending bytes and scanning answers. */
#include "bench.h"

#include <curl/curl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "buf.h"

#define STREAM_BUFFER (512 * 1024)
#define WARMUP_CALLS  20

double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static size_t to_buf(char *p, size_t size, size_t n, void *arg)
{
	buf_add(arg, p, size * n);
	return size * n;
}

/* An easy handle for base + path, its answer's body going to body. */
static CURL *easy(const struct fpserver *s, const char *path, struct buf *body)
{
	CURL *c = curl_easy_init();
	if (!c)
		abort();
	char url[512];
	snprintf(url, sizeof url, "%s%s", s->base, path);
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, to_buf);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, body);
	return c;
}

static const char *curl_why(CURLcode rc) { return curl_easy_strerror(rc); }

/* POSTs body[0..len) with the given Content-Type; returns the status or -1. */
static long post(const struct fpserver *s, const char *path, const char *ctype, const char *body, size_t len,
		 struct buf *resp)
{
	CURL *c = easy(s, path, resp);
	char ct[128];
	snprintf(ct, sizeof ct, "Content-Type: %s", ctype);
	/* "Expect:" off: no waiting for a 100 Continue on big bodies. */
	struct curl_slist *h = curl_slist_append(curl_slist_append(NULL, ct), "Expect:");
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
	CURLcode rc = curl_easy_perform(c);
	long status = -1;
	if (rc == CURLE_OK)
		curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
	else
		fprintf(stderr, "bench: POST %s: %s\n", path, curl_why(rc));
	curl_slist_free_all(h);
	curl_easy_cleanup(c);
	return status;
}

long client_post(const struct fpserver *s, const char *path, const char *body, char **resp)
{
	struct buf b = {0};
	long status = post(s, path, "application/json", body, strlen(body), &b);
	buf_addc(&b, '\0');
	if (resp)
		*resp = buf_steal(&b, NULL);
	else
		buf_free(&b);
	return status;
}

long client_get(const struct fpserver *s, const char *path, char **resp)
{
	struct buf b = {0};
	CURL *c = easy(s, path, &b);
	CURLcode rc = curl_easy_perform(c);
	long status = -1;
	if (rc == CURLE_OK)
		curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
	curl_easy_cleanup(c);
	buf_addc(&b, '\0');
	if (resp)
		*resp = buf_steal(&b, NULL);
	else
		buf_free(&b);
	return status;
}

int client_probe_ndjson(const struct fpserver *s)
{
	struct buf b = {0};
	long status = post(s, "/v1/batches?task=square", "application/x-ndjson", "[1]\n", 4, &b);
	buf_free(&b);
	if (status == 201)
		return INPUT_NDJSON;
	if (status == 415)
		return INPUT_JSON;
	fprintf(stderr, "bench: the NDJSON probe got status %ld (expected 201 or 415)\n", status);
	return -1;
}

/* The "id" of a batch answer, or -1. */
static long long batch_id(const char *body)
{
	json_t *j = json_loads(body, 0, NULL);
	long long id = j && json_is_integer(json_object_get(j, "id"))
			       ? (long long)json_integer_value(json_object_get(j, "id"))
			       : -1;
	json_decref(j);
	return id;
}

/* ---- results as an NDJSON stream ---- */

struct stream_check {
	struct buf line;       /* a line cut by the end of a read */
	long long lines, bad;  /* lines read; lines not a finished future */
	unsigned __int128 sum; /* of the results */
	char first_bad[256];
};

static void check_line(struct stream_check *sc, const char *p, size_t n)
{
	sc->lines++;
	static const char fin[] = "\"state\":\"finished\"", res[] = "\"result\":";
	const char *r = memmem(p, n, res, sizeof res - 1);
	if (!memmem(p, n, fin, sizeof fin - 1) || !r) {
		if (!sc->bad++)
			snprintf(sc->first_bad, sizeof sc->first_bad, "%.*s", (int)(n < 200 ? n : 200), p);
		return;
	}
	unsigned __int128 v = 0;
	for (r += sizeof res - 1; *r >= '0' && *r <= '9'; r++)
		v = v * 10 + (unsigned)(*r - '0');
	sc->sum += v;
}

static size_t on_stream(char *p, size_t size, size_t n, void *arg)
{
	struct stream_check *sc = arg;
	size_t len = size * n;
	char *end = p + len, *nl;
	while (p < end && (nl = memchr(p, '\n', (size_t)(end - p)))) {
		if (sc->line.len) {
			buf_add(&sc->line, p, (size_t)(nl - p));
			check_line(sc, sc->line.data, sc->line.len);
			buf_reset(&sc->line);
		} else {
			check_line(sc, p, (size_t)(nl - p));
		}
		p = nl + 1;
	}
	buf_add(&sc->line, p, (size_t)(end - p));
	return len;
}

/* Reads batch id's NDJSON result stream to its end into sc. */
static int read_stream(const struct fpserver *s, long long id, struct stream_check *sc)
{
	char path[128];
	snprintf(path, sizeof path, "/v1/batches/%lld/results", id);
	struct buf unused = {0};
	CURL *c = easy(s, path, &unused);
	struct curl_slist *h = curl_slist_append(NULL, "Accept: application/x-ndjson");
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_stream);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, sc);
	curl_easy_setopt(c, CURLOPT_BUFFERSIZE, (long)STREAM_BUFFER);
	CURLcode rc = curl_easy_perform(c);
	long status = 0;
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
	curl_slist_free_all(h);
	curl_easy_cleanup(c);
	buf_free(&unused);
	if (rc != CURLE_OK || status != 200) {
		fprintf(stderr, "bench: GET %s: %s, status %ld\n", path, curl_why(rc), status);
		return -1;
	}
	return 0;
}

/* Σ i² for 0 <= i < n. */
static unsigned __int128 sum_squares(long long n)
{
	unsigned __int128 m = (unsigned __int128)n;
	return n > 0 ? (m - 1) * m * (2 * m - 1) / 6 : 0;
}

/* The body of the batch of items lo..hi-1: NDJSON lines, or a JSON object. */
static void square_body(struct buf *b, enum input_mode mode, long long lo, long long hi, long chunksize)
{
	buf_reserve(b, (size_t)(hi - lo) * 11 + 64);
	if (mode == INPUT_JSON)
		buf_printf(b, "{\"task\":\"square\",\"chunksize\":%ld,\"items\":[", chunksize);
	for (long long i = lo; i < hi; i++) {
		char item[32];
		int k = mode == INPUT_JSON ? snprintf(item, sizeof item, "%s[%lld]", i > lo ? "," : "", i)
					   : snprintf(item, sizeof item, "[%lld]\n", i);
		buf_add(b, item, (size_t)k);
	}
	if (mode == INPUT_JSON)
		buf_adds(b, "]}");
}

int client_map_square(const struct fpserver *s, enum input_mode mode, long long n, long chunksize,
		      long long max_batch, struct map_run *out)
{
	long long per = mode == INPUT_NDJSON || max_batch <= 0 ? n : max_batch;
	int nb = (int)((n + per - 1) / per);
	struct buf *bodies = calloc((size_t)nb, sizeof *bodies);
	long long *ids = calloc((size_t)nb, sizeof *ids);
	if (!bodies || !ids)
		abort();
	for (int k = 0; k < nb; k++)
		square_body(&bodies[k], mode, k * per, (k + 1) * per < n ? (k + 1) * per : n, chunksize);
	char path[128];
	if (mode == INPUT_NDJSON)
		snprintf(path, sizeof path, "/v1/batches?task=square&chunksize=%ld", chunksize);
	else
		snprintf(path, sizeof path, "/v1/batches");
	const char *ctype = mode == INPUT_NDJSON ? "application/x-ndjson" : "application/json";
	int rc = 0;
	struct stream_check sc = {0};
	double t0 = now_s();
	for (int k = 0; k < nb && !rc; k++) {
		struct buf resp = {0};
		long status = post(s, path, ctype, bodies[k].data, bodies[k].len, &resp);
		buf_addc(&resp, '\0');
		ids[k] = status == 201 ? batch_id(resp.data) : -1;
		if (ids[k] < 0) {
			fprintf(stderr, "bench: POST %s: status %ld: %.300s\n", path, status, resp.data);
			rc = -1;
		}
		buf_free(&resp);
	}
	out->ingest_s = now_s() - t0;
	for (int k = 0; k < nb && !rc; k++)
		rc = read_stream(s, ids[k], &sc);
	out->seconds = now_s() - t0;
	out->items = sc.lines;
	if (!rc && (sc.lines != n || sc.bad || sc.sum != sum_squares(n))) {
		fprintf(stderr, "bench: square over %lld items: %lld results, %lld not finished%s%s%s\n", n,
			sc.lines, sc.bad, sc.bad ? " (first: " : "", sc.first_bad, sc.bad ? ")" : "");
		if (sc.sum != sum_squares(n))
			fprintf(stderr, "bench: the sum of the squares is wrong\n");
		rc = -1;
	}
	for (int k = 0; k < nb; k++)
		buf_free(&bodies[k]);
	free(bodies);
	free(ids);
	buf_free(&sc.line);
	return rc;
}

/* ---- round trips ---- */

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

void latencies_sort(struct latencies *l) { qsort(l->ms, (size_t)l->n, sizeof *l->ms, cmp_double); }

double latencies_pct(const struct latencies *l, double p)
{
	if (l->n <= 0)
		return -1;
	long k = (long)(p / 100.0 * (double)(l->n - 1) + 0.5);
	return l->ms[k < l->n ? k : l->n - 1];
}

void latencies_free(struct latencies *l)
{
	free(l->ms);
	l->ms = NULL;
	l->n = 0;
}

static void latencies_add(struct latencies *l, long *cap, double ms)
{
	if (l->n == *cap) {
		*cap = *cap ? *cap * 2 : 1024;
		l->ms = realloc(l->ms, (size_t)*cap * sizeof *l->ms);
		if (!l->ms)
			abort();
	}
	l->ms[l->n++] = ms;
}

/* Whether a POST ?wait= answer is a done single-item batch with its result. */
static int answer_ok(long status, const struct buf *b)
{
	return status == 201 && b->data && strstr(b->data, "\"results\":[{") &&
	       strstr(b->data, "\"state\":\"finished\"");
}

int client_sequential(const struct fpserver *s, long n, struct latencies *out)
{
	memset(out, 0, sizeof *out);
	struct buf resp = {0};
	CURL *c = easy(s, "/v1/batches?wait=5", &resp);
	struct curl_slist *h =
		curl_slist_append(curl_slist_append(NULL, "Content-Type: application/json"), "Expect:");
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
	long cap = 0, conns = 0;
	int rc = 0;
	double t0 = 0;
	for (long i = -WARMUP_CALLS; i < n && !rc; i++) {
		if (i == 0)
			t0 = now_s();
		char body[96];
		snprintf(body, sizeof body, "{\"task\":\"echo\",\"items\":[[%ld]]}", i);
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
		buf_reset(&resp);
		double t = now_s();
		CURLcode cr = curl_easy_perform(c);
		double ms = (now_s() - t) * 1000;
		long status = -1, nc = 0;
		if (cr == CURLE_OK) {
			curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
			curl_easy_getinfo(c, CURLINFO_NUM_CONNECTS, &nc);
		}
		buf_addc(&resp, '\0');
		if (!answer_ok(status, &resp)) {
			fprintf(stderr, "bench: sequential call %ld: %s, status %ld: %.300s\n", i,
				curl_why(cr), status, resp.data);
			rc = -1;
		}
		if (i >= 0) {
			latencies_add(out, &cap, ms);
			conns += nc;
		}
	}
	out->seconds = now_s() - t0;
	if (!rc && conns > 0)
		fprintf(stderr,
			"bench: note: the sequential calls opened %ld new connections (keep-alive "
			"was expected to hold one)\n",
			conns);
	curl_slist_free_all(h);
	curl_easy_cleanup(c);
	buf_free(&resp);
	if (!rc)
		latencies_sort(out);
	return rc;
}

struct client {
	CURL *c;
	struct buf resp;
	char body[96];
	double started;
};

static void client_send(CURLM *m, struct client *cl, long long i)
{
	snprintf(cl->body, sizeof cl->body, "{\"task\":\"square\",\"items\":[[%lld]]}", i);
	curl_easy_setopt(cl->c, CURLOPT_POSTFIELDS, cl->body);
	buf_reset(&cl->resp);
	cl->started = now_s();
	curl_multi_add_handle(m, cl->c);
}

int client_concurrent(const struct fpserver *s, int clients, double seconds, struct latencies *out)
{
	memset(out, 0, sizeof *out);
	CURLM *m = curl_multi_init();
	struct client *cls = calloc((size_t)clients, sizeof *cls);
	if (!m || !cls)
		abort();
	struct curl_slist *h =
		curl_slist_append(curl_slist_append(NULL, "Content-Type: application/json"), "Expect:");
	curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, (long)clients * 2);
	long long next = 0, failed = 0;
	long cap = 0;
	double t0 = now_s(), end = t0 + seconds, last = t0;
	for (int k = 0; k < clients; k++) {
		cls[k].c = easy(s, "/v1/batches?wait=5", &cls[k].resp);
		curl_easy_setopt(cls[k].c, CURLOPT_HTTPHEADER, h);
		curl_easy_setopt(cls[k].c, CURLOPT_PRIVATE, &cls[k]);
		client_send(m, &cls[k], next++);
	}
	int running = clients;
	while (running > 0) {
		int still;
		curl_multi_perform(m, &still);
		CURLMsg *msg;
		int left;
		while ((msg = curl_multi_info_read(m, &left))) {
			if (msg->msg != CURLMSG_DONE)
				continue;
			struct client *cl;
			long status = -1;
			curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&cl);
			if (msg->data.result == CURLE_OK)
				curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &status);
			CURLcode result = msg->data.result;
			curl_multi_remove_handle(m, cl->c);
			double t = now_s();
			buf_addc(&cl->resp, '\0');
			if (answer_ok(status, &cl->resp)) {
				latencies_add(out, &cap, (t - cl->started) * 1000);
				last = t;
			} else if (!failed++) {
				fprintf(stderr, "bench: a concurrent call failed: %s, status %ld: %.300s\n",
					curl_why(result), status, cl->resp.data);
			}
			if (t < end && failed < 100)
				client_send(m, cl, next++);
			else
				running--;
		}
		if (running > 0)
			curl_multi_poll(m, NULL, 0, 100, NULL);
	}
	out->seconds = last - t0;
	for (int k = 0; k < clients; k++) {
		curl_easy_cleanup(cls[k].c);
		buf_free(&cls[k].resp);
	}
	free(cls);
	curl_slist_free_all(h);
	curl_multi_cleanup(m);
	if (failed) {
		fprintf(stderr, "bench: %lld of %lld concurrent calls failed\n", failed, next);
		return -1;
	}
	latencies_sort(out);
	return 0;
}
