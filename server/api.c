/* api.c - the HTTP API v1 (see api.h and README.md for the contract). */
#include "api.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "catalog.h"
#include "jsonw.h"
#include "log.h"
#include "loop.h"
#include "metrics.h"
#include "pool.h"
#include "retention.h"
#include "request.h"
#include "sha256.h"
#include "stream.h"
#include "upload.h"
#include "views.h"

#define MAX_WAIT_S 3600
#define DEFAULT_LIST_LIMIT 100
#define MAX_LIST_LIMIT 1000

static struct api_config C;
static int shutting_down;

static void api_headers(struct http_req *r);

void api_init(const struct api_config *c)
{
	C = *c;
	http_set_headers_hook(api_headers);
}
void api_shutting_down(void) { shutting_down = 1; }

/* The executor's wait(return_when=...). */
enum until { UNTIL_ALL, UNTIL_FIRST_COMPLETED, UNTIL_FIRST_FAILURE };

/* What a parked request waits for, kept in its http_data. */
struct wait {
	int64_t batch, index; /* index < 0: the whole batch */
	enum until until;     /* for the whole batch */
};

/* ---- small helpers ---- */

static void db_error(struct http_req *r)
{
	http_error(r, 503, "unavailable", "the database failed; see the server log and retry");
}

static void reply_batch(struct http_req *r, unsigned status, const struct batch *b)
{
	struct buf o = {0};
	batch_json(&o, b);
	http_reply(r, status, &o);
}

/* The query parameters each route reads. Any other is refused, so that a
 * typo (?wiat=5, ?chunk_size=) is a 400 rather than silently ignored. */
static const char *const Q_NONE[] = {NULL};
static const char *const Q_POST_JSON[] = {"wait", NULL};
static const char *const Q_POST_NDJSON[] = {"task", "chunksize", "timeout", "retries", "wait", NULL};
static const char *const Q_LIST[] = {"limit", "after", NULL};
static const char *const Q_BATCH[] = {"wait", "until", NULL};
static const char *const Q_DELETE[] = {"terminate", "purge", NULL};
/* The results as a JSON page, or as a stream: a stream is the rest of the
 * batch from a cursor, which a limit would cut short only for the client to
 * ask again (an SSE client at once, with Last-Event-ID); a page does not
 * wait, so it has no timeout or heartbeat; NDJSON has no comment line to
 * send as a heartbeat. */
static const char *const Q_RESULTS[] = {"order", "after", "limit", NULL};
static const char *const Q_NDJSON_STREAM[] = {"order", "after", "timeout", NULL};
static const char *const Q_SSE_STREAM[] = {"order", "after", "timeout", "heartbeat", NULL};
static const char *const Q_FUTURE[] = {"wait", NULL};

/* 0 if every query parameter is one of allowed, given once, else -1
 * (answered 400). as says which form of the route allowed is for ("" or
 * " as an NDJSON stream"). */
static int query_known_as(struct http_req *r, const char *const *allowed, const char *as)
{
	enum http_query_fault fault;
	const char *bad = http_query_check(r, allowed, &fault);
	if (!bad)
		return 0;
	if (fault == HTTP_QUERY_REPEATED) {
		http_error(r, 400, "invalid_request",
			   "query parameter \"%s\" is given more than once; give it once", bad);
		return -1;
	}
	if (fault == HTTP_QUERY_NUL) {
		http_error(r, 400, "invalid_request", "query parameter \"%s\" holds a NUL byte (%%00)", bad);
		return -1;
	}
	struct buf names = {0};
	for (const char *const *a = allowed; *a; a++)
		buf_printf(&names, "%s%s", a == allowed ? "" : ", ", *a);
	if (*allowed)
		http_error(r, 400, "invalid_request",
			   "unknown query parameter \"%s\" for %s %s%s (it takes: %s)", bad,
			   http_method(r), http_path(r), as, names.data);
	else
		http_error(r, 400, "invalid_request",
			   "unknown query parameter \"%s\": %s %s%s takes none", bad, http_method(r),
			   http_path(r), as);
	buf_free(&names);
	return -1;
}

static int query_known(struct http_req *r, const char *const *allowed)
{
	return query_known_as(r, allowed, "");
}

/* Whether v is written in decimal: digits and a sign, and for a real a
 * point and an exponent (strtod then checks the form). strtod also reads
 * hex (0x10, 0x1p4), inf and nan, and it and strtoll skip leading blanks. */
static int decimal(const char *v, int real)
{
	return *v && v[strspn(v, real ? "0123456789+-.eE" : "0123456789+-")] == '\0';
}

/* Parses a query parameter as a number in [min, max]. 1: set, 0: absent,
 * -1: invalid (answered with 400). */
static int query_num(struct http_req *r, const char *key, double min, double max, double *out)
{
	const char *v = http_query(r, key);
	if (!v)
		return 0;
	char *end;
	errno = 0;
	double d = strtod(v, &end);
	if (!decimal(v, 1) || *end || errno || !isfinite(d) || d < min || d > max) {
		http_error(r, 400, "invalid_request", "query parameter %s must be a number from %g to %g, got \"%s\"",
			   key, min, max, v);
		return -1;
	}
	*out = d;
	return 1;
}

static int query_int(struct http_req *r, const char *key, int64_t min, int64_t max, int64_t *out)
{
	const char *v = http_query(r, key);
	if (!v)
		return 0;
	char *end;
	errno = 0;
	long long n = strtoll(v, &end, 10);
	if (!decimal(v, 0) || *end || errno || n < min || n > max) {
		http_error(r, 400, "invalid_request",
			   "query parameter %s must be an integer from %lld to %lld, got \"%s\"", key,
			   (long long)min, (long long)max, v);
		return -1;
	}
	*out = n;
	return 1;
}

/* Parses a decimal id path segment; -1 if it is not one. */
static int64_t parse_id(const char *s, size_t n)
{
	if (n == 0 || n > 18)
		return -1;
	int64_t v = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (s[i] - '0');
	}
	return v;
}

static int64_t deadline_after(double secs) { return now_mono_ms() + (int64_t)(secs * 1000.0); }

/* ---- GET /v1/batches/{id}[?wait=S&until=...] ---- */

static int until_holds(const struct batch *b, enum until u)
{
	switch (u) {
	case UNTIL_FIRST_COMPLETED:
		return batch_done(b) || b->counts[FS_FINISHED] + b->counts[FS_FAILED] + b->counts[FS_CANCELLED] > 0;
	case UNTIL_FIRST_FAILURE:
		return batch_done(b) || b->counts[FS_FAILED] > 0;
	case UNTIL_ALL:
		break;
	}
	return batch_done(b);
}

static int batch_ready(struct http_req *r)
{
	struct wait *w = http_data(r);
	struct batch b;
	return store_batch_get(C.store, w->batch, &b) != 1 || until_holds(&b, w->until);
}

static int parse_until(struct http_req *r, enum until *u)
{
	const char *v = http_query(r, "until");
	*u = UNTIL_ALL;
	if (!v || !strcmp(v, "all"))
		return 0;
	if (!strcmp(v, "first_completed"))
		*u = UNTIL_FIRST_COMPLETED;
	else if (!strcmp(v, "first_failure"))
		*u = UNTIL_FIRST_FAILURE;
	else {
		http_error(r, 400, "invalid_request",
			   "query parameter until must be all, first_completed or first_failure, got \"%s\"", v);
		return -1;
	}
	return 0;
}

static void park_batch(struct http_req *r, int64_t id, double wait, enum until u)
{
	struct wait *w = malloc(sizeof *w);
	if (!w)
		abort();
	*w = (struct wait){.batch = id, .index = -1, .until = u};
	http_set_data(r, w, free);
	http_park(r, id, deadline_after(wait), batch_ready);
}

static void get_batch(struct http_req *r, int64_t id)
{
	struct batch b;
	int found = store_batch_get(C.store, id, &b);
	if (found < 0)
		return db_error(r);
	if (!found)
		return http_error(r, 404, "not_found", "there is no batch %lld", (long long)id);
	if (http_woken(r) == WAKE_SHUTDOWN)
		return http_error(r, 503, "shutting_down", "the server is shutting down; retry later");
	double wait = 0;
	enum until u = UNTIL_ALL;
	if (http_woken(r) == WAKE_NONE &&
	    (query_num(r, "wait", 0, MAX_WAIT_S, &wait) < 0 || parse_until(r, &u) < 0))
		return;
	if (wait > 0 && !until_holds(&b, u))
		return park_batch(r, id, wait, u);
	reply_batch(r, 200, &b);
}

/* ---- GET /v1/batches/{id}/futures/{i}[?wait=S] ---- */

struct future_out {
	struct buf *o;
	int done, cancelled;
};

static void on_future(void *arg, const struct future *f)
{
	struct future_out *fo = arg;
	fo->done = f->state >= FS_FINISHED;
	fo->cancelled = f->state == FS_CANCELLED;
	if (fo->o)
		future_json(fo->o, f);
}

static int future_ready(struct http_req *r)
{
	struct wait *w = http_data(r);
	struct future_out fo = {0};
	return store_future_get(C.store, w->batch, w->index, on_future, &fo) != 1 || fo.done;
}

/* 404 for a future that is not there: the batch's range when the batch is,
 * else that the batch is not. */
static void no_future(struct http_req *r, int64_t id, int64_t index)
{
	struct batch b;
	if (store_batch_get(C.store, id, &b) == 1)
		return http_error(r, 404, "not_found", "batch %lld has no future %lld (it has %lld: 0 to %lld)",
				  (long long)id, (long long)index, (long long)b.size, (long long)b.size - 1);
	http_error(r, 404, "not_found", "there is no batch %lld", (long long)id);
}

static void get_future(struct http_req *r, int64_t id, int64_t index)
{
	struct buf o = {0};
	struct future_out fo = {.o = &o};
	int found = store_future_get(C.store, id, index, on_future, &fo);
	if (found < 0) {
		buf_free(&o);
		return db_error(r);
	}
	if (!found) {
		buf_free(&o);
		return no_future(r, id, index);
	}
	if (http_woken(r) == WAKE_SHUTDOWN) {
		buf_free(&o);
		return http_error(r, 503, "shutting_down", "the server is shutting down; retry later");
	}
	double wait = 0;
	if (http_woken(r) == WAKE_NONE && query_num(r, "wait", 0, MAX_WAIT_S, &wait) < 0) {
		buf_free(&o);
		return;
	}
	if (wait > 0 && !fo.done) {
		buf_free(&o);
		struct wait *w = malloc(sizeof *w);
		if (!w)
			abort();
		*w = (struct wait){.batch = id, .index = index};
		http_set_data(r, w, free);
		return http_park(r, id, deadline_after(wait), future_ready);
	}
	http_reply(r, 200, &o);
}

/* ---- GET /v1/batches/{id}/results ---- */

struct results_out {
	struct buf *o;
	int completed;
	int64_t n, last;
};

static void on_result(void *arg, const struct future *f)
{
	struct results_out *ro = arg;
	if (ro->n++)
		buf_addc(ro->o, ',');
	future_json(ro->o, f);
	ro->last = ro->completed ? f->done_seq : f->index;
}

static void get_results(struct http_req *r, int64_t id)
{
	const char *accept = http_header(r, "Accept");
	int ndjson = accept && strstr(accept, "application/x-ndjson");
	int sse = !ndjson && accept && strstr(accept, "text/event-stream");
	if (query_known_as(r, ndjson ? Q_NDJSON_STREAM : sse ? Q_SSE_STREAM : Q_RESULTS,
			   ndjson ? " as an NDJSON stream" : sse ? " as an SSE stream" : "") < 0)
		return;
	struct batch b;
	int found = store_batch_get(C.store, id, &b);
	if (found < 0)
		return db_error(r);
	if (!found)
		return http_error(r, 404, "not_found", "there is no batch %lld", (long long)id);
	const char *order = http_query(r, "order");
	int completed = ndjson || sse; /* streams default to as_completed */
	if (order && !strcmp(order, "completed"))
		completed = 1;
	else if (order && !strcmp(order, "submitted"))
		completed = 0;
	else if (order)
		return http_error(r, 400, "invalid_request",
				  "query parameter order must be submitted or completed, got \"%s\"", order);
	int64_t after = -1, limit = -1;
	if (query_int(r, "after", -1, INT64_MAX, &after) < 0 ||
	    query_int(r, "limit", 1, INT64_MAX, &limit) < 0)
		return;
	if (ndjson || sse) {
		struct stream_opts so = {.sse = sse, .completed = completed, .after = after,
					 .heartbeat_s = 15};
		const char *last = sse ? http_header(r, "Last-Event-ID") : NULL;
		if (last) {
			char *end;
			long long v = strtoll(last, &end, 10);
			if (!*last || *end || v < -1)
				return http_error(r, 400, "invalid_request",
						  "Last-Event-ID must be a cursor from this stream, got \"%s\"", last);
			so.after = v;
		}
		if (query_num(r, "timeout", 0, 1e9, &so.timeout_s) < 0 ||
		    query_num(r, "heartbeat", 0.01, 3600, &so.heartbeat_s) < 0)
			return;
		if (shutting_down)
			return http_error(r, 503, "shutting_down", "the server is shutting down; retry later");
		return stream_results(r, C.store, id, &so);
	}
	struct buf o = {0};
	buf_adds(&o, "{\"results\":[");
	struct results_out ro = {.o = &o, .completed = completed};
	if (store_futures(C.store, id, completed, after, limit, on_result, &ro) < 0) {
		buf_free(&o);
		return db_error(r);
	}
	buf_adds(&o, "],\"next\":");
	if (ro.n)
		buf_json_i64(&o, ro.last);
	else
		buf_adds(&o, "null");
	buf_addc(&o, '}');
	http_reply(r, 200, &o);
}

/* ---- GET /v1/batches ---- */

struct list_out {
	struct buf *o;
	int n;
	int64_t last;
};

static void on_batch(void *arg, const struct batch *b)
{
	struct list_out *lo = arg;
	if (lo->n++)
		buf_addc(lo->o, ',');
	batch_json(lo->o, b);
	lo->last = b->id;
}

static void list_batches(struct http_req *r)
{
	int64_t limit = DEFAULT_LIST_LIMIT, after = 0;
	if (query_int(r, "limit", 1, MAX_LIST_LIMIT, &limit) < 0 ||
	    query_int(r, "after", 1, INT64_MAX, &after) < 0)
		return;
	struct buf o = {0};
	buf_adds(&o, "{\"batches\":[");
	struct list_out lo = {.o = &o};
	if (store_batch_list(C.store, after, (int)limit, on_batch, &lo) < 0) {
		buf_free(&o);
		return db_error(r);
	}
	buf_adds(&o, "],\"next\":");
	if (lo.n)
		buf_json_i64(&o, lo.last);
	else
		buf_adds(&o, "null");
	buf_addc(&o, '}');
	http_reply(r, 200, &o);
}

/* ---- POST /v1/batches ---- */

/* The batch a submission stored, until its commit is known. */
struct submitted {
	struct wait w; /* first, so that batch_ready can read it (POST ?wait=S) */
	struct batch b;
	double wait; /* POST ?wait=S */
	int committed;
	int replay; /* an Idempotency-Key seen before: answer 200 with batch b.id */
};

/* A submission waits for the turn's commit and, with ?wait=S, then for its
 * batch to be done, without waking in between. */
static void park_submitted(struct http_req *r, struct submitted *s)
{
	if (s->wait > 0) {
		s->w = (struct wait){.batch = s->b.id, .index = -1};
		return http_park_commit_then(r, s->b.id, deadline_after(s->wait), batch_ready);
	}
	http_park_commit(r);
}

/* The batch and "results": every future in submission order (201 for a
 * submission, 200 for its replay). */
static void reply_with_results(struct http_req *r, unsigned status, int64_t id)
{
	struct batch b;
	if (store_batch_get(C.store, id, &b) != 1)
		return db_error(r);
	struct buf o = {0};
	batch_json(&o, &b);
	o.len--; /* reopen the object */
	buf_adds(&o, ",\"results\":[");
	struct results_out ro = {.o = &o};
	if (store_futures(C.store, id, 0, -1, -1, on_result, &ro) < 0) {
		buf_free(&o);
		return db_error(r);
	}
	buf_adds(&o, "]}");
	http_reply(r, status, &o);
}

/* Whether the request's Content-Type is the media type mt (parameters such
 * as "; charset=utf-8" allowed). */
static int media_is(struct http_req *r, const char *mt)
{
	const char *ct = http_header(r, "Content-Type");
	size_t n = strlen(mt);
	return ct && !strncasecmp(ct, mt, n) && (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ');
}

/* The automatic chunk size: about size / (workers x 4), at least 1. */
static int64_t auto_chunk(int64_t size)
{
	if (C.chunksize > 0)
		return C.chunksize;
	int64_t per = (int64_t)C.workers * 4;
	int64_t n = (size + per - 1) / per;
	return n < 1 ? 1 : n;
}

/* POST /v1/batches?task=T with an NDJSON body: checked and stored as it
 * arrives (upload.c); the query carries what a JSON body's fields would. */
static void ndjson_headers(struct http_req *r)
{
	if (shutting_down)
		return http_error(r, 503, "shutting_down", "the server is shutting down; retry later");
	if (query_known(r, Q_POST_NDJSON) < 0)
		return;
	if (http_header(r, "Idempotency-Key"))
		/* Its body is stored as it arrives, before a hash of it could be
		 * compared: refuse rather than ignore the key. */
		return http_error(r, 400, "invalid_request",
				  "Idempotency-Key is not supported with an NDJSON body; send a JSON "
				  "body to retry safely");
	const char *task = http_query(r, "task");
	if (!task)
		return http_error(r, 400, "invalid_request",
				  "task: is required; with an NDJSON body give it in the query: "
				  "POST /v1/batches?task=square");
	const struct task_info *ti = catalog_find(task);
	if (!ti)
		return http_error(r, 400, "invalid_request",
				  "task: there is no task \"%s\" (GET /v1/tasks lists them)", task);
	int64_t chunksize = 0, retries = 0;
	double timeout = C.default_timeout, wait = 0;
	if (query_int(r, "chunksize", 1, 1000000000, &chunksize) < 0 ||
	    query_num(r, "timeout", REQUEST_MIN_TIMEOUT_S, REQUEST_MAX_TIMEOUT_S, &timeout) < 0 ||
	    query_int(r, "retries", 0, REQUEST_MAX_RETRIES, &retries) < 0 ||
	    query_num(r, "wait", 0, MAX_WAIT_S, &wait) < 0)
		return;
	struct batch b = {.chunksize = chunksize, .timeout = timeout, .retries = retries,
			  .created_ms = now_unix_ms(), .finished_ms = -1};
	snprintf(b.task, sizeof b.task, "%s", ti->name);
	upload_start(r, C.store, ti, &b, C.max_items);
}

/* Called once a request's headers are in (see http_set_headers_hook). */
static void api_headers(struct http_req *r)
{
	if (!strcmp(http_method(r), "POST") && !strcmp(http_path(r), "/v1/batches") &&
	    media_is(r, "application/x-ndjson"))
		ndjson_headers(r);
}

/* The end of an NDJSON upload: seal it and answer as a JSON submission. */
static void ndjson_end(struct http_req *r, double wait)
{
	struct batch b;
	if (upload_end(r, auto_chunk, &b) < 0)
		return;
	struct submitted *s = calloc(1, sizeof *s);
	if (!s)
		abort();
	s->b = b;
	s->wait = wait;
	http_set_data(r, s, free);
	log_info("batch_upload", "batch=%lld task=%s size=%lld", (long long)b.id, b.task, (long long)b.size);
	metrics_batch_accepted(b.task, b.size);
	pool_add_batch(&s->b);
	park_submitted(r, s);
}

static int content_type_ok(struct http_req *r)
{
	const char *ct = http_header(r, "Content-Type");
	if (!ct)
		return 1; /* no type given: read it as JSON */
	size_t n = strlen("application/json");
	return !strncasecmp(ct, "application/json", n) && (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ');
}

/* ---- Idempotency-Key ---- */

/* 200 with the batch an earlier request with the same key and body made
 * (s->b.id). With ?wait=S the answer is the one the first request's would
 * have been, which the client may have lost: held until the batch is done or
 * S pass, with "results". Called again when the request wakes. */
static void idempotent_replay(struct http_req *r, struct submitted *s)
{
	int64_t id = s->b.id;
	enum http_wake why = http_woken(r);
	if (why == WAKE_COMMIT && !http_commit_ok(r))
		return db_error(r); /* the original's commit failed with this one's */
	if (why == WAKE_NONE && store_dirty(C.store)) {
		/* The first request may be in this turn's transaction still:
		 * answer after the commit, which it may not survive. */
		if (s->wait <= 0)
			return http_park_commit(r);
		s->w = (struct wait){.batch = id, .index = -1};
		return http_park_commit_then(r, id, deadline_after(s->wait), batch_ready);
	}
	struct batch b;
	int found = store_batch_get(C.store, id, &b);
	if (found < 0)
		return db_error(r);
	if (!found)
		return http_error(r, 410, "gone", "the batch %lld this Idempotency-Key made is gone",
				  (long long)id);
	if (why == WAKE_NONE && s->wait > 0 && !batch_done(&b)) {
		s->w = (struct wait){.batch = id, .index = -1};
		return http_park(r, id, deadline_after(s->wait), batch_ready);
	}
	char loc[64];
	snprintf(loc, sizeof loc, "/v1/batches/%lld", (long long)id);
	http_add_header(r, "Location", loc);
	http_add_header(r, "Idempotent-Replayed", "true");
	if (s->wait > 0)
		return reply_with_results(r, 200, id);
	reply_batch(r, 200, &b);
}

/* Looks the key up. Returns 1 when the request is answered (a bad key, a
 * key reused with another body: 409, a replay: 200) or parked, 0 when it is
 * new (hash then holds the body's SHA-256 for store_idem_put). */
static int idempotency_check(struct http_req *r, struct submitted *s, const char *key,
			     const char *body, size_t len, unsigned char hash[32])
{
	size_t n = strlen(key);
	int ok = n >= 1 && n <= 255;
	for (size_t i = 0; ok && i < n; i++)
		ok = key[i] > 0x20 && key[i] < 0x7f;
	if (!ok) {
		http_error(r, 400, "invalid_request",
			   "Idempotency-Key must be 1 to 255 visible ASCII characters");
		return 1;
	}
	sha256(body, len, hash);
	int64_t id;
	int found = store_idem_get(C.store, key, hash, &id);
	if (found < 0) {
		db_error(r);
		return 1;
	}
	if (found == 2) {
		http_error(r, 409, "idempotency_key_reused",
			   "Idempotency-Key \"%s\" was sent before with a different body (it made batch "
			   "%lld); use a new key for a new batch",
			   key, (long long)id);
		return 1;
	}
	if (found == 0)
		return 0;
	s->replay = 1;
	s->b.id = id;
	idempotent_replay(r, s);
	return 1;
}

static void post_batch(struct http_req *r)
{
	if (http_woken(r) != WAKE_NONE) {
		/* The turn's commit has happened (or the server is stopping). */
		struct submitted *s = http_data(r);
		enum http_wake why = http_woken(r);
		if (s->replay)
			return idempotent_replay(r, s);
		if (why == WAKE_COMMIT && !http_commit_ok(r))
			return db_error(r);
		if (why == WAKE_SHUTDOWN && !s->committed && !http_commit_ok(r))
			return db_error(r);
		s->committed = 1;
		char loc[64] = "/v1/batches/";
		*fmt_i64(loc + strlen(loc), s->b.id) = '\0';
		http_add_header(r, "Location", loc);
		if (why == WAKE_COMMIT && s->wait > 0) {
			/* POST ?wait=S: hold the answer until the batch is done. */
			struct batch b;
			if (store_batch_get(C.store, s->b.id, &b) == 1 && !batch_done(&b)) {
				s->w = (struct wait){.batch = s->b.id, .index = -1};
				return http_park(r, s->b.id, deadline_after(s->wait), batch_ready);
			}
		}
		if (s->wait > 0)
			return reply_with_results(r, 201, s->b.id);
		return reply_batch(r, 201, &s->b);
	}
	if (shutting_down)
		return http_error(r, 503, "shutting_down", "the server is shutting down; retry later");
	double wait = 0;
	if (query_num(r, "wait", 0, MAX_WAIT_S, &wait) < 0)
		return;
	if (upload_active(r))
		return ndjson_end(r, wait);
	if (!content_type_ok(r))
		return http_error(r, 415, "unsupported_media_type",
				  "send the batch as JSON (Content-Type: application/json) or as NDJSON "
				  "(application/x-ndjson, with ?task=), not %s",
				  http_header(r, "Content-Type"));
	size_t len;
	const char *body = http_body(r, &len);
	struct submitted *s = calloc(1, sizeof *s);
	if (!s)
		abort();
	http_set_data(r, s, free);
	s->wait = wait;
	const char *key = http_header(r, "Idempotency-Key");
	unsigned char hash[32];
	if (key && idempotency_check(r, s, key, body, len, hash))
		return; /* answered, or parked as a replay */
	struct request_limits lim = {.workers = C.workers, .chunksize = C.chunksize,
				     .default_timeout = C.default_timeout, .max_items = C.max_items};
	struct batch_request q;
	struct request_error e;
	if (request_parse_batch(body, len, &lim, &q, &e) < 0)
		return http_error(r, e.status, e.code, "%s", e.message);
	s->b = q.b;
	s->b.created_ms = now_unix_ms();
	s->b.finished_ms = -1;
	s->b.counts[FS_PENDING] = s->b.size;
	int ok = store_batch_begin(C.store, &s->b) == 0;
	if (ok && key)
		ok = store_idem_put(C.store, key, hash, s->b.id, s->b.created_ms) == 0;
	const char *line = q.args.data, *end = line + q.args.len;
	for (int64_t i = 0; ok && line < end; i++) {
		const char *nl = memchr(line, '\n', (size_t)(end - line));
		ok = store_batch_item(C.store, s->b.id, i, line, (size_t)(nl - line)) == 0;
		line = nl + 1;
	}
	request_free(&q);
	if (!ok) {
		store_batch_end(C.store, 0);
		return db_error(r);
	}
	if (store_batch_end(C.store, 1) < 0)
		return db_error(r);
	metrics_batch_accepted(s->b.task, s->b.size);
	/* Dispatch runs only after the turn's commit; were it to fail, the
	 * queued id finds no pending rows and drops out. */
	pool_add_batch(&s->b);
	park_submitted(r, s);
}

/* ---- cancelling ---- */

/* A cancel, answered once the turn's commit has made it durable. */
struct cancel {
	int64_t batch, index; /* index < 0: the whole batch */
	int cancelled;	      /* for a future: whether it was cancelled */
};

static int after_commit(struct http_req *r)
{
	if (http_woken(r) == WAKE_NONE)
		return 0;
	if (http_woken(r) != WAKE_COMMIT || !http_commit_ok(r))
		db_error(r);
	return 1;
}

/* DELETE /v1/batches/{id}[?terminate=true] */
static void cancel_batch(struct http_req *r, int64_t id)
{
	if (after_commit(r)) {
		if (http_woken(r) == WAKE_COMMIT && http_commit_ok(r))
			get_batch(r, id);
		return;
	}
	const char *t = http_query(r, "terminate");
	if (t && strcmp(t, "true") && strcmp(t, "false"))
		return http_error(r, 400, "invalid_request",
				  "query parameter terminate must be true or false, got \"%s\"", t);
	struct batch b;
	int found = store_batch_get(C.store, id, &b);
	if (found < 0)
		return db_error(r);
	if (!found)
		return http_error(r, 404, "not_found", "there is no batch %lld", (long long)id);
	int n = store_cancel_pending(C.store, id, b.size, now_unix_ms());
	if (n < 0)
		return db_error(r);
	metrics_items_cancelled(b.task, n);
	int killed = t && !strcmp(t, "true") ? pool_terminate_batch(id) : 0;
	log_info("batch_cancel", "batch=%lld cancelled=%d terminated_workers=%d", (long long)id, n, killed);
	if (n > 0)
		C.changed(id);
	if (!store_dirty(C.store))
		return reply_batch(r, 200, &b);
	http_park_commit(r);
}

/* POST /v1/batches/{id}/futures/{i}/cancel: Future.cancel(). */
static void cancel_future(struct http_req *r, int64_t id, int64_t index)
{
	struct cancel *c = http_data(r);
	if (after_commit(r)) {
		if (http_woken(r) == WAKE_COMMIT && http_commit_ok(r)) {
			struct buf o = {0};
			buf_printf(&o, "{\"cancelled\":%s}", c->cancelled ? "true" : "false");
			http_reply(r, 200, &o);
		}
		return;
	}
	struct future_out fo = {0};
	int found = store_future_get(C.store, id, index, on_future, &fo);
	if (found < 0)
		return db_error(r);
	if (!found)
		return no_future(r, id, index);
	int n = store_cancel_one(C.store, id, index, now_unix_ms());
	if (n < 0)
		return db_error(r);
	c = calloc(1, sizeof *c);
	if (!c)
		abort();
	*c = (struct cancel){.batch = id, .index = index, .cancelled = n == 1 || fo.cancelled};
	http_set_data(r, c, free);
	if (n == 1) {
		C.changed(id);
		return http_park_commit(r);
	}
	struct buf o = {0};
	buf_printf(&o, "{\"cancelled\":%s}", c->cancelled ? "true" : "false");
	http_reply(r, 200, &o);
}

/* ---- the rest ---- */

static void get_tasks(struct http_req *r)
{
	struct buf o = {0};
	buf_adds(&o, "{\"tasks\":[");
	for (int i = 0; i < catalog_count(); i++) {
		const struct task_info *t = catalog_at(i);
		buf_adds(&o, i ? ",{\"name\":" : "{\"name\":");
		buf_json_cstr(&o, t->name);
		buf_printf(&o, ",\"arity\":%d,\"max_arity\":", t->required);
		if (t->variadic)
			buf_adds(&o, "null");
		else
			buf_printf(&o, "%d", t->nparams);
		buf_adds(&o, ",\"params\":[");
		for (int k = 0; k < t->nparams; k++) {
			buf_adds(&o, k ? ",{\"name\":" : "{\"name\":");
			buf_json_cstr(&o, t->params[k].name);
			buf_adds(&o, ",\"type\":");
			buf_json_cstr(&o, ptype_names[t->params[k].type]);
			buf_printf(&o, ",\"optional\":%s}", k >= t->required ? "true" : "false");
		}
		buf_adds(&o, "],\"doc\":");
		buf_json_cstr(&o, t->doc);
		buf_addc(&o, '}');
	}
	buf_adds(&o, "]}");
	http_reply(r, 200, &o);
}

static void healthz(struct http_req *r)
{
	struct buf o = {0};
	int ready = pool_ready();
	const char *why = shutting_down ? NULL : pool_health_reason();
	const char *status = shutting_down ? "shutting_down"
			     : !why	  ? "ok"
			     : !strncmp(why, "the database", 12) ? "database_failing"
							       : "workers_failing";
	buf_printf(&o, "{\"status\":\"%s\",\"workers\":%d", status, ready);
	if (why) {
		/* Workers cannot start (a plugin's initializer fails): work waits. */
		buf_adds(&o, ",\"reason\":");
		buf_json_cstr(&o, why);
	}
	buf_addc(&o, '}');
	http_reply(r, shutting_down || why ? 503 : 200, &o);
}

static void not_allowed(struct http_req *r, const char *allow)
{
	http_add_header(r, "Allow", allow);
	http_error(r, 405, "method_not_allowed", "%s is not allowed on %s (allowed: %s)", http_method(r),
		   http_path(r), allow);
}

/* Routes on method and path; segments after /v1/batches are ids. HEAD is
 * served wherever GET is (libmicrohttpd sends the headers alone), so every
 * Allow that names GET names HEAD too. */
void api_handle(struct http_req *r)
{
	const char *m = http_method(r), *p = http_path(r);
	int get = !strcmp(m, "GET") || !strcmp(m, "HEAD");
	/* These take no parameters. Docker's HEALTHCHECK (docker/) and a
	 * Prometheus scrape send none either. */
	static const struct {
		const char *path;
		http_handler fn;
	} plain[] = {{"/healthz", healthz}, {"/metrics", metrics_handle},
		     {"/v1/workers", metrics_workers}, {"/v1/tasks", get_tasks}};
	for (size_t i = 0; i < sizeof plain / sizeof *plain; i++) {
		if (strcmp(p, plain[i].path))
			continue;
		if (!get)
			return not_allowed(r, "GET, HEAD");
		if (query_known(r, Q_NONE) < 0)
			return;
		return plain[i].fn(r);
	}
	if (!strcmp(p, "/v1/batches")) {
		if (!strcmp(m, "POST")) {
			/* An NDJSON upload's query was checked with its headers. */
			if (!upload_active(r) && query_known(r, Q_POST_JSON) < 0)
				return;
			return post_batch(r);
		}
		if (!get)
			return not_allowed(r, "GET, HEAD, POST");
		if (query_known(r, Q_LIST) < 0)
			return;
		return list_batches(r);
	}
	static const char prefix[] = "/v1/batches/";
	if (!strncmp(p, prefix, sizeof prefix - 1)) {
		const char *s = p + sizeof prefix - 1, *slash = strchr(s, '/');
		int64_t id = parse_id(s, slash ? (size_t)(slash - s) : strlen(s));
		if (id < 0)
			return http_error(r, 404, "not_found", "there is no batch \"%.*s\"",
					  (int)(slash ? slash - s : (long)strlen(s)), s);
		if (!slash) {
			int del = !strcmp(m, "DELETE");
			if (!del && !get)
				return not_allowed(r, "GET, HEAD, DELETE");
			if (query_known(r, del ? Q_DELETE : Q_BATCH) < 0)
				return;
			if (del && retention_delete(r, id))
				return; /* ?purge=true */
			return del ? cancel_batch(r, id) : get_batch(r, id);
		}
		if (!strcmp(slash, "/results")) {
			if (!get)
				return not_allowed(r, "GET, HEAD");
			return get_results(r, id); /* its query depends on Accept */
		}
		static const char fut[] = "/futures/";
		if (!strncmp(slash, fut, sizeof fut - 1)) {
			const char *is = slash + sizeof fut - 1, *tail = strchr(is, '/');
			int64_t index = parse_id(is, tail ? (size_t)(tail - is) : strlen(is));
			if (index < 0)
				return http_error(r, 404, "not_found", "there is no future \"%s\"", is);
			if (tail && !strcmp(tail, "/cancel")) {
				if (strcmp(m, "POST"))
					return not_allowed(r, "POST");
				if (query_known(r, Q_NONE) < 0)
					return;
				return cancel_future(r, id, index);
			}
			if (!tail) {
				if (!get)
					return not_allowed(r, "GET, HEAD");
				if (query_known(r, Q_FUTURE) < 0)
					return;
				return get_future(r, id, index);
			}
		}
	}
	http_error(r, 404, "not_found", "no route for %s %s (the API is under /v1)", m, p);
}
