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

#define MAX_WAIT_S 3600
#define MAX_CHUNKSIZE 1000000000LL
#define MAX_TIMEOUT_S 1e7
#define DEFAULT_LIST_LIMIT 100
#define MAX_LIST_LIMIT 1000

static struct api_config C;
static int shutting_down;

void api_init(const struct api_config *c) { C = *c; }
void api_shutting_down(void) { shutting_down = 1; }

/* What a parked request waits for, kept in its http_data. */
struct wait {
	int64_t batch, index; /* index < 0: the whole batch */
};

/* ---- JSON shapes ---- */

static const char *batch_state(const struct batch *b)
{
	if (b->counts[FS_PENDING] + b->counts[FS_RUNNING] == 0)
		return "done";
	if (b->counts[FS_PENDING] == b->size)
		return "pending";
	return "running";
}

static int batch_done(const struct batch *b)
{
	return b->counts[FS_PENDING] + b->counts[FS_RUNNING] == 0;
}

static void batch_json(struct buf *o, const struct batch *b)
{
	buf_printf(o, "{\"id\":%lld,\"task\":", (long long)b->id);
	buf_json_cstr(o, b->task);
	buf_printf(o, ",\"size\":%lld,\"chunksize\":%lld,\"timeout\":", (long long)b->size,
		   (long long)b->chunksize);
	if (b->timeout > 0)
		buf_json_double(o, b->timeout);
	else
		buf_adds(o, "null");
	buf_adds(o, ",\"state\":");
	buf_json_cstr(o, batch_state(b));
	buf_adds(o, ",\"counts\":{");
	for (int k = 0; k < FS_NSTATES; k++)
		buf_printf(o, "%s\"%s\":%lld", k ? "," : "", fstate_names[k], (long long)b->counts[k]);
	buf_adds(o, "},\"created_at\":");
	buf_json_time(o, b->created_ms);
	buf_adds(o, ",\"finished_at\":");
	buf_json_time(o, b->finished_ms);
	buf_addc(o, '}');
}

static void future_json(struct buf *o, const struct future *f)
{
	buf_printf(o, "{\"index\":%lld,\"state\":\"%s\"", (long long)f->index, fstate_names[f->state]);
	if (f->state == FS_FINISHED) {
		buf_adds(o, ",\"result\":");
		if (f->result)
			buf_add(o, f->result, f->result_len);
		else
			buf_adds(o, "null");
	} else if (f->state == FS_FAILED) {
		buf_adds(o, ",\"error\":{\"type\":");
		buf_json_cstr(o, f->error_type > FE_NONE && f->error_type <= FE_WORKER_DIED
				     ? ferr_names[f->error_type]
				     : "task_error");
		buf_adds(o, ",\"message\":");
		buf_json_cstr(o, f->error ? f->error : "");
		buf_addc(o, '}');
	}
	buf_printf(o, ",\"attempts\":%lld,\"worker\":", (long long)f->attempts);
	if (f->worker > 0)
		buf_json_i64(o, f->worker);
	else
		buf_adds(o, "null");
	buf_adds(o, ",\"started_at\":");
	buf_json_time(o, f->started_ms);
	buf_adds(o, ",\"finished_at\":");
	buf_json_time(o, f->finished_ms);
	buf_addc(o, '}');
}

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
	if (!*v || *end || errno || !isfinite(d) || d < min || d > max) {
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
	if (!*v || *end || errno || n < min || n > max) {
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

/* ---- GET /v1/batches/{id}[?wait=S] ---- */

static int batch_ready(struct http_req *r)
{
	struct wait *w = http_data(r);
	struct batch b;
	return store_batch_get(C.store, w->batch, &b) != 1 || batch_done(&b);
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
	if (http_woken(r) == WAKE_NONE && query_num(r, "wait", 0, MAX_WAIT_S, &wait) < 0)
		return;
	if (wait > 0 && !batch_done(&b)) {
		struct wait *w = malloc(sizeof *w);
		if (!w)
			abort();
		*w = (struct wait){.batch = id, .index = -1};
		http_set_data(r, w, free);
		return http_park(r, id, deadline_after(wait), batch_ready);
	}
	reply_batch(r, 200, &b);
}

/* ---- GET /v1/batches/{id}/futures/{i}[?wait=S] ---- */

struct future_out {
	struct buf *o;
	int done;
};

static void on_future(void *arg, const struct future *f)
{
	struct future_out *fo = arg;
	fo->done = f->state >= FS_FINISHED;
	if (fo->o)
		future_json(fo->o, f);
}

static int future_ready(struct http_req *r)
{
	struct wait *w = http_data(r);
	struct future_out fo = {0};
	return store_future_get(C.store, w->batch, w->index, on_future, &fo) != 1 || fo.done;
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
		struct batch b;
		if (store_batch_get(C.store, id, &b) == 1)
			return http_error(r, 404, "not_found", "batch %lld has no future %lld (it has %lld: 0 to %lld)",
					  (long long)id, (long long)index, (long long)b.size,
					  (long long)b.size - 1);
		return http_error(r, 404, "not_found", "there is no batch %lld", (long long)id);
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
	struct batch b;
	int found = store_batch_get(C.store, id, &b);
	if (found < 0)
		return db_error(r);
	if (!found)
		return http_error(r, 404, "not_found", "there is no batch %lld", (long long)id);
	const char *order = http_query(r, "order");
	int completed = 0;
	if (order && !strcmp(order, "completed"))
		completed = 1;
	else if (order && strcmp(order, "submitted"))
		return http_error(r, 400, "invalid_request",
				  "query parameter order must be submitted or completed, got \"%s\"", order);
	int64_t after = -1, limit = -1;
	if (query_int(r, "after", -1, INT64_MAX, &after) < 0 ||
	    query_int(r, "limit", 1, INT64_MAX, &limit) < 0)
		return;
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
	struct batch b;
};

static int content_type_ok(struct http_req *r)
{
	const char *ct = http_header(r, "Content-Type");
	if (!ct)
		return 1; /* no type given: read it as JSON */
	size_t n = strlen("application/json");
	return !strncasecmp(ct, "application/json", n) && (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ');
}

/* Validates the body; fills b (but for id and times) or answers 400. */
static int validate(struct http_req *r, json_t *root, struct batch *b, const struct task_info **ti,
		    json_t **items)
{
	if (!json_is_object(root)) {
		http_error(r, 400, "invalid_request", "the body must be a JSON object such as "
			   "{\"task\": \"square\", \"items\": [[1], [2]]}");
		return -1;
	}
	const char *key;
	json_t *v;
	json_object_foreach(root, key, v)
	{
		if (strcmp(key, "task") && strcmp(key, "items") && strcmp(key, "chunksize") &&
		    strcmp(key, "timeout")) {
			http_error(r, 400, "invalid_request",
				   "unknown field \"%s\" (a batch has task, items, chunksize, timeout)", key);
			return -1;
		}
	}
	json_t *task = json_object_get(root, "task");
	if (!json_is_string(task)) {
		http_error(r, 400, "invalid_request", "task: %s", task ? "must be a string" : "is required");
		return -1;
	}
	*ti = catalog_find(json_string_value(task));
	if (!*ti) {
		http_error(r, 400, "invalid_request", "task: there is no task \"%s\" (GET /v1/tasks lists them)",
			   json_string_value(task));
		return -1;
	}
	*items = json_object_get(root, "items");
	if (!json_is_array(*items) || json_array_size(*items) == 0) {
		http_error(r, 400, "invalid_request", "items: %s",
			   !*items ? "is required: an array with one array of arguments per call"
			   : json_is_array(*items) ? "must not be empty"
						   : "must be an array with one array of arguments per call");
		return -1;
	}
	size_t i;
	json_array_foreach(*items, i, v)
	{
		char err[512];
		if (catalog_check(*ti, v, err, sizeof err) < 0) {
			http_error(r, 400, "invalid_request", "items[%zu]: %s", i, err);
			return -1;
		}
	}
	memset(b, 0, sizeof *b);
	snprintf(b->task, sizeof b->task, "%s", (*ti)->name);
	b->size = (int64_t)json_array_size(*items);
	v = json_object_get(root, "chunksize");
	if (v) {
		if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > MAX_CHUNKSIZE) {
			http_error(r, 400, "invalid_request", "chunksize: must be an integer from 1 to %lld",
				   MAX_CHUNKSIZE);
			return -1;
		}
		b->chunksize = json_integer_value(v);
	} else if (C.chunksize > 0) {
		b->chunksize = C.chunksize;
	} else {
		int64_t per = (int64_t)C.workers * 4;
		b->chunksize = (b->size + per - 1) / per;
		if (b->chunksize < 1)
			b->chunksize = 1;
	}
	v = json_object_get(root, "timeout");
	if (v && !json_is_null(v)) {
		if (!json_is_number(v) || !(json_number_value(v) > 0) || json_number_value(v) > MAX_TIMEOUT_S) {
			http_error(r, 400, "invalid_request",
				   "timeout: must be a number of seconds above 0 (at most %g)", MAX_TIMEOUT_S);
			return -1;
		}
		b->timeout = json_number_value(v);
	}
	return 0;
}

static void post_batch(struct http_req *r)
{
	if (http_woken(r) != WAKE_NONE) {
		/* The turn's commit has happened (or the server is stopping). */
		struct submitted *s = http_data(r);
		if (http_woken(r) == WAKE_COMMIT && http_commit_ok(r)) {
			char loc[64];
			snprintf(loc, sizeof loc, "/v1/batches/%lld", (long long)s->b.id);
			http_add_header(r, "Location", loc);
			return reply_batch(r, 201, &s->b);
		}
		return db_error(r);
	}
	if (shutting_down)
		return http_error(r, 503, "shutting_down", "the server is shutting down; retry later");
	if (!content_type_ok(r))
		return http_error(r, 415, "unsupported_media_type",
				  "send the batch as JSON with Content-Type: application/json (got %s)",
				  http_header(r, "Content-Type"));
	size_t len;
	const char *body = http_body(r, &len);
	json_error_t jerr;
	json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!root)
		return http_error(r, 400, "invalid_json", "the body is not valid JSON: %s (line %d, column %d)",
				  jerr.text, jerr.line, jerr.column);
	struct submitted *s = calloc(1, sizeof *s);
	if (!s)
		abort();
	http_set_data(r, s, free);
	const struct task_info *ti;
	json_t *items;
	if (validate(r, root, &s->b, &ti, &items) < 0) {
		json_decref(root);
		return;
	}
	s->b.created_ms = now_unix_ms();
	s->b.finished_ms = -1;
	s->b.counts[FS_PENDING] = s->b.size;
	int ok = store_batch_begin(C.store, &s->b) == 0;
	struct buf args = {0};
	size_t i;
	json_t *item;
	json_array_foreach(items, i, item)
	{
		if (!ok)
			break;
		buf_reset(&args);
		jsonw_value(&args, item);
		ok = store_batch_item(C.store, s->b.id, (int64_t)i, args.data, args.len) == 0;
	}
	buf_free(&args);
	json_decref(root);
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
	http_park_commit(r);
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
	buf_printf(&o, "{\"status\":\"%s\",\"workers\":%d}", shutting_down ? "shutting_down" : "ok", ready);
	http_reply(r, shutting_down ? 503 : 200, &o);
}

static void not_allowed(struct http_req *r, const char *allow)
{
	http_add_header(r, "Allow", allow);
	http_error(r, 405, "method_not_allowed", "%s is not allowed on %s (allowed: %s)", http_method(r),
		   http_path(r), allow);
}

/* Routes on method and path; segments after /v1/batches are ids. */
void api_handle(struct http_req *r)
{
	const char *m = http_method(r), *p = http_path(r);
	int get = !strcmp(m, "GET") || !strcmp(m, "HEAD");
	if (!strcmp(p, "/healthz"))
		return get ? healthz(r) : not_allowed(r, "GET");
	if (!strcmp(p, "/metrics"))
		return get ? metrics_handle(r) : not_allowed(r, "GET");
	if (!strcmp(p, "/v1/workers"))
		return get ? metrics_workers(r) : not_allowed(r, "GET");
	if (!strcmp(p, "/v1/tasks"))
		return get ? get_tasks(r) : not_allowed(r, "GET");
	if (!strcmp(p, "/v1/batches")) {
		if (!strcmp(m, "POST"))
			return post_batch(r);
		return get ? list_batches(r) : not_allowed(r, "GET, POST");
	}
	static const char prefix[] = "/v1/batches/";
	if (!strncmp(p, prefix, sizeof prefix - 1)) {
		const char *s = p + sizeof prefix - 1, *slash = strchr(s, '/');
		int64_t id = parse_id(s, slash ? (size_t)(slash - s) : strlen(s));
		if (id < 0)
			return http_error(r, 404, "not_found", "there is no batch \"%.*s\"",
					  (int)(slash ? slash - s : (long)strlen(s)), s);
		if (!slash)
			return get ? get_batch(r, id) : not_allowed(r, "GET");
		if (!strcmp(slash, "/results"))
			return get ? get_results(r, id) : not_allowed(r, "GET");
		static const char fut[] = "/futures/";
		if (!strncmp(slash, fut, sizeof fut - 1)) {
			const char *is = slash + sizeof fut - 1;
			int64_t index = parse_id(is, strlen(is));
			if (index < 0)
				return http_error(r, 404, "not_found", "there is no future \"%s\"", is);
			return get ? get_future(r, id, index) : not_allowed(r, "GET");
		}
	}
	http_error(r, 404, "not_found", "no route for %s %s (the API is under /v1)", m, p);
}
