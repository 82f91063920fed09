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
